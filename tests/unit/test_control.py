"""Session/control messages, API-key checks and env settings of the served app."""

from __future__ import annotations

import base64
import json

import pytest

from mirage.errors import ConfigError
from serve_app.auth import MISSING_KEY_MESSAGE, WRONG_KEY_MESSAGE, key_from_headers, key_matches, rejection_message
from serve_app.control import (
    ControlError,
    Ping,
    SetOptions,
    SetReference,
    decode_reference,
    parse_control,
    parse_offer,
)
from serve_app.settings import AuthSettings, Settings

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- control messages -----------------------------------------------------------------


def test_valid_control_messages_parse_to_their_types() -> None:
    assert parse_control('{"type": "ping", "id": 3}') == Ping(type="ping", id=3)
    msg = parse_control(json.dumps({"type": "set_options", "id": 4, "max_faces": 2, "fallback": "hold"}))
    assert isinstance(msg, SetOptions) and msg.max_faces == 2 and msg.fallback == "hold" and msg.swapper is None
    ref = parse_control(json.dumps({"type": "set_reference", "id": 5, "reference_b64": _b64(PNG)}))
    assert isinstance(ref, SetReference) and ref.id == 5
    # Bytes (a binary data-channel message) are accepted when they are UTF-8 JSON.
    assert isinstance(parse_control(b'{"type": "ping"}'), Ping)


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ("not json at all", "not valid JSON"),
        ("[1, 2, 3]", "JSON object"),
        ('{"type": "explode", "id": 1}', "Unknown message type"),
        ('{"id": 1}', "Unknown message type"),
        ('{"type": "set_options", "id": 1, "max_faces": 0}', "max_faces"),
        ('{"type": "set_options", "id": 1, "max_faces": "two"}', "max_faces"),
        ('{"type": "set_options", "id": 1, "fallback": "reveal"}', "fallback"),
        ('{"type": "set_options", "id": 1, "swapper": "deepfake9000"}', "swapper"),
        ('{"type": "set_options", "id": 1, "colour": "red"}', "colour"),
        (b"\xff\xfe\x00garbage", "UTF-8"),
    ],
)
def test_garbage_becomes_a_clear_error(message: str | bytes, fragment: str) -> None:
    with pytest.raises(ControlError) as info:
        parse_control(message)
    assert info.value.code == "bad_request"
    assert fragment in info.value.message
    assert info.value.message.endswith(".")


def test_error_keeps_the_request_id_when_it_can() -> None:
    with pytest.raises(ControlError) as info:
        parse_control('{"type": "set_options", "id": 42, "max_faces": 99}')
    assert info.value.request_id == 42


def test_error_message_does_not_echo_huge_input() -> None:
    junk = "A" * 100_000
    with pytest.raises(ControlError) as info:
        parse_control(json.dumps({"type": "set_options", "id": 1, "swapper": junk}))
    assert len(info.value.message) < 300


# --- offers ---------------------------------------------------------------------------


def test_offer_defaults_and_hidden_key() -> None:
    offer = parse_offer(json.dumps({"type": "offer", "sdp": "v=0\r\n", "reference_b64": "eA==", "api_key": "s3cret"}))
    assert offer.options.swapper == "mesh" and offer.options.max_faces is None and offer.options.fallback is None
    assert "s3cret" not in repr(offer)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"type": "offer", "reference_b64": "eA=="}, "bad_offer"),
        ({"type": "offer", "sdp": "", "reference_b64": "eA=="}, "bad_offer"),
        ({"type": "offer", "sdp": "v=0", "sdp_type": "answer", "reference_b64": "eA=="}, "bad_offer"),
        ({"type": "ping"}, "bad_request"),
        ({"type": "offer", "sdp": "v=0", "reference_b64": "eA==", "options": {"max_faces": 50}}, "bad_request"),
    ],
)
def test_bad_offers(payload: dict, code: str) -> None:
    with pytest.raises(ControlError) as info:
        parse_offer(json.dumps(payload))
    assert info.value.code == code


# --- reference photo bytes ------------------------------------------------------------------


def test_reference_base64_and_data_url() -> None:
    assert decode_reference(_b64(PNG), 1000) == PNG
    assert decode_reference("data:image/png;base64," + _b64(PNG), 1000) == PNG


def test_reference_not_base64() -> None:
    with pytest.raises(ControlError) as info:
        decode_reference("this is *not* base64!", 1000)
    assert info.value.code == "bad_reference" and "base64" in info.value.message


