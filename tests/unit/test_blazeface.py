"""BlazeFace (LiteRT) on real faces: the astronaut and insightface's t1.jpg (six people)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mirage.detect.blazeface import (
    _SPECS,
    BlazeFaceConfig,
    BlazeFaceDetector,
    DetectorInput,
    anchor_centres,
    largest_faces,
    weighted_nms,
)
from mirage.errors import InvalidImageError
from mirage.types import Detection
from standins.faces import astronaut_bgr, t1_bgr

# Face centres in t1.jpg (1280x886), read off the image by eye, left to right.
T1_FACE_CENTRES = np.array([(110, 332), (320, 220), (514, 348), (778, 410), (935, 138), (1174, 342)], np.float32)


@pytest.fixture(scope="module")
def short() -> BlazeFaceDetector:
    return BlazeFaceDetector(BlazeFaceConfig(model="short"))


@pytest.fixture(scope="module")
def full() -> BlazeFaceDetector:
    return BlazeFaceDetector(BlazeFaceConfig(model="full"))


def _centre(det: Detection) -> np.ndarray:
    return np.array([(det.box[0] + det.box[2]) / 2, (det.box[1] + det.box[3]) / 2])


def _inside(points: np.ndarray, box: np.ndarray, margin: float = 0.0) -> bool:
    w, h = box[2] - box[0], box[3] - box[1]
    lo = box[:2] - margin * np.array([w, h])
    hi = box[2:] + margin * np.array([w, h])
    return bool(np.all(points >= lo) and np.all(points <= hi))


def test_anchor_grids_match_the_models() -> None:
    assert len(anchor_centres(_SPECS["short"])) == 896  # 16x16x2 + 8x8x6
    assert len(anchor_centres(_SPECS["full"])) == 2304  # 48x48x1
    centres = anchor_centres(_SPECS["short"])
    np.testing.assert_allclose(centres[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(centres[-1], [7.5 / 8, 7.5 / 8])


@pytest.mark.parametrize("model", ["short", "full"])
def test_astronaut_face(model: str, short: BlazeFaceDetector, full: BlazeFaceDetector) -> None:
    detector = short if model == "short" else full
    dets = detector.detect([astronaut_bgr()])[0]
    assert len(dets) == 1, [d.box for d in dets]
    det = dets[0]
    # Checked by eye on a debug render: the face spans x ~178-272, y ~75-178 (forehead to chin).
    cx, cy = _centre(det)
    assert 200 < cx < 250 and 105 < cy < 150, det.box
    assert 70 < det.width < 130 and 70 < det.height < 130, det.box
    assert det.score > 0.8
    kp = det.keypoints
    assert kp.shape == (6, 2)
    assert _inside(kp[:4], det.box), (kp, det.box)  # eyes, nose, mouth inside; ears at the box edge
    assert _inside(kp[4:], det.box, margin=0.1), (kp, det.box)
    right_eye, left_eye, nose, mouth = kp[:4]
    assert right_eye[0] < nose[0] < left_eye[0]  # subject's right eye on the image-left
    assert max(right_eye[1], left_eye[1]) < nose[1] < mouth[1]


def test_t1_six_faces_need_full_range(short: BlazeFaceDetector, full: BlazeFaceDetector) -> None:
    image = t1_bgr()
    dets = full.detect([image])[0]
    assert len(dets) >= 5, f"full range found {len(dets)} faces"
    found = set()
    for det in dets:
        dist = np.linalg.norm(T1_FACE_CENTRES - _centre(det), axis=1)
        nearest = int(np.argmin(dist))
        assert dist[nearest] < 0.5 * det.width, (det.box, T1_FACE_CENTRES[nearest])
        found.add(nearest)
        assert _inside(det.keypoints[:4], det.box), (det.keypoints, det.box)
        assert _inside(det.keypoints[4:], det.box, margin=0.3), (det.keypoints, det.box)
    assert len(found) == len(dets), "two detections on one face"
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
    # The faces are ~100 px in a 1280 px frame, ~10 px after letterboxing to 128: too small for short range.
    assert len(short.detect([image])[0]) < len(dets)


def test_batch_equals_single_calls(short: BlazeFaceDetector) -> None:
    image = astronaut_bgr()
    inputs = [short.prepare(image), short.prepare(cv2.flip(image, 1))]
    singles = [short.infer([inp])[0] for inp in inputs]
    batched = short.infer(inputs * 3)
    assert len(batched) == 6
    for i, dets in enumerate(batched):
        ref = singles[i % 2]
        assert len(dets) == len(ref) == 1
        np.testing.assert_array_equal(dets[0].box, ref[0].box)
        np.testing.assert_array_equal(dets[0].keypoints, ref[0].keypoints)
    # The mirrored frame's face is mirrored too.
    assert abs(_centre(singles[1][0])[0] - (512 - _centre(singles[0][0])[0])) < 4


def test_letterbox_maps_back_to_frame_pixels(full: BlazeFaceDetector) -> None:
    # Full range: the face is ~20 px after the 900 px frame is letterboxed, too small for short range.
    image = astronaut_bgr()
    canvas = np.full((612, 900, 3), 90, np.uint8)  # wide frame: bars top and bottom
    canvas[50:562, 300:812] = image
    inp = full.prepare(canvas)
    assert isinstance(inp, DetectorInput)
    assert inp.tensor.shape == (192, 192, 3) and inp.tensor.dtype == np.uint8
    assert inp.pad_x == 0 and inp.pad_y > 0
    assert not inp.tensor[: int(inp.pad_y) - 1].any()  # the bar is black
    ref = full.detect([image])[0][0]
    dets = full.infer([inp])[0]
    assert len(dets) == 1
    # 900 px squeezed to 192 is ~4.7 px per input pixel: allow two input pixels.
    np.testing.assert_allclose(dets[0].box, ref.box + [300, 50, 300, 50], atol=10)


def test_no_face_in_grey_and_bad_input(short: BlazeFaceDetector) -> None:
    assert short.detect([np.full((240, 320, 3), 128, np.uint8)]) == [[]]
    assert short.infer([]) == []
    with pytest.raises(InvalidImageError):
        short.prepare(np.zeros((10, 10), np.uint8))
    with pytest.raises(InvalidImageError):
        short.prepare(np.zeros((10, 10, 3), np.float32))


def test_weighted_nms_averages_by_score() -> None:
    boxes = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.3, 0.8], np.float32)
    kps = np.zeros((3, 6, 2), np.float32)
    kps[1] += 4.0
    merged = weighted_nms(boxes, scores, kps, iou_threshold=0.3)
    assert len(merged) == 2
    box, score, points = merged[0]
    assert score == pytest.approx(0.9)
    np.testing.assert_allclose(box, [0.5, 0, 10.5, 10], atol=1e-5)  # (0*0.9 + 2*0.3) / 1.2
    np.testing.assert_allclose(points, 1.0, atol=1e-5)
    np.testing.assert_allclose(merged[1][0], boxes[2])


def test_largest_faces() -> None:
    def det(size: float) -> Detection:
        return Detection(box=np.array([0, 0, size, size], np.float32), score=0.9, keypoints=np.zeros((6, 2), np.float32))

    dets = [det(10), det(30), det(20)]
    assert [d.width for d in largest_faces(dets, 2)] == [30, 20]
    assert largest_faces(dets, 0) == []
