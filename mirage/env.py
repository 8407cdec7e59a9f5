"""Typed reads of ``MIRAGE_*`` environment variables, with one behaviour for every reader.

The environment is read only at the edges (the CLI's ``main``, ``serve_app.settings``, a
deployment's constructor); everything below them receives typed values. Each function takes
the mapping explicitly (``os.environ`` at the edge, a dict in tests) and:

- returns ``default`` when the variable is unset or blank (whitespace only);
- returns the parsed value when it is well-formed and within its bounds;
- otherwise raises :class:`~mirage.errors.ConfigError` with one sentence naming the variable
  and the values it accepts. Nothing is clamped, and nothing falls back silently: a typo in a
  deployment's configuration stops the process that reads it, with that sentence in its log.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TypeVar

from mirage.errors import ConfigError

__all__ = ["ConfigError", "read_bool", "read_choice", "read_float", "read_int", "read_list", "read_str"]

T = TypeVar("T", bound=str)

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _raw(env: Mapping[str, str], name: str) -> str | None:
    """The stripped value, or None when unset or blank."""
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" between {lo:g} and {hi:g}"
    if lo is not None:
        return f" of at least {lo:g}"
    if hi is not None:
        return f" of at most {hi:g}"
    return ""


def read_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """1/true/yes/on or 0/false/no/off (any case)."""
    raw = _raw(env, name)
    if raw is None:
        return default
    word = raw.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"{name} must be 1 or 0 (or true/false, yes/no, on/off), got {_shown(raw)}.")


def read_int(env: Mapping[str, str], name: str, default: int, *, lo: int | None = None, hi: int | None = None) -> int:
    """A whole number in ASCII digits (an optional sign), within ``lo``..``hi`` (inclusive) when given."""
    raw = _raw(env, name)
    if raw is None:
        return default
    if not _INT.fullmatch(raw):
        raise ConfigError(f"{name} must be a whole number{_range(lo, hi)}, got {_shown(raw)}.")
    value = int(raw)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{name} must be a whole number{_range(lo, hi)}, got {value}.")
    return value


def read_float(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    lo: float | None = None,
    hi: float | None = None,
    positive: bool = False,
) -> float:
    """A finite decimal number, within ``lo``..``hi`` (inclusive) when given; ``positive``: above 0."""
    raw = _raw(env, name)
    if raw is None:
        return default
    what = "a positive number" if positive else "a number"
    if not _FLOAT.fullmatch(raw) or not math.isfinite(float(raw)):
        raise ConfigError(f"{name} must be {what}{_range(lo, hi)}, got {_shown(raw)}.")
    value = float(raw)
    if (positive and value <= 0) or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{name} must be {what}{_range(lo, hi)}, got {raw}.")
    return value


def read_choice(env: Mapping[str, str], name: str, default: T, choices: Sequence[T]) -> T:
    """One of ``choices`` (matched without regard to case)."""
    raw = _raw(env, name)
    if raw is None:
        return default
    for choice in choices:
        if raw.lower() == choice.lower():
            return choice
    raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {_shown(raw)}.")


def read_str(env: Mapping[str, str], name: str, default: str | None = None, *, strip: bool = True) -> str | None:
    """Free text (paths, URLs, secrets); ``strip=False`` keeps a secret exactly as set. Never echoed."""
    value = env.get(name)
    if value is None or not value.strip():
        return default
    return value.strip() if strip else value


def read_list(env: Mapping[str, str], name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    """A comma-separated list, items stripped, blanks dropped; unset or blank: ``default``."""
    raw = _raw(env, name)
    if raw is None:
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())