def test_reference_too_large_is_refused_before_decoding() -> None:
    limit = 1024 * 1024
    big = "A" * (limit * 2)  # valid base64 alphabet, 1.5 MB decoded
    with pytest.raises(ControlError) as info:
        decode_reference(big, limit)
    assert info.value.code == "bad_reference" and "larger than 1 MB" in info.value.message


# --- auth -----------------------------------------------------------------------------------


def test_api_key_checks() -> None:
    off = AuthSettings()
    assert key_matches(off, None) and key_matches(off, "anything")
    on = AuthSettings(api_key="k3y", require_api_key=True)
    assert key_matches(on, "k3y")
    assert not key_matches(on, "k3Y") and not key_matches(on, "") and not key_matches(on, None)
    assert rejection_message(on, None) == MISSING_KEY_MESSAGE
    assert rejection_message(on, "nope") == WRONG_KEY_MESSAGE
    assert rejection_message(on, "k3y") is None
    assert "k3y" not in repr(on)


def test_key_from_headers() -> None:
    assert key_from_headers({"X-API-Key": " abc "}) == " abc "  # compared as sent
    assert key_from_headers({"authorization": "Bearer xyz"}) == "xyz"
    assert key_from_headers({"Authorization": "Basic xyz"}) is None
    assert key_from_headers({}) is None


# --- settings from the environment ------------------------------------------------------------


def test_settings_defaults_need_no_network() -> None:
    s = Settings.from_env({})
    assert s.ice.stun_urls == () and s.ice.turn_urls == ()
    assert s.session.fallback == "blur" and s.session.badge and s.session.max_faces == 1
    assert s.session.max_sessions_per_replica == 4
    assert not s.auth.require_api_key


def test_settings_from_env() -> None:
    env = {
        "MIRAGE_STUN_URLS": "stun:a.example:3478, stun:b.example:3478",
        "MIRAGE_TURN_URL": "turn:t.example:3478?transport=udp",
        "MIRAGE_TURN_USER": "u",
        "MIRAGE_TURN_PASS": "p4ss",
        "MIRAGE_FORCE_RELAY": "1",
        "MIRAGE_PREFER_H264": "true",
        "MIRAGE_MAX_FACES": "3",
        "MIRAGE_BADGE": "0",
        "MIRAGE_FALLBACK": "hold",
        "MIRAGE_API_KEY": "secret",
        "MIRAGE_REQUIRE_API_KEY": "1",
    }
    s = Settings.from_env(env)
    assert s.ice.stun_urls == ("stun:a.example:3478", "stun:b.example:3478")
    assert s.ice.turn_urls == ("turn:t.example:3478?transport=udp",)
    assert s.ice.force_relay and s.ice.prefer_h264
    assert s.session.max_faces == 3 and not s.session.badge and s.session.fallback == "hold"
    assert s.auth.require_api_key and key_matches(s.auth, "secret")
    assert "p4ss" not in repr(s) and "secret" not in repr(s)


def test_settings_bad_values_fail_clearly() -> None:
    # One behaviour for every variable (mirage.env): a value that is set but unusable stops
    # start-up with one sentence naming it; nothing is silently replaced or clamped.
    for env, name in (({"MIRAGE_MAX_FACES": "many"}, "MIRAGE_MAX_FACES"), ({"MIRAGE_FALLBACK": "reveal"}, "MIRAGE_FALLBACK"),
                      ({"MIRAGE_BADGE": "maybe"}, "MIRAGE_BADGE"), ({"MIRAGE_MAX_FACES": "99"}, "MIRAGE_MAX_FACES")):
        with pytest.raises(ConfigError, match=f"^{name} must be"):
            Settings.from_env(env)
    assert Settings.from_env({"MIRAGE_MAX_FACES": "8"}).session.max_faces == 8
    with pytest.raises(ValueError, match="MIRAGE_API_KEY"):
        Settings.from_env({"MIRAGE_REQUIRE_API_KEY": "1"})


# --- strict types, huge numbers, MIME base64 (issue 10) --------------------------------------


