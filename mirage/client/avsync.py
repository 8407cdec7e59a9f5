"""A/V offset at the receiver, measured glass-to-glass from marks the client puts in both media.

Once a second the client's audio carries a mark: ``gap`` ms of silence, then a
``burst`` ms tone at a fixed level, starting on a 20 ms frame boundary. Every
video frame already carries its number (:mod:`mirage.client.stamp`) and the
time it left (:class:`~mirage.client.tracks.SendLedger`); the frame that left
closest to the burst's first sample is the burst's video mark.

At the receiver, the burst's onset is found in the returned audio (whatever the
voice did to it: the envelope's last rise above 30 % of the burst's peak before
that peak, at 1 ms resolution) and given the receive time of the frame that
held it plus the onset's position in that frame. With ``T`` the send times and
``R`` the receive times (one monotonic clock, one process)::

    offset = (R_audio - T_audio) - (R_video - T_video)

which is the receive-time difference of audio and video sent at the same
moment (the small send-time difference of the pair, under one video frame, is
taken out). Positive: the audio comes later than the video.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class MarkPlan:
    """Where the marks go in the sent audio (in 20 ms frames of 48 kHz)."""

    #: One mark every this many frames (50: one a second).
    every_frames: int = 50
    #: Silence before the burst (so its onset stands out of speech).
    gap_frames: int = 3
    #: The burst's length.
    burst_frames: int = 2
    frequency_hz: float = 1000.0
    amplitude: float = 0.6
    #: How long after the burst left its onset is looked for (a later one is not counted).
    search_s: float = 0.9

    def __post_init__(self) -> None:
        if not (self.gap_frames >= 1 and self.burst_frames >= 1 and self.gap_frames + self.burst_frames < self.every_frames):
            raise ValueError("a mark's gap and burst must fit in its period")
        if self.search_s >= self.every_frames * 0.02:
            raise ValueError("the onset search must end before the next mark leaves")


@dataclass(frozen=True)
class MarkResult:
    offset_ms: float
    audio_latency_ms: float
    video_latency_ms: float


class AvMarks:
    """Marks in the sent audio, and the A/V offsets found at the receiver (all times ``time.monotonic()``)."""

    def __init__(self, plan: MarkPlan = MarkPlan(), sample_rate: int = 48_000, frame_samples: int = 960) -> None:
        self.plan = plan
        self.sample_rate = sample_rate
        self.frame_samples = frame_samples
        self._period = plan.every_frames * frame_samples
        self._onset = plan.gap_frames * frame_samples  # within the period
        self._burst = plan.burst_frames * frame_samples
        ramp = max(1, sample_rate // 1000)
        t = np.arange(self._burst) / sample_rate
        wave = plan.amplitude * np.sin(2.0 * math.pi * plan.frequency_hz * t)
        wave[:ramp] *= np.linspace(0.0, 1.0, ramp)
        wave[-ramp:] *= np.linspace(1.0, 0.0, ramp)
        self._wave = (wave * 32767.0).astype(np.int16)
        #: Send times of burst onsets not yet judged.
        self._pending: deque[float] = deque()
        #: (send, receive) of stamped video frames, first arrivals, the last ~10 s.
        self._video: deque[tuple[float, float]] = deque(maxlen=600)
        #: (receive time of the frame, its samples) of the returned audio, the last ~2 s.
        self._audio: deque[tuple[float, npt.NDArray[np.float32]]] = deque()
        self._keep_s = plan.search_s + 1.0
        self.sent = 0
        self.missed = 0

    # --- sender ---------------------------------------------------------------------------
    def mark_audio(self, pcm: npt.NDArray[np.int16], first_sample: int, sent_at: float) -> npt.NDArray[np.int16]:
        """``pcm`` (1 x N s16, the frame starting at sample ``first_sample``) with any mark written in.

        ``sent_at``: when the frame leaves (its first sample's "glass" time).
        """
        n = pcm.shape[-1]
        out = pcm
        for start in range(first_sample - first_sample % self._period, first_sample + n, self._period):
            gap0, burst0, burst1 = start, start + self._onset, start + self._onset + self._burst
            lo, hi = max(gap0, first_sample), min(burst1, first_sample + n)
            if lo >= hi:
                continue
            if out is pcm:
                out = pcm.copy()
            row = out.reshape(-1)
            a, b = lo - first_sample, hi - first_sample
            row[a:b] = 0
            w0, w1 = max(lo, burst0), hi
            if w0 < w1:
                row[w0 - first_sample : w1 - first_sample] = self._wave[w0 - burst0 : w1 - burst0]
            if first_sample <= burst0 < first_sample + n:
                self._pending.append(sent_at + (burst0 - first_sample) / self.sample_rate)
                self.sent += 1
        return out

    # --- receiver -------------------------------------------------------------------------
    def video_received(self, sent_at: float, received_at: float) -> None:
        self._video.append((sent_at, received_at))

    def audio_received(self, samples: npt.NDArray[np.float32], received_at: float) -> list[MarkResult]:
        """A returned audio frame (48 kHz mono float); the marks that could be judged now."""
        self._audio.append((received_at, np.asarray(samples, np.float32).reshape(-1)))
        while self._audio and self._audio[0][0] < received_at - self._keep_s:
            self._audio.popleft()
        results: list[MarkResult] = []
        while self._pending and received_at > self._pending[0] + self.plan.search_s:
            result = self._judge(self._pending.popleft())
            if result is None:
                self.missed += 1
            else:
                results.append(result)
        return results

    def _judge(self, sent_at: float) -> MarkResult | None:
        end = sent_at + self.plan.search_s
        frames = [(t, s) for t, s in self._audio if sent_at <= t <= end]
        if not frames:
            return None
        times = np.concatenate([t + np.arange(s.size) / self.sample_rate for t, s in frames])
        x = np.abs(np.concatenate([s for _, s in frames]))
        win = max(1, self.sample_rate // 1000)
        env = np.convolve(x, np.ones(win, np.float32) / win, mode="same")
        peak_at = int(np.argmax(env))
        peak = float(env[peak_at])
        if peak < 0.1 * self.plan.amplitude:
            return None
        below = np.nonzero(env[:peak_at] < 0.3 * peak)[0]
        if below.size == 0:
            return None  # the window opens inside the burst: no onset to see
        onset = int(below[-1]) + 1
        received_audio = float(times[onset])
        video = [(s, r) for s, r in self._video if abs(s - sent_at) <= 0.1]
        if not video:
            return None
        sent_video, received_video = min(video, key=lambda v: abs(v[0] - sent_at))
        audio_ms = (received_audio - sent_at) * 1000.0
        video_ms = (received_video - sent_video) * 1000.0
        return MarkResult(offset_ms=audio_ms - video_ms, audio_latency_ms=audio_ms, video_latency_ms=video_ms)


def offset_summary(offsets_ms: list[float]) -> dict[str, float | int] | None:
    """``{"p50", "p95", "abs_p95", "count"}`` of the offsets (ms, audio later = positive); None without any."""
    if not offsets_ms:
        return None
    values = np.asarray(offsets_ms, np.float64)
    return {
        "p50": round(float(np.percentile(values, 50)), 1),
        "p95": round(float(np.percentile(values, 95)), 1),
        "abs_p95": round(float(np.percentile(np.abs(values), 95)), 1),
        "count": int(values.size),
    }
