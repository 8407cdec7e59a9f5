"""LoopTask: one task per loop, restarted on a new loop, cancelled and awaited on stop."""

from __future__ import annotations

import asyncio

from mirage.loop_task import LoopTask


def test_one_task_per_loop_and_stop_cancels_it() -> None:
    started: list[int] = []

    async def run() -> None:
        started.append(1)
        await asyncio.sleep(3600)

    task = LoopTask(run, name="test-loop")

    async def first() -> bool:
        task.start()
        task.start()  # already running on this loop: no second task
        await asyncio.sleep(0)
        running = task.running
        await task.stop()
        return running

    assert asyncio.run(first()) is True
    assert started == [1] and not task.running

    async def again() -> None:  # a new event loop (Serve may re-run a replica's start hook)
        task.start()
        await asyncio.sleep(0)
        assert task.running
        await task.stop()

    asyncio.run(again())
    assert started == [1, 1] and not task.running
