"""ICE configuration from settings and the server's SDP handling, with real aiortc offers."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.rtcrtpsender import RTCRtpSender

from serve_app.ice import has_receivable_video, ice_server_dicts, media_kinds, prefer_codec, rtc_configuration
from serve_app.settings import IceSettings, Settings


def test_default_has_no_ice_servers_at_all() -> None:
    config = rtc_configuration(IceSettings())
    # An explicit empty list: None would make aiortc fall back to Google's public STUN server.
    assert config.iceServers == []
    assert config.iceTransportPolicy == RTCIceTransportPolicy.ALL
    assert ice_server_dicts(IceSettings()) == []


def test_stun_and_turn_servers() -> None:
    ice = IceSettings(
        stun_urls=("stun:stun.example.org:3478", "not a url"),
        turn_urls=("turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349?transport=tcp"),
        turn_user="alice",
        turn_pass="pw",
    )
    dicts = ice_server_dicts(ice)
    assert dicts[0] == {"urls": ["stun:stun.example.org:3478"]}
    assert dicts[1]["urls"] == ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349?transport=tcp"]
    assert dicts[1]["username"] == "alice" and dicts[1]["credential"] == "pw"
    config = rtc_configuration(ice)
    assert [s.urls for s in config.iceServers] == [d["urls"] for d in dicts]
    assert config.iceServers[1].username == "alice"


def test_turn_tls_only_and_force_relay() -> None:
    ice = IceSettings(
        turn_urls=("turn:t.example:3478", "turns:t.example:5349?transport=tcp", "turn:t.example:3478?transport=tcp"),
        turn_tls_only=True,
        force_relay=True,
    )
    assert ice_server_dicts(ice)[0]["urls"] == ["turns:t.example:5349?transport=tcp", "turn:t.example:3478?transport=tcp"]
    assert rtc_configuration(ice).iceTransportPolicy == RTCIceTransportPolicy.RELAY


async def _offer(video: str | None = "sendrecv", audio: bool = True) -> str:
    pc = RTCPeerConnection(rtc_configuration(IceSettings()))
    try:
        if video:
            pc.addTransceiver("video", direction=video)
        if audio:
            pc.addTransceiver("audio", direction="sendrecv")
        pc.createDataChannel("control")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


def test_media_kinds_and_video_detection() -> None:
    sendrecv = asyncio.run(_offer("sendrecv"))
    assert media_kinds(sendrecv) == ["video", "audio", "application"]
    assert has_receivable_video(sendrecv)
    assert has_receivable_video(asyncio.run(_offer("sendonly", audio=False)))
    assert not has_receivable_video(asyncio.run(_offer("recvonly")))
    assert not has_receivable_video(asyncio.run(_offer(None)))
    assert not has_receivable_video("v=0\r\nthis is not sdp\r\n")


def _first_video_codec(sdp: str) -> str:
    lines = sdp.replace("\r\n", "\n").split("\n")
    m_line = next(line for line in lines if line.startswith("m=video"))
    first_pt = m_line.split(" ")[3]
    rtpmap = next(line for line in lines if line.startswith(f"a=rtpmap:{first_pt} "))
    return rtpmap.split(" ", 1)[1].split("/")[0]


async def _answer_codec(offer_sdp: str) -> str:
    server = RTCPeerConnection(rtc_configuration(IceSettings()))
    try:
        await server.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await server.setLocalDescription(await server.createAnswer())
        return _first_video_codec(server.localDescription.sdp)
    finally:
        await server.close()


def test_prefer_h264_reorders_the_offer_and_the_answer_follows() -> None:
    offer = asyncio.run(_offer())
    assert _first_video_codec(offer) == "VP8"  # aiortc's default order
    munged = prefer_codec(offer, "video", "H264")
    assert _first_video_codec(munged) == "H264"
    # Only the video section's m= line and rtpmap lines moved; nothing was added or lost.
    assert media_kinds(munged) == media_kinds(offer)
    def others(sdp: str) -> list[str]:
        return sorted(line for line in sdp.split("\r\n") if not line.startswith("m=video"))

    assert others(munged) == others(offer)
    changed = [(a, b) for a, b in zip(offer.split("\r\n"), munged.split("\r\n"), strict=True) if a != b]
    assert changed and all(a.startswith(("m=video", "a=rtpmap:")) for a, _ in changed)
    audio_at = offer.index("m=audio")
    assert munged[audio_at:] == offer[audio_at:]
    assert asyncio.run(_answer_codec(munged)) == "H264"
    assert asyncio.run(_answer_codec(offer)) == "VP8"


def test_prefer_codec_is_a_no_op_without_the_codec() -> None:
    offer = asyncio.run(_offer())
    assert prefer_codec(offer, "video", "AV1X") == offer
    assert prefer_codec(offer, "audio", "H264") == offer
    assert "H264" in [c.mimeType.split("/")[1] for c in RTCRtpSender.getCapabilities("video").codecs]


# --- DTLS fingerprint, host-address allow-list, NAT 1:1 (issue 10) ---------------------------


def _offer_sdp() -> str:
    import asyncio

    from aiortc.mediastreams import VideoStreamTrack

    async def make() -> str:
        pc = RTCPeerConnection(rtc_configuration(IceSettings()))
        pc.addTransceiver(VideoStreamTrack(), direction="sendrecv")
        pc.createDataChannel("control")
        offer = await pc.createOffer()
        await pc.close()
        return offer.sdp

    return asyncio.run(make())


def test_offers_without_a_usable_fingerprint_are_refused() -> None:
    import re as _re

    from serve_app.ice import fingerprint_problem

    sdp = _offer_sdp()
    assert fingerprint_problem(sdp) is None
    assert fingerprint_problem(_re.sub(r"a=fingerprint:[^\r\n]*\r?\n", "", sdp)) is not None
    assert fingerprint_problem(_re.sub(r"a=fingerprint:sha-\d+ ", "a=fingerprint:md5 ", sdp)) is not None
    assert fingerprint_problem(_re.sub(r"(a=fingerprint:sha-\d+ )\S+", r"\1AB:CD", sdp)) is not None
    assert fingerprint_problem(_re.sub(r"(a=fingerprint:sha-\d+ )\S+", r"\1" + ":".join(["ZZ"] * 32), sdp)) is not None


def test_loopback_allow_list_and_announced_address() -> None:
    import asyncio

    from aiortc import RTCConfiguration
    from aiortc.mediastreams import VideoStreamTrack

    from mirage.webrtc.guard import IcePolicy, IcePolicyError, guard_peer_connection

    async def candidates(policy: IcePolicy) -> list[tuple[str, str]]:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver(VideoStreamTrack(), direction="sendrecv")
        guard_peer_connection(pc, policy)
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        bound = [p.transport.get_extra_info("sockname")[0]
                 for t in pc.getTransceivers()
                 for p in t.receiver.transport.transport.iceGatherer._connection._protocols]
        await pc.close()
        import re as _re

        return [(m.group(1), b) for m, b in zip(_re.finditer(r"a=candidate:\S+ \d+ udp \d+ (\S+) \d+ typ host", sdp), bound)]

    assert {c for c, _ in asyncio.run(candidates(IcePolicy(host_addresses=("127.0.0.1",))))} == {"127.0.0.1"}
    assert "127.0.0.1" in {c for c, _ in asyncio.run(candidates(IcePolicy(host_addresses=("lo",))))}
    announced = asyncio.run(candidates(IcePolicy(host_addresses=("127.0.0.1",), announced_address="203.0.113.7")))
    assert announced and all(c == "203.0.113.7" and b == "127.0.0.1" for c, b in announced)
    with pytest.raises(IcePolicyError):
        IcePolicy(announced_address="example.com")
    with pytest.raises(IcePolicyError):
        IcePolicy(host_addresses=("127.0.0.1 ",))
    env = {"MIRAGE_ICE_HOST_ADDRESSES": "127.0.0.1, lo", "MIRAGE_ICE_ANNOUNCED_ADDRESS": "198.51.100.1"}
    assert IcePolicy.from_env(env) == IcePolicy(host_addresses=("127.0.0.1", "lo"), announced_address="198.51.100.1")
    settings = Settings.from_env(env).ice
    assert settings.host_addresses == ("127.0.0.1", "lo") and settings.announced_address == "198.51.100.1"
