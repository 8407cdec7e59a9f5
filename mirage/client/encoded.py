"""A stamped clip encoded to VP8 once, so many sessions can replay it without encoding.

A live session encodes every frame it sends with libvpx (about a third of a
core per 640x480 30 fps session), which on a small box competes with the
server the load generator is measuring. :func:`encode_clip` encodes the first
``period`` frames of a source once, frame ``i`` stamped with ``i``;
:class:`~mirage.client.tracks.PreEncodedVideoTrack` then hands the packets to
aiortc, which only packetizes them. The stamps therefore cycle with ``period``
instead of the stamp's 16-bit modulus; the session's ledger and unwrapping
follow the stream's period.

Only frame 0 is a keyframe: the loop restarts on it, and a receiver that loses
a packet recovers at the next loop (the replay cannot answer a keyframe
request, unlike a live encoder).
"""

from __future__ import annotations

import fractions
from dataclasses import dataclass
from itertools import islice
from typing import Any

import av

from mirage.client.sources import VideoSource
from mirage.client.stamp import MODULUS, stamp
from mirage.video import bgr_to_video_frame

#: Default loop length: 10 s at 30 fps.
DEFAULT_PERIOD = 300
#: Default bitrate (CBR), within aiortc's own 250 kbps - 1.5 Mbps range.
DEFAULT_BITRATE = 1_000_000


@dataclass(frozen=True)
class EncodedClip:
    """The VP8 frames of one stamped loop: ``packets[i]`` carries stamp ``i``; ``packets[0]`` is a keyframe."""

    packets: tuple[bytes, ...]
    size: tuple[int, int]  # (width, height)
    fps: float

    def __post_init__(self) -> None:
        if not 1 <= len(self.packets) <= MODULUS:
            raise ValueError(f"an encoded clip needs 1 to {MODULUS} frames (got {len(self.packets)})")

    @property
    def period(self) -> int:
        """Frames in the loop (the stamps cycle with it)."""
        return len(self.packets)


def encode_clip(source: VideoSource, period: int = DEFAULT_PERIOD, bitrate: int = DEFAULT_BITRATE) -> EncodedClip:
    """Encode the first ``period`` frames of ``source``, stamped 0..period-1, to VP8.

    The settings follow aiortc's live ``Vp8Encoder`` (realtime, cpu-used -6, no
    lag, CBR), so the server sees the stream a live client would send. Blocking
    (seconds for 300 frames at 640x480): run it in a worker thread.
    """
    if not 1 <= period <= MODULUS:
        raise ValueError(f"period must be between 1 and {MODULUS} (got {period})")
    width, height = source.size
    fps = float(source.fps)
    rate = fractions.Fraction(fps).limit_denominator(1001)
    codec = av.CodecContext.create("libvpx", "w")
    codec.width = width
    codec.height = height
    codec.pix_fmt = "yuv420p"
    codec.framerate = rate
    codec.time_base = 1 / rate
    codec.bit_rate = bitrate
    codec.gop_size = period  # kf_max_dist: no keyframe but the first one within the loop
    codec.qmin = 2
    codec.qmax = 56
    codec.thread_count = 1
    codec.options = {
        "bufsize": str(bitrate),
        "cpu-used": "-6",
        "deadline": "realtime",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "noise-sensitivity": "4",
        "overshoot-pct": "15",
        "partitions": "0",
        "static-thresh": "1",
        "undershoot-pct": "100",
    }
    packets: list[av.Packet[Any]] = []
    for number, image in enumerate(islice(source.frames(), period)):
        frame = bgr_to_video_frame(stamp(image, number)).reformat(format="yuv420p")
        frame.pts = number
        frame.time_base = codec.time_base
        packets.extend(codec.encode(frame))
    packets.extend(codec.encode(None))
    if len(packets) != period:
        raise ValueError(f"the VP8 encoder returned {len(packets)} packets for {period} frames")
    if not packets[0].is_keyframe:
        raise ValueError("the VP8 encoder did not start the clip with a keyframe")
    return EncodedClip(tuple(bytes(p) for p in packets), (width, height), fps)
