"""The pre-encoded VP8 clip of the load client: encoding, replay track, stamp period, and aiortc's acceptance."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from mirage.client.encoded import EncodedClip, encode_clip
from mirage.client.load import add_load_parser, clip_period
from mirage.client.session import ClientConfig, MirageSession, SessionStats
from mirage.client.sources import ArraySource, astronaut_source
from mirage.client.stamp import MODULUS, frame_distance, read_stamp
from mirage.client.tracks import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE, PreEncodedVideoTrack, SendLedger
from mirage.types import Image

WIDTH, HEIGHT = 320, 240  # the narrowest common size the 288 px stamp fits
PERIOD = 40


@pytest.fixture(scope="module")
def clip() -> EncodedClip:
    return encode_clip(astronaut_source(WIDTH, HEIGHT, 30.0), period=PERIOD)


def _stamps(frames: list[av.VideoFrame]) -> list[int | None]:
    return [read_stamp(f.to_ndarray(format="bgr24"), sender_width=WIDTH) for f in frames]


def _decode(packets: list[bytes]) -> list[av.VideoFrame]:
    decoder = av.CodecContext.create("libvpx", "r")
    frames: list[av.VideoFrame] = []
    for data in packets:
        frames.extend(decoder.decode(av.Packet(data)))
    return frames


def test_every_encoded_frame_reads_back_its_stamp(clip: EncodedClip) -> None:
    assert clip.period == PERIOD and clip.size == (WIDTH, HEIGHT) and clip.fps == 30.0
    frames = _decode(list(clip.packets))
    assert [(f.width, f.height) for f in frames] == [(WIDTH, HEIGHT)] * PERIOD
    assert _stamps(frames) == list(range(PERIOD))


def test_the_loop_starts_on_a_keyframe(clip: EncodedClip) -> None:
    # VP8 frame tag, bit 0 of the first byte: 0 = keyframe.
    assert clip.packets[0][0] & 1 == 0
    assert all(p[0] & 1 == 1 for p in clip.packets[1:])  # gop = period: one keyframe per loop
    # A decoder joining at frame 0 needs nothing before it ...
    assert _stamps(_decode([clip.packets[0]])) == [0]
    # ... but not at an inter frame.
    with pytest.raises(av.error.InvalidDataError):
        _decode([clip.packets[1]])
    # Replaying the loop restarts cleanly on the keyframe.
    assert _stamps(_decode(list(clip.packets) + list(clip.packets[:3]))) == list(range(PERIOD)) + [0, 1, 2]


def test_encode_clip_rejects_a_bad_period() -> None:
    source = ArraySource([np.zeros((HEIGHT, WIDTH, 3), np.uint8)])
    for period in (0, MODULUS + 1):
        with pytest.raises(ValueError, match="period"):
            encode_clip(source, period=period)


def test_pre_encoded_track_paces_and_records(clip: EncodedClip) -> None:
    count, fps = PERIOD + 5, 100.0

    async def run() -> tuple[list[av.Packet], float, PreEncodedVideoTrack]:
        track = PreEncodedVideoTrack(clip, fps=fps)
        started = time.monotonic()
        packets = [await track.recv() for _ in range(count)]
        elapsed = time.monotonic() - started
        track.stop()
        return packets, elapsed, track

    packets, elapsed, track = asyncio.run(run())
    assert (count - 1) / fps * 0.95 < elapsed < 5.0
    assert all(isinstance(p, av.Packet) for p in packets)
    assert [p.pts for p in packets] == [round(n * VIDEO_CLOCK_RATE / fps) for n in range(count)]
    assert all(p.time_base == VIDEO_TIME_BASE for p in packets)
    assert [bytes(p) for p in packets] == [clip.packets[n % PERIOD] for n in range(count)]
    ledger = track.ledger
    assert ledger.period == PERIOD and ledger.count == count and ledger.last_number == count - 1
    times = [ledger.sent_at(n) for n in range(PERIOD)]
    assert all(t is not None for t in times)
    # Stamps 0..4 went out twice: the ledger holds the second (latest) sending.
    assert times[5:] == sorted(times[5:]) and times[4] > times[-1]
    assert ledger.sent_at(PERIOD + 2) == times[2]


def test_pre_encoded_track_needs_a_ledger_of_its_period(clip: EncodedClip) -> None:
    with pytest.raises(ValueError, match="period"):
        PreEncodedVideoTrack(clip, ledger=SendLedger())


def test_ledger_and_distance_wrap_at_the_period() -> None:
    ledger = SendLedger(300)
    ledger.record(301, 12.5)
    assert ledger.sent_at(1) == 12.5 and ledger.sent_at(301) == 12.5 and ledger.sent_at(2) is None
    assert SendLedger().period == MODULUS
    with pytest.raises(ValueError):
        SendLedger(0)
    assert frame_distance(1, 299, 300) == 2
    assert frame_distance(1, 299) == MODULUS - 298  # the live default is unchanged


def _dummy_clip(period: int, size: tuple[int, int] = (640, 480)) -> EncodedClip:
    return EncodedClip(tuple(b"" for _ in range(period)), size, 30.0)


def test_session_unwraps_a_pre_encoded_stream_at_its_period() -> None:
    session = MirageSession(ClientConfig("http://127.0.0.1:1", b"x", astronaut_source(), encoded=_dummy_clip(300)))
    assert session.ledger.period == 300
    values = [298, 299, 0, 1, 299, 3, 150, 151]
    assert [session._unwrap(v) for v in values] == [298, 299, 300, 301, 299, 303, 450, 451]
    # Drops are counted across the loop's wrap: 297, 298, 0 (→ 300), 2 (→ 302).
    stats = SessionStats()
    fresh = MirageSession(ClientConfig("http://127.0.0.1:1", b"x", astronaut_source(), encoded=_dummy_clip(300)))
    for value in (297, 298, 0, 2):
        stats.observe_number(fresh._unwrap(value))
    assert stats.dropped == 2  # 299 and 301
    live = MirageSession(ClientConfig("http://127.0.0.1:1", b"x", astronaut_source()))
    assert live.ledger.period == MODULUS and [live._unwrap(v) for v in (299, 0)] == [299, 0]


def test_client_config_refuses_a_clip_of_another_size() -> None:
    with pytest.raises(ValueError, match="encode this source"):
        ClientConfig("http://127.0.0.1:1", b"x", astronaut_source(), encoded=_dummy_clip(10, (320, 240)))


class _EndlessGrey:
    """A source that does not know its loop length (like a video file)."""

    size = (WIDTH, HEIGHT)
    fps = 30.0

    def frames(self) -> Iterator[Image]:
        while True:
            yield np.full((HEIGHT, WIDTH, 3), 128, np.uint8)


def test_clip_period_keeps_the_source_loop_seamless() -> None:
    assert clip_period(astronaut_source(WIDTH, HEIGHT, 30.0), 30.0) == 240  # 4 s loops: 2 of them
    frames = [np.zeros((HEIGHT, WIDTH, 3), np.uint8)] * 7
    assert clip_period(ArraySource(frames), 30.0) % 7 == 0
    assert clip_period(ArraySource(frames * 100), 30.0) == 300  # a loop longer than 10 s is cut
    assert clip_period(_EndlessGrey(), 25.0) == 250


def test_load_cli_encodes_once_by_default() -> None:
    parser = argparse.ArgumentParser()
    add_load_parser(parser.add_subparsers(dest="command"))
    base = ["load", "--url", "http://127.0.0.1:1", "--reference", "r.jpg", "--json", "out.json"]
    assert parser.parse_args(base).encode == "once"
    assert parser.parse_args(base + ["--encode", "live"]).encode == "live"
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--encode", "twice"])


def test_aiortc_sends_the_pre_encoded_packets(clip: EncodedClip) -> None:
    """A sender and a receiver peer connection over loopback: the receiver decodes the replayed stamps."""
    count = PERIOD + 10  # across one wrap of the loop

    async def run() -> list[int | None]:
        sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tracks: asyncio.Queue = asyncio.Queue()
        receiver.on("track", tracks.put_nowait)
        sender.addTransceiver(PreEncodedVideoTrack(clip, fps=60.0), direction="sendonly")
        try:
            await sender.setLocalDescription(await sender.createOffer())
            await receiver.setRemoteDescription(sender.localDescription)
            await receiver.setLocalDescription(await receiver.createAnswer())
            await sender.setRemoteDescription(receiver.localDescription)
            remote = await asyncio.wait_for(tracks.get(), 10)
            return _stamps([await asyncio.wait_for(remote.recv(), 10) for _ in range(count)])
        finally:
            await sender.close()
            await receiver.close()

    stamps = asyncio.run(asyncio.wait_for(run(), 30))
    assert None not in stamps
    first = stamps[0]
    assert first is not None
    assert stamps == [(first + i) % PERIOD for i in range(count)]
