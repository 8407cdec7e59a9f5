"""The desktop client's controller: camera → Mirage session → virtual camera (and audio).

Three loops run side by side on one event loop:

- the **connection loop** opens a :class:`DesktopSession`, watches it, and when
  the server restarts or drops it (or video stops coming back) reconnects with
  exponential back-off (1, 2, 4 … at most 10 s), saying so in the terminal;
- the **output loop** writes one frame per ``1/fps`` to the sink, whatever the
  network does: the newest swapped frame while it is fresh, otherwise the live
  camera picture under the local fallback policy with a status badge
  (:mod:`mirage.cam.fallback`), so the camera never freezes, never goes black
  and never shows the real face by surprise;
- the **status loop** rewrites one terminal line: connection state, fps in
  (camera) and out (swapped frames back), glass-to-glass latency, faces swapped.

Expected failures (wrong key, faceless reference, unreachable server on the
first try, a camera that stops) end :meth:`CamApp.run` with an exception
carrying one sentence; Ctrl-C or SIGTERM ends it cleanly, releasing the peer
connection (the caller releases camera and sinks).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import av
import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from mirage.cam.audio import FileMicrophone, MicrophoneInput
from mirage.cam.capture import Capture
from mirage.cam.errors import CamError
from mirage.cam.fallback import FallbackRenderer
from mirage.cam.meter import RateMeter
from mirage.cam.sinks import AudioSink, VideoSink, WavAudioSink
from mirage.cam.status import StatusLine
from mirage.client.retry import RetryPolicy, reconnect_delay, retry_hint
from mirage.client.session import (
    ClientConfig,
    MirageSession,
    ReceivedFrame,
    SessionFailed,
    SessionOptions,
    SessionRefused,
)
from mirage.client.stamp import BAND_WIDTH, BLOCK
from mirage.disclosure import SYNTHETIC_NOTICE
from mirage.types import Image
from mirage.webrtc.guard import IcePolicy

logger = logging.getLogger(__name__)

#: Refusals that no amount of retrying will fix: stop and say why.
FATAL_CODES = frozenset({"unauthorized", "no_face", "bad_reference", "bad_request", "bad_offer"})

CONNECTING = "connecting"
LIVE = "live"
RECONNECTING = "reconnecting"
SERVER_FULL = "server full"

_BADGES = {
    CONNECTING: "connecting...",
    RECONNECTING: "reconnecting...",
    SERVER_FULL: "server full - retrying",
    LIVE: "waiting for video...",
}


@dataclass(frozen=True)
class CamSettings:
    """One desktop-client run, typed (the CLI's arguments after validation)."""

    url: str
    reference: bytes = field(repr=False)  # never logged
    width: int = 640
    height: int = 480
    fps: float = 30.0
    api_key: str | None = field(default=None, repr=False)
    options: SessionOptions = SessionOptions()
    #: Stop after this many seconds (tests, demos); None = until Ctrl-C.
    seconds: float | None = None
    #: ``set_options`` voice fields sent once each session is up (None: the server's default voice).
    voice_options: dict[str, Any] | None = None
    #: A swapped frame older than this is replaced by the fallback picture.
    stale_after_s: float = 1.0
    #: After connecting, reconnect if no video came back within this long ...
    first_frame_timeout_s: float = 20.0
    #: ... or if video stopped coming back for this long.
    stall_timeout_s: float = 10.0
    connect_timeout_s: float = 30.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 10.0


class Backoff:
    """Exponential back-off delays: initial, 2x, 4x … capped at ``maximum``; :meth:`reset` starts over."""

    def __init__(self, initial: float = 1.0, maximum: float = 10.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * 2.0)
        return delay

    def reset(self) -> None:
        self._next = self.initial

    def __iter__(self) -> Iterator[float]:
        while True:
            yield self.next()


class DesktopSession(MirageSession):
    """A :class:`MirageSession` that also plays the received audio and sends a real microphone.

    Two adaptations of the base class, kept here until ``mirage.client.session``
    offers public hooks for them: the received audio track is read by
    :meth:`_drain_audio` (which the base uses only to count frames), and the
    placeholder audio track the base sends is replaced by the microphone once
    the connection is up.
    """

    def __init__(
        self,
        config: ClientConfig,
        on_frame: Callable[[ReceivedFrame], None] | None = None,
        *,
        on_audio: Callable[[av.AudioFrame], None] | None = None,
        microphone: MicrophoneInput | FileMicrophone | None = None,
    ) -> None:
        super().__init__(config, on_frame)
        self.on_audio = on_audio
        self._microphone = microphone

    async def connect(self) -> None:
        await super().connect()
        if self._microphone is not None and self._pc is not None:
            for transceiver in self._pc.getTransceivers():
                if transceiver.kind == "audio" and transceiver.sender is not None:
                    transceiver.sender.replaceTrack(self._microphone.track())

    async def _drain_audio(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):  # an audio track yields audio frames only
                continue
            self.stats.audio_frames += 1
            if self.on_audio is not None:
                try:
                    self.on_audio(frame)
                except Exception:  # noqa: BLE001 - a broken speaker must not end the session
                    logger.exception("audio output failed")


def unstamp(frame: Image, sender_width: int) -> Image:
    """Hide the frame-number band (top-left) by mirroring the rows just below it over it, in place."""
    height, width = frame.shape[:2]
    scale = width / float(sender_width)
    band_h = min(height // 2, int(np.ceil(BLOCK * scale)) + 2)
    band_w = min(width, int(np.ceil(BAND_WIDTH * scale)) + 4)
    if band_h <= 0:
        return frame
    frame[:band_h, :band_w] = frame[band_h : 2 * band_h, :band_w][::-1]
    return frame


def prepare_received(image: Image, size: tuple[int, int], sender_width: int) -> Image:
    """A received swapped frame at the output size, its stamp band hidden."""
    if (image.shape[1], image.shape[0]) != size:
        image = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR), np.uint8)
    else:
        image = image.copy()
    return unstamp(image, sender_width)


