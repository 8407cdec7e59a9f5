"""Camera capture for the desktop client: a webcam through OpenCV, or a looping video file.

``--camera`` is a camera index (``0``), a device path (``/dev/video2``), or a
video file / image / image directory (played in a loop at its own rate: demos
and tests). A reader thread keeps only the newest frame, fitted to the
requested size (centre-cropped to its aspect, then resized), so a slow
consumer never makes the picture lag behind. :class:`Capture` is also a
:class:`mirage.client.sources.VideoSource`: the session sends what it captures.

Camera back-ends: V4L2 on Linux, AVFoundation on macOS, DirectShow on Windows
(OpenCV's ``cv2.VideoCapture``; the headless wheel includes them).
"""

from __future__ import annotations

import contextlib
import logging
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mirage.cam.errors import CamError
from mirage.cam.meter import RateMeter
from mirage.types import Image

logger = logging.getLogger(__name__)

#: Consecutive failed reads after which a camera counts as gone (about 2 s at 30 fps).
MAX_FAILED_READS = 60
#: How long :meth:`Capture.open` waits for the first frame.
FIRST_FRAME_TIMEOUT_S = 8.0


@dataclass(frozen=True)
class CaptureConfig:
    """What to capture and at which size/rate (the size every later stage sees)."""

    source: str = "0"
    width: int = 640
    height: int = 480
    fps: float = 30.0


def camera_api() -> int:
    """The OpenCV capture back-end for this OS's cameras."""
    if sys.platform.startswith("linux"):
        return cv2.CAP_V4L2
    if sys.platform == "darwin":
        return cv2.CAP_AVFOUNDATION
    if sys.platform.startswith("win"):
        return cv2.CAP_DSHOW
    return cv2.CAP_ANY


def parse_source(spec: str) -> int | Path:
    """A camera index (int) or a path (device, video file, image, image directory)."""
    text = str(spec).strip()
    if text.isdigit():
        return int(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise CamError(f"Camera or video file {text!r} does not exist.")
    return path


def fit_frame(image: Image, size: tuple[int, int]) -> Image:
    """Centre-crop ``image`` to the aspect of ``size`` (width, height), then resize to it."""
    width, height = size
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    target = width / height
    if abs(w / h - target) > 0.01:
        if w / h > target:
            new_w = max(1, int(round(h * target)))
            x0 = (w - new_w) // 2
            image = image[:, x0 : x0 + new_w]
        else:
            new_h = max(1, int(round(w / target)))
            y0 = (h - new_h) // 2
            image = image[y0 : y0 + new_h]
    interp = cv2.INTER_AREA if image.shape[1] > width else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(image, (width, height), interpolation=interp), np.uint8)


