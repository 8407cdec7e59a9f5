"""The model client the frame pipeline drives, and its in-process implementation.

Every model stage is named by the deployment that serves it (``FaceDetector``,
``FaceSwapper``, ``FaceEnhancer``, …) and a method. :class:`ModelClient` has
two calls: ``infer`` (one item of a batched method: the far side batches across
sessions) and ``call`` (anything else: identities, what is available). The
served client (``serve_app.orchestrator.ServeModelClient``) maps a name to a
Serve deployment handle; :class:`LocalModelClient` maps it to an object in
this process whose ``<method>_batch(items)`` does the batch — so a new stage
needs no change here, only an entry in :data:`mirage.pipeline.stages.FACE_STAGES`
and a backend object (or a deployment shell) under its name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from mirage.detect.blazeface import BlazeFaceConfig, BlazeFaceDetector, DetectorInput
from mirage.landmarks.facemesh import FaceMeshLandmarker, MeshInput
from mirage.types import Detection, FaceLandmarks

DETECTOR = "FaceDetector"
SWAPPER = "FaceSwapper"
ENHANCER = "FaceEnhancer"
VOICE = "VoiceConverter"


class ModelClient(Protocol):
    """The model stages as the frame pipeline sees them."""

    def has(self, deployment: str) -> bool:
        """Whether a deployment (or local backend) of that name is there at all."""
        ...

    async def infer(self, deployment: str, method: str, item: Any) -> Any:
        """One item of a batched method; the far side batches items of every session."""
        ...

    async def call(self, deployment: str, method: str, *args: Any) -> Any:
        """A plain method (identities, availability)."""
        ...


class DetectorEngine:
    """BlazeFace + FaceMesh in process: what the FaceDetector deployment runs."""

    def __init__(self, model: str = "short", score_threshold: float = 0.5, num_threads: int = 1) -> None:
        config = BlazeFaceConfig(model=model, score_threshold=score_threshold, num_threads=num_threads)  # type: ignore[arg-type]
        self.detector = BlazeFaceDetector(config)
        self.landmarker = FaceMeshLandmarker(num_threads=num_threads)

    def detect_batch(self, items: Sequence[DetectorInput]) -> list[list[Detection]]:
        return self.detector.infer(items)

    def landmarks_batch(self, items: Sequence[MeshInput]) -> list[FaceLandmarks]:
        return self.landmarker.infer(items)


class LocalModelClient:
    """:class:`ModelClient` over objects in this process, by deployment name.

    ``in_thread``: run each call in a worker thread (an event loop that also
    serves other work, as in tests of the served path); off, calls run inline
    (the CLI and the benchmark baseline, one stream, no thread hand-over).
    """

    def __init__(self, backends: Mapping[str, Any], in_thread: bool = True) -> None:
        self._backends = dict(backends)
        self._in_thread = in_thread

    def backend(self, deployment: str) -> Any:
        try:
            return self._backends[deployment]
        except KeyError:
            raise LookupError(f"no {deployment} in this process") from None

    def has(self, deployment: str) -> bool:
        return deployment in self._backends

    async def infer(self, deployment: str, method: str, item: Any) -> Any:
        batch = getattr(self.backend(deployment), f"{method}_batch")
        if self._in_thread:
            return (await asyncio.to_thread(batch, [item]))[0]
        return batch([item])[0]

    async def call(self, deployment: str, method: str, *args: Any) -> Any:
        fn = getattr(self.backend(deployment), method)
        if self._in_thread and method.startswith(("prepare", "build")):
            return await asyncio.to_thread(fn, *args)
        return fn(*args)
