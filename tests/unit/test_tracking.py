"""One-Euro smoothing and the face tracker, on real astronaut frames through the real models."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest

from mirage.detect.blazeface import BlazeFaceDetector
from mirage.landmarks.facemesh import FaceMeshLandmarker, roi_from_detection
from mirage.pipeline.controls import FrameControls
from mirage.pipeline.frame import FramePipeline, FrameSettings, inline
from mirage.pipeline.models import DETECTOR, DetectorEngine, LocalModelClient
from mirage.pipeline.prepare import FramePreparer
from mirage.tracking.one_euro import OneEuroConfig, OneEuroFilter
from mirage.tracking.tracker import FaceTracker, TrackerConfig
from mirage.types import Detection, FaceLandmarks
from standins.faces import astronaut_bgr

FPS = 30.0
NOISE_SIGMA = 2.0  # grey levels of independent gaussian noise per frame, so frames are not bit-identical


@pytest.fixture(scope="module")
def detector() -> BlazeFaceDetector:
    return BlazeFaceDetector()


@pytest.fixture(scope="module")
def mesher() -> FaceMeshLandmarker:
    return FaceMeshLandmarker()


@pytest.fixture(scope="module")
def mesh(detector: BlazeFaceDetector, mesher: FaceMeshLandmarker) -> FaceLandmarks:
    image = astronaut_bgr()
    return mesher.landmarks([(image, roi_from_detection(detector.detect([image])[0][0]))])[0]


def _noisy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(image + rng.normal(0.0, NOISE_SIGMA, image.shape), 0, 255).astype(np.uint8)


def _shift(image: np.ndarray, dx: float, dy: float = 0.0) -> np.ndarray:
    return cv2.warpAffine(image, np.float32([[1, 0, dx], [0, 1, dy]]), image.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)


def _jitter(track: np.ndarray) -> float:
    """RMS over points of each point's standard deviation (2-D) over frames."""
    return float(np.sqrt((track.std(axis=0) ** 2).sum(axis=-1).mean()))


# --- One-Euro ---------------------------------------------------------------------------------


def test_one_euro_smooths_noise_and_follows_a_ramp() -> None:
    rng = np.random.default_rng(0)
    f = OneEuroFilter(OneEuroConfig())
    t = np.arange(120) / FPS
    noisy = rng.normal(0, 1.0, (120, 50))
    out = np.array([f(x, ti) for x, ti in zip(noisy, t)])
    assert out[20:].std() < 0.5 * noisy[20:].std()

    f.reset()
    ramp = 3.0 * np.arange(60)[:, None] * np.ones((1, 4))  # 3 units per frame
    out = np.array([f(x, ti) for x, ti in zip(ramp, t)])
    assert np.all(np.abs(out[10:] - ramp[10:]) < 3.0)
    assert np.all(np.diff(out[:, 0]) >= 0)


def test_one_euro_shapes_first_sample_and_time() -> None:
    f = OneEuroFilter()
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = f(x, 0.0)
    np.testing.assert_array_equal(out, x)
    assert out.dtype == np.float32 and out is not x
    held = f(x + 10, 0.0)  # no time has passed: the estimate is held
    np.testing.assert_array_equal(held, x)
    moved = f(x + 10, 1 / FPS)
    assert np.all((moved > x) & (moved < x + 10))
    f.reset()
    np.testing.assert_array_equal(f(x + 5, 2.0), x + 5)
    assert f(np.float64(3.0) * np.ones(()), 0.0).shape == ()


# --- Tracker state (no models) -------------------------------------------------------------------


def _with_confidence(lm: FaceLandmarks, confidence: float, dx: float = 0.0) -> FaceLandmarks:
    points = lm.points.copy()
    points[:, 0] += dx
    return FaceLandmarks(points=points, confidence=confidence)


def test_plan_schedule_and_low_confidence(mesh: FaceLandmarks) -> None:
    tracker = FaceTracker(TrackerConfig(detect_every=4))
    detects = []
    for i in range(9):
        plan = tracker.plan()
        detects.append(plan.detect)
        if not plan.detect:
            assert len(plan.rois) == 1
        tracker.observe([mesh], i / FPS, detected=plan.detect)
    assert detects == [True, False, False, False, True, False, False, False, True]

    tracker.observe([_with_confidence(mesh, 0.2)], 9 / FPS, detected=False)
    assert tracker.faces == [] and tracker.plan().detect
    tracker.reset()
    assert tracker.faces == [] and tracker.plan().detect


