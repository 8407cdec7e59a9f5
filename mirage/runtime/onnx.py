"""ONNX Runtime sessions for the neural models: provider choice, threads, one log line.

``OrtModel`` is a thin, numpy-in/numpy-out wrapper around one
``onnxruntime.InferenceSession``. Provider order is TensorRT → CUDA → CPU from what
the installed onnxruntime reports; ``MIRAGE_CUDA_ONLY`` drops TensorRT (the original
product's "CUDA EP + CPU fallback"). Thread counts are always set explicitly: ONNX
Runtime's default (one thread per core) fights with Ray and with the other models
in the same process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import onnxruntime as ort

from mirage.errors import ModelUnavailableError

logger = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

#: A provider as ONNX Runtime takes it: a name, or (name, options).
Provider = Union[str, tuple[str, dict[str, str]]]

_TRUE = {"1", "true", "yes", "on"}

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
        """Read ``MIRAGE_CUDA_ONLY`` and ``MIRAGE_ORT_THREADS`` (intra-op threads)."""
        env = os.environ if environ is None else environ
        cuda_only = env.get("MIRAGE_CUDA_ONLY", "").strip().lower() in _TRUE
        threads_text = env.get("MIRAGE_ORT_THREADS", "").strip()
        threads = 1
        if threads_text:
            try:
                threads = int(threads_text)
            except ValueError as exc:
                raise ValueError(f"MIRAGE_ORT_THREADS must be a whole number, got {threads_text!r}.") from exc
            if threads < 1:
                raise ValueError(f"MIRAGE_ORT_THREADS must be at least 1, got {threads}.")
        return cls(intra_op_threads=threads, cuda_only=cuda_only)


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
        chosen.append(CUDA)
    chosen.append(CPU)
    return chosen


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
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

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


class OrtModel(ModelInfo):
    """One ONNX model loaded in ONNX Runtime.

    ``provider`` is the provider actually in use (the first one the session kept);
    ``is_standin`` marks test stand-ins (file name contains ``standin``), which the
    log line names as such so a stand-in is never mistaken for the real model.
    """

    def __init__(self, path: Path, config: OrtConfig, name: str) -> None:
        self.path = Path(path)
        self.name = name
        self.config = config
        if not self.path.is_file():
            raise ModelUnavailableError(f"Model file for {name} was not found at {self.path}.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = config.inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        requested = choose_providers(config)
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=requested)
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise ModelUnavailableError(f"Model {name} at {self.path} could not be loaded: {exc}") from exc
        self.providers: list[str] = list(self._session.get_providers())
        self.provider: str = self.providers[0]
        self.inputs = tuple(_info(arg) for arg in self._session.get_inputs())
        self.outputs = tuple(_info(arg) for arg in self._session.get_outputs())
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

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Run the session; returns outputs in ``output_names`` order (default: all, in model order)."""
        names = list(output_names) if output_names is not None else None
        results: list[Any] = self._session.run(names, dict(feeds))
        return [np.asarray(r) for r in results]


def _info(arg: Any) -> TensorInfo:
    shape = tuple(d if isinstance(d, (int, str)) or d is None else None for d in (arg.shape or ()))
    return TensorInfo(name=arg.name, shape=shape, dtype=_ORT_DTYPES.get(arg.type, np.float32))
