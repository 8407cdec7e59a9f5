"""Typed settings of the served application, and where the environment enters.

Only :meth:`Settings.from_env` reads ``MIRAGE_*`` variables (once, in the
process that builds the application); everything below receives the typed
values. The names and meanings follow the original product's README.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from mirage.voice.config import DEFAULT_CHUNK_MS, VoiceDefaults, VoiceError, parse_voice

logger = logging.getLogger(__name__)

FallbackPolicy = Literal["blur", "hold", "passthrough"]
FALLBACK_POLICIES: tuple[str, ...] = get_args(FallbackPolicy)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A boolean variable: 1/true/yes/on or 0/false/no/off (anything else: the default, logged)."""
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    logger.warning("%s=%r is not a boolean (use 1 or 0); keeping the default %s", name, raw, int(default))
    return default


def env_list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list; blanks dropped."""
    raw = env.get(name, "")
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _env_int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        logger.warning("%s=%r is not an integer; keeping the default %d", name, raw, default)
        return default
    if not lo <= value <= hi:
        clamped = min(max(value, lo), hi)
        logger.warning("%s=%d is outside [%d, %d]; using %d", name, value, lo, hi, clamped)
        return clamped
    return value


@dataclass(frozen=True)
class IceSettings:
    """STUN/TURN for the server's peer connections (and what ``/config`` tells clients).

    No STUN server by default: host candidates are enough on a LAN or
    loopback, and nothing waits on an unreachable public server.
    """

    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_user: str | None = None
    turn_pass: str | None = field(default=None, repr=False)
    force_relay: bool = False
    prefer_h264: bool = False
    turn_tls_only: bool = False
    #: Host-candidate allow-list (IPs or interface names; MIRAGE_ICE_HOST_ADDRESSES), empty: every
    #: non-loopback address (aioice's default). NAT 1:1 address written into host candidates
    #: (MIRAGE_ICE_ANNOUNCED_ADDRESS). See mirage.webrtc.guard and docs/security.md.
    host_addresses: tuple[str, ...] = ()
    announced_address: str | None = None
    #: coturn's use-auth-secret shared secret (MIRAGE_TURN_SECRET): per-caller credentials valid
    #: ``turn_ttl_s`` (MIRAGE_TURN_TTL) seconds instead of the static user/pass (serve_app.turn).
    turn_secret: str | None = field(default=None, repr=False)
    turn_ttl_s: int = 86400


MIN_TOKEN_TTL_S = 10
MAX_TOKEN_TTL_S = 7 * 24 * 3600


def _env_int_strict(env: Mapping[str, str], name: str, default: int) -> int:
    """An integer variable that must be valid when set (no silent default, no clamping)."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    text = raw.strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{name}={raw!r} is not a whole number of seconds")
    return int(text)


@dataclass(frozen=True)
class AuthSettings:
    """Optional shared secret for session creation and control endpoints."""

    api_key: str | None = field(default=None, repr=False)
    require_api_key: bool = False
    #: Lifetime of the short-lived session tokens ``POST /token`` signs with the key (MIRAGE_TOKEN_TTL).
    token_ttl_s: int = 300

    def __post_init__(self) -> None:
        if not MIN_TOKEN_TTL_S <= self.token_ttl_s <= MAX_TOKEN_TTL_S:
            raise ValueError(
                f"MIRAGE_TOKEN_TTL must be within {MIN_TOKEN_TTL_S}..{MAX_TOKEN_TTL_S} seconds, got {self.token_ttl_s}"
            )

    @property
    def enabled(self) -> bool:
        return self.require_api_key


