"""A bare aiortc echo of the bench's stream: what any WebRTC server pays per frame.

The echo server runs in a child process (its own event loop, its CPU read from
``/proc/<pid>/stat``): each peer connection receives the client's VP8 video,
aiortc decodes it, and every decoded frame goes straight back on the same
transceiver, so aiortc encodes it again (VP8, its own encoder settings) and
sends it (RTP over DTLS-SRTP). No conversion to BGR, no model, no Serve: decode,
encode and transport only. The client side (this process) replays the
pre-encoded stamped clip (:mod:`mirage.client.encoded`), as ``bench_served``'s
sessions do, and counts what comes back. ICE is pinned to 127.0.0.1 on both
sides (:mod:`mirage.webrtc.guard`); signalling is a ``multiprocessing`` pipe.

:func:`run_echo` is what ``bench_served.py`` calls; it returns the echo
server's CPU ms per echoed frame over the measured window.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from mirage.client.encoded import EncodedClip

CLK_TCK = os.sysconf("SC_CLK_TCK")
LOOPBACK = "127.0.0.1"


def process_cpu_s(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --- the echo server (child process) -------------------------------------------------------------


def _serve(conn: Connection, echoed: Any) -> None:
    """Child process entry: answer offers on ``conn`` until told to stop; count echoed frames."""
    asyncio.run(_serve_async(conn, echoed))


async def _serve_async(conn: Connection, echoed: Any) -> None:
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamTrack

    from mirage.webrtc.guard import IcePolicy, guard_peer_connection
    from mirage.webrtc.jitter import use_marker_frames

    class EchoTrack(MediaStreamTrack):
        """Returns every decoded frame of ``source`` as it is: aiortc re-encodes and sends it."""

        kind = "video"

        def __init__(self, source: MediaStreamTrack) -> None:
            super().__init__()
            self.source = source

        async def recv(self) -> Any:
            frame = await self.source.recv()
            with echoed.get_lock():
                echoed.value += 1
            return frame

    policy = IcePolicy(host_addresses=(LOOPBACK,))
    peers: list[Any] = []
    conn.send(("ready", os.getpid()))
    while True:
        message = await asyncio.to_thread(conn.recv)
        if message[0] == "stop":
            break
        _, index, sdp = message
        pc = RTCPeerConnection()
        peers.append(pc)
        tracks: list[MediaStreamTrack] = []
        pc.on("track", tracks.append)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        guard_peer_connection(pc, policy)
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                use_marker_frames(transceiver.receiver)
        video = next(t for t in tracks if t.kind == "video")
        pc.addTrack(EchoTrack(video))
        await pc.setLocalDescription(await pc.createAnswer())
        conn.send(("answer", index, pc.localDescription.sdp))
    for pc in peers:
        with contextlib.suppress(Exception):
            await pc.close()
    conn.send(("stopped",))


# --- the client side (this process) --------------------------------------------------------------


@dataclass
class _Received:
    frames: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    first_at: float | None = None
    last_at: float | None = None

    def fps(self) -> float:
        if self.first_at is None or self.last_at is None or self.frames < 2 or self.last_at <= self.first_at:
            return 0.0
        return (self.frames - 1) / (self.last_at - self.first_at)


async def _drain(track: Any, received: _Received, ledger: Any, sender_width: int) -> None:
    from aiortc.mediastreams import MediaStreamError

    from mirage.client.stamp import read_stamp

    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        now = time.monotonic()
        received.frames += 1
        received.first_at = received.first_at if received.first_at is not None else now
        received.last_at = now
        plane = frame.planes[0]
        luma = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)[:, : frame.width]
        number = read_stamp(luma, sender_width)
        sent = ledger.sent_at(number) if number is not None else None
        if sent is not None:
            received.latencies_ms.append((now - sent) * 1000.0)


async def _run_clients(
    conn: Connection, clip: EncodedClip, sessions: int, seconds: float, warmup: float, pid: int, echoed: Any
) -> dict[str, Any]:
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.rtcrtpsender import RTCRtpSender

    from mirage.client.tracks import PreEncodedVideoTrack
    from mirage.webrtc.guard import IcePolicy, guard_peer_connection
    from mirage.webrtc.jitter import use_marker_frames

    policy = IcePolicy(host_addresses=(LOOPBACK,))
    peers: list[Any] = []
    received = [_Received() for _ in range(sessions)]
    tasks: list[asyncio.Task[None]] = []
    try:
        for index in range(sessions):
            pc = RTCPeerConnection()
            peers.append(pc)
            track = PreEncodedVideoTrack(clip)
            transceiver = pc.addTransceiver(track, direction="sendrecv")
            use_marker_frames(transceiver.receiver)
            codecs = RTCRtpSender.getCapabilities("video").codecs
            transceiver.setCodecPreferences([c for c in codecs if c.mimeType.lower() in ("video/vp8", "video/rtx")])

            def on_track(remote: Any, slot: int = index, ledger: Any = track.ledger) -> None:
                tasks.append(asyncio.ensure_future(_drain(remote, received[slot], ledger, clip.size[0])))

            pc.on("track", on_track)
            guard_peer_connection(pc, policy)
            await pc.setLocalDescription(await pc.createOffer())
            conn.send(("offer", index, pc.localDescription.sdp))
            reply = await asyncio.wait_for(asyncio.to_thread(conn.recv), 30.0)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=reply[2], type="answer"))
        await asyncio.sleep(warmup)
        for r in received:
            r.frames, r.first_at, r.last_at, r.latencies_ms = 0, None, None, []
        cpu0, echoed0, t0 = process_cpu_s(pid), echoed.value, time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, echoed1, t1 = process_cpu_s(pid), echoed.value, time.monotonic()
        frames_back = sum(r.frames for r in received)
    finally:
        for pc in peers:
            with contextlib.suppress(Exception):
                await pc.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    frames = echoed1 - echoed0
    cpu = cpu1 - cpu0
    return {
        "sessions": sessions,
        "window_s": round(t1 - t0, 2),
        "echoed_frames": frames,
        "frames_back_at_client": frames_back,
        "echo_cpu_s": round(cpu, 3),
        "echo_cpu_cores": round(cpu / (t1 - t0), 3),
        "cpu_ms_per_frame": round(cpu * 1000.0 / frames, 3) if frames else None,
        "per_session": [
            {
                "fps": round(r.fps(), 2),
                "g2g_p50_ms": round(float(np.percentile(r.latencies_ms, 50)), 1) if r.latencies_ms else None,
                "g2g_p95_ms": round(float(np.percentile(r.latencies_ms, 95)), 1) if r.latencies_ms else None,
                "frames": r.frames,
            }
            for r in received
        ],
    }


def run_echo(clip: EncodedClip, sessions: int, seconds: float, warmup: float = 3.0) -> dict[str, Any]:
    """Echo ``sessions`` concurrent replays of ``clip`` through a child-process aiortc server for ``seconds``."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    echoed = context.Value("q", 0)
    process = context.Process(target=_serve, args=(child, echoed), name="mirage-echo-peer", daemon=True)
    process.start()
    try:
        if not parent.poll(60.0):
            raise RuntimeError("the echo server did not start in 60 s")
        ready = parent.recv()
        pid = int(ready[1])
        result = asyncio.run(_run_clients(parent, clip, sessions, seconds, warmup, pid, echoed))
        parent.send(("stop",))
        if parent.poll(15.0):
            parent.recv()
        return result
    finally:
        process.join(10.0)
        if process.is_alive():
            process.terminate()
            process.join(5.0)
