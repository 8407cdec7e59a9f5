"""ONNX Runtime sessions for the neural models: provider choice, threads, one log line.

``OrtModel`` is a thin, numpy-in/numpy-out wrapper around one
``onnxruntime.InferenceSession``. Provider order is TensorRT → CUDA → CPU from what
the installed onnxruntime reports; ``MIRAGE_CUDA_ONLY`` drops TensorRT (the original
product's "CUDA EP + CPU fallback"). Thread counts are always set explicitly: ONNX
Runtime's default (one thread per core) fights with Ray and with the other models
in the same process.

The CUDA provider gets ``cudnn_conv_algo_search=HEURISTIC`` (:data:`CUDA_PROVIDER_OPTIONS`):
ONNX Runtime's default, ``EXHAUSTIVE``, benchmarks every cuDNN convolution algorithm
on the first run of each new input shape, so under Serve's batching the first batch
of each size (1…8) would stall live frames.

Inputs and outputs are described **by name, in the ONNX file's own order**
(``graph.input`` / ``graph.output``, :func:`onnx_io_names`), for every runtime:
TensorRT does not promise the ONNX file's I/O order, so code that reads outputs by
position (SCRFD's nine heads) would silently mix scores, boxes and keypoints.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from mirage.env import read_bool, read_int
from mirage.errors import ModelUnavailableError

logger = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

#: A provider as ONNX Runtime takes it: a name, or (name, options).
Provider = str | tuple[str, dict[str, str]]


#: Options of ONNX Runtime's CUDA provider. ``HEURISTIC`` picks cuDNN convolution
#: algorithms from cuDNN's heuristics instead of timing all of them on the first run of
#: every new input shape (``EXHAUSTIVE``, the default), which stalled the first frames of
#: each new batch size. ``cudnn_conv_use_max_workspace`` keeps the fast algorithms allowed.
CUDA_PROVIDER_OPTIONS: dict[str, str] = {
    "cudnn_conv_algo_search": "HEURISTIC",
    "cudnn_conv_use_max_workspace": "1",
}

_ORT_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


@dataclass(frozen=True)
class OrtConfig:
    """How to build ONNX Runtime sessions.

    ``allow_tensorrt`` is off by default: ONNX Runtime's TensorRT provider builds
    engines inside the first ``run()``, i.e. in a frame's path; serving loads the
    engines ``python -m mirage models compile`` built ahead of time instead
    (mirage/runtime/select.py). ``allow_cuda`` off forces the CPU provider.
    ``trt_cache_dir`` holds compiled TensorRT engines (building one takes minutes, so
    it must survive restarts); ``trt_fp16`` lets TensorRT pick half-precision kernels.
    """

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    cuda_only: bool = False
    allow_tensorrt: bool = False
    allow_cuda: bool = True
    trt_cache_dir: Path | None = None
    trt_fp16: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OrtConfig:
        """Read ``MIRAGE_CUDA_ONLY`` (0) and ``MIRAGE_ORT_THREADS`` (intra-op threads, 1..256); call it at an edge.

        A malformed value raises :class:`~mirage.errors.ConfigError` (mirage.env).
        """
        env = os.environ if environ is None else environ
        return cls(
            intra_op_threads=read_int(env, "MIRAGE_ORT_THREADS", 1, lo=1, hi=256),
            cuda_only=read_bool(env, "MIRAGE_CUDA_ONLY", False),
        )


def provider_name(provider: Provider) -> str:
    """The name of a provider entry, with or without options."""
    return provider if isinstance(provider, str) else provider[0]


def choose_providers(config: OrtConfig, available: Sequence[str] | None = None) -> list[Provider]:
    """Providers to request, best first: TensorRT, CUDA, then always CPU.

    Only providers that ``available`` (default: what onnxruntime reports) lists are
    requested; others it may report (Azure, OpenVINO, …) are ignored.
    """
    have = set(ort.get_available_providers() if available is None else available)
    chosen: list[Provider] = []
    if TENSORRT in have and config.allow_tensorrt and not config.cuda_only:
        options: dict[str, str] = {}
        if config.trt_cache_dir is not None:
            options["trt_engine_cache_enable"] = "True"
            options["trt_engine_cache_path"] = str(config.trt_cache_dir)
            options["trt_timing_cache_enable"] = "True"
            options["trt_timing_cache_path"] = str(config.trt_cache_dir)
        if config.trt_fp16:
            options["trt_fp16_enable"] = "True"
        chosen.append((TENSORRT, options) if options else TENSORRT)
    if CUDA in have and config.allow_cuda:
        chosen.append((CUDA, {"device_id": "0", **CUDA_PROVIDER_OPTIONS}))
    chosen.append(CPU)
    return chosen


@functools.lru_cache(maxsize=1)
def preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the ``nvidia-*`` wheels once, before the first CUDA session.

    The GPU image installs ``onnxruntime-gpu[cuda,cudnn]``, whose extras bring exactly the
    CUDA 13 / cuDNN 9 libraries that onnxruntime-gpu was built against;
    ``onnxruntime.preload_dlls()`` loads those (not whatever else is on the library path).
    A no-op on onnxruntime builds without it and never raises: a failure only means the
    CUDA provider may not load, which the runtime choice reports. Cached: once per process.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None or CUDA not in ort.get_available_providers():
        return
    try:
        preload()
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises assorted errors here
        logger.warning("onnxruntime.preload_dlls() failed (%s); the CUDA provider may not load", exc)


@functools.lru_cache(maxsize=64)
def _io_names_cached(path: str, size: int, mtime_ns: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    import onnx  # heavy; only when a model is opened

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf decode errors and I/O errors alike
        raise ModelUnavailableError(f"{path} is not a readable ONNX model ({exc.__class__.__name__}).") from exc
    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(value.name for value in model.graph.input if value.name not in initializers)
    outputs = tuple(value.name for value in model.graph.output)
    return inputs, outputs


def onnx_io_names(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ONNX file's input names (initializers excluded) and output names, in graph order."""
    try:
        st = Path(path).stat()
    except OSError as exc:
        raise ModelUnavailableError(f"Model file {path} cannot be read: {exc.strerror or exc}.") from exc
    return _io_names_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def order_like_onnx(
    tensors: Sequence[TensorInfo], names: Sequence[str], what: str, model: str
) -> tuple[TensorInfo, ...]:
    """``tensors`` (as a runtime lists them) put in the order of ``names`` (the ONNX file's).

    Matching is by name only; a runtime that lists a tensor the ONNX file lacks, or
    misses one it has, is refused: its outputs could not be told apart safely.
    """
    by_name = {info.name: info for info in tensors}
    missing = [name for name in names if name not in by_name]
    extra = [info.name for info in tensors if info.name not in set(names)]
    if missing or extra or len(by_name) != len(tensors):
        raise ModelUnavailableError(
            f"The {what} of {model} do not match its ONNX file by name "
            f"(missing {missing or 'none'}, unknown {extra or 'none'}); rebuild the engine with `python -m mirage models compile`."
        )
    return tuple(by_name[name] for name in names)


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (ints, or str/None for symbolic dims) and numpy dtype of a model input/output."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: type[np.generic]


