"""The DSP voice disguise: streaming pitch shift with an independent formant shift, in numpy.

A phase vocoder that shifts pitch in the frequency domain (no time stretch,
no resampling, so no extra latency), with a cepstral spectral envelope that
separates the two controls:

- each 30 ms frame (Hann window, 5 ms hop, 6x overlap) is split into a smooth
  envelope (the liftered real cepstrum: the formants) and a residual (the
  harmonics: the pitch);
- the residual is read at ``bin / pitch_ratio`` (every harmonic moves by the
  ratio), the envelope at ``bin / formant`` (formants move by their own factor,
  not with the pitch: no chipmunk);
- phases: when the pitch is unchanged the analysis phases are kept (a formant-only
  shift reconstructs exactly); otherwise each bin's phase advances by its
  instantaneous frequency times the ratio (the standard vocoder recursion);
- each frame's energy is matched to the input frame's, so loudness stays.

Streaming: chunks of any multiple of the 5 ms hop (the served 20 ms chunk is
four hops) come out with the same length, delayed by exactly
``window - hop`` = 25 ms (the algorithmic latency). Everything a stream needs
between chunks is a :class:`DspState` (about 15 KB: the input history, the
overlap-add tail and two phase vectors) that serialises to bytes, so any
replica can serve any chunk and a whole-file run equals a chunked one.

Licence: our own code (numpy only), nothing GPL.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mirage.voice.config import DEFAULT_SAMPLE_RATE, VoiceError, VoiceParams

_MAGIC = b"MVD1"
_HEADER = struct.Struct("<4sIIIII")  # magic, sample_rate, n_fft, hop, input length, ready length
_TWO_PI = 2.0 * np.pi
#: Power below which the level follower treats a signal as silence (about -70 dBFS).
_LEVEL_FLOOR = 1e-7


@dataclass(frozen=True)
class DspConfig:
    """Frame geometry of the disguise; ``window_ms - hop_ms`` is its algorithmic latency."""

    sample_rate: int = DEFAULT_SAMPLE_RATE
    window_ms: float = 30.0
    hop_ms: float = 5.0
    #: Cepstral lifter cut-off: envelope detail finer than this quefrency is pitch, not formant.
    lifter_ms: float = 4.0

    def __post_init__(self) -> None:
        if self.sample_rate < 8000 or self.sample_rate > 192000:
            raise VoiceError(f"Sample rate {self.sample_rate} Hz is not supported (8-192 kHz).")
        if self.n_fft // self.hop < 4:
            raise VoiceError("The window must be at least four hops long.")

    @property
    def n_fft(self) -> int:
        return self.hop * max(1, int(round(self.window_ms / self.hop_ms)))

    @property
    def hop(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000.0))

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def latency_samples(self) -> int:
        return self.n_fft - self.hop

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.latency_samples / self.sample_rate


@dataclass
class DspState:
    """One stream's context between chunks (small, serialisable: travels with each call)."""

    #: Input not yet fully used: the last ``n_fft - hop`` samples plus any partial hop.
    pending: np.ndarray
    #: Overlap-add tail: contributions to the next ``n_fft - hop`` output samples.
    tail: np.ndarray
    #: Output samples completed but not yet returned (only for chunks that are not whole hops).
    ready: np.ndarray
    #: Analysis phase of the last frame, per bin.
    last_phase: np.ndarray
    #: Synthesis phase of the last frame, per bin.
    out_phase: np.ndarray
    #: Level follower: slow input power, slow output power, last gain.
    level: np.ndarray

    @classmethod
    def fresh(cls, config: DspConfig) -> DspState:
        lead = config.n_fft - config.hop
        return cls(
            pending=np.zeros(lead, np.float32),
            tail=np.zeros(lead, np.float32),
            ready=np.zeros(0, np.float32),
            last_phase=np.zeros(config.bins, np.float32),
            out_phase=np.zeros(config.bins, np.float32),
            level=np.array([0.0, 0.0, 1.0], np.float32),
        )

    def to_bytes(self, config: DspConfig) -> bytes:
        header = _HEADER.pack(_MAGIC, config.sample_rate, config.n_fft, config.hop, self.pending.size, self.ready.size)
        arrays = (self.pending, self.tail, self.ready, self.last_phase, self.out_phase, self.level)
        return header + b"".join(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in arrays)

    @classmethod
    def from_bytes(cls, data: bytes, config: DspConfig) -> DspState:
        """Parse a state made by :meth:`to_bytes` for the same config; :class:`VoiceError` otherwise."""
        if len(data) < _HEADER.size:
            raise VoiceError("The voice stream state is truncated.")
        magic, rate, n_fft, hop, n_pending, n_ready = _HEADER.unpack_from(data)
        if magic != _MAGIC or (rate, n_fft, hop) != (config.sample_rate, config.n_fft, config.hop):
            raise VoiceError("The voice stream state belongs to another converter configuration.")
        lead = n_fft - hop
        sizes = (n_pending, lead, n_ready, config.bins, config.bins, 3)
        if not lead <= n_pending < lead + hop or n_ready > 8 * hop or len(data) != _HEADER.size + 4 * sum(sizes):
            raise VoiceError("The voice stream state is malformed.")
        arrays: list[np.ndarray] = []
        offset = _HEADER.size
        for size in sizes:
            arrays.append(np.frombuffer(data, dtype="<f4", count=size, offset=offset).astype(np.float32))
            offset += 4 * size
        if not all(np.isfinite(a).all() for a in arrays):
            raise VoiceError("The voice stream state is malformed.")
        return cls(*arrays)


