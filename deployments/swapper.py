"""``FaceSwapper``: the Serve shell of :class:`mirage.pipeline.fused.TrackSwapEngine` (a ``SwapEngine``).

``swap`` takes one :class:`~mirage.pipeline.messages.SwapItem` (a face crop
plus the session's identity) per call and runs them in batches, grouped by
swapper; ``track_swap`` does a tracked face's landmarks, smoothing, crop and
swap in one call (:mod:`mirage.pipeline.fused`: one Serve call per tracked
frame instead of two); ``prepare_identity`` turns a reference photo (bytes) into identity
data (a few decodes at once per replica). Identity building and the identity
cache live in ``mirage.pipeline.identity``; this module adds batching,
``reconfigure``, ``check_health`` and metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from ray import serve

from deployments.detector import DEFAULT_BATCH_WAIT_S, DEFAULT_MAX_BATCH_SIZE, BatchingConfig, run_batch
from deployments.logs import enable_info_logs
from deployments.metrics import BatchMetrics
from deployments.serve_types import batch_controls
from mirage.pipeline.fused import TrackSwapEngine
from mirage.pipeline.identity import IdentityCache, SwapEngine, SwapperConfig
from mirage.pipeline.messages import IdentityReply, SwapItem, SwapResult, TrackSwapItem, TrackSwapResult

__all__ = ["FaceSwapper", "IdentityCache", "SwapEngine", "SwapperConfig"]

logger = logging.getLogger(__name__)


def _with_model_settings(config: SwapperConfig, env: Mapping[str, str]) -> SwapperConfig:
    """The replica's edge: InSwapper's model store and runtime settings from its environment, where unset."""
    if not config.inswapper:
        return config
    from mirage.runtime.onnx import OrtConfig  # onnxruntime stays off a mesh-only replica
    from mirage.runtime.select import RuntimeConfig
    from mirage.weights.provision import ProvisionConfig

    return dataclasses.replace(
        config,
        provision=config.provision or ProvisionConfig.from_env(env),
        ort=config.ort or OrtConfig.from_env(env),
        runtime=config.runtime or RuntimeConfig.from_env(env),
    )


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=4 * DEFAULT_MAX_BATCH_SIZE,
    health_check_period_s=10.0,
    health_check_timeout_s=30.0,
)
class FaceSwapper:
    def __init__(self, config: SwapperConfig | None = None) -> None:
        enable_info_logs()
        self.core = TrackSwapEngine(_with_model_settings(config or SwapperConfig(), os.environ))
        self._metrics = BatchMetrics("swapper")
        self._batching = BatchingConfig()
        self._decodes = asyncio.Semaphore(max(1, self.core.config.max_concurrent_decodes))

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        cfg = BatchingConfig.model_validate(user_config or {})
        for method in (self.swap, self.track_swap):
            controls = batch_controls(method)
            controls.set_max_batch_size(cfg.max_batch_size)
            controls.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self._batching = cfg
        logger.info("FaceSwapper batching: %s", cfg.describe())

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def swap(self, items: list[SwapItem]) -> list[SwapResult]:
        return await run_batch(self._metrics, "swap", self.core.swap_batch, items, self._batching.compute_in_thread)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def track_swap(self, items: list[TrackSwapItem]) -> list[TrackSwapResult]:
        return await run_batch(
            self._metrics, "track_swap", self.core.track_swap_batch, items, self._batching.compute_in_thread
        )

    def forget_identity(self, key: str) -> None:
        """A session ended: drop its identity now rather than at the cache's expiry."""
        self.core.identities.forget(key)

    def available_swappers(self) -> list[str]:
        return self.core.available_swappers()

    async def prepare_identity(self, photo: bytes, swapper: str = "mesh") -> IdentityReply:
        """Reference photo bytes → identity data for ``swapper`` (``mesh`` or ``inswapper``)."""
        start = time.perf_counter()
        async with self._decodes:  # a few reference decodes at once per replica: bounded memory
            reply = await asyncio.to_thread(self.core.build_identity, photo, swapper)
        self._metrics.record("prepare_identity", 1, (time.perf_counter() - start) * 1000.0, reply.code != "internal")
        return reply

    async def stats(self) -> dict[str, Any]:
        return {
            "deployment": "FaceSwapper",
            "swappers": self.core.available_swappers(),
            "inswapper_reason": self.core.inswapper_reason,
            "cached_identities": len(self.core.identities),
            "batching": self._batching.model_dump(),
            "methods": self._metrics.snapshot(),
        }

    async def check_health(self) -> None:
        for method in (self.swap, self.track_swap):
            if not await batch_controls(method)._is_batching_task_alive():
                raise RuntimeError(f"the {method.__name__} batching loop is not running")
