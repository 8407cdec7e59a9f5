"""Landmarks and swap in one call on tracked frames (mirage/pipeline/fused.py).

The fused path must give the very frames the separate calls give (same
landmarks, same smoothing, same crop, same swap), with one model call per
tracked frame instead of two; a replica that does not know the identity gets
it again without a visible frame being lost; with the swapper down, the
landmarker tracks the frames instead, so the fallback's blur follows the face.
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
        if self.fail and deployment == SWAPPER and method in ("track_swap", "swap"):
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


def test_with_the_swapper_down_the_landmarker_keeps_tracking_and_the_blur_follows_the_face(engines: Any) -> None:
    detector, _, tracking, identity = engines
    frames = _clip(16)

    async def run() -> tuple[list[Any], list[Any], FramePipeline, CountingClient]:
        models = CountingClient({DETECTOR: detector, SWAPPER: tracking})
        pipeline = _pipeline(models, identity, True)
        out, boxes = [], []
        for i, frame in enumerate(frames):
            models.fail = i >= 2  # the swapper goes down after two frames
            plan = pipeline.plan()
            inputs = pipeline.model_inputs(frame, plan, frame, 1.0)
            analysis = await pipeline.analyze_prepared(frame, i / 30.0, plan, inputs)
            out.append(await pipeline.render(frame, analysis))
            boxes.append(analysis.hide_boxes)
        return out, boxes, pipeline, models

    out, boxes, pipeline, models = asyncio.run(run())
    assert out[0].fallback is None and out[1].fallback is None
    assert all(r.fallback == "blur" and r.faces == 0 for r in out[2:]), [r.fallback for r in out]
    assert all(not np.array_equal(r.image, f) for r, f in zip(out[2:], frames[2:], strict=True)), "never the real face"
    # Each failed tracked frame was tracked by the landmarker instead: the tracker kept counting
    # frames (so it detected again on schedule) and the blurred box moved with the face.
    assert models.calls[(DETECTOR, "detect")] >= 3
    assert models.calls[(DETECTOR, "landmarks")] >= len(frames) - 2
    assert all(len(b) == 1 for b in boxes)
    centres = np.array([[(b[0][0] + b[0][2]) / 2, (b[0][1] + b[0][3]) / 2] for b in boxes])
    truth = np.array([_face_centre(detector, f) for f in frames])
    assert np.abs(centres - truth).max() < 6.0, np.abs(centres - truth).max()
    assert np.ptp(truth[:, 0]) + np.ptp(truth[:, 1]) > 6.0, "the clip's face must move for this test to mean anything"


def _face_centre(detector: DetectorEngine, frame: Image) -> tuple[float, float]:
    """The face's landmark-box centre, found from scratch (detector + landmarker, no tracking)."""
    from mirage.landmarks.facemesh import roi_from_detection

    det = detector.detect_batch([FramePreparer().detector_input(frame)])[0][0]
    face = detector.landmarker.landmarks([(frame, roi_from_detection(det))])[0]
    lo, hi = face.xy.min(axis=0), face.xy.max(axis=0)
    return float(lo[0] + hi[0]) / 2, float(lo[1] + hi[1]) / 2


def test_a_face_whose_crop_leaves_the_region_is_answered_outside_region(engines: Any) -> None:
    """A region too small for the crop (the face moved far): no swap from half-missing pixels."""
    from dataclasses import replace

    from mirage.pipeline.messages import OUTSIDE_REGION, Region, TrackSwapItem

    detector, _, tracking, identity = engines
    frames = _clip(3)
    sent: list[TrackSwapItem] = []

    class Capture(CountingClient):
        async def infer(self, deployment: str, method: str, item: Any) -> Any:
            if method == "track_swap":
                sent.append(item)
            return await super().infer(deployment, method, item)

    async def run() -> None:
        pipeline = _pipeline(Capture({DETECTOR: detector, SWAPPER: tracking}), identity, True)
        for i, frame in enumerate(frames):
            await _served_step(pipeline, frame, i / 30.0, 640)

    asyncio.run(run())
    item = sent[-1]
    good = tracking.track_swap_batch([item])[0]
    assert good.swap.error is None and good.place is not None
    region = item.region
    h, w = region.image.shape[:2]
    inner = Region(
        image=np.ascontiguousarray(region.image[h // 4 : h - h // 4, w // 4 : w - w // 4]),
        origin=(region.origin[0] + w // 4, region.origin[1] + h // 4),
        scale=region.scale,
        picture_size=region.picture_size,
    )
    small = tracking.track_swap_batch([replace(item, region=inner)])[0]
    assert small.swap.error == OUTSIDE_REGION and small.swap.image is None
    assert np.allclose(small.slot.smoothed.points, good.slot.smoothed.points), "the tracking answer is the same"
