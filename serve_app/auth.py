"""Optional shared-secret authentication (``MIRAGE_API_KEY`` + ``MIRAGE_REQUIRE_API_KEY=1``).

The key is compared in constant time. Browsers cannot set headers on a
WebSocket, so session creation also accepts the key inside the offer message;
HTTP control endpoints take the ``X-API-Key`` header (or ``Authorization:
Bearer``).

So that the long-lived key never has to reach a browser, a backend that holds
it can ask ``POST /token`` for a short-lived token (``MIRAGE_TOKEN_TTL``
seconds, 300 by default) and hand that to the page: a token is accepted
wherever the key is, until it expires. A token is ``mt1.<expiry>.<mac>``, the
expiry (Unix seconds) signed with HMAC-SHA256 under the key, so every replica
that knows the key checks it without shared state. A token cannot mint tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from serve_app.settings import AuthSettings

API_KEY_HEADER = "x-api-key"
TOKEN_PREFIX = "mt1."

MISSING_KEY_MESSAGE = "This server requires an API key: send it in the X-API-Key header (or as api_key in the offer)."
WRONG_KEY_MESSAGE = "The API key is not valid for this server."
EXPIRED_TOKEN_MESSAGE = "The session token has expired: ask your server for a new one (POST /token)."

TokenState = Literal["valid", "expired", "invalid"]


@dataclass(frozen=True)
class SessionToken:
    token: str = ""
    expires_at: int = 0


def _mac(key: str, expires_at: int) -> str:
    digest = hmac.new(key.encode("utf-8"), f"mirage-token:{expires_at}".encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def mint_token(auth: AuthSettings, now: float | None = None) -> SessionToken:
    """A token valid for ``auth.token_ttl_s`` seconds from ``now`` (needs the key to be configured)."""
    if not auth.api_key:
        raise ValueError("tokens are signed with MIRAGE_API_KEY, which is not set")
    expires_at = int(time.time() if now is None else now) + auth.token_ttl_s
    return SessionToken(token=f"{TOKEN_PREFIX}{expires_at}.{_mac(auth.api_key, expires_at)}", expires_at=expires_at)


def _canonical_expiry(text: str) -> bool:
    """The one spelling ``mint_token`` writes: ASCII digits, no sign, no leading zero, at most 12 digits."""
    return 0 < len(text) <= 12 and text.isascii() and text.isdigit() and (text == "0" or text[0] != "0")


def token_state(auth: AuthSettings, provided: str, now: float | None = None) -> TokenState:
    """Whether ``provided`` is a token signed with the key, and still valid (MAC compared in constant time)."""
    if not auth.api_key or not provided.startswith(TOKEN_PREFIX):
        return "invalid"
    expiry_text, _, mac = provided[len(TOKEN_PREFIX):].partition(".")
    if not _canonical_expiry(expiry_text) or not mac:
        return "invalid"
    expires_at = int(expiry_text)
    if not hmac.compare_digest(mac.encode("ascii", "replace"), _mac(auth.api_key, expires_at).encode("ascii")):
        return "invalid"
    return "valid" if (time.time() if now is None else now) < expires_at else "expired"


def is_the_key(auth: AuthSettings, provided: str | None) -> bool:
    """True when ``provided`` is the configured key itself (constant time); tokens are not."""
    if not provided or not auth.api_key:
        return False
    return hmac.compare_digest(provided.encode("utf-8"), auth.api_key.encode("utf-8"))


def key_matches(auth: AuthSettings, provided: str | None, now: float | None = None) -> bool:
    """True when auth is off, or ``provided`` is the key or a valid token."""
    if not auth.require_api_key:
        return True
    if not provided:
        return False
    if provided.startswith(TOKEN_PREFIX):
        return token_state(auth, provided, now) == "valid"
    return is_the_key(auth, provided)


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key from ``X-API-Key`` or ``Authorization: Bearer <key>`` (case-insensitive names).

    The key is taken as sent: no whitespace is stripped from it (the HTTP parser itself
    drops the header value's outer spaces), so ``"\tkey"`` or ``"key "`` is a different key.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    if lowered.get(API_KEY_HEADER):
        return lowered[API_KEY_HEADER]
    bearer = lowered.get("authorization", "")
    if bearer[:7].lower() == "bearer ":
        return bearer[7:] or None
    return None


def rejection_message(auth: AuthSettings, provided: str | None, now: float | None = None) -> str | None:
    """None when allowed; otherwise the one sentence to show (missing key, expired token, wrong key)."""
    if key_matches(auth, provided, now):
        return None
    if not provided:
        return MISSING_KEY_MESSAGE
    if provided.startswith(TOKEN_PREFIX) and token_state(auth, provided, now) == "expired":
        return EXPIRED_TOKEN_MESSAGE
    return WRONG_KEY_MESSAGE
