"""The desktop client against the real served app over 127.0.0.1 (real Ray, Serve, aiortc).

The server runs in its own process with its own local Ray (``ray.init(address="local")``)
on a free port, so these tests can stop and start *their* application
(``serve.delete`` / ``serve.run``) without touching the app other tests share.
It requires an API key, which the wrong-key test relies on.

What is checked, on the frames that actually reach the sink:

- while the server is full, the sink shows the blurred live picture, and the
  client connects once a place frees;
- with a file camera and the file sink, the output file is at the requested
  size and carries swapped frames: the face region differs from the camera's
  and is sharp (not a blur), the background matches within codec noise;
- while the server is stopped and started again, the sink receives frames the
  whole time, every frame of the outage shows the face blurred (low Laplacian
  variance), and swapped frames come back within 30 s of the server;
- no frame ever shows the real face;
- the microphone track replaces the session's placeholder audio and what the
  server sends back reaches the speaker callback.
"""

from __future__ import annotations

import asyncio
import io
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from mirage.cam.app import CamApp, CamSettings
from mirage.cam.capture import Capture, CaptureConfig, fit_frame
from mirage.cam.fallback import FallbackRenderer
from mirage.cam.sinks import FileSink
from mirage.cam.status import StatusLine
from mirage.client.session import SessionOptions
from mirage.client.sources import ArraySource, astronaut_source
from mirage.video import read_video_frames
from standins.faces import tom_hanks_path
from tests.media import write_mp4

ROOT = Path(__file__).resolve().parents[2]
APP_NAME = "desktop"
API_KEY = "desktop-test-key"
WIDTH, HEIGHT, FPS = 480, 360, 15.0
#: The server app: a short graceful shutdown so a stop is quick.
APP_ARGS = {
    "require_api_key": True,
    "api_key": API_KEY,
    # One session per replica, so a second client finds the server full.
    "ingress": {"graceful_shutdown_timeout_s": 1.0, "max_sessions_per_replica": 1},
}


