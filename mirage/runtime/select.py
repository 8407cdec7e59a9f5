"""Which runtime serves a model: a compiled TensorRT engine, else ONNX Runtime CUDA, else CPU.

:func:`select_runtime` decides and says why (one log line, and
:meth:`RuntimeChoice.to_dict` for ``/debug/models``); :func:`load_model` also
opens the model and falls back a step when the chosen runtime fails to load.
Nothing here builds an engine: engines are compiled ahead of time by
``python -m mirage models compile`` and only *found* here, so a frame never
waits for a TensorRT build. For the same reason the ONNX Runtime sessions opened
here never request ONNX Runtime's own TensorRT provider (it would build engines
on the first frames).

Opening a TensorRT engine can fail in ways that are not the engine's fault — no CUDA
runtime (:class:`~mirage.runtime.cuda.CudaUnavailableError`), an ``OSError`` reading
the file: all of them fall back a step with a log line, never kill the replica.
A model that lands on ONNX Runtime CUDA is run once at every batch size of the
profile at load (:func:`warm_up`), so no live frame pays a first-run cost.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mirage.env import read_bool, read_choice, read_int, read_str
from mirage.errors import ModelUnavailableError
from mirage.runtime.cuda import (
    CudaUnavailableError,
    GpuInfo,
    cuda_runtime_version,
    probe_gpu,
)
from mirage.runtime.onnx import CPU, CUDA, OrtConfig, OrtModel
from mirage.runtime.tensorrt import (
    KNOWN_SAMPLE_SHAPES,
    PRECISIONS,
    BatchProfile,
    EngineKey,
    find_engine,
    make_engine_key,
    tensorrt_version,
)
from mirage.runtime.tensorrt_model import TensorRTModel

logger = logging.getLogger(__name__)

RuntimeKind = Literal["tensorrt", "cuda", "cpu"]
Model = OrtModel | TensorRTModel


#: The served batch size of the model deployments (configs/serve_a10g.yaml's user_config);
#: engines are compiled for batches 1..DEFAULT_MAX_BATCH.
DEFAULT_MAX_BATCH = 8


@dataclass(frozen=True)
class Accelerators:
    """What this process can use: a GPU, TensorRT, and ONNX Runtime's providers (each with why not)."""

    gpu: GpuInfo | None
    gpu_reason: str
    tensorrt_version: str | None
    tensorrt_reason: str
    ort_providers: tuple[str, ...]
    #: The CUDA runtime version this process loads (``"13.0"``): part of every engine key.
    cuda_runtime: str | None = None

    @property
    def ort_cuda(self) -> bool:
        return CUDA in self.ort_providers

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu.to_dict() if self.gpu else None,
            "gpu_reason": self.gpu_reason or None,
            "tensorrt": self.tensorrt_version,
            "tensorrt_reason": self.tensorrt_reason or None,
            "cuda_runtime": self.cuda_runtime,
            "onnxruntime_providers": list(self.ort_providers),
        }


def startup_line(acc: Accelerators) -> str:
    """The one line a process logs at start-up about its GPU and driver."""
    if acc.gpu is None:
        return f"GPU: none usable ({acc.gpu_reason}); neural models run on the CPU"
    cuda = f", CUDA runtime {acc.cuda_runtime}" if acc.cuda_runtime else ""
    trt = f"TensorRT {acc.tensorrt_version}" if acc.tensorrt_version else f"no TensorRT ({acc.tensorrt_reason})"
    return f"GPU: {acc.gpu.name} (compute {acc.gpu.compute_capability}), driver OK{cuda}, {trt}"


@functools.lru_cache(maxsize=1)
def probe_accelerators() -> Accelerators:
    """Probe once per process (driver and its CUDA version, TensorRT import, ONNX Runtime's
    provider list) and log :func:`startup_line` once: a warning when a driver is there but unusable."""
    import onnxruntime as ort

    gpu, gpu_reason = probe_gpu()
    version, trt_reason = tensorrt_version()
    cuda, _ = cuda_runtime_version() if gpu is not None else (None, "")
    acc = Accelerators(gpu, gpu_reason, version, trt_reason, tuple(ort.get_available_providers()), cuda)
    driver_there = gpu is None and not gpu_reason.startswith("no NVIDIA driver")
    (logger.warning if driver_there else logger.info)("%s", startup_line(acc))
    return acc


