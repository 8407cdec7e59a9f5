"""The page's voice controls in a real headless Chromium against the served app.

The voice select lists what ``/config`` offers; choosing a preset while live
sends ``set_options {"voice": ...}`` (with the pitch typed in), the server
acknowledges it, and its own view of the session (``/webrtc/debug_state``)
shows the voice set and the fake microphone's chunks going through the
converter. "Hear yourself" unmutes the returned stream.
"""

from __future__ import annotations

import time

import pytest

from standins.faces import tom_hanks_path
from tests.browser.conftest import WebApp
from tests.browser.test_web_client import _start_session
from tests.integration.served import http

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def _session_view(app: WebApp, session_id: str) -> dict:  # type: ignore[type-arg]
    headers = {"X-API-Key": app.api_key} if app.api_key else {}
    status, body = http(app.url + "webrtc/debug_state", headers=headers)
    assert status == 200, body
    return next((s for s in body["sessions"] if s.get("id") == session_id or s.get("session_id") == session_id), {})


def test_page_chooses_a_voice_and_the_server_converts_it(page, web_app: WebApp) -> None:  # type: ignore[no-untyped-def]
    status, config = http(web_app.url + "config")
    assert status == 200
    _start_session(page, web_app, tom_hanks_path())
    offered = page.eval_on_selector_all("#voice option", "(options) => options.map((o) => o.value)")
    assert offered == config["voices"], (offered, config["voices"])
    assert "deep" in offered
    assert page.is_disabled("#voice-pitch"), "with the voice off there is no pitch to set"
    page.wait_for_function("['live', 'error'].includes(document.body.dataset.state)", timeout=90_000)
    assert page.evaluate("document.body.dataset.state") == "live", page.inner_text("#error")
    assert page.evaluate("document.getElementById('remote').muted")

    acks = page.evaluate("window.mirage.acks.length")
    page.select_option("#voice", "deep")  # the change event sends set_options {"voice": "deep"}
    page.wait_for_function(f"window.mirage.acks.length > {acks}", timeout=15_000)
    assert page.evaluate("window.mirage.voice") == {"voice": "deep"}
    assert "Voice applied" in page.inner_text("#control-status")
    assert not page.is_disabled("#voice-pitch")
    acks = page.evaluate("window.mirage.acks.length")
    page.fill("#voice-pitch", "-4")
    page.dispatch_event("#voice-pitch", "change")  # what leaving the field does
    page.wait_for_function(f"window.mirage.acks.length > {acks}", timeout=15_000)
    assert page.evaluate("window.mirage.voice") == {"voice": "deep", "pitch_semitones": -4}

    session_id = page.evaluate("window.mirage.sessionId")
    deadline = time.monotonic() + 20
    view: dict = {}  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        view = _session_view(web_app, session_id)
        stats = view.get("voice_stats") or {}
        if view.get("voice", {}).get("voice") == "deep" and stats.get("converted", 0) + stats.get("fallbacks", 0) > 20:
            break
        time.sleep(0.5)
    print(f"server's view of the page's session: voice {view.get('voice')}, voice_stats {view.get('voice_stats')}")
    assert view.get("has_audio"), "the page sent no microphone"
    assert view["voice"]["voice"] == "deep" and view["voice"]["pitch_semitones"] == -4, view["voice"]
    stats = view["voice_stats"]
    # The microphone's audio is disguised (calls of up to 200 ms of it: the pump gathers into the A/V slack).
    assert stats["converted"] + stats["fallbacks"] > 20, stats

    page.check("#hear-audio")
    assert not page.evaluate("document.getElementById('remote').muted"), "hear yourself must unmute the returned audio"
    tracks = page.evaluate("document.getElementById('remote').srcObject.getAudioTracks().length")
    assert tracks == 1, "the returned stream carries the voice"
