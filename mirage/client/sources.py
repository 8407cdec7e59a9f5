"""Video sources the Python client sends: a file, an image sequence, or a synthetic clip.

A source knows its frame size and rate and hands out endless frame iterators
(every call to :meth:`VideoSource.frames` starts again from the first frame and
loops), so several sessions can share one source object. Frames are uint8 BGR.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from mirage.errors import InvalidImageError
from mirage.types import Image
from mirage.video import video_frame_to_bgr

logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@runtime_checkable
class VideoSource(Protocol):
    """Anything the client can play: fixed size and rate, endless frames."""

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of every frame."""
        ...

    @property
    def fps(self) -> float: ...

    def frames(self) -> Iterator[Image]:
        """A fresh endless iterator over the frames (loops at the end)."""
        ...


class ArraySource:
    """Frames held in memory (a few seconds at most: 640x480 costs 0.9 MB a frame)."""

    def __init__(self, frames: Sequence[Image], fps: float = 30.0) -> None:
        if not frames:
            raise ValueError("an ArraySource needs at least one frame")
        height, width = frames[0].shape[:2]
        for frame in frames:
            if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
                raise ValueError("all frames must be uint8 BGR images of the same size")
        self._frames = list(frames)
        self._fps = float(fps)
        self._size = (int(width), int(height))

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    @property
    def fps(self) -> float:
        return self._fps

    def __len__(self) -> int:
        return len(self._frames)

    def frames(self) -> Iterator[Image]:
        while True:
            yield from self._frames


class FileSource:
    """A video file decoded with PyAV, looped; frames optionally resized to ``size``."""

    def __init__(self, path: str | Path, *, size: tuple[int, int] | None = None, fps: float | None = None) -> None:
        import av

        self._path = Path(path)
        if not self._path.is_file():
            raise FileNotFoundError(f"video file not found: {self._path}")
        try:
            with av.open(str(self._path)) as container:
                if not container.streams.video:
                    raise InvalidImageError(f"{self._path.name} has no video stream.")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate or Fraction(30)
                native = (int(stream.codec_context.width), int(stream.codec_context.height))
        except av.error.FFmpegError as exc:
            raise InvalidImageError(f"{self._path.name} is not a readable video file.") from exc
        self._size = size or native
        self._fps = float(fps or rate)

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    @property
    def fps(self) -> float:
        return self._fps

    def frames(self) -> Iterator[Image]:
        import av

        while True:
            produced = 0
            with av.open(str(self._path)) as container:
                for frame in container.decode(video=0):
                    image = video_frame_to_bgr(frame)
                    if (image.shape[1], image.shape[0]) != self._size:
                        image = np.asarray(cv2.resize(image, self._size, interpolation=cv2.INTER_AREA), np.uint8)
                    produced += 1
                    yield image
            if produced == 0:
                raise InvalidImageError(f"{self._path.name} contains no decodable video frames.")


class ImageSequenceSource(ArraySource):
    """A directory (or list) of image files played in name order; resized to the first one's size."""

    def __init__(self, paths: str | Path | Sequence[str | Path], fps: float = 30.0) -> None:
        files = _image_files(paths)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) found in {paths}")
        images: list[Image] = []
        for file in files:
            read = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if read is None:
                raise InvalidImageError(f"{Path(file).name} is not a readable image.")
            image = np.asarray(read, np.uint8)
            if images and image.shape != images[0].shape:
                image = np.asarray(cv2.resize(image, (images[0].shape[1], images[0].shape[0]), interpolation=cv2.INTER_AREA), np.uint8)
            images.append(image)
        super().__init__(images, fps)


