"""Soak test of the served application: N sessions for M minutes with churn.

    python benchmarks/bench_soak.py [--sessions 3] [--minutes 10] [--session-s 20] [--json OUT]

Starts a local Ray (``num_cpus=2``) and ``serve.run`` of the app with
``serve_config.yaml``'s arguments (as ``bench_served.py`` does), then keeps
``--sessions`` sessions running for ``--minutes``: each slot opens a session
(the stamped astronaut clip, encoded once and replayed), keeps it for about
``--session-s`` seconds (±50 %, seeded), and ends it; every fourth session ends
abruptly (its WebSocket dropped without a close handshake) as a killed client
would. Every 10 s it samples the RSS of each replica kind (from /proc) and the
ingress's own view (``/webrtc/debug_state``). Prints a table and writes JSON:
RSS over time per replica kind, the growth over the last half of the run
(goal: < 5 % at 3 sessions for 10 minutes), sessions completed, refused and
failed, delivered fps, glass-to-glass p50, and frames dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_served import ROLES, free_port, get_json, start_app  # noqa: E402
from mirage.client.encoded import encode_clip  # noqa: E402
from mirage.client.load import clip_period  # noqa: E402
from mirage.client.session import ClientConfig, MirageSession, SessionError, SessionRefused  # noqa: E402
from mirage.client.sources import astronaut_source  # noqa: E402
from mirage.webrtc.guard import IcePolicy  # noqa: E402

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
SAMPLE_EVERY_S = 10.0


def rss_by_role() -> dict[str, float]:
    """RSS (MB) of the Ray processes of each replica kind on this machine."""
    out = dict.fromkeys(ROLES, 0.0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            role = next((r for r in ROLES if r.encode() in cmdline), None)
            if role is None or b"ray" not in cmdline:
                continue
            out[role] += int(Path(f"/proc/{entry}/statm").read_text().split()[1]) * PAGE_KB / 1024.0
        except (OSError, IndexError, ValueError):
            continue
    return {k: round(v, 1) for k, v in out.items()}


def growth_pct(series: list[float]) -> float | None:
    """Growth over the last half of a series: (last - middle) / middle, in %."""
    if len(series) < 4 or series[len(series) // 2] <= 0:
        return None
    mid = series[len(series) // 2]
    return round(100.0 * (series[-1] - mid) / mid, 2)


async def soak(url: str, api_key: str | None, sessions: int, minutes: float, session_s: float, seed: int) -> dict[str, Any]:
    from benchmarks.common import tom_hanks_path

    reference = tom_hanks_path().read_bytes()
    source = astronaut_source(640, 480, 30.0)
    encoded = await asyncio.to_thread(encode_clip, source, clip_period(source, source.fps))
    rng = random.Random(seed)
    stop_at = time.monotonic() + minutes * 60.0
    started_at = time.monotonic()
    results: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    counter = {"n": 0}

    async def slot(index: int) -> None:
        while time.monotonic() < stop_at:
            counter["n"] += 1
            n = counter["n"]
            hold = min(session_s * rng.uniform(0.5, 1.5), max(1.0, stop_at - time.monotonic()))
            config = ClientConfig(url=url, reference=reference, source=source, api_key=api_key, encoded=encoded,
                                  ice=IcePolicy.from_env(os.environ))
            session = MirageSession(config)
            record: dict[str, Any] = {"n": n, "slot": index, "ok": False, "abrupt": n % 4 == 0}
            try:
                await session.connect()
                await asyncio.sleep(hold)
                summary = session.stats.summary()
                server = session.server_stats or {}
                record.update(ok=True, seconds=hold, fps=summary.get("fps"), p50=summary.get("g2g_p50_ms"),
                              dropped=server.get("dropped", 0), fallback_frames=server.get("fallback_frames", 0))
            except SessionRefused as exc:
                record.update(error=exc.code)
                await asyncio.sleep(2.0)
            except SessionError as exc:
                record.update(error=type(exc).__name__, message=str(exc)[:120])
                await asyncio.sleep(2.0)
            finally:
                if record["abrupt"] and session._ws is not None:  # noqa: SLF001 - a killed client
                    session._ws.transport.abort()  # noqa: SLF001
                await session.close()
            results.append(record)

    async def sampler() -> None:
        while time.monotonic() < stop_at + 5.0:
            entry: dict[str, Any] = {"t_s": round(time.monotonic() - started_at, 1), "rss_mb": rss_by_role()}
            try:
                state = await asyncio.to_thread(get_json, url + "/webrtc/debug_state")
                entry.update(sessions=state["session_count"], ingress=state["process"],
                             loop_exceptions=state["loop_exceptions"], peer_connections=state["open_peer_connections"])
            except Exception as exc:  # noqa: BLE001 - keep sampling
                entry["error"] = type(exc).__name__
            samples.append(entry)
            await asyncio.sleep(SAMPLE_EVERY_S)

    sampling = asyncio.ensure_future(sampler())
    await asyncio.gather(*(slot(i) for i in range(sessions)))
    await asyncio.sleep(8.0)  # let the last sessions be torn down
    sampling.cancel()
    final = {"t_s": round(time.monotonic() - started_at, 1), "rss_mb": rss_by_role(),
             **{k: v for k, v in get_json(url + "/webrtc/debug_state").items()
                if k in ("session_count", "open_peer_connections", "loop_exceptions", "process")}}
    ok = [r for r in results if r["ok"]]
    fps = [r["fps"] for r in ok if r.get("fps")]
    p50 = [r["p50"] for r in ok if r.get("p50")]
    return {
        "sessions": sessions, "minutes": minutes, "session_s": session_s, "seed": seed,
        "completed": len(ok), "refused": sum(1 for r in results if r.get("error") == "server_full"),
        "failed": sum(1 for r in results if not r["ok"] and r.get("error") != "server_full"),
        "abrupt": sum(1 for r in results if r["abrupt"]),
        "fps_mean": round(statistics.mean(fps), 2) if fps else None,
        "g2g_p50_ms_median": round(statistics.median(p50), 1) if p50 else None,
        "dropped_total": sum(int(r.get("dropped") or 0) for r in ok),
        "rss_growth_last_half_pct": {role: growth_pct([s["rss_mb"][role] for s in samples]) for role in ROLES},
        "samples": samples, "final": final, "results": results,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--session-s", type=float, default=20.0, help="mean seconds a session lasts (churn)")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--url", help="soak a running server instead of starting one")
    parser.add_argument("--api-key", default=os.environ.get("MIRAGE_API_KEY"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    url = args.url or start_app(free_port())
    report = asyncio.run(soak(url, args.api_key, args.sessions, args.minutes, args.session_s, args.seed))
    print(f"soak: {args.sessions} sessions x {args.minutes:g} min, ~{args.session_s:g} s each")
    print(f"  sessions completed {report['completed']}, refused {report['refused']}, failed {report['failed']}, "
          f"abrupt ends {report['abrupt']}")
    print(f"  delivered fps (mean per session) {report['fps_mean']}, g2g p50 (median) {report['g2g_p50_ms_median']} ms, "
          f"dropped frames {report['dropped_total']}")
    print("   t (s)  " + "  ".join(f"{r:>14}" for r in ROLES) + "  sessions")
    for s in report["samples"]:
        print(f"  {s['t_s']:6.0f}  " + "  ".join(f"{s['rss_mb'][r]:11.1f} MB" for r in ROLES) + f"  {s.get('sessions', '?'):>8}")
    print("  RSS growth over the last half: " + ", ".join(
        f"{r} {v if v is not None else 'n/a'} %" for r, v in report["rss_growth_last_half_pct"].items()))
    final = report["final"]
    print(f"  after: sessions {final.get('session_count')}, peer connections {final.get('open_peer_connections')}, "
          f"loop exceptions {final.get('loop_exceptions')}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