class DspVoiceConverter:
    """The disguise for many streams at once: one vectorised pass over every stream's frames."""

    def __init__(self, config: DspConfig | None = None) -> None:
        self.config = config or DspConfig()
        c = self.config
        n = c.n_fft
        self._window = (0.5 - 0.5 * np.cos(_TWO_PI * np.arange(n) / n)).astype(np.float32)  # periodic Hann
        # Hann analysis x Hann synthesis overlap-adds to a constant at this hop.
        self._ola_gain = np.float32(np.sum(self._window**2) / c.hop)
        self._bin_advance = (_TWO_PI * c.hop * np.arange(c.bins) / n).astype(np.float32)
        lifter_n = max(2, int(round(c.sample_rate * c.lifter_ms / 1000.0)))
        lifter = np.zeros(n, np.float32)
        lifter[:lifter_n] = 1.0
        lifter[n - lifter_n + 1 :] = 1.0
        lifter[lifter_n - 1] = 0.5  # a softer edge: less ringing in the envelope
        self._lifter = lifter
        self._bins_f = np.arange(c.bins, dtype=np.float32)
        self._tables: dict[float, _Table] = {}
        self._window_power = float(np.mean(self._window**2))
        self._level_decay = float(np.exp(-c.hop / (0.25 * c.sample_rate)))
        self._ramp = (np.arange(1, c.hop + 1, dtype=np.float64) / c.hop)[None, :]

    @property
    def latency_ms(self) -> float:
        return self.config.latency_ms

    def _table(self, factor: float) -> _Table:
        """Where output bin k reads from when a spectrum is stretched by ``factor`` (k / factor):
        floor index, next index, fraction, in-band mask, nearest index. Cached per factor."""
        table = self._tables.get(factor)
        if table is None:
            k = self.config.bins
            src = self._bins_f / np.float32(factor)
            pos = np.clip(src, 0.0, k - 1.0)
            lo = np.floor(pos).astype(np.intp)
            table = (
                lo,
                np.minimum(lo + 1, k - 1),
                (pos - lo).astype(np.float32),
                (src <= k - 1).astype(np.float32),
                np.clip(np.rint(src), 0, k - 1).astype(np.intp),
            )
            if len(self._tables) >= 256:
                self._tables.clear()
            self._tables[factor] = table
        return table

    def new_state(self) -> DspState:
        return DspState.fresh(self.config)

    def process(self, chunk: np.ndarray, state: DspState, params: VoiceParams) -> np.ndarray:
        """One stream's chunk (float32 mono, any length); ``state`` is updated in place."""
        return self.process_batch([chunk], [state], [params])[0]

    def process_batch(
        self, chunks: Sequence[np.ndarray], states: Sequence[DspState], params: Sequence[VoiceParams]
    ) -> list[np.ndarray]:
        """Chunks of many streams (each with its own state and values); same lengths out, states updated."""
        if not len(chunks) == len(states) == len(params):
            raise ValueError("chunks, states and params must have the same length")
        hop = self.config.hop
        prepared: list[np.ndarray] = []
        groups: dict[int, list[int]] = {}
        for i, (chunk, state) in enumerate(zip(chunks, states, strict=True)):
            x = np.asarray(chunk, dtype=np.float32).reshape(-1)
            if not np.isfinite(x).all():
                x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
            buf = np.concatenate([state.pending, x])
            prepared.append(buf)
            frames = (buf.size - self.config.n_fft) // hop + 1 if buf.size >= self.config.n_fft else 0
            groups.setdefault(frames, []).append(i)
        done: list[np.ndarray] = [np.zeros(0, np.float32)] * len(chunks)
        for frames, members in groups.items():
            if frames == 0:
                for i in members:
                    done[i] = np.zeros(0, np.float32)
                continue
            outputs = self._run_frames(
                [prepared[i] for i in members], [states[i] for i in members], [params[i] for i in members], frames
            )
            for i, out in zip(members, outputs, strict=True):
                done[i] = out
        results: list[np.ndarray] = []
        for i, (chunk, state) in enumerate(zip(chunks, states, strict=True)):
            frames_done = done[i].size // hop
            state.pending = prepared[i][frames_done * hop :]
            ready = np.concatenate([state.ready, done[i]]) if state.ready.size else done[i]
            want = int(np.asarray(chunk).size)
            if ready.size < want:
                # Only for chunks that are not whole hops: the stream takes on one hop more delay,
                # once (the shortfall is never more than a hop), so later chunks come out seamless.
                ready = np.concatenate([np.zeros(hop, np.float32), ready])
            results.append(ready[:want].copy())
            state.ready = ready[want:].copy()
        return results

    def _run_frames(
        self, bufs: list[np.ndarray], states: list[DspState], params: list[VoiceParams], frames: int
    ) -> list[np.ndarray]:
        c = self.config
        n, hop = c.n_fft, c.hop
        batch = len(bufs)
        stacked = np.stack([b[: (frames - 1) * hop + n] for b in bufs])
        # (B, F, N) frame view without copies, then windowed.
        idx = np.arange(frames)[:, None] * hop + np.arange(n)[None, :]
        x = stacked[:, idx] * self._window
        spec = np.fft.rfft(x, axis=-1)
        re = spec.real.astype(np.float32)
        im = spec.imag.astype(np.float32)
        mag = np.sqrt(re * re + im * im)
        phase = np.arctan2(im, re)  # float32 trigonometry: an order of magnitude cheaper than float64
        prev = np.concatenate([np.stack([s.last_phase for s in states])[:, None, :], phase[:, :-1]], axis=1)
        # Instantaneous frequency, in bins.
        delta = phase - prev - self._bin_advance
        delta -= np.float32(_TWO_PI) * np.round(delta / np.float32(_TWO_PI))
        inst = self._bins_f + delta * np.float32(n / (_TWO_PI * hop))

        # Envelope from the liftered real cepstrum (log domain).
        logmag = np.log(mag + 1e-7)
        cep = np.fft.irfft(logmag, n=n, axis=-1)
        env = np.fft.rfft(cep * self._lifter, axis=-1).real.astype(np.float32)
        residual = logmag - env

        ratio = np.array([p.pitch_ratio for p in params], np.float32)[:, None, None]
        pitch_tables = [self._table(p.pitch_ratio) for p in params]
        formant_tables = [self._table(p.formant) for p in params]
        res_out = _interp_rows(residual, pitch_tables)
        env_out = _interp_rows(env, formant_tables)
        out_mag = np.exp(res_out + env_out)
        out_mag *= np.stack([t[3] for t in pitch_tables])[:, None, :]  # nothing from beyond the band
        # Loudness: each output frame carries its input frame's energy.
        e_in = np.sum(mag * mag, axis=-1, keepdims=True)
        e_out = np.sum(out_mag * out_mag, axis=-1, keepdims=True)
        gain = np.sqrt((e_in + 1e-12) / (e_out + 1e-12))
        out_mag *= np.clip(gain, 0.0, 8.0)

        # Phases: kept when the pitch is unchanged; otherwise the vocoder recursion.
        nearest = np.stack([t[4] for t in pitch_tables])[:, None, :]
        src_inst = np.take_along_axis(inst, nearest, axis=-1)
        advance = (_TWO_PI * hop / n) * (src_inst.astype(np.float64) * ratio)
        start = np.stack([s.out_phase for s in states])[:, None, :].astype(np.float64)
        accumulated = start + np.cumsum(advance, axis=1)
        keep = (ratio == 1.0).reshape(batch, 1, 1)
        accumulated -= _TWO_PI * np.floor(accumulated / _TWO_PI)
        out_phase = np.where(keep, phase, accumulated.astype(np.float32))
        synth = np.empty(out_phase.shape, np.complex128)
        synth.real = out_mag * np.cos(out_phase)
        synth.imag = out_mag * np.sin(out_phase)
        y = np.fft.irfft(synth, n=n, axis=-1).astype(np.float32) * self._window
        y /= self._ola_gain

        lead = n - hop
        acc = np.zeros((batch, frames * hop + lead), np.float32)
        acc[:, :lead] = np.stack([s.tail for s in states])
        for f in range(frames):
            acc[:, f * hop : f * hop + n] += y[:, f]
        out = acc[:, : frames * hop].reshape(batch, frames, hop)
        # Loudness follows the input's: slow levels (0.25 s) in and out, a gain ramped per hop.
        level_in = np.array([s.level[0] for s in states], np.float64)
        level_out = np.array([s.level[1] for s in states], np.float64)
        gain = np.array([s.level[2] for s in states], np.float64)
        power_in = np.mean(x * x, axis=-1) / self._window_power  # (B, F)
        power_out = np.mean(out * out, axis=-1)  # (B, F)
        a = self._level_decay
        for f in range(frames):
            level_in = a * level_in + (1.0 - a) * power_in[:, f]
            level_out = a * level_out + (1.0 - a) * power_out[:, f]
            target = np.clip(np.sqrt((level_in + _LEVEL_FLOOR) / (level_out + _LEVEL_FLOOR)), 0.5, 4.0)
            out[:, f] *= (gain[:, None] + (target - gain)[:, None] * self._ramp).astype(np.float32)
            gain = target
        results: list[np.ndarray] = []
        for b, state in enumerate(states):
            state.tail = acc[b, frames * hop :].copy()
            state.last_phase = phase[b, -1].astype(np.float32)
            state.out_phase = out_phase[b, -1].astype(np.float32)
            state.level = np.array([level_in[b], level_out[b], gain[b]], np.float32)
            results.append(out[b].reshape(-1).copy())
        return results


_Table = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _interp_rows(values: np.ndarray, tables: list[_Table]) -> np.ndarray:
    """Linear interpolation of ``values`` (B, F, K) at each row's table positions (same for all its frames)."""
    lo = np.stack([t[0] for t in tables])[:, None, :]
    hi = np.stack([t[1] for t in tables])[:, None, :]
    frac = np.stack([t[2] for t in tables])[:, None, :]
    a = np.take_along_axis(values, lo, axis=-1)
    b = np.take_along_axis(values, hi, axis=-1)
    mixed: np.ndarray = a + (b - a) * frac
    return mixed


def convert_whole(samples: np.ndarray, params: VoiceParams, config: DspConfig | None = None) -> np.ndarray:
    """A whole recording through the same streaming code, latency removed (output aligned with input)."""
    converter = DspVoiceConverter(config)
    state = converter.new_state()
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    lead = converter.config.latency_samples
    hop = converter.config.hop
    padded = np.concatenate([x, np.zeros(lead + (-(x.size + lead)) % hop, np.float32)])
    y = converter.process(padded, state, params)
    return y[lead : lead + x.size]
