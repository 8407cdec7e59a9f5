"""``python -m mirage load`` against the real served app (real Ray + Serve + aiortc over 127.0.0.1)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mirage.client.load import add_load_parser, run_load
from standins.faces import tom_hanks_path
from tests.integration.served import REPO, ServedApp

pytestmark = pytest.mark.integration


def _wait_empty(app: ServedApp) -> None:
    app.wait_sessions(0, timeout=30)


def test_load_cli_reports_every_session(served: ServedApp, tmp_path: Path) -> None:
    _wait_empty(served)
    out = tmp_path / "load.json"
    command = [
        sys.executable, "-m", "mirage", "load",
        "--url", served.url,
        "--reference", str(tom_hanks_path()),
        "--sessions", "2",
        "--seconds", "6",
        "--warmup", "2",
        "--fps", "15",
        "--json", str(out),
        "--api-key", served.api_key,
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(out.read_text())
    sessions = report["sessions"]
    assert len(sessions) == 2
    for record in sessions:
        assert {"fps", "g2g_p50_ms", "g2g_p95_ms", "frames", "dropped", "errors"} <= set(record)
        assert record["connected"] and record["error"] is None
        assert record["frames"] >= 15, record  # at least a second's worth in 6 s on 2 shared cores
        assert record["fps"] > 2.0, record
        assert 0 < record["g2g_p50_ms"] <= record["g2g_p95_ms"] < 5000, record
        assert record["errors"] == 0, record
        assert record["unstamped"] <= record["frames"] // 10, record  # the stamp survives the server
        assert record["server_stats"] and record["server_stats"]["type"] == "stats"
    # The table went to stdout, one line per session.
    assert "p50 ms" in result.stdout and len(result.stdout.strip().splitlines()) == 3
    _wait_empty(served)


def _args(served: ServedApp, tmp_path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_load_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(
        ["load", "--url", served.url, "--reference", str(tom_hanks_path()), "--json", str(tmp_path / "load.json"),
         "--seconds", "1", "--warmup", "0", "--fps", "5", *extra]
    )


def test_load_exits_non_zero_on_a_wrong_key(served: ServedApp, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _wait_empty(served)
    assert run_load(_args(served, tmp_path, "--api-key", "wrong-key")) == 1
    record = json.loads((tmp_path / "load.json").read_text())["sessions"][0]
    assert record["connected"] is False and record["code"] == "unauthorized"
    assert "API key" in record["error"]
    assert "session 0 failed" in capsys.readouterr().err


def test_load_reports_sessions_beyond_capacity(served: ServedApp, tmp_path: Path) -> None:
    _wait_empty(served)
    count = served.capacity + 1
    # --retry-for 0: no retries (by default a refused session retries and is admitted once a slot frees).
    assert run_load(_args(served, tmp_path, "--api-key", served.api_key, "--sessions", str(count), "--size", "320x240",
                          "--retry-for", "0")) == 1
    records = json.loads((tmp_path / "load.json").read_text())["sessions"]
    refused = [r for r in records if not r["connected"]]
    assert len(refused) == 1, records
    assert refused[0]["code"] == "server_full" and "try again later" in refused[0]["error"]
    assert sum(1 for r in records if r["connected"] and r["frames"] > 0) == served.capacity
    _wait_empty(served)
