"""The build-time accuracy check of engines against fp32 ONNX Runtime, on real aligned faces.

The engine itself needs a GPU (tests/gpu/test_gpu_path.py); here the comparison runs for
real between ONNX Runtime sessions: the fp16 stand-in against its fp32 twin (passes, as a
good fp16 engine must) and deliberately broken outputs (NaNs, a wrong scale), which are
refused with the figure in the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from mirage.errors import ModelUnavailableError
from mirage.runtime.accuracy import (
    AccuracyLimits,
    EngineAccuracyError,
    check_against_onnxruntime,
    compare_outputs,
    reference_feeds,
)
from mirage.runtime.onnx import OrtConfig, OrtModel
from standins.models import (
    build_arcface_standin,
    build_inswapper_standin,
    build_scrfd_standin,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("acc")


def _runner(path: Path):  # noqa: ANN202 - a small closure
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, dict(feeds))))

    return run


def test_real_face_inputs_are_preprocessed_like_serving(folder: Path) -> None:
    swapper = OrtModel(build_inswapper_standin(folder / "inswapper_standin.onnx", dynamic=True), OrtConfig(), "inswapper_128")
    feeds, samples = reference_feeds("inswapper_128", swapper.inputs, max_batch=8)
    target, source = feeds["target"], feeds["source"]
    assert target.shape[0] >= 6 and target.shape[1:] == (3, 128, 128) and source.shape == (target.shape[0], 512)
    assert target.min() >= 0.0 and target.max() <= 1.0 and target.std() > 0.1  # real pixels, not blank
    np.testing.assert_allclose(np.linalg.norm(source, axis=1), 1.0, rtol=1e-5)
    assert samples == f"{target.shape[0]} real aligned faces (128 px)"
    arcface = OrtModel(build_arcface_standin(folder / "arcface_standin.onnx"), OrtConfig(), "arcface_w600k_r50")
    blob = reference_feeds("arcface_w600k_r50", arcface.inputs)[0]["input.1"]
    assert blob.shape[1:] == (3, 112, 112) and blob.min() >= -1.0 and blob.max() <= 1.0
    scrfd = OrtModel(build_scrfd_standin(folder / "scrfd_standin.onnx", dynamic=True), OrtConfig(), "scrfd_10g")
    feeds, samples = reference_feeds("scrfd_10g", scrfd.inputs, sample_shapes={"input.1": (3, 640, 640)})
    assert feeds["input.1"].shape[1:] == (3, 640, 640) and "real photos" in samples
    with pytest.raises(ModelUnavailableError, match="No real-face inputs"):
        reference_feeds("gfpgan", arcface.inputs)


def test_an_fp16_twin_passes_with_its_figures(folder: Path) -> None:
    fp32 = build_inswapper_standin(folder / "inswapper_fp32_standin.onnx", dynamic=True)
    fp16 = build_inswapper_standin(folder / "inswapper_fp16_standin.onnx", dynamic=True, fp16=True)
    model = OrtModel(fp32, OrtConfig(), "inswapper_128")
    report = check_against_onnxruntime("inswapper_128", fp32, _runner(fp16), model.inputs, what="fp16 stand-in")
    assert 0 < report.worst.mean_rel < 0.01 and report.worst.max_abs < 0.05
    assert report.describe().startswith("matches fp32 ONNX Runtime on ") and "real aligned faces" in report.describe()


def test_nan_and_large_errors_are_refused_with_the_figure(folder: Path) -> None:
    fp32 = build_inswapper_standin(folder / "inswapper_fp32_standin.onnx", dynamic=True)
    model = OrtModel(fp32, OrtConfig(), "inswapper_128")
    good = _runner(fp32)

    def with_nans(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = good(feeds)["output"].copy()
        out[0, 0, :3, :4] = np.nan
        return {"output": out}

    def washed_out(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"output": good(feeds)["output"] * 0.7 + 0.3}

    with pytest.raises(EngineAccuracyError, match=r"output 'output' has 12 NaN/Inf values of \d+ on \d+ real aligned faces"):
        check_against_onnxruntime("inswapper_128_fp16", fp32, with_nans, model.inputs, what="fp16 TensorRT engine")
    with pytest.raises(EngineAccuracyError) as refused:
        check_against_onnxruntime("inswapper_128_fp16", fp32, washed_out, model.inputs, what="fp16 TensorRT engine")
    message = str(refused.value)
    assert message.startswith("The fp16 TensorRT engine for inswapper_128_fp16 is refused: output 'output' differs from fp32 ONNX Runtime by mean ")
    assert "limits 2% / 25%" in message and "real aligned faces" in message
    assert isinstance(refused.value, ModelUnavailableError)  # so the model falls back to ONNX Runtime


def test_compare_outputs_limits_and_shapes() -> None:
    ref = {"y": np.linspace(0.0, 1.0, 100, dtype=np.float32)}
    ok = compare_outputs("m", {"y": ref["y"] + 1e-3}, ref, "test inputs")
    assert ok.worst.mean_abs == pytest.approx(1e-3, rel=1e-3)
    with pytest.raises(EngineAccuracyError, match="mean 4.00% / max 2.00%"):
        compare_outputs("m", {"y": ref["y"] + 0.02}, ref, "test inputs", AccuracyLimits(mean_rel=0.03, max_rel=0.5))
    with pytest.raises(EngineAccuracyError, match="has shape"):
        compare_outputs("m", {"y": ref["y"][:50]}, ref, "test inputs")
    with pytest.raises(EngineAccuracyError, match="gives no output 'y'"):
        compare_outputs("m", {}, ref, "test inputs")
