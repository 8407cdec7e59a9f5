"""The application builder: typed args (``serve_config.yaml``'s ``args``) → a Serve Application.

``serve run serve_config.yaml`` imports ``serve_app.app:build_app`` and
validates ``args`` into :class:`AppArgs`. ``MIRAGE_*`` environment variables
(read once here, in the process that builds the app) override the matching
settings, as the original product documented them.

Resources: every deployment asks for a fraction of a CPU. Ray reserves one
CPU per replica by default, and on a 2-core machine three replicas would then
never all start (the app stays in STARTING).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from ray.serve import Application

from deployments.detector import DetectorConfig, FaceDetector
from deployments.enhancer import ENHANCER_BATCH_WAIT_S, ENHANCER_MAX_BATCH_SIZE, FaceEnhancer
from deployments.serve_types import as_deployment
from deployments.swapper import FaceSwapper, SwapperConfig
from deployments.voice import VOICE_BATCH_WAIT_S, VOICE_MAX_BATCH_SIZE, VoiceConverter
from mirage.enhance import EnhancerConfig
from mirage.pipeline.models import DETECTOR, ENHANCER, SWAPPER, VOICE
from mirage.pipeline.stages import FACE_STAGES, FaceStage
from mirage.swap.mesh import MeshSwapConfig
from mirage.voice.convert import VoiceCoreConfig
from serve_app.ingress import IngressConfig, MirageIngress
from serve_app.settings import AuthSettings, FallbackPolicy, IceSettings, SessionSettings, Settings

logger = logging.getLogger(__name__)


#: Ray passes call arguments and results up to this size inline (in the RPC) and
#: larger ones through the object store. Its default, 100 KiB, sits just below a
#: 192x192 mesh input (108 KiB) and a face crop of up to 384x384 (432 KiB), and the object
#: store path cost ~4 ms more per call here (8.8 ms vs 4.8 ms p50 for a 108 KiB
#: argument between two replicas on the 2-core box).
INLINE_OBJECT_ENV = "RAY_max_direct_call_object_size"
DEFAULT_INLINE_OBJECT_BYTES = 1024 * 1024

#: Ray Serve runs a replica's user code and its handles' router each on an event loop
#: of its own thread by default; a call then crosses threads four times. On the main
#: loop, a Serve call cost less CPU on both sides here (benchmarks/README.md).
DEFAULT_REPLICA_ENV: dict[str, str] = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeploymentArgs(_Args):
    """Serve options common to every deployment."""

    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.5, gt=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    max_ongoing_requests: int | None = Field(None, ge=1)
    #: Serve's autoscaling_config (replaces num_replicas when set).
    autoscaling_config: dict[str, Any] | None = None
    #: Custom Ray resources each replica needs, e.g. {"mirage_models": 0.01}: the replicas then run
    #: only on nodes started with that resource (``ray start --resources``; docs/cluster.md).
    resources: dict[str, float] = Field(default_factory=dict)
    #: Serve's access log, one line per call ("CALL swap OK 3.1ms"). Off for the model deployments,
    #: which take tens of calls a second per session, each line formatted and flushed by the replica;
    #: on for the ingress (a session is one long request).
    access_log: bool = False

    def serve_options(self, default_max_ongoing: int, env_vars: dict[str, str] | None = None) -> dict[str, Any]:
        actor: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.resources:
            actor["resources"] = dict(self.resources)
        if env_vars:
            actor["runtime_env"] = {"env_vars": dict(env_vars)}
        if self.num_gpus:
            actor["num_gpus"] = self.num_gpus
        opts: dict[str, Any] = {
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests or default_max_ongoing,
            "logging_config": {"enable_access_log": self.access_log},
        }
        if self.autoscaling_config:
            opts["autoscaling_config"] = self.autoscaling_config
        else:
            opts["num_replicas"] = self.num_replicas
        return opts


class BatchedArgs(DeploymentArgs):
    """A deployment with ``@serve.batch`` methods; batching goes to ``user_config``."""

    num_cpus: float = Field(0.4, gt=0.0)
    max_batch_size: int = Field(8, ge=1, le=64)
    batch_wait_timeout_s: float = Field(0.0, ge=0.0, le=1.0)
    #: Run each batch in a worker thread rather than on the replica's event loop.
    compute_in_thread: bool = False

    @model_validator(mode="after")
    def _ongoing_fits_batches(self) -> BatchedArgs:
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be at least max_batch_size "
                f"({self.max_batch_size}), or batches can never fill"
            )
        return self

    def user_config(self) -> dict[str, Any]:
        return {
            "max_batch_size": self.max_batch_size,
            "batch_wait_timeout_s": self.batch_wait_timeout_s,
            "compute_in_thread": self.compute_in_thread,
        }

    def default_max_ongoing(self, batched_methods: int) -> int:
        """Room for one running and one forming batch per batched method."""
        return 2 * self.max_batch_size * batched_methods


class DetectorArgs(BatchedArgs):
    model: Literal["short", "full"] = "short"
    score_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    num_threads: int = Field(1, ge=1)


class SwapperArgs(BatchedArgs):
    inswapper: bool = True
    #: Cap on the mesh swapper's face crop; below it a face is swapped at its own resolution.
    max_crop_size: int = Field(384, ge=64, le=1024)
    reference_detector: Literal["short", "full"] = "short"
    num_threads: int = Field(1, ge=1)


class VoiceArgs(BatchedArgs):
    """The VoiceConverter: every session's 20 ms voice chunks, batched across sessions.

    A DSP batch of 8 chunks takes about 3 ms of one core: a tenth of a CPU is its share,
    so the four replicas still start on a 2-core machine.
    """

    num_cpus: float = Field(0.1, gt=0.0)
    max_batch_size: int = Field(VOICE_MAX_BATCH_SIZE, ge=1, le=64)
    batch_wait_timeout_s: float = Field(VOICE_BATCH_WAIT_S, ge=0.0, le=1.0)
    #: Load RVC voices when ContentVec and generators are provisioned (DSP disguise only when off).
    rvc: bool = True
    num_threads: int = Field(1, ge=1)


class EnhancerArgs(BatchedArgs):
    """The FaceEnhancer: face restorers (GFPGAN, CodeFormer, GPEN) batched across sessions' faces.

    With nothing provisioned (the CPU default) the replica loads nothing; a tenth of a CPU
    keeps all five replicas startable on a 2-core machine. A batch runs in a worker thread by
    default: a 512 px restorer takes longer than a frame period on a CPU.
    """

    num_cpus: float = Field(0.1, gt=0.0)
    max_batch_size: int = Field(ENHANCER_MAX_BATCH_SIZE, ge=1, le=64)
    batch_wait_timeout_s: float = Field(ENHANCER_BATCH_WAIT_S, ge=0.0, le=1.0)
    compute_in_thread: bool = True
    #: Enhancers to load (None: every provisioned one).
    names: list[str] | None = None
    num_threads: int = Field(1, ge=1)
    #: Weights directory and manifest (None: MIRAGE_MODELS_DIR and configs/models.yaml, read in the replica).
    models_dir: str | None = None
    manifest: str | None = None


class IngressArgs(DeploymentArgs):
    """The ingress: its own session cap, and ``max_ongoing_requests`` above it for the other routes."""

    max_sessions_per_replica: int = Field(4, ge=1)
    access_log: bool = True
    graceful_shutdown_timeout_s: float = Field(20.0, ge=0.0)
    #: "sessions": new sessions go to the replica with the most free slots (serve_app.routing);
    #: "default": Serve's power-of-two-choices router.
    router: Literal["sessions", "default"] = "sessions"
    #: How often each replica reports its free slots to the routers (seconds).
    routing_stats_period_s: float = Field(1.0, gt=0.0, le=60.0)
    #: The hint a "server_full" refusal carries (seconds); clients wait at least this long.
    retry_after_s: float = Field(3.0, gt=0.0, le=600.0)
    #: With autoscaling_config: "sessions" scales on open sessions with ``spare_slots`` slots kept
    #: free across the replicas (serve_app.routing.SessionAutoscalingPolicy); "requests": Serve's
    #: own policy on target_ongoing_requests.
    autoscale_on: Literal["sessions", "requests"] = "sessions"
    spare_slots: int = Field(2, ge=0, le=64)
    #: Seconds between returns of freed heap memory to the system (mirage/memtrim.py); 0 = never.
    heap_trim_interval_s: float = Field(30.0, ge=0.0, le=3600.0)

    def routing_options(self, cap: int) -> dict[str, Any]:
        """The ingress's request_router_config and, with autoscaling, its policy (serve_app.routing)."""
        from ray.serve.config import RequestRouterConfig

        from serve_app.routing import AUTOSCALING_POLICY, ROUTER_CLASS

        opts: dict[str, Any] = {}
        if self.router == "sessions":
            router: dict[str, Any] = {
                "request_router_class": ROUTER_CLASS,
                "request_routing_stats_period_s": self.routing_stats_period_s,
                "request_routing_stats_timeout_s": max(5.0, 5 * self.routing_stats_period_s),
            }
            opts["request_router_config"] = RequestRouterConfig(**router)
        if self.autoscaling_config and self.autoscale_on == "sessions" and "policy" not in self.autoscaling_config:
            config = dict(self.autoscaling_config)
            config["policy"] = {
                "policy_function": AUTOSCALING_POLICY,
                "policy_kwargs": {"max_sessions_per_replica": cap, "spare_slots": self.spare_slots},
            }
            opts["autoscaling_config"] = config
        return opts

    @model_validator(mode="after")
    def _headroom(self) -> IngressArgs:
        if self.max_ongoing_requests is not None and self.max_ongoing_requests <= self.max_sessions_per_replica:
            raise ValueError(
                f"ingress max_ongoing_requests ({self.max_ongoing_requests}) must exceed max_sessions_per_replica "
                f"({self.max_sessions_per_replica}): open sessions would otherwise block /health and the page"
            )
        return self

    def default_max_ongoing(self) -> int:
        return self.max_sessions_per_replica + 16


