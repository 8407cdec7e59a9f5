"""``FaceDetector``: BlazeFace detection and FaceMesh landmarks, batched across all sessions.

Two ``@serve.batch`` methods share one replica: ``detect`` (a letterboxed
detector input in, detections in frame pixels out) and ``landmarks`` (a
192x192 ROI crop in, 468 points in frame pixels out). Frames never come here:
the ingress prepares the small inputs. Batch size and wait come from
``user_config`` through :meth:`FaceDetector.reconfigure`. A batch runs on the
replica's event loop (``compute_in_thread: false``, the default): requests that
arrive meanwhile wait in the actor's queue and form the next batch, and the two
thread hand-overs per batch are saved, which measured 10-15 % more throughput at
three sessions on the 2-core box (benchmarks/README.md); ``true`` runs it in a
worker thread, for models slow enough that the loop should stay free meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from deployments.logs import enable_info_logs
from deployments.metrics import BatchMetrics
from deployments.serve_types import batch_controls
from mirage.detect.blazeface import BlazeFaceConfig, BlazeFaceDetector, DetectorInput
from mirage.landmarks.facemesh import MESH_INPUT_SIZE, FaceMeshLandmarker, MeshInput
from mirage.types import Detection, FaceLandmarks

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_BATCH_WAIT_S = 0.0


class BatchingConfig(BaseModel):
    """The ``user_config`` of a batched deployment (changeable without restarting replicas)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(DEFAULT_MAX_BATCH_SIZE, ge=1, le=64)
    batch_wait_timeout_s: float = Field(DEFAULT_BATCH_WAIT_S, ge=0.0, le=1.0)
    #: Run each batch in a worker thread instead of on the replica's event loop.
    compute_in_thread: bool = False

    def describe(self) -> str:
        where = "in a worker thread" if self.compute_in_thread else "on the event loop"
        return f"max {self.max_batch_size}, wait {self.batch_wait_timeout_s * 1000:.1f} ms, {where}"


@dataclass(frozen=True)
class DetectorConfig:
    """Construction-time options of the detector replica."""

    model: Literal["short", "full"] = "short"
    score_threshold: float = 0.5
    num_threads: int = 1


async def run_batch(
    metrics: BatchMetrics,
    method: str,
    fn: Callable[[Sequence[T]], list[R]],
    items: list[T],
    in_thread: bool = False,
) -> list[R]:
    """Run a model function on a batch (on the loop, or in a worker thread), recording latency, size and errors."""
    start = time.perf_counter()
    ok = False
    try:
        results = await asyncio.to_thread(fn, items) if in_thread else fn(items)
        if len(results) != len(items):
            raise RuntimeError(f"{method} returned {len(results)} results for {len(items)} inputs")
        ok = True
        return results
    finally:
        metrics.record(method, len(items), (time.perf_counter() - start) * 1000.0, ok)


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=4 * DEFAULT_MAX_BATCH_SIZE,
    health_check_period_s=10.0,
    health_check_timeout_s=30.0,
)
class FaceDetector:
    def __init__(self, config: DetectorConfig | None = None) -> None:
        enable_info_logs()
        self.config = config or DetectorConfig()
        self._detector = BlazeFaceDetector(
            BlazeFaceConfig(
                model=self.config.model,
                score_threshold=self.config.score_threshold,
                num_threads=self.config.num_threads,
            )
        )
        self._landmarker = FaceMeshLandmarker(num_threads=self.config.num_threads)
        self._metrics = BatchMetrics("detector")
        self._batching = BatchingConfig()
        logger.info("FaceDetector ready: BlazeFace %s range + FaceMesh", self.config.model)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` (``max_batch_size``, ``batch_wait_timeout_s``) to both batched methods."""
        cfg = BatchingConfig.model_validate(user_config or {})
        for method in (self.detect, self.landmarks):
            controls = batch_controls(method)
            controls.set_max_batch_size(cfg.max_batch_size)
            controls.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self._batching = cfg
        logger.info("FaceDetector batching: %s", cfg.describe())

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def detect(self, items: list[DetectorInput]) -> list[list[Detection]]:
        return await run_batch(self._metrics, "detect", self._detector.infer, items, self._batching.compute_in_thread)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def landmarks(self, items: list[MeshInput]) -> list[FaceLandmarks]:
        return await run_batch(
            self._metrics, "landmarks", self._landmarker.infer, items, self._batching.compute_in_thread
        )

    async def stats(self) -> dict[str, Any]:
        """Batch statistics of this replica (what the batch-size histogram also exports)."""
        return {
            "deployment": "FaceDetector",
            "model": self.config.model,
            "batching": self._batching.model_dump(),
            "methods": self._metrics.snapshot(),
        }

    async def check_health(self) -> None:
        """Unhealthy when a batching loop died or the models stopped answering."""
        for method in (self.detect, self.landmarks):
            if not await batch_controls(method)._is_batching_task_alive():
                raise RuntimeError(f"the {method.__name__} batching loop is not running")
        size = self._detector.input_size
        probe = DetectorInput(tensor=np.zeros((size, size, 3), np.uint8), scale=1.0, pad_x=0.0, pad_y=0.0)
        await asyncio.to_thread(self._detector.infer, [probe])
        mesh_probe = MeshInput(
            tensor=np.zeros((MESH_INPUT_SIZE, MESH_INPUT_SIZE, 3), np.uint8), matrix=np.eye(2, 3, dtype=np.float32)
        )
        await asyncio.to_thread(self._landmarker.infer, [mesh_probe])
