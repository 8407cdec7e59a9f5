"""Typed settings of the served application, and where the environment enters.

Only :meth:`Settings.from_env` reads ``MIRAGE_*`` variables (once, in the
process that builds the application), through :mod:`mirage.env`; everything
below receives the typed values. A variable that is set but cannot be used
raises :class:`~mirage.errors.ConfigError` naming it and the values it accepts
(unset or blank: the default). The names and meanings follow the original
product's README.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from mirage.env import read_bool, read_choice, read_float, read_int, read_list, read_str
from mirage.errors import ConfigError
from mirage.voice.config import VoiceDefaults

logger = logging.getLogger(__name__)

FallbackPolicy = Literal["blur", "hold", "passthrough"]
FALLBACK_POLICIES: tuple[FallbackPolicy, ...] = get_args(FallbackPolicy)

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
    #: Tracked frames: landmarks + swap of a face in one FaceSwapper call (mirage.pipeline.fused).
    fuse_tracking: bool = True
    #: Temporal steadying of each swapped face against the last frame's (mirage.geometry.steady; 0: off).
    steady: float = 0.6
    audio_sync: bool = True
    #: MIRAGE_ALLOW_NONCOMMERCIAL=0: sessions may not ask for models licensed for non-commercial
    #: use only (InSwapper, buffalo_l), and /config does not offer them.
    allow_noncommercial: bool = True
    #: CodeFormer's fidelity weight ``w`` for sessions that do not choose one (MIRAGE_CODEFORMER_FIDELITY).
    codeformer_fidelity: float = 0.75

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
        b = base.ice
        ice = IceSettings(
            stun_urls=read_list(env, "MIRAGE_STUN_URLS", b.stun_urls),
            turn_urls=read_list(env, "MIRAGE_TURN_URL", b.turn_urls),
            turn_user=read_str(env, "MIRAGE_TURN_USER", b.turn_user, strip=False),
            turn_pass=read_str(env, "MIRAGE_TURN_PASS", b.turn_pass, strip=False),
            force_relay=read_bool(env, "MIRAGE_FORCE_RELAY", b.force_relay),
            prefer_h264=read_bool(env, "MIRAGE_PREFER_H264", b.prefer_h264),
            turn_tls_only=read_bool(env, "MIRAGE_TURN_TLS_ONLY", b.turn_tls_only),
            host_addresses=read_list(env, "MIRAGE_ICE_HOST_ADDRESSES", b.host_addresses),
            announced_address=read_str(env, "MIRAGE_ICE_ANNOUNCED_ADDRESS", b.announced_address),
            turn_secret=read_str(env, "MIRAGE_TURN_SECRET", b.turn_secret, strip=False),
            turn_ttl_s=read_int(env, "MIRAGE_TURN_TTL", b.turn_ttl_s, lo=60, hi=7 * 24 * 3600),
        )
        api_key = read_str(env, "MIRAGE_API_KEY", base.auth.api_key, strip=False)
        require = read_bool(env, "MIRAGE_REQUIRE_API_KEY", base.auth.require_api_key)
        if require and not api_key:
            raise ConfigError("MIRAGE_REQUIRE_API_KEY=1 needs MIRAGE_API_KEY to be set to the shared secret.")
        auth = AuthSettings(
            api_key=api_key,
            require_api_key=require,
            token_ttl_s=read_int(env, "MIRAGE_TOKEN_TTL", base.auth.token_ttl_s, lo=MIN_TOKEN_TTL_S, hi=MAX_TOKEN_TTL_S),
        )

        s = base.session
        fallback: FallbackPolicy = read_choice(env, "MIRAGE_FALLBACK", s.fallback, FALLBACK_POLICIES)
        session = replace(
            s,
            max_faces=read_int(env, "MIRAGE_MAX_FACES", s.max_faces, lo=1, hi=s.max_faces_limit),
            badge=read_bool(env, "MIRAGE_BADGE", s.badge),
            allow_noncommercial=read_bool(env, "MIRAGE_ALLOW_NONCOMMERCIAL", s.allow_noncommercial),
            codeformer_fidelity=read_float(env, "MIRAGE_CODEFORMER_FIDELITY", s.codeformer_fidelity, lo=0.0, hi=1.0),
            fallback=fallback,
            max_sessions_per_replica=read_int(env, "MIRAGE_MAX_SESSIONS_PER_REPLICA", s.max_sessions_per_replica, lo=1, hi=1024),
        )
        return cls(ice=ice, auth=auth, session=session, voice=VoiceDefaults.from_env(env, base.voice))
