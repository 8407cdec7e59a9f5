"""Real speech for the voice tests, made on the machine, and an independent judge of it.

Speech: Debian's ``espeak-ng`` (scripts/test.sh installs it) speaks fixed
sentences to WAV; nothing is downloaded or committed. Judge: Praat through
``praat-parselmouth`` (GPL-3.0, a test/benchmark-only tool that the product
never imports) tracks F0 and formants; the product's own code is never used
to check itself.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mirage.voice.audio import read_wav, resample

SENTENCES = (
    "The quick brown fox jumps over the lazy dog, and then it runs away into the woods.",
    "Please call me back tomorrow morning; I will be at home after nine o'clock.",
)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str = SENTENCES[0], rate: int = 48000, voice: str = "en", pitch: int = 50) -> np.ndarray:
    """``text`` spoken by espeak-ng, as float32 mono at ``rate``."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (scripts/test.sh installs it)")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "speech.wav"
        subprocess.run([exe, "-v", voice, "-p", str(pitch), "-w", str(path), text], check=True, timeout=60, capture_output=True)
        samples, src_rate = read_wav(path)
    return resample(samples, src_rate, rate)


@dataclass(frozen=True)
class Track:
    times: np.ndarray
    f0: np.ndarray  # Hz, NaN where unvoiced


def pitch_track(samples: np.ndarray, rate: int) -> Track:
    import parselmouth

    pitch = parselmouth.Sound(np.asarray(samples, np.float64), rate).to_pitch(time_step=0.01, pitch_floor=60.0, pitch_ceiling=500.0)
    f0 = pitch.selected_array["frequency"].astype(np.float64)
    f0[f0 <= 0] = np.nan
    return Track(np.asarray(pitch.xs()), f0)


def median_f0(samples: np.ndarray, rate: int) -> float:
    return float(np.nanmedian(pitch_track(samples, rate).f0))


def formants_at(samples: np.ndarray, rate: int, times: np.ndarray, count: int = 2) -> np.ndarray:
    """F1..F``count`` (Hz) at ``times`` (Burg LPC, Praat's defaults for a male voice), shape (count, len(times))."""
    import parselmouth

    formant = parselmouth.Sound(np.asarray(samples, np.float64), rate).to_formant_burg(
        max_number_of_formants=5, maximum_formant=5000.0
    )
    return np.array([[formant.get_value_at_time(k, float(t)) for t in times] for k in range(1, count + 1)])


def voiced_times(samples: np.ndarray, rate: int) -> np.ndarray:
    track = pitch_track(samples, rate)
    return track.times[np.isfinite(track.f0)]


def rms_db(samples: np.ndarray) -> float:
    x = np.asarray(samples, np.float64)
    return float(10.0 * np.log10(np.mean(x * x) + 1e-20))
