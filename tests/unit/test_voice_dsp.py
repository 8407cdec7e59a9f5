"""The DSP voice disguise on real speech (espeak-ng), judged by Praat (parselmouth), not by Mirage's own code."""

from __future__ import annotations

import numpy as np
import pytest

from mirage.voice.config import PRESETS, VoiceError, VoiceParams
from mirage.voice.dsp import DspConfig, DspState, DspVoiceConverter, convert_whole
from standins.speech import SENTENCES, espeak_available, formants_at, median_f0, rms_db, speak, voiced_times

RATE = 48000
CHUNK = 960  # 20 ms

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (scripts/test.sh installs it)")


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return speak(SENTENCES[0], RATE)


@pytest.fixture(scope="module")
def speech_facts(speech: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    times = voiced_times(speech, RATE)
    return median_f0(speech, RATE), times, formants_at(speech, RATE, times)


def stream(samples: np.ndarray, params: VoiceParams, chunk: int = CHUNK, via_bytes: bool = True) -> np.ndarray:
    """Chunk by chunk; with ``via_bytes`` the state goes through bytes between chunks, each time into a new
    converter (as if every chunk went to a different replica)."""
    config = DspConfig()
    state_bytes = DspVoiceConverter(config).new_state().to_bytes(config)
    out: list[np.ndarray] = []
    converter = DspVoiceConverter(config)
    state = converter.new_state()
    for start in range(0, samples.size - chunk + 1, chunk):
        if via_bytes:
            converter = DspVoiceConverter(config)
            state = DspState.from_bytes(state_bytes, config)
        out.append(converter.process(samples[start : start + chunk], state, params))
        if via_bytes:
            state_bytes = state.to_bytes(config)
    return np.concatenate(out)


@pytest.mark.parametrize("semitones", [4.0, -5.0, -2.0])
def test_median_f0_moves_by_the_requested_semitones(speech: np.ndarray, speech_facts: tuple, semitones: float) -> None:
    f0_in = speech_facts[0]
    out = convert_whole(speech, VoiceParams(pitch_semitones=semitones, formant=1.0))
    moved = 12.0 * np.log2(median_f0(out, RATE) / f0_in)
    assert abs(moved - semitones) <= 0.5, f"asked {semitones:+} st, Praat measured {moved:+.2f} st"


@pytest.mark.parametrize("factor", [1.15, 0.87])
def test_formant_shift_moves_f1_f2_by_the_factor_while_f0_stays(speech: np.ndarray, speech_facts: tuple, factor: float) -> None:
    f0_in, times, formants_in = speech_facts
    out = convert_whole(speech, VoiceParams(pitch_semitones=0.0, formant=factor))
    ratios = np.nanmedian(formants_at(out, RATE, times) / formants_in, axis=1)
    for k, ratio in enumerate(ratios, start=1):
        assert abs(ratio / factor - 1.0) <= 0.10, f"F{k} moved x{ratio:.3f}, asked x{factor}"
    assert abs(12.0 * np.log2(median_f0(out, RATE) / f0_in)) <= 0.5


def test_a_pitch_shift_keeps_the_formants_no_chipmunk(speech: np.ndarray, speech_facts: tuple) -> None:
    _, times, formants_in = speech_facts
    out = convert_whole(speech, VoiceParams(pitch_semitones=5.0, formant=1.0))
    ratios = np.nanmedian(formants_at(out, RATE, times) / formants_in, axis=1)
    assert np.all(np.abs(ratios - 1.0) <= 0.10), ratios


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_keep_loudness_within_1_db(speech: np.ndarray, name: str) -> None:
    out = convert_whole(speech, PRESETS[name])
    assert abs(rms_db(out) - rms_db(speech)) <= 1.0


def test_streamed_chunks_through_bytes_equal_a_whole_file_run(speech: np.ndarray) -> None:
    params = PRESETS["disguise"]
    n = (speech.size // CHUNK) * CHUNK
    whole_state = DspVoiceConverter().new_state()
    whole = DspVoiceConverter().process(speech[:n], whole_state, params)
    chunked = stream(speech[:n], params)
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, atol=2e-4)
    assert np.max(np.abs(whole)) > 0.05  # not trivially silent


def test_no_discontinuity_at_chunk_boundaries_beyond_the_inputs_own(speech: np.ndarray) -> None:
    out = stream(speech, PRESETS["deep"])
    steps = np.abs(np.diff(out))
    boundaries = np.arange(CHUNK, out.size, CHUNK) - 1
    assert steps[boundaries].max() <= np.abs(np.diff(speech)).max()
    # and a boundary step is no outlier among the output's own steps
    assert steps[boundaries].max() <= np.quantile(steps, 0.9999)


def test_algorithmic_latency_is_25_ms_and_within_40() -> None:
    converter = DspVoiceConverter()
    assert converter.latency_ms == pytest.approx(25.0)
    assert converter.latency_ms <= 40.0
    # An identity formant/pitch pass reconstructs the input, delayed by exactly the latency.
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(RATE) * 0.1).astype(np.float32)
    y = converter.process(x, converter.new_state(), VoiceParams(0.0, 1.0))
    lag = converter.config.latency_samples
    corr = [float(np.dot(y[k:], x[: x.size - k])) for k in range(lag - 3, lag + 4)]
    assert int(np.argmax(corr)) + lag - 3 == lag
    np.testing.assert_allclose(y[lag + 4800 :], x[4800 : x.size - lag], atol=0.02)