class Capture:
    """A camera or a looping file read by a background thread; the newest frame wins."""

    def __init__(self, config: CaptureConfig) -> None:
        self.config = config
        self.meter = RateMeter()
        self.description = str(config.source)
        self._cond = threading.Condition()
        self._frame: Image | None = None
        self._index = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cap: cv2.VideoCapture | None = None
        self._failed: str | None = None

    # ------------------------------------------------------------ VideoSource

    @property
    def size(self) -> tuple[int, int]:
        return (self.config.width, self.config.height)

    @property
    def fps(self) -> float:
        return float(self.config.fps)

    def frames(self) -> Iterator[Image]:
        """Endless newest frames, at most one per new capture (repeats when the camera is slower)."""
        last = -1
        while True:
            item = self.wait_next(last, timeout=2.0 / max(self.fps, 1.0))
            if item is None:
                yield np.zeros((self.config.height, self.config.width, 3), np.uint8)
                continue
            last, image = item
            yield image

    # ------------------------------------------------------------ lifecycle

    def open(self) -> Capture:
        """Open the device or file and wait for the first frame; raises :class:`CamError`."""
        target = parse_source(self.config.source)
        if isinstance(target, Path) and not _is_device(target):
            run = self._open_file(target)
        else:
            run = self._open_camera(target)
        self._thread = threading.Thread(target=run, name="mirage-capture", daemon=True)
        self._thread.start()
        if self.wait_next(-1, timeout=FIRST_FRAME_TIMEOUT_S) is None:
            reason = self._failed or f"{self.description} delivered no frame within {FIRST_FRAME_TIMEOUT_S:.0f} s"
            self.close()
            raise CamError(f"{reason.rstrip('.')}.")
        return self

    def _open_camera(self, target: int | Path) -> Callable[[], None]:
        try:  # OpenCV prints its own warnings for a missing camera; our sentence is enough
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        except AttributeError:  # pragma: no cover - very old OpenCV
            pass
        api = camera_api()
        what = f"Camera {target}" if isinstance(target, int) else f"Camera {str(target)!r}"
        cap = cv2.VideoCapture(target if isinstance(target, int) else str(target), api)
        if not cap.isOpened() and api != cv2.CAP_ANY:
            cap = cv2.VideoCapture(target if isinstance(target, int) else str(target), cv2.CAP_ANY)
        if not cap.isOpened():
            cap.release()
            raise CamError(f"{what} does not exist or cannot be opened.")
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
        cap.set(cv2.CAP_PROP_FPS, self.config.fps)
        with contextlib.suppress(cv2.error):
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a queue of old ones
        self._cap = cap
        self.description = what.lower() if isinstance(target, int) else what
        logger.info("%s opened (%s)", what, cap.getBackendName())

        def run() -> None:
            failures = 0
            while not self._stop.is_set():
                ok, image = cap.read()
                if not ok or image is None:
                    failures += 1
                    if failures >= MAX_FAILED_READS:
                        self._fail(f"{what} stopped delivering frames (unplugged, or in use by another program)")
                        return
                    time.sleep(0.03)
                    continue
                failures = 0
                self._publish(np.asarray(image, np.uint8))

        return run

    def _open_file(self, path: Path) -> Callable[[], None]:
        from mirage.client.sources import open_source
        from mirage.errors import MirageError

        try:
            source = open_source(path)
        except (MirageError, OSError) as exc:
            raise CamError(f"{path.name} cannot be played as a camera: {str(exc).rstrip('.')}.") from None
        self.description = f"file {path.name}"
        rate = float(source.fps) if source.fps and source.fps > 0 else self.config.fps

        def run() -> None:
            start = time.monotonic()
            count = 0
            try:
                for image in source.frames():  # loops forever
                    if self._stop.is_set():
                        return
                    due = start + count / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        if self._stop.wait(delay):
                            return
                    elif delay < -1.0:
                        start, count = time.monotonic(), 0  # fell far behind: re-anchor the clock
                    self._publish(image)
                    count += 1
            except Exception as exc:  # noqa: BLE001 - reported as the capture's failure
                self._fail(f"{path.name} could not be played: {exc}")

        return run

    def _publish(self, image: Image) -> None:
        frame = fit_frame(image, self.size)
        with self._cond:
            self._frame = np.ascontiguousarray(frame)
            self._index += 1
            self._cond.notify_all()
        self.meter.tick()

    def _fail(self, reason: str) -> None:
        logger.warning("%s", reason)
        with self._cond:
            self._failed = reason
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the reader and release the device. Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=3.0)
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self) -> Capture:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ reading

    @property
    def failed(self) -> str | None:
        """Why the capture stopped (one sentence), or None while it runs."""
        return self._failed

    def latest(self) -> tuple[int, Image] | None:
        """(frame index, frame) of the newest capture, or None before the first."""
        with self._cond:
            return None if self._frame is None else (self._index, self._frame)

    def wait_next(self, after: int, timeout: float) -> tuple[int, Image] | None:
        """The newest frame once its index is past ``after`` (or the newest anyway after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._index <= after and self._failed is None and not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return None if self._frame is None else (self._index, self._frame)


def _is_device(path: Path) -> bool:
    try:
        return stat.S_ISCHR(path.stat().st_mode)
    except OSError:
        return False
