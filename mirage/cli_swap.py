"""``python -m mirage swap``: the face pipeline on image and video files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mirage.errors import InvalidImageError, MirageError
from mirage.imageio import encode_image, read_image_file
from mirage.pipeline import FacePipeline, PipelineConfig
from mirage.types import SwapOptions
from mirage.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, AtomicVideoWriter, probe_video, read_video_frames, write_image_atomic

if TYPE_CHECKING:
    from mirage.swap.neural import NeuralSwap


def _check_paths(args: argparse.Namespace) -> str:
    """'image' or 'video'; raises a one-sentence error for bad paths."""
    if not args.reference.is_file():
        raise InvalidImageError(f"Reference photo not found: {args.reference}.")
    if not args.input.is_file():
        raise InvalidImageError(f"Input file not found: {args.input}.")
    in_kind = _kind(args.input)
    out_kind = _kind(args.output)
    if in_kind is None:
        raise InvalidImageError(
            f"Unsupported input type {args.input.suffix!r}: use an image (.jpg/.png/.webp) or a video (.mp4/.mov/.mkv/.webm)."
        )
    if out_kind != in_kind:
        raise InvalidImageError(f"The output {args.output.name} must be an {in_kind} file like the input.")
    if not args.output.parent.exists():
        raise InvalidImageError(f"Output folder does not exist: {args.output.parent}.")
    if args.max_faces < 1:
        raise MirageError("--max-faces must be at least 1.")
    if not 0.3 <= args.coverage <= 1.5:
        raise MirageError("--coverage must be between 0.3 and 1.5.")
    return in_kind


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def _load_neural(args: argparse.Namespace) -> NeuralSwap | None:
    if args.swapper != "inswapper":
        return None
    from mirage.swap.neural import load_neural_swap

    return load_neural_swap()


def run_swap(args: argparse.Namespace) -> int:
    kind = _check_paths(args)
    reference = read_image_file(args.reference)
    config = PipelineConfig(
        swapper=args.swapper,
        max_faces=args.max_faces,
        detector_model=args.detector,
        track=kind == "video",
        swap_options=SwapOptions(mouth_mask=args.mouth_mask, coverage=args.coverage),
    )
    pipeline = FacePipeline(config, neural=_load_neural(args))
    identity = pipeline.build_identity(reference)
    if identity.note:
        print(f"mirage: {identity.note}", file=sys.stderr)
    if kind == "image":
        frame = read_image_file(args.input)
        result = pipeline.process(frame, identity.identity, t=0.0)
        if not result.faces:
            print(f"mirage: no face found in {args.input.name}; wrote it unchanged.", file=sys.stderr)
        write_image_atomic(args.output, encode_image(result.frame, args.output.suffix.lower()))
        print(f"wrote {args.output} ({len(result.faces)} face(s) swapped)")
        return 0
    return _swap_video(args, pipeline, identity.identity)


def _swap_video(args: argparse.Namespace, pipeline: FacePipeline, identity: object) -> int:
    info = probe_video(args.input)
    from tqdm import tqdm

    swapped_frames = 0
    total = 0
    with AtomicVideoWriter(args.output, info.width, info.height, info.fps) as writer:
        bar = tqdm(total=info.frames, unit="frame", desc="swap", disable=args.no_progress, file=sys.stderr)
        with bar:
            for frame, t in read_video_frames(args.input):
                result = pipeline.process(frame, identity, t=t)  # type: ignore[arg-type]
                writer.write(result.frame)
                total += 1
                swapped_frames += bool(result.faces)
                bar.update(1)
    if total == 0:
        args.output.unlink(missing_ok=True)
        raise InvalidImageError(f"{args.input.name} has no frames.")
    print(f"wrote {args.output} ({total} frames, {swapped_frames} with a swapped face)")
    return 0
