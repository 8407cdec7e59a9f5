"""TensorRT engines: the cache key, the engine file format and ahead-of-time builds.

Building an engine takes minutes and the result only runs on the GPU model,
TensorRT version, precision and shape profile it was built for. So engines are
built **before serving** (``python -m mirage models compile``) and every engine
file carries the key it was built for:

    key = sha256 of the ONNX file compiled + GPU name + compute capability
          + TensorRT version + CUDA runtime version (a CUDA 12 and a CUDA 13 build of the
          same TensorRT release make different engines) + precision
          + profile (min/opt/max batch, per-sample shapes)

An engine file is ``MAGIC``, an 8-byte little-endian header length, a JSON
header (the key, its digest, the sha256 and size of the engine bytes, the model
name) and the serialized engine. Loading reads the header first and refuses a
file whose key differs from what this process needs (foreign GPU, other
TensorRT, stale ONNX, other profile), or whose bytes do not match their
recorded sha256 (truncated, corrupt), with a :class:`ModelUnavailableError`
that says what differs and how to rebuild. Nothing is ever deserialized blindly.

``tensorrt`` and CUDA are imported lazily: this module imports (and its key and
file checks run) on any CPU machine. Running an engine: :mod:`mirage.runtime.tensorrt_model`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from mirage import __version__
from mirage.errors import ModelUnavailableError
from mirage.runtime.cuda import GpuInfo

logger = logging.getLogger(__name__)

Precision = Literal["fp16", "fp32"]
PRECISIONS: tuple[str, ...] = ("fp16", "fp32")

MAGIC = b"MIRAGE-TRT-ENGINE\n"
FORMAT_VERSION = 1
ENGINE_SUFFIX = ".engine"
_HEADER_LEN = struct.Struct("<Q")
_MAX_HEADER_BYTES = 1 << 20
_CHUNK = 1 << 20
COMPILE_HINT = "python -m mirage models compile"

#: Per-sample input shapes for models whose ONNX leaves more than the batch dimension open.
#: SCRFD is exported with a free input size; Mirage always feeds it 640x640 (ScrfdConfig.input_size).
KNOWN_SAMPLE_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "scrfd_10g": {"input.1": (3, 640, 640)},
}


# --------------------------------------------------------------------------- the key


@dataclass(frozen=True)
class BatchProfile:
    """The one optimisation profile: batch sizes from ``min_batch`` to ``max_batch``, tuned for ``opt_batch``."""

    min_batch: int = 1
    opt_batch: int = 4
    max_batch: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch <= 256:
            raise ValueError(
                f"batch profile needs 1 <= min <= opt <= max <= 256, got {self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )

    @classmethod
    def up_to(cls, max_batch: int, opt_batch: int | None = None) -> BatchProfile:
        """1..max_batch, tuned for ``opt_batch`` (default: half the maximum, at least 1)."""
        return cls(1, opt_batch if opt_batch is not None else max(1, max_batch // 2), max_batch)

    def describe(self) -> str:
        return f"batch {self.min_batch}-{self.max_batch} (opt {self.opt_batch})"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. Two engines with equal keys are interchangeable."""

    model_sha256: str
    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    precision: str
    profile: BatchProfile
    #: Per-sample input shapes (batch dimension excluded), sorted by input name.
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    #: The CUDA runtime version of the process (``"13.0"``); ``""`` in engines written before it was recorded.
    cuda_version: str = ""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_sha256": self.model_sha256,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "tensorrt_version": self.tensorrt_version,
            "cuda_version": self.cuda_version,
            "precision": self.precision,
            "profile": asdict(self.profile),
            "input_shapes": {name: list(shape) for name, shape in self.input_shapes},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineKey:
        profile = data["profile"]
        shapes = data.get("input_shapes") or {}
        return cls(
            model_sha256=str(data["model_sha256"]),
            gpu_name=str(data["gpu_name"]),
            compute_capability=str(data["compute_capability"]),
            tensorrt_version=str(data["tensorrt_version"]),
            cuda_version=str(data.get("cuda_version", "")),
            precision=str(data["precision"]),
            profile=BatchProfile(int(profile["min_batch"]), int(profile["opt_batch"]), int(profile["max_batch"])),
            input_shapes=tuple(sorted((str(k), tuple(int(d) for d in v)) for k, v in shapes.items())),
        )

    def digest(self) -> str:
        """sha256 of the key's canonical JSON: names the engine file."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def describe(self) -> str:
        return (
            f"{self.gpu_name} (compute {self.compute_capability}), TensorRT {self.tensorrt_version}, "
            f"CUDA {self.cuda_version or 'unknown'}, {self.precision}, {self.profile.describe()}"
        )

    def differences(self, wanted: EngineKey) -> list[str]:
        """How this (an engine's) key differs from the ``wanted`` one, in words."""
        diffs: list[str] = []
        if self.model_sha256 != wanted.model_sha256:
            diffs.append(
                f"it was compiled from another ONNX file (sha256 {self.model_sha256[:12]}…, this model is {wanted.model_sha256[:12]}…)"
            )
        if self.gpu_name != wanted.gpu_name:
            diffs.append(f"it was built on {self.gpu_name}, this GPU is {wanted.gpu_name}")
        if self.compute_capability != wanted.compute_capability:
            diffs.append(f"compute capability {self.compute_capability}, this GPU has {wanted.compute_capability}")
        if self.tensorrt_version != wanted.tensorrt_version:
            diffs.append(f"TensorRT {self.tensorrt_version}, this process has TensorRT {wanted.tensorrt_version}")
        if self.cuda_version != wanted.cuda_version:
            diffs.append(
                f"CUDA runtime {self.cuda_version or 'not recorded'}, this process has CUDA {wanted.cuda_version or 'unknown'}"
            )
        if self.precision != wanted.precision:
            diffs.append(f"precision {self.precision}, {wanted.precision} is wanted")
        if self.profile != wanted.profile:
            diffs.append(f"{self.profile.describe()}, {wanted.profile.describe()} is wanted")
        if self.input_shapes != wanted.input_shapes:
            diffs.append(f"input shapes {dict(self.input_shapes)}, {dict(wanted.input_shapes)} are wanted")
        return diffs


def engine_filename(model_name: str, key: EngineKey) -> str:
    """``<model>.<precision>.b<max>.<digest12>.engine``: engines for several GPUs can share one volume."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)
    return f"{safe}.{key.precision}.b{key.profile.max_batch}.{key.digest()[:12]}{ENGINE_SUFFIX}"


_SHA_MEMO: dict[tuple[str, int, int], str] = {}
_SHA_LOCK = threading.Lock()


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for this process (InSwapper is 0.5 GB)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise ModelUnavailableError(f"Model file {path} cannot be read: {exc.strerror or exc}.") from exc
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _SHA_LOCK:
        if memo_key in _SHA_MEMO:
            return _SHA_MEMO[memo_key]
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(block)
    except OSError as exc:  # unreadable or vanished mid-read (shared volumes): a fallback, not a crash
        raise ModelUnavailableError(f"Model file {path} cannot be read: {exc.strerror or exc}.") from exc
    value = digest.hexdigest()
    with _SHA_LOCK:
        _SHA_MEMO[memo_key] = value
    return value


def onnx_sample_shapes(
    onnx_path: Path, overrides: Mapping[str, Sequence[int]] | None = None
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Per-sample shapes of the model's inputs (batch dimension dropped), as the engine profile needs them.

    Every non-batch dimension must be fixed in the ONNX file or given in ``overrides``.
    """
    overrides = dict(overrides or {})
    try:
        st = Path(onnx_path).stat()
    except OSError as exc:
        raise ModelUnavailableError(f"Model file {onnx_path} cannot be read: {exc.strerror or exc}.") from exc
    memo_key = (str(Path(onnx_path).resolve()), st.st_size, st.st_mtime_ns, repr(sorted(overrides.items())))
    with _SHA_LOCK:
        if memo_key in _SHAPES_MEMO:
            return _SHAPES_MEMO[memo_key]
    shapes = _read_sample_shapes(Path(onnx_path), overrides)
    with _SHA_LOCK:
        _SHAPES_MEMO[memo_key] = shapes
    return shapes


_SHAPES_MEMO: dict[tuple[str, int, int, str], tuple[tuple[str, tuple[int, ...]], ...]] = {}


def _read_sample_shapes(
    onnx_path: Path, overrides: dict[str, Sequence[int]]
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    import onnx  # heavy; only when a key or an engine is wanted

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors and I/O errors alike
        raise ModelUnavailableError(f"{onnx_path} is not a readable ONNX model ({exc.__class__.__name__}).") from exc
    initializers = {init.name for init in model.graph.initializer}
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = list(value.type.tensor_type.shape.dim)
        if value.name in overrides:
            sample = tuple(int(d) for d in overrides[value.name])
            if len(sample) != len(dims) - 1:
                raise ModelUnavailableError(
                    f"Shape override for input {value.name!r} of {onnx_path.name} has {len(sample)} dimensions; "
                    f"the model has {len(dims) - 1} after the batch."
                )
        else:
            rest = dims[1:]
            open_dims = [i + 1 for i, d in enumerate(rest) if not d.HasField("dim_value") or d.dim_value <= 0]
            if open_dims:
                raise ModelUnavailableError(
                    f"Input {value.name!r} of {onnx_path.name} has free dimensions {open_dims} besides the batch; "
                    "give their sizes (e.g. KNOWN_SAMPLE_SHAPES) to build a TensorRT profile."
                )
            sample = tuple(int(d.dim_value) for d in rest)
        shapes.append((value.name, sample))
    if not shapes:
        raise ModelUnavailableError(f"{onnx_path} declares no inputs.")
    return tuple(sorted(shapes))


def make_engine_key(
    onnx_path: Path,
    model_name: str,
    gpu: GpuInfo,
    tensorrt_version: str,
    precision: str,
    profile: BatchProfile,
    sample_shapes: Mapping[str, Sequence[int]] | None = None,
    cuda_version: str = "",
) -> EngineKey:
    """The key an engine of ``onnx_path`` for this GPU, TensorRT, CUDA runtime, precision and profile must carry."""
    overrides = sample_shapes if sample_shapes is not None else KNOWN_SAMPLE_SHAPES.get(model_name)
    return EngineKey(
        model_sha256=file_sha256(onnx_path),
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        tensorrt_version=tensorrt_version,
        precision=precision,
        profile=profile,
        input_shapes=onnx_sample_shapes(onnx_path, overrides),
        cuda_version=cuda_version,
    )


# --------------------------------------------------------------------------- engine files


@dataclass(frozen=True)
class EngineHeader:
    """What an engine file says about itself."""

    model: str
    key: EngineKey
    key_digest: str
    engine_sha256: str
    engine_bytes: int
    built_at: str
    mirage_version: str
    onnx_file: str
    payload_offset: int = field(default=0, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "model": self.model,
            "key": self.key.to_dict(),
            "key_digest": self.key_digest,
            "engine_sha256": self.engine_sha256,
            "engine_bytes": self.engine_bytes,
            "built_at": self.built_at,
            "mirage_version": self.mirage_version,
            "onnx_file": self.onnx_file,
        }


def write_engine_file(path: Path, model_name: str, key: EngineKey, engine: bytes, onnx_file: str = "") -> EngineHeader:
    """Write ``engine`` with its header, atomically (temporary file, then rename)."""
    path = Path(path)
    header = EngineHeader(
        model=model_name,
        key=key,
        key_digest=key.digest(),
        engine_sha256=hashlib.sha256(engine).hexdigest(),
        engine_bytes=len(engine),
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        mirage_version=__version__,
        onnx_file=onnx_file,
    )
    blob = json.dumps(header.to_json(), sort_keys=True, indent=1).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(MAGIC)
            fh.write(_HEADER_LEN.pack(len(blob)))
            fh.write(blob)
            fh.write(engine)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return header


def _corrupt(path: Path, why: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"TensorRT engine {path} is unusable ({why}); delete it and rebuild with `{COMPILE_HINT}`."
    )


def read_engine_header(path: Path) -> EngineHeader:
    """Parse an engine file's header; :class:`ModelUnavailableError` if it is not a complete Mirage engine header."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            magic = fh.read(len(MAGIC))
            if magic != MAGIC:
                raise _corrupt(path, "not a Mirage TensorRT engine file: the header is missing")
            raw_len = fh.read(_HEADER_LEN.size)
            if len(raw_len) != _HEADER_LEN.size:
                raise _corrupt(path, "truncated header")
            (length,) = _HEADER_LEN.unpack(raw_len)
            if not 0 < length <= _MAX_HEADER_BYTES:
                raise _corrupt(path, f"implausible header length {length}")
            blob = fh.read(length)
    except OSError as exc:
        raise ModelUnavailableError(f"TensorRT engine {path} cannot be read: {exc.strerror or exc}.") from exc
    if len(blob) != length:
        raise _corrupt(path, "truncated header")
    try:
        data = json.loads(blob.decode("utf-8"))
        if data.get("format") != FORMAT_VERSION:
            raise _corrupt(path, f"header format {data.get('format')!r}, this Mirage reads {FORMAT_VERSION}")
        key = EngineKey.from_dict(data["key"])
        header = EngineHeader(
            model=str(data["model"]),
            key=key,
            key_digest=str(data["key_digest"]),
            engine_sha256=str(data["engine_sha256"]),
            engine_bytes=int(data["engine_bytes"]),
            built_at=str(data.get("built_at", "")),
            mirage_version=str(data.get("mirage_version", "")),
            onnx_file=str(data.get("onnx_file", "")),
            payload_offset=len(MAGIC) + _HEADER_LEN.size + length,
        )
    except ModelUnavailableError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _corrupt(path, f"unreadable header ({exc.__class__.__name__}: {exc})") from exc
    if header.key_digest != key.digest():
        raise _corrupt(path, "its header was altered: the key does not match its recorded digest")
    return header


def check_engine(path: Path, wanted: EngineKey, model_name: str | None = None) -> EngineHeader:
    """The header of ``path`` if it was built for exactly ``wanted`` (and ``model_name``); else a clear refusal."""
    header = read_engine_header(path)
    if model_name is not None and header.model != model_name:
        raise ModelUnavailableError(
            f"TensorRT engine {Path(path).name} was built for model {header.model}, not {model_name}; "
            f"refusing to load it. Rebuild with `{COMPILE_HINT} --models {model_name}`."
        )
    diffs = header.key.differences(wanted)
    if diffs:
        raise ModelUnavailableError(
            f"TensorRT engine {Path(path).name} does not fit this server: {'; '.join(diffs)}. "
            f"Refusing to load it; rebuild with `{COMPILE_HINT}`."
        )
    return header


def read_engine_payload(path: Path, wanted: EngineKey, model_name: str | None = None) -> bytes:
    """The serialized engine, after the key check and a full integrity check of its bytes."""
    path = Path(path)
    header = check_engine(path, wanted, model_name)
    try:
        with path.open("rb") as fh:
            fh.seek(header.payload_offset)
            payload = fh.read()
    except OSError as exc:
        raise ModelUnavailableError(f"TensorRT engine {path} cannot be read: {exc.strerror or exc}.") from exc
    if len(payload) != header.engine_bytes:
        raise _corrupt(path, f"the engine has {len(payload)} bytes, its header records {header.engine_bytes} (truncated or padded)")
    if hashlib.sha256(payload).hexdigest() != header.engine_sha256:
        raise _corrupt(path, "the engine bytes do not match their recorded sha256 (corrupt)")
    return payload


def find_engine(engine_dir: Path, model_name: str, wanted: EngineKey) -> tuple[Path, EngineHeader]:
    """The engine of ``model_name`` built for ``wanted``, or a ModelUnavailableError saying what is there instead."""
    engine_dir = Path(engine_dir)
    candidate = engine_dir / engine_filename(model_name, wanted)
    if candidate.is_file():
        return candidate, check_engine(candidate, wanted, model_name)
    others: list[str] = []
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)
    for path in sorted(engine_dir.glob(f"{safe}.*{ENGINE_SUFFIX}")) if engine_dir.is_dir() else []:
        try:
            header = read_engine_header(path)
        except ModelUnavailableError as exc:
            others.append(f"{path.name}: {exc}")
            continue
        diffs = header.key.differences(wanted)
        others.append(f"{path.name}: {'; '.join(diffs) if diffs else 'matches but is misnamed'}")
    where = f"in {engine_dir}" if engine_dir.is_dir() else f"({engine_dir} does not exist)"
    found = f" Present but not usable: {' | '.join(others)}." if others else ""
    raise ModelUnavailableError(
        f"No TensorRT engine for {model_name} {where} fits {wanted.describe()}.{found} "
        f"Build one with `{COMPILE_HINT} --models {model_name}`."
    )


# --------------------------------------------------------------------------- TensorRT (lazy)


def _preload() -> None:
    """CUDA libraries from the wheels first (onnxruntime.preload_dlls), so TensorRT finds the same ones."""
    from mirage.runtime.onnx import preload_cuda_libraries

    preload_cuda_libraries()


def tensorrt_version() -> tuple[str | None, str]:
    """``(version, "")`` when the ``tensorrt`` package imports, else ``(None, why not)``."""
    _preload()
    try:
        import tensorrt as trt
    except ImportError:
        return None, "the tensorrt package is not installed (it ships in the GPU image: requirements-gpu.txt)"
    except OSError as exc:  # the bindings found but its shared libraries did not load
        return None, f"tensorrt is installed but its libraries failed to load ({exc})"
    return str(trt.__version__), ""


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or ModelUnavailableError saying why it cannot be imported."""
    _preload()
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise ModelUnavailableError(f"TensorRT is not available in this process ({exc}).") from exc
    return trt


def tensorrt_logger(trt: Any) -> Any:
    """A TensorRT logger that speaks through Python logging."""

    class _Logger(trt.ILogger):  # type: ignore[misc]  # subclasses TensorRT's (untyped) logger
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                logger.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.WARNING:
                logger.warning("TensorRT: %s", msg)
            else:
                logger.debug("TensorRT: %s", msg)

    return _Logger()


def _parser_error(error: Any) -> str:
    describe = getattr(error, "desc", None)
    return str(describe()) if callable(describe) else str(error)


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def build_engine(
    onnx_path: Path,
    key: EngineKey,
    workspace_bytes: int = 2 << 30,
    timing_cache: Path | None = None,
) -> bytes:
    """Compile ``onnx_path`` into a serialized engine for ``key`` (one profile, min..max batch). Minutes, GPU needed."""
    trt = import_tensorrt()
    if str(trt.__version__) != key.tensorrt_version:
        raise ModelUnavailableError(
            f"The key asks for TensorRT {key.tensorrt_version} but this process has {trt.__version__}."
        )
    trt_logger = tensorrt_logger(trt)
    builder = trt.Builder(trt_logger)
    flags = 0
    if _major(key.tensorrt_version) < 10:  # TensorRT 8.x still needs the explicit-batch flag
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelUnavailableError(f"TensorRT could not parse {Path(onnx_path).name}: {errors or 'unknown error'}.")

    shapes = dict(key.input_shapes)
    profile = builder.create_optimization_profile()
    p = key.profile
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name not in shapes:
            raise ModelUnavailableError(f"{Path(onnx_path).name} has an input {tensor.name!r} the engine key does not describe.")
        dims = tuple(int(d) for d in tensor.shape)
        if dims and dims[0] > 0:  # a fixed leading dimension is not a batch (e.g. CodeFormer's shared weight)
            profile.set_shape(tensor.name, dims, dims, dims)
            continue
        sample = shapes[tensor.name]
        profile.set_shape(tensor.name, (p.min_batch, *sample), (p.opt_batch, *sample), (p.max_batch, *sample))

    config = builder.create_builder_config()
    config.add_optimization_profile(profile)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if key.precision == "fp16":
        if hasattr(trt.BuilderFlag, "FP16"):
            config.set_flag(trt.BuilderFlag.FP16)
        else:  # TensorRT 11+: strongly typed networks; the ONNX file's own types decide
            logger.info("TensorRT %s builds strongly typed networks: fp16 comes from the ONNX file's own types", trt.__version__)
    elif hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32, not TF32 matmuls

    cache = None
    if timing_cache is not None:
        previous = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(previous)
        config.set_timing_cache(cache, ignore_mismatch=False)

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelUnavailableError(
            f"TensorRT failed to build an engine for {Path(onnx_path).name} (see the TensorRT errors logged above)."
        )
    engine = bytes(memoryview(serialized))
    logger.info("built TensorRT engine for %s in %.1f s (%d bytes)", Path(onnx_path).name, time.perf_counter() - started, len(engine))

    if cache is not None and timing_cache is not None:
        _atomic_write(timing_cache, bytes(memoryview(cache.serialize())))
    runtime = trt.Runtime(trt_logger)
    if runtime.deserialize_cuda_engine(engine) is None:  # never write an engine this GPU cannot load
        raise ModelUnavailableError(f"The engine just built for {Path(onnx_path).name} does not deserialize on this GPU.")
    return engine


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a uniquely named temporary file beside it, then rename.

    The temporary name comes from ``mkstemp`` (not the PID: pods sharing a volume often
    have the same PIDs, and threads of one process always do), so concurrent writers
    never truncate each other's file; the last complete write wins.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def timing_cache_path(engine_dir: Path, key: EngineKey) -> Path:
    """One timing cache per GPU model, TensorRT and CUDA version, shared by all models' builds."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", key.gpu_name).strip("-").lower()
    cuda = f".cuda{key.cuda_version}" if key.cuda_version else ""
    return Path(engine_dir) / f"timing.{gpu}.sm{key.compute_capability}.trt{key.tensorrt_version}{cuda}.cache"


# --------------------------------------------------------------------------- ahead-of-time compile


@dataclass(frozen=True)
class CompileResult:
    model: str
    path: Path
    action: Literal["built", "present"]
    seconds: float
    key: EngineKey
    #: What the build-time check of a new engine measured (e.g. its accuracy against ONNX Runtime fp32).
    check: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "path": str(self.path),
            "action": self.action,
            "seconds": round(self.seconds, 2),
            "key": self.key.to_dict(),
            "check": self.check or None,
        }


#: Checks a freshly built engine file before it is published; returns what it measured,
#: raises ModelUnavailableError to refuse the engine (e.g. mirage.runtime.accuracy).
EngineCheck = Callable[[Path], str]


def compile_model(
    model_name: str,
    onnx_path: Path,
    engine_dir: Path,
    key: EngineKey,
    *,
    force: bool = False,
    workspace_bytes: int = 2 << 30,
    check: EngineCheck | None = None,
) -> CompileResult:
    """Build (or confirm) the engine of ``model_name`` for ``key`` in ``engine_dir``; one builder at a time per file.

    A new engine is written under a temporary name first; ``check`` (when given) runs
    it, and only an engine that passes is renamed to its final name, so a refused
    engine (NaNs, large fp16 errors) is never found by serving.
    """
    from filelock import FileLock

    engine_dir = Path(engine_dir)
    engine_dir.mkdir(parents=True, exist_ok=True)
    target = engine_dir / engine_filename(model_name, key)
    started = time.perf_counter()
    with FileLock(str(target) + ".lock"):
        if target.is_file() and not force:
            try:
                read_engine_payload(target, key, model_name)
                return CompileResult(model_name, target, "present", time.perf_counter() - started, key)
            except ModelUnavailableError as exc:
                logger.warning("rebuilding %s: %s", target.name, exc)
        engine = build_engine(onnx_path, key, workspace_bytes, timing_cache_path(engine_dir, key))
        candidate = engine_dir / f".{target.name}.{uuid.uuid4().hex[:12]}.candidate"
        write_engine_file(candidate, model_name, key, engine, Path(onnx_path).name)
        note = ""
        try:
            if check is not None:
                note = check(candidate)
            os.replace(candidate, target)
        finally:
            candidate.unlink(missing_ok=True)
    return CompileResult(model_name, target, "built", time.perf_counter() - started, key, note)
