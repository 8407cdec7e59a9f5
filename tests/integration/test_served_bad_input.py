"""Bad input against the served app: each gets a clear 4xx or error message, nothing leaks.

Malformed SDP, an offer without video, references that are not an image, too
large or faceless, garbage on the data channel and the WebSocket, a wrong or
missing API key. At the end the ingress must have seen no unhandled event-loop
exception and hold no session or open peer connection.
"""

from __future__ import annotations

import asyncio
import json
import time

import cv2
import numpy as np
import pytest

from mirage.client.session import SessionRefused
from serve_app.auth import mint_token
from serve_app.settings import AuthSettings
from tests.integration.peer import (
    client_config,
    make_offer,
    offer_message,
    open_session,
    raw_exchange,
    reference_bytes,
)
from tests.integration.served import ServedApp, http

pytestmark = pytest.mark.integration


def _refused(served: ServedApp, first: object, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return asyncio.run(raw_exchange(served.ws_url, first, headers=headers))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def good_offer() -> str:
    return asyncio.run(make_offer())


def test_malformed_sdp(served: ServedApp) -> None:
    out = _refused(served, offer_message("v=0\r\nthis is not an SDP\r\n", api_key=served.api_key))
    assert out.error is not None and out.error["code"] == "bad_offer"
    assert out.error["message"].endswith(".") and len(out.error["message"]) < 200
    assert out.close_code == 4400


def test_offer_without_video(served: ServedApp) -> None:
    for sdp in (asyncio.run(make_offer(video=None)), asyncio.run(make_offer(video="recvonly"))):
        out = _refused(served, offer_message(sdp, api_key=served.api_key))
        assert out.error is not None and out.error["code"] == "bad_offer", out.messages
        assert "video" in out.error["message"]
        assert out.close_code == 4400


def test_not_json_and_wrong_first_message(served: ServedApp) -> None:
    out = _refused(served, "hello?")
    assert out.error["code"] == "bad_request" and "JSON" in out.error["message"] and out.close_code == 4400
    out = _refused(served, {"type": "ping", "id": 1})
    assert out.error["code"] == "bad_request" and "offer" in out.error["message"]


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize(
    ("reference", "code", "fragment"),
    [
        (b"%PDF-1.4 definitely not a photo" * 10, "bad_reference", "not a JPEG, PNG or WebP"),
        ("@@@ not base64 @@@", "bad_reference", "base64"),
        (b"\xff\xd8\xff" + b"\x00" * (11 * 1024 * 1024), "bad_reference", "larger than 10 MB"),
        # A PNG header declaring 20000x20000 pixels: refused before decoding.
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (20000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00" + b"\x00" * 64,
         "bad_reference", "20000x20000"),
        (None, "no_face", "No face"),  # a plain grey picture
    ],
    ids=["not-an-image", "not-base64", "too-large", "declared-too-big", "faceless"],
)
def test_bad_references(served: ServedApp, good_offer: str, reference: bytes | str | None, code: str,
                        fragment: str) -> None:
    if reference is None:
        reference = _png(np.full((480, 640, 3), 127, np.uint8))
    out = _refused(served, offer_message(good_offer, reference=reference, api_key=served.api_key))
    assert out.error is not None, out.messages
    assert out.error["code"] == code and fragment in out.error["message"], out.error
    assert out.close_code == 4400
    assert out.seconds < 20


def test_api_key_is_required(served: ServedApp, good_offer: str) -> None:
    out = _refused(served, offer_message(good_offer))
    assert out.error["code"] == "unauthorized" and "requires an API key" in out.error["message"]
    assert out.close_code == 4401
    out = _refused(served, offer_message(good_offer, api_key="wrong-key"))
    assert out.error["code"] == "unauthorized" and "not valid" in out.error["message"] and out.close_code == 4401
    # A wrong header key is refused even if the body carries the right one? The header wins when present.
    out = _refused(served, offer_message(good_offer, api_key=served.api_key), headers={"X-API-Key": "nope"})
    assert out.error["code"] == "unauthorized"
    # The real client reports it as a refusal with the server's sentence.
    with pytest.raises(SessionRefused) as info:
        asyncio.run(open_session(client_config(served.url, "wrong-key")))
    assert info.value.code == "unauthorized"
    # HTTP control endpoints: 401 with a clear detail.
    status, body = http(served.url + "/webrtc/sessions/nope/control", method="POST", body=b"{}",
                        headers={"X-API-Key": "wrong"})
    assert status == 401 and body["detail"] == "The API key is not valid for this server."
    status, body = http(served.url + "/webrtc/sessions/nope", method="DELETE")
    assert status == 401 and "requires an API key" in body["detail"]


def test_a_short_lived_token_stands_in_for_the_key(served: ServedApp, good_offer: str) -> None:
    """POST /token (the key itself required) gives a token a browser can use instead of the key;
    an expired token is refused with its own sentence."""
    status, body = http(served.url + "/token", method="POST")
    assert status == 401 and "requires an API key" in body["detail"]
    status, body = http(served.url + "/token", method="POST", headers={"X-API-Key": "wrong"})
    assert status == 401 and body["detail"] == "The API key is not valid for this server."
    status, body = http(served.url + "/token", method="POST", headers={"X-API-Key": served.api_key})
    assert status == 200 and body["ttl_s"] == 300 and body["token"].startswith("mt1.")
    token = body["token"]
    assert served.api_key not in token
    status, body = http(served.url + "/token", method="POST", headers={"Authorization": f"Bearer {token}"})
    assert status == 401 and "cannot ask for tokens" in body["detail"]

    async def run() -> int:
        session = await open_session(client_config(served.url, token, fps=10.0))
        try:
            await session.wait_frames(3, timeout=40)
            return session.stats.frames
        finally:
            await session.close()

    assert asyncio.run(run()) >= 3
    expired = mint_token(AuthSettings(api_key=served.api_key, require_api_key=True, token_ttl_s=10), now=time.time() - 60)
    out = _refused(served, offer_message(good_offer, api_key=expired.token))
    assert out.error["code"] == "unauthorized" and "token has expired" in out.error["message"]
    assert out.close_code == 4401


def test_garbage_in_a_live_session(served: ServedApp) -> None:
    async def run() -> dict:
        session = await open_session(client_config(served.url, served.api_key, fps=10.0))
        try:
            await session.wait_frames(5, timeout=40)
            replies = []
            for junk in ("}{ not json", json.dumps({"type": "explode"}), json.dumps([1, 2]), "\x00\x01\x02"):
                before = len(session.server_errors)
                await session.send_raw(junk)
                for _ in range(100):
                    if len(session.server_errors) > before:
                        break
                    await asyncio.sleep(0.05)
                replies.append(session.server_errors[-1] if len(session.server_errors) > before else None)
            bad_value = await session.set_options(max_faces=99)
            bad_ref = await session.control({"type": "set_reference", "reference_b64": "bm90IGFuIGltYWdl"})
            faceless = await session.set_reference(_png(np.full((300, 300, 3), 90, np.uint8)), via="ws")
            ws_junk_before = len(session.server_errors)
            await session.send_raw("garbage over the websocket", via="ws")
            for _ in range(100):
                if len(session.server_errors) > ws_junk_before:
                    break
                await asyncio.sleep(0.05)
            new_ref = await session.set_reference(reference_bytes(), via="ws")
            pong = await session.ping()
            frames_before = session.stats.frames
            await session.wait_frames(frames_before + 5, timeout=30)
            # HTTP control endpoint for this session works with the key.
            status, body = http(served.url + f"/webrtc/sessions/{session.session_id}/control", method="POST",
                                body=json.dumps({"type": "ping", "id": 7}).encode(),
                                headers={"X-API-Key": served.api_key})
            return {
                "replies": replies, "bad_value": bad_value, "bad_ref": bad_ref, "faceless": faceless,
                "ws_junk": session.server_errors[-1] if len(session.server_errors) > ws_junk_before else None,
                "new_ref": new_ref, "pong": pong, "http": (status, body), "alive": session.connection_state,
            }
        finally:
            await session.close()

    out = asyncio.run(run())
    assert all(r is not None and r["type"] == "error" and r["code"] == "bad_request" for r in out["replies"]), out
    assert out["bad_value"]["type"] == "error" and "max_faces" in out["bad_value"]["message"]
    assert out["bad_ref"]["code"] == "bad_reference"
    assert out["faceless"]["code"] == "no_face"
    assert out["ws_junk"] is not None and out["ws_junk"]["code"] == "bad_request"
    assert out["new_ref"]["type"] == "ack" and out["pong"]["type"] == "ack"
    assert out["http"] == (200, {"type": "ack", "id": 7})
    assert out["alive"] == "connected"


def test_nothing_leaked(served: ServedApp) -> None:
    """Runs last in this module: after all the bad input, no loop exception, session or peer connection is left."""
    served.wait_sessions(0, timeout=20)
    state = served.debug_state()
    assert state["loop_exceptions"] == 0, state
    assert state["open_peer_connections"] == 0, state
    assert state["sessions"] == []
    status, health = served.get("/health")
    assert status == 200 and health["sessions"] == 0
