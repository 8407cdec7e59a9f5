"""Benchmark of the served application against the same pipeline in one plain process.

    python benchmarks/bench_served.py [--seconds 30] [--sessions 1,2,3] [--json OUT]

Starts a local Ray (``num_cpus=2``) and ``serve.run`` of the app with
``serve_config.yaml``'s arguments, then runs the load client (``mirage.client.load``)
with 1, 2 and 3 concurrent sessions of a 640x480 30 fps clip made from the
astronaut photo. In the same run, the plain in-process pipeline
(``mirage.pipeline.FacePipeline``) processes the same clip at the size the
ingress works at (longest side 512). Prints a table and writes JSON:
per session delivered fps, glass-to-glass p50/p95, dropped frames; the ingress's
per-frame processing ms against the plain pipeline's (the cost of serving);
CPU (cores busy) and RSS of the Ray processes during each run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mirage.client.encoded import encode_clip  # noqa: E402
from mirage.client.load import LoadPlan, clip_period, run_plan  # noqa: E402
from mirage.client.session import SessionOptions  # noqa: E402
from mirage.client.sources import astronaut_source  # noqa: E402
from mirage.pipeline import FacePipeline, PipelineConfig  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class ProcSample:
    cpu_s: float
    rss_mb: float
    count: int
    #: CPU seconds per replica kind (MirageIngress, FaceDetector, FaceSwapper, other Ray processes).
    by_role: dict[str, float]


ROLES = ("MirageIngress", "FaceDetector", "FaceSwapper")


def sample_ray_processes() -> ProcSample:
    """CPU seconds and RSS of every Ray process on this machine (from /proc)."""
    cpu = 0.0
    rss_kb = 0
    count = 0
    by_role = dict.fromkeys((*ROLES, "other"), 0.0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"ray" not in cmdline or b"bench_served" in cmdline:
                continue
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            seconds = (int(fields[11]) + int(fields[12])) / CLK_TCK
            cpu += seconds
            role = next((r for r in ROLES if r.encode() in cmdline), "other")
            by_role[role] += seconds
            rss_kb += int(Path(f"/proc/{entry}/statm").read_text().split()[1]) * PAGE_KB
            count += 1
        except (OSError, IndexError, ValueError):
            continue
    return ProcSample(cpu_s=cpu, rss_mb=rss_kb / 1024.0, count=count, by_role=by_role)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def start_app(port: int) -> str:
    import ray
    from ray import serve

    from serve_app.app import AppArgs, build_app

    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    args = AppArgs(**config["applications"][0]["args"])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name="mirage", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if get_json(url + "/health").get("status") == "ok":
                return url
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError("the app did not become healthy in 180 s")


def plain_pipeline_ms(frames: list[np.ndarray], reference: np.ndarray) -> dict[str, float]:
    """Per-frame ms of the same stages in one process, on frames at the ingress's size."""
    pipeline = FacePipeline(PipelineConfig(track=True))
    identity = pipeline.build_identity(reference).identity
    times = []
    for index, frame in enumerate(frames):
        start = time.perf_counter()
        pipeline.process(frame, identity, t=index / 30.0)
        if index >= 10:
            times.append((time.perf_counter() - start) * 1000.0)
    return {"p50_ms": round(float(np.percentile(times, 50)), 2), "mean_ms": round(float(np.mean(times)), 2)}