def test_slots_follow_faces_when_a_detection_reorders_them(mesh: FaceLandmarks) -> None:
    tracker = FaceTracker(TrackerConfig(max_faces=2))
    a, b = mesh, _with_confidence(mesh, 0.9, dx=250.0)
    first = tracker.observe([a, b], 0.0, detected=True)
    assert len(first) == 2
    out = tracker.observe([_with_confidence(b, 0.9, dx=2.0), _with_confidence(a, 0.95, dx=2.0)], 1 / FPS, detected=True)
    # Same slot order as before: slot 0 is still face a; a head moving as a whole is followed
    # (most of a 2 px step at once, all of it within a few frames: the head filter smooths noise).
    assert out[0].confidence == pytest.approx(0.95) and out[1].confidence == pytest.approx(0.9)
    shift = out[0].xy[:, 0].mean() - a.xy[:, 0].mean()
    assert 1.2 < shift <= 2.3
    for i in range(2, 12):
        out = tracker.observe([_with_confidence(b, 0.9, dx=2.0), _with_confidence(a, 0.95, dx=2.0)], i / FPS, detected=False)
    assert out[0].xy[:, 0].mean() - a.xy[:, 0].mean() == pytest.approx(2.0, abs=0.1)
    # A third face beyond max_faces is dropped (the smallest).
    small = FaceLandmarks(points=(mesh.points * np.float32([0.3, 0.3, 1])), confidence=0.99)
    out = tracker.observe([a, b, small], 2 / FPS, detected=True)
    assert len(out) == 2


def test_rois_from_detections_largest_and_sticky(mesh: FaceLandmarks) -> None:
    def det(x: float, size: float) -> Detection:
        kps = np.array([[x + 0.3 * size, 40], [x + 0.7 * size, 40]] + [[x + size / 2, 50]] * 4, np.float32)
        return Detection(box=np.array([x, 20, x + size, 20 + size], np.float32), score=0.9, keypoints=kps)

    tracker = FaceTracker(TrackerConfig(max_faces=1))
    rois = tracker.rois_from_detections([det(0, 40), det(100, 80), det(300, 60)])
    assert len(rois) == 1 and rois[0].center_x == pytest.approx(140.0)
    # A detection that confirms the tracked face keeps the tracked ROI (no jolt in the crop).
    tracker.observe([mesh], 0.0, detected=True)
    tracked = tracker.plan().rois[0]
    box = np.array([mesh.xy[:, 0].min(), mesh.xy[:, 1].min() + 10, mesh.xy[:, 0].max(), mesh.xy[:, 1].max()], np.float32)
    confirm = Detection(box=box, score=0.9, keypoints=np.repeat(box[None, :2] + 20, 6, axis=0))
    assert tracker.rois_from_detections([confirm]) == [tracked]


def _pipeline(detect_every: int = 10) -> FramePipeline:
    """The one frame pipeline's tracking front on the real models, in process (no face stage needed)."""
    models = LocalModelClient({DETECTOR: DetectorEngine()}, in_thread=False)
    return FramePipeline(models, FramePreparer(), FrameSettings(deadline_s=None, detect_every=detect_every),
                         FrameControls(), offload=inline)


def _track(pipeline: FramePipeline, frame: np.ndarray, t: float) -> list[FaceLandmarks]:
    return asyncio.run(pipeline.analyze(frame, t)).faces


# --- Real frames through the real models ----------------------------------------------------------


def test_landmark_jitter_on_a_still_face(detector: BlazeFaceDetector, mesher: FaceMeshLandmarker) -> None:
    rng = np.random.default_rng(7)
    base = astronaut_bgr()
    tracker = FaceTracker()
    raw_track, smooth_track = [], []
    for i in range(60):
        frame = _noisy(base, rng)
        # track_stream's steps, unrolled to also keep the raw landmarks.
        plan = tracker.plan()
        rois = plan.rois
        if plan.detect:
            rois = tracker.rois_from_detections(detector.detect([frame])[0]) or rois
        raw = mesher.landmarks([(frame, roi) for roi in rois])
        out = tracker.observe(raw, i / FPS, detected=plan.detect)
        assert len(raw) == len(out) == 1
        raw_track.append(raw[0].xy)
        smooth_track.append(out[0].xy)
    raw_jitter = _jitter(np.array(raw_track[10:]))
    smooth_jitter = _jitter(np.array(smooth_track[10:]))
    message = f"jitter RMS over frames 10..60: raw {raw_jitter:.3f} px, smoothed {smooth_jitter:.3f} px (noise sigma {NOISE_SIGMA})"
    assert smooth_jitter < 0.5, message
    assert smooth_jitter < raw_jitter, message
    assert raw_jitter > 0.0, message  # the noise really reaches the mesh


