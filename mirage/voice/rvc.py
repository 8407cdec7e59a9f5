"""Neural voice conversion (RVC v2) as ONNX: ContentVec features + SwiftF0 pitch + an RVC v2 generator.

Models and where they come from:

- **ContentVec** (``contentvec_768_l12`` in ``configs/models.yaml``, the 768-dim,
  layer-12 export RVC v2 uses): input ``source`` float32 [B, 1, N] at 16 kHz,
  output float32 [B, 768, N/320] (one frame per 20 ms). Provisioned
  (``python -m mirage models fetch contentvec_768_l12``), never downloaded here.
- **Pitch**: SwiftF0 (MIT), whose 135 KB ONNX model ships inside the ``swift-f0``
  wheel: a real pitch extractor with nothing to download (RVC's own RMVPE needs
  a download and a mel front end).
- **Generator**: a user's RVC v2 model exported to ONNX by RVC's own exporter,
  placed at ``models/voice/NAME.onnx`` and chosen as ``rvc:NAME``. Inputs
  ``phone`` float [B, T, 768] (ContentVec frames repeated to 10 ms), ``phone_lengths``
  int64 [B], ``pitch`` int64 [B, T] (coarse mel bins 1-255), ``pitchf`` float [B, T]
  (Hz), ``ds`` int64 [B] (speaker id), ``rnd`` float [B, 192, T] (noise); output
  ``audio`` float [B, 1, T * rate / 100]. The output rate (32/40/48 kHz) is read
  from the first run. Inputs are matched by name, else by position.

Streaming: each call converts a sliding window (the last ``context_ms`` of
16 kHz audio, carried in the stream state, plus the new chunk) and returns the
part that ends ``lookahead_ms`` before the window's end (the generator needs a
little right context), cross-faded over ``crossfade_ms`` with what the previous
call produced past its own end. The state (about 30 KB) travels with the call
like the DSP disguise's. Algorithmic latency: lookahead + cross-fade + the
decimator's delay (about 55 ms by default). Each chunk re-runs the whole window,
so RVC is a GPU converter; on CPU it is far from real time for many sessions
(benchmarks/README.md).
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mirage.errors import MirageError, ModelUnavailableError
from mirage.voice.config import DEFAULT_SAMPLE_RATE, VoiceError
from mirage.voice.convert import BAD_INPUT, VOICE_UNAVAILABLE, VoiceChunk, VoiceResult

if TYPE_CHECKING:
    from mirage.runtime.select import RuntimeConfig
    from mirage.weights.provision import ModelStore

logger = logging.getLogger(__name__)

CONTENTVEC_NAME = "contentvec_768_l12"
CONTENT_RATE = 16000
CONTENT_HOP = 320  # ContentVec: one frame per 20 ms at 16 kHz
FRAME_S = 0.01  # generator frames: 10 ms
FEATURE_DIM = 768
NOISE_DIM = 192
GENERATOR_INPUTS = ("phone", "phone_lengths", "pitch", "pitchf", "ds", "rnd")
F0_MIN, F0_MAX = 50.0, 1100.0
_MEL_MIN = 1127.0 * np.log(1.0 + F0_MIN / 700.0)
_MEL_MAX = 1127.0 * np.log(1.0 + F0_MAX / 700.0)
_MAGIC = b"MVR1"
_HEADER = struct.Struct("<4sIIIII")  # magic, sample rate, context samples (16k), fir history, tail, phase


@dataclass(frozen=True)
class RvcConfig:
    sample_rate: int = DEFAULT_SAMPLE_RATE
    context_ms: int = 400
    lookahead_ms: int = 40
    crossfade_ms: int = 5
    speaker_id: int = 0
    decimator_taps: int = 96

    def __post_init__(self) -> None:
        if self.sample_rate % CONTENT_RATE:
            raise VoiceError("The RVC path needs a sample rate that is a multiple of 16 kHz (48 kHz).")
        if self.context_ms % 20 or self.context_ms < 200:
            raise VoiceError("The RVC context must be a multiple of 20 ms, at least 200 ms.")
        if self.crossfade_ms > self.lookahead_ms:
            raise VoiceError("The RVC cross-fade must not exceed its look-ahead.")

    @property
    def factor(self) -> int:
        return self.sample_rate // CONTENT_RATE

    @property
    def context_samples(self) -> int:
        return CONTENT_RATE * self.context_ms // 1000

    @property
    def crossfade_samples(self) -> int:
        return self.sample_rate * self.crossfade_ms // 1000

    @property
    def latency_ms(self) -> float:
        decimator_ms = 1000.0 * (self.decimator_taps // 2) / self.sample_rate
        return float(self.lookahead_ms + self.crossfade_ms) + decimator_ms


@dataclass
class RvcState:
    """One stream's context: 16 kHz history, the decimator's input history and phase, the cross-fade tail."""

    history: np.ndarray
    fir_history: np.ndarray
    tail: np.ndarray
    phase: int = 0

    @classmethod
    def fresh(cls, config: RvcConfig) -> RvcState:
        return cls(
            history=np.zeros(config.context_samples, np.float32),
            fir_history=np.zeros(config.decimator_taps - 1, np.float32),
            tail=np.zeros(config.crossfade_samples, np.float32),
        )

    def to_bytes(self, config: RvcConfig) -> bytes:
        header = _HEADER.pack(_MAGIC, config.sample_rate, self.history.size, self.fir_history.size, self.tail.size, self.phase)
        return header + b"".join(np.ascontiguousarray(a, "<f4").tobytes() for a in (self.history, self.fir_history, self.tail))

    @classmethod
    def from_bytes(cls, data: bytes, config: RvcConfig) -> RvcState:
        if len(data) < _HEADER.size:
            raise VoiceError("The RVC stream state is truncated.")
        magic, rate, n_hist, n_fir, n_tail, phase = _HEADER.unpack_from(data)
        expected = (config.context_samples, config.decimator_taps - 1, config.crossfade_samples)
        if magic != _MAGIC or rate != config.sample_rate or (n_hist, n_fir, n_tail) != expected or phase >= config.factor:
            raise VoiceError("The RVC stream state belongs to another configuration.")
        if len(data) != _HEADER.size + 4 * (n_hist + n_fir + n_tail):
            raise VoiceError("The RVC stream state is malformed.")
        arrays, offset = [], _HEADER.size
        for n in (n_hist, n_fir, n_tail):
            arrays.append(np.frombuffer(data, "<f4", count=n, offset=offset).astype(np.float32))
            offset += 4 * n
        if not all(np.isfinite(a).all() for a in arrays):
            raise VoiceError("The RVC stream state is malformed.")
        return cls(arrays[0], arrays[1], arrays[2], int(phase))


def coarse_pitch(f0_hz: np.ndarray) -> np.ndarray:
    """RVC's coarse pitch: mel-scaled F0 in bins 1..255 (1 = unvoiced)."""
    mel = 1127.0 * np.log(1.0 + np.maximum(f0_hz, 0.0) / 700.0)
    voiced = mel > 0
    mel[voiced] = (mel[voiced] - _MEL_MIN) * 254.0 / (_MEL_MAX - _MEL_MIN) + 1.0
    coarse: np.ndarray = np.clip(np.rint(mel), 1, 255).astype(np.int64)
    return coarse


