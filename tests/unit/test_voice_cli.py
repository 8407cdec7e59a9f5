"""``python -m mirage voice``: real speech in, a disguised WAV out; bad input is one sentence and writes nothing."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mirage.cli import main
from mirage.voice.audio import read_wav, write_wav_atomic
from standins.speech import espeak_available, median_f0, rms_db, speak

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (scripts/test.sh installs it)")


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("voice") / "speech.wav"
    write_wav_atomic(path, speak(rate=22050), 22050)  # espeak's own rate: the CLI keeps the file's rate
    return path


def test_pitch_without_voice_is_the_disguise_with_exactly_that_value(speech_wav: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    assert main(["voice", "--input", str(speech_wav), "--output", str(out), "--pitch", "-4"]) == 0
    x, rate_in = read_wav(speech_wav)
    y, rate_out = read_wav(out)
    assert rate_out == rate_in and abs(y.size - x.size) <= 1
    moved = 12 * np.log2(median_f0(y, rate_out) / median_f0(x, rate_in))
    assert abs(moved + 4.0) <= 0.5
    assert abs(rms_db(y) - rms_db(x)) <= 1.0
    assert not list(tmp_path.glob(".*part*"))


def test_a_preset_through_the_console_entry(speech_wav: Path, tmp_path: Path) -> None:
    out = tmp_path / "deep.wav"
    proc = subprocess.run(
        [sys.executable, "-m", "mirage", "voice", "--input", str(speech_wav), "--output", str(out), "--voice", "deep"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and out.is_file()


def _riff(fmt_code: int, channels: int, rate: int, bits: int, data: bytes) -> bytes:
    fmt = struct.pack("<HHIIHH", fmt_code, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
    return b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data


@pytest.mark.parametrize(
    ("content", "args", "needle"),
    [
        (None, [], "not found"),
        (b"", [], "empty"),
        (b"this is plain text pretending to be a wav file, long enough for a header....", [], "not a WAV"),
        (_riff(85, 1, 44100, 16, b"\0" * 64), [], "unsupported WAV encoding"),
        (_riff(1, 1, 8000, 16, b""), [], "no audio"),
        (_riff(1, 1, 8000, 16, b"\0" * 400).replace(struct.pack("<I", 400), struct.pack("<I", 0xFFFFFF00)), [], "limit"),
        ("speech", ["--voice", "chipmunk"], "Unknown voice"),
        ("speech", ["--pitch", "30"], "between -12 and 12"),
        ("speech", ["--formant", "3"], "formant factor"),
        ("speech", ["--voice", "rvc:nobody"], "not available"),
    ],
)
def test_bad_input_is_one_sentence_and_writes_nothing(
    tmp_path: Path, speech_wav: Path, capsys: pytest.CaptureFixture[str], content: bytes | str | None, args: list[str], needle: str
) -> None:
    src = tmp_path / "in.wav"
    if content == "speech":
        src.write_bytes(speech_wav.read_bytes())
    elif isinstance(content, bytes):
        src.write_bytes(content)
    out = tmp_path / "out.wav"
    assert main(["voice", "--input", str(src), "--output", str(out), *args]) == 1
    err = capsys.readouterr().err.strip()
    assert needle in err, err
    assert err.count("\n") == 0 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == (["in.wav"] if content is not None else [])


def test_wrong_output_kind_and_missing_folder(tmp_path: Path, speech_wav: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["voice", "--input", str(speech_wav), "--output", str(tmp_path / "x.mp3"), "--voice", "low"]) == 1
    assert main(["voice", "--input", str(speech_wav), "--output", str(tmp_path / "no" / "x.wav"), "--voice", "low"]) == 1
    assert main(["voice", "--input", str(speech_wav), "--output", str(speech_wav), "--voice", "low"]) == 1
    err = capsys.readouterr().err
    assert ".wav file" in err and "does not exist" in err and "overwrite" in err
    assert list(tmp_path.iterdir()) == []
