"""What a voice is: the DSP disguise's parameters, the named presets, and how a choice is parsed.

One parser (:func:`parse_voice`) serves every caller: the CLI (``--voice``,
``--pitch``, ``--formant``), the load client and the session's ``set_options``
(``voice``, ``pitch_semitones``, ``formant``). A choice is one of

- ``off``: the voice passes unchanged;
- a preset name (``deep``, ``low``, ``disguise``, ``high``, ``bright``), optionally
  with ``pitch``/``formant`` overriding the preset's values;
- ``custom`` or no name but ``pitch``/``formant`` given: the DSP disguise with
  exactly those values (the missing one neutral);
- ``rvc:NAME``: the neural converter with the RVC v2 generator ``NAME``
  (``models/voice/NAME.onnx``), ``pitch`` transposing it.

:class:`VoiceDefaults` holds the server-wide defaults; :meth:`VoiceDefaults.from_env`
parses ``MIRAGE_VOICE_ENABLE`` (and friends) from a mapping the edge passes in
(``serve_app/settings.py`` reads the environment, this module never does).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from mirage.env import read_bool, read_choice, read_int, read_str
from mirage.errors import ConfigError, MirageError


class VoiceError(MirageError):
    """A voice choice or voice input is not usable (unknown preset, value out of range, bad audio)."""


#: Allowed ranges (a wider shift stops sounding like speech).
PITCH_RANGE_ST = (-12.0, 12.0)
FORMANT_RANGE = (0.7, 1.4)

#: The streaming chunk the served path cuts audio into (WebRTC/Opus delivers 20 ms frames).
DEFAULT_CHUNK_MS = 20
#: WebRTC audio (Opus) is decoded at 48 kHz.
DEFAULT_SAMPLE_RATE = 48000

_RVC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class VoiceParams:
    """The DSP disguise: pitch shift in semitones, formant (timbre) factor (1.0 = unchanged)."""

    pitch_semitones: float = 0.0
    formant: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.pitch_semitones) and PITCH_RANGE_ST[0] <= self.pitch_semitones <= PITCH_RANGE_ST[1]):
            raise VoiceError(
                f"The pitch shift must be between {PITCH_RANGE_ST[0]:g} and {PITCH_RANGE_ST[1]:g} semitones, "
                f"got {self.pitch_semitones!r}."
            )
        if not (math.isfinite(self.formant) and FORMANT_RANGE[0] <= self.formant <= FORMANT_RANGE[1]):
            raise VoiceError(
                f"The formant factor must be between {FORMANT_RANGE[0]:g} and {FORMANT_RANGE[1]:g}, got {self.formant!r}."
            )

    @property
    def pitch_ratio(self) -> float:
        return float(2.0 ** (self.pitch_semitones / 12.0))

    @property
    def is_identity(self) -> bool:
        return self.pitch_semitones == 0.0 and self.formant == 1.0


#: Named presets: pitch and formant move together (lower and darker, or higher and brighter)
#: so the result keeps sounding like a person, not a chipmunk or a robot.
PRESETS: dict[str, VoiceParams] = {
    "deep": VoiceParams(pitch_semitones=-5.0, formant=0.86),
    "low": VoiceParams(pitch_semitones=-3.0, formant=0.92),
    "disguise": VoiceParams(pitch_semitones=-2.0, formant=1.12),
    "high": VoiceParams(pitch_semitones=3.0, formant=1.08),
    "bright": VoiceParams(pitch_semitones=5.0, formant=1.15),
}
#: What ``MIRAGE_VOICE_ENABLE=1`` turns on for new sessions.
DEFAULT_PRESET = "disguise"


@dataclass(frozen=True)
class VoiceSelection:
    """A parsed voice choice: ``kind`` off / dsp / rvc, the DSP values, the RVC model name."""

    kind: Literal["off", "dsp", "rvc"]
    params: VoiceParams = field(default_factory=VoiceParams)
    #: The preset it came from (``custom`` for explicit values), for display.
    name: str = "off"
    rvc_model: str | None = None

    @property
    def label(self) -> str:
        if self.kind == "off":
            return "off"
        if self.kind == "rvc":
            return f"rvc:{self.rvc_model}"
        return f"{self.name} ({self.params.pitch_semitones:+g} st, formant {self.params.formant:g})"

    def to_dict(self) -> dict[str, object]:
        return {
            "voice": "off" if self.kind == "off" else f"rvc:{self.rvc_model}" if self.kind == "rvc" else self.name,
            "pitch_semitones": self.params.pitch_semitones,
            "formant": self.params.formant,
        }


OFF = VoiceSelection(kind="off")


def parse_voice(voice: str | None, pitch: float | None = None, formant: float | None = None) -> VoiceSelection:
    """One voice choice from the user's three values; raises :class:`VoiceError` with one sentence."""
    name = (voice or "").strip()
    lowered = name.lower()
    if lowered.startswith("rvc:"):
        model = name[4:].strip()
        if not _RVC_NAME.match(model):
            raise VoiceError(f"RVC voice names are letters, digits, '.', '_' or '-' (at most 64), got {model[:40]!r}.")
        if formant is not None and formant != 1.0:
            raise VoiceError("--formant applies to the DSP disguise, not to an RVC voice.")
        return VoiceSelection(kind="rvc", params=VoiceParams(pitch_semitones=float(pitch or 0.0)), name="rvc", rvc_model=model)
    if lowered in ("", "custom"):
        if pitch is None and formant is None:
            if lowered == "custom":
                raise VoiceError("The custom voice needs --pitch and/or --formant.")
            return OFF
        return VoiceSelection(
            kind="dsp",
            params=VoiceParams(pitch_semitones=float(pitch or 0.0), formant=float(1.0 if formant is None else formant)),
            name="custom",
        )
    if lowered == "off":
        if pitch is not None or formant is not None:
            raise VoiceError("--pitch and --formant need a voice other than off.")
        return OFF
    preset = PRESETS.get(lowered)
    if preset is None:
        known = ", ".join(["off", *PRESETS, "custom", "rvc:NAME"])
        raise VoiceError(f"Unknown voice {name[:40]!r}; choose one of {known}.")
    params = VoiceParams(
        pitch_semitones=preset.pitch_semitones if pitch is None else float(pitch),
        formant=preset.formant if formant is None else float(formant),
    )
    return VoiceSelection(kind="dsp", params=params, name=lowered)