@dataclass(frozen=True)
class RuntimeConfig:
    """How serving picks runtimes; must match what ``models compile`` built (precision, profile)."""

    precision: str = "fp16"
    profile: BatchProfile = field(default_factory=lambda: BatchProfile.up_to(DEFAULT_MAX_BATCH))
    #: ``MIRAGE_CUDA_ONLY``: ONNX Runtime CUDA with CPU fallback, never TensorRT (the original product's switch).
    cuda_only: bool = False
    allow_tensorrt: bool = True
    allow_cuda: bool = True
    #: Per-sample input shapes by model name, for models whose ONNX leaves them open (default: KNOWN_SAMPLE_SHAPES).
    sample_shapes: Mapping[str, Mapping[str, Sequence[int]]] | None = None
    #: Run a model that lands on ONNX Runtime CUDA once per batch size 1..max at load (:func:`warm_up`).
    warm_cuda: bool = True
    #: ``MIRAGE_ENGINE_DIR``: where compiled engines are; ``None``: ``<models dir>/engines``.
    engine_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RuntimeConfig:
        """``MIRAGE_CUDA_ONLY`` (0), ``MIRAGE_TRT_PRECISION`` (fp16), ``MIRAGE_TRT_MAX_BATCH`` (8),
        ``MIRAGE_TRT_OPT_BATCH`` (max/2), ``MIRAGE_ENGINE_DIR`` (``<models dir>/engines``)."""
        env = os.environ if environ is None else environ
        precision = read_choice(env, "MIRAGE_TRT_PRECISION", "fp16", PRECISIONS)
        max_batch = read_int(env, "MIRAGE_TRT_MAX_BATCH", DEFAULT_MAX_BATCH, lo=1, hi=1024)
        opt: int | None = read_int(env, "MIRAGE_TRT_OPT_BATCH", 0, lo=1, hi=1024) or None
        return cls(
            precision=precision,
            profile=BatchProfile.up_to(max_batch, opt),
            cuda_only=read_bool(env, "MIRAGE_CUDA_ONLY", False),
            engine_dir=Path(engine_dir) if (engine_dir := read_str(env, "MIRAGE_ENGINE_DIR")) else None,
        )


def default_engine_dir(models_dir: Path, environ: Mapping[str, str] | None = None) -> Path:
    """``MIRAGE_ENGINE_DIR``, else ``<models dir>/engines`` (engines live on the models volume)."""
    env = os.environ if environ is None else environ
    raw = read_str(env, "MIRAGE_ENGINE_DIR")
    return Path(raw) if raw else Path(models_dir) / "engines"


@dataclass(frozen=True)
class RuntimeChoice:
    """The runtime picked for one model, and why (shown by ``/debug/models``)."""

    model: str
    kind: RuntimeKind
    reason: str
    path: Path
    onnx_path: Path
    key: EngineKey | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.kind,
            "reason": self.reason,
            "path": str(self.path),
            "engine_key": self.key.to_dict() if self.key else None,
        }


def tensorrt_blocker(config: RuntimeConfig, acc: Accelerators) -> str | None:
    """Why TensorRT cannot serve here (config or accelerators), or None when it can."""
    if config.cuda_only:
        return "MIRAGE_CUDA_ONLY is set"
    if not config.allow_tensorrt:
        return "TensorRT is turned off in the runtime configuration"
    if acc.gpu is None:
        return f"no CUDA GPU ({acc.gpu_reason})"
    if acc.tensorrt_version is None:
        return acc.tensorrt_reason or "TensorRT is not available"
    return None


def _cuda_blocker(config: RuntimeConfig, acc: Accelerators) -> str | None:
    if not config.allow_cuda:
        return "CUDA is turned off in the runtime configuration"
    if acc.gpu is None:
        return f"no CUDA GPU ({acc.gpu_reason})"
    if not acc.ort_cuda:
        return "this onnxruntime build has no CUDAExecutionProvider (the GPU image installs onnxruntime-gpu)"
    return None


def select_runtime(
    model_name: str,
    onnx_path: Path,
    engine_dir: Path,
    config: RuntimeConfig,
    accelerators: Accelerators | None = None,
) -> RuntimeChoice:
    """TensorRT engine → ONNX Runtime CUDA → CPU for one model; logs the pick and the reason."""
    onnx_path = Path(onnx_path)
    acc = accelerators if accelerators is not None else probe_accelerators()
    choice: RuntimeChoice | None = None
    trt_why = tensorrt_blocker(config, acc)
    if trt_why is None:
        assert acc.gpu is not None and acc.tensorrt_version is not None
        try:
            shapes = (config.sample_shapes or {}).get(model_name)
            key = make_engine_key(
                onnx_path, model_name, acc.gpu, acc.tensorrt_version, config.precision, config.profile, shapes,
                cuda_version=acc.cuda_runtime or "",
            )
            path, _header = find_engine(engine_dir, model_name, key)
            choice = RuntimeChoice(
                model_name, "tensorrt", f"TensorRT engine {path.name} fits {key.describe()}", path, onnx_path, key
            )
        except ModelUnavailableError as exc:
            trt_why = str(exc)
    if choice is None:
        cuda_why = _cuda_blocker(config, acc)
        if cuda_why is None:
            assert acc.gpu is not None
            reason = f"ONNX Runtime CUDA on {acc.gpu.name}; not TensorRT: {trt_why}"
            choice = RuntimeChoice(model_name, "cuda", reason, onnx_path, onnx_path)
        else:
            reason = f"ONNX Runtime CPU; not TensorRT: {trt_why}; not CUDA: {cuda_why}"
            choice = RuntimeChoice(model_name, "cpu", reason, onnx_path, onnx_path)
    _log_choice(choice)
    return choice


