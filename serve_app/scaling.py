"""Scaling events as an ingress replica sees them, for ``/metrics`` and Prometheus.

Serve's controller decides the replica counts (serve_app.routing's policy for the ingress, Serve's
own for the model deployments). Every ingress replica polls the controller's view of its
application every ``interval_s`` (the same data ``serve status -v`` shows), keeps each
deployment's running/target replicas, and records every change of the target or the running
count as an event (time, deployment, from, to). ``/metrics`` shows them under ``scaling``;
Prometheus gets ``mirage_replicas{scaled,kind}`` and ``mirage_scaling_events{scaled,direction}``
(``scaled``: the deployment's name; Ray Serve reserves the ``deployment`` tag for the replica's own).
Ray drops a gauge that has not been set for about two export intervals (~25 s here), so the
watcher sets its gauges on every poll, and ``on_tick`` lets the ingress set its own (open sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mirage.loop_task import LoopTask

logger = logging.getLogger(__name__)


def _state(value: Any) -> str:
    return str(getattr(value, "value", value))


def deployment_counts(details: Mapping[str, Any], app_name: str | None) -> dict[str, dict[str, int]]:
    """{deployment: {"running", "target", "starting", "stopping"}} of one application in Serve's details."""
    apps = details.get("applications") or {}
    app = apps.get(app_name) if app_name else (next(iter(apps.values())) if len(apps) == 1 else None)
    if not isinstance(app, Mapping):
        return {}
    out: dict[str, dict[str, int]] = {}
    for name, dep in (app.get("deployments") or {}).items():
        states = [_state(r.get("state")) for r in dep.get("replicas") or []]
        out[str(name)] = {
            "running": states.count("RUNNING"),
            "starting": sum(1 for s in states if s in ("STARTING", "PENDING_MIGRATION", "RECOVERING")),
            "stopping": states.count("STOPPING"),
            "target": int(dep.get("target_num_replicas") or 0),
        }
    return out


def changes(before: Mapping[str, Mapping[str, int]], after: Mapping[str, Mapping[str, int]], now: float) -> list[dict[str, Any]]:
    """Scaling events between two views: a deployment's target or running count changed."""
    events = []
    for name, counts in after.items():
        old = before.get(name)
        if old is None:
            continue
        for kind in ("target", "running"):
            if counts[kind] != old[kind]:
                events.append({
                    "at": round(now, 3), "deployment": name, "kind": kind,
                    "from": old[kind], "to": counts[kind],
                    "direction": "up" if counts[kind] > old[kind] else "down",
                })
    return events


@dataclass
class ScalingLog:
    """The latest counts and the recent events (pure: fed by :class:`ScalingWatcher`)."""

    keep: int = 50
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    events: deque[dict[str, Any]] = field(default_factory=deque)
    updated_at: float | None = None

    def update(self, counts: dict[str, dict[str, int]], now: float) -> list[dict[str, Any]]:
        new = changes(self.counts, counts, now) if self.counts else []
        for event in new:
            self.events.append(event)
            while len(self.events) > self.keep:
                self.events.popleft()
        self.counts = counts
        self.updated_at = now
        return new

    def report(self) -> dict[str, Any]:
        return {"deployments": self.counts, "events": list(self.events), "updated_at": self.updated_at}


async def _serve_details() -> dict[str, Any]:
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        raise RuntimeError("no Serve controller client in this process")
    details: dict[str, Any] = await client._controller.get_serve_instance_details.remote()
    return details


class ScalingWatcher:
    """Polls Serve's view of this replica's application and keeps a :class:`ScalingLog`."""

    def __init__(
        self,
        interval_s: float = 5.0,
        details: Callable[[], Awaitable[dict[str, Any]]] = _serve_details,
        app_name: str | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self._on_tick = on_tick
        self.log = ScalingLog()
        self._details = details
        self._app_name = app_name
        self._task = LoopTask(self._run)
        self._gauge: Any = None
        self._counter: Any = None

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    def _metrics(self) -> None:
        if self._gauge is not None:
            return
        with contextlib.suppress(Exception):
            from ray.serve import metrics

            self._gauge = metrics.Gauge(
                "mirage_replicas", description="Replicas of each deployment (running / target).",
                tag_keys=("scaled", "kind"),  # type: ignore[arg-type]  # Ray annotates tag_keys as tuple[str]
            )
            self._counter = metrics.Counter(
                "mirage_scaling_events", description="Changes of a deployment's target or running replicas.",
                tag_keys=("scaled", "direction"),  # type: ignore[arg-type]
            )

    async def poll_once(self) -> list[dict[str, Any]]:
        details = await asyncio.wait_for(self._details(), 10.0)
        app_name = self._app_name
        if app_name is None:
            with contextlib.suppress(Exception):
                from ray import serve

                app_name = serve.get_replica_context().app_name
        new = self.log.update(deployment_counts(details, app_name), time.time())
        self._metrics()
        with contextlib.suppress(Exception):
            for name, counts in self.log.counts.items():
                for kind in ("running", "target"):
                    self._gauge.set(counts[kind], tags={"scaled": name, "kind": kind})
            for event in new:
                if event["kind"] == "target":
                    self._counter.inc(tags={"scaled": event["deployment"], "direction": event["direction"]})
        for event in new:
            logger.info("scaling: %s %s %d -> %d", event["deployment"], event["kind"], event["from"], event["to"])
        return new

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self.poll_once()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an internal API change must not hurt sessions
                failures += 1
                if failures == 3:
                    logger.warning("scaling watcher: cannot read Serve's state (%s); still trying", type(exc).__name__)
            if self._on_tick is not None:
                try:
                    self._on_tick()
                except Exception as exc:  # noqa: BLE001 - a metrics hiccup must not stop the watcher
                    logger.debug("scaling watcher tick failed (%s)", type(exc).__name__)
            await asyncio.sleep(self.interval_s)
