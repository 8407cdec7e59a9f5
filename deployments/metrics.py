"""Metrics of a batched model method: latency, batch size, errors.

Exported to Prometheus through ``ray.serve.metrics`` (Serve adds the
deployment/replica/application tags) and kept as small in-process counters
that a deployment's ``stats()`` method returns, so tests and ``/metrics``
readers need no Prometheus.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

#: Batch-size histogram bounds (bucket i counts batches of size <= bound).
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
#: Model-call latency bounds in ms.
LATENCY_BUCKETS_MS = (1.0, 2.0, 5.0, 10.0, 20.0, 35.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0)


@dataclass
class MethodStats:
    """In-process counters of one batched method."""

    batches: int = 0
    items: int = 0
    errors: int = 0
    max_batch: int = 0
    total_ms: float = 0.0
    sizes: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "items": self.items,
            "errors": self.errors,
            "max_batch_size": self.max_batch,
            "mean_batch_size": round(self.items / self.batches, 3) if self.batches else 0.0,
            "mean_batch_ms": round(self.total_ms / self.batches, 3) if self.batches else 0.0,
            "batch_size_histogram": {str(k): v for k, v in sorted(self.sizes.items())},
        }


class BatchMetrics:
    """Per-method latency/batch-size/error metrics for one deployment replica.

    The Ray metric objects are created lazily on first use, inside the
    replica; with ``export=False`` (unit tests without Ray) only the
    in-process counters are kept.
    """

    def __init__(self, deployment: str, export: bool = True) -> None:
        self._deployment = deployment
        self._export = export
        self._lock = threading.Lock()
        self._stats: dict[str, MethodStats] = {}
        self._ray: tuple[Any, Any, Any, Any] | None = None

    def _ray_metrics(self) -> tuple[Any, Any, Any, Any] | None:
        if not self._export:
            return None
        if self._ray is None:
            from ray.serve import metrics

            prefix = f"mirage_{self._deployment}"
            self._ray = (
                metrics.Histogram(
                    f"{prefix}_batch_latency_ms",
                    description=f"{self._deployment}: model time per batch, ms.",
                    boundaries=list(LATENCY_BUCKETS_MS),
                    tag_keys=("method",),
                ),
                metrics.Histogram(
                    f"{prefix}_batch_size",
                    description=f"{self._deployment}: items per batch.",
                    boundaries=[float(b) for b in BATCH_SIZE_BUCKETS],
                    tag_keys=("method",),
                ),
                metrics.Counter(
                    f"{prefix}_errors",
                    description=f"{self._deployment}: failed batches.",
                    tag_keys=("method",),
                ),
                metrics.Counter(
                    f"{prefix}_items",
                    description=f"{self._deployment}: items processed.",
                    tag_keys=("method",),
                ),
            )
        return self._ray

    def record(self, method: str, batch_size: int, ms: float, ok: bool) -> None:
        with self._lock:
            s = self._stats.setdefault(method, MethodStats())
            s.batches += 1
            s.items += batch_size
            s.total_ms += ms
            s.max_batch = max(s.max_batch, batch_size)
            s.sizes[batch_size] = s.sizes.get(batch_size, 0) + 1
            if not ok:
                s.errors += 1
        ray_metrics = self._ray_metrics()
        if ray_metrics is not None:
            latency, size, errors, items = ray_metrics
            tags = {"method": method}
            latency.observe(ms, tags=tags)
            size.observe(float(batch_size), tags=tags)
            items.inc(batch_size, tags=tags)
            if not ok:
                errors.inc(tags=tags)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {method: s.as_dict() for method, s in sorted(self._stats.items())}
