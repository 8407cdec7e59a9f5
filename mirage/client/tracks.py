"""aiortc tracks the client sends: a stamped video source (live or pre-encoded) and a silent/tone audio track."""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from mirage.client.avsync import AvMarks
from mirage.client.encoded import EncodedClip
from mirage.client.sources import VideoSource
from mirage.client.stamp import MODULUS, stamp
from mirage.types import Image
from mirage.video import bgr_to_video_frame

logger = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)


class SendLedger:
    """When each stamped frame number left the sender (monotonic seconds).

    Keyed by the stamp value modulo the stream's ``period``: the 16-bit
    modulus for a live stream, the clip's length for a pre-encoded one. A
    frame number is overwritten when the stamps wrap (after 36 minutes at
    30 fps live, after one loop pre-encoded), long after it could arrive.
    """

    def __init__(self, period: int = MODULUS) -> None:
        if not 1 <= period <= MODULUS:
            raise ValueError(f"the stamp period must be between 1 and {MODULUS} (got {period})")
        self.period = period
        self._sent: dict[int, float] = {}
        self.count = 0
        self.last_number: int | None = None

    def record(self, number: int, t: float) -> None:
        self._sent[number % self.period] = t
        self.count += 1
        self.last_number = number

    def sent_at(self, stamp_value: int) -> float | None:
        return self._sent.get(stamp_value % self.period)


class _Pacer:
    """Sleeps until frame ``number`` is due at ``fps``, counting from the first call."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self._start: float | None = None

    async def wait(self, number: int) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start = now
            return
        due = self._start + number / self.fps
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > 1.0:
            # We fell far behind (a stalled loop): restart the clock instead of bursting.
            self._start = now - number / self.fps


class StampedVideoTrack(MediaStreamTrack):
    """Plays a :class:`VideoSource` at its frame rate with each frame's number stamped in.

    Frame ``n`` (counting from 0) carries stamp ``n``; the ledger records when
    aiortc took it (the moment it enters the encoder: the "glass").
    Decoding/warping the next frame runs in a worker thread, off the event loop.
    """

    kind = "video"

    def __init__(self, source: VideoSource, *, fps: float | None = None, ledger: SendLedger | None = None) -> None:
        super().__init__()
        self.source = source
        self.fps = float(fps or source.fps)
        self.ledger = ledger or SendLedger()
        self._frames: Iterator[Image] = source.frames()
        self._number = 0
        self._pacer = _Pacer(self.fps)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait(self._number)
        image = await asyncio.to_thread(self._next_image)
        frame = bgr_to_video_frame(image)
        frame.pts = int(round(self._number * VIDEO_CLOCK_RATE / self.fps))
        frame.time_base = VIDEO_TIME_BASE
        self.ledger.record(self._number, time.monotonic())
        self._number += 1
        return frame

    def _next_image(self) -> Image:
        return stamp(next(self._frames), self._number)


class PreEncodedVideoTrack(MediaStreamTrack):
    """Replays an :class:`EncodedClip` as VP8 packets, paced like :class:`StampedVideoTrack`.

    aiortc's sender only packetizes the ``av.Packet`` objects a track returns
    (no encoder runs), with the payloader of the negotiated codec: use this
    track only when VP8 was negotiated. Packet ``n`` carries frame
    ``n % period`` of the clip (stamp ``n % period``); the ledger, whose period
    is the clip's, records ``n`` when aiortc takes the packet.
    """

    kind = "video"

    def __init__(self, clip: EncodedClip, *, fps: float | None = None, ledger: SendLedger | None = None) -> None:
        super().__init__()
        self.clip = clip
        self.fps = float(fps or clip.fps)
        self.ledger = ledger or SendLedger(clip.period)
        if self.ledger.period != clip.period:
            raise ValueError(f"the ledger's period ({self.ledger.period}) is not the clip's ({clip.period})")
        self._number = 0
        self._pacer = _Pacer(self.fps)

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait(self._number)
        packet = av.Packet(self.clip.packets[self._number % self.clip.period])
        packet.pts = int(round(self._number * VIDEO_CLOCK_RATE / self.fps))
        packet.time_base = VIDEO_TIME_BASE
        self.ledger.record(self._number, time.monotonic())
        self._number += 1
        return packet


class ToneAudioTrack(MediaStreamTrack):
    """20 ms frames of 48 kHz mono s16 audio: silence, or a sine tone at ``frequency`` Hz.

    With ``marks``, an A/V mark (silence, then a tone burst) is written in once a
    second and its send time recorded (:mod:`mirage.client.avsync`).
    """

    kind = "audio"

    def __init__(
        self,
        frequency: float | None = None,
        *,
        amplitude: float = 0.2,
        sample_rate: int = 48_000,
        marks: AvMarks | None = None,
    ) -> None:
        super().__init__()
        self.marks = marks
        self.frequency = frequency
        self.amplitude = amplitude
        self.sample_rate = sample_rate
        self.samples = sample_rate // 50
        self._sent = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            due = self._start + self._sent / self.sample_rate
            if due > now:
                await asyncio.sleep(due - now)
        pcm = self._chunk()
        if self.marks is not None:
            pcm = self.marks.mark_audio(pcm, self._sent, time.monotonic())
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        self._sent += self.samples
        return frame

    def _chunk(self) -> np.ndarray:
        if not self.frequency:
            return np.zeros((1, self.samples), dtype=np.int16)
        t = (self._sent + np.arange(self.samples)) / self.sample_rate
        wave = self.amplitude * 32767.0 * np.sin(2.0 * math.pi * self.frequency * t)
        return wave.astype(np.int16)[None, :]


class LoopedAudioTrack(ToneAudioTrack):
    """20 ms frames of 48 kHz mono s16 audio from ``samples`` (float, 48 kHz mono), looped, paced at real time.

    What ``mirage load --audio-file`` sends instead of the tone (speech, so a voice
    disguise has something to work on).
    """

    def __init__(self, samples: np.ndarray, *, sample_rate: int = 48_000, marks: AvMarks | None = None) -> None:
        super().__init__(None, sample_rate=sample_rate, marks=marks)
        x = np.clip(np.asarray(samples, np.float32).reshape(-1), -1.0, 1.0)
        if x.size < self.samples:
            x = np.concatenate([x, np.zeros(self.samples - x.size, np.float32)])
        self._pcm = (x * 32767.0).astype(np.int16)

    def _chunk(self) -> np.ndarray:
        index = (self._sent + np.arange(self.samples)) % self._pcm.size
        return self._pcm[index][None, :]
