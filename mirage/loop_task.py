"""One background coroutine per object, started on the running loop and cancelled on stop.

The ingress's housekeeping loops (heap trimming, drain watching, the scaling
watcher) each run one such task. A replica may run its start hook on a new
event loop (Serve re-runs it), so a task of another loop counts as not running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


class LoopTask:
    """``run()`` as one asyncio task: :meth:`start` is idempotent per loop, :meth:`stop` cancels and waits."""

    def __init__(self, run: Callable[[], Coroutine[Any, Any, None]], name: str | None = None) -> None:
        self._run = run
        self._name = name
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
