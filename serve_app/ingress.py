"""The FastAPI ingress deployment: sessions over WebSocket + WebRTC, JSON endpoints, the web page.

Routes (README lists them for users):
  WS  /ws/session                      one session (offer → answer → stats/events until closed)
  GET /health, /metrics, /metrics/pacing, /metrics/stage_histogram, /metrics/deployments,
      /gpu, /debug/models, /config, /webrtc/ping
  GET /webrtc/debug_state              sessions, states, loop exceptions (API key when required)
  POST /webrtc/sessions/{id}/control   a control message for a session (API key when required)
  DELETE /webrtc/sessions/{id}         end a session (API key when required)
  POST /token                          a short-lived session token (the API key itself required)
  GET /                                the static web client (serve_app/static/)
"""

# No ``from __future__ import annotations`` here: Serve's class-based view rewrites the route
# signatures, and FastAPI must see real classes (Request, WebSocket), not strings it cannot resolve.

import asyncio
import logging
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from ray import serve

from deployments.logs import enable_info_logs
from mirage.memtrim import HeapTrimmer
from mirage.pipeline.models import DETECTOR, ENHANCER, SWAPPER, VOICE
from mirage.pipeline.prepare import FramePreparer
from mirage.pipeline.stages import FACE_STAGES, FaceStage
from mirage.swap.mesh import MeshSwapConfig
from mirage.weights.provision import ProvisionConfig
from serve_app.auth import (
    MISSING_KEY_MESSAGE,
    TOKEN_PREFIX,
    WRONG_KEY_MESSAGE,
    is_the_key,
    key_from_headers,
    key_matches,
    mint_token,
    rejection_message,
)
from serve_app.disclosure import SYNTHETIC_NOTICE, allowed_swappers, swapper_licences
from serve_app.drain import DrainWatcher
from serve_app.ice import ice_policy, ice_server_dicts
from serve_app.metrics import RayFrameMetrics, RollingStats
from serve_app.orchestrator import ServeModelClient
from serve_app.routing import REFUSED_METRIC, SESSIONS_METRIC, RecentCount, slot_stats
from serve_app.scaling import ScalingWatcher
from serve_app.sessions import (
    SHUTDOWN_REASON,
    SessionContext,
    SessionRegistry,
    open_peer_connections,
    serve_session,
)
from serve_app.settings import FALLBACK_POLICIES, Settings
from serve_app.turn import new_client_id, with_turn_credential

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: How long ``__del__`` waits for sessions to close after asking them to end.
SHUTDOWN_WAIT_S = 5.0

app = FastAPI(title="Mirage", description="Real-time face swap over WebRTC on Ray Serve.")


@dataclass(frozen=True)
class IngressConfig:
    """Construction-time options of the ingress (besides :class:`Settings`)."""

    detector_model: str = "short"
    mesh: MeshSwapConfig = field(default_factory=MeshSwapConfig)
    opencv_threads: int = 1
    #: Seconds between returns of freed heap memory to the system (mirage/memtrim.py); 0 = never.
    heap_trim_interval_s: float = 30.0
    #: The frame pipeline's face stages (mirage.pipeline.stages.FACE_STAGES, plus any added).
    stages: tuple[FaceStage, ...] = FACE_STAGES


#: Short names of the model deployments in /metrics/deployments.
DEPLOYMENT_KEYS = {DETECTOR: "detector", SWAPPER: "swapper", VOICE: "voice", "FaceEnhancer": "enhancer"}


def gpu_report(timeout_s: float = 5.0) -> dict[str, Any]:
    """GPU presence and memory from nvidia-smi, or a clear "no GPU"."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"available": False, "message": "No GPU: nvidia-smi is not installed; Mirage runs on the CPU."}
    query = "name,memory.total,memory.used,memory.free,utilization.gpu"
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        return {"available": False, "message": f"No usable GPU: nvidia-smi failed ({type(exc).__name__})."}
    gpus = []
    for index, line in enumerate(row for row in out.splitlines() if row.strip()):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue

        def num(value: str) -> float | None:
            try:
                return float(value)
            except ValueError:
                return None

        gpus.append(
            {
                "index": index,
                "name": parts[0],
                "memory_total_mb": num(parts[1]),
                "memory_used_mb": num(parts[2]),
                "memory_free_mb": num(parts[3]),
                "utilization_pct": num(parts[4]),
            }
        )
    if not gpus:
        return {"available": False, "message": "No GPU: nvidia-smi lists none."}
    return {"available": True, "count": len(gpus), "gpus": gpus}


def process_report() -> dict[str, Any]:
    """This replica process's resident memory, open file descriptors and threads (for leak checks)."""
    import os
    import threading

    rss_mb = 0.0
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss_mb = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = -1
    return {"pid": os.getpid(), "rss_mb": round(rss_mb, 1), "fds": fds, "threads": threading.active_count()}


