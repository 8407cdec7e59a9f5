"""The desktop client (`mirage cam`): every expected failure is one sentence and a non-zero exit;
its parts (capture, fallback blur, stamp hiding, back-off, audio FIFO, sinks) behave.

The CLI runs in a subprocess, as a user runs it. The wrong-API-key case needs a
real server and lives in tests/integration/test_desktop_client.py.
"""

from __future__ import annotations

import glob
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mirage.cam.app import Backoff, prepare_received, unstamp
from mirage.cam.audio import AudioFifo
from mirage.cam.capture import Capture, CaptureConfig, fit_frame
from mirage.cam.errors import CamError
from mirage.cam.fallback import FallbackConfig, FallbackRenderer
from mirage.cam.sinks import FileSink, SinkSpec, virtual_camera_help
from mirage.cam.status import StatusLine
from mirage.client.sources import ArraySource, astronaut_source
from mirage.client.stamp import read_stamp, stamp
from tests.media import write_mp4

ROOT = Path(__file__).resolve().parents[2]
CAM = [sys.executable, "-m", "mirage.cam"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from skimage import data

    root = tmp_path_factory.mktemp("cam")
    reference = root / "reference.png"
    cv2.imwrite(str(reference), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    faceless = root / "coffee.png"
    cv2.imwrite(str(faceless), cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR))
    frame = next(astronaut_source(640, 480, 30).frames())
    clip = write_mp4(root / "still.mp4", ArraySource([frame] * 5, fps=30))
    return {"reference": reference, "faceless": faceless, "clip": clip, "root": root, "frame": frame}  # type: ignore[dict-item]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cam(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CAM, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def assert_one_sentence(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mirage: "), result.stderr
    assert last.endswith("."), last
    for needle in needles:
        assert needle in last, last
    return last


# --------------------------------------------------------------------------- CLI failures


def test_missing_virtual_camera_backend_ends_with_install_steps(files: dict[str, Path]) -> None:
    if glob.glob("/dev/video*"):
        pytest.skip("this machine has video devices (maybe v4l2loopback): the virtual camera may exist")
    result = run_cam(
        "--url", f"http://127.0.0.1:{closed_port()}", "--reference", str(files["reference"]),
        "--camera", str(files["clip"]), "--sink", "virtual",
    )
    last = assert_one_sentence(result, "No virtual camera found", "sudo apt install v4l2loopback-dkms")
    assert 'sudo modprobe v4l2loopback devices=1 video_nr=10 card_label="Mirage" exclusive_caps=1' in last


def test_camera_index_that_does_not_exist(files: dict[str, Path]) -> None:
    if Path("/dev/video7").exists():
        pytest.skip("/dev/video7 exists here")
    out = files["root"] / "never.mp4"
    result = run_cam(
        "--url", f"http://127.0.0.1:{closed_port()}", "--reference", str(files["reference"]),
        "--camera", "7", "--sink", f"file:{out}",
    )
    assert assert_one_sentence(result) == "mirage: Camera 7 does not exist or cannot be opened."
    assert not out.exists()  # nothing half-written


def test_unreachable_url(files: dict[str, Path]) -> None:
    port = closed_port()
    out = files["root"] / "unreachable.mp4"
    result = run_cam(
        "--url", f"http://127.0.0.1:{port}", "--reference", str(files["reference"]),
        "--camera", str(files["clip"]), "--sink", f"file:{out}",
    )
    assert_one_sentence(result, "Could not reach the server", f"127.0.0.1:{port}")


def test_faceless_reference(files: dict[str, Path]) -> None:
    result = run_cam(
        "--url", f"http://127.0.0.1:{closed_port()}", "--reference", str(files["faceless"]),
        "--camera", str(files["clip"]), "--sink", "file:" + str(files["root"] / "x.mp4"),
    )
    assert_one_sentence(result, "No face was found in the reference photo coffee.png")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--sink", "webcam"], "--sink must be"),
        (["--width", "100"], "--width must be at least 320"),
        (["--sink", "file:/nonexistent-dir/out.mp4"], "does not exist"),
        (["--camera", "/no/such/clip.mp4"], "does not exist"),
    ],
)
def test_bad_arguments_are_one_sentence(files: dict[str, Path], extra: list[str], needle: str) -> None:
    args = ["--url", f"http://127.0.0.1:{closed_port()}", "--reference", str(files["reference"]), "--camera", str(files["clip"])]
    result = run_cam(*args, "--sink", "file:" + str(files["root"] / "y.mp4"), *extra)
    assert_one_sentence(result, needle)


def test_missing_reference_file(files: dict[str, Path]) -> None:
    result = run_cam("--url", "http://127.0.0.1:9", "--reference", str(files["root"] / "nope.jpg"), "--sink", "window")
    assert_one_sentence(result, "nope.jpg does not exist")


def test_cam_is_a_subcommand_of_the_mirage_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "mirage", "cam", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for option in ("--url", "--reference", "--camera", "--sink", "--audio-out", "--fallback", "--seconds"):
        assert option in result.stdout


# --------------------------------------------------------------------------- parts


def test_virtual_camera_help_per_os() -> None:
    assert "exclusive_caps=1" in virtual_camera_help("linux")
    for platform in ("win32", "darwin"):
        text = virtual_camera_help(platform)
        assert "OBS" in text and "Start Virtual Camera" in text


def test_sink_spec_parsing() -> None:
    assert SinkSpec.parse("virtual") == SinkSpec("virtual")
    assert SinkSpec.parse("virtual:/dev/video10") == SinkSpec("virtual", "/dev/video10")
    assert SinkSpec.parse("file:out.mp4") == SinkSpec("file", "out.mp4")
    with pytest.raises(CamError):
        SinkSpec.parse("file:")


