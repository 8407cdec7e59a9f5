"""A/V marks: the offset found at the receiver is the delay difference that was put in, disguise or not."""

from __future__ import annotations

import numpy as np
import pytest

from mirage.client.avsync import AvMarks, MarkPlan, offset_summary
from mirage.voice.config import PRESETS
from mirage.voice.dsp import DspVoiceConverter

RATE, FRAME, FPS = 48_000, 960, 30.0


def _run(audio_delay_s: float, video_delay_s: float, seconds: float = 6.0, disguise: bool = False,
         base: float = 0.0) -> tuple[AvMarks, list[float]]:
    """Send marked audio (a tone of level ``base`` under the marks) and 30 fps frames; receive both delayed."""
    marks = AvMarks()
    dsp = DspVoiceConverter()
    state = dsp.new_state()
    frames = int(seconds * 50)
    t = np.arange(frames * FRAME) / RATE
    tone = (base * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    video_sent = np.arange(int(seconds * FPS)) / FPS
    for s in video_sent:
        marks.video_received(float(s), float(s) + video_delay_s)
    offsets: list[float] = []
    for k in range(frames):
        sent_at = k * FRAME / RATE
        pcm = marks.mark_audio(tone[None, k * FRAME : (k + 1) * FRAME], k * FRAME, sent_at)
        assert pcm.shape == (1, FRAME)
        x = pcm.reshape(-1).astype(np.float32) / 32768.0
        if disguise:
            x = dsp.process(x, state, PRESETS["deep"])
        offsets += [r.offset_ms for r in marks.audio_received(x, sent_at + audio_delay_s)]
    return marks, offsets


@pytest.mark.parametrize(("audio", "video"), [(0.12, 0.07), (0.06, 0.15), (0.1, 0.1)])
def test_offset_is_the_delay_difference(audio: float, video: float) -> None:
    marks, offsets = _run(audio, video, base=0.2)
    assert marks.sent == 6 and len(offsets) >= 4, (marks.sent, offsets)
    want = (audio - video) * 1000.0
    assert np.all(np.abs(np.asarray(offsets) - want) < 2.0), (offsets, want)
    summary = offset_summary(offsets)
    assert summary is not None and abs(summary["p50"] - want) < 2.0 and summary["count"] == len(offsets)


def test_the_disguise_latency_shows_as_an_offset() -> None:
    """The DSP disguise delays the voice by 25 ms: the marks see it (within a few ms of onset smear)."""
    _, offsets = _run(0.1, 0.1, disguise=True)
    assert len(offsets) >= 4
    assert abs(float(np.median(offsets)) - DspVoiceConverter().latency_ms) < 8.0, offsets


def test_no_marks_without_a_burst_coming_back() -> None:
    marks = AvMarks()
    for k in range(200):
        marks.mark_audio(np.zeros((1, FRAME), np.int16), k * FRAME, k * 0.02)
        assert marks.audio_received(np.zeros(FRAME, np.float32), k * 0.02 + 0.05) == []
    assert marks.sent == 4 and marks.missed >= 2
    assert offset_summary([]) is None


def test_a_plan_whose_search_overlaps_the_next_mark_is_refused() -> None:
    with pytest.raises(ValueError):
        MarkPlan(every_frames=40, search_s=0.9)
