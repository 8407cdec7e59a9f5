"""A sliding-window rate and value meter for the status line (thread-safe)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class RateMeter:
    """Events per second over the last ``window_s`` seconds, optionally with a value per event."""

    def __init__(self, window_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._events: deque[tuple[float, float | None]] = deque()
        self._lock = threading.Lock()
        self.total = 0
        self._last: float | None = None

    def tick(self, value: float | None = None) -> None:
        now = self._clock()
        with self._lock:
            self._events.append((now, value))
            self.total += 1
            self._last = now
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._events and now - self._events[0][0] > self.window_s:
            self._events.popleft()

    def rate(self) -> float:
        """Events per second in the window (0 when fewer than two events)."""
        now = self._clock()
        with self._lock:
            self._trim(now)
            if len(self._events) < 2:
                return 0.0
            span = max(now - self._events[0][0], 1e-6)
            return (len(self._events) - 1) / span if span < self.window_s else len(self._events) / self.window_s

    def median(self) -> float | None:
        """Median of the values recorded in the window (None when there are none)."""
        now = self._clock()
        with self._lock:
            self._trim(now)
            values = sorted(v for _, v in self._events if v is not None)
        if not values:
            return None
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2.0

    def age(self) -> float | None:
        """Seconds since the last event (None when there was none)."""
        last = self._last
        return None if last is None else self._clock() - last