def _serve_main(port: int) -> None:
    """The server process: start Ray + Serve, then obey ``stop`` / ``start`` / ``quit`` lines on stdin."""
    import ray
    from ray import serve

    from serve_app.app import AppArgs, build_app

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = AppArgs.model_validate(APP_ARGS)

    def start() -> None:
        serve.run(build_app(args), name=APP_NAME, route_prefix="/")

    start()
    print("@@ready", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "stop":
            serve.delete(APP_NAME)
            print("@@stopped", flush=True)
        elif command == "start":
            start()
            print("@@started", flush=True)
        elif command == "quit":
            break
    serve.shutdown()
    ray.shutdown()


class ServerProcess:
    """The test's own Mirage server (a child process it can stop and start)."""

    def __init__(self, log_path: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MIRAGE_", "RAY_ADDRESS"))}
        env["PYTHONPATH"] = str(ROOT)
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"from tests.integration.test_desktop_client import _serve_main; _serve_main({self.port})"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("@@"):
                self._lines.put(line[2:].strip())

    def expect(self, word: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"the test server did not say {word!r} (exit {self.proc.poll()}); see {self._log.name}")
            try:
                if self._lines.get(timeout=min(remaining, 1.0)) == word:
                    return
            except queue.Empty:
                continue

    def command(self, word: str, reply: str, timeout: float = 90.0) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()
        self.expect(reply, timeout)

    def close(self) -> None:
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("desktop-server") / "server.log")
    try:
        proc.expect("ready", timeout=180)
        yield proc
    finally:
        proc.close()


@dataclass(frozen=True)
class Scene:
    clip: Path  # the "camera": one astronaut frame, looped
    source: np.ndarray  # what the camera delivers, at WIDTH x HEIGHT
    face: tuple[int, int, int, int]  # the astronaut's face box in it (grown)
    face_sharpness: float


def laplacian_var(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    from mirage.detect.blazeface import BlazeFaceDetector

    frame = next(astronaut_source(640, 480, 30).frames())
    clip = write_mp4(tmp_path_factory.mktemp("desktop-clip") / "still.mp4", ArraySource([frame] * 10, fps=30))
    decoded = next(read_video_frames(clip))[0]
    source = fit_frame(decoded, (WIDTH, HEIGHT))
    detections = BlazeFaceDetector().detect([source])[0]
    assert detections, "the astronaut's face must be found"
    x1, y1, x2, y2 = (float(v) for v in detections[0].box)
    # the inner face: what a swap replaces and a blur hides
    dx, dy = (x2 - x1) * 0.1, (y2 - y1) * 0.1
    face = (int(x1 + dx), int(y1 + dy), int(x2 - dx), int(y2 - dy))
    return Scene(clip, source, face, laplacian_var(source[face[1] : face[3], face[0] : face[2]]))


def judge(frame: np.ndarray, scene: Scene) -> str:
    """"swapped" (a sharp face that is not the camera's), "blurred", or "real" (the camera's face)."""
    x1, y1, x2, y2 = scene.face
    out, src = frame[y1:y2, x1:x2], scene.source[y1:y2, x1:x2]
    if laplacian_var(out) < 0.2 * scene.face_sharpness:
        return "blurred"
    difference = float(np.abs(out.astype(np.float32) - src.astype(np.float32)).mean())
    return "swapped" if difference > 12.0 else "real"


def background_difference(frame: np.ndarray, scene: Scene) -> tuple[float, float]:
    """(largest per-channel level shift, mean absolute difference after removing it) outside the
    face (grown), the stamp band and the badge corner.

    The shift is reported apart: every BGR→YUV conversion in PyAV 18 (swscale) rounds down, so each
    trip through the transport darkens a frame by a few grey levels. Codec noise stays in the rest.
    """
    mask = np.ones(frame.shape[:2], bool)
    x1, y1, x2, y2 = scene.face
    w, h = x2 - x1, y2 - y1
    mask[max(0, y1 - h // 2) : y2 + h // 2, max(0, x1 - w // 2) : x2 + w // 2] = False
    mask[:24, : WIDTH // 2] = False  # frame-number band (hidden by the client)
    mask[int(HEIGHT * 0.85) :, int(WIDTH * 0.6) :] = False  # "AI-modified" / status badge
    diff = frame.astype(np.float32)[mask] - scene.source.astype(np.float32)[mask]
    shift = np.median(diff, axis=0)
    return float(np.abs(shift).max()), float(np.abs(diff - shift).mean())


# --------------------------------------------------------------------------- tests


def test_file_sink_gets_swapped_frames_at_the_requested_size(server: ServerProcess, scene: Scene, tmp_path: Path) -> None:
    out = tmp_path / "swapped.mp4"
    result = subprocess.run(
        [
            sys.executable, "-m", "mirage.cam", "--url", server.url, "--reference", str(tom_hanks_path()),
            "--camera", str(scene.clip), "--width", str(WIDTH), "--height", str(HEIGHT), "--fps", str(int(FPS)),
            "--sink", f"file:{out}", "--api-key", API_KEY, "--seconds", "12",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Connected to" in result.stdout
    frames = [image for image, _ in read_video_frames(out)]
    assert len(frames) >= 0.6 * 12 * FPS  # the sink was fed at its rate
    assert all(f.shape == (HEIGHT, WIDTH, 3) for f in frames)
    kinds = [judge(f, scene) for f in frames]
    assert kinds.count("real") == 0, kinds
    swapped = [f for f, k in zip(frames, kinds) if k == "swapped"]
    assert len(swapped) >= 20, kinds
    differences = [background_difference(f, scene) for f in swapped]
    # Codec noise, not a different picture (shifting the picture by 8 px gives about 20).
    assert max(residual for _, residual in differences) < 6.0, differences
    assert max(shift for shift, _ in differences) <= 12.0, differences


def test_wrong_api_key_is_one_sentence(server: ServerProcess, scene: Scene, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "mirage.cam", "--url", server.url, "--reference", str(tom_hanks_path()),
            "--camera", str(scene.clip), "--sink", f"file:{tmp_path / 'refused.mp4'}", "--api-key", "not-the-key",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mirage: ") and "refused the API key" in last and last.endswith("."), result.stderr


class JudgedFileSink(FileSink):
    """The real file sink, also noting when each frame arrived and what it shows."""

    def __init__(self, path: Path, scene: Scene) -> None:
        super().__init__(path, WIDTH, HEIGHT, FPS)
        self.scene = scene
        self.log: list[tuple[float, str]] = []

    def write(self, frame: np.ndarray) -> None:
        super().write(frame)
        self.log.append((time.monotonic(), judge(frame, self.scene)))

    def first(self, kind: str, after: float) -> float | None:
        return next((t for t, k in list(self.log) if k == kind and t > after), None)


def _wait_for(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def test_server_restart_keeps_the_camera_alive_and_blurred(server: ServerProcess, scene: Scene, tmp_path: Path) -> None:
    settings = CamSettings(
        url=server.url,
        reference=tom_hanks_path().read_bytes(),
        width=WIDTH,
        height=HEIGHT,
        fps=FPS,
        api_key=API_KEY,
        options=SessionOptions(),
        seconds=170.0,  # a safety net; the test stops it
    )
    sink = JudgedFileSink(tmp_path / "restart.mp4", scene)
    capture = Capture(CaptureConfig(str(scene.clip), WIDTH, HEIGHT, FPS)).open()
    terminal = io.StringIO()
    app = CamApp(settings, capture, sink, FallbackRenderer().load(), status=StatusLine(terminal, tty=False, every_s=1.0))
    loop = asyncio.new_event_loop()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(app.run())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: sum(k == "swapped" for _, k in sink.log) >= 10, 60, "swapped frames")
        stop_sent = time.monotonic()
        server.command("stop", "stopped")
        stopped = time.monotonic()
        time.sleep(4.0)
        start_sent = time.monotonic()  # the server is certainly down until here; it may be up before "started"
        server.command("start", "started")
        up = time.monotonic()
        _wait_for(lambda: sink.first("swapped", after=up) is not None, 30, "swapped frames after the restart")
        resumed = sink.first("swapped", after=up)
        time.sleep(1.0)
    finally:
        loop.call_soon_threadsafe(app.stop)
        thread.join(timeout=30)
        capture.close()
        sink.close()
    assert not errors, errors
    assert resumed is not None and resumed - up < 30.0

    log = sink.log
    times = np.array([t for t, _ in log])
    assert float(np.diff(times).max()) < 1.0, "the sink went without frames for a second or more"
    kinds = [k for _, k in log]
    assert kinds.count("real") == 0, "the real face was shown"
    # During the outage (after a swapped frame goes stale, until the server is asked to start again)
    # every frame is the blurred live picture.
    outage = [k for t, k in log if stopped + settings.stale_after_s + 0.2 < t < start_sent]
    assert len(outage) >= 3.0 * FPS * 0.6, len(outage)
    assert set(outage) == {"blurred"}, outage
    assert stop_sent < stopped
    text = terminal.getvalue()
    assert "Lost the session" in text and "reconnecting" in text
    assert text.count("Connected to") >= 2
    assert (tmp_path / "restart.mp4").stat().st_size > 0


class FifoMicrophone:
    """A microphone whose samples the test writes (this machine has no PortAudio); the track is the real one."""

    def __init__(self) -> None:
        from mirage.cam.audio import AudioFifo

        self.fifo = AudioFifo(1, 48_000)
        self.origin = time.monotonic()

    def track(self):  # noqa: ANN201
        from mirage.cam.audio import MicrophoneTrack

        return MicrophoneTrack(self.fifo, origin=self.origin)


def test_microphone_goes_out_and_the_returned_audio_reaches_the_speaker_callback(server: ServerProcess, scene: Scene) -> None:
    import av

    from mirage.cam.app import DesktopSession
    from mirage.cam.audio import SAMPLE_RATE, frame_samples
    from mirage.client.session import ClientConfig

    microphone = FifoMicrophone()
    received: list[np.ndarray] = []
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    stop = threading.Event()

    def speak() -> None:  # a 660 Hz tone into the "microphone", in real time
        n = 0
        while not stop.is_set():
            t = (n + np.arange(960)) / SAMPLE_RATE
            microphone.fifo.push((8000 * np.sin(2 * np.pi * 660 * t)).astype(np.int16))
            n += 960
            time.sleep(0.02)

    async def session() -> int:
        config = ClientConfig(
            url=server.url, reference=tom_hanks_path().read_bytes(),
            source=Capture(CaptureConfig(str(scene.clip), WIDTH, HEIGHT, FPS)).open(),
            api_key=API_KEY, audio=True, fps=FPS,
        )
        client = DesktopSession(
            config, on_audio=lambda frame: received.extend(frame_samples(frame, resampler)), microphone=microphone,  # type: ignore[arg-type]
        )
        try:
            await client.connect()
            await asyncio.sleep(6.0)
            return client.stats.audio_frames
        finally:
            await client.close()
            config.source.close()  # type: ignore[attr-defined]

    speaker = threading.Thread(target=speak, daemon=True)
    speaker.start()
    try:
        frames = asyncio.run(session())
    finally:
        stop.set()
    assert frames > 100, frames  # ~50 per second came back
    audio = np.concatenate(received)[-SAMPLE_RATE * 2 :, 0].astype(np.float64)  # the last 2 s
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    peak_hz = (20 + int(np.argmax(spectrum[20:]))) * SAMPLE_RATE / len(audio)
    # Our "voice" (the server passes audio through), not the placeholder track's silence.
    assert abs(peak_hz - 660) < 5, peak_hz


def test_server_full_shows_the_blurred_picture_then_connects(server: ServerProcess, scene: Scene, tmp_path: Path) -> None:
    from mirage.cam.app import SERVER_FULL
    from mirage.client.session import ClientConfig, MirageSession

    terminal = io.StringIO()
    sink = JudgedFileSink(tmp_path / "full.mp4", scene)

    async def scenario() -> tuple[float, float | None]:
        blocker = MirageSession(
            ClientConfig(server.url, tom_hanks_path().read_bytes(), ArraySource([scene.source], fps=5), api_key=API_KEY, fps=5)
        )
        for _ in range(20):  # the previous test's session may still hold the only place for a moment
            try:
                await blocker.connect()
                break
            except Exception:  # noqa: BLE001 - server_full while the last session winds down
                blocker = MirageSession(blocker.config)
                await asyncio.sleep(0.5)
        capture = Capture(CaptureConfig(str(scene.clip), WIDTH, HEIGHT, FPS)).open()
        settings = CamSettings(url=server.url, reference=tom_hanks_path().read_bytes(), width=WIDTH, height=HEIGHT,
                               fps=FPS, api_key=API_KEY, seconds=120.0)
        app = CamApp(settings, capture, sink, FallbackRenderer().load(), status=StatusLine(terminal, tty=False))
        task = asyncio.create_task(app.run())
        try:
            deadline = time.monotonic() + 30
            while not (app.state == SERVER_FULL and len(sink.log) >= 2 * FPS):
                assert time.monotonic() < deadline and not task.done(), (app.state, len(sink.log), terminal.getvalue())
                await asyncio.sleep(0.1)
            await blocker.close()
            freed = time.monotonic()
            while sink.first("swapped", after=freed) is None:
                assert time.monotonic() < freed + 30 and not task.done(), terminal.getvalue()
                await asyncio.sleep(0.1)
            return freed, sink.first("swapped", after=freed)
        finally:
            app.stop()
            await task
            capture.close()
            await blocker.close()

    freed, resumed = asyncio.run(scenario())
    sink.close()
    assert resumed is not None and resumed - freed < 30
    while_full = [k for t, k in sink.log if t < freed]
    assert len(while_full) >= 2 * FPS
    assert set(while_full) == {"blurred"}, while_full
    assert "The server is full" in terminal.getvalue()
