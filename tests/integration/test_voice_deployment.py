"""The VoiceConverter deployment alone on a real local Ray + Serve: concurrent sessions share batches,
their streams stay independent and continuous, ``user_config`` reaches ``reconfigure``, health and stats answer.

Run under the heavy-job lock (it starts Ray):
    flock /tmp/mirage-heavy.lock timeout 900 .venv/bin/pytest tests/integration/test_voice_deployment.py -x -q
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mirage.voice.config import parse_voice
from mirage.voice.convert import VoiceChunk, VoiceConverterCore, VoiceCoreConfig
from mirage.voice.stream import VoiceStream
from standins.speech import SENTENCES, espeak_available, median_f0, speak

REPO = Path(__file__).resolve().parents[2]
APP = "voice-only"
CHUNK = 960
SESSIONS = 3

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (scripts/test.sh installs it)")


@pytest.fixture(scope="module")
def voice_handle() -> Iterator[Any]:
    import ray
    from ray import serve

    from deployments.voice import VoiceConverter
    from tests.integration.served import free_port

    paths = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024 * 1024)
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    app = VoiceConverter.options(user_config={"max_batch_size": 8, "batch_wait_timeout_s": 0.004}).bind(
        VoiceCoreConfig(rvc=False)
    )
    handle = serve.run(app, name=APP, route_prefix=None)
    try:
        yield handle
    finally:
        serve.delete(APP)
        if started:
            serve.shutdown()
            ray.shutdown()


async def _session(handle: Any, speech: np.ndarray, voice: str, chunks: int) -> tuple[np.ndarray, VoiceStream]:
    stream = VoiceStream(parse_voice(voice))
    out: list[np.ndarray] = []
    for k in range(chunks):
        piece = speech[k * CHUNK : (k + 1) * CHUNK]
        chunk = stream.request(piece)
        assert chunk is not None
        try:
            result = await asyncio.wait_for(handle.convert.remote(chunk), timeout=5.0)
            out.append(stream.accept(chunk, result))
        except TimeoutError:
            out.append(stream.fallback(chunk))
        await asyncio.sleep(0.005)
    return np.concatenate(out), stream


def test_three_sessions_share_batches_and_get_their_own_voice(voice_handle: Any) -> None:
    speech = [speak(SENTENCES[i % 2], 48000) for i in range(SESSIONS)]
    voices = ["deep", "high", "custom"]
    chunks = min(s.size for s in speech) // CHUNK

    async def run() -> list[tuple[np.ndarray, VoiceStream]]:
        # custom: parse_voice("custom") needs values, so that session uses explicit ones
        tasks = [
            _session(voice_handle, speech[0], "deep", chunks),
            _session(voice_handle, speech[1], "high", chunks),
            _custom_session(voice_handle, speech[2], chunks),
        ]
        return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    stats = voice_handle.stats.remote().result()
    method = stats["methods"]["convert"]
    assert method["items"] >= SESSIONS * chunks
    assert method["max_batch_size"] > 1, stats  # chunks of different sessions shared a batch
    assert stats["batching"]["max_batch_size"] == 8 and stats["batching"]["batch_wait_timeout_s"] == 0.004
    assert stats["errors"] == {} and stats["chunks"]["dsp"] >= SESSIONS * chunks

    # Each session's returned audio is its own stream, exactly what an in-process run of it gives.
    core = VoiceConverterCore(VoiceCoreConfig(rvc=False))
    for (out, stream), x, voice in zip(results, speech, voices):
        assert stream.counters.fallbacks == 0 and stream.counters.converted == chunks
        expected, state = [], None
        selection = stream.selection
        for k in range(chunks):
            r = core.convert_batch([VoiceChunk(x[k * CHUNK : (k + 1) * CHUNK], selection, state, k)])[0]
            expected.append(r.samples)
            state = r.state
        np.testing.assert_allclose(out, np.concatenate(expected), atol=1e-4, err_msg=voice)
    # and the voices moved as asked (Praat): deep -5 st, high +3 st
    lat = 1200
    for (out, _), x, want in zip(results[:2], speech[:2], (-5.0, 3.0)):
        moved = 12 * np.log2(median_f0(out[lat:], 48000) / median_f0(x[: out.size - lat], 48000))
        assert abs(moved - want) <= 0.5


async def _custom_session(handle: Any, speech: np.ndarray, chunks: int) -> tuple[np.ndarray, VoiceStream]:
    stream = VoiceStream(parse_voice(None, pitch=2.0, formant=1.1))
    out: list[np.ndarray] = []
    for k in range(chunks):
        chunk = stream.request(speech[k * CHUNK : (k + 1) * CHUNK])
        assert chunk is not None
        out.append(stream.accept(chunk, await handle.convert.remote(chunk)))
        await asyncio.sleep(0.005)
    return np.concatenate(out), stream


def test_health_voices_latency_and_reconfigure(voice_handle: Any) -> None:
    from ray import serve

    voices = voice_handle.available_voices.remote().result()
    assert {"off", "deep", "disguise", "custom"} <= set(voices)
    assert voice_handle.latency_ms.remote("deep").result() == pytest.approx(25.0)
    status = serve.status().applications[APP]
    assert str(status.status).endswith("RUNNING")
    # user_config changes reach reconfigure() without a restart
    from deployments.voice import VoiceConverter

    serve.run(
        VoiceConverter.options(user_config={"max_batch_size": 4, "batch_wait_timeout_s": 0.0}).bind(VoiceCoreConfig(rvc=False)),
        name=APP,
        route_prefix=None,
    )
    stats = voice_handle.stats.remote().result()
    assert stats["batching"]["max_batch_size"] == 4


def _window_correlation(out: np.ndarray, sent: np.ndarray, lag: int) -> float:
    """Highest normalised correlation of the output with the sent audio around the stream's latency."""
    best = 0.0
    for d in range(max(0, lag - 480), lag + 2400, 24):
        x, y = out[d:], sent[: sent.size - d]
        n = min(x.size, y.size)
        if n < 960:
            continue
        denom = float(np.linalg.norm(x[:n]) * np.linalg.norm(y[:n]))
        if denom > 0:
            best = max(best, abs(float(np.dot(x[:n], y[:n]))) / denom)
    return best


