"""``mirage load``'s voice flags: what they ask the server for, and bad values refused with one sentence."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mirage.client.load import _plan_from_args, _voice_plan, add_load_parser
from standins.faces import tom_hanks_path


def _args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_load_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["load", "--url", "http://127.0.0.1:1", "--reference", str(tom_hanks_path()), "--json", "x.json", *extra])


def test_voice_flags_become_set_options_fields() -> None:
    assert _voice_plan(_args()) is None
    assert _voice_plan(_args("--voice", "deep")) == {"voice": "deep"}
    assert _voice_plan(_args("--voice", "deep", "--pitch", "-3")) == {"voice": "deep", "pitch_semitones": -3.0}
    # --pitch/--formant without --voice: the DSP disguise with exactly those values.
    assert _voice_plan(_args("--pitch", "3")) == {"voice": "custom", "pitch_semitones": 3.0}
    assert _voice_plan(_args("--voice", "off")) == {"voice": "off"}


@pytest.mark.parametrize(
    "extra, words",
    [
        (("--voice", "chipmunk"), "Unknown voice"),
        (("--pitch", "40"), "semitones"),
        (("--formant", "3"), "formant"),
        (("--audio-file", "/nonexistent/speech.wav"), "not found"),
    ],
)
def test_bad_voice_flags_end_with_one_sentence(extra: tuple[str, ...], words: str) -> None:
    with pytest.raises(SystemExit) as err:
        _plan_from_args(_args(*extra))
    assert words in str(err.value) and str(err.value).startswith("mirage load: ")


def test_audio_file_is_read_at_48k(tmp_path: Path) -> None:
    import numpy as np

    from mirage.voice.audio import write_wav_atomic

    wav = tmp_path / "tone.wav"
    write_wav_atomic(wav, (0.2 * np.sin(np.arange(16000) * 0.1)).astype(np.float32), 16000)
    plan = _plan_from_args(_args("--audio-file", str(wav)))
    assert plan.audio_samples is not None and plan.audio_samples.size == 48000
