"""Blend masks in a face crop, drawn from the live face's mesh: one recipe for every swapper.

The mask says where the swapped pixels replace the live ones. It starts from the
live face oval (scaled by ``coverage``), is cut to where the swapper's output is
valid, and rises from 0 just inside that region's boundary to 1 about the
feather width further in. So it is 0 wherever the swap is not valid, and it has
no step anywhere: its gradient stays below about 2/feather per pixel, at any
coverage and in any pose, and it moves smoothly with the face.

The live mouth's interior (teeth, tongue, the dark cavity) is cut out as soon
as the live mouth opens, so it always comes from the live frame and the
reference's lips are never stretched across it. ``mouth_mask`` is the stronger
option: it keeps the live lips too.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from mirage.landmarks.topology import (
    BROWS,
    FACE_OVAL,
    LEFT_EYE,
    LIPS_INNER,
    LIPS_OUTER,
    RIGHT_EYE,
)
from mirage.types import Image, Points, SwapOptions

#: Sub-pixel precision of polygon filling (cv2's ``shift``): 1/16 px.
_SHIFT = 4

FloatMask = npt.NDArray[np.float32]


@dataclass(frozen=True)
class MaskConfig:
    """``feather``: width of the soft edge, as a fraction of the face's size.
    ``forehead``: how much of the forehead above the brows the mask covers (its
    top is often hair in the reference, and the live forehead is lit right).
    ``mouth_open``: inner-lip opening (polygon area ÷ mouth width²) where the live
    mouth starts to show through, and where it shows fully.
    """

    feather: float = 0.07
    mouth_open: tuple[float, float] = (0.01, 0.035)
    forehead: float = 0.8


def face_extent(points_xy: Points) -> float:
    """The face oval's larger side, in the points' pixels."""
    oval = np.asarray(points_xy, dtype=np.float32)[list(FACE_OVAL)]
    return float(max(np.ptp(oval, axis=0).max(), 1.0))


def fill_polygon(shape: tuple[int, int], polygon: Points) -> FloatMask:
    """Anti-aliased filled polygon (float32 in [0, 1]) at sub-pixel precision."""
    canvas = np.zeros(shape, dtype=np.uint8)
    pts = np.round(np.asarray(polygon, dtype=np.float64) * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(canvas, [pts], 255, lineType=cv2.LINE_AA, shift=_SHIFT)
    return canvas.astype(np.float32) * (1.0 / 255.0)


def _scaled_about_centroid(polygon: Points, factor: float) -> Points:
    centre = polygon.mean(axis=0)
    scaled: Points = (centre + (polygon - centre) * factor).astype(np.float32)
    return scaled


def face_outline(points_xy: Points, forehead: float, coverage: float) -> Points:
    """The face oval with its part above the brows pulled down to ``forehead`` of its height, scaled by ``coverage``."""
    xy = np.asarray(points_xy, dtype=np.float64)
    oval = xy[list(FACE_OVAL)]
    eye_line = xy[263] - xy[33]
    up = np.array([eye_line[1], -eye_line[0]]) / max(float(np.linalg.norm(eye_line)), 1e-6)
    brow = xy[list(BROWS)].mean(axis=0)
    height = (oval - brow) @ up
    pulled = oval - np.maximum(height, 0.0)[:, None] * (1.0 - forehead) * up[None, :]
    return _scaled_about_centroid(pulled.astype(np.float32), coverage)


def polygon_area(polygon: Points) -> float:
    x, y = polygon[:, 0].astype(np.float64), polygon[:, 1].astype(np.float64)
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def mouth_openness(points_xy: Points) -> float:
    """Inner-lip opening area ÷ mouth width² (0 for closed lips, ~0.1-0.3 for a wide-open mouth)."""
    xy = np.asarray(points_xy, dtype=np.float32)
    width = float(np.ptp(xy[list(LIPS_OUTER)][:, 0]))
    if width < 1.0:
        return 0.0
    return polygon_area(xy[list(LIPS_INNER)]) / (width * width)


def _smoothstep(x: float, lo: float, hi: float) -> float:
    t = min(max((x - lo) / max(hi - lo, 1e-9), 0.0), 1.0)
    return t * t * (3.0 - 2.0 * t)


def _blur(mask: FloatMask, sigma: float) -> FloatMask:
    """Gaussian blur; a wide one runs on a reduced copy (the result is smooth at that scale anyway)."""
    factor = int(sigma // 2.0)
    if factor < 2:
        return np.asarray(cv2.GaussianBlur(mask, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT), np.float32)
    height, width = mask.shape[:2]
    small = cv2.resize(mask, (max(1, width // factor), max(1, height // factor)), interpolation=cv2.INTER_AREA)
    small = cv2.copyMakeBorder(small, 4, 4, 4, 4, cv2.BORDER_CONSTANT, value=0.0)
    blurred = cv2.GaussianBlur(small, (0, 0), sigma / factor, borderType=cv2.BORDER_CONSTANT)[4:-4, 4:-4]
    return np.asarray(cv2.resize(blurred, (width, height), interpolation=cv2.INTER_LINEAR), np.float32)


def soften_inside(hard: FloatMask, width: float) -> FloatMask:
    """A soft edge about ``width`` pixels wide that stays inside ``hard``'s support.

    The (anti-aliased) region is blurred and its level sets from 0.55 to 0.97
    become the ramp, along a smoothstep: inside the region only (a blurred
    region is below 0.5 outside it), continuous in the region's sub-pixel
    position (no pixel steps frame to frame), no kink at either end of the ramp.
    """
    if width < 1.0:
        return hard
    sigma = width / 1.6
    blurred = _blur(hard, sigma)
    t = np.clip((blurred - 0.55) * (1.0 / 0.42), 0.0, 1.0)
    ramp: FloatMask = (t * t * (3.0 - 2.0 * t)).astype(np.float32)
    return ramp


def live_mouth_weight(points_xy: Points, config: MaskConfig) -> float:
    """How much of the live mouth's interior shows (0 closed … 1 open)."""
    return _smoothstep(mouth_openness(points_xy), *config.mouth_open)


