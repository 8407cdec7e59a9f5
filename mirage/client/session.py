"""The Python side of a Mirage session (the protocol of serve_app, over aiortc + websockets).

One :class:`MirageSession` = ``GET /config``, a WebSocket at ``/ws/session``
that stays open for the whole session, and an RTCPeerConnection that sends a
stamped video source (and optionally a tone) and receives the swapped video.
Every received frame's stamp is read back against the time that frame number
was sent: glass-to-glass latency, measured in one process with one clock.

Typical use::

    async with MirageSession(ClientConfig(url, reference_bytes, source)) as session:
        await session.wait_frames(30)
        print(session.stats.summary())
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import av
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.rtcrtpsender import RTCRtpSender

from mirage.client.avsync import AvMarks, offset_summary
from mirage.client.encoded import EncodedClip
from mirage.client.jitter import use_marker_frames
from mirage.client.sources import VideoSource
from mirage.client.stamp import frame_distance, read_stamp
from mirage.client.tracks import LoopedAudioTrack, PreEncodedVideoTrack, SendLedger, StampedVideoTrack, ToneAudioTrack
from mirage.errors import MirageError
from mirage.types import Image
from mirage.video import video_frame_to_bgr
from mirage.voice.jitter import use_immediate_audio
from mirage.webrtc.guard import IcePolicy, guard_peer_connection

logger = logging.getLogger(__name__)

#: Photos larger than this travel as a binary message (serve_app.control.BINARY_MAGIC framing:
#: magic, 4-byte JSON length, JSON, raw photo): base64 would push them past the server's 16 MiB frame.
BINARY_REFERENCE_BYTES = 4 * 1024 * 1024
BINARY_MAGIC = b"MRG1"


def pack_binary(header: dict[str, Any], photo: bytes) -> bytes:
    head = json.dumps(header).encode("utf-8")
    return BINARY_MAGIC + len(head).to_bytes(4, "big") + head + photo


#: WebSocket close codes the server uses (see the session protocol) → error codes.
CLOSE_CODES = {4401: "unauthorized", 4400: "bad_request", 1013: "server_full", 1009: "message_too_big"}
#: Close codes the server's WebSocket layer sends without a reason of its own → the sentence we show.
CLOSE_SENTENCES = {
    1009: "The server refused a message larger than its 16 MiB WebSocket limit: "
    "send the reference photo as a binary message (this client does when it is large) or a smaller photo.",
}
#: HTTP statuses a refused WebSocket handshake may carry → error codes.
HTTP_CODES = {401: "unauthorized", 403: "unauthorized", 503: "server_full", 429: "server_full"}


class SessionError(MirageError):
    """A session could not be opened or broke down."""


class SessionRefused(SessionError):
    """The server refused the session (or a request in it) with a code and one sentence."""

    def __init__(self, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: The server's hint: try again after this many seconds (``server_full``; mirage.client.retry).
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"


class SessionFailed(SessionError):
    """The server could not be reached, or the media connection did not come up."""


@dataclass(frozen=True)
class SessionOptions:
    """The swap options sent with the offer (and by ``set_options``)."""

    swapper: str = "mesh"
    max_faces: int = 1
    mouth_mask: bool = False
    fallback: str = "blur"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClientConfig:
    """Everything one session needs. ``url`` is the server's base, e.g. ``http://127.0.0.1:8000``."""

    url: str
    reference: bytes
    source: VideoSource
    api_key: str | None = None
    options: SessionOptions = SessionOptions()
    audio: bool = False
    tone_hz: float | None = None
    #: Send these samples (48 kHz mono float, looped) instead of the tone (``mirage load --audio-file``).
    audio_samples: np.ndarray | None = field(default=None, repr=False)
    #: Keep the returned audio (48 kHz mono float) in :attr:`MirageSession.returned_audio`.
    record_audio: bool = False
    #: Put an A/V mark in the sent audio once a second and measure the returned audio's offset from the
    #: returned video (``SessionStats.av_offsets_ms``; :mod:`mirage.client.avsync`). Needs ``audio``.
    av_marks: bool = False
    #: Hand each returned Opus packet to the decoder on arrival instead of after four more (aiortc's
    #: default holds audio 60-80 ms; the player's own buffer is what a receiver needs, see
    #: :mod:`mirage.voice.jitter`).
    immediate_audio: bool = True
    fps: float | None = None
    connect_timeout_s: float = 60.0
    #: Decode each received frame on its last packet (RTP marker) instead of on the next
    #: frame's first, as browsers do (see :mod:`mirage.client.jitter`): one frame interval less.
    marker_frames: bool = True
    #: Keep decoded BGR frames in :attr:`MirageSession.frames` (a small queue, newest wins).
    keep_frames: int = 0
    #: Replay this pre-encoded VP8 clip of ``source`` (see :mod:`mirage.client.encoded`) instead
    #: of encoding live; its stamps cycle with the clip's period. Live when the server wants H.264.
    encoded: EncodedClip | None = None
    #: The server sends stats every second: this long without any WebSocket message means the
    #: ingress is gone (the socket may not even close), and the session ends, peer connection too.
    silence_timeout_s: float = 5.0
    #: Host-candidate allow-list / NAT address for this side's ICE (mirage.webrtc.guard); media is
    #: accepted only from the address ICE validated.
    ice: IcePolicy = IcePolicy()

    def __post_init__(self) -> None:
        if self.encoded is not None and self.encoded.size != self.source.size:
            raise ValueError(f"the encoded clip is {self.encoded.size}, the source {self.source.size}: encode this source")