def models_report(swappers: list[str], provision: ProvisionConfig) -> dict[str, Any]:
    """``/debug/models``: the model store's view (presence, size, licence, sentinel, storage)."""
    from mirage.weights.manifest import load_manifest
    from mirage.weights.provision import ModelStore

    store = ModelStore(provision, load_manifest())
    snapshot = store.debug_snapshot()
    snapshot["pipeline"] = {"swappers": swappers}
    try:
        import onnxruntime

        snapshot["pipeline"]["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        snapshot["pipeline"]["onnxruntime_providers"] = []
    return snapshot


def static_response(path: str, root: Path = STATIC_DIR) -> Response:
    """A file of the web client, ``index.html`` for directories, 404 for anything outside ``root``."""
    if not path or path.endswith("/"):
        path = f"{path}index.html"
    base = root.resolve()
    target = (base / path).resolve()
    if not target.is_relative_to(base):
        return JSONResponse({"detail": "Not found."}, status_code=404)
    if target.is_file():
        return FileResponse(target)
    if path == "index.html":
        return HTMLResponse(
            "<!doctype html><title>Mirage</title><p>Mirage is running, but the web client is not installed "
            "(serve_app/static/index.html is missing). JSON endpoints: /health, /metrics, /config.</p>"
        )
    return JSONResponse({"detail": "Not found."}, status_code=404)


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=32,
    graceful_shutdown_timeout_s=20.0,
    graceful_shutdown_wait_loop_s=1.0,
)
@serve.ingress(app)
class MirageIngress:
    def __init__(self, handles: dict[str, Any], settings: Settings, config: IngressConfig | None = None) -> None:
        """``handles``: the model deployments' handles by deployment name (serve_app.app.MODEL_DEPLOYMENTS)."""
        enable_info_logs()
        self.config = config or IngressConfig()
        self.settings = settings
        cv2.setNumThreads(max(1, self.config.opencv_threads))
        self.stats = RollingStats(target_fps=settings.session.max_fps)
        self.sink = RayFrameMetrics()
        ice_policy(settings.ice)  # a bad MIRAGE_ICE_* value stops the replica here, with its sentence
        self.registry = SessionRegistry(settings.session.max_sessions_per_replica, settings.session.max_pending_sockets)
        self._handles = dict(handles)
        self.models = ServeModelClient(self._handles)
        #: Where models live, read once here (the replica's edge); /debug/models shows that store.
        self._provision = ProvisionConfig.from_env()
        #: The VoiceConverter's handle (None: sessions' voices are disguised here, in the ingress).
        self._voice = self._handles.get(VOICE)
        voice = self._voice
        self.ctx = SessionContext(
            voice=voice,
            settings=settings,
            models=self.models,
            preparer=FramePreparer(self.config.detector_model, self.config.mesh),
            stages=self.config.stages,
            stats=self.stats,
            sink=self.sink,
        )
        self.loop_exceptions = 0
        self._hooked_loop: asyncio.AbstractEventLoop | None = None
        self.drain = DrainWatcher(
            active=lambda: self.registry.count > 0,
            on_drain=lambda: self.registry.end_all(SHUTDOWN_REASON),
        )
        self.trimmer = HeapTrimmer(self.config.heap_trim_interval_s)
        self._swappers: list[str] | None = None
        try:
            self._hook_loop()
        except RuntimeError:
            pass  # no running loop yet: hooked at the first request
        logger.info(
            "Mirage ingress ready: %d sessions per replica, ICE servers: %d, auth %s",
            self.registry.capacity,
            len(ice_server_dicts(settings.ice)),
            "required" if settings.auth.require_api_key else "off",
        )

    # --- housekeeping ---------------------------------------------------------------
    def _hook_loop(self) -> None:
        """Count (and log) every exception that reaches the event loop unhandled."""
        loop = asyncio.get_running_loop()
        if self._hooked_loop is loop:
            return
        previous = loop.get_exception_handler()

        def handler(the_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            self.loop_exceptions += 1
            exc = context.get("exception")
            logger.error(
                "unhandled event-loop exception #%d: %s (%s)",
                self.loop_exceptions,
                context.get("message", ""),
                type(exc).__name__ if exc is not None else "no exception object",
            )
            if previous is not None:
                previous(the_loop, context)
            else:
                the_loop.default_exception_handler(context)

        loop.set_exception_handler(handler)
        # aiortc encodes and decodes in the loop's default executor, and our frame work runs
        # there too (asyncio.to_thread): size it for the session cap so nothing queues behind it.
        workers = 8 + 4 * self.registry.capacity
        loop.set_default_executor(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mirage"))
        self._hooked_loop = loop
        self.drain.start()
        if getattr(self, "scaling", None) is None:
            # Each poll also sets the open-sessions gauge again (Ray drops a gauge not set for ~25 s).
            self.scaling = ScalingWatcher(on_tick=self._sessions_changed)
        self.scaling.start()
        self.trimmer.start()

    def _require_key(self, request: Request) -> None:
        refusal = rejection_message(self.settings.auth, key_from_headers(request.headers))
        if refusal is not None:
            raise HTTPException(status_code=401, detail=refusal)

    async def _available_swappers(self) -> list[str]:
        if self._swappers is None:
            try:
                self._swappers = list(await asyncio.wait_for(self.models.call(SWAPPER, "available_swappers"), 10.0))
            except Exception as exc:  # noqa: BLE001
                logger.warning("could not ask the swapper for its swappers (%s)", type(exc).__name__)
                return ["mesh"]
        return self._swappers

    def _sessions_changed(self) -> None:
        self.sink.sessions(self.registry.count)

    # --- routing and autoscaling (serve_app.routing) -----------------------------------
    def record_routing_stats(self) -> dict[str, Any]:
        """This replica's session slots for the ingress router (Serve polls it, then tells every proxy)."""
        r = self.registry
        return slot_stats(r.capacity, r.count, r.pending, r.accepting and not self.drain.drained, r.total_refused)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Sessions and recent refusals for the ingress's autoscaling policy (numbers only)."""
        r = self.registry
        if getattr(self, "_refused_recent", None) is None:
            self._refused_recent = RecentCount()
        return {SESSIONS_METRIC: float(r.count), REFUSED_METRIC: float(self._refused_recent.observe(r.total_refused))}

    def routing_report(self) -> dict[str, Any]:
        """The ``routing`` block of ``/metrics``: this replica's slots, admissions and refusals."""
        report = self.record_routing_stats()
        report.pop("at", None)
        try:
            report["replica"] = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside Serve (tests)
            report["replica"] = None
        report["admitted_total"] = self.registry.total_started
        report["refused_pending_total"] = self.registry.total_pending_refused
        return report

    async def __del__(self) -> None:
        """Graceful shutdown: end every session cleanly (close 1001, peer connection closed)."""
        await self.drain.stop()
        if getattr(self, "scaling", None) is not None:
            await self.scaling.stop()
        await self.trimmer.stop()
        self.registry.end_all(SHUTDOWN_REASON)
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_WAIT_S
        while self.registry.count and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)

    # --- sessions ---------------------------------------------------------------------
    @app.websocket("/ws/session")
    async def ws_session(self, websocket: WebSocket) -> None:
        self._hook_loop()
        await serve_session(
            websocket,
            self.ctx,
            self.registry,
            key_from_headers(websocket.headers),
            on_change=self._sessions_changed,
        )

    @app.post("/webrtc/sessions/{session_id}/control")
    async def session_control(self, session_id: str, request: Request) -> JSONResponse:
        self._hook_loop()
        self._require_key(request)
        session = self.registry.get(session_id)
        if session is None:
            raise HTTPException(status_code=404, detail="No such session on this replica.")
        body = await request.body()
        reply = await session.handle_control(body)
        status = 200 if reply.get("type") == "ack" else 400
        return JSONResponse(reply, status_code=status)

    @app.post("/token")
    async def session_token(self, request: Request) -> dict[str, Any]:
        """A token for a browser, valid MIRAGE_TOKEN_TTL seconds; only the key itself can ask (not a token)."""
        auth = self.settings.auth
        if not auth.require_api_key:
            raise HTTPException(status_code=400, detail="This server does not require an API key, so it issues no tokens.")
        provided = key_from_headers(request.headers)
        if not is_the_key(auth, provided):
            if provided and provided.startswith(TOKEN_PREFIX):
                raise HTTPException(status_code=401, detail="A token cannot ask for tokens: send the API key itself.")
            raise HTTPException(status_code=401, detail=MISSING_KEY_MESSAGE if not provided else WRONG_KEY_MESSAGE)
        token = mint_token(auth)
        return {"token": token.token, "expires_at": token.expires_at, "ttl_s": auth.token_ttl_s}

    @app.delete("/webrtc/sessions/{session_id}")
    async def end_session(self, session_id: str, request: Request) -> dict[str, Any]:
        self._require_key(request)
        session = self.registry.get(session_id)
        if session is None:
            raise HTTPException(status_code=404, detail="No such session on this replica.")
        session.end("ended by an operator")
        return {"ok": True, "session_id": session_id}

    # --- JSON endpoints -----------------------------------------------------------------
    @app.get("/health")
    async def health(self) -> dict[str, Any]:
        self._hook_loop()
        return {
            "status": "ok",
            "sessions": self.registry.count,
            "capacity": self.registry.capacity,
            "accepting": self.registry.accepting,
        }

    @app.get("/metrics")
    async def metrics(self) -> dict[str, Any]:
        body = self.stats.snapshot(sessions=self.registry.count)
        body["routing"] = self.routing_report()
        watcher = getattr(self, "scaling", None)
        body["scaling"] = watcher.log.report() if watcher is not None else None
        body["voice"] = await self._voice_metrics()
        await self.ctx.enhance.available(self.models)  # codeformer_loaded needs the list once
        live = [s.controls.enhancer for s in self.registry.sessions()]
        body.update(self.ctx.enhance.metrics(live, self.settings.session.codeformer_fidelity))
        return body

    async def _voice_metrics(self) -> dict[str, Any]:
        """This replica's voice counters (chunks, fallbacks, timeouts, delay) and the converter's batches."""
        live = [v for v in (s.voice_stats() for s in self.registry.sessions()) if v is not None]
        out = self.ctx.voice_totals.snapshot(live)
        out["calls"] = self.ctx.voice_calls()
        if self._voice is None:
            out["converter"] = {"where": "ingress (no VoiceConverter deployment)"}
            return out
        try:
            stats = await asyncio.wait_for(self._voice.stats.remote(), 5.0)
        except Exception as exc:  # noqa: BLE001 - the session counters still answer
            out["converter"] = {"error": f"unavailable ({type(exc).__name__})"}
            return out
        convert = stats.get("methods", {}).get("convert", {})
        out["converter"] = {
            "batches": convert.get("batches", 0),
            "items": convert.get("items", 0),
            "errors": convert.get("errors", 0),
            "max_batch_size": convert.get("max_batch_size", 0),
            "mean_batch_size": convert.get("mean_batch_size", 0.0),
            "mean_batch_ms": convert.get("mean_batch_ms", 0.0),
            "batch_size_histogram": convert.get("batch_size_histogram", {}),
            "chunks": stats.get("chunks", {}),
            "chunk_errors": stats.get("errors", {}),
            "dsp_latency_ms": stats.get("dsp_latency_ms"),
        }
        return out

    @app.get("/metrics/pacing")
    async def pacing(self) -> dict[str, Any]:
        return self.stats.pacing()

    @app.get("/metrics/stage_histogram")
    async def stage_histogram(self) -> dict[str, Any]:
        return self.stats.stage_histogram()

    @app.get("/metrics/deployments")
    async def deployment_stats(self) -> dict[str, Any]:
        """Batch statistics of the model deployments (the replica each call reaches)."""
        out: dict[str, Any] = {}
        for deployment, handle in self._handles.items():
            name = DEPLOYMENT_KEYS.get(deployment, deployment)
            try:
                out[name] = await asyncio.wait_for(handle.stats.remote(), 10.0)
            except Exception as exc:  # noqa: BLE001
                out[name] = {"error": f"unavailable ({type(exc).__name__})"}
        return out

    @app.get("/gpu")
    async def gpu(self) -> dict[str, Any]:
        return await asyncio.to_thread(gpu_report)

    @app.get("/debug/models")
    async def debug_models(self) -> JSONResponse:
        swappers = await self._available_swappers()
        try:
            body = await asyncio.to_thread(models_report, swappers, self._provision)
            body["enhancers"] = await self._enhancer_models()
        except Exception as exc:  # noqa: BLE001
            return JSONResponse({"error": f"model store unavailable: {exc}", "pipeline": {"swappers": swappers}}, 500)
        return JSONResponse(body)

    async def _enhancer_models(self) -> dict[str, Any]:
        """Each enhancer the FaceEnhancer knows: available, licence, runtime (and why), or why not."""
        if not self.models.has(ENHANCER):
            return {}
        try:
            return dict(await asyncio.wait_for(self.models.call(ENHANCER, "models"), 10.0))
        except Exception as exc:  # noqa: BLE001
            return {"error": f"unavailable ({type(exc).__name__})"}

    @app.get("/config")
    async def client_config(self, request: Request) -> dict[str, Any]:
        s = self.settings
        # TURN credentials only for a caller that proved the key or a token (serve_app.turn).
        provided = key_from_headers(request.headers)
        authed = s.auth.require_api_key and provided is not None and key_matches(s.auth, provided)
        swappers = allowed_swappers(await self._available_swappers(), s.session.allow_noncommercial)
        ice_servers = with_turn_credential(ice_server_dicts(s.ice), s.ice, new_client_id() if authed else None)
        return {
            "ice_servers": ice_servers,
            "turn_credentials": any("credential" in entry for entry in ice_servers),
            "synthetic_media": True,
            "synthetic_notice": SYNTHETIC_NOTICE,
            "allow_noncommercial": s.session.allow_noncommercial,
            "licences": {name: swapper_licences(name) for name in swappers},
            "force_relay": s.ice.force_relay,
            "prefer_h264": s.ice.prefer_h264,
            "max_fps": s.session.max_fps,
            "max_side": s.session.max_side,
            "swappers": swappers,
            "fallbacks": list(FALLBACK_POLICIES),
            "default_fallback": s.session.fallback,
            "max_faces": s.session.max_faces,
            "max_faces_limit": s.session.max_faces_limit,
            "badge": s.session.badge,
            "require_api_key": s.auth.require_api_key,
            "max_reference_bytes": s.session.max_reference_bytes,
            "max_reference_side": s.session.max_reference_side,
            "voices": await self.ctx.available_voices(),
            "enhancers": await self.ctx.enhance.available(self.models),
            "default_fidelity": s.session.codeformer_fidelity,
            "default_voice": s.voice.initial_selection().to_dict(),
        }

    @app.get("/webrtc/ping")
    async def webrtc_ping(self) -> dict[str, Any]:
        ice = self.settings.ice
        return {
            "ok": True,
            "accepting": self.registry.accepting and self.registry.count < self.registry.capacity,
            "sessions": self.registry.count,
            "capacity": self.registry.capacity,
            "stun_configured": bool(ice.stun_urls),
            "turn_configured": bool(ice.turn_urls),
            "force_relay": ice.force_relay,
        }

    @app.get("/webrtc/debug_state")
    async def debug_state(self, request: Request) -> dict[str, Any]:
        self._hook_loop()
        self._require_key(request)
        return {
            "sessions": self.registry.describe(),
            "session_count": self.registry.count,
            "capacity": self.registry.capacity,
            "accepting": self.registry.accepting,
            "total_started": self.registry.total_started,
            "total_refused": self.registry.total_refused,
            "pending_sockets": self.registry.pending,
            "breakers": self.ctx.breakers.describe(),
            "heap_trims": self.trimmer.stats.trims,
            "heap_trim_last_ms": round(self.trimmer.stats.last_ms, 2),
            "total_pending_refused": self.registry.total_pending_refused,
            "open_peer_connections": open_peer_connections(),
            "loop_exceptions": self.loop_exceptions,
            "loop_tasks": len(asyncio.all_tasks()),
            "process": process_report(),
        }

    # Last route: everything else is the static web client (files owned by the web client's authors).
    @app.get("/{path:path}", include_in_schema=False)
    async def static_files(self, path: str) -> Response:
        return static_response(path)
