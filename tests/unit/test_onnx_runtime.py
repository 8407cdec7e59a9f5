"""ONNX Runtime wrapper: provider choice, environment, threads, the one log line."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from mirage.errors import ModelUnavailableError
from mirage.runtime.onnx import CPU, CUDA, TENSORRT, OrtConfig, OrtModel, choose_providers, provider_name
from standins.models import build_arcface_standin

ALL = [TENSORRT, CUDA, CPU]


@pytest.fixture(scope="module")
def arcface_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_arcface_standin(tmp_path_factory.mktemp("ort") / "w600k_r50_standin.onnx")


def names(providers: list) -> list[str]:
    return [provider_name(p) for p in providers]


def test_provider_order_is_tensorrt_cuda_cpu() -> None:
    assert names(choose_providers(OrtConfig(allow_tensorrt=True), available=ALL)) == ALL
    assert names(choose_providers(OrtConfig(allow_tensorrt=True), available=[CPU, CUDA, TENSORRT])) == ALL
    # By default no TensorRT provider: it would build engines inside the first frame.
    assert names(choose_providers(OrtConfig(), available=ALL)) == [CUDA, CPU]
    assert names(choose_providers(OrtConfig(allow_cuda=False), available=ALL)) == [CPU]


def test_cuda_only_drops_tensorrt() -> None:
    assert names(choose_providers(OrtConfig(cuda_only=True, allow_tensorrt=True), available=ALL)) == [CUDA, CPU]
    assert names(choose_providers(OrtConfig(allow_tensorrt=False), available=ALL)) == [CUDA, CPU]


def test_unknown_providers_are_ignored_and_cpu_is_always_last() -> None:
    assert names(choose_providers(OrtConfig(), available=["AzureExecutionProvider", CPU])) == [CPU]
    assert names(choose_providers(OrtConfig(), available=[CUDA])) == [CUDA, CPU]


def test_tensorrt_gets_its_engine_cache(tmp_path: Path) -> None:
    first = choose_providers(OrtConfig(trt_cache_dir=tmp_path, trt_fp16=True, allow_tensorrt=True), available=ALL)[0]
    assert isinstance(first, tuple) and first[0] == TENSORRT
    assert first[1]["trt_engine_cache_enable"] == "True"
    assert first[1]["trt_engine_cache_path"] == str(tmp_path)
    assert first[1]["trt_fp16_enable"] == "True"


def test_config_from_env() -> None:
    assert OrtConfig.from_env({}) == OrtConfig()
    config = OrtConfig.from_env({"MIRAGE_CUDA_ONLY": "1", "MIRAGE_ORT_THREADS": "3"})
    assert config.cuda_only and config.intra_op_threads == 3
    assert not OrtConfig.from_env({"MIRAGE_CUDA_ONLY": "0"}).cuda_only
    with pytest.raises(ValueError, match="MIRAGE_ORT_THREADS"):
        OrtConfig.from_env({"MIRAGE_ORT_THREADS": "many"})


def test_real_session_runs_on_cpu_and_says_so(arcface_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mirage.runtime.onnx"):
        model = OrtModel(arcface_path, OrtConfig(intra_op_threads=2), "arcface")
    assert model.provider == CPU
    assert model.is_standin
    lines = [r.getMessage() for r in caplog.records if r.name == "mirage.runtime.onnx"]
    assert len(lines) == 1
    assert "arcface (stand-in)" in lines[0] and "provider CPUExecutionProvider" in lines[0]
    options = model._session.get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert model.input_names == ["input.1"] and model.output_names == ["683"]
    assert model.dynamic_batch
    out = model.run({"input.1": np.zeros((2, 3, 112, 112), np.float32)})
    assert len(out) == 1 and out[0].shape == (2, 512)


def test_missing_or_broken_model_is_model_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="not found"):
        OrtModel(tmp_path / "nothing_standin.onnx", OrtConfig(), "nothing")
    broken = tmp_path / "broken_standin.onnx"
    broken.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelUnavailableError, match="could not be loaded"):
        OrtModel(broken, OrtConfig(), "broken")
