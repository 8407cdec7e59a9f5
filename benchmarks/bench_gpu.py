"""GPU path benchmark: each neural model on CPU, CUDA and TensorRT, then the served app on the GPU.

    python benchmarks/bench_gpu.py [--batches 1 2 4 8] [--iters 30] [--json OUT] [--no-served]

Part 1, per model (InSwapper, SCRFD det_10g, ArcFace w600k_r50, and the face enhancers
GFPGAN 1.4, CodeFormer, GPEN-BFR 256/512) and batch size:
latency (p50/p95 ms per call) and throughput (items/s) on ONNX Runtime CPU,
ONNX Runtime CUDA and a TensorRT engine built with ``models compile``'s code,
each where this machine has it (else the reason it is skipped). Real weights
are used when provisioned (``MIRAGE_MODELS_DIR``); otherwise a stand-in with the
official signature is built and every row says ``standin``: those figures
measure the runtime and batching, not the real model's cost.

With CUDA, also the **first run of each batch size** (1..8) on ONNX Runtime CUDA
with ``cudnn_conv_algo_search`` EXHAUSTIVE (ONNX Runtime's default) and HEURISTIC
(what Mirage sets): the stall a live frame would see when Serve's batching first
forms a batch of that size. Each TensorRT engine is built with the accuracy check
``models compile`` runs (fp32 ONNX Runtime on real aligned faces) and its figures.

Part 2, on a GPU only: ``serve run configs/serve_a10g.yaml`` and the load client
``python -m mirage load`` with ``--sessions`` concurrent sessions, reporting the
per-session fps and glass-to-glass latency. Without a GPU it prints why it was
skipped.

``--json`` writes ``{"environment", "models": [{"model", "weights", "runtimes":
{NAME: {"available", "reason", "batches": {B: {"p50_ms", "p95_ms", "items_per_s"}}}}}],
"served": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirage.errors import MirageError  # noqa: E402
from mirage.runtime.accuracy import engine_check  # noqa: E402
from mirage.runtime.onnx import CPU, CUDA, CUDA_PROVIDER_OPTIONS  # noqa: E402
from mirage.runtime.select import Accelerators, probe_accelerators  # noqa: E402
from mirage.runtime.tensorrt import BatchProfile, compile_model, make_engine_key  # noqa: E402
from mirage.runtime.tensorrt_model import TensorRTModel  # noqa: E402

#: Per-sample input shapes of each model (manifest name), as Mirage feeds them.
#: ``shared``: inputs that are one value per call, not per sample (CodeFormer's fidelity w, float64 [1]).
MODELS: dict[str, dict[str, Any]] = {
    "inswapper_128": {"inputs": {"target": (3, 128, 128), "source": (512,)}},
    "scrfd_10g": {"inputs": {"input.1": (3, 640, 640)}},
    "arcface_w600k_r50": {"inputs": {"input.1": (3, 112, 112)}},
    "gfpgan_1.4": {"inputs": {"input": (3, 512, 512)}},
    "codeformer": {"inputs": {"input": (3, 512, 512)}, "shared": {"weight": np.array([0.75], np.float64)}},
    "gpen_bfr_256": {"inputs": {"input": (3, 256, 256)}},
    "gpen_bfr_512": {"inputs": {"input": (3, 512, 512)}},
}
ENHANCERS = ("gfpgan_1.4", "codeformer", "gpen_bfr_256", "gpen_bfr_512")


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _model_file(name: str, workdir: Path) -> tuple[Path, str]:
    """The dynamic-batch ONNX to benchmark and ``"real"`` or ``"standin"``."""
    from mirage.weights.provision import ModelStore, ProvisionConfig

    try:
        path = ModelStore(ProvisionConfig.from_env()).path(name)
    except MirageError:
        path = None
    if path is not None and path.is_file():
        from mirage.cli_compile import compile_source

        return compile_source(name, path), "real"
    sys.path.insert(0, str(ROOT))
    from standins.models import build_arcface_standin, build_enhancer_standin, build_inswapper_standin, build_scrfd_standin

    target = workdir / f"{name}_standin.onnx"
    if name in ENHANCERS:
        build_enhancer_standin(target, name, dynamic=True)
    elif name == "inswapper_128":
        build_inswapper_standin(target, dynamic=True)
    elif name == "scrfd_10g":
        build_scrfd_standin(target, dynamic=True)
    else:
        build_arcface_standin(target)
    return target, "standin"


def _feeds(
    inputs: dict[str, tuple[int, ...]], batch: int, rng: np.random.Generator, shared: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    feeds = {name: rng.random((batch, *shape), dtype=np.float32) for name, shape in inputs.items()}
    return {**feeds, **(shared or {})}


def _time(
    run: Callable[[dict[str, np.ndarray]], Any], feeds: dict[str, np.ndarray], batch: int, warmup: int, iters: int
) -> dict[str, float]:
    for _ in range(warmup):
        run(feeds)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run(feeds)
        times.append((time.perf_counter() - start) * 1000.0)
    mean = float(np.mean(times))
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p95_ms": round(float(np.percentile(times, 95)), 3),
        "items_per_s": round(batch / (mean / 1000.0), 1),
    }


def _ort_runner(
    path: Path, provider: str, threads: int, cuda_options: dict[str, str] | None = None
) -> tuple[Callable[[dict[str, np.ndarray]], Any] | None, str]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    entry: Any = (provider, {"device_id": "0", **CUDA_PROVIDER_OPTIONS, **(cuda_options or {})}) if provider == CUDA else provider
    providers = [entry] if provider == CPU else [entry, CPU]
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    if session.get_providers()[0] != provider:
        return None, f"ONNX Runtime kept {session.get_providers()[0]} instead of {provider}"
    return (lambda feeds: session.run(None, feeds)), ""


def bench_model(name: str, acc: Accelerators, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    path, weights = _model_file(name, workdir)
    inputs = MODELS[name]["inputs"]
    shared = MODELS[name].get("shared")
    rng = np.random.default_rng(0)
    runtimes: dict[str, dict[str, Any]] = {}

    runtimes["cpu"] = {"available": True, "reason": f"ONNX Runtime CPU, {args.cpu_threads} intra-op threads"}
    runner, _ = _ort_runner(path, CPU, args.cpu_threads)
    runtimes["cpu"]["runner"] = runner

    if acc.gpu is None:
        runtimes["cuda"] = {"available": False, "reason": f"no CUDA GPU ({acc.gpu_reason})"}
    elif not acc.ort_cuda:
        runtimes["cuda"] = {"available": False, "reason": "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"}
    else:
        runner, why = _ort_runner(path, CUDA, 1)
        runtimes["cuda"] = {"available": runner is not None, "reason": why or f"ONNX Runtime CUDA on {acc.gpu.name}", "runner": runner}
        if runner is not None:
            runtimes["cuda"]["first_run_ms"] = _first_runs(path, inputs, max(args.batches), rng, shared)

    if acc.gpu is None:
        runtimes["tensorrt"] = {"available": False, "reason": f"no CUDA GPU ({acc.gpu_reason})"}
    elif acc.tensorrt_version is None:
        runtimes["tensorrt"] = {"available": False, "reason": acc.tensorrt_reason}
    else:
        profile = BatchProfile.up_to(max(args.batches))
        key = make_engine_key(
            path, name, acc.gpu, acc.tensorrt_version, args.precision, profile, inputs, cuda_version=acc.cuda_runtime or ""
        )
        try:
            built = compile_model(
                name, path, args.engine_dir or workdir / "engines", key, check=engine_check(name, path, max(args.batches), inputs)
            )
        except MirageError as exc:  # e.g. an engine refused by the accuracy check: that is a result too
            runtimes["tensorrt"] = {"available": False, "reason": str(exc)}
        else:
            model = TensorRTModel(built.path, path, name, key)
            runtimes["tensorrt"] = {
                "available": True,
                "reason": f"TensorRT {acc.tensorrt_version} {args.precision} engine ({built.action} in {built.seconds:.1f} s)",
                "accuracy": built.check or "engine was already present: not re-checked",
                "runner": model.run,
            }

    for runtime in runtimes.values():
        runner = runtime.pop("runner", None)
        if runner is None:
            continue
        runtime["batches"] = {
            str(b): _time(runner, _feeds(inputs, b, rng, shared), b, args.warmup, args.iters) for b in args.batches
        }
    return {"model": name, "weights": weights, "onnx": path.name, "runtimes": runtimes}


def _first_runs(
    path: Path, inputs: dict[str, tuple[int, ...]], max_batch: int, rng: np.random.Generator, shared: dict[str, np.ndarray] | None = None
) -> dict[str, list[float]]:
    """ms of the first run of each batch size 1..max_batch, per cuDNN conv algorithm search, fresh session each."""
    figures: dict[str, list[float]] = {}
    for search in ("EXHAUSTIVE", "HEURISTIC"):
        runner, _ = _ort_runner(path, CUDA, 1, {"cudnn_conv_algo_search": search})
        if runner is None:
            continue
        firsts = []
        for batch in range(1, max_batch + 1):
            feeds = _feeds(inputs, batch, rng, shared)
            started = time.perf_counter()
            runner(feeds)
            firsts.append(round((time.perf_counter() - started) * 1000.0, 1))
        figures[search] = firsts
    return figures


# --------------------------------------------------------------------------- the whole enhance call


def enhancer_bank(names: tuple[str, ...], workdir: Path, standin_size: int | None = None) -> tuple[Any, str]:
    """An EnhancerBank of ``names`` from the provisioned weights when all are there, else stand-ins
    (official signatures, named stand-ins; ``standin_size`` shrinks them); and ``"real"``/``"standin"``."""
    from mirage.enhance import EnhancerBank, EnhancerConfig, available_enhancers
    from mirage.weights.provision import ModelStore, ProvisionConfig

    store = ModelStore(ProvisionConfig.from_env())
    if all(n in available_enhancers(store) for n in names):
        return EnhancerBank.load(EnhancerConfig(names=names), store=store), "real"
    from standins.models import write_enhancer_standins

    folder = workdir / "enhancer-standins"
    manifest = write_enhancer_standins(folder, names=names, dynamic=False, size=standin_size)
    return EnhancerBank.load(EnhancerConfig(names=names, models_dir=str(folder), manifest=str(manifest))), "standin"


def time_enhance_call(bank: Any, name: str, batch: int, crop: int = 128, warmup: int = 2, iters: int = 10) -> dict[str, float]:
    """p50/p95 ms of one ``enhance`` call on ``batch`` crops of ``crop`` px (align, model, warp back), and ms per face.

    What the pipeline's enhance stage pays per batch; for benchmarks/bench_pipeline.py too.
    """
    from mirage.enhance import EnhanceItem
    from mirage.geometry.align import arcface_template

    rng = np.random.default_rng(batch)
    items = [EnhanceItem(rng.integers(0, 256, (crop, crop, 3), dtype=np.uint8), arcface_template(crop)) for _ in range(batch)]
    enhancer = bank.enhancers[name]
    figures = _time(lambda _feeds: enhancer.enhance(items), {}, batch, warmup, iters)
    figures["ms_per_face"] = round(1000.0 / figures["items_per_s"], 3) if figures["items_per_s"] else float("nan")
    return figures


def bench_enhance_calls(names: tuple[str, ...], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The whole enhance() call per enhancer and batch, on the runtime serving would pick here."""
    bank, weights = enhancer_bank(names, workdir)
    rows: dict[str, Any] = {}
    for name in names:
        info = bank.enhancers[name].info
        rows[name] = {
            "weights": weights,
            "runtime": info.runtime,
            "batches": {str(b): time_enhance_call(bank, name, b, iters=args.iters) for b in args.batches},
        }
    return rows


