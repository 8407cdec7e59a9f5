"""``mirage load`` retries a full server, honouring its hint, and counts the retries (real served app)."""

from __future__ import annotations

import json
from pathlib import Path

from mirage.cli import build_parser
from mirage.client.load import run_load
from standins.faces import tom_hanks_path
from tests.integration.served import ServedApp


def test_load_retries_a_full_server_and_counts_the_retries(served: ServedApp, tmp_path: Path) -> None:
    served.wait_sessions(0, timeout=30)
    out = tmp_path / "load.json"
    args = build_parser().parse_args([
        "load", "--url", served.url, "--reference", str(tom_hanks_path()), "--json", str(out),
        "--api-key", served.api_key, "--sessions", str(served.capacity + 1), "--size", "320x240",
        "--fps", "10", "--seconds", "3", "--warmup", "1", "--retry-for", "60",
    ])
    assert run_load(args) == 0
    report = json.loads(out.read_text())
    records = report["sessions"]
    assert all(r["connected"] and r["frames"] > 0 and r["error"] is None for r in records), records
    retried = [r for r in records if r["retries"] > 0]
    # One session found the replica full, waited at least the hint, and got the slot a finished session freed.
    assert len(retried) >= 1, records
    assert all(r["retry_wait_s"] >= 3.0 for r in retried), retried  # the served app's hint is 3 s
    assert report["retries"] == sum(r["retries"] for r in records) >= 1
    served.wait_sessions(0, timeout=30)
