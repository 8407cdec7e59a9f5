"""One converter call for the voice chunks of all the sessions of one ingress that are ready together.

Each session's :class:`~mirage.voice.pump.VoicePump` makes one call at a time
(about 23 a second at 30 fps, each carrying the frames the A/V slack lets it
gather). Every Serve call costs its caller and the replica a few ms of CPU
whatever it carries (``benchmarks/bench_call_cost.py``: 4.9-6.3 ms on the 2-core
box), so with several voice sessions the calls, not the DSP, fill the cores:
three sessions made 70 calls a second, and video and audio fell behind.

:class:`ChunkGatherer` holds a chunk until every session that has called in the
last ``active_s`` has one waiting, or ``window_s`` has passed, then sends them
all in one call (``send``: a list of chunks in, their results in order). A
session alone is sent at once. Sessions that were gathered together get their
replies together, so their next calls come due together too: they fall into
step and stay in one call per round.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from mirage.voice.convert import VoiceChunk, VoiceResult

logger = logging.getLogger(__name__)

SendMany = Callable[[list[VoiceChunk]], Awaitable[Sequence[VoiceResult]]]


class ChunkGatherer:
    def __init__(
        self,
        send: SendMany,
        window_s: float = 0.02,
        active_s: float = 0.25,
        max_chunks: int = 16,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._window_s = window_s
        self._active_s = active_s
        self._max_chunks = max_chunks
        self._clock = clock
        self._keys = itertools.count()
        self._last_call: dict[int, float] = {}
        self._pending: list[tuple[int, VoiceChunk, asyncio.Future[VoiceResult]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.calls = 0
        self.chunks = 0

    def member(self) -> Callable[[VoiceChunk], Awaitable[VoiceResult]]:
        """One session's call (a :data:`~mirage.voice.pump.Convert`)."""
        key = next(self._keys)

        async def convert(chunk: VoiceChunk) -> VoiceResult:
            return await self.convert(key, chunk)

        return convert

    async def convert(self, key: int, chunk: VoiceChunk) -> VoiceResult:
        loop = asyncio.get_running_loop()
        now = self._clock()
        self._last_call[key] = now
        for old in [k for k, t in self._last_call.items() if now - t > self._active_s]:
            del self._last_call[old]
        future: asyncio.Future[VoiceResult] = loop.create_future()
        self._pending.append((key, chunk, future))
        waiting = {k for k, _, _ in self._pending}
        if waiting >= set(self._last_call) or len(self._pending) >= self._max_chunks:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._window_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = [(chunk, future) for _, chunk, future in self._pending if not future.done()]
        self._pending = []
        if not batch:
            return
        task = asyncio.ensure_future(self._deliver(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _deliver(self, batch: list[tuple[VoiceChunk, asyncio.Future[VoiceResult]]]) -> None:
        self.calls += 1
        self.chunks += len(batch)
        try:
            results = list(await self._send([chunk for chunk, _ in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"the converter answered {len(results)} results for {len(batch)} chunks")
        except Exception as exc:  # noqa: BLE001 - every waiting session falls back on its own
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # a session that gave up (its deadline) no longer waits
                future.set_result(result)
