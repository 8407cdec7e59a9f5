"""The enhancers one process serves, and a batch of faces from any sessions grouped by model.

:class:`EnhancerBank` is the Ray-free core of the ``FaceEnhancer`` deployment
(deployments/enhancer.py) and what a local model client holds in process: the
provisioned enhancers it loaded, why the others are not there, and
:meth:`EnhancerBank.enhance_batch`, which groups requests by model name and makes
one batched call per model. Errors come back per item (one sentence), so one
session's bad request never fails the faces of the others in the same batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirage.enhance.base import EnhanceItem, FaceEnhancer
from mirage.enhance.models import ENHANCER_NAMES, available_enhancers, load_enhancer, offline_store
from mirage.errors import MirageError
from mirage.runtime.onnx import OrtConfig
from mirage.runtime.select import RuntimeConfig
from mirage.types import Image
from mirage.weights.provision import ModelStore

logger = logging.getLogger(__name__)

#: ``EnhanceResult.error`` code prefix-free sentences are returned; these are the codes.
ENHANCER_UNAVAILABLE = "enhancer_unavailable"
ENHANCE_FAILED = "enhance_failed"


@dataclass(frozen=True)
class EnhanceRequest:
    """One face for the deployment: which enhancer (manifest name) and the face."""

    name: str
    item: EnhanceItem


@dataclass(frozen=True)
class EnhanceResult:
    """The enhanced crop (same size as the input), or an error code and one sentence."""

    image: Image | None = None
    error: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.image is not None and self.error is None


@dataclass(frozen=True)
class EnhancerConfig:
    """Construction-time options of an enhancer bank / the FaceEnhancer deployment (picklable).

    ``names``: enhancers to load (None: every provisioned one). ``models_dir`` /
    ``manifest``: where to read weights and which manifest (None: the environment's
    models directory and ``configs/models.yaml``). ``num_threads``: ONNX Runtime
    intra-op threads per model. ``dynamic``: serve batch-1 exports through their
    proven dynamic-batch rewrite.
    """

    names: tuple[str, ...] | None = None
    models_dir: str | None = None
    manifest: str | None = None
    num_threads: int = 1
    dynamic: bool = True


@dataclass
class _Counters:
    enhanced: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


class EnhancerBank:
    """Loaded enhancers by name; the reason for each known one that is not loaded."""

    def __init__(self, enhancers: Mapping[str, FaceEnhancer], unavailable: Mapping[str, str] | None = None) -> None:
        self.enhancers: dict[str, FaceEnhancer] = dict(enhancers)
        self.unavailable: dict[str, str] = dict(unavailable or {})
        self._lock = threading.Lock()
        self._counters = _Counters()

    @classmethod
    def load(
        cls,
        config: EnhancerConfig | None = None,
        store: ModelStore | None = None,
        runtime: RuntimeConfig | None = None,
    ) -> EnhancerBank:
        """Load the configured (or every provisioned) enhancer; a failure is recorded, never raised."""
        config = config or EnhancerConfig()
        if store is None:
            if config.models_dir is not None:
                store = offline_store(Path(config.models_dir), Path(config.manifest) if config.manifest else None)
            else:  # the environment is read at the edges (CLI, deployment), never here
                raise ValueError("EnhancerBank.load needs a model store or config.models_dir")
        present = available_enhancers(store)
        wanted = list(config.names) if config.names is not None else present
        ort = OrtConfig(intra_op_threads=max(1, config.num_threads))
        loaded: dict[str, FaceEnhancer] = {}
        unavailable: dict[str, str] = {}
        for name in wanted:
            try:
                loaded[name] = load_enhancer(name, store, ort, runtime, dynamic=config.dynamic)
            except MirageError as exc:
                unavailable[name] = str(exc)
                logger.info("enhancer %s unavailable: %s", name, exc)
        for name in ENHANCER_NAMES:
            if name not in loaded and name not in unavailable:
                unavailable[name] = "not provisioned" if name not in present else "not configured on this server"
        return cls(loaded, unavailable)

    def available(self) -> list[str]:
        """The enhancers this bank can run, in :data:`ENHANCER_NAMES` order."""
        order = {n: i for i, n in enumerate(ENHANCER_NAMES)}
        return sorted(self.enhancers, key=lambda n: (order.get(n, len(order)), n))

    def get(self, name: str) -> FaceEnhancer | None:
        return self.enhancers.get(name)

    def reason(self, name: str) -> str:
        """Why ``name`` cannot be used here (one sentence)."""
        if name in self.enhancers:
            return ""
        why = self.unavailable.get(name)
        if why is None:
            return f"Unknown enhancer {name[:40]!r}; available: {', '.join(self.available()) or 'none'}."
        if why.endswith("."):
            return why
        return f"The {name} enhancer is not available on this server ({why})."

    def enhance_batch(self, requests: Sequence[EnhanceRequest | tuple[str, EnhanceItem]]) -> list[EnhanceResult]:
        """Enhance faces from any sessions: grouped by model name, one batched call per model.

        A request is an :class:`EnhanceRequest` or a plain ``(name, item)`` pair.
        """
        return self._enhance([r if isinstance(r, EnhanceRequest) else EnhanceRequest(*r) for r in requests])

    def _enhance(self, requests: Sequence[EnhanceRequest]) -> list[EnhanceResult]:
        results: list[EnhanceResult] = [EnhanceResult(error=ENHANCE_FAILED)] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(request.name, []).append(index)
        for name, indices in groups.items():
            enhancer = self.enhancers.get(name)
            if enhancer is None:
                for i in indices:
                    results[i] = EnhanceResult(error=ENHANCER_UNAVAILABLE, message=self.reason(name))
                self._count(self._counters.errors, ENHANCER_UNAVAILABLE, len(indices))
                continue
            try:
                images = enhancer.enhance([requests[i].item for i in indices])
            except (MirageError, ValueError) as exc:
                message = f"The {name} enhancer failed on this batch ({type(exc).__name__}: {str(exc)[:120]})."
                logger.warning("enhancer %s: a batch of %d failed: %s", name, len(indices), type(exc).__name__)
                for i in indices:
                    results[i] = EnhanceResult(error=ENHANCE_FAILED, message=message)
                self._count(self._counters.errors, ENHANCE_FAILED, len(indices))
                continue
            for i, image in zip(indices, images, strict=True):
                results[i] = EnhanceResult(image=image)
            self._count(self._counters.enhanced, name, len(indices))
        return results

    def _count(self, table: dict[str, int], key: str, n: int) -> None:
        with self._lock:
            table[key] = table.get(key, 0) + n

    def counters(self) -> dict[str, Any]:
        """``enhanced_frames`` (faces enhanced, total and by model) and errors by code."""
        with self._lock:
            by_model = dict(self._counters.enhanced)
            errors = dict(self._counters.errors)
        return {"enhanced_frames": sum(by_model.values()), "enhanced_by_model": by_model, "errors": errors}

    def info(self) -> dict[str, Any]:
        """Per known enhancer: loaded (licence, runtime, stand-in) or why not (for /debug/models)."""
        out: dict[str, Any] = {}
        for name in self.available():
            enhancer = self.enhancers[name]
            describe = getattr(enhancer, "info", None)
            out[name] = {"available": True, **(describe.to_dict() if describe is not None else {"name": name})}
        for name, why in sorted(self.unavailable.items()):
            if name not in out:
                out[name] = {"available": False, "reason": why}
        return out
