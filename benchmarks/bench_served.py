"""Benchmark of the served application against the same pipeline in one plain process.

    python benchmarks/bench_served.py [--seconds 30] [--sessions 1,2,3] [--json OUT] [--no-echo]
        [--app-arg PATH=VALUE] [--replica-env KEY=VALUE]

Starts a local Ray (``num_cpus=2``) and ``serve.run`` of the app with
``serve_config.yaml``'s arguments, then opens 1, 2 and 3 concurrent client
sessions (``mirage.client.session``, the load client's sessions) of a 640x480
30 fps clip made from the astronaut photo, replayed from one VP8 encode. ICE is
pinned to 127.0.0.1 (``MIRAGE_ICE_HOST_ADDRESSES``, inherited by the Ray workers).

For each session count, once every session is up, no replica is starting and
the warm-up is over, one measured window of ``--seconds``: at its start and end
the CPU seconds (utime + stime, ``/proc/<pid>/stat``) of every Ray process this
run started (GCS, raylet, workers, Serve controller, proxy, replicas: the
processes descended from this one whose command line names Ray), the frames
delivered to all clients, the model deployments' call counters
(``/metrics/deployments``) and the replicas up (``serve.status()``). Hence:

- (a) served: Ray CPU ms per delivered frame;
- (b) plain: the in-process pipeline (``mirage.pipeline.FacePipeline``), after
  Ray has stopped, on the same frames (the VP8 clip decoded, at the ingress's
  analysis size, longest side 512): process CPU ms per frame (``time.process_time``)
  and wall ms;
- (c) echo: a bare aiortc echo of the same stream with the same number of
  sessions (``benchmarks/echo_peer.py``: decode, re-encode, RTP/SRTP, in a child
  process): its CPU ms per echoed frame;
- (d) the cost of serving, a / (b + c) (issue 13's goal: at most 2);
- (b2) the plain pipeline as served: each frame analysed on its copy of at most 512 and
  rendered at the camera's size, as the ingress does; (d2) = a / (b2 + c).

``--app-arg`` overrides one of serve_config.yaml's app args (an A/B, e.g.
``session.fuse_tracking=false``); ``--replica-env`` adds to every replica's environment.

Prints a table and writes JSON: per session delivered fps, glass-to-glass
p50/p95, dropped frames; Serve calls per delivered frame by deployment method;
Ray CPU by process kind; ingress replicas up; the figures above.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

from benchmarks.echo_peer import run_echo  # noqa: E402
from mirage.client.encoded import EncodedClip, encode_clip  # noqa: E402
from mirage.client.load import clip_period  # noqa: E402
from mirage.client.session import SessionOptions  # noqa: E402
from mirage.client.sources import VideoSource, astronaut_source  # noqa: E402
from mirage.pipeline import FacePipeline, PipelineConfig  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
LOOPBACK = "127.0.0.1"
MAX_SIDE = 512


@dataclass
class ProcSample:
    cpu_s: float
    rss_mb: float
    count: int
    #: CPU seconds per replica kind (MirageIngress, FaceDetector, FaceSwapper, other Ray processes).
    by_role: dict[str, float]
    #: Live processes per replica kind.
    processes_by_role: dict[str, int]


ROLES = ("MirageIngress", "FaceDetector", "FaceSwapper", "FaceEnhancer", "VoiceConverter")


def _descendants(root: int) -> set[int]:
    """Every live process below ``root`` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in out:
                out.add(child)
                stack.append(child)
    return out


