"""The served application end to end: real Ray + Serve, real aiortc peers over 127.0.0.1.

One Ray/Serve for the whole test session (``served`` fixture); sessions are a
few seconds long. The client sends the astronaut moving clip with a frame
number stamped into each frame, so every received frame is compared with the
exact frame that was sent.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from mirage.client.session import MirageSession, SessionRefused
from tests.integration.peer import HEIGHT, WIDTH, client_config, compare_to_sent, open_session
from tests.integration.served import BATCH_WAIT_S, REPO, ServedApp

pytestmark = pytest.mark.integration

FPS = 15.0


async def _swapped_frames(session: MirageSession, want: int, timeout: float = 40.0) -> list:
    """Received frames (with readable stamps) that clearly carry the swap."""
    deadline = time.monotonic() + timeout
    good = []
    checks = []
    while len(good) < want and time.monotonic() < deadline:
        try:
            frame = await asyncio.wait_for(session.frames.get(), 5.0)
        except TimeoutError:
            continue
        if frame.number is None or frame.image is None:
            continue
        # Frames come back at the resolution they were sent in (640x480), not the 512-px analysis copy.
        assert frame.image.shape == (HEIGHT, WIDTH, 3), frame.image.shape
        check = compare_to_sent(frame.image, frame.number, FPS)
        checks.append(check)
        if check.swapped:
            good.append(check)
    assert len(good) >= want, f"only {len(good)} swapped frames; checks: {checks[-5:]}"
    return good


def test_json_endpoints(served: ServedApp) -> None:
    status, health = served.get("/health")
    assert status == 200 and health["status"] == "ok" and health["capacity"] == served.capacity

    status, config = served.get("/config")
    assert status == 200
    assert config["ice_servers"] == [], "no STUN/TURN by default: host candidates only"
    assert config["max_side"] == 512 and config["max_fps"] == 30
    assert "mesh" in config["swappers"]
    assert config["fallbacks"] == ["blur", "hold", "passthrough"]
    assert config["require_api_key"] is True and config["max_reference_bytes"] == 10 * 1024 * 1024

    for path, keys in [
        ("/metrics", {"frames", "avg_latency_ms", "swap_faces_last", "sessions", "dropped_frames", "stage_ms"}),
        ("/metrics/pacing", {"latency_ema_ms", "pacing_hint"}),
        ("/metrics/stage_histogram", {"buckets_ms", "current", "snapshots"}),
        ("/webrtc/ping", {"ok", "sessions", "capacity", "turn_configured"}),
        ("/debug/models", {"models", "sentinel", "storage", "pipeline"}),
    ]:
        status, body = served.get(path)
        assert status == 200, (path, body)
        assert keys <= set(body), (path, sorted(body))

    status, gpu = served.get("/gpu")
    assert status == 200
    if not gpu["available"]:
        assert "No GPU" in gpu["message"] or "No usable GPU" in gpu["message"]
    else:
        assert gpu["gpus"][0]["memory_total_mb"] > 0

    status, models = served.get("/debug/models")
    assert models["models"]["blazeface_short"]["exists"] is True
    assert "licence" in models["models"]["facemesh"]

    # The debug state is protected like the other control endpoints.
    status, body = served.get("/webrtc/debug_state")
    assert status == 401 and "API key" in body["detail"]
    status, body = served.get("/webrtc/debug_state", headers={"X-API-Key": "wrong"})
    assert status == 401 and "not valid" in body["detail"]
    state = served.debug_state()
    assert state["loop_exceptions"] == 0 and state["capacity"] == served.capacity

    status, page = served.get("/")
    assert status == 200 and "<" in page


def test_one_session_swaps_the_face(served: ServedApp) -> None:
    async def run() -> tuple:
        session = await open_session(client_config(served.url, served.api_key, fps=FPS, audio=True))
        try:
            assert session.session_id
            good = await _swapped_frames(session, 3)
            await session.wait_frames(20, timeout=40)
            pong = await session.ping()
            opts = await session.set_options(mouth_mask=True, fallback="hold")
            await asyncio.sleep(1.5)  # at least one stats message
            state = served.debug_state()
            return good, pong, opts, session.server_stats, session.stats, state
        finally:
            await session.close()

    good, pong, opts, server_stats, stats, state = asyncio.run(run())
    assert all(g.face_diff > 12 for g in good)
    assert pong["type"] == "ack" and opts["type"] == "ack"
    assert server_stats is not None and server_stats["type"] == "stats"
    assert server_stats["fps_out"] > 0 and server_stats["faces"] >= 0 and "dropped" in server_stats
    assert stats.audio_frames > 10, "audio passes through"
    assert stats.frames >= 20 and stats.latencies_ms, "frames come back with readable stamps"
    (described,) = state["sessions"]
    assert described["mouth_mask"] is True and described["fallback"] == "hold"
    assert described["has_audio"] is True
    assert "identity" not in str(described) and "reference" not in str(described)
    served.wait_sessions(0, timeout=15)

    status, metrics = served.get("/metrics")
    assert metrics["frames"] > 0 and metrics["avg_latency_ms"] > 0
    assert {"detect", "landmarks", "swap", "paste", "total"} <= set(metrics["stage_ms"])
    status, pacing = served.get("/metrics/pacing")
    assert pacing["latency_ema_ms"] > 0
    assert pacing["pacing_hint"] == pytest.approx(pacing["target_frame_ms"] / pacing["latency_ema_ms"], rel=0.01)


def test_three_sessions_batch_and_the_cap_holds(served: ServedApp) -> None:
    async def run() -> dict:
        sessions = []
        try:
            for _ in range(served.capacity):
                sessions.append(await open_session(client_config(served.url, served.api_key, fps=FPS)))
            await asyncio.gather(*(_swapped_frames(s, 2, timeout=60) for s in sessions))

            # Beyond capacity: refused at once with the reason.
            start = time.monotonic()
            with pytest.raises(SessionRefused) as refused:
                await open_session(client_config(served.url, served.api_key, fps=FPS))
            refused_after = time.monotonic() - start
            health = served.get("/health")  # other routes stay responsive with the cap full

            # Closing one frees its slot for a newcomer.
            await sessions.pop().close()
            served.wait_sessions(served.capacity - 1, timeout=15)
            sessions.append(await open_session(client_config(served.url, served.api_key, fps=FPS)))
            await _swapped_frames(sessions[-1], 1, timeout=40)
            return {"refused": refused.value, "refused_after": refused_after, "health": health}
        finally:
            await asyncio.gather(*(s.close() for s in sessions))

    out = asyncio.run(run())
    assert out["refused"].code == "server_full"
    assert "try again later" in out["refused"].message
    assert out["refused_after"] < 10.0
    assert out["health"][0] == 200
    served.wait_sessions(0, timeout=15)

    detector = served.deployment_stats("FaceDetector")
    swapper = served.deployment_stats("FaceSwapper")
    # user_config reached the replicas through reconfigure().
    assert detector["batching"]["batch_wait_timeout_s"] == BATCH_WAIT_S
    assert swapper["batching"]["batch_wait_timeout_s"] == BATCH_WAIT_S
    batched = [
        detector["methods"].get("landmarks", {}),
        detector["methods"].get("detect", {}),
        swapper["methods"]["swap"],
        swapper["methods"].get("track_swap", {}),
    ]
    assert max(m.get("max_batch_size", 0) for m in batched) > 1, f"no batch larger than 1: {batched}"
    sizes = swapper["methods"]["swap"]["batch_size_histogram"]
    assert sum(sizes.values()) == swapper["methods"]["swap"]["batches"]


_VANISHING_CLIENT = """
import asyncio, sys, time
sys.path.insert(0, {repo!r})
from tests.integration.peer import client_config, open_session

