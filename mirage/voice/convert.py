"""The batch interface of voice conversion: chunks from many sessions in, converted chunks out.

What crosses the deployment boundary is small and self-contained: a
:class:`VoiceChunk` carries one session's 20 ms of audio (float32 mono,
48 kHz: 3.8 KB), the voice chosen, and the stream state returned with the
previous chunk (``None`` starts a stream). The reply carries the converted
audio and the next state. Nothing is kept on the replica between calls
except loaded models, so any replica can serve any chunk and a restarted one
costs nothing but the call in flight.

:class:`VoiceConverterCore` is the replica's logic without Ray (also used
in-process by the CLI and the benchmark): it groups a batch by converter and
runs each group in one vectorised call. Per-item problems come back as codes
in :class:`VoiceResult`, never as exceptions that would fail the whole batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mirage.errors import MirageError
from mirage.voice.config import DEFAULT_SAMPLE_RATE, PRESETS, VoiceError, VoiceSelection
from mirage.voice.dsp import DspConfig, DspState, DspVoiceConverter

if TYPE_CHECKING:
    from mirage.runtime.select import RuntimeConfig
    from mirage.weights.provision import ProvisionConfig

logger = logging.getLogger(__name__)

#: Result codes.
BAD_INPUT = "bad_input"
VOICE_UNAVAILABLE = "voice_unavailable"
#: Longest chunk one call takes (a second of audio); the served chunk is 20 ms.
MAX_CHUNK_SECONDS = 1.0


@dataclass(frozen=True)
class VoiceChunk:
    """One session's chunk on its way to a converter."""

    samples: np.ndarray
    selection: VoiceSelection
    #: The state from this stream's previous reply; ``None`` starts the stream.
    state: bytes | None = None
    #: Chunk number within the stream (for ordering checks and logs).
    seq: int = 0


@dataclass(frozen=True)
class VoiceResult:
    """A converted chunk and the stream's next state, or an error code (``samples`` is then ``None``)."""

    samples: np.ndarray | None
    state: bytes | None = None
    error: str | None = None
    #: True when the state sent was unusable and the stream restarted here.
    reset: bool = False
    converter: str = "dsp"

    @property
    def ok(self) -> bool:
        return self.error is None and self.samples is not None


@dataclass(frozen=True)
class VoiceCoreConfig:
    """Construction-time options of a converter replica."""

    sample_rate: int = DEFAULT_SAMPLE_RATE
    dsp: DspConfig = field(default_factory=DspConfig)
    #: Where users' RVC generators live (``NAME.onnx``); ``None``: the models directory's ``voice/``.
    rvc_dir: Path | None = None
    #: Try to load the RVC path (ContentVec must be provisioned); off: DSP only.
    rvc: bool = True
    num_threads: int = 1
    #: Where models live and how they pick a runtime, read from the environment at the edge
    #: (the deployment's constructor, the CLI); ``None``: no model store (RVC needs ``rvc_dir``
    #: and a provisioned ContentVec from it), runtime defaults.
    provision: ProvisionConfig | None = None
    runtime: RuntimeConfig | None = None


class VoiceConverterCore:
    """Converters of one replica: the DSP disguise always, RVC voices when provisioned."""

    def __init__(self, config: VoiceCoreConfig | None = None) -> None:
        self.config = config or VoiceCoreConfig()
        if self.config.dsp.sample_rate != self.config.sample_rate:
            raise VoiceError("The DSP converter must run at the replica's sample rate.")
        self.dsp = DspVoiceConverter(self.config.dsp)
        self._rvc: object | None = None
        self.rvc_reason = "disabled"
        if self.config.rvc:
            self._rvc, self.rvc_reason = _load_rvc(self.config)

    @property
    def rvc(self):  # type: ignore[no-untyped-def]  # RvcConverter | None (lazy import keeps onnx off the DSP path)
        return self._rvc

    def available_voices(self) -> list[str]:
        """What ``set_options`` may choose here: off, the presets, custom, and ``rvc:NAME`` for each generator found."""
        voices = ["off", *PRESETS, "custom"]
        if self._rvc is not None:
            voices += [f"rvc:{name}" for name in self._rvc.available()]  # type: ignore[attr-defined]
        return voices

    def latency_ms(self, selection: VoiceSelection) -> float:
        """Algorithmic latency of the converter serving ``selection``."""
        if selection.kind == "rvc" and self._rvc is not None:
            return float(self._rvc.latency_ms)  # type: ignore[attr-defined]
        return self.dsp.latency_ms if selection.kind == "dsp" else 0.0

    def convert_batch(self, items: Sequence[VoiceChunk]) -> list[VoiceResult]:
        """Convert chunks of any sessions; grouped by converter, per-item errors instead of exceptions."""
        results: list[VoiceResult | None] = [None] * len(items)
        dsp_members: list[int] = []
        rvc_members: list[int] = []
        max_samples = int(MAX_CHUNK_SECONDS * self.config.sample_rate)
        for i, item in enumerate(items):
            samples = np.asarray(item.samples)
            if samples.ndim != 1 or samples.size == 0 or samples.size > max_samples or samples.dtype.kind != "f":
                results[i] = VoiceResult(None, error=BAD_INPUT)
            elif item.selection.kind == "off":
                results[i] = VoiceResult(samples.astype(np.float32), state=None, converter="off")
            elif item.selection.kind == "rvc":
                rvc_members.append(i)
            else:
                dsp_members.append(i)
        if dsp_members:
            for i, result in zip(dsp_members, self._convert_dsp([items[i] for i in dsp_members]), strict=True):
                results[i] = result
        if rvc_members:
            if self._rvc is None:
                for i in rvc_members:
                    results[i] = VoiceResult(None, error=VOICE_UNAVAILABLE, converter="rvc")
            else:
                batch = [items[i] for i in rvc_members]
                for i, result in zip(rvc_members, self._rvc.convert_batch(batch), strict=True):  # type: ignore[attr-defined]
                    results[i] = result
        return [r if r is not None else VoiceResult(None, error=BAD_INPUT) for r in results]

    def _convert_dsp(self, items: Sequence[VoiceChunk]) -> list[VoiceResult]:
        states: list[DspState] = []
        resets: list[bool] = []
        for item in items:
            if item.state is None:
                states.append(self.dsp.new_state())
                resets.append(False)
                continue
            try:
                states.append(DspState.from_bytes(item.state, self.dsp.config))
                resets.append(False)
            except VoiceError:
                states.append(self.dsp.new_state())
                resets.append(True)
        outs = self.dsp.process_batch(
            [np.asarray(item.samples, np.float32) for item in items], states, [item.selection.params for item in items]
        )
        return [
            VoiceResult(out, state=state.to_bytes(self.dsp.config), reset=reset, converter="dsp")
            for out, state, reset in zip(outs, states, resets, strict=True)
        ]


def _load_rvc(config: VoiceCoreConfig) -> tuple[object | None, str]:
    """The RVC path when ContentVec is provisioned, else (None, why); never downloads."""
    try:
        from mirage.voice.rvc import load_rvc_converter
    except ImportError as exc:
        return None, f"the RVC path is not installed ({type(exc).__name__})"
    try:
        from mirage.weights.provision import ModelStore

        store = ModelStore(config.provision) if config.provision is not None else None
        converter = load_rvc_converter(
            rvc_dir=config.rvc_dir, sample_rate=config.sample_rate, threads=config.num_threads, store=store, runtime=config.runtime
        )
        return converter, ""
    except MirageError as exc:
        logger.info("RVC voices unavailable: %s", exc)
        return None, str(exc)
