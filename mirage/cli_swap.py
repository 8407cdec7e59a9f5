"""``python -m mirage swap``: the face pipeline on image and video files."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirage.env import read_float
from mirage.errors import InvalidImageError, MirageError, ModelUnavailableError
from mirage.imageio import encode_image, read_image_file
from mirage.pipeline import FACE_STAGES, FacePipeline, FaceStage, PipelineConfig
from mirage.pipeline.controls import DEFAULT_FIDELITY, NO_ENHANCER
from mirage.pipeline.models import ENHANCER
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
    fidelity = getattr(args, "fidelity", None)
    if fidelity is not None and not 0.0 <= fidelity <= 1.0:
        raise MirageError("--fidelity must be between 0 and 1.")
    if not 0.0 <= getattr(args, "blend", 1.0) <= 1.0:
        raise MirageError("--blend must be between 0 and 1.")
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
    # The CLI is an edge: where models live and how they run come from the environment here.
    from mirage.runtime.onnx import OrtConfig
    from mirage.runtime.select import RuntimeConfig
    from mirage.swap.neural import load_neural_swap
    from mirage.weights.provision import ModelStore, ProvisionConfig

    return load_neural_swap(ModelStore(ProvisionConfig.from_env()), OrtConfig.from_env(), RuntimeConfig.from_env())


def _load_enhancer(name: str) -> Any:
    """The enhancer bank holding ``name`` (weights from the models directory), or a one-sentence error."""
    from mirage.enhance import ENHANCER_NAMES, EnhancerBank, EnhancerConfig
    from mirage.weights.provision import ModelStore, ProvisionConfig

    if name not in ENHANCER_NAMES:
        raise MirageError(f"Unknown enhancer {name[:40]!r}; use none or one of {', '.join(ENHANCER_NAMES)}.")
    bank = EnhancerBank.load(EnhancerConfig(names=(name,)), store=ModelStore(ProvisionConfig.from_env()))
    if name not in bank.available():
        why = bank.reason(name).rstrip(".") or f"provision it with `python -m mirage models fetch {name}`"
        raise ModelUnavailableError(f"The enhancer {name} is not available here: {why}.")
    return bank


def run_swap(
    args: argparse.Namespace,
    *,
    backends: Mapping[str, Any] | None = None,
    stages: Sequence[FaceStage] = FACE_STAGES,
) -> int:
    """The ``swap`` command; ``backends`` / ``stages``: objects and face stages added to the pipeline (tests)."""
    kind = _check_paths(args)
    reference = read_image_file(args.reference)
    enhancer = getattr(args, "enhancer", NO_ENHANCER) or NO_ENHANCER
    fidelity = getattr(args, "fidelity", None)
    if fidelity is None:  # the edge: MIRAGE_CODEFORMER_FIDELITY read here once
        fidelity = read_float(os.environ, "MIRAGE_CODEFORMER_FIDELITY", DEFAULT_FIDELITY, lo=0.0, hi=1.0)
    extra = dict(backends or {})
    if enhancer != NO_ENHANCER and ENHANCER not in extra:
        extra[ENHANCER] = _load_enhancer(enhancer)
    config = PipelineConfig(
        swapper=args.swapper,
        max_faces=args.max_faces,
        detector_model=args.detector,
        track=kind == "video",
        swap_options=SwapOptions(mouth_mask=args.mouth_mask, coverage=args.coverage),
        enhancer=enhancer,
        fidelity=fidelity,
        enhance_blend=getattr(args, "blend", 1.0),
    )
    pipeline = FacePipeline(config, neural=_load_neural(args), backends=extra, stages=stages)
    identity = pipeline.build_identity(reference)
    if identity.note:
        print(f"mirage: {identity.note}", file=sys.stderr)
    if kind == "image":
        frame = read_image_file(args.input)
        result = pipeline.process(frame, identity.identity, t=0.0)
        if result.fallback is not None:
            print(f"mirage: the swap failed on {args.input.name}; the face is blurred.", file=sys.stderr)
        elif not result.faces:
            print(f"mirage: no face found in {args.input.name}; wrote it unchanged.", file=sys.stderr)
        if result.skipped:
            print(f"mirage: {', '.join(result.skipped)} failed; the swapped face was kept.", file=sys.stderr)
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
