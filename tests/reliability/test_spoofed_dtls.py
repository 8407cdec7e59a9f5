"""A spoofed DTLS ClientHello (and RTP) from another local socket must not end a session.

The attack from the issue, on two real aiortc peers over loopback: the answer's
host-candidate ports are blasted with a DTLS ClientHello and RTP from a third
UDP socket while ICE and DTLS come up, and again once media flows. Without
the guard (``filter_media=False``) the handshake fails; with it, the session
connects, stays connected and the spoofed datagrams are counted as dropped.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import VideoStreamTrack

from mirage.webrtc.guard import DropCounters, IcePolicy, guard_peer_connection
from tests.reliability.spoof import Spoofer, host_candidates

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]

LOOPBACK = IcePolicy(host_addresses=("127.0.0.1",))


async def _wait_state(pc: RTCPeerConnection, states: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while pc.connectionState not in states and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return pc.connectionState


async def _session(server_policy: IcePolicy, *, mid_session: bool) -> tuple[str, str, DropCounters, int]:
    """(server state after setup, after the mid-session burst, the server's drop counters, datagrams sent)."""
    cfg = RTCConfiguration(iceServers=[])
    client, server = RTCPeerConnection(cfg), RTCPeerConnection(cfg)
    spoofer = Spoofer()
    try:
        client.addTransceiver(VideoStreamTrack(), direction="sendrecv")
        client.createDataChannel("control")
        guard_peer_connection(client, LOOPBACK)

        @server.on("track")
        def on_track(track: object) -> None:
            server.addTrack(VideoStreamTrack())

        await client.setLocalDescription(await client.createOffer())
        await server.setRemoteDescription(client.localDescription)
        counters = guard_peer_connection(server, server_policy)
        await server.setLocalDescription(await server.createAnswer())
        targets = host_candidates(server.localDescription.sdp)
        assert targets and all(host == "127.0.0.1" for host, _ in targets), targets
        burst = asyncio.ensure_future(spoofer.burst(targets, rounds=25))
        await client.setRemoteDescription(server.localDescription)
        setup_state = await _wait_state(server, {"connected", "failed", "closed"}, 15.0)
        await burst
        # A failure shows up shortly after the spoofed packet: give it time to.
        await asyncio.sleep(0.5)
        setup_state = server.connectionState if setup_state == "connected" else setup_state
        later_state = setup_state
        if mid_session and setup_state == "connected":
            await spoofer.burst(targets, rounds=25)
            await asyncio.sleep(0.5)
            later_state = server.connectionState
        return setup_state, later_state, counters, spoofer.sent
    finally:
        spoofer.close()
        await client.close()
        await server.close()


def test_unguarded_peer_is_killed_by_a_spoofed_client_hello() -> None:
    """The attack as reported: without the filter, a spoofed ClientHello ends the session being set up."""
    states = [asyncio.run(_session(IcePolicy(host_addresses=("127.0.0.1",), filter_media=False), mid_session=False))[0]
              for _ in range(2)]
    assert "failed" in states, f"the spoofed ClientHello no longer breaks an unguarded aiortc peer: {states}"


def test_guarded_peer_connects_and_stays_up_under_spoofing() -> None:
    for _ in range(3):
        setup, later, counters, sent = asyncio.run(_session(LOOPBACK, mid_session=True))
        assert setup == "connected", f"session did not connect under spoofing ({setup}); dropped {counters}"
        assert later == "connected", f"session ended by a mid-session spoofed burst ({later})"
        assert sent > 0
        assert counters.dtls > 0 and counters.rtp > 0, counters
