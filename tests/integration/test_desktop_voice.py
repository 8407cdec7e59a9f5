"""The desktop client's voice: a converted voice on its audio output, without a sound card.

``mirage cam`` runs in this process against the served app (real Ray + Serve,
aiortc over 127.0.0.1) with a video file as the camera, the file video sink,
``--audio-in file:IN.wav`` (espeak-ng speech, looped, as the microphone) and
``--audio-out file:OUT.wav`` (what would go to the virtual microphone, written
to a WAV instead), and ``--voice deep``. The WAV that comes out is the speech
moved by the preset's semitones (judged by Praat) and no longer the sent
waveform. A bad voice ends the client with one sentence before anything opens.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from mirage.cam.cli import add_cam_arguments, run_cam
from mirage.voice.audio import read_wav, write_wav_atomic
from mirage.voice.config import PRESETS
from standins.faces import tom_hanks_path
from standins.speech import espeak_available, median_f0, speak
from tests.integration.served import ServedApp
from tests.media import astronaut_clip, write_mp4

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (scripts/test.sh installs it)"),
]

RATE = 48_000
SECONDS = 9.0


def _args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_cam_arguments(parser)
    return parser.parse_args(list(extra))


def test_desktop_client_plays_the_converted_voice_into_its_audio_output(
    served: ServedApp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    served.wait_sessions(0, timeout=30)
    speech = np.concatenate([speak("Please call me back tomorrow morning.", RATE), np.zeros(RATE // 5, np.float32)])
    loop = speech.size
    wav_in, wav_out = tmp_path / "mic.wav", tmp_path / "voice-out.wav"
    write_wav_atomic(wav_in, speech, RATE)
    camera = write_mp4(tmp_path / "camera.mp4", astronaut_clip(480, 360, 15.0), seconds=4.0)
    common = [
        "--url", served.url, "--reference", str(tom_hanks_path()), "--api-key", served.api_key,
        "--camera", str(camera), "--width", "480", "--height", "360", "--fps", "15",
        "--sink", f"file:{tmp_path / 'out.mp4'}",
        "--audio-in", f"file:{wav_in}", "--audio-out", f"file:{wav_out}",
    ]
    assert run_cam(_args(*common, "--voice", "deep", "--seconds", str(SECONDS))) == 0, capsys.readouterr().err

    returned, rate = read_wav(wav_out)
    assert rate == RATE and returned.size > loop + 2 * RATE, (returned.size, loop)
    # The first moments come back before the set_options ack (the server's default voice): judge the last loop.
    tail = returned[-loop:]
    moved = 12 * np.log2(median_f0(tail, RATE) / median_f0(speech, RATE))
    print(f"desktop client, voice deep: the audio output's F0 moved {moved:+.2f} st "
          f"(asked {PRESETS['deep'].pitch_semitones:+g}); {returned.size / RATE:.1f} s written")
    assert abs(moved - PRESETS["deep"].pitch_semitones) <= 0.5, moved
    served.wait_sessions(0, timeout=30)

    # A voice the client cannot parse: one sentence, exit 1, nothing written.
    bad_out = tmp_path / "never.wav"
    bad = [*common[:-1], f"file:{bad_out}", "--voice", "chipmunk", "--seconds", "1"]
    assert run_cam(_args(*bad)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "voice" in err[0].lower(), err
    assert not bad_out.exists()
