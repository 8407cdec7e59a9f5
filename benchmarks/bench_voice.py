"""Benchmark of the voice converters on real speech (espeak-ng), in one process and optionally served.

    python benchmarks/bench_voice.py [--seconds 10] [--json OUT] [--served]

Prints and (``--json``) writes:

- ``per_chunk``: ms per converter call for a 20 ms chunk at batch 1/2/4/8 (p50/p95) and ms per
  session, for the DSP disguise, the RVC path on **stand-in** models (random weights with the
  official I/O; says nothing about the real models' cost, only about our pre/post-processing and
  batching) and Signalsmith Stretch (python-stretch, one C++ object per stream: not batchable);
- ``latency_ms``: algorithmic latency, from the configuration and measured (cross-correlation of a
  formant-neutral pass with its input);
- ``cpu_per_session_pct``: CPU time / audio time for one session (batch 1) and per session at batch 8;
- ``quality``: Praat's median-F0 shift for +4 st and F1/F2 ratios for a 1.15 formant shift;
- with ``--served`` (starts Ray: run it under the heavy-job lock): the VoiceConverter deployment alone,
  1 and 3 sessions paced at real time (each call carries the frames that arrived meanwhile), each 20 ms
  frame's delay from arrival to converted (p50/p95), call round trips, and the batch sizes formed;
- with ``--session`` (starts Ray and the whole app with serve_config.yaml's arguments: heavy-job lock):
  one ``mirage load`` session of the 640x480 clip per configuration (video only; video + audio with the
  voice off; video + audio with the disguise), A/V marks in the audio: the video's fps and
  glass-to-glass p50/p95, the audio's glass-to-glass p50/p95 and the A/V offset at the marks, and the
  CPU of the ingress and VoiceConverter processes per second of session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mirage.voice.config import PRESETS, VoiceParams, parse_voice  # noqa: E402
from mirage.voice.convert import VoiceChunk, VoiceConverterCore, VoiceCoreConfig  # noqa: E402
from mirage.voice.dsp import DspVoiceConverter, convert_whole  # noqa: E402
from standins.speech import SENTENCES, formants_at, median_f0, speak, voiced_times  # noqa: E402

RATE = 48000
CHUNK = 960
BATCHES = (1, 2, 4, 8)


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else 0.0


def speech(seconds: float) -> np.ndarray:
    parts, total = [], 0
    i = 0
    while total < seconds * RATE:
        parts.append(speak(SENTENCES[i % len(SENTENCES)], RATE))
        total += parts[-1].size
        i += 1
    return np.concatenate(parts)[: int(seconds * RATE)]


def bench_core(core: VoiceConverterCore, voice: str, x: np.ndarray, batch: int, calls: int) -> dict[str, float]:
    selection = parse_voice(voice) if not voice.startswith("custom") else parse_voice(None, pitch=-3.0, formant=0.92)
    states: list[bytes | None] = [None] * batch
    times: list[float] = []
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    for k in range(calls):
        chunks = []
        for b in range(batch):
            start = ((k + 37 * b) * CHUNK) % (x.size - CHUNK)
            chunks.append(VoiceChunk(x[start : start + CHUNK], selection, states[b], k))
        t = time.perf_counter()
        results = core.convert_batch(chunks)
        times.append((time.perf_counter() - t) * 1000.0)
        states = [r.state for r in results]
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    audio_s = calls * CHUNK / RATE
    return {
        "batch": batch,
        "p50_ms": pct(times, 50),
        "p95_ms": pct(times, 95),
        "per_session_ms": round(float(np.median(times)) / batch, 3),
        "cpu_pct_of_one_core_per_session": round(100.0 * cpu / (audio_s * batch), 2),
        "wall_s": round(wall, 2),
    }


def bench_signalsmith(x: np.ndarray, calls: int, streams: int) -> dict[str, Any] | None:
    try:
        import python_stretch.Signalsmith as ss
    except ImportError:
        return None
    procs = []
    for _ in range(streams):
        p = ss.Stretch()
        p.configure(1, 1440, 240)  # 30 ms block, 5 ms interval: as close to our latency as it goes
        p.setTransposeSemitones(-3.0)
        procs.append(p)
    times: list[float] = []
    cpu0 = time.process_time()
    for k in range(calls):
        t = time.perf_counter()
        for b, p in enumerate(procs):
            start = ((k + 37 * b) * CHUNK) % (x.size - CHUNK)
            p.process(x[None, start : start + CHUNK].astype(np.float32))
        times.append((time.perf_counter() - t) * 1000.0)
    cpu = time.process_time() - cpu0
    return {
        "batch": streams,
        "p50_ms": pct(times, 50),
        "p95_ms": pct(times, 95),
        "per_session_ms": round(float(np.median(times)) / streams, 3),
        "cpu_pct_of_one_core_per_session": round(100.0 * cpu / (calls * CHUNK / RATE * streams), 2),
    }


def signalsmith_facts(x: np.ndarray) -> dict[str, Any] | None:
    try:
        import python_stretch.Signalsmith as ss
    except ImportError:
        return None
    out: dict[str, Any] = {"licence": "MIT", "formant_control": False, "state_serialisable": False}
    for label, setup in (("default", lambda p: p.preset(1, RATE)), ("cheaper", lambda p: p.preset(1, RATE, True)),
                         ("block_30ms", lambda p: p.configure(1, 1440, 240))):
        p = ss.Stretch()
        setup(p)
        out[f"latency_ms_{label}"] = round(1000.0 * (p.inputLatency() + p.outputLatency()) / RATE, 1)
    for label, setup in (("default", lambda p: p.preset(1, RATE)), ("block_30ms", lambda p: p.configure(1, 1440, 240))):
        p = ss.Stretch()
        setup(p)
        p.setTransposeSemitones(4.0)
        lat = p.inputLatency() + p.outputLatency()
        pieces = [p.process(x[None, i : i + CHUNK].astype(np.float32))[0] for i in range(0, x.size - CHUNK, CHUNK)]  # type: ignore[index]
        y = np.concatenate(pieces)[lat:]
        ref = x[: y.size]
        out[f"f0_shift_for_plus4_st_{label}"] = round(12 * float(np.log2(median_f0(y, RATE) / median_f0(ref, RATE))), 2)
        out[f"loudness_change_db_{label}"] = round(
            10 * float(np.log10(np.mean(y.astype(np.float64) ** 2) / np.mean(ref.astype(np.float64) ** 2))), 2
        )
    return out


def measured_latency_ms() -> float:
    conv = DspVoiceConverter()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(RATE) * 0.1).astype(np.float32)
    y = conv.process(x, conv.new_state(), VoiceParams(0.0, 1.0))
    lags = range(0, 4000)
    corr = [float(np.dot(y[k:], x[: x.size - k])) for k in lags]
    return 1000.0 * int(np.argmax(corr)) / RATE


def quality(x: np.ndarray) -> dict[str, Any]:
    f0 = median_f0(x, RATE)
    up = convert_whole(x, VoiceParams(4.0, 1.0))
    times = voiced_times(x, RATE)
    base = formants_at(x, RATE, times)
    shifted = formants_at(convert_whole(x, VoiceParams(0.0, 1.15)), RATE, times)
    ratios = np.nanmedian(shifted / base, axis=1)
    def db(v: np.ndarray) -> float:
        return 10 * float(np.log10(np.mean(np.asarray(v, np.float64) ** 2)))
    return {
        "f0_in_hz": round(f0, 1),
        "f0_shift_for_plus4_st": round(12 * float(np.log2(median_f0(up, RATE) / f0)), 2),
        "f0_shift_for_formant_1.15": round(12 * float(np.log2(median_f0(convert_whole(x, VoiceParams(0.0, 1.15)), RATE) / f0)), 2),
        "f1_f2_ratio_for_formant_1.15": [round(float(r), 3) for r in ratios],
        "loudness_change_db": {name: round(db(convert_whole(x, p)) - db(x), 2) for name, p in PRESETS.items()},
        # Praat's harmonics-to-noise ratio (cross-correlation, 50 Hz floor): how clean the voice stays.
        "hnr_db": {"input": hnr(x), **{name: hnr(convert_whole(x, p)) for name, p in PRESETS.items()}},
    }


def hnr(samples: np.ndarray) -> float:
    import parselmouth

    h = parselmouth.Sound(np.asarray(samples, np.float64), RATE).to_harmonicity_cc(minimum_pitch=50.0)
    return round(float(np.median(h.values[h.values > -100])), 2)


def rvc_core(folder: Path) -> VoiceConverterCore:
    from mirage.voice.rvc import load_rvc_converter
    from standins.voice import build_contentvec_standin, build_rvc_generator_standin

    cv = build_contentvec_standin(folder / "vec-768-layer-12_standin.onnx")
    build_rvc_generator_standin(folder / "voice" / "bench_standin.onnx")
    core = VoiceConverterCore(VoiceCoreConfig(rvc=False))
    core._rvc = load_rvc_converter(rvc_dir=folder / "voice", contentvec_path=cv)  # type: ignore[attr-defined]
    return core


async def _served_session(handle: Any, x: np.ndarray, voice: str, chunks: int, offset: int) -> dict[str, list[float]]:
    """Frames "arrive" every 20 ms; each call carries every frame that arrived while the previous one was
    in flight (one call in flight per session, its state chained), so a slow round trip grows the next
    call instead of queueing. Returns each frame's delay (arrival to converted) and frames per call."""
    from mirage.voice.stream import VoiceStream

    stream = VoiceStream(parse_voice(voice))
    delays: list[float] = []
    per_call: list[float] = []
    rtts: list[float] = []
    t0 = time.perf_counter() + 0.02
    sent = 0
    while sent < chunks:
        now = time.perf_counter()
        arrived = min(chunks, int((now - t0) / 0.02) + 1) if now >= t0 else 0
        if arrived <= sent:
            await asyncio.sleep(t0 + sent * 0.02 - now)
            continue
        frames = range(sent, arrived)
        samples = np.concatenate([x[((k + offset) * CHUNK) % (x.size - CHUNK) :][:CHUNK] for k in frames])
        chunk = stream.request(samples)
        assert chunk is not None
        t = time.perf_counter()
        try:
            result = await asyncio.wait_for(handle.convert.remote(chunk), timeout=1.0)
            stream.accept(chunk, result)
        except TimeoutError:
            stream.fallback(chunk)
        done = time.perf_counter()
        rtts.append((done - t) * 1000.0)
        per_call.append(float(len(frames)))
        delays += [(done - (t0 + k * 0.02)) * 1000.0 for k in frames]
        sent = arrived
    return {"delays": delays[5:], "per_call": per_call, "rtts": rtts[3:], "fallbacks": [float(stream.counters.fallbacks)]}