def selection_from_options(options: Mapping[str, object], current: VoiceSelection | None = None) -> VoiceSelection | None:
    """The voice a ``set_options`` message asks for (``voice``, ``pitch_semitones``, ``formant``), or ``None``
    when it names none of them. Values it leaves out keep the current voice's; wrong types are one sentence."""
    keys = ("voice", "pitch_semitones", "formant")
    if not any(k in options for k in keys):
        return None
    voice = options.get("voice")
    pitch = options.get("pitch_semitones")
    formant = options.get("formant")
    if voice is not None and not isinstance(voice, str):
        raise VoiceError("voice must be a string: off, a preset, custom or rvc:NAME.")
    for name, value in (("pitch_semitones", pitch), ("formant", formant)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise VoiceError(f"{name} must be a number.")
    if voice is None and current is not None and current.kind != "off":
        # Only values changed: keep the current voice (a preset keeps its name, rvc keeps its model).
        voice = f"rvc:{current.rvc_model}" if current.kind == "rvc" else current.name
        if current.kind == "dsp":
            pitch = current.params.pitch_semitones if pitch is None else pitch
            formant = current.params.formant if formant is None else formant
    return parse_voice(voice, _number(pitch), _number(formant))


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class VoiceDefaults:
    """Server-wide voice defaults.

    ``enable`` (``MIRAGE_VOICE_ENABLE``, default off): new sessions start with
    ``default_voice`` (``MIRAGE_VOICE_DEFAULT``, default the ``disguise`` preset)
    instead of their real voice; ``chunk_ms`` (``MIRAGE_VOICE_CHUNK_MS``, default 20)
    is the streaming chunk; ``fallback`` (``MIRAGE_VOICE_FALLBACK``) is what a
    late or failed voice call does: ``local`` (disguise in the ingress with the
    DSP converter, the default) or ``mute``; the real voice never goes out.
    """

    enable: bool = False
    default_voice: str = DEFAULT_PRESET
    chunk_ms: int = DEFAULT_CHUNK_MS
    fallback: Literal["local", "mute"] = "local"

    def __post_init__(self) -> None:
        parse_voice(self.default_voice)
        if not 5 <= self.chunk_ms <= 100 or self.chunk_ms % 5:
            raise VoiceError(f"The voice chunk must be a multiple of 5 ms between 5 and 100, got {self.chunk_ms}.")
        if self.fallback not in ("local", "mute"):
            raise VoiceError(f"The voice fallback must be local or mute, got {self.fallback!r}.")

    def initial_selection(self) -> VoiceSelection:
        """The voice a new session starts with."""
        return parse_voice(self.default_voice) if self.enable else OFF

    @classmethod
    def from_env(cls, env: Mapping[str, str], base: VoiceDefaults | None = None) -> VoiceDefaults:
        """``base`` (the defaults) overridden by ``MIRAGE_VOICE_ENABLE``, ``MIRAGE_VOICE_DEFAULT``,
        ``MIRAGE_VOICE_CHUNK_MS`` (5..100, a multiple of 5) and ``MIRAGE_VOICE_FALLBACK`` (local or mute).

        A value that cannot be used raises :class:`~mirage.errors.ConfigError` naming the variable,
        like every other variable (mirage.env): a typo in the preset's name stops start-up rather
        than leaving anyone on a voice they did not choose.
        """
        base = base or cls()
        default_voice = read_str(env, "MIRAGE_VOICE_DEFAULT", base.default_voice) or base.default_voice
        try:
            parse_voice(default_voice)
        except VoiceError as exc:
            raise ConfigError(f"MIRAGE_VOICE_DEFAULT must be a voice the server knows: {exc}") from None
        chunk_ms = read_int(env, "MIRAGE_VOICE_CHUNK_MS", base.chunk_ms, lo=5, hi=100)
        if chunk_ms % 5:
            raise ConfigError(f"MIRAGE_VOICE_CHUNK_MS must be a multiple of 5 ms between 5 and 100, got {chunk_ms}.")
        fallback: Literal["local", "mute"] = read_choice(env, "MIRAGE_VOICE_FALLBACK", base.fallback, ("local", "mute"))
        return cls(
            enable=read_bool(env, "MIRAGE_VOICE_ENABLE", base.enable),
            default_voice=default_voice,
            chunk_ms=chunk_ms,
            fallback=fallback,
        )
