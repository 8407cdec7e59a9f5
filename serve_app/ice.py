"""ICE configuration from settings, and the little SDP handling the server needs.

aiortc falls back to Google's public STUN server when ``iceServers`` is None;
we always pass an explicit list (empty by default) so that a server on a
network without internet access never waits on it: host candidates suffice
on a LAN or loopback. Containers must publish the UDP ports aioice picks
(random ephemeral ports) or use a TURN relay (``MIRAGE_TURN_URL``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from mirage.webrtc.guard import IcePolicy
from serve_app.settings import IceSettings

logger = logging.getLogger(__name__)

_URL_RE = re.compile(r"^(stun|stuns|turn|turns):[^\s?]+(\?transport=(udp|tcp))?$", re.IGNORECASE)


def valid_ice_url(url: str) -> bool:
    return bool(_URL_RE.match(url.strip()))


def _turn_urls(ice: IceSettings) -> list[str]:
    urls = [u for u in ice.turn_urls if valid_ice_url(u)]
    for bad in set(ice.turn_urls) - set(urls):
        logger.warning("ignoring malformed TURN URL %r (expected turn:host:port[?transport=udp|tcp])", bad)
    if ice.turn_tls_only:
        urls = [u for u in urls if u.lower().startswith("turns:") or u.lower().endswith("transport=tcp")]
    return urls


def ice_server_dicts(ice: IceSettings) -> list[dict[str, Any]]:
    """The ``iceServers`` list in the browser's RTCConfiguration format (for ``/config``)."""
    servers: list[dict[str, Any]] = []
    stun = [u for u in ice.stun_urls if valid_ice_url(u)]
    for bad in set(ice.stun_urls) - set(stun):
        logger.warning("ignoring malformed STUN URL %r (expected stun:host:port)", bad)
    if stun:
        servers.append({"urls": stun})
    turn = _turn_urls(ice)
    if turn and ice.turn_secret:
        # coturn REST credentials (serve_app.turn): the server's own, minted per call.
        from serve_app.turn import SERVER_ID, credential_for

        pair = credential_for(ice, SERVER_ID)
        servers.append({"urls": turn, "username": pair[0], "credential": pair[1]} if pair else {"urls": turn})
    elif turn:
        entry: dict[str, Any] = {"urls": turn}
        if ice.turn_user:
            entry["username"] = ice.turn_user
        if ice.turn_pass:
            entry["credential"] = ice.turn_pass
        servers.append(entry)
    return servers


def rtc_configuration(ice: IceSettings) -> RTCConfiguration:
    """The server side's configuration: explicit servers (maybe none), relay-only if forced."""
    servers = [
        RTCIceServer(urls=entry["urls"], username=entry.get("username"), credential=entry.get("credential"))
        for entry in ice_server_dicts(ice)
    ]
    if ice.force_relay and not _turn_urls(ice):
        logger.warning("MIRAGE_FORCE_RELAY=1 without a TURN server: no candidate can be used, sessions will fail")
    policy = RTCIceTransportPolicy.RELAY if ice.force_relay else RTCIceTransportPolicy.ALL
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)


def ice_policy(ice: IceSettings) -> IcePolicy:
    """Host-candidate allow-list and NAT 1:1 address for the server's peer connections (always filtered)."""
    return IcePolicy(host_addresses=ice.host_addresses, announced_address=ice.announced_address)


# --- SDP ---------------------------------------------------------------------------

#: Fingerprint algorithms aiortc can check, and their digest sizes in bytes.
FINGERPRINT_BYTES = {"sha-256": 32, "sha-384": 48, "sha-512": 64}
_FINGERPRINT_RE = re.compile(r"^a=fingerprint:(\S+) ([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*)\s*$")


def _usable_fingerprint(lines: list[str]) -> bool:
    for line in lines:
        m = _FINGERPRINT_RE.match(line.strip())
        if m and FINGERPRINT_BYTES.get(m.group(1).lower()) == len(m.group(2).split(":")):
            return True
    return False


def fingerprint_problem(sdp: str) -> str | None:
    """None when every active media section has a DTLS fingerprint aiortc can verify; else why not.

    Checked before answering: aiortc would answer an offer without one and then fail in
    its connect task (an AssertionError no one awaits).
    """
    sections = _sections(sdp)
    session_level = _usable_fingerprint(sections[0])
    for sec in sections[1:]:
        head = sec[0].split()
        if len(head) > 1 and head[1] == "0":
            continue  # a rejected section carries no media
        if not (session_level or _usable_fingerprint(sec[1:])):
            return "The offer has no usable DTLS fingerprint (a=fingerprint:sha-256 followed by 32 hex byte pairs)."
    return None




def _sections(sdp: str) -> list[list[str]]:
    """Session part followed by one list of lines per ``m=`` section."""
    lines = sdp.replace("\r\n", "\n").split("\n")
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return sections


def media_kinds(sdp: str) -> list[str]:
    """The kinds of the ``m=`` sections (``audio``, ``video``, ``application``), in order."""
    return [sec[0][2:].split(" ", 1)[0] for sec in _sections(sdp)[1:] if sec and sec[0].startswith("m=")]


def has_receivable_video(sdp: str) -> bool:
    """True when the offer has a video section the client sends on (not inactive/recvonly, port not 0)."""
    for sec in _sections(sdp)[1:]:
        head = sec[0].split()
        if not head or head[0] != "m=video":
            continue
        if len(head) > 1 and head[1] == "0":
            continue
        attrs = {line.strip() for line in sec[1:]}
        if "a=inactive" in attrs or "a=recvonly" in attrs:
            continue
        return True
    return False


def prefer_codec(sdp: str, kind: str, codec: str) -> str:
    """Reorder the payload types of every ``kind`` section so ``codec`` (e.g. H264) comes first.

    Used on the client's offer before the server answers: aiortc keeps the
    offer's order when it picks the common codecs, and both sides encode with
    the first one. RTX payload types that repair the preferred codec move with
    it. Sections without the codec are left as they are.
    """
    sections = _sections(sdp)
    codec_lower = codec.lower()
    for sec in sections[1:]:
        head = sec[0].split(" ")
        if len(head) < 4 or head[0] != f"m={kind}":
            continue
        pts = head[3:]
        names: dict[str, str] = {}
        apt: dict[str, str] = {}
        for line in sec[1:]:
            m = re.match(r"a=rtpmap:(\d+) ([^/\s]+)", line)
            if m:
                names[m.group(1)] = m.group(2).lower()
            m = re.match(r"a=fmtp:(\d+) .*\bapt=(\d+)", line)
            if m:
                apt[m.group(1)] = m.group(2)
        preferred = [pt for pt in pts if names.get(pt) == codec_lower]
        if not preferred:
            continue
        repair = [pt for pt in pts if apt.get(pt) in preferred]
        rest = [pt for pt in pts if pt not in preferred and pt not in repair]
        order = preferred + repair + rest
        sec[0] = " ".join(head[:3] + order)
        # aiortc reads codec preference from the order of the a=rtpmap lines (browsers use
        # the m= line), so the rtpmap lines are permuted in place to the same order.
        slots = [i for i, line in enumerate(sec) if line.startswith("a=rtpmap:")]
        rank = {pt: n for n, pt in enumerate(order)}

        def pt_of(line: str) -> str:
            return line[len("a=rtpmap:") :].split(" ", 1)[0]

        lines = sorted((sec[i] for i in slots), key=lambda line: rank.get(pt_of(line), len(rank)))
        for i, line in zip(slots, lines, strict=True):
            sec[i] = line
    joined = "\r\n".join("\r\n".join(sec) for sec in sections if sec)
    return joined
