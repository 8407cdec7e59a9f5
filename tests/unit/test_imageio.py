"""Image validation: bad input gets a clear error before any decoding."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from mirage.errors import InvalidImageError
from mirage.imageio import decode_image, encode_image, read_header, read_image_file


def _png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    # A tiny IDAT so only the header's claim is large.
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_header_size_matches_decoded_size(suffix: str) -> None:
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    data = encode_image(image, suffix)
    header = read_header(data)
    assert (header.width, header.height) == (53, 37)
    assert decode_image(data).shape == (37, 53, 3)


def test_huge_declared_png_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidImageError, match="20000x20000"):
        decode_image(_png_declaring(20000, 20000))


def test_empty_and_text_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InvalidImageError, match="empty"):
        read_image_file(empty)
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n")
    with pytest.raises(InvalidImageError, match="not a JPEG, PNG or WebP"):
        read_image_file(text)


def test_truncated_jpeg_is_refused() -> None:
    data = encode_image(np.full((64, 64, 3), 128, np.uint8), ".jpg")
    with pytest.raises(InvalidImageError):
        decode_image(data[:20])


def test_too_many_bytes_is_refused() -> None:
    data = encode_image(np.zeros((8, 8, 3), np.uint8), ".png")
    with pytest.raises(InvalidImageError, match="limit"):
        decode_image(data + b"\x00" * 2048, max_bytes=1024)


def test_grayscale_and_rgba_are_converted_to_bgr() -> None:
    gray = encode_image(np.full((10, 12), 77, np.uint8), ".png")
    out = decode_image(gray)
    assert out.shape == (10, 12, 3) and (out == 77).all()
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[:5, :, 3] = 0  # transparent half composites on white
    ok, buf = cv2.imencode(".png", rgba)
    assert ok
    out = decode_image(buf.tobytes())
    assert out.shape == (10, 12, 3)
    assert (out[:5] == 255).all()
    assert (out[5:, :, 0] == 200).all()


def test_missing_file_message_names_it(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="No such file"):
        read_image_file(tmp_path / "nope.png")


def test_video_frame_conversion_keeps_brightness() -> None:
    """BGR -> yuv420p -> BGR through OpenCV: no systematic darkening (PyAV's swscale loses ~2 levels a trip)."""
    from mirage.video import bgr_to_video_frame, video_frame_to_bgr
    from standins.faces import astronaut_bgr

    image = astronaut_bgr()
    frame = bgr_to_video_frame(image)
    assert frame.format.name == "yuv420p"
    back = video_frame_to_bgr(frame)
    assert back.shape == image.shape
    assert abs(float((back.astype(int) - image.astype(int)).mean())) < 0.3
    grey = np.full((32, 48, 3), 64, np.uint8)
    assert np.abs(video_frame_to_bgr(bgr_to_video_frame(grey)).astype(int) - 64).max() <= 1