class _Generator:
    """One RVC v2 generator: I/O checked at load, output rate learnt from the first run."""

    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.name = name
        names = [i.name for i in model.inputs]
        if len(names) != len(GENERATOR_INPUTS):
            raise ModelUnavailableError(
                f"The RVC model {name} has {len(names)} inputs; an RVC v2 ONNX export has {len(GENERATOR_INPUTS)} "
                f"({', '.join(GENERATOR_INPUTS)})."
            )
        # By name when the export kept RVC's names, else by position (RVC's exporter order).
        self.feed_names = {want: (want if want in names else names[i]) for i, want in enumerate(GENERATOR_INPUTS)}
        self.dtypes = {want: model.input(self.feed_names[want]).dtype for want in GENERATOR_INPUTS}
        phone_shape = model.input(self.feed_names["phone"]).shape
        if len(phone_shape) != 3 or (isinstance(phone_shape[2], int) and phone_shape[2] != FEATURE_DIM):
            raise ModelUnavailableError(f"The RVC model {name} is not a v2 model (phone features must be {FEATURE_DIM}-dim).")
        first = model.inputs[0].shape[0]
        self.dynamic_batch = not isinstance(first, int)
        self.rate: int | None = None

    def run(self, phone: np.ndarray, pitch: np.ndarray, pitchf: np.ndarray, speaker: int, rnd: np.ndarray) -> np.ndarray:
        batch, frames = phone.shape[:2]
        feeds = {
            "phone": phone,
            "phone_lengths": np.full(batch, frames, np.int64),
            "pitch": pitch,
            "pitchf": pitchf,
            "ds": np.full(batch, speaker, np.int64),
            "rnd": rnd,
        }
        if self.dynamic_batch or batch == 1:
            out = self._run(feeds)
        else:
            out = np.concatenate([self._run({k: v[i : i + 1] for k, v in feeds.items()}) for i in range(batch)])
        audio = out.reshape(batch, -1).astype(np.float32)
        rate = int(round(audio.shape[1] / (frames * FRAME_S)))
        if self.rate is None:
            if rate not in (32000, 40000, 48000):
                raise ModelUnavailableError(f"The RVC model {self.name} produced audio at {rate} Hz; expected 32, 40 or 48 kHz.")
            self.rate = rate
        return audio

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        typed = {self.feed_names[k]: np.asarray(v, dtype=self.dtypes[k]) for k, v in feeds.items()}
        return np.asarray(self.model.run(typed)[0])


