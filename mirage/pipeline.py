"""The whole face pipeline in one process: detect → landmarks → swap → paste-back.

Used by the file CLI, the benchmarks' in-process baseline and tests. The
served application runs the same stages, split across Serve deployments
(``serve_app/orchestrator.py``); both call the same library functions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import cv2

from mirage.detect.blazeface import BlazeFaceConfig, BlazeFaceDetector, largest_faces
from mirage.errors import ModelUnavailableError, NoFaceError
from mirage.geometry.align import with_mesh
from mirage.geometry.paste import BlendConfig, paste_back_many
from mirage.landmarks.facemesh import FaceMeshLandmarker, roi_from_detection
from mirage.landmarks.topology import five_point_from_mesh
from mirage.swap.mesh import MeshSwapConfig, MeshSwapper
from mirage.tracking.tracker import FaceTracker, TrackerConfig
from mirage.types import (
    FaceCrop,
    FaceLandmarks,
    Identity,
    Image,
    MeshIdentity,
    SwapOptions,
    SwappedFace,
    SwapperName,
)

if TYPE_CHECKING:  # ONNX Runtime is imported only when the neural path is used
    from mirage.swap.neural import NeuralSwap

logger = logging.getLogger(__name__)

STAGES = ("detect", "landmarks", "swap", "paste")


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline does; built at the edge (CLI flags, benchmark args)."""

    swapper: SwapperName = "mesh"
    max_faces: int = 1
    detector_model: Literal["short", "full"] = "short"
    track: bool = True
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    swap_options: SwapOptions = field(default_factory=SwapOptions)
    mesh: MeshSwapConfig = field(default_factory=MeshSwapConfig)
    blend: BlendConfig = field(default_factory=BlendConfig)
    num_threads: int = 1


@dataclass(frozen=True)
class IdentityResult:
    identity: Identity
    faces_found: int
    note: str | None


@dataclass
class FrameResult:
    frame: Image
    faces: list[FaceLandmarks]
    timings_ms: dict[str, float]


class FacePipeline:
    """Embedded models plus an optional InSwapper; one tracker (one video stream)."""

    def __init__(self, config: PipelineConfig, neural: NeuralSwap | None = None) -> None:
        self.config = config
        self.detector = BlazeFaceDetector(BlazeFaceConfig(model=config.detector_model, num_threads=config.num_threads))
        self.landmarker = FaceMeshLandmarker(num_threads=config.num_threads)
        self.mesh_swapper = MeshSwapper(config.mesh)
        self.neural = neural
        if config.swapper == "inswapper" and neural is None:
            raise ModelUnavailableError("The inswapper swapper needs the InSwapper model; provision it or use --swapper mesh.")
        tracker_config = config.tracker
        if tracker_config.max_faces != config.max_faces:
            tracker_config = replace(tracker_config, max_faces=config.max_faces)
        self.tracker = FaceTracker(tracker_config)

    # --- reference ------------------------------------------------------------------
    def reference_landmarks(self, reference: Image) -> tuple[FaceLandmarks, int]:
        """The largest face's mesh in a reference photo, and how many faces it had.

        Tightly cropped portraits (a face filling the picture) are padded and
        retried, since the detector needs some context around a face.
        """
        for pad in (0.0, 0.5):
            image = reference
            offset = 0
            if pad:
                offset = int(max(reference.shape[:2]) * pad)
                image = cv2.copyMakeBorder(reference, offset, offset, offset, offset, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            detections = self.detector.detect([image])[0]
            if detections:
                best = largest_faces(detections, 1)[0]
                marks = self.landmarker.landmarks([(image, roi_from_detection(best))])[0]
                points = marks.points.copy()
                points[:, :2] -= offset
                return FaceLandmarks(points=points, confidence=marks.confidence), len(detections)
        raise NoFaceError("No face found in the reference photo; use a clear, front-facing photo of one person.")

    def build_identity(self, reference: Image, swapper: SwapperName | None = None) -> IdentityResult:
        """Identity data for the chosen swapper, from the reference's largest face."""
        name = swapper or self.config.swapper
        landmarks, count = self.reference_landmarks(reference)
        note = f"{count} faces in the reference photo; using the largest." if count > 1 else None
        if name == "mesh":
            identity: Identity = self.mesh_swapper.identity_from_landmarks(reference, landmarks)
        else:
            if self.neural is None:
                raise ModelUnavailableError("The inswapper swapper is not available in this pipeline.")
            identity = self.neural.identity_builder.build(reference)
        return IdentityResult(identity=identity, faces_found=count, note=note)

    # --- frames -----------------------------------------------------------------------
    def process(self, frame: Image, identity: Identity, t: float | None = None) -> FrameResult:
        """Swap every tracked face (up to max_faces) in one frame."""
        timings = {stage: 0.0 for stage in STAGES}
        now = time.monotonic() if t is None else t
        plan = self.tracker.plan() if self.config.track else None
        detected = plan is None or plan.detect
        with _timed(timings, "detect"):
            if detected:
                detections = self.detector.detect([frame])[0]
                rois = self.tracker.rois_from_detections(largest_faces(detections, self.config.max_faces))
            else:
                assert plan is not None
                rois = plan.rois
        with _timed(timings, "landmarks"):
            raw = self.landmarker.landmarks([(frame, roi) for roi in rois]) if rois else []
            faces = self.tracker.observe(raw, now, detected=detected)
        out = frame
        if faces:
            with _timed(timings, "swap"):
                crops, swapped = self._swap(frame, faces, identity)
            with _timed(timings, "paste"):
                out = paste_back_many(out, list(zip(crops, swapped, strict=True)), self.config.swap_options, self.config.blend)
        return FrameResult(frame=out, faces=faces, timings_ms=timings)

    def _swap(
        self, frame: Image, faces: list[FaceLandmarks], identity: Identity
    ) -> tuple[list[FaceCrop], list[SwappedFace]]:
        if isinstance(identity, MeshIdentity):
            crops = [self.mesh_swapper.prepare(frame, face) for face in faces]
            options = [self.config.swap_options] * len(crops)
            return crops, self.mesh_swapper.swap(crops, [identity] * len(crops), options)
        if self.neural is None:
            raise ModelUnavailableError("InSwapper identity given but no InSwapper model is loaded.")
        swapper = self.neural.swapper
        crops = [with_mesh(swapper.prepare(frame, five_point_from_mesh(face.xy)), face) for face in faces]
        return crops, swapper.swap(crops, [identity] * len(crops))

    def reset(self) -> None:
        """Forget tracked faces (a new, unrelated stream or image)."""
        self.tracker.reset()


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] += (time.perf_counter() - start) * 1000.0