def test_backoff_doubles_to_ten_seconds_and_resets() -> None:
    backoff = Backoff(1.0, 10.0)
    assert [backoff.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    backoff.reset()
    assert backoff.next() == 1.0


def test_fit_frame_keeps_aspect_by_cropping() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    image[:, :80] = 255  # a white strip on the far left: cropped away when going to 4:3 → 1:1
    out = fit_frame(image, (320, 320))
    assert out.shape == (320, 320, 3)
    assert out[:, :5].mean() < 10


def test_capture_plays_a_file_in_a_loop_at_the_requested_size(files: dict[str, Path]) -> None:
    with Capture(CaptureConfig(str(files["clip"]), 480, 360, 30)) as capture:
        index = -1
        for _ in range(12):  # the clip has 5 frames: 12 new frames means it looped
            item = capture.wait_next(index, timeout=2.0)
            assert item is not None and item[0] > index
            index, frame = item
            assert frame.shape == (360, 480, 3)
        assert capture.failed is None
        assert capture.size == (480, 360)


def test_unstamp_hides_the_frame_number_band(files: dict[str, Path]) -> None:
    frame = cv2.resize(files["frame"], (640, 480))  # type: ignore[arg-type]
    stamped = stamp(frame, 12345)
    small = cv2.resize(stamped, (512, 384), interpolation=cv2.INTER_AREA)  # as the server returns it
    assert read_stamp(small, sender_width=640) == 12345
    out = prepare_received(small, (640, 480), sender_width=640)
    assert out.shape == (480, 640, 3)
    assert read_stamp(out, sender_width=640) is None
    # the band now looks like the picture below it, not like black/white blocks
    band = out[:16, :288].astype(np.float32)
    assert np.abs(band - frame[:16, :288].astype(np.float32)).mean() < 40
    untouched = unstamp(frame.copy(), 640)
    assert np.array_equal(untouched[40:], frame[40:])


def laplacian_var(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def test_fallback_blurs_the_face_and_badges_the_state(files: dict[str, Path]) -> None:
    frame = files["frame"]
    renderer = FallbackRenderer(FallbackConfig(policy="blur")).load()
    boxes = renderer.face_boxes(frame, now=0.0)
    assert boxes, "BlazeFace must find the astronaut's face"
    x1, y1, x2, y2 = (int(v) for v in boxes[0])
    out = renderer.render(frame, "connecting...", now=0.0)
    face_in, face_out = frame[y1:y2, x1:x2], out[y1:y2, x1:x2]  # type: ignore[index]
    assert laplacian_var(face_out) < 0.1 * laplacian_var(face_in)
    # far from the face and the badge the picture is untouched
    assert np.array_equal(out[:40, -120:], frame[:40, -120:])  # type: ignore[index]
    # the badge sits in the bottom-right corner
    assert np.abs(out[-30:, -120:].astype(int) - frame[-30:, -120:].astype(int)).mean() > 10  # type: ignore[index]
    # remembered for a moment after the face is lost, then no longer
    blank = np.full_like(frame, 90)
    assert renderer.face_boxes(blank, now=1.0)
    assert renderer.face_boxes(blank, now=10.0) == []


def test_passthrough_fallback_leaves_the_face(files: dict[str, Path]) -> None:
    frame = files["frame"]
    out = FallbackRenderer(FallbackConfig(policy="passthrough")).render(frame, None)
    assert np.array_equal(out, frame)


def test_audio_fifo_caps_delay_and_pads_silence() -> None:
    fifo = AudioFifo(2, max_samples=100)
    fifo.push(np.arange(160, dtype=np.int16).reshape(80, 2))
    fifo.push(np.arange(160, 240, dtype=np.int16).reshape(40, 2))
    assert len(fifo) == 100 and fifo.dropped == 20  # the oldest 20 samples went
    first = fifo.pop(10)
    assert first[0, 0] == 40  # sample 20 of the first block: (20 * 2)
    rest = fifo.pop(200)
    assert rest.shape == (200, 2) and not rest[90:].any() and fifo.underflows == 1


def test_file_sink_writes_the_requested_size(tmp_path: Path, files: dict[str, Path]) -> None:
    out = tmp_path / "o.mp4"
    sink = FileSink(out, 320, 240, 30)
    for _ in range(10):
        sink.write(files["frame"])  # 640x480 in, resized
    sink.close()
    from mirage.video import probe_video

    info = probe_video(out)
    assert (info.width, info.height) == (320, 240)


def test_status_line_rewrites_in_place_on_a_terminal() -> None:
    import io

    stream = io.StringIO()
    line = StatusLine(stream, tty=True)
    line.update("live | in 30 fps")
    line.update("live")
    line.notice("Lost the session.")
    text = stream.getvalue()
    assert text.startswith("\rlive | in 30 fps\rlive" + " " * 12)
    assert text.endswith("Lost the session.\n")


def test_window_sink_without_a_display_is_one_sentence(files: dict[str, Path]) -> None:
    import os

    from mirage.cam.sinks import opencv_has_gui

    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or opencv_has_gui() or sys.platform != "linux":
        pytest.skip("a display (or GUI OpenCV) is available here")
    result = run_cam(
        "--url", f"http://127.0.0.1:{closed_port()}", "--reference", str(files["reference"]),
        "--camera", str(files["clip"]), "--sink", "window",
    )
    assert_one_sentence(result, "preview window needs")
