"""The web client at ``/`` in Debian's headless Firefox ESR against the served app.

Playwright cannot drive Firefox ESR (its ``emulation.setMediaFeaturesOverride``
is unknown there), so Firefox is driven over W3C WebDriver BiDi (tests/browser/bidi.py).
Firefox's fake camera is a test pattern, not a face, and it cannot play a .y4m
file, so a preload script replaces ``navigator.mediaDevices.getUserMedia`` with
``canvas.captureStream(30)`` of a canvas playing the stamped astronaut clip (the
Chromium test's camera, as JPEG frames) plus a silent audio track: the page's
own code path is unchanged. As in the Chromium test, a frame grabbed from the
swapped <video> is compared with exactly the frame that was sent.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from mirage.client.stamp import read_stamp
from standins.faces import tom_hanks_path
from tests.browser.bidi import FIREFOX, FirefoxBidi
from tests.browser.conftest import WebApp
from tests.browser.swap_check import assert_swapped
from tests.media import astronaut_clip

pytestmark = [pytest.mark.browser, pytest.mark.integration]

#: Every STEP-th frame of the 30 fps clip is a camera frame; each shows for STEP ticks (real-time motion).
STEP = 3

#: The fake camera: FRAMES (JPEG data URLs) looped on a canvas at the clip's speed, captured at 30 fps.
CAMERA_JS = """
() => {
  const FRAMES = __FRAMES__;
  const FRAME_RATE = __FRAME_RATE__;
  const devices = navigator.mediaDevices;
  if (!devices) return;
  let images = null;
  const load = () => images || (images = Promise.all(FRAMES.map((src) => {
    const img = new Image();
    img.src = src;
    return img.decode().then(() => img);
  })));
  devices.getUserMedia = async (constraints) => {
    const frames = await load();
    const canvas = document.createElement("canvas");
    canvas.width = frames[0].naturalWidth;
    canvas.height = frames[0].naturalHeight;
    const ctx = canvas.getContext("2d");
    const t0 = performance.now();
    const draw = () => {
      ctx.drawImage(frames[Math.floor((performance.now() - t0) * FRAME_RATE / 1000) % frames.length], 0, 0);
    };
    draw();
    const stream = canvas.captureStream(30);
    const [video] = stream.getVideoTracks();
    const timer = setInterval(() => (video.readyState === "ended" ? clearInterval(timer) : draw()), 1000 / 30);
    if (constraints && constraints.audio) {
      const audio = new AudioContext();
      const silence = audio.createGain();
      silence.gain.value = 0;
      const tone = audio.createOscillator();
      tone.connect(silence);
      const sink = audio.createMediaStreamDestination();
      silence.connect(sink);
      tone.start();
      audio.resume();
      stream.addTrack(sink.stream.getAudioTracks()[0]);
    }
    window.__fakeCamera = { calls: ((window.__fakeCamera || {}).calls || 0) + 1, frames: frames.length,
                            tracks: stream.getTracks().map((t) => t.kind) };
    return stream;
  };
}
"""

GRAB_JS = """
(selector) => {
  const video = document.querySelector(selector);
  if (!video.videoWidth) return null;
  const canvas = document.createElement('canvas');
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext('2d').drawImage(video, 0, 0);
  return canvas.toDataURL('image/png');
}
"""


def _require_firefox() -> None:
    if not FIREFOX.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{FIREFOX} is missing in CI: scripts/test.sh must `apt-get install -y firefox-esr`")
        pytest.skip(f"{FIREFOX} is not installed (apt-get install -y firefox-esr); the Firefox test needs it")


@pytest.fixture(scope="module")
def camera_frames(camera_clip) -> dict[int, np.ndarray]:  # type: ignore[no-untyped-def]
    """The sent frames the fake camera loops, by stamped index."""
    _, source = camera_clip
    frames = source.frames()
    every = [next(frames) for _ in range(len(source))]
    return {index: every[index] for index in range(0, len(every), STEP)}


@pytest.fixture(scope="module")
def firefox(camera_frames: dict[int, np.ndarray]) -> Iterator[FirefoxBidi]:
    _require_firefox()
    urls = []
    for frame in camera_frames.values():
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok
        urls.append("data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode("ascii"))
    fps = astronaut_clip().fps / STEP
    with FirefoxBidi() as ff:
        ff.add_preload_script(CAMERA_JS.replace("__FRAMES__", json.dumps(urls)).replace("__FRAME_RATE__", repr(fps)))
        yield ff


@pytest.fixture
def page(firefox: FirefoxBidi) -> Iterator[FirefoxBidi]:
    """The Firefox with no page errors recorded yet; uncaught errors fail the test (as in the Chromium tests)."""
    firefox.page_errors.clear()
    yield firefox
    errors = list(firefox.page_errors)
    firefox.page_errors.clear()
    assert not errors, f"uncaught errors in the page: {errors}"


def _text(ff: FirefoxBidi, selector: str) -> str:
    return str(ff.call("(s) => document.querySelector(s).innerText", selector))


def _grab(ff: FirefoxBidi, selector: str) -> np.ndarray | None:
    url = ff.call(GRAB_JS, selector)
    if not url:
        return None
    image = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    return image if image is not None and image.size else None


def _open_page(ff: FirefoxBidi, app: WebApp) -> None:
    ff.navigate(app.url)
    ff.wait_for("document.body.dataset.state === 'idle'", timeout=15)
    ff.evaluate("(() => { const b = document.getElementById('consent-accept');"
                " if (b && !document.getElementById('consent').hidden) b.click(); })()")


def test_firefox_swaps_the_camera_live(page: FirefoxBidi, web_app: WebApp, camera_frames, artifacts: Path) -> None:  # type: ignore[no-untyped-def]
    ff = page
    _open_page(ff, web_app)
    if web_app.api_key is not None:
        assert ff.evaluate("!document.getElementById('api-key-field').hidden"), "the page must ask for the API key"
        ff.call("(key) => { document.getElementById('api-key').value = key; }", web_app.api_key)
    ff.set_files("#reference", [tom_hanks_path()])
    ff.wait_for("!document.getElementById('start').disabled", timeout=10)
    assert ff.evaluate("!document.getElementById('reference-preview').hidden")
    ff.evaluate("document.getElementById('start').click()")

    ff.wait_for("['live', 'error'].includes(document.body.dataset.state)", timeout=60)
    state = ff.evaluate("document.body.dataset.state")
    assert state == "live", _text(ff, "#error")
    camera = ff.evaluate("window.__fakeCamera")
    assert camera and camera["tracks"] == ["video", "audio"], f"the page did not use the fake camera: {camera}"

    # The overlay shows a real frame rate and the server reports a face.
    ff.wait_for("window.mirage.fps >= 5 && window.mirage.serverStats && window.mirage.serverStats.faces >= 1",
                timeout=45)
    overlay = _text(ff, "#overlay")
    fps = float(overlay.split("fps")[0].strip().split()[-1])
    assert fps >= 5, overlay
    assert "faces 1" in overlay, overlay

    # The page shows the fake camera (stamped frames) in its local <video>.
    local = _grab(ff, "#local")
    assert local is not None and read_stamp(local) in camera_frames, "the local video does not show the camera"

    checked = 0
    received = None
    deadline = time.monotonic() + 30
    while checked < 3 and time.monotonic() < deadline:
        received = _grab(ff, "#remote")
        number = None if received is None else read_stamp(received)
        if received is None or number not in camera_frames:
            time.sleep(0.2)
            continue
        print("firefox " + assert_swapped(received, camera_frames[number], number))
        checked += 1
        time.sleep(0.3)
    assert checked == 3, "no stamped swapped frame could be read from the page's video"

    ff.screenshot(artifacts / "firefox-swap.png")
    print(f"firefox overlay: {overlay!r}")

    ff.evaluate("document.getElementById('stop').click()")
    ff.wait_for("document.body.dataset.state === 'idle'", timeout=10)
    assert ff.evaluate("document.getElementById('remote').srcObject === null")


def test_firefox_checks_the_file_before_sending(page: FirefoxBidi, web_app: WebApp, tmp_path: Path) -> None:
    _open_page(page, web_app)
    fake = tmp_path / "notes.png"
    fake.write_text("this is a text file with an image name")
    page.set_files("#reference", [fake])
    page.wait_for("!document.getElementById('error').hidden", timeout=5)
    assert "not a JPEG, PNG or WebP" in _text(page, "#error")
    assert page.evaluate("document.getElementById('start').disabled")


def test_firefox_asks_consent_once_and_shows_the_licence(page: FirefoxBidi, web_app: WebApp) -> None:
    """The consent step in Firefox: shown on a fresh profile, blocks Start, remembered after a reload."""
    ff = page
    ff.navigate(web_app.url)
    ff.wait_for("document.body.dataset.state === 'idle'", timeout=15)
    ff.evaluate("localStorage.clear()")
    ff.navigate(web_app.url)
    ff.wait_for("document.body.dataset.state === 'idle'", timeout=15)
    assert ff.evaluate("!document.getElementById('consent').hidden"), "a fresh browser must be asked for consent"
    assert "right to use the face" in _text(ff, "#consent")
    if web_app.api_key is not None:
        ff.call("(key) => { document.getElementById('api-key').value = key; }", web_app.api_key)
    ff.set_files("#reference", [tom_hanks_path()])
    ff.wait_for("!document.getElementById('reference-preview').hidden", timeout=10)
    assert ff.evaluate("document.getElementById('start').disabled"), "Start must wait for consent"
    # Even a forced click starts nothing: no camera, no WebSocket, an explanation.
    ff.evaluate("(() => { const s = document.getElementById('start'); s.disabled = false; s.click(); })()")
    ff.wait_for("!document.getElementById('error').hidden", timeout=5)
    assert "right to use the face" in _text(ff, "#error")
    assert ff.evaluate("window.mirage.ws === null && window.mirage.pc === null && document.body.dataset.state === 'idle'")
    licence = _text(ff, "#licences")
    assert "mesh" in licence and "BlazeFace" in licence and "FaceMesh" in licence and "Apache-2.0" in licence, licence

    ff.evaluate("document.getElementById('consent-accept').click()")
    assert ff.evaluate("document.getElementById('consent').hidden")
    assert ff.evaluate("Boolean(localStorage.getItem('mirage.consent.v1'))")
    ff.navigate(web_app.url)
    ff.wait_for("document.body.dataset.state === 'idle'", timeout=15)
    assert ff.evaluate("document.getElementById('consent').hidden"), "consent is remembered in the browser"
