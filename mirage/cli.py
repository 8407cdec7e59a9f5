"""``python -m mirage`` (also the console script ``mirage``): one CLI for the library.

Subcommands: ``swap`` (files), ``voice`` (WAV files), ``models`` (provisioning, TensorRT compile),
``dynamic-batch`` (ONNX batch rewrite), ``load`` (served load client), ``cam``
(desktop client: virtual camera and microphone). Expected failures print
one sentence on stderr and exit non-zero; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mirage.errors import MirageError


def _add_swap_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("swap", help="swap faces in an image or a video file")
    p.add_argument("--reference", required=True, type=Path, help="photo of the face to put on (JPEG/PNG/WebP)")
    p.add_argument("--input", required=True, type=Path, help="image (.jpg/.png/.webp) or video (.mp4/.mov/.mkv/.webm)")
    p.add_argument("--output", required=True, type=Path, help="where to write the result (same kind as the input)")
    p.add_argument("--swapper", choices=["mesh", "inswapper"], default="mesh")
    p.add_argument("--max-faces", type=int, default=1, help="swap up to N largest faces per frame")
    p.add_argument(
        "--mouth-mask",
        action="store_true",
        help="also keep the live lips (an open mouth's interior always comes from the live face)",
    )
    p.add_argument("--coverage", type=float, default=1.0, help="fraction of the face region replaced (0.5-1.2)")
    p.add_argument("--detector", choices=["short", "full"], default="short", help="BlazeFace range model")
    p.add_argument(
        "--enhancer",
        default="none",
        help="face restorer after the swap: none (default), gfpgan_1.4, codeformer, gpen_bfr_256 or gpen_bfr_512 "
        "(provisioned with: python -m mirage models fetch NAME)",
    )
    p.add_argument(
        "--fidelity", type=float, default=None, help="CodeFormer's fidelity weight w, 0-1 (default $MIRAGE_CODEFORMER_FIDELITY or 0.75)"
    )
    p.add_argument("--blend", type=float, default=1.0, help="how much of the enhanced face shows, 0-1 (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for videos")


def _add_dynamic_batch_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dynamic-batch", help="rewrite an ONNX model's batch dimension to dynamic")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mirage", description="Mirage: real-time face swap library and tools.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_swap_parser(sub)
    _add_dynamic_batch_parser(sub)
    from mirage.cli_models import add_models_parser

    add_models_parser(sub)
    from mirage.cli_voice import add_voice_parser

    add_voice_parser(sub)
    from mirage.cam.cli import add_cam_parser
    from mirage.client.load import add_load_parser

    add_load_parser(sub)
    add_cam_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "swap":
            from mirage.cli_swap import run_swap

            return run_swap(args)
        if args.command == "voice":
            from mirage.cli_voice import run_voice

            return run_voice(args)
        if args.command == "dynamic-batch":
            from mirage.runtime.batch_rewrite import make_batch_dynamic

            make_batch_dynamic(args.src, args.dst)
            print(f"wrote {args.dst} (batch dimension dynamic)")
            return 0
        if args.command == "models":
            from mirage.cli_models import run_models

            return run_models(args)
        if args.command == "load":
            from mirage.client.load import run_load

            return run_load(args)
        if args.command == "cam":
            from mirage.cam.cli import run_cam

            return run_cam(args)
    except MirageError as exc:
        print(f"mirage: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mirage: interrupted.", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