class RvcConverter:
    """The RVC path of one replica: ContentVec and SwiftF0 loaded once, generators loaded on first use."""

    def __init__(
        self, contentvec: Any, generators_dir: Path, config: RvcConfig | None = None, loader: Any = None, threads: int = 1
    ) -> None:
        from scipy.signal import firwin
        from swift_f0 import SwiftF0

        self.config = config or RvcConfig()
        self.contentvec = contentvec
        self.generators_dir = Path(generators_dir)
        self._loader = loader
        self._generators: dict[str, _Generator] = {}
        self._lock = threading.Lock()
        self._pitch = SwiftF0(threads=threads, spin=False)
        c = self.config
        self._fir = firwin(c.decimator_taps, 0.9 * CONTENT_RATE / 2, fs=c.sample_rate).astype(np.float32)
        self._content_dynamic = not isinstance(contentvec.inputs[0].shape[0], int)
        self._rng = np.random.default_rng(0)

    @property
    def latency_ms(self) -> float:
        return self.config.latency_ms

    def available(self) -> list[str]:
        """Generator names found in the voice folder (``NAME.onnx``)."""
        if not self.generators_dir.is_dir():
            return []
        skip = {"vec-768-layer-12", "rmvpe"}
        return sorted(p.stem for p in self.generators_dir.glob("*.onnx") if p.stem not in skip and ".batch-dynamic" not in p.name)

    def generator(self, name: str) -> _Generator:
        with self._lock:
            if name in self._generators:
                return self._generators[name]
            path = self.generators_dir / f"{name}.onnx"
            if not path.is_file():
                raise ModelUnavailableError(f"No RVC voice {name!r}: put its ONNX export at {path}.")
            model = self._loader(f"rvc:{name}", path)
            gen = _Generator(model, name)
            self._generators[name] = gen
            logger.info("RVC voice %s loaded%s", name, " (stand-in)" if "standin" in path.name else "")
            return gen

    # ------------------------------------------------------------------ streaming

    def _decimate(self, state: RvcState, x: np.ndarray) -> np.ndarray:
        """48 kHz -> 16 kHz, exactly as one long filter would (history and phase carried)."""
        c = self.config
        buf = np.concatenate([state.fir_history, x])
        filtered = np.convolve(buf, self._fir, mode="valid")  # len = x.size
        start = (-state.phase) % c.factor
        out = filtered[start :: c.factor]
        state.phase = (state.phase + x.size) % c.factor
        state.fir_history = buf[buf.size - (c.decimator_taps - 1) :]
        return out.astype(np.float32)

    def convert_batch(self, items: Sequence[VoiceChunk]) -> list[VoiceResult]:
        groups: dict[str, list[int]] = {}
        results: list[VoiceResult] = [VoiceResult(None, error=BAD_INPUT, converter="rvc")] * len(items)
        for i, item in enumerate(items):
            groups.setdefault(item.selection.rvc_model or "", []).append(i)
        for name, members in groups.items():
            try:
                gen = self.generator(name)
            except MirageError as exc:
                logger.info("RVC voice %s unavailable: %s", name, exc)
                for i in members:
                    results[i] = VoiceResult(None, error=VOICE_UNAVAILABLE, converter="rvc")
                continue
            for i, result in zip(members, self._convert_group(gen, [items[i] for i in members]), strict=True):
                results[i] = result
        return results

    def _convert_group(self, gen: _Generator, items: Sequence[VoiceChunk]) -> list[VoiceResult]:
        c = self.config
        states, resets, news = [], [], []
        for item in items:
            reset = False
            if item.state is None:
                state = RvcState.fresh(c)
            else:
                try:
                    state = RvcState.from_bytes(item.state, c)
                except VoiceError:
                    state, reset = RvcState.fresh(c), True
            new16 = self._decimate(state, np.asarray(item.samples, np.float32))
            state.history = np.concatenate([state.history, new16])[-c.context_samples :]
            states.append(state)
            resets.append(reset)
            news.append(item.samples.size)
        windows = np.stack([s.history for s in states])  # (B, context)
        features = self._features(windows)  # (B, T, 768) at 10 ms
        frames = features.shape[1]
        pitchf = np.stack(
            [self._f0(w, frames) * (2.0 ** (item.selection.params.pitch_semitones / 12.0)) for w, item in zip(windows, items)]
        ).astype(np.float32)
        rnd = self._rng.standard_normal((len(items), NOISE_DIM, frames)).astype(np.float32) * 0.66666
        audio = gen.run(features, coarse_pitch(pitchf.astype(np.float64)), pitchf, c.speaker_id, rnd)
        assert gen.rate is not None
        results = []
        for b, (state, reset, n_out) in enumerate(zip(states, resets, news)):
            out = self._take(audio[b], gen.rate, n_out, state)
            results.append(VoiceResult(out, state=state.to_bytes(c), reset=reset, converter="rvc"))
        return results

    def _features(self, windows: np.ndarray) -> np.ndarray:
        source = windows[:, None, :].astype(np.float32)
        name = self.contentvec.inputs[0].name
        if self._content_dynamic or source.shape[0] == 1:
            feats = self.contentvec.run({name: source})[0]
        else:
            feats = np.concatenate([self.contentvec.run({name: source[i : i + 1]})[0] for i in range(source.shape[0])])
        feats = np.asarray(feats, np.float32)
        if feats.shape[1] == FEATURE_DIM and feats.shape[2] != FEATURE_DIM:
            feats = feats.transpose(0, 2, 1)  # [B, 768, T] -> [B, T, 768]
        return np.repeat(feats, 2, axis=1)  # 20 ms -> 10 ms frames

    def _f0(self, window: np.ndarray, frames: int) -> np.ndarray:
        result = self._pitch.detect(window, CONTENT_RATE, fmin=F0_MIN, fmax=F0_MAX)
        f0 = np.where(result.confidence >= 0.5, result.pitch_hz, 0.0)
        grid = (np.arange(frames) + 0.5) * FRAME_S
        voiced = np.interp(grid, result.timestamps, (f0 > 0).astype(np.float64)) >= 0.5
        values = np.interp(grid, result.timestamps, f0)
        return np.where(voiced, values, 0.0)

    def _take(self, audio: np.ndarray, rate: int, n_out: int, state: RvcState) -> np.ndarray:
        """The part of the window's output that ends ``lookahead`` before its end, resampled, cross-faded."""
        from scipy.signal import resample_poly

        c = self.config
        fade = c.crossfade_samples
        end_s = audio.size / rate - c.lookahead_ms / 1000.0
        span = (n_out + fade) / c.sample_rate
        margin = 64
        a = int(round((end_s - span + c.crossfade_ms / 1000.0) * rate)) - margin
        b = int(round((end_s + c.crossfade_ms / 1000.0) * rate)) + margin
        segment = audio[max(0, a) : min(audio.size, b)]
        up = resample_poly(segment.astype(np.float64), c.sample_rate, rate).astype(np.float32)
        cut = int(round(margin * c.sample_rate / rate))
        piece = up[cut : cut + n_out + fade]
        if piece.size < n_out + fade:
            piece = np.concatenate([piece, np.zeros(n_out + fade - piece.size, np.float32)])
        ramp = np.linspace(0.0, 1.0, fade, endpoint=False, dtype=np.float32)
        head = piece[:fade] * ramp + state.tail * (1.0 - ramp)
        out = np.concatenate([head, piece[fade:n_out]])
        state.tail = piece[n_out : n_out + fade].copy()
        return out