class CamApp:
    """Runs capture → session → sink until stopped; see the module docstring."""

    def __init__(
        self,
        settings: CamSettings,
        capture: Capture,
        sink: VideoSink,
        fallback: FallbackRenderer,
        *,
        audio_sink: AudioSink | WavAudioSink | None = None,
        microphone: MicrophoneInput | FileMicrophone | None = None,
        status: StatusLine | None = None,
    ) -> None:
        self.settings = settings
        self.capture = capture
        self.sink = sink
        self.fallback = fallback
        self.audio_sink = audio_sink
        self.microphone = microphone
        self.status = status or StatusLine()
        self.state = CONNECTING
        self.session: DesktopSession | None = None
        self.received = RateMeter()  # swapped frames back from the server (value: g2g latency, ms)
        self.written = RateMeter()  # frames written to the sink
        self.swapped_written = 0
        self.fallback_written = 0
        self.sessions = 0
        #: Waits after "server full" so far (the server's hint, back-off, jitter); reset once connected.
        self.full_retries = 0
        #: Sessions moved to another replica because theirs went away (server_shutdown / close 1001).
        self.moves = 0
        self._latest: ReceivedFrame | None = None
        self._latest_at: float | None = None
        self._prepared: Image | None = None
        self._prepared_from: ReceivedFrame | None = None
        self._showing_fallback = True
        self._sink_lock = threading.Lock()
        self._closing = False
        self._stopped = asyncio.Event()
        self._disclosed = False

    # ------------------------------------------------------------ run

    async def run(self) -> None:
        """Run until ``seconds`` pass, Ctrl-C/SIGTERM, the window closes, or a fatal error (raised)."""
        loop = asyncio.get_running_loop()
        self.disclose()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGTERM, self._stopped.set)
        tasks = [
            asyncio.create_task(self._connection_loop(), name="connection"),
            asyncio.create_task(self._output_loop(), name="output"),
            asyncio.create_task(self._status_loop(), name="status"),
            asyncio.create_task(self._watch_capture(), name="capture"),
            asyncio.create_task(self._stopped.wait(), name="stop"),
        ]
        if self.settings.seconds is not None:
            tasks.append(asyncio.create_task(asyncio.sleep(self.settings.seconds), name="timer"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with self._sink_lock:  # no sink write may start (or still run) after this
                self._closing = True
            if self.session is not None:
                await self.session.close()
                self.session = None
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGTERM)
            self.status.finish()

    def disclose(self) -> None:
        """Print, once per run of the client, that the output is synthetic and the face must be yours to use."""
        if not self._disclosed:
            self._disclosed = True
            self.status.notice(f"Note: {SYNTHETIC_NOTICE}")

    def stop(self) -> None:
        """Ask :meth:`run` to end (thread-unsafe; call on the loop)."""
        self._stopped.set()

    # ------------------------------------------------------------ connection

    def _client_config(self) -> ClientConfig:
        s = self.settings
        return ClientConfig(
            url=s.url,
            reference=s.reference,
            source=self.capture,
            api_key=s.api_key,
            options=s.options,
            audio=self.microphone is not None,
            tone_hz=None,
            fps=s.fps,
            connect_timeout_s=s.connect_timeout_s,
            ice=IcePolicy.from_env(os.environ),  # MIRAGE_ICE_HOST_ADDRESSES / MIRAGE_ICE_ANNOUNCED_ADDRESS
        )

    async def _connection_loop(self) -> None:
        backoff = Backoff(self.settings.backoff_initial_s, self.settings.backoff_max_s)
        retry = RetryPolicy(initial_s=self.settings.backoff_initial_s, max_s=self.settings.backoff_max_s, give_up_after_s=None)
        ever_connected = False
        while True:
            if self.state != SERVER_FULL:  # "server full" stays on the badge while we retry
                self.state = RECONNECTING if ever_connected else CONNECTING
            session = DesktopSession(
                self._client_config(),
                on_frame=functools.partial(self._on_frame, self.sessions + 1),
                on_audio=self.audio_sink.write if self.audio_sink is not None else None,
                microphone=self.microphone,
            )
            self.sessions += 1
            self.session = session
            try:
                await session.connect()
            except SessionRefused as exc:
                self.session = None
                if exc.code in FATAL_CODES or (exc.code != "server_full" and not ever_connected):
                    raise
                delay = backoff.next()
                if exc.code == "server_full":
                    # Never before the server's hint; jitter so clients refused together spread out.
                    delay = retry.delay(self.full_retries, retry_hint(exc))
                    self.full_retries += 1
                    self.state = SERVER_FULL
                    self.status.notice(f"The server is full; trying again in {delay:.0f} s{self._meanwhile()}.")
                else:
                    self.state = RECONNECTING
                    self.status.notice(f"Reconnect refused ({exc.message.rstrip('.')}); trying again in {delay:.0f} s.")
                await asyncio.sleep(delay)
                continue
            except SessionFailed as exc:
                self.session = None
                if not ever_connected:
                    raise
                delay = backoff.next()
                self.state = RECONNECTING
                self.status.notice(f"Reconnect failed ({str(exc).rstrip('.')}); trying again in {delay:.0f} s.")
                await asyncio.sleep(delay)
                continue
            ever_connected = True
            self.full_retries = 0
            self.state = LIVE
            self._latest = None
            self._latest_at = None
            note = f" ({session.note})" if session.note else ""
            self.status.notice(f"Connected to {self.settings.url} (session {session.session_id}){note}.")
            await self._ask_for_voice(session)
            reason = await self._supervise(session, backoff)
            self.session = None
            self.state = RECONNECTING
            self._latest = None
            await session.close()
            soon = reconnect_delay(session.close_code, _saw_shutdown(session))
            if soon is not None:
                # The server is going away (scale-down, redeploy): move to another replica now.
                self.moves += 1
                self.status.notice(
                    f"Lost the session: the server is going away (moving this session); reconnecting now{self._meanwhile()}."
                )
                await asyncio.sleep(soon)
                continue
            delay = backoff.next()
            self.status.notice(f"Lost the session: {reason}; reconnecting in {delay:.0f} s{self._meanwhile()}.")
            await asyncio.sleep(delay)

    async def _ask_for_voice(self, session: DesktopSession) -> None:
        """The voice the user chose (``--voice/--pitch/--formant``), asked for on every (re)connect."""
        if not self.settings.voice_options:
            return
        try:
            reply = await session.set_options(**self.settings.voice_options)
        except SessionFailed as exc:
            self.status.notice(f"The voice could not be set ({str(exc).rstrip('.')}); the server's default voice is used.")
            return
        if reply.get("type") != "ack":
            raise CamError(f"The server refused the voice: {reply.get('message', 'no reason given')}")

    def _meanwhile(self) -> str:
        return " (face blurred meanwhile)" if self.fallback.config.policy == "blur" else ""

    async def _supervise(self, session: DesktopSession, backoff: Backoff) -> str:
        """Wait until the session ends or stalls; the reason, as a phrase."""
        started = time.monotonic()
        while True:
            if session.ended.is_set():
                return _end_reason(session)
            now = time.monotonic()
            if self._latest_at is None:
                if now - started > self.settings.first_frame_timeout_s:
                    return f"no video came back within {self.settings.first_frame_timeout_s:.0f} s"
            else:
                backoff.reset()  # video flowed: the next outage starts again at 1 s
                if now - self._latest_at > self.settings.stall_timeout_s:
                    return f"no video came back for {self.settings.stall_timeout_s:.0f} s"
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(session.ended.wait(), 0.25)

    def _on_frame(self, session_number: int, frame: ReceivedFrame) -> None:
        if session_number != self.sessions or frame.image is None:
            return  # a frame from a session being replaced
        self._latest = frame
        self._latest_at = frame.received_at
        self.received.tick(frame.latency_ms)

    # ------------------------------------------------------------ output

    async def _output_loop(self) -> str:
        # Its own worker thread: output must never queue behind other threaded work
        # (a blocking HTTP request, a capture wait) in the loop's shared executor.
        loop = asyncio.get_running_loop()
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mirage-cam-output")
        try:
            return await self._output_frames(loop, executor)
        finally:
            executor.shutdown(wait=False)

    async def _output_frames(self, loop: asyncio.AbstractEventLoop, executor: concurrent.futures.Executor) -> str:
        period = 1.0 / self.settings.fps
        due = time.monotonic()
        while True:
            if self.sink.on_loop:
                frame = await loop.run_in_executor(executor, self._compose)
                self._write(frame)
            else:
                await loop.run_in_executor(executor, self._tick)
            if getattr(self.sink, "closed", False):
                self.status.notice("The preview window was closed.")
                return "window closed"
            due += period
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                if delay < -1.0:
                    due = time.monotonic()  # fell far behind: re-anchor instead of bursting
                await asyncio.sleep(0)

    def _tick(self) -> None:
        self._write(self._compose())

    def _write(self, frame: Image) -> None:
        with self._sink_lock:
            if self._closing:
                return
            self.sink.write(frame)
        self.written.tick()

    def _compose(self) -> Image:
        """The next output frame: the fresh swapped frame, or the fallback picture."""
        now = time.monotonic()
        latest = self._latest
        size = (self.settings.width, self.settings.height)
        if (
            self.state == LIVE
            and latest is not None
            and latest.image is not None
            and now - latest.received_at <= self.settings.stale_after_s
        ):
            if latest is not self._prepared_from or self._prepared is None:
                self._prepared = prepare_received(latest.image, size, sender_width=self.settings.width)
                self._prepared_from = latest
            self._showing_fallback = False
            self.swapped_written += 1
            return self._prepared
        item = self.capture.latest()
        picture = item[1] if item is not None else np.zeros((size[1], size[0], 3), np.uint8)
        self._showing_fallback = True
        self.fallback_written += 1
        return self.fallback.render(picture, _BADGES.get(self.state, self.state))

    # ------------------------------------------------------------ status

    def status_text(self) -> str:
        latency = self.received.median()
        server = self.session.server_stats if self.session is not None else None
        faces = server.get("faces") if isinstance(server, dict) else None
        parts = [
            f"{self.state:<12}",
            f"in {self.capture.meter.rate():4.1f} fps",
            f"out {self.received.rate():4.1f} fps",
            f"g2g {latency:4.0f} ms" if latency is not None else "g2g    - ms",
            f"faces {faces if faces is not None else '-'}",
        ]
        if self._showing_fallback:
            parts.append("[fallback: " + ("blurred" if self.fallback.config.policy == "blur" else "passthrough") + "]")
        return " | ".join(parts)

    async def _status_loop(self) -> None:
        while True:
            self.status.update(self.status_text())
            await asyncio.sleep(0.5)

    async def _watch_capture(self) -> None:
        while self.capture.failed is None:
            await asyncio.sleep(0.5)
        raise CamError(f"{self.capture.failed.rstrip('.')}.")


def _saw_shutdown(session: MirageSession) -> bool:
    """The server said it is going away ("server_shutdown" event) before ending the session."""
    return any(event.get("event") == "server_shutdown" for event in session.events)


def _end_reason(session: MirageSession) -> str:
    code, reason = session.close_code, (session.close_reason or "").strip()
    if code == 1013:
        return "the server is full"
    if code in (1001, 1012):
        return "the server is restarting"
    if code is not None and code != 1000:
        return f"the server closed the session (code {code}{': ' + reason if reason else ''})"
    if session.connection_state in ("failed", "closed"):
        return "the media connection dropped"
    return "the server ended the session"


def describe_refusal(exc: SessionRefused, url: str) -> str:
    """One sentence for a refusal the user must act on."""
    message = exc.message.strip().rstrip(".")
    if exc.code == "unauthorized":
        return f"The server at {url} refused the API key ({message}); pass the right one with --api-key or MIRAGE_API_KEY."
    if exc.code == "no_face":
        return f"The server found no face in the reference photo ({message}); choose a photo with one clearly visible face."
    return f"The server refused the session: {message}."


__all__ = [
    "Backoff",
    "CamApp",
    "CamSettings",
    "DesktopSession",
    "describe_refusal",
    "prepare_received",
    "unstamp",
]

