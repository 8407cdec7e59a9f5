"""Audio and video in step at the receiver, measured glass-to-glass through a real served session.

One session of the served app (real Ray + Serve, aiortc over 127.0.0.1, VP8
and Opus both ways) sends the stamped clip and, once a second, an A/V mark in
its audio (60 ms of silence, then a 40 ms tone burst, mirage.client.avsync).
The client finds each burst's onset in the returned audio and the frame sent
with it in the returned video, on its own clock: the offset is the difference
of the two receive delays. Judged twice: with the voice off, and with the DSP
disguise on (which adds its own 25 ms and a converter call to the audio path).
The server's own view (its video and voice delays, the hold it applies) is
printed with the figures.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import numpy as np
import pytest

from mirage.client.session import MirageSession
from tests.integration.peer import client_config
from tests.integration.served import ServedApp

pytestmark = pytest.mark.integration

#: Seconds of marks judged per phase, after SETTLE_S of each phase.
PHASE_S = 10.0
SETTLE_S = 3.0
LIMIT_MS = 40.0


def _server_view(served: ServedApp) -> dict[str, Any]:
    (described,) = served.debug_state()["sessions"]
    return {"latency_ms": described.get("latency_ms"), "voice_stats": described.get("voice_stats")}


def test_returned_audio_and_video_stay_within_40_ms(served: ServedApp) -> None:
    served.wait_sessions(0, timeout=30)

    async def phase(session: MirageSession) -> tuple[list[float], dict[str, Any]]:
        await asyncio.sleep(SETTLE_S)
        start = len(session.stats.av_offsets_ms)
        await asyncio.sleep(PHASE_S)
        return list(session.stats.av_offsets_ms[start:]), _server_view(served)

    async def run() -> dict[str, tuple[list[float], dict[str, Any]]]:
        config = dataclasses.replace(client_config(served.url, served.api_key, fps=15.0, audio=True), av_marks=True)
        session = MirageSession(config)
        await session.connect()
        try:
            await session.wait_frames(5, timeout=30)
            results = {"off": await phase(session)}
            ack = await session.set_options(voice="disguise")
            assert ack["type"] == "ack", ack
            results["disguise"] = await phase(session)
            return results
        finally:
            await session.close()

    results = asyncio.run(run())
    for name, (offsets, server) in results.items():
        print(
            f"A/V offset, voice {name}: p50 {np.median(offsets) if offsets else float('nan'):+.1f} ms, "
            f"all {[round(o) for o in offsets]}; server {server}"
        )
    for name, (offsets, _) in results.items():
        assert len(offsets) >= PHASE_S * 0.6, (name, offsets)
        assert abs(float(np.median(offsets))) <= LIMIT_MS, (name, offsets)
    served.wait_sessions(0, timeout=30)
