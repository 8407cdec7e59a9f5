"""Video file reading and writing through PyAV (the same FFmpeg that aiortc uses).

Writers are atomic: frames go to a temporary file beside the target, which is
renamed into place only when the whole video is written, so a failure never
leaves a half-written output behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import cv2
import numpy as np

from mirage.errors import InvalidImageError
from mirage.types import Image

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".y4m"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: Fraction
    frames: int | None


def probe_video(path: Path) -> VideoInfo:
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InvalidImageError(f"{path.name} has no video stream.")
            stream = container.streams.video[0]
            fps = stream.average_rate or stream.guessed_rate or Fraction(30)
            frames = stream.frames or None
            return VideoInfo(stream.codec_context.width, stream.codec_context.height, Fraction(fps), frames)
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise InvalidImageError(f"{path.name} is not a readable video ({type(exc).__name__}).") from None


def read_video_frames(path: Path) -> Iterator[tuple[Image, float]]:
    """Decoded BGR frames and their time in seconds."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                t = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else 0.0
                yield video_frame_to_bgr(frame), t
    except av.error.FFmpegError as exc:
        raise InvalidImageError(f"{path.name} could not be decoded ({type(exc).__name__}).") from None


class AtomicVideoWriter:
    """H.264 (or the suffix's usual codec) writer that renames into place on success."""

    def __init__(self, path: Path, width: int, height: int, fps: Fraction, codec: str | None = None) -> None:
        self.path = path
        suffix = path.suffix.lower()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{suffix}", dir=path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        fmt = {".mkv": "matroska", ".y4m": "yuv4mpegpipe", ".webm": "webm"}.get(suffix)
        self._container = av.open(str(self._tmp), mode="w", format=fmt)
        codec_name = codec or {".webm": "libvpx", ".y4m": "rawvideo", ".avi": "mpeg4"}.get(suffix, "libx264")
        rate = fps.limit_denominator(1000) if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1000)
        stream = self._container.add_stream(codec_name, rate=rate)
        if not isinstance(stream, av.VideoStream):
            self._container.close()
            raise InvalidImageError(f"{codec_name} is not a video codec.")
        self._stream = stream
        self._stream.width = width - width % 2
        self._stream.height = height - height % 2
        self._stream.pix_fmt = "yuv420p"
        if codec_name == "libx264":
            self._stream.options = {"crf": "18", "preset": "veryfast"}
        self._done = False

    def write(self, frame: Image) -> None:
        h, w = self._stream.height, self._stream.width
        video_frame = bgr_to_video_frame(np.ascontiguousarray(frame[:h, :w]))
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.replace(self._tmp, self.path)
        self._done = True

    def abort(self) -> None:
        try:
            self._container.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicVideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        elif not self._done:
            self.abort()


def write_image_atomic(path: Path, data: bytes) -> None:
    """Write bytes to ``path`` through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def bgr_to_video_frame(image: Image) -> av.VideoFrame:
    """A yuv420p ``av.VideoFrame`` from BGR pixels, converted by OpenCV.

    PyAV's swscale path (``from_ndarray(..., "bgr24")`` then the encoder's
    conversion) rounds BT.601 down: a grey of 64 comes back as 59 after one
    BGR→YUV→BGR round trip, and every hop of the served path darkens the
    picture again. OpenCV's I420 conversion is accurate to one level.
    Odd sizes (which 4:2:0 cannot hold exactly) fall back to PyAV.
    """
    h, w = image.shape[:2]
    if h % 2 or w % 2:
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
    return av.VideoFrame.from_ndarray(np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), np.uint8), format="yuv420p")


def video_frame_to_bgr(frame: av.VideoFrame) -> Image:
    """BGR pixels of a decoded frame; yuv420p is converted by OpenCV (see bgr_to_video_frame)."""
    if frame.format.name == "yuv420p" and frame.width % 2 == 0 and frame.height % 2 == 0:
        return np.asarray(cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2BGR_I420), np.uint8)
    return np.ascontiguousarray(frame.to_ndarray(format="bgr24"))