@dataclass(frozen=True)
class ReceivedFrame:
    """One swapped frame as it came back."""

    number: int | None  # stamp value (None: unreadable)
    image: Image | None  # BGR, only when the session keeps frames or has a callback
    received_at: float  # time.monotonic()
    latency_ms: float | None  # glass-to-glass, first arrival of a stamped frame only
    pts: int | None
    size: tuple[int, int]  # (width, height)


@dataclass
class SessionStats:
    """Counters of one session, from the client's side."""

    frames: int = 0  # video frames received
    unstamped: int = 0  # received without a readable stamp
    repeats: int = 0  # a frame number received again (e.g. the server's "hold" fallback)
    errors: int = 0  # error messages from the server + failures on our side
    audio_frames: int = 0
    #: Returned audio frames missing (gaps in the returned track's timestamps, in 20 ms frames).
    audio_dropped: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    #: Returned audio minus returned video, per A/V mark (ms; positive: the audio is later).
    av_offsets_ms: list[float] = field(default_factory=list)
    #: Audio glass-to-glass per A/V mark: the burst's send to its onset in the returned audio (ms).
    audio_latencies_ms: list[float] = field(default_factory=list)
    first_at: float | None = None
    last_at: float | None = None
    _seen: set[int] = field(default_factory=set, repr=False)
    _first_number: int | None = field(default=None, repr=False)
    _last_number: int | None = field(default=None, repr=False)

    def observe_number(self, unwrapped: int) -> bool:
        """Record a frame number; False when it was seen before."""
        if unwrapped in self._seen:
            self.repeats += 1
            return False
        self._seen.add(unwrapped)
        if self._first_number is None or unwrapped < self._first_number:
            self._first_number = unwrapped
        if self._last_number is None or unwrapped > self._last_number:
            self._last_number = unwrapped
        return True

    @property
    def dropped(self) -> int:
        """Frames sent between the first and the last one received that never came back."""
        if self._first_number is None or self._last_number is None:
            return 0
        return self._last_number - self._first_number + 1 - len(self._seen)

    @property
    def fps(self) -> float:
        if self.first_at is None or self.last_at is None or self.frames < 2 or self.last_at <= self.first_at:
            return 0.0
        return (self.frames - 1) / (self.last_at - self.first_at)

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        return float(np.percentile(np.asarray(self.latencies_ms), q))

    def summary(self) -> dict[str, Any]:
        """The per-session record of the load report."""
        p50, p95 = self.percentile(50), self.percentile(95)
        return {
            "fps": round(self.fps, 2),
            "g2g_p50_ms": None if p50 is None else round(p50, 1),
            "g2g_p95_ms": None if p95 is None else round(p95, 1),
            "frames": self.frames,
            "dropped": self.dropped,
            "errors": self.errors,
        }

    def av_offset_summary(self) -> dict[str, float | int] | None:
        """p50/p95 of the A/V offsets (ms, audio later = positive); None without marks."""
        return offset_summary(self.av_offsets_ms)

    def audio_latency_summary(self) -> dict[str, float | int] | None:
        """p50/p95 of the audio's glass-to-glass latency at the marks (ms); None without marks."""
        return offset_summary(self.audio_latencies_ms)


