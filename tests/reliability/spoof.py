"""Spoofed datagrams for the reliability tests: a DTLS ClientHello and an RTP packet from another socket."""

from __future__ import annotations

import asyncio
import re
import socket
import struct

from OpenSSL import SSL

_HOST_CANDIDATE = re.compile(r"a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host")


def dtls_client_hello() -> bytes:
    """A genuine DTLS ClientHello (what a stranger's handshake starts with)."""
    conn = SSL.Connection(SSL.Context(SSL.DTLS_METHOD), None)
    conn.set_connect_state()
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass
    return conn.bio_read(65536)


def rtp_packet(seq: int, ssrc: int = 0x1234_5678, payload_type: int = 96) -> bytes:
    """A plain RTP packet (version 2) with a few bytes of payload."""
    return struct.pack("!BBHII", 0x80, payload_type & 0x7F, seq & 0xFFFF, seq * 3000, ssrc) + b"\x00" * 32


def host_candidates(sdp: str) -> list[tuple[str, int]]:
    """The (address, port) of every host candidate in an SDP (deduplicated, in order)."""
    seen: list[tuple[str, int]] = []
    for m in _HOST_CANDIDATE.finditer(sdp):
        target = (m.group(1), int(m.group(2)))
        if target not in seen:
            seen.append(target)
    return seen


class Spoofer:
    """Sends datagrams from one other local UDP socket to the given targets (bounded loops only)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.setblocking(False)
        self.sent = 0

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def send(self, data: bytes, targets: list[tuple[str, int]]) -> None:
        for target in targets:
            if ":" in target[0]:
                continue  # the spoofer is IPv4 loopback; tests pin ICE to 127.0.0.1
            try:
                self._sock.sendto(data, target)
                self.sent += 1
            except OSError:
                pass

    async def burst(self, targets: list[tuple[str, int]], rounds: int = 20, interval_s: float = 0.02) -> None:
        hello = dtls_client_hello()
        for n in range(rounds):
            self.send(hello, targets)
            self.send(rtp_packet(n), targets)
            await asyncio.sleep(interval_s)

    def close(self) -> None:
        self._sock.close()
