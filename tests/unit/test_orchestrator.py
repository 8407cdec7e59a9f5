"""The per-frame orchestration (the one frame pipeline as serve_app/orchestrator.py runs it, media.py) against in-process models.

Real BlazeFace/FaceMesh/mesh swap on the astronaut clip; failing or late model
calls are simulated by wrapping the real client, to check the fallback policies.
"""

from __future__ import annotations

import asyncio
import fractions
import time

import cv2
import numpy as np
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from mirage.client.sources import astronaut_source
from mirage.pipeline.fused import TrackSwapEngine
from mirage.pipeline.identity import IdentityCache
from mirage.pipeline.models import DETECTOR, SWAPPER, DetectorEngine, LocalModelClient
from serve_app.media import LatestFramePump, OrderedVideoTrack
from serve_app.metrics import FrameRecord
from serve_app.orchestrator import (
    FramePreparer,
    FrameProcessor,
    SessionControls,
    VideoLoop,
    to_bgr,
)
from serve_app.settings import SessionSettings
from standins.faces import tom_hanks_path


@pytest.fixture(scope="module")
def local_models() -> LocalModelClient:
    return LocalModelClient({DETECTOR: DetectorEngine(), SWAPPER: TrackSwapEngine()})


@pytest.fixture(scope="module")
def identity(local_models: LocalModelClient):
    reply = asyncio.run(local_models.call(SWAPPER, "prepare_identity", tom_hanks_path().read_bytes(), "mesh"))
    assert reply.ok
    return reply.identity


@pytest.fixture(scope="module")
def preparer() -> FramePreparer:
    return FramePreparer()


def _frames(n: int) -> list[np.ndarray]:
    src = astronaut_source(640, 480, 30)
    return [to_bgr(VideoFrame.from_ndarray(src.frame(i), format="bgr24"), 512) for i in range(n)]


class Broken:
    """A ModelClient whose chosen stage (model method) fails (``mode='raise'``) or hangs (``'late'``)."""

    def __init__(self, inner: LocalModelClient, stage: str, mode: str) -> None:
        self._inner, self._stage, self._mode = inner, stage, mode

    def has(self, deployment: str) -> bool:
        return self._inner.has(deployment)

    async def call(self, deployment: str, method: str, *args):  # type: ignore[no-untyped-def]
        return await self._inner.call(deployment, method, *args)

    async def infer(self, deployment: str, method: str, item):  # type: ignore[no-untyped-def]
        # The swapper's tracking call (landmarks + swap of tracked frames) fails with it.
        if method not in (self._stage, f"track_{self._stage}"):
            return await self._inner.infer(deployment, method, item)
        if self._mode == "late":
            await asyncio.sleep(10)
        raise RuntimeError("simulated model failure")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _processor(models, preparer, identity, fallback="blur", clock=None, deadline_ms=250.0, badge=True):
    settings = SessionSettings(deadline_ms=deadline_ms, fallback=fallback, badge=badge)
    controls = SessionControls(identity=identity, fallback=fallback)
    return FrameProcessor(models, preparer, settings, controls, clock=clock or time.monotonic)


def _face_box(analysis) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = analysis.hide_boxes[0]
    return int(x1), int(y1), int(x2), int(y2)