def sample_ray_processes() -> ProcSample:
    """CPU seconds and RSS of every Ray process this run started (descendants of this process, from /proc)."""
    cpu = 0.0
    rss_kb = 0
    count = 0
    by_role = dict.fromkeys((*ROLES, "other"), 0.0)
    processes = dict.fromkeys((*ROLES, "other"), 0)
    for pid in _descendants(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"ray" not in cmdline:
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            seconds = (int(fields[11]) + int(fields[12])) / CLK_TCK
            rss_kb += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
        except (OSError, IndexError, ValueError):
            continue
        cpu += seconds
        role = next((r for r in ROLES if r.encode() in cmdline), "other")
        by_role[role] += seconds
        processes[role] += 1
        count += 1
    return ProcSample(cpu_s=cpu, rss_mb=rss_kb / 1024.0, count=count, by_role=by_role, processes_by_role=processes)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=15) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def start_app(port: int, replica_env: dict[str, str] | None = None, overrides: list[str] | None = None) -> str:
    import ray
    from ray import serve

    from serve_app.app import AppArgs, build_app

    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    app_args = dict(config["applications"][0]["args"])
    if replica_env:  # an A/B of Serve's or Ray's settings in every replica (--replica-env)
        app_args["replica_env"] = {**app_args.get("replica_env", {}), **replica_env}
    for override in overrides or []:  # --app-arg session.fuse_tracking=false
        path, value = override.split("=", 1)
        *parents, key = path.split(".")
        node = app_args
        for part in parents:
            node = node.setdefault(part, {})
        node[key] = yaml.safe_load(value)
    args = AppArgs(**app_args)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": LOOPBACK, "port": port})
    serve.run(build_app(args), name="mirage", route_prefix="/")
    url = f"http://{LOOPBACK}:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if get_json(url + "/health").get("status") == "ok":
                return url
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError("the app did not become healthy in 180 s")


def replica_states() -> dict[str, dict[str, int]]:
    """Replicas per state of every deployment of the app (``serve.status()``)."""
    from ray import serve

    app = serve.status().applications.get("mirage")
    if app is None:
        return {}
    return {
        name: {str(getattr(state, "value", state)): n for state, n in d.replica_states.items()}
        for name, d in app.deployments.items()
    }


def wait_replicas_settled(timeout_s: float = 120.0, steady_polls: int = 5) -> dict[str, dict[str, int]]:
    """Wait (bounded) until no replica has been starting or stopping for ``steady_polls`` seconds in a row.

    The ingress autoscaler reacts to the new sessions within a few seconds (serve_config.yaml:
    1 s metrics, 3 s look-back, 1 s upscale delay): a replica starting inside the window would
    put its start-up CPU into the served figure.
    """
    deadline = time.monotonic() + timeout_s
    steady = 0
    states = replica_states()
    while time.monotonic() < deadline and steady < steady_polls:
        steady = steady + 1 if all(set(s) <= {"RUNNING"} for s in states.values()) else 0
        time.sleep(1.0)
        states = replica_states()
    return states


def deployment_calls(url: str) -> dict[str, dict[str, tuple[int, int]]]:
    """(items, batches) per deployment method, from ``/metrics/deployments`` (the replica each call reaches)."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    with contextlib.suppress(OSError, ValueError):
        for name, stats in get_json(url + "/metrics/deployments").items():
            if isinstance(stats, dict):
                out[name] = {
                    method: (int(m.get("items", 0)), int(m.get("batches", 0)))
                    for method, m in (stats.get("methods") or {}).items()
                }
    return out


async def served_window(
    url: str, reference: bytes, source: VideoSource, clip: EncodedClip, count: int, seconds: float, warmup: float,
    on_window: Any,
) -> dict[str, Any]:
    """Open ``count`` sessions (with retries), warm up, and measure one window; ``on_window(edge)`` samples the server."""
    from mirage.client.retry import RetryPolicy, open_with_retry
    from mirage.client.session import ClientConfig, MirageSession, SessionError, SessionStats
    from mirage.webrtc.guard import IcePolicy

    config = ClientConfig(
        url=url, reference=reference, source=source, options=SessionOptions(), encoded=clip,
        ice=IcePolicy.from_env(os.environ),
    )

    async def open_once() -> MirageSession:
        attempt = MirageSession(config)
        await attempt.connect()
        return attempt

    opened = await asyncio.gather(
        *(open_with_retry(open_once, RetryPolicy(give_up_after_s=60.0)) for _ in range(count)), return_exceptions=True
    )
    sessions = [s for s in opened if isinstance(s, MirageSession)]
    failures = [f"{type(e).__name__}: {e}" for e in opened if isinstance(e, BaseException)]
    try:
        await asyncio.sleep(warmup)
        await asyncio.to_thread(wait_replicas_settled)
        for session in sessions:
            session.stats = SessionStats()  # measure only the window
        start = await asyncio.to_thread(on_window, "start")
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        delivered = sum(s.stats.frames for s in sessions)
        end = await asyncio.to_thread(on_window, "end")
        window_s = time.monotonic() - t0
        records = [
            {**s.stats.summary(), "ended_early": s.ended.is_set(), "session_id": s.session_id} for s in sessions
        ]
    finally:
        for session in sessions:
            with contextlib.suppress(SessionError, OSError):
                await session.close()
    return {
        "delivered": delivered,
        "window_s": window_s,
        "sessions": records,
        "failures": failures,
        "start": start,
        "end": end,
    }


def decoded_pairs(clip: EncodedClip, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The clip's frames as the ingress converts them: (the picture that goes out, its analysis copy), looped."""
    import av

    from serve_app.orchestrator import to_bgr

    codec = av.CodecContext.create("libvpx", "r")
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    for data in clip.packets:
        for frame in codec.decode(av.Packet(data)):
            pairs.append((to_bgr(frame, 1280), to_bgr(frame, MAX_SIDE)))
    return [pairs[i % len(pairs)] for i in range(count)]


