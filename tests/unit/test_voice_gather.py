"""One converter call for the chunks of several sessions (mirage.voice.gather)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mirage.voice.config import parse_voice
from mirage.voice.convert import VoiceChunk, VoiceResult
from mirage.voice.gather import ChunkGatherer


def _chunk(value: float) -> VoiceChunk:
    return VoiceChunk(np.full(960, value, np.float32), parse_voice("disguise"))


class Converter:
    """Answers each chunk with its samples doubled; records the calls it got."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.fail = fail

    async def __call__(self, chunks: list[VoiceChunk]) -> list[VoiceResult]:
        self.calls.append(len(chunks))
        await asyncio.sleep(0.005)
        if self.fail:
            raise ConnectionError("replica gone")
        return [VoiceResult(samples=c.samples * 2.0, converter="dsp") for c in chunks]


def test_a_session_alone_is_sent_at_once() -> None:
    async def run() -> float:
        converter = Converter()
        convert = ChunkGatherer(converter, window_s=0.5).member()
        loop = asyncio.get_running_loop()
        start = loop.time()
        for k in range(3):
            result = await convert(_chunk(k))
            assert float(result.samples[0]) == 2.0 * k
        assert converter.calls == [1, 1, 1]
        return loop.time() - start

    assert asyncio.run(run()) < 0.4  # never waited for the 0.5 s window


def test_sessions_fall_into_step_and_share_one_call() -> None:
    async def session(convert, value: float, offset: float, rounds: int) -> list[float]:  # type: ignore[no-untyped-def]
        await asyncio.sleep(offset)
        got = []
        for _ in range(rounds):
            got.append(float((await convert(_chunk(value))).samples[0]))
            await asyncio.sleep(0.01)  # the next frames arrive
        return got

    async def run() -> list[int]:
        converter = Converter()
        gatherer = ChunkGatherer(converter, window_s=0.03)
        members = [gatherer.member() for _ in range(3)]
        results = await asyncio.gather(*(session(m, float(i), 0.004 * i, 8) for i, m in enumerate(members)))
        assert results == [[2.0 * i] * 8 for i in range(3)]  # each session its own answers, in order
        return converter.calls

    calls = asyncio.run(run())
    assert sum(calls) == 24
    # The first session calls alone (the others have not called yet), then all three share every call
    # (the first is a round ahead, so the last round has two).
    assert calls[0] == 1 and set(calls[1:-1]) == {3}, calls
    assert len(calls) <= 10, calls


def test_a_failed_call_fails_every_chunk_in_it_and_a_late_session_does_not_break_the_others() -> None:
    async def run() -> None:
        gatherer = ChunkGatherer(Converter(fail=True), window_s=0.05)
        a, b = gatherer.member(), gatherer.member()
        first = asyncio.ensure_future(a(_chunk(1.0)))
        second = asyncio.ensure_future(b(_chunk(2.0)))
        for task in (first, second):
            with pytest.raises(ConnectionError):
                await task
        ok = ChunkGatherer(Converter(), window_s=0.05)
        c, d = ok.member(), ok.member()
        await c(_chunk(0.0))
        await d(_chunk(0.0))  # both are active members now
        late = asyncio.ensure_future(c(_chunk(3.0)))
        await asyncio.sleep(0.001)
        late.cancel()  # its deadline passed: the pump gave up on it
        result = await asyncio.wait_for(d(_chunk(4.0)), 1.0)
        assert float(result.samples[0]) == 8.0

    asyncio.run(run())
