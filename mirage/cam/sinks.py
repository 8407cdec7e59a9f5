"""Where the desktop client's output goes: a virtual camera, a preview window, a file, a speaker.

``--sink virtual`` (``virtual:/dev/video10`` picks the device) feeds a virtual
camera through ``pyvirtualcam``: v4l2loopback on Linux, OBS Virtual Camera on
Windows and macOS. When none is installed the sink stops with the exact steps
to install one (:func:`virtual_camera_help`).

``--sink window`` is a preview window. Mirage ships the *headless* OpenCV
(no GUI, no libGL), so the window uses OpenCV's own ``imshow`` only when a GUI
build is installed (``pip install opencv-python`` instead of the headless
wheel) and otherwise Tk from Python's standard library; with neither (or no
display) it stops with a sentence saying so.

``--sink file:OUT.mp4`` records through :class:`mirage.video.AtomicVideoWriter`
(the file appears complete, or not at all) at the requested size.

Every video sink takes BGR frames of the size it was opened with. ``on_loop``
sinks must be written from the event loop's thread (GUI toolkits); the others
are written from a worker thread.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Protocol

import av
import cv2
import numpy as np

from mirage.cam.audio import SAMPLE_RATE, AudioFifo, frame_samples, import_sounddevice, resolve_device
from mirage.cam.errors import CamError
from mirage.types import Image

logger = logging.getLogger(__name__)

SinkKind = Literal["virtual", "window", "file"]

#: Linux set-up of the virtual camera. exclusive_caps=1 makes the device announce
#: itself as a capture-only camera, which is what Chrome (and so Meet) and Zoom require.
V4L2LOOPBACK_INSTALL = "sudo apt install v4l2loopback-dkms"
V4L2LOOPBACK_MODPROBE = 'sudo modprobe v4l2loopback devices=1 video_nr=10 card_label="Mirage" exclusive_caps=1'


def virtual_camera_help(platform: str = sys.platform) -> str:
    """One actionable paragraph: how to get a virtual camera on this OS."""
    if platform.startswith("linux"):
        return (
            f"No virtual camera found: install v4l2loopback with `{V4L2LOOPBACK_INSTALL}`, load it with "
            f"`{V4L2LOOPBACK_MODPROBE}` (exclusive_caps=1 is what makes Chrome and Zoom list the camera), "
            "then run this again; --sink window or --sink file:OUT.mp4 work without it."
        )
    if platform == "darwin":
        return (
            "No virtual camera found: install OBS Studio 30 or newer (https://obsproject.com), start it once, "
            "click Start Virtual Camera and allow its system extension when macOS asks, stop it and quit OBS, "
            "then run this again."
        )
    return (
        "No virtual camera found: install OBS Studio (https://obsproject.com), start it once, click "
        "Start Virtual Camera, stop it and quit OBS, then run this again."
    )


class VideoSink(Protocol):
    """A place frames go to."""

    name: str
    on_loop: bool

    def write(self, frame: Image) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SinkSpec:
    """A parsed ``--sink`` value."""

    kind: SinkKind
    target: str | None = None

    @classmethod
    def parse(cls, text: str) -> SinkSpec:
        value = text.strip()
        if value == "virtual":
            return cls("virtual")
        if value.startswith("virtual:") and len(value) > len("virtual:"):
            return cls("virtual", value[len("virtual:") :])
        if value == "window":
            return cls("window")
        if value.startswith("file:") and len(value) > len("file:"):
            return cls("file", value[len("file:") :])
        raise CamError(f"--sink must be virtual, virtual:DEVICE, window or file:OUT.mp4 (got {text!r}).")


def open_sink(spec: SinkSpec, width: int, height: int, fps: float) -> VideoSink:
    """Open the sink ``spec`` names; raises :class:`CamError` with what to do when it cannot."""
    if spec.kind == "virtual":
        return VirtualCamSink(width, height, fps, device=spec.target)
    if spec.kind == "window":
        return WindowSink(width, height)
    assert spec.target is not None
    return FileSink(Path(spec.target), width, height, fps)


def _fit(frame: Image, size: tuple[int, int]) -> Image:
    if (frame.shape[1], frame.shape[0]) == size:
        return frame
    return np.asarray(cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR), np.uint8)


class VirtualCamSink:
    """A virtual camera (pyvirtualcam): v4l2loopback on Linux, OBS Virtual Camera on Windows/macOS."""

    on_loop = False

    def __init__(self, width: int, height: int, fps: float, device: str | None = None) -> None:
        try:
            import pyvirtualcam
        except ImportError:
            raise CamError(
                "The virtual camera needs the pyvirtualcam package: `pip install pyvirtualcam`, then run this again."
            ) from None
        self.size = (width, height)
        try:
            self._cam = pyvirtualcam.Camera(width, height, fps, fmt=pyvirtualcam.PixelFormat.BGR, device=device)
        except (RuntimeError, ValueError) as exc:
            logger.info("pyvirtualcam: %s", exc)
            if device and "does not exist" not in str(exc) and "not found" not in str(exc):
                raise CamError(f"The virtual camera {device} cannot be used: {str(exc).rstrip('.')}.") from None
            raise CamError(virtual_camera_help()) from None
        self.device = str(self._cam.device)
        self.name = f"virtual camera {self.device}"

    def write(self, frame: Image) -> None:
        self._cam.send(np.ascontiguousarray(_fit(frame, self.size)))

    def close(self) -> None:
        self._cam.close()


def opencv_has_gui() -> bool:
    """Whether the installed OpenCV was built with a GUI back-end (the headless wheel has none)."""
    match = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return match is not None and match.group(1).upper() != "NONE"


class WindowSink:
    """A preview window: OpenCV's imshow with a GUI build of OpenCV, else Tk. ``closed`` turns True when the user closes it."""

    on_loop = True

    def __init__(self, width: int, height: int, title: str = "Mirage") -> None:
        self.size = (width, height)
        self.title = title
        self.name = "preview window"
        self.closed = False
        self._tk: Any = None
        self._label: Any = None
        self._photo: Any = None
        if opencv_has_gui():
            try:
                cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)
            except cv2.error as exc:
                raise CamError(f"The preview window could not open: {str(exc).strip()}.") from None
            self._backend = "opencv"
            return
        try:
            import tkinter
        except ImportError:
            raise CamError(
                "The preview window needs Tk (`sudo apt install python3-tk`) or OpenCV with GUI support "
                "(`pip install opencv-python` in place of opencv-python-headless); --sink file:OUT.mp4 works without either."
            ) from None
        try:
            root = tkinter.Tk()
        except tkinter.TclError:
            raise CamError(
                "The preview window needs a desktop session and none was found (no display); "
                "use --sink virtual or --sink file:OUT.mp4 instead."
            ) from None
        root.title(title)
        root.protocol("WM_DELETE_WINDOW", self._on_close)
        root.bind("<q>", lambda _event: self._on_close())
        self._label = tkinter.Label(root)
        self._label.pack()
        self._tk = root
        self._tkinter = tkinter
        self._backend = "tk"

    def _on_close(self) -> None:
        self.closed = True

    def write(self, frame: Image) -> None:
        if self.closed:
            return
        image = _fit(frame, self.size)
        if self._backend == "opencv":
            cv2.imshow(self.title, image)
            key = cv2.waitKey(1) & 0xFF
            visible = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE)
            if key in (ord("q"), 27) or visible < 1:
                self.closed = True
            return
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        header = f"P6 {rgb.shape[1]} {rgb.shape[0]} 255 ".encode("ascii")
        self._photo = self._tkinter.PhotoImage(data=header + rgb.tobytes(), format="PPM")
        self._label.configure(image=self._photo)
        self._tk.update()

    def close(self) -> None:
        if self._backend == "opencv":
            cv2.destroyWindow(self.title)
        elif self._tk is not None:
            try:
                self._tk.destroy()
            except self._tkinter.TclError:
                pass
            self._tk = None


