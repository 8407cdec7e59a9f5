"""Sessions go where there is room, the ingress autoscales on sessions, and a draining replica's
sessions move by themselves (real Ray + Serve + aiortc over 127.0.0.1).

A second application ("mirage_routing", at /routing) runs beside the shared served app, on the
same Ray and Serve: a cap of 2 sessions per ingress replica, 1..2 replicas scaled by
serve_app.routing.SessionAutoscalingPolicy, the session-aware router, a retry hint of 2 s.

One test walks the whole story, in order (each step needs the previous one's state):
4 sessions opened together are all admitted within 30 s, some after a retry (a second replica
comes up); a fifth is refused at once with the hint; closing the two sessions on the first
replica scales down, Serve stops the newer replica, and its two sessions reconnect to the first
replica without anyone asking ("server_shutdown", close 1001).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from mirage.client.retry import RetryPolicy, RetryStats, open_with_retry, reconnect_delay
from mirage.client.session import MirageSession, SessionRefused
from tests.integration.peer import client_config
from tests.integration.served import API_KEY, ServedApp, http

APP = "mirage_routing"
PREFIX = "/routing"
CAP = 2
RETRY_AFTER_S = 2.0
FPS = 5.0


@dataclass(frozen=True)
class RoutedApp:
    url: str

    def ingress_replicas(self) -> list[dict[str, Any]]:
        from ray import serve

        status = serve.status().applications[APP].deployments["MirageIngress"]
        return [{"state": k, "count": v} for k, v in status.replica_states.items()]

    def running(self) -> int:
        from ray import serve

        states = serve.status().applications[APP].deployments["MirageIngress"].replica_states
        return int(states.get("RUNNING", 0))


@pytest.fixture(scope="module")
def routed(served: ServedApp) -> Iterator[RoutedApp]:
    from ray import serve

    from serve_app.app import AppArgs, build_app

    args = AppArgs.model_validate(
        {
            "require_api_key": True,
            "api_key": API_KEY,
            "detector": {"num_cpus": 0.05, "batch_wait_timeout_s": 0.005},
            "swapper": {"num_cpus": 0.05, "batch_wait_timeout_s": 0.005},
            "voice": {"num_cpus": 0.05},
            "enhancer": {"num_cpus": 0.05},
            "ingress": {
                "num_cpus": 0.05,
                "max_sessions_per_replica": CAP,
                "graceful_shutdown_timeout_s": 8.0,
                "retry_after_s": RETRY_AFTER_S,
                "routing_stats_period_s": 0.5,
                # No spare slots here: two sessions fit one replica, so closing two of four scales down.
                "spare_slots": 0,
                "autoscaling_config": {
                    "min_replicas": 1, "max_replicas": 2, "initial_replicas": 1,
                    "metrics_interval_s": 0.5, "look_back_period_s": 1.5,
                    "upscale_delay_s": 0.0, "downscale_delay_s": 4.0,
                },
            },
            "session": {"idle_timeout_s": 8.0, "max_fps": 15},
        }
    )
    serve.run(build_app(args), name=APP, route_prefix=PREFIX, blocking=False)
    url = served.url + PREFIX
    deadline = time.monotonic() + 180
    while True:
        with contextlib.suppress(OSError):
            status, body = http(url + "/health", timeout=5)
            if status == 200 and isinstance(body, dict) and body.get("status") == "ok":
                break
        if time.monotonic() > deadline:
            raise RuntimeError("the routing app did not become healthy within 180 s")
        time.sleep(0.5)
    try:
        yield RoutedApp(url=url)
    finally:
        serve.delete(APP)


@dataclass
class Mover:
    """One person's session: retries while full, moves at once when its replica goes away."""

    url: str
    index: int
    retry: RetryStats = field(default_factory=RetryStats)
    session: MirageSession | None = None
    session_ids: list[str] = field(default_factory=list)
    gaps_ms: list[float] = field(default_factory=list)
    admitted_after_s: float | None = None
    error: str | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _open(self) -> MirageSession:
        async def once() -> MirageSession:
            session = MirageSession(client_config(self.url, API_KEY, fps=FPS, keep_frames=0))
            await session.connect()
            return session

        session = await open_with_retry(once, RetryPolicy(initial_s=0.5, max_s=5.0, give_up_after_s=60.0), stats=self.retry)
        self.session_ids.append(str(session.session_id))
        return session

    async def run(self, started: float) -> None:
        try:
            self.session = await self._open()
            self.admitted_after_s = time.monotonic() - started
            while not self._stop.is_set():
                ended = asyncio.ensure_future(self.session.ended.wait())
                stop = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait({ended, stop}, return_when=asyncio.FIRST_COMPLETED)
                for task in (ended, stop):
                    task.cancel()
                if self._stop.is_set():
                    break
                old = self.session
                saw = any(e.get("event") == "server_shutdown" for e in old.events)
                if reconnect_delay(old.close_code, saw) is None:
                    self.error = f"session ended without the server going away (close {old.close_code})"
                    return
                last = old.stats.last_at
                await old.close()
                self.session = await self._open()
                await self.session.wait_frames(1, timeout=20)
                if last is not None and self.session.stats.first_at is not None:
                    self.gaps_ms.append((self.session.stats.first_at - last) * 1000.0)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = f"{type(exc).__name__}: {exc}"

    async def close(self) -> None:
        self._stop.set()
        if self.session is not None:
            await self.session.close()


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:.0f} s")
        time.sleep(0.25)


