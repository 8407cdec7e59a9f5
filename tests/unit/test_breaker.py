"""serve_app.breaker: a dead stage costs one deadline, then calls fail at once until a probe succeeds."""

from __future__ import annotations

import asyncio
import gc
import time
import warnings

import pytest

from serve_app.breaker import BreakerConfig, CircuitBreaker, CircuitOpenError, StageBreakers


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def _ok() -> str:
    return "ok"


async def _boom() -> str:
    raise RuntimeError("replica died")


async def _hang() -> str:
    await asyncio.sleep(10)
    return "late"


def test_opens_after_consecutive_failures_and_probes_after_backoff() -> None:
    clock = Clock()
    b = CircuitBreaker("detect", BreakerConfig(failures_to_open=2, backoff_s=0.5, max_backoff_s=2.0), clock)

    async def run() -> None:
        for _ in range(2):
            with pytest.raises(RuntimeError):
                await b.call(_boom(), 1.0)
        assert b.state == "open"
        with pytest.raises(CircuitOpenError):
            await b.call(_ok(), 1.0)
        clock.t = 0.6  # back-off over: one probe goes through
        with pytest.raises(RuntimeError):
            await b.call(_boom(), 1.0)
        assert b.state == "open" and b.retry_in_s() == pytest.approx(1.0)  # back-off doubled
        clock.t = 1.7
        assert await b.call(_ok(), 1.0) == "ok"
        assert b.state == "closed"
        # Closed again with the initial back-off: a single failure does not open it.
        with pytest.raises(RuntimeError):
            await b.call(_boom(), 1.0)
        assert b.state == "closed"
        assert await b.call(_ok(), 1.0) == "ok"

    asyncio.run(run())
    assert b.opened == 2 and b.short_circuited == 1


def test_only_one_probe_at_a_time() -> None:
    clock = Clock()
    b = CircuitBreaker("swap", BreakerConfig(failures_to_open=1, backoff_s=0.1, max_backoff_s=0.1), clock)
    b.record_failure()
    clock.t = 0.2
    assert b.allow() is True
    assert b.allow() is False  # the probe is in flight
    b.record_success()
    assert b.allow() is True


def test_a_dead_stage_falls_back_at_full_frame_rate() -> None:
    """30 frames against a stage that never answers: one deadline, then immediate refusals."""
    b = CircuitBreaker("detect", BreakerConfig(failures_to_open=1, backoff_s=5.0, max_backoff_s=5.0))

    async def run() -> float:
        start = time.perf_counter()
        for _ in range(30):
            with pytest.raises((TimeoutError, CircuitOpenError)):
                await b.call(_hang(), 0.2)
        return time.perf_counter() - start

    elapsed = asyncio.run(run())
    assert elapsed < 0.2 + 0.15, f"30 frames took {elapsed:.2f} s: the fallback waited on a dead stage"
    assert b.short_circuited == 29


def test_refused_calls_leave_no_never_awaited_or_unretrieved_noise() -> None:
    b = CircuitBreaker("landmarks", BreakerConfig(failures_to_open=1, backoff_s=5.0, max_backoff_s=5.0))
    b.record_failure()
    loop_errors: list[dict] = []  # type: ignore[type-arg]

    async def run() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: loop_errors.append(ctx))
        with pytest.raises(CircuitOpenError):
            await b.call(_boom(), 1.0)
        with pytest.raises(CircuitOpenError):
            await b.call(asyncio.gather(_boom(), _boom()), 1.0)
        await asyncio.sleep(0.05)

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        asyncio.run(run())
        gc.collect()
    assert loop_errors == []


def test_cancellation_is_not_a_failure() -> None:
    b = CircuitBreaker("swap", BreakerConfig(failures_to_open=1))

    async def run() -> None:
        task = asyncio.ensure_future(b.call(_hang(), 5.0))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert b.state == "closed"


def test_stage_breakers_are_per_stage_and_shared() -> None:
    breakers = StageBreakers(BreakerConfig(failures_to_open=1))
    breakers["detect"].record_failure()
    assert breakers["detect"].state == "open" and breakers["swap"].state == "closed"
    assert breakers["detect"] is breakers["detect"]
    assert set(breakers.describe()) == {"detect", "swap"}
