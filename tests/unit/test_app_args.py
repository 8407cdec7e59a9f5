"""serve_config.yaml and the typed app builder: fractional CPUs, batch/ongoing consistency, session cap headroom."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mirage.errors import ConfigError
from serve_app.app import AppArgs, build_app

CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"


def _deployments(app):  # type: ignore[no-untyped-def]
    ingress = app._bound_deployment
    handles = ingress.init_args[0]  # the model deployments by name (serve_app.app.MODEL_DEPLOYMENTS)
    assert all(name == a._bound_deployment.name for name, a in handles.items())
    return {"MirageIngress": ingress, **{a._bound_deployment.name: a._bound_deployment for a in handles.values()}}


def test_serve_config_builds_with_fractional_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MIRAGE_MAX_SESSIONS_PER_REPLICA", "MIRAGE_REQUIRE_API_KEY", "MIRAGE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    config = yaml.safe_load(CONFIG.read_text())
    (app_cfg,) = config["applications"]
    assert app_cfg["import_path"] == "serve_app.app:build_app" and app_cfg["route_prefix"] == "/"
    assert "request_timeout_s" not in config.get("http_options", {}), "sessions are long-lived requests"
    deployments = _deployments(build_app(AppArgs.model_validate(app_cfg["args"])))
    assert set(deployments) == {"MirageIngress", "FaceDetector", "FaceSwapper", "VoiceConverter", "FaceEnhancer"}
    total = 0.0
    for name, d in deployments.items():
        cpus = d.ray_actor_options["num_cpus"]
        assert 0 < cpus < 1, f"{name} must ask for a fraction of a CPU, not {cpus}"
        total += cpus
    assert total <= 2.0, "the four replicas fit a 2-core machine"
    for name in ("FaceDetector", "FaceSwapper", "VoiceConverter"):
        d = deployments[name]
        assert d.max_ongoing_requests >= d.user_config["max_batch_size"]
    assert deployments["MirageIngress"].max_ongoing_requests > app_cfg["args"]["ingress"]["max_sessions_per_replica"]


def test_every_replica_gets_the_replica_environment() -> None:
    """The inline-argument limit and the Serve event-loop knobs reach every replica's runtime_env;
    a config can replace the knobs, and turning the inline limit off drops only that variable."""
    for name, d in _deployments(build_app(AppArgs())).items():
        env = d.ray_actor_options["runtime_env"]["env_vars"]
        assert env["RAY_max_direct_call_object_size"] == str(1024 * 1024), name
        assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0", name
        assert env["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "0", name
    args = AppArgs(inline_object_bytes=0, replica_env={"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"})
    for name, d in _deployments(build_app(args)).items():
        assert d.ray_actor_options["runtime_env"]["env_vars"] == {"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"}, name
    for name, d in _deployments(build_app(AppArgs(inline_object_bytes=0, replica_env={}))).items():
        assert "runtime_env" not in d.ray_actor_options, name


def test_env_cap_keeps_ingress_headroom(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRAGE_MAX_SESSIONS_PER_REPLICA", "30")
    ingress = _deployments(build_app(AppArgs()))["MirageIngress"]
    assert ingress.max_ongoing_requests > 30


def test_inconsistent_args_are_refused() -> None:
    with pytest.raises(ValidationError, match="batches can never fill"):
        AppArgs.model_validate({"detector": {"max_batch_size": 16, "max_ongoing_requests": 4}})
    with pytest.raises(ValidationError, match="must exceed max_sessions_per_replica"):
        AppArgs.model_validate({"ingress": {"max_sessions_per_replica": 8, "max_ongoing_requests": 8}})
    with pytest.raises(ValidationError):
        AppArgs.model_validate({"detecter": {}})  # typo
    with pytest.raises(ValidationError):
        AppArgs.model_validate({"session": {"fallback": "reveal"}})


def test_drain_detection_from_serve_details() -> None:
    from serve_app.drain import ReplicaIdentity, replica_state

    me = ReplicaIdentity(app_name="mirage", actor_id="a1", replica_id="r1", pid=42)

    def details(status: str, replicas: list[dict]) -> dict:
        return {"applications": {"mirage": {"status": status, "deployments": {"MirageIngress": {"replicas": replicas}}},
                                 "other": {"status": "RUNNING", "deployments": {}}}}

    assert replica_state(details("RUNNING", [{"actor_id": "a1", "replica_id": "r1", "state": "RUNNING"}]), me) == "running"
    assert replica_state(details("RUNNING", [{"actor_id": "a1", "replica_id": "r1", "state": "STOPPING"}]), me) == "stopping"
    assert replica_state(details("DELETING", []), me) == "stopping"
    assert replica_state(details("RUNNING", [{"actor_id": "zz", "replica_id": "other", "pid": 7, "state": "RUNNING"}]), me) == "missing"
    assert replica_state({"applications": {}}, me) == "missing"


def test_voice_converter_is_the_fourth_deployment_with_user_config() -> None:
    deployments = _deployments(build_app(AppArgs.model_validate({"voice": {"max_batch_size": 8, "batch_wait_timeout_s": 0.004}})))
    voice = deployments["VoiceConverter"]
    assert voice.user_config == {"max_batch_size": 8, "batch_wait_timeout_s": 0.004, "compute_in_thread": False}
    assert 0 < voice.ray_actor_options["num_cpus"] <= 0.25
    assert voice.max_ongoing_requests >= 8
    with pytest.raises(ValidationError, match="batches can never fill"):
        AppArgs.model_validate({"voice": {"max_batch_size": 16, "max_ongoing_requests": 4}})


def test_voice_enable_is_read_once_into_settings() -> None:
    from mirage.voice.config import OFF
    from serve_app.settings import Settings

    assert Settings.from_env({}).voice.initial_selection() == OFF  # off by default
    on = Settings.from_env({"MIRAGE_VOICE_ENABLE": "1"}).voice
    assert on.enable and on.initial_selection().name == "disguise"
    deep = Settings.from_env({"MIRAGE_VOICE_ENABLE": "yes", "MIRAGE_VOICE_DEFAULT": "deep", "MIRAGE_VOICE_FALLBACK": "mute"}).voice
    assert deep.initial_selection().params.pitch_semitones == -5.0 and deep.fallback == "mute"
    # Unusable values stop start-up with one sentence naming the variable, like every MIRAGE_* variable.
    for env, name in (({"MIRAGE_VOICE_ENABLE": "1", "MIRAGE_VOICE_DEFAULT": "chipmunk"}, "MIRAGE_VOICE_DEFAULT"),
                      ({"MIRAGE_VOICE_CHUNK_MS": "23"}, "MIRAGE_VOICE_CHUNK_MS"), ({"MIRAGE_VOICE_ENABLE": "maybe"}, "MIRAGE_VOICE_ENABLE")):
        with pytest.raises(ConfigError, match=f"^{name} must be"):
            Settings.from_env(env)


def test_build_app_is_a_one_parameter_builder_for_serve() -> None:
    """Ray Serve refuses an import_path builder with more than one parameter (DEPLOY_FAILED)."""
    import inspect

    from serve_app.app import build_app_with

    assert len(inspect.signature(build_app).parameters) == 1
    assert "extra_stages" in inspect.signature(build_app_with).parameters