@dataclass(frozen=True)
class SessionSettings:
    """Per-session behaviour of the ingress.

    ``max_sessions_per_replica``: the ingress's own cap (refuses beyond it at
    once); the deployment's ``max_ongoing_requests`` must stay above it.
    ``max_side``: longest side of the copy a frame is analysed on (detector,
    landmarks); ``max_output_side``: longest side of the frames sent back (the
    camera's own resolution below it; the swap works at the face's resolution).
    ``deadline_ms``: a deployment call slower than this is abandoned and the
    frame goes out under the fallback policy. ``inflight``: frames processed
    concurrently per session (output stays in order). ``idle_timeout_s``: a
    session whose camera sent nothing for this long is reaped.
    """

    max_sessions_per_replica: int = 4
    max_side: int = 512
    max_output_side: int = 1280
    max_fps: int = 30
    inflight: int = 2
    deadline_ms: float = 250.0
    max_faces: int = 1
    max_faces_limit: int = 8
    badge: bool = True
    fallback: FallbackPolicy = "blur"
    hold_s: float = 0.5
    idle_timeout_s: float = 10.0
    offer_timeout_s: float = 15.0
    #: A socket that has not sent a valid, authenticated offer is closed after this long, and at
    #: most ``max_pending_sockets`` such sockets are open per replica (their own budget: they never
    #: hold a session slot). Refusals when full carry ``retry_after_s``.
    unauth_timeout_s: float = 10.0
    max_pending_sockets: int = 8
    retry_after_s: float = 5.0
    stats_interval_s: float = 1.0
    max_reference_bytes: int = 10 * 1024 * 1024
    max_reference_side: int = 4096
    detect_every: int = 10
    audio_sync: bool = True
    #: MIRAGE_ALLOW_NONCOMMERCIAL=0: sessions may not ask for models licensed for non-commercial
    #: use only (InSwapper, buffalo_l), and /config does not offer them.
    allow_noncommercial: bool = True

    def __post_init__(self) -> None:
        if self.max_sessions_per_replica < 1:
            raise ValueError("max_sessions_per_replica must be at least 1")
        if self.inflight < 1:
            raise ValueError("inflight must be at least 1")
        if self.fallback not in FALLBACK_POLICIES:
            raise ValueError(f"fallback must be one of {', '.join(FALLBACK_POLICIES)}, got {self.fallback!r}")
        if not 1 <= self.max_faces <= self.max_faces_limit:
            raise ValueError(f"max_faces must be within 1..{self.max_faces_limit}, got {self.max_faces}")
        if self.max_side < 64:
            raise ValueError("max_side must be at least 64")
        if self.max_output_side < self.max_side:
            raise ValueError(f"max_output_side ({self.max_output_side}) must be at least max_side ({self.max_side})")


