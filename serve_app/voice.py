"""A session's voice path in the ingress: the VoicePump on the VoiceConverter's handle, and the replica's totals.

``voice_track`` builds what replaces the pass-through audio track: a
:class:`~mirage.voice.track.VoiceTrack` whose pump calls the deployment with a
deadline, through the replica's :func:`deployment_gatherer` (the sessions' chunks
that are ready together go in one call); a call that fails or is
late is disguised here with the stream's DSP state (or muted), so with the
voice on the real voice never goes out (docs/voice.md). Without a handle (an
ingress built alone, in tests) the chunks are converted in this process by
the same converter core.

:class:`VoiceTotals` keeps the counters of this replica's ended sessions, so
``/metrics`` reports chunks, fallbacks and timeouts over the replica's life,
not only over the sessions open now. No audio is kept, only counts.
"""

from __future__ import annotations

import asyncio
import heapq
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiortc.mediastreams import MediaStreamTrack
from av import VideoFrame

from mirage.voice.config import VoiceDefaults
from mirage.voice.convert import VoiceChunk, VoiceConverterCore, VoiceCoreConfig, VoiceResult
from mirage.voice.gather import ChunkGatherer
from mirage.voice.pump import Convert, VoicePump
from mirage.voice.stream import VoiceStream
from mirage.voice.sync import AvSync, SyncConfig
from mirage.voice.track import VoiceTrack
from serve_app.media import OrderedVideoTrack

#: A voice call slower than this is disguised locally instead (5 chunks of 20 ms).
VOICE_DEADLINE_S = 0.1
#: Counters of ``VoicePump.stats()`` that add up across sessions.
SUMMED = ("chunks", "converted", "fallbacks", "muted", "resets", "timeouts", "errors", "dropped")


def deployment_gatherer(handle: Any) -> ChunkGatherer:
    """This replica's sessions' chunks, gathered into one ``convert_many`` call per round (mirage.voice.gather)."""

    async def send(chunks: list[VoiceChunk]) -> list[VoiceResult]:
        if len(chunks) == 1:
            return [await handle.convert.remote(chunks[0])]
        return list(await handle.convert_many.remote(chunks))

    return ChunkGatherer(send)


def local_convert(core: VoiceConverterCore) -> Convert:
    """The pump's call without a deployment: the same core, in this process's executor."""

    async def convert(chunk: VoiceChunk) -> VoiceResult:
        return (await asyncio.to_thread(core.convert_batch, [chunk]))[0]

    return convert


def local_core() -> VoiceConverterCore:
    return VoiceConverterCore(VoiceCoreConfig(rvc=False))


class SyncedVideoTrack(OrderedVideoTrack):
    """The session's outgoing video, timing its own path for the A/V hold (:class:`~mirage.voice.sync.AvSync`).

    ``frame_done(total_ms)`` when a frame is ready (its arrival is ``now - total``);
    when aiortc's sender takes the frame, arrival-to-take goes to the sync, and the
    sender's time between a take and its next request (encoding) too.
    """

    def __init__(self, window: int) -> None:
        super().__init__(window)
        self.sync: AvSync | None = None
        self._arrivals: list[float] = []
        self._taken_at: float | None = None

    def frame_done(self, total_ms: float) -> None:
        if self.sync is not None and len(self._arrivals) < 64:
            heapq.heappush(self._arrivals, time.monotonic() - total_ms / 1000.0)

    async def recv(self) -> VideoFrame:
        asked = time.monotonic()
        if self.sync is not None and self._taken_at is not None:
            self.sync.sender_busy((asked - self._taken_at) * 1000.0)
        frame = await super().recv()
        taken = self._taken_at = time.monotonic()
        if self.sync is not None and self._arrivals:
            # Frames leave in arrival order: the earliest ready one is this one.
            self.sync.video_sent(heapq.heappop(self._arrivals), taken)
        return frame


def voice_track(
    source: MediaStreamTrack,
    defaults: VoiceDefaults,
    convert: Convert,
    delay_s: Callable[[], float],
    deadline_s: float = VOICE_DEADLINE_S,
    video: SyncedVideoTrack | None = None,
    sync: SyncConfig | None = None,
) -> VoiceTrack:
    """The session's outgoing audio: the incoming track's voice, converted (or passed when off), in order.

    With ``video`` the audio is held by the session's A/V hold (the video path's measured delay
    less the converter's latency) instead of ``delay_s``.
    """
    stream = VoiceStream(defaults.initial_selection(), fallback=defaults.fallback)
    if video is None:
        return VoiceTrack(source, VoicePump(stream, convert=convert, deadline_s=deadline_s), delay_s)
    sync = sync or SyncConfig()

    def slack_s() -> float:
        # How long a frame may wait for its call and still be ready when the hold releases it:
        # the hold, less the call's round trip and a 20 ms margin.
        return (av_sync.target_hold_ms() - pump.call_ms - 20.0) / 1000.0

    pump = VoicePump(stream, convert=convert, deadline_s=deadline_s, gather_s=slack_s if sync.enabled else None)
    av_sync = AvSync(lambda: pump.delay_ms, lambda: stream.latency_ms, sync)
    video.sync = av_sync
    return VoiceTrack(source, pump, delay_s, max_delay_s=sync.max_hold_ms / 1000.0, sync=av_sync)


class VoiceTotals:
    """Voice counters of this replica's ended sessions, and the sum with the open ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ended: dict[str, float] = {k: 0 for k in SUMMED}
        self.sessions_ended = 0

    def add(self, stats: Mapping[str, float]) -> None:
        with self._lock:
            for key in SUMMED:
                self._ended[key] += stats.get(key, 0)
            self.sessions_ended += 1

    def snapshot(self, live: Iterable[Mapping[str, float]]) -> dict[str, Any]:
        with self._lock:
            total = dict(self._ended)
        delays: list[float] = []
        sessions = 0
        for stats in live:
            sessions += 1
            for key in SUMMED:
                total[key] += stats.get(key, 0)
            if stats.get("chunks", 0):
                delays.append(float(stats.get("delay_ms", 0.0)))
        out: dict[str, Any] = {k: int(v) for k, v in total.items()}
        out["sessions_with_audio"] = sessions
        out["delay_ms_avg"] = round(sum(delays) / len(delays), 2) if delays else 0.0
        out["delay_ms_max"] = round(max(delays), 2) if delays else 0.0
        return out
