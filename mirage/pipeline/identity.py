"""Identity building, the identity cache and the batched swap, without Ray.

:class:`SwapEngine` is what a swapper replica runs (``deployments/swapper.py``
is its Serve shell) and what the local pipeline runs in process: a batched
swap grouped by swapper, and identity building from a reference photo. The
photo is validated before decoding (size, magic bytes, declared dimensions),
the largest face is used, and the photo never leaves memory. User errors come
back as codes in an :class:`~mirage.pipeline.messages.IdentityReply`, never as
tracebacks that could quote the input.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from mirage.detect.blazeface import BlazeFaceConfig, BlazeFaceDetector, largest_faces
from mirage.errors import InvalidImageError, MirageError, ModelUnavailableError, NoFaceError
from mirage.imageio import DEFAULT_MAX_BYTES, DEFAULT_MAX_SIDE, decode_image
from mirage.landmarks.facemesh import FaceMeshLandmarker, roi_from_detection
from mirage.pipeline.messages import SWAPPER_UNAVAILABLE, UNKNOWN_IDENTITY, IdentityReply, SwapItem, SwapResult
from mirage.swap.mesh import MeshSwapConfig, MeshSwapper
from mirage.types import FaceLandmarks, Identity, Image, LatentIdentity, SwapperName

if TYPE_CHECKING:  # ONNX Runtime is imported only when the neural path is used
    from mirage.runtime.onnx import OrtConfig
    from mirage.runtime.select import RuntimeConfig
    from mirage.swap.neural import NeuralSwap
    from mirage.weights.provision import ProvisionConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdentityResult:
    identity: Identity
    faces_found: int
    note: str | None


class ReferenceFinder:
    """The largest face's mesh in a reference photo (BlazeFace + FaceMesh, in process)."""

    def __init__(self, detector_model: Literal["short", "full"] = "short", num_threads: int = 1) -> None:
        self.detector = BlazeFaceDetector(BlazeFaceConfig(model=detector_model, num_threads=num_threads))
        self.landmarker = FaceMeshLandmarker(num_threads=num_threads)

    def landmarks(self, reference: Image) -> tuple[FaceLandmarks, int]:
        """The largest face's mesh, and how many faces the photo had.

        Tightly cropped portraits (a face filling the picture) are padded and
        retried, since the detector needs some context around a face.
        """
        for pad in (0.0, 0.5):
            image = reference
            offset = 0
            if pad:
                offset = int(max(reference.shape[:2]) * pad)
                padded = cv2.copyMakeBorder(reference, offset, offset, offset, offset, cv2.BORDER_CONSTANT, value=(0, 0, 0))
                image = np.asarray(padded, np.uint8)
            detections = self.detector.detect([image])[0]
            if detections:
                best = largest_faces(detections, 1)[0]
                marks = self.landmarker.landmarks([(image, roi_from_detection(best))])[0]
                points = marks.points.copy()
                points[:, :2] -= offset
                return FaceLandmarks(points=points, confidence=marks.confidence), len(detections)
        raise NoFaceError("No face found in the reference photo; use a clear, front-facing photo of one person.")


@dataclass(frozen=True)
class SwapperConfig:
    """Construction-time options of the swapper replica.

    ``inswapper``: try to load InSwapper (when provisioned); a missing model
    disables it with one log line, ``mesh`` always works.
    ``reference_detector``: BlazeFace range used on reference photos.
    """

    mesh: MeshSwapConfig = field(default_factory=MeshSwapConfig)
    inswapper: bool = True
    reference_detector: Literal["short", "full"] = "short"
    num_threads: int = 1
    max_reference_bytes: int = DEFAULT_MAX_BYTES
    max_reference_side: int = DEFAULT_MAX_SIDE
    #: References are decoded (downscaled on decode where possible) to at most this longest side:
    #: the extra memory of any accepted reference stays under 150 MB (docs/security.md).
    reference_decode_side: int = 2048
    #: Reference decodes that may run at once on one replica (the rest wait their turn).
    max_concurrent_decodes: int = 2
    #: Where models live and how InSwapper's models pick a runtime, read from the environment at
    #: the edge (FaceSwapper's constructor); ``None``: no model store, so no InSwapper.
    provision: ProvisionConfig | None = None
    ort: OrtConfig | None = None
    runtime: RuntimeConfig | None = None


