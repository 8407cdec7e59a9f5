"""A session relayed through a real coturn with TURN REST credentials (MIRAGE_TURN_SECRET).

coturn (Debian's ``turnserver``) runs on 127.0.0.1 with ``use-auth-secret``; a
second Mirage app is deployed next to the shared one with ``MIRAGE_FORCE_RELAY=1``
and the secret, so the server's peer connections gather relay candidates only,
and the client (which follows ``/config``'s ``force_relay``) does the same with
the credential ``/config`` minted for it. Checked: ``/config`` carries working
ephemeral credentials only after authentication, swapped frames arrive over the
relay, coturn's log shows both allocations, and coturn itself refuses a forged
or expired credential.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import cv2
import pytest

from serve_app.turn import turn_password
from tests.integration.coturn import Coturn, coturn, try_allocation
from tests.integration.peer import OUT_HEIGHT, OUT_WIDTH, client_config, compare_to_sent, open_session
from tests.integration.served import ServedApp, _wait_healthy

pytestmark = pytest.mark.integration

SECRET = "relay-test-secret"
APP = "mirage-relay"
PREFIX = "/relay"
FPS = 15.0


@pytest.fixture(scope="module")
def turn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    with coturn(tmp_path_factory.mktemp("coturn"), SECRET) as server:
        yield server


@pytest.fixture(scope="module")
def relay_app(served: ServedApp, turn: Coturn) -> Iterator[str]:
    """The Mirage app again, relay-only behind coturn, at /relay on the same Serve instance."""
    from ray import serve

    from serve_app.app import AppArgs, build_app

    env = {
        "MIRAGE_TURN_URL": turn.url,
        "MIRAGE_TURN_SECRET": SECRET,
        "MIRAGE_TURN_TTL": "600",
        "MIRAGE_FORCE_RELAY": "1",
        "MIRAGE_TURN_TLS_ONLY": "0",
    }
    mp = pytest.MonkeyPatch()
    for name, value in env.items():
        mp.setenv(name, value)
    try:
        args = AppArgs.model_validate(
            {
                "require_api_key": True,
                "api_key": served.api_key,
                # Small CPU shares: it runs beside the shared app on a 2-CPU Ray.
                "ingress": {"max_sessions_per_replica": 1, "num_cpus": 0.1, "graceful_shutdown_timeout_s": 5.0},
                "detector": {"num_cpus": 0.1},
                "swapper": {"num_cpus": 0.1},
            }
        )
        app = build_app(args)
    finally:
        mp.undo()
    serve.run(app, name=APP, route_prefix=PREFIX, blocking=False)
    url = served.url + PREFIX
    _wait_healthy(url, timeout=180)
    try:
        yield url
    finally:
        serve.delete(APP)


def test_config_gives_turn_credentials_only_after_authentication(served: ServedApp, relay_app: str,
                                                                 turn: Coturn) -> None:
    from tests.integration.served import http

    status, anon = http(relay_app + "/config")
    assert status == 200 and anon["force_relay"] is True
    assert anon["turn_credentials"] is False
    assert not [s for s in anon["ice_servers"] if any(u.startswith("turn") for u in s["urls"])]
    assert all("username" not in s and "credential" not in s for s in anon["ice_servers"])
    status, wrong = http(relay_app + "/config", headers={"X-API-Key": "not-the-key"})
    assert status == 200 and wrong["turn_credentials"] is False
    assert all("credential" not in s for s in wrong["ice_servers"])

    status, authed = http(relay_app + "/config", headers={"X-API-Key": served.api_key})
    assert status == 200 and authed["turn_credentials"] is True
    (entry,) = [s for s in authed["ice_servers"] if turn.url in s["urls"]]
    expiry, _, who = entry["username"].partition(":")
    assert who.startswith("mirage-") and 590 <= int(expiry) - time.time() <= 601
    # the minted credential works with coturn itself
    relayed = asyncio.run(try_allocation(turn, entry["username"], entry["credential"]))
    assert relayed.startswith("127.0.0.1:")
    # two callers get two credentials
    _, again = http(relay_app + "/config", headers={"X-API-Key": served.api_key})
    assert [s for s in again["ice_servers"] if turn.url in s["urls"]][0]["username"] != entry["username"]


def test_coturn_refuses_forged_and_expired_credentials(turn: Coturn) -> None:
    now = int(time.time())
    good_user = f"{now + 300}:forger"
    cases = {
        "forged": (good_user, turn_password("not-the-secret", good_user)),
        "expired": (f"{now - 5}:late", turn_password(SECRET, f"{now - 5}:late")),
        "tampered": (f"{now + 99999}:forger", turn_password(SECRET, good_user)),
    }
    for name, (user, password) in cases.items():
        with pytest.raises(Exception) as caught:
            asyncio.run(try_allocation(turn, user, password))
        assert "401" in str(caught.value), (name, caught.value)
    log = turn.log()  # coturn logged the refusals itself, and opened no allocation for them
    assert f"user <{now - 5}:late>: incoming packet message processed, error 401" in log
    for user, _ in cases.values():
        assert f"username=<{user}>" not in log, user


def test_session_relayed_through_coturn(served: ServedApp, relay_app: str, turn: Coturn) -> None:
    async def run() -> tuple:
        session = await open_session(client_config(relay_app, served.api_key, fps=FPS))
        try:
            assert session.server_config["force_relay"] is True
            pc = session._pc
            assert pc is not None
            transport = pc.getTransceivers()[0].receiver.transport.transport
            pairs = list(transport._connection._nominated.values())
            checks = []
            deadline = time.monotonic() + 40
            while sum(c.swapped for c in checks) < 3 and time.monotonic() < deadline:
                try:
                    frame = await asyncio.wait_for(session.frames.get(), 5.0)
                except TimeoutError:
                    continue
                if frame.number is not None and frame.image is not None:
                    # frames come back at the camera's size; compare at the analysis size
                    image = cv2.resize(frame.image, (OUT_WIDTH, OUT_HEIGHT), interpolation=cv2.INTER_AREA)
                    checks.append(compare_to_sent(image, frame.number, FPS))
            await session.wait_frames(30, timeout=30)
            lat = sorted(session.stats.latencies_ms)
            print(f"relay glass-to-glass p50 {lat[len(lat) // 2]:.0f} ms over {len(lat)} frames" if lat else "no latencies")
            return pairs, checks, session.synthetic, session.stats.frames
        finally:
            await session.close()

    pairs, checks, synthetic, frames = asyncio.run(run())
    assert pairs and all(p.local_candidate.type == "relay" and p.remote_candidate.type == "relay" for p in pairs), pairs
    swapped = [c for c in checks if c.swapped]
    assert len(swapped) >= 3, f"only {len(swapped)} swapped frames over the relay: {checks[-5:]}"
    assert synthetic is True, "the answer says the media is synthetic"
    log = turn.log()
    assert ":mirage-server>" in log and "ALLOCATE processed, success" in log
    assert "CREATE_PERMISSION processed, success" in log or "CHANNEL_BIND processed, success" in log
    print(f"relayed session: {frames} frames, {len(swapped)}/{len(checks)} checked frames swapped")
