"""The disclosure badge and the privacy blur (mirage/overlay.py) on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mirage.overlay import blur_frame, blur_regions, draw_badge
from standins.faces import astronaut_bgr

# The astronaut's face in skimage's 512x512 photo (x1, y1, x2, y2), measured by eye with margin.
FACE_BOX = (160, 50, 290, 200)


def _changed_box(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, int] | None:
    diff = np.any(a != b, axis=2)
    ys, xs = np.nonzero(diff)
    if ys.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("shape", [(240, 320), (384, 512), (1080, 1920)])
def test_badge_only_touches_bottom_right_corner(shape: tuple[int, int]) -> None:
    h, w = shape
    frame = cv2.resize(astronaut_bgr(), (w, h))
    before = frame.copy()
    out = draw_badge(frame)
    assert np.array_equal(frame, before), "draw_badge must not modify its input"
    box = _changed_box(frame, out)
    assert box is not None, "the badge must be visible"
    x1, y1, x2, y2 = box
    assert x1 >= w // 2 and y1 >= h * 3 // 4, f"badge at {box} leaves the bottom-right corner of {w}x{h}"
    # Small: well under 5 % of the frame, yet text-sized (readable).
    area = (x2 - x1) * (y2 - y1)
    assert area < 0.05 * w * h
    assert (y2 - y1) >= 10
    # The top-left band (frame-number stamp) is untouched.
    assert np.array_equal(out[:16, : w // 2], frame[:16, : w // 2])


def test_badge_has_light_text_on_a_dark_plate() -> None:
    frame = np.full((384, 512, 3), 128, np.uint8)
    out = draw_badge(frame)
    x1, y1, x2, y2 = _changed_box(frame, out)  # type: ignore[misc]
    plate = out[y1:y2, x1:x2].astype(int).sum(axis=2) / 3
    assert (plate < 60).mean() > 0.4, "the plate darkens the corner"
    assert (plate > 200).sum() > 30, "white text is drawn on it"


def _sharpness(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def test_blur_hides_the_face_and_leaves_the_rest() -> None:
    frame = astronaut_bgr()
    before = frame.copy()
    out = blur_regions(frame, [np.array(FACE_BOX, np.float32)], grow=0.1)
    assert np.array_equal(frame, before)
    x1, y1, x2, y2 = FACE_BOX
    face_in, face_out = frame[y1:y2, x1:x2], out[y1:y2, x1:x2]
    assert _sharpness(face_out) < _sharpness(face_in) / 20, "detail in the face region must be gone"
    # Far from the face nothing changed.
    assert np.array_equal(out[300:, :], frame[300:, :])
    assert np.array_equal(out[:, 350:], frame[:, 350:])
    # The change stays within the grown box.
    cx1, cy1, cx2, cy2 = _changed_box(frame, out)  # type: ignore[misc]
    gx, gy = 0.1 * (x2 - x1), 0.1 * (y2 - y1)
    assert cx1 >= x1 - gx - 1 and cy1 >= y1 - gy - 1 and cx2 <= x2 + gx + 1 and cy2 <= y2 + gy + 1


def test_blur_ignores_empty_and_outside_boxes() -> None:
    frame = astronaut_bgr()
    out = blur_regions(frame, [(10, 10, 10, 50), (600, 600, 700, 700), (np.nan, 0, 5, 5)])
    assert np.array_equal(out, frame)


def test_blur_clips_boxes_at_the_border() -> None:
    frame = astronaut_bgr()
    out = blur_regions(frame, [(-50, -50, 60, 60)], grow=0.0)
    assert _sharpness(out[:60, :60]) < _sharpness(frame[:60, :60]) / 10
    assert np.array_equal(out[80:, 80:], frame[80:, 80:])


def test_blur_frame_hides_everything() -> None:
    frame = astronaut_bgr()
    out = blur_frame(frame)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert _sharpness(out) < _sharpness(frame) / 20