def load_inswapper(config: SwapperConfig) -> tuple[NeuralSwap | None, str | None]:
    """The neural swap path when its weights are already provisioned in ``config.provision``, else (None, reason).

    Never downloads here (a replica must start fast and offline); provisioning
    is ``python -m mirage models fetch`` or the start-up provisioning step.
    ``load_neural_swap`` serves an InSwapper file that is already provisioned
    (the one with a compiled engine first) and never fetches one either.
    """
    try:
        from mirage.runtime.onnx import OrtConfig
        from mirage.runtime.select import RuntimeConfig
        from mirage.swap.neural import INSWAPPER_NAMES, load_neural_swap
        from mirage.weights.provision import ModelStore
    except ImportError as exc:
        return None, f"the neural swap path is not installed ({type(exc).__name__})"
    if config.provision is None:
        return None, "no model store was given to this swapper"
    try:
        store = ModelStore(config.provision)
        needed = ["scrfd_10g", "arcface_w600k_r50"]
        if not any(store.path(name).is_file() for name in INSWAPPER_NAMES):
            return None, "InSwapper weights are not provisioned (python -m mirage models fetch inswapper_128_fp16)"
        missing = [name for name in needed if not store.path(name).is_file()]
        if missing:
            return None, f"{', '.join(missing)} not provisioned (python -m mirage models fetch {' '.join(missing)})"
        return load_neural_swap(store, config.ort or OrtConfig(), config.runtime or RuntimeConfig()), None
    except MirageError as exc:
        return None, str(exc)


class IdentityCache:
    """Identities this replica was sent, by key, forgotten ``ttl_s`` after their last use.

    Sessions send their identity with the first few swaps only, then just its
    key; a replica that does not know a key answers UNKNOWN_IDENTITY and the
    ingress resends it. The data never leaves memory, and an entry outlives its
    session by at most ``ttl_s`` (the ingress also asks to forget it on close).
    """

    def __init__(self, ttl_s: float = 15.0, max_entries: int = 256, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[Identity, float]] = OrderedDict()

    def __repr__(self) -> str:
        return f"IdentityCache({len(self._entries)} entries)"

    def __len__(self) -> int:
        return len(self._entries)

    def _sweep(self, now: float) -> None:
        while self._entries:
            key, (_, used) = next(iter(self._entries.items()))
            if now - used <= self._ttl_s and len(self._entries) <= self._max:
                break
            del self._entries[key]

    def put(self, key: str, identity: Identity) -> None:
        with self._lock:
            now = self._clock()
            self._entries[key] = (identity, now)
            self._entries.move_to_end(key)
            self._sweep(now)

    def get(self, key: str) -> Identity | None:
        with self._lock:
            now = self._clock()
            self._sweep(now)
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries[key] = (entry[0], now)
            self._entries.move_to_end(key)
            return entry[0]

    def forget(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)


