"""The client's bookkeeping (no server needed) and the load CLI's failure path against a closed port."""

from __future__ import annotations

import argparse
import json
import socket

import pytest

from mirage.client.load import add_load_parser, run_load
from mirage.client.session import (
    ClientConfig,
    MirageSession,
    SessionFailed,
    SessionRefused,
    SessionStats,
    _message_from_body,
    _ws_url,
)
from mirage.client.sources import astronaut_source
from mirage.client.stamp import MODULUS
from standins.faces import tom_hanks_path


def test_stats_summary_counts_drops_and_repeats() -> None:
    stats = SessionStats()
    for number in [10, 11, 13, 14, 14, 17]:
        stats.observe_number(number)
    assert stats.repeats == 1
    assert stats.dropped == 3  # 12, 15, 16 never came back
    stats.frames = 31
    stats.first_at, stats.last_at = 100.0, 101.0
    stats.latencies_ms = [float(v) for v in range(1, 101)]
    summary = stats.summary()
    assert summary["fps"] == pytest.approx(30.0)
    assert summary["g2g_p50_ms"] == pytest.approx(50.5)
    assert summary["g2g_p95_ms"] == pytest.approx(95.05, abs=0.1)
    assert set(summary) == {"fps", "g2g_p50_ms", "g2g_p95_ms", "frames", "dropped", "errors"}
    empty = SessionStats().summary()
    assert empty["fps"] == 0.0 and empty["g2g_p50_ms"] is None and empty["dropped"] == 0


def test_unwrap_follows_the_16_bit_counter() -> None:
    session = MirageSession(ClientConfig("http://127.0.0.1:1", b"x", astronaut_source()))
    values = [MODULUS - 2, MODULUS - 1, 0, 1, MODULUS - 1, 3]
    assert [session._unwrap(v) for v in values] == [MODULUS - 2, MODULUS - 1, MODULUS, MODULUS + 1, MODULUS - 1, MODULUS + 3]


def test_urls_and_error_bodies() -> None:
    assert _ws_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws/session"
    assert _ws_url("https://example.org/mirage/") == "wss://example.org/mirage/ws/session"
    with pytest.raises(SessionFailed):
        _ws_url("ftp://example.org")
    assert _message_from_body('{"detail": "The API key is not valid for this server."}') == "The API key is not valid for this server."
    assert _message_from_body('{"message": "full"}') == "full"
    assert _message_from_body("plain words") == "plain words"
    refused = SessionRefused("no_face", "No face was found in the reference photo.")
    assert refused.code == "no_face" and "No face" in str(refused)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_load_exits_non_zero_when_a_session_cannot_connect(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    add_load_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "load.json"
    args = parser.parse_args(
        ["load", "--url", f"http://127.0.0.1:{_closed_port()}", "--reference", str(tom_hanks_path()),
         "--sessions", "2", "--seconds", "1", "--json", str(out), "--connect-timeout", "10"]
    )
    assert run_load(args) == 1
    report = json.loads(out.read_text())
    assert report["encode"] == "once"  # the default: the clip was encoded once before the sessions
    assert len(report["sessions"]) == 2
    for record in report["sessions"]:
        assert record["connected"] is False and record["code"] == "connection_failed"
        assert record["frames"] == 0 and record["fps"] == 0.0
    assert "could not reach the server" in capsys.readouterr().err.lower()


def test_load_parser_rejects_bad_values(tmp_path) -> None:
    parser = argparse.ArgumentParser()
    add_load_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["load", "--url", "http://x", "--reference", str(tmp_path / "missing.png"), "--json", str(tmp_path / "o.json")])
    with pytest.raises(SystemExit, match="cannot read the reference photo"):
        run_load(args)