def test_tracking_follows_motion_and_redetects(detector: BlazeFaceDetector, mesher: FaceMeshLandmarker,
                                               mesh: FaceLandmarks) -> None:
    rng = np.random.default_rng(3)
    base = astronaut_bgr()
    config = TrackerConfig(detect_every=10)
    pipeline = _pipeline(config.detect_every)
    tracker = pipeline.tracker
    detect_frames, errors = [], []
    for i in range(30):
        frame = _noisy(_shift(base, 3.0 * i), rng)
        if tracker.plan().detect:
            detect_frames.append(i)
        out = _track(pipeline, frame, i / FPS)
        assert len(out) == 1
        expected = mesh.xy + np.float32([3.0 * i, 0.0])
        errors.append(float(np.linalg.norm(out[0].xy - expected, axis=1).mean()))
    assert max(errors[3:]) < 4.0, f"mean point error per frame: {np.round(errors, 2).tolist()}"
    assert detect_frames[0] == 0
    assert max(np.diff(detect_frames + [30])) <= config.detect_every, detect_frames

    # A big jump (40 px in one frame) asks for a detection on the next frame, and tracking recovers.
    jumped = _shift(base, 90.0 + 40.0, 20.0)
    _track(pipeline, _noisy(jumped, rng), 30 / FPS)
    assert tracker.plan().detect
    for i in range(31, 40):
        out = _track(pipeline, _noisy(jumped, rng), i / FPS)
    expected = mesh.xy + np.float32([130.0, 20.0])
    assert np.linalg.norm(out[0].xy - expected, axis=1).mean() < 3.0


def test_face_leaving_the_frame_is_dropped(detector: BlazeFaceDetector, mesher: FaceMeshLandmarker) -> None:
    pipeline = _pipeline()
    tracker = pipeline.tracker
    assert len(_track(pipeline, astronaut_bgr(), 0.0)) == 1
    grey = np.full((512, 512, 3), 128, np.uint8)
    assert _track(pipeline, grey, 1 / FPS) == []
    assert tracker.plan().detect and tracker.faces == []


def test_head_motion_is_followed_and_shape_noise_smoothed(mesh: FaceLandmarks) -> None:
    """The swapped face moves with the head without lag and does not shimmer (issue 9: steady)."""
    rng = np.random.default_rng(5)
    tracker = FaceTracker(TrackerConfig(max_faces=1))
    lag, jitter_out, jitter_in = [], [], []
    previous = None
    for i in range(40):
        dx = 3.0 * i  # 3 px per frame to the right
        noise = rng.normal(0.0, 0.5, mesh.points.shape).astype(np.float32)
        noise[:, 2] = 0.0
        raw = FaceLandmarks(points=mesh.points + np.float32([dx, 0.0, 0.0]) + noise, confidence=0.99)
        out = tracker.observe([raw], i / FPS, detected=i == 0)[0]
        truth = mesh.xy + np.float32([dx, 0.0])
        lag.append(float(np.mean(out.xy[:, 0] - truth[:, 0])))
        if previous is not None and i > 5:
            jitter_out.append(float(np.std((out.xy - previous[0]) - (truth - previous[1]))))
            jitter_in.append(float(np.std(noise[:, :2])))
        previous = (out.xy, truth)
    assert abs(np.mean(lag[5:])) < 0.3, f"the face lags the head by {np.mean(lag[5:]):.2f} px"
    assert np.mean(jitter_out) < 0.5 * np.mean(jitter_in), "shape noise is not smoothed"


def test_head_motion_noise_is_smoothed_without_lag(mesh: FaceLandmarks) -> None:
    """Whole-head jitter (the raw similarity's noise) is smoothed; a steady move and a sudden jump are followed."""
    rng = np.random.default_rng(11)

    def run(config: TrackerConfig) -> tuple[float, float, float]:
        tracker = FaceTracker(config)
        errors = []
        for i in range(60):
            truth = np.float32([2.0 * i, 0.0])  # a steady move of 2 px per frame...
            shake = rng.normal(0.0, 0.4, 2).astype(np.float32)  # ...with the whole head jittering
            raw = FaceLandmarks(points=mesh.points + np.float32([*(truth + shake), 0.0]), confidence=0.99)
            out = tracker.observe([raw], i / FPS, detected=i == 0)[0]
            errors.append((out.xy - (mesh.xy + truth)).mean(axis=0))
        err = np.array(errors[10:])
        jitter = float(np.linalg.norm(np.diff(err, axis=0), axis=1).mean())
        jump = FaceLandmarks(points=mesh.points + np.float32([2.0 * 60 + 40.0, 0.0, 0.0]), confidence=0.99)
        after = tracker.observe([jump], 60 / FPS, detected=False)[0]
        followed = float((after.xy - mesh.xy)[:, 0].mean())
        return jitter, float(np.abs(err.mean(axis=0)).max()), followed

    raw_jitter, _, _ = run(TrackerConfig(head_gain=1.0))
    jitter, lag, followed = run(TrackerConfig())
    assert jitter < 0.75 * raw_jitter, f"head jitter {jitter:.3f} px per frame vs {raw_jitter:.3f} unfiltered"
    assert lag < 0.3, f"the face lags the head by {lag:.2f} px"
    assert followed == pytest.approx(160.0, abs=1.0), "a sudden jump is followed at once"