async def _wait_async(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:.0f} s")
        await asyncio.sleep(0.25)


def test_sessions_fill_two_replicas_overflow_is_refused_with_a_hint_and_drained_sessions_move(routed: RoutedApp) -> None:
    assert routed.running() == 1

    async def story() -> dict[str, Any]:
        started = time.monotonic()
        movers = [Mover(routed.url, i) for i in range(4)]
        tasks = [asyncio.ensure_future(m.run(started)) for m in movers]
        try:
            await _wait_async(lambda: all(m.admitted_after_s is not None or m.error for m in movers), 45, "4 sessions admitted")
            assert not [m.error for m in movers if m.error], [m.error for m in movers]
            admitted = [m.admitted_after_s for m in movers]
            retries = [m.retry.retries for m in movers]
            assert max(a for a in admitted if a is not None) <= 30.0, admitted
            assert sum(retries) >= 1, f"no session needed a retry: {retries}"
            assert routed.running() == 2

            # A fifth, with both replicas full, is refused at once with the hint.
            fifth = MirageSession(client_config(routed.url, API_KEY, fps=FPS, keep_frames=0))
            t0 = time.monotonic()
            with pytest.raises(SessionRefused) as refused:
                await fifth.connect()
            refused_in_s = time.monotonic() - t0
            assert refused.value.code == "server_full"
            assert refused.value.retry_after_s == RETRY_AFTER_S
            assert refused_in_s < 5.0

            for m in movers:
                assert m.session is not None
                await m.session.wait_frames(3, timeout=30)

            # Sessions admitted at once are on the first replica; those that retried on the new one.
            # Close the first replica's: demand fits one replica, Serve stops the newer one, and its
            # sessions move to the first without anyone asking.
            first = [m for m in movers if m.retry.retries == 0]
            moved = [m for m in movers if m.retry.retries > 0]
            for m in first:
                await m.close()
            await _wait_async(lambda: all(len(m.session_ids) >= 2 for m in moved) or any(m.error for m in moved),
                              60, "the drained replica's sessions reconnected")
            assert not [m.error for m in moved if m.error], [m.error for m in moved]
            for m in moved:
                assert m.session is not None
                await m.session.wait_frames(m.session.stats.frames + 5, timeout=30)
            return {
                "admitted_after_s": [round(a or 0, 2) for a in admitted],
                "retries": retries,
                "refused_in_ms": round(refused_in_s * 1000, 1),
                "move_gaps_ms": [round(g, 1) for m in moved for g in m.gaps_ms],
                "moved_sessions": [m.session_ids for m in moved],
            }
        finally:
            for m in movers:
                await m.close()
            await asyncio.gather(*tasks, return_exceptions=True)

    figures = asyncio.run(story())
    print(f"routing story: {figures}")
    _wait_for(lambda: routed.running() == 1, 60, "one ingress replica after the scale-down")

    # /metrics: this replica's slots and refusals, and the scaling events it saw (polled every 5 s).
    def ingress_events() -> list[dict[str, Any]]:
        status, metrics = http(routed.url + "/metrics")
        assert status == 200, metrics
        routing = metrics["routing"]
        assert routing["capacity"] == CAP and routing["admitted_total"] >= 2 and routing["refused_total"] >= 2, routing
        return [e for e in (metrics["scaling"] or {}).get("events", []) if e["deployment"] == "MirageIngress"]

    _wait_for(lambda: {("target", "up"), ("target", "down")} <= {(e["kind"], e["direction"]) for e in ingress_events()},
              20, "/metrics shows the ingress scaling up and down")