class SessionArgs(_Args):
    """Per-session behaviour (env: MIRAGE_MAX_FACES, MIRAGE_BADGE, MIRAGE_FALLBACK override these)."""

    max_side: int = Field(512, ge=64, le=4096)
    max_output_side: int = Field(1280, ge=64, le=4096)
    max_fps: int = Field(30, ge=1, le=120)
    inflight: int = Field(2, ge=1, le=8)
    deadline_ms: float = Field(250.0, gt=0.0)
    max_faces: int = Field(1, ge=1, le=8)
    badge: bool = True
    fallback: FallbackPolicy = "blur"
    hold_s: float = Field(0.5, ge=0.0)
    idle_timeout_s: float = Field(10.0, gt=0.0)
    detect_every: int = Field(10, ge=1)
    #: On tracked frames (no detection), a face's landmarks and swap in one FaceSwapper call
    #: (one Serve call per frame instead of two; mirage.pipeline.fused). false: FaceDetector.landmarks, then swap.
    fuse_tracking: bool = True
    #: Temporal steadying of each swapped face against the last frame's, moved with the head
    #: (mirage.geometry.steady): the weight of the last frame where the two agree; 0 turns it off.
    steady: float = Field(0.6, ge=0.0, lt=1.0)
    audio_sync: bool = True