def _soft_grown(region: FloatMask, sigma: float) -> FloatMask:
    """``region`` grown by a sigma and blurred by one: exactly 1 all over ``region``, soft outside it.

    (The blur alone leaves ~0.84 at the rim of the region; it is rescaled so the
    whole region is 1, and the swap shows nowhere inside it.)
    """
    grow = max(1, int(round(sigma)))
    grown = cv2.dilate(region, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    blurred = np.asarray(cv2.GaussianBlur(grown, (0, 0), sigma), dtype=np.float32)
    soft: FloatMask = np.minimum(blurred * np.float32(1.0 / 0.84), np.float32(1.0))
    return soft


def mouth_interior(shape: tuple[int, int], points_xy: Points, edge: float) -> FloatMask:
    """The live inner-lip polygon, fully 1 inside, its soft edge (``edge`` px) on the inner rim of the lips."""
    xy = np.asarray(points_xy, dtype=np.float32)
    return _soft_grown(fill_polygon(shape, xy[list(LIPS_INNER)]), max(edge / 2.5, 1.0))


def lips_region(shape: tuple[int, int], points_xy: Points, edge: float) -> FloatMask:
    """The live lips and mouth (outer-lip polygon), fully 1 inside, with a soft edge of ``edge`` px around it."""
    xy = np.asarray(points_xy, dtype=np.float32)
    return _soft_grown(fill_polygon(shape, xy[list(LIPS_OUTER)]), max(edge / 2.5, 1.0))


def _feature_polygons(xy: Points) -> list[Points]:
    """Convex outlines (grown 15 %) of the lips and of each eye with its brow."""
    groups = [
        list(LIPS_OUTER),
        list(RIGHT_EYE) + list(BROWS[:5]),
        list(LEFT_EYE) + list(BROWS[5:]),
    ]
    polygons = []
    for group in groups:
        hull = np.asarray(cv2.convexHull(np.asarray(xy, dtype=np.float32)[group]), np.float32).reshape(-1, 2)
        polygons.append(_scaled_about_centroid(hull, 1.15))
    return polygons


def skin_validity(texture: Image, xy: Points, inner: float = 0.72) -> npt.NDArray[np.uint8]:
    """Where a face crop shows the face's own skin (uint8, 255 = skin), from its mesh ``xy``.

    The inner face (the oval shrunk to ``inner`` about its centre, plus the lips,
    eyes and brows wherever they are) always counts. In the ring between it and the outline, a pixel
    counts when its YCrCb colour is within a few robust deviations of the inner
    face's skin: a flag, a white collar, hair over the forehead or a dark
    background at the edge of the face do not. Used on the reference texture
    (never paste its background) and on the live crop (never paste over the
    live person's hair).
    """
    full = (int(texture.shape[1]), int(texture.shape[0]))
    factor = max(1, min(full) // 96)  # ~100 px is plenty for a colour test; keeps it well under 1 ms
    # Cut to whole multiples of the factor first: OpenCV's area resize is several times faster at an integer scale.
    whole = texture[: full[1] // factor * factor, : full[0] // factor * factor]
    small = texture if factor == 1 else cv2.resize(whole, (full[0] // factor, full[1] // factor), interpolation=cv2.INTER_AREA)
    pts = np.asarray(xy, dtype=np.float32) * np.float32(small.shape[1] / full[0])
    shape = (int(small.shape[0]), int(small.shape[1]))
    oval = pts[list(FACE_OVAL)]
    centre = oval.mean(axis=0)
    core = fill_polygon(shape, (centre + (oval - centre) * inner).astype(np.float32)) > 0.5
    for feature in _feature_polygons(pts):  # lips, eyes and brows are face even where they reach the ring
        core |= fill_polygon(shape, feature) > 0.5
    outline = fill_polygon(shape, oval)
    ycc = cv2.cvtColor(small, cv2.COLOR_BGR2YCrCb).astype(np.float32)
    px = ycc[core]
    if px.shape[0] < 16:
        valid = outline
    else:
        median = np.median(px, axis=0).astype(np.float32)
        spread = np.maximum(np.median(np.abs(px - median), axis=0) * 1.4826, (12.0, 3.0, 3.0)).astype(np.float32)
        distance = (np.abs(ycc - median) * (1.0 / (3.0 * spread))).max(axis=2)  # float32 throughout
        skin = np.clip(2.0 - distance, 0.0, 1.0)
        skin = cv2.morphologyEx(skin, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        valid = np.where(core, 1.0, skin) * outline
    out = np.clip(np.rint(valid * 255.0), 0, 255).astype(np.uint8)
    return out if factor == 1 else np.asarray(cv2.resize(out, full, interpolation=cv2.INTER_LINEAR), np.uint8)


def _holes_grown(valid: FloatMask, outline: FloatMask, width: float) -> FloatMask:
    """``valid`` with its holes inside the outline grown by half the feather width.

    A soft edge drawn by blurring cannot reach 0 inside a small hole; grown
    first, every hole's own pixels end up below the ramp's start, so the blend
    mask is 0 wherever the swap is not valid. (The outline's own edge is left
    alone: it stays sub-pixel smooth.)
    """
    holes = ((valid < 0.5) & (outline > 0.5)).astype(np.uint8)
    if not holes.any():
        return valid
    grow = max(1, int(round(width * 0.5)))
    grown = cv2.dilate(holes, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    trimmed: FloatMask = np.minimum(valid, 1.0 - grown.astype(np.float32))
    return trimmed


def blend_mask(
    points_xy: Points,
    shape: tuple[int, int],
    valid: FloatMask | None,
    options: SwapOptions,
    config: MaskConfig | None = None,
    live: Image | None = None,
) -> FloatMask:
    """The blend mask of one face crop (float32 in [0, 1], ``shape``).

    ``points_xy``: the live 468-point mesh in crop coordinates; ``valid``: where
    the swapper's output may be used (None: everywhere); ``live``: the live
    crop, whose hair or other cover at the face's edge is kept.
    """
    cfg = config or MaskConfig()
    xy = np.asarray(points_xy, dtype=np.float32)
    size = face_extent(xy)
    width = max(1.0, cfg.feather * size)
    hard = fill_polygon(shape, face_outline(xy, cfg.forehead, options.coverage))
    if valid is not None:
        hard = np.minimum(hard, _holes_grown(np.asarray(valid, dtype=np.float32), hard, width))
    if live is not None:
        hard = np.minimum(hard, skin_validity(live, xy).astype(np.float32) * (1.0 / 255.0))
    mask = soften_inside(hard, width)
    edge = 0.6 * width  # the mouth's own soft edge, as gentle as the outline's
    if options.mouth_mask:
        mask *= 1.0 - lips_region(shape, xy, edge)
    else:
        weight = live_mouth_weight(xy, cfg)
        if weight > 0.0:
            mask *= 1.0 - weight * mouth_interior(shape, xy, edge)
    return mask.astype(np.float32, copy=False)
