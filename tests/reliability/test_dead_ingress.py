"""The client notices a dead ingress within seconds and ends its peer connection.

A minimal stand-in for the ingress (``GET /config`` and ``/ws/session`` over
``websockets``, a real aiortc peer that answers and sends video) lets the test
kill the server side in ways a crashed replica does: the WebSocket goes silent
while the peer connection stays up (the process is frozen or the proxy lost
it), or the connection drops. Before, the client's peer connection stayed
"connected" on a frozen picture for about 30 s; now it ends within the
client's silence timeout (5 s) or at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import VideoStreamTrack

from mirage.client.session import ClientConfig, MirageSession
from mirage.client.sources import astronaut_source
from mirage.webrtc.guard import IcePolicy, guard_peer_connection
from tests.integration.peer import reference_bytes

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(120)]

LOOPBACK = IcePolicy(host_addresses=("127.0.0.1",))
CONFIG = {"ice_servers": [], "force_relay": False, "prefer_h264": False, "max_reference_bytes": 10 * 1024 * 1024}


async def _fake_ingress(mode: str, stop: asyncio.Event) -> tuple[Any, int, list[RTCPeerConnection]]:
    """A stand-in ingress; ``mode``: "silent" (stats stop, socket stays open) or "drop" (TCP closed)."""
    from websockets.asyncio.server import serve
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    peers: list[RTCPeerConnection] = []

    def process_request(connection: Any, request: Any) -> Response | None:
        if request.path.startswith("/config"):
            body = json.dumps(CONFIG).encode()
            return Response(200, "OK", Headers({"Content-Type": "application/json", "Content-Length": str(len(body))}), body)
        return None

    async def handler(ws: Any) -> None:
        offer = json.loads(await ws.recv())
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        peers.append(pc)

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video":
                pc.addTrack(VideoStreamTrack())

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        guard_peer_connection(pc, LOOPBACK)
        await pc.setLocalDescription(await pc.createAnswer())
        await ws.send(json.dumps({"type": "answer", "sdp": pc.localDescription.sdp, "sdp_type": "answer",
                                  "session_id": "fake", "note": None}))
        for _ in range(3):
            await ws.send(json.dumps({"type": "stats", "fps_out": 0}))
            await asyncio.sleep(1.0)
        if mode == "drop":
            ws.transport.abort()
            return
        await asyncio.wait_for(stop.wait(), 60)  # silent: no stats, no close, the media keeps flowing

    server = await serve(handler, "127.0.0.1", 0, process_request=process_request)
    port = server.sockets[0].getsockname()[1]
    return server, port, peers


@pytest.mark.parametrize("mode", ["silent", "drop"])
def test_the_client_ends_its_peer_connection_when_the_ingress_dies(mode: str) -> None:
    async def run() -> dict[str, Any]:
        stop = asyncio.Event()
        server, port, peers = await _fake_ingress(mode, stop)
        config = ClientConfig(url=f"http://127.0.0.1:{port}", reference=reference_bytes(),
                              source=astronaut_source(320, 240, 10.0), fps=10.0, ice=LOOPBACK, silence_timeout_s=5.0)
        session = MirageSession(config)
        try:
            await session.connect()
            connected = session.connection_state
            start = time.monotonic()
            await asyncio.wait_for(session.ended.wait(), 20)
            ended_after = time.monotonic() - start
            for _ in range(100):
                if session.connection_state == "closed":
                    break
                await asyncio.sleep(0.05)
            return {"connected": connected, "ended_after": ended_after, "pc": session.connection_state,
                    "reason": session.close_reason}
        finally:
            stop.set()
            await session.close()
            for pc in peers:
                await pc.close()
            server.close()
            await server.wait_closed()

    out = asyncio.run(run())
    assert out["connected"] == "connected", out
    assert out["pc"] == "closed", out
    # Stats stop ~3 s after connecting; silence is noticed 5 s later, a dropped socket at once.
    limit = 3.0 + 5.0 + 2.0 if mode == "silent" else 3.0 + 2.0
    assert out["ended_after"] < limit, out
    if mode == "silent":
        assert "no word from the server" in (out["reason"] or ""), out