def decoded_clip(clip: EncodedClip, count: int, max_side: int | None = MAX_SIDE) -> list[np.ndarray]:
    """The clip's frames as the server decodes them (BGR), looped to ``count``, at most ``max_side`` (None: as sent)."""
    import av

    from mirage.video import video_frame_to_bgr

    codec = av.CodecContext.create("libvpx", "r")
    frames: list[np.ndarray] = []
    for data in clip.packets:
        for frame in codec.decode(av.Packet(data)):
            picture = video_frame_to_bgr(frame)
            frames.append(downscale(picture, max_side) if max_side else picture)
    return [frames[i % len(frames)] for i in range(count)]


def plain_pipeline(frames: list[np.ndarray], reference: np.ndarray, skip: int = 10) -> dict[str, Any]:
    """Per-frame wall ms and process CPU ms of the same stages in this process (no Ray running)."""
    pipeline = FacePipeline(PipelineConfig(track=True))
    identity = pipeline.build_identity(reference).identity
    times = []
    cpu0 = wall0 = 0.0
    for index, frame in enumerate(frames):
        if index == skip:
            cpu0, wall0 = time.process_time(), time.perf_counter()
        start = time.perf_counter()
        pipeline.process(frame, identity, t=index / 30.0)
        if index >= skip:
            times.append((time.perf_counter() - start) * 1000.0)
    return timing_report(times, time.process_time() - cpu0, time.perf_counter() - wall0)


def timing_report(times_ms: list[float], cpu_s: float, wall_s: float) -> dict[str, Any]:
    """Per-frame wall p50/mean, process CPU per frame and cores used, over the timed frames."""
    return {
        "p50_ms": round(float(np.percentile(times_ms, 50)), 2),
        "mean_ms": round(float(np.mean(times_ms)), 2),
        "cpu_ms_per_frame": round(cpu_s * 1000.0 / len(times_ms), 2),
        "cpu_cores_while_running": round(cpu_s / wall_s, 2) if wall_s else 0.0,
        "frames": len(times_ms),
    }