async def main():
    session = await open_session(client_config({url!r}, {key!r}, fps=10.0))
    await session.wait_frames(5, timeout=60)
    print("CONNECTED", session.session_id, flush=True)
    while True:
        await asyncio.sleep(1)

asyncio.run(main())
"""


def test_vanished_client_is_reaped(served: ServedApp) -> None:
    code = _VANISHING_CLIENT.format(repo=str(REPO), url=served.url, key=served.api_key)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(REPO), env=dict(os.environ))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("CONNECTED"), (line, proc.stderr.read() if proc.poll() is not None else "")
        assert served.debug_state()["session_count"] == 1
        # Freeze the client: no media, no ICE consent replies, no WebSocket close; as if it vanished.
        os.kill(proc.pid, signal.SIGSTOP)
        took = served.wait_sessions(0, timeout=30)
        assert took < 30
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    state = served.debug_state()
    assert state["open_peer_connections"] == 0


def test_graceful_shutdown_closes_sessions_cleanly(served: ServedApp) -> None:
    """Deleting an app while a session is open: the client gets an event and close 1001 long before
    the graceful-shutdown timeout (Serve would otherwise wait for the session, then kill it)."""
    from ray import serve

    from serve_app.app import AppArgs, build_app

    timeout_s = 40.0
    args = AppArgs.model_validate(
        {
            "require_api_key": True,
            "api_key": served.api_key,
            "detector": {"num_cpus": 0.05},
            "swapper": {"num_cpus": 0.05},
            "ingress": {"num_cpus": 0.05, "graceful_shutdown_timeout_s": timeout_s},
        }
    )
    serve.run(build_app(args), name="drain-test", route_prefix="/drain-test")

    async def run() -> tuple:
        session = await open_session(client_config(served.url + "/drain-test", served.api_key, fps=10.0, keep_frames=0))
        try:
            await session.wait_frames(3, timeout=40)
            start = time.monotonic()
            deleting = asyncio.ensure_future(asyncio.to_thread(serve.delete, "drain-test"))
            await asyncio.wait_for(session.ended.wait(), timeout_s)
            ended_after = time.monotonic() - start
            await deleting
            deleted_after = time.monotonic() - start
            return session.close_code, list(session.events), ended_after, deleted_after
        finally:
            await session.close()

    close_code, events, ended_after, deleted_after = asyncio.run(run())
    assert close_code == 1001
    assert any(e.get("event") == "server_shutdown" for e in events), events
    assert ended_after < 15 and deleted_after < timeout_s - 10, (ended_after, deleted_after)
