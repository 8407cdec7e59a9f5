"""VoiceTrack between a real aiortc track interface and the converter: converted speech out, in order,
continuous timestamps, held to the video's delay, never the input when the converter is gone."""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from mirage.voice.audio import mono_to_frame
from mirage.voice.config import parse_voice
from mirage.voice.convert import VoiceChunk, VoiceConverterCore, VoiceCoreConfig, VoiceResult
from mirage.voice.pump import VoicePump
from mirage.voice.stream import VoiceStream
from mirage.voice.track import VoiceTrack
from standins.speech import espeak_available, median_f0, speak

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (scripts/test.sh installs it)")

CHUNK = 960
CORE = VoiceConverterCore(VoiceCoreConfig(rvc=False))


class SpeechTrack(MediaStreamTrack):
    """What aiortc's Opus decoder hands the ingress: 20 ms stereo s16 frames at 48 kHz, paced."""

    kind = "audio"

    def __init__(self, samples: np.ndarray, period_s: float = 0.005) -> None:
        super().__init__()
        self._x = samples
        self._k = 0
        self._period = period_s

    async def recv(self) -> av.AudioFrame:
        if (self._k + 1) * CHUNK > self._x.size:
            self.stop()
            raise MediaStreamError
        await asyncio.sleep(self._period)
        frame = av.AudioFrame.from_ndarray(mono_to_frame(self._x[self._k * CHUNK : (self._k + 1) * CHUNK], 2), format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = self._k * CHUNK
        frame.time_base = fractions.Fraction(1, 48000)
        self._k += 1
        return frame


async def _collect(track: VoiceTrack, limit: int) -> list[av.AudioFrame]:
    frames = []
    try:
        for _ in range(limit):
            frames.append(await asyncio.wait_for(track.recv(), timeout=5.0))
    except MediaStreamError:
        pass
    track.stop()
    return frames


async def _core(chunk: VoiceChunk) -> VoiceResult:
    return CORE.convert_batch([chunk])[0]


def test_the_track_returns_the_converted_voice_in_order() -> None:
    x = speak()[: 48000 * 3]
    pump = VoicePump(VoiceStream(parse_voice(None, pitch=-4.0)), _core)
    frames = asyncio.run(_collect(VoiceTrack(SpeechTrack(x), pump), 500))
    assert len(frames) == x.size // CHUNK
    assert [f.pts for f in frames] == [k * CHUNK for k in range(len(frames))]
    assert all(f.sample_rate == 48000 and f.samples == CHUNK for f in frames)
    out = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32) / 32768.0
    moved = 12 * np.log2(median_f0(out[1200:], 48000) / median_f0(x[: out.size - 1200], 48000))
    assert abs(moved + 4.0) <= 0.5


def test_frames_are_held_to_the_videos_delay() -> None:
    x = speak()[: 48000]
    pump = VoicePump(VoiceStream(parse_voice("low")), _core)
    track = VoiceTrack(SpeechTrack(x, period_s=0.02), pump, delay_s=lambda: 0.12)

    async def run() -> list[float]:
        lags = []
        source_start = time.monotonic()
        for k in range(20):
            await track.recv()
            lags.append(time.monotonic() - (source_start + 0.02 * (k + 1)))
        track.stop()
        return lags

    lags = asyncio.run(run())
    assert min(lags[3:]) >= 0.10, lags  # never earlier than the video's 120 ms
    assert max(lags[3:]) < 0.3, lags


def test_a_dead_converter_never_lets_the_input_through() -> None:
    async def dead(chunk: VoiceChunk) -> VoiceResult:
        raise ConnectionError("replica gone")

    x = speak()[: 48000 * 2]
    pump = VoicePump(VoiceStream(parse_voice("disguise")), dead)
    frames = asyncio.run(_collect(VoiceTrack(SpeechTrack(x), pump), 500))
    out = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32) / 32768.0
    assert pump.errors > 0 and np.max(np.abs(out)) > 0.01
    ref = x[: out.size]
    best = max(
        abs(float(np.dot(out[d:], ref[: ref.size - d]))) / (float(np.linalg.norm(out[d:]) * np.linalg.norm(ref[: ref.size - d])) or 1.0)
        for d in range(0, 2400, 12)
    )
    assert best < 0.5
