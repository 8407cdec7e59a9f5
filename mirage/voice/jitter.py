"""An audio jitter buffer that hands each Opus packet to the decoder as soon as it arrives.

aiortc 1.16's receiver keeps audio in a ``JitterBuffer(capacity=16, prefetch=4)``:
a packet is decoded only once four later ones are in, so every received
audio frame waits 60-80 ms. Neither of our receivers plays audio out on a
clock that buffer would protect: the ingress re-times the voice itself
(:class:`~mirage.voice.track.VoiceTrack` releases each frame at its arrival +
the session's A/V hold) and the clients hand what arrives to a player that has
its own buffer (a browser's NetEq). Measured through a served session on
loopback, the two buffers made the returned audio 160 ms later than the video
(docs/voice.md, "In sync").

Every audio packet is one frame, so it is complete on arrival. A packet older
than the newest one handed on (reordered, or a duplicate) is dropped: the
decoder never goes backwards; a lost packet is a lost frame, as with the stock
buffer once it gives up waiting.
"""

from __future__ import annotations

import logging
from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

logger = logging.getLogger(__name__)

#: The private attribute aiortc 1.16's RTCRtpReceiver keeps its jitter buffer in.
_RECEIVER_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"


class ImmediateAudioJitterBuffer(JitterBuffer):
    """Audio packets out in arrival order, each at once; older ones dropped."""

    def __init__(self) -> None:
        super().__init__(capacity=16)
        self._last: int | None = None
        self.reordered = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._last is not None:
            ahead = uint16_add(seq, -self._last)
            if ahead == 0 or ahead >= 0x8000:  # a duplicate, or behind the newest handed on
                self.reordered += 1
                return False, None
        self._last = seq
        return False, JitterFrame(data=getattr(packet, "_data", b""), timestamp=packet.timestamp)


def use_immediate_audio(receiver: Any) -> bool:
    """Give an aiortc audio receiver the immediate buffer; False (stock buffer kept) where aiortc differs."""
    current = getattr(receiver, _RECEIVER_ATTRIBUTE, None)
    if not isinstance(current, JitterBuffer) or current._is_video:
        logger.warning("this aiortc keeps no audio jitter buffer where expected; the stock one stays (60-80 ms more)")
        return False
    setattr(receiver, _RECEIVER_ATTRIBUTE, ImmediateAudioJitterBuffer())
    return True
