"""Every series the Grafana dashboard and the alert rules query is one a running app really exports.

The shared app serves a real session (frames, stage latencies, batches, sessions),
an unauthorized offer is refused (refusals), a second app with a 1 ms deadline and
``MIRAGE_ALLOW_NONCOMMERCIAL=0`` serves a session whose frames all go out under the
fallback policy (fallback frames), and a VoiceConverter converts a few chunks (voice
series). Then Ray's metrics export port on 127.0.0.1 is scraped until every name
the JSON and the rules mention is there.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import yaml

from tests.integration.peer import client_config, make_offer, offer_message, open_session, raw_exchange
from tests.integration.served import REPO, ServedApp, _wait_healthy, http

pytestmark = pytest.mark.integration

DASHBOARD = REPO / "deploy" / "grafana" / "mirage-dashboard.json"
ALERTS = REPO / "deploy" / "grafana" / "alerts.yml"
FALLBACK_APP, FALLBACK_PREFIX = "mirage-fallback", "/fallback"
VOICE_APP = "mirage-metrics-voice"
_NAME = re.compile(r"\b(ray_[a-zA-Z0-9_]+)")


def dashboard_exprs() -> list[str]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for p in panels:
            for t in p.get("targets", []):
                yield t["expr"]
            yield from walk(p.get("panels", []))

    dash = json.loads(DASHBOARD.read_text())
    exprs = list(walk(dash["panels"]))
    for var in dash["templating"]["list"]:
        if var.get("type") == "query":
            exprs.append(var["definition"])
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def queried_series() -> set[str]:
    return {m for e in dashboard_exprs() + alert_exprs() for m in _NAME.findall(e)}


def scrape() -> set[str]:
    """Series names on every node's metrics export port (127.0.0.1)."""
    import ray

    names: set[str] = set()
    for node in ray.nodes():
        port = node.get("MetricsExportPort")
        if not node.get("Alive") or not port:
            continue
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:  # noqa: S310 - loopback
            for line in r.read().decode("utf-8", "replace").splitlines():
                if line and not line.startswith("#"):
                    names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


@pytest.fixture(scope="module")
def fallback_app(served: ServedApp) -> Iterator[str]:
    from ray import serve

    from serve_app.app import AppArgs, build_app

    mp = pytest.MonkeyPatch()
    mp.setenv("MIRAGE_ALLOW_NONCOMMERCIAL", "0")
    try:
        app = build_app(AppArgs.model_validate({
            "require_api_key": True,
            "api_key": served.api_key,
            "ingress": {"max_sessions_per_replica": 1, "num_cpus": 0.1, "graceful_shutdown_timeout_s": 5.0},
            "detector": {"num_cpus": 0.1},
            "swapper": {"num_cpus": 0.1},
            # With the shared app (1.5 CPUs) and the lone converter below, this fits Ray's 2 CPUs.
            "voice": {"num_cpus": 0.05},
            "enhancer": {"num_cpus": 0.05},
            "session": {"deadline_ms": 1.0},  # every model call is late: every frame falls back
        }))
    finally:
        mp.undo()
    serve.run(app, name=FALLBACK_APP, route_prefix=FALLBACK_PREFIX, blocking=False)
    url = served.url + FALLBACK_PREFIX
    _wait_healthy(url, timeout=180)
    try:
        yield url
    finally:
        serve.delete(FALLBACK_APP)


def _voice_chunks(count: int) -> int:
    from ray import serve

    from deployments.voice import VoiceConverter
    from mirage.voice.config import parse_voice
    from mirage.voice.convert import VoiceCoreConfig
    from mirage.voice.stream import VoiceStream

    app = VoiceConverter.options(ray_actor_options={"num_cpus": 0.05}).bind(VoiceCoreConfig(rvc=False))
    handle = serve.run(app, name=VOICE_APP, route_prefix=None)
    try:
        stream = VoiceStream(parse_voice("disguise"))
        t = np.arange(48000) / 48000.0
        tone = (0.2 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
        done = 0

        async def run() -> int:
            nonlocal done
            step = len(tone) // count
            for k in range(count):
                chunk = stream.request(tone[k * step:(k + 1) * step])
                if chunk is None:
                    continue
                stream.accept(chunk, await asyncio.wait_for(handle.convert.remote(chunk), 10.0))
                done += 1
            return done

        return asyncio.run(run())
    finally:
        serve.delete(VOICE_APP)


def test_noncommercial_models_refused_when_not_allowed(served: ServedApp, fallback_app: str) -> None:
    status, config = http(fallback_app + "/config")
    assert status == 200 and config["allow_noncommercial"] is False
    assert "inswapper" not in config["swappers"] and "inswapper" not in config["licences"]
    assert config["synthetic_media"] is True
    assert any("Apache-2.0" in row["licence"] for row in config["licences"]["mesh"])

    async def offer() -> Any:
        sdp = await make_offer()
        return await raw_exchange(fallback_app.replace("http://", "ws://") + "/ws/session",
                                  offer_message(sdp, api_key=served.api_key, swapper="inswapper"), timeout=20)

    reply = asyncio.run(offer())
    assert reply.error is not None and reply.error["code"] == "not_allowed", reply.messages
    assert "non-commercial" in reply.error["message"] and "Traceback" not in reply.error["message"]
    # the shared app allows them: its /config lists the licence of whatever swapper it offers
    _, shared = served.get("/config")
    assert shared["allow_noncommercial"] is True and set(shared["licences"]) == set(shared["swappers"])


def test_every_queried_series_is_exported(served: ServedApp, fallback_app: str) -> None:
    wanted = queried_series()
    assert {"ray_mirage_sessions", "ray_mirage_frames_total", "ray_mirage_stage_latency_ms_bucket",
            "ray_mirage_fallback_frames_total", "ray_mirage_sessions_refused_total",
            "ray_mirage_swapper_batch_size_bucket", "ray_mirage_voice_chunks_total"} <= wanted

    async def sessions() -> tuple[int, int, bool]:
        main = await open_session(client_config(served.url, served.api_key, fps=30.0))
        fb = await open_session(client_config(fallback_app, served.api_key, fps=15.0))
        try:
            await main.wait_frames(40, timeout=40)
            await fb.wait_frames(10, timeout=40)
            await asyncio.sleep(1.5)  # a stats message
            return main.stats.frames, fb.stats.frames, bool(main.server_stats and main.server_stats.get("synthetic"))
        finally:
            await main.close()
            await fb.close()

    main_frames, fb_frames, stats_synthetic = asyncio.run(sessions())
    assert stats_synthetic, "stats messages say the media is synthetic"
    refused = asyncio.run(raw_exchange(served.ws_url, {"type": "offer", "sdp": "v=0", "api_key": "wrong"}, timeout=10))
    assert refused.error is not None and refused.error["code"] == "unauthorized"
    voice = _voice_chunks(12)
    assert voice >= 10

    deadline = time.monotonic() + 90  # Ray reports metrics every few seconds
    missing = wanted
    while time.monotonic() < deadline:
        missing = wanted - scrape()
        if not missing:
            break
        time.sleep(3)
    print(f"dashboard/alerts query {len(wanted)} series; main session {main_frames} frames, "
          f"fallback session {fb_frames} frames, {voice} voice chunks; missing: {sorted(missing)}")
    assert not missing, f"queried but not exported: {sorted(missing)}"
