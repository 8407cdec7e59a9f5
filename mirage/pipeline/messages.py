"""What crosses the boundary into the model stages: small, picklable values only.

Never a whole frame: the detector gets a letterboxed model input, the
landmarker a 192x192 crop, the swapper a face crop plus a key naming the
session's identity. The identity itself (a 512-float latent, or the mesh
swapper's texture + mesh) travels only when the swapper may not have it yet;
swapper replicas keep it in memory for a short time (see
``mirage.pipeline.identity.IdentityCache``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from mirage.landmarks.facemesh import MeshInput
from mirage.tracking.tracker import TrackerConfig, TrackSlot
from mirage.types import FaceCrop, FaceLandmarks, Identity, Image, SwapOptions, SwappedFace, SwapperName

#: ``SwapResult.error`` when the replica does not hold the identity a key names: resend it.
UNKNOWN_IDENTITY = "unknown_identity"
#: ``SwapResult.error`` when the requested swapper is not loaded on this replica.
SWAPPER_UNAVAILABLE = "swapper_unavailable"
#: ``SwapResult.error`` of a tracked face whose landmarks came back below the tracker's confidence.
FACE_LOST = "face_lost"
#: ``SwapResult.error`` of a tracked face whose crop would reach past the region sent with it (it moved
#: far since the last frame): the caller cuts it from the whole picture and swaps it the usual way.
OUTSIDE_REGION = "outside_region"


@dataclass(frozen=True)
class SwapItem:
    """One face to swap: the live crop, which identity to put on it (key, and the data when needed), and how."""

    crop: FaceCrop
    identity_key: str
    identity: Identity | None = field(default=None, repr=False)
    swapper: SwapperName = "mesh"
    options: SwapOptions = field(default_factory=SwapOptions)


@dataclass(frozen=True)
class SwapResult:
    """A swapped face on its way back: the mask as uint8 (a quarter of float32's bytes), or an error code."""

    image: Image | None = None
    mask: npt.NDArray[np.uint8] | None = None
    error: str | None = None

    @classmethod
    def pack(cls, face: SwappedFace) -> SwapResult:
        mask = np.clip(np.rint(np.asarray(face.mask, np.float32) * 255.0), 0, 255).astype(np.uint8)
        return cls(image=face.image, mask=mask)

    def face(self) -> SwappedFace:
        if self.image is None or self.mask is None:
            raise ValueError(f"no swapped face ({self.error or 'empty result'})")
        return SwappedFace(image=self.image, mask=self.mask.astype(np.float32) * (1.0 / 255.0))


@dataclass(frozen=True)
class IdentityReply:
    """The answer to ``FaceSwapper.prepare_identity``: identity data, or why there is none.

    User errors (not an image, too large, no face, swapper unavailable) come
    back as ``code`` + ``message`` rather than as exceptions, so that no
    traceback (which could quote the input) travels or gets logged. The
    identity's repr is hidden: it is private data.
    """

    identity: Identity | None = field(default=None, repr=False)
    swapper: SwapperName = "mesh"
    note: str | None = None
    faces_found: int = 0
    code: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.identity is not None and self.code is None


@dataclass(frozen=True)
class Region:
    """A piece of the picture that goes out, around a tracked face, and where it sits in that picture."""

    image: Image
    #: (x, y) of the region's top-left pixel in the picture.
    origin: tuple[int, int]
    #: Picture pixels per analysed pixel (the analysis runs on a copy of at most ``max_side``).
    scale: float = 1.0
    #: (width, height) of the whole picture: a region edge there is the picture's own edge.
    picture_size: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class CropPlace:
    """Where a face crop sits in the picture, without its pixels (the caller cuts them from its own copy).

    ``border`` is the OpenCV border mode the crop was cut with (the swappers differ).
    """

    matrix: npt.NDArray[np.float32]
    size: tuple[int, int]
    frame_box: npt.NDArray[np.float32]
    landmarks: npt.NDArray[np.float32] | None
    depth: npt.NDArray[np.float32] | None
    border: int

    def cut(self, picture: Image) -> FaceCrop:
        import cv2

        image = cv2.warpAffine(picture, self.matrix, self.size, flags=cv2.INTER_LINEAR, borderMode=self.border, borderValue=0)
        return FaceCrop(
            image=np.asarray(image, np.uint8), matrix=self.matrix, frame_box=self.frame_box, landmarks=self.landmarks, depth=self.depth
        )


@dataclass(frozen=True)
class TrackSwapItem:
    """One tracked face of a frame, landmarks and swap in one call (``mirage.pipeline.fused``).

    The landmarker's input, the face's tracking state (smoothing happens where
    the landmarks are found; the state comes back in the result), the region of
    the outgoing picture its crop is cut from, and the identity as for a
    :class:`SwapItem`.
    """

    mesh: MeshInput
    slot: TrackSlot
    t: float
    tracker: TrackerConfig
    region: Region
    identity_key: str
    identity: Identity | None = field(default=None, repr=False)
    swapper: SwapperName = "mesh"
    options: SwapOptions = field(default_factory=SwapOptions)

    def swap_item(self, crop: FaceCrop) -> SwapItem:
        """The plain swap of this face once its crop is cut."""
        return SwapItem(crop=crop, identity_key=self.identity_key, identity=self.identity, swapper=self.swapper, options=self.options)


@dataclass(frozen=True)
class TrackSwapResult:
    """The face's raw landmarks and its tracking state after them; where its crop is in the picture, and its swap."""

    raw: FaceLandmarks
    slot: TrackSlot
    place: CropPlace | None
    swap: SwapResult
