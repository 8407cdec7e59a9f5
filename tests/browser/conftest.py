"""Headless Chromium (Debian's package) driven by Playwright, with a fake camera playing a .y4m clip.

Never ``playwright install``: the browser is ``/usr/bin/chromium`` (scripts/test.sh
installs it with apt-get). Outside CI a machine without it skips these tests
with the reason; in CI (``CI`` set) they must run, so a missing browser fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mirage.client.sources import ArraySource
from mirage.client.stamp import stamp
from tests.media import astronaut_clip, write_y4m

CHROMIUM = Path(os.environ.get("MIRAGE_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

#: The flags every browser test launches Chromium with (plus the fake-capture file and, optionally, fake UI).
BASE_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
]


def _require_browser() -> None:
    in_ci = bool(os.environ.get("CI"))
    if not CHROMIUM.exists():
        if in_ci:
            pytest.fail(f"{CHROMIUM} is missing in CI: scripts/test.sh must `apt-get install -y chromium`")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium); browser tests need it")
    try:
        import playwright  # noqa: F401
    except ImportError:
        if in_ci:
            pytest.fail("the playwright Python package is missing in CI")
        pytest.skip("the playwright Python package is not installed (pip install playwright)")


@pytest.fixture(scope="session")
def camera_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ArraySource]:
    """The astronaut moving clip, each frame stamped with its index, as a looping .y4m (4 s, 640x480, 30 fps).

    The stamp tells the test which sent frame a swapped frame came from.
    """
    clip = astronaut_clip()
    frames = [stamp(clip.frame(i), i) for i in range(len(clip))]
    source = ArraySource(frames, fps=clip.fps)
    path = tmp_path_factory.mktemp("camera") / "astronaut.y4m"
    write_y4m(path, source, seconds=len(frames) / clip.fps)
    return path, source


@pytest.fixture(scope="package")
def playwright_session() -> Iterator[object]:
    """Package-scoped: Playwright's sync API keeps an event loop running in this
    thread while it lives, which would break every later ``asyncio.run``."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


def launch(playwright: object, camera: Path | None, *, allow_camera: bool = True):  # type: ignore[no-untyped-def]
    """A Chromium with a fake camera (``camera`` .y4m or Chromium's test pattern); permission auto-granted or not."""
    args = list(BASE_ARGS)
    if allow_camera:
        args.append("--use-fake-ui-for-media-stream")
    if camera is not None:
        args.append(f"--use-file-for-fake-video-capture={camera}")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)  # type: ignore[attr-defined]


@pytest.fixture(scope="package")
def browser(playwright_session: object, camera_clip: tuple[Path, ArraySource]) -> Iterator[object]:
    instance = launch(playwright_session, camera_clip[0])
    yield instance
    instance.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})  # type: ignore[attr-defined]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.page_errors = errors  # type: ignore[attr-defined]
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@dataclass(frozen=True)
class WebApp:
    """Where the page is served and the API key it needs (None when the app needs none)."""

    url: str
    api_key: str | None
    capacity: int | None = None  # sessions per ingress replica, when known


@pytest.fixture(scope="session")
def web_app(request: pytest.FixtureRequest) -> WebApp:
    """``MIRAGE_TEST_URL`` (+ ``MIRAGE_TEST_API_KEY``) for an app you started, else the integration fixture's app."""
    url = os.environ.get("MIRAGE_TEST_URL")
    if url:
        return WebApp(url.rstrip("/") + "/", os.environ.get("MIRAGE_TEST_API_KEY") or None)
    _require_browser()  # no Ray start-up when the browser tests would skip anyway
    served = request.getfixturevalue("served")
    return WebApp(served.url.rstrip("/") + "/", served.api_key, served.capacity)
