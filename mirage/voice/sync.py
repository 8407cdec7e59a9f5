"""Lip sync in the ingress: both paths' delays per session, and the hold that makes the shorter one wait.

The two delays a session's media take through this replica, each measured
(not added up from estimates):

- the video path: from a camera frame's arrival (decoded) to the moment the
  sender has it encoded and on the wire: ``video_sent(arrived, taken)`` when
  aiortc's sender takes a frame, plus the sender's time per frame (encoding)
  measured from one take to the next request;
- the voice path: chunking, the converter call and buffering (the pump's
  push-to-ready delay, smoothed) plus the converter's algorithmic latency (its
  output lags its input by that much whenever it is released).

The audio is released at ``arrival + hold`` where ``hold`` follows
``video - algorithmic latency - the audio sender's own time`` (encoding, and
waiting for aiortc's thread pool, which the video's work shares; the audio
then carries the content the video carries at the same moment), bounded by ``max_hold_ms`` and never earlier than
the conversion allows. The hold changes by at most ``slew_ms`` per frame: the
sample stream is never cut or padded, only its release times glide, which a
receiver's jitter buffer absorbs (no clicks, no gaps). When the voice path is
the longer one, ``video_hold_ms`` says by how much the video would have to
wait (reported; the audio path is normally the shorter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class SyncConfig:
    #: Never hold the audio longer than this (a stalled video must not stall the voice).
    max_hold_ms: float = 300.0
    #: Largest change of the hold from one 20 ms frame to the next.
    slew_ms: float = 1.0
    #: Smoothing of the measured video delay (weight of a new frame).
    video_alpha: float = 0.1
    #: Hold the audio at all (False: pass-through timing, the "before" of docs/voice.md).
    enabled: bool = True

    def __post_init__(self) -> None:
        if not (0.0 <= self.max_hold_ms <= 1000.0 and self.slew_ms > 0.0 and 0.0 < self.video_alpha <= 1.0):
            raise ValueError("A/V sync: max_hold_ms 0-1000, slew_ms > 0, video_alpha in (0, 1]")


class AvSync:
    """One session's A/V alignment. ``audio_path_ms`` is the voice path's delay (the pump's ``delay_ms``)."""

    def __init__(self, audio_path_ms: Callable[[], float], algorithmic_ms: Callable[[], float],
                 config: SyncConfig = SyncConfig()) -> None:
        self.config = config
        self._audio_path_ms = audio_path_ms
        self._algorithmic_ms = algorithmic_ms
        self._video_ms: float | None = None
        self._encode_ms = 0.0
        self._hold_ms: float | None = None
        self._audio_wire_ms: float | None = None
        self._audio_encode_ms = 0.0

    # --- the video path -------------------------------------------------------------
    def video_sent(self, arrived: float, taken: float) -> None:
        """A frame that arrived at ``arrived`` was taken by the sender at ``taken`` (monotonic s)."""
        delay = max((taken - arrived) * 1000.0, 0.0)
        a = self.config.video_alpha
        self._video_ms = delay if self._video_ms is None else self._video_ms + a * (delay - self._video_ms)

    def sender_busy(self, busy_ms: float) -> None:
        """How long the sender took with the last frame (take to next request: encoding, packetising)."""
        if 0.0 <= busy_ms < 1000.0:
            self._encode_ms += self.config.video_alpha * (busy_ms - self._encode_ms)

    @property
    def video_ms(self) -> float:
        """Smoothed delay of the video path, arrival to on the wire (0 before any frame)."""
        return (self._video_ms or 0.0) + self._encode_ms

    @property
    def audio_ms(self) -> float:
        """The voice path's own delay (chunking, converter call, buffering, algorithmic latency)."""
        return float(self._audio_path_ms())

    def audio_sent(self, arrived: float, taken: float) -> None:
        """An audio frame that arrived at ``arrived`` was taken by the sender at ``taken`` (hold included)."""
        delay = max((taken - arrived) * 1000.0, 0.0) + float(self._algorithmic_ms())
        a = self.config.video_alpha
        self._audio_wire_ms = delay if self._audio_wire_ms is None else self._audio_wire_ms + a * (delay - self._audio_wire_ms)

    def audio_sender_busy(self, busy_ms: float) -> None:
        """How long the audio sender took with the last frame (take to next request: queueing for
        aiortc's thread pool, encoding, sending): the voice leaves that much after its release."""
        if 0.0 <= busy_ms < 1000.0:
            self._audio_encode_ms += self.config.video_alpha * (busy_ms - self._audio_encode_ms)

    @property
    def skew_ms(self) -> float:
        """The voice's delay to the wire (hold and converter latency included) minus the video's: what is
        left of the A/V offset at this end (positive: the audio leaves late, e.g. a starved audio sender)."""
        if self._audio_wire_ms is None or self._video_ms is None:
            return 0.0
        return self._audio_wire_ms + self._audio_encode_ms - self.video_ms

    # --- the hold ---------------------------------------------------------------------
    def target_hold_ms(self) -> float:
        if not self.config.enabled or self._video_ms is None:
            return 0.0
        own = float(self._algorithmic_ms()) + self._audio_encode_ms
        return min(max(self.video_ms - own, 0.0), self.config.max_hold_ms)

    def next_hold_s(self) -> float:
        """The release offset (s after arrival) for the next audio frame: toward the target, gliding."""
        target = self.target_hold_ms()
        if self._hold_ms is None:
            self._hold_ms = target
        else:
            step = self.config.slew_ms
            self._hold_ms += min(max(target - self._hold_ms, -step), step)
        return self._hold_ms / 1000.0

    @property
    def hold_ms(self) -> float:
        return self._hold_ms or 0.0

    @property
    def video_hold_ms(self) -> float:
        """How much later the video would have to leave for the voice to catch up (0: the audio waits)."""
        return min(max(self.audio_ms - self.video_ms, 0.0), self.config.max_hold_ms)

    def stats(self) -> dict[str, float]:
        return {
            "video_path_ms": round(self.video_ms, 1),
            "audio_path_ms": round(self.audio_ms, 1),
            "av_hold_ms": round(self.hold_ms, 1),
            "av_skew_ms": round(self.skew_ms, 1),
            "video_hold_needed_ms": round(self.video_hold_ms, 1),
        }
