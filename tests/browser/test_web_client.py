"""The web client at ``/`` in a real headless Chromium against the served app (DESIGN.md §6).

The fake camera plays the astronaut clip with each frame's index stamped in the
top-left band, so a frame grabbed from the page's swapped <video> can be
compared with exactly the frame that was sent: the face region must differ
strongly (swapped, not blurred), the background must match within codec noise.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

from mirage.client.session import ClientConfig, MirageSession
from mirage.client.sources import astronaut_source
from mirage.client.stamp import read_stamp
from serve_app.auth import mint_token
from serve_app.settings import AuthSettings
from standins.faces import tom_hanks_path
from tests.browser.conftest import WebApp, launch
from tests.browser.swap_check import assert_swapped
from tests.integration.served import http

pytestmark = [pytest.mark.browser, pytest.mark.integration]

GRAB_JS = """
(video) => {
  const canvas = document.createElement('canvas');
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext('2d').drawImage(video, 0, 0);
  return canvas.toDataURL('image/png');
}
"""


def _grab(page, selector: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    return _decode(page.eval_on_selector(selector, GRAB_JS))


def _decode(data_url: str) -> np.ndarray:
    png = base64.b64decode(data_url.split(",", 1)[1])
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.size, "the video element gave no picture"
    return image


def _start_session(page, app: WebApp, reference: Path, *, api_key: str | None = None) -> None:  # type: ignore[no-untyped-def]
    page.goto(app.url)
    page.wait_for_function("document.body.dataset.state === 'idle'", timeout=15_000)
    if page.is_visible("#consent-accept"):  # the consent step (tests/browser/test_consent.py)
        page.click("#consent-accept")
    if app.api_key is not None:
        assert page.is_visible("#api-key"), "the page must ask for the API key the server requires"
        page.fill("#api-key", api_key if api_key is not None else app.api_key)
    page.set_input_files("#reference", str(reference))
    page.wait_for_function("!document.getElementById('start').disabled", timeout=10_000)
    assert page.is_visible("#reference-preview")
    page.click("#start")


def test_page_swaps_the_camera_live(page, web_app: WebApp, camera_clip, artifacts: Path) -> None:  # type: ignore[no-untyped-def]
    _, sent = camera_clip
    _start_session(page, web_app, tom_hanks_path())
    page.wait_for_function("['live', 'error'].includes(document.body.dataset.state)", timeout=90_000)
    assert page.evaluate("document.body.dataset.state") == "live", page.inner_text("#error")

    # The overlay shows a real frame rate and the server reports a face.
    page.wait_for_function("window.mirage.fps >= 5 && window.mirage.serverStats && window.mirage.serverStats.faces >= 1",
                           timeout=60_000)
    overlay = page.inner_text("#overlay")
    fps = float(overlay.split("fps")[0].strip().split()[-1])
    assert fps >= 5, overlay
    assert "faces 1" in overlay

    sent_frames = list(_sent_frames(sent))
    checked = 0
    deadline = time.monotonic() + 30
    while checked < 3 and time.monotonic() < deadline:
        received = _grab(page, "#remote")
        number = read_stamp(received)
        if number is None or number >= len(sent_frames):
            time.sleep(0.2)
            continue
        print(assert_swapped(received, sent_frames[number], number))
        checked += 1
        time.sleep(0.3)
    assert checked == 3, "no stamped swapped frame could be read from the page's video"

    # Glass-to-glass in the browser: the camera frame on screen now vs the swapped one (same instant).
    lags = []
    for _ in range(5):
        local_url, remote_url = page.evaluate(
            "() => [document.getElementById('local'), document.getElementById('remote')].map(" + GRAB_JS + ")"
        )
        numbers = [read_stamp(_decode(local_url)), read_stamp(_decode(remote_url))]
        if None not in numbers:
            lags.append(((numbers[0] - numbers[1]) % len(sent_frames)) * 1000.0 / sent.fps)
        time.sleep(0.2)
    assert lags, "no pair of stamped frames could be read"
    print(f"browser glass-to-glass (frame-number lag): median {np.median(lags):.0f} ms over {len(lags)} samples")
    assert np.median(lags) < 1500, f"the swapped video lags the camera by {np.median(lags):.0f} ms"

    page.screenshot(path=str(artifacts / "web_client_live.png"), full_page=True)
    cv2.imwrite(str(artifacts / "web_client_received_frame.png"), received)

    # Controls reach the server and its acknowledgement is shown.
    page.check("#mouth-mask")
    page.wait_for_function("window.mirage.acks.length >= 1", timeout=15_000)
    assert "applied" in page.inner_text("#control-status")

    page.click("#stop")
    page.wait_for_function("document.body.dataset.state === 'idle'", timeout=10_000)
    assert page.eval_on_selector("#remote", "v => v.srcObject === null")


def _sent_frames(source) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    frames = source.frames()
    return [next(frames) for _ in range(len(source))]


def test_page_explains_a_photo_without_a_face(page, web_app: WebApp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # A real photo with no face in it: a landscape-like gradient with noise.
    rng = np.random.default_rng(3)
    sky = np.linspace(255, 120, 240, dtype=np.float32)[:, None, None] * np.array([1.0, 0.9, 0.7], np.float32)
    photo = np.broadcast_to(sky, (240, 320, 3)) + rng.normal(0, 6, (240, 320, 3))
    path = tmp_path / "landscape.png"
    cv2.imwrite(str(path), np.clip(photo, 0, 255).astype(np.uint8))
    _start_session(page, web_app, path)
    page.wait_for_function("document.body.dataset.state === 'error'", timeout=60_000)
    text = page.inner_text("#error")
    assert "No face was found in the reference photo" in text, text
    # Back to a startable page, camera released.
    assert not page.is_disabled("#start")
    assert page.eval_on_selector("#local", "v => v.srcObject === null")


def test_page_checks_the_file_before_sending(page, web_app: WebApp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    page.goto(web_app.url)
    page.wait_for_function("document.body.dataset.state === 'idle'", timeout=15_000)
    fake = tmp_path / "notes.png"
    fake.write_text("this is a text file with an image name")
    page.set_input_files("#reference", str(fake))
    page.wait_for_function("!document.getElementById('error').hidden", timeout=5_000)
    assert "not a JPEG, PNG or WebP" in page.inner_text("#error")
    assert page.is_disabled("#start")

    max_bytes = page.evaluate("window.mirage.config.max_reference_bytes")
    big = tmp_path / "huge.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(max_bytes))
    page.set_input_files("#reference", str(big))
    page.wait_for_function("document.getElementById('error').textContent.includes('too large')", timeout=5_000)
    assert page.is_disabled("#start")


def test_page_explains_a_denied_camera(playwright_session, web_app: WebApp) -> None:  # type: ignore[no-untyped-def]
    browser = launch(playwright_session, None, allow_camera=False)  # no auto-accept: headless denies
    try:
        page = browser.new_page()
        _start_session(page, web_app, tom_hanks_path())
        page.wait_for_function("document.body.dataset.state === 'error'", timeout=15_000)
        assert "Camera access was denied" in page.inner_text("#error")
    finally:
        browser.close()


def test_page_explains_a_wrong_api_key(page, web_app: WebApp) -> None:  # type: ignore[no-untyped-def]
    if web_app.api_key is None:
        pytest.skip("this app runs without an API key")
    _start_session(page, web_app, tom_hanks_path(), api_key="not-the-key")
    page.wait_for_function("document.body.dataset.state === 'error'", timeout=30_000)
    assert "The API key was not accepted" in page.inner_text("#error")


def test_page_takes_a_session_token_from_its_address(page, web_app: WebApp) -> None:  # type: ignore[no-untyped-def]
    """/?token=… fills the key field with the token; an expired one is refused in plain words."""
    if web_app.api_key is None:
        pytest.skip("this app runs without an API key")
    status, body = http(web_app.url + "token", method="POST", headers={"X-API-Key": web_app.api_key})
    assert status == 200, body
    page.goto(f"{web_app.url}?token={body['token']}")
    page.wait_for_function("document.body.dataset.state === 'idle'", timeout=15_000)
    assert page.input_value("#api-key") == body["token"]

    expired = mint_token(AuthSettings(api_key=web_app.api_key, require_api_key=True), now=time.time() - 3600).token
    page.goto(f"{web_app.url}?token={expired}")
    page.wait_for_function("document.body.dataset.state === 'idle'", timeout=15_000)
    if page.is_visible("#consent-accept"):
        page.click("#consent-accept")
    page.set_input_files("#reference", str(tom_hanks_path()))
    page.wait_for_function("!document.getElementById('start').disabled", timeout=10_000)
    page.click("#start")
    page.wait_for_function("document.body.dataset.state === 'error'", timeout=30_000)
    assert "token has expired" in page.inner_text("#error")


@contextmanager
def _occupied(app: WebApp, count: int) -> Iterator[None]:
    """Hold ``count`` live sessions of the Python client (5 fps, 320x240) in a background event loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    sessions: list[MirageSession] = []

    async def open_one() -> MirageSession:
        config = ClientConfig(app.url.rstrip("/"), tom_hanks_path().read_bytes(), astronaut_source(320, 240, 5.0),
                              api_key=app.api_key, fps=5.0)
        session = MirageSession(config)
        await session.connect()
        return session

    try:
        for _ in range(count):
            sessions.append(asyncio.run_coroutine_threadsafe(open_one(), loop).result(90))
        yield
    finally:
        for session in sessions:
            asyncio.run_coroutine_threadsafe(session.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        _wait_no_sessions(app)


def _wait_no_sessions(app: WebApp, timeout: float = 30.0) -> None:
    """Slots are freed asynchronously: wait so later tests find the server empty."""
    headers = {"X-API-Key": app.api_key} if app.api_key else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = http(app.url + "webrtc/debug_state", headers=headers)
        if status == 200 and body.get("session_count") == 0:
            return
        time.sleep(0.25)
    raise AssertionError(f"sessions still open {timeout:.0f} s after closing them: {body}")


def test_page_retries_a_full_server_and_says_so(page, web_app: WebApp) -> None:  # type: ignore[no-untyped-def]
    if web_app.capacity is None:
        pytest.skip("the session cap of this app is unknown (MIRAGE_TEST_URL)")
    with _occupied(web_app, web_app.capacity):
        _start_session(page, web_app, tom_hanks_path())
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('Server full, retrying in')", timeout=30_000
        )
        text = page.inner_text("#status")
        assert page.evaluate("document.body.dataset.state") == "connecting", text  # waiting, not failed
        assert page.eval_on_selector("#local", "v => v.srcObject === null")  # camera released meanwhile
        assert page.is_hidden("#error")
    # A slot is free again: a later retry (never before the server's hint) goes live by itself.
    page.wait_for_function("['live', 'error'].includes(document.body.dataset.state)", timeout=60_000)
    assert page.evaluate("document.body.dataset.state") == "live", page.inner_text("#error")
    assert page.evaluate("window.mirage.fullRetries") == 0  # reset once live
    assert any("server full, retry" in e for e in page.evaluate("window.mirage.events"))
    page.click("#stop")
    _wait_no_sessions(web_app)
