"""The heap trimmer really calls the C library's malloc_trim, on its own schedule, and stops cleanly."""

from __future__ import annotations

import asyncio

import numpy as np

from mirage.memtrim import HeapTrimmer


def test_trim_now_returns_freed_heap_memory() -> None:
    trimmer = HeapTrimmer()
    assert trimmer.available, "glibc's malloc_trim should be found on this (Debian) machine"
    # Many small blocks from the heap (below the mmap threshold), then freed: trimming can give pages back.
    blocks = [np.ones(16 * 1024, np.uint8) for _ in range(4000)]
    del blocks
    assert trimmer.trim_now() in (True, False)
    assert trimmer.stats.trims == 1 and trimmer.stats.last_ms >= 0.0


def test_the_background_task_trims_while_active_and_stops() -> None:
    active = {"on": False}

    async def run() -> tuple[int, int]:
        trimmer = HeapTrimmer(interval_s=0.02, active=lambda: active["on"])
        trimmer.start()
        await asyncio.sleep(0.15)
        idle = trimmer.stats.trims
        active["on"] = True
        await asyncio.sleep(0.2)
        await trimmer.stop()
        after = trimmer.stats.trims
        await asyncio.sleep(0.1)
        assert trimmer.stats.trims == after  # stopped: no more trims
        return idle, after

    idle, after = asyncio.run(run())
    assert idle == 0 and after >= 2


def test_a_zero_interval_never_starts() -> None:
    async def run() -> int:
        trimmer = HeapTrimmer(interval_s=0)
        trimmer.start()
        await asyncio.sleep(0.05)
        await trimmer.stop()
        return trimmer.stats.trims

    assert asyncio.run(run()) == 0