def test_a_killed_replica_never_lets_the_real_voice_through(voice_handle: Any) -> None:
    """Runs last: it kills the replica. While it is down every chunk is disguised in the "ingress"
    (the pump's local fallback); once Serve has replaced it, conversion resumes on the new replica
    from the state that travelled with the calls."""
    import ray

    from mirage.voice.pump import VoicePump

    speech = np.concatenate([speak(SENTENCES[0], 48000), speak(SENTENCES[1], 48000)])
    x = np.tile(speech, 8)  # up to about 70 s: Serve notices the dead replica at its next health check (10 s)
    frames = x.size // CHUNK
    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if f"{APP}#VoiceConverter" in a["name"]]
    assert names, "no VoiceConverter replica actor found"

    async def run() -> tuple[np.ndarray, VoicePump, int]:
        pump = VoicePump(VoiceStream(parse_voice("disguise")), lambda c: voice_handle.convert.remote(c), deadline_s=0.25)
        pump.start()
        out: list[np.ndarray] = []
        converted_at_kill = -1
        pushed = 0
        for k in range(frames):
            pump.push(x[k * CHUNK : (k + 1) * CHUNK], k)
            pushed += 1
            if converted_at_kill >= 0 and pump.stream.counters.converted > converted_at_kill + 25:
                break  # conversion resumed on the replacement replica: enough
            if k == 60:
                converted_at_kill = pump.stream.counters.converted
                for actor in names:
                    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
            await asyncio.sleep(0.02)
            while not pump._out.empty():  # noqa: SLF001 - drain what is ready
                out.append((await pump.next_frame())[0])
        while len(out) < pushed:
            out.append((await asyncio.wait_for(pump.next_frame(), timeout=10.0))[0])
        await pump.close()
        return np.concatenate(out), pump, converted_at_kill

    out, pump, converted_at_kill = asyncio.run(run())
    counters = pump.stream.counters
    assert counters.fallbacks > 0 and pump.errors + pump.timeouts > 0, (counters, pump.errors, pump.timeouts)
    assert counters.converted > converted_at_kill > 0, "conversion did not resume on the replacement replica"
    assert counters.fallbacks + counters.converted == counters.chunks  # calls; each carries one or more frames
    x = x[: out.size]
    # No stretch of the returned audio is the sent voice: compare 0.5 s windows.
    lag = 1200
    for start in range(0, out.size - 24000, 24000):
        corr = _window_correlation(out[start : start + 24000], x[max(0, start - 2400) : start + 24000], lag + min(start, 2400))
        assert corr < 0.5, f"returned audio at {start / 48000:.1f} s correlates {corr:.2f} with the sent voice"
