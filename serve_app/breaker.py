"""Per-stage circuit breakers: a dead model replica costs one deadline, not one per frame.

Without a breaker, every frame of every session waits the full deadline
(``deadline_ms``) on a replica that is gone before it falls back; a killed
detector left sessions at 2-4 fps for seconds. A :class:`CircuitBreaker`
opens after ``failures_to_open`` consecutive failures (errors or timeouts):
while open, calls fail at once with :class:`CircuitOpenError`, so the frame
goes out under the fallback policy at the camera's frame rate. After the
back-off one call is let through as a probe; success closes the breaker, a
failure re-opens it with a doubled back-off (up to ``max_backoff_s``).

One :class:`StageBreakers` per ingress replica is shared by all its sessions,
so the first session to notice a dead stage spares the others. Everything runs
on the replica's event loop (no locks). No Ray imports; the clock is injected.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")

BreakerState = Literal["closed", "open", "half_open"]


class CircuitOpenError(Exception):
    """The stage is considered down: the call was not made (the caller falls back)."""

    def __init__(self, stage: str, retry_in_s: float) -> None:
        super().__init__(f"{stage} is unavailable; next probe in {retry_in_s:.2f} s")
        self.stage = stage
        self.retry_in_s = retry_in_s


@dataclass(frozen=True)
class BreakerConfig:
    failures_to_open: int = 2
    backoff_s: float = 0.25
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        if self.failures_to_open < 1:
            raise ValueError("failures_to_open must be at least 1")
        if not 0 < self.backoff_s <= self.max_backoff_s:
            raise ValueError("need 0 < backoff_s <= max_backoff_s")


def _discard(awaitable: Awaitable[Any]) -> None:
    """Drop an awaitable that will not be awaited, without 'never awaited' or 'never retrieved' noise."""
    if inspect.iscoroutine(awaitable):
        awaitable.close()
    elif isinstance(awaitable, asyncio.Future):
        awaitable.cancel()
        # A cancelled gather() may end with its children's CancelledError as an exception: retrieve it.
        awaitable.add_done_callback(lambda f: None if f.cancelled() else f.exception())


class CircuitBreaker:
    """One stage's breaker (closed → open → half-open probe → closed or open again)."""

    def __init__(self, stage: str, config: BreakerConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stage = stage
        self.config = config or BreakerConfig()
        self._clock = clock
        self.state: BreakerState = "closed"
        self._failures = 0
        self._backoff = self.config.backoff_s
        self._retry_at = 0.0
        self._probing = False
        self.opened = 0  # times the breaker opened
        self.short_circuited = 0  # calls refused at once

    def allow(self) -> bool:
        """Whether a call may go out now (in half-open, only the one probe)."""
        if self.state == "closed":
            return True
        if self.state == "open" and self._clock() >= self._retry_at:
            self.state = "half_open"
            self._probing = False
        if self.state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        self.state = "closed"
        self._failures = 0
        self._probing = False
        self._backoff = self.config.backoff_s

    def record_failure(self) -> None:
        if self.state == "half_open":
            self._backoff = min(self._backoff * 2.0, self.config.max_backoff_s)
            self._open()
            return
        self._failures += 1
        if self.state == "closed" and self._failures >= self.config.failures_to_open:
            self._open()

    def _open(self) -> None:
        self.state = "open"
        self._probing = False
        self._retry_at = self._clock() + self._backoff
        self.opened += 1

    def retry_in_s(self) -> float:
        return max(0.0, self._retry_at - self._clock()) if self.state != "closed" else 0.0

    async def call(self, awaitable: Awaitable[T], timeout_s: float | None) -> T:
        """Await ``awaitable`` within ``timeout_s``, or fail at once with CircuitOpenError when open.

        Timeouts and errors count as failures; cancellation from outside (the session ending)
        counts as neither.
        """
        if not self.allow():
            _discard(awaitable)
            self.short_circuited += 1
            raise CircuitOpenError(self.stage, self.retry_in_s())
        try:
            async with asyncio.timeout(timeout_s):
                result = await awaitable
        except asyncio.CancelledError:
            if self.state == "half_open":
                self._probing = False  # let the next call probe
            raise
        except Exception:
            self.record_failure()
            raise
        self.record_success()
        return result

    def describe(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "opened": self.opened,
            "short_circuited": self.short_circuited,
            "retry_in_s": round(self.retry_in_s(), 3),
        }


@dataclass
class StageBreakers:
    """The breakers of one ingress replica, one per stage name, created on first use."""

    config: BreakerConfig = field(default_factory=BreakerConfig)
    clock: Callable[[], float] = time.monotonic
    _by_stage: dict[str, CircuitBreaker] = field(default_factory=dict)

    def __getitem__(self, stage: str) -> CircuitBreaker:
        breaker = self._by_stage.get(stage)
        if breaker is None:
            breaker = self._by_stage[stage] = CircuitBreaker(stage, self.config, self.clock)
        return breaker

    def describe(self) -> dict[str, dict[str, Any]]:
        return {stage: b.describe() for stage, b in sorted(self._by_stage.items())}
