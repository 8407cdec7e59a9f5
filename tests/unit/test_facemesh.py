"""FaceMesh (LiteRT) on the real astronaut face; ROI geometry and the mesh topology."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from mirage.detect.blazeface import BlazeFaceDetector
from mirage.landmarks import topology
from mirage.landmarks.facemesh import (
    FaceMeshLandmarker,
    FaceRoi,
    MeshInput,
    roi_from_detection,
    roi_from_landmarks,
    roi_matrix,
)
from mirage.types import Detection, FaceLandmarks
from standins.faces import astronaut_bgr


@pytest.fixture(scope="module")
def detector() -> BlazeFaceDetector:
    return BlazeFaceDetector()


@pytest.fixture(scope="module")
def mesher() -> FaceMeshLandmarker:
    return FaceMeshLandmarker()


@pytest.fixture(scope="module")
def astronaut_det(detector: BlazeFaceDetector) -> Detection:
    return detector.detect([astronaut_bgr()])[0][0]


@pytest.fixture(scope="module")
def astronaut_mesh(mesher: FaceMeshLandmarker, astronaut_det: Detection) -> FaceLandmarks:
    return mesher.landmarks([(astronaut_bgr(), roi_from_detection(astronaut_det))])[0]


def test_mesh_on_astronaut(astronaut_mesh: FaceLandmarks, astronaut_det: Detection) -> None:
    lm = astronaut_mesh
    assert lm.points.shape == (468, 3) and lm.points.dtype == np.float32
    assert lm.confidence > 0.5
    box = astronaut_det.box
    w, h = astronaut_det.width, astronaut_det.height
    lo, hi = box[:2] - 0.2 * np.array([w, h]), box[2:] + 0.2 * np.array([w, h])
    assert np.all(lm.xy >= lo) and np.all(lm.xy <= hi), (lm.xy.min(0), lm.xy.max(0), box)
    # The mesh covers the face, not a dot: at least 80 % of the box in each direction.
    assert np.all(np.ptp(lm.xy, axis=0) > 0.8 * np.array([w, h]))


def test_five_points_land_on_the_features(astronaut_mesh: FaceLandmarks, astronaut_det: Detection) -> None:
    five = topology.five_point_from_mesh(astronaut_mesh.xy)
    assert five.shape == (5, 2) and five.dtype == np.float32
    left_eye, right_eye, nose, mouth_l, mouth_r = five
    assert left_eye[0] < nose[0] < right_eye[0]
    assert mouth_l[0] < nose[0] < mouth_r[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_l[1], mouth_r[1])
    # BlazeFace's eye keypoints (0 = image-left) agree with the mesh eye centres.
    assert np.linalg.norm(left_eye - astronaut_det.keypoints[0]) < 6
    assert np.linalg.norm(right_eye - astronaut_det.keypoints[1]) < 6
    with pytest.raises(ValueError):
        topology.five_point_from_mesh(np.zeros((5, 2)))


def test_contours_nest_as_on_a_face(astronaut_mesh: FaceLandmarks) -> None:
    xy = astronaut_mesh.xy

    def polygon(indices: tuple[int, ...]) -> np.ndarray:
        return xy[list(indices)].reshape(-1, 1, 2)

    def inside(indices: tuple[int, ...], point: np.ndarray) -> bool:
        return cv2.pointPolygonTest(polygon(indices), (float(point[0]), float(point[1])), False) > 0

    for contour in (topology.FACE_OVAL, topology.LIPS_OUTER, topology.LIPS_INNER, topology.LEFT_EYE, topology.RIGHT_EYE):
        assert len(set(contour)) == len(contour)
        assert cv2.contourArea(polygon(contour)) > 20
    oval_area = cv2.contourArea(polygon(topology.FACE_OVAL))
    for part in (topology.LIPS_OUTER, topology.LEFT_EYE, topology.RIGHT_EYE):
        assert all(inside(topology.FACE_OVAL, xy[i]) for i in part)
        assert cv2.contourArea(polygon(part)) < 0.1 * oval_area
    assert inside(topology.FACE_OVAL, xy[topology.NOSE_TIP])
    assert all(cv2.pointPolygonTest(polygon(topology.LIPS_OUTER), (float(x), float(y)), True) > -1.0
               for x, y in xy[list(topology.LIPS_INNER)])
    # Subject's right eye is on the image-left.
    assert xy[list(topology.RIGHT_EYE)][:, 0].mean() < xy[topology.NOSE_TIP, 0] < xy[list(topology.LEFT_EYE)][:, 0].mean()


def test_grey_crop_has_low_confidence(mesher: FaceMeshLandmarker, astronaut_det: Detection) -> None:
    grey = np.full((512, 512, 3), 128, np.uint8)
    lm = mesher.landmarks([(grey, roi_from_detection(astronaut_det))])[0]
    assert lm.confidence < 0.1


def test_roi_from_landmarks_tracks_the_same_face(mesher: FaceMeshLandmarker, astronaut_mesh: FaceLandmarks,
                                                  astronaut_det: Detection) -> None:
    roi = roi_from_landmarks(astronaut_mesh.xy)
    det_roi = roi_from_detection(astronaut_det)
    assert abs(roi.size - det_roi.size) < 0.25 * det_roi.size
    assert math.hypot(roi.center_x - det_roi.center_x, roi.center_y - det_roi.center_y) < 0.1 * det_roi.size
    again = mesher.landmarks([(astronaut_bgr(), roi)])[0]
    assert again.confidence > 0.5
    assert np.abs(again.xy - astronaut_mesh.xy).mean() < 2.0


def test_rotated_face(mesher: FaceMeshLandmarker, detector: BlazeFaceDetector, astronaut_mesh: FaceLandmarks) -> None:
    image = astronaut_bgr()
    angle_deg = 25.0  # cv2 positive = counter-clockwise on screen: the image-right eye goes up
    rot = cv2.getRotationMatrix2D((225.0, 125.0), angle_deg, 1.0)
    rotated = cv2.warpAffine(image, rot, (512, 512), borderMode=cv2.BORDER_REPLICATE)
    det = detector.detect([rotated])[0][0]
    roi = roi_from_detection(det)
    upright = roi_from_detection(detector.detect([image])[0][0])
    # Eye line angle in image coordinates (y down): counter-clockwise turns it negative.
    assert roi.rotation - upright.rotation == pytest.approx(-math.radians(angle_deg), abs=math.radians(8))
    lm = mesher.landmarks([(rotated, roi)])[0]
    assert lm.confidence > 0.5
    expected = astronaut_mesh.xy @ rot[:, :2].T + rot[:, 2]
    assert np.abs(lm.xy - expected).mean() < 3.0
    tracked = roi_from_landmarks(lm.xy)
    assert tracked.rotation == pytest.approx(roi_from_landmarks(astronaut_mesh.xy).rotation - math.radians(angle_deg), abs=0.05)


def test_prepare_crop_and_matrix(mesher: FaceMeshLandmarker) -> None:
    roi = FaceRoi(center_x=225.0, center_y=125.0, size=150.0, rotation=0.3)
    inp = mesher.prepare(astronaut_bgr(), roi)
    assert isinstance(inp, MeshInput)
    assert inp.tensor.shape == (192, 192, 3) and inp.tensor.dtype == np.uint8
    assert inp.matrix.shape == (2, 3) and inp.matrix.dtype == np.float32
    np.testing.assert_allclose(inp.matrix[:, :2] @ [225.0, 125.0] + inp.matrix[:, 2], [96, 96], atol=1e-3)
    np.testing.assert_allclose(inp.matrix, roi_matrix(roi))
    # A point along the rotated eye line stays on the crop's horizontal line.
    p = np.array([225.0 + 50 * math.cos(0.3), 125.0 + 50 * math.sin(0.3)])
    np.testing.assert_allclose(inp.matrix[:, :2] @ p + inp.matrix[:, 2], [96 + 50 * 192 / 150, 96], atol=1e-3)


def test_batch_equals_single_calls(mesher: FaceMeshLandmarker, astronaut_det: Detection) -> None:
    image = astronaut_bgr()
    roi = roi_from_detection(astronaut_det)
    inputs = [mesher.prepare(image, roi), mesher.prepare(cv2.flip(image, 1), FaceRoi(512 - roi.center_x, roi.center_y, roi.size, -roi.rotation))]
    singles = [mesher.infer([inp])[0] for inp in inputs]
    batched = mesher.infer(inputs * 2)
    assert len(batched) == 4
    for i, lm in enumerate(batched):
        np.testing.assert_array_equal(lm.points, singles[i % 2].points)
        assert lm.confidence == singles[i % 2].confidence
    assert mesher.infer([]) == []
