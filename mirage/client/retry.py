"""Retrying a session: back-off with jitter that honours the server's hint, and what to say meanwhile.

When every ingress replica is full the server refuses a new session at once with
``server_full`` and a hint, ``retry_after_s`` (in the error message, and as
``retry_after_s=N`` in the WebSocket close reason). A replica that is going away
(scale-down, redeploy) ends its sessions with a ``server_shutdown`` event and close
1001: the client reconnects at once, and the router sends it to a replica with room.

:class:`RetryPolicy` computes the waits (never earlier than the hint, exponential
without one, with upward jitter so that clients refused together do not come back
together); :func:`open_with_retry` opens a session through it, telling the caller
about every wait. The web page (serve_app/static/app.js), the desktop client
(:mod:`mirage.cam.app`) and ``mirage load`` follow the same rules.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from mirage.client.session import SessionRefused

#: Refusals that a retry may cure (everything else is the person's to fix: key, photo, offer).
RETRYABLE_CODES = frozenset({"server_full", "busy"})
#: Close codes after which a live session reconnects at once (the server is going away).
GOING_AWAY_CLOSE_CODES = frozenset({1001, 1012})
_HINT = re.compile(r"retry_after_s=([0-9]+(?:\.[0-9]+)?)")

S = TypeVar("S")


def retry_hint(exc: SessionRefused) -> float | None:
    """The server's ``retry_after_s`` for this refusal, from the error message or the close reason."""
    hint = getattr(exc, "retry_after_s", None)
    if isinstance(hint, (int, float)) and not isinstance(hint, bool) and hint >= 0:
        return float(hint)
    match = _HINT.search(exc.message or "")
    return float(match.group(1)) if match else None


def plain_message(exc: SessionRefused) -> str:
    """The refusal's sentence without the machine-readable hint the close reason carries."""
    return _HINT.sub("", exc.message or "").strip().rstrip(".").strip() or "the server is full"


@dataclass(frozen=True)
class RetryPolicy:
    """Waits between attempts: ``max(hint, initial * multiplier**n)`` capped at ``max_s``, plus jitter.

    Jitter only lengthens a wait (by up to ``jitter`` of it), so a client never comes back
    before the server's hint. ``give_up_after_s``: stop retrying once this long has passed
    since the first attempt (None: retry until cancelled).
    """

    initial_s: float = 1.0
    multiplier: float = 2.0
    max_s: float = 15.0
    jitter: float = 0.3
    give_up_after_s: float | None = 120.0

    def delay(self, attempt: int, hint: float | None = None, rng: random.Random | None = None) -> float:
        base = min(self.max_s, self.initial_s * self.multiplier ** max(0, attempt))
        if hint is not None:
            base = max(base, min(hint, self.max_s))
        spread = (rng or random).uniform(0.0, self.jitter) if self.jitter > 0 else 0.0
        return base * (1.0 + spread)


@dataclass
class RetryStats:
    """What retrying cost one session (``mirage load`` reports it)."""

    attempts: int = 0
    retries: int = 0
    waited_s: float = 0.0
    last_hint_s: float | None = None


async def open_with_retry(
    open_once: Callable[[], Awaitable[S]],
    policy: RetryPolicy,
    on_wait: Callable[[float, SessionRefused], None] | None = None,
    stats: RetryStats | None = None,
    rng: random.Random | None = None,
) -> S:
    """``await open_once()`` until it succeeds or a refusal cannot be cured by waiting.

    A :class:`SessionRefused` with a retryable code waits (see :class:`RetryPolicy`) and tries
    again, calling ``on_wait(seconds, refusal)`` first; any other error, or running out of
    ``give_up_after_s``, raises the last error.
    """
    stats = stats if stats is not None else RetryStats()
    started = time.monotonic()
    attempt = 0
    while True:
        stats.attempts += 1
        try:
            return await open_once()
        except SessionRefused as exc:
            if exc.code not in RETRYABLE_CODES:
                raise
            hint = retry_hint(exc)
            stats.last_hint_s = hint
            wait = policy.delay(attempt, hint, rng)
            if policy.give_up_after_s is not None and time.monotonic() - started + wait > policy.give_up_after_s:
                raise
            if on_wait is not None:
                on_wait(wait, exc)
            stats.retries += 1
            stats.waited_s += wait
            attempt += 1
            await asyncio.sleep(wait)


def reconnect_delay(close_code: int | None, saw_shutdown_event: bool, rng: random.Random | None = None) -> float | None:
    """How soon a live session that ended should reconnect: at once (a little jitter) when the
    server said it is going away; None when the caller's own back-off applies."""
    if saw_shutdown_event or close_code in GOING_AWAY_CLOSE_CODES:
        return (rng or random).uniform(0.0, 0.2)
    return None
