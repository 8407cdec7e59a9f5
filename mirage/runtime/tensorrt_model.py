"""Running a compiled TensorRT engine behind ONNX Runtime's model interface.

:class:`TensorRTModel` is what serving gets when :func:`mirage.runtime.select.select_runtime`
picks an engine: the same ``inputs``/``outputs``/``run`` as
:class:`~mirage.runtime.onnx.OrtModel`, so SCRFD, ArcFace and InSwapper code runs
unchanged. The engine file is verified (key and bytes) before it is deserialized;
device memory and the stream come from :mod:`mirage.runtime.cuda`. TensorRT is
imported lazily.

Inputs and outputs are matched **by name** to the ONNX file's ``graph.input`` /
``graph.output`` and listed in that order (:func:`engine_io_in_onnx_order`): TensorRT
numbers an engine's I/O tensors in an order of its own, which need not be the ONNX
file's (seen with SCRFD's nine outputs), so nothing here or in the stages reads an
output by the engine's position.

Every failure to open an engine — CUDA missing (:class:`~mirage.runtime.cuda.CudaUnavailableError`),
an ``OSError`` reading the file, TensorRT refusing it — is a
:class:`~mirage.errors.ModelUnavailableError`, so the runtime choice falls back to
ONNX Runtime with a log line instead of the replica dying.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mirage.errors import ModelUnavailableError
from mirage.runtime.onnx import ModelInfo, TensorInfo, onnx_io_names, order_like_onnx
from mirage.runtime.tensorrt import (
    EngineKey,
    import_tensorrt,
    read_engine_payload,
    tensorrt_logger,
)

logger = logging.getLogger(__name__)


def engine_io_in_onnx_order(
    engine_tensors: Sequence[tuple[TensorInfo, bool]], onnx_path: Path, model: str
) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    """(inputs, outputs) of an engine, listed as TensorRT enumerates them (``(info, is_input)``),
    re-ordered to the ONNX file's ``graph.input`` / ``graph.output`` by name."""
    input_names, output_names = onnx_io_names(onnx_path)
    inputs = order_like_onnx([info for info, is_input in engine_tensors if is_input], input_names, "engine inputs", model)
    outputs = order_like_onnx([info for info, is_input in engine_tensors if not is_input], output_names, "engine outputs", model)
    return inputs, outputs

