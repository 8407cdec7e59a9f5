"""The per-session voice pump: order kept, frames grouped while a call is in flight, slow or failing
converters disguised locally, never the input."""

from __future__ import annotations

import asyncio

import numpy as np

from mirage.voice.config import OFF, parse_voice
from mirage.voice.convert import VoiceChunk, VoiceConverterCore, VoiceCoreConfig, VoiceResult
from mirage.voice.pump import VoicePump
from mirage.voice.stream import VoiceStream

CHUNK = 960
CORE = VoiceConverterCore(VoiceCoreConfig(rvc=False))


def voice_like(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 48000)) / 48000
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 48000
    return (0.1 * sum(np.sin(k * phase) / k for k in range(1, 25))).astype(np.float32)


async def _drive(pump: VoicePump, x: np.ndarray, period_s: float = 0.004) -> list[tuple[np.ndarray, int]]:
    pump.start()
    frames = x.size // CHUNK

    async def feed() -> None:
        for k in range(frames):
            pump.push(x[k * CHUNK : (k + 1) * CHUNK], k)
            await asyncio.sleep(period_s)

    feeder = asyncio.create_task(feed())
    out = [await asyncio.wait_for(pump.next_frame(), timeout=5.0) for _ in range(frames)]
    await feeder
    await pump.close()
    return out


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    best = 0.0
    for lag in range(0, 2400, 12):
        x, y = a[lag:], b[: b.size - lag]
        n = min(x.size, y.size)
        best = max(best, abs(float(np.dot(x[:n], y[:n]))) / (float(np.linalg.norm(x[:n]) * np.linalg.norm(y[:n])) or 1.0))
    return best


def test_frames_come_back_in_order_grouped_while_a_call_is_in_flight() -> None:
    calls: list[int] = []

    async def convert(chunk: VoiceChunk) -> VoiceResult:
        calls.append(chunk.samples.size // CHUNK)
        await asyncio.sleep(0.012)  # slower than the frame period: frames pile up and travel together
        return CORE.convert_batch([chunk])[0]

    x = voice_like(0.6)
    pump = VoicePump(VoiceStream(parse_voice("deep")), convert)
    out = asyncio.run(_drive(pump, x))
    assert [tag for _, tag in out] == list(range(len(out)))
    assert all(piece.size == CHUNK for piece, _ in out)
    assert max(calls) > 1 and sum(calls) == len(out)
    # grouping changes nothing: the result equals one stream of 20 ms calls
    stream, expected = VoiceStream(parse_voice("deep")), []
    for k in range(len(out)):
        chunk = stream.request(x[k * CHUNK : (k + 1) * CHUNK])
        assert chunk is not None
        expected.append(stream.accept(chunk, CORE.convert_batch([chunk])[0]))
    np.testing.assert_allclose(np.concatenate([p for p, _ in out]), np.concatenate(expected), atol=1e-4)
    assert pump.delay_ms > 25.0


def test_a_dead_or_late_converter_never_lets_the_voice_through() -> None:
    async def dead(chunk: VoiceChunk) -> VoiceResult:
        raise ConnectionError("replica died")

    async def late(chunk: VoiceChunk) -> VoiceResult:
        await asyncio.sleep(1.0)
        return CORE.convert_batch([chunk])[0]

    x = voice_like(0.5)
    for convert, counter in ((dead, "errors"), (late, "timeouts")):
        pump = VoicePump(VoiceStream(parse_voice("disguise")), convert, deadline_s=0.02)
        out = np.concatenate([p for p, _ in asyncio.run(_drive(pump, x))])
        assert getattr(pump, counter) > 0 and pump.stats()[counter] == getattr(pump, counter)
        assert pump.stream.counters.fallbacks == pump.stream.counters.chunks
        assert np.max(np.abs(out)) > 0.01 and _corr(out, x) < 0.5


def test_voice_off_passes_frames_through_without_calls() -> None:
    async def never(chunk: VoiceChunk) -> VoiceResult:
        raise AssertionError("no call when the voice is off")

    x = voice_like(0.2)
    out = asyncio.run(_drive(VoicePump(VoiceStream(OFF), never), x))
    np.testing.assert_array_equal(np.concatenate([p for p, _ in out]), x[: len(out) * CHUNK])


def test_with_slack_the_pump_gathers_frames_into_fewer_calls_in_order() -> None:
    """``gather_s``: the oldest frame may wait that long before its call, so one call carries several."""
    x = voice_like(1.0)
    calls: list[int] = []

    async def convert(chunk: VoiceChunk) -> VoiceResult:
        calls.append(chunk.samples.size // CHUNK)
        return (await asyncio.to_thread(CORE.convert_batch, [chunk]))[0]

    def run(gather: float | None) -> list[tuple[np.ndarray, int]]:
        calls.clear()
        stream = VoiceStream(parse_voice("disguise"))
        pump = VoicePump(stream, convert, deadline_s=1.0, gather_s=(lambda: gather) if gather is not None else None)
        return asyncio.run(_drive(pump, x, period_s=0.02))

    plain = run(None)
    plain_calls = len(calls)
    gathered = run(0.1)
    assert [tag for _, tag in gathered] == list(range(x.size // CHUNK))  # in order, none lost
    assert len(calls) <= plain_calls / 3 and max(calls) >= 4, (plain_calls, calls)
    # The same stream state chained through bigger chunks: the same disguised audio.
    a = np.concatenate([s for s, _ in plain])
    b = np.concatenate([s for s, _ in gathered])
    assert np.allclose(a, b, atol=1e-4)
