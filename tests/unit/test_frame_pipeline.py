"""The one frame pipeline (mirage/pipeline/): a stage added to its list runs in the CLI and the benchmark
baseline; the enhance stage on stand-in enhancers; an enhancer that is late, failing or not provisioned
sends the swapped face (never a blurred one).

The served half of "a stage added to the list runs everywhere" is
tests/integration/test_served_stages.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from mirage.client.sources import astronaut_source
from mirage.enhance import EnhancerBank, EnhancerConfig
from mirage.pipeline import FACE_STAGES, FacePipeline, FramePipeline, FrameSettings, PipelineConfig
from mirage.pipeline.controls import FrameControls
from mirage.pipeline.identity import SwapEngine
from mirage.pipeline.models import DETECTOR, ENHANCER, SWAPPER, DetectorEngine, LocalModelClient
from mirage.pipeline.prepare import FramePreparer
from standins.faces import astronaut_bgr, tom_hanks_bgr, tom_hanks_path
from standins.models import write_enhancer_standins
from tests.pipeline_stages import TINT, TINT_STAGES, TintBackend

STANDIN = "gfpgan_1.4"


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> EnhancerBank:
    """Stand-in GFPGAN (its official input/output signature, 128 px so it is quick), loaded like the real one."""
    d = tmp_path_factory.mktemp("enhancers")
    manifest = write_enhancer_standins(d, names=(STANDIN,), size=128)
    bank = EnhancerBank.load(EnhancerConfig(names=(STANDIN,), models_dir=str(d), manifest=str(manifest)))
    assert bank.available() == [STANDIN], bank.info()
    return bank


def _face_box(frame: np.ndarray) -> tuple[slice, slice]:
    pipeline = FacePipeline(PipelineConfig(track=False))
    xy = pipeline.reference_landmarks(frame)[0].xy
    x1, y1 = xy.min(axis=0).astype(int)
    x2, y2 = xy.max(axis=0).astype(int)
    return slice(y1, y2), slice(x1, x2)


def test_an_added_stage_runs_in_the_cli(tmp_path: Path) -> None:
    from mirage.cli import build_parser
    from mirage.cli_swap import run_swap

    frame = astronaut_bgr()
    src = tmp_path / "in.png"
    cv2.imwrite(str(src), frame)
    outs = {}
    for name, stages in (("plain", FACE_STAGES), ("tinted", TINT_STAGES)):
        out = tmp_path / f"{name}.png"
        args = build_parser().parse_args(
            ["swap", "--reference", str(tom_hanks_path()), "--input", str(src), "--output", str(out)]
        )
        backend = TintBackend()
        assert run_swap(args, backends={TINT: backend}, stages=stages) == 0
        assert backend.batches == ([1] if name == "tinted" else [])
        outs[name] = cv2.imread(str(out)).astype(np.int16)
    ys, xs = _face_box(frame)
    inside = np.abs(outs["tinted"][ys, xs] - outs["plain"][ys, xs]).mean()
    corner = np.abs(outs["tinted"][:40, :40] - outs["plain"][:40, :40]).max()
    assert inside > 8.0, f"the tint stage did not reach the CLI's output (face moved {inside:.1f})"
    assert corner == 0, "the added stage works on the face crop only"


def test_an_added_stage_runs_in_the_benchmark_baseline() -> None:
    from benchmarks.bench_pipeline import run_mode

    src = astronaut_source(640, 480, 30.0)
    frames = [src.frame(i) for i in range(8)]
    backend = TintBackend()
    report = run_mode(frames, True, 2, stages=TINT_STAGES, backends={TINT: backend})
    assert report["frames"] == 6 and report["frames_with_face"] == 6
    assert "tint" in report["stages"] and report["stages"]["tint"]["p50_ms"] > 0.0
    assert report["stages"]["enhance"]["p50_ms"] == 0.0, "no enhancer asked for: the enhance stage is skipped"
    assert backend.batches == [1] * 8


def test_enhance_stage_changes_the_swapped_face_with_a_standin(bank: EnhancerBank) -> None:
    frame = astronaut_bgr()
    plain = FacePipeline(PipelineConfig(track=False))
    identity = plain.build_identity(tom_hanks_bgr()).identity
    enhanced = FacePipeline(PipelineConfig(track=False, enhancer=STANDIN), backends={ENHANCER: bank})
    a = plain.process(frame, identity, t=0.0)
    b = enhanced.process(frame, identity, t=0.0)
    assert a.fallback is None and b.fallback is None and b.enhanced == 1 and not b.skipped
    assert b.timings_ms["enhance"] > 0.0
    ys, xs = _face_box(frame)
    face_diff = np.abs(a.frame[ys, xs].astype(int) - b.frame[ys, xs].astype(int)).mean()
    outside = np.abs(a.frame[:40, :40].astype(int) - b.frame[:40, :40].astype(int)).max()
    # (paste-back gives the face the live low-frequency shading back, so the mean change is modest;
    # the same frame without the enhancer is bit-identical run to run)
    assert face_diff > 1.5, f"the stand-in enhancer did not change the face (mean diff {face_diff:.2f})"
    assert outside == 0, "enhancement must stay inside the swap's mask"
    half = FacePipeline(PipelineConfig(track=False, enhancer=STANDIN, enhance_blend=0.5), backends={ENHANCER: bank})
    c = half.process(frame, identity, t=0.0)
    half_diff = np.abs(a.frame[ys, xs].astype(int) - c.frame[ys, xs].astype(int)).mean()
    assert 0.25 * face_diff < half_diff < 0.75 * face_diff, (half_diff, face_diff)


def _pipeline(models: Any, enhancer: str, deadline_s: float | None = 0.3) -> FramePipeline:
    controls = FrameControls(enhancer=enhancer)
    return FramePipeline(models, FramePreparer(), FrameSettings(deadline_s=deadline_s, badge=False), controls)


@pytest.mark.parametrize("mode", ["late", "raise", "unprovisioned"])
def test_a_late_failing_or_missing_enhancer_sends_the_swapped_face(bank: EnhancerBank, mode: str) -> None:
    engine = SwapEngine()
    detector = DetectorEngine()
    good = LocalModelClient({DETECTOR: detector, SWAPPER: engine})

    class Client(LocalModelClient):
        async def infer(self, deployment: str, method: str, item: Any) -> Any:
            if method == "enhance" and mode == "late":
                await asyncio.sleep(5)
            if method == "enhance" and mode == "raise":
                raise RuntimeError("simulated enhancer failure")
            return await super().infer(deployment, method, item)

    empty = EnhancerBank({}, {STANDIN: "not provisioned"})
    broken = Client({DETECTOR: detector, SWAPPER: engine, ENHANCER: empty if mode == "unprovisioned" else bank})
    frame = astronaut_bgr()
    identity = engine.build_identity(tom_hanks_path().read_bytes(), "mesh").identity

    async def run(models: Any, enhancer: str) -> Any:
        pipeline = _pipeline(models, enhancer)
        pipeline.controls.set_identity(identity)
        start = time.perf_counter()
        _, rendered = await pipeline.process(frame, 0.0)
        return rendered, time.perf_counter() - start, pipeline

    swapped, _, _ = asyncio.run(run(good, "none"))
    out, took, pipeline = asyncio.run(run(broken, STANDIN))
    assert out.fallback is None, "an enhancer problem must not blur the face"
    assert out.skipped == ["enhance"] and pipeline.skipped == {"enhance": 1} and out.enhanced == 0
    assert out.faces == 1 and np.array_equal(out.image, swapped.image), "the swapped face goes out as it is"
    if mode == "late":
        assert 0.25 < took < 2.0, f"a late enhancer costs one deadline, took {took:.2f} s"
