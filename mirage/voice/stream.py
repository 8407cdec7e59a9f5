"""One session's voice in the ingress: chunking, the state that travels, and the privacy-first fallback.

The served path, per session (see docs/voice.md for the wiring)::

    stream = VoiceStream(defaults.initial_selection(), fallback=defaults.fallback)
    for each decoded 20 ms frame:
        mono = frame_to_mono(frame.to_ndarray(), channels)
        chunk = stream.request(mono)              # None: voice off, send ``mono`` as is
        try:
            result = await wait_for(handle.convert.remote(chunk), deadline)
            out = stream.accept(chunk, result)     # converted, state kept for the next chunk
        except (TimeoutError, RayError):
            out = stream.fallback(chunk)           # disguised locally (or muted): never the real voice

One chunk per session is in flight at a time (each state follows from the
previous reply), which a 20 ms chunk converted in a few ms allows. For the DSP
disguise the local fallback continues from the same state, so a failed call is
seamless; for RVC it runs a preset close to the RVC voice's pitch. Every
fallback and mute is counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mirage.voice.config import OFF, VoiceParams, VoiceSelection
from mirage.voice.convert import VoiceChunk, VoiceResult
from mirage.voice.dsp import DspState, DspVoiceConverter

logger = logging.getLogger(__name__)


@dataclass
class VoiceCounters:
    chunks: int = 0
    converted: int = 0
    fallbacks: int = 0
    muted: int = 0
    resets: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class VoiceStream:
    """The voice state of one session (owned by the ingress replica that owns the session)."""

    def __init__(
        self,
        selection: VoiceSelection = OFF,
        fallback: Literal["local", "mute"] = "local",
        local: DspVoiceConverter | None = None,
    ) -> None:
        self._local = local or DspVoiceConverter()
        self._fallback = fallback
        self._selection = selection
        self._state: bytes | None = None
        self._local_state: DspState | None = None
        self._seq = 0
        self.counters = VoiceCounters()

    @property
    def selection(self) -> VoiceSelection:
        return self._selection

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency of the current voice (the A/V alignment adds it to the audio path)."""
        if self._selection.kind == "rvc":
            from mirage.voice.rvc import RvcConfig

            return RvcConfig(sample_rate=self._local.config.sample_rate).latency_ms
        return 0.0 if self._selection.kind == "off" else self._local.latency_ms

    def set_selection(self, selection: VoiceSelection) -> None:
        """A new voice; a change of converter restarts the stream (a DSP parameter change does not)."""
        same_converter = (selection.kind, selection.rvc_model) == (self._selection.kind, self._selection.rvc_model)
        self._selection = selection
        if not same_converter:
            self._state = None
            self._local_state = None

    def request(self, samples: np.ndarray) -> VoiceChunk | None:
        """The chunk to send (``None`` when the voice is off: the samples go out as they are)."""
        self.counters.chunks += 1
        if self._selection.kind == "off":
            return None
        self._seq += 1
        return VoiceChunk(np.asarray(samples, np.float32), self._selection, self._state, self._seq)

    def accept(self, chunk: VoiceChunk, result: VoiceResult) -> np.ndarray:
        """The converted samples of ``chunk``; an error reply falls back like a failed call."""
        if not result.ok or result.samples is None or result.samples.size != chunk.samples.size:
            return self.fallback(chunk)
        self._state = result.state
        if result.reset:
            self.counters.resets += 1
        self.counters.converted += 1
        return result.samples

    def fallback(self, chunk: VoiceChunk) -> np.ndarray:
        """The chunk disguised here in the ingress (or silence): the real voice never goes out."""
        if self._fallback == "mute":
            self.counters.muted += 1
            return np.zeros_like(chunk.samples)
        self.counters.fallbacks += 1
        if self._selection.kind == "dsp":
            # The same state the replica would have used: the stream goes on seamlessly.
            state = self._local_state_from(chunk.state)
            out = self._local.process(chunk.samples, state, self._selection.params)
            self._state = state.to_bytes(self._local.config)
            return out
        # RVC is not available here: a DSP disguise at the RVC voice's transposition, its own state.
        if self._local_state is None:
            self._local_state = self._local.new_state()
        params = VoiceParams(pitch_semitones=self._selection.params.pitch_semitones, formant=1.12)
        return self._local.process(chunk.samples, self._local_state, params)

    def _local_state_from(self, data: bytes | None) -> DspState:
        if data is None:
            return self._local.new_state()
        try:
            return DspState.from_bytes(data, self._local.config)
        except Exception:  # noqa: BLE001 - an unusable state restarts the stream, never the real voice
            self.counters.resets += 1
            return self._local.new_state()
