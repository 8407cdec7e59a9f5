"""``mirage models compile``: build TensorRT engines ahead of serving, one model at a time, with a report.

Compiles SCRFD, ArcFace and InSwapper (those provisioned) from the ONNX file serving
loads (:func:`mirage.runtime.served.served_onnx`: the dynamic-batch rewrite of a
batch-1 export, or the file itself when its batch is already free) into engines
with one optimisation profile, batch 1 to ``--max-batch``. Engines land in
``MIRAGE_ENGINE_DIR`` (default ``<models dir>/engines``) named by their cache key,
so serving finds exactly the engine built for its GPU, TensorRT and CUDA version,
precision and profile (see :mod:`mirage.runtime.tensorrt`). Defaults for the
precision and the profile come from the same ``MIRAGE_TRT_*`` variables serving
reads, so both sides compute the same key.

Each new engine is checked against fp32 ONNX Runtime on real aligned faces before it
is published (:mod:`mirage.runtime.accuracy`); an engine with NaNs or large errors is
refused with the figures.

**Per model, never all or nothing.** A model whose engine cannot be built (no GPU,
a rewrite that fails its equivalence check, a refused fp16 engine, a TensorRT error)
is reported with the runtime it will serve on instead (ONNX Runtime CUDA or CPU) and
the others are still compiled. The exit status is non-zero (2) only when a
**required** model (``--require``, the manifest's ``required`` models and
``MIRAGE_REQUIRED_MODELS``) has no runnable path at all (not provisioned, or a file
ONNX Runtime cannot read); 1 is a usage error. So an init container that runs this
never keeps a GPU pod from starting because one model serves on CUDA instead of TensorRT.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from mirage.errors import MirageError, ModelUnavailableError
from mirage.runtime.select import (
    Accelerators,
    RuntimeConfig,
    default_engine_dir,
    probe_accelerators,
)
from mirage.runtime.served import SHARED_INPUTS, is_batch_dynamic, served_onnx
from mirage.runtime.tensorrt import (
    KNOWN_SAMPLE_SHAPES,
    PRECISIONS,
    BatchProfile,
    CompileResult,
    compile_model,
    make_engine_key,
)

logger = logging.getLogger(__name__)

#: Compiled by default, when provisioned: the detector and identity models, both InSwapper files
#: and the face enhancers (mirage/enhance/models.py ENHANCER_NAMES).
DEFAULT_MODELS = (
    "scrfd_10g", "arcface_w600k_r50", "inswapper_128", "inswapper_128_fp16",
    "gfpgan_1.4", "codeformer", "gpen_bfr_256", "gpen_bfr_512",
)
EXIT_ERROR = 1
#: A required model has no runnable path (neither an engine nor an ONNX file ONNX Runtime can run).
EXIT_REQUIRED_UNRUNNABLE = 2

Status = Literal["engine", "fallback", "unavailable", "skipped"]


@dataclass(frozen=True)
class ModelReport:
    """What ``compile`` did for one model and what will serve it."""

    model: str
    status: Status
    #: "tensorrt" (an engine), "cuda"/"cpu" (ONNX Runtime fallback), "none" (no runnable path).
    runtime: str
    detail: str
    required: bool = False
    onnx: str | None = None
    engine: str | None = None
    action: str | None = None
    seconds: float = 0.0
    check: str | None = None

    @property
    def runnable(self) -> bool:
        return self.status in ("engine", "fallback")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 2)
        data["runnable"] = self.runnable
        return data

    def line(self) -> str:
        label = f"{self.model}{' (stand-in)' if self.onnx and 'standin' in Path(self.onnx).name else ''}"
        req = " [required]" if self.required else ""
        if self.status == "engine":
            check = f"; {self.check}" if self.check else ""
            return f"{label}{req}: TensorRT engine {self.action} {self.engine} ({self.seconds:.1f} s{check})"
        if self.status == "fallback":
            where = "ONNX Runtime CUDA" if self.runtime == "cuda" else "ONNX Runtime CPU"
            return f"{label}{req}: no engine ({self.detail.rstrip('.')}); serves on {where}"
        if self.status == "skipped":
            return f"{label}{req}: skipped ({self.detail.rstrip('.')})"
        return f"{label}{req}: NOT RUNNABLE ({self.detail.rstrip('.')})"


def add_compile_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``models compile`` (defaults from MIRAGE_TRT_PRECISION / MIRAGE_TRT_MAX_BATCH / MIRAGE_TRT_OPT_BATCH)."""
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="engine precision (default: $MIRAGE_TRT_PRECISION or fp16)")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="largest batch of the profile; match the deployments' max_batch_size (default: $MIRAGE_TRT_MAX_BATCH or 8)",
    )
    parser.add_argument("--opt-batch", type=int, default=None, help="batch TensorRT tunes for (default: $MIRAGE_TRT_OPT_BATCH or max/2)")
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="NAME",
        default=None,
        help=f"models to compile (default: those of {', '.join(DEFAULT_MODELS)} that are provisioned)",
    )
    parser.add_argument(
        "--require",
        nargs="+",
        metavar="NAME",
        default=[],
        help="models that must end with a runnable path (engine or ONNX Runtime), else exit 2; the manifest's required models always are",
    )
    parser.add_argument(
        "--onnx",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="compile this ONNX file under NAME instead of the provisioned one (repeatable)",
    )
    parser.add_argument(
        "--engine-dir", type=Path, default=None, help="where engines go (default: $MIRAGE_ENGINE_DIR or <models dir>/engines)"
    )
    parser.add_argument("--workspace-mb", type=int, default=2048, help="TensorRT builder workspace (default 2048 MB)")
    parser.add_argument("--force", action="store_true", help="rebuild even when a fitting engine exists")
    parser.add_argument(
        "--no-accuracy-check", action="store_true", help="publish new engines without comparing them with fp32 ONNX Runtime on real faces"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _runtime_config(args: argparse.Namespace) -> RuntimeConfig:
    env = RuntimeConfig.from_env()
    max_batch = args.max_batch if args.max_batch is not None else env.profile.max_batch
    if args.opt_batch is not None:
        opt = args.opt_batch
    elif args.max_batch is not None:
        opt = None
    else:
        opt = env.profile.opt_batch
    try:
        profile = BatchProfile.up_to(max_batch, opt)
    except ValueError as exc:
        raise ModelUnavailableError(f"Invalid batch profile: {exc}.") from exc
    return RuntimeConfig(precision=args.precision or env.precision, profile=profile)


def compile_source(name: str, path: Path) -> Path:
    """The file to compile (and to key serving on): :func:`served_onnx`, which must be batch-dynamic
    for a batch 1..N engine."""
    source = served_onnx(name, path)
    if not is_batch_dynamic(source, SHARED_INPUTS.get(name, ())):
        raise ModelUnavailableError(
            f"{path.name} has a fixed batch and its dynamic-batch rewrite did not prove equivalent, so it cannot get "
            "a batch 1..N engine; serving runs it at batch 1 on ONNX Runtime."
        )
    return source


def _targets(args: argparse.Namespace, store: Any | None) -> list[tuple[str, Path | None, str]]:
    """(name, path or None, why not) for every model to handle; only malformed --onnx raises."""
    explicit: dict[str, Path] = {}
    for item in args.onnx:
        name, sep, raw = item.partition("=")
        if not sep or not name or not raw:
            raise ModelUnavailableError(f"--onnx takes NAME=PATH, got {item!r}.")
        path = Path(raw)
        if not path.is_file():
            raise ModelUnavailableError(f"--onnx {name}: {path} does not exist.")
        explicit[name] = path
    if args.models is None and explicit:
        return [(n, p, "") for n, p in explicit.items()]
    names = list(args.models) if args.models is not None else list(DEFAULT_MODELS)
    targets: list[tuple[str, Path | None, str]] = []
    for name in names:
        if name in explicit:
            targets.append((name, explicit.pop(name), ""))
            continue
        try:
            where: Path | None = store.path(name) if store is not None else None
        except MirageError as exc:  # a name the manifest does not know
            targets.append((name, None, str(exc)))
            continue
        if where is not None and where.is_file():
            targets.append((name, where, ""))
        else:
            targets.append((name, None, f"not provisioned ({where} missing); run `python -m mirage models fetch {name}`"))
    targets.extend((n, p, "") for n, p in explicit.items())
    return targets


def _fallback_runtime(acc: Accelerators) -> str:
    return "cuda" if acc.gpu is not None and acc.ort_cuda else "cpu"


def _onnx_runnable(path: Path) -> str | None:
    """None when ONNX Runtime can open ``path``'s graph (its I/O parse); else why not."""
    from mirage.runtime.onnx import onnx_io_names

    try:
        onnx_io_names(path)
    except ModelUnavailableError as exc:
        return str(exc)
    return None


def compile_one(
    name: str,
    path: Path | None,
    why_missing: str,
    *,
    config: RuntimeConfig,
    acc: Accelerators,
    engine_dir: Path,
    required: bool,
    force: bool = False,
    workspace_bytes: int = 2 << 30,
    accuracy_check: bool = True,
    blocker: str | None = None,
) -> ModelReport:
    """Compile one model; every failure becomes a report line, never an exception."""
    if path is None:  # not provisioned (or unknown): fatal only when required
        return ModelReport(name, "unavailable" if required else "skipped", "none", why_missing, required)
    started = time.perf_counter()
    source = path
    try:
        if blocker is not None:
            raise ModelUnavailableError(blocker)
        source = compile_source(name, path)
        shapes = (config.sample_shapes or {}).get(name)
        key = make_engine_key(
            source, name, acc.gpu, acc.tensorrt_version, config.precision, config.profile, shapes,  # type: ignore[arg-type]
            cuda_version=acc.cuda_runtime or "",
        )
        check = None
        if accuracy_check:
            from mirage.runtime.accuracy import engine_check

            check = engine_check(name, source, config.profile.max_batch, KNOWN_SAMPLE_SHAPES.get(name))
        print(f"{name}: compiling {source.name} for {key.describe()} …", file=sys.stderr)
        result: CompileResult = compile_model(
            name, source, engine_dir, key, force=force, workspace_bytes=workspace_bytes, check=check
        )
        return ModelReport(
            name, "engine", "tensorrt", f"TensorRT engine for {key.describe()}", required, str(source),
            str(result.path), result.action, result.seconds, result.check or None,
        )
    except (MirageError, ValueError, OSError, RuntimeError) as exc:
        detail = str(exc) if not isinstance(exc, OSError) else f"{exc.strerror or exc}"
        served = source
        try:
            served = served_onnx(name, path)
        except MirageError:
            pass
        problem = _onnx_runnable(served)
        seconds = time.perf_counter() - started
        if problem is not None:
            return ModelReport(
                name,
                "unavailable",
                "none",
                f"{detail.rstrip('.')}; and ONNX Runtime cannot run it either: {problem}",
                required,
                str(served),
                seconds=seconds,
            )
        return ModelReport(name, "fallback", _fallback_runtime(acc), detail, required, str(served), seconds=seconds)


def run_compile(args: argparse.Namespace, store: object | None = None, out: TextIO | None = None) -> int:
    """Run a parsed ``models compile``; returns the exit code. ``store`` is a ModelStore (default: from the environment)."""
    out = out if out is not None else sys.stdout
    try:
        config = _runtime_config(args)
        acc = probe_accelerators()
        if store is None and (args.models is not None or not args.onnx):
            from mirage.weights.provision import ModelStore, ProvisionConfig

            store = ModelStore(ProvisionConfig.from_env())
        targets = _targets(args, store)
        root = getattr(store, "root", None)
        if args.engine_dir is not None:
            engine_dir = args.engine_dir
        elif root is not None:
            engine_dir = default_engine_dir(Path(root))
        else:
            from mirage.weights.provision import ProvisionConfig

            engine_dir = default_engine_dir(ProvisionConfig.from_env().models_dir)
    except (MirageError, ValueError) as exc:  # a malformed argument, MIRAGE_TRT_* variable or profile
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    required_names = set(args.require or [])
    if store is not None and hasattr(store, "required_names"):
        required_names |= set(store.required_names())
    blocker = None
    if acc.gpu is None:
        blocker = f"cannot compile TensorRT engines here: no CUDA GPU ({acc.gpu_reason}); run it in the GPU image (docs/gpu.md)"
    elif acc.tensorrt_version is None:
        blocker = f"cannot compile TensorRT engines here: {acc.tensorrt_reason}"
    if blocker:
        print(f"warning: {blocker}.", file=sys.stderr)
    reports: list[ModelReport] = []
    handled = {name for name, _, _ in targets}
    for name in sorted(required_names - handled):  # required but not asked for: still report its state
        found = getattr(store, "path", lambda n: None)(name) if store is not None else None
        if found is not None and Path(found).is_file():
            problem = _onnx_runnable(Path(found))
            status: Status = "fallback" if problem is None else "unavailable"
            reports.append(
                ModelReport(
                    name,
                    status,
                    _fallback_runtime(acc) if problem is None else "none",
                    problem or "not compiled in this run",
                    True,
                    str(found),
                )
            )
        else:
            reports.append(ModelReport(name, "unavailable", "none", f"not provisioned; run `python -m mirage models fetch {name}`", True))
    for name, path, why in targets:
        report = compile_one(
            name, path, why, config=config, acc=acc, engine_dir=Path(engine_dir), required=name in required_names,
            force=args.force, workspace_bytes=args.workspace_mb << 20, accuracy_check=not args.no_accuracy_check, blocker=blocker,
        )
        reports.append(report)
        if not args.json:
            print(report.line(), file=out)
    fatal = [r for r in reports if r.required and not r.runnable]
    if args.json:
        json.dump(
            {"accelerators": acc.to_dict(), "models": [r.to_dict() for r in reports], "exit": EXIT_REQUIRED_UNRUNNABLE if fatal else 0},
            out, indent=2,
        )
        print(file=out)
    else:
        for r in reports:
            if r.model not in handled:
                print(r.line(), file=out)
        engines = sum(r.status == "engine" for r in reports)
        fallbacks = sum(r.status == "fallback" for r in reports)
        broken = sum(r.status == "unavailable" for r in reports)
        print(f"summary: {engines} with a TensorRT engine, {fallbacks} on ONNX Runtime, {broken} not runnable", file=out)
    if fatal:
        print(
            f"error: required model(s) without a runnable path: {', '.join(r.model for r in fatal)}.", file=sys.stderr
        )
        return EXIT_REQUIRED_UNRUNNABLE
    return 0
