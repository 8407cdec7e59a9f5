"""Audio devices for the desktop client: the microphone it sends and the speaker it plays into.

Both go through ``sounddevice`` (PortAudio), imported only when audio is asked
for. The audio coming back from the server is played into a chosen output
device, which is how it reaches a call: a virtual cable (VB-Cable on Windows,
BlackHole on macOS) or a PulseAudio/PipeWire null sink on Linux, whose monitor
the call app then uses as its microphone (see docs/desktop.md).

Audio is 48 kHz s16 (what WebRTC's Opus uses). A small FIFO sits between the
network and the device callback: it is capped (old audio is dropped rather
than letting delay grow) and underflows play silence.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from mirage.cam.errors import CamError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 48_000
#: Samples in one 20 ms WebRTC audio frame.
FRAME_SAMPLES = SAMPLE_RATE // 50


def portaudio_help(platform: str = sys.platform) -> str:
    """What to install when PortAudio is missing, for this OS."""
    if platform.startswith("linux"):
        return (
            "Audio needs the PortAudio library, which was not found: install it with "
            "`sudo apt install libportaudio2` (Fedora: `sudo dnf install portaudio`), or leave out --audio-out/--audio-in."
        )
    return (
        "Audio needs the PortAudio library, which was not found: reinstall sounddevice "
        "(`pip install --force-reinstall sounddevice`, its Windows and macOS wheels include PortAudio), "
        "or leave out --audio-out/--audio-in."
    )


def import_sounddevice() -> Any:
    """The ``sounddevice`` module, or :class:`CamError` with the install step."""
    try:
        import sounddevice
    except ImportError:
        raise CamError("Audio needs the sounddevice package: `pip install sounddevice`.") from None
    except OSError:  # the package is there, the PortAudio shared library is not
        raise CamError(portaudio_help()) from None
    return sounddevice


def resolve_device(sd: Any, spec: str | None, kind: str) -> int | None:
    """A PortAudio device index for ``spec`` (index, or part of a name); None = the default device.

    ``kind`` is ``"output"`` or ``"input"``; only devices with such channels count.
    """
    if spec is None or spec.strip().lower() in ("", "default"):
        return None
    key = f"max_{kind}_channels"
    try:
        devices = list(sd.query_devices())
    except Exception as exc:  # noqa: BLE001 - PortAudio reports host errors many ways
        raise CamError(f"Could not list the audio devices: {exc}.") from None
    usable = [(i, d) for i, d in enumerate(devices) if int(d.get(key, 0)) > 0]
    text = spec.strip()
    if text.isdigit():
        index = int(text)
        if any(i == index for i, _ in usable):
            return index
        raise CamError(f"Audio {kind} device {index} does not exist; {_listing(usable)}.")
    exact = [i for i, d in usable if str(d.get("name", "")).lower() == text.lower()]
    partial = [i for i, d in usable if text.lower() in str(d.get("name", "")).lower()]
    if exact:
        return exact[0]
    if partial:
        return partial[0]
    raise CamError(f"No audio {kind} device matches {text!r}; {_listing(usable)}.")


def _listing(usable: list[tuple[int, Any]]) -> str:
    if not usable:
        return "this machine has none"
    names = ", ".join(f"{i}: {d.get('name')}" for i, d in usable[:12])
    return f"available: {names}"


class AudioFifo:
    """Thread-safe FIFO of int16 samples, shape (n, channels); capped, pads underflows with silence."""

    def __init__(self, channels: int, max_samples: int) -> None:
        self.channels = channels
        self.max_samples = max_samples
        self._chunks: deque[npt.NDArray[np.int16]] = deque()
        self._size = 0
        self._lock = threading.Lock()
        self.dropped = 0  # samples thrown away because the FIFO was full
        self.underflows = 0  # reads that came up short

    def __len__(self) -> int:
        return self._size

    def push(self, samples: npt.NDArray[np.int16]) -> None:
        block = np.asarray(samples, dtype=np.int16).reshape(-1, self.channels)
        with self._lock:
            self._chunks.append(block)
            self._size += len(block)
            while self._size > self.max_samples and self._chunks:
                excess = self._size - self.max_samples
                head = self._chunks[0]
                if len(head) <= excess:
                    self._chunks.popleft()
                    self._size -= len(head)
                    self.dropped += len(head)
                else:
                    self._chunks[0] = head[excess:]
                    self._size -= excess
                    self.dropped += excess

    def pop(self, count: int) -> npt.NDArray[np.int16]:
        """Exactly ``count`` samples (silence where there were not enough)."""
        out = np.zeros((count, self.channels), np.int16)
        filled = 0
        with self._lock:
            while filled < count and self._chunks:
                head = self._chunks[0]
                take = min(count - filled, len(head))
                out[filled : filled + take] = head[:take]
                filled += take
                if take == len(head):
                    self._chunks.popleft()
                else:
                    self._chunks[0] = head[take:]
                self._size -= take
            if filled < count:
                self.underflows += 1
        return out


def frame_samples(frame: av.AudioFrame, resampler: av.AudioResampler) -> list[npt.NDArray[np.int16]]:
    """A received frame as (n, channels) int16 blocks in the resampler's layout and rate."""
    blocks = []
    for out in resampler.resample(frame):
        channels = len(out.layout.channels)
        data = out.to_ndarray()  # packed s16: (1, n * channels)
        blocks.append(np.ascontiguousarray(data.reshape(-1, channels), dtype=np.int16))
    return blocks


