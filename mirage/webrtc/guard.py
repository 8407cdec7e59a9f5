"""A narrow adapter over aioice: which host addresses ICE offers, and whose datagrams reach DTLS/SRTP.

aioice (0.13, under aiortc 1.16) has two behaviours an internet-facing server
cannot keep, and this module changes them for one peer connection at a time,
without forking either library:

* **Media from validated addresses only.** aioice hands every datagram that is
  not STUN to aiortc's DTLS transport, whatever address it came from. One
  spoofed DTLS ClientHello sent to a host candidate's port while a session is
  being set up makes the handshake fail and the session end. The guard wraps
  each ICE socket's ``datagram_received``: STUN still goes to aioice (which
  checks MESSAGE-INTEGRITY itself), anything else is passed on only when it
  comes from the remote address of the pair ICE nominated for that socket (or,
  before nomination, of a pair whose connectivity check succeeded). Everything
  else is dropped and counted (:class:`DropCounters`, by RFC 7983 kind).
* **Host addresses under control.** aioice offers every interface address
  except loopback. ``IcePolicy.host_addresses`` is an allow-list (IP literals
  or interface names; ``127.0.0.1`` and ``lo`` work, which aioice leaves out),
  and ``IcePolicy.announced_address`` is a NAT 1:1 address written into the
  host candidates instead of the bound one (mediasoup's ``announcedAddress``,
  LiveKit's ``node_ip``, Janus's ``nat_1_1_mapping``): the socket stays bound
  to the local interface, the peer is told the public address.

Call :func:`guard_peer_connection` after the peer connection has its
transceivers and data channel (for an answerer: after ``setRemoteDescription``)
and before ``setLocalDescription`` (which gathers). It is idempotent.

The adapter touches these aioice internals, checked by the unit tests against
the pinned version: ``Connection.gather_candidates`` (replaced per instance,
same steps as aioice's own), ``Connection._protocols``, ``_nominated``,
``_check_list``, ``_components``, ``_transport_policy``,
``get_component_candidates``, and ``StunProtocol.local_candidate``.
Upstream: aioice has no hook for either (a report upstream is suggested in
docs/security.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import ifaddr
from aioice.ice import CandidatePair, Connection, TransportPolicy

from mirage.env import read_list, read_str

logger = logging.getLogger(__name__)

HOST_ADDRESSES_ENV = "MIRAGE_ICE_HOST_ADDRESSES"
ANNOUNCED_ADDRESS_ENV = "MIRAGE_ICE_ANNOUNCED_ADDRESS"


class IcePolicyError(ValueError):
    """An allow-list entry or announced address that cannot be used."""


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class IcePolicy:
    """Which local addresses ICE offers as host candidates, and what it announces.

    ``host_addresses``: IP literals or interface names; empty means aioice's
    default (every interface address except loopback). ``announced_address``:
    an IP written into every host candidate instead of the bound address (NAT
    1:1). ``filter_media``: drop DTLS/SRTP/RTP from unvalidated addresses (on
    by default; off only to reproduce the attack in a test).
    """

    host_addresses: tuple[str, ...] = ()
    announced_address: str | None = None
    filter_media: bool = True

    def __post_init__(self) -> None:
        for entry in self.host_addresses:
            if not entry or any(c.isspace() for c in entry):
                raise IcePolicyError(f"ICE host address {entry!r} is neither an IP address nor an interface name.")
        if self.announced_address is not None and not _is_ip(self.announced_address):
            raise IcePolicyError(f"The announced ICE address {self.announced_address!r} is not an IP address.")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> IcePolicy:
        """``MIRAGE_ICE_HOST_ADDRESSES`` (comma list) and ``MIRAGE_ICE_ANNOUNCED_ADDRESS``."""
        return cls(host_addresses=read_list(env, HOST_ADDRESSES_ENV), announced_address=read_str(env, ANNOUNCED_ADDRESS_ENV))

    def resolve(self, use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
        """The addresses to bind host candidates to (IP literals kept, interface names expanded)."""
        if not self.host_addresses:
            return list(aioice.ice.get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6))
        by_name: dict[str, list[str]] = {}
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if isinstance(ip.ip, str):
                    by_name.setdefault(adapter.nice_name, []).append(ip.ip)
                elif ip.ip[2] == 0:  # IPv6 without a scope (no link-local)
                    by_name.setdefault(adapter.nice_name, []).append(ip.ip[0])
        out: list[str] = []
        for entry in self.host_addresses:
            candidates = [entry] if _is_ip(entry) else by_name.get(entry, [])
            if not candidates:
                logger.warning("ICE host address %r is not an IP address or a known interface; skipped", entry)
            for addr in candidates:
                version = ipaddress.ip_address(addr).version
                if ((version == 4 and use_ipv4) or (version == 6 and use_ipv6)) and addr not in out:
                    out.append(addr)
        return out


@dataclass
class DropCounters:
    """Datagrams dropped because they came from an address ICE had not validated."""

    dtls: int = 0
    rtp: int = 0
    other: int = 0
    last_source: tuple[str, int] | None = field(default=None, repr=False)

    @property
    def total(self) -> int:
        return self.dtls + self.rtp + self.other

    def as_dict(self) -> dict[str, int]:
        return {"dtls": self.dtls, "rtp": self.rtp, "other": self.other}


def datagram_kind(data: bytes) -> str:
    """RFC 7983 demultiplexing by first byte: stun, dtls, rtp (RTP/RTCP/SRTP) or other."""
    if not data:
        return "other"
    first = data[0]
    if first < 4:
        return "stun"
    if 19 < first < 64:
        return "dtls"
    if 127 < first < 192:
        return "rtp"
    return "other"


def _validated(connection: Connection, protocol: Any, addr: tuple[str, int]) -> bool:
    component = protocol.local_candidate.component
    nominated: CandidatePair | None = connection._nominated.get(component)
    if nominated is not None:
        return nominated.protocol is protocol and nominated.remote_addr == addr
    return any(
        pair.protocol is protocol and pair.remote_addr == addr and pair.state == CandidatePair.State.SUCCEEDED
        for pair in connection._check_list
    )


def _guard_protocol(connection: Connection, protocol: Any, counters: DropCounters) -> None:
    original = protocol.datagram_received
    conn_ref = weakref.ref(connection)

    def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
        kind = datagram_kind(data)
        source = (addr[0], addr[1])
        conn = conn_ref()
        if kind == "stun" or (conn is not None and _validated(conn, protocol, source)):
            original(data, addr)
            return
        setattr(counters, kind, getattr(counters, kind) + 1)
        if counters.last_source != source:
            counters.last_source = source
            logger.info("dropped a %s datagram from an address ICE has not validated", kind)

    protocol.datagram_received = datagram_received


def _install(connection: Connection, policy: IcePolicy, counters: DropCounters) -> None:
    async def gather_candidates() -> None:
        # aioice's Connection.gather_candidates, with our address list (and the guard on every socket).
        if connection._local_candidates_start:
            return
        connection._local_candidates_start = True
        addresses: list[str] = []
        if connection._transport_policy == TransportPolicy.ALL:
            addresses = policy.resolve(use_ipv4=connection._use_ipv4, use_ipv6=connection._use_ipv6)
        coros = [
            connection.get_component_candidates(component=component, addresses=addresses)
            for component in connection._components
        ]
        for candidates in await asyncio.gather(*coros):
            connection._local_candidates += candidates
        if policy.announced_address:
            for candidate in connection._local_candidates:
                if candidate.type == "host":
                    candidate.host = policy.announced_address  # the socket stays bound to _network_host
        if policy.filter_media:
            for protocol in connection._protocols:
                _guard_protocol(connection, protocol, counters)
        connection._local_candidates_end = True

    connection.gather_candidates = gather_candidates  # type: ignore[method-assign]


def _connections(pc: Any) -> list[Connection]:
    transports = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    out: list[Connection] = []
    for dtls in transports:
        if dtls is None:
            continue
        connection = dtls.transport.iceGatherer._connection
        if all(connection is not c for c in out):
            out.append(connection)
    return out


def guard_peer_connection(pc: Any, policy: IcePolicy, counters: DropCounters | None = None) -> DropCounters:
    """Apply ``policy`` to every ICE transport of ``pc`` that has not gathered yet; returns the counters."""
    counters = counters if counters is not None else DropCounters()
    for connection in _connections(pc):
        if "gather_candidates" in vars(connection):
            continue  # guarded already (our per-instance gather_candidates)
        if connection._local_candidates_start:
            logger.warning("an ICE transport gathered before the guard was installed; it is not filtered")
            continue
        _install(connection, policy, counters)
    return counters