def _label(model_name: str, path: Path) -> str:
    return f"{model_name} (stand-in)" if "standin" in Path(path).name else model_name


def _log_choice(choice: RuntimeChoice) -> None:
    logger.info("model %s: runtime %s (%s)", _label(choice.model, choice.onnx_path), choice.kind, choice.reason)


def open_choice(choice: RuntimeChoice, ort_config: OrtConfig) -> Model:
    """Open the model the way ``choice`` says (no fallback; see :func:`load_model`).

    Every failure to open an engine is a :class:`ModelUnavailableError` (CUDA missing,
    an OSError reading it), so :func:`load_model` can fall back.
    """
    if choice.kind == "tensorrt":
        assert choice.key is not None
        try:
            return TensorRTModel(choice.path, choice.onnx_path, choice.model, choice.key)
        except CudaUnavailableError as exc:
            raise ModelUnavailableError(f"TensorRT engine {choice.path.name} cannot use CUDA: {exc}.") from exc
        except OSError as exc:
            raise ModelUnavailableError(f"TensorRT engine {choice.path} cannot be read: {exc.strerror or exc}.") from exc
    # Never ONNX Runtime's TensorRT provider here: it would build engines while serving.
    session_config = dataclasses.replace(ort_config, allow_tensorrt=False, allow_cuda=choice.kind == "cuda")
    return OrtModel(choice.onnx_path, session_config, choice.model)


def load_model(
    model_name: str,
    onnx_path: Path,
    engine_dir: Path,
    config: RuntimeConfig,
    ort_config: OrtConfig | None = None,
    accelerators: Accelerators | None = None,
) -> tuple[Model, RuntimeChoice]:
    """Select and open a model; an engine or CUDA session that fails to open falls back a step, with the reason.

    The returned choice describes what actually runs (ONNX Runtime may itself keep
    only the CPU provider), so ``/debug/models`` never claims a GPU it did not get.
    """
    ort_config = ort_config or OrtConfig()  # the caller passes what its edge read from the environment
    acc = accelerators if accelerators is not None else probe_accelerators()
    choice = select_runtime(model_name, onnx_path, engine_dir, config, acc)
    if choice.kind == "tensorrt":
        try:
            return open_choice(choice, ort_config), choice
        except ModelUnavailableError as exc:
            logger.warning("model %s: TensorRT engine not loaded (%s); falling back", _label(model_name, onnx_path), exc)
            choice = select_runtime(model_name, onnx_path, engine_dir, dataclasses.replace(config, allow_tensorrt=False), acc)
            choice = dataclasses.replace(choice, reason=f"{choice.reason} (the TensorRT engine failed to load: {exc})")
    model = open_choice(choice, ort_config)
    assert isinstance(model, OrtModel)
    actual: RuntimeKind = "cuda" if model.provider == CUDA else "cpu" if model.provider == CPU else choice.kind
    if actual != choice.kind:
        choice = dataclasses.replace(
            choice, kind=actual, reason=f"ONNX Runtime kept {model.provider} although {choice.kind} was chosen ({choice.reason})"
        )
        _log_choice(choice)
    if actual == "cuda" and config.warm_cuda:
        batches = range(1, config.profile.max_batch + 1) if model.dynamic_batch else range(1, 2)
        shapes = (config.sample_shapes or {}).get(model_name) or KNOWN_SAMPLE_SHAPES.get(model_name)
        try:
            timings = warm_up(model, batches, shapes)
        except Exception as exc:  # noqa: BLE001 - a failed warm-up only costs the first frames a stall
            logger.warning("model %s: warm-up skipped (%s)", _label(model_name, onnx_path), exc)
        else:
            logger.info(
                "model %s: warmed ONNX Runtime CUDA at batch %s (first runs %s ms)",
                _label(model_name, onnx_path),
                f"{batches[0]}-{batches[-1]}",
                ", ".join(f"{ms:.0f}" for ms in timings.values()),
            )
    return model, choice


def warm_up(
    model: Model, batches: Sequence[int], sample_shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[int, float]:
    """Run ``model`` once at each batch size on zero inputs; returns the ms of each first run.

    ONNX Runtime's CUDA provider does per-shape work on the first run of each input
    shape (cuDNN algorithm choice, memory); doing it here keeps it out of live frames.
    Per-sample shapes come from the model's inputs, or ``sample_shapes`` for open ones.
    """
    timings: dict[int, float] = {}
    for batch in batches:
        feeds: dict[str, np.ndarray] = {}
        for info in model.inputs:
            given = (sample_shapes or {}).get(info.name)
            dims = list(given) if given is not None else list(info.shape[1:])
            sample = [d for d in dims if isinstance(d, int) and d > 0]
            if len(sample) != len(dims):
                raise ModelUnavailableError(
                    f"model {model.name}: input {info.name} has open dimensions {info.shape}; give its sample shape to warm it up"
                )
            shape: list[int] = [batch, *sample]
            feeds[info.name] = np.zeros(shape, dtype=info.dtype)
        started = time.perf_counter()
        model.run(feeds)
        timings[batch] = (time.perf_counter() - started) * 1000.0
    return timings
