"""InSwapper (insightface inswapper_128 / inswapper_128_fp16), batched over faces.

Inputs: ``target`` ``[N, 3, 128, 128]`` RGB in [0, 1] — the live face aligned to the
ArcFace template at 128 (shifted 8 px right) — and ``source`` ``[N, 512]``, the
reference identity's latent: the ArcFace ``normed_embedding`` times the 512x512
``emap`` matrix stored as the graph's last initializer, L2-normalised. Output
``[N, 3, 128, 128]`` RGB in [0, 1].

The identity latent comes from the reference photo and is private: never logged or
written anywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from mirage.detect.scrfd import ScrfdDetector
from mirage.errors import InvalidImageError, ModelUnavailableError, NoFaceError
from mirage.geometry.align import align_face
from mirage.identity.arcface import ArcFaceEmbedder, l2_normalize
from mirage.runtime.onnx import ModelInfo
from mirage.types import FaceCrop, Image, LatentIdentity, SwappedFace

logger = logging.getLogger(__name__)

LATENT_SIZE = 512


def load_emap(model: ModelInfo) -> npt.NDArray[np.float32]:
    """The 512x512 ``emap`` matrix: the last initializer of the InSwapper graph."""
    try:
        proto = onnx.load(str(model.path))
    except Exception as exc:  # protobuf decode errors and I/O errors alike
        raise ModelUnavailableError(f"Cannot read the emap of {model.name} from {model.path}: {exc}") from exc
    if not proto.graph.initializer:
        raise ModelUnavailableError(f"{model.name} has no initializers, so it is not an InSwapper model.")
    emap = numpy_helper.to_array(proto.graph.initializer[-1]).astype(np.float32)
    if emap.shape != (LATENT_SIZE, LATENT_SIZE):
        raise ModelUnavailableError(
            f"{model.name}'s last initializer has shape {emap.shape}, not the 512x512 emap of InSwapper."
        )
    return emap


class InSwapper:
    def __init__(self, model: ModelInfo) -> None:
        self.model = model
        names = model.input_names
        self._target = model.input("target") if "target" in names else model.inputs[0]
        self._source = model.input("source") if "source" in names else model.inputs[1]
        shape = self._target.shape
        self.input_size = shape[2] if len(shape) == 4 and isinstance(shape[2], int) else 128
        self.emap = load_emap(model)

    def latent_from_embedding(self, normed_embedding: npt.ArrayLike) -> LatentIdentity:
        """Source latent = normalize(normed_embedding @ emap)."""
        embedding = np.asarray(normed_embedding, dtype=np.float32).reshape(1, -1)
        if embedding.shape[1] != LATENT_SIZE:
            raise ValueError(f"an ArcFace embedding has {LATENT_SIZE} values, got {embedding.shape[1]}")
        latent = l2_normalize(embedding @ self.emap).reshape(LATENT_SIZE)
        return LatentIdentity(latent=latent)

    def prepare(self, image: Image, keypoints5: npt.ArrayLike) -> FaceCrop:
        """The live face aligned for the swapper (128 px ArcFace template)."""
        return align_face(image, keypoints5, self.input_size)

    def swap(self, crops: Sequence[FaceCrop], identities: Sequence[LatentIdentity]) -> list[SwappedFace]:
        """Swap each crop to its identity; one batched run when the model allows it."""
        if len(crops) != len(identities):
            raise ValueError(f"{len(crops)} crops but {len(identities)} identities")
        if not crops:
            return []
        size = self.input_size
        for crop in crops:
            if crop.image.dtype != np.uint8 or crop.image.shape != (size, size, 3):
                raise InvalidImageError(f"InSwapper needs aligned {size}x{size} colour crops, got {crop.image.shape}.")
        images = np.stack([crop.image for crop in crops]).astype(np.float32)
        target = np.ascontiguousarray((images[..., ::-1] / 255.0).transpose(0, 3, 1, 2), dtype=self._target.dtype)
        source = np.ascontiguousarray(
            np.stack([np.asarray(ident.latent, dtype=np.float32).reshape(LATENT_SIZE) for ident in identities]),
            dtype=self._source.dtype,
        )
        if self.model.dynamic_batch:
            out = self.model.run({self._target.name: target, self._source.name: source})[0]
        else:
            out = np.concatenate(
                [
                    self.model.run({self._target.name: target[i : i + 1], self._source.name: source[i : i + 1]})[0]
                    for i in range(len(crops))
                ]
            )
        rgb = out.astype(np.float32).transpose(0, 2, 3, 1)
        bgr = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)[..., ::-1]
        mask = np.ones((size, size), dtype=np.float32)
        return [SwappedFace(image=np.ascontiguousarray(face), mask=mask.copy()) for face in bgr]


class InSwapperIdentityBuilder:
    """Reference photo → InSwapper latent: detect, take the largest face, embed, project."""

    def __init__(self, detector: ScrfdDetector, embedder: ArcFaceEmbedder, swapper: InSwapper) -> None:
        self.detector = detector
        self.embedder = embedder
        self.swapper = swapper

    def build(self, reference_image: Image) -> LatentIdentity:
        if (
            not isinstance(reference_image, np.ndarray)
            or reference_image.dtype != np.uint8
            or reference_image.ndim != 3
            or reference_image.shape[2] != 3
            or reference_image.size == 0
        ):
            raise InvalidImageError("The reference photo is not a colour image.")
        detections = self.detector.detect([reference_image])[0]
        if not detections:
            raise NoFaceError("No face found in the reference photo.")
        face = max(detections, key=lambda d: d.area)
        if face.keypoints.shape != (5, 2):
            raise ModelUnavailableError("The face detector gives no 5-point keypoints, which InSwapper needs.")
        embedding = self.embedder.embed_faces([reference_image], [face.keypoints])[0]
        return self.swapper.latent_from_embedding(embedding)
