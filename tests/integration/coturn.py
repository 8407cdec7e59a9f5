"""A real coturn (Debian's ``turnserver``) on 127.0.0.1 for the relay tests.

Started with ``use-auth-secret`` / ``static-auth-secret`` (the TURN REST scheme
serve_app.turn implements), a random UDP listening port, a random relay port
range, no TLS, listening and relaying on 127.0.0.1 only, logging to a temp file.
``allow-loopback-peers`` lets it relay between two allocations on loopback
(both peers of the test are relay-only on the same host).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REALM = "mirage.test"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Coturn:
    port: int
    secret: str
    log_file: Path

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


@contextmanager
def coturn(tmp: Path, secret: str) -> Iterator[Coturn]:
    binary = shutil.which("turnserver")
    if binary is None:
        raise RuntimeError("Debian's coturn is not installed (scripts/test.sh installs it: apt-get install coturn)")
    port = free_udp_port()
    low = random.randint(20000, 59000)
    log_file = tmp / "turnserver.log"
    cmd = [
        binary, "-n",  # no config file
        "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", f"--listening-port={port}",
        f"--min-port={low}", f"--max-port={low + 200}",
        "--use-auth-secret", f"--static-auth-secret={secret}", f"--realm={REALM}",
        "--no-tls", "--no-dtls", "--no-cli", "--no-tcp-relay", "--fingerprint",
        "--allow-loopback-peers", "--no-multicast-peers",
        f"--log-file={log_file}", "--simple-log", "--verbose",
        f"--pidfile={tmp / 'turnserver.pid'}", f"--userdb={tmp / 'turndb'}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    try:
        server = Coturn(port=port, secret=secret, log_file=log_file)
        deadline = time.monotonic() + 15
        while "listener opened on" not in server.log() and "Total UDP servers" not in server.log():
            if proc.poll() is not None:
                raise RuntimeError(f"turnserver exited ({proc.returncode}): {server.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"turnserver did not start within 15 s: {server.log()[-2000:]}")
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def try_allocation(server: Coturn, username: str, password: str, timeout: float = 10.0) -> str:
    """Ask coturn for an allocation with these credentials: the relayed address, or raise what coturn said."""
    from aioice.turn import create_turn_endpoint

    transport, _ = await asyncio.wait_for(
        create_turn_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", server.port), username, password),
        timeout,
    )
    try:
        host, port = transport.get_extra_info("sockname")
        return f"{host}:{port}"
    finally:
        transport.close()
