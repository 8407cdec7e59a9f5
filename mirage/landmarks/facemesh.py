"""Embedded 468-point FaceMesh (MediaPipe ``face_landmark.tflite``) run by LiteRT.

The model sees a 192x192 RGB crop, rotated so the eyes are horizontal, of a
square region of interest (:class:`FaceRoi`) about 1.5x the face. The ROI
comes from a BlazeFace detection (:func:`roi_from_detection`) or, between
detections, from the previous frame's landmarks (:func:`roi_from_landmarks`),
as MediaPipe's face-mesh graph does. :meth:`FaceMeshLandmarker.prepare` makes
the crop (what crosses a Serve boundary: 110 kB, never the frame) and the
frame→crop matrix; :meth:`FaceMeshLandmarker.infer` maps the points back to
frame pixels with the inverse matrix.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from mirage.errors import InvalidImageError
from mirage.runtime.litert import LiteRTModel
from mirage.types import Affine, Detection, FaceLandmarks, Image
from mirage.weights.embedded import embedded_model_path

logger = logging.getLogger(__name__)

MESH_INPUT_SIZE = 192
NUM_POINTS = 468
#: ROI size relative to the face box (MediaPipe's RectTransformation scale).
ROI_SCALE = 1.5
#: Mesh indices of the outer eye corners used for the ROI rotation (image-left, image-right).
_ROT_LEFT, _ROT_RIGHT = 33, 263


@dataclass(frozen=True)
class FaceRoi:
    """A square crop region in frame pixels.

    ``rotation`` (radians) is the angle of the eye line in image coordinates
    (y down): positive when the image-right eye is lower. The crop is rotated
    by it so that the eyes come out horizontal.
    """

    center_x: float
    center_y: float
    size: float
    rotation: float


@dataclass(frozen=True)
class MeshInput:
    """One 192x192 uint8 RGB crop and its 2x3 frame→crop matrix."""

    tensor: npt.NDArray[np.uint8]
    matrix: Affine


def _wrap_angle(angle: float) -> float:
    return float(math.atan2(math.sin(angle), math.cos(angle)))


def roi_from_detection(det: Detection) -> FaceRoi:
    """MediaPipe's detection→ROI: box centre, eye-line rotation, longest side x1.5, square."""
    right_eye, left_eye = det.keypoints[0], det.keypoints[1]  # subject's right = image-left
    rotation = _wrap_angle(math.atan2(float(left_eye[1] - right_eye[1]), float(left_eye[0] - right_eye[0])))
    cx, cy = float(det.box[0] + det.box[2]) / 2, float(det.box[1] + det.box[3]) / 2
    size = max(det.width, det.height) * ROI_SCALE
    return FaceRoi(center_x=cx, center_y=cy, size=size, rotation=rotation)


def roi_from_landmarks(points_xy: npt.NDArray[np.floating]) -> FaceRoi:
    """ROI for the next frame from this frame's mesh (x, y in frame pixels).

    Rotation from the outer eye corners (33, 263); the extent is measured in the
    rotated frame, so a tilted head does not inflate the box; longest side x1.5.
    """
    pts = np.asarray(points_xy, dtype=np.float64)[:, :2]
    delta = pts[_ROT_RIGHT] - pts[_ROT_LEFT]
    rotation = _wrap_angle(math.atan2(float(delta[1]), float(delta[0])))
    c, s = math.cos(rotation), math.sin(rotation)
    u = pts @ np.array([c, s])  # along the eye line
    v = pts @ np.array([-s, c])  # along the face's vertical
    mu, mv = (u.min() + u.max()) / 2, (v.min() + v.max()) / 2
    size = max(u.max() - u.min(), v.max() - v.min()) * ROI_SCALE
    cx, cy = mu * c - mv * s, mu * s + mv * c
    return FaceRoi(center_x=float(cx), center_y=float(cy), size=float(size), rotation=rotation)


