"""``mirage models compile``: build TensorRT engines ahead of serving.

Compiles SCRFD, ArcFace and InSwapper (those provisioned) from their
dynamic-batch ONNX files into engines with one optimisation profile, batch 1 to
``--max-batch`` (the deployments' ``max_batch_size``). Engines land in
``MIRAGE_ENGINE_DIR`` (default ``<models dir>/engines``) named by their cache
key, so serving finds exactly the engine built for its GPU, TensorRT version,
precision and profile (see :mod:`mirage.runtime.tensorrt`). Defaults for the
precision and the profile come from the same ``MIRAGE_TRT_*`` variables serving
reads, so both sides compute the same key.

Needs an NVIDIA GPU and the ``tensorrt`` package (the GPU image); elsewhere it
says why and exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TextIO

from mirage.errors import MirageError, ModelUnavailableError
from mirage.runtime.select import RuntimeConfig, default_engine_dir, probe_accelerators
from mirage.runtime.tensorrt import KNOWN_SAMPLE_SHAPES, PRECISIONS, BatchProfile, compile_model, make_engine_key

logger = logging.getLogger(__name__)

#: Compiled by default, when provisioned: the detector and identity models, and both InSwapper files.
DEFAULT_MODELS = ("scrfd_10g", "arcface_w600k_r50", "inswapper_128", "inswapper_128_fp16")
EXIT_ERROR = 1


def add_compile_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``models compile`` (defaults from MIRAGE_TRT_PRECISION / MIRAGE_TRT_MAX_BATCH / MIRAGE_TRT_OPT_BATCH)."""
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="engine precision (default: $MIRAGE_TRT_PRECISION or fp16)")
    parser.add_argument("--max-batch", type=int, default=None, help="largest batch of the profile; match the deployments' max_batch_size (default: $MIRAGE_TRT_MAX_BATCH or 8)")
    parser.add_argument("--opt-batch", type=int, default=None, help="batch TensorRT tunes for (default: $MIRAGE_TRT_OPT_BATCH or max/2)")
    parser.add_argument("--models", nargs="+", metavar="NAME", default=None, help=f"models to compile (default: those of {', '.join(DEFAULT_MODELS)} that are provisioned)")
    parser.add_argument("--onnx", action="append", default=[], metavar="NAME=PATH", help="compile this ONNX file under NAME instead of the provisioned one (repeatable)")
    parser.add_argument("--engine-dir", type=Path, default=None, help="where engines go (default: $MIRAGE_ENGINE_DIR or <models dir>/engines)")
    parser.add_argument("--workspace-mb", type=int, default=2048, help="TensorRT builder workspace (default 2048 MB)")
    parser.add_argument("--force", action="store_true", help="rebuild even when a fitting engine exists")
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


def _is_batch_dynamic(path: Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return False
    return True


def compile_source(name: str, path: Path) -> Path:
    """The file to compile (and to key serving on): the model itself when its batch is already
    dynamic, else its proven dynamic-batch rewrite beside it (the same file serving loads)."""
    if _is_batch_dynamic(path):
        return path
    from mirage.swap.neural import batch_dynamic_copy

    batch1 = {k: (1, *v) for k, v in KNOWN_SAMPLE_SHAPES.get(name, {}).items()}
    source = batch_dynamic_copy(path, batch1 or None)
    if not _is_batch_dynamic(source):
        raise ModelUnavailableError(
            f"{path.name} has a fixed batch and its dynamic-batch rewrite did not prove equivalent, so it cannot get "
            "a batch 1..N engine; serving runs it at batch 1 on ONNX Runtime."
        )
    return source


def _targets(args: argparse.Namespace, store: object | None) -> list[tuple[str, Path]]:
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
        return list(explicit.items())
    if store is None:
        from mirage.weights.provision import ModelStore, ProvisionConfig

        store = ModelStore(ProvisionConfig.from_env())
    names = list(args.models) if args.models is not None else list(DEFAULT_MODELS)
    targets: list[tuple[str, Path]] = []
    for name in names:
        if name in explicit:
            targets.append((name, explicit.pop(name)))
            continue
        path = store.path(name)  # type: ignore[attr-defined]
        if path.is_file():
            targets.append((name, path))
        elif args.models is not None:
            raise ModelUnavailableError(f"{name} is not provisioned ({path} missing); run `python -m mirage models fetch {name}`.")
        else:
            logger.info("skipping %s: not provisioned", name)
    targets.extend(explicit.items())
    if not targets:
        raise ModelUnavailableError(
            f"None of {', '.join(names)} is provisioned, so there is nothing to compile; run `python -m mirage models fetch` first."
        )
    return targets


def run_compile(args: argparse.Namespace, store: object | None = None, out: TextIO | None = None) -> int:
    """Run a parsed ``models compile``; returns the exit code. ``store`` is a ModelStore (default: from the environment)."""
    out = out if out is not None else sys.stdout
    try:
        config = _runtime_config(args)
        acc = probe_accelerators()
        if acc.gpu is None:
            raise ModelUnavailableError(
                f"Cannot compile TensorRT engines here: no CUDA GPU ({acc.gpu_reason}). Run it in the GPU image (docs/gpu.md)."
            )
        if acc.tensorrt_version is None:
            raise ModelUnavailableError(f"Cannot compile TensorRT engines here: {acc.tensorrt_reason}.")
        targets = _targets(args, store)
        root = getattr(store, "root", None)
        if args.engine_dir is not None:
            engine_dir = args.engine_dir
        elif root is not None:
            engine_dir = default_engine_dir(Path(root))
        else:
            from mirage.weights.provision import ProvisionConfig

            engine_dir = default_engine_dir(ProvisionConfig.from_env().models_dir)
        results = []
        for name, path in targets:
            source = compile_source(name, path)
            shapes = (config.sample_shapes or {}).get(name)
            key = make_engine_key(source, name, acc.gpu, acc.tensorrt_version, config.precision, config.profile, shapes)
            print(f"{name}: compiling {source.name} for {key.describe()} …", file=sys.stderr)
            result = compile_model(name, source, engine_dir, key, force=args.force, workspace_bytes=args.workspace_mb << 20)
            results.append(result)
            if not args.json:
                label = " (stand-in)" if "standin" in source.name else ""
                print(f"{name}{label}: {result.action} {result.path} ({result.seconds:.1f} s)", file=out)
        if args.json:
            json.dump({"accelerators": acc.to_dict(), "engines": [r.to_dict() for r in results]}, out, indent=2)
            print(file=out)
        return 0
    except MirageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as exc:  # a malformed MIRAGE_TRT_* variable or profile
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"error: {exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}.", file=sys.stderr)
        return EXIT_ERROR