def downscale(frame: np.ndarray, max_side: int) -> np.ndarray:
    h, w = frame.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return frame
    return cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per run (default 30)")
    parser.add_argument("--sessions", default="1,2,3", help="comma list of concurrent session counts")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    counts = [int(c) for c in args.sessions.split(",") if c.strip()]

    from benchmarks.common import tom_hanks_path  # the packaged reference photo

    reference_bytes = tom_hanks_path().read_bytes()
    reference = cv2.imdecode(np.frombuffer(reference_bytes, np.uint8), cv2.IMREAD_COLOR)
    source = astronaut_source(640, 480, 30.0)

    # The load client replays one VP8 encode of the stamped clip in every session, so its
    # CPU does not compete with the server it measures (mirage.client.encoded).
    encoded = encode_clip(source, clip_period(source, source.fps))
    url = start_app(free_port())
    runs = []
    for count in counts:
        before = sample_ray_processes()
        client_before = os.times()
        metrics_before = get_json(url + "/metrics")
        start = time.monotonic()
        plan = LoadPlan(
            url=url,
            reference=reference_bytes,
            source=source,
            sessions=count,
            seconds=args.seconds,
            warmup=3.0,
            options=SessionOptions(),
            encoded=encoded,
        )
        report = asyncio.run(run_plan(plan))
        wall = time.monotonic() - start
        after = sample_ray_processes()
        client_after = os.times()
        client_cpu = (client_after.user + client_after.system) - (client_before.user + client_before.system)
        metrics = get_json(url + "/metrics")
        runs.append(
            {
                "sessions_requested": count,
                "sessions": [
                    {k: r.get(k) for k in ("fps", "g2g_p50_ms", "g2g_p95_ms", "frames", "dropped", "errors", "error")}
                    for r in report["sessions"]
                ],
                "ingress_frame_ms": metrics.get("stage_ms", {}),
                "ingress_avg_latency_ms": metrics.get("avg_latency_ms"),
                "server_dropped_frames": metrics.get("dropped_frames", 0) - metrics_before.get("dropped_frames", 0),
                "server_fallback_frames": metrics.get("fallback_frames", 0) - metrics_before.get("fallback_frames", 0),
                "ray_cpu_cores": round((after.cpu_s - before.cpu_s) / wall, 2),
                "ray_cpu_cores_by_role": {
                    role: round((after.by_role[role] - before.by_role[role]) / wall, 2) for role in after.by_role
                },
                "ray_rss_mb": round(after.rss_mb, 1),
                "ray_processes": after.count,
                "client_cpu_cores": round(client_cpu / wall, 2),
            }
        )

    max_side = 512
    frames = [downscale(source.frame(i), max_side) for i in range(310)]
    plain = plain_pipeline_ms(frames, reference)

    import ray

    ray.shutdown()

    print(f"served vs plain pipeline, 640x480 30 fps clip, {platform.machine()} ({os.cpu_count()} cores)")
    print(f"plain in-process pipeline (frames at longest side {max_side}): p50 {plain['p50_ms']} ms, mean {plain['mean_ms']} ms\n")
    header = f"{'sessions':>8} {'session':>7} {'fps':>6} {'g2g p50':>8} {'g2g p95':>8} {'frames':>6} {'dropped':>7} {'errors':>6}"
    print(header)
    for run in runs:
        for i, s in enumerate(run["sessions"]):
            print(
                f"{run['sessions_requested']:>8} {i:>7} {s['fps'] or 0:>6} {s['g2g_p50_ms'] or 0:>8} "
                f"{s['g2g_p95_ms'] or 0:>8} {s['frames']:>6} {s['dropped']:>7} {s['errors']:>6}"
            )
    print()
    for run in runs:
        served_ms = run["ingress_avg_latency_ms"] or 0.0
        ratio = served_ms / plain["mean_ms"] if plain["mean_ms"] else float("nan")
        run["serving_cost_ratio"] = round(ratio, 2)
        print(
            f"{run['sessions_requested']} session(s): ingress per-frame {served_ms} ms vs plain {plain['mean_ms']} ms "
            f"(x{ratio:.2f}); Ray CPU {run['ray_cpu_cores']} cores, RSS {run['ray_rss_mb']} MB "
            f"(load client {run['client_cpu_cores']} cores) "
            f"in {run['ray_processes']} processes; server dropped {run['server_dropped_frames']}, "
            f"fallback {run['server_fallback_frames']}"
        )
        print(f"    Ray CPU by process: {run['ray_cpu_cores_by_role']}; ingress stage ms: {run['ingress_frame_ms']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"plain_pipeline": plain, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
