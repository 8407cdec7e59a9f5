"""ArcFace identity embeddings (insightface w600k_r50 from buffalo_l).

Input: 112x112 face crops aligned to the ArcFace template, RGB, ``(x - 127.5) / 127.5``,
NCHW. Output: ``[N, 512]``, which we L2-normalise (insightface's ``normed_embedding``).
Embeddings come from a reference photo and are private: never logged or stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from mirage.errors import InvalidImageError
from mirage.geometry.align import align_face
from mirage.runtime.onnx import ModelInfo
from mirage.types import Image

_MEAN = 127.5
_STD = 127.5
EMBEDDING_SIZE = 512


def l2_normalize(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Row-wise unit vectors (zero rows stay zero)."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    unit: npt.NDArray[np.float32] = (v / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


class ArcFaceEmbedder:
    def __init__(self, model: ModelInfo) -> None:
        self.model = model
        self._input = model.inputs[0]
        shape = self._input.shape
        self.input_size = shape[2] if len(shape) == 4 and isinstance(shape[2], int) else 112

    def embed(self, crops112: Sequence[Image]) -> npt.NDArray[np.float32]:
        """(N, 512) L2-normalised embeddings of aligned crops."""
        if not crops112:
            return np.zeros((0, EMBEDDING_SIZE), dtype=np.float32)
        size = self.input_size
        for crop in crops112:
            if crop.dtype != np.uint8 or crop.shape != (size, size, 3):
                raise InvalidImageError(f"ArcFace needs aligned {size}x{size} colour crops, got {crop.shape}.")
        batch = np.stack(crops112).astype(np.float32)
        blob = ((batch[..., ::-1] - _MEAN) / _STD).transpose(0, 3, 1, 2)
        blob = np.ascontiguousarray(blob, dtype=self._input.dtype)
        if self.model.dynamic_batch:
            raw = self.model.run({self._input.name: blob})[0]
        else:
            raw = np.concatenate([self.model.run({self._input.name: blob[i : i + 1]})[0] for i in range(len(blob))])
        return l2_normalize(raw.reshape(len(crops112), -1))

    def embed_faces(
        self, images: Sequence[Image], keypoints5_list: Sequence[npt.ArrayLike]
    ) -> npt.NDArray[np.float32]:
        """Align each face (image i, keypoints i) to 112 and embed them in one batch."""
        if len(images) != len(keypoints5_list):
            raise ValueError(f"{len(images)} images but {len(keypoints5_list)} keypoint sets")
        crops = [align_face(image, kps, self.input_size).image for image, kps in zip(images, keypoints5_list)]
        return self.embed(crops)
