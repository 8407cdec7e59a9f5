"""A TensorRT engine built from the InSwapper stand-in gives ONNX Runtime CPU's outputs.

The stand-in has InSwapper's exact signature (``target`` [N,3,128,128] + ``source``
[N,512] → ``output`` [N,3,128,128]) and its batch-pinned style reshape, made
batch-dynamic by the same rewrite the real file gets; the engine is compiled with
the production path (key, profile 1..8, header, integrity check) and run through
``TensorRTModel``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from mirage.runtime.batch_rewrite import make_batch_dynamic
from mirage.runtime.onnx import OrtConfig
from mirage.runtime.select import RuntimeConfig, load_model, probe_accelerators
from mirage.runtime.tensorrt import BatchProfile, compile_model, make_engine_key, read_engine_header
from mirage.runtime.tensorrt_model import TensorRTModel
from standins.models import build_inswapper_standin

NAME = "inswapper_128"
PROFILE = BatchProfile.up_to(8)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gpu")
    fixed = build_inswapper_standin(folder / "inswapper_128_standin.onnx")
    dynamic = folder / "inswapper_128_standin.batch-dynamic.onnx"
    make_batch_dynamic(fixed, dynamic)
    return dynamic


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


def _engine(onnx_path: Path, engine_dir: Path, precision: str) -> TensorRTModel:
    acc = probe_accelerators()
    assert acc.gpu is not None and acc.tensorrt_version is not None
    key = make_engine_key(onnx_path, NAME, acc.gpu, acc.tensorrt_version, precision, PROFILE, cuda_version=acc.cuda_runtime or "")
    result = compile_model(NAME, onnx_path, engine_dir, key)
    header = read_engine_header(result.path)
    assert header.key == key and header.model == NAME
    return TensorRTModel(result.path, onnx_path, NAME, key)


@pytest.fixture(scope="module")
def fp16_engine(onnx_path: Path, engine_dir: Path) -> TensorRTModel:
    return _engine(onnx_path, engine_dir, "fp16")


def _inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    source = rng.standard_normal((batch, 512)).astype(np.float32)
    source /= np.linalg.norm(source, axis=1, keepdims=True)
    return {"target": rng.random((batch, 3, 128, 128), dtype=np.float32), "source": source}


def _cpu_reference(onnx_path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["output"], feeds)[0]


@pytest.mark.parametrize("batch", [1, 4, 8])
def test_fp16_engine_matches_onnxruntime_cpu(fp16_engine: TensorRTModel, onnx_path: Path, batch: int) -> None:
    feeds = _inputs(batch, seed=batch)
    expected = _cpu_reference(onnx_path, feeds)
    (got,) = fp16_engine.run(feeds)
    assert got.shape == expected.shape == (batch, 3, 128, 128)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-2)  # fp16: ~3 significant digits
    assert float(np.abs(got - expected).mean()) < 2e-3
    assert float(np.abs(expected).mean()) > 0.05  # the comparison is not between two blank outputs


def test_batches_beyond_the_profile_run_in_chunks(fp16_engine: TensorRTModel, onnx_path: Path) -> None:
    feeds = _inputs(11, seed=11)
    (got,) = fp16_engine.run(feeds)
    np.testing.assert_allclose(got, _cpu_reference(onnx_path, feeds), rtol=0, atol=1e-2)


def test_fp32_engine_matches_closely(onnx_path: Path, engine_dir: Path) -> None:
    model = _engine(onnx_path, engine_dir, "fp32")
    feeds = _inputs(4, seed=40)
    (got,) = model.run(feeds)
    np.testing.assert_allclose(got, _cpu_reference(onnx_path, feeds), rtol=0, atol=1e-4)


def test_serving_selects_the_compiled_engine(fp16_engine: TensorRTModel, onnx_path: Path, engine_dir: Path) -> None:
    config = RuntimeConfig(precision="fp16", profile=PROFILE)
    model, choice = load_model(NAME, onnx_path, engine_dir, config, OrtConfig())
    assert choice.kind == "tensorrt", choice.reason
    assert isinstance(model, TensorRTModel)
    feeds = _inputs(2, seed=2)
    np.testing.assert_allclose(model.run(feeds)[0], fp16_engine.run(feeds)[0], rtol=0, atol=1e-6)
