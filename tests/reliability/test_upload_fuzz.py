"""Hostile reference uploads against the swapper's identity building (the code a replica runs).

Bombs, truncations, polyglots, huge files, RGBA 4096², 16-bit, base64 variants:
each is either accepted or refused with a known code and one sentence, never
``internal``, never a traceback in the log, and the extra peak RSS of any
accepted reference stays under 150 MB. Seeded, bounded.
"""

from __future__ import annotations

import base64
import logging
import random
import struct
import threading
import time
import zlib
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from mirage.pipeline.identity import SwapEngine, SwapperConfig
from serve_app.control import ControlError, decode_reference
from standins.faces import astronaut_bgr

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]

MAX_BYTES = 10 * 1024 * 1024
RSS_BUDGET_MB = 150.0
CODES = {None, "bad_reference", "no_face"}


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


class PeakRss:
    """Samples this process's RSS every 2 ms while active."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.002)

    def __enter__(self) -> PeakRss:
        self.base = _rss_mb()
        self.peak = self.base
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())

    @property
    def extra_mb(self) -> float:
        return self.peak - self.base


def _portrait(side: int) -> np.ndarray:
    """The reference face in the middle third of a flat ``side``² picture (compresses well)."""
    img = np.full((side, side, 3), 200, np.uint8)
    face = cv2.resize(astronaut_bgr(), (side // 3, side // 3))
    img[side // 3 : side // 3 + face.shape[0], side // 3 : side // 3 + face.shape[1]] = face
    return img


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return buf.tobytes()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_bomb(width: int, height: int) -> bytes:
    """A tiny file whose zeros inflate to width*height*3 bytes (8-bit RGB)."""
    raw = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * (width * 3)
    body = b"".join(raw.compress(row) for _ in range(height)) + raw.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def _uploads(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    side = 4096
    portrait = _portrait(side)
    rgba = np.concatenate([portrait, np.full((side, side, 1), 255, np.uint8)], axis=2)
    rgba[: side // 4, :, 3] = 0  # a transparent band
    yield "rgba_png_4096", _png(rgba)
    yield "rgba16_png_4096", _png(rgba.astype(np.uint16) * 257)
    yield "rgb_png_4096", _png(portrait)
    ok, jpg = cv2.imencode(".jpg", portrait, [cv2.IMWRITE_JPEG_QUALITY, 90])
    yield "jpeg_4096", jpg.tobytes()
    ok, webp = cv2.imencode(".webp", cv2.resize(rgba, (2048, 2048)), [cv2.IMWRITE_WEBP_QUALITY, 80])
    yield "rgba_webp_2048", webp.tobytes()
    yield "gray_png_4096", _png(cv2.cvtColor(portrait, cv2.COLOR_BGR2GRAY))
    yield "bomb_4096", _png_bomb(4096, 4096)
    yield "bomb_declares_20000", _png_bomb(64, 64).replace(struct.pack(">II", 64, 64), struct.pack(">II", 20000, 20000), 1)
    yield "huge_11mb", jpg.tobytes()[:4] + rng.randbytes(11 * 1024 * 1024)
    small = _png(_portrait(512))
    ok, small_jpg = cv2.imencode(".jpg", _portrait(512))
    for n in range(12):
        blob = (small, small_jpg.tobytes())[n % 2]
        yield f"truncated_{n}", blob[: rng.randrange(8, len(blob))]
    for n in range(12):
        blob = bytearray((small, small_jpg.tobytes())[n % 2])
        for _ in range(rng.randrange(1, 40)):
            blob[rng.randrange(0, len(blob))] = rng.randrange(256)
        yield f"bitflip_{n}", bytes(blob)
    yield "polyglot_png_header_jpeg_body", small[:33] + small_jpg.tobytes()
    yield "polyglot_jpeg_then_zip", small_jpg.tobytes() + b"PK\x03\x04" + rng.randbytes(2000)
    yield "gif", b"GIF89a" + rng.randbytes(500)
    yield "pdf", b"%PDF-1.7\n" + rng.randbytes(500)
    yield "svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>'
    yield "jpeg_magic_only", b"\xff\xd8\xff"
    yield "png_zero_size", _png_bomb(64, 64).replace(struct.pack(">II", 64, 64), struct.pack(">II", 0, 64), 1)
    yield "webp_header_only", b"RIFF\x00\x00\x00\x00WEBPVP8X" + b"\x00" * 18


@pytest.fixture(scope="module")
def core() -> SwapEngine:
    c = SwapEngine(SwapperConfig(inswapper=False))
    c.build_identity(_png(_portrait(256)), "mesh")  # warm up: models loaded, allocator primed
    return c


def test_hostile_uploads_get_a_code_and_stay_in_budget(core: SwapEngine, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(1010)
    caplog.set_level(logging.INFO)
    seen: dict[str, str | None] = {}
    for name, blob in _uploads(rng):
        with PeakRss() as rss:
            reply = core.build_identity(blob, "mesh")
        seen[name] = reply.code
        assert reply.code in CODES, f"{name}: {reply.code} {reply.message}"
        if reply.code is not None:
            assert reply.message and "\n" not in reply.message and "Traceback" not in reply.message, name
        assert rss.extra_mb < RSS_BUDGET_MB, f"{name}: +{rss.extra_mb:.0f} MB (budget {RSS_BUDGET_MB:.0f})"
    for accepted in ("rgba_png_4096", "rgba16_png_4096", "rgb_png_4096", "jpeg_4096", "rgba_webp_2048"):
        assert seen[accepted] is None, f"{accepted} was refused: {seen[accepted]}"
    for refused in ("bomb_declares_20000", "huge_11mb", "gif", "pdf", "svg", "jpeg_magic_only", "png_zero_size"):
        assert seen[refused] == "bad_reference", (refused, seen[refused])
    assert "Traceback" not in caplog.text and "crashed" not in caplog.text


def test_a_group_photo_uses_the_largest_face(core: SwapEngine) -> None:
    from pathlib import Path

    import insightface

    photo = (Path(insightface.__file__).parent / "data" / "images" / "t1.jpg").read_bytes()
    reply = core.build_identity(photo, "mesh")
    assert reply.code is None, reply.message
    assert reply.faces_found == 6 and reply.note and "largest" in reply.note


def test_base64_variants(core: SwapEngine) -> None:
    blob = _png(_portrait(256))
    plain = base64.b64encode(blob).decode("ascii")
    variants = {
        "plain": plain,
        "mime": base64.encodebytes(blob).decode("ascii"),
        "mime_crlf": base64.encodebytes(blob).decode("ascii").replace("\n", "\r\n"),
        "data_url": "data:image/png;base64," + plain,
        "padded_spaces": "  " + plain + "\n",
    }
    for name, text in variants.items():
        assert decode_reference(text, MAX_BYTES) == blob, name
    for bad in (plain[:-1], "!!!" + plain, base64.urlsafe_b64encode(b"\xfb\xff" * 100).decode(), "data:;base64,", "=" * 8):
        with pytest.raises(ControlError) as err:
            decode_reference(bad, MAX_BYTES)
        assert err.value.code == "bad_reference" and err.value.message
    with pytest.raises(ControlError, match="larger than 10 MB"):
        decode_reference(base64.b64encode(b"\xff" * (12 * 1024 * 1024)).decode(), MAX_BYTES)