def _default_loader(threads: int, runtime: RuntimeConfig | None = None) -> Any:
    from mirage.runtime.onnx import OrtConfig
    from mirage.runtime.select import RuntimeConfig, load_model

    runtime = runtime or RuntimeConfig()
    ort = OrtConfig(intra_op_threads=threads)

    def load(name: str, path: Path) -> Any:
        model, choice = load_model(name, path, path.parent / "engines", runtime, ort)
        return model

    return load


def load_rvc_converter(
    rvc_dir: Path | None = None,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    threads: int = 1,
    contentvec_path: Path | None = None,
    config: RvcConfig | None = None,
    dynamic_batch: bool = True,
    *,
    store: ModelStore | None = None,
    runtime: RuntimeConfig | None = None,
) -> RvcConverter:
    """ContentVec (provisioned in ``store``, or ``contentvec_path``), SwiftF0 (from its wheel) and the voice
    folder (``rvc_dir``, else the store's ``voice/``); ``runtime``: how models pick a runtime (read from the
    environment at the edge; default: :class:`RuntimeConfig`'s defaults).

    Never downloads; a missing ContentVec raises :class:`ModelUnavailableError`
    naming the command that fetches it.
    """
    try:
        import swift_f0  # noqa: F401
    except ImportError as exc:
        raise ModelUnavailableError("The SwiftF0 pitch extractor is not installed (pip install swift-f0).") from exc
    if contentvec_path is None or rvc_dir is None:
        if store is None:
            raise ModelUnavailableError("RVC voices need the model store (or ContentVec's path and the voice folder).")
        if contentvec_path is None:
            contentvec_path = store.path(CONTENTVEC_NAME)
        if rvc_dir is None:
            rvc_dir = store.root / "voice"
    if not Path(contentvec_path).is_file():
        raise ModelUnavailableError(
            f"ContentVec is not provisioned, so RVC voices are disabled (python -m mirage models fetch {CONTENTVEC_NAME})."
        )
    loader = _default_loader(threads, runtime)
    contentvec = loader(CONTENTVEC_NAME, Path(contentvec_path))
    if isinstance(contentvec.inputs[0].shape[0], int) and dynamic_batch:
        # A batch-1 export: rewrite its batch dimension once (proven equal to batch-1 runs), as the face models do.
        from mirage.swap.neural import batch_dynamic_copy

        rewritten = batch_dynamic_copy(Path(contentvec_path), {contentvec.inputs[0].name: (1, 1, CONTENT_RATE)})
        if rewritten != Path(contentvec_path):
            contentvec = loader(CONTENTVEC_NAME, rewritten)
    shape = contentvec.inputs[0].shape
    if len(shape) != 3:
        raise ModelUnavailableError(f"{Path(contentvec_path).name} is not a ContentVec export (input must be [B, 1, N]).")
    return RvcConverter(contentvec, rvc_dir, config or RvcConfig(sample_rate=sample_rate), loader=loader, threads=threads)
