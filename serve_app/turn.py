"""TURN credentials for clients: coturn's REST scheme (``use-auth-secret``) and who may have them.

With ``MIRAGE_TURN_SECRET`` set (the same value as coturn's ``static-auth-secret``),
every caller that passed the API key/token check gets its own short-lived
credential: username ``<expiry>:<id>`` (expiry in Unix seconds,
``MIRAGE_TURN_TTL`` from now), password ``base64(HMAC-SHA1(secret, username))``.
coturn recomputes the HMAC from the username and refuses an expired or forged
one itself, so nothing is shared between the replicas and the relay.

Static ``MIRAGE_TURN_USER`` / ``MIRAGE_TURN_PASS`` keep working for simple
set-ups, with the same rule: an unauthenticated caller (no key, a wrong key, or
a server that requires no key at all) gets no TURN entry, because a TURN
credential lets its holder relay traffic to any address, not only to Mirage.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from serve_app.settings import IceSettings

#: The id part of a server-side credential (the ingress's own peer connections).
SERVER_ID = "mirage-server"


@dataclass(frozen=True)
class TurnCredential:
    username: str
    password: str = field(repr=False)
    expires_at: int


def turn_password(secret: str, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)), what coturn's use-auth-secret expects."""
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def mint_turn_credential(secret: str, ttl_s: int, user_id: str, now: float | None = None) -> TurnCredential:
    """A credential valid ``ttl_s`` seconds from ``now`` for ``user_id`` (no ``:`` in it)."""
    if not secret:
        raise ValueError("TURN REST credentials need MIRAGE_TURN_SECRET")
    if ttl_s <= 0:
        raise ValueError("MIRAGE_TURN_TTL must be positive")
    clean_id = user_id.replace(":", "_") or "mirage"
    expires_at = int(time.time() if now is None else now) + ttl_s
    username = f"{expires_at}:{clean_id}"
    return TurnCredential(username=username, password=turn_password(secret, username), expires_at=expires_at)


def new_client_id() -> str:
    """A random id for a caller's credential (no session exists yet when ``/config`` is asked)."""
    return f"mirage-{secrets.token_hex(6)}"


def credential_for(ice: IceSettings, user_id: str, now: float | None = None) -> tuple[str, str] | None:
    """(username, password) for ``user_id``: minted when a secret is set, else the static pair, else None."""
    if ice.turn_secret:
        cred = mint_turn_credential(ice.turn_secret, ice.turn_ttl_s, user_id, now)
        return cred.username, cred.password
    if ice.turn_user and ice.turn_pass:
        return ice.turn_user, ice.turn_pass
    return None


def with_turn_credential(servers: list[dict[str, Any]], ice: IceSettings, user_id: str | None,
                         now: float | None = None) -> list[dict[str, Any]]:
    """``servers`` (RTCConfiguration ``iceServers`` dicts) with credentials on the TURN entries.

    ``user_id`` None means the caller is not authenticated: TURN entries are dropped
    (a browser refuses a TURN URL without a credential anyway), STUN entries stay.
    """
    out: list[dict[str, Any]] = []
    pair = credential_for(ice, user_id, now) if user_id is not None else None
    for entry in servers:
        urls = entry.get("urls") or []
        urls = [urls] if isinstance(urls, str) else list(urls)
        if not any(str(u).lower().startswith("turn") for u in urls):
            out.append({"urls": urls})
            continue
        if pair is None:
            continue
        out.append({"urls": urls, "username": pair[0], "credential": pair[1]})
    return out