def _sharpness(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


async def _one(processor: FrameProcessor, image: np.ndarray, t: float = 0.0):
    analysis = await processor.analyze(image, t)
    return analysis, await processor.render(image, analysis)


def test_swap_changes_the_face_and_marks_the_frame(local_models, identity, preparer) -> None:
    image = _frames(1)[0]
    assert image.shape == (384, 512, 3)
    proc = _processor(local_models, preparer, identity)
    analysis, out = asyncio.run(_one(proc, image))
    assert analysis.failure is None and len(analysis.faces) == 1
    assert out.faces == 1 and out.fallback is None
    assert set(out.stages_ms) >= {"detect", "landmarks", "swap", "paste"}
    x1, y1, x2, y2 = _face_box(analysis)
    face_diff = np.abs(out.image[y1:y2, x1:x2].astype(int) - image[y1:y2, x1:x2].astype(int)).mean()
    # (The swapped face takes the live face's shading and tone, so the change is in the detail.)
    assert face_diff > 12, f"the face region barely changed ({face_diff:.1f})"
    # Outside the face box (with margin) only the badge corner changed.
    changed = np.any(out.image != image, axis=2)
    pad = int(0.25 * max(x2 - x1, y2 - y1))
    changed[max(0, y1 - pad) : y2 + pad, max(0, x1 - pad) : x2 + pad] = False
    ys, xs = np.nonzero(changed)
    assert ys.size > 0 and ys.min() > 384 * 3 // 4 and xs.min() > 512 // 2, "only the badge may change elsewhere"


def test_badge_can_be_turned_off(local_models, identity, preparer) -> None:
    image = _frames(1)[0]
    _, out = asyncio.run(_one(_processor(local_models, preparer, identity, badge=False), image))
    assert out.faces == 1
    assert np.array_equal(out.image[-30:, -150:], image[-30:, -150:])


@pytest.mark.parametrize("mode", ["raise", "late"])
def test_swap_failure_blurs_the_face_without_freezing(local_models, identity, preparer, mode) -> None:
    image = _frames(1)[0]
    proc = _processor(Broken(local_models, "swap", mode), preparer, identity, deadline_ms=100)
    start = time.perf_counter()
    analysis, out = asyncio.run(_one(proc, image))
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, "a late deployment must not hold the frame much past its deadline"
    assert out.fallback == "blur" and out.faces == 0
    x1, y1, x2, y2 = _face_box(analysis)
    assert _sharpness(out.image[y1:y2, x1:x2]) < _sharpness(image[y1:y2, x1:x2]) / 5
    assert proc.degraded_events == 1


def test_detector_down_before_any_face_blurs_the_whole_frame(local_models, identity, preparer) -> None:
    image = _frames(1)[0]
    proc = _processor(Broken(local_models, "detect", "raise"), preparer, identity)
    analysis, out = asyncio.run(_one(proc, image))
    assert analysis.failure == "detect"
    assert out.fallback == "blur"
    assert _sharpness(out.image) < _sharpness(image) / 5


def test_passthrough_is_opt_in(local_models, identity, preparer) -> None:
    image = _frames(1)[0]
    proc = _processor(Broken(local_models, "swap", "raise"), preparer, identity, fallback="passthrough")
    _, out = asyncio.run(_one(proc, image))
    assert out.fallback == "passthrough" and np.array_equal(out.image, image)


def test_hold_repeats_the_last_swap_then_blurs(local_models, identity, preparer) -> None:
    frames = _frames(2)
    clock = Clock()
    good = _processor(local_models, preparer, identity, fallback="hold", clock=clock)

    async def run() -> tuple:
        _, first = await _one(good, frames[0], 0.0)
        good._models = Broken(local_models, "swap", "raise")  # the swapper goes down
        clock.now += 0.2
        _, held = await _one(good, frames[1], 0.033)
        clock.now += 0.5
        _, later = await _one(good, frames[1], 0.066)
        return first, held, later

    first, held, later = asyncio.run(run())
    assert first.faces == 1
    assert held.fallback == "hold" and np.array_equal(held.image, first.image)
    assert later.fallback == "blur"


# --- the loop: pump, window, order, timing -----------------------------------------------


class FastCamera(MediaStreamTrack):
    """A source faster than the processing: frames with increasing pts, then the end."""

    kind = "video"

    def __init__(self, frames: list[np.ndarray], fps: float) -> None:
        super().__init__()
        self._frames, self._period, self._i = frames, 1.0 / fps, 0

    async def recv(self) -> VideoFrame:
        if self._i >= len(self._frames):
            raise MediaStreamError
        await asyncio.sleep(self._period)
        frame = VideoFrame.from_ndarray(self._frames[self._i], format="bgr24")
        frame.pts, frame.time_base = 3000 * self._i, fractions.Fraction(1, 90000)
        self._i += 1
        return frame


def test_loop_keeps_order_and_timing_and_counts_drops(local_models, identity, preparer) -> None:
    src = astronaut_source(640, 480, 30)
    frames = [src.frame(i) for i in range(40)]
    records: list[FrameRecord] = []

    async def run() -> tuple[list[VideoFrame], LatestFramePump]:
        camera = FastCamera(frames, fps=200.0)  # far faster than the pipeline on 2 cores
        pump = LatestFramePump(camera)
        pump.start()
        out = OrderedVideoTrack(window=2)
        proc = _processor(local_models, preparer, identity)
        loop = VideoLoop(pump, proc, out, 512, records.append)
        task = asyncio.ensure_future(loop.run())
        received: list[VideoFrame] = []
        try:
            while True:
                received.append(await out.recv())
        except MediaStreamError:
            pass
        await task
        await pump.stop()
        return received, pump

    received, pump = asyncio.run(run())
    assert received, "frames must come out"
    pts = [f.pts for f in received]
    assert pts == sorted(pts) and len(set(pts)) == len(pts), "frames leave in order, once each"
    assert all(p % 3000 == 0 for p in pts) and all(f.time_base == fractions.Fraction(1, 90000) for f in received)
    assert max(f.width for f in received) == 512 and received[0].height == 384
    assert pump.received == 40
    assert pump.dropped > 0, "a camera faster than the pipeline must drop (and count) stale frames"
    assert len(received) + pump.dropped == 40
    assert len(records) == len(received)
    assert all(r.faces == 1 and "total" in r.stages_ms for r in records)


def test_identity_travels_once_and_is_resent_to_a_replica_that_lacks_it(identity, preparer) -> None:
    core = TrackSwapEngine()
    models = LocalModelClient({DETECTOR: DetectorEngine(), SWAPPER: core})
    sent: list[bool] = []
    real_infer = models.infer

    async def spy(deployment, method, item):  # type: ignore[no-untyped-def]
        if method in ("swap", "track_swap"):
            sent.append(item.identity is not None)
        return await real_infer(deployment, method, item)

    models.infer = spy  # type: ignore[method-assign]
    frames = _frames(6)
    proc = _processor(models, preparer, identity)
    proc.controls.set_identity(identity)

    async def run() -> list:
        outs = []
        for i, frame in enumerate(frames):
            if i == 4:
                core.identities.forget(proc.controls.identity_key)  # as if a fresh replica took the call
            outs.append((await _one(proc, frame, i / 30))[1])
        return outs

    outs = asyncio.run(run())
    assert all(o.faces == 1 and o.fallback is None for o in outs)
    # 3 warm-up calls carry it, then only the key; the forgotten one is retried with the data.
    assert sent[:5] == [True, True, True, False, False], sent
    assert sent[5] is True and len(core.identities) == 1


def test_identity_cache_expires_and_hides_its_data() -> None:
    clock = Clock()
    cache = IdentityCache(ttl_s=10.0, max_entries=2, clock=clock)
    marker = np.full((4, 4, 3), 7, np.uint8)
    cache.put("a", marker)  # type: ignore[arg-type]
    assert cache.get("a") is marker
    clock.now += 9
    assert cache.get("a") is marker  # a use refreshes it
    clock.now += 11
    assert cache.get("a") is None
    cache.put("x", marker)  # type: ignore[arg-type]
    cache.put("y", marker)  # type: ignore[arg-type]
    cache.put("z", marker)  # type: ignore[arg-type]
    assert len(cache) == 2 and cache.get("x") is None
    assert "7" not in repr(cache)


def test_frame_path_converts_prepares_and_builds_the_outgoing_frame_in_its_hops(local_models, identity, preparer) -> None:
    """analyze_frame (convert + first model inputs in one hop) gives what analyze gives on the converted
    image, and render's last hop hands back the outgoing frame with the input's timing."""
    src = astronaut_source(640, 480, 30)
    tracked = _processor(local_models, preparer, identity)
    reference = _processor(local_models, preparer, identity)
    time_base = fractions.Fraction(1, 90_000)

    async def run() -> None:
        for i in range(12):  # past the first re-detection: both the detect and the tracked path
            frame = VideoFrame.from_ndarray(src.frame(i), format="bgr24")
            frame.pts, frame.time_base = 3000 * i, time_base
            image, analysis = await tracked.analyze_frame(frame, i / 30.0, 512)
            expected = await reference.analyze(to_bgr(frame, 512), i / 30.0)
            assert image.shape == (384, 512, 3)
            assert "convert" in analysis.stages_ms
            assert ("detect" in analysis.stages_ms) == (i % 10 == 0)
            assert len(analysis.faces) == len(expected.faces) == 1
            assert np.abs(analysis.faces[0].xy - expected.faces[0].xy).max() < 0.5

            def build(picture: np.ndarray, pts: int = frame.pts) -> VideoFrame:
                out = VideoFrame.from_ndarray(picture, format="bgr24")
                out.pts, out.time_base = pts, time_base
                return out

            rendered = await tracked.render(image, analysis, build)
            assert rendered.fallback is None and rendered.frame is not None
            assert rendered.frame.pts == frame.pts
            assert np.array_equal(rendered.frame.to_ndarray(format="bgr24"), rendered.image)

    asyncio.run(run())


def test_a_dead_stage_costs_one_deadline_then_falls_back_at_once(local_models, identity, preparer) -> None:
    """With the replica's circuit breakers, frames after the first late one do not wait for the deadline."""
    from serve_app.breaker import BreakerConfig, StageBreakers

    settings = SessionSettings(deadline_ms=200.0, fallback="blur")
    controls = SessionControls(identity=identity, fallback="blur")
    breakers = StageBreakers(config=BreakerConfig())
    proc = FrameProcessor(Broken(local_models, "swap", "late"), preparer, settings, controls, breakers=breakers)
    frames = _frames(6)

    async def run() -> list[tuple[float, str | None]]:
        timings = []
        for i, image in enumerate(frames):
            start = time.perf_counter()
            analysis = await proc.analyze(image, i / 30.0)
            out = await proc.render(image, analysis)
            timings.append((time.perf_counter() - start, out.fallback))
        return timings

    timings = asyncio.run(run())
    assert all(fallback == "blur" for _, fallback in timings), timings
    assert timings[0][0] >= 0.19, "the first late call waits for its deadline"
    late_after_open = [t for t, _ in timings[BreakerConfig().failures_to_open :]]
    assert late_after_open and max(late_after_open) < 0.15, f"frames still wait on a dead stage: {timings}"
    assert breakers["swap"].describe()["state"] in ("open", "half_open")
