"""Sessions: one WebSocket + one RTCPeerConnection per user, on the replica that owns them.

A session lives exactly as long as its WebSocket request (which Serve counts
as an ongoing request, so autoscaling and draining follow sessions). The
registry enforces this replica's own cap *before* any heavy work and refuses
beyond it at once (close 1013). Either side closing, the peer connection
failing, or the camera going silent for ``idle_timeout_s`` ends the session;
everything it started (tasks, tracks, the peer connection) is torn down.

Privacy: the reference photo and identity data live only in the session's
memory; nothing here logs them or puts them in a repr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from mirage.memtrim import trim_heap
from mirage.pipeline.models import SWAPPER, ModelClient
from mirage.pipeline.stages import FACE_STAGES, FaceStage
from mirage.types import SwapOptions
from mirage.voice.config import PRESETS, VoiceError, VoiceSelection, selection_from_options
from mirage.voice.gather import ChunkGatherer
from mirage.voice.jitter import use_immediate_audio
from mirage.voice.sync import SyncConfig
from mirage.voice.track import VoiceTrack
from mirage.webrtc.guard import DropCounters, guard_peer_connection
from mirage.webrtc.jitter import use_marker_frames
from serve_app.auth import key_matches, rejection_message
from serve_app.breaker import StageBreakers
from serve_app.control import (
    ControlError,
    OfferMessage,
    Ping,
    SetOptions,
    SetReference,
    ack_message,
    answer_message,
    error_message,
    event_message,
    parse_control,
    parse_offer,
    reference_photo,
    split_binary,
)
from serve_app.disclosure import is_commercial, noncommercial_message
from serve_app.ice import fingerprint_problem, has_receivable_video, ice_policy, prefer_codec, rtc_configuration
from serve_app.media import LatestFramePump, OrderedVideoTrack, cancel_and_wait
from serve_app.metrics import FrameMetricsSink, FrameRecord, NullSink, RollingStats
from serve_app.orchestrator import EnhanceState, FramePreparer, FrameProcessor, SessionControls, VideoLoop
from serve_app.settings import Settings
from serve_app.voice import SyncedVideoTrack, VoiceTotals, deployment_gatherer, local_convert, local_core, voice_track

logger = logging.getLogger(__name__)

#: Server messages that say the returned media is synthetic ("synthetic": true).
SYNTHETIC_TYPES = frozenset({"answer", "stats", "event"})

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401

#: Why sessions end when the replica shuts down (closed with 1001 "going away").
SHUTDOWN_REASON = "server shutting down"
#: Retry hint of a refusal by a replica that is shutting down (another replica takes the session).
SHUTDOWN_RETRY_AFTER_S = 1.0
#: Why a session ends when its client closed the WebSocket (nothing is sent back then).
CLIENT_CLOSED = "client closed the session"
#: When a session ends on the media side (camera track ended, peer connection closed) the client
#: is usually closing its WebSocket at the same moment: wait this long for that before sending a
#: close of our own (a send racing the client's close makes Serve's proxy log a GeneratorExit).
WS_CLOSE_GRACE_S = 1.0
#: How long building an identity from a reference photo may take.
IDENTITY_TIMEOUT_S = 20.0

#: Every peer connection this process created (weakly held), to report leaks.
_ALL_PEER_CONNECTIONS: weakref.WeakSet[RTCPeerConnection] = weakref.WeakSet()


#: References larger than this are large enough to leave freed heap behind (glibc keeps it).
LARGE_MESSAGE_BYTES = 1024 * 1024


def release_freed_memory() -> None:
    """Give freed heap back to the OS after a large message (glibc keeps it otherwise; no-op elsewhere).

    A 10 MB reference passes through several buffers (WebSocket frame, JSON text, base64, bytes);
    once freed, glibc's raised mmap threshold keeps them in the heap and the replica's RSS stays up.
    """
    trim_heap()


def open_peer_connections() -> int:
    """Peer connections created here that are not closed yet."""
    return sum(1 for pc in list(_ALL_PEER_CONNECTIONS) if pc.connectionState != "closed")


@dataclass
class SessionContext:
    """What every session of one replica shares."""

    settings: Settings
    models: ModelClient
    preparer: FramePreparer
    stats: RollingStats
    sink: FrameMetricsSink = field(default_factory=NullSink)
    #: The frame pipeline's face stages (mirage.pipeline.stages.FACE_STAGES, plus any added).
    stages: tuple[FaceStage, ...] = FACE_STAGES
    #: Per-stage circuit breakers shared by this replica's sessions (serve_app.breaker).
    breakers: StageBreakers = field(default_factory=StageBreakers)
    #: The enhancers sessions may choose, and this replica's enhancement counters.
    enhance: EnhanceState = field(default_factory=EnhanceState)
    #: The VoiceConverter deployment's handle; None: voices are converted in this process.
    voice: Any = None
    #: Voice counters of this replica's ended sessions (for /metrics).
    voice_totals: VoiceTotals = field(default_factory=VoiceTotals)
    _local_voice: Any = None
    _voices: list[str] | None = None
    _gatherer: ChunkGatherer | None = None

    def voice_convert(self) -> Any:
        """The voice pump's call: the deployment (the replica's sessions' chunks gathered into one call per
        round), or (no handle) a converter core of this process."""
        if self.voice is not None:
            if self._gatherer is None:
                self._gatherer = deployment_gatherer(self.voice)
            return self._gatherer.member()
        if self._local_voice is None:
            self._local_voice = local_core()
        return local_convert(self._local_voice)

    def voice_calls(self) -> dict[str, float]:
        """This replica's converter calls and the chunks they carried (several sessions' in one call)."""
        gatherer = self._gatherer
        calls = gatherer.calls if gatherer is not None else 0
        chunks = gatherer.chunks if gatherer is not None else 0
        return {"calls": calls, "chunks": chunks, "chunks_per_call": round(chunks / calls, 2) if calls else 0.0}

    async def available_voices(self) -> list[str]:
        """What ``set_options`` may choose (the deployment's ``available_voices``, asked once and kept)."""
        if self._voices is None:
            if self.voice is None:
                if self._local_voice is None:
                    self._local_voice = local_core()
                return list(self._local_voice.available_voices())
            try:
                self._voices = list(await asyncio.wait_for(self.voice.available_voices.remote(), 10.0))
            except Exception as exc:  # noqa: BLE001 - the presets are always there (the ingress disguises locally)
                logger.warning("could not ask the voice converter for its voices (%s)", type(exc).__name__)
                return ["off", *PRESETS, "custom"]
        return list(self._voices)


@dataclass
class SessionCounters:
    frames_out: int = 0
    latency_ema_ms: float = 0.0
    faces_last: int = 0
    fallback_frames: int = 0
    control_errors: int = 0

    def record(self, rec: FrameRecord) -> None:
        self.frames_out += 1
        total = float(rec.stages_ms.get("total", 0.0))
        self.latency_ema_ms = total if self.frames_out == 1 else self.latency_ema_ms + 0.1 * (total - self.latency_ema_ms)
        self.faces_last = rec.faces
        if rec.fallback is not None:
            self.fallback_frames += 1


class Session:
    """One user's live session on this replica."""

    def __init__(self, session_id: str, ctx: SessionContext, controls: SessionControls, reference: bytes) -> None:
        self.id = session_id
        self._ctx = ctx
        self._settings = ctx.settings.session
        self.controls = controls
        self._reference = reference  # kept in memory only, to rebuild identity on a swapper change
        self.created = time.time()
        self.state = "negotiating"
        self.end_reason: str | None = None
        self.ended = asyncio.Event()
        #: The client's WebSocket is gone (nothing may be sent on it any more).
        self.ws_disconnected = asyncio.Event()
        self.counters = SessionCounters()
        self._pc = RTCPeerConnection(configuration=rtc_configuration(ctx.settings.ice))
        _ALL_PEER_CONNECTIONS.add(self._pc)
        #: Datagrams dropped because they came from an address ICE had not validated (mirage.webrtc.guard).
        self.spoofed = DropCounters()
        self._video_in: Any = None
        self._audio_in: Any = None
        self._video_out: OrderedVideoTrack | None = None
        self._audio_out: VoiceTrack | None = None
        #: The voice this session asked for (or the server's default), applied to the track when it exists.
        self.voice: VoiceSelection = ctx.settings.voice.initial_selection()
        self._pump: LatestFramePump | None = None
        self._processor: FrameProcessor | None = None
        self._loop: VideoLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._control_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        self._closed = False
        self._media_started_at: float | None = None
        self._release_after_control = False
        self._wire_peer_connection()

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, state={self.state!r})"

    # --- peer connection -------------------------------------------------------------
    def _wire_peer_connection(self) -> None:
        pc = self._pc

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            if state == "connected" and self.state in ("negotiating", "connecting"):
                self.state = "active"
            elif state in ("failed", "closed"):
                self.end(f"peer connection {state}")

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video" and self._video_in is None:
                self._video_in = track
            elif track.kind == "audio" and self._audio_in is None:
                self._audio_in = track

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label != "control":
                return

            @channel.on("message")
            def on_message(message: Any) -> None:
                self.spawn(self._on_channel_message(channel, message))

    async def negotiate(self, offer_sdp: str) -> str:
        """Apply the client's (non-trickle) offer; return the answer SDP with all candidates."""
        sdp = prefer_codec(offer_sdp, "video", "H264") if self._ctx.settings.ice.prefer_h264 else offer_sdp
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:  # noqa: BLE001 - aiortc raises assorted errors on bad SDP
            logger.info("session %s: offer rejected (%s)", self.id, type(exc).__name__)
            raise ControlError("bad_offer", "The SDP offer is malformed or uses nothing this server supports.") from None
        if self._video_in is None:
            raise ControlError("bad_offer", "The offer has no camera video; send a sendrecv video track.")
        # Before gathering (setLocalDescription): host-address allow-list, and DTLS/SRTP/RTP only
        # from the address ICE validates (a spoofed ClientHello never ends the session).
        guard_peer_connection(self._pc, ice_policy(self._ctx.settings.ice), self.spoofed)
        for transceiver in self._pc.getTransceivers():
            if transceiver.kind == "video":
                # Decode each camera frame on its last packet, not when the next frame starts (-1 frame of latency).
                use_marker_frames(transceiver.receiver)
            elif transceiver.kind == "audio":
                # Each Opus packet to the decoder on arrival (aiortc holds 4): the voice track re-times it.
                use_immediate_audio(transceiver.receiver)
        # Times its own path (arrival to the wire) for the A/V hold of the audio (mirage.voice.sync).
        self._video_out = SyncedVideoTrack(window=self._settings.inflight)
        self._pc.addTrack(self._video_out)
        if self._audio_in is not None:
            delay = (lambda: self.counters.latency_ema_ms / 1000.0) if self._settings.audio_sync else (lambda: 0.0)
            defaults = replace(self._ctx.settings.voice, enable=False)
            self._audio_out = voice_track(
                self._audio_in, defaults, self._ctx.voice_convert(), delay, video=self._video_out,
                sync=SyncConfig(enabled=self._settings.audio_sync),
            )
            self._audio_out.pump.stream.set_selection(self.voice)
            self._pc.addTrack(self._audio_out)
        try:
            await self._pc.setLocalDescription(await self._pc.createAnswer())
        except Exception as exc:  # noqa: BLE001 - e.g. directions or codecs that cannot be answered
            logger.info("session %s: no answer possible (%s)", self.id, type(exc).__name__)
            raise ControlError("bad_offer", "The server cannot answer this offer (no common codec or direction).") from None
        self.state = "connecting"
        return self._pc.localDescription.sdp

    def start_media(self) -> None:
        """Start the latest-frame pump and the per-frame loop."""
        assert self._video_out is not None
        stats, sink = self._ctx.stats, self._ctx.sink

        def on_drop(count: int) -> None:
            stats.record_dropped(count)
            sink.dropped(count)

        video_out = self._video_out

        def on_frame(rec: FrameRecord) -> None:
            self.counters.record(rec)
            if isinstance(video_out, SyncedVideoTrack):
                video_out.frame_done(float(rec.stages_ms.get("total", 0.0)))
            stats.record_frame(rec)
            sink.frame(rec)

        self._pump = LatestFramePump(self._video_in, on_drop=on_drop)
        self._pump.start()
        self._processor = FrameProcessor(
            self._ctx.models, self._ctx.preparer, self._settings, self.controls, breakers=self._ctx.breakers,
            stages=self._ctx.stages, counters=self._ctx.enhance.counters,
        )
        self._loop = VideoLoop(
            self._pump, self._processor, self._video_out, self._settings.max_side, on_frame, self._settings.max_output_side
        )
        self._media_started_at = time.monotonic()
        self.spawn(self._run_loop())

    async def _run_loop(self) -> None:
        assert self._loop is not None
        await self._loop.run()
        self.end("camera track ended")

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task owned by this session: cancelled and awaited when it closes."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        self.ended.set()

    def _forget(self, key: str) -> None:
        """Ask a swapper replica to drop an identity now (the others expire it within seconds)."""
        if not key:
            return

        async def forget() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ctx.models.call(SWAPPER, "forget_identity", key), 2.0)

        self.spawn(forget())

    # --- control ----------------------------------------------------------------------
    async def _on_channel_message(self, channel: Any, message: Any) -> None:
        reply = await self.handle_control(message)
        if channel.readyState == "open":
            with contextlib.suppress(Exception):
                channel.send(json.dumps(reply))

    async def handle_control(self, message: str | bytes) -> dict[str, Any]:
        """Apply one control message; the reply is an ack or an error (never an exception)."""
        try:
            if len(message) > LARGE_MESSAGE_BYTES:
                self._release_after_control = True
            text, photo = split_binary(message)
            msg = parse_control(text)
            if photo is not None and not isinstance(msg, SetReference):
                raise ControlError("bad_request", "Only set_reference can carry binary data.", msg.id)
            async with self._control_lock:
                return await self._apply(msg, photo)
        except ControlError as exc:
            self.counters.control_errors += 1
            return error_message(exc.code, exc.message, exc.request_id)
        except Exception as exc:  # noqa: BLE001 - the session lives on
            self.counters.control_errors += 1
            logger.warning("session %s: control message failed (%s)", self.id, type(exc).__name__)
            return error_message("internal", "The server could not apply this message.")
        finally:
            if self._release_after_control:
                self._release_after_control = False
                del message
                release_freed_memory()

    async def identity_for(self, photo: bytes, swapper: str, request_id: int | None) -> tuple[Any, str | None]:
        try:
            reply = await asyncio.wait_for(
                self._ctx.models.call(SWAPPER, "prepare_identity", photo, swapper), IDENTITY_TIMEOUT_S
            )
        except TimeoutError:
            raise ControlError("busy", "Preparing the reference photo took too long; try again.", request_id) from None
        if not reply.ok:
            raise ControlError(reply.code or "bad_reference", reply.message or "The reference photo was refused.", request_id)
        return reply.identity, reply.note

    async def _apply(self, msg: SetReference | SetOptions | Ping, binary_photo: bytes | None = None) -> dict[str, Any]:
        if isinstance(msg, Ping):
            return ack_message(msg.id)
        if isinstance(msg, SetReference):
            photo = reference_photo(msg.reference_b64, binary_photo, self._settings.max_reference_bytes, msg.id)
            identity, note = await self.identity_for(photo, self.controls.swapper, msg.id)
            self._forget(self.controls.set_identity(identity))
            self._reference = photo
            return ack_message(msg.id, note)
        # SetOptions
        note = None
        if msg.enhancer is not None or msg.fidelity is not None or msg.blend is not None:
            # Checked first: a refused enhancer leaves the session's options as they were.
            await self._ctx.enhance.apply(self._ctx.models, self.controls, msg.enhancer, msg.fidelity, msg.blend, msg.id)
        if msg.swapper is not None and msg.swapper != self.controls.swapper:
            if not self._settings.allow_noncommercial and not is_commercial(msg.swapper):
                raise ControlError("not_allowed", noncommercial_message(msg.swapper), msg.id)
            identity, note = await self.identity_for(self._reference, msg.swapper, msg.id)
            self._forget(self.controls.set_identity(identity))
            self.controls.swapper = msg.swapper
        if msg.max_faces is not None:
            if msg.max_faces > self._settings.max_faces_limit:
                raise ControlError("bad_request", f"max_faces is limited to {self._settings.max_faces_limit}.", msg.id)
            if self._processor is not None:
                self._processor.set_max_faces(msg.max_faces)
            else:
                self.controls.max_faces = msg.max_faces
        if msg.mouth_mask is not None:
            self.controls.options = SwapOptions(mouth_mask=msg.mouth_mask, coverage=self.controls.options.coverage)
        if msg.fallback is not None:
            self.controls.fallback = msg.fallback
        voice = msg.voice_options()
        if voice:
            try:
                selection = selection_from_options(voice, current=self.voice)
            except VoiceError as exc:
                raise ControlError("bad_request", str(exc), msg.id) from None
            if selection is not None:
                if selection.kind == "rvc" and selection.rvc_model not in await self._available_rvc():
                    raise ControlError(
                        "bad_request", f"The voice rvc:{selection.rvc_model} is not provisioned on this server.", msg.id
                    )
                self.voice = selection
                if self._audio_out is not None:
                    self._audio_out.pump.stream.set_selection(selection)
        return ack_message(msg.id, note)

    async def _available_rvc(self) -> set[str]:
        voices = await self._ctx.available_voices()
        return {v[4:] for v in voices if v.startswith("rvc:")}

    def voice_stats(self) -> dict[str, Any] | None:
        """The voice pump's counters (None: no audio in this session)."""
        return self._audio_out.stats() if self._audio_out is not None else None

    # --- the session request ------------------------------------------------------------
    async def send(self, ws: Any, message: dict[str, Any]) -> None:
        if message.get("type") in SYNTHETIC_TYPES:
            message = {**message, "synthetic": True}  # disclosure: the returned media is AI-generated
        async with self._send_lock:
            await ws.send_text(json.dumps(message))

    async def run(self, ws: Any) -> str:
        """Serve the open WebSocket until the session ends; returns why it ended."""
        receiver = asyncio.ensure_future(self._ws_receiver(ws))
        others = [asyncio.ensure_future(self._stats_sender(ws)), asyncio.ensure_future(self._watchdog())]
        try:
            await self.ended.wait()
            await cancel_and_wait(others)  # nothing more is sent from here on
            if not self.ws_disconnected.is_set() and self.end_reason != SHUTDOWN_REASON:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.ws_disconnected.wait(), WS_CLOSE_GRACE_S)
        finally:
            await cancel_and_wait([receiver, *others])
        return self.end_reason or "ended"

    async def _ws_receiver(self, ws: Any) -> None:
        try:
            while True:
                message = await ws.receive()
                if message.get("type") == "websocket.disconnect":
                    self.ws_disconnected.set()
                    self.end(CLIENT_CLOSED)
                    return
                payload = message.get("text")
                if payload is None:
                    payload = message.get("bytes") or b""
                reply = await self.handle_control(payload)
                await self.send(ws, reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken socket ends the session
            self.ws_disconnected.set()
            self.end(f"websocket error ({type(exc).__name__})")

    def stats_message(self, dt: float, frames_in_delta: int, frames_out_delta: int) -> dict[str, Any]:
        pump = self._pump
        return {
            "type": "stats",
            "fps_in": round(frames_in_delta / dt, 2) if dt > 0 else 0.0,
            "fps_out": round(frames_out_delta / dt, 2) if dt > 0 else 0.0,
            "latency_ms": round(self.counters.latency_ema_ms, 1),
            "faces": self.counters.faces_last,
            "dropped": pump.dropped if pump else 0,
            "fallback_frames": self.counters.fallback_frames,
            "state": self.state,
        }

    async def _stats_sender(self, ws: Any) -> None:
        interval = self._settings.stats_interval_s
        last_t = time.monotonic()
        last_in = last_out = 0
        try:
            while True:
                await asyncio.sleep(interval)
                now = time.monotonic()
                frames_in = self._pump.received if self._pump else 0
                frames_out = self.counters.frames_out
                await self.send(ws, self.stats_message(now - last_t, frames_in - last_in, frames_out - last_out))
                last_t, last_in, last_out = now, frames_in, frames_out
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            self.ws_disconnected.set()
            self.end(f"websocket error ({type(exc).__name__})")

    async def _watchdog(self) -> None:
        """Reap a session whose camera went silent (a vanished client) or that never connected."""
        timeout = self._settings.idle_timeout_s
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = time.monotonic()
            if self._pump is not None:
                last = self._pump.last_frame_at if self._pump.received else (self._media_started_at or now)
                if now - last > timeout:
                    self.end(f"no video from the client for {timeout:.0f} s")
                    return

    async def close(self) -> None:
        """Tear everything down; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self.state = "closing"
        self.end(self.end_reason or "closed")
        if self._pump is not None:
            await self._pump.stop()
        if self._video_out is not None:
            self._video_out.stop()
        if self._audio_out is not None:
            self._audio_out.stop()
            self._ctx.voice_totals.add(self._audio_out.pump.stats())
            with contextlib.suppress(Exception):
                await self._audio_out.pump.close(drain_s=0.0)
        await cancel_and_wait(list(self._tasks))
        try:
            await self._pc.close()
        except Exception as exc:  # noqa: BLE001
            logger.warning("session %s: closing the peer connection failed (%s)", self.id, type(exc).__name__)
        key = self.controls.set_identity(None)
        large = len(self._reference) > LARGE_MESSAGE_BYTES
        self._reference = b""
        if key:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ctx.models.call(SWAPPER, "forget_identity", key), 2.0)
        if self.spoofed.total:
            self._ctx.sink.spoofed(self.spoofed.total)
        if large:
            release_freed_memory()
        self.state = "closed"

    def describe(self) -> dict[str, Any]:
        """For ``/webrtc/debug_state``: state and counters, no identity data."""
        pump = self._pump
        return {
            "id": self.id,
            "state": self.state,
            "connection_state": self._pc.connectionState,
            "ice_connection_state": self._pc.iceConnectionState,
            "age_s": round(time.time() - self.created, 1),
            "swapper": self.controls.swapper,
            "max_faces": self.controls.max_faces,
            "fallback": self.controls.fallback,
            "mouth_mask": self.controls.options.mouth_mask,
            "enhancer": self.controls.enhancer,
            "has_audio": self._audio_in is not None,
            "voice": self.voice.to_dict(),
            "voice_stats": self.voice_stats(),
            "frames_in": pump.received if pump else 0,
            "frames_out": self.counters.frames_out,
            "dropped": pump.dropped if pump else 0,
            "fallback_frames": self.counters.fallback_frames,
            "latency_ms": round(self.counters.latency_ema_ms, 1),
            "faces": self.counters.faces_last,
            "control_errors": self.counters.control_errors,
            "spoofed_datagrams": self.spoofed.as_dict(),
            "tasks": len(self._tasks),
        }


class SessionRegistry:
    """This replica's sessions and its cap (slots are reserved before any heavy work)."""

    def __init__(self, capacity: int, max_pending: int = 8) -> None:
        self.capacity = capacity
        #: Sockets still before a valid, authenticated offer: their own small budget, no session slot.
        self.max_pending = max_pending
        self.pending = 0
        self.total_pending_refused = 0
        self._reserved: set[str] = set()
        self._sessions: dict[str, Session] = {}
        self.accepting = True
        self.total_started = 0
        self.total_refused = 0

    def reserve(self) -> str | None:
        """A new session id, or None when the replica is full (or shutting down)."""
        if not self.accepting or len(self._reserved) >= self.capacity:
            self.total_refused += 1
            return None
        session_id = secrets.token_urlsafe(9)
        self._reserved.add(session_id)
        self.total_started += 1
        return session_id

    def enter_pending(self) -> bool:
        """Admit one not-yet-authenticated socket, or False when their budget is spent."""
        if self.pending >= self.max_pending:
            self.total_pending_refused += 1
            return False
        self.pending += 1
        return True

    def leave_pending(self) -> None:
        self.pending = max(0, self.pending - 1)

    def attach(self, session: Session) -> None:
        self._sessions[session.id] = session

    def release(self, session_id: str) -> None:
        self._reserved.discard(session_id)
        self._sessions.pop(session_id, None)

    @property
    def count(self) -> int:
        return len(self._reserved)

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def describe(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self.sessions()]

    def end_all(self, reason: str) -> None:
        """Ask every session to end (their requests then close their sockets and peer connections)."""
        self.accepting = False
        for session in self.sessions():
            session.end(reason)


async def _send_error(ws: Any, code: str, message: str, close_code: int, retry_after_s: float | None = None) -> None:
    with contextlib.suppress(Exception):
        await ws.send_text(json.dumps(error_message(code, message, retry_after_s=retry_after_s)))
    reason = message if retry_after_s is None else f"{message} retry_after_s={retry_after_s:g}"
    with contextlib.suppress(Exception):
        await ws.close(code=close_code, reason=_close_reason(reason))


def _close_reason(text: str) -> str:
    """A WebSocket close reason must fit in 123 bytes of UTF-8."""
    return text.encode("utf-8")[:123].decode("utf-8", "ignore")


def _close_code_for(code: str) -> int:
    if code == "unauthorized":
        return CLOSE_UNAUTHORIZED
    return CLOSE_TRY_AGAIN_LATER if code == "busy" else CLOSE_BAD_REQUEST


async def _read_offer(ws: Any, ctx: SessionContext, header_key: str | None) -> tuple[OfferMessage, bytes] | None:
    """The first message, checked before any resource is reserved: key, bounded offer, fingerprint, photo.

    None when the client went away first; a ControlError for everything refused.
    """
    settings = ctx.settings
    timeout = settings.session.unauth_timeout_s
    try:
        first = await asyncio.wait_for(ws.receive(), timeout)
    except TimeoutError:
        raise ControlError("bad_request", f"No offer arrived within {timeout:g} s.") from None
    if first.get("type") == "websocket.disconnect":
        return None
    raw = first.get("text") if first.get("text") is not None else (first.get("bytes") or b"")
    del first
    try:
        return _check_offer(raw, ctx, header_key)
    finally:
        if len(raw) > LARGE_MESSAGE_BYTES:
            del raw
            release_freed_memory()


def _check_offer(raw: str | bytes, ctx: SessionContext, header_key: str | None) -> tuple[OfferMessage, bytes]:
    settings = ctx.settings
    text, binary_photo = split_binary(raw)
    offer = parse_offer(text)
    refusal = rejection_message(settings.auth, header_key or offer.api_key)
    if refusal is not None:
        ctx.sink.refused("unauthorized")
        raise ControlError("unauthorized", refusal)
    if not settings.session.allow_noncommercial and not is_commercial(offer.options.swapper):
        raise ControlError("not_allowed", noncommercial_message(offer.options.swapper))
    if not has_receivable_video(offer.sdp):
        raise ControlError("bad_offer", "The offer has no camera video; send a sendrecv video track.")
    problem = fingerprint_problem(offer.sdp)
    if problem is not None:
        raise ControlError("bad_offer", problem)
    photo = reference_photo(offer.reference_b64, binary_photo, settings.session.max_reference_bytes)
    max_faces = offer.options.max_faces or settings.session.max_faces
    if max_faces > settings.session.max_faces_limit:
        raise ControlError("bad_request", f"max_faces is limited to {settings.session.max_faces_limit}.")
    return offer, photo


async def serve_session(
    ws: Any,
    ctx: SessionContext,
    registry: SessionRegistry,
    header_key: str | None,
    on_change: Callable[[], None] | None = None,
) -> None:
    """The whole life of one ``/ws/session`` request (protocol: see the served-app contract).

    Nothing is reserved before the client is authenticated and its offer read: until then
    the socket counts against a small separate budget (``max_pending_sockets``) and a short
    deadline (``unauth_timeout_s``), so idle or unauthenticated sockets never hold a slot.
    """
    await ws.accept()
    settings = ctx.settings
    retry = settings.session.retry_after_s
    if not registry.accepting:
        ctx.sink.refused("server_full")
        # Another replica takes the session: the hint is short (SHUTDOWN_RETRY_AFTER_S).
        await _send_error(ws, "server_full", "The server is shutting down; please try again later.",
                          CLOSE_TRY_AGAIN_LATER, min(retry, SHUTDOWN_RETRY_AFTER_S))
        return
    if header_key is not None and not key_matches(settings.auth, header_key):
        ctx.sink.refused("unauthorized")
        await _send_error(ws, "unauthorized", rejection_message(settings.auth, header_key) or "", CLOSE_UNAUTHORIZED)
        return
    # A socket that proved the key in its handshake headers skips the unauthenticated budget.
    pending = not (header_key is not None and settings.auth.require_api_key)
    if pending and not registry.enter_pending():
        ctx.sink.refused("pending_full")
        await _send_error(ws, "server_full", "Too many connections are waiting to start a session; please try again.",
                          CLOSE_TRY_AGAIN_LATER, retry)
        return
    try:
        try:
            read = await _read_offer(ws, ctx, header_key)
        finally:
            if pending:
                registry.leave_pending()
    except ControlError as exc:
        await _send_error(ws, exc.code, exc.message, _close_code_for(exc.code))
        return
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - never an unhandled exception out of a session
        logger.exception("session offer could not be read (%s)", type(exc).__name__)
        await _send_error(ws, "internal", "The server could not read this offer.", 1011)
        return
    if read is None:
        return
    offer, photo = read
    session_id = registry.reserve()
    if session_id is None:
        ctx.sink.refused("server_full")
        why = "is shutting down" if not registry.accepting else f"is at capacity ({registry.capacity} sessions)"
        hint = retry if registry.accepting else min(retry, SHUTDOWN_RETRY_AFTER_S)
        await _send_error(ws, "server_full", f"The server {why}; please try again later.", CLOSE_TRY_AGAIN_LATER, hint)
        return
    if on_change:
        on_change()
    session: Session | None = None
    try:
        controls = SessionControls(
            swapper=offer.options.swapper,
            max_faces=offer.options.max_faces or settings.session.max_faces,
            options=SwapOptions(mouth_mask=offer.options.mouth_mask),
            fallback=offer.options.fallback or settings.session.fallback,
            fidelity=settings.session.codeformer_fidelity,
        )
        session = Session(session_id, ctx, controls, photo)
        registry.attach(session)
        identity, note = await session.identity_for(photo, controls.swapper, None)
        controls.set_identity(identity)
        try:
            o = offer.options
            await ctx.enhance.apply(ctx.models, controls, o.enhancer, o.fidelity, o.blend)
        except ControlError as exc:  # an enhancer that is not here: the session starts without it
            note = f"{note} {exc.message}" if note else exc.message
        answer_sdp = await session.negotiate(offer.sdp)
        await session.send(ws, answer_message(answer_sdp, session_id, note))
        session.start_media()
        logger.info("session %s started (%s swapper, fallback %s)", session_id, controls.swapper, controls.fallback)
        reason = await session.run(ws)
        logger.info("session %s ended: %s", session_id, reason)
        code = CLOSE_GOING_AWAY if reason == SHUTDOWN_REASON else CLOSE_NORMAL
        if code == CLOSE_GOING_AWAY:
            with contextlib.suppress(Exception):
                await session.send(ws, event_message("server_shutdown", "The server is restarting; reconnect to continue."))
        if not session.ws_disconnected.is_set():
            with contextlib.suppress(Exception):
                await ws.close(code=code, reason=_close_reason(reason))
    except ControlError as exc:
        retry_after = retry if exc.code == "busy" else None
        await _send_error(ws, exc.code, exc.message, _close_code_for(exc.code), retry_after)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - never an unhandled exception out of a session
        logger.exception("session %s failed (%s)", session_id, type(exc).__name__)
        await _send_error(ws, "internal", "The server could not start this session.", 1011)
    finally:
        if session is not None:
            await session.close()
        registry.release(session_id)
        if on_change:
            on_change()