class FileSink:
    """Records the output at the requested size; the file appears complete when the run ends."""

    on_loop = False

    def __init__(self, path: Path, width: int, height: int, fps: float) -> None:
        from mirage.video import VIDEO_SUFFIXES, AtomicVideoWriter

        path = path.expanduser()
        if path.suffix.lower() not in VIDEO_SUFFIXES - {".y4m"}:
            raise CamError(f"The output file must end in one of {', '.join(sorted(VIDEO_SUFFIXES - {'.y4m'}))} (got {path.name}).")
        if not path.parent.is_dir():
            raise CamError(f"The folder {path.parent} for the output file does not exist.")
        self.path = path
        self.size = (width, height)
        self.name = f"file {path}"
        self.frames = 0
        try:
            self._writer = AtomicVideoWriter(path, width, height, Fraction(fps).limit_denominator(1000))
        except (OSError, av.error.FFmpegError) as exc:
            raise CamError(f"Cannot write {path}: {exc}.") from None

    def write(self, frame: Image) -> None:
        self._writer.write(_fit(frame, self.size))
        self.frames += 1

    def close(self) -> None:
        if self.frames:
            self._writer.close()
        else:
            self._writer.abort()


class AudioSink:
    """Plays received audio on an output device (a virtual cable or a null sink reaches the call)."""

    def __init__(self, device: str | None, *, max_latency_s: float = 0.2) -> None:
        sd = import_sounddevice()
        self.device = resolve_device(sd, device, "output")
        try:
            info = sd.query_devices(self.device, "output")
            channels = max(1, min(2, int(info["max_output_channels"])))
            self.name = str(info.get("name", "default output"))
        except Exception as exc:  # noqa: BLE001 - no default device, host errors
            raise CamError(f"No usable audio output device: {str(exc).rstrip('.')}.") from None
        self.fifo = AudioFifo(channels, int(SAMPLE_RATE * max_latency_s))
        self._resampler = av.AudioResampler(format="s16", layout="stereo" if channels == 2 else "mono", rate=SAMPLE_RATE)
        try:
            self._stream = sd.OutputStream(
                samplerate=SAMPLE_RATE,
                channels=channels,
                dtype="int16",
                device=self.device,
                callback=self._callback,
                latency="low",
            )
            self._stream.start()
        except Exception as exc:  # noqa: BLE001 - sounddevice.PortAudioError and host errors
            raise CamError(f"Could not open the audio output {self.name}: {str(exc).rstrip('.')}.") from None

    def _callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        outdata[:] = self.fifo.pop(frames)

    def write(self, frame: av.AudioFrame) -> None:
        """Queue one received frame (called on the event loop; cheap)."""
        for block in frame_samples(frame, self._resampler):
            self.fifo.push(block)

    def close(self) -> None:
        try:
            self._stream.stop()
            self._stream.close()
        except Exception:  # noqa: BLE001
            logger.debug("audio output close failed", exc_info=True)