def _ws_url(base: str) -> str:
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise SessionFailed(f"The server URL must start with http:// or https:// (got {base!r}).")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws/session", "", ""))


def _luma(frame: av.VideoFrame) -> np.ndarray:
    """The Y plane without converting the whole frame (decoders give yuv420p)."""
    if frame.format.name in ("yuv420p", "yuvj420p", "nv12"):
        plane = frame.planes[0]
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
        return rows[: frame.height, : frame.width]
    return np.asarray(frame.to_ndarray(format="gray"))


class MirageSession:
    """One live session. ``await connect()`` (or ``async with``), receive, ``await close()``.

    ``on_frame`` is called on the event loop for every received frame; keep it
    cheap. Control messages: :meth:`control` (data channel, or the WebSocket
    when ``via="ws"``) returns the server's ack or error reply.
    """

    def __init__(self, config: ClientConfig, on_frame: Callable[[ReceivedFrame], None] | None = None) -> None:
        self.config = config
        self.on_frame = on_frame
        self.stats = SessionStats()
        self.ledger = SendLedger(config.encoded.period) if config.encoded is not None else SendLedger()
        self.server_config: dict[str, Any] = {}
        self.session_id: str | None = None
        self.note: str | None = None
        self.synthetic = False
        self.server_stats: dict[str, Any] | None = None
        self.events: deque[dict[str, Any]] = deque(maxlen=100)
        self.server_errors: deque[dict[str, Any]] = deque(maxlen=100)
        self.frames: asyncio.Queue[ReceivedFrame] = asyncio.Queue(maxsize=max(1, config.keep_frames))
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.ended = asyncio.Event()
        self._pc: RTCPeerConnection | None = None
        self._ws: Any = None
        self._channel: Any = None
        self._channel_open = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 1
        self._video: StampedVideoTrack | PreEncodedVideoTrack | None = None
        self._audio: ToneAudioTrack | LoopedAudioTrack | None = None
        #: The A/V marks (``config.av_marks`` with audio), shared by the sent audio and both receivers.
        self.av_marks: AvMarks | None = AvMarks() if config.av_marks and config.audio else None
        #: The returned audio as 48 kHz mono float pieces (with ``config.record_audio``).
        self.returned_audio: list[np.ndarray] = []
        self._connected = asyncio.Event()
        self._first_frame = asyncio.Event()
        self._last_unwrapped: int | None = None
        self._closing = False
        self._last_ws_message = time.monotonic()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> MirageSession:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the session; raises :class:`SessionRefused` or :class:`SessionFailed`."""
        try:
            await asyncio.wait_for(self._connect(), self.config.connect_timeout_s)
        except TimeoutError:
            await self.close()
            raise SessionFailed(
                f"The session did not come up within {self.config.connect_timeout_s:.0f} s."
            ) from None
        except BaseException:
            await self.close()
            raise

    async def _connect(self) -> None:
        import websockets
        from websockets.asyncio.client import connect as ws_connect

        url = _ws_url(self.config.url)  # validates the scheme before anything is fetched
        self.server_config = await self._fetch_config()
        self._check_reference_size(self.config.reference)
        pc = self._pc = RTCPeerConnection(self._rtc_configuration())
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_connection_state)

        encoded = self.config.encoded
        if encoded is not None and self.server_config.get("prefer_h264"):
            logger.info("the server prefers H.264: encoding live instead of replaying the pre-encoded VP8 clip")
            encoded = None
            self.ledger = SendLedger()  # live stamps wrap at the 16-bit modulus
        if encoded is not None:
            self._video = PreEncodedVideoTrack(encoded, fps=self.config.fps, ledger=self.ledger)
        else:
            self._video = StampedVideoTrack(self.config.source, fps=self.config.fps, ledger=self.ledger)
        video = pc.addTransceiver(self._video, direction="sendrecv")
        if self.config.marker_frames:
            use_marker_frames(video.receiver)
        if encoded is not None:
            # aiortc packs the clip's bytes with the negotiated codec's payloader: offer VP8 only,
            # so the answer cannot pick another codec (the default order already puts VP8 first).
            codecs = RTCRtpSender.getCapabilities("video").codecs
            video.setCodecPreferences([c for c in codecs if c.mimeType.lower() in ("video/vp8", "video/rtx")])
        elif self.server_config.get("prefer_h264"):
            codecs = RTCRtpSender.getCapabilities("video").codecs
            video.setCodecPreferences(
                [c for c in codecs if c.mimeType.lower() == "video/h264"]
                + [c for c in codecs if c.mimeType.lower() != "video/h264"]
            )
        if self.config.audio:
            marks: dict[str, Any] = {"marks": self.av_marks} if self.av_marks is not None else {}
            if self.config.audio_samples is not None:
                self._audio = LoopedAudioTrack(self.config.audio_samples, **marks)
            else:
                self._audio = ToneAudioTrack(self.config.tone_hz, **marks)
            audio = pc.addTransceiver(self._audio, direction="sendrecv")
            if self.config.immediate_audio:
                use_immediate_audio(audio.receiver)
        channel = self._channel = pc.createDataChannel("control")
        channel.on("open", self._channel_open.set)
        channel.on("message", self._on_channel_message)
        guard_peer_connection(pc, self.config.ice)

        # aiortc gathers every candidate inside setLocalDescription: the offer is complete (non-trickle).
        await pc.setLocalDescription(await pc.createOffer())
        offer: dict[str, Any] = {
            "type": "offer",
            "sdp": pc.localDescription.sdp,
            "sdp_type": pc.localDescription.type,
            "api_key": self.config.api_key,
            "options": self.config.options.as_dict(),
        }
        binary = len(self.config.reference) > BINARY_REFERENCE_BYTES
        if not binary:
            offer["reference_b64"] = base64.b64encode(self.config.reference).decode("ascii")
        headers = {"X-API-Key": self.config.api_key} if self.config.api_key else None
        try:
            self._ws = await ws_connect(url, additional_headers=headers, max_size=2**22, open_timeout=20)
        except websockets.exceptions.InvalidStatus as exc:
            status = exc.response.status_code
            body = exc.response.body.decode("utf-8", "replace") if exc.response.body else ""
            code = HTTP_CODES.get(status, "http_error")
            raise SessionRefused(code, _message_from_body(body) or f"The server refused the session (HTTP {status}).") from None
        except (TimeoutError, OSError, websockets.exceptions.WebSocketException) as exc:
            raise SessionFailed(f"Could not open the session WebSocket at {url}: {exc}") from None

        try:
            await self._ws.send(pack_binary(offer, self.config.reference) if binary else json.dumps(offer))
        except websockets.exceptions.ConnectionClosed:
            pass  # refused at once (e.g. server full): the reason is in the buffered reply or the close code
        reply = await self._first_reply()
        if reply.get("type") == "error":
            hint = reply.get("retry_after_s")
            raise SessionRefused(
                str(reply.get("code", "error")),
                str(reply.get("message", "The server refused the session.")),
                float(hint) if isinstance(hint, (int, float)) and not isinstance(hint, bool) else None,
            )
        if reply.get("type") != "answer" or not isinstance(reply.get("sdp"), str):
            raise SessionFailed(f"The server sent {reply.get('type')!r} where an answer was expected.")
        self.session_id = reply.get("session_id")
        self.note = reply.get("note")
        #: The server says the media it returns is synthetic (AI-modified): clients show the notice.
        self.synthetic = bool(reply.get("synthetic"))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type=reply.get("sdp_type", "answer")))
        self._spawn(self._read_ws())
        self._spawn(self._watch_silence())
        await self._connected.wait()
        if pc.connectionState != "connected":
            if self.close_code is not None:
                raise SessionFailed(
                    f"The server ended the session before the media connected "
                    f"(close code {self.close_code}: {self.close_reason or 'no reason'})."
                )
            raise SessionFailed(f"The media connection failed (state {pc.connectionState}).")
        logger.info("session %s connected", self.session_id)

    async def _fetch_config(self) -> dict[str, Any]:
        url = self.config.url.rstrip("/") + "/config"
        headers = {"X-API-Key": self.config.api_key} if self.config.api_key else {}
        status, body = await asyncio.to_thread(_http_get, url, headers, 15.0)
        if status is None:
            raise SessionFailed(f"Could not reach the server at {self.config.url}: {body}")
        if status != 200:
            code = HTTP_CODES.get(status, "http_error")
            raise SessionRefused(code, _message_from_body(body) or f"GET /config answered HTTP {status}.")
        try:
            data = json.loads(body)
        except ValueError:
            raise SessionFailed(f"{url} did not return JSON: is this a Mirage server?") from None
        if not isinstance(data, dict):
            raise SessionFailed(f"{url} returned {type(data).__name__}, not a JSON object.")
        return data

    def _rtc_configuration(self) -> RTCConfiguration:
        servers = []
        for entry in self.server_config.get("ice_servers") or []:
            if isinstance(entry, dict) and entry.get("urls"):
                servers.append(RTCIceServer(urls=entry["urls"], username=entry.get("username"), credential=entry.get("credential")))
        policy = RTCIceTransportPolicy.RELAY if self.server_config.get("force_relay") else RTCIceTransportPolicy.ALL
        # An explicit (possibly empty) list: aiortc would otherwise try Google's public STUN server.
        return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)

    async def _first_reply(self) -> dict[str, Any]:
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                raw = await self._ws.recv()
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                reason = exc.rcvd.reason if exc.rcvd else ""
                if code in CLOSE_CODES:
                    raise SessionRefused(
                        CLOSE_CODES[code], reason or CLOSE_SENTENCES.get(code, "The server refused the session.")
                    ) from None
                raise SessionFailed(f"The server closed the session before answering (close code {code}).") from None
            try:
                message = json.loads(raw)
            except (TypeError, ValueError):
                raise SessionFailed("The server's reply to the offer was not JSON.") from None
            if not isinstance(message, dict):
                raise SessionFailed("The server's reply to the offer was not a JSON object.")
            if message.get("type") in ("stats", "event"):
                self._dispatch(raw, via="ws")  # early news; keep waiting for the answer
                continue
            return message

    async def close(self) -> None:
        """End the session: close the WebSocket and the peer connection, stop the tasks. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 5)
        if self._pc is not None:
            with contextlib.suppress(Exception):
                await self._pc.close()
        for track in (self._video, self._audio):
            if track is not None:
                track.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for future in self._pending.values():
            if not future.done():
                future.cancel()
        self._connected.set()
        self.ended.set()

    # ------------------------------------------------------------------ receiving

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_connection_state(self) -> None:
        assert self._pc is not None
        state = self._pc.connectionState
        logger.debug("connection state %s", state)
        if state in ("connected", "failed", "closed"):
            self._connected.set()
        if state in ("failed", "closed") and not self._closing:
            self.ended.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            self._spawn(self._receive_video(track))
        else:
            self._spawn(self._drain_audio(track))

    async def _receive_video(self, track: MediaStreamTrack) -> None:
        sender_width = self.config.source.size[0]
        want_image = self.on_frame is not None or self.config.keep_frames > 0
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.VideoFrame):  # a video track yields decoded video frames only
                continue
            now = time.monotonic()
            stats = self.stats
            stats.frames += 1
            stats.first_at = stats.first_at if stats.first_at is not None else now
            stats.last_at = now
            number = read_stamp(_luma(frame), sender_width=sender_width)
            latency: float | None = None
            if number is None:
                stats.unstamped += 1
            elif stats.observe_number(self._unwrap(number)):
                sent = self.ledger.sent_at(number)
                if sent is not None:
                    latency = (now - sent) * 1000.0
                    stats.latencies_ms.append(latency)
                    if self.av_marks is not None:
                        self.av_marks.video_received(sent, now)
            image = video_frame_to_bgr(frame) if want_image else None
            received = ReceivedFrame(number, image, now, latency, frame.pts, (frame.width, frame.height))
            self._first_frame.set()
            if self.config.keep_frames > 0:
                if self.frames.full():
                    self.frames.get_nowait()
                self.frames.put_nowait(received)
            if self.on_frame is not None:
                try:
                    self.on_frame(received)
                except Exception:  # a caller's bug must not kill the receiver
                    logger.exception("on_frame callback failed")
                    stats.errors += 1

    def _unwrap(self, number: int) -> int:
        """Map the stamp (wrapping at the stream's period) onto an ever-growing counter near the last one seen."""
        period = self.ledger.period
        if self._last_unwrapped is None:
            self._last_unwrapped = number
            return number
        forward = frame_distance(number, self._last_unwrapped % period, period)
        unwrapped = self._last_unwrapped + forward if forward < period // 2 else self._last_unwrapped - (period - forward)
        self._last_unwrapped = max(self._last_unwrapped, unwrapped)
        return unwrapped

    async def _drain_audio(self, track: MediaStreamTrack) -> None:
        marks = self.av_marks
        keep = self.config.record_audio or marks is not None
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48_000) if keep else None
        expected: int | None = None
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):  # an audio track yields decoded audio frames only
                continue
            now = time.monotonic()
            self.stats.audio_frames += 1
            pts, samples = getattr(frame, "pts", None), getattr(frame, "samples", 0)
            if isinstance(pts, int) and samples:
                if expected is not None and pts > expected:
                    self.stats.audio_dropped += (pts - expected) // samples
                expected = pts + samples
            if resampler is not None:
                for mono in resampler.resample(frame):
                    samples_f = mono.to_ndarray().reshape(-1).astype(np.float32) / 32768.0
                    if self.config.record_audio:
                        self.returned_audio.append(samples_f)
                    if marks is not None:
                        for result in marks.audio_received(samples_f, now):
                            self.stats.av_offsets_ms.append(result.offset_ms)
                            self.stats.audio_latencies_ms.append(result.audio_latency_ms)

    async def _read_ws(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in self._ws:
                self._last_ws_message = time.monotonic()
                self._dispatch(raw, via="ws")
        except ConnectionClosed:
            pass
        finally:
            if self._ws is not None and self._ws.close_code is not None:
                self.close_code = self.close_code or self._ws.close_code
                self.close_reason = self.close_reason or self._ws.close_reason
            self._server_gone()

    def _server_gone(self) -> None:
        """The WebSocket died (or went silent): end the peer connection too, do not sit on a frozen picture."""
        self.ended.set()
        self._connected.set()  # wakes connect() if the server ended the session first
        if self._pc is not None and not self._closing and self._pc.connectionState != "closed":
            pc = self._pc
            task = asyncio.ensure_future(pc.close())
            task.add_done_callback(lambda t: None if t.cancelled() else t.exception())

    async def _watch_silence(self) -> None:
        """End the session when the server has said nothing for ``silence_timeout_s``."""
        timeout = self.config.silence_timeout_s
        self._last_ws_message = time.monotonic()
        while not self.ended.is_set():
            await asyncio.sleep(min(1.0, timeout / 4))
            if time.monotonic() - self._last_ws_message > timeout:
                logger.info("no word from the server for %.0f s: ending the session", timeout)
                self.close_reason = self.close_reason or f"no word from the server for {timeout:.0f} s"
                if self._ws is not None:
                    task = asyncio.ensure_future(self._ws.close())
                    task.add_done_callback(lambda t: None if t.cancelled() else t.exception())
                self._server_gone()
                return

    def _on_channel_message(self, raw: object) -> None:
        self._dispatch(raw, via="datachannel")

    def _dispatch(self, raw: object, via: str) -> None:
        try:
            message = json.loads(raw) if isinstance(raw, (str, bytes)) else None
        except ValueError:
            message = None
        if not isinstance(message, dict):
            logger.warning("ignoring a non-JSON message from the server (%s)", via)
            return
        kind = message.get("type")
        if kind == "stats":
            self.server_stats = message
        elif kind == "event":
            self.events.append(message)
        elif kind in ("ack", "error", "pong"):
            if kind == "error":
                self.stats.errors += 1
                self.server_errors.append(message)
            message_id = message.get("id")
            future = self._pending.pop(message_id, None) if isinstance(message_id, int) else None
            if future is not None and not future.done():
                future.set_result(message)
        else:
            logger.debug("unhandled %s message %r from the server", via, kind)

    # ------------------------------------------------------------------ API

    async def wait_frames(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` frames have arrived (raises :class:`SessionFailed` on timeout or end)."""
        deadline = time.monotonic() + timeout
        while self.stats.frames < count:
            if self.ended.is_set():
                raise SessionFailed(f"The session ended after {self.stats.frames} of {count} frames.")
            if time.monotonic() > deadline:
                raise SessionFailed(f"Only {self.stats.frames} of {count} frames arrived within {timeout:.0f} s.")
            await asyncio.sleep(0.02)

    async def control(self, message: dict[str, Any], *, via: str = "datachannel", timeout: float = 10.0,
                      photo: bytes | None = None) -> dict[str, Any]:
        """Send a control message (an ``id`` is added) and return the server's ack or error reply.

        With ``photo``, the message goes over the WebSocket as one binary message (no base64).
        """
        message_id = self._next_id
        self._next_id += 1
        payload = dict(message, id=message_id)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        try:
            if photo is not None:
                if self._ws is None:
                    raise SessionFailed("The session is not connected.")
                await self._ws.send(pack_binary(payload, photo))
            else:
                await self.send_raw(json.dumps(payload), via=via)
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise SessionFailed(f"No reply to the {message.get('type')!r} message within {timeout:.0f} s.") from None
        finally:
            self._pending.pop(message_id, None)

    async def send_raw(self, text: str, *, via: str = "datachannel") -> None:
        """Send raw text on the data channel or the WebSocket (tests use it for garbage)."""
        if via == "ws":
            if self._ws is None:
                raise SessionFailed("The session is not connected.")
            await self._ws.send(text)
            return
        if self._channel is None:
            raise SessionFailed("The session is not connected.")
        await asyncio.wait_for(self._channel_open.wait(), 10)
        self._channel.send(text)

    def _check_reference_size(self, reference: bytes) -> None:
        """Refuse a photo over the server's limit here, with its sentence: a message larger than the
        server's WebSocket frame limit (16 MiB) would be cut off by the proxy with no message at all."""
        limit = self.server_config.get("max_reference_bytes")
        if isinstance(limit, int) and not isinstance(limit, bool) and len(reference) > limit:
            raise SessionRefused(
                "bad_reference",
                f"The reference photo is {len(reference) / 2**20:.1f} MB; the server accepts up to "
                f"{limit // 2**20} MB: choose a smaller photo.",
            )

    async def set_reference(self, reference: bytes, **kw: Any) -> dict[str, Any]:
        self._check_reference_size(reference)
        if len(reference) > BINARY_REFERENCE_BYTES:
            kw.pop("via", None)
            return await self.control({"type": "set_reference"}, photo=reference, **kw)
        return await self.control({"type": "set_reference", "reference_b64": base64.b64encode(reference).decode("ascii")}, **kw)

    async def set_options(self, **options: Any) -> dict[str, Any]:
        return await self.control({"type": "set_options", **options})

    async def ping(self, **kw: Any) -> dict[str, Any]:
        return await self.control({"type": "ping"}, **kw)

    @property
    def connection_state(self) -> str:
        return self._pc.connectionState if self._pc is not None else "new"


def _http_get(url: str, headers: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """(status, body) of a GET; (None, reason) when the server cannot be reached. Blocking: run in a thread."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) URL from the user
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        return None, str(getattr(exc, "reason", exc))


def _message_from_body(body: str) -> str | None:
    """The human sentence of a JSON error body (``message`` or FastAPI's ``detail``), if any."""
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return body.strip()[:300] or None
    if isinstance(data, dict):
        for key in ("message", "detail", "error"):
            value = data.get(key)
            if isinstance(value, str):
                return value
    return None
