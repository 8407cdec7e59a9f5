"""Client retries (mirage.client.retry): the server's hint, back-off, jitter, and when to give up."""

from __future__ import annotations

import asyncio
import random

import pytest

from mirage.client.retry import RetryPolicy, RetryStats, open_with_retry, plain_message, reconnect_delay, retry_hint
from mirage.client.session import SessionRefused


def test_delay_never_comes_before_the_hint_and_jitter_only_lengthens() -> None:
    policy = RetryPolicy(initial_s=1.0, multiplier=2.0, max_s=15.0, jitter=0.3)
    rng = random.Random(7)
    for attempt in range(6):
        for hint in (None, 0.5, 3.0, 40.0):
            base = min(15.0, 2.0**attempt)
            if hint is not None:
                base = max(base, min(hint, 15.0))
            delay = policy.delay(attempt, hint, rng)
            assert base <= delay <= base * 1.3 + 1e-9


def test_jitter_spreads_clients_refused_together() -> None:
    policy = RetryPolicy(jitter=0.3)
    rng = random.Random(1)
    delays = {round(policy.delay(0, 3.0, rng), 3) for _ in range(20)}
    assert len(delays) > 10 and min(delays) >= 3.0


def test_hint_from_the_message_or_the_close_reason() -> None:
    assert retry_hint(SessionRefused("server_full", "full", 2.5)) == 2.5
    closed = SessionRefused("server_full", "The server is at capacity (2 sessions); please try again later. retry_after_s=3")
    assert retry_hint(closed) == 3.0
    assert plain_message(closed) == "The server is at capacity (2 sessions); please try again later"
    assert retry_hint(SessionRefused("server_full", "full")) is None


def test_going_away_reconnects_at_once() -> None:
    rng = random.Random(3)
    soon = reconnect_delay(1001, False, rng)
    assert soon is not None and 0.0 <= soon <= 0.2
    assert reconnect_delay(1000, True, rng) is not None
    assert reconnect_delay(1000, False, rng) is None
    assert reconnect_delay(None, False, rng) is None


def test_open_with_retry_waits_as_told_then_succeeds() -> None:
    calls: list[int] = []
    waits: list[float] = []

    async def open_once() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise SessionRefused("server_full", "full", 0.01)
        return "session"

    stats = RetryStats()
    policy = RetryPolicy(initial_s=0.01, max_s=0.05, jitter=0.1, give_up_after_s=5.0)
    result = asyncio.run(open_with_retry(open_once, policy, on_wait=lambda s, e: waits.append(s), stats=stats))
    assert result == "session" and stats.attempts == 3 and stats.retries == 2 and len(waits) == 2
    assert all(w >= 0.01 for w in waits) and stats.last_hint_s == 0.01


def test_open_with_retry_does_not_retry_what_waiting_cannot_cure() -> None:
    async def open_once() -> str:
        raise SessionRefused("unauthorized", "wrong key")

    stats = RetryStats()
    with pytest.raises(SessionRefused):
        asyncio.run(open_with_retry(open_once, RetryPolicy(), stats=stats))
    assert stats.attempts == 1 and stats.retries == 0


def test_open_with_retry_gives_up_after_its_budget() -> None:
    async def open_once() -> str:
        raise SessionRefused("server_full", "full", 10.0)

    with pytest.raises(SessionRefused):
        asyncio.run(open_with_retry(open_once, RetryPolicy(give_up_after_s=1.0)))
