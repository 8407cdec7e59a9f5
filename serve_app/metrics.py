"""Rolling frame statistics for the JSON endpoints, and the Prometheus side through Ray.

:class:`RollingStats` keeps the last few hundred frames of one ingress
replica: ``/metrics`` (frames, average latency, faces, dropped frames,
per-stage ms), ``/metrics/pacing`` (latency EMA and pacing hint, as the
original product defined them) and ``/metrics/stage_histogram`` (periodic
snapshots of per-stage latency distributions). :class:`RayFrameMetrics`
mirrors the same events into ``ray.serve.metrics`` so Prometheus sees them.
Nothing here holds image or identity data.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

#: Stages timed per frame, in pipeline order ("total" is arrival → frame ready to send).
STAGES = ("convert", "detect", "landmarks", "swap", "paste", "total")
#: Histogram bucket upper bounds in ms (Prometheus and the JSON snapshots).
LATENCY_BUCKETS_MS = (2.0, 5.0, 10.0, 20.0, 35.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0, 1000.0)


@dataclass(frozen=True)
class FrameRecord:
    """One processed frame: where its time went and what happened to it."""

    stages_ms: Mapping[str, float]
    faces: int
    fallback: str | None = None  # the policy applied when a stage failed, else None


def pacing_hint(target_frame_ms: float, latency_ema_ms: float) -> float:
    """Target frame time over the latency EMA: ~1 balanced, <0.85 overloaded, >1.15 headroom."""
    if latency_ema_ms <= 0:
        return 1.0
    return target_frame_ms / latency_ema_ms


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = (len(sorted_values) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    if lo == hi:
        return sorted_values[int(k)]
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def bucket_counts(values: Iterable[float], bounds: tuple[float, ...] = LATENCY_BUCKETS_MS) -> list[int]:
    """Counts per bucket (value <= bound), plus one overflow bucket."""
    counts = [0] * (len(bounds) + 1)
    for v in values:
        for i, b in enumerate(bounds):
            if v <= b:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
    return counts


class RollingStats:
    """Thread-safe rolling statistics of one replica's frames (all sessions together)."""

    def __init__(
        self,
        window: int = 300,
        ema_alpha: float = 0.1,
        target_fps: float = 30.0,
        snapshot_every: int = 150,
        keep_snapshots: int = 10,
    ) -> None:
        self._lock = threading.Lock()
        self._window: deque[FrameRecord] = deque(maxlen=window)
        self._alpha = ema_alpha
        self._target_ms = 1000.0 / target_fps
        self._snapshot_every = snapshot_every
        self._snapshots: deque[dict[str, Any]] = deque(maxlen=keep_snapshots)
        self.frames = 0
        self.dropped = 0
        self.fallback_frames = 0
        self.errors = 0
        self.swap_faces_last = 0
        self.latency_ema_ms = 0.0
        self.started = time.time()

    def record_frame(self, rec: FrameRecord) -> None:
        with self._lock:
            self._window.append(rec)
            self.frames += 1
            self.swap_faces_last = rec.faces
            if rec.fallback is not None:
                self.fallback_frames += 1
            total = float(rec.stages_ms.get("total", 0.0))
            if self.frames == 1:
                self.latency_ema_ms = total
            else:
                self.latency_ema_ms += self._alpha * (total - self.latency_ema_ms)
            if self.frames % self._snapshot_every == 0:
                self._snapshots.append(self._histogram_locked())

    def record_dropped(self, count: int = 1) -> None:
        with self._lock:
            self.dropped += count

    def record_error(self) -> None:
        with self._lock:
            self.errors += 1

    def _stage_values(self) -> dict[str, list[float]]:
        values: dict[str, list[float]] = {stage: [] for stage in STAGES}
        for rec in self._window:
            for stage, ms in rec.stages_ms.items():
                values.setdefault(stage, []).append(float(ms))
        return values

    def _histogram_locked(self) -> dict[str, Any]:
        stages = {}
        for stage, vals in self._stage_values().items():
            if not vals:
                continue
            ordered = sorted(vals)
            stages[stage] = {
                "count": len(ordered),
                "p50_ms": round(_percentile(ordered, 0.5), 2),
                "p90_ms": round(_percentile(ordered, 0.9), 2),
                "p99_ms": round(_percentile(ordered, 0.99), 2),
                "max_ms": round(ordered[-1], 2),
                "buckets": bucket_counts(ordered),
            }
        return {"time": time.time(), "frames": self.frames, "stages": stages}

    def snapshot(self, sessions: int) -> dict[str, Any]:
        """The ``/metrics`` body."""
        with self._lock:
            totals = [float(r.stages_ms.get("total", 0.0)) for r in self._window]
            stage_ms = {
                stage: round(sum(vals) / len(vals), 2) for stage, vals in self._stage_values().items() if vals
            }
            return {
                "frames": self.frames,
                "avg_latency_ms": round(sum(totals) / len(totals), 2) if totals else 0.0,
                "swap_faces_last": self.swap_faces_last,
                "sessions": sessions,
                "dropped_frames": self.dropped,
                "fallback_frames": self.fallback_frames,
                "errors": self.errors,
                "stage_ms": stage_ms,
                "window_frames": len(self._window),
                "uptime_s": round(time.time() - self.started, 1),
            }

    def pacing(self) -> dict[str, Any]:
        """The ``/metrics/pacing`` body."""
        with self._lock:
            ema = self.latency_ema_ms
            return {
                "latency_ema_ms": round(ema, 2),
                "target_frame_ms": round(self._target_ms, 2),
                "pacing_hint": round(pacing_hint(self._target_ms, ema), 3),
                "frames": self.frames,
            }

    def stage_histogram(self) -> dict[str, Any]:
        """The ``/metrics/stage_histogram`` body: the current window and the periodic snapshots."""
        with self._lock:
            return {
                "buckets_ms": list(LATENCY_BUCKETS_MS) + ["+Inf"],
                "snapshot_every_frames": self._snapshot_every,
                "current": self._histogram_locked(),
                "snapshots": list(self._snapshots),
            }


