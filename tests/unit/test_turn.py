"""TURN REST credentials (coturn use-auth-secret), who gets them, and the disclosure helpers."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from mirage.errors import ConfigError
from serve_app.disclosure import allowed_swappers, is_commercial, swapper_licences
from serve_app.ice import ice_server_dicts, rtc_configuration
from serve_app.settings import IceSettings, Settings
from serve_app.turn import SERVER_ID, credential_for, mint_turn_credential, turn_password, with_turn_credential

SECRET = "north-sea-secret"


def test_credential_is_coturn_rest_scheme() -> None:
    cred = mint_turn_credential(SECRET, 600, "sess-1", now=1_000_000)
    assert cred.username == "1000600:sess-1"
    assert cred.expires_at == 1_000_600
    want = base64.b64encode(hmac.new(SECRET.encode(), b"1000600:sess-1", hashlib.sha1).digest()).decode()
    assert cred.password == want == turn_password(SECRET, cred.username)
    assert SECRET not in repr(cred) and cred.password not in repr(cred)
    # a ':' in the id would shift coturn's parse of the expiry: it is replaced
    assert mint_turn_credential(SECRET, 60, "a:b", now=0).username == "60:a_b"
    with pytest.raises(ValueError):
        mint_turn_credential("", 60, "x")


def test_settings_from_env() -> None:
    s = Settings.from_env({"MIRAGE_TURN_SECRET": SECRET, "MIRAGE_TURN_TTL": "120", "MIRAGE_TURN_URL": "turn:h:3478"})
    assert s.ice.turn_secret == SECRET and s.ice.turn_ttl_s == 120
    assert SECRET not in repr(s)
    assert Settings.from_env({}).ice.turn_ttl_s == 86400
    with pytest.raises(ConfigError, match="^MIRAGE_TURN_TTL must be a whole number between 60 and 604800, got 5"):
        Settings.from_env({"MIRAGE_TURN_TTL": "5"})  # refused by name, not clamped
    assert Settings.from_env({}).ice.turn_tls_only is False
    assert Settings.from_env({"MIRAGE_ALLOW_NONCOMMERCIAL": "0"}).session.allow_noncommercial is False
    assert Settings.from_env({}).session.allow_noncommercial is True


def test_unauthenticated_callers_get_no_turn_entry() -> None:
    ice = IceSettings(stun_urls=("stun:s:3478",), turn_urls=("turn:h:3478",), turn_user="u", turn_pass="p")
    servers = ice_server_dicts(ice)
    assert with_turn_credential(servers, ice, None) == [{"urls": ["stun:s:3478"]}]
    authed = with_turn_credential(servers, ice, "c1")
    assert authed[1] == {"urls": ["turn:h:3478"], "username": "u", "credential": "p"}  # static pair still works


def test_secret_mints_per_caller_and_for_the_server() -> None:
    ice = IceSettings(turn_urls=("turn:h:3478",), turn_secret=SECRET, turn_ttl_s=300)
    entry = with_turn_credential(ice_server_dicts(ice), ice, "caller-7", now=1000)[0]
    assert entry["username"] == "1300:caller-7"
    assert entry["credential"] == turn_password(SECRET, "1300:caller-7")
    server_user, _ = credential_for(ice, SERVER_ID) or ("", "")
    assert server_user.endswith(":" + SERVER_ID)
    config = rtc_configuration(ice)
    assert config.iceServers and config.iceServers[0].username and config.iceServers[0].username.endswith(SERVER_ID)


def test_licences_and_noncommercial_filter() -> None:
    assert is_commercial("mesh") and not is_commercial("inswapper") and not is_commercial("nope")
    assert any("non-commercial" in row["licence"] for row in swapper_licences("inswapper"))
    assert allowed_swappers(["mesh", "inswapper"], False) == ["mesh"]
    assert allowed_swappers(["mesh", "inswapper"], True) == ["mesh", "inswapper"]


def test_desktop_client_prints_the_notice_once() -> None:
    import io

    from mirage.cam.app import CamApp
    from mirage.cam.status import StatusLine
    from mirage.disclosure import SYNTHETIC_NOTICE

    stream = io.StringIO()
    app = CamApp(None, None, None, None, status=StatusLine(stream, tty=False))  # type: ignore[arg-type]
    app.disclose()
    app.disclose()
    assert stream.getvalue().count(SYNTHETIC_NOTICE) == 1
    assert "synthetic" in SYNTHETIC_NOTICE and "right to use" in SYNTHETIC_NOTICE
