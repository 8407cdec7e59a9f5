"""Optional shared-secret authentication (``MIRAGE_API_KEY`` + ``MIRAGE_REQUIRE_API_KEY=1``).

The key is compared in constant time. Browsers cannot set headers on a
WebSocket, so session creation also accepts the key inside the offer message;
HTTP control endpoints take the ``X-API-Key`` header (or ``Authorization:
Bearer``).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from serve_app.settings import AuthSettings

API_KEY_HEADER = "x-api-key"

MISSING_KEY_MESSAGE = "This server requires an API key: send it in the X-API-Key header (or as api_key in the offer)."
WRONG_KEY_MESSAGE = "The API key is not valid for this server."


def key_matches(auth: AuthSettings, provided: str | None) -> bool:
    """True when auth is off, or ``provided`` equals the configured key (constant time)."""
    if not auth.require_api_key:
        return True
    if not provided or not auth.api_key:
        return False
    return hmac.compare_digest(provided.encode("utf-8"), auth.api_key.encode("utf-8"))


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key from ``X-API-Key`` or ``Authorization: Bearer <key>`` (case-insensitive names)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if lowered.get(API_KEY_HEADER):
        return lowered[API_KEY_HEADER].strip()
    bearer = lowered.get("authorization", "")
    if bearer.lower().startswith("bearer "):
        return bearer[7:].strip() or None
    return None


def rejection_message(auth: AuthSettings, provided: str | None) -> str | None:
    """None when allowed; otherwise the one sentence to show (missing vs wrong key)."""
    if key_matches(auth, provided):
        return None
    return MISSING_KEY_MESSAGE if not provided else WRONG_KEY_MESSAGE
