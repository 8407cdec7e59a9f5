"""TensorRT engine cache key, engine file checks and runtime selection — on any CPU machine.

The key and the file format are plain Python; engine payloads here are arbitrary
bytes (a real engine needs a GPU: tests/gpu/). Runtime selection is exercised
with the real probe of this machine and with explicit accelerator descriptions.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

from mirage.cli_compile import add_compile_arguments, run_compile
from mirage.errors import ModelUnavailableError
from mirage.runtime.cuda import GpuInfo, probe_gpu
from mirage.runtime.onnx import CPU, CUDA, OrtConfig
from mirage.runtime.select import (
    Accelerators,
    RuntimeConfig,
    default_engine_dir,
    load_model,
    probe_accelerators,
    select_runtime,
)
from mirage.runtime.tensorrt import (
    BatchProfile,
    EngineKey,
    check_engine,
    engine_filename,
    find_engine,
    make_engine_key,
    read_engine_header,
    read_engine_payload,
    write_engine_file,
)
from standins.models import build_inswapper_standin, build_scrfd_standin

A10G = GpuInfo("NVIDIA A10G", "8.6")
L4 = GpuInfo("NVIDIA L4", "8.9")
TRT = "10.16.1.11"
CUDA13 = "13.0"
PAYLOAD = b"\x00engine-bytes\xff" * 64


def _key(**changes: object) -> EngineKey:
    base = EngineKey(
        model_sha256="a" * 64,
        gpu_name="NVIDIA A10G",
        compute_capability="8.6",
        tensorrt_version=TRT,
        precision="fp16",
        profile=BatchProfile(1, 4, 8),
        input_shapes=(("source", (512,)), ("target", (3, 128, 128))),
        cuda_version=CUDA13,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def swapper_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_inswapper_standin(tmp_path_factory.mktemp("m") / "inswapper_standin.onnx", dynamic=True)


def _gpu_acc(providers: tuple[str, ...] = (CUDA, CPU), gpu: GpuInfo = A10G, trt: str | None = TRT) -> Accelerators:
    return Accelerators(gpu, "", trt, "" if trt else "the tensorrt package is not installed", providers, CUDA13)


CPU_ONLY = Accelerators(None, "no NVIDIA driver (libcuda.so.1 is not installed or not mounted)", None, "the tensorrt package is not installed", (CPU,))


# --------------------------------------------------------------------------- the key


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": "b" * 64},
        {"gpu_name": "NVIDIA L4"},
        {"compute_capability": "8.9"},
        {"tensorrt_version": "10.13.3.9"},
        {"precision": "fp32"},
        {"profile": BatchProfile(1, 4, 16)},
        {"profile": BatchProfile(1, 8, 8)},
        {"profile": BatchProfile(2, 4, 8)},
        {"input_shapes": (("source", (512,)), ("target", (3, 256, 256)))},
        {"cuda_version": "12.9"},
    ],
    ids=lambda c: next(iter(c)) + "=" + str(next(iter(c.values())))[:20],
)
def test_key_changes_with_each_input(change: dict[str, object]) -> None:
    base, changed = _key(), _key(**change)
    assert base.digest() == _key().digest()  # deterministic
    assert changed.digest() != base.digest()
    assert engine_filename("inswapper_128_fp16", changed) != engine_filename("inswapper_128_fp16", base)
    assert changed.differences(base), "a changed key must explain itself"


def test_key_from_a_real_onnx_file_tracks_its_bytes(swapper_onnx: Path, tmp_path: Path) -> None:
    key = make_engine_key(swapper_onnx, "inswapper_128", A10G, TRT, "fp16", BatchProfile.up_to(8))
    assert dict(key.input_shapes) == {"target": (3, 128, 128), "source": (512,)}
    assert key.profile == BatchProfile(1, 4, 8)
    assert EngineKey.from_dict(key.to_dict()) == key
    other = build_inswapper_standin(tmp_path / "inswapper_standin_fp16.onnx", dynamic=True, fp16=True)
    assert make_engine_key(other, "inswapper_128", A10G, TRT, "fp16", BatchProfile.up_to(8)).model_sha256 != key.model_sha256


def test_free_input_dimensions_need_a_shape(tmp_path: Path) -> None:
    scrfd = build_scrfd_standin(tmp_path / "scrfd_standin.onnx", dynamic=True)
    with pytest.raises(ModelUnavailableError, match="free dimensions"):
        make_engine_key(scrfd, "some_detector", A10G, TRT, "fp16", BatchProfile.up_to(8))
    key = make_engine_key(scrfd, "scrfd_10g", A10G, TRT, "fp16", BatchProfile.up_to(8))  # SCRFD runs at 640
    assert dict(key.input_shapes) == {"input.1": (3, 640, 640)}


def test_batch_profile_is_validated() -> None:
    with pytest.raises(ValueError):
        BatchProfile(1, 16, 8)
    with pytest.raises(ValueError):
        BatchProfile(0, 1, 8)
    assert BatchProfile.up_to(1) == BatchProfile(1, 1, 1)


# --------------------------------------------------------------------------- engine files


def test_engine_file_round_trip(tmp_path: Path) -> None:
    key = _key()
    path = tmp_path / engine_filename("inswapper_128", key)
    write_engine_file(path, "inswapper_128", key, PAYLOAD, "inswapper_128.batch-dynamic.onnx")
    header = read_engine_header(path)
    assert header.key == key and header.model == "inswapper_128" and header.engine_bytes == len(PAYLOAD)
    assert read_engine_payload(path, key, "inswapper_128") == PAYLOAD
    assert find_engine(tmp_path, "inswapper_128", key)[0] == path
    assert not list(tmp_path.glob("*.tmp")), "atomic write leaves no temporary file"


def test_foreign_engine_is_refused_with_what_differs(tmp_path: Path) -> None:
    wanted = _key()
    foreign = _key(gpu_name="NVIDIA L4", compute_capability="8.9", tensorrt_version="10.13.3.9")
    # Someone copied an L4 engine under the name this A10G server looks for.
    path = tmp_path / engine_filename("inswapper_128", wanted)
    write_engine_file(path, "inswapper_128", foreign, PAYLOAD)
    with pytest.raises(ModelUnavailableError) as info:
        read_engine_payload(path, wanted, "inswapper_128")
    message = str(info.value)
    assert "built on NVIDIA L4, this GPU is NVIDIA A10G" in message
    assert "compute capability 8.9" in message and "TensorRT 10.13.3.9" in message
    assert "Refusing to load" in message and "python -m mirage models compile" in message


def test_engine_of_another_model_is_refused(tmp_path: Path) -> None:
    key = _key()
    path = tmp_path / engine_filename("inswapper_128", key)
    write_engine_file(path, "scrfd_10g", key, PAYLOAD)
    with pytest.raises(ModelUnavailableError, match="built for model scrfd_10g, not inswapper_128"):
        check_engine(path, key, "inswapper_128")


@pytest.mark.parametrize("damage", ["flip_payload", "truncate_payload", "truncate_header", "no_header", "edit_key"])
def test_corrupt_engine_is_refused(tmp_path: Path, damage: str) -> None:
    key = _key()
    path = tmp_path / engine_filename("inswapper_128", key)
    write_engine_file(path, "inswapper_128", key, PAYLOAD)
    data = bytearray(path.read_bytes())
    if damage == "flip_payload":
        data[-10] ^= 0xFF
        expected = "do not match their recorded sha256"
    elif damage == "truncate_payload":
        data = data[:-100]
        expected = "truncated"
    elif damage == "truncate_header":
        data = data[:40]
        expected = "truncated header"
    elif damage == "no_header":
        data = bytearray(PAYLOAD)  # a bare engine as trtexec writes it: never loaded blindly
        expected = "not a Mirage TensorRT engine"
    else:
        data = bytearray(bytes(data).replace(b'"precision": "fp16"', b'"precision": "fp32"'))
        expected = "header was altered"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelUnavailableError, match=expected) as info:
        read_engine_payload(path, key, "inswapper_128")
    assert "rebuild with `python -m mirage models compile`" in str(info.value)


def test_missing_engine_explains_the_stale_one_present(tmp_path: Path) -> None:
    wanted = _key()
    stale = _key(tensorrt_version="10.13.3.9")
    write_engine_file(tmp_path / engine_filename("inswapper_128", stale), "inswapper_128", stale, PAYLOAD)
    with pytest.raises(ModelUnavailableError) as info:
        find_engine(tmp_path, "inswapper_128", wanted)
    message = str(info.value)
    assert "No TensorRT engine for inswapper_128" in message
    assert "TensorRT 10.13.3.9, this process has TensorRT 10.16.1.11" in message
    assert "--models inswapper_128" in message


# --------------------------------------------------------------------------- runtime selection


def test_this_machine_probe_is_consistent() -> None:
    acc = probe_accelerators()
    assert CPU in acc.ort_providers
    assert (acc.gpu is None) == bool(acc.gpu_reason)
    assert (acc.tensorrt_version is None) == bool(acc.tensorrt_reason)
    gpu, reason = probe_gpu()
    assert (gpu is None) == bool(reason)


def test_no_tensorrt_no_cuda_falls_back_to_cpu_with_the_log_line(
    swapper_onnx: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mirage.runtime.select")
    model, choice = load_model(
        "inswapper_128", swapper_onnx, tmp_path / "engines", RuntimeConfig(), OrtConfig(), accelerators=CPU_ONLY
    )
    assert choice.kind == "cpu" and model.provider == CPU
    assert "not TensorRT: no CUDA GPU" in choice.reason and "not CUDA: no CUDA GPU" in choice.reason
    lines = [r.getMessage() for r in caplog.records if r.name == "mirage.runtime.select"]
    assert any(line.startswith("model inswapper_128 (stand-in): runtime cpu (ONNX Runtime CPU; not TensorRT") for line in lines), lines
    out = model.run({"target": np.zeros((2, 3, 128, 128), np.float32), "source": np.zeros((2, 512), np.float32)})[0]
    assert out.shape == (2, 3, 128, 128)
    assert choice.to_dict()["runtime"] == "cpu"


def test_real_probe_on_this_machine_selects_what_it_has(swapper_onnx: Path, tmp_path: Path) -> None:
    choice = select_runtime("inswapper_128", swapper_onnx, tmp_path / "engines", RuntimeConfig())
    acc = probe_accelerators()
    if acc.gpu is None:
        assert choice.kind == "cpu" and acc.gpu_reason in choice.reason
    else:  # on a GPU machine without a compiled engine
        assert choice.kind in ("cuda", "cpu") and "No TensorRT engine" in choice.reason


def test_matching_engine_selects_tensorrt(swapper_onnx: Path, tmp_path: Path) -> None:
    config = RuntimeConfig()
    key = make_engine_key(swapper_onnx, "inswapper_128", A10G, TRT, config.precision, config.profile, cuda_version=CUDA13)
    write_engine_file(tmp_path / engine_filename("inswapper_128", key), "inswapper_128", key, PAYLOAD)
    choice = select_runtime("inswapper_128", swapper_onnx, tmp_path, config, _gpu_acc())
    assert choice.kind == "tensorrt" and choice.key == key
    assert "NVIDIA A10G (compute 8.6), TensorRT 10.16.1.11, CUDA 13.0, fp16, batch 1-8" in choice.reason
    # The same engine on an L4 is foreign: CUDA, and the reason names the missing engine.
    on_l4 = select_runtime("inswapper_128", swapper_onnx, tmp_path, config, _gpu_acc(gpu=L4))
    assert on_l4.kind == "cuda" and "this GPU is NVIDIA L4" in on_l4.reason
    # MIRAGE_CUDA_ONLY skips TensorRT even with a fitting engine.
    cuda_only = RuntimeConfig.from_env({"MIRAGE_CUDA_ONLY": "1"})
    picked = select_runtime("inswapper_128", swapper_onnx, tmp_path, cuda_only, _gpu_acc())
    assert picked.kind == "cuda" and "MIRAGE_CUDA_ONLY is set" in picked.reason


def test_engine_that_fails_to_load_falls_back(swapper_onnx: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An engine whose key fits but whose bytes are bad is never deserialized: fallback with the reason."""
    config = RuntimeConfig()
    key = make_engine_key(swapper_onnx, "inswapper_128", A10G, TRT, config.precision, config.profile, cuda_version=CUDA13)
    path = tmp_path / engine_filename("inswapper_128", key)
    write_engine_file(path, "inswapper_128", key, PAYLOAD)
    path.write_bytes(path.read_bytes()[:-1])  # truncated
    caplog.set_level(logging.INFO, logger="mirage.runtime.select")
    # This machine's onnxruntime has no CUDA provider: the session really runs on CPU, and the choice says so.
    model, choice = load_model("inswapper_128", swapper_onnx, tmp_path, config, OrtConfig(), _gpu_acc(providers=(CPU,)))
    assert choice.kind == "cpu" and model.provider == CPU
    assert "the TensorRT engine failed to load" in choice.reason and "truncated" in choice.reason
    assert any("TensorRT engine not loaded" in r.getMessage() for r in caplog.records)


