"""Moving test clips made from real photos (DESIGN.md §6): .y4m for a browser's fake camera, .mp4 for players."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from itertools import islice
from pathlib import Path

import av
import cv2
import numpy as np

from mirage.client.sources import SyntheticFaceSource, VideoSource, astronaut_source


def astronaut_clip(width: int = 640, height: int = 480, fps: float = 30.0) -> SyntheticFaceSource:
    """The astronaut photo (scikit-image) with scripted head motion; loops every 4 s."""
    return astronaut_source(width, height, fps)


def _frames(source: VideoSource, seconds: float | None) -> Iterator[np.ndarray]:
    if seconds is None:
        count = len(source) if hasattr(source, "__len__") else int(round(4 * source.fps))
    else:
        count = max(1, int(round(seconds * source.fps)))
    return islice(source.frames(), count)


def _rate(fps: float) -> tuple[int, int]:
    rate = Fraction(fps).limit_denominator(1001)
    return rate.numerator, rate.denominator


def write_y4m(path: str | Path, source: VideoSource, seconds: float | None = None) -> Path:
    """Write ``source`` as YUV4MPEG2 4:2:0 (what Chromium's --use-file-for-fake-video-capture reads).

    ``seconds`` None writes one motion period (the clip then loops without a jump).
    """
    path = Path(path)
    width, height = source.size
    if width % 2 or height % 2:
        raise ValueError("4:2:0 needs an even width and height")
    num, den = _rate(source.fps)
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{num}:{den} Ip A1:1 C420jpeg\n".encode("ascii"))
        for frame in _frames(source, seconds):
            out.write(b"FRAME\n")
            # I420 planes back to back: Y (H x W), U, V (H/2 x W/2 each).
            out.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


def read_y4m(path: str | Path) -> tuple[list[np.ndarray], float]:
    """Frames (BGR) and fps of a 4:2:0 .y4m written by :func:`write_y4m`."""
    data = Path(path).read_bytes()
    header, _, body = data.partition(b"\n")
    fields = {token[:1]: token[1:] for token in header.split()[1:]}
    width, height = int(fields[b"W"]), int(fields[b"H"])
    num, den = (int(v) for v in fields[b"F"].split(b":"))
    size = width * height * 3 // 2
    frames: list[np.ndarray] = []
    offset = 0
    while offset < len(body):
        line_end = body.index(b"\n", offset)
        assert body[offset:line_end].startswith(b"FRAME")
        plane = np.frombuffer(body, np.uint8, size, line_end + 1).reshape(height * 3 // 2, width)
        frames.append(cv2.cvtColor(plane, cv2.COLOR_YUV2BGR_I420))
        offset = line_end + 1 + size
    return frames, num / den


def write_mp4(path: str | Path, source: VideoSource, seconds: float | None = None, *, crf: int = 18) -> Path:
    """Write ``source`` as H.264 (yuv420p) in an MP4 with PyAV."""
    path = Path(path)
    width, height = source.size
    num, den = _rate(source.fps)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(num, den))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in _frames(source, seconds):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def frames_of(source: VideoSource, count: int) -> list[np.ndarray]:
    """The first ``count`` frames of ``source``."""
    return list(islice(source.frames(), count))
