"""Fixtures shared by every test folder.

The served app (real Ray + Serve, started once per test session) is a plugin
here, so integration, browser and desktop-client tests share one instance.

Every WebRTC peer in the tests, server and client, is pinned to 127.0.0.1: the
served app and the CLI clients through ``MIRAGE_ICE_HOST_ADDRESSES`` (set here,
inherited by Ray workers and subprocesses), and any aiortc peer in this process
through aioice's host-address lookup, so no test traffic uses another address.
"""

import os

import aioice.ice
import pytest

pytest_plugins = ["tests.integration.served"]

TEST_ICE_ADDRESS = "127.0.0.1"
os.environ.setdefault("MIRAGE_ICE_HOST_ADDRESSES", TEST_ICE_ADDRESS)


@pytest.fixture(autouse=True, scope="session")
def _pin_webrtc_to_loopback() -> object:
    """aioice offers every interface but loopback; in tests, only 127.0.0.1."""
    original = aioice.ice.get_host_addresses

    def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [TEST_ICE_ADDRESS] if use_ipv4 else []

    aioice.ice.get_host_addresses = loopback_only
    yield
    aioice.ice.get_host_addresses = original
