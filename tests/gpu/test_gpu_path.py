"""The GPU path's points that need a GPU (issue 15), ready for the first machine with one.

- an engine built from SCRFD's 9-output stand-in lists its I/O in the ONNX order and decodes
  the same boxes as ONNX Runtime CPU;
- the build-time accuracy check passes a good fp16 engine with its figures and refuses one
  that misses the limits, without publishing it;
- the driver check on a real driver, and its one start-up line;
- ONNX Runtime CUDA runs with heuristic cuDNN algorithm search (first-call figures printed);
- a CUDA failure while opening an engine falls back instead of killing the replica.

Run: ``pytest tests/gpu -s`` (``-s`` shows the figures).
"""

from __future__ import annotations

import ctypes
import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from mirage.detect.scrfd import ScrfdConfig, ScrfdDetector
from mirage.runtime.accuracy import AccuracyLimits, EngineAccuracyError, engine_check
from mirage.runtime.batch_rewrite import make_batch_dynamic
from mirage.runtime.cuda import (
    CudaRuntime,
    CudaUnavailableError,
    driver_problem,
    driver_release,
    probe_gpu,
)
from mirage.runtime.onnx import CUDA, OrtConfig, OrtModel, onnx_io_names
from mirage.runtime.select import (
    RuntimeConfig,
    load_model,
    probe_accelerators,
    startup_line,
)
from mirage.runtime.tensorrt import (
    BatchProfile,
    compile_model,
    engine_filename,
    make_engine_key,
)
from mirage.runtime.tensorrt_model import TensorRTModel
from standins.faces import astronaut_bgr, t1_bgr
from standins.models import build_inswapper_standin, build_scrfd_standin

PROFILE = BatchProfile.up_to(8)
SCRFD_SHAPES = {"input.1": (3, 640, 640)}


def _key(path: Path, name: str, precision: str, shapes: dict | None = None):  # noqa: ANN202
    acc = probe_accelerators()
    assert acc.gpu is not None and acc.tensorrt_version is not None
    return make_engine_key(path, name, acc.gpu, acc.tensorrt_version, precision, PROFILE, shapes, cuda_version=acc.cuda_runtime or "")


@pytest.fixture(scope="module")
def scrfd_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scrfd")
    dynamic = folder / "scrfd_10g_standin.batch-dynamic.onnx"
    make_batch_dynamic(build_scrfd_standin(folder / "scrfd_10g_standin.onnx"), dynamic)
    return dynamic


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_scrfd_engine_maps_outputs_by_name_and_decodes_like_onnxruntime(
    scrfd_onnx: Path, tmp_path: Path, precision: str
) -> None:
    key = _key(scrfd_onnx, "scrfd_10g", precision, SCRFD_SHAPES)
    built = compile_model("scrfd_10g", scrfd_onnx, tmp_path, key)
    engine = TensorRTModel(built.path, scrfd_onnx, "scrfd_10g", key)
    _, onnx_outputs = onnx_io_names(scrfd_onnx)
    assert engine.output_names == list(onnx_outputs)
    raw_order = [engine._engine.get_tensor_name(i) for i in range(engine._engine.num_io_tensors)]
    print(f"\n{precision} engine's own I/O order: {raw_order}; ONNX outputs: {list(onnx_outputs)}")
    cpu = OrtModel(scrfd_onnx, OrtConfig(allow_cuda=False), "scrfd_10g")
    rng = np.random.default_rng(3)
    blob = rng.uniform(-1, 1, (2, 3, 640, 640)).astype(np.float32)
    want = dict(zip(cpu.output_names, cpu.run({"input.1": blob})))
    got = dict(zip(engine.output_names, engine.run({"input.1": blob})))
    atol = 1e-4 if precision == "fp32" else 2e-2
    for name in onnx_outputs:
        np.testing.assert_allclose(got[name], want[name], atol=atol, rtol=0, err_msg=name)
    config = ScrfdConfig(score_threshold=0.2)  # random weights: 24 + 3 detections on ONNX Runtime CPU
    frames = [astronaut_bgr(), t1_bgr()]
    on_cpu = ScrfdDetector(cpu, config).detect(frames)
    on_trt = ScrfdDetector(engine, config).detect(frames)
    assert sum(len(d) for d in on_cpu) > 0
    slack = 1 if precision == "fp32" else 3  # scores within rounding of the threshold may flip
    box_atol = 0.05 if precision == "fp32" else 1.0
    for a, b in zip(on_cpu, on_trt):
        assert abs(len(a) - len(b)) <= slack
        for da, db in zip(a[:3], b[:3]):  # the strongest detections, highest score first
            np.testing.assert_allclose(da.box, db.box, atol=box_atol)
            np.testing.assert_allclose(da.keypoints, db.keypoints, atol=box_atol)