class FrameMetricsSink(Protocol):
    """Where per-frame events go besides :class:`RollingStats` (Prometheus through Ray, or nothing)."""

    def frame(self, rec: FrameRecord) -> None: ...

    def dropped(self, count: int) -> None: ...

    def sessions(self, count: int) -> None: ...

    def refused(self, reason: str) -> None: ...

    def spoofed(self, count: int) -> None: ...


class NullSink:
    def frame(self, rec: FrameRecord) -> None:
        pass

    def dropped(self, count: int) -> None:
        pass

    def sessions(self, count: int) -> None:
        pass

    def refused(self, reason: str) -> None:
        pass

    def spoofed(self, count: int) -> None:
        pass


@dataclass
class RayFrameMetrics:
    """The ingress's Prometheus metrics (``ray_mirage_*``), created inside the replica."""

    _frames: Any = field(init=False)
    _fallback: Any = field(init=False)
    _dropped: Any = field(init=False)
    _stage: Any = field(init=False)
    _sessions: Any = field(init=False)
    _refused: Any = field(init=False)
    _spoofed: Any = field(init=False)

    def __post_init__(self) -> None:
        from ray.serve import metrics

        self._frames = metrics.Counter("mirage_frames", description="Frames processed by the ingress.")
        self._fallback = metrics.Counter(
            "mirage_fallback_frames",
            description="Frames sent under the fallback policy (a stage failed or was late).",
            tag_keys=("policy",),
        )
        self._dropped = metrics.Counter(
            "mirage_dropped_frames", description="Camera frames skipped by the latest-frame pump."
        )
        self._stage = metrics.Histogram(
            "mirage_stage_latency_ms",
            description="Per-frame latency of each pipeline stage in the ingress, ms.",
            boundaries=list(LATENCY_BUCKETS_MS),
            tag_keys=("stage",),
        )
        self._sessions = metrics.Gauge("mirage_sessions", description="Open sessions on this ingress replica.")
        self._refused = metrics.Counter(
            "mirage_sessions_refused", description="Sessions refused.", tag_keys=("reason",)
        )
        self._spoofed = metrics.Counter(
            "mirage_spoofed_datagrams",
            description="DTLS/SRTP/RTP datagrams dropped because ICE had not validated their source address.",
        )

    def frame(self, rec: FrameRecord) -> None:
        self._frames.inc()
        if rec.fallback is not None:
            self._fallback.inc(tags={"policy": rec.fallback})
        for stage, ms in rec.stages_ms.items():
            self._stage.observe(float(ms), tags={"stage": stage})

    def dropped(self, count: int) -> None:
        if count > 0:
            self._dropped.inc(count)

    def sessions(self, count: int) -> None:
        self._sessions.set(count)

    def refused(self, reason: str) -> None:
        self._refused.inc(tags={"reason": reason})

    def spoofed(self, count: int) -> None:
        if count > 0:
            self._spoofed.inc(count)
