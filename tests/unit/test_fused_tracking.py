"""Landmarks and swap in one call on tracked frames (mirage/pipeline/fused.py).

The fused path must give the very frames the separate calls give (same
landmarks, same smoothing, same crop, same swap), with one model call per
tracked frame instead of two; a replica that does not know the identity gets
it again without a visible frame being lost; a failed call falls back and
leaves the tracker's state as it was.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from mirage.client.sources import astronaut_source
from mirage.pipeline import FramePipeline, FrameSettings
from mirage.pipeline.controls import FrameControls
from mirage.pipeline.fused import TrackSwapEngine
from mirage.pipeline.identity import SwapEngine, SwapperConfig
from mirage.pipeline.models import DETECTOR, SWAPPER, DetectorEngine, LocalModelClient
from mirage.pipeline.prepare import FramePreparer, analysis_copy
from mirage.types import Identity, Image
from standins.faces import tom_hanks_path


class CountingClient(LocalModelClient):
    """The in-process model client, counting calls by (deployment, method); ``fail`` makes track_swap raise."""

    def __init__(self, backends: dict[str, Any]) -> None:
        super().__init__(backends, in_thread=False)
        self.calls: dict[tuple[str, str], int] = {}
        self.fail = False

    async def infer(self, deployment: str, method: str, item: Any) -> Any:
        self.calls[(deployment, method)] = self.calls.get((deployment, method), 0) + 1
        if self.fail and method == "track_swap":
            raise RuntimeError("simulated swapper failure")
        return await super().infer(deployment, method, item)


@pytest.fixture(scope="module")
def engines() -> tuple[DetectorEngine, SwapEngine, TrackSwapEngine, Identity]:
    tracking = TrackSwapEngine(SwapperConfig(inswapper=False))
    engine = SwapEngine(SwapperConfig(inswapper=False))  # the plain swapper: no track_swap
    reply = engine.build_identity(tom_hanks_path().read_bytes(), "mesh")
    assert reply.identity is not None
    return DetectorEngine(), engine, tracking, reply.identity


def _pipeline(models: CountingClient, identity: Identity, fuse: bool) -> FramePipeline:
    controls = FrameControls()
    controls.set_identity(identity)
    settings = FrameSettings(deadline_s=None, badge=False, fuse_tracking=fuse, detect_every=5)
    return FramePipeline(models, FramePreparer(), settings, controls, offload=_inline)


async def _inline(fn: Any, *args: Any) -> Any:
    return fn(*args)


async def _served_step(pipeline: FramePipeline, picture: Image, t: float, max_side: int) -> Any:
    """One frame as the served session runs it: analysed on a copy ≤ max_side, rendered at the picture's size."""
    plan = pipeline.plan()
    small, factor = analysis_copy(picture, max_side)
    inputs = pipeline.model_inputs(small, plan, picture, factor)
    analysis = (await pipeline.analyze_prepared(small, t, plan, inputs)).scaled(factor)
    return await pipeline.render(picture, analysis)


def _clip(count: int) -> list[Image]:
    source = astronaut_source(640, 480, 30.0)
    return [source.frame(i) for i in range(count)]


@pytest.mark.parametrize("max_side", [640, 400])
def test_fused_frames_equal_the_separate_calls(engines: Any, max_side: int) -> None:
    detector, engine, tracking, identity = engines
    frames = _clip(12)

    async def run(fuse: bool) -> tuple[list[Image], CountingClient, list[Any]]:
        models = CountingClient({DETECTOR: detector, SWAPPER: tracking if fuse else engine})
        pipeline = _pipeline(models, identity, fuse)
        out, rendered = [], []
        for i, frame in enumerate(frames):
            result = await _served_step(pipeline, frame, i / 30.0, max_side)
            out.append(result.image)
            rendered.append(result)
        return out, models, rendered

    separate, separate_models, _ = asyncio.run(run(False))
    fused, fused_models, rendered = asyncio.run(run(True))
    separate_calls, fused_calls = separate_models.calls, fused_models.calls
    assert all(r.faces == 1 and r.fallback is None for r in rendered), [(r.faces, r.fallback) for r in rendered]
    for i, (a, b) in enumerate(zip(separate, fused, strict=True)):
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
        assert diff.max() == 0, f"frame {i}: fused differs from separate calls by up to {diff.max()} ({(diff > 0).sum()} px)"
    detections = separate_calls[(DETECTOR, "detect")]
    assert fused_calls[(DETECTOR, "detect")] == detections >= 2
    # Separate: landmarks + swap on every frame; fused: those two only on detection frames, one call otherwise.
    assert separate_calls[(DETECTOR, "landmarks")] == separate_calls[(SWAPPER, "swap")] == len(frames)
    assert fused_calls[(DETECTOR, "landmarks")] == fused_calls[(SWAPPER, "swap")] == detections
    assert fused_calls[(SWAPPER, "track_swap")] == len(frames) - detections
    calls_per_frame = sum(fused_calls.values()) / len(frames)
    assert calls_per_frame < sum(separate_calls.values()) / len(frames) - 0.5


def test_a_replica_that_lost_the_identity_gets_it_again_without_a_lost_frame(engines: Any) -> None:
    detector, _, tracking, identity = engines
    frames = _clip(6)

    async def run() -> list[Any]:
        models = CountingClient({DETECTOR: detector, SWAPPER: tracking})
        pipeline = _pipeline(models, identity, True)
        out = []
        for i, frame in enumerate(frames):
            if i == 4:  # a restarted replica: its cache is empty, the session's warm-up calls are long over
                tracking.identities.forget(pipeline.controls.identity_key)
            out.append(await _served_step(pipeline, frame, i / 30.0, 640))
        return out

    rendered = asyncio.run(run())
    assert [r.fallback for r in rendered] == [None] * len(frames)
    assert all(r.faces == 1 for r in rendered)


def test_a_failed_fused_call_falls_back_and_keeps_the_tracking_state(engines: Any) -> None:
    detector, _, tracking, identity = engines
    frames = _clip(4)

    async def run() -> tuple[list[Any], Any, Any]:
        models = CountingClient({DETECTOR: detector, SWAPPER: tracking})
        pipeline = _pipeline(models, identity, True)
        out = [await _served_step(pipeline, frames[0], 0.0, 640), await _served_step(pipeline, frames[1], 1 / 30, 640)]
        before = pipeline.tracker.slots[0]
        shape_before = before.shape.copy() if before.shape is not None else None
        models.fail = True
        out.append(await _served_step(pipeline, frames[2], 2 / 30, 640))
        return out, pipeline, (before, shape_before)

    out, pipeline, (before, shape_before) = asyncio.run(run())
    assert out[0].fallback is None and out[1].fallback is None
    assert out[2].fallback == "blur" and out[2].faces == 0
    assert not np.array_equal(out[2].image, frames[2]), "the face is hidden, never shown unswapped"
    after = pipeline.tracker.slots[0]
    assert after is before and after.shape is not None and np.array_equal(after.shape, shape_before)