# --------------------------------------------------------------------------- served run


def _wait_health(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=3) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(2)
    return False


def _inswapper_provisioned() -> bool:
    from mirage.weights.provision import ModelStore, ProvisionConfig

    store = ModelStore(ProvisionConfig.from_env())
    return any(store.path(name).is_file() for name in ("inswapper_128", "inswapper_128_fp16"))


def served_run(acc: Accelerators, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """``serve run`` the A10G config on this GPU and drive it with ``python -m mirage load``.

    The swapper asked for is InSwapper when its real weights are provisioned, else the mesh swapper."""
    if acc.gpu is None:
        return {"ran": False, "reason": f"skipped: no CUDA GPU ({acc.gpu_reason})"}
    if not args.served:
        return {"ran": False, "reason": "skipped: --no-served"}
    url = "http://127.0.0.1:8000"
    log = (workdir / "serve.log").open("wb")
    serve = subprocess.Popen(
        [str(Path(sys.executable).with_name("serve")), "run", str(ROOT / "configs" / "serve_a10g.yaml")],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        if not _wait_health(url, args.serve_timeout, serve):
            tail = (workdir / "serve.log").read_text(errors="replace")[-2000:]
            return {"ran": False, "reason": f"the app did not become healthy within {args.serve_timeout:.0f} s", "serve_log_tail": tail}
        import importlib.util

        spec = importlib.util.find_spec("insightface")
        assert spec is not None and spec.submodule_search_locations
        reference = Path(list(spec.submodule_search_locations)[0]) / "data" / "images" / "Tom_Hanks_54745.png"
        out = workdir / "load.json"
        swapper = args.swapper or ("inswapper" if _inswapper_provisioned() else "mesh")
        cmd = [
            sys.executable, "-m", "mirage", "load", "--url", url, "--reference", str(reference),
            "--sessions", str(args.sessions), "--seconds", str(args.seconds), "--swapper", swapper, "--json", str(out),
        ]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.seconds + 180)
        report = json.loads(out.read_text()) if out.is_file() else {}
        sessions = report.get("sessions", [])
        fps = [s["fps"] for s in sessions if s.get("fps") is not None]
        p50 = [s["g2g_p50_ms"] for s in sessions if s.get("g2g_p50_ms") is not None]
        return {
            "ran": True,
            "exit_code": done.returncode,
            "sessions": args.sessions,
            "swapper": swapper,
            "mean_fps": round(float(np.mean(fps)), 1) if fps else None,
            "median_g2g_p50_ms": round(float(np.median(p50)), 1) if p50 else None,
            "report": report,
            "stderr_tail": done.stderr[-1000:],
        }
    finally:
        try:
            os.killpg(serve.pid, signal.SIGINT)
            serve.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(serve.pid, signal.SIGKILL)
        log.close()


# --------------------------------------------------------------------------- main


def _print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'model':<19}{'weights':<9}{'runtime':<10}{'batch':>6}{'p50 ms':>10}{'p95 ms':>10}{'items/s':>11}{'ms/item':>9}")
    for result in results:
        for runtime, data in result["runtimes"].items():
            if not data["available"]:
                print(f"{result['model']:<19}{result['weights']:<9}{runtime:<10}  unavailable: {data['reason']}")
                continue
            for batch, figures in data["batches"].items():
                print(
                    f"{result['model']:<19}{result['weights']:<9}{runtime:<10}{batch:>6}"
                    f"{figures['p50_ms']:>10.2f}{figures['p95_ms']:>10.2f}{figures['items_per_s']:>11.1f}"
                    f"{1000.0 / figures['items_per_s'] if figures['items_per_s'] else float('nan'):>9.2f}"
                )
    for result in results:
        cuda = result["runtimes"].get("cuda", {})
        for search, firsts in cuda.get("first_run_ms", {}).items():
            print(f"{result['model']:<19}first run per batch 1..{len(firsts)} on CUDA, {search}: {firsts} ms")
        trt = result["runtimes"].get("tensorrt", {})
        if trt.get("accuracy"):
            print(f"{result['model']:<19}engine accuracy: {trt['accuracy']}")
    if any(r["weights"] == "standin" for r in results):
        print("standin: random-weight model with the official signature (weights not provisioned);")
        print("         its figures show runtime and batching overhead, not the real model's cost.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cpu-threads", type=int, default=_cpu_count(), help="ONNX Runtime CPU intra-op threads (default: all cores)")
    parser.add_argument("--precision", choices=["fp16", "fp32"], default="fp16")
    parser.add_argument("--engine-dir", type=Path, default=None, help="reuse engines here (default: a temporary folder)")
    parser.add_argument("--served", action=argparse.BooleanOptionalAction, default=True, help="the served multi-session run (GPU only)")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--swapper", default=None, choices=["mesh", "inswapper"], help="default: inswapper when provisioned, else mesh")
    parser.add_argument("--serve-timeout", type=float, default=300.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import onnxruntime as ort

    acc = probe_accelerators()
    environment = {
        "platform": platform.platform(),
        "cpu_cores": _cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        **acc.to_dict(),
    }
    gpu = acc.gpu.name if acc.gpu else f"none ({acc.gpu_reason})"
    print(f"GPU: {gpu}; TensorRT: {acc.tensorrt_version or acc.tensorrt_reason}; ORT {ort.__version__} {acc.ort_providers}")
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        workdir = Path(tmp)
        results = [bench_model(name, acc, args, workdir) for name in args.models]
        _print_table(results)
        enhancers = tuple(n for n in args.models if n in ENHANCERS)
        calls = bench_enhance_calls(enhancers, args, workdir) if enhancers else {}
        for name, row in calls.items():
            for batch, figures in row["batches"].items():
                print(
                    f"enhance() {name:<13}{row['weights']:<9}{row['runtime']:<6} batch {batch:>2} (128 px crops): "
                    f"p50 {figures['p50_ms']:.1f} ms, {figures['ms_per_face']:.2f} ms/face"
                )
        served = served_run(acc, args, workdir)
    if served["ran"]:
        print(
            f"served: {served['sessions']} sessions ({served['swapper']}), mean {served['mean_fps']} fps, "
            f"median g2g p50 {served['median_g2g_p50_ms']} ms"
        )
    else:
        print(f"served multi-session run: {served['reason']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"environment": environment, "models": results, "enhance_calls": calls, "served": served}
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
