"""A face restorer served from an ONNX export (GFPGAN, CodeFormer, GPEN-BFR), batched over faces.

For each crop: a similarity transform from its five points to the model's template
(:mod:`mirage.enhance.templates`) cuts the aligned face at the model's size; all
faces go through the model in one call (CodeFormer: one call per distinct fidelity,
since its ``weight`` input is one value per call); the outputs are denormalised and
warped back into their crops through a feathered box mask of the template square.
Where that mask is 0 (outside the warped square) the crop keeps its input pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from mirage.enhance.base import EnhanceItem
from mirage.enhance.templates import template_points
from mirage.errors import InvalidImageError, ModelUnavailableError
from mirage.geometry.align import estimate_similarity
from mirage.runtime.onnx import ModelInfo
from mirage.types import Image
from mirage.weights.manifest import ModelIO

logger = logging.getLogger(__name__)

#: Name of CodeFormer's fidelity input in the public export.
WEIGHT_INPUT = "weight"
#: Width of the feathered edge of the paste-back box, as a fraction of the model's crop (FaceFusion: 0.3).
BOX_BLUR = 0.3


@dataclass(frozen=True)
class EnhancerInfo:
    """What ``/debug/models`` shows for one loaded enhancer."""

    name: str
    title: str
    licence: str
    commercial_use: bool
    runtime: str
    runtime_reason: str
    path: str
    standin: bool
    batched: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "licence": self.licence,
            "commercial_use": self.commercial_use,
            "runtime": self.runtime,
            "runtime_reason": self.runtime_reason,
            "path": self.path,
            "standin": self.standin,
            "batched": self.batched,
        }


def box_mask(size: int, blur: float = BOX_BLUR) -> npt.NDArray[np.float32]:
    """A (size, size) float32 mask: 1 inside, falling smoothly to exactly 0 at the border."""
    amount = max(int(size * 0.5 * blur), 2)
    area = max(amount // 2, 1)
    mask = np.ones((size, size), np.float32)
    mask[:area, :] = 0.0
    mask[-area:, :] = 0.0
    mask[:, :area] = 0.0
    mask[:, -area:] = 0.0
    blurred = np.asarray(cv2.GaussianBlur(mask, (0, 0), amount * 0.25), np.float32)
    blurred[0, :] = blurred[-1, :] = 0.0
    blurred[:, 0] = blurred[:, -1] = 0.0
    return blurred


class OnnxFaceEnhancer:
    """One restorer model (ONNX Runtime session or TensorRT engine) with its manifest conventions."""

    def __init__(
        self,
        name: str,
        model: ModelInfo,
        io: ModelIO,
        *,
        title: str | None = None,
        licence: str = "",
        commercial_use: bool = False,
        runtime: str = "cpu",
        runtime_reason: str = "",
    ) -> None:
        if io.size is None or io.template is None:
            raise ModelUnavailableError(f"The manifest entry of {name} gives no input size or alignment template.")
        self.name = name
        self.model = model
        self.io = io
        self.size = int(io.size)
        self.template = template_points(io.template, self.size)
        names = model.input_names
        declared = io.inputs[0].name
        image_name = declared if declared in names else next((n for n in names if n != WEIGHT_INPUT), None)
        if image_name is None:
            raise ModelUnavailableError(f"{name} has no image input (inputs: {', '.join(names)}).")
        self._image = model.input(image_name)
        self._weight = model.input(WEIGHT_INPUT) if WEIGHT_INPUT in names else None
        extra = [n for n in names if n not in (image_name, WEIGHT_INPUT)]
        if extra:
            raise ModelUnavailableError(f"{name} has inputs Mirage does not know how to feed: {', '.join(extra)}.")
        wanted = io.outputs[0].name
        self._output = wanted if wanted in model.output_names else model.output_names[0]
        self._mask = box_mask(self.size)
        self._info = EnhancerInfo(
            name=name,
            title=title or name,
            licence=licence,
            commercial_use=commercial_use,
            runtime=runtime,
            runtime_reason=runtime_reason,
            path=str(model.path),
            standin=model.is_standin,
            batched=model.dynamic_batch,
        )

    @property
    def info(self) -> EnhancerInfo:
        return self._info

    @property
    def has_fidelity(self) -> bool:
        """True when the model takes CodeFormer's fidelity weight."""
        return self._weight is not None

    # ------------------------------------------------------------------ steps

    def align(self, item: EnhanceItem) -> tuple[Image, npt.NDArray[np.float32]]:
        """The face of ``item`` cut at the model's size on its template, and the crop→model matrix."""
        image = np.asarray(item.image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
            raise InvalidImageError(f"An enhancer needs uint8 colour crops, got {image.dtype} {image.shape}.")
        points = np.asarray(item.five_points, np.float32).reshape(-1, 2)
        if points.shape != (5, 2) or not np.all(np.isfinite(points)):
            raise ValueError(f"an enhancer needs 5 finite points, got shape {points.shape}")
        matrix = estimate_similarity(points, self.template)
        aligned = cv2.warpAffine(image, matrix, (self.size, self.size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return np.ascontiguousarray(aligned), matrix

    def to_tensor(self, faces: Sequence[Image]) -> npt.NDArray[Any]:
        """(N, 3, S, S) model input from aligned BGR faces: colour order and value range of the export."""
        if self.io.normalisation == "minus_one_to_one":
            scale, mean = 1.0 / 127.5, 127.5
        else:
            scale, mean = 1.0 / 255.0, 0.0
        # One C++ pass per face: (x - mean) * scale, BGR -> RGB, HWC -> NCHW float32.
        blob = cv2.dnn.blobFromImages(
            [np.asarray(f) for f in faces], scalefactor=scale, mean=(mean, mean, mean), swapRB=self.io.colour == "rgb", crop=False
        )
        return np.ascontiguousarray(blob, dtype=self._image.dtype)

    def from_tensor(self, out: npt.NDArray[Any]) -> list[Image]:
        """Model output (N, 3, S, S) back to uint8 BGR faces (clipped to the export's range, rounded)."""
        arr = np.asarray(out, np.float32)
        if self.io.normalisation == "minus_one_to_one":
            low, alpha, beta = -1.0, 127.5, 127.5
        else:
            low, alpha, beta = 0.0, 255.0, 0.0
        order = (2, 1, 0) if self.io.colour == "rgb" else (0, 1, 2)
        faces: list[Image] = []
        for chw in arr:
            hwc = cv2.merge([np.ascontiguousarray(chw[c]) for c in order])
            np.maximum(hwc, low, out=hwc)  # the upper end saturates in the conversion below
            faces.append(np.asarray(cv2.convertScaleAbs(hwc, alpha=alpha, beta=beta), np.uint8))
        return faces

    def run(self, tensor: npt.NDArray[Any], fidelity: float) -> npt.NDArray[Any]:
        """One model call on a batch (a loop of batch-1 calls when the export is batch 1)."""
        def feeds(x: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
            fed: dict[str, npt.NDArray[Any]] = {self._image.name: x}
            if self._weight is not None:
                fed[self._weight.name] = np.array([fidelity], dtype=self._weight.dtype)
            return fed

        if self.model.dynamic_batch or len(tensor) == 1:
            return self.model.run(feeds(tensor), [self._output])[0]
        return np.concatenate([self.model.run(feeds(tensor[i : i + 1]), [self._output])[0] for i in range(len(tensor))])

    def paste(self, item: EnhanceItem, face: Image, matrix: npt.NDArray[np.float32]) -> Image:
        """``face`` (model space) warped back into ``item``'s crop; outside the box the input stays."""
        image = np.asarray(item.image)
        h, w = image.shape[:2]
        inverse = cv2.invertAffineTransform(np.asarray(matrix, np.float64))
        back = cv2.warpAffine(face, inverse, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mask = cv2.warpAffine(self._mask, inverse, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        mask = np.clip(mask, 0.0, 1.0)[..., None]
        mixed = image.astype(np.float32) * (1.0 - mask) + back.astype(np.float32) * mask
        out = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
        return np.where(mask > 0.0, out, image).astype(np.uint8)

    # ------------------------------------------------------------------ the stage

    def enhance(self, items: Sequence[EnhanceItem]) -> list[Image]:
        """Each crop enhanced, same size as its input (one model call; CodeFormer: one per fidelity)."""
        if not items:
            return []
        aligned = [self.align(item) for item in items]
        groups: dict[float, list[int]] = {}
        for index, item in enumerate(items):
            key = round(float(item.fidelity), 4) if self._weight is not None else 0.0
            groups.setdefault(key, []).append(index)
        faces: list[Image | None] = [None] * len(items)
        for fidelity, indices in groups.items():
            tensor = self.to_tensor([aligned[i][0] for i in indices])
            out = self.run(tensor, fidelity)
            if out.shape[0] != len(indices) or out.shape[1:] != tensor.shape[1:]:
                raise ModelUnavailableError(f"{self.name} returned {out.shape} for an input of {tensor.shape}.")
            for i, face in zip(indices, self.from_tensor(out), strict=True):
                faces[i] = face
        results: list[Image] = []
        for item, (_, matrix), maybe in zip(items, aligned, faces, strict=True):
            assert maybe is not None
            results.append(self.paste(item, maybe, matrix))
        return results
