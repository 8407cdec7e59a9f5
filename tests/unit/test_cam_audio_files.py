"""The desktop client's file audio ends (no sound card): a WAV as the microphone, a WAV as the output."""

from __future__ import annotations

import asyncio
import fractions
from pathlib import Path

import av
import numpy as np
import pytest

from mirage.cam.audio import FileMicrophone, open_microphone
from mirage.cam.errors import CamError
from mirage.cam.sinks import WavAudioSink, open_audio_sink
from mirage.voice.audio import read_wav, write_wav_atomic

RATE = 48_000


def _tone(seconds: float, hz: float = 220.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_a_wav_microphone_loops_the_file_in_20_ms_frames(tmp_path: Path) -> None:
    path = tmp_path / "mic.wav"
    clip = _tone(0.05, rate=16_000)  # 50 ms at 16 kHz: resampled to 48 kHz, looped
    write_wav_atomic(path, clip, 16_000)
    mic = open_microphone(f"file:{path}")
    assert isinstance(mic, FileMicrophone)

    async def frames() -> list[av.AudioFrame]:
        track = mic.track()
        return [await track.recv() for _ in range(6)]

    got = asyncio.run(frames())
    assert all(f.samples == 960 and f.sample_rate == RATE for f in got)
    pts = [f.pts for f in got]
    assert all(b - a == 960 for a, b in zip(pts, pts[1:], strict=False))
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in got]).astype(np.float32) / 32767.0
    period = int(0.05 * RATE)
    assert np.abs(pcm[:period]).max() > 0.25  # the tone, not silence
    assert np.allclose(pcm[:period], pcm[period : 2 * period], atol=2e-4)  # looped
    mic.close()


def test_a_missing_microphone_file_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(CamError) as err:
        open_microphone(f"file:{tmp_path / 'none.wav'}")
    assert "\n" not in str(err.value)


def test_the_wav_output_writes_what_came_back(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    sink = open_audio_sink(f"file:{path}")
    assert isinstance(sink, WavAudioSink)
    sent = (_tone(0.2) * 32767).astype(np.int16)
    for k in range(10):
        stereo = np.repeat(sent[k * 960 : (k + 1) * 960], 2)[None, :]  # what aiortc's Opus decoder gives
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = RATE
        frame.pts = k * 960
        frame.time_base = fractions.Fraction(1, RATE)
        sink.write(frame)
    sink.close()
    samples, rate = read_wav(path)
    assert rate == RATE and samples.size == sent.size == sink.samples
    assert np.allclose(samples, sent / 32768.0, atol=2 / 32768)


def test_a_wav_output_needs_a_wav_name_and_an_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(CamError, match="must end in .wav"):
        WavAudioSink(str(tmp_path / "out.mp3"))
    with pytest.raises(CamError, match="does not exist"):
        WavAudioSink(str(tmp_path / "missing" / "out.wav"))
