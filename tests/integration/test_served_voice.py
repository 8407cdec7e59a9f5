"""The voice in a real served session: espeak-ng speech in, the VoiceConverter deployment in the middle.

One session of the served app (real Ray + Serve, aiortc over 127.0.0.1, Opus
both ways) sends looped espeak-ng speech instead of the client's tone and
keeps every returned audio frame. First the voice is off (the server's
default): the returned voice keeps the sent F0 and follows the sent waveform.
Then ``set_options {"voice": "deep"}``: the returned voice's median F0, judged
by Praat (never the product's own code), moves by the preset's semitones
within ±0.5 st and no longer follows the sent waveform. ``/config`` lists the
voices, ``/metrics`` counts the converted chunks and the converter's batches,
and the session's counters show the chunks went through the deployment.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

import mirage.client.session as client_session
from mirage.client.session import MirageSession
from mirage.voice.audio import mono_to_frame
from mirage.voice.config import PRESETS
from standins.speech import SENTENCES, espeak_available, median_f0, speak
from tests.integration.peer import client_config
from tests.integration.served import ServedApp

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (scripts/test.sh installs it)"),
]

RATE = 48000
CHUNK = 960
PRESET = "deep"
#: Seconds of returned audio kept per phase (after SETTLE_S of each phase is dropped).
PHASE_S = 4.0
SETTLE_S = 1.0


class LoopedSpeech(MediaStreamTrack):
    """The client's microphone: espeak-ng speech looped, 20 ms stereo frames paced at real time."""

    kind = "audio"

    def __init__(self, _tone_hz: float | None = None) -> None:
        super().__init__()
        speech = speak(SENTENCES[0], RATE)
        self.samples = np.concatenate([speech, np.zeros(RATE // 5, np.float32)])
        self._k = 0
        self._t0: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        wait = self._t0 + self._k * CHUNK / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        start = (self._k * CHUNK) % (self.samples.size - CHUNK)
        piece = self.samples[start : start + CHUNK]
        frame = av.AudioFrame.from_ndarray(mono_to_frame(piece, 2), format="s16", layout="stereo")
        frame.sample_rate = RATE
        frame.pts = self._k * CHUNK
        frame.time_base = fractions.Fraction(1, RATE)
        self._k += 1
        return frame


class RecordingSession(MirageSession):
    """The real client, keeping every returned audio frame (arrival time, 48 kHz mono float)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.audio: list[tuple[float, np.ndarray]] = []

    async def _drain_audio(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            self.stats.audio_frames += 1
            for mono in resampler.resample(frame):
                self.audio.append((now, mono.to_ndarray().reshape(-1).astype(np.float32) / 32768.0))


def _between(audio: list[tuple[float, np.ndarray]], start: float, end: float) -> np.ndarray:
    parts = [a for t, a in audio if start <= t < end]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _best_correlation(sent: np.ndarray, got: np.ndarray, max_lag: int = RATE // 2) -> float:
    """Largest normalised cross-correlation of a 1 s window of ``got`` against the looped ``sent`` signal."""
    window = got[: RATE] - got[: RATE].mean()
    ref = np.concatenate([sent, sent])
    best = 0.0
    step = 48
    norm_w = float(np.linalg.norm(window)) + 1e-9
    for lag in range(0, sent.size, step):
        seg = ref[lag : lag + window.size]
        if seg.size < window.size:
            break
        seg = seg - seg.mean()
        best = max(best, float(np.dot(seg, window)) / (norm_w * (float(np.linalg.norm(seg)) + 1e-9)))
    return best


async def _phase(session: RecordingSession) -> tuple[float, float]:
    """One phase's window: SETTLE_S dropped, then PHASE_S seconds, or on a loaded box longer, until PHASE_S of
    audio came back (at most 3 x PHASE_S: how fast a starved box returns audio is a benchmark's figure)."""
    start = time.monotonic() + SETTLE_S
    await asyncio.sleep(SETTLE_S + PHASE_S)
    while time.monotonic() < start + 3 * PHASE_S and _between(session.audio, start, time.monotonic()).size < PHASE_S * RATE:
        await asyncio.sleep(0.25)
    return start, time.monotonic()


def test_served_session_disguises_the_voice(served: ServedApp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_session, "ToneAudioTrack", LoopedSpeech)
    served.wait_sessions(0, timeout=30)  # the module before may still be closing its sessions

    # /metrics counts over each replica's life, and a module before may have killed the converter replica (its
    # successor starts from zero): compare what this test adds.
    status, start_metrics = served.get("/metrics")
    assert status == 200
    converted_0, items_0 = start_metrics["voice"]["converted"], start_metrics["voice"]["converter"]["items"]
    status, config = served.get("/config")
    assert status == 200
    assert {"off", *PRESETS, "custom"} <= set(config["voices"]), config.get("voices")
    assert config["default_voice"]["voice"] == "off", "MIRAGE_VOICE_ENABLE is off by default"

    async def run() -> tuple[RecordingSession, tuple[float, float], tuple[float, float], dict, dict, dict]:
        session = RecordingSession(client_config(served.url, served.api_key, fps=5.0, audio=True))
        await session.connect()
        try:
            deadline = time.monotonic() + 20.0
            while not session.audio and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert session.audio, "no audio came back"
            off = await _phase(session)
            bad = await session.set_options(voice="chipmunk")
            assert bad["type"] == "error" and "Unknown voice" in bad["message"], bad
            bad = await session.set_options(voice="custom", pitch_semitones=40)
            assert bad["type"] == "error" and "semitones" in bad["message"], bad
            ack = await session.set_options(voice=PRESET)
            assert ack["type"] == "ack", ack
            on = await _phase(session)
            status, metrics = served.get("/metrics")
            assert status == 200
            state = served.debug_state()
            (described,) = state["sessions"]
            return session, off, on, metrics, described, config
        finally:
            await session.close()

    session, off, on, metrics, described, _ = asyncio.run(run())
    sent = LoopedSpeech().samples
    f0_sent = median_f0(sent, RATE)
    plain = _between(session.audio, *off)
    disguised = _between(session.audio, *on)
    arrivals = np.asarray([t for t, _ in session.audio])
    gaps = np.diff(arrivals[(arrivals >= on[0] - 2.0) & (arrivals < on[1])]) if arrivals.size > 1 else np.zeros(0)
    assert plain.size > 0.8 * PHASE_S * RATE and disguised.size > 0.8 * PHASE_S * RATE, (
        plain.size, disguised.size, f"frames {arrivals.size}, last at {arrivals[-1] - on[1]:+.2f} s from the end, "
        f"largest gaps around the voice change {np.sort(gaps)[-5:] if gaps.size else []}; server {described}")

    st_off = 12 * np.log2(median_f0(plain, RATE) / f0_sent)
    st_on = 12 * np.log2(median_f0(disguised, RATE) / f0_sent)
    corr_off, corr_on = _best_correlation(sent, plain), _best_correlation(sent, disguised)
    voice = metrics["voice"]
    print(
        f"served voice: sent F0 {f0_sent:.1f} Hz; off {st_off:+.2f} st (corr {corr_off:.2f}); {PRESET} {st_on:+.2f} st "
        f"(asked {PRESETS[PRESET].pitch_semitones:+g}, corr {corr_on:.2f}); /metrics voice {voice}"
    )
    assert abs(st_off) <= 0.5, st_off
    assert abs(st_on - PRESETS[PRESET].pitch_semitones) <= 0.5, st_on
    # Pass-through follows the sent waveform (through Opus); the disguise does not.
    assert corr_off > 0.6 and corr_on < corr_off - 0.2, (corr_off, corr_on)

    assert described["voice"]["voice"] == PRESET
    stats = described["voice_stats"]
    # Calls converted by the deployment: one per 20 ms frame at most, fewer when the pump gathers frames into
    # the A/V hold's slack (up to 200 ms a call). A call that comes back late is disguised in the ingress
    # instead (a fallback: never the real voice, and never silence under the default policy); how many fall
    # back on a loaded box is bench_voice's figure, not this test's.
    assert stats["converted"] >= 1 and stats["converted"] + stats["fallbacks"] >= 5 and stats["muted"] == 0, stats
    # /metrics was read just before debug_state: the session's counters went on meanwhile (a few chunks).
    assert voice["converted"] >= stats["converted"] - 25 and voice["chunks"] >= stats["chunks"] - 25, (voice, stats)
    assert voice["converter"]["batches"] > 0 and voice["converter"]["items"] - items_0 >= voice["converted"] - converted_0, voice
    assert voice["converter"]["max_batch_size"] >= 1 and "mean_batch_ms" in voice["converter"]
    assert "fallbacks" in voice and "timeouts" in voice and voice["delay_ms_max"] > 0


def test_load_client_sends_speech_asks_for_a_voice_and_records_it(served: ServedApp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``mirage load --audio-file --voice --pitch --record-audio`` with two sessions: each returned WAV is the
    speech moved by the asked semitones, the JSON counts the audio, and the sessions' chunks share batches."""
    import argparse
    import json

    from mirage.client.load import add_load_parser, run_load
    from mirage.voice.audio import read_wav, write_wav_atomic
    from standins.faces import tom_hanks_path

    served.wait_sessions(0, timeout=30)
    # The voice is what is judged here: a small, slow video keeps the sessions' pictures from starving the
    # two cores (the audio's and the video's encoding share aiortc's threads).
    # A short phrase: the last loop's length of what comes back is a rotation of the sent loop, so the two
    # medians compare like for like (a part of a sentence has its own intonation).
    speech = np.concatenate([speak("Please call me back tomorrow morning.", RATE), np.zeros(RATE // 5, np.float32)])
    loop = speech.size
    wav = tmp_path / "speech.wav"
    write_wav_atomic(wav, speech, RATE)
    parser = argparse.ArgumentParser()
    add_load_parser(parser.add_subparsers(dest="command"))
    out, record_dir = tmp_path / "load.json", tmp_path / "audio"
    args = parser.parse_args([
        "load", "--url", served.url, "--reference", str(tom_hanks_path()), "--api-key", served.api_key,
        "--sessions", "2", "--seconds", "8", "--warmup", "2", "--fps", "2", "--size", "320x240", "--json", str(out),
        "--audio-file", str(wav), "--voice", "low", "--pitch", "4", "--record-audio", str(record_dir),
    ])
    assert run_load(args) == 0
    report = json.loads(out.read_text())
    status, metrics = served.get("/metrics")
    f0_sent = median_f0(speech, RATE)
    moved = []
    for record in report["sessions"]:
        # 8 s of sessions: the audio is held (up to 300 ms) and gathered (up to 200 ms) to stay in step with the
        # video, so its last half second is still on its way when the run ends, and a loaded box returns less
        # (bench_voice's figure): a third of the run's 20 ms chunks must come back.
        assert record["error"] is None and record["audio_chunks"] > 0.3 * 8 * 50, record
        assert record["audio_dropped"] <= record["audio_chunks"] // 10, record
        returned, rate = read_wav(Path(record["audio_file"]))
        # The first second or two come back before the set_options ack (the server's default voice, off): judge
        # the last loop of what came back.
        assert rate == RATE and returned.size > loop + RATE, (returned.size, loop)
        moved.append(12 * np.log2(median_f0(returned[-loop:], RATE) / f0_sent))
    converter = metrics["voice"]["converter"]
    print(f"load with voice low at +4 st: moved {[round(m, 2) for m in moved]} st; converter {converter}")
    assert all(abs(m - 4.0) <= 0.5 for m in moved), moved
    assert converter["max_batch_size"] > 1, converter  # the sessions' chunks share batches
    served.wait_sessions(0, timeout=30)