class MicrophoneInput:
    """The microphone, open for the whole run; each session gets a fresh :meth:`track` that reads it."""

    def __init__(self, device: str | None = None, *, max_latency_s: float = 0.2) -> None:
        sd = import_sounddevice()
        self.device = resolve_device(sd, device, "input")
        self.fifo = AudioFifo(1, int(SAMPLE_RATE * max_latency_s))
        self.origin = time.monotonic()
        try:
            self._stream = sd.InputStream(
                samplerate=SAMPLE_RATE,
                channels=1,
                dtype="int16",
                device=self.device,
                blocksize=FRAME_SAMPLES,
                callback=self._callback,
            )
            self._stream.start()
        except Exception as exc:  # noqa: BLE001 - sounddevice.PortAudioError and host errors
            raise CamError(f"Could not open the microphone: {str(exc).rstrip('.')}.") from None

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        self.fifo.push(np.asarray(indata, dtype=np.int16))

    def track(self) -> MicrophoneTrack:
        return MicrophoneTrack(self.fifo, origin=self.origin)

    def close(self) -> None:
        try:
            self._stream.stop()
            self._stream.close()
        except Exception:  # noqa: BLE001 - closing twice or after a host error
            logger.debug("microphone close failed", exc_info=True)


class MicrophoneTrack(MediaStreamTrack):
    """20 ms mono s16 frames from an :class:`AudioFifo`, paced by the clock (silence on underflow).

    Timestamps count from ``origin`` (a wall-clock instant before the session
    started), so they keep increasing when this track replaces the session's
    placeholder audio track mid-stream.
    """

    kind = "audio"

    def __init__(self, fifo: AudioFifo, *, origin: float) -> None:
        super().__init__()
        self._fifo = fifo
        self._origin = origin
        self._sent: int | None = None

    def _aligned_now(self, now: float) -> int:
        return int((now - self._origin) * SAMPLE_RATE) // FRAME_SAMPLES * FRAME_SAMPLES

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._sent is None:
            self._sent = self._aligned_now(now)
        else:
            due = self._origin + self._sent / SAMPLE_RATE
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 1.0:  # the loop stalled: skip ahead instead of bursting
                self._sent = self._aligned_now(now)
        samples = self._fifo.pop(FRAME_SAMPLES)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._sent += FRAME_SAMPLES
        return frame


class _LoopedFifo(AudioFifo):
    """An endless FIFO that plays a fixed clip over and over (a file as the microphone)."""

    def __init__(self, pcm: npt.NDArray[np.int16]) -> None:
        super().__init__(1, pcm.size)
        self._pcm = pcm.reshape(-1)
        self._at = 0

    def pop(self, count: int) -> npt.NDArray[np.int16]:
        index = (self._at + np.arange(count)) % self._pcm.size
        self._at = int((self._at + count) % self._pcm.size)
        return self._pcm[index].reshape(-1, 1)


class FileMicrophone:
    """A WAV file, looped, sent as the microphone (``--audio-in file:IN.wav``: demos, tests, no sound card)."""

    def __init__(self, path: str) -> None:
        from mirage.voice.audio import read_wav, resample
        from mirage.voice.config import VoiceError

        try:
            samples, rate = read_wav(Path(path))
        except VoiceError as exc:
            raise CamError(str(exc)) from None
        mono = np.clip(resample(samples, rate, SAMPLE_RATE), -1.0, 1.0)
        if mono.size < FRAME_SAMPLES:
            raise CamError(f"The audio file {path} is shorter than one 20 ms frame.")
        self._pcm = (mono * 32767.0).astype(np.int16)
        self.name = Path(path).name
        self.origin = time.monotonic()

    def track(self) -> MicrophoneTrack:
        return MicrophoneTrack(_LoopedFifo(self._pcm), origin=self.origin)

    def close(self) -> None:
        pass


def open_microphone(spec: str | None) -> MicrophoneInput | FileMicrophone:
    """``file:IN.wav`` (a looped file), else an input device (index or name; None: the default)."""
    if spec is not None and spec.startswith("file:"):
        return FileMicrophone(spec[5:])
    return MicrophoneInput(spec)
