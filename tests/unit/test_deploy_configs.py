"""The GPU deployment files agree with each other and with the code they deploy.

configs/serve_a10g.yaml, deploy/kuberay/rayservice.yaml, the Dockerfile and the
dependency lists are checked by parsing them; the app is built (not run) from
the config's args so every deployment named must really exist.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
A10G = ROOT / "configs" / "serve_a10g.yaml"
RAYSERVICE = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def a10g() -> dict[str, Any]:
    return yaml.safe_load(A10G.read_text())


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    return yaml.safe_load(RAYSERVICE.read_text())


@pytest.fixture(scope="module")
def app_config(a10g: dict[str, Any]) -> dict[str, Any]:
    (app,) = a10g["applications"]
    return app


@pytest.fixture(scope="module")
def built(app_config: dict[str, Any]) -> dict[str, Any]:
    """Deployment name → effective options: the builder's, then the config's overrides (as Serve applies them)."""
    from ray.serve._private.build_app import build_app as serve_build

    from serve_app.app import AppArgs, build_app

    assert app_config["import_path"] == "serve_app.app:build_app"
    application = build_app(AppArgs.model_validate(app_config["args"]))
    deployments = serve_build(application, name=app_config["name"]).deployments
    effective: dict[str, Any] = {}
    for d in deployments:
        cfg = d._deployment_config
        effective[d.name] = {
            "ray_actor_options": dict(d.ray_actor_options or {}),
            "user_config": d.user_config,
            "max_ongoing_requests": cfg.max_ongoing_requests,
            "autoscaling": cfg.autoscaling_config,
        }
    for override in app_config.get("deployments", []):
        assert override["name"] in effective, f"{override['name']} is not a deployment of the app: {sorted(effective)}"
        for field in ("user_config", "max_ongoing_requests", "ray_actor_options"):
            if field in override:
                effective[override["name"]][field] = override[field]
    return effective


def test_serve_config_is_valid_for_serve(a10g: dict[str, Any]) -> None:
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(a10g)
    assert [app.name for app in schema.applications] == ["mirage"]
    assert a10g["http_options"] == {"host": "0.0.0.0", "port": 8000}


def test_rayservice_serves_exactly_the_a10g_applications(rayservice: dict[str, Any], a10g: dict[str, Any]) -> None:
    from ray.serve.schema import ServeDeploySchema

    assert (rayservice["apiVersion"], rayservice["kind"]) == ("ray.io/v1", "RayService")
    serve_v2 = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_v2)
    assert serve_v2["applications"] == a10g["applications"]
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == _pinned("ray[serve]")
    assert cluster["enableInTreeAutoscaling"] is True


def test_every_named_deployment_exists_and_ingress_is_cpu(built: dict[str, Any]) -> None:
    assert {"MirageIngress", "FaceDetector", "FaceSwapper"} <= set(built)
    assert built["MirageIngress"]["ray_actor_options"].get("num_gpus", 0) == 0
    assert built["FaceSwapper"]["ray_actor_options"]["num_gpus"] == 0.5
    for name, options in built.items():
        assert options["autoscaling"] is not None, f"{name} must autoscale"


def test_gpu_fractions_fit(built: dict[str, Any], rayservice: dict[str, Any]) -> None:
    shares = {name: float(o["ray_actor_options"].get("num_gpus", 0)) for name, o in built.items()}
    assert all(0.0 <= s <= 1.0 for s in shares.values())
    assert sum(shares.values()) <= 1.0, f"one replica of each deployment must fit one GPU: {shares}"
    # At full scale-out, the GPU replicas fit the GPU worker group's maximum.
    (group,) = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    gpus_per_pod = int(container["resources"]["limits"]["nvidia.com/gpu"])
    demand = sum(shares[n] * built[n]["autoscaling"].max_replicas for n in shares)
    assert 0 < demand <= group["maxReplicas"] * gpus_per_pod
    # The head is the CPU group.
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})


def test_batching_in_user_config_fits_replicas_and_engines(built: dict[str, Any], app_config: dict[str, Any]) -> None:
    from deployments.detector import BatchingConfig
    from mirage.runtime.select import DEFAULT_MAX_BATCH

    overridden = {d["name"] for d in app_config["deployments"]}
    assert overridden == {"FaceDetector", "FaceSwapper", "FaceEnhancer"}
    for name in overridden:
        batching = BatchingConfig.model_validate(built[name]["user_config"])
        # Room for a full batch, else batches never fill.
        assert built[name]["max_ongoing_requests"] >= batching.max_batch_size
        assert built[name]["autoscaling"].target_ongoing_requests <= built[name]["max_ongoing_requests"]
    # TensorRT engines are compiled for batches 1..DEFAULT_MAX_BATCH: the served batch must fit.
    assert BatchingConfig.model_validate(built["FaceSwapper"]["user_config"]).max_batch_size <= DEFAULT_MAX_BATCH
    assert BatchingConfig.model_validate(built["FaceEnhancer"]["user_config"]).max_batch_size <= DEFAULT_MAX_BATCH
    assert built["FaceEnhancer"]["ray_actor_options"]["num_gpus"] == 0.25


def test_ingress_autoscales_on_sessions_below_its_cap(app_config: dict[str, Any], built: dict[str, Any]) -> None:
    ingress = app_config["args"]["ingress"]
    cap = ingress["max_sessions_per_replica"]
    auto = built["MirageIngress"]["autoscaling"]
    assert auto.target_ongoing_requests < cap  # scale out before the cap refuses sessions
    assert built["MirageIngress"]["max_ongoing_requests"] > cap  # /health never queues behind sessions


# --------------------------------------------------------------------------- the image


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _pip_installs(script: str) -> list[list[str]]:
    """The argument lists of every `pip install` in a shell script or RUN line."""
    installs = []
    separators = {"&&", "||", ";", "|", "then", "else", "do"}
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token not in separators:
                command.append(token)
                continue
            for i in range(len(command) - 1):
                if command[i] == "pip" and command[i + 1] == "install":
                    installs.append([w for w in command[i + 2 :] if w not in ("-q", "--quiet")])
                    break
            command = []
    return installs


def _requirement_sets(installs: list[list[str]]) -> list[tuple[str, bool]]:
    """(requirements file, --no-deps?) of every `-r` install."""
    found = []
    for args in installs:
        if "-r" in args:
            found.append((args[args.index("-r") + 1], "--no-deps" in args))
    return found


def _pinned(name: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.startswith(name + "=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in requirements.txt")


def test_dockerfile_installs_exactly_the_dependency_lists() -> None:
    steps = _instructions(DOCKERFILE.read_text())
    run = "\n".join(args for word, args in steps if word == "RUN")
    installs = _pip_installs(run)
    assert _requirement_sets(installs) == [
        ("requirements.txt", False),
        ("requirements-nodeps.txt", True),
        ("requirements-gpu.txt", False),
    ]
    for args in installs:  # nothing named inline: only lists, pip itself, and the project
        named = [a for a in args if not a.startswith("-") and a not in ("requirements.txt", "requirements-nodeps.txt", "requirements-gpu.txt")]
        assert named in ([], ["pip"], ["."]), f"inline package in the Dockerfile: {args}"
    assert ["--no-deps", "-e", "."] in installs
    assert "pip uninstall -y -q onnxruntime" in run  # onnxruntime-gpu replaces it, never both
    # The same lists with the same flags as scripts/setup.sh (one way to install, no drift).
    setup = _pip_installs((ROOT / "scripts" / "setup.sh").read_text())
    assert set(_requirement_sets(setup)) == {("requirements.txt", False), ("requirements-nodeps.txt", True)}
    gpu = [l.strip() for l in (ROOT / "requirements-gpu.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert [re.split(r"[=<>~\[]", l)[0] for l in gpu] == ["onnxruntime-gpu", "tensorrt-cu13"]
    assert all("==" in l for l in gpu), "GPU extras are pinned"


def test_dockerfile_runs_safely_and_says_how_to_reach_it() -> None:
    text = DOCKERFILE.read_text()
    steps = _instructions(text)
    words = [w for w, _ in steps]
    assert words[0] in ("ARG", "FROM") and any(w == "FROM" for w in words)
    base = next(a for w, a in steps if w == "ARG" and a.startswith("BASE_IMAGE="))
    assert base.startswith("BASE_IMAGE=nvidia/cuda:13.")
    users = [a for w, a in steps if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")  # nothing runs as root after
    assert any(w == "VOLUME" and "/models" in a for w, a in steps)
    assert any(w == "ENV" and "MIRAGE_MODELS_DIR=/models" in a for w, a in steps)
    assert any(w == "EXPOSE" and "8000" in a.split() for w, a in steps)
    assert "udp" in text.lower() and "ip_local_port_range" in text  # the UDP range is documented
    health = next(a for w, a in steps if w == "HEALTHCHECK")
    assert "/health" in health and ":8000" in health
    assert next(a for w, a in steps if w == "CMD") == '["serve", "run", "configs/serve_a10g.yaml"]'
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "models/*", "test-artifacts"} <= set(ignored)


# --------------------------------------------------------------------------- CUDA 13, driver, wheels


def _gpu_requirements() -> dict[str, str]:
    lines = [l.strip() for l in (ROOT / "requirements-gpu.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    return {re.split(r"[=\[]", l)[0]: l for l in lines}


def test_base_image_and_wheels_agree_on_cuda() -> None:
    """One set of CUDA libraries: the wheels'. The base is CUDA's 'base' flavour of the same major."""
    steps = _instructions(DOCKERFILE.read_text())
    base = next(a for w, a in steps if w == "ARG" and a.startswith("BASE_IMAGE=")).split("=", 1)[1]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-base-ubuntu\d+\.\d+", base)
    assert match, f"expected a CUDA 'base' image (no CUDA libraries of its own), got {base}"
    cuda_major = int(match.group(1))
    reqs = _gpu_requirements()
    assert reqs["onnxruntime-gpu"].startswith("onnxruntime-gpu[cuda,cudnn]=="), "CUDA/cuDNN must come with onnxruntime-gpu's extras"
    trt_major = int(re.search(r"tensorrt-cu(\d+)==", reqs["tensorrt-cu13"]).group(1))  # type: ignore[union-attr]
    assert cuda_major == trt_major == 13
    # onnxruntime.preload_dlls() loads the wheels' libraries before any CUDA session or TensorRT.
    onnx_src = (ROOT / "mirage" / "runtime" / "onnx.py").read_text()
    assert "preload_dlls" in onnx_src


def test_nvidia_index_is_given_to_the_gpu_install_only() -> None:
    text = DOCKERFILE.read_text()
    steps = _instructions(text)
    assert any(w == "ARG" and a.startswith("NVIDIA_PIP_INDEX=") for w, a in steps)
    run = "\n".join(a for w, a in steps if w == "RUN")
    assert 'PIP_EXTRA_INDEX_URL="$NVIDIA_PIP_INDEX" .venv/bin/python -m pip install -q -r requirements-gpu.txt' in run
    assert run.count("PIP_EXTRA_INDEX_URL") == 1 and "--extra-index-url" not in run
    docs = (ROOT / "docs" / "gpu.md").read_text()
    assert "NVIDIA_PIP_INDEX" in docs and "tensorrt-cu13-libs" in docs


def _gpu_group(rayservice: dict[str, Any]) -> dict[str, Any]:
    (group,) = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return group["template"]["spec"]


def test_gpu_nodes_are_selected_for_an_r580_driver(rayservice: dict[str, Any]) -> None:
    terms = _gpu_group(rayservice)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    expressions = [e for t in terms for e in t["matchExpressions"]]
    assert {"key": "nvidia.com/cuda.driver-version.major", "operator": "Gt", "values": ["579"]} in expressions
    assert "R580" in (ROOT / "docs" / "gpu.md").read_text()


def _run_init(script: str, tmp_path: Path, fetch_rc: int, compile_rc: int) -> tuple[int, list[str]]:
    """Run the init container's shell command with a stand-in `python` that records its calls."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        f'case "$4" in fetch) exit {fetch_rc};; compile) exit {compile_rc};; esac\n'  # python -m mirage models X
    )
    fake.chmod(0o755)
    log.write_text("")
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ.get('PATH', '')}"}
    rc = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, timeout=30).returncode
    return rc, [l for l in log.read_text().splitlines() if l]


def test_init_container_never_chains_fetch_and_compile(rayservice: dict[str, Any], tmp_path: Path) -> None:
    (init,) = _gpu_group(rayservice)["initContainers"]
    command = init["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    script = command[2]
    assert "&&" not in script
    # A failed fetch does not skip compile, and the pod starts when compile succeeds.
    rc, calls = _run_init(script, tmp_path, fetch_rc=1, compile_rc=0)
    assert rc == 0 and [c.split()[3] for c in calls] == ["fetch", "compile"]
    # compile's own verdict decides: exit 2 (a required model with no runnable path) blocks the pod.
    rc, calls = _run_init(script, tmp_path, fetch_rc=0, compile_rc=2)
    assert rc == 2 and len(calls) == 2