def plain_as_served(frames: list[tuple[np.ndarray, np.ndarray]], reference: np.ndarray, skip: int = 10) -> dict[str, Any]:
    """The same pipeline as the served session runs it, in this process (no Ray, no threads, no WebRTC).

    Each frame is analysed on its copy of at most ``MAX_SIDE`` and rendered (paste-back, badge) at
    the camera's size, as the ingress does since frames go back at the camera's resolution. Both
    pictures come ready (the served ingress makes them from the decoded frame, ~0.6 ms, not counted here).
    """
    from mirage.pipeline import FramePipeline, FrameSettings
    from mirage.pipeline.controls import FrameControls
    from mirage.pipeline.fused import TrackSwapEngine
    from mirage.pipeline.models import DETECTOR, SWAPPER, DetectorEngine, LocalModelClient
    from mirage.pipeline.prepare import FramePreparer

    engine = TrackSwapEngine()
    ok, encoded_reference = cv2.imencode(".png", reference)
    reply = engine.build_identity(encoded_reference.tobytes(), "mesh")
    controls = FrameControls()
    controls.set_identity(reply.identity)

    async def inline(fn: Any, *args: Any) -> Any:
        return fn(*args)

    models = LocalModelClient({DETECTOR: DetectorEngine(), SWAPPER: engine}, in_thread=False)
    pipeline = FramePipeline(models, FramePreparer(), FrameSettings(deadline_s=None), controls, offload=inline)

    async def run() -> tuple[list[float], float, float]:
        times: list[float] = []
        cpu0 = wall0 = 0.0
        for index, (frame, small) in enumerate(frames):
            if index == skip:
                cpu0, wall0 = time.process_time(), time.perf_counter()
            start = time.perf_counter()
            plan = pipeline.plan()
            factor = frame.shape[1] / float(small.shape[1])
            inputs = pipeline.model_inputs(small, plan, frame, factor)
            analysis = (await pipeline.analyze_prepared(small, index / 30.0, plan, inputs)).scaled(factor)
            await pipeline.render(frame, analysis)
            if index >= skip:
                times.append((time.perf_counter() - start) * 1000.0)
        return times, time.process_time() - cpu0, time.perf_counter() - wall0

    times, cpu_s, wall_s = asyncio.run(run())
    (picture, small) = frames[0]
    size = f"{picture.shape[1]}x{picture.shape[0]}, analysed at {small.shape[1]}x{small.shape[0]}"
    return {**timing_report(times, cpu_s, wall_s), "size": size}


def downscale(frame: np.ndarray, max_side: int) -> np.ndarray:
    h, w = frame.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return frame
    return np.asarray(cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA))


