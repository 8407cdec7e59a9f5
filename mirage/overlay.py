"""Marks drawn onto output frames: the "AI-modified" badge and the privacy blur.

Both are pure functions (a new frame comes back, the input is untouched), used
by the server's per-frame pipeline and by the desktop client.

The badge goes in the bottom-right corner: the top-left band belongs to the
frame-number stamp the clients use to measure glass-to-glass latency.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from mirage.types import Image

#: Default disclosure text for frames that carry a synthetic face.
BADGE_TEXT = "AI-modified"


def draw_badge(frame: Image, text: str = BADGE_TEXT) -> Image:
    """A copy of ``frame`` with a small, readable label in its bottom-right corner.

    The label scales with the frame (about 1/30 of the shorter side for the
    text height) so it stays legible at 320 px and unobtrusive at 1080p: white
    text on a translucent dark plate.
    """
    out = np.array(frame, dtype=np.uint8, copy=True)
    height, width = out.shape[:2]
    short = min(height, width)
    if short < 16 or not text:
        return out
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.3, short / 30.0 / 22.0)  # Hershey simplex glyphs are ~22 px tall at scale 1
    thickness = max(1, int(round(scale * 1.6)))
    (text_w, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
    pad = max(2, int(round(text_h * 0.4)))
    margin = max(2, int(round(short * 0.015)))
    x2 = width - margin
    y2 = height - margin
    x1 = max(0, x2 - text_w - 2 * pad)
    y1 = max(0, y2 - text_h - baseline - 2 * pad)
    plate = out[y1:y2, x1:x2].astype(np.float32)
    out[y1:y2, x1:x2] = (plate * 0.35).astype(np.uint8)
    origin = (x1 + pad, y2 - pad - baseline)
    cv2.putText(out, text, origin, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def _clip_box(box: npt.ArrayLike, width: int, height: int, grow: float) -> tuple[int, int, int, int] | None:
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64)[:4])
    if not all(np.isfinite([x1, y1, x2, y2])) or x2 <= x1 or y2 <= y1:
        return None
    dx, dy = (x2 - x1) * grow, (y2 - y1) * grow
    left = int(np.floor(max(0.0, x1 - dx)))
    top = int(np.floor(max(0.0, y1 - dy)))
    right = int(np.ceil(min(float(width), x2 + dx)))
    bottom = int(np.ceil(min(float(height), y2 + dy)))
    if right - left < 1 or bottom - top < 1:
        return None
    return left, top, right, bottom


def blur_regions(frame: Image, boxes: Sequence[npt.ArrayLike], grow: float = 0.15) -> Image:
    """A copy of ``frame`` with each box (x1, y1, x2, y2, frame pixels) made unrecognisable.

    Each box is enlarged by ``grow`` of its size on every side (the face may
    have moved since the box was measured), pixelated to about 8 cells across
    and then smoothed: identity is not recoverable from what is left, while
    the frame still reads as "a person is there". Boxes outside the frame or
    empty are ignored.
    """
    out = np.array(frame, dtype=np.uint8, copy=True)
    height, width = out.shape[:2]
    for box in boxes:
        clipped = _clip_box(box, width, height, grow)
        if clipped is None:
            continue
        left, top, right, bottom = clipped
        region = out[top:bottom, left:right]
        rh, rw = region.shape[:2]
        cells = 8
        small = cv2.resize(region, (max(1, min(cells, rw)), max(1, min(cells, rh))), interpolation=cv2.INTER_AREA)
        blocky = cv2.resize(small, (rw, rh), interpolation=cv2.INTER_NEAREST)
        kernel = max(3, (min(rw, rh) // 4) | 1)
        out[top:bottom, left:right] = cv2.GaussianBlur(blocky, (kernel, kernel), 0)
    return out


def blur_frame(frame: Image) -> Image:
    """The whole frame made unrecognisable (used when no face region is known)."""
    height, width = frame.shape[:2]
    return blur_regions(frame, [(0, 0, width, height)], grow=0.0)