class SwapEngine:
    """The swapper's logic without Ray: batched swap and identity building.

    ``neural``: an InSwapper already loaded (the CLI); else it is loaded when
    provisioned and ``config.inswapper`` is on.
    """

    def __init__(self, config: SwapperConfig | None = None, neural: NeuralSwap | None = None) -> None:
        self.config = config or SwapperConfig()
        self._mesh = MeshSwapper(self.config.mesh)
        self.identities = IdentityCache()
        self.inswapper: NeuralSwap | None = neural
        self.inswapper_reason: str | None = None
        if neural is None:
            self.inswapper, self.inswapper_reason = load_inswapper(self.config) if self.config.inswapper else (None, "disabled")
        if self.inswapper is None:
            logger.info("InSwapper unavailable (%s); the mesh swapper serves every session", self.inswapper_reason)
        # The short-range detector misses the small faces of a group photo (and then finds a bogus one
        # in the padded retry), so a short-range setting is backed by the full-range model: the
        # detector that finds more faces wins, and the largest of them is used, as documented.
        detectors: list[Literal["short", "full"]] = [self.config.reference_detector]
        if self.config.reference_detector == "short":
            detectors.append("full")
        self._finders = [ReferenceFinder(model, self.config.num_threads) for model in detectors]

    def available_swappers(self) -> list[str]:
        return ["mesh"] + (["inswapper"] if self.inswapper is not None else [])

    def identity_from_image(self, image: Image, name: SwapperName, detectors: int | None = None) -> IdentityResult:
        """Identity from the reference's largest face, with whichever detector finds more faces.

        ``detectors``: use only the first N reference detectors (the CLI uses its one).
        """
        finders = self._finders[: detectors or len(self._finders)]
        if name != "mesh":
            finders = finders[:1]
        results: list[IdentityResult] = []
        missed: NoFaceError | None = None
        for finder in finders:
            try:
                landmarks, count = finder.landmarks(image)
            except NoFaceError as exc:
                missed = exc
                continue
            note = f"{count} faces in the reference photo; using the largest." if count > 1 else None
            if name == "mesh":
                identity: Identity = self._mesh.identity_from_landmarks(image, landmarks)
            else:
                if self.inswapper is None:
                    raise ModelUnavailableError("The inswapper swapper is not available in this pipeline.")
                identity = self.inswapper.identity_builder.build(image)
            results.append(IdentityResult(identity=identity, faces_found=count, note=note))
        if not results:
            assert missed is not None
            raise missed
        return max(results, key=lambda r: r.faces_found)  # ties: the configured detector (first)

    def swap_batch(self, items: Sequence[SwapItem]) -> list[SwapResult]:
        """Swap faces (from any sessions) grouped by swapper; per-item errors instead of exceptions."""
        results: list[SwapResult] = [SwapResult(error=SWAPPER_UNAVAILABLE)] * len(items)
        groups: dict[str, list[tuple[int, Identity]]] = {}
        for index, item in enumerate(items):
            if item.identity is not None:
                self.identities.put(item.identity_key, item.identity)
                identity: Identity | None = item.identity
            else:
                identity = self.identities.get(item.identity_key)
            if identity is None:
                results[index] = SwapResult(error=UNKNOWN_IDENTITY)
                continue
            groups.setdefault(item.swapper, []).append((index, identity))
        for name, members in groups.items():
            indices = [i for i, _ in members]
            crops = [items[i].crop for i in indices]
            identities = [identity for _, identity in members]
            if name == "mesh":
                out = self._mesh.swap(crops, identities, [items[i].options for i in indices])  # type: ignore[arg-type]
            elif name == "inswapper" and self.inswapper is not None:
                latents = [i for i in identities if isinstance(i, LatentIdentity)]
                if len(latents) != len(identities):  # a mesh identity sent for InSwapper: refused per item
                    continue
                out = self.inswapper.swapper.swap(crops, latents)
            else:
                continue
            for i, face in zip(indices, out, strict=True):
                results[i] = SwapResult.pack(face)
        return results

    def build_identity(self, photo: bytes, swapper: str) -> IdentityReply:
        """Reference photo bytes → identity, or a reply with an error code; never raises for bad input."""
        if swapper not in ("mesh", "inswapper"):
            return IdentityReply(code="bad_request", message=f"Unknown swapper {swapper[:20]!r}; use mesh or inswapper.")
        if swapper == "inswapper" and self.inswapper is None:
            return IdentityReply(
                swapper="inswapper",
                code="swapper_unavailable",
                message=f"The inswapper swapper is not available on this server ({self.inswapper_reason}); use mesh.",
            )
        name: SwapperName = swapper  # type: ignore[assignment]
        try:
            image = decode_image(
                photo,
                max_bytes=self.config.max_reference_bytes,
                max_side=self.config.max_reference_side,
                max_decode_side=self.config.reference_decode_side,
            )
            result = self.identity_from_image(image, name)
        except InvalidImageError as exc:
            return IdentityReply(swapper=name, code="bad_reference", message=str(exc))
        except NoFaceError:
            return IdentityReply(
                swapper=name,
                code="no_face",
                message="No face was found in the reference photo; use a clear, front-facing photo of one person.",
            )
        except ModelUnavailableError as exc:
            return IdentityReply(swapper=name, code="swapper_unavailable", message=str(exc))
        except MirageError as exc:
            # An expected library error we did not map: its message is written for people.
            logger.warning("identity building failed: %s", type(exc).__name__)
            return IdentityReply(swapper=name, code="bad_reference", message=str(exc))
        except Exception as exc:  # noqa: BLE001 - never let a traceback quoting the photo travel
            logger.error("identity building crashed: %s", type(exc).__name__)
            return IdentityReply(swapper=name, code="internal", message="The reference photo could not be processed.")
        return IdentityReply(identity=result.identity, swapper=name, note=result.note, faces_found=result.faces_found)

    def forget_identity(self, key: str) -> None:
        """A session ended: drop its identity now rather than at the cache's expiry."""
        self.identities.forget(key)

    def prepare_identity(self, photo: bytes, swapper: str = "mesh") -> IdentityReply:
        return self.build_identity(photo, swapper)
