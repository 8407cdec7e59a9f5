"""Pure per-frame pre-processing: model inputs and face crops, no model interpreter.

The served ingress runs this (inference happens in the deployments); the local
pipeline runs the same. The face crop for each swapper is chosen here and only
here: the mesh swapper cuts the face at its own resolution, InSwapper takes the
ArcFace-aligned 128x128 crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from mirage.detect.blazeface import DetectorInput, input_size, letterbox
from mirage.geometry.align import align_face, with_mesh
from mirage.landmarks.facemesh import FaceRoi, MeshInput, mesh_input
from mirage.landmarks.topology import five_point_from_mesh
from mirage.pipeline.messages import Region
from mirage.swap.mesh import MeshSwapConfig, MeshSwapper
from mirage.types import FaceCrop, FaceLandmarks, Image, SwapperName

#: InSwapper's input: the ArcFace-aligned crop of this side.
INSWAPPER_CROP = 128


@dataclass
class ModelInputs:
    """A frame's first model inputs: the detector's when detecting, else the landmarker's."""

    detector: DetectorInput | None = None
    mesh: list[MeshInput] | None = None
    #: A fused frame's regions of the outgoing picture, one per tracked ROI (``mirage.pipeline.fused``).
    regions: list[Region] | None = None


def landmark_box(face: FaceLandmarks) -> npt.NDArray[np.float32]:
    """The face's landmark bounding box ``[x1, y1, x2, y2]`` (the one definition the pipeline uses)."""
    xy = face.xy
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    return np.array([lo[0], lo[1], hi[0], hi[1]], np.float32)


def roi_box(roi: FaceRoi) -> npt.NDArray[np.float32]:
    half = roi.size / 2.0
    return np.array([roi.center_x - half, roi.center_y - half, roi.center_x + half, roi.center_y + half], np.float32)


def _even_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = max_side / float(max(width, height))
    return max(2, int(round(width * scale)) // 2 * 2), max(2, int(round(height * scale)) // 2 * 2)


def even_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """``(width, height)`` scaled so the longest side is ``max_side``, both even (aspect kept)."""
    return _even_size(width, height, max_side)


def analysis_copy(picture: Image, max_side: int) -> tuple[Image, float]:
    """The picture downscaled for analysis (≤ ``max_side``) and the output/analysis scale factor."""
    height, width = picture.shape[:2]
    if max(width, height) <= max_side:
        return picture, 1.0
    new_w, new_h = _even_size(width, height, max_side)
    small = np.asarray(cv2.resize(picture, (new_w, new_h), interpolation=cv2.INTER_AREA), np.uint8)
    return small, width / float(new_w)


class FramePreparer:
    """Model inputs (letterbox, ROI warps) and face crops; holds no model."""

    def __init__(self, detector_model: str = "short", mesh: MeshSwapConfig | None = None) -> None:
        self._detector_size = input_size(detector_model)
        self._mesh = MeshSwapper(mesh or MeshSwapConfig())

    def detector_input(self, image: Image) -> DetectorInput:
        return letterbox(image, self._detector_size)

    def mesh_inputs(self, image: Image, rois: Sequence[FaceRoi]) -> list[MeshInput]:
        return [mesh_input(image, roi) for roi in rois]

    def model_inputs(self, image: Image, detect: bool, rois: Sequence[FaceRoi]) -> ModelInputs:
        """The first model inputs of a frame: the detector's, or the landmarker's for tracked regions."""
        if detect:
            return ModelInputs(detector=self.detector_input(image))
        return ModelInputs(mesh=self.mesh_inputs(image, rois))

    @staticmethod
    def crop_border(swapper: SwapperName) -> int:
        """The OpenCV border mode :meth:`crops` cuts with for ``swapper``."""
        return int(cv2.BORDER_CONSTANT if swapper == "inswapper" else cv2.BORDER_REPLICATE)

    def crops(self, image: Image, faces: Sequence[FaceLandmarks], swapper: SwapperName) -> list[FaceCrop]:
        """Face crops for the swapper, each carrying the live mesh (paste-back draws its mask from it)."""
        if swapper == "inswapper":
            return [with_mesh(align_face(image, five_point_from_mesh(face.xy), INSWAPPER_CROP), face) for face in faces]
        return [self._mesh.prepare(image, face) for face in faces]
