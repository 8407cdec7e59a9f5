"""Face geometry: ArcFace template, Umeyama similarity, aligned and square crops, paste-back."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.transform import SimilarityTransform

from mirage.geometry.align import (
    ARCFACE_TEMPLATE,
    align_face,
    arcface_template,
    estimate_similarity,
    square_crop,
    transform_points,
)
from mirage.geometry.paste import paste_back, paste_back_many, paste_region
from mirage.types import FaceCrop, SwappedFace
from standins.faces import astronaut_bgr


def similarity(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array(
        [[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]], dtype=np.float64
    )


#: Crop → frame similarity that puts a 112 template face on the astronaut's face.
CROP_TO_FRAME = similarity(1.2, -2.0, 157.0, 41.0)


def astronaut_keypoints() -> np.ndarray:
    return transform_points(ARCFACE_TEMPLATE, CROP_TO_FRAME)


def test_template_sizes_follow_insightface_rule() -> None:
    np.testing.assert_allclose(arcface_template(112), ARCFACE_TEMPLATE)
    np.testing.assert_allclose(arcface_template(224), ARCFACE_TEMPLATE * 2, rtol=1e-6)
    # 128: ratio 1, shifted 8 px right; 512: ratio 4, shifted 32 px.
    np.testing.assert_allclose(arcface_template(128), ARCFACE_TEMPLATE + [8.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(arcface_template(512), ARCFACE_TEMPLATE * 4 + [32.0, 0.0], rtol=1e-6)


def test_umeyama_recovers_a_known_similarity() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 200, size=(5, 2))
    truth = similarity(0.73, -33.0, 41.5, -12.25)
    dst = transform_points(src, truth)
    np.testing.assert_allclose(estimate_similarity(src, dst), truth, atol=1e-3)


def test_umeyama_matches_scikit_image_on_noisy_points() -> None:
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 300, size=(5, 2))
    dst = transform_points(src, similarity(1.3, 20.0, 5.0, 9.0)) + rng.normal(0, 2.0, size=(5, 2))
    reference = SimilarityTransform.from_estimate(src, dst)
    np.testing.assert_allclose(estimate_similarity(src, dst), reference.params[:2], atol=1e-3)


def test_umeyama_never_reflects() -> None:
    src = ARCFACE_TEMPLATE.astype(np.float64)
    mirrored = src * [-1.0, 1.0]
    matrix = estimate_similarity(src, mirrored).astype(np.float64)
    assert np.linalg.det(matrix[:, :2]) > 0


@pytest.mark.parametrize("size", [112, 128])
def test_align_face_puts_keypoints_on_the_template(size: int) -> None:
    frame = astronaut_bgr()
    kps = astronaut_keypoints()
    crop = align_face(frame, kps, size)
    assert crop.image.shape == (size, size, 3) and crop.image.dtype == np.uint8
    assert crop.matrix.shape == (2, 3) and crop.matrix.dtype == np.float32
    assert crop.landmarks is not None
    np.testing.assert_allclose(crop.landmarks, arcface_template(size), atol=1e-3)
    # The matrix is the inverse of the known crop -> frame similarity (rescaled to the
    # crop size), and the crop is the frame warped by exactly that.
    to_size = np.diag([size / 112.0, size / 112.0, 1.0]) if size % 112 == 0 else np.array(
        [[size / 128.0, 0, 8 * size / 128.0], [0, size / 128.0, 0], [0, 0, 1]]
    )
    expected = (to_size @ np.vstack([cv2.invertAffineTransform(CROP_TO_FRAME), [0, 0, 1]]))[:2]
    np.testing.assert_allclose(crop.matrix, expected, atol=1e-3)
    reference = cv2.warpAffine(frame, expected, (size, size))
    assert np.abs(crop.image.astype(int) - reference.astype(int)).max() <= 1
    # The astronaut's (dark) eyes now sit on the template's eye points.
    gray = cv2.cvtColor(crop.image, cv2.COLOR_BGR2GRAY).astype(float)
    for cx, cy in arcface_template(size)[:2].round().astype(int):
        assert gray[cy - 1 : cy + 2, cx - 1 : cx + 2].mean() < 0.75 * np.median(gray)
    # frame_box is the crop square's extent in the frame.
    corners = transform_points([[0, 0], [size, 0], [size, size], [0, size]], cv2.invertAffineTransform(crop.matrix))
    np.testing.assert_allclose(crop.frame_box, [*corners.min(axis=0), *corners.max(axis=0)], atol=1e-2)


def test_square_crop_centres_the_box_with_margin() -> None:
    frame = astronaut_bgr()
    box = np.array([180.0, 60.0, 300.0, 220.0])  # 120 x 160
    crop = square_crop(frame, box, 128, margin=0.25)
    side = 160 * 1.5
    np.testing.assert_allclose(crop.frame_box, [240 - side / 2, 140 - side / 2, 240 + side / 2, 140 + side / 2])
    np.testing.assert_allclose(transform_points([[240.0, 140.0]], crop.matrix), [[64.0, 64.0]], atol=1e-4)
    x1, y1, x2, y2 = crop.frame_box.astype(int)
    expected = cv2.resize(frame[y1:y2, x1:x2], (128, 128), interpolation=cv2.INTER_AREA)
    assert np.abs(crop.image.astype(int) - expected.astype(int)).mean() < 6


def _inverted(crop: FaceCrop) -> SwappedFace:
    return SwappedFace(image=255 - crop.image, mask=np.ones(crop.image.shape[:2], dtype=np.float32))


def test_paste_back_changes_only_the_face_region() -> None:
    frame = astronaut_bgr()
    before = frame.copy()
    crop = align_face(frame, astronaut_keypoints(), 128)
    out = paste_back(frame, crop, _inverted(crop))
    np.testing.assert_array_equal(frame, before)  # input untouched
    x0, y0, x1, y1 = paste_region(frame.shape, crop)
    # Slightly enlarged: within 10 % + 2 px of the face box on each side.
    fx1, fy1, fx2, fy2 = crop.frame_box
    pad = 0.1 * max(fx2 - fx1, fy2 - fy1) + 3
    assert fx1 - pad <= x0 <= fx1 and fy1 - pad <= y0 <= fy1 and fx2 <= x1 <= fx2 + pad and fy2 <= y1 <= fy2 + pad
    outside = np.ones(frame.shape[:2], dtype=bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(out[outside], frame[outside])
    changed = np.any(out != frame, axis=2)
    assert changed[y0:y1, x0:x1].sum() > 0.3 * (x1 - x0) * (y1 - y0)
    # At the nose the swapped (inverted) face replaces the frame completely.
    nx, ny = astronaut_keypoints()[2].round().astype(int)
    np.testing.assert_allclose(out[ny, nx].astype(int), 255 - frame[ny, nx].astype(int), atol=12)


def test_paste_back_feathers_the_edge_of_a_crop_without_mesh() -> None:
    frame = astronaut_bgr()
    crop = align_face(frame, astronaut_keypoints(), 128)  # five keypoints only: insightface's erode + blur
    white = SwappedFace(image=np.full_like(crop.image, 255), mask=np.ones((128, 128), np.float32))
    soft = paste_back(frame, crop, white)
    # Near the crop's edge the feathered paste is not white; at the crop's centre it is.
    edge = transform_points([[64.0, 3.0]], cv2.invertAffineTransform(crop.matrix))[0].round().astype(int)
    centre = transform_points([[64.0, 64.0]], cv2.invertAffineTransform(crop.matrix))[0].round().astype(int)
    assert (soft[edge[1], edge[0]] < 250).any()
    assert (soft[centre[1], centre[0]] >= 250).all()


def test_paste_back_many_and_faces_outside_the_frame() -> None:
    frame = astronaut_bgr()
    left = align_face(frame, transform_points(ARCFACE_TEMPLATE, similarity(0.8, 0.0, 20.0, 300.0)), 128)
    right = align_face(frame, transform_points(ARCFACE_TEMPLATE, similarity(0.8, 0.0, 380.0, 300.0)), 128)
    gone = align_face(frame, transform_points(ARCFACE_TEMPLATE, similarity(1.0, 0.0, 900.0, 900.0)), 128)
    out = paste_back_many(frame, [(left, _inverted(left)), (right, _inverted(right)), (gone, _inverted(gone))])
    for crop in (left, right):
        x0, y0, x1, y1 = paste_region(frame.shape, crop)
        assert np.any(out[y0:y1, x0:x1] != frame[y0:y1, x0:x1])
    # Nothing changed between the two faces.
    np.testing.assert_array_equal(out[:, 200:340], frame[:, 200:340])
    np.testing.assert_array_equal(paste_back(frame, gone, _inverted(gone)), frame)
