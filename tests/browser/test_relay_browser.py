"""The web page through a real coturn: TURN credentials fetched with the key, relay-only ICE in Chromium.

Reuses the relay app and coturn of ``tests/integration/test_turn_relay.py`` (the app at
/relay with ``MIRAGE_FORCE_RELAY=1`` and ``MIRAGE_TURN_SECRET``).
"""

from __future__ import annotations

import pytest

from standins.faces import tom_hanks_path
from tests.browser.conftest import WebApp
from tests.integration.test_turn_relay import relay_app, turn  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.integration]

SELECTED_PAIR_JS = """
async () => {
  const report = await window.mirage.pc.getStats();
  let pair = null;
  report.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
  if (!pair) return null;
  const local = report.get(pair.localCandidateId), remote = report.get(pair.remoteCandidateId);
  return { local: local && local.candidateType, remote: remote && remote.candidateType };
}
"""


def test_page_relays_through_coturn(page, web_app: WebApp, relay_app: str, turn) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    if web_app.api_key is None:
        pytest.skip("the relay app needs the shared app's API key")
    page.goto(relay_app + "/")
    page.wait_for_function("document.body.dataset.state === 'idle'", timeout=15_000)
    assert page.evaluate("window.mirage.config.force_relay === true")
    assert page.evaluate("window.mirage.config.turn_credentials === false"), "no TURN credential without the key"
    page.click("#consent-accept")
    page.fill("#api-key", web_app.api_key)
    page.set_input_files("#reference", str(tom_hanks_path()))
    page.wait_for_function("!document.getElementById('start').disabled", timeout=10_000)
    page.click("#start")
    page.wait_for_function("['live', 'error'].includes(document.body.dataset.state)", timeout=90_000)
    assert page.evaluate("document.body.dataset.state") == "live", page.inner_text("#error")
    page.wait_for_function("window.mirage.fps >= 3", timeout=60_000)
    pair = page.evaluate(SELECTED_PAIR_JS)
    assert pair == {"local": "relay", "remote": "relay"}, pair
    fps = page.evaluate("window.mirage.fps")
    page.click("#stop")
    page.wait_for_function("document.body.dataset.state === 'idle'", timeout=10_000)
    log = turn.log()
    assert "ALLOCATE processed, success" in log and ":mirage-" in log
    print(f"browser over coturn: {fps:.1f} fps, pair {pair}")
