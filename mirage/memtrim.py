"""Give freed heap memory back to the system (glibc's ``malloc_trim``).

A long-lived process that handles many short sessions (each with its codec
buffers, frames and numpy arrays, freed from many threads) fragments glibc's
per-thread arenas: the memory is free but stays resident, and RSS creeps up
over hours although nothing leaks (benchmarks/README.md, the soak). Capping the
arenas (``MALLOC_ARENA_MAX``) stops the creep but costs frame rate; trimming
now and then returns the free pages of every arena without changing how
allocation works. On a C library without ``malloc_trim`` (musl, macOS) this is
a no-op.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from mirage.loop_task import LoopTask

logger = logging.getLogger(__name__)


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def trim_heap() -> bool:
    """Trim once, here (blocking: a few ms); True when the C library gave memory back."""
    return bool(_MALLOC_TRIM(0)) if _MALLOC_TRIM is not None else False


@dataclass
class TrimStats:
    trims: int = 0
    released: int = 0
    last_ms: float = 0.0


class HeapTrimmer:
    """Calls ``malloc_trim(0)`` in a worker thread every ``interval_s`` while ``active()`` is true."""

    def __init__(self, interval_s: float = 30.0, active: Callable[[], bool] = lambda: True) -> None:
        self.interval_s = interval_s
        self._active = active
        self._trim = _MALLOC_TRIM
        self._task = LoopTask(self._run, name="mirage-heap-trimmer")
        self.stats = TrimStats()

    @property
    def available(self) -> bool:
        return self._trim is not None

    def trim_now(self) -> bool:
        """Trim once, here (blocking: a few ms); True when the C library gave memory back."""
        if self._trim is None:
            return False
        start = time.perf_counter()
        released = trim_heap()
        self.stats.trims += 1
        self.stats.released += int(released)
        self.stats.last_ms = (time.perf_counter() - start) * 1000.0
        return released

    def start(self) -> None:
        if self._trim is None or self.interval_s <= 0:
            return
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if not self._active():
                continue
            try:
                await asyncio.to_thread(self.trim_now)
            except Exception as exc:  # noqa: BLE001 - trimming is housekeeping; it must never hurt sessions
                logger.warning("heap trimming stopped: %s", type(exc).__name__)
                return
