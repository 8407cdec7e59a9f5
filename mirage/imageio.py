"""Safe image decoding: magic bytes and declared size are checked before decoding.

A PNG that declares 20000x20000 pixels would make OpenCV allocate gigabytes
before failing, so the header is parsed first and anything over ``max_side``
is refused without decoding. Grayscale and RGBA inputs are converted to BGR.

Memory: a decode never makes a float copy of a full-size image. With
``max_decode_side`` the result is downscaled to that longest side, on decode
where the codec allows it (JPEG's DCT scaling, ``cv2.IMREAD_REDUCED_COLOR_*``)
and right after it otherwise; transparency is composited on white in integer
arithmetic, on the downscaled picture. 16-bit PNGs are read as 8-bit colour
(their transparency is then ignored). A 4096x4096 RGBA PNG peaks at about the
size of its 8-bit pixels (64 MB) plus the downscaled copy.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from mirage.errors import InvalidImageError
from mirage.types import Image

ImageFormat = Literal["jpeg", "png", "webp"]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_SIDE = 4096


@dataclass(frozen=True)
class ImageHeader:
    format: ImageFormat
    width: int
    height: int


def sniff_format(data: bytes) -> ImageFormat | None:
    """The image format from its magic bytes, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise InvalidImageError("The PNG file is truncated or malformed (no IHDR header).")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            pos += 1
            continue
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker in _JPEG_SOF:
            if pos + 9 > n:
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    raise InvalidImageError("The JPEG file is truncated or malformed (no frame header).")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise InvalidImageError("The WebP file is truncated or malformed.")


def read_header(data: bytes) -> ImageHeader:
    """Format and declared size, from the header alone."""
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidImageError("The file is not a JPEG, PNG or WebP image.")
    size_of = {"jpeg": _jpeg_size, "png": _png_size, "webp": _webp_size}[fmt]
    width, height = size_of(data)
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"The {fmt.upper()} image declares an empty size ({width}x{height}).")
    return ImageHeader(fmt, width, height)


#: Pixels composited per step (a few MB of uint16 temporaries, whatever the image size).
_CHUNK_PIXELS = 1 << 20


def composite_on_white(bgra: np.ndarray) -> Image:
    """8-bit BGRA → BGR with transparent areas on white (integer maths, row chunks: no full-size copies)."""
    height, width = bgra.shape[:2]
    out = np.empty((height, width, 3), np.uint8)
    rows = max(1, _CHUNK_PIXELS // max(1, width))
    for y in range(0, height, rows):
        chunk = bgra[y : y + rows]
        alpha = chunk[:, :, 3:4].astype(np.uint16)
        mixed = chunk[:, :, :3].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127
        out[y : y + rows] = (mixed // 255).astype(np.uint8)
    return out


def to_bgr(image: np.ndarray) -> Image:
    """Grayscale, BGRA or 16-bit images as 8-bit BGR."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), np.uint8)
    if image.shape[2] == 4:
        # Composite transparent areas on white rather than trusting hidden colour.
        return composite_on_white(image)
    if image.shape[2] == 1:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), np.uint8)
    return np.ascontiguousarray(image[:, :, :3])


_REDUCED_COLOR = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  8: cv2.IMREAD_REDUCED_COLOR_8}


def _png_is_16_bit(data: bytes) -> bool:
    return len(data) > 24 and data[24] == 16


def _decode_flags(header: ImageHeader, data: bytes, max_decode_side: int | None) -> int:
    """The cheapest imdecode flags that keep what matters (transparency in 8-bit PNG/WebP)."""
    longest = max(header.width, header.height)
    if header.format == "jpeg":
        scale = 1
        if max_decode_side is not None:
            while scale < 8 and -(-longest // (scale * 2)) >= max_decode_side:
                scale *= 2
        return _REDUCED_COLOR[scale]
    if header.format == "png" and _png_is_16_bit(data):
        return cv2.IMREAD_COLOR  # 8-bit BGR straight from libpng: half the memory, alpha dropped
    return cv2.IMREAD_UNCHANGED


def _fit(image: np.ndarray, max_side: int | None) -> np.ndarray:
    if max_side is None:
        return image
    longest = max(image.shape[:2])
    if longest <= max_side:
        return image
    scale = max_side / longest
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def decode_image(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_side: int = DEFAULT_MAX_SIDE,
    max_decode_side: int | None = None,
) -> Image:
    """Validate and decode an image's bytes to BGR uint8.

    Raises InvalidImageError, with one sentence a person can act on, for an
    empty or oversized file, an unknown format, a declared size over
    ``max_side`` (checked before decoding) or undecodable data. With
    ``max_decode_side`` the result's longest side is at most that (downscaled
    on decode where the codec allows it).
    """
    if not data:
        raise InvalidImageError("The image file is empty.")
    if len(data) > max_bytes:
        raise InvalidImageError(f"The image is {len(data) / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB.")
    header = read_header(data)
    if header.width > max_side or header.height > max_side:
        raise InvalidImageError(
            f"The image declares {header.width}x{header.height} pixels; the limit is {max_side}x{max_side}."
        )
    flags = _decode_flags(header, data, max_decode_side)
    try:
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error:
        decoded = None
    if decoded is None or decoded.size == 0:
        raise InvalidImageError(f"The {header.format.upper()} image could not be decoded (corrupt or truncated).")
    if decoded.dtype != np.uint8:
        decoded = (np.asarray(decoded, np.uint16) >> 8).astype(np.uint8)  # 16-bit WebP/other: 8-bit before any copy
    decoded = _fit(decoded, max_decode_side)  # downscale first: compositing then works on the small copy
    return to_bgr(decoded)


def read_image_file(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, max_side: int = DEFAULT_MAX_SIDE) -> Image:
    """Read and decode an image file, with the same checks as decode_image."""
    if not path.exists():
        raise InvalidImageError(f"No such file: {path}.")
    if not path.is_file():
        raise InvalidImageError(f"Not a file: {path}.")
    size = path.stat().st_size
    if size > max_bytes:
        raise InvalidImageError(f"{path.name} is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB.")
    try:
        return decode_image(path.read_bytes(), max_bytes=max_bytes, max_side=max_side)
    except InvalidImageError as exc:
        raise InvalidImageError(f"{path.name}: {exc}") from None


def encode_image(image: Image, suffix: str) -> bytes:
    """Encode to the format named by a file suffix (.jpg/.png/.webp)."""
    ok, buf = cv2.imencode(suffix, image)
    if not ok:
        raise InvalidImageError(f"Cannot encode an image as {suffix}.")
    return buf.tobytes()
