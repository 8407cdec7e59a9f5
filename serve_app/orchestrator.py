"""Per-frame orchestration of one session (DESIGN.md §1).

For each frame the pump hands over: convert (≤ ``max_output_side``, the
camera's own resolution below it) and make a downscaled copy for analysis
(≤ ``max_side``), ask the tracker whether to detect, detect (when planned) →
landmarks → keep the largest N faces → scale them to the output picture →
crop at the face's own resolution → swap → paste back → badge. The person gets
their frames back at the resolution they sent. Model work goes
through a :class:`ModelClient` — Serve deployment handles in production, or
in-process models (tests, benchmarks) — and every call has a deadline: a call
that fails or is late sends the frame out under the session's fallback policy
(``blur`` by default, ``hold``, or ``passthrough``) and the session carries on.

Tracking is sequential per session (the tracker's state follows frame order);
rendering (swap, paste, encode-ready frame) of frame N overlaps the analysis
of frame N+1, within the output track's small window, and frames leave in order.
Everything that touches pixels runs in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import cv2
import numpy as np
import numpy.typing as npt
from av import VideoFrame

from deployments.swapper import SwapperCore
from deployments.types import UNKNOWN_IDENTITY, IdentityReply, SwapItem, SwapResult
from mirage.detect.blazeface import BlazeFaceConfig, BlazeFaceDetector, DetectorInput
from mirage.geometry.align import align_face, with_mesh
from mirage.geometry.paste import paste_back_many
from mirage.landmarks.facemesh import FaceMeshLandmarker, FaceRoi, MeshInput
from mirage.landmarks.topology import five_point_from_mesh
from mirage.overlay import blur_frame, blur_regions, draw_badge
from mirage.swap.mesh import MeshSwapConfig, MeshSwapper
from mirage.tracking.tracker import FaceTracker, TrackerConfig, TrackPlan
from mirage.types import (
    Detection,
    FaceCrop,
    FaceLandmarks,
    Identity,
    Image,
    SwapOptions,
    SwappedFace,
    SwapperName,
)
from mirage.video import video_frame_to_bgr
from serve_app.breaker import StageBreakers
from serve_app.media import LatestFramePump, OrderedVideoTrack, video_frame_like
from serve_app.metrics import FrameRecord
from serve_app.settings import FallbackPolicy, SessionSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")

INSWAPPER_CROP = 128
#: Swap calls after an identity change that carry the identity itself (then only its key).
IDENTITY_WARMUP_CALLS = 3


class ModelClient(Protocol):
    """The model stages as seen from the ingress (one item per call; the far side batches)."""

    async def detect(self, item: DetectorInput) -> list[Detection]: ...

    async def landmarks(self, item: MeshInput) -> FaceLandmarks: ...

    async def swap(self, item: SwapItem) -> SwapResult: ...

    async def forget_identity(self, key: str) -> None: ...

    async def prepare_identity(self, photo: bytes, swapper: str) -> IdentityReply: ...

    async def available_swappers(self) -> list[str]: ...


class ServeModelClient:
    """:class:`ModelClient` over Serve deployment handles (FaceDetector, FaceSwapper)."""

    def __init__(self, detector: Any, swapper: Any) -> None:
        self._detector = detector
        self._swapper = swapper

    async def detect(self, item: DetectorInput) -> list[Detection]:
        return await self._detector.detect.remote(item)

    async def landmarks(self, item: MeshInput) -> FaceLandmarks:
        return await self._detector.landmarks.remote(item)

    async def swap(self, item: SwapItem) -> SwapResult:
        return await self._swapper.swap.remote(item)

    async def forget_identity(self, key: str) -> None:
        await self._swapper.forget_identity.remote(key)

    async def prepare_identity(self, photo: bytes, swapper: str) -> IdentityReply:
        return await self._swapper.prepare_identity.remote(photo, swapper)

    async def available_swappers(self) -> list[str]:
        return await self._swapper.available_swappers.remote()


class LocalModelClient:
    """:class:`ModelClient` over in-process models (tests, benchmarks' baseline): same stages, no Serve."""

    def __init__(
        self,
        detector: BlazeFaceDetector,
        landmarker: FaceMeshLandmarker,
        swapper: SwapperCore,
    ) -> None:
        self._detector = detector
        self._landmarker = landmarker
        self._swapper = swapper

    async def detect(self, item: DetectorInput) -> list[Detection]:
        return (await asyncio.to_thread(self._detector.infer, [item]))[0]

    async def landmarks(self, item: MeshInput) -> FaceLandmarks:
        return (await asyncio.to_thread(self._landmarker.infer, [item]))[0]

    async def swap(self, item: SwapItem) -> SwapResult:
        return (await asyncio.to_thread(self._swapper.swap_batch, [item]))[0]

    async def forget_identity(self, key: str) -> None:
        self._swapper.identities.forget(key)

    async def prepare_identity(self, photo: bytes, swapper: str) -> IdentityReply:
        return await asyncio.to_thread(self._swapper.build_identity, photo, swapper)

    async def available_swappers(self) -> list[str]:
        return self._swapper.available_swappers()


@dataclass
class SessionControls:
    """What a session's client can change at run time (data channel / WebSocket control).

    ``identity_key`` names the current identity towards the swapper replicas
    (a fresh random key for every new identity, never derived from its data).
    """

    identity: Identity | None = field(default=None, repr=False)
    identity_key: str = ""
    swapper: SwapperName = "mesh"
    max_faces: int = 1
    options: SwapOptions = field(default_factory=SwapOptions)
    fallback: FallbackPolicy = "blur"

    def __post_init__(self) -> None:
        if self.identity is not None and not self.identity_key:
            self.identity_key = secrets.token_hex(8)

    def set_identity(self, identity: Identity | None) -> str:
        """Install a new identity (or none); returns the previous key so it can be forgotten."""
        previous = self.identity_key
        self.identity = identity
        self.identity_key = secrets.token_hex(8) if identity is not None else ""
        return previous


@dataclass
class ModelInputs:
    """A frame's first model inputs: the detector's when detecting, else the landmarker's."""

    detector: DetectorInput | None = None
    mesh: list[MeshInput] | None = None


class FramePreparer:
    """Cheap per-frame preparation done in the ingress: model inputs and face crops.

    It holds its own detector and landmarker objects only for their ``prepare``
    (letterbox / ROI warp); inference happens in the deployments.
    """

    def __init__(self, detector_model: str = "short", mesh: MeshSwapConfig | None = None) -> None:
        self._detector = BlazeFaceDetector(BlazeFaceConfig(model=detector_model))  # type: ignore[arg-type]
        self._landmarker = FaceMeshLandmarker()
        self._mesh = MeshSwapper(mesh or MeshSwapConfig())

    def detector_input(self, image: Image) -> DetectorInput:
        return self._detector.prepare(image)

    def mesh_inputs(self, image: Image, rois: Sequence[FaceRoi]) -> list[MeshInput]:
        return [self._landmarker.prepare(image, roi) for roi in rois]

    def model_inputs(self, image: Image, detect: bool, rois: Sequence[FaceRoi]) -> ModelInputs:
        """The first model inputs of a frame: the detector's, or the landmarker's for tracked regions."""
        if detect:
            return ModelInputs(detector=self.detector_input(image))
        return ModelInputs(mesh=self.mesh_inputs(image, rois))

    def crops(self, image: Image, faces: Sequence[FaceLandmarks], swapper: SwapperName) -> list[FaceCrop]:
        """Face crops for the swapper, each carrying the live mesh (paste-back draws its mask from it)."""
        if swapper == "inswapper":
            return [with_mesh(align_face(image, five_point_from_mesh(face.xy), INSWAPPER_CROP), face) for face in faces]
        return [self._mesh.prepare(image, face) for face in faces]


@dataclass
class Analysis:
    """The tracking stage's result for one frame, in the coordinates of the picture it goes out in."""

    faces: list[FaceLandmarks]
    #: Regions to hide if this frame has to fall back (tracked faces, else tracked ROIs).
    hide_boxes: list[npt.NDArray[np.float32]]
    failure: str | None
    stages_ms: dict[str, float]

    def scaled(self, factor: float) -> Analysis:
        """The same analysis for a picture ``factor`` times the size of the analysed one."""
        if factor == 1.0:
            return self
        faces = [FaceLandmarks(points=(f.points * np.float32(factor)).astype(np.float32), confidence=f.confidence) for f in self.faces]
        boxes = [(np.asarray(b, np.float32) * np.float32(factor)).astype(np.float32) for b in self.hide_boxes]
        return Analysis(faces=faces, hide_boxes=boxes, failure=self.failure, stages_ms=self.stages_ms)


@dataclass
class Rendered:
    image: Image
    faces: int
    fallback: str | None
    stages_ms: dict[str, float]
    #: The outgoing frame, when the render's last worker hop already built it.
    frame: VideoFrame | None = None


#: Builds the outgoing frame from the final picture (in the same worker hop as the picture).
FrameBuilder = Callable[[Image], VideoFrame]


def _landmark_box(face: FaceLandmarks) -> npt.NDArray[np.float32]:
    xy = face.xy
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    return np.array([lo[0], lo[1], hi[0], hi[1]], np.float32)


def _roi_box(roi: FaceRoi) -> npt.NDArray[np.float32]:
    half = roi.size / 2.0
    return np.array([roi.center_x - half, roi.center_y - half, roi.center_x + half, roi.center_y + half], np.float32)


def _extent(face: FaceLandmarks) -> float:
    box = _landmark_box(face)
    return float(max(box[2] - box[0], box[3] - box[1]))


def _even_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = max_side / float(max(width, height))
    return max(2, int(round(width * scale)) // 2 * 2), max(2, int(round(height * scale)) // 2 * 2)


def to_bgr(frame: VideoFrame, max_side: int) -> Image:
    """Decoded frame → BGR array, longest side at most ``max_side`` (aspect kept, even sides).

    The frame is scaled while still YUV (libswscale, area filter: cheap, and no
    colour conversion there) and converted to BGR by OpenCV, which is accurate
    where swscale's BGR path darkens every hop (see ``mirage.video``).
    """
    width, height = frame.width, frame.height
    if max(width, height) > max_side:
        new_w, new_h = _even_size(width, height, max_side)
        frame = frame.reformat(width=new_w, height=new_h, format="yuv420p", interpolation="AREA")
    return np.ascontiguousarray(video_frame_to_bgr(frame))


def analysis_copy(picture: Image, max_side: int) -> tuple[Image, float]:
    """The picture downscaled for analysis (≤ ``max_side``) and the output/analysis scale factor."""
    height, width = picture.shape[:2]
    if max(width, height) <= max_side:
        return picture, 1.0
    new_w, new_h = _even_size(width, height, max_side)
    small = cv2.resize(picture, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return small, width / float(new_w)


class FrameProcessor:
    """The per-frame pipeline of one session (tracker state + fallback state)."""

    def __init__(
        self,
        models: ModelClient,
        preparer: FramePreparer,
        settings: SessionSettings,
        controls: SessionControls,
        clock: Callable[[], float] = time.monotonic,
        breakers: StageBreakers | None = None,
    ) -> None:
        self._models = models
        self._breakers = breakers
        self._prep = preparer
        self._settings = settings
        self.controls = controls
        self._clock = clock
        self._deadline_s = settings.deadline_ms / 1000.0
        self._tracker = self._new_tracker(controls.max_faces)
        self._last_good: tuple[Image, float] | None = None
        self._warm_key = ""
        self._identity_sends = 0
        self.degraded_events = 0

    def _new_tracker(self, max_faces: int) -> FaceTracker:
        return FaceTracker(TrackerConfig(detect_every=self._settings.detect_every, max_faces=max_faces))

    def set_max_faces(self, max_faces: int) -> None:
        if max_faces != self.controls.max_faces:
            self.controls.max_faces = max_faces
            self._tracker = self._new_tracker(max_faces)

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

    async def analyze(self, image: Image, t: float) -> Analysis:
        """Detect (when the tracker asks) and find landmarks; never raises for a model failure."""
        plan = self._tracker.plan()
        inputs = await asyncio.to_thread(self._prep.model_inputs, image, plan.detect, plan.rois)
        return await self._analyze(image, t, plan, inputs)

    async def analyze_frame(
        self, frame: VideoFrame, t: float, max_side: int, max_output_side: int | None = None
    ) -> tuple[Image, Analysis]:
        """Convert a decoded frame and analyze a copy of it (≤ ``max_side``).

        Returns the picture that goes out (the camera's resolution, at most
        ``max_output_side``; default ``max_side``) and the analysis in its
        coordinates. Conversion and the first model inputs share one
        worker-thread hop: the tracker's plan (detect, or landmarks in the
        tracked regions) is known before the pixels are, and every hop costs a
        thread hand-over under load.
        """
        plan = self._tracker.plan()
        start = time.perf_counter()
        output_side = max(max_output_side or max_side, max_side)

        def convert_and_prepare() -> tuple[Image, Image, float, ModelInputs]:
            picture = to_bgr(frame, output_side)
            small, factor = analysis_copy(picture, max_side)
            return picture, small, factor, self._prep.model_inputs(small, plan.detect, plan.rois)

        picture, small, factor, inputs = await asyncio.to_thread(convert_and_prepare)
        convert_ms = (time.perf_counter() - start) * 1000.0
        analysis = await self._analyze(small, t, plan, inputs)
        analysis.stages_ms["convert"] = convert_ms
        return picture, analysis.scaled(factor)

    async def _analyze(self, image: Image, t: float, plan: TrackPlan, inputs: ModelInputs) -> Analysis:
        stages: dict[str, float] = {}
        tracker = self._tracker
        rois = list(plan.rois)
        mesh_items = inputs.mesh
        detect_ok = True
        if inputs.detector is not None:
            start = time.perf_counter()
            try:
                dets = await self._call(self._models.detect(inputs.detector), "detect")
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
                    mesh_items = await asyncio.to_thread(self._prep.mesh_inputs, image, rois)
                raw = list(await self._call(asyncio.gather(*(self._models.landmarks(i) for i in mesh_items)), "landmarks"))
            except Exception as exc:  # noqa: BLE001
                stages["landmarks"] = (time.perf_counter() - start) * 1000.0
                logger.debug("landmarks failed (%s)", type(exc).__name__)
                return Analysis(faces=[], hide_boxes=[_roi_box(r) for r in rois], failure="landmarks", stages_ms=stages)
            stages["landmarks"] = (time.perf_counter() - start) * 1000.0
        faces = tracker.observe(raw, t, detected=plan.detect and detect_ok)
        faces = sorted(faces, key=_extent, reverse=True)[: self.controls.max_faces]
        return Analysis(faces=faces, hide_boxes=[_landmark_box(f) for f in faces], failure=None, stages_ms=stages)

    async def render(self, image: Image, analysis: Analysis, build: FrameBuilder | None = None) -> Rendered:
        """Swap, paste back and badge; under the fallback policy when anything fails. Never raises.

        With ``build``, the hop that makes the final picture also makes the outgoing frame.
        """
        stages = dict(analysis.stages_ms)
        if analysis.failure is not None:
            return await self._fallback(image, analysis, stages, build)
        controls = self.controls
        identity, swapper, options = controls.identity, controls.swapper, controls.options
        if not analysis.faces:
            return Rendered(image=image, faces=0, fallback=None, stages_ms=stages)
        if identity is None:  # never show a face unswapped because the identity is being replaced
            return await self._fallback(image, analysis, stages, build)
        key = controls.identity_key
        start = time.perf_counter()
        try:
            crops = await asyncio.to_thread(self._prep.crops, image, analysis.faces, swapper)
            swapped = await self._call(self._swap(crops, identity, key, swapper, options), "swap")
        except Exception as exc:  # noqa: BLE001
            stages["swap"] = (time.perf_counter() - start) * 1000.0
            logger.debug("swap failed (%s)", type(exc).__name__)
            return await self._fallback(image, analysis, stages, build)
        stages["swap"] = (time.perf_counter() - start) * 1000.0
        start = time.perf_counter()
        badge = self._settings.badge

        def compose() -> tuple[Image, VideoFrame | None]:
            out = paste_back_many(image, list(zip(crops, swapped, strict=True)), options)
            out = draw_badge(out) if badge else out
            return out, (build(out) if build is not None else None)

        try:
            out, frame = await asyncio.to_thread(compose)
        except Exception as exc:  # noqa: BLE001
            logger.warning("paste-back failed (%s)", type(exc).__name__)
            return await self._fallback(image, analysis, stages, build)
        stages["paste"] = (time.perf_counter() - start) * 1000.0
        self._last_good = (out, self._clock())
        return Rendered(image=out, faces=len(crops), fallback=None, stages_ms=stages, frame=frame)

    async def _swap(
        self, crops: list[FaceCrop], identity: Identity, key: str, swapper: SwapperName, options: SwapOptions
    ) -> list[SwappedFace]:
        """Swap the crops; the identity travels only while the swapper replicas may not hold it."""
        if key != self._warm_key:
            self._warm_key, self._identity_sends = key, IDENTITY_WARMUP_CALLS
        attach = self._identity_sends > 0
        if attach:
            self._identity_sends -= 1
        items = [
            SwapItem(crop=c, identity_key=key, identity=identity if attach else None, swapper=swapper, options=options)
            for c in crops
        ]
        results = list(await asyncio.gather(*(self._models.swap(item) for item in items)))
        unknown = [i for i, r in enumerate(results) if r.error == UNKNOWN_IDENTITY]
        if unknown:
            # A replica that never saw this identity (a new or restarted replica): send it again.
            self._identity_sends = IDENTITY_WARMUP_CALLS
            retried = await asyncio.gather(
                *(self._models.swap(SwapItem(crop=items[i].crop, identity_key=key, identity=identity,
                                             swapper=swapper, options=options)) for i in unknown)
            )
            for i, result in zip(unknown, retried, strict=True):
                results[i] = result
        failed = [r.error for r in results if r.error is not None]
        if failed:
            raise RuntimeError(f"swap failed: {failed[0]}")
        return [r.face() for r in results]

    async def _fallback(
        self, image: Image, analysis: Analysis, stages: dict[str, float], build: FrameBuilder | None = None
    ) -> Rendered:
        policy = self.controls.fallback
        self.degraded_events += 1
        if policy == "passthrough":
            return Rendered(image=image, faces=0, fallback="passthrough", stages_ms=stages)
        if policy == "hold" and self._last_good is not None:
            held, when = self._last_good
            if self._clock() - when <= self._settings.hold_s and held.shape == image.shape:
                return Rendered(image=held, faces=0, fallback="hold", stages_ms=stages)
        boxes = analysis.hide_boxes

        def blur() -> tuple[Image, VideoFrame | None]:
            out = blur_regions(image, boxes) if boxes else blur_frame(image)
            return out, (build(out) if build is not None else None)

        out, frame = await asyncio.to_thread(blur)
        return Rendered(image=out, faces=0, fallback="blur", stages_ms=stages, frame=frame)


class VideoLoop:
    """Pump → processor → ordered output track, for one session."""

    def __init__(
        self,
        pump: LatestFramePump,
        processor: FrameProcessor,
        output: OrderedVideoTrack,
        max_side: int,
        on_frame: Callable[[FrameRecord], None],
        max_output_side: int | None = None,
    ) -> None:
        self._pump = pump
        self._processor = processor
        self._output = output
        self._max_side = max_side
        self._max_output_side = max_output_side
        self._on_frame = on_frame
        self.errors = 0

    async def run(self) -> None:
        try:
            while True:
                item = await self._pump.next()
                if item is None:
                    break
                frame, arrived = item
                try:
                    image, analysis = await self._processor.analyze_frame(
                        frame, arrived, self._max_side, self._max_output_side
                    )
                except Exception:  # noqa: BLE001 - a broken frame must not end the session
                    self.errors += 1
                    logger.exception("frame preparation failed; frame skipped")
                    continue
                task = asyncio.ensure_future(self._finish(image, analysis, frame.pts, frame.time_base, arrived))
                await self._output.put(task)
        finally:
            self._output.finish()

    async def _finish(self, image: Image, analysis: Analysis, pts: int | None, time_base: Any, arrived: float) -> VideoFrame:
        def build(picture: Image) -> VideoFrame:
            return video_frame_like(picture, pts, time_base)

        try:
            rendered = await self._processor.render(image, analysis, build)
        except Exception:  # noqa: BLE001 - render is meant not to raise; belt and braces
            self.errors += 1
            logger.exception("render failed; frame blurred")
            rendered = Rendered(image=blur_frame(image), faces=0, fallback="blur", stages_ms=dict(analysis.stages_ms))
        frame = rendered.frame
        if frame is None:  # passthrough / hold: the picture is ready, only the frame is left
            frame = await asyncio.to_thread(video_frame_like, rendered.image, pts, time_base)
        stages = dict(rendered.stages_ms)
        stages["total"] = (time.monotonic() - arrived) * 1000.0
        self._on_frame(FrameRecord(stages_ms=stages, faces=rendered.faces, fallback=rendered.fallback))
        return frame