class AppArgs(_Args):
    """Everything ``serve_config.yaml`` can say about the app (all optional)."""

    detector: DetectorArgs = DetectorArgs()
    swapper: SwapperArgs = SwapperArgs()
    voice: VoiceArgs = VoiceArgs()
    enhancer: EnhancerArgs = EnhancerArgs()
    ingress: IngressArgs = IngressArgs()
    session: SessionArgs = SessionArgs()
    #: ICE/auth normally come from MIRAGE_* variables; these are defaults they override.
    stun_urls: list[str] = []
    require_api_key: bool = False
    api_key: SecretStr | None = None
    #: Largest call argument/result Ray sends inline between replicas (see INLINE_OBJECT_ENV).
    inline_object_bytes: int = Field(DEFAULT_INLINE_OBJECT_BYTES, ge=0)
    #: Environment of every replica process (Ray / Ray Serve knobs; see DEFAULT_REPLICA_ENV).
    replica_env: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_REPLICA_ENV))

    def replica_env_vars(self) -> dict[str, str]:
        env = dict(self.replica_env)
        if self.inline_object_bytes:
            env[INLINE_OBJECT_ENV] = str(self.inline_object_bytes)
        return env

    def base_settings(self) -> Settings:
        s = self.session
        session = SessionSettings(
            max_sessions_per_replica=self.ingress.max_sessions_per_replica,
            retry_after_s=self.ingress.retry_after_s,
            max_side=s.max_side,
            max_output_side=s.max_output_side,
            max_fps=s.max_fps,
            inflight=s.inflight,
            deadline_ms=s.deadline_ms,
            max_faces=s.max_faces,
            badge=s.badge,
            fallback=s.fallback,
            hold_s=s.hold_s,
            idle_timeout_s=s.idle_timeout_s,
            detect_every=s.detect_every,
            fuse_tracking=s.fuse_tracking,
            steady=s.steady,
            audio_sync=s.audio_sync,
        )
        return Settings(
            ice=IceSettings(stun_urls=tuple(self.stun_urls)),
            auth=AuthSettings(
                api_key=self.api_key.get_secret_value() if self.api_key else None,
                require_api_key=self.require_api_key,
            ),
            session=session,
        )


@dataclass(frozen=True)
class ModelDeployment:
    """One model deployment of the app: the name the pipeline's stages call it by, and how it is bound.

    ``bind`` returns the bound deployment, or None when this configuration does not deploy it.
    """

    name: str
    bind: Callable[[AppArgs, Settings], Any]


def _bind_detector(args: AppArgs, settings: Settings) -> Any:
    d = args.detector
    return as_deployment(FaceDetector).options(
        name=DETECTOR,
        user_config=d.user_config(),
        **d.serve_options(d.default_max_ongoing(2), args.replica_env_vars()),
    ).bind(DetectorConfig(model=d.model, score_threshold=d.score_threshold, num_threads=d.num_threads))


