"""Typed values that pass between stages (and across Serve deployment boundaries).

Everything here is small and picklable: boxes, keypoints, landmarks, face crops
and identity data. Whole frames are never part of these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

#: uint8 BGR image, shape (H, W, 3).
Image = npt.NDArray[np.uint8]
#: float32 array of 2-D points, shape (K, 2), pixel coordinates (x, y).
Points = npt.NDArray[np.float32]
#: float32 2x3 affine matrix mapping frame coordinates to crop coordinates.
Affine = npt.NDArray[np.float32]

SwapperName = Literal["mesh", "inswapper"]


@dataclass(frozen=True)
class Detection:
    """One detected face in frame pixel coordinates.

    ``box`` is (x1, y1, x2, y2). ``keypoints`` depend on the detector: BlazeFace
    gives 6 (right eye, left eye, nose tip, mouth centre, right ear, left ear —
    "right"/"left" from the subject's view, so the right eye is on the image
    left); SCRFD gives 5 in ArcFace template order (image-left eye, image-right
    eye, nose, image-left mouth corner, image-right mouth corner).
    """

    box: npt.NDArray[np.float32]
    score: float
    keypoints: Points

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


@dataclass(frozen=True)
class FaceLandmarks:
    """468 FaceMesh points, shape (468, 3): x, y in frame pixels, z relative depth."""

    points: npt.NDArray[np.float32]
    confidence: float

    @property
    def xy(self) -> Points:
        return np.ascontiguousarray(self.points[:, :2], dtype=np.float32)


@dataclass(frozen=True)
class FaceCrop:
    """A face cut out of a frame for a swapper.

    ``image`` is the crop (BGR uint8); ``matrix`` maps frame → crop coordinates
    (paste-back inverts it); ``landmarks`` are the live 468-point mesh in crop
    coordinates (paste-back draws the blend mask from them; None only where no
    mesh exists, e.g. SCRFD-only crops); ``depth`` is FaceMesh's z per point in
    crop pixels (smaller is nearer); ``frame_box`` is the face box in the frame,
    which bounds the paste-back.
    """

    image: Image
    matrix: Affine
    frame_box: npt.NDArray[np.float32]
    landmarks: Points | None = None
    depth: npt.NDArray[np.float32] | None = None


@dataclass(frozen=True)
class SwappedFace:
    """A swapper's output for one crop: the new crop and its blend mask.

    ``mask`` is float32 in [0, 1], shape of the crop (H, W): where the swapper's
    pixels are valid. Paste-back cuts the blend mask (face oval, feather, live
    mouth) to it, relights the face and warps both back with the crop's matrix.
    """

    image: Image
    mask: npt.NDArray[np.float32]


@dataclass(frozen=True)
class MeshIdentity:
    """Reference identity for the mesh swapper: texture, its 468-point mesh and depth (z per point).

    ``valid`` (uint8, texture-sized, 255 = usable) marks the texture's own face
    pixels: background, hair or an ear that FaceMesh's outline takes in at the
    edge of the reference face are 0, so they are never pasted.
    """

    texture: Image
    landmarks: Points
    depth: npt.NDArray[np.float32] | None = None
    valid: npt.NDArray[np.uint8] | None = None
    #: Per tessellation triangle: whether the reference has texture for it (its own or its mirror image's).
    usable: npt.NDArray[np.bool_] | None = None
    #: Per tessellation triangle, the reference vertices (T, 3) its texture is sampled from.
    sources: npt.NDArray[np.int32] | None = None
    #: Per point, how far the shape transfer may move it (0 on the outline and lips, 1 in the inner face).
    shape_weights: npt.NDArray[np.float64] | None = None
    kind: Literal["mesh"] = "mesh"

    def __repr__(self) -> str:  # identity data never goes to logs
        return f"MeshIdentity(texture={self.texture.shape}, landmarks={self.landmarks.shape})"


@dataclass(frozen=True)
class LatentIdentity:
    """Reference identity for InSwapper: the 512-float source latent."""

    latent: npt.NDArray[np.float32]
    kind: Literal["inswapper"] = "inswapper"

    def __repr__(self) -> str:  # identity data never goes to logs
        return f"LatentIdentity(latent={self.latent.shape})"


Identity = MeshIdentity | LatentIdentity


@dataclass(frozen=True)
class SwapOptions:
    """Per-session swap options.

    ``mouth_mask`` keeps the live lips as well as the open mouth's interior (which
    always comes from the live frame); ``coverage`` scales how much of the face
    region (1.0 = the whole face oval) is replaced.
    """

    mouth_mask: bool = False
    coverage: float = 1.0


@dataclass
class StageTimings:
    """Milliseconds spent per stage for one frame (filled by pipelines)."""

    ms: dict[str, float] = field(default_factory=dict)