def test_odd_chunk_sizes_still_stream_seamlessly(speech: np.ndarray) -> None:
    params = PRESETS["high"]
    converter = DspVoiceConverter()
    state = converter.new_state()
    pieces, start = [], 0
    for size in [333, 960, 17, 1200, 480] * 40:
        if start + size > speech.size:
            break
        pieces.append(converter.process(speech[start : start + size], state, params))
        assert pieces[-1].size == size
        start += size
    out = np.concatenate(pieces)
    whole = convert_whole(speech[:start], params)
    # one hop of extra delay at most, taken once; after that the stream equals the whole-file run
    best = min(range(0, 2 * converter.config.hop + converter.config.latency_samples + 1),
               key=lambda d: float(np.mean((out[d + 4800 : d + 9600] - whole[4800:9600]) ** 2)))
    np.testing.assert_allclose(out[best + 4800 : best + 48000], whole[4800:48000], atol=2e-3)


def test_batch_of_mixed_streams_equals_each_alone(speech: np.ndarray) -> None:
    converter = DspVoiceConverter()
    params = [PRESETS["deep"], PRESETS["bright"], VoiceParams(0.0, 1.2)]
    starts = [0, 9600, 24000]
    batch_states = [converter.new_state() for _ in params]
    solo_states = [converter.new_state() for _ in params]
    for k in range(20):
        chunks = [speech[s + k * CHUNK : s + (k + 1) * CHUNK] for s in starts]
        together = converter.process_batch(chunks, batch_states, params)
        for i in range(3):
            alone = converter.process(chunks[i], solo_states[i], params[i])
            np.testing.assert_allclose(together[i], alone, atol=1e-5)


def test_state_is_small_versioned_and_refuses_garbage() -> None:
    config = DspConfig()
    converter = DspVoiceConverter(config)
    state = converter.new_state()
    converter.process(np.zeros(CHUNK, np.float32), state, VoiceParams(-3.0, 0.9))
    data = state.to_bytes(config)
    assert len(data) < 20_000
    again = DspState.from_bytes(data, config)
    np.testing.assert_array_equal(again.tail, state.tail)
    with pytest.raises(VoiceError):
        DspState.from_bytes(data[:-4], config)
    with pytest.raises(VoiceError):
        DspState.from_bytes(b"not a state at all, but long enough to hold a header", config)
    with pytest.raises(VoiceError):
        DspState.from_bytes(data, DspConfig(sample_rate=16000))
    poisoned = bytearray(data)
    poisoned[-4:] = np.array([np.nan], "<f4").tobytes()
    with pytest.raises(VoiceError):
        DspState.from_bytes(bytes(poisoned), config)


def test_silence_stays_silent_and_bad_samples_do_not_poison_the_stream() -> None:
    converter = DspVoiceConverter()
    state = converter.new_state()
    out = converter.process(np.zeros(4 * CHUNK, np.float32), state, PRESETS["deep"])
    assert np.max(np.abs(out)) < 1e-5
    bad = np.full(CHUNK, np.nan, np.float32)
    converter.process(bad, state, PRESETS["deep"])
    later = converter.process(np.zeros(CHUNK, np.float32), state, PRESETS["deep"])
    assert np.isfinite(later).all()
