"""serve_app's voice wiring without Ray: the session's track on a failing or slow deployment, and the totals.

The deployment handle here is a stand-in object with the handle's shape
(``convert.remote(chunk)`` returning an awaitable) whose calls fail or hang, so
the test shows what the ingress does when the VoiceConverter is down or late:
the disguise goes on locally, the real voice never goes out, and it is counted.
"""

from __future__ import annotations

import asyncio
import fractions
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from mirage.voice.audio import mono_to_frame
from mirage.voice.config import VoiceDefaults, parse_voice
from serve_app.voice import VoiceTotals, deployment_gatherer, local_convert, local_core, voice_track

RATE = 48000
CHUNK = 960


class Tone(MediaStreamTrack):
    kind = "audio"

    def __init__(self, frames: int) -> None:
        super().__init__()
        t = np.arange(frames * CHUNK) / RATE
        self.samples = (0.3 * np.sin(2 * np.pi * 180.0 * t) + 0.1 * np.sin(2 * np.pi * 540.0 * t)).astype(np.float32)
        self._k = 0
        self._frames = frames

    async def recv(self) -> av.AudioFrame:
        if self._k >= self._frames:
            raise MediaStreamError
        await asyncio.sleep(0.002)
        piece = self.samples[self._k * CHUNK : (self._k + 1) * CHUNK]
        frame = av.AudioFrame.from_ndarray(mono_to_frame(piece, 1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._k * CHUNK
        frame.time_base = fractions.Fraction(1, RATE)
        self._k += 1
        return frame


class _Method:
    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.calls = 0

    def remote(self, chunk: Any) -> Any:
        self.calls += 1

        async def answer() -> Any:
            if self.behaviour == "hang":
                await asyncio.sleep(10.0)
            raise RuntimeError("replica died")

        return answer()


class BrokenHandle:
    def __init__(self, behaviour: str) -> None:
        self.convert = _Method(behaviour)


def _run(convert: Any, voice: str, frames: int = 40, deadline_s: float = 0.05) -> tuple[np.ndarray, np.ndarray, dict]:
    async def go() -> tuple[np.ndarray, np.ndarray, dict]:
        source = Tone(frames)
        track = voice_track(source, VoiceDefaults(), convert, lambda: 0.0, deadline_s=deadline_s)
        track.pump.stream.set_selection(parse_voice(voice))
        out = []
        while True:
            try:
                frame = await asyncio.wait_for(track.recv(), 5.0)
            except MediaStreamError:
                break
            out.append(frame.to_ndarray().reshape(-1).astype(np.float32) / 32768.0)
        track.stop()
        return source.samples, np.concatenate(out), track.pump.stats()

    return asyncio.run(go())


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.size, b.size)
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def test_a_failing_or_late_deployment_never_lets_the_real_voice_out() -> None:
    for behaviour in ("fail", "hang"):
        handle = BrokenHandle(behaviour)
        sent, got, stats = _run(deployment_gatherer(handle).member(), "deep")
        assert handle.convert.calls > 0
        assert got.size >= 0.9 * sent.size, (behaviour, got.size)
        assert stats["fallbacks"] == stats["chunks"] - stats["converted"] and stats["fallbacks"] > 0, stats
        assert stats["converted"] == 0
        assert (stats["errors"] if behaviour == "fail" else stats["timeouts"]) > 0, stats
        # Disguised (pitch moved): the output does not follow the input at any small lag.
        best = max(abs(_corr(sent[: got.size - lag], got[lag:])) for lag in range(0, 2400, 48))
        assert best < 0.5, (behaviour, best)


def test_voice_off_passes_and_local_converter_disguises() -> None:
    sent, got, stats = _run(deployment_gatherer(BrokenHandle("fail")).member(), "off")
    assert stats["converted"] == 0 and stats["fallbacks"] == 0  # off: no call at all, the voice as sent
    assert _corr(sent, got) > 0.99
    sent, got, stats = _run(local_convert(local_core()), "high")
    assert stats["converted"] > 0 and stats["fallbacks"] == 0, stats


def test_totals_add_ended_and_open_sessions() -> None:
    totals = VoiceTotals()
    totals.add({"chunks": 10, "converted": 8, "fallbacks": 2, "delay_ms": 30.0})
    snap = totals.snapshot([{"chunks": 5, "converted": 5, "timeouts": 1, "delay_ms": 40.0}])
    assert snap["chunks"] == 15 and snap["converted"] == 13 and snap["fallbacks"] == 2 and snap["timeouts"] == 1
    assert snap["sessions_with_audio"] == 1 and snap["delay_ms_max"] == 40.0