def _bind_swapper(args: AppArgs, settings: Settings) -> Any:
    w = args.swapper
    return as_deployment(FaceSwapper).options(
        name=SWAPPER,
        user_config=w.user_config(),
        **w.serve_options(w.default_max_ongoing(2), args.replica_env_vars()),
    ).bind(
        SwapperConfig(
            mesh=MeshSwapConfig(max_crop=w.max_crop_size),
            inswapper=w.inswapper,
            reference_detector=w.reference_detector,
            num_threads=w.num_threads,
            max_reference_bytes=settings.session.max_reference_bytes,
            max_reference_side=settings.session.max_reference_side,
        )
    )


def _bind_voice(args: AppArgs, settings: Settings) -> Any:
    v = args.voice
    return as_deployment(VoiceConverter).options(
        name=VOICE,
        user_config=v.user_config(),
        **v.serve_options(v.default_max_ongoing(2), args.replica_env_vars()),
    ).bind(VoiceCoreConfig(rvc=v.rvc, num_threads=v.num_threads))


def _bind_enhancer(args: AppArgs, settings: Settings) -> Any:
    e = args.enhancer
    return as_deployment(FaceEnhancer).options(
        name=ENHANCER,
        user_config=e.user_config(),
        **e.serve_options(e.default_max_ongoing(1), args.replica_env_vars()),
    ).bind(
        EnhancerConfig(
            names=tuple(e.names) if e.names is not None else None,
            models_dir=e.models_dir,
            manifest=e.manifest,
            num_threads=e.num_threads,
        )
    )


#: The model deployments the app makes, by name; the ingress gets their handles by these names.
MODEL_DEPLOYMENTS: tuple[ModelDeployment, ...] = (
    ModelDeployment(DETECTOR, _bind_detector),
    ModelDeployment(SWAPPER, _bind_swapper),
    ModelDeployment(VOICE, _bind_voice),
    ModelDeployment(ENHANCER, _bind_enhancer),
)


def build_app(args: AppArgs) -> Application:
    """The Mirage application: ingress → the model deployments of :data:`MODEL_DEPLOYMENTS`
    (FaceDetector, FaceSwapper, VoiceConverter, FaceEnhancer).

    Serve's ``import_path`` builder: exactly one parameter (Ray Serve refuses any other).
    """
    return build_app_with(args)


def build_app_with(
    args: AppArgs,
    *,
    extra_deployments: Sequence[ModelDeployment] = (),
    extra_stages: Sequence[FaceStage] = (),
) -> Application:
    """:func:`build_app`, plus ``extra_stages`` added to the frame pipeline (after
    :data:`~mirage.pipeline.stages.FACE_STAGES`) and ``extra_deployments``, the deployments they call.
    """
    if isinstance(args, dict):  # called directly with a plain dict
        args = AppArgs.model_validate(args)
    settings = Settings.from_env(base=args.base_settings())
    # MIRAGE_MAX_SESSIONS_PER_REPLICA may have changed the cap: keep the ingress headroom consistent.
    ingress_args = args.ingress
    cap = settings.session.max_sessions_per_replica
    if cap != ingress_args.max_sessions_per_replica:
        ingress_args = ingress_args.model_copy(update={"max_sessions_per_replica": cap})
    max_ongoing = ingress_args.max_ongoing_requests or ingress_args.default_max_ongoing()
    if max_ongoing <= cap:
        raise ValueError(f"ingress max_ongoing_requests ({max_ongoing}) must exceed the session cap ({cap})")

    handles: dict[str, Any] = {}
    for spec in (*MODEL_DEPLOYMENTS, *extra_deployments):
        bound = spec.bind(args, settings)
        if bound is not None:
            handles[spec.name] = bound
    d = args.detector
    mesh = MeshSwapConfig(max_crop=args.swapper.max_crop_size)
    stages = (*FACE_STAGES, *extra_stages)

    ingress_opts = ingress_args.serve_options(max_ongoing, args.replica_env_vars())
    ingress_opts.update(ingress_args.routing_options(cap))  # session-aware router, autoscaling on sessions
    ingress = as_deployment(MirageIngress).options(
        name="MirageIngress",
        graceful_shutdown_timeout_s=ingress_args.graceful_shutdown_timeout_s,
        **ingress_opts,
    ).bind(handles, settings, IngressConfig(
        detector_model=d.model, mesh=mesh, stages=stages, heap_trim_interval_s=args.ingress.heap_trim_interval_s
    ))
    logger.info(
        "Mirage app: %d session(s) per ingress replica (max_ongoing_requests %d), detector %s, badge %s, "
        "fallback %s, voice for new sessions %s",
        cap,
        max_ongoing,
        d.model,
        "on" if settings.session.badge else "off",
        settings.session.fallback,
        settings.voice.initial_selection().label,
    )
    return ingress

