"""``VoiceConverter``: every session's voice chunks, batched across sessions in one call.

``convert`` takes one :class:`~mirage.voice.convert.VoiceChunk` per call (a
session's 20 ms of 48 kHz mono audio, the voice chosen, and the stream state
its previous reply returned) and runs them in batches: the DSP disguise
processes all DSP chunks of a batch in one vectorised pass; RVC chunks go
through ContentVec, the pitch extractor and their generator, grouped by
generator. The replica keeps no per-session state (it travels with each call),
so any replica can serve any chunk and a restart costs only the chunk in
flight, which the ingress then disguises locally (mirage/voice/stream.py).

Batch size and wait come from ``user_config`` through :meth:`VoiceConverter.reconfigure`
(a short default wait, 2 ms, against a 20 ms chunk period). A batch runs on the
replica's event loop by default (``compute_in_thread: false``), like the face
deployments; a DSP batch of 8 takes about 3 ms on one core here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field
from ray import serve

from deployments.detector import BatchingConfig, run_batch
from deployments.logs import enable_info_logs
from deployments.metrics import BatchMetrics
from mirage.voice.config import VoiceSelection, parse_voice
from mirage.voice.convert import VoiceChunk, VoiceConverterCore, VoiceCoreConfig, VoiceResult

logger = logging.getLogger(__name__)

VOICE_MAX_BATCH_SIZE = 16
VOICE_BATCH_WAIT_S = 0.002


class VoiceBatchingConfig(BatchingConfig):
    """``user_config`` of the voice deployment: the face deployments' fields, audio-sized defaults."""

    max_batch_size: int = Field(VOICE_MAX_BATCH_SIZE, ge=1, le=64)
    batch_wait_timeout_s: float = Field(VOICE_BATCH_WAIT_S, ge=0.0, le=1.0)


class ChunkCounters:
    """Per-item outcomes of this replica (what a batch-level metric cannot show): by converter, errors, resets."""

    def __init__(self, export: bool = True) -> None:
        self._lock = threading.Lock()
        self.by_converter: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.resets = 0
        self._export = export
        self._ray: tuple[Any, Any] | None = None

    def _metrics(self) -> tuple[Any, Any] | None:
        if not self._export:
            return None
        if self._ray is None:
            from ray.serve import metrics

            self._ray = (
                metrics.Counter("mirage_voice_chunks", description="voice: chunks converted.", tag_keys=("converter",)),
                metrics.Counter("mirage_voice_chunk_errors", description="voice: chunks answered with an error.", tag_keys=("code",)),
            )
        return self._ray

    def record(self, results: list[VoiceResult]) -> None:
        with self._lock:
            for r in results:
                if r.error is not None:
                    self.errors[r.error] = self.errors.get(r.error, 0) + 1
                else:
                    self.by_converter[r.converter] = self.by_converter.get(r.converter, 0) + 1
                self.resets += int(r.reset)
        ray_metrics = self._metrics()
        if ray_metrics is not None:
            chunks, errors = ray_metrics
            for r in results:
                if r.error is not None:
                    errors.inc(tags={"code": r.error})
                else:
                    chunks.inc(tags={"converter": r.converter})

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"chunks": dict(self.by_converter), "errors": dict(self.errors), "state_resets": self.resets}


def _with_model_settings(config: VoiceCoreConfig, env: Mapping[str, str]) -> VoiceCoreConfig:
    """The replica's edge: the model store and runtime settings from its environment, where unset."""
    if not config.rvc:
        return config
    from mirage.runtime.select import RuntimeConfig  # onnxruntime stays off the DSP-only path
    from mirage.weights.provision import ProvisionConfig

    return dataclasses.replace(
        config,
        provision=config.provision or ProvisionConfig.from_env(env),
        runtime=config.runtime or RuntimeConfig.from_env(env),
    )


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=4 * VOICE_MAX_BATCH_SIZE,
    health_check_period_s=10.0,
    health_check_timeout_s=30.0,
)
class VoiceConverter:
    def __init__(self, config: VoiceCoreConfig | None = None) -> None:
        enable_info_logs()
        self.core = VoiceConverterCore(_with_model_settings(config or VoiceCoreConfig(), os.environ))
        self._metrics = BatchMetrics("voice")
        self._counters = ChunkCounters()
        self._batching = VoiceBatchingConfig.model_validate({})
        logger.info(
            "VoiceConverter ready: DSP disguise (%.0f ms algorithmic latency); RVC %s",
            self.core.dsp.latency_ms,
            "available" if self.core.rvc is not None else f"unavailable ({self.core.rvc_reason})",
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` (``max_batch_size``, ``batch_wait_timeout_s``, ``compute_in_thread``)."""
        cfg = VoiceBatchingConfig.model_validate(user_config or {})
        self.convert.set_max_batch_size(cfg.max_batch_size)  # type: ignore[attr-defined]
        self.convert.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self._batching = cfg
        logger.info("VoiceConverter batching: %s", cfg.describe())

    @serve.batch(max_batch_size=VOICE_MAX_BATCH_SIZE, batch_wait_timeout_s=VOICE_BATCH_WAIT_S)
    async def convert(self, items: list[VoiceChunk]) -> list[VoiceResult]:
        results = await run_batch(self._metrics, "convert", self.core.convert_batch, items, self._batching.compute_in_thread)
        self._counters.record(results)
        return results

    async def convert_many(self, items: list[VoiceChunk]) -> list[VoiceResult]:
        """Several sessions' chunks in one call (an ingress gathers them: ``mirage.voice.gather``), batched as ``convert``'s."""
        return list(await asyncio.gather(*(self.convert(item) for item in items)))

    async def available_voices(self) -> list[str]:
        """``off``, the presets, ``custom`` and ``rvc:NAME`` for each generator this replica can load (for ``/config``)."""
        return self.core.available_voices()

    async def latency_ms(self, voice: str = "disguise") -> float:
        """Algorithmic latency of a voice on this replica (the ingress adds it to the audio path's delay)."""
        selection: VoiceSelection = parse_voice(voice)
        return self.core.latency_ms(selection)

    async def stats(self) -> dict[str, Any]:
        return {
            "deployment": "VoiceConverter",
            "voices": self.core.available_voices(),
            "rvc_reason": self.core.rvc_reason or None,
            "dsp_latency_ms": self.core.dsp.latency_ms,
            "batching": self._batching.model_dump(),
            "methods": self._metrics.snapshot(),
            **self._counters.snapshot(),
        }

    async def check_health(self) -> None:
        """Unhealthy when the batching loop died or the disguise stopped answering."""
        if not await self.convert._is_batching_task_alive():  # type: ignore[attr-defined]
            raise RuntimeError("the convert batching loop is not running")
        probe = VoiceChunk(np.zeros(self.core.config.sample_rate // 50, np.float32), parse_voice("disguise"))
        result = (await asyncio.to_thread(self.core.convert_batch, [probe]))[0]
        if not result.ok:
            raise RuntimeError(f"the DSP disguise failed its probe ({result.error})")