def served(x: np.ndarray, seconds: float) -> dict[str, Any]:
    import ray
    from ray import serve

    from benchmarks.bench_served import free_port
    from deployments.voice import VoiceConverter

    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(REPO), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024 * 1024)
    out: dict[str, Any] = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        handle = serve.run(VoiceConverter.bind(  # type: ignore[attr-defined]
            VoiceCoreConfig(rvc=False)), name="bench-voice", route_prefix=None)
        chunks = int(seconds * RATE / CHUNK)
        for sessions in (1, 3):
            async def run(sessions: int = sessions) -> list[dict[str, list[float]]]:
                return await asyncio.gather(*[_served_session(handle, x, "disguise", chunks, 101 * i) for i in range(sessions)])
            before = handle.stats.remote().result()["methods"].get("convert", {"batches": 0, "items": 0})
            sessions_out = asyncio.run(run())
            after = handle.stats.remote().result()["methods"]["convert"]
            batches = after["batches"] - before["batches"]
            items = after["items"] - before["items"]
            delays = [d for r in sessions_out for d in r["delays"]]
            rtts = [d for r in sessions_out for d in r["rtts"]]
            out[f"{sessions}_sessions"] = {
                "frame_delay_p50_ms": pct(delays, 50),
                "frame_delay_p95_ms": pct(delays, 95),
                "round_trip_p50_ms": pct(rtts, 50),
                "round_trip_p95_ms": pct(rtts, 95),
                "frames_per_call_mean": round(float(np.mean([f for r in sessions_out for f in r["per_call"]])), 2),
                "mean_batch_size": round(items / batches, 2) if batches else 0.0,
                "max_batch_size": after["max_batch_size"],
                "fallbacks": int(sum(r["fallbacks"][0] for r in sessions_out)),
            }
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def _ray_cpu_by_role() -> dict[str, float]:
    """CPU seconds of this machine's Ray processes, by replica kind (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    roles = ("MirageIngress", "VoiceConverter", "FaceDetector", "FaceSwapper")
    out = dict.fromkeys((*roles, "other"), 0.0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            if b"ray" not in cmdline or b"bench_voice" in cmdline:
                continue
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            role = next((r for r in roles if r.encode() in cmdline), "other")
            out[role] += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return out


def served_session(seconds: float, order: list[str] | None = None) -> dict[str, Any]:
    """The whole app served; one load session per configuration (video only / voice off / disguise)."""
    import urllib.request

    import ray
    import yaml
    from ray import serve

    from benchmarks.bench_served import deployment_calls, free_port
    from mirage.client.load import LoadPlan, run_plan
    from mirage.client.session import SessionOptions
    from mirage.client.sources import astronaut_source
    from serve_app.app import AppArgs, build_app
    from standins.faces import tom_hanks_path

    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(REPO), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]))
    os.environ.setdefault("MIRAGE_ICE_HOST_ADDRESSES", "127.0.0.1")
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []  # loopback only
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out: dict[str, Any] = {}
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(AppArgs(**config["applications"][0]["args"])), name="mirage", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:  # noqa: S310 - loopback
                    if json.loads(response.read()).get("status") == "ok":
                        break
            except OSError:
                pass
            time.sleep(1)
        source = astronaut_source(640, 480, 30.0)
        runs = {"video_only": (False, None), "voice_off": (True, {"voice": "off"}), "disguise": (True, {"voice": "disguise"})}
        for name in order or list(runs):
            audio, voice = runs[name]
            plan = LoadPlan(url=url, reference=tom_hanks_path().read_bytes(), source=source, sessions=1, seconds=seconds,
                            warmup=4.0, options=SessionOptions(), audio=audio, voice_options=voice, av_marks=audio)
            before, calls_before = _ray_cpu_by_role(), deployment_calls(url)
            t0 = time.monotonic()
            report = asyncio.run(run_plan(plan))
            wall = time.monotonic() - t0
            after, calls_after = _ray_cpu_by_role(), deployment_calls(url)
            # The VoiceConverter's calls (one per chunk the pump sends, each carrying one or more 20 ms frames).
            voice_calls = {
                method: round((items - calls_before.get("voice", {}).get(method, (0, 0))[0]) / wall, 1)
                for method, (items, _) in calls_after.get("voice", {}).items()
            }
            (record,) = report["sessions"]
            out[name] = {
                "fps": record["fps"], "video_g2g_p50_ms": record["g2g_p50_ms"], "video_g2g_p95_ms": record["g2g_p95_ms"],
                "dropped": record["dropped"], "error": record["error"],
                "audio_g2g_ms": record.get("audio_g2g_ms"), "av_offset_ms": record.get("av_offset_ms"),
                "audio_chunks": record.get("audio_chunks"),
                "cpu_pct_of_one_core": {k: round(100.0 * (after[k] - before[k]) / wall, 1) for k in after},
                "voice_calls_per_s": voice_calls,
            }
            print(name, out[name], flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="speech per measurement")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--served", action="store_true", help="also measure the deployment on a real local Ray (heavy)")
    parser.add_argument("--session", action="store_true",
                        help="only: the whole app served, one load session per configuration (heavy)")
    parser.add_argument("--order", default="video_only,voice_off,disguise",
                        help="with --session: the configurations, in this order (repeats allowed)")
    args = parser.parse_args()
    if args.session:
        result = {"session": served_session(args.seconds, args.order.split(",")), "cpus": os.cpu_count()}
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return 0
    x = speech(max(args.seconds, 5.0))
    calls = int(args.seconds * RATE / CHUNK)
    report: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "chunk_ms": 20}
    dsp = VoiceConverterCore(VoiceCoreConfig(rvc=False))
    report["per_chunk"] = {"dsp": [bench_core(dsp, "disguise", x, b, calls) for b in BATCHES]}
    with tempfile.TemporaryDirectory() as folder:
        rvc = rvc_core(Path(folder))
        report["per_chunk"]["rvc_standin"] = [bench_core(rvc, "rvc:bench_standin", x, b, max(20, calls // 4)) for b in BATCHES]
        report["rvc_note"] = "RVC on stand-in ContentVec/generator (random weights, official I/O) + the real SwiftF0, CPU"
    sig = [r for r in (bench_signalsmith(x, calls, b) for b in BATCHES) if r]
    if sig:
        report["per_chunk"]["signalsmith_block30ms"] = sig
    report["latency_ms"] = {
        "dsp_config": DspVoiceConverter().latency_ms,
        "dsp_measured": round(measured_latency_ms(), 2),
        "rvc_config": __import__("mirage.voice.rvc", fromlist=["RvcConfig"]).RvcConfig().latency_ms,
    }
    report["candidates"] = {"signalsmith": signalsmith_facts(x[: 5 * RATE])}
    report["quality"] = quality(x[: 8 * RATE])
    report["cpu_per_session_pct"] = {
        "dsp_batch1": report["per_chunk"]["dsp"][0]["cpu_pct_of_one_core_per_session"],
        "dsp_batch8": report["per_chunk"]["dsp"][-1]["cpu_pct_of_one_core_per_session"],
    }
    if args.served:
        report["served"] = served(x, args.seconds)

    print(f"voice converters, 20 ms chunks, {report['cpus']} CPUs")
    print(f"{'converter':<24}{'batch':>6}{'p50 ms':>9}{'p95 ms':>9}{'ms/session':>12}{'CPU %/session':>15}")
    for name, rows in report["per_chunk"].items():
        for row in rows:
            print(f"{name:<24}{row['batch']:>6}{row['p50_ms']:>9.3f}{row['p95_ms']:>9.3f}{row['per_session_ms']:>12.3f}"
                  f"{row['cpu_pct_of_one_core_per_session']:>15.2f}")
    print("latency ms:", report["latency_ms"])
    print("candidates:", report["candidates"])
    print("quality:", report["quality"])
    if "served" in report:
        print("served:", report["served"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
