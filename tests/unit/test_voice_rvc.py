"""The RVC path's real loading and streaming code on stand-in ContentVec / generator models (never the real ones),
with the real SwiftF0 pitch model from its wheel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mirage.errors import ModelUnavailableError
from mirage.voice.config import parse_voice
from mirage.voice.convert import VOICE_UNAVAILABLE, VoiceChunk, VoiceConverterCore, VoiceCoreConfig
from mirage.voice.rvc import RvcConfig, RvcState, coarse_pitch, load_rvc_converter
from mirage.weights.manifest import load_manifest
from standins.speech import espeak_available, median_f0, speak
from standins.voice import build_contentvec_standin, build_rvc_generator_standin

CHUNK = 960

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (scripts/test.sh installs it)")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rvc")
    contentvec = build_contentvec_standin(root / "vec-768-layer-12_standin.onnx")
    voices = root / "voice"
    build_rvc_generator_standin(voices / "alice_standin.onnx")
    build_rvc_generator_standin(voices / "bob_fixed_standin.onnx", dynamic_batch=False)
    (voices / "not_a_generator_standin.onnx").write_bytes(contentvec.read_bytes())
    return contentvec, voices


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return speak()


def _stream(converter, x: np.ndarray, voice: str, pitch: float = 0.0) -> tuple[np.ndarray, bytes]:  # type: ignore[no-untyped-def]
    selection = parse_voice(voice, pitch=pitch)
    state: bytes | None = None
    out = []
    for k in range(x.size // CHUNK):
        result = converter.convert_batch([VoiceChunk(x[k * CHUNK : (k + 1) * CHUNK], selection, state, k)])[0]
        assert result.ok, result.error
        assert result.samples is not None and result.samples.size == CHUNK
        state = result.state
        out.append(result.samples)
    assert state is not None
    return np.concatenate(out), state


def test_manifest_declares_contentvec_with_licence_and_io() -> None:
    entry = load_manifest().get("contentvec_768_l12")
    assert entry.stage == "voice" and entry.required is False and "MIT" in entry.licence
    assert entry.file == "voice/vec-768-layer-12.onnx" and entry.url_env == "MIRAGE_CONTENTVEC_URL"
    assert entry.notes and "16 kHz" in entry.notes


def test_missing_contentvec_is_one_clear_sentence(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="models fetch contentvec_768_l12"):
        load_rvc_converter(rvc_dir=tmp_path, contentvec_path=tmp_path / "absent.onnx")


def test_pitch_flows_through_swiftf0_transposition_and_the_generator(models: tuple[Path, Path], speech: np.ndarray) -> None:
    contentvec, voices = models
    converter = load_rvc_converter(rvc_dir=voices, contentvec_path=contentvec)
    assert converter.contentvec.is_standin
    assert "alice_standin" in converter.available()
    out, state = _stream(converter, speech, "rvc:alice_standin", pitch=4.0)
    # the stand-in sings at the pitch it is given: SwiftF0's F0, transposed +4 st
    moved = 12 * np.log2(median_f0(out, 48000) / median_f0(speech, 48000))
    assert abs(moved - 4.0) <= 0.5, moved
    assert len(state) < 40_000 and converter.latency_ms < 60.0
    # the state is small and replica-independent: a fresh converter continues from it
    again = load_rvc_converter(rvc_dir=voices, contentvec_path=contentvec)
    sel = parse_voice("rvc:alice_standin", pitch=4.0)
    nxt = again.convert_batch([VoiceChunk(speech[:CHUNK], sel, state, 999)])[0]
    assert nxt.ok and not nxt.reset


def test_batches_mix_generators_fixed_and_dynamic_batch(models: tuple[Path, Path], speech: np.ndarray) -> None:
    contentvec, voices = models
    converter = load_rvc_converter(rvc_dir=voices, contentvec_path=contentvec)
    items = [
        VoiceChunk(speech[:CHUNK], parse_voice("rvc:alice_standin")),
        VoiceChunk(speech[CHUNK : 2 * CHUNK], parse_voice("rvc:bob_fixed_standin")),
        VoiceChunk(speech[:CHUNK], parse_voice("rvc:bob_fixed_standin", pitch=-3)),
        VoiceChunk(speech[:CHUNK], parse_voice("rvc:nobody")),
        VoiceChunk(speech[:CHUNK], parse_voice("rvc:not_a_generator_standin")),
        VoiceChunk(speech[:CHUNK], parse_voice("rvc:alice_standin"), state=b"junk"),
    ]
    results = converter.convert_batch(items)
    assert [r.ok for r in results] == [True, True, True, False, False, True]
    assert results[3].error == VOICE_UNAVAILABLE and results[4].error == VOICE_UNAVAILABLE
    assert results[5].reset


def test_core_lists_and_serves_rvc_voices(models: tuple[Path, Path], speech: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    contentvec, voices = models
    import mirage.voice.convert as convert_mod

    monkeypatch.setattr(
        convert_mod,
        "_load_rvc",
        lambda config: (load_rvc_converter(rvc_dir=voices, contentvec_path=contentvec), ""),
    )
    core = VoiceConverterCore(VoiceCoreConfig())
    assert "rvc:alice_standin" in core.available_voices()
    results = core.convert_batch(
        [VoiceChunk(speech[:CHUNK], parse_voice("deep")), VoiceChunk(speech[:CHUNK], parse_voice("rvc:alice_standin"))]
    )
    assert [r.converter for r in results] == ["dsp", "rvc"] and all(r.ok for r in results)
    assert core.latency_ms(parse_voice("rvc:alice_standin")) == pytest.approx(RvcConfig().latency_ms)


def test_rvc_state_round_trip_and_refusals() -> None:
    config = RvcConfig()
    state = RvcState.fresh(config)
    state.history[:] = 0.25
    data = state.to_bytes(config)
    back = RvcState.from_bytes(data, config)
    np.testing.assert_array_equal(back.history, state.history)
    for bad in (data[:-4], b"MVR1" + data[4:20], data.replace(b"MVR1", b"MVD1", 1)):
        with pytest.raises(Exception):
            RvcState.from_bytes(bad, config)


def test_coarse_pitch_matches_rvcs_mel_bins() -> None:
    bins = coarse_pitch(np.array([0.0, 50.0, 100.0, 1100.0, 5000.0]))
    assert bins[0] == 1 and bins[1] == 1 and bins[3] == 255 and bins[4] == 255
    assert 1 < bins[2] < 255


def test_a_batch1_contentvec_is_rewritten_to_dynamic_batch(tmp_path: Path, models: tuple[Path, Path], speech: np.ndarray) -> None:
    _, voices = models
    fixed = build_contentvec_standin(tmp_path / "vec_fixed_standin.onnx", dynamic_batch=False)
    converter = load_rvc_converter(rvc_dir=voices, contentvec_path=fixed)
    assert not isinstance(converter.contentvec.inputs[0].shape[0], int)
    assert converter.contentvec.path.name.endswith(".batch-dynamic.onnx")
    looped = load_rvc_converter(rvc_dir=voices, contentvec_path=fixed, dynamic_batch=False)
    assert isinstance(looped.contentvec.inputs[0].shape[0], int)
    items = [VoiceChunk(speech[i * CHUNK : (i + 1) * CHUNK], parse_voice("rvc:alice_standin")) for i in range(3)]
    a = converter._features(np.stack([np.resize(it.samples[::3], 6400) for it in items]))  # noqa: SLF001
    b = looped._features(np.stack([np.resize(it.samples[::3], 6400) for it in items]))  # noqa: SLF001
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