class ModelInfo:
    """Name/path/inputs/outputs accessors shared by every runtime's model class
    (:class:`OrtModel`, ``TensorRTModel``): the stages only see this surface."""

    name: str
    path: Path
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    @property
    def is_standin(self) -> bool:
        return "standin" in self.path.name

    @property
    def input_names(self) -> list[str]:
        return [info.name for info in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [info.name for info in self.outputs]

    def input(self, name: str) -> TensorInfo:
        for info in self.inputs:
            if info.name == name:
                return info
        raise KeyError(f"model {self.name} has no input {name!r}")

    @property
    def dynamic_batch(self) -> bool:
        """True when the model takes any batch size in one run."""
        raise NotImplementedError

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Outputs in ``output_names`` order (default: all, in the ONNX file's order)."""
        raise NotImplementedError


class OrtModel(ModelInfo):
    """One ONNX model loaded in ONNX Runtime.

    ``provider`` is the provider actually in use (the first one the session kept);
    ``requested`` the providers (with options) the session was asked for;
    ``is_standin`` marks test stand-ins (file name contains ``standin``), which the
    log line names as such so a stand-in is never mistaken for the real model.
    ``inputs``/``outputs`` follow the ONNX file's graph order, matched by name.
    """

    def __init__(self, path: Path, config: OrtConfig, name: str, providers: Sequence[Provider] | None = None) -> None:
        self.path = Path(path)
        self.name = name
        self.config = config
        if not self.path.is_file():
            raise ModelUnavailableError(f"Model file for {name} was not found at {self.path}.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = config.inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        requested = list(providers) if providers is not None else choose_providers(config)
        if any(provider_name(p) == CUDA for p in requested):
            preload_cuda_libraries()
        self.requested: list[Provider] = requested
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=requested)
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise ModelUnavailableError(f"Model {name} at {self.path} could not be loaded: {exc}") from exc
        self.providers: list[str] = list(self._session.get_providers())
        self.provider: str = self.providers[0]
        input_names, output_names = onnx_io_names(self.path)
        self.inputs = order_like_onnx([_info(arg) for arg in self._session.get_inputs()], input_names, "inputs", name)
        self.outputs = order_like_onnx([_info(arg) for arg in self._session.get_outputs()], output_names, "outputs", name)
        label = f"{name} (stand-in)" if self.is_standin else name
        logger.info(
            "model %s: provider %s (requested %s)",
            label,
            self.provider,
            ", ".join(provider_name(p) for p in requested),
        )

    @property
    def dynamic_batch(self) -> bool:
        """True when the first input's leading dimension is symbolic (any batch size)."""
        if not self.inputs or not self.inputs[0].shape:
            return False
        return not isinstance(self.inputs[0].shape[0], int)

    def provider_options(self) -> dict[str, dict[str, str]]:
        """The options each provider of the live session runs with (ONNX Runtime's own report)."""
        return {k: dict(v) for k, v in self._session.get_provider_options().items()}

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Run the session; returns outputs in ``output_names`` order (default: all, in the ONNX file's order)."""
        names = list(output_names) if output_names is not None else self.output_names
        results: list[Any] = self._session.run(names, dict(feeds))
        return [np.asarray(r) for r in results]


def _info(arg: Any) -> TensorInfo:
    shape = tuple(d if isinstance(d, (int, str)) or d is None else None for d in (arg.shape or ()))
    return TensorInfo(name=arg.name, shape=shape, dtype=_ORT_DTYPES.get(arg.type, np.float32))