def roi_matrix(roi: FaceRoi, out_size: int = MESH_INPUT_SIZE) -> Affine:
    """2x3 frame→crop matrix: ROI centre to crop centre, eye line to the x axis, size to ``out_size``."""
    k = out_size / max(roi.size, 1e-6)
    c, s = math.cos(roi.rotation), math.sin(roi.rotation)
    a = np.array([[c, s], [-s, c]]) * k
    t = np.array([out_size / 2, out_size / 2]) - a @ np.array([roi.center_x, roi.center_y])
    return np.hstack([a, t[:, None]]).astype(np.float32)


def mesh_input(image_bgr: Image, roi: FaceRoi) -> MeshInput:
    """The ROI cut out of a BGR frame into FaceMesh's 192x192 RGB input; no model needed."""
    if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise InvalidImageError(f"Expected a uint8 BGR image of shape (H, W, 3), got {getattr(image_bgr, 'shape', None)}.")
    if not roi.size > 0:
        raise ValueError(f"ROI size must be positive, got {roi.size}")
    matrix = roi_matrix(roi)
    crop = cv2.warpAffine(image_bgr, matrix, (MESH_INPUT_SIZE, MESH_INPUT_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return MeshInput(tensor=np.asarray(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB), np.uint8), matrix=matrix)


class FaceMeshLandmarker:
    """FaceMesh via LiteRT; batch of (crop) in, batch of 468-point landmarks out."""

    def __init__(self, num_threads: int = 1) -> None:
        self._model = LiteRTModel(embedded_model_path("facemesh"), num_threads)
        shapes = self._model.output_shapes
        self._mesh_index = next(i for i, s in enumerate(shapes) if s[-1] == NUM_POINTS * 3)
        self._score_index = next(i for i, s in enumerate(shapes) if s[-1] == 1)

    def prepare(self, image_bgr: Image, roi: FaceRoi) -> MeshInput:
        """Crop the ROI out of a BGR frame into the model's 192x192 RGB input."""
        return mesh_input(image_bgr, roi)

    def infer(self, inputs: Sequence[MeshInput]) -> list[FaceLandmarks]:
        """Landmarks in frame pixels (z scaled like x, y), confidence = sigmoid(presence logit)."""
        if not inputs:
            return []
        for item in inputs:
            if item.tensor.shape != (MESH_INPUT_SIZE, MESH_INPUT_SIZE, 3):
                raise InvalidImageError(f"FaceMesh input must be (192, 192, 3), got {item.tensor.shape}.")
        batch = np.stack([item.tensor for item in inputs]).astype(np.float32) * (1.0 / 255.0)
        outputs = self._model.run(batch)
        meshes = outputs[self._mesh_index].reshape(len(inputs), NUM_POINTS, 3)
        logits = outputs[self._score_index].reshape(len(inputs))
        return [self._to_frame(meshes[i], float(logits[i]), inputs[i].matrix) for i in range(len(inputs))]

    def landmarks(self, items: Sequence[tuple[Image, FaceRoi]]) -> list[FaceLandmarks]:
        """prepare + infer in this process."""
        return self.infer([self.prepare(image, roi) for image, roi in items])

    @staticmethod
    def _to_frame(mesh: npt.NDArray[np.float32], logit: float, matrix: Affine) -> FaceLandmarks:
        inverse = cv2.invertAffineTransform(matrix.astype(np.float64))
        xy = mesh[:, :2].astype(np.float64) @ inverse[:, :2].T + inverse[:, 2]
        scale = math.sqrt(abs(np.linalg.det(inverse[:, :2])))
        points = np.empty((NUM_POINTS, 3), np.float32)
        points[:, :2] = xy
        points[:, 2] = mesh[:, 2] * scale
        confidence = 0.5 * (1.0 + math.tanh(0.5 * logit))
        return FaceLandmarks(points=points, confidence=float(confidence))
