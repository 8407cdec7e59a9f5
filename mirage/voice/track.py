"""``VoiceTrack``: a session's outgoing audio track with the voice converted, in order, in step with the video.

A drop-in for the ingress's pass-through audio track: a reader task takes
each decoded frame of the incoming track (any rate/layout; normalised to
48 kHz mono s16 by PyAV's resampler), pushes it into the session's
:class:`~mirage.voice.pump.VoicePump`, and :meth:`VoiceTrack.recv` returns the
converted frames in order, released no earlier than ``arrival + delay_s()``
(the video's current latency, so lips and voice stay together) and never
later than the conversion allows. With an :class:`~mirage.voice.sync.AvSync`
the release offset is the session's A/V hold instead: the video path's
measured delay less the converter's algorithmic latency, gliding by at most
1 ms a frame, capped (docs/voice.md, "In sync"). With the voice on, what it returns is never
the input: a late or failed call was already disguised locally by the pump.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from mirage.voice.audio import mono_to_frame, to_float_mono
from mirage.voice.config import DEFAULT_SAMPLE_RATE
from mirage.voice.pump import VoicePump
from mirage.voice.sync import AvSync

_TIME_BASE = fractions.Fraction(1, DEFAULT_SAMPLE_RATE)


class VoiceTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(
        self,
        source: MediaStreamTrack,
        pump: VoicePump,
        delay_s: Callable[[], float] = lambda: 0.0,
        max_delay_s: float = 0.3,
        sync: AvSync | None = None,
    ) -> None:
        super().__init__()
        self.sync = sync
        self._source = source
        self.pump = pump
        self._delay_s = delay_s
        self._max_delay_s = max_delay_s
        self._reader: asyncio.Task[None] | None = None
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=DEFAULT_SAMPLE_RATE)
        self._pts = 0
        self._taken_at: float | None = None

    def _start(self) -> None:
        if self._reader is None:
            self.pump.start()
            self._reader = asyncio.get_running_loop().create_task(self._read(), name="mirage-voice-reader")

    async def _read(self) -> None:
        try:
            while True:
                frame = await self._source.recv()
                arrived = time.monotonic()
                if not isinstance(frame, av.AudioFrame):
                    continue
                for mono in self._resampler.resample(frame):
                    self.pump.push(to_float_mono(mono.to_ndarray().reshape(-1)), arrived)
        except MediaStreamError:
            pass
        finally:
            await self.pump.close()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        self._start()
        if self.sync is not None and self._taken_at is not None:
            self.sync.audio_sender_busy((time.monotonic() - self._taken_at) * 1000.0)
        try:
            samples, arrived = await self.pump.next_frame()
        except EOFError:
            self.stop()
            raise MediaStreamError from None
        if self.sync is not None:
            delay = self.sync.next_hold_s()
        else:
            delay = min(max(self._delay_s(), 0.0), self._max_delay_s)
        wait = float(arrived) + delay - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if self.sync is not None:
            self._taken_at = time.monotonic()
            self.sync.audio_sent(float(arrived), self._taken_at)
        frame = av.AudioFrame.from_ndarray(mono_to_frame(samples, 1), format="s16", layout="mono")
        frame.sample_rate = DEFAULT_SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = _TIME_BASE
        self._pts += samples.size
        return frame

    def stats(self) -> dict[str, float]:
        """The pump's counters, and the A/V figures when the track is synced."""
        stats = self.pump.stats()
        if self.sync is not None:
            stats.update(self.sync.stats())
        return stats

    def stop(self) -> None:
        super().stop()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
