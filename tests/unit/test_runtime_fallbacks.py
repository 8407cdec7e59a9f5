"""Failures that must fall back, not crash; the unique timing-cache temp file; the CUDA runtime in
the engine key; the start-up driver check's one line."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from pathlib import Path

import pytest

from mirage.errors import ModelUnavailableError
from mirage.runtime import select
from mirage.runtime.cuda import CudaUnavailableError, GpuInfo, driver_problem, probe_gpu
from mirage.runtime.onnx import CPU, CUDA, OrtConfig
from mirage.runtime.select import Accelerators, RuntimeConfig, load_model, startup_line
from mirage.runtime.tensorrt import (
    MAGIC,
    EngineKey,
    _atomic_write,
    engine_filename,
    make_engine_key,
    read_engine_header,
    timing_cache_path,
    write_engine_file,
)
from mirage.runtime.tensorrt_model import TensorRTModel
from standins.models import build_inswapper_standin

A10G = GpuInfo("NVIDIA A10G", "8.6")
GPU = Accelerators(A10G, "", "10.16.1.11", "", (CUDA, CPU), "13.0")


@pytest.fixture()
def engine(tmp_path: Path) -> tuple[Path, Path, EngineKey]:
    onnx_path = build_inswapper_standin(tmp_path / "inswapper_standin.onnx", dynamic=True)
    config = RuntimeConfig()
    key = make_engine_key(onnx_path, "inswapper_128", A10G, "10.16.1.11", config.precision, config.profile, cuda_version="13.0")
    path = tmp_path / "engines" / engine_filename("inswapper_128", key)
    write_engine_file(path, "inswapper_128", key, b"\x01engine" * 100)
    return onnx_path, path.parent, key


@pytest.mark.parametrize(
    "failure",
    [CudaUnavailableError("CUDA cudaStreamCreate failed: out of memory"), OSError(5, "Input/output error")],
    ids=["CudaUnavailableError", "OSError"],
)
def test_engine_open_failures_fall_back_with_a_log_line(
    engine: tuple[Path, Path, EngineKey], failure: Exception, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    onnx_path, engine_dir, _ = engine

    def failing_engine(*args: object, **kwargs: object) -> TensorRTModel:
        raise failure  # what stream_create / a read on a flaky volume raise inside TensorRTModel

    monkeypatch.setattr(select, "TensorRTModel", failing_engine)
    caplog.set_level(logging.INFO, logger="mirage.runtime.select")
    model, choice = load_model("inswapper_128", onnx_path, engine_dir, RuntimeConfig(warm_cuda=False), OrtConfig(), GPU)
    assert choice.kind == "cpu" and model.provider == CPU  # CUDA chosen next; this onnxruntime keeps the CPU
    assert "the TensorRT engine failed to load" in choice.reason
    assert any("TensorRT engine not loaded" in r.getMessage() and "falling back" in r.getMessage() for r in caplog.records)


def test_the_real_engine_class_raises_model_unavailable_here(engine: tuple[Path, Path, EngineKey]) -> None:
    """No tensorrt package on this machine: the real TensorRTModel refuses with ModelUnavailableError."""
    onnx_path, engine_dir, key = engine
    with pytest.raises(ModelUnavailableError):
        TensorRTModel(engine_dir / engine_filename("inswapper_128", key), onnx_path, "inswapper_128", key)


def test_timing_cache_writes_never_collide(tmp_path: Path) -> None:
    """Writers with the same PID (threads here, pods on a shared volume) each use their own temp file."""
    target = tmp_path / "timing.cache"
    payloads = [bytes([i]) * 200_000 for i in range(4)]
    errors: list[BaseException] = []

    def writer(data: bytes) -> None:
        try:
            for _ in range(40):
                _atomic_write(target, data)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert target.read_bytes() in payloads  # one complete write, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["timing.cache"]  # no temp files left


def test_cuda_runtime_version_is_in_the_key_and_the_file_names(engine: tuple[Path, Path, EngineKey], tmp_path: Path) -> None:
    _, engine_dir, key = engine
    cuda12 = dataclasses.replace(key, cuda_version="12.9")
    assert cuda12.digest() != key.digest() and engine_filename("m", cuda12) != engine_filename("m", key)
    assert "CUDA runtime 12.9, this process has CUDA 13.0" in "; ".join(cuda12.differences(key))
    assert "CUDA 13.0" in key.describe()
    assert timing_cache_path(engine_dir, cuda12) != timing_cache_path(engine_dir, key)
    # An engine written before the CUDA version was recorded reads back, and is refused as different.
    path = next(engine_dir.glob("*.engine"))
    blob = path.read_bytes()
    offset = len(MAGIC) + 8
    header = json.loads(blob[offset : offset + int.from_bytes(blob[len(MAGIC) : offset], "little")])
    assert header["key"]["cuda_version"] == "13.0"
    old = EngineKey.from_dict({k: v for k, v in header["key"].items() if k != "cuda_version"})
    assert old.cuda_version == "" and "CUDA runtime not recorded" in "; ".join(old.differences(key))
    assert read_engine_header(path).key == key


def test_driver_check_says_in_one_line_what_is_there_and_what_is_needed() -> None:
    need13 = (13, 0, "onnxruntime-gpu (built for CUDA 13.0)")
    line = driver_problem(12080, need13, "570.86.15")
    assert line is not None and "\n" not in line
    assert line.startswith("NVIDIA driver 570.86.15 supports CUDA 12.8 but onnxruntime-gpu (built for CUDA 13.0) needs CUDA 13.0")
    assert "R580 or newer" in line and "docs/gpu.md" in line
    assert driver_problem(13000, need13) is None and driver_problem(13020, need13, "595.58.03") is None
    assert driver_problem(12020, None) is None  # CPU-only install: nothing to check
    assert "R525" in (driver_problem(11080, (12, 0, "tensorrt-cu12 10.16.1.11")) or "")


def test_startup_line_and_probe_on_this_machine(caplog: pytest.LogCaptureFixture) -> None:
    assert startup_line(GPU) == "GPU: NVIDIA A10G (compute 8.6), driver OK, CUDA runtime 13.0, TensorRT 10.16.1.11"
    caplog.set_level(logging.INFO, logger="mirage.runtime.select")
    acc = select.probe_accelerators.__wrapped__()  # type: ignore[attr-defined]  # uncached: it logs again
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("GPU: ")]
    assert lines == [startup_line(acc)]
    gpu, reason = probe_gpu()
    if gpu is None:
        assert lines[0] == f"GPU: none usable ({reason}); neural models run on the CPU"



def test_an_unreadable_model_file_is_model_unavailable_for_the_key(tmp_path: Path) -> None:
    from mirage.runtime.tensorrt import file_sha256

    folder = tmp_path / "a-directory.onnx"
    folder.mkdir()  # stat works, reading fails with IsADirectoryError (an OSError)
    with pytest.raises(ModelUnavailableError, match="cannot be read"):
        file_sha256(folder)
