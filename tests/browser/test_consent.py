"""Consent and disclosure in the web client (Chromium): asked once, remembered in the browser only,
no session before it, the licence of the model in use on the page, synthetic media said by the server.

The Firefox counterpart is ``test_firefox_asks_consent_once_and_shows_the_licence``.
"""

from __future__ import annotations

import pytest

from standins.faces import tom_hanks_path
from tests.browser.conftest import WebApp

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CONSENT_KEY = "mirage.consent.v1"


def _fresh(page, app: WebApp) -> None:  # type: ignore[no-untyped-def]
    page.goto(app.url)
    page.wait_for_function("document.body.dataset.state === 'idle'", timeout=15_000)
    if app.api_key is not None:
        page.fill("#api-key", app.api_key)
    page.set_input_files("#reference", str(tom_hanks_path()))
    page.wait_for_selector("#reference-preview", state="visible", timeout=10_000)


def test_no_session_before_consent_and_the_licence_names_the_model(page, web_app: WebApp) -> None:  # type: ignore[no-untyped-def]
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    _fresh(page, web_app)
    assert page.is_visible("#consent"), "a fresh browser is asked before the first session"
    assert "right to use the face" in page.inner_text("#consent")
    assert page.is_disabled("#start"), "Start waits for consent"

    # A forced click starts nothing: no camera, no WebSocket, one sentence.
    page.evaluate("() => { const s = document.getElementById('start'); s.disabled = false; s.click(); }")
    page.wait_for_selector("#error", state="visible", timeout=5_000)
    assert "right to use the face" in page.inner_text("#error")
    page.wait_for_timeout(500)
    assert page.evaluate("window.mirage.ws === null && window.mirage.pc === null && window.mirage.stream === null")
    assert page.evaluate("document.body.dataset.state") == "idle"
    assert not sockets, f"a WebSocket was opened before consent: {sockets}"

    licence = page.inner_text("#licences")
    assert page.input_value("#swapper") == "mesh"
    assert "mesh" in licence and "BlazeFace" in licence and "FaceMesh" in licence and "Apache-2.0" in licence, licence
    assert page.evaluate(f"localStorage.getItem('{CONSENT_KEY}')") is None


def test_consent_is_asked_once_remembered_and_never_sent(page, web_app: WebApp) -> None:  # type: ignore[no-untyped-def]
    sent: list[str] = []

    def on_socket(ws) -> None:  # type: ignore[no-untyped-def]
        ws.on("framesent", lambda payload: sent.append(payload if isinstance(payload, str) else repr(payload)[:2000]))

    requests: list[str] = []
    page.on("websocket", on_socket)
    page.on("request", lambda r: requests.append(f"{r.url} {r.headers} {r.post_data or ''}"))
    _fresh(page, web_app)
    page.click("#consent-accept")
    assert not page.is_visible("#consent")
    assert page.evaluate(f"Boolean(localStorage.getItem('{CONSENT_KEY}'))")
    page.wait_for_function("!document.getElementById('start').disabled", timeout=10_000)

    page.reload()
    page.wait_for_function("document.body.dataset.state === 'idle'", timeout=15_000)
    assert not page.is_visible("#consent"), "consent is remembered in this browser"

    # A real session after consent: the server says the media is synthetic; consent never travels.
    if web_app.api_key is not None:
        page.fill("#api-key", web_app.api_key)
    page.set_input_files("#reference", str(tom_hanks_path()))
    page.wait_for_function("!document.getElementById('start').disabled", timeout=10_000)
    page.click("#start")
    page.wait_for_function("['live', 'error'].includes(document.body.dataset.state)", timeout=90_000)
    assert page.evaluate("document.body.dataset.state") == "live", page.inner_text("#error")
    page.wait_for_function("window.mirage.serverStats !== null", timeout=30_000)
    assert page.evaluate("window.mirage.synthetic === true"), "the answer says the media is synthetic"
    assert page.evaluate("window.mirage.serverStats.synthetic === true"), "stats keep saying so"
    page.click("#stop")
    page.wait_for_function("document.body.dataset.state === 'idle'", timeout=10_000)
    assert sent, "the session's WebSocket carried the offer"
    leaked = [m for m in sent + requests if "consent" in m.lower()]
    assert not leaked, f"consent reached the server: {leaked[:2]}"
