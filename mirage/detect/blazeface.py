"""Embedded face detector: MediaPipe BlazeFace (short or full range) run by LiteRT.

The frame is letterboxed (aspect kept, centred, black bars) to the model's
square input by :meth:`BlazeFaceDetector.prepare`; the resulting
:class:`DetectorInput` (a few tens of kB) is what crosses a Serve boundary.
:meth:`BlazeFaceDetector.infer` decodes the SSD outputs against MediaPipe's
anchor grid, merges overlapping boxes with weighted NMS (MediaPipe's
``WEIGHTED`` overlap mode: boxes averaged by score, which is far steadier
from frame to frame than greedy NMS) and maps everything back to frame pixels.

Which range to use: short range (128 px input) is meant for faces that fill a
good part of the frame (a webcam, selfie); full range (192 px input) finds
small faces, e.g. in a group photo.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from mirage.detect.nms import box_iou
from mirage.errors import InvalidImageError
from mirage.runtime.litert import LiteRTModel
from mirage.types import Detection, Image
from mirage.weights.embedded import embedded_model_path

logger = logging.getLogger(__name__)

NUM_KEYPOINTS = 6


@dataclass(frozen=True)
class BlazeFaceConfig:
    model: Literal["short", "full"] = "short"
    score_threshold: float = 0.5
    iou_threshold: float = 0.3
    num_threads: int = 1


@dataclass(frozen=True)
class DetectorInput:
    """The letterboxed model input for one frame and how to map back.

    ``tensor`` is (S, S, 3) uint8 RGB; a frame point p lies at ``p * scale + (pad_x, pad_y)``
    in the tensor.
    """

    tensor: npt.NDArray[np.uint8]
    scale: float
    pad_x: float
    pad_y: float


@dataclass(frozen=True)
class _AnchorSpec:
    """MediaPipe ``SsdAnchorsCalculator`` options that matter with ``fixed_anchor_size``."""

    input_size: int
    strides: tuple[int, ...]
    interpolated_scale_aspect_ratio: float
    num_aspect_ratios: int = 1
    anchor_offset: float = 0.5


_SPECS: dict[str, _AnchorSpec] = {
    "short": _AnchorSpec(input_size=128, strides=(8, 16, 16, 16), interpolated_scale_aspect_ratio=1.0),
    "full": _AnchorSpec(input_size=192, strides=(4,), interpolated_scale_aspect_ratio=0.0),
}


def anchor_centres(spec: _AnchorSpec) -> npt.NDArray[np.float32]:
    """(A, 2) anchor centres in normalised [0, 1] input coordinates, in the model's output order.

    Consecutive layers with the same stride share one grid; each contributes
    ``num_aspect_ratios`` anchors per cell, plus one when an interpolated scale
    is used. With a fixed anchor size all anchors are 1x1, so only centres matter.
    """
    per_layer = spec.num_aspect_ratios + (1 if spec.interpolated_scale_aspect_ratio > 0 else 0)
    chunks: list[npt.NDArray[np.float32]] = []
    layer = 0
    while layer < len(spec.strides):
        stride = spec.strides[layer]
        repeats = 0
        while layer < len(spec.strides) and spec.strides[layer] == stride:
            repeats += per_layer
            layer += 1
        cells = int(np.ceil(spec.input_size / stride))
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        centres = np.stack([(xs + spec.anchor_offset) / cells, (ys + spec.anchor_offset) / cells], axis=-1)
        chunks.append(np.repeat(centres.reshape(-1, 2), repeats, axis=0))
    return np.concatenate(chunks).astype(np.float32)


def weighted_nms(
    boxes: npt.NDArray[np.float32], scores: npt.NDArray[np.float32], keypoints: npt.NDArray[np.float32], iou_threshold: float
) -> list[tuple[npt.NDArray[np.float32], float, npt.NDArray[np.float32]]]:
    """MediaPipe-style weighted NMS: each cluster (IoU > threshold with its best box)
    becomes the score-weighted mean of its boxes and keypoints, with the best score."""
    order = np.argsort(-scores, kind="stable")
    merged: list[tuple[npt.NDArray[np.float32], float, npt.NDArray[np.float32]]] = []
    while order.size:
        best = int(order[0])
        overlap = box_iou(boxes[best], boxes[order]) > iou_threshold
        overlap[0] = True
        members = order[overlap]
        weights = scores[members][:, None]
        total = float(weights.sum())
        box = (boxes[members] * weights).sum(axis=0) / total
        kps = (keypoints[members].reshape(len(members), -1) * weights).sum(axis=0) / total
        merged.append((box.astype(np.float32), float(scores[best]), kps.reshape(-1, 2).astype(np.float32)))
        order = order[~overlap]
    return merged


def largest_faces(dets: Sequence[Detection], n: int) -> list[Detection]:
    """The ``n`` largest detections by box area, largest first."""
    return sorted(dets, key=lambda d: d.area, reverse=True)[: max(0, n)]


def _check_image(image: Image) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        shape = getattr(image, "shape", None)
        raise InvalidImageError(f"Expected a BGR image of shape (H, W, 3), got {shape}.")
    if image.dtype != np.uint8:
        raise InvalidImageError(f"Expected a uint8 image, got dtype {image.dtype}.")


def input_size(model: str) -> int:
    """The square input side of a BlazeFace model (``short`` or ``full``), without loading it."""
    if model not in _SPECS:
        raise ValueError(f"BlazeFace model must be 'short' or 'full', got {model!r}")
    return _SPECS[model].input_size


def letterbox(image_bgr: Image, size: int) -> DetectorInput:
    """A BGR frame letterboxed into a square RGB detector input (aspect kept, centred); no model needed."""
    _check_image(image_bgr)
    h, w = image_bgr.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image_bgr, (new_w, new_h), interpolation=interp)
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    tensor = np.zeros((size, size, 3), np.uint8)
    tensor[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    # Use the exact per-axis scale of the resize so boxes map back without drift.
    sx, sy = new_w / w, new_h / h
    return DetectorInput(tensor=tensor, scale=float((sx + sy) / 2), pad_x=float(pad_x), pad_y=float(pad_y))


class BlazeFaceDetector:
    """BlazeFace via LiteRT; batch in, batch out."""

    def __init__(self, config: BlazeFaceConfig | None = None) -> None:
        self.config = config or BlazeFaceConfig()
        if self.config.model not in _SPECS:
            raise ValueError(f"BlazeFace model must be 'short' or 'full', got {self.config.model!r}")
        self._spec = _SPECS[self.config.model]
        self._model = LiteRTModel(embedded_model_path(f"blazeface_{self.config.model}"), self.config.num_threads)  # type: ignore[arg-type]
        self._anchors = anchor_centres(self._spec)
        shapes = self._model.output_shapes
        # Output order differs between the two graphs' names; pick by shape instead.
        self._reg_index = next(i for i, s in enumerate(shapes) if s[-1] == 4 + 2 * NUM_KEYPOINTS)
        self._cls_index = next(i for i, s in enumerate(shapes) if s[-1] == 1)
        if shapes[self._reg_index][1] != len(self._anchors):
            raise ValueError(f"anchor count {len(self._anchors)} does not match the model's {shapes[self._reg_index][1]}")

    @property
    def input_size(self) -> int:
        return self._spec.input_size

    def prepare(self, image_bgr: Image) -> DetectorInput:
        """Letterbox a BGR frame into the model's square RGB input (aspect kept, centred)."""
        return letterbox(image_bgr, self.input_size)

    def infer(self, inputs: Sequence[DetectorInput]) -> list[list[Detection]]:
        """Detections per input, in frame pixels, highest score first."""
        if not inputs:
            return []
        size = self.input_size
        for item in inputs:
            if item.tensor.shape != (size, size, 3):
                raise InvalidImageError(f"Detector input must be ({size}, {size}, 3), got {item.tensor.shape}.")
        batch = np.stack([item.tensor for item in inputs]).astype(np.float32) * (2.0 / 255.0) - 1.0
        outputs = self._model.run(batch)
        regressors, logits = outputs[self._reg_index], outputs[self._cls_index]
        return [self._decode(regressors[i], logits[i, :, 0], inputs[i]) for i in range(len(inputs))]

    def detect(self, images: Sequence[Image]) -> list[list[Detection]]:
        """prepare + infer for frames in this process."""
        return self.infer([self.prepare(image) for image in images])

    def _decode(self, raw: npt.NDArray[np.float32], logits: npt.NDArray[np.float32], item: DetectorInput) -> list[Detection]:
        scores = 0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float32)))  # sigmoid without exp overflow
        keep = scores >= self.config.score_threshold
        if not np.any(keep):
            return []
        raw, scores, anchors = raw[keep], scores[keep].astype(np.float32), self._anchors[keep]
        size = float(self.input_size)
        # Everything is in input pixels relative to the anchor centre; anchors are 1x1.
        centre = raw[:, 0:2] / size + anchors
        half = raw[:, 2:4] / size / 2.0
        boxes = np.concatenate([centre - half, centre + half], axis=1) * size
        kps = (raw[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) / size + anchors[:, None, :]) * size
        pad = np.array([item.pad_x, item.pad_y], np.float32)
        boxes = (boxes - np.tile(pad, 2)) / item.scale
        kps = (kps - pad) / item.scale
        dets = [
            Detection(box=box, score=score, keypoints=points)
            for box, score, points in weighted_nms(boxes.astype(np.float32), scores, kps.astype(np.float32), self.config.iou_threshold)
        ]
        return sorted(dets, key=lambda d: d.score, reverse=True)
