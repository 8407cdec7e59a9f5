"""The enhance stage's values and contract: what goes in, what comes out, how it is blended.

A face enhancer (GFPGAN, CodeFormer, GPEN-BFR) restores the swapped crop: it is
given the crop (``SwappedFace.image``, any size) and the face's five points in
crop coordinates, aligns the face to its own template, runs one batched model
call for all the faces it is given, and warps the result back into the crop.
The crop keeps its size; pixels outside the warped template region are the
input's. :func:`blend_enhanced` then mixes the result into the swap with the
swap's own mask, so enhancement never reaches past the swapped face.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np

from mirage.landmarks.topology import five_point_from_mesh
from mirage.types import FaceCrop, Image, Points, SwappedFace

#: CodeFormer's fidelity weight ``w`` when a session sets none (the original product's default).
DEFAULT_FIDELITY = 0.75
#: The per-session option value that turns enhancement off.
ENHANCER_NONE = "none"


@dataclass(frozen=True)
class EnhanceItem:
    """One face to enhance.

    ``image``: the swapped crop, uint8 BGR (H, W, 3), any size. ``five_points``: (5, 2)
    float32 in crop pixels, ArcFace order (image-left eye, image-right eye, nose,
    image-left mouth corner, image-right mouth corner). ``fidelity``: CodeFormer's
    ``w`` in [0, 1] (1 keeps the input's identity, 0 restores most); other models ignore it.
    """

    image: Image
    five_points: Points
    fidelity: float = DEFAULT_FIDELITY

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.fidelity) <= 1.0:
            raise ValueError(f"fidelity must be in [0, 1], got {self.fidelity}")

    def __repr__(self) -> str:  # the crop is a face: never in logs
        return f"EnhanceItem(image={getattr(self.image, 'shape', None)}, fidelity={self.fidelity:.2f})"


@runtime_checkable
class FaceEnhancer(Protocol):
    """What the pipeline's enhance stage calls (local model, or the deployment through its client)."""

    #: The manifest name: ``gfpgan_1.4``, ``codeformer``, ``gpen_bfr_256``, ``gpen_bfr_512``.
    name: str

    def enhance(self, items: Sequence[EnhanceItem]) -> list[Image]:
        """Every crop enhanced, each the SAME SIZE as its input, in one batched model call
        (CodeFormer: one call per distinct fidelity). Pixels outside the template's warped
        region are the input's."""
        ...


def blend_enhanced(swapped: SwappedFace, enhanced: Image, blend: float) -> SwappedFace:
    """``swapped`` with ``enhanced`` mixed in through the swap's mask, ``blend`` in [0, 1].

    ``image = swapped.image * (1 - blend * mask) + enhanced * (blend * mask)``; the mask
    is unchanged (paste-back still cuts the face with it). ``blend`` 0 returns the swap.
    """
    if not 0.0 <= float(blend) <= 1.0:
        raise ValueError(f"blend must be in [0, 1], got {blend}")
    base = np.asarray(swapped.image)
    other = np.asarray(enhanced)
    if other.shape != base.shape:
        raise ValueError(f"the enhanced crop is {other.shape}, the swapped crop {base.shape}")
    if blend == 0.0:
        return swapped
    weight = (np.clip(np.asarray(swapped.mask, np.float32), 0.0, 1.0) * np.float32(blend))[..., None]
    mixed = base.astype(np.float32) * (1.0 - weight) + other.astype(np.float32) * weight
    image = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return replace(swapped, image=image)


def five_points_in_crop(crop: FaceCrop) -> Points:
    """The face's five points in crop coordinates, from ``crop.landmarks`` (468 mesh points, or 5 as they are)."""
    if crop.landmarks is None:
        raise ValueError("the crop carries no landmarks, so the enhancer cannot align it")
    points = np.asarray(crop.landmarks, dtype=np.float32)[:, :2]
    if points.shape[0] == 5:
        return np.ascontiguousarray(points)
    return five_point_from_mesh(points)
