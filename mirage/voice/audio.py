"""Audio plumbing for the voice path: safe WAV reading, atomic WAV writing, PCM <-> float, resampling.

WAV files are checked before they are decoded (RIFF/WAVE magic, a ``fmt``
chunk with a supported encoding, a declared length within the limit), so a
text file named ``.wav`` or a header that claims hours of audio ends with one
sentence. Writers go through a temporary file beside the target and a rename:
a failure never leaves a half-written output.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from mirage.voice.config import VoiceError

#: Longest recording the CLI accepts (minutes of speech, not hours).
MAX_SECONDS = 600.0
_FORMATS = {1: "PCM", 3: "IEEE float", 0xFFFE: "extensible"}


def _check_header(data: bytes, name: str, max_seconds: float) -> None:
    if len(data) < 44:
        raise VoiceError(f"{name} is empty or too short to be a WAV file.")
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise VoiceError(f"{name} is not a WAV file (no RIFF/WAVE header).")
    offset = 12
    fmt: tuple[int, int, int, int] | None = None
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        body = offset + 8
        if chunk_id == b"fmt " and size >= 16:
            code, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", data, body)
            fmt = (code, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise VoiceError(f"{name} is a malformed WAV file (data before format).")
            code, channels, rate, bits = fmt
            if code not in _FORMATS:
                raise VoiceError(f"{name} uses an unsupported WAV encoding (format {code}); use PCM or float.")
            if not 1 <= channels <= 8 or not 8000 <= rate <= 192000 or bits not in (8, 16, 24, 32, 64):
                raise VoiceError(f"{name} declares an unsupported layout ({channels} channels, {rate} Hz, {bits} bits).")
            # The declared length decides, before anything is decoded.
            seconds = size / max(1, channels * bits // 8) / rate
            if seconds > max_seconds:
                raise VoiceError(f"{name} declares {seconds:.0f} s of audio; the limit is {max_seconds:.0f} s.")
            declared = min(size, len(data) - body)
            if declared < channels * bits // 8:
                raise VoiceError(f"{name} has no audio samples.")
            return
        offset = body + size + (size & 1)
    raise VoiceError(f"{name} is a malformed WAV file (no format or data chunk).")


def read_wav(path: Path, max_seconds: float = MAX_SECONDS) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate; :class:`VoiceError` for anything unusable."""
    path = Path(path)
    if not path.is_file():
        raise VoiceError(f"Input file not found: {path}.")
    data = path.read_bytes()
    _check_header(data, path.name, max_seconds)
    from scipy.io import wavfile

    try:
        rate, samples = wavfile.read(io.BytesIO(data))
    except (ValueError, EOFError, struct.error) as exc:
        raise VoiceError(f"{path.name} could not be decoded as WAV ({type(exc).__name__}).") from None
    return to_float_mono(np.asarray(samples)), int(rate)


def to_float_mono(samples: np.ndarray) -> np.ndarray:
    """Any PCM/float array, (n,) or (n, channels), as float32 mono in [-1, 1]."""
    if samples.dtype == np.uint8:
        x = (samples.astype(np.float32) - 128.0) / 128.0
    elif samples.dtype.kind == "i":
        x = samples.astype(np.float32) / float(np.iinfo(samples.dtype).max + 1)
    else:
        x = np.nan_to_num(samples.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if x.ndim == 2:
        x = x.mean(axis=1)
    return np.ascontiguousarray(x.reshape(-1), dtype=np.float32)


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] as int16 (clipped)."""
    pcm: np.ndarray = np.clip(np.rint(np.asarray(samples, np.float32) * 32767.0), -32768, 32767).astype(np.int16)
    return pcm


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """16-bit PCM mono WAV bytes."""
    pcm = to_pcm16(samples).tobytes()
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16, b"data", len(pcm)
    )
    return header + pcm


def write_wav_atomic(path: Path, samples: np.ndarray, rate: int) -> None:
    """Write a mono 16-bit WAV through a temporary file beside ``path`` and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".part.wav", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(wav_bytes(samples, rate))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy), float32 out; identity when the rates match."""
    if src_rate == dst_rate:
        return np.asarray(samples, np.float32)
    from scipy.signal import resample_poly

    ratio = Fraction(dst_rate, src_rate)
    return np.asarray(resample_poly(np.asarray(samples, np.float64), ratio.numerator, ratio.denominator), np.float32)


def frame_to_mono(pcm: np.ndarray, channels: int) -> np.ndarray:
    """A decoded WebRTC audio frame (``AudioFrame.to_ndarray()``: s16, packed/interleaved, shape (1, n*channels)
    or planar (channels, n)) as float32 mono."""
    arr = np.asarray(pcm)
    if arr.ndim == 2 and arr.shape[0] == channels and channels > 1:
        inter = arr.T
    else:
        inter = arr.reshape(-1, channels) if channels > 1 else arr.reshape(-1, 1)
    return to_float_mono(inter)


def mono_to_frame(samples: np.ndarray, channels: int) -> np.ndarray:
    """float32 mono as packed s16 (1, n*channels), the layout ``AudioFrame.from_ndarray(..., format='s16', layout=...)`` takes."""
    pcm = to_pcm16(samples)
    if channels > 1:
        pcm = np.repeat(pcm, channels)
    return pcm.reshape(1, -1)
