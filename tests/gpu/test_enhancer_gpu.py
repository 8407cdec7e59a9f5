"""The enhancers' GPU path (issue 11), ready for the first machine with a GPU.

- each enhancer stand-in's dynamic-batch rewrite compiles to a batch 1..8 TensorRT engine whose
  batch-N output equals ONNX Runtime CPU's (CodeFormer: its float64 ``weight`` pinned to [1],
  neither sliced nor batched by the engine runner) — or, where TensorRT's parser refuses the
  float64 input, the refusal is a ModelUnavailableError (what ``models compile`` reports);
- an enhancer loaded through the real loading code picks ONNX Runtime CUDA (no engine) and says why;
- figures: the whole enhance() call per face at batch 1 and 8 on CUDA (printed with ``-s``).

Run: ``pytest tests/gpu/test_enhancer_gpu.py -s``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from mirage.enhance import ENHANCER_NAMES, EnhanceItem, EnhancerBank, EnhancerConfig
from mirage.errors import ModelUnavailableError
from mirage.geometry.align import arcface_template
from mirage.runtime.onnx import OrtConfig, OrtModel
from mirage.runtime.select import RuntimeConfig, probe_accelerators
from mirage.runtime.served import SHARED_INPUTS, served_onnx
from mirage.runtime.tensorrt import BatchProfile, compile_model, make_engine_key
from mirage.runtime.tensorrt_model import TensorRTModel
from standins.models import build_enhancer_standin, write_enhancer_standins

PROFILE = BatchProfile.up_to(8)


@pytest.mark.parametrize("name", ENHANCER_NAMES)
def test_enhancer_engine_matches_onnxruntime_at_batch_n(tmp_path: Path, name: str) -> None:
    acc = probe_accelerators()
    assert acc.gpu is not None and acc.tensorrt_version is not None
    src = build_enhancer_standin(tmp_path / f"{name}.standin.onnx", name)
    served = served_onnx(name, src)
    assert served.name.endswith(".batch-dynamic.onnx")
    key = make_engine_key(served, name, acc.gpu, acc.tensorrt_version, "fp32", PROFILE, cuda_version=acc.cuda_runtime or "")
    try:
        built = compile_model(name, served, tmp_path / "engines", key)
    except ModelUnavailableError as exc:
        if name in SHARED_INPUTS:
            pytest.xfail(f"TensorRT refused {name}'s float64 weight input: {exc}")
        raise
    engine = TensorRTModel(built.path, served, name, key)
    cpu = OrtModel(served, OrtConfig(allow_cuda=False), name)
    size = cpu.inputs[0].shape[2]
    x = np.random.default_rng(0).uniform(-1, 1, (5, 3, size, size)).astype(np.float32)
    feeds = {"input": x, **({"weight": np.array([0.3], np.float64)} if name in SHARED_INPUTS else {})}
    got, want = engine.run(feeds)[0], cpu.run(feeds)[0]
    assert got.shape == want.shape == (5, 3, size, size)
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_enhancers_on_cuda_and_their_cost_per_face(tmp_path: Path) -> None:
    manifest = write_enhancer_standins(tmp_path)
    bank = EnhancerBank.load(EnhancerConfig(models_dir=str(tmp_path), manifest=str(manifest)), runtime=RuntimeConfig())
    assert bank.available() == list(ENHANCER_NAMES)
    rng = np.random.default_rng(1)
    for name in ENHANCER_NAMES:
        info = bank.enhancers[name].info  # type: ignore[attr-defined]
        assert info.runtime == "cuda" and "not TensorRT" in info.runtime_reason, info.runtime_reason
        for batch in (1, 8):
            items = [EnhanceItem(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), arcface_template(128)) for _ in range(batch)]
            bank.enhancers[name].enhance(items)
            started = time.perf_counter()
            for _ in range(10):
                bank.enhancers[name].enhance(items)
            ms = (time.perf_counter() - started) * 100.0 / batch
            print(f"\n{name} (stand-in) on CUDA, batch {batch}: {ms:.2f} ms per face (whole enhance call)")
