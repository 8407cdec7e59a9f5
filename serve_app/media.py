"""Media plumbing of one session: latest-frame pump, in-order output track, audio pass-through.

aiortc's receive queue is unbounded: a consumer that is slower than the
camera lets latency grow without limit. :class:`LatestFramePump` drains the
remote track as fast as frames arrive and keeps only the newest; the
processing loop takes it when ready, and every frame it never took is counted
as dropped. :class:`OrderedVideoTrack` hands frames to the sender in the order
they were started, however the small in-flight window completes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from mirage.types import Image
from mirage.video import bgr_to_video_frame

logger = logging.getLogger(__name__)


class LatestFramePump:
    """Reads a remote video track continuously; :meth:`next` returns the newest unread frame."""

    def __init__(self, track: MediaStreamTrack, on_drop: Callable[[int], None] | None = None) -> None:
        self._track = track
        self._on_drop = on_drop
        self._latest: tuple[VideoFrame, float] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.received = 0
        self.dropped = 0
        self.ended = False
        self.last_frame_at = time.monotonic()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mirage-pump")

    async def _run(self) -> None:
        try:
            while True:
                frame = await self._track.recv()
                if not isinstance(frame, VideoFrame):  # a video track yields decoded video frames only
                    continue
                now = time.monotonic()
                self.received += 1
                self.last_frame_at = now
                if self._latest is not None:
                    self.dropped += 1
                    if self._on_drop is not None:
                        self._on_drop(1)
                self._latest = (frame, now)
                self._wake.set()
        except MediaStreamError:
            pass
        finally:
            self.ended = True
            self._wake.set()

    async def next(self) -> tuple[VideoFrame, float] | None:
        """The newest frame and its arrival time (monotonic s); None once the track ended."""
        while self._latest is None:
            if self.ended:
                return None
            self._wake.clear()
            await self._wake.wait()
        item, self._latest = self._latest, None
        return item

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.ended = True
        self._wake.set()


class OrderedVideoTrack(MediaStreamTrack):
    """The outgoing video: frames come out in the order their work was queued.

    ``put`` takes an awaitable that yields the finished :class:`VideoFrame`
    (with the input's pts/time_base) and blocks while ``window`` frames are
    already queued, which bounds the in-flight work of a session.
    """

    kind = "video"

    def __init__(self, window: int) -> None:
        super().__init__()
        self._queue: asyncio.Queue[asyncio.Future[VideoFrame] | None] = asyncio.Queue(maxsize=max(1, window))
        self._finished = False
        self.sent = 0

    async def put(self, pending: asyncio.Future[VideoFrame]) -> None:
        await self._queue.put(pending)

    def finish(self) -> None:
        """No more frames: the sender stops after what is queued."""
        self._finished = True
        # Wakes a recv() waiting on an empty queue; a full queue is drained first, then
        # recv() sees the flag.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def recv(self) -> VideoFrame:
        if self.readyState != "live" or (self._finished and self._queue.empty()):
            self.stop()
            raise MediaStreamError
        pending = await self._queue.get()
        if pending is None:
            self.stop()
            raise MediaStreamError
        frame = await pending
        self.sent += 1
        return frame

    def stop(self) -> None:
        super().stop()
        # Drain and cancel queued work so no task outlives the session.
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if pending is not None and not pending.done():
                pending.cancel()


class DelayedAudioTrack(MediaStreamTrack):
    """Audio passed through unchanged (pts kept), delayed to stay in step with the processed video.

    A reader task timestamps each frame when it arrives; :meth:`recv` releases
    it at arrival + the current video latency (from ``delay_s``, bounded by
    ``max_delay_s``), so lips and voice stay together without piling up.
    """

    kind = "audio"

    def __init__(self, source: MediaStreamTrack, delay_s: Callable[[], float], max_delay_s: float = 0.3) -> None:
        super().__init__()
        self._source = source
        self._delay_s = delay_s
        self._max_delay_s = max_delay_s
        self._buffer: deque[tuple[float, AudioFrame]] = deque(maxlen=100)
        self._ready = asyncio.Event()
        self._ended = False
        self._reader: asyncio.Task[None] | None = None

    def _start(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name="mirage-audio")

    async def _read(self) -> None:
        try:
            while True:
                frame = await self._source.recv()
                if not isinstance(frame, AudioFrame):  # an audio track yields decoded audio frames only
                    continue
                self._buffer.append((time.monotonic(), frame))
                self._ready.set()
        except MediaStreamError:
            pass
        finally:
            self._ended = True
            self._ready.set()

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        self._start()
        while not self._buffer:
            if self._ended:
                self.stop()
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        arrived, frame = self._buffer.popleft()
        delay = min(max(self._delay_s(), 0.0), self._max_delay_s)
        wait = arrived + delay - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        return frame

    def stop(self) -> None:
        super().stop()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()


def video_frame_like(image_bgr: Image, pts: int | None, time_base: fractions.Fraction | None) -> VideoFrame:
    """A yuv420p VideoFrame (OpenCV's accurate conversion) carrying the input frame's timing."""
    frame = bgr_to_video_frame(image_bgr)
    frame.pts = pts
    frame.time_base = time_base
    return frame


async def cancel_and_wait(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel tasks and wait for them, swallowing their cancellation and errors."""
    for task in tasks:
        if not task.done():
            task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
