"""Two Ray nodes for real, on this machine: the model deployments on the second node, which stops
mid-session and comes back (``ray start --head``, ``ray start --address``, ``serve deploy``).

The head node (custom resource ``mirage_head``) holds the Serve controller, the proxy, the
ingress and the voice converter; the second node (``mirage_models``) the FaceDetector and
FaceSwapper. A session runs over 127.0.0.1; the second node is killed (its ``ray start --block``
process group and everything under its own temp dir); the session goes on under the fallback
(frames keep coming back, ``fallback_frames`` grows); the node is started again with the same
resource, Serve places the model replicas there again, and the session swaps again
(``fallback_frames`` stops growing) without reconnecting.

Everything this test starts runs in its own process groups with its own temp dirs and ports;
teardown kills those, and any process left whose command line names one of its temp dirs.
It never runs ``ray stop`` (that would stop every Ray process on the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirage.client.session import MirageSession
from tests.integration.peer import client_config
from tests.integration.served import REPO, free_port, http

BIN = Path(sys.executable).parent
RAY = BIN / "ray"
SERVE = BIN / "serve"
FPS = 10.0

pytestmark = pytest.mark.skipif(
    not (RAY.exists() and SERVE.exists()), reason="the ray and serve command-line tools are not installed in this venv"
)


class Node:
    """One ``ray start --block`` process (its own process group, temp dir and ports)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.temp_dir = tempfile.mkdtemp(prefix=f"mr{name[0]}", dir="/tmp")  # short: socket paths are limited
        self.log = log
        ports = [
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            "--min-worker-port=0",
            "--max-worker-port=0",
        ]
        command = [str(RAY), "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
                   f"--temp-dir={self.temp_dir}", *ports, *args]
        self._out = log.open("ab")
        self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL what is left, then anything still naming this node's temp dir."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for _ in range(20):
            left = processes_naming(self.temp_dir)
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.25)
        self._out.close()

    def cleanup(self) -> None:
        self.stop()
        # Keep Serve's logs (controller, proxy, replicas) beside the test's own log, for a failure.
        for log in Path(self.temp_dir).glob("session_*/logs/serve/*.log"):
            with contextlib.suppress(OSError):
                shutil.copy(log, self.log.parent / f"{self.name}-{log.name}")
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def processes_naming(text: str) -> list[int]:
    """Pids of this user's processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:.0f} s")
        time.sleep(0.5)


def _ray_status(gcs: str, env: dict[str, str]) -> str:
    result = subprocess.run([str(RAY), "status", f"--address={gcs}"], capture_output=True, text=True, env=env,
                            timeout=30)
    return result.stdout + result.stderr


class TwoNodes:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.http_port = free_port()
        self.gcs = f"127.0.0.1:{self.gcs_port}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]))
        env.pop("RAY_ADDRESS", None)
        # A loopback-only test cluster: no token authentication (Ray 2.60 turns it on by default;
        # a real cluster keeps it, docs/cluster.md).
        env["RAY_AUTH_MODE"] = "disabled"
        self.env = env
        self.head: Node | None = None
        self.models: Node | None = None

    def start_head(self) -> None:
        self.head = Node("head", [
            "--head", f"--port={self.gcs_port}", "--num-cpus=1", '--resources={"mirage_head": 1}',
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
        ], self.env, self.log_dir / "head.log")
        _wait(lambda: http(f"http://127.0.0.1:{self.dashboard_port}/api/version", timeout=3)[0] == 200, 150,
              "the head node's dashboard answered")

    def start_models_node(self) -> None:
        self.models = Node("models", [
            f"--address={self.gcs}", "--num-cpus=1", '--resources={"mirage_models": 1}',
        ], self.env, self.log_dir / "models.log")
        _wait(lambda: "mirage_models" in _ray_status(self.gcs, self.env), 60, "the second node joined")

    def stop_models_node(self) -> None:
        assert self.models is not None
        self.models.cleanup()
        self.models = None

    def deploy(self, config: Path) -> None:
        result = subprocess.run([str(SERVE), "deploy", str(config), f"--address=http://127.0.0.1:{self.dashboard_port}"],
                                cwd=REPO, env=self.env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr

    def serve_status(self) -> str:
        result = subprocess.run([str(SERVE), "status", f"--address=http://127.0.0.1:{self.dashboard_port}"],
                                cwd=REPO, env=self.env, capture_output=True, text=True, timeout=60)
        return result.stdout

    def close(self) -> None:
        for node in (self.models, self.head):
            if node is not None:
                node.cleanup()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[TwoNodes]:
    nodes = TwoNodes(tmp_path)
    try:
        nodes.start_head()
        nodes.start_models_node()
        yield nodes
    finally:
        nodes.close()


def _config(path: Path, http_port: int) -> Path:
    models = {"num_cpus": 0.1, "resources": {"mirage_models": 0.1}, "batch_wait_timeout_s": 0.005}
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "applications": [{
            "name": "mirage",
            "route_prefix": "/",
            "import_path": "serve_app.app:build_app",
            "args": {
                "detector": models,
                "swapper": models,
                "voice": {"num_cpus": 0.05, "resources": {"mirage_head": 0.05}},
                "enhancer": {"num_cpus": 0.05, "resources": {"mirage_head": 0.05}},
                "ingress": {"num_cpus": 0.1, "resources": {"mirage_head": 0.1}, "max_sessions_per_replica": 2,
                            "graceful_shutdown_timeout_s": 3},
                "session": {"deadline_ms": 150, "idle_timeout_s": 10, "max_fps": 15},
            },
        }],
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def test_a_session_survives_the_model_node_going_away_and_swaps_again_when_it_is_back(
    cluster: TwoNodes, tmp_path: Path
) -> None:
    cluster.deploy(_config(tmp_path / "serve.yaml", cluster.http_port))
    url = f"http://127.0.0.1:{cluster.http_port}"
    try:
        _wait(lambda: http(url + "/health", timeout=5)[1].get("status") == "ok", 180, "the app answered /health")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; serve status:\n{cluster.serve_status()}") from None
    _wait(lambda: "RUNNING" in cluster.serve_status(), 60, "the application is RUNNING")

    async def story() -> dict[str, Any]:
        session = MirageSession(client_config(url, None, fps=FPS, keep_frames=0))
        await session.connect()
        try:
            await session.wait_frames(int(FPS * 2), timeout=60)

            async def fallback_growth(seconds: float) -> tuple[int, int, float]:
                """(fallback frames added, frames received, fps) over ``seconds``."""
                stats0 = dict(session.server_stats or {})
                frames0 = session.stats.frames
                t0 = time.monotonic()
                await asyncio.sleep(seconds)
                stats1 = dict(session.server_stats or {})
                frames = session.stats.frames - frames0
                added = int(stats1.get("fallback_frames", 0)) - int(stats0.get("fallback_frames", 0))
                return added, frames, frames / (time.monotonic() - t0)

            before = await fallback_growth(3.0)
            await asyncio.to_thread(cluster.stop_models_node)
            await asyncio.sleep(2.0)
            during = await fallback_growth(4.0)
            assert not session.ended.is_set(), "the session ended when the model node went away"
            await asyncio.to_thread(cluster.start_models_node)
            # Serve places the model replicas on the node again; the breakers probe and swap resumes.
            deadline = time.monotonic() + 120
            after = await fallback_growth(3.0)
            while after[0] > 0 and time.monotonic() < deadline:
                after = await fallback_growth(3.0)
            assert not session.ended.is_set(), "the session ended before the node came back"
            return {"before": before, "during": during, "after": after, "session_id": session.session_id}
        finally:
            await session.close()

    figures = asyncio.run(story())
    print(f"two nodes: {figures}")
    before, during, after = figures["before"], figures["during"], figures["after"]
    assert before[0] == 0 and before[1] > 0, figures  # swapping, frames flowing
    assert during[0] > 0, figures  # the fallback covers the missing stages ...
    assert during[2] >= 0.6 * before[2], figures  # ... at (close to) the frame rate from before
    assert after[0] == 0 and after[1] > 0, figures  # and swap is back on the same session
