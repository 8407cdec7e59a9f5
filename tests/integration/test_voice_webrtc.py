"""The voice path through real WebRTC (aiortc peers over loopback, Opus both ways), the converter in process.

A "client" peer sends espeak-ng speech in bursts (speech, then silence) paced at
real time; an "ingress" peer returns it through :class:`~mirage.voice.track.VoiceTrack`
with the disguise on. Checked at the client: the returned voice's median F0
moved as asked (Praat), it is not the sent voice, and the audio round trip
(sending a burst's first frame to hearing its onset, through two Opus
encodes/decodes, jitter buffers and the converter) stays under 150 ms at p95.
This is the library half of the served path; serve_app's own session wiring
is tested with the app.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from mirage.voice.audio import mono_to_frame
from mirage.voice.config import parse_voice
from mirage.voice.convert import VoiceChunk, VoiceConverterCore, VoiceCoreConfig, VoiceResult
from mirage.voice.pump import VoicePump
from mirage.voice.stream import VoiceStream
from mirage.voice.track import VoiceTrack
from standins.speech import SENTENCES, espeak_available, median_f0, speak

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (scripts/test.sh installs it)")

RATE = 48000
CHUNK = 960
BURST = 20  # frames of speech (400 ms), then as many of silence
SECONDS = 8.0


def burst_signal(seconds: float) -> tuple[np.ndarray, list[int]]:
    """Speech in 400 ms bursts separated by 400 ms of silence; the frame index where each burst starts."""
    speech = speak(SENTENCES[0], RATE)
    frames = int(seconds * RATE / CHUNK)
    out = np.zeros(frames * CHUNK, np.float32)
    onsets = []
    src = 0
    for start in range(0, frames, 2 * BURST):
        end = min(start + BURST, frames)
        n = (end - start) * CHUNK
        # skip espeak's own leading silence so that every burst starts loud
        piece = speech[src : src + n] if src + n <= speech.size else speech[:n]
        src = (src + n) % max(1, speech.size - n)
        piece = piece.copy()
        piece[:CHUNK] = np.where(np.abs(piece[:CHUNK]) < 0.02, 0.3 * np.sign(np.sin(np.arange(CHUNK) * 0.09)), piece[:CHUNK])
        out[start * CHUNK : start * CHUNK + n] = piece
        onsets.append(start)
    return out, onsets


class PacedSpeech(MediaStreamTrack):
    kind = "audio"

    def __init__(self, samples: np.ndarray) -> None:
        super().__init__()
        self._x = samples
        self._k = 0
        self._t0: float | None = None
        self.sent_at: dict[int, float] = {}

    async def recv(self) -> av.AudioFrame:
        if (self._k + 1) * CHUNK > self._x.size:
            self.stop()
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        wait = self._t0 + self._k * CHUNK / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = av.AudioFrame.from_ndarray(mono_to_frame(self._x[self._k * CHUNK : (self._k + 1) * CHUNK], 2), format="s16", layout="stereo")
        frame.sample_rate = RATE
        frame.pts = self._k * CHUNK
        frame.time_base = fractions.Fraction(1, RATE)
        self.sent_at[self._k] = time.monotonic()
        self._k += 1
        return frame


CORE = VoiceConverterCore(VoiceCoreConfig(rvc=False))


def round_trip(x: np.ndarray, onsets: list[int], voice: str | None, pitch: float | None) -> tuple[list[float], np.ndarray, VoicePump]:
    """Send ``x`` through a loopback pair with the voice path in the middle; (burst delays ms, returned audio, pump)."""
    core = CORE

    async def convert(chunk: VoiceChunk) -> VoiceResult:
        return (await asyncio.to_thread(core.convert_batch, [chunk]))[0]

    async def run() -> tuple[list[tuple[float, np.ndarray]], PacedSpeech, VoicePump]:
        client, ingress = RTCPeerConnection(), RTCPeerConnection()
        source = PacedSpeech(x)
        client.addTrack(source)
        received: list[tuple[float, np.ndarray]] = []
        done = asyncio.Event()
        pump = VoicePump(VoiceStream(parse_voice(voice, pitch=pitch)), convert)
        holder: dict[str, Any] = {}

        @ingress.on("track")
        def on_ingress_track(track: MediaStreamTrack) -> None:
            out = VoiceTrack(track, pump)
            holder["out"] = out
            ingress.addTrack(out)

        @client.on("track")
        def on_client_track(track: MediaStreamTrack) -> None:
            async def consume() -> None:
                resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
                try:
                    while True:
                        frame = await track.recv()
                        now = time.monotonic()
                        for mono in resampler.resample(frame):
                            received.append((now, mono.to_ndarray().reshape(-1).astype(np.float32) / 32768.0))
                except MediaStreamError:
                    pass
                finally:
                    done.set()

            holder["consumer"] = asyncio.ensure_future(consume())

        await client.setLocalDescription(await client.createOffer())
        await ingress.setRemoteDescription(client.localDescription)
        await ingress.setLocalDescription(await ingress.createAnswer())
        await client.setRemoteDescription(ingress.localDescription)
        deadline = time.monotonic() + SECONDS + 10.0
        while time.monotonic() < deadline and len(received) < int(SECONDS * RATE / CHUNK) - 10:
            await asyncio.sleep(0.1)
        await client.close()
        await ingress.close()
        return received, source, pump

    received, source, pump = asyncio.run(run())
    assert len(received) > 0.8 * SECONDS * RATE / CHUNK, len(received)
    times = np.array([t for t, _ in received])
    audio = [a for _, a in received]
    # Onsets in the returned audio: the first loud frame after a quiet stretch.
    level = np.array([float(np.sqrt(np.mean(a * a))) for a in audio])
    loud = level > 0.02
    heard = [i for i in range(3, loud.size) if loud[i] and not loud[i - 3 : i].any()]
    delays = []
    for onset in onsets[1:]:
        sent = source.sent_at.get(onset)
        if sent is None:
            continue
        later = [times[i] for i in heard if times[i] >= sent]
        if later:
            delays.append((later[0] - sent) * 1000.0)
    assert len(delays) >= 5, (delays, heard, onsets)
    return delays, np.concatenate(audio), pump


def test_disguised_voice_round_trip_over_webrtc() -> None:
    x, onsets = burst_signal(SECONDS)
    plain, _, _ = round_trip(x, onsets, "off", None)
    delays, out, pump = round_trip(x, onsets, None, -4.0)
    p50_plain, p95_plain = float(np.median(plain)), float(np.percentile(plain, 95))
    p50, p95 = float(np.median(delays)), float(np.percentile(delays, 95))
    print(f"audio round trip over WebRTC (two aiortc receivers, 80 ms prefetch each): pass-through p50 {p50_plain:.0f} / "
          f"p95 {p95_plain:.0f} ms; disguise p50 {p50:.0f} / p95 {p95:.0f} ms; fallbacks {pump.stream.counters.fallbacks}")
    # The disguise adds its 25 ms, the conversion and at most about a frame of scheduling.
    assert p50 - p50_plain <= 50.0, (plain, delays)
    assert p95 <= p95_plain + 60.0, (plain, delays)
    moved = 12 * np.log2(median_f0(out, RATE) / median_f0(x, RATE))
    assert abs(moved + 4.0) <= 0.5, moved
    assert pump.stream.counters.converted > 0
