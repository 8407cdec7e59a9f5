"""Benchmark of the embedded mesh pipeline, in one process, on a 640x480 moving face.

    python benchmarks/bench_pipeline.py [--frames 300] [--json OUT]

Runs twice over the same clip (made from skimage's astronaut with scripted head
motion): detection on every frame, then tracking between detections. Prints
p50/p95 ms per stage and in total, frames/s and peak RSS; ``--json`` writes
``{"frames", "stages": {NAME: {"p50_ms", "p95_ms"}}, "total": {"p50_ms",
"p95_ms", "fps"}, "peak_rss_mb", "mode", "modes": {...}}`` where the top level
is the tracking run and ``modes`` holds both.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirage.client.sources import astronaut_source  # noqa: E402
from mirage.pipeline import FACE_STAGES, STAGES, FacePipeline, FaceStage, PipelineConfig  # noqa: E402


def _reference() -> np.ndarray:
    from benchmarks.common import tom_hanks_path

    image = cv2.imread(str(tom_hanks_path()))
    assert image is not None
    return image


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else 0.0


def run_mode(
    frames: list[np.ndarray],
    track: bool,
    warmup: int,
    *,
    stages: Sequence[FaceStage] = FACE_STAGES,
    backends: Mapping[str, Any] | None = None,
    enhancer: str = "none",
) -> dict:
    """One run of the one frame pipeline (``stages``/``backends``: a stage added to its list, and its model)."""
    config = PipelineConfig(track=track, enhancer=enhancer)
    pipeline = FacePipeline(config, backends=backends, stages=stages)
    identity = pipeline.build_identity(_reference()).identity
    names = ("detect", "landmarks", *(stage.name for stage in pipeline.frames.stages), "paste")
    per_stage: dict[str, list[float]] = {stage: [] for stage in dict.fromkeys((*STAGES, *names))}
    totals: list[float] = []
    swapped = 0
    for index, frame in enumerate(frames):
        start = time.perf_counter()
        result = pipeline.process(frame, identity, t=index / 30.0)
        elapsed = (time.perf_counter() - start) * 1000.0
        if index < warmup:
            continue
        totals.append(elapsed)
        swapped += bool(result.faces)
        for stage in per_stage:
            per_stage[stage].append(result.timings_ms.get(stage, 0.0))
    p50 = percentile(totals, 50)
    return {
        "mode": "track" if track else "detect-every-frame",
        "frames": len(totals),
        "frames_with_face": swapped,
        "stages": {s: {"p50_ms": round(percentile(v, 50), 3), "p95_ms": round(percentile(v, 95), 3)} for s, v in per_stage.items()},
        "total": {
            "p50_ms": round(p50, 3),
            "p95_ms": round(percentile(totals, 95), 3),
            "fps": round(len(totals) / (sum(totals) / 1000.0), 1) if totals else 0.0,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--enhancer",
        default=None,
        help="also run tracking with this enhancer (from the models directory, or --models-dir/--manifest: "
        "e.g. stand-ins, whose names say so in the report)",
    )
    parser.add_argument("--models-dir", type=Path, default=None, help="weights directory of --enhancer")
    parser.add_argument("--manifest", type=Path, default=None, help="manifest of --models-dir")
    args = parser.parse_args()

    source = astronaut_source(640, 480, 30.0)
    clip = [source.frame(i) for i in range(args.frames + args.warmup)]
    modes = {}
    for track in (False, True):
        report = run_mode(clip, track, args.warmup)
        modes[report["mode"]] = report
    if args.enhancer:
        from mirage.enhance import EnhancerBank, EnhancerConfig
        from mirage.pipeline.models import ENHANCER

        bank = EnhancerBank.load(
            EnhancerConfig(
                names=(args.enhancer,),
                models_dir=str(args.models_dir) if args.models_dir else None,
                manifest=str(args.manifest) if args.manifest else None,
            )
        )
        if args.enhancer not in bank.available():
            raise SystemExit(f"bench_pipeline: {bank.reason(args.enhancer)}")
        info = bank.info()[args.enhancer]
        report = run_mode(clip, True, args.warmup, backends={ENHANCER: bank}, enhancer=args.enhancer)
        label = "stand-in " if info.get("standin") else ""
        report["mode"] = f"track+enhance ({label}{args.enhancer}, {info.get('runtime')})"
        modes[report["mode"]] = report
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    print(f"mesh pipeline, 640x480, 1 face, {platform.machine()} {platform.processor() or ''} ({_cpu_count()} cores)")
    for name, report in modes.items():
        print(f"\n[{name}] {report['frames']} frames, face found in {report['frames_with_face']}")
        print(f"{'stage':<10}{'p50 ms':>10}{'p95 ms':>10}")
        for stage, figures in report["stages"].items():
            print(f"{stage:<10}{figures['p50_ms']:>10.2f}{figures['p95_ms']:>10.2f}")
        total = report["total"]
        print(f"{'total':<10}{total['p50_ms']:>10.2f}{total['p95_ms']:>10.2f}   {total['fps']:.1f} frames/s")
    print(f"\npeak RSS {peak_rss_mb:.0f} MB")

    if args.json:
        top = dict(modes["track"])
        top["peak_rss_mb"] = round(peak_rss_mb, 1)
        top["modes"] = modes
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(top, indent=2))
    return 0


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())