def calls_per_frame(
    before: dict[str, dict[str, tuple[int, int]]], after: dict[str, dict[str, tuple[int, int]]], frames: int
) -> dict[str, dict[str, float]]:
    """Serve calls (items) and batches per delivered frame, per deployment method, over the window."""
    out: dict[str, dict[str, float]] = {}
    for name, methods in after.items():
        for method, (items, batches) in methods.items():
            items0, batches0 = before.get(name, {}).get(method, (0, 0))
            if items - items0 <= 0 or not frames:
                continue
            out[f"{name}.{method}"] = {
                "calls_per_frame": round((items - items0) / frames, 3),
                "batches_per_frame": round((batches - batches0) / frames, 3),
                "mean_batch": round((items - items0) / max(batches - batches0, 1), 2),
            }
    return out


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per run (default 30)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after connecting that are not measured")
    parser.add_argument("--sessions", default="1,2,3", help="comma list of concurrent session counts")
    parser.add_argument("--no-echo", action="store_true", help="skip the bare aiortc echo (c) and the ratio (d)")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--replica-env", action="append", default=[], metavar="KEY=VALUE",
        help="add to serve_config.yaml's replica_env (every replica's environment) for an A/B; repeatable",
    )
    parser.add_argument(
        "--app-arg", action="append", default=[], metavar="PATH=VALUE",
        help="override one of serve_config.yaml's app args (YAML value), e.g. session.fuse_tracking=false; repeatable",
    )
    args = parser.parse_args()
    replica_env = dict(item.split("=", 1) for item in args.replica_env)
    counts = [int(c) for c in args.sessions.split(",") if c.strip()]
    # Every WebRTC peer of the run (the app's replicas inherit it, the clients read it) on loopback only.
    os.environ.setdefault("MIRAGE_ICE_HOST_ADDRESSES", LOOPBACK)

    from benchmarks.common import tom_hanks_path  # the packaged reference photo

    reference_bytes = tom_hanks_path().read_bytes()
    reference = np.asarray(cv2.imdecode(np.frombuffer(reference_bytes, np.uint8), cv2.IMREAD_COLOR), np.uint8)
    source = astronaut_source(640, 480, 30.0)

    # Every session replays one VP8 encode of the stamped clip (mirage.client.encoded), so the
    # client's CPU does not compete with the server it measures; the echo replays the same one.
    encoded = encode_clip(source, clip_period(source, source.fps))
    url = start_app(free_port(), replica_env, args.app_arg)
    runs = []
    for count in counts:
        def on_window(edge: str) -> dict[str, Any]:
            return {
                "procs": sample_ray_processes(),
                "client_cpu": sum(os.times()[:2]),
                "calls": deployment_calls(url),
                "replicas": replica_states(),
                "metrics": get_json(url + "/metrics"),
                "load": load_average(),
                "t": time.monotonic(),
                "edge": edge,
            }

        result = asyncio.run(
            served_window(url, reference_bytes, source, encoded, count, args.seconds, args.warmup, on_window)
        )
        start, end = result["start"], result["end"]
        before, after = start["procs"], end["procs"]
        wall = end["t"] - start["t"]
        delivered = result["delivered"]
        cpu = after.cpu_s - before.cpu_s
        metrics, metrics_before = end["metrics"], start["metrics"]
        # With two ingress replicas /metrics answers from either: its counters are one replica's.
        same_replica = (metrics.get("routing") or {}).get("replica") == (metrics_before.get("routing") or {}).get("replica")
        runs.append(
            {
                "sessions_requested": count,
                "sessions": result["sessions"],
                "failures": result["failures"],
                "window_s": round(wall, 2),
                "delivered_frames": delivered,
                "ray_cpu_s": round(cpu, 2),
                "served_cpu_ms_per_frame": round(cpu * 1000.0 / delivered, 2) if delivered else None,
                "serve_calls": calls_per_frame(start["calls"], end["calls"], delivered),
                "replicas_start": start["replicas"],
                "replicas_end": end["replicas"],
                "ingress_processes": [before.processes_by_role["MirageIngress"], after.processes_by_role["MirageIngress"]],
                "load_average_start": start["load"],
                "load_average_end": end["load"],
                "ingress_metrics_same_replica": same_replica,
                "ingress_frame_ms": metrics.get("stage_ms", {}),
                "ingress_avg_latency_ms": metrics.get("avg_latency_ms"),
                "server_dropped_frames": metrics.get("dropped_frames", 0) - metrics_before.get("dropped_frames", 0)
                if same_replica
                else None,
                "server_fallback_frames": metrics.get("fallback_frames", 0) - metrics_before.get("fallback_frames", 0)
                if same_replica
                else None,
                "ray_cpu_cores": round(cpu / wall, 2),
                "ray_cpu_cores_by_role": {
                    role: round((after.by_role[role] - before.by_role[role]) / wall, 2) for role in after.by_role
                },
                "ray_cpu_ms_per_frame_by_role": {
                    role: round((after.by_role[role] - before.by_role[role]) * 1000.0 / delivered, 2)
                    for role in after.by_role
                }
                if delivered
                else {},
                "ray_rss_mb": round(after.rss_mb, 1),
                "ray_processes": after.count,
                "client_cpu_cores": round((end["client_cpu"] - start["client_cpu"]) / wall, 2),
            }
        )

    import ray

    ray.shutdown()

    frames = decoded_clip(encoded, 310)
    plain = plain_pipeline(frames, reference)
    plain["load_average"] = load_average()
    as_served = plain_as_served(decoded_pairs(encoded, 310), reference)
    as_served["load_average"] = load_average()
    echoes: dict[int, dict[str, Any]] = {}
    if not args.no_echo:
        for count in counts:
            echo = run_echo(encoded, count, args.seconds, args.warmup)
            echo["load_average"] = load_average()
            echoes[count] = echo
    for run in runs:
        echo_ms = echoes.get(run["sessions_requested"], {}).get("cpu_ms_per_frame")
        served_ms = run["served_cpu_ms_per_frame"]
        run["echo_cpu_ms_per_frame"] = echo_ms
        run["plain_cpu_ms_per_frame"] = plain["cpu_ms_per_frame"]
        run["plain_as_served_cpu_ms_per_frame"] = as_served["cpu_ms_per_frame"]
        base = plain["cpu_ms_per_frame"] + echo_ms if echo_ms is not None else None
        run["serving_cost_ratio"] = round(served_ms / base, 2) if served_ms is not None and base else None
        base_served = as_served["cpu_ms_per_frame"] + echo_ms if echo_ms is not None else None
        run["serving_cost_ratio_as_served"] = round(served_ms / base_served, 2) if served_ms is not None and base_served else None

    print(f"served vs plain pipeline + aiortc echo, 640x480 30 fps clip, {platform.machine()} ({os.cpu_count()} cores)")
    print(
        f"plain in-process pipeline (the decoded clip at longest side {MAX_SIDE}): wall p50 {plain['p50_ms']} ms, "
        f"mean {plain['mean_ms']} ms; CPU {plain['cpu_ms_per_frame']} ms per frame "
        f"({plain['cpu_cores_while_running']} cores while running)"
    )
    print(
        f"plain pipeline as served ({as_served['size']}, rendered at that size): wall p50 {as_served['p50_ms']} ms, "
        f"mean {as_served['mean_ms']} ms; CPU {as_served['cpu_ms_per_frame']} ms per frame "
        f"({as_served['cpu_cores_while_running']} cores while running)\n"
    )
    header = f"{'sessions':>8} {'session':>7} {'fps':>6} {'g2g p50':>8} {'g2g p95':>8} {'frames':>6} {'dropped':>7} {'errors':>6}"
    print(header)
    for run in runs:
        for i, s in enumerate(run["sessions"]):
            print(
                f"{run['sessions_requested']:>8} {i:>7} {s['fps'] or 0:>6} {s['g2g_p50_ms'] or 0:>8} "
                f"{s['g2g_p95_ms'] or 0:>8} {s['frames']:>6} {s['dropped']:>7} {s['errors']:>6}"
            )
        for failure in run["failures"]:
            print(f"{run['sessions_requested']:>8}       - failed: {failure}")
    print()
    print("cost of serving, CPU ms per frame: (a) all Ray processes per delivered frame, (b) plain pipeline,")
    print("(c) bare aiortc echo per echoed frame (same sessions), (d) = a / (b + c); goal: d <= 2;")
    print("(b2) the plain pipeline as served (analysed at 512, rendered at the camera's size), (d2) = a / (b2 + c)")
    print(f"{'sessions':>8} {'(a) served':>10} {'(b) plain':>9} {'(c) echo':>8} {'(d) ratio':>9} {'delivered':>9} "
          f"{'echoed':>6} {'ingress replicas':>16} {'load avg':>15} {'(b2) as served':>14} {'(d2)':>6}")
    for run in runs:
        echo = echoes.get(run["sessions_requested"], {})
        ingress = "/".join(str(run[k].get("MirageIngress", {}).get("RUNNING", 0)) for k in ("replicas_start", "replicas_end"))
        load = f"{run['load_average_start'][0]}-{run['load_average_end'][0]}"
        print(
            f"{run['sessions_requested']:>8} {run['served_cpu_ms_per_frame'] or 0:>10} {plain['cpu_ms_per_frame']:>9} "
            f"{run['echo_cpu_ms_per_frame'] or '-':>8} {run['serving_cost_ratio'] or '-':>9} {run['delivered_frames']:>9} "
            f"{echo.get('echoed_frames', '-'):>6} {ingress:>16} {load:>15} "
            f"{as_served['cpu_ms_per_frame']:>14} {run['serving_cost_ratio_as_served'] or '-':>6}"
        )
    print()
    for run in runs:
        print(
            f"{run['sessions_requested']} session(s): Ray CPU {run['ray_cpu_cores']} cores, RSS {run['ray_rss_mb']} MB "
            f"in {run['ray_processes']} processes (load client {run['client_cpu_cores']} cores); "
            f"ingress per-frame {run['ingress_avg_latency_ms']} ms; server dropped {run['server_dropped_frames']}, "
            f"fallback {run['server_fallback_frames']}"
            + ("" if run["ingress_metrics_same_replica"] else " (/metrics answered from two ingress replicas: not a delta)")
        )
        print(f"    Ray CPU ms per delivered frame by process: {run['ray_cpu_ms_per_frame_by_role']}")
        print(f"    Serve calls per delivered frame: {run['serve_calls']}")
        print(f"    ingress stage ms: {run['ingress_frame_ms']}")
    for count, echo in echoes.items():
        print(
            f"echo, {count} session(s): {echo['echo_cpu_cores']} cores, {echo['cpu_ms_per_frame']} ms per frame; "
            f"per session {echo['per_session']}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "replica_env_added": replica_env,
            "app_args_overridden": args.app_arg,
            "plain_pipeline": plain,
            "plain_pipeline_as_served": as_served,
            "echo": {str(k): v for k, v in echoes.items()},
            "runs": runs,
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