def test_accuracy_check_passes_a_good_fp16_engine_and_refuses_beyond_limits(tmp_path: Path) -> None:
    onnx_path = tmp_path / "inswapper_128_standin.batch-dynamic.onnx"
    make_batch_dynamic(build_inswapper_standin(tmp_path / "inswapper_128_standin.onnx"), onnx_path)
    key = _key(onnx_path, "inswapper_128", "fp16")
    engines = tmp_path / "engines"
    result = compile_model("inswapper_128", onnx_path, engines, key, check=engine_check("inswapper_128", onnx_path, 8))
    print(f"\nfp16 stand-in engine: {result.check}")
    assert result.action == "built" and result.check.startswith("matches fp32 ONNX Runtime on ")
    strict = engine_check("inswapper_128", onnx_path, 8, limits=AccuracyLimits(mean_rel=1e-9, max_rel=1e-9))
    with pytest.raises(EngineAccuracyError, match=r"fp16 TensorRT engine for inswapper_128 is refused: .* by mean .*real aligned faces"):
        compile_model("inswapper_128", onnx_path, tmp_path / "strict", key, check=strict)
    assert not (tmp_path / "strict" / engine_filename("inswapper_128", key)).exists()
    assert not list((tmp_path / "strict").glob("*.candidate"))


def test_driver_check_on_this_driver(caplog: pytest.LogCaptureFixture) -> None:
    gpu, reason = probe_gpu()
    assert gpu is not None, reason
    release = driver_release()
    lib = ctypes.CDLL("libcuda.so.1")
    supported = ctypes.c_int(0)
    assert lib.cuDriverGetVersion(ctypes.byref(supported)) == 0
    print(f"\ndriver {release}, supports CUDA {supported.value}; {startup_line(probe_accelerators())}")
    assert release and supported.value >= 13000, "the GPU image needs CUDA 13 (R580+)"
    line = driver_problem(supported.value, (99, 0, "a future wheel"), release)
    assert line is not None and release in line and "needs CUDA 99.0" in line
    assert startup_line(probe_accelerators()).startswith(f"GPU: {gpu.name} (compute {gpu.compute_capability}), driver OK")


@pytest.mark.skipif(CUDA not in ort.get_available_providers(), reason="onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
def test_onnxruntime_cuda_runs_with_heuristic_conv_search(tmp_path: Path) -> None:
    onnx_path = build_inswapper_standin(tmp_path / "inswapper_standin.onnx", dynamic=True)
    model = OrtModel(onnx_path, OrtConfig(), "inswapper_128")
    assert model.provider == CUDA
    assert model.provider_options()[CUDA]["cudnn_conv_algo_search"] == "HEURISTIC"
    figures = {}
    for search in ("EXHAUSTIVE", "HEURISTIC"):
        providers = [(CUDA, {"device_id": "0", "cudnn_conv_algo_search": search}), "CPUExecutionProvider"]
        session = ort.InferenceSession(str(onnx_path), providers=providers)
        firsts = []
        for batch in range(1, 9):
            feeds = {"target": np.zeros((batch, 3, 128, 128), np.float32), "source": np.zeros((batch, 512), np.float32)}
            started = time.perf_counter()
            session.run(None, feeds)
            firsts.append(round((time.perf_counter() - started) * 1000, 1))
        figures[search] = firsts
    print(f"\nfirst run per batch size 1..8 (ms): {figures}")


def test_a_cuda_failure_opening_an_engine_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    onnx_path = tmp_path / "inswapper_128_standin.batch-dynamic.onnx"
    make_batch_dynamic(build_inswapper_standin(tmp_path / "inswapper_128_standin.onnx"), onnx_path)
    config = RuntimeConfig(precision="fp16", profile=PROFILE, warm_cuda=False)
    compile_model("inswapper_128", onnx_path, tmp_path, _key(onnx_path, "inswapper_128", "fp16"))

    def no_stream(self: CudaRuntime) -> int:
        raise CudaUnavailableError("CUDA cudaStreamCreate failed: out of memory")

    monkeypatch.setattr(CudaRuntime, "stream_create", no_stream)
    caplog.set_level(logging.INFO, logger="mirage.runtime.select")
    model, choice = load_model("inswapper_128", onnx_path, tmp_path, config, OrtConfig())
    assert choice.kind in ("cuda", "cpu") and "cudaStreamCreate failed" in choice.reason
    assert any("TensorRT engine not loaded" in r.getMessage() for r in caplog.records)
    out = model.run({"target": np.zeros((2, 3, 128, 128), np.float32), "source": np.zeros((2, 512), np.float32)})[0]
    assert out.shape == (2, 3, 128, 128)
