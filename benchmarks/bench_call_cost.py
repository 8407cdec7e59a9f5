"""What one Serve call costs the replica that answers it, on this machine: a deployment that does nothing.

    flock /tmp/mirage-heavy.lock .venv/bin/python benchmarks/bench_call_cost.py [--rate 25] [--seconds 20]
        [--payload 23000] [--no-batch] [--replica-env KEY=VALUE ...] [--json OUT]

Starts a local Ray (``num_cpus=2``) and one ``Echo`` deployment (0.1 CPU, no access log, the
replica settings ``serve_config.yaml`` uses), calls it at ``--rate`` calls a second from the driver
with a ``--payload``-byte array (23 KB is a voice call's pickled chunk and stream state), and reads
the replica's CPU (utime + stime, ``/proc``) while idle and while called. ``ms_per_call`` =
(busy − idle CPU) ÷ calls: the floor under any deployment's per-call cost, the VoiceConverter's
included (issue 12: its DSP work is ~1.35 ms of a ~7 ms call).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def process_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def echo_app(batch: bool, env: dict[str, str]) -> Any:
    from ray import serve

    options = {"num_cpus": 0.1, "runtime_env": {"env_vars": {**REPLICA_ENV, **env}}}

    @serve.deployment(ray_actor_options=options, max_ongoing_requests=8, logging_config={"enable_access_log": False})
    class Echo:
        def pid(self) -> int:
            return os.getpid()

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
        async def batched(self, items: list[Any]) -> list[Any]:
            return items

        async def plain(self, item: Any) -> Any:
            return item

        async def call(self, item: Any) -> Any:
            return await (self.batched(item) if batch else self.plain(item))

    return Echo.bind()


async def measure(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    import ray
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": REPLICA_ENV})
    try:
        handle = serve.run(echo_app(not args.no_batch, env), name="echo", route_prefix=None)
        pid = await handle.pid.remote()
        payload = np.zeros(max(1, args.payload // 8))
        for _ in range(50):  # warm up
            await handle.call.remote(payload)
        await asyncio.sleep(2.0)
        cpu0, t0 = process_cpu_s(pid), time.monotonic()
        await asyncio.sleep(5.0)
        idle = (process_cpu_s(pid) - cpu0) / (time.monotonic() - t0)
        cpu0, t0 = process_cpu_s(pid), time.monotonic()
        calls = 0
        while time.monotonic() - t0 < args.seconds:
            await asyncio.sleep(max(0.0, t0 + calls / args.rate - time.monotonic()))
            await handle.call.remote(payload)
            calls += 1
        elapsed = time.monotonic() - t0
        busy = (process_cpu_s(pid) - cpu0) / elapsed
        serve.shutdown()
    finally:
        ray.shutdown()
    rate = calls / elapsed
    return {
        "batch": not args.no_batch,
        "payload_bytes": args.payload,
        "replica_env": env,
        "calls_per_s": round(rate, 1),
        "idle_pct_of_core": round(idle * 100, 2),
        "busy_pct_of_core": round(busy * 100, 2),
        "ms_per_call": round((busy - idle) * 1000.0 / rate, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=25.0, help="calls a second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--payload", type=int, default=23000, help="bytes per call (a float64 array)")
    parser.add_argument("--no-batch", action="store_true", help="a plain async method instead of @serve.batch")
    parser.add_argument("--replica-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.rate <= 0 or args.seconds <= 0:
        print("--rate and --seconds must be positive.", file=sys.stderr)
        return 2
    env: dict[str, str] = {}
    for item in args.replica_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"--replica-env wants KEY=VALUE, got {item!r}.", file=sys.stderr)
            return 2
        env[key] = value
    result = asyncio.run(measure(args, env))
    print(json.dumps(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