def _image_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        root = Path(paths)
        if root.is_dir():
            return sorted(p for p in root.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        return [root] if root.is_file() else []
    return [Path(p) for p in paths]


def open_source(path: str | Path, *, size: tuple[int, int] | None = None, fps: float | None = None) -> VideoSource:
    """A directory or an image file becomes an image sequence; anything else is decoded as video."""
    target = Path(path)
    if target.is_dir() or target.suffix.lower() in _IMAGE_SUFFIXES:
        return ImageSequenceSource(target, fps=fps or 30.0)
    return FileSource(target, size=size, fps=fps)


@dataclass(frozen=True)
class HeadMotion:
    """A scripted, periodic head motion (amplitudes; one cycle lasts ``period_s``).

    Every term is a whole number of cycles per period, so a clip of
    ``period_s`` seconds loops without a jump.
    """

    period_s: float = 4.0
    shift_x: float = 0.06  # fraction of the frame width
    shift_y: float = 0.03  # fraction of the frame height
    roll_deg: float = 8.0
    zoom: float = 0.06  # relative scale change

    def at(self, t: float) -> tuple[float, float, float, float]:
        """(dx fraction, dy fraction, roll degrees, scale factor) at time ``t`` seconds."""
        phase = 2.0 * math.pi * t / self.period_s
        return (
            self.shift_x * math.sin(phase),
            self.shift_y * math.sin(2.0 * phase),
            self.roll_deg * math.sin(phase + math.pi / 3.0),
            1.0 + self.zoom * math.cos(phase),
        )


class SyntheticFaceSource:
    """A moving-face clip made from one photo: the photo is zoomed on ``focus`` and moved.

    Frames are computed on demand (one warp each), so the clip costs no memory.
    ``focus`` is the face centre as a fraction of the photo's (width, height); it
    is placed slightly above the frame centre. ``zoom`` = 1 fits the photo's
    height to the frame height.
    """

    def __init__(
        self,
        image_bgr: Image,
        *,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        focus: tuple[float, float] = (0.5, 0.4),
        zoom: float = 1.0,
        motion: HeadMotion = HeadMotion(),
    ) -> None:
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            raise InvalidImageError("the synthetic clip needs a uint8 BGR photo.")
        self._image = np.ascontiguousarray(image_bgr)
        self._size = (int(width), int(height))
        self._fps = float(fps)
        self._focus = (focus[0] * image_bgr.shape[1], focus[1] * image_bgr.shape[0])
        self._base_scale = zoom * height / float(image_bgr.shape[0])
        self._motion = motion

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    @property
    def fps(self) -> float:
        return self._fps

    def __len__(self) -> int:
        """Frames in one motion period (the clip loops seamlessly after it)."""
        return max(1, int(round(self._motion.period_s * self._fps)))

    def matrix(self, index: int) -> np.ndarray:
        """The 2x3 affine map photo → frame for frame ``index``."""
        width, height = self._size
        dx, dy, roll, scale = self._motion.at(index / self._fps)
        fx, fy = self._focus
        matrix = cv2.getRotationMatrix2D((fx, fy), roll, self._base_scale * scale)
        matrix[0, 2] += width * (0.5 + dx) - fx
        matrix[1, 2] += height * (0.45 + dy) - fy
        return matrix

    def frame(self, index: int) -> Image:
        warped = cv2.warpAffine(
            self._image,
            self.matrix(index),
            self._size,
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT101,
        )
        return np.asarray(warped, np.uint8)

    def frames(self) -> Iterator[Image]:
        count = len(self)
        index = 0
        while True:
            yield self.frame(index)
            index = (index + 1) % count


def synthetic_moving_face(
    image_bgr: Image,
    width: int = 640,
    height: int = 480,
    fps: float = 30,
    *,
    focus: tuple[float, float] = (0.5, 0.4),
    zoom: float = 1.0,
    motion: HeadMotion = HeadMotion(),
) -> SyntheticFaceSource:
    """A scripted head-motion clip made from a real photo (see :class:`SyntheticFaceSource`)."""
    return SyntheticFaceSource(image_bgr, width=width, height=height, fps=fps, focus=focus, zoom=zoom, motion=motion)


#: Where the astronaut's face is in ``skimage.data.astronaut()`` and a zoom that
#: makes it a selfie-sized face in a 640x480 frame (used by the load CLI's default).
ASTRONAUT_FOCUS = (0.44, 0.28)
ASTRONAUT_ZOOM = 1.7


def astronaut_source(width: int = 640, height: int = 480, fps: float = 30.0) -> SyntheticFaceSource:
    """The default clip: scikit-image's astronaut with scripted head motion."""
    from skimage import data

    image = np.asarray(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), np.uint8)  # type: ignore[no-untyped-call]
    return synthetic_moving_face(image, width, height, fps, focus=ASTRONAUT_FOCUS, zoom=ASTRONAUT_ZOOM)
