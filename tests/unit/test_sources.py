"""Client video sources, the clip writers in tests/media.py, and the client's send tracks."""

from __future__ import annotations

import asyncio
import time
from itertools import islice

import cv2
import numpy as np
import pytest

from mirage.client.sources import (
    ArraySource,
    FileSource,
    HeadMotion,
    ImageSequenceSource,
    VideoSource,
    open_source,
    synthetic_moving_face,
)
from mirage.client.stamp import read_stamp
from mirage.client.tracks import VIDEO_CLOCK_RATE, StampedVideoTrack, ToneAudioTrack
from mirage.errors import InvalidImageError
from standins.faces import astronaut_bgr, tom_hanks_bgr
from tests.media import astronaut_clip, read_y4m, write_mp4, write_y4m


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(cv2.PSNR(a, b))


def test_synthetic_clip_moves_and_loops() -> None:
    clip = synthetic_moving_face(astronaut_bgr(), 320, 240, fps=10, motion=HeadMotion(period_s=2.0))
    assert isinstance(clip, VideoSource)
    assert clip.size == (320, 240) and clip.fps == 10 and len(clip) == 20
    frames = list(islice(clip.frames(), 21))
    assert all(f.shape == (240, 320, 3) and f.dtype == np.uint8 for f in frames)
    # The head moves: consecutive frames differ, and the clip is periodic.
    assert np.abs(frames[5].astype(int) - frames[0].astype(int)).mean() > 5
    assert np.array_equal(frames[20], frames[0])
    # The focus point sits near the frame centre, and it moves over the period.
    centres = [clip.matrix(i) @ np.array([256.0, 0.4 * 512, 1.0]) for i in range(20)]
    xs = [c[0] for c in centres]
    assert 100 < min(xs) < 160 < max(xs) < 220
    assert max(xs) - min(xs) > 20


def test_synthetic_clip_is_made_from_the_photo() -> None:
    photo = tom_hanks_bgr()
    still = synthetic_moving_face(photo, 224, 224, motion=HeadMotion(shift_x=0, shift_y=0, roll_deg=0, zoom=0))
    # zoom 1 fits the photo's height, focus (0.5, 0.4) goes to (0.5, 0.45) of the frame.
    expected = cv2.resize(photo, (224, 224), interpolation=cv2.INTER_LINEAR)
    shift = np.float32([[1, 0, 0], [0, 1, 224 * 0.05]])
    expected = cv2.warpAffine(expected, shift, (224, 224), borderMode=cv2.BORDER_REFLECT101)
    assert _psnr(still.frame(0)[20:-20, 20:-20], expected[20:-20, 20:-20]) > 25


def test_synthetic_clip_rejects_non_images() -> None:
    with pytest.raises(InvalidImageError):
        synthetic_moving_face(np.zeros((10, 10), np.uint8))


def test_array_source_loops_and_validates() -> None:
    a = np.zeros((4, 6, 3), np.uint8)
    b = np.full((4, 6, 3), 9, np.uint8)
    source = ArraySource([a, b], fps=12)
    assert source.size == (6, 4) and source.fps == 12
    assert [int(f[0, 0, 0]) for f in islice(source.frames(), 5)] == [0, 9, 0, 9, 0]
    with pytest.raises(ValueError):
        ArraySource([a, np.zeros((5, 6, 3), np.uint8)])
    with pytest.raises(ValueError):
        ArraySource([])


def test_image_sequence_in_name_order(tmp_path) -> None:
    colours = [10, 120, 240]
    for index, value in enumerate(colours):
        size = (64, 48) if index != 1 else (128, 96)  # the odd one is resized to the first's size
        cv2.imwrite(str(tmp_path / f"frame_{index:03d}.png"), np.full((size[1], size[0], 3), value, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    source = open_source(tmp_path, fps=5)
    assert isinstance(source, ImageSequenceSource)
    assert source.size == (64, 48) and source.fps == 5
    assert [int(f[0, 0, 0]) for f in islice(source.frames(), 4)] == colours + colours[:1]
    with pytest.raises(FileNotFoundError):
        ImageSequenceSource(tmp_path / "empty")


def test_y4m_roundtrip(tmp_path) -> None:
    clip = astronaut_clip(320, 240, fps=15)
    path = write_y4m(tmp_path / "clip.y4m", clip, seconds=1.0)
    header = path.read_bytes().split(b"\n", 1)[0]
    assert header == b"YUV4MPEG2 W320 H240 F15:1 Ip A1:1 C420jpeg"
    assert path.stat().st_size == len(header) + 1 + 15 * (6 + 320 * 240 * 3 // 2)
    frames, fps = read_y4m(path)
    assert fps == 15 and len(frames) == 15
    for index in (0, 7, 14):
        assert _psnr(frames[index], clip.frame(index)) > 30
    # A default write is one seamless motion period.
    assert len(read_y4m(write_y4m(tmp_path / "loop.y4m", astronaut_clip(64, 48, fps=10)))[0]) == 40


def test_mp4_plays_back_through_file_source(tmp_path) -> None:
    clip = astronaut_clip(320, 240, fps=15)
    path = write_mp4(tmp_path / "clip.mp4", clip, seconds=1.0)
    source = open_source(path)
    assert isinstance(source, FileSource)
    assert source.size == (320, 240) and source.fps == pytest.approx(15)
    frames = list(islice(source.frames(), 20))  # 15 frames, then it loops
    assert _psnr(frames[3], clip.frame(3)) > 30
    assert _psnr(frames[15], clip.frame(0)) > 30
    small = FileSource(path, size=(160, 120))
    assert next(small.frames()).shape == (120, 160, 3)


def test_file_source_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        FileSource(tmp_path / "missing.mp4")
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"this is not a video")
    with pytest.raises(InvalidImageError):
        FileSource(bogus)


def test_stamped_track_paces_and_records() -> None:
    clip = astronaut_clip(fps=30)

    async def run() -> tuple[list, float, StampedVideoTrack]:
        track = StampedVideoTrack(clip)
        started = time.monotonic()
        frames = [await track.recv() for _ in range(10)]
        elapsed = time.monotonic() - started
        track.stop()
        return frames, elapsed, track

    frames, elapsed, track = asyncio.run(run())
    assert 0.25 < elapsed < 1.0  # 9 frame intervals of 33 ms
    assert [f.pts for f in frames] == [i * VIDEO_CLOCK_RATE // 30 for i in range(10)]
    assert [read_stamp(f.to_ndarray(format="bgr24")) for f in frames] == list(range(10))
    assert track.ledger.count == 10
    times = [track.ledger.sent_at(i) for i in range(10)]
    assert all(t is not None for t in times) and times == sorted(times)
    assert track.ledger.sent_at(10) is None


def test_tone_track() -> None:
    async def run(track: ToneAudioTrack) -> list:
        return [await track.recv() for _ in range(5)]

    frames = asyncio.run(run(ToneAudioTrack(1000.0)))
    assert all(f.samples == 960 and f.sample_rate == 48000 for f in frames)
    assert [f.pts for f in frames] == [i * 960 for i in range(5)]
    samples = np.concatenate([f.to_ndarray()[0] for f in frames]).astype(np.float32)
    spectrum = np.abs(np.fft.rfft(samples))
    assert np.argmax(spectrum) * 48000 / len(samples) == pytest.approx(1000.0, abs=15)
    silent = asyncio.run(run(ToneAudioTrack()))
    assert all(not f.to_ndarray().any() for f in silent)
