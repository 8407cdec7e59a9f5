"""Voice choices, server defaults, the replica's batch interface and the ingress stream's privacy-first fallback."""

from __future__ import annotations

import numpy as np
import pytest

from mirage.errors import ConfigError
from mirage.voice.config import DEFAULT_PRESET, OFF, PRESETS, VoiceDefaults, VoiceError, parse_voice
from mirage.voice.convert import BAD_INPUT, VOICE_UNAVAILABLE, VoiceChunk, VoiceConverterCore, VoiceCoreConfig
from mirage.voice.stream import VoiceStream

CHUNK = 960


def tone(seconds: float = 1.0, freq: float = 140.0, rate: int = 48000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    # a buzzy voice-like source: harmonics with a falling spectrum
    x = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 30))
    return (0.1 * x).astype(np.float32)


def test_parse_voice_presets_custom_rvc_and_off() -> None:
    assert parse_voice(None) is OFF
    assert parse_voice("off") is OFF
    deep = parse_voice("deep")
    assert deep.kind == "dsp" and deep.params == PRESETS["deep"]
    assert parse_voice("deep", pitch=-7).params.pitch_semitones == -7
    assert parse_voice("deep", pitch=-7).params.formant == PRESETS["deep"].formant
    custom = parse_voice(None, pitch=3)
    assert custom.kind == "dsp" and custom.name == "custom" and custom.params.formant == 1.0
    assert parse_voice(None, formant=1.2).params.pitch_semitones == 0.0
    rvc = parse_voice("rvc:my_voice-2", pitch=12)
    assert rvc.kind == "rvc" and rvc.rvc_model == "my_voice-2" and rvc.params.pitch_semitones == 12
    assert rvc.to_dict()["voice"] == "rvc:my_voice-2"


@pytest.mark.parametrize(
    ("voice", "pitch", "formant"),
    [("chipmunk", None, None), ("deep", 13, None), (None, None, 2.0), ("off", 2, None), ("custom", None, None),
     ("rvc:../../etc/passwd", None, None), ("rvc:x", None, 1.2), (None, float("nan"), None)],
)
def test_bad_voice_choices_are_one_sentence(voice: str | None, pitch: float | None, formant: float | None) -> None:
    with pytest.raises(VoiceError) as info:
        parse_voice(voice, pitch, formant)
    message = str(info.value)
    assert message.endswith(".") and "\n" not in message


def test_voice_defaults_from_env() -> None:
    assert VoiceDefaults.from_env({}).initial_selection() is OFF
    on = VoiceDefaults.from_env({"MIRAGE_VOICE_ENABLE": "1"})
    assert on.enable and on.initial_selection().name == DEFAULT_PRESET
    custom = VoiceDefaults.from_env({"MIRAGE_VOICE_ENABLE": "true", "MIRAGE_VOICE_DEFAULT": "deep", "MIRAGE_VOICE_CHUNK_MS": "10"})
    assert custom.initial_selection().params == PRESETS["deep"] and custom.chunk_ms == 10
    for env in ({"MIRAGE_VOICE_ENABLE": "maybe"}, {"MIRAGE_VOICE_CHUNK_MS": "7"}, {"MIRAGE_VOICE_DEFAULT": "nope"},
                {"MIRAGE_VOICE_FALLBACK": "passthrough"}):
        with pytest.raises(ConfigError, match=f"^{next(iter(env))} must be"):
            VoiceDefaults.from_env(env)


@pytest.fixture(scope="module")
def core() -> VoiceConverterCore:
    return VoiceConverterCore(VoiceCoreConfig(rvc=False))


def test_core_batches_sessions_and_returns_state(core: VoiceConverterCore) -> None:
    x = tone()
    sel = [parse_voice("deep"), parse_voice("high"), OFF]
    states: list[bytes | None] = [None, None, None]
    for k in range(5):
        chunks = [VoiceChunk(x[k * CHUNK : (k + 1) * CHUNK], s, st, k) for s, st in zip(sel, states)]
        results = core.convert_batch(chunks)
        assert all(r.ok and r.samples is not None and r.samples.size == CHUNK for r in results)
        states = [r.state for r in results]
    assert states[0] is not None and states[1] is not None and states[2] is None
    np.testing.assert_array_equal(results[2].samples, x[4 * CHUNK : 5 * CHUNK])  # off passes through
    assert not np.allclose(results[0].samples, results[1].samples)


def test_core_per_item_errors_do_not_fail_the_batch(core: VoiceConverterCore) -> None:
    good = VoiceChunk(tone(0.02), parse_voice("deep"))
    results = core.convert_batch([
        good,
        VoiceChunk(np.zeros((2, 480), np.float32), parse_voice("deep")),
        VoiceChunk(np.zeros(0, np.float32), parse_voice("deep")),
        VoiceChunk(np.zeros(CHUNK, np.int16), parse_voice("deep")),
        VoiceChunk(tone(0.02), parse_voice("rvc:someone")),
        VoiceChunk(tone(0.02), parse_voice("low"), state=b"garbage state"),
    ])
    assert results[0].ok
    assert [r.error for r in results[1:4]] == [BAD_INPUT] * 3
    assert results[4].error == VOICE_UNAVAILABLE
    assert results[5].ok and results[5].reset
    assert "rvc:someone" not in core.available_voices() and "deep" in core.available_voices()