@dataclass(frozen=True)
class Settings:
    ice: IceSettings = field(default_factory=IceSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    session: SessionSettings = field(default_factory=SessionSettings)
    #: The voice of new sessions (MIRAGE_VOICE_ENABLE, off by default), its chunk and fallback.
    voice: VoiceDefaults = field(default_factory=VoiceDefaults)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, base: Settings | None = None) -> Settings:
        """``base`` (defaults, or what the app config says) overridden by ``MIRAGE_*`` variables that are set."""
        env = os.environ if env is None else env
        base = base or cls()
        ice = IceSettings(
            stun_urls=env_list(env, "MIRAGE_STUN_URLS") if "MIRAGE_STUN_URLS" in env else base.ice.stun_urls,
            turn_urls=env_list(env, "MIRAGE_TURN_URL") if "MIRAGE_TURN_URL" in env else base.ice.turn_urls,
            turn_user=env.get("MIRAGE_TURN_USER") or base.ice.turn_user,
            turn_pass=env.get("MIRAGE_TURN_PASS") or base.ice.turn_pass,
            force_relay=env_flag(env, "MIRAGE_FORCE_RELAY", base.ice.force_relay),
            prefer_h264=env_flag(env, "MIRAGE_PREFER_H264", base.ice.prefer_h264),
            turn_tls_only=env_flag(env, "MIRAGE_TURN_TLS_ONLY", base.ice.turn_tls_only),
            host_addresses=env_list(env, "MIRAGE_ICE_HOST_ADDRESSES") or base.ice.host_addresses,
            announced_address=env.get("MIRAGE_ICE_ANNOUNCED_ADDRESS", "").strip() or base.ice.announced_address,
            turn_secret=env.get("MIRAGE_TURN_SECRET") or base.ice.turn_secret,
            turn_ttl_s=_env_int(env, "MIRAGE_TURN_TTL", base.ice.turn_ttl_s, 60, 7 * 24 * 3600),
        )
        api_key = env.get("MIRAGE_API_KEY") or base.auth.api_key
        require = env_flag(env, "MIRAGE_REQUIRE_API_KEY", base.auth.require_api_key)
        if require and not api_key:
            raise ValueError("MIRAGE_REQUIRE_API_KEY=1 needs MIRAGE_API_KEY to be set to the shared secret.")
        auth = AuthSettings(
            api_key=api_key,
            require_api_key=require,
            token_ttl_s=_env_int_strict(env, "MIRAGE_TOKEN_TTL", base.auth.token_ttl_s),
        )

        s = base.session
        fallback = env.get("MIRAGE_FALLBACK", s.fallback).strip().lower() or s.fallback
        if fallback not in FALLBACK_POLICIES:
            logger.warning("MIRAGE_FALLBACK=%r is not one of %s; keeping %s", fallback, FALLBACK_POLICIES, s.fallback)
            fallback = s.fallback
        session = replace(
            s,
            max_faces=_env_int(env, "MIRAGE_MAX_FACES", s.max_faces, 1, s.max_faces_limit),
            badge=env_flag(env, "MIRAGE_BADGE", s.badge),
            allow_noncommercial=env_flag(env, "MIRAGE_ALLOW_NONCOMMERCIAL", s.allow_noncommercial),
            fallback=fallback,  # type: ignore[arg-type]
            max_sessions_per_replica=_env_int(
                env, "MIRAGE_MAX_SESSIONS_PER_REPLICA", s.max_sessions_per_replica, 1, 1024
            ),
        )
        return cls(ice=ice, auth=auth, session=session, voice=_voice_from_env(env, base.voice))


def _voice_from_env(env: Mapping[str, str], base: VoiceDefaults) -> VoiceDefaults:
    """MIRAGE_VOICE_ENABLE (new sessions start disguised), MIRAGE_VOICE_DEFAULT, _CHUNK_MS, _FALLBACK.

    Like the other variables, a value that cannot be used is logged and the default kept; the
    voice itself is never left on the real voice because of a typo in the preset's name: a bad
    MIRAGE_VOICE_DEFAULT keeps the default preset.
    """
    enable = env_flag(env, "MIRAGE_VOICE_ENABLE", base.enable)
    default_voice = env.get("MIRAGE_VOICE_DEFAULT", "").strip() or base.default_voice
    try:
        parse_voice(default_voice)
    except VoiceError as exc:
        logger.warning("MIRAGE_VOICE_DEFAULT: %s Keeping %s.", exc, base.default_voice)
        default_voice = base.default_voice
    chunk_ms = _env_int(env, "MIRAGE_VOICE_CHUNK_MS", base.chunk_ms, 5, 100)
    if chunk_ms % 5:
        logger.warning("MIRAGE_VOICE_CHUNK_MS=%d is not a multiple of 5 ms; using %d", chunk_ms, DEFAULT_CHUNK_MS)
        chunk_ms = DEFAULT_CHUNK_MS
    fallback = env.get("MIRAGE_VOICE_FALLBACK", "").strip().lower() or base.fallback
    if fallback not in ("local", "mute"):
        logger.warning("MIRAGE_VOICE_FALLBACK=%r is not local or mute; keeping %s", fallback, base.fallback)
        fallback = base.fallback
    return VoiceDefaults(enable=enable, default_voice=default_voice, chunk_ms=chunk_ms, fallback=fallback)  # type: ignore[arg-type]
