"""``models compile`` handles each model on its own and reports it; only a required model without any
runnable path makes it fail (exit 2). Runs on this CPU machine: the failures are real ones (no GPU,
no TensorRT package, a rewrite that fails its equivalence check, a corrupt file)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from mirage.cli_compile import (
    EXIT_REQUIRED_UNRUNNABLE,
    add_compile_arguments,
    compile_one,
    run_compile,
)
from mirage.runtime.cuda import GpuInfo
from mirage.runtime.onnx import CPU, CUDA
from mirage.runtime.select import Accelerators, RuntimeConfig, probe_accelerators
from mirage.weights.manifest import load_manifest
from mirage.weights.provision import ModelStore, ProvisionConfig
from standins.models import build_inswapper_standin, build_scrfd_standin

GPU_NO_TRT = Accelerators(GpuInfo("NVIDIA A10G", "8.6"), "", "10.16.1.11", "", (CUDA, CPU), "13.0")
FILES = {
    "scrfd_10g": ("detect", "buffalo_l/det_10g_standin.onnx"),
    "arcface_w600k_r50": ("identity", "buffalo_l/w600k_r50_standin.onnx"),
    "inswapper_128": ("swap", "inswapper/inswapper_128_standin.onnx"),
    "inswapper_128_fp16": ("swap", "inswapper/inswapper_128_fp16_standin.onnx"),
}

pytestmark = pytest.mark.skipif(probe_accelerators().gpu is not None, reason="this machine has a GPU: tests/gpu/ covers compiling")


def _store(tmp_path: Path, required: tuple[str, ...] = ()) -> ModelStore:
    entries = [
        {"name": n, "title": n, "stage": st, "enables": f"the {n} stage", "file": f, "url": f"http://127.0.0.1:9/{n}",
         "licence": "test", "commercial_use": False}
        for n, (st, f) in FILES.items()
    ]
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"version": 1, "models": entries}))
    root = tmp_path / "models"
    build_scrfd_standin(root / FILES["scrfd_10g"][1])
    build_inswapper_standin(root / FILES["inswapper_128_fp16"][1], fp16=True)
    config = ProvisionConfig(models_dir=root, persist=False, persist_dir=tmp_path / "nv", fresh=False, offline=True,
                             allow_download=False, required=required)
    return ModelStore(config, load_manifest(tmp_path / "models.yaml"))


def _args(*argv: str) -> argparse.Namespace:
    return add_compile_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_every_model_is_reported_and_no_gpu_is_not_a_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_compile(_args(), _store(tmp_path))
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = {line.split(":")[0]: line for line in out.splitlines()}
    assert "serves on ONNX Runtime CPU" in lines["scrfd_10g (stand-in)"]
    assert "no CUDA GPU" in lines["scrfd_10g (stand-in)"] and "docs/gpu.md" in lines["scrfd_10g (stand-in)"]
    assert "serves on ONNX Runtime CPU" in lines["inswapper_128_fp16 (stand-in)"]
    assert lines["arcface_w600k_r50"].startswith("arcface_w600k_r50: skipped (not provisioned")
    assert "summary: 0 with a TensorRT engine, 2 on ONNX Runtime, 0 not runnable" in out
    assert "warning: cannot compile TensorRT engines here: no CUDA GPU" in err


def test_a_required_model_without_a_runnable_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_compile(_args("--models", "scrfd_10g", "arcface_w600k_r50", "--require", "arcface_w600k_r50"), _store(tmp_path))
    out, err = capsys.readouterr()
    assert code == EXIT_REQUIRED_UNRUNNABLE == 2
    assert "arcface_w600k_r50 [required]: NOT RUNNABLE (not provisioned" in out
    assert "serves on ONNX Runtime CPU" in out  # scrfd was still handled
    assert "required model(s) without a runnable path: arcface_w600k_r50" in err
    # The manifest's / MIRAGE_REQUIRED_MODELS' required models count too, even when not listed.
    code = run_compile(_args("--models", "scrfd_10g"), _store(tmp_path / "b", required=("arcface_w600k_r50",)))
    assert code == 2 and "arcface_w600k_r50 [required]: NOT RUNNABLE" in capsys.readouterr().out


def test_a_corrupt_file_is_not_runnable_and_only_fatal_when_required(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = _store(tmp_path)
    store.path("inswapper_128_fp16").write_bytes(b"this is not an onnx model")
    assert run_compile(_args("--json"), store) == 0
    report = json.loads(capsys.readouterr().out)
    by_model = {m["model"]: m for m in report["models"]}
    assert by_model["inswapper_128_fp16"]["status"] == "unavailable" and not by_model["inswapper_128_fp16"]["runnable"]
    assert by_model["scrfd_10g"]["status"] == "fallback" and by_model["scrfd_10g"]["runtime"] == "cpu"
    assert report["exit"] == 0
    assert run_compile(_args("--require", "inswapper_128_fp16"), store) == 2
    assert "inswapper_128_fp16 (stand-in) [required]: NOT RUNNABLE" in capsys.readouterr().out


def test_a_tensorrt_failure_falls_back_per_model_on_a_gpu(tmp_path: Path) -> None:
    """A GPU is described but this process has no tensorrt package: the build fails for real, per model."""
    store = _store(tmp_path)
    report = compile_one(
        "scrfd_10g", store.path("scrfd_10g"), "", config=RuntimeConfig(), acc=GPU_NO_TRT, engine_dir=tmp_path / "e", required=True
    )
    assert report.status == "fallback" and report.runtime == "cuda" and report.runnable
    assert "TensorRT is not available" in report.detail
    assert report.onnx is not None and report.onnx.endswith(".batch-dynamic.onnx")  # the served file
    assert "serves on ONNX Runtime CUDA" in report.line()


def test_a_rewrite_that_fails_its_proof_falls_back_to_batch_one(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 4, 4])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    nodes = [
        helper.make_node("ReduceMean", ["target", "axes"], ["mean"], keepdims=1),
        helper.make_node("Sub", ["target", "mean"], ["centred"]),
        helper.make_node("Add", ["centred", "target"], ["output"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "mixing_standin", [x], [y], initializer=[axes]), opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp_path / "mixing_standin.onnx"
    onnx.save(model, str(path))
    report = compile_one("mixer", path, "", config=RuntimeConfig(), acc=GPU_NO_TRT, engine_dir=tmp_path / "e", required=True)
    assert report.status == "fallback" and "cannot get a batch 1..N engine" in report.detail
    assert report.onnx == str(path)