@pytest.mark.parametrize(
    "fields",
    [{"max_faces": "2"}, {"max_faces": True}, {"max_faces": 2.0}, {"mouth_mask": "yes"}, {"mouth_mask": 1},
     {"mouth_mask": "true"}, {"swapper": ["mesh"]}, {"fallback": 1}],
)
def test_set_options_does_not_coerce(fields: dict) -> None:  # type: ignore[type-arg]
    import json as _json

    from serve_app.control import ControlError, parse_control

    with pytest.raises(ControlError) as err:
        parse_control(_json.dumps({"type": "set_options", "id": 3, **fields}))
    assert err.value.code == "bad_request" and err.value.request_id == 3
    assert err.value.message.startswith("Invalid ")


def test_huge_json_numbers_are_a_clean_error() -> None:
    from serve_app.control import ControlError, parse_control, parse_offer

    for text in ('{"type": "ping", "id": ' + "9" * 5000 + "}", '{"type": "ping", "id": ' + "9" * 19 + "}",
                 '{"type": "set_options", "max_faces": -' + "1" * 4400 + "}", '{"type": "ping", "id": NaN}',
                 '{"type": "ping", "id": Infinity}'):
        with pytest.raises(ControlError) as err:
            parse_control(text)
        assert err.value.code == "bad_request"
    with pytest.raises(ControlError) as err:
        parse_offer('{"type": "offer", "sdp": "v=0", "reference_b64": "AA==", "options": {"max_faces": ' + "7" * 4400 + "}}")
    assert err.value.code == "bad_request"
    assert parse_control('{"type": "ping", "id": 123456789012345678}').id == 123456789012345678


def test_mime_base64_with_line_breaks_is_accepted() -> None:
    import base64

    from serve_app.control import decode_reference

    data = bytes(range(256)) * 40
    mime = base64.encodebytes(data).decode("ascii")  # 76-character lines
    assert "\n" in mime
    assert decode_reference(mime, 1 << 20) == data
    assert decode_reference(mime.replace("\n", "\r\n"), 1 << 20) == data
    assert decode_reference("data:image/png;base64," + mime, 1 << 20) == data



def test_reference_photo_from_base64_or_a_binary_message() -> None:
    import base64 as _b64

    from serve_app.control import ControlError, pack_binary, reference_photo, split_binary

    photo = b"\x89PNG" + bytes(range(200))
    message = pack_binary({"type": "offer", "sdp": "v=0"}, photo)
    header, body = split_binary(message)
    assert json.loads(header) == {"type": "offer", "sdp": "v=0"} and body == photo
    assert split_binary('{"type": "ping"}') == ('{"type": "ping"}', None)
    assert reference_photo(None, body, 1 << 20) == photo
    assert reference_photo(_b64.b64encode(photo).decode(), None, 1 << 20) == photo
    for b64, raw, code in ((None, None, "bad_request"), ("eA==", photo, "bad_request"), (None, b"", "bad_reference"),
                           (None, b"x" * (12 << 20), "bad_reference")):
        with pytest.raises(ControlError) as err:
            reference_photo(b64, raw, 10 << 20, request_id=4)
        assert err.value.code == code and err.value.request_id == 4
    for broken in (b"MRG1", b"MRG1\x00\x00\x00\x09{}", b"MRG1\xff\xff\xff\xff{}"):
        with pytest.raises(ControlError):
            split_binary(broken)


def test_the_client_frames_binary_messages_as_the_server_reads_them() -> None:
    from mirage.client import session as client
    from serve_app import control

    assert client.BINARY_MAGIC == control.BINARY_MAGIC
    header, photo = control.split_binary(client.pack_binary({"type": "set_reference", "id": 2}, b"abc"))
    assert json.loads(header) == {"type": "set_reference", "id": 2} and photo == b"abc"


def test_set_options_voice_fields_are_strict() -> None:
    from serve_app.control import SetOptions

    msg = parse_control(json.dumps({"type": "set_options", "id": 5, "voice": "deep", "pitch_semitones": -4, "formant": 0.9}))
    assert isinstance(msg, SetOptions)
    assert msg.voice_options() == {"voice": "deep", "pitch_semitones": -4.0, "formant": 0.9}
    assert parse_control('{"type": "set_options", "id": 6, "max_faces": 2}').voice_options() == {}  # type: ignore[union-attr]
    for bad, field in (
        ({"voice": 3}, "voice"),
        ({"voice": ""}, "voice"),
        ({"pitch_semitones": "3"}, "pitch_semitones"),
        ({"formant": True}, "formant"),
    ):
        with pytest.raises(ControlError) as err:
            parse_control(json.dumps({"type": "set_options", "id": 7, **bad}))
        assert field in err.value.message and err.value.request_id == 7
