"""The frame pipeline: one object that the CLI, the benchmark baseline and every served session run.

For each frame: ask the tracker whether to detect, detect (when planned) →
landmarks → tracker (largest ``max_faces`` faces, smoothing) → crop each face
for the swapper → :data:`~mirage.pipeline.stages.FACE_STAGES` (swap, enhance,
…) → paste back → badge. Model work goes through a
:class:`~mirage.pipeline.models.ModelClient` (in-process models, or Serve
handles in ``serve_app``), and every call has a deadline (and, served, a
per-stage circuit breaker): a required stage that fails or is late sends the
frame out under the stream's fallback policy (``blur`` by default, ``hold``,
or ``passthrough``), an optional one is skipped, and the stream carries on.

Tracking is sequential per stream (the tracker's state follows frame order);
:meth:`FramePipeline.render` of frame N may overlap :meth:`FramePipeline.analyze`
of frame N+1. Pixel work goes through ``offload`` (worker threads when served,
so the event loop never blocks; inline in the CLI).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from mirage.geometry.paste import paste_back_many
from mirage.geometry.steady import FaceSteadier, SteadyConfig
from mirage.overlay import blur_frame, blur_regions, draw_badge
from mirage.pipeline.controls import FrameControls
from mirage.pipeline.fused import cut_regions
from mirage.pipeline.messages import UNKNOWN_IDENTITY, CropPlace, SwapResult, TrackSwapItem, TrackSwapResult
from mirage.pipeline.models import DETECTOR, ModelClient
from mirage.pipeline.prepare import FramePreparer, ModelInputs, landmark_box, roi_box
from mirage.pipeline.stages import (
    FACE_STAGES,
    FaceStage,
    FaceWork,
    Offload,
    StageContext,
    SwapStage,
    identity_sends,
    resend_identity,
)
from mirage.tracking.tracker import FaceTracker, TrackerConfig, TrackPlan
from mirage.types import FaceLandmarks, Image

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: What ``render`` may build from the final picture in its last pixel hop (served: the outgoing VideoFrame).
F = TypeVar("F")


class Breaker(Protocol):
    async def call(self, awaitable: Awaitable[T], timeout_s: float | None) -> T: ...


class Breakers(Protocol):
    """Per-stage circuit breakers (``serve_app.breaker.StageBreakers``)."""

    def __getitem__(self, stage: str) -> Breaker: ...


async def to_thread(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


async def inline(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


@dataclass(frozen=True)
class FrameSettings:
    """How a stream runs: deadlines, detection cadence, badge, hold time of the ``hold`` fallback."""

    #: A model call slower than this is abandoned (None: no deadline, the CLI waits).
    deadline_s: float | None = 0.25
    detect_every: int = 10
    badge: bool = True
    hold_s: float = 0.5
    #: On tracked frames, landmarks and swap of each face in one call to the swapper
    #: (``mirage.pipeline.fused``) instead of one to the landmarker and one to the swapper.
    fuse_tracking: bool = False
    #: Temporal steadying of each swapped face (``mirage.geometry.steady``; strength 0 turns it off).
    steady: SteadyConfig = field(default_factory=SteadyConfig)


@dataclass
class PipelineCounters:
    """Counters several streams may share (one served replica's sessions)."""

    #: Frames where an enhancer changed at least one face.
    enhanced_frames: int = 0
    #: Per optional stage: frames where it was wanted but failed or was late (the faces went on without it).
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class Analysis:
    """The tracking stage's result for one frame, in the coordinates of the picture it goes out in."""

    faces: list[FaceLandmarks]
    #: Regions to hide if this frame has to fall back (tracked faces, else tracked ROIs).
    hide_boxes: list[npt.NDArray[np.float32]]
    failure: str | None
    stages_ms: dict[str, float]
    #: Faces already swapped by the tracking call (fused), with where their crops are in the picture
    #: that goes out (so :meth:`scaled` leaves them as they are); None: swap in render.
    swaps: list[tuple[CropPlace, SwapResult]] | None = None

    def scaled(self, factor: float) -> Analysis:
        """The same analysis for a picture ``factor`` times the size of the analysed one."""
        if factor == 1.0:
            return self
        faces = [FaceLandmarks(points=(f.points * np.float32(factor)).astype(np.float32), confidence=f.confidence) for f in self.faces]
        boxes = [(np.asarray(b, np.float32) * np.float32(factor)).astype(np.float32) for b in self.hide_boxes]
        return Analysis(faces=faces, hide_boxes=boxes, failure=self.failure, stages_ms=self.stages_ms, swaps=self.swaps)


@dataclass
class Rendered(Generic[F]):
    image: Image
    faces: int
    fallback: str | None
    stages_ms: dict[str, float]
    #: What ``build`` made from the final picture in the same hop (served: the outgoing frame).
    frame: F | None = None
    #: Optional stages that were wanted but failed or were late for this frame.
    skipped: list[str] = field(default_factory=list)
    #: Faces an enhancer changed.
    enhanced: int = 0


class FramePipeline:
    """The per-frame pipeline of one stream (tracker state + fallback state + stage state)."""

    def __init__(
        self,
        models: ModelClient,
        preparer: FramePreparer,
        settings: FrameSettings,
        controls: FrameControls,
        clock: Callable[[], float] = time.monotonic,
        breakers: Breakers | None = None,
        offload: Offload = to_thread,
        stages: Sequence[FaceStage] = FACE_STAGES,
        counters: PipelineCounters | None = None,
    ) -> None:
        self._models = models
        self._shared = counters
        self._breakers = breakers
        self._prep = preparer
        self._settings = settings
        self.controls = controls
        self._clock = clock
        self._offload = offload
        self.stages = tuple(stages)
        self._swap_stage = next((stage for stage in self.stages if isinstance(stage, SwapStage)), None)
        self._deadline_s = settings.deadline_s
        self._tracker = self._new_tracker(controls.max_faces)
        self._last_good: tuple[Image, float] | None = None
        self._steadier = FaceSteadier(settings.steady)
        self._renders = 0
        self._stage_state: dict[str, dict[str, Any]] = {stage.name: {} for stage in self.stages}
        self.degraded_events = 0
        #: Per optional stage: frames where it was wanted but failed or was late.
        self.skipped: dict[str, int] = {}
        self.enhanced_frames = 0

    def _new_tracker(self, max_faces: int) -> FaceTracker:
        return FaceTracker(TrackerConfig(detect_every=self._settings.detect_every, max_faces=max_faces))

    def set_max_faces(self, max_faces: int) -> None:
        if max_faces != self.controls.max_faces:
            self.controls.max_faces = max_faces
            self._tracker = self._new_tracker(max_faces)

    def reset(self) -> None:
        """Forget tracked faces (a new, unrelated stream or image)."""
        self._tracker.reset()
        self._steadier.reset()

    @property
    def tracker(self) -> FaceTracker:
        return self._tracker

    async def _call(self, awaitable: Awaitable[T], stage: str) -> T:
        """One model call within the deadline; through the stage's circuit breaker when there is one.

        With breakers, a stage whose replica is dead costs one deadline, then its
        calls fail at once (the frame falls back at the camera's rate) until a probe succeeds.
        """
        if self._breakers is not None:
            return await self._breakers[stage].call(awaitable, self._deadline_s)
        # asyncio.timeout rather than wait_for: on 3.11, wait_for around a gather() that gets
        # cancelled leaves the gather's CancelledError unretrieved (an event-loop error).
        async with asyncio.timeout(self._deadline_s):
            return await awaitable

    # --- analysis -------------------------------------------------------------------------
    def plan(self) -> TrackPlan:
        return self._tracker.plan()

    def fuses(self, plan: TrackPlan) -> bool:
        """Whether this frame's landmarks and swap go in one call (a tracked frame with an identity)."""
        return bool(
            self._settings.fuse_tracking
            and self._swap_stage is not None
            and not plan.detect
            and plan.rois
            and self.controls.identity is not None
            and len(plan.rois) == len(self._tracker.slots)
        )

    def model_inputs(self, image: Image, plan: TrackPlan, picture: Image | None = None, scale: float = 1.0) -> ModelInputs:
        """The frame's first model inputs (pixel work: call it off the loop, with the conversion).

        ``image`` is analysed; ``picture`` (``scale`` times its size; default: ``image``)
        goes out, and a fused frame's crops are cut from it.
        """
        inputs = self._prep.model_inputs(image, plan.detect, plan.rois)
        if self.fuses(plan):
            inputs.regions = cut_regions(image if picture is None else picture, plan.rois, scale)
        return inputs

    async def analyze(self, image: Image, t: float) -> Analysis:
        """Detect (when the tracker asks) and find landmarks; never raises for a model failure."""
        plan = self._tracker.plan()
        inputs = await self._offload(self.model_inputs, image, plan)
        return await self.analyze_prepared(image, t, plan, inputs)

    async def analyze_prepared(self, image: Image, t: float, plan: TrackPlan, inputs: ModelInputs) -> Analysis:
        """:meth:`analyze` once the plan's model inputs are made (served: in the conversion's hop)."""
        stages: dict[str, float] = {}
        if inputs.regions is not None and inputs.mesh is not None and self.fuses(plan):
            fused = await self._analyze_fused(t, plan, inputs, stages)
            if fused is not None:
                return fused
            # The swapper failed or was late: this frame is tracked by the landmarker instead, so the
            # tracker (and the fallback's blur) keeps following the face while the swapper is down.
        tracker = self._tracker
        rois = list(plan.rois)
        mesh_items = inputs.mesh
        detect_ok = True
        if inputs.detector is not None:
            start = time.perf_counter()
            try:
                dets = await self._call(self._models.infer(DETECTOR, "detect", inputs.detector), "detect")
                if dets:
                    rois = tracker.rois_from_detections(dets)
            except Exception as exc:  # noqa: BLE001 - any failure degrades, never freezes
                detect_ok = False
                self.degraded_events += 1
                logger.debug("detect failed (%s); continuing with %d tracked faces", type(exc).__name__, len(rois))
            stages["detect"] = (time.perf_counter() - start) * 1000.0
            mesh_items = None  # the regions came from this detection (or from tracking, if it failed)
        if not detect_ok and not rois:
            return Analysis(faces=[], hide_boxes=[], failure="detect", stages_ms=stages)
        raw: list[FaceLandmarks] = []
        if rois:
            start = time.perf_counter()
            try:
                if mesh_items is None:
                    mesh_items = await self._offload(self._prep.mesh_inputs, image, rois)
                calls = [self._models.infer(DETECTOR, "landmarks", item) for item in mesh_items]
                raw = list(await self._call(asyncio.gather(*calls), "landmarks"))
            except Exception as exc:  # noqa: BLE001
                stages["landmarks"] = (time.perf_counter() - start) * 1000.0
                logger.debug("landmarks failed (%s)", type(exc).__name__)
                return Analysis(faces=[], hide_boxes=[roi_box(r) for r in rois], failure="landmarks", stages_ms=stages)
            stages["landmarks"] = (time.perf_counter() - start) * 1000.0
        # The tracker keeps the largest max_faces faces (the one place faces are chosen).
        faces = tracker.observe(raw, t, detected=plan.detect and detect_ok)
        return Analysis(faces=faces, hide_boxes=[landmark_box(f) for f in faces], failure=None, stages_ms=stages)

    async def _analyze_fused(self, t: float, plan: TrackPlan, inputs: ModelInputs, stages: dict[str, float]) -> Analysis | None:
        """A tracked frame in one call per face: landmarks, smoothing, crop and swap on the swapper (``fused``).

        None when the call fails or is late (the tracker's state is then as it was).
        """
        stage, controls, tracker = self._swap_stage, self.controls, self._tracker
        assert stage is not None and inputs.mesh is not None and inputs.regions is not None and controls.identity is not None
        state = self._stage_state.setdefault(stage.name, {})
        attach = identity_sends(state, controls.identity_key)
        items = [
            TrackSwapItem(
                mesh=mesh,
                slot=slot,
                t=t,
                tracker=tracker.config,
                region=region,
                identity_key=controls.identity_key,
                identity=controls.identity if attach else None,
                swapper=controls.swapper,
                options=controls.options,
            )
            for mesh, slot, region in zip(inputs.mesh, tracker.slots, inputs.regions, strict=True)
        ]
        start = time.perf_counter()
        try:
            calls = [self._models.infer(stage.deployment, "track_swap", item) for item in items]
            results: list[TrackSwapResult] = list(await self._call(asyncio.gather(*calls), stage.name))
        except Exception as exc:  # noqa: BLE001 - any failure degrades, never freezes
            stages["track_swap"] = (time.perf_counter() - start) * 1000.0
            self.degraded_events += 1
            logger.debug("track_swap failed (%s); tracking this frame with the landmarker", type(exc).__name__)
            return None
        stages["track_swap"] = (time.perf_counter() - start) * 1000.0
        kept = [results[i] for i in tracker.observe_followed([(r.raw, r.slot) for r in results], t)]
        faces = [r.slot.smoothed for r in kept]
        if any(r.swap.error == UNKNOWN_IDENTITY for r in kept):
            resend_identity(state)  # a replica without it: render swaps these faces again, with the identity
        swaps: list[tuple[CropPlace, SwapResult]] | None = [(r.place, r.swap) for r in kept if r.place is not None]
        if any(r.place is None or r.swap.error is not None for r in kept):
            swaps = None  # render's swap stage swaps them (or falls back)
        return Analysis(faces=faces, hide_boxes=[landmark_box(f) for f in faces], failure=None, stages_ms=stages, swaps=swaps)

    # --- rendering -----------------------------------------------------------------------
    async def render(self, image: Image, analysis: Analysis, build: Callable[[Image], F] | None = None) -> Rendered[F]:
        """Crop, run the face stages, paste back and badge; under the fallback policy when a required stage fails.

        Never raises. With ``build``, the hop that makes the final picture also
        makes what goes out (served: the outgoing frame).
        """
        stages = dict(analysis.stages_ms)
        sequence = self._renders  # renders start in frame order (the steadier needs it)
        self._renders += 1
        if analysis.failure is not None:
            return await self._fallback(image, analysis, stages, build)
        controls = self.controls
        if not analysis.faces:
            return Rendered(image=image, faces=0, fallback=None, stages_ms=stages)
        if controls.identity is None:  # never show a face unswapped because the identity is being replaced
            return await self._fallback(image, analysis, stages, build)
        options = controls.options
        start = time.perf_counter()
        skipped: list[str] = []
        if analysis.swaps is not None:
            swaps = analysis.swaps
            try:
                crops = await self._offload(lambda: [place.cut(image) for place, _ in swaps])
            except Exception as exc:  # noqa: BLE001
                logger.debug("crop failed (%s)", type(exc).__name__)
                return await self._fallback(image, analysis, stages, build)
            work = FaceWork(crops=crops, swapped=[result.face() for _, result in swaps])
        else:
            try:
                crops = await self._offload(self._prep.crops, image, analysis.faces, controls.swapper)
            except Exception as exc:  # noqa: BLE001
                logger.debug("crop failed (%s)", type(exc).__name__)
                return await self._fallback(image, analysis, stages, build)
            work = FaceWork(crops=crops)
        for stage in self.stages:
            if not stage.wanted(controls):
                continue
            ctx = StageContext(
                models=self._models, controls=controls, offload=self._offload, state=self._stage_state.setdefault(stage.name, {})
            )
            try:
                work = await self._call(stage.run(ctx, work), stage.name)
            except Exception as exc:  # noqa: BLE001
                stages[stage.name] = stages.get(stage.name, 0.0) + (time.perf_counter() - start) * 1000.0
                if stage.required:
                    logger.debug("%s failed (%s)", stage.name, type(exc).__name__)
                    return await self._fallback(image, analysis, stages, build)
                logger.debug("%s failed or late (%s): the faces go on without it", stage.name, type(exc).__name__)
                self.skipped[stage.name] = self.skipped.get(stage.name, 0) + 1
                if self._shared is not None:
                    self._shared.skipped[stage.name] = self._shared.skipped.get(stage.name, 0) + 1
                skipped.append(stage.name)
                start = time.perf_counter()
                continue
            stages[stage.name] = stages.get(stage.name, 0.0) + (time.perf_counter() - start) * 1000.0
            start = time.perf_counter()
        if len(work.swapped) != len(crops):  # no required stage produced faces
            return await self._fallback(image, analysis, stages, build)
        badge = self._settings.badge
        pairs = list(zip(crops, work.swapped, strict=True))
        steadier = self._steadier if self._steadier.begin(len(pairs), controls.identity, sequence) else None

        def compose() -> tuple[Image, F | None]:
            out = paste_back_many(image, pairs, options, steady=steadier)
            out = draw_badge(out) if badge else out
            return out, (build(out) if build is not None else None)

        try:
            out, frame = await self._offload(compose)
        except Exception as exc:  # noqa: BLE001
            logger.warning("paste-back failed (%s)", type(exc).__name__)
            return await self._fallback(image, analysis, stages, build)
        stages["paste"] = (time.perf_counter() - start) * 1000.0
        self._last_good = (out, self._clock())
        if work.enhanced:
            self.enhanced_frames += 1
            if self._shared is not None:
                self._shared.enhanced_frames += 1
        return Rendered(image=out, faces=len(crops), fallback=None, stages_ms=stages, frame=frame, skipped=skipped, enhanced=work.enhanced)

    async def process(self, image: Image, t: float) -> tuple[Analysis, Rendered[Any]]:
        """One frame, start to end (the CLI and the benchmark baseline)."""
        analysis = await self.analyze(image, t)
        return analysis, await self.render(image, analysis)

    async def _fallback(
        self, image: Image, analysis: Analysis, stages: dict[str, float], build: Callable[[Image], F] | None = None
    ) -> Rendered[F]:
        policy = self.controls.fallback
        self.degraded_events += 1
        self._steadier.reset()  # the next swapped frame starts afresh
        if policy == "passthrough":
            return Rendered(image=image, faces=0, fallback="passthrough", stages_ms=stages)
        if policy == "hold" and self._last_good is not None:
            held, when = self._last_good
            if self._clock() - when <= self._settings.hold_s and held.shape == image.shape:
                return Rendered(image=held, faces=0, fallback="hold", stages_ms=stages)
        boxes = analysis.hide_boxes

        def blur() -> tuple[Image, F | None]:
            out = blur_regions(image, boxes) if boxes else blur_frame(image)
            return out, (build(out) if build is not None else None)

        out, frame = await self._offload(blur)
        return Rendered(image=out, faces=0, fallback="blur", stages_ms=stages, frame=frame)