class TensorRTModel(ModelInfo):
    """A compiled engine behind :class:`~mirage.runtime.onnx.OrtModel`'s interface (numpy in, numpy out).

    ``path`` stays the ONNX file the engine was compiled from (InSwapper reads its
    ``emap`` from there); ``engine_path`` is the engine. Batches larger than the
    profile's maximum are run in chunks. One execution context, guarded by a lock:
    Serve's batch loops call from worker threads.
    """

    provider = "TensorRT"

    def __init__(self, engine_path: Path, onnx_path: Path, name: str, key: EngineKey) -> None:
        from mirage.runtime.cuda import CudaUnavailableError

        self.engine_path = Path(engine_path)
        self.path = Path(onnx_path)
        self.name = name
        self.key = key
        self.providers = [self.provider]
        self._buffers: dict[str, tuple[int, int]] = {}
        self._stream = 0
        try:
            self._open()
        except CudaUnavailableError as exc:
            self.close()
            raise ModelUnavailableError(f"TensorRT engine for {name} cannot use CUDA: {exc}.") from exc
        except OSError as exc:
            self.close()
            raise ModelUnavailableError(
                f"TensorRT engine {self.engine_path} for {name} cannot be read: {exc.strerror or exc}."
            ) from exc
        except ModelUnavailableError:
            self.close()
            raise
        label = f"{name} (stand-in)" if self.is_standin else name
        logger.info("model %s: TensorRT engine %s (%s)", label, self.engine_path.name, key.describe())

    def _open(self) -> None:
        from mirage.runtime.cuda import CudaRuntime

        name = self.name
        payload = read_engine_payload(self.engine_path, self.key, name)
        trt = import_tensorrt()
        self._trt = trt
        self._cuda = CudaRuntime()
        self._logger = tensorrt_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(payload)
        if self._engine is None:
            raise ModelUnavailableError(f"TensorRT could not deserialize {self.engine_path.name} (see the TensorRT errors logged above).")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise ModelUnavailableError(f"TensorRT could not create an execution context for {self.engine_path.name} (GPU memory?).")
        found: list[tuple[TensorInfo, bool]] = []
        for i in range(self._engine.num_io_tensors):
            tensor = self._engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(tensor))).type
            dims = tuple(int(d) for d in self._engine.get_tensor_shape(tensor))
            shape = tuple("batch" if (j == 0 and d < 0) else (None if d < 0 else d) for j, d in enumerate(dims))
            found.append(
                (TensorInfo(name=tensor, shape=shape, dtype=dtype), self._engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT)
            )
        self.inputs, self.outputs = engine_io_in_onnx_order(found, self.path, name)
        self._lock = threading.Lock()
        self._stream = self._cuda.stream_create()

    @property
    def dynamic_batch(self) -> bool:
        return True

    @property
    def max_batch(self) -> int:
        return self.key.profile.max_batch

    def _device(self, tensor: str, nbytes: int) -> int:
        ptr, capacity = self._buffers.get(tensor, (0, 0))
        if nbytes > capacity:
            self._cuda.free(ptr)
            ptr, capacity = self._cuda.malloc(nbytes), nbytes
            self._buffers[tensor] = (ptr, capacity)
        return ptr

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Run the engine; outputs in ``output_names`` order (default: all, in the ONNX file's order)."""
        missing = [info.name for info in self.inputs if info.name not in feeds]
        if missing:
            raise ValueError(f"model {self.name} needs inputs {missing}")
        arrays = {info.name: np.asarray(feeds[info.name]) for info in self.inputs}
        # Inputs with a fixed leading dimension are one value per call (not sliced, not batched).
        batched = {info.name for info in self.inputs if not isinstance(info.shape[0] if info.shape else 0, int)}
        batch = {a.shape[0] for k, a in arrays.items() if k in batched or not batched}
        if len(batch) != 1:
            raise ValueError(f"model {self.name}: inputs disagree on the batch size ({sorted(batch)})")
        total = batch.pop()
        names = list(output_names) if output_names is not None else self.output_names
        if total == 0:
            empty = []
            for name in names:
                info = next(o for o in self.outputs if o.name == name)
                tail = tuple(d if isinstance(d, int) else 0 for d in info.shape[1:])
                empty.append(np.zeros((0, *tail), dtype=info.dtype))
            return empty
        pieces: dict[str, list[np.ndarray]] = {name: [] for name in names}
        with self._lock:
            for start in range(0, total, self.max_batch):
                stop = min(start + self.max_batch, total)
                result = self._run_chunk({k: v[start:stop] if k in batched or not batched else v for k, v in arrays.items()})
                for name in names:
                    pieces[name].append(result[name])
        return [np.concatenate(pieces[name]) if len(pieces[name]) > 1 else pieces[name][0] for name in names]

    def _run_chunk(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep_alive: list[np.ndarray] = []
        for info in self.inputs:
            host = np.ascontiguousarray(arrays[info.name], dtype=info.dtype)
            keep_alive.append(host)
            if not self._context.set_input_shape(info.name, tuple(host.shape)):
                raise ValueError(f"model {self.name}: input {info.name} shape {host.shape} is outside the engine's profile")
            ptr = self._device(info.name, host.nbytes)
            self._cuda.copy_to_device(ptr, host, self._stream)
            self._context.set_tensor_address(info.name, ptr)
        results: dict[str, np.ndarray] = {}
        for info in self.outputs:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(info.name))
            host = np.empty(shape, dtype=info.dtype)
            ptr = self._device(info.name, host.nbytes)
            self._context.set_tensor_address(info.name, ptr)
            results[info.name] = host
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError(f"TensorRT failed to run {self.name} (see the TensorRT errors logged above)")
        for info in self.outputs:
            self._cuda.copy_to_host(results[info.name], self._buffers[info.name][0], self._stream)
        self._cuda.synchronize(self._stream)
        del keep_alive
        return results

    def close(self) -> None:
        """Free device buffers and the stream (also done at garbage collection)."""
        cuda = getattr(self, "_cuda", None)
        if cuda is None:
            return
        for ptr, _ in getattr(self, "_buffers", {}).values():
            cuda.free(ptr)
        self._buffers = {}
        cuda.stream_destroy(getattr(self, "_stream", 0))
        self._stream = 0

    def __del__(self) -> None:  # pragma: no cover - timing of GC is not testable
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass


