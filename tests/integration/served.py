"""A real local Ray + Serve running the Mirage app, started once per test session.

``ray.init(num_cpus=2)`` and ``serve.run`` on a free port (Serve's local
testing mode breaks ``@serve.batch``, so it is not used). The app runs with
API-key auth on and a session cap of 3 per ingress replica, so the tests can
fill it. Fixtures: ``served`` (a :class:`ServedApp`).
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
API_KEY = "integration-test-key"
APP_NAME = "mirage"
CAPACITY = 3
#: A session whose camera is silent this long is reaped (the test asserts "within 30 s").
IDLE_TIMEOUT_S = 8.0
BATCH_WAIT_S = 0.01


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(url: str, *, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None,
         timeout: float = 30.0) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one request; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback test server
            status, raw = response.status, response.read()
            ctype = response.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        status, raw, ctype = exc.code, exc.read(), exc.headers.get("content-type", "")
    text = raw.decode("utf-8", "replace")
    return status, (json.loads(text) if "json" in ctype else text)


@dataclass(frozen=True)
class ServedApp:
    url: str
    api_key: str
    capacity: int
    app_name: str
    idle_timeout_s: float

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws/session"

    def get(self, path: str, *, key: bool = False, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        h = dict(headers or {})
        if key:
            h["X-API-Key"] = self.api_key
        return http(self.url + path, headers=h)

    def debug_state(self) -> dict[str, Any]:
        status, body = self.get("/webrtc/debug_state", key=True)
        assert status == 200, body
        return body

    def deployment_stats(self, deployment: str) -> dict[str, Any]:
        """``stats()`` of a model deployment, straight from its handle."""
        from ray import serve

        handle = serve.get_deployment_handle(deployment, app_name=self.app_name)
        return handle.stats.remote().result(timeout_s=30)

    def wait_sessions(self, count: int, timeout: float = 30.0) -> float:
        """Wait until the ingress holds ``count`` sessions; returns the seconds it took."""
        start = time.monotonic()
        while True:
            state = self.debug_state()
            if state["session_count"] == count:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{state['session_count']} sessions after {timeout:.0f} s (want {count}): {state}")
            time.sleep(0.25)


def _wait_healthy(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, body = http(url + "/health", timeout=5)
            if status == 200 and isinstance(body, dict) and body.get("status") == "ok":
                return
            last = (status, body)
        except OSError as exc:
            last = exc
        time.sleep(0.5)
    raise RuntimeError(f"the app did not become healthy within {timeout:.0f} s (last: {last})")


@pytest.fixture(scope="session")
def served() -> Iterator[ServedApp]:
    import ray
    from ray import serve

    from serve_app.app import AppArgs, build_app

    # Ray's worker processes inherit the environment: make the repo importable there.
    paths = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=512 * 1024 * 1024,
        )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = AppArgs.model_validate(
        {
            "require_api_key": True,
            "api_key": API_KEY,
            "ingress": {"max_sessions_per_replica": CAPACITY, "graceful_shutdown_timeout_s": 5.0},
            # A longer batch window than the default 3 ms: three 15 fps sessions then share batches
            # reliably on a busy 2-core machine (and it exercises user_config -> reconfigure()).
            "detector": {"batch_wait_timeout_s": BATCH_WAIT_S},
            "swapper": {"batch_wait_timeout_s": BATCH_WAIT_S},
            "session": {"idle_timeout_s": IDLE_TIMEOUT_S},
        }
    )
    serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url, timeout=180)
    try:
        yield ServedApp(url=url, api_key=API_KEY, capacity=CAPACITY, app_name=APP_NAME, idle_timeout_s=IDLE_TIMEOUT_S)
    finally:
        serve.shutdown()
        if started_ray:
            ray.shutdown()