def test_runtime_config_from_env() -> None:
    config = RuntimeConfig.from_env({"MIRAGE_TRT_PRECISION": "FP32", "MIRAGE_TRT_MAX_BATCH": "16"})
    assert config.precision == "fp32" and config.profile == BatchProfile(1, 8, 16) and not config.cuda_only
    assert RuntimeConfig.from_env({}).profile == BatchProfile(1, 4, 8)
    with pytest.raises(ValueError, match="MIRAGE_TRT_PRECISION"):
        RuntimeConfig.from_env({"MIRAGE_TRT_PRECISION": "int8"})
    with pytest.raises(ValueError, match="MIRAGE_TRT_MAX_BATCH"):
        RuntimeConfig.from_env({"MIRAGE_TRT_MAX_BATCH": "0"})
    assert default_engine_dir(Path("/m"), {}) == Path("/m/engines")
    assert default_engine_dir(Path("/m"), {"MIRAGE_ENGINE_DIR": "/e"}) == Path("/e")


# --------------------------------------------------------------------------- the compile command


def _compile_args(*argv: str) -> argparse.Namespace:
    return add_compile_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_compile_without_gpu_says_why(swapper_onnx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if probe_accelerators().gpu is not None:
        pytest.skip("this machine has a GPU: tests/gpu/ covers compiling")
    code = run_compile(_compile_args("--onnx", f"inswapper_128={swapper_onnx}"))
    assert code == 0  # not a failure: the model still serves on ONNX Runtime (tests/unit/test_compile_report.py)
    captured = capsys.readouterr()
    assert "cannot compile TensorRT engines here: no CUDA GPU" in captured.err and "docs/gpu.md" in captured.err
    assert "inswapper_128 (stand-in): no engine" in captured.out and "serves on ONNX Runtime CPU" in captured.out
    assert run_compile(_compile_args("--onnx", "broken-argument")) == 1  # usage errors stay exit 1


def test_compile_is_wired_into_the_models_cli() -> None:
    from mirage.cli import build_parser

    args = build_parser().parse_args(["models", "compile", "--precision", "fp32", "--max-batch", "16", "--models", "scrfd_10g"])
    assert (args.command, args.models_command) == ("models", "compile")
    assert (args.precision, args.max_batch, args.models) == ("fp32", 16, ["scrfd_10g"])
