"""A minimal WebDriver BiDi client that drives Debian's headless ``firefox-esr`` for the browser tests.

Playwright cannot drive Firefox ESR here: with ``channel="moz-firefox"`` it
launches but fails at new_context/new_page with ``Protocol error
(emulation.setMediaFeaturesOverride): unknown command``. Firefox speaks the W3C
WebDriver BiDi protocol natively, so this module talks it directly over one
WebSocket (websockets' *sync* client: no asyncio, so it can run next to
Playwright's sync API, which keeps an event loop in the main thread).

Only what the tests use: navigate, evaluate / call (values come back as JSON
text, so no BiDi remote-value decoding), preload scripts, ``input.setFiles``,
screenshots, and uncaught page errors (``log.entryAdded``).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from websockets.sync.client import ClientConnection, connect

FIREFOX = Path(os.environ.get("MIRAGE_FIREFOX", "/usr/bin/firefox-esr"))

#: Profile preferences (user.js): a quiet, offline start; camera/microphone granted without a prompt.
PREFS: dict[str, Any] = {
    "media.navigator.permission.disabled": True,
    "media.navigator.streams.fake": True,
    "media.autoplay.default": 0,
    "media.autoplay.block-webaudio": False,
    # Without a real getUserMedia grant Firefox hides host ICE candidates behind mDNS names
    # the server cannot resolve: show the plain addresses.
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    # The test server offers only 127.0.0.1 (tests pin every WebRTC peer to loopback): Firefox leaves
    # loopback out of its own candidates unless told to gather it.
    "media.peerconnection.ice.loopback": True,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.page": 0,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.aboutwelcome.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "toolkit.telemetry.enabled": False,
    "app.update.disabledForTesting": True,
    "app.normandy.enabled": False,
    "extensions.update.enabled": False,
    "network.proxy.type": 0,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
}

_LISTENING = re.compile(r"WebDriver BiDi listening on (ws://[^\s]+)")


class BidiError(RuntimeError):
    """A BiDi command failed, timed out, or Firefox did not start; the message ends with Firefox's stderr tail."""


