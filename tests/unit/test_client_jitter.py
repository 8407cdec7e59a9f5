"""The marker-bit jitter buffer releases each frame on its last packet, and never a broken one."""

from __future__ import annotations

import fractions

import av
from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from mirage.client.jitter import MarkerJitterBuffer
from mirage.client.sources import astronaut_source
from mirage.client.stamp import read_stamp, stamp


def _packets(count: int) -> list[list[RtpPacket]]:
    """``count`` stamped 640x480 frames encoded and packetized by aiortc's VP8 encoder."""
    source = astronaut_source()
    encoder = Vp8Encoder()
    frames: list[list[RtpPacket]] = []
    sequence = 1000
    for index in range(count):
        frame = av.VideoFrame.from_ndarray(stamp(source.frame(index), index), format="bgr24")
        frame.pts = index * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        payloads, timestamp = encoder.encode(frame, force_keyframe=index == 0)
        packets = []
        for position, payload in enumerate(payloads):
            packet = RtpPacket(payload_type=96, marker=int(position == len(payloads) - 1), sequence_number=sequence,
                               timestamp=timestamp, payload=payload)
            packet._data = vp8_depayload(payload)  # what RTCRtpReceiver does before its jitter buffer
            packets.append(packet)
            sequence += 1
        frames.append(packets)
    return frames


def test_marker_releases_each_frame_on_its_last_packet() -> None:
    frames = _packets(4)
    assert len(frames[0]) > 1  # a keyframe spans several packets
    marker, stock = MarkerJitterBuffer(capacity=512, is_video=True), JitterBuffer(capacity=512, is_video=True)
    decoder = Vp8Decoder()
    for index, packets in enumerate(frames):
        for position, packet in enumerate(packets):
            _, early = marker.add(packet)
            _, late = stock.add(packet)
            if position < len(packets) - 1:
                assert early is None
            else:
                assert early is not None and early.timestamp == packet.timestamp
                decoded = decoder.decode(early)
                assert read_stamp(decoded[0].to_ndarray(format="bgr24")) == index
            # The stock buffer hands out frame n only with frame n+1's first packet.
            if position == 0 and index > 0:
                assert late is not None and late.timestamp == frames[index - 1][0].timestamp
            elif position > 0:
                assert late is None


def test_missing_packet_holds_the_frame_back() -> None:
    frames = _packets(2)
    buffer = MarkerJitterBuffer(capacity=512, is_video=True)
    first = frames[0]
    for packet in first[:1] + first[2:]:  # the second packet is lost
        _, frame = buffer.add(packet)
        assert frame is None
    # The next frame's packets do not release the broken frame either.
    for packet in frames[1]:
        _, frame = buffer.add(packet)
        assert frame is None


def test_installed_on_real_video_receivers_only() -> None:
    import asyncio

    from aiortc import RTCPeerConnection

    from mirage.client.jitter import use_marker_frames

    async def run() -> None:
        pc = RTCPeerConnection()
        try:
            video = pc.addTransceiver("video").receiver
            audio = pc.addTransceiver("audio").receiver
            assert use_marker_frames(video)
            assert isinstance(video._RTCRtpReceiver__jitter_buffer, MarkerJitterBuffer)
            assert not use_marker_frames(audio)
            assert type(audio._RTCRtpReceiver__jitter_buffer) is JitterBuffer
            assert not use_marker_frames(object())
        finally:
            await pc.close()

    asyncio.run(run())
