"""SCRFD face detector (insightface det_10g from buffalo_l), batched over frames.

Pre-processing: letterbox to ``input_size`` square (keep aspect, pad right and
bottom), BGR → RGB, ``(x - 127.5) / 128``. The model has one score, box and
keypoint head per stride (8, 16, 32; two anchors per cell), each ``[H*W*A, C]`` for
the batch-1 export or ``[N, H*W*A, C]`` after the dynamic-batch rewrite.
Decoding is distance-based: box sides and keypoints are offsets, in units of the
stride, from each anchor centre. Then score threshold, NMS, and division by the
letterbox scale back to frame pixels.

Exports with 5 strides (10/15 outputs, one anchor) and without keypoints (6/10
outputs) decode too; without keypoints a detection's ``keypoints`` is empty.

Heads are taken **by output name**, never by the runtime's position
(:func:`head_names`): TensorRT may list an engine's outputs in another order than
the ONNX file (InsightFace-REST #37 saw exactly this with SCRFD). Named heads
(``score_8`` … ``kps_32``, as some re-exports call them) are used by their names;
the shipped det_10g's numeric names (``448`` …) are taken in the ONNX file's
``graph.output`` order, read from the file itself, which is insightface's
scores/boxes/keypoints × strides layout; the order a runtime lists its outputs
in never matters, and the detector asks for its heads by name. Each head's
channel count (1, 4, 10) is checked where the model declares it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from mirage.detect.nms import nms
from mirage.errors import InvalidImageError, ModelUnavailableError
from mirage.runtime.onnx import ModelInfo, OrtModel, TensorInfo, onnx_io_names
from mirage.types import Detection, Image

logger = logging.getLogger(__name__)

_MEAN = 127.5
_STD = 128.0


@dataclass(frozen=True)
class ScrfdConfig:
    input_size: int = 640
    score_threshold: float = 0.5
    iou_threshold: float = 0.4


@dataclass(frozen=True)
class ScrfdInput:
    """One frame letterboxed for the detector: small enough to cross a deployment boundary.

    ``image`` is uint8 BGR (S, S, 3); ``scale`` = letterboxed size / frame size, so
    frame coordinates = detector coordinates / scale.
    """

    image: Image
    scale: float


@dataclass(frozen=True)
class _Layout:
    strides: tuple[int, ...]
    num_anchors: int
    use_kps: bool


def _layout(num_outputs: int) -> _Layout:
    layouts = {
        6: _Layout((8, 16, 32), 2, False),
        9: _Layout((8, 16, 32), 2, True),
        10: _Layout((8, 16, 32, 64, 128), 1, False),
        15: _Layout((8, 16, 32, 64, 128), 1, True),
    }
    if num_outputs not in layouts:
        raise ModelUnavailableError(
            f"This is not an SCRFD model: it has {num_outputs} outputs (expected 6, 9, 10 or 15)."
        )
    return layouts[num_outputs]


_HEAD_NAME = re.compile(r"^(score|bbox|kps)_(\d+)$")
_KINDS = ("score", "bbox", "kps")
_CHANNELS = {"score": 1, "bbox": 4, "kps": 10}


def head_names(outputs: Sequence[TensorInfo]) -> list[str]:
    """Output names in decoding order: scores per stride, then boxes, then keypoints.

    ``outputs`` are the model's outputs in its ONNX file's order (every Mirage model
    class lists them so). Named heads (``score_8``, ``bbox_16``, ``kps_32`` …) are
    placed by their names whatever the order; otherwise the ONNX order is the layout.
    Declared channel counts must match the head they are used as.
    """
    layout = _layout(len(outputs))
    names = [info.name for info in outputs]
    matches = [_HEAD_NAME.match(name) for name in names]
    if all(matches):
        by_head = {(m.group(1), int(m.group(2))): name for m, name in zip(matches, names) if m}
        wanted = [(kind, stride) for kind in _KINDS[: 3 if layout.use_kps else 2] for stride in layout.strides]
        missing = [f"{kind}_{stride}" for kind, stride in wanted if (kind, stride) not in by_head]
        if missing:
            raise ModelUnavailableError(f"This SCRFD model names its outputs {names} but has no {', '.join(missing)}.")
        ordered = [by_head[head] for head in wanted]
    else:
        ordered = names
    info_by_name = {info.name: info for info in outputs}
    fmc = len(layout.strides)
    for index, name in enumerate(ordered):
        kind = _KINDS[index // fmc]
        declared = info_by_name[name].shape[-1] if info_by_name[name].shape else None
        if isinstance(declared, int) and declared > 0 and declared != _CHANNELS[kind]:
            raise ModelUnavailableError(
                f"SCRFD output {name!r} is used as the {kind} head of stride {layout.strides[index % fmc]} "
                f"but has {declared} channels, not {_CHANNELS[kind]}: the outputs are not in SCRFD's layout."
            )
    return ordered


def _outputs_in_onnx_order(model: OrtModel | ModelInfo) -> list[TensorInfo]:
    """The model's outputs in its ONNX file's ``graph.output`` order, by name, whatever order the
    runtime lists them in (the file is the one definition of SCRFD's layout)."""
    listed = {info.name: info for info in model.outputs}
    try:
        _, names = onnx_io_names(model.path)
    except ModelUnavailableError:
        return list(model.outputs)
    if set(names) != set(listed):
        raise ModelUnavailableError(
            f"The runtime's outputs of {model.name} ({sorted(listed)}) are not its ONNX file's ({list(names)})."
        )
    return [listed[name] for name in names]


def letterbox(image: Image, size: int) -> ScrfdInput:
    """Resize keeping aspect so the longer side is ``size``; pad right/bottom with black."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImageError("The detector needs a colour image (H x W x 3, 8-bit).")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise InvalidImageError("The image is empty.")
    if height > width:
        new_h, new_w = size, max(int(size * width / height), 1)
    else:
        new_w, new_h = size, max(int(size * height / width), 1)
    scale = new_h / height
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return ScrfdInput(image=canvas, scale=float(scale))


def anchor_centers(feat_h: int, feat_w: int, stride: int, num_anchors: int) -> npt.NDArray[np.float32]:
    """(feat_h * feat_w * num_anchors, 2) anchor centres (x, y) in input pixels, row-major, anchors innermost."""
    ys, xs = np.mgrid[:feat_h, :feat_w]
    centers = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centers, num_anchors, axis=0)


def decode_level(
    scores: npt.NDArray[np.float32],
    bbox: npt.NDArray[np.float32],
    kps: npt.NDArray[np.float32] | None,
    centers: npt.NDArray[np.float32],
    stride: int,
    threshold: float,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Boxes (M, 4), scores (M,), keypoints (M, 5, 2) of one stride's anchors above ``threshold``."""
    scores = scores.reshape(-1)
    keep = np.nonzero(scores >= threshold)[0]
    c = centers[keep]
    d = bbox.reshape(-1, 4)[keep].astype(np.float32) * stride
    boxes = np.stack([c[:, 0] - d[:, 0], c[:, 1] - d[:, 1], c[:, 0] + d[:, 2], c[:, 1] + d[:, 3]], axis=-1)
    if kps is not None:
        k = kps.reshape(scores.shape[0], -1, 2)[keep].astype(np.float32) * stride
        points = k + c[:, None, :]
    else:
        points = np.zeros((keep.size, 0, 2), dtype=np.float32)
    return boxes.astype(np.float32), scores[keep].astype(np.float32), points.astype(np.float32)


def decode_outputs(
    outputs: Sequence[npt.NDArray[np.float32]],
    input_height: int,
    input_width: int,
    score_threshold: float,
    iou_threshold: float,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Decode one image's raw SCRFD outputs (each ``[K, C]``) to NMS-filtered detections.

    Returns boxes (M, 4), scores (M,), keypoints (M, P, 2), highest score first, in
    the detector input's pixel coordinates.
    """
    layout = _layout(len(outputs))
    fmc = len(layout.strides)
    all_boxes, all_scores, all_kps = [], [], []
    for level, stride in enumerate(layout.strides):
        feat_h, feat_w = -(-input_height // stride), -(-input_width // stride)
        centers = anchor_centers(feat_h, feat_w, stride, layout.num_anchors)
        scores = np.asarray(outputs[level])
        if scores.reshape(-1).shape[0] != centers.shape[0]:
            raise ModelUnavailableError(
                f"SCRFD stride {stride} gave {scores.reshape(-1).shape[0]} scores for "
                f"{centers.shape[0]} anchors: the model does not match input size {input_width}x{input_height}."
            )
        kps = np.asarray(outputs[level + 2 * fmc]) if layout.use_kps else None
        bbox = np.asarray(outputs[level + fmc])
        for kind, array in (("score", scores), ("bbox", bbox), ("kps", kps)):
            if array is not None and (array.ndim < 1 or array.shape[-1] != _CHANNELS[kind]):
                raise ModelUnavailableError(
                    f"SCRFD {kind} output of stride {stride} has shape {array.shape}, not [..., {_CHANNELS[kind]}]: "
                    "the model's outputs are not in SCRFD's layout."
                )
        boxes, kept_scores, points = decode_level(scores, bbox, kps, centers, stride, score_threshold)
        all_boxes.append(boxes)
        all_scores.append(kept_scores)
        all_kps.append(points)
    boxes = np.concatenate(all_boxes)
    scores = np.concatenate(all_scores)
    kps = np.concatenate(all_kps)
    if scores.size == 0:
        return boxes, scores, kps
    keep = nms(boxes, scores, iou_threshold)
    return boxes[keep], scores[keep], kps[keep]


class ScrfdDetector:
    """Batched SCRFD: ``prepare`` per frame (cheap, on the caller's side), ``infer`` per batch."""

    def __init__(self, model: OrtModel | ModelInfo, config: ScrfdConfig | None = None) -> None:
        self.model = model
        self.config = config or ScrfdConfig()
        self._layout = _layout(len(model.output_names))
        #: Output names in decoding order (scores, boxes, keypoints per stride): asked for by name.
        self.heads = head_names(_outputs_in_onnx_order(model))
        self._input = model.inputs[0]

    def prepare(self, image: Image) -> ScrfdInput:
        return letterbox(image, self.config.input_size)

    def infer(self, inputs: Sequence[ScrfdInput]) -> list[list[Detection]]:
        """Detections per input, in frame coordinates, highest score first."""
        if not inputs:
            return []
        blob = self.blob(inputs)
        per_image: list[list[npt.NDArray[np.float32]]]
        if self.model.dynamic_batch:
            per_image = self._split(self.model.run({self._input.name: blob}, self.heads), len(inputs))
        else:
            per_image = []
            for i in range(len(inputs)):
                per_image.extend(self._split(self.model.run({self._input.name: blob[i : i + 1]}, self.heads), 1))
        size = self.config.input_size
        results: list[list[Detection]] = []
        for item, outputs in zip(inputs, per_image):
            boxes, scores, kps = decode_outputs(
                outputs, size, size, self.config.score_threshold, self.config.iou_threshold
            )
            boxes = (boxes / item.scale).astype(np.float32)
            kps = (kps / item.scale).astype(np.float32)
            results.append(
                [
                    Detection(box=boxes[j], score=float(scores[j]), keypoints=kps[j].astype(np.float32))
                    for j in range(scores.size)
                ]
            )
        return results

    def detect(self, images: Sequence[Image]) -> list[list[Detection]]:
        return self.infer([self.prepare(image) for image in images])

    def blob(self, inputs: Sequence[ScrfdInput]) -> npt.NDArray[np.generic]:
        """The model's input tensor (N, 3, S, S) for prepared frames."""
        batch = np.stack([item.image for item in inputs]).astype(np.float32)
        batch = (batch[..., ::-1] - _MEAN) / _STD  # BGR -> RGB, normalise
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=self._input.dtype)

    @staticmethod
    def _split(outputs: list[np.ndarray], batch: int) -> list[list[np.ndarray]]:
        """Per-image ``[K, C]`` arrays from ``[N, K, C]`` (rewritten) or ``[N*K, C]`` (flattened) outputs."""
        shaped = []
        for out in outputs:
            if out.ndim == 3:
                shaped.append(out)
            elif out.ndim == 2:
                shaped.append(out.reshape(batch, -1, out.shape[-1]))
            else:
                raise ModelUnavailableError(f"SCRFD output has unexpected shape {out.shape}.")
        return [[out[i] for out in shaped] for i in range(batch)]
