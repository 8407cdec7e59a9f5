"""Paste a swapped face crop back into its frame.

The crop and its mask are warped back with the inverse of the crop's matrix and
alpha-blended into the frame — but only inside the face's region (the crop's
``frame_box`` clipped to the frame, enlarged a little to hold the feathered edge).
Every pixel outside that region is left bit-identical, and the warp itself runs
only over that region, which keeps paste-back cheap on large frames.

With ``erode_blur`` the mask is first eroded and then Gaussian-blurred by amounts
proportional to the face's size in the crop (insightface's InSwapper recipe: erode
by a tenth of the mask's size, blur by a twentieth), which hides the crop's square
edge. Swappers that bring their own feathered mask (the mesh swapper) pass
``erode_blur=False``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from mirage.types import FaceCrop, Image, SwappedFace

#: How much the face box is enlarged (fraction of its longer side, per side) for the blend region.
REGION_MARGIN = 0.1


def paste_region(frame_shape: tuple[int, ...], crop: FaceCrop) -> tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1) of the frame region paste-back may change (x1, y1 exclusive).

    Empty (x0 >= x1 or y0 >= y1) when the face lies outside the frame.
    """
    height, width = int(frame_shape[0]), int(frame_shape[1])
    x1, y1, x2, y2 = (float(v) for v in np.asarray(crop.frame_box, dtype=np.float64).reshape(4))
    pad = REGION_MARGIN * max(x2 - x1, y2 - y1) + 2.0
    x0 = int(np.clip(np.floor(x1 - pad), 0, width))
    y0 = int(np.clip(np.floor(y1 - pad), 0, height))
    xe = int(np.clip(np.ceil(x2 + pad), 0, width))
    ye = int(np.clip(np.ceil(y2 + pad), 0, height))
    return x0, y0, xe, ye


def feather_mask(mask: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Erode then blur a crop mask in proportion to the masked area's size."""
    m = np.asarray(mask, dtype=np.float32)
    rows, cols = np.nonzero(m > 0.5)
    if rows.size == 0:
        return np.zeros_like(m)
    extent = int(np.sqrt(float(rows.max() - rows.min()) * float(cols.max() - cols.min())))
    erode = max(extent // 10, 1)
    blur = max(extent // 20, 1)
    # Border value 0: the crop's own edge counts as outside, so the mask pulls in from it.
    eroded = cv2.erode(
        m, np.ones((erode, erode), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0.0
    )
    return cv2.GaussianBlur(eroded, (2 * blur + 1, 2 * blur + 1), 0, borderType=cv2.BORDER_CONSTANT)


def paste_back(frame: Image, crop: FaceCrop, swapped: SwappedFace, *, erode_blur: bool = True) -> Image:
    """A new frame with the swapped face blended in at the crop's place."""
    out = frame.copy()
    _paste_into(out, crop, swapped, erode_blur)
    return out


def paste_back_many(
    frame: Image, pairs: Sequence[tuple[FaceCrop, SwappedFace]], *, erode_blur: bool = True
) -> Image:
    """Paste several faces into one new frame, in order (later faces on top)."""
    out = frame.copy()
    for crop, swapped in pairs:
        _paste_into(out, crop, swapped, erode_blur)
    return out


def _paste_into(out: Image, crop: FaceCrop, swapped: SwappedFace, erode_blur: bool) -> None:
    x0, y0, x1, y1 = paste_region(out.shape, crop)
    if x0 >= x1 or y0 >= y1:
        return
    width, height = x1 - x0, y1 - y0
    inverse = cv2.invertAffineTransform(np.asarray(crop.matrix, dtype=np.float64))
    inverse[:, 2] -= (x0, y0)  # map straight into the region, not the whole frame
    mask = feather_mask(swapped.mask) if erode_blur else np.asarray(swapped.mask, dtype=np.float32)
    face = cv2.warpAffine(
        swapped.image, inverse, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    alpha = cv2.warpAffine(
        mask, inverse, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    alpha = np.clip(alpha, 0.0, 1.0)[:, :, None]
    region = out[y0:y1, x0:x1].astype(np.float32)
    blended = alpha * face.astype(np.float32) + (1.0 - alpha) * region
    out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