def _best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 2400) -> float:
    best = 0.0
    for lag in range(0, max_lag, 12):
        x, y = a[lag:], b[: b.size - lag]
        n = min(x.size, y.size)
        denom = float(np.linalg.norm(x[:n]) * np.linalg.norm(y[:n])) or 1.0
        best = max(best, abs(float(np.dot(x[:n], y[:n]))) / denom)
    return best


def test_a_failed_call_falls_back_seamlessly_and_never_to_the_real_voice(core: VoiceConverterCore) -> None:
    x = tone(1.0)
    selection = parse_voice("deep")
    served, flaky = VoiceStream(selection), VoiceStream(selection)
    out_served, out_flaky = [], []
    for k in range(x.size // CHUNK):
        piece = x[k * CHUNK : (k + 1) * CHUNK]
        c1 = served.request(piece)
        assert c1 is not None
        out_served.append(served.accept(c1, core.convert_batch([c1])[0]))
        c2 = flaky.request(piece)
        assert c2 is not None
        if k % 3 == 1:  # every third call "times out"
            out_flaky.append(flaky.fallback(c2))
        else:
            out_flaky.append(flaky.accept(c2, core.convert_batch([c2])[0]))
    a, b = np.concatenate(out_served), np.concatenate(out_flaky)
    np.testing.assert_allclose(a, b, atol=1e-4)  # the local disguise continued the same stream
    assert flaky.counters.fallbacks == sum(1 for k in range(x.size // CHUNK) if k % 3 == 1)
    assert _best_correlation(b, x) < 0.5  # it is not the input


def test_mute_fallback_and_rvc_local_fallback(core: VoiceConverterCore) -> None:
    x = tone(0.5)
    muted = VoiceStream(parse_voice("deep"), fallback="mute")
    chunk = muted.request(x[:CHUNK])
    assert chunk is not None
    assert np.all(muted.fallback(chunk) == 0) and muted.counters.muted == 1
    rvc = VoiceStream(parse_voice("rvc:someone", pitch=-4))
    outs = []
    for k in range(x.size // CHUNK):
        c = rvc.request(x[k * CHUNK : (k + 1) * CHUNK])
        assert c is not None
        outs.append(rvc.accept(c, core.convert_batch([c])[0]))  # unavailable here: disguised locally
    assert rvc.counters.fallbacks == x.size // CHUNK
    assert _best_correlation(np.concatenate(outs), x) < 0.5
    off = VoiceStream(OFF)
    assert off.request(x[:CHUNK]) is None and off.latency_ms == 0.0


def test_changing_preset_keeps_the_stream_changing_converter_restarts_it(core: VoiceConverterCore) -> None:
    s = VoiceStream(parse_voice("deep"))
    c = s.request(tone(0.02))
    assert c is not None
    s.accept(c, core.convert_batch([c])[0])
    s.set_selection(parse_voice("high"))
    c2 = s.request(tone(0.02))
    assert c2 is not None and c2.state is not None
    s.set_selection(parse_voice("rvc:x"))
    c3 = s.request(tone(0.02))
    assert c3 is not None and c3.state is None


def test_webrtc_frame_helpers_round_trip_through_av() -> None:
    from av import AudioFrame

    from mirage.voice.audio import frame_to_mono, mono_to_frame

    x = tone(0.02)
    for layout, channels in (("mono", 1), ("stereo", 2)):
        frame = AudioFrame.from_ndarray(mono_to_frame(x, channels), format="s16", layout=layout)
        frame.sample_rate = 48000
        assert frame.samples == CHUNK
        back = frame_to_mono(frame.to_ndarray(), channels)
        np.testing.assert_allclose(back, x, atol=1.0 / 32767)


def test_selection_from_set_options_messages() -> None:
    from mirage.voice.config import selection_from_options

    assert selection_from_options({"max_faces": 2}) is None
    deep = selection_from_options({"voice": "deep"})
    assert deep is not None and deep.params == PRESETS["deep"]
    lower = selection_from_options({"pitch_semitones": -7}, current=deep)
    assert lower is not None and lower.name == "deep" and lower.params.pitch_semitones == -7
    assert lower.params.formant == PRESETS["deep"].formant
    custom = selection_from_options({"formant": 1.2})
    assert custom is not None and custom.name == "custom" and custom.params.formant == 1.2
    rvc = selection_from_options({"pitch_semitones": 3}, current=parse_voice("rvc:alice"))
    assert rvc is not None and rvc.rvc_model == "alice" and rvc.params.pitch_semitones == 3
    assert selection_from_options({"voice": "off"}) is OFF
    for bad in ({"voice": 3}, {"pitch_semitones": "high"}, {"formant": True}, {"voice": "deep", "pitch_semitones": 40}):
        with pytest.raises(VoiceError):
            selection_from_options(bad)
