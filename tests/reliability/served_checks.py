"""What every served reliability test asserts afterwards: clean logs, baselines back, RSS in budget.

:class:`LogWindow` remembers how long every Ray/Serve log file was, and later
returns the lines written since that match a pattern of trouble (tracebacks,
"never retrieved", the proxy's "unexpected error", GeneratorExit).
:class:`Baseline` snapshots the ingress's ``/webrtc/debug_state`` (sessions,
peer connections, loop exceptions, tasks, fds, threads, RSS) and checks that a
later snapshot came back to it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.served import ServedApp

TROUBLE = re.compile(
    r"Traceback|never retrieved|GeneratorExit|Request failed due to unexpected error|unhandled event-loop exception"
    r"|Unhandled error|Exception in callback"
)


def ray_logs_dir() -> Path:
    import ray

    node = ray._private.worker._global_node  # noqa: SLF001 - the session's log folder, test-side only
    return Path(node.get_logs_dir_path())


def _log_files(root: Path) -> list[Path]:
    return sorted([*root.glob("serve/*.log"), *root.glob("worker-*.err"), *root.glob("worker-*.out")])


class LogWindow:
    """Lines written to the Ray/Serve logs since this object was made."""

    def __init__(self) -> None:
        self.root = ray_logs_dir()
        self._sizes = {p: p.stat().st_size for p in _log_files(self.root)}
        assert any(p.parent.name == "serve" for p in self._sizes), f"no Serve logs under {self.root}"

    def new_lines(self) -> list[str]:
        lines: list[str] = []
        for path in _log_files(self.root):
            start = self._sizes.get(path, 0)
            try:
                with path.open("rb") as fh:
                    fh.seek(start)
                    chunk = fh.read()
            except OSError:
                continue
            lines += [f"{path.name}: {line}" for line in chunk.decode("utf-8", "replace").splitlines()]
        return lines

    def trouble(self) -> list[str]:
        return [line for line in self.new_lines() if TROUBLE.search(line)]


@dataclass
class Baseline:
    state: dict[str, Any]

    @classmethod
    def take(cls, served: ServedApp) -> Baseline:
        served.wait_sessions(0, timeout=30)
        return cls(served.debug_state())

    def check(self, served: ServedApp, *, rss_budget_mb: float = 150.0, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the ingress to be back at the baseline; returns the final state."""
        deadline = time.monotonic() + timeout
        while True:
            state = served.debug_state()
            proc, base = state["process"], self.state["process"]
            same_process = proc["pid"] == base["pid"]
            problems = []
            if state["session_count"] or state["sessions"]:
                problems.append(f"{state['session_count']} sessions left")
            if state["open_peer_connections"]:
                problems.append(f"{state['open_peer_connections']} peer connections open")
            if state["pending_sockets"]:
                problems.append(f"{state['pending_sockets']} pending sockets")
            if same_process and state["loop_exceptions"] != self.state["loop_exceptions"]:
                problems.append(f"loop exceptions {self.state['loop_exceptions']} -> {state['loop_exceptions']}")
            if same_process and proc["fds"] > base["fds"] + 8:
                problems.append(f"fds {base['fds']} -> {proc['fds']}")
            if same_process and proc["threads"] > base["threads"] + 4:
                problems.append(f"threads {base['threads']} -> {proc['threads']}")
            if same_process and state["loop_tasks"] > self.state["loop_tasks"] + 10:
                problems.append(f"loop tasks {self.state['loop_tasks']} -> {state['loop_tasks']}")
            if same_process and proc["rss_mb"] > base["rss_mb"] + rss_budget_mb:
                problems.append(f"ingress RSS {base['rss_mb']} -> {proc['rss_mb']} MB")
            if not problems:
                return state
            if time.monotonic() > deadline:
                raise AssertionError("not back to baseline: " + "; ".join(problems))
            time.sleep(0.5)