class WavAudioSink:
    """Writes the received audio to a WAV file (48 kHz mono 16-bit) instead of a device (``--audio-out file:OUT.wav``).

    For demos and tests without a sound card; the file is complete once :meth:`close` ran.
    """

    def __init__(self, path: str) -> None:
        import wave

        target = Path(path).expanduser()
        if target.suffix.lower() != ".wav":
            raise CamError(f"The audio output file must end in .wav (got {target.name}).")
        if not target.parent.is_dir():
            raise CamError(f"The folder {target.parent} for the audio output does not exist.")
        self.name = str(target)
        self.samples = 0
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        try:
            self._file = wave.open(str(target), "wb")  # noqa: SIM115 - open for the whole run, closed in close()
        except OSError as exc:
            raise CamError(f"Could not write the audio output {target}: {exc.strerror or exc}.") from None
        self._file.setnchannels(1)
        self._file.setsampwidth(2)
        self._file.setframerate(SAMPLE_RATE)

    def write(self, frame: av.AudioFrame) -> None:
        """Append one received frame (called on the event loop; cheap)."""
        for block in frame_samples(frame, self._resampler):
            self._file.writeframes(block.astype("<i2").tobytes())
            self.samples += len(block)

    def close(self) -> None:
        try:
            self._file.close()
        except Exception:  # noqa: BLE001 - closing twice
            logger.debug("audio file close failed", exc_info=True)


def open_audio_sink(spec: str) -> AudioSink | WavAudioSink:
    """``file:OUT.wav`` (a WAV file), else an output device (index or name; ``default``)."""
    if spec.startswith("file:"):
        return WavAudioSink(spec[5:])
    return AudioSink(spec)
