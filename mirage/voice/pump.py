"""One session's voice path as an asyncio task: 20 ms frames in, converted frames out, in order, never raw.

:class:`VoicePump` is what the ingress needs between the session's incoming
audio track and its outgoing one (docs/voice.md)::

    pump = VoicePump(stream, convert=lambda chunk: handle.convert.remote(chunk))
    pump.start()
    # reader task:   pump.push(frame_to_mono(frame.to_ndarray(), channels), frame.pts)
    # output track:  samples, pts = await pump.next_frame()

One call is in flight per session (each state follows from the previous
reply); frames that arrive meanwhile travel together in the next call, so a
slow round trip makes the next call longer instead of queueing calls. A call
that fails or misses ``deadline_s`` is converted locally by the stream's
fallback (the DSP disguise, or silence): with the voice on, the frames that
come out are never the input. ``delay_ms`` follows how long a frame takes from
``push`` to ready (the audio path's own delay, for A/V alignment).

With ``gather_s`` (the session's A/V slack: how long a frame may wait before
its call and still be ready when the A/V hold releases it), the pump waits
until its oldest frame is that old before calling, so one call carries several
frames: fewer converter round trips per session (each costs the ingress a
Serve handle call) at no cost to the audio, which waits for the video anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from mirage.voice.convert import VoiceChunk, VoiceResult
from mirage.voice.stream import VoiceStream

logger = logging.getLogger(__name__)

Convert = Callable[[VoiceChunk], Awaitable[VoiceResult]]


class VoicePump:
    def __init__(
        self,
        stream: VoiceStream,
        convert: Convert,
        deadline_s: float = 0.1,
        max_pending: int = 50,
        clock: Callable[[], float] = time.monotonic,
        gather_s: Callable[[], float] | None = None,
    ) -> None:
        self.stream = stream
        self._gather_s = gather_s
        #: Smoothed converter round trip (ms), for the caller's slack.
        self.call_ms = 0.0
        self._convert = convert
        self._deadline_s = deadline_s
        self._clock = clock
        self._in: deque[tuple[np.ndarray, Any, float]] = deque()
        self._out: asyncio.Queue[tuple[np.ndarray, Any] | None] = asyncio.Queue()
        self._max_pending = max_pending
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.dropped = 0
        self.timeouts = 0
        self.errors = 0
        self._delay_ema_ms: float | None = None

    @property
    def delay_ms(self) -> float:
        """Smoothed delay from ``push`` to the frame being ready, plus the converter's algorithmic latency."""
        return (self._delay_ema_ms or 0.0) + self.stream.latency_ms

    def stats(self) -> dict[str, float]:
        """Counters for the session's stats and ``/metrics`` (no audio, no identity)."""
        return {
            **self.stream.counters.as_dict(),
            "timeouts": self.timeouts,
            "errors": self.errors,
            "dropped": self.dropped,
            "delay_ms": round(self.delay_ms, 2),
        }

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mirage-voice-pump")

    def push(self, samples: np.ndarray, tag: Any = None) -> None:
        """A decoded frame (float32 mono) and a tag that comes back with it (e.g. its pts)."""
        if self._closed:
            return
        if len(self._in) >= self._max_pending:
            # Far behind (a stalled loop): drop the oldest input rather than grow without bound.
            self._in.popleft()
            self.dropped += 1
        self._in.append((np.asarray(samples, np.float32), tag, self._clock()))
        self._arrived.set()

    async def next_frame(self) -> tuple[np.ndarray, Any]:
        """The next converted frame and its tag, in push order; raises ``EOFError`` after :meth:`close`."""
        item = await self._out.get()
        if item is None:
            raise EOFError("the voice pump is closed")
        return item

    async def close(self, drain_s: float = 1.0) -> None:
        """No more input: frames already pushed are still converted (for up to ``drain_s``), then the end."""
        self._closed = True
        self._arrived.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=drain_s)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
        self._out.put_nowait(None)

    async def _run(self) -> None:
        while True:
            if not self._in:
                if self._closed:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if self._gather_s is not None and not self._closed:
                wait = self._in[0][2] + min(max(self._gather_s(), 0.0), 0.2) - self._clock()
                if wait > 0.001:
                    await asyncio.sleep(wait)
            frames = list(self._in)
            self._in.clear()
            samples = np.concatenate([f[0] for f in frames])
            chunk = self.stream.request(samples)
            if chunk is None:
                out = samples  # voice off: the real voice is what the user chose
            else:
                out = await self._call(chunk)
            now = self._clock()
            offset = 0
            for frame, tag, pushed in frames:
                piece = out[offset : offset + frame.size]
                offset += frame.size
                self._out.put_nowait((piece, tag))
                delay = (now - pushed) * 1000.0
                self._delay_ema_ms = delay if self._delay_ema_ms is None else 0.9 * self._delay_ema_ms + 0.1 * delay

    async def _call(self, chunk: VoiceChunk) -> np.ndarray:
        started = self._clock()
        try:
            result = await asyncio.wait_for(self._convert(chunk), timeout=self._deadline_s)
            self.call_ms += 0.1 * ((self._clock() - started) * 1000.0 - self.call_ms)
        except TimeoutError:
            self.call_ms += 0.1 * (self._deadline_s * 1000.0 - self.call_ms)
            self.timeouts += 1
            return self.stream.fallback(chunk)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed replica must never let the real voice out
            self.errors += 1
            logger.info("voice call failed (%s); disguised locally", type(exc).__name__)
            return self.stream.fallback(chunk)
        return self.stream.accept(chunk, result)
