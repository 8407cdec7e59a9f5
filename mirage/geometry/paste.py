"""Paste a swapped face crop back into its frame: one paste-back for every swapper.

In the crop: the blend mask is drawn from the live mesh (``masks.blend_mask``:
face oval cut to where the swap is valid, soft edge inside it, the live mouth
when open), and the swapped face is relit like the live one
(``shading.transfer_shading``). Then face and mask are warped back with the
inverse of the crop's matrix and alpha-blended into the frame — only inside the
face's region (the crop's ``frame_box`` clipped to the frame, enlarged a little
to hold the feathered edge). Every pixel outside that region is left
bit-identical, and so is every pixel where the mask is 0. A crop cut at scale 1
on whole pixels (the mesh swapper's, below its cap) is pasted by plain slicing:
no resampling, no blur.

Crops without a mesh (``landmarks`` None or only keypoints) keep insightface's recipe: the
swapper's mask eroded by a tenth of its size and blurred by a twentieth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from mirage.geometry.masks import MaskConfig, blend_mask, face_extent
from mirage.geometry.shading import ShadingConfig, transfer_shading
from mirage.geometry.steady import FaceSteadier
from mirage.types import FaceCrop, Image, SwapOptions, SwappedFace

#: Points in a FaceMesh mesh (crops with fewer, e.g. 5 keypoints, have no mesh to draw a mask from).
MESH_POINTS = 468
#: How much the face box is enlarged (fraction of its longer side, per side) for the blend region.
REGION_MARGIN = 0.1


@dataclass(frozen=True)
class BlendConfig:
    """How paste-back blends a face: mask recipe and shading transfer."""

    mask: MaskConfig = field(default_factory=MaskConfig)
    shading: ShadingConfig = field(default_factory=ShadingConfig)


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
    """Erode then blur a crop mask in proportion to the masked area's size (crops without a mesh)."""
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
    return np.asarray(cv2.GaussianBlur(eroded, (2 * blur + 1, 2 * blur + 1), 0, borderType=cv2.BORDER_CONSTANT), np.float32)


def blended_face(
    crop: FaceCrop, swapped: SwappedFace, options: SwapOptions, config: BlendConfig
) -> tuple[Image, npt.NDArray[np.float32]]:
    """The relit face and its blend mask, in the crop."""
    if crop.landmarks is None or len(crop.landmarks) != MESH_POINTS:
        return swapped.image, feather_mask(swapped.mask)
    shape = (int(crop.image.shape[0]), int(crop.image.shape[1]))
    mask = blend_mask(crop.landmarks, shape, swapped.mask, options, config.mask, live=crop.image)
    face = transfer_shading(swapped.image, crop.image, mask, face_extent(crop.landmarks), config.shading)
    return face, mask


def paste_back(
    frame: Image,
    crop: FaceCrop,
    swapped: SwappedFace,
    options: SwapOptions | None = None,
    config: BlendConfig | None = None,
) -> Image:
    """A new frame with the swapped face blended in at the crop's place."""
    return paste_back_many(frame, [(crop, swapped)], options, config)


def paste_back_many(
    frame: Image,
    pairs: Sequence[tuple[FaceCrop, SwappedFace]],
    options: SwapOptions | None = None,
    config: BlendConfig | None = None,
    steady: FaceSteadier | None = None,
) -> Image:
    """Paste several faces into one new frame, in order (later faces on top).

    ``steady``: a stream's steadier (``mirage.geometry.steady``); face ``i`` of
    ``pairs`` is steadied against the same slot of the stream's last frame.
    """
    out = frame.copy()
    opts = options or SwapOptions()
    cfg = config or BlendConfig()
    for slot, (crop, swapped) in enumerate(pairs):
        _paste_into(out, crop, swapped, opts, cfg, steady, slot)
    return out


def _integer_offset(matrix: npt.NDArray[np.float64]) -> tuple[int, int] | None:
    """(x0, y0) when the frame → crop matrix is a pure whole-pixel translation (crop = frame[y0:, x0:])."""
    if np.allclose(matrix[:, :2], np.eye(2), atol=1e-6) and np.allclose(matrix[:, 2], np.round(matrix[:, 2]), atol=1e-6):
        return int(round(-matrix[0, 2])), int(round(-matrix[1, 2]))
    return None


def _paste_into(
    out: Image,
    crop: FaceCrop,
    swapped: SwappedFace,
    options: SwapOptions,
    config: BlendConfig,
    steady: FaceSteadier | None = None,
    slot: int = 0,
) -> None:
    x0, y0, x1, y1 = paste_region(out.shape, crop)
    if x0 >= x1 or y0 >= y1:
        return
    width, height = x1 - x0, y1 - y0
    face_crop, mask_crop = blended_face(crop, swapped, options, config)
    if steady is not None and crop.landmarks is not None and len(crop.landmarks) == MESH_POINTS:
        face_crop, mask_crop = steady(slot, face_crop, crop.landmarks, mask_crop)
    matrix = np.asarray(crop.matrix, dtype=np.float64)
    offset = _integer_offset(matrix)
    if offset is not None:
        # Region coordinates inside the crop; outside the crop the mask is 0.
        cx0, cy0 = x0 - offset[0], y0 - offset[1]
        face = np.zeros((height, width, 3), np.uint8)
        alpha2 = np.zeros((height, width), np.float32)
        ch, cw = mask_crop.shape[:2]
        sx0, sy0 = max(cx0, 0), max(cy0, 0)
        sx1, sy1 = min(cx0 + width, cw), min(cy0 + height, ch)
        if sx0 >= sx1 or sy0 >= sy1:
            return
        face[sy0 - cy0 : sy1 - cy0, sx0 - cx0 : sx1 - cx0] = face_crop[sy0:sy1, sx0:sx1]
        alpha2[sy0 - cy0 : sy1 - cy0, sx0 - cx0 : sx1 - cx0] = mask_crop[sy0:sy1, sx0:sx1]
    else:
        inverse = cv2.invertAffineTransform(matrix)
        inverse[:, 2] -= (x0, y0)  # map straight into the region, not the whole frame
        face = np.asarray(cv2.warpAffine(
            face_crop, inverse, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        ), np.uint8)
        alpha2 = np.asarray(cv2.warpAffine(
            mask_crop, inverse, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        ), np.float32)
    alpha = np.clip(alpha2, 0.0, 1.0).astype(np.float32)
    region = out[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = cv2.blendLinear(face, region, alpha, 1.0 - alpha)
