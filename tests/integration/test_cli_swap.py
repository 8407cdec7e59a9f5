"""``python -m mirage swap`` end to end: real files, real models, clear errors."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from mirage.client.sources import astronaut_source
from mirage.video import AtomicVideoWriter, probe_video, read_video_frames
from standins.faces import astronaut_bgr, t1_bgr, tom_hanks_path

ROOT = Path(__file__).resolve().parents[2]


def mirage(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mirage", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_sentence_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "XNNPACK" not in line]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    astronaut = d / "astronaut.png"
    cv2.imwrite(str(astronaut), astronaut_bgr())
    hanks = d / "hanks.png"
    shutil.copy(tom_hanks_path(), hanks)
    return {"dir": d, "astronaut": astronaut, "hanks": hanks}


def test_image_swap_writes_a_swapped_image(files: dict[str, Path]) -> None:
    out = files["dir"] / "out.png"
    proc = mirage("swap", "--reference", files["hanks"], "--input", files["astronaut"], "--output", out)
    assert proc.returncode == 0, proc.stderr
    result = cv2.imread(str(out))
    original = astronaut_bgr()
    assert result.shape == original.shape
    face = (slice(100, 160), slice(195, 255))
    assert np.abs(result[face].astype(int) - original[face].astype(int)).mean() > 12
    assert np.array_equal(result[400:, :100], original[400:, :100])


def test_video_swap_with_progress(files: dict[str, Path]) -> None:
    clip = files["dir"] / "clip.mp4"
    source = astronaut_source(320, 240, 15.0)
    with AtomicVideoWriter(clip, 320, 240, source.fps) as writer:  # type: ignore[arg-type]
        for i in range(20):
            writer.write(source.frame(i))
    out = files["dir"] / "swapped.mp4"
    proc = mirage("swap", "--reference", files["hanks"], "--input", clip, "--output", out, "--mouth-mask")
    assert proc.returncode == 0, proc.stderr
    assert "20 frames" in proc.stdout
    assert "frame" in proc.stderr  # the progress bar
    info = probe_video(out)
    assert (info.width, info.height) == (320, 240)
    frames = [f for f, _ in read_video_frames(out)]
    originals = [source.frame(i) for i in range(len(frames))]
    assert len(frames) == 20
    diffs = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames, originals, strict=True)]
    assert np.median(diffs) > 1.0


def test_reference_with_two_faces_uses_the_largest_and_says_so(files: dict[str, Path]) -> None:
    group = files["dir"] / "group.jpg"
    image = t1_bgr()
    cv2.imwrite(str(group), cv2.resize(image, (image.shape[1] * 2 // 3, image.shape[0] * 2 // 3))[:, :600])
    out = files["dir"] / "from_group.png"
    proc = mirage("swap", "--reference", group, "--input", files["astronaut"], "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert "using the largest" in proc.stderr
    assert out.exists()


def _png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("empty.jpg", b"", "empty"),
        ("notes.jpg", b"hello, this is text\n", "not a JPEG, PNG or WebP"),
        ("huge.png", _png_declaring(20000, 20000), "20000x20000"),
    ],
)
def test_bad_reference_files(files: dict[str, Path], name: str, content: bytes, needle: str) -> None:
    bad = files["dir"] / name
    bad.write_bytes(content)
    out = files["dir"] / f"never_{name}.png"
    proc = mirage("swap", "--reference", bad, "--input", files["astronaut"], "--output", out)
    assert_one_sentence_error(proc, needle)
    assert not out.exists()
    assert not list(files["dir"].glob(".never_*"))  # no temporary left either


def test_missing_input_and_faceless_reference(files: dict[str, Path]) -> None:
    out = files["dir"] / "never.png"
    proc = mirage("swap", "--reference", files["hanks"], "--input", files["dir"] / "missing.png", "--output", out)
    assert_one_sentence_error(proc, "not found", "missing.png")
    wall = files["dir"] / "wall.png"
    cv2.imwrite(str(wall), np.full((200, 200, 3), 128, np.uint8))
    proc = mirage("swap", "--reference", wall, "--input", files["astronaut"], "--output", out)
    assert_one_sentence_error(proc, "No face found in the reference photo")
    assert not out.exists()


def test_grayscale_and_rgba_references_are_converted(files: dict[str, Path]) -> None:
    hanks = cv2.imread(str(files["hanks"]))
    gray = files["dir"] / "gray.png"
    cv2.imwrite(str(gray), cv2.cvtColor(hanks, cv2.COLOR_BGR2GRAY))
    rgba = files["dir"] / "rgba.png"
    cv2.imwrite(str(rgba), cv2.cvtColor(hanks, cv2.COLOR_BGR2BGRA))
    for reference in (gray, rgba):
        out = files["dir"] / f"from_{reference.stem}.png"
        proc = mirage("swap", "--reference", reference, "--input", files["astronaut"], "--output", out)
        assert proc.returncode == 0, proc.stderr
        assert out.exists()


def test_output_kind_must_match_input(files: dict[str, Path]) -> None:
    proc = mirage("swap", "--reference", files["hanks"], "--input", files["astronaut"], "--output", files["dir"] / "x.mp4")
    assert_one_sentence_error(proc, "must be an image file")
