"""``FaceEnhancer``: face restoration batched across the faces of all sessions.

``enhance`` takes one :class:`~mirage.enhance.EnhanceRequest` (an enhancer name and
an :class:`~mirage.enhance.EnhanceItem`: the swapped crop, its five points, CodeFormer's
fidelity) per call and runs them in ``@serve.batch`` batches; the batch is grouped by
enhancer name, one model call per model (:class:`~mirage.enhance.EnhancerBank`, the
Ray-free core). Each reply is an :class:`~mirage.enhance.EnhanceResult`: the enhanced
crop, or an error code and one sentence (an enhancer not provisioned here, a failed
batch), never an exception, so the caller sends the swapped face instead.

With no enhancer provisioned the replica loads nothing and answers every request
``enhancer_unavailable`` at once; ``available()`` is then empty. Batch size and wait
come from ``user_config`` through :meth:`FaceEnhancer.reconfigure`; a batch runs in a
worker thread by default (``compute_in_thread: true``): a 512 px restorer takes far
longer than a frame period on a CPU and must not hold the replica's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
from pydantic import Field
from ray import serve

from deployments.detector import BatchingConfig, run_batch
from deployments.logs import enable_info_logs
from deployments.metrics import BatchMetrics
from mirage.enhance import EnhanceItem, EnhancerBank, EnhancerConfig, EnhanceRequest, EnhanceResult
from mirage.runtime.select import RuntimeConfig
from mirage.weights.provision import ModelStore, ProvisionConfig

logger = logging.getLogger(__name__)

ENHANCER_MAX_BATCH_SIZE = 8
ENHANCER_BATCH_WAIT_S = 0.002
#: Seconds between health probes that run a model (the batching loop is checked every time).
PROBE_PERIOD_S = 60.0


class EnhancerBatchingConfig(BatchingConfig):
    """``user_config`` of the enhancer deployment: the face deployments' fields, a thread by default."""

    max_batch_size: int = Field(ENHANCER_MAX_BATCH_SIZE, ge=1, le=64)
    batch_wait_timeout_s: float = Field(ENHANCER_BATCH_WAIT_S, ge=0.0, le=1.0)
    compute_in_thread: bool = True


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=4 * ENHANCER_MAX_BATCH_SIZE,
    health_check_period_s=10.0,
    health_check_timeout_s=30.0,
)
class FaceEnhancer:
    def __init__(self, config: EnhancerConfig | None = None) -> None:
        enable_info_logs()
        self.config = config or EnhancerConfig()
        # The edge: the models directory and the runtime settings (MIRAGE_MODELS_DIR, MIRAGE_TRT_*,
        # MIRAGE_CUDA_ONLY) are read here once, the same ones `models compile` keys engines on.
        store = None if self.config.models_dir is not None else ModelStore(ProvisionConfig.from_env())
        self.bank = EnhancerBank.load(self.config, store=store, runtime=RuntimeConfig.from_env())
        self._metrics = BatchMetrics("enhancer")
        self._batching = EnhancerBatchingConfig.model_validate({})
        self._probed_at = float("-inf")
        logger.info("FaceEnhancer ready: %s", ", ".join(self.bank.available()) or "no enhancer provisioned")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` (``max_batch_size``, ``batch_wait_timeout_s``, ``compute_in_thread``)."""
        cfg = EnhancerBatchingConfig.model_validate(user_config or {})
        self.enhance.set_max_batch_size(cfg.max_batch_size)  # type: ignore[attr-defined]
        self.enhance.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self._batching = cfg
        logger.info("FaceEnhancer batching: %s", cfg.describe())

    @serve.batch(max_batch_size=ENHANCER_MAX_BATCH_SIZE, batch_wait_timeout_s=ENHANCER_BATCH_WAIT_S)
    async def enhance(self, requests: list[EnhanceRequest | tuple[str, EnhanceItem]]) -> list[EnhanceResult]:
        names = {r.name if isinstance(r, EnhanceRequest) else r[0] for r in requests}
        in_thread = self._batching.compute_in_thread and any(n in self.bank.enhancers for n in names)
        return await run_batch(self._metrics, "enhance", self.bank.enhance_batch, requests, in_thread)

    async def available(self) -> list[str]:
        """The enhancers this replica can run (provisioned and loaded), for ``/config``."""
        return self.bank.available()

    async def models(self) -> dict[str, Any]:
        """Per enhancer: licence, runtime and why (or why it is unavailable), for ``/debug/models``."""
        return self.bank.info()

    async def stats(self) -> dict[str, Any]:
        return {
            "deployment": "FaceEnhancer",
            "enhancers": self.bank.available(),
            "batching": self._batching.model_dump(),
            "methods": self._metrics.snapshot(),
            **self.bank.counters(),
        }

    async def check_health(self) -> None:
        """Unhealthy when the batching loop died or the first loaded enhancer stopped answering."""
        if not await self.enhance._is_batching_task_alive():  # type: ignore[attr-defined]
            raise RuntimeError("the enhance batching loop is not running")
        names = self.bank.available()
        now = time.monotonic()
        # A 512 px restorer on a CPU takes a second or more: probe it at most once a minute.
        if names and now - self._probed_at >= PROBE_PERIOD_S:
            probe = EnhanceItem(np.zeros((64, 64, 3), np.uint8), _PROBE_POINTS.copy())
            await asyncio.to_thread(self.bank.enhancers[names[0]].enhance, [probe])
            self._probed_at = time.monotonic()


#: Five plausible points in a 64 px crop (the ArcFace template scaled), for the health probe.
_PROBE_POINTS = np.array([[19.1, 25.8], [36.8, 25.8], [28.0, 35.9], [20.8, 46.2], [35.4, 46.1]], np.float32)
