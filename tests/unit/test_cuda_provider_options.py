"""CUDA provider options (heuristic cuDNN algorithm search) and the warm-up of every batch size.

This machine's onnxruntime has no CUDA provider, so the options are checked where they are
made and where they are handed to ``InferenceSession`` (``OrtModel.requested``); the live
session's own report of them is checked on a GPU (tests/gpu/test_gpu_path.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from mirage.runtime.onnx import (
    CPU,
    CUDA,
    CUDA_PROVIDER_OPTIONS,
    OrtConfig,
    OrtModel,
    choose_providers,
    provider_name,
)
from mirage.runtime.select import warm_up
from standins.models import build_inswapper_standin, build_scrfd_standin


def _cuda_options(providers: list) -> dict[str, str]:
    entry = next(p for p in providers if provider_name(p) == CUDA)
    assert isinstance(entry, tuple)
    return entry[1]


def test_cuda_provider_asks_for_heuristic_conv_algorithm_search() -> None:
    options = _cuda_options(choose_providers(OrtConfig(), available=[CUDA, CPU]))
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"  # ONNX Runtime's default is EXHAUSTIVE
    assert options == {"device_id": "0", **CUDA_PROVIDER_OPTIONS}
    assert CUDA not in [provider_name(p) for p in choose_providers(OrtConfig(allow_cuda=False), available=[CUDA, CPU])]


def test_the_options_reach_the_session_request(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = build_inswapper_standin(tmp_path / "inswapper_standin.onnx", dynamic=True)
    requested = choose_providers(OrtConfig(), available=[CUDA, CPU])
    caplog.set_level(logging.INFO, logger="mirage.runtime.onnx")
    model = OrtModel(path, OrtConfig(), "inswapper_128", providers=requested)
    assert _cuda_options(model.requested)["cudnn_conv_algo_search"] == "HEURISTIC"
    # Without a CUDA provider here ONNX Runtime keeps the CPU, and the model says so.
    assert model.provider == CPU and CPU in model.provider_options()
    assert any("requested CUDAExecutionProvider, CPUExecutionProvider" in r.getMessage() for r in caplog.records)


def test_warm_up_runs_every_batch_size_once(tmp_path: Path) -> None:
    swapper = OrtModel(build_inswapper_standin(tmp_path / "inswapper_standin.onnx", dynamic=True), OrtConfig(), "inswapper_128")
    timings = warm_up(swapper, range(1, 5))
    assert list(timings) == [1, 2, 3, 4] and all(ms > 0 for ms in timings.values())
    # SCRFD's input size is open in its ONNX file: warm-up takes the served size.
    scrfd = OrtModel(build_scrfd_standin(tmp_path / "scrfd_standin.onnx", dynamic=True), OrtConfig(), "scrfd_10g")
    with pytest.raises(Exception, match="open dimensions"):
        warm_up(scrfd, [1])
    assert list(warm_up(scrfd, [1, 2], {"input.1": (3, 320, 320)})) == [1, 2]
    assert np.isfinite(list(warm_up(scrfd, [1], {"input.1": (3, 64, 64)}).values())).all()
