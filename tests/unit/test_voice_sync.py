"""The A/V hold (mirage.voice.sync) and the immediate audio jitter buffer (mirage.voice.jitter)."""

from __future__ import annotations

import pytest
from aiortc.rtp import RtpPacket

from mirage.voice.jitter import ImmediateAudioJitterBuffer, use_immediate_audio
from mirage.voice.sync import AvSync, SyncConfig


def _sync(audio_ms: float = 40.0, algorithmic_ms: float = 25.0, **kw: float | bool) -> AvSync:
    return AvSync(lambda: audio_ms, lambda: algorithmic_ms, SyncConfig(**kw))  # type: ignore[arg-type]


def test_the_audio_waits_for_the_video_less_the_converter_latency() -> None:
    sync = _sync()
    assert sync.next_hold_s() == 0.0  # no video yet: nothing to wait for
    for i in range(50):
        sync.video_sent(arrived=i * 0.033, taken=i * 0.033 + 0.120)
    sync.sender_busy(10.0)
    assert sync.video_ms == pytest.approx(121.0, abs=0.1)  # 120 + a tenth of the 10 ms encode so far
    assert sync.target_hold_ms() == pytest.approx(121.0 - 25.0, abs=0.1)
    assert sync.video_hold_ms == 0.0
    stats = sync.stats()
    assert set(stats) == {"video_path_ms", "audio_path_ms", "av_hold_ms", "av_skew_ms", "video_hold_needed_ms"}
    sync.audio_sent(arrived=1.0, taken=1.0 + 0.096)  # held as asked: 96 + 25 ms against the video's 121
    assert sync.skew_ms == pytest.approx(0.0, abs=0.2)
    for _ in range(100):
        sync.audio_sent(arrived=2.0, taken=2.0 + 0.2)  # a starved sender: 79 ms late
    assert sync.skew_ms == pytest.approx(200 + 25 - 121, abs=0.5)
    for _ in range(100):
        sync.audio_sender_busy(30.0)  # the audio sender waits 30 ms a frame for the thread pool
    assert sync.target_hold_ms() == pytest.approx(121.0 - 25.0 - 30.0, abs=0.2)


def test_the_hold_glides_at_most_one_ms_a_frame_and_is_capped() -> None:
    sync = _sync(algorithmic_ms=0.0, max_hold_ms=300.0)
    sync.video_sent(0.0, 0.05)
    first = sync.next_hold_s()
    assert first == pytest.approx(0.05)
    for i in range(200):
        sync.video_sent(i * 0.033, i * 0.033 + 1.0)  # the video path jumps to 1 s
    holds = [sync.next_hold_s() for _ in range(400)]
    steps = [b - a for a, b in zip([first, *holds], holds)]
    assert max(abs(s) for s in steps) <= 0.001 + 1e-9  # no jump: never more than 1 ms per frame
    assert holds[-1] == pytest.approx(0.3)  # capped at 300 ms


def test_a_longer_voice_path_asks_the_video_to_wait_and_disabled_holds_nothing() -> None:
    sync = _sync(audio_ms=150.0)
    sync.video_sent(0.0, 0.06)
    assert sync.video_hold_ms == pytest.approx(90.0)
    off = _sync(enabled=False)
    off.video_sent(0.0, 0.2)
    assert off.next_hold_s() == 0.0


def test_a_bad_config_is_refused() -> None:
    with pytest.raises(ValueError):
        SyncConfig(slew_ms=0.0)


def _packet(seq: int) -> RtpPacket:
    packet = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=seq * 960)
    packet._data = bytes([seq % 256])  # type: ignore[attr-defined]
    return packet


def test_audio_packets_go_to_the_decoder_at_once_and_never_backwards() -> None:
    buffer = ImmediateAudioJitterBuffer()
    out = []
    for seq in [65533, 65534, 65535, 0, 2, 1, 2, 3]:  # wraps, one reordered, one duplicate
        _, frame = buffer.add(_packet(seq))
        out.append(None if frame is None else frame.timestamp // 960 % 65536)
    assert out == [65533, 65534, 65535, 0, 2, None, None, 3]
    assert buffer.reordered == 2


def test_use_immediate_audio_replaces_an_aiortc_audio_receivers_buffer_only() -> None:
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    class _Transport:
        state = "new"
        transport = None

        def _register_rtp_receiver(self, *a: object) -> None: ...

    audio = RTCRtpReceiver("audio", _Transport())  # type: ignore[arg-type]
    assert use_immediate_audio(audio)
    assert isinstance(audio._RTCRtpReceiver__jitter_buffer, ImmediateAudioJitterBuffer)  # type: ignore[attr-defined]
    video = RTCRtpReceiver("video", _Transport())  # type: ignore[arg-type]
    assert not use_immediate_audio(video)
