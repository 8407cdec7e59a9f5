"""The frame-number stamp survives what a frame goes through between client and server."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from mirage.client.sources import astronaut_source
from mirage.client.stamp import BAND_WIDTH, BLOCK, MODULUS, frame_distance, read_stamp, stamp


def _vp8_roundtrip(frames: list[np.ndarray], bitrate: int = 250_000) -> list[np.ndarray]:
    """Encode with libvpx VP8 the way aiortc does (realtime CBR) at its minimum bitrate, then decode."""
    height, width = frames[0].shape[:2]
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuv420p"
    encoder.bit_rate = bitrate
    encoder.qmin, encoder.qmax = 2, 56
    encoder.options = {
        "deadline": "realtime",
        "cpu-used": "-6",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
    }
    decoder = av.CodecContext.create("libvpx", "r")
    out: list[np.ndarray] = []
    for index, image in enumerate(frames + [None]):
        if image is None:
            packets = encoder.encode(None)
        else:
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = index
            packets = encoder.encode(frame)
        for packet in packets:
            for decoded in decoder.decode(packet):
                out.append(decoded.to_ndarray(format="bgr24"))
    assert len(out) == len(frames)
    return out


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    source = astronaut_source()
    numbers = list(range(0, 12)) + [255, 256, 4095, 32768, 43690, 21845, 65535, 65536 + 7]
    return [stamp(source.frame(i), n) for i, n in enumerate(numbers)], numbers


def test_stamp_roundtrip_exact() -> None:
    image = astronaut_source().frame(0)
    for number in (0, 1, 2, 1000, 0xAAAA, 0x5555, MODULUS - 1):
        stamped = stamp(image, number)
        assert read_stamp(stamped) == number
        # Only the band changed.
        assert np.array_equal(stamped[BLOCK:], image[BLOCK:])
        assert np.array_equal(stamped[:, BAND_WIDTH:], image[:, BAND_WIDTH:])
    assert read_stamp(stamp(image, MODULUS + 5)) == 5


def test_stamp_copies_and_reads_grey() -> None:
    image = astronaut_source().frame(3)
    before = image.copy()
    stamped = stamp(image, 777)
    assert np.array_equal(image, before)
    grey = cv2.cvtColor(stamped, cv2.COLOR_BGR2GRAY)
    assert read_stamp(grey) == 777


def test_unstamped_frames_read_none() -> None:
    source = astronaut_source()
    assert read_stamp(source.frame(0)) is None
    assert read_stamp(np.full((480, 640, 3), 128, np.uint8)) is None
    assert read_stamp(np.zeros((480, 640, 3), np.uint8)) is None  # end block fine, start block black
    assert read_stamp(np.zeros((8, 8, 3), np.uint8)) is None
    # Picture content painted over the band (or over its end) is rejected, not misread.
    photo = source.frame(40)
    for x0 in (0, BAND_WIDTH - BLOCK):
        stamped = stamp(source.frame(0), 12345)
        stamped[:BLOCK, x0:BAND_WIDTH] = photo[200 : 200 + BLOCK, x0:BAND_WIDTH]
        assert read_stamp(stamped) is None


def test_too_small_frame_raises() -> None:
    with pytest.raises(ValueError):
        stamp(np.zeros((10, 640, 3), np.uint8), 1)


def test_stamp_survives_vp8_at_640x480(clip) -> None:
    frames, numbers = clip
    decoded = _vp8_roundtrip(frames)
    assert [read_stamp(f) for f in decoded] == [n % MODULUS for n in numbers]


def test_stamp_survives_downscale_and_second_vp8(clip) -> None:
    """Client VP8 → server downscale to 512x384 → server VP8 → read at the smaller size."""
    frames, numbers = clip
    first = _vp8_roundtrip(frames)
    small = [cv2.resize(f, (512, 384), interpolation=cv2.INTER_AREA) for f in first]
    assert [read_stamp(f) for f in small] == [n % MODULUS for n in numbers]
    second = _vp8_roundtrip(small)
    assert [read_stamp(f) for f in second] == [n % MODULUS for n in numbers]
    # Told the wrong sender width, the grid misses the blocks: no false number.
    assert read_stamp(second[0], sender_width=512) != numbers[0] or numbers[0] == 0


def test_frame_distance_wraps() -> None:
    assert frame_distance(5, 3) == 2
    assert frame_distance(1, MODULUS - 1) == 2
