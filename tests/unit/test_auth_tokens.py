"""serve_app.auth: the API key and the short-lived tokens signed with it."""

from __future__ import annotations

import pytest

from serve_app.auth import (
    EXPIRED_TOKEN_MESSAGE,
    MISSING_KEY_MESSAGE,
    WRONG_KEY_MESSAGE,
    key_matches,
    mint_token,
    rejection_message,
    token_state,
)
from serve_app.settings import AuthSettings, Settings

AUTH = AuthSettings(api_key="s3cret-key", require_api_key=True, token_ttl_s=300)


def test_a_token_is_accepted_like_the_key_until_it_expires() -> None:
    token = mint_token(AUTH, now=1_000_000.0)
    assert token.expires_at == 1_000_300
    assert "s3cret" not in token.token
    assert key_matches(AUTH, token.token, now=1_000_299.0)
    assert rejection_message(AUTH, token.token, now=1_000_299.0) is None
    assert token_state(AUTH, token.token, now=1_000_300.0) == "expired"
    assert rejection_message(AUTH, token.token, now=1_000_300.0) == EXPIRED_TOKEN_MESSAGE
    assert key_matches(AUTH, "s3cret-key") and rejection_message(AUTH, None) == MISSING_KEY_MESSAGE


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t.replace("mt1.1000300.", "mt1.9000300."),  # a later expiry, same signature
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # a changed signature
        lambda t: "mt1.1000300",  # no signature
        lambda t: "mt1.soon.abc",  # not a number
    ],
)
def test_a_forged_or_broken_token_is_refused_as_a_wrong_key(tamper) -> None:  # type: ignore[no-untyped-def]
    forged = tamper(mint_token(AUTH, now=1_000_000.0).token)
    assert token_state(AUTH, forged, now=1_000_001.0) == "invalid"
    assert rejection_message(AUTH, forged, now=1_000_001.0) == WRONG_KEY_MESSAGE


def test_a_token_from_another_key_is_refused() -> None:
    other = AuthSettings(api_key="another-key", require_api_key=True)
    assert token_state(AUTH, mint_token(other, now=1_000_000.0).token, now=1_000_001.0) == "invalid"


def test_token_ttl_comes_from_the_environment() -> None:
    env = {"MIRAGE_API_KEY": "k", "MIRAGE_REQUIRE_API_KEY": "1", "MIRAGE_TOKEN_TTL": "60"}
    assert Settings.from_env(env).auth.token_ttl_s == 60
    for bad in ("nonsense", "2", "9", "-60", "60.5", "\u0666\u0660", str(7 * 24 * 3600 + 1)):
        with pytest.raises(ValueError, match="MIRAGE_TOKEN_TTL"):
            Settings.from_env({**env, "MIRAGE_TOKEN_TTL": bad})


def test_a_token_has_one_spelling() -> None:
    token = mint_token(AUTH, now=1_000_000.0).token
    _, expiry, mac = token.split(".")
    assert token_state(AUTH, token, now=1_000_001.0) == "valid"
    arabic = "".join(chr(0x0660 + int(d)) for d in expiry)
    for variant in (f"mt1.0{expiry}.{mac}", f"mt1.{arabic}.{mac}", f"mt1.+{expiry}.{mac}", f"mt1.{expiry}.{mac}=",
                    f"mt1. {expiry}.{mac}", f"mt1.{expiry}.{mac} "):
        assert token_state(AUTH, variant, now=1_000_001.0) == "invalid", variant


def test_keys_are_compared_as_sent() -> None:
    from serve_app.auth import key_from_headers, key_matches

    for sent in ("\ts3cret-key", "s3cret-key ", " s3cret-key", "s3cret-key\n", "S3CRET-KEY"):
        assert not key_matches(AUTH, sent), repr(sent)
        assert not key_matches(AUTH, key_from_headers({"Authorization": f"Bearer {sent}"})), repr(sent)
        assert not key_matches(AUTH, key_from_headers({"X-API-Key": sent})), repr(sent)
    assert key_matches(AUTH, key_from_headers({"authorization": "bearer s3cret-key"}))
    assert key_matches(AUTH, key_from_headers({"x-api-key": "s3cret-key"}))
