"""``python -m mirage voice``: the voice disguise (or an RVC voice) on a WAV file.

Same rules as ``swap``: bad input ends with one sentence and writes nothing
(a missing or empty file, text named ``.wav``, an unsupported encoding, a
header that declares more than the limit, an output that is not ``.wav`` or
whose folder is missing); the output is written atomically. ``--pitch`` or
``--formant`` without ``--voice`` means the DSP disguise with exactly those
values; none of the three means the default preset (``disguise``). The file runs through the same streaming code as a served session
(20 ms chunks, the state carried between them), with the latency removed so
the output lines up with the input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mirage.voice.audio import MAX_SECONDS, read_wav, resample, write_wav_atomic
from mirage.voice.config import DEFAULT_PRESET, DEFAULT_SAMPLE_RATE, PRESETS, VoiceError, VoiceSelection, parse_voice
from mirage.voice.convert import VoiceChunk, VoiceConverterCore, VoiceCoreConfig


def add_voice_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("voice", help="disguise or convert the voice in a WAV file")
    p.add_argument("--input", required=True, type=Path, help="speech as a WAV file (PCM or float, any rate)")
    p.add_argument("--output", required=True, type=Path, help="where to write the result (.wav, 16-bit)")
    p.add_argument(
        "--voice",
        default=None,
        help=f"off, a preset ({', '.join(PRESETS)}), custom, or rvc:NAME (models/voice/NAME.onnx); "
        f"without it, --pitch/--formant give the disguise exactly (none: {DEFAULT_PRESET})",
    )
    p.add_argument("--pitch", type=float, default=None, help="pitch shift in semitones (-12 to 12)")
    p.add_argument("--formant", type=float, default=None, help="formant (timbre) factor, 1.0 = unchanged (0.7 to 1.4)")
    p.add_argument("--chunk-ms", type=int, default=20, help="streaming chunk, ms (as served)")


def _check_paths(args: argparse.Namespace) -> None:
    if not args.input.is_file():
        raise VoiceError(f"Input file not found: {args.input}.")
    if args.input.suffix.lower() != ".wav":
        raise VoiceError(f"Unsupported input type {args.input.suffix!r}: use a .wav file.")
    if args.output.suffix.lower() != ".wav":
        raise VoiceError(f"The output {args.output.name} must be a .wav file.")
    if not args.output.parent.exists():
        raise VoiceError(f"Output folder does not exist: {args.output.parent}.")
    if args.output.resolve() == args.input.resolve():
        raise VoiceError("The output must not overwrite the input.")
    if not 5 <= args.chunk_ms <= 100 or args.chunk_ms % 5:
        raise VoiceError("--chunk-ms must be a multiple of 5 between 5 and 100.")


def convert_file_samples(
    samples: np.ndarray, rate: int, selection: VoiceSelection, chunk_ms: int = 20, core: VoiceConverterCore | None = None
) -> np.ndarray:
    """A recording at ``rate`` through the served streaming path (48 kHz, chunks), aligned with the input."""
    if core is None:
        rvc = selection.kind == "rvc"
        # The CLI is an edge: the model store and runtime settings come from the environment here.
        from mirage.runtime.select import RuntimeConfig
        from mirage.weights.provision import ProvisionConfig

        models = (ProvisionConfig.from_env(), RuntimeConfig.from_env()) if rvc else (None, None)
        core = VoiceConverterCore(VoiceCoreConfig(rvc=rvc, provision=models[0], runtime=models[1]))
    x = resample(samples, rate, DEFAULT_SAMPLE_RATE)
    chunk = DEFAULT_SAMPLE_RATE * chunk_ms // 1000
    lead = int(round(core.latency_ms(selection) * DEFAULT_SAMPLE_RATE / 1000.0))
    total = x.size + lead
    padded = np.concatenate([x, np.zeros((-total) % chunk + lead, np.float32)])
    state: bytes | None = None
    out: list[np.ndarray] = []
    for seq, start in enumerate(range(0, padded.size, chunk)):
        result = core.convert_batch([VoiceChunk(padded[start : start + chunk], selection, state, seq)])[0]
        if not result.ok or result.samples is None:
            if result.error == "voice_unavailable":
                why = (core.rvc_reason or "its model is not provisioned").rstrip(".")
                if core.rvc is not None:
                    why = f"no model at {core.rvc.generators_dir / (str(selection.rvc_model) + '.onnx')}"
                raise VoiceError(f"The voice {selection.label} is not available: {why}.")
            raise VoiceError(f"The voice conversion failed ({result.error}).")
        state = result.state
        out.append(result.samples)
    y = np.concatenate(out)[lead : lead + x.size]
    return resample(y, DEFAULT_SAMPLE_RATE, rate)


def run_voice(args: argparse.Namespace) -> int:
    _check_paths(args)
    voice = args.voice
    if voice is None and args.pitch is None and args.formant is None:
        voice = DEFAULT_PRESET
    selection = parse_voice(voice, args.pitch, args.formant)
    samples, rate = read_wav(args.input, max_seconds=MAX_SECONDS)
    if selection.kind == "off":
        print("mirage: --voice off: the output is the input, unchanged.", file=sys.stderr)
        out = samples
    else:
        out = convert_file_samples(samples, rate, selection, args.chunk_ms)
    write_wav_atomic(args.output, out, rate)
    print(f"wrote {args.output} ({samples.size / rate:.2f} s, voice {selection.label})")
    return 0
