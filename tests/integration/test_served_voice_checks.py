"""The rest of the served voice checks (issue 12): formant, loudness, chunk boundaries, a killed converter.

One real served session (Ray + Serve, aiortc over 127.0.0.1, Opus both ways)
sends looped espeak-ng speech. Phases, each judged by Praat (never the
product's own code) on the audio that came back:

1. voice off — the reference for everything below;
2. a formant shift alone (pitch 0, formant ×1.15): F1 and F2 move by the
   factor within 10 % while F0 stays within ±0.5 st;
3. the ``deep`` preset: loudness within 1 dB of the plain voice and no step
   between samples larger than the plain voice's own (no clicks where 20 ms
   chunks meet);
4. the ``deep`` preset with the VoiceConverter replica killed: the real voice
   never comes back (the returned audio does not follow the sent waveform),
   the session stays connected, and the ingress counts its local fallbacks.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

import mirage.client.session as client_session
from standins.speech import espeak_available, formants_at, median_f0, rms_db, voiced_times
from tests.integration.peer import client_config
from tests.integration.served import ServedApp
from tests.integration.test_served_voice import (
    RATE,
    LoopedSpeech,
    RecordingSession,
    _best_correlation,
    _between,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (scripts/test.sh installs it)"),
]

PHASE_S = 5.0
SETTLE_S = 1.0
FORMANT = 1.15


def _formants(samples: np.ndarray) -> np.ndarray:
    """Median F1, F2 (Hz) over the voiced frames of ``samples``."""
    times = voiced_times(samples, RATE)
    assert times.size > 50, f"only {times.size} voiced frames came back"
    return np.nanmedian(formants_at(samples, RATE, times), axis=1)


def _kill_voice_replicas() -> int:
    import ray

    actors = [a for a in ray.util.list_named_actors(all_namespaces=True)
              if "VoiceConverter" in a["name"] and a["name"].startswith("SERVE_REPLICA")]
    for a in actors:
        ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=False)
    return len(actors)


def test_served_formant_loudness_boundaries_and_a_killed_converter(
    served: ServedApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_session, "ToneAudioTrack", LoopedSpeech)

    async def phase(session: RecordingSession) -> tuple[float, float]:
        start = time.monotonic() + SETTLE_S
        await asyncio.sleep(SETTLE_S + PHASE_S)
        return start, time.monotonic()

    async def run() -> dict[str, object]:
        session = RecordingSession(client_config(served.url, served.api_key, fps=10.0, audio=True))
        await session.connect()
        try:
            deadline = time.monotonic() + 20.0
            while not session.audio and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert session.audio, "no audio came back"
            off = await phase(session)
            ack = await session.set_options(voice="custom", pitch_semitones=0.0, formant=FORMANT)
            assert ack["type"] == "ack", ack
            formant = await phase(session)
            ack = await session.set_options(voice="deep")
            assert ack["type"] == "ack", ack
            deep = await phase(session)
            before = served.debug_state()["sessions"][0]["voice_stats"]
            killed = _kill_voice_replicas()
            killed_at = time.monotonic()
            await asyncio.sleep(PHASE_S)
            dead = (killed_at, time.monotonic())
            after = served.debug_state()["sessions"][0]["voice_stats"]
            return {"session": session, "off": off, "formant": formant, "deep": deep, "dead": dead,
                    "killed": killed, "before": before, "after": after, "state": session.connection_state}
        finally:
            await session.close()

    out = asyncio.run(run())
    session = out["session"]
    assert isinstance(session, RecordingSession)
    plain = _between(session.audio, *out["off"])  # type: ignore[misc]
    shifted = _between(session.audio, *out["formant"])  # type: ignore[misc]
    deep = _between(session.audio, *out["deep"])  # type: ignore[misc]
    dead = _between(session.audio, *out["dead"])  # type: ignore[misc]
    for name, part in (("off", plain), ("formant", shifted), ("deep", deep), ("killed", dead)):
        assert part.size > 0.8 * PHASE_S * RATE, f"{name}: only {part.size / RATE:.2f} s of audio came back"

    # 2. the formant shift moves the envelope, not the pitch
    ratios = _formants(shifted) / _formants(plain)
    st = 12 * np.log2(median_f0(shifted, RATE) / median_f0(plain, RATE))
    # 3. loudness and clicks
    loud_db = rms_db(deep) - rms_db(plain)
    step_plain = float(np.abs(np.diff(plain)).max())
    step_deep = float(np.abs(np.diff(deep)).max())
    # 4. the killed converter
    sent = LoopedSpeech().samples
    corr_plain, corr_dead = _best_correlation(sent, plain), _best_correlation(sent, dead)
    corr_dead_late = _best_correlation(sent, dead[2 * RATE:])
    before, after = out["before"], out["after"]
    assert isinstance(before, dict) and isinstance(after, dict)
    print(
        f"served voice checks: formant x{FORMANT} -> F1 x{ratios[0]:.3f}, F2 x{ratios[1]:.3f}, F0 {st:+.2f} st; "
        f"deep loudness {loud_db:+.2f} dB, max step {step_deep:.3f} (plain {step_plain:.3f}); "
        f"killed {out['killed']} replica(s): corr {corr_dead:.2f}/{corr_dead_late:.2f} (plain {corr_plain:.2f}), "
        f"voice stats before {before} after {after}"
    )
    for k, ratio in enumerate(ratios, start=1):
        assert abs(ratio / FORMANT - 1.0) <= 0.10, f"F{k} moved x{ratio:.3f}, asked x{FORMANT}"
    assert abs(st) <= 0.5, st
    assert abs(loud_db) <= 1.0, loud_db
    assert step_deep <= step_plain, (step_deep, step_plain)

    assert out["killed"] >= 1
    assert out["state"] == "connected", out["state"]
    # Whatever happened while the replica was down (local DSP disguise or silence), the real voice never came back.
    assert corr_plain > 0.6 and corr_dead < corr_plain - 0.2 and corr_dead_late < corr_plain - 0.2, (
        corr_plain, corr_dead, corr_dead_late)
    went_local = (after.get("fallbacks", 0) + after.get("muted", 0) + after.get("timeouts", 0)
                  - before.get("fallbacks", 0) - before.get("muted", 0) - before.get("timeouts", 0))
    assert went_local > 0, (before, after)