class FirefoxBidi:
    """Headless Firefox with a fresh temporary profile, driven over WebDriver BiDi.

    ``with FirefoxBidi() as ff: ff.navigate(url); ff.evaluate("document.title")``.
    The process group is killed on close and on any start-up failure; the profile is deleted.
    """

    def __init__(self, executable: Path = FIREFOX, *, prefs: dict[str, Any] | None = None,
                 viewport: tuple[int, int] = (1280, 860), timeout: float = 30.0) -> None:
        self.executable = Path(executable)
        self.prefs = {**PREFS, **(prefs or {})}
        self.viewport = viewport
        self.timeout = timeout
        self.context: str | None = None  # the top-level browsing context every command targets
        self.page_errors: list[str] = []  # uncaught JavaScript errors (log.entryAdded, type "javascript")
        self._proc: subprocess.Popen[bytes] | None = None
        self._profile: str | None = None
        self._ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()
        self._next_id = 0
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._url: str | None = None
        self._listening = threading.Event()

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> FirefoxBidi:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        if not self.executable.exists():
            raise BidiError(f"{self.executable} is not installed (apt-get install -y firefox-esr)")
        self._profile = tempfile.mkdtemp(prefix="mirage-firefox-")
        lines = [f"user_pref({json.dumps(name)}, {json.dumps(value)});" for name, value in self.prefs.items()]
        Path(self._profile, "user.js").write_text("\n".join(lines) + "\n")
        env = {**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1", "MOZ_HEADLESS": "1"}
        width, height = self.viewport
        self._proc = subprocess.Popen(
            [str(self.executable), "--headless", "--no-remote", "--remote-debugging-port=0",
             "--profile", self._profile, "--window-size", f"{width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env, start_new_session=True,  # its own process group: close() kills content processes too
        )
        threading.Thread(target=self._read_stderr, args=(self._proc,), daemon=True).start()
        if not self._listening.wait(self.timeout) or self._url is None:
            if self._proc.poll() is not None:
                raise BidiError(self._explain("Firefox exited before opening WebDriver BiDi"))
            raise BidiError(self._explain(f"Firefox did not open WebDriver BiDi within {self.timeout:.0f} s"))
        # Entered as a context manager (websockets >= 17.1 warns otherwise); close() exits it.
        self._ws = self._stack.enter_context(connect(
            self._url.rstrip("/") + "/session", proxy=None, compression=None, max_size=None, max_queue=None,
            open_timeout=self.timeout, close_timeout=5, ping_interval=None))
        self.command("session.new", {"capabilities": {"alwaysMatch": {"acceptInsecureCerts": True}}})
        self.command("session.subscribe", {"events": ["log.entryAdded"]})
        tree = self.command("browsingContext.getTree", {"maxDepth": 0})
        contexts = tree.get("contexts") or []
        if contexts:
            self.context = contexts[0]["context"]
        else:
            self.context = self.command("browsingContext.create", {"type": "tab"})["context"]
        self.command("browsingContext.setViewport",
                     {"context": self.context, "viewport": {"width": width, "height": height}})

    def close(self) -> None:
        """``browser.close`` when connected, then kill whatever is left of Firefox and delete the profile."""
        if self._ws is not None:
            try:
                self.command("browser.close", {}, timeout=10)
            except Exception:  # noqa: BLE001 - closing: the kill below is what counts
                pass
            self._ws = None
        try:
            self._stack.close()  # closes the WebSocket
        except Exception:  # noqa: BLE001
            pass
        if self._proc is not None:
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)  # the group we created: content processes too
            except ProcessLookupError:
                pass
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            self._proc = None
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    def _read_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self._stderr.append(line)
            match = _LISTENING.search(line)
            if match and self._url is None:
                self._url = match.group(1)
                self._listening.set()
        self._listening.set()  # Firefox exited: stop waiting

    def _explain(self, message: str) -> str:
        code = self._proc.poll() if self._proc is not None else None
        exited = f" (Firefox exited with {code})" if code is not None else ""
        tail = "\n".join(self._stderr) or "(nothing)"
        return f"{message}{exited}. Firefox's stderr ends with:\n{tail}"

    # ------------------------------------------------------------------ protocol

    def command(self, method: str, params: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """Send one command and wait for its result; events that arrive meanwhile are handled."""
        if self._ws is None:
            raise BidiError(f"{method}: not connected")
        self._next_id += 1
        ident = self._next_id
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BidiError(self._explain(f"{method}: no answer within {limit:.0f} s"))
            try:
                message = json.loads(self._ws.recv(timeout=left))
            except TimeoutError:
                continue
            except Exception as exc:  # noqa: BLE001 - connection closed: say why, with stderr
                raise BidiError(self._explain(f"{method}: the connection to Firefox broke ({exc!r})")) from exc
            if message.get("type") == "event":
                self._on_event(message)
                continue
            if message.get("id") != ident:
                continue
            if message.get("type") == "error":
                raise BidiError(self._explain(f"{method} failed: {message.get('error')}: {message.get('message')}"))
            return message.get("result") or {}

    def _on_event(self, message: dict[str, Any]) -> None:
        if message.get("method") == "log.entryAdded":
            entry = message.get("params") or {}
            if entry.get("type") == "javascript":
                self.page_errors.append(str(entry.get("text")))

    # ------------------------------------------------------------------ page

    def navigate(self, url: str, *, timeout: float | None = None) -> None:
        self.command("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"},
                     timeout=timeout)

    def add_preload_script(self, function_declaration: str) -> str:
        """Run ``function_declaration`` (e.g. ``"() => { ... }"``) in every new document before its own scripts."""
        result = self.command("script.addPreloadScript",
                              {"functionDeclaration": function_declaration, "contexts": [self.context]})
        return str(result["script"])

    def _value(self, method: str, result: dict[str, Any]) -> Any:
        if result.get("type") == "exception":
            details = result.get("exceptionDetails") or {}
            raise BidiError(f"{method}: the page threw: {details.get('text')}")
        value = result.get("result") or {}
        if value.get("type") != "string":
            raise BidiError(f"{method}: expected JSON text back, got {value}")
        return json.loads(value["value"])

    def evaluate(self, expression: str, *, await_promise: bool = True, timeout: float | None = None) -> Any:
        """The value of a JavaScript expression (awaited when it is a promise), as JSON → Python."""
        if await_promise:
            source = f"Promise.resolve({expression}).then((v) => JSON.stringify(v === undefined ? null : v))"
        else:
            source = f"JSON.stringify((() => {{ const v = ({expression}); return v === undefined ? null : v; }})())"
        result = self.command("script.evaluate", {
            "expression": source, "target": {"context": self.context}, "awaitPromise": await_promise,
            "resultOwnership": "none",
        }, timeout=timeout)
        return self._value("evaluate", result)

    def call(self, function_declaration: str, *args: Any, timeout: float | None = None) -> Any:
        """Call a JavaScript function with JSON-able ``args``; its (awaited) return value comes back as JSON → Python."""
        wrapper = ("async (...encoded) => { const f = (" + function_declaration + ");"
                   " const v = await f(...encoded.map((a) => JSON.parse(a)));"
                   " return JSON.stringify(v === undefined ? null : v); }")
        result = self.command("script.callFunction", {
            "functionDeclaration": wrapper, "target": {"context": self.context}, "awaitPromise": True,
            "arguments": [{"type": "string", "value": json.dumps(arg)} for arg in args],
            "resultOwnership": "none",
        }, timeout=timeout)
        return self._value("call", result)

    def wait_for(self, expression: str, *, timeout: float, interval: float = 0.2) -> Any:
        """Poll ``expression`` until it is truthy; its value, or a BidiError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() >= deadline:
                raise BidiError(self._explain(
                    f"timed out after {timeout:.0f} s waiting for: {expression} (last value {value!r})"))
            time.sleep(interval)

    def set_files(self, selector: str, paths: list[Path]) -> None:
        """Choose files in an <input type=file> as a user would (``input.setFiles``: input and change events)."""
        result = self.command("script.evaluate", {
            "expression": f"document.querySelector({json.dumps(selector)})", "target": {"context": self.context},
            "awaitPromise": False, "resultOwnership": "none",
        })
        node = result.get("result") or {}
        if result.get("type") != "success" or node.get("type") != "node":
            raise BidiError(f"set_files: {selector} is not an element in the page ({result})")
        self.command("input.setFiles", {"context": self.context, "element": {"sharedId": node["sharedId"]},
                                        "files": [str(Path(p).resolve()) for p in paths]})

    def screenshot(self, path: Path) -> Path:
        """A PNG of the viewport."""
        result = self.command("browsingContext.captureScreenshot", {"context": self.context})
        Path(path).write_bytes(base64.b64decode(result["data"]))
        return Path(path)
