"""The neural swap path through the pipeline, on stand-in models (DESIGN.md §4).

The live path takes InSwapper's 5 keypoints from the FaceMesh; the reference
goes through SCRFD (a stand-in that reports a known face) and ArcFace.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mirage.detect.scrfd import ScrfdDetector
from mirage.identity.arcface import ArcFaceEmbedder
from mirage.pipeline import FacePipeline, PipelineConfig
from mirage.runtime.onnx import OrtConfig, OrtModel
from mirage.swap.inswapper import InSwapper, InSwapperIdentityBuilder
from mirage.swap.neural import NeuralSwap, batch_dynamic_copy
from mirage.types import LatentIdentity
from standins.faces import astronaut_bgr
from standins.models import (
    build_arcface_standin,
    build_inswapper_standin,
    build_scrfd_constant_standin,
    scrfd_raw_outputs,
)


@pytest.fixture(scope="module")
def neural(tmp_path_factory: pytest.TempPathFactory) -> NeuralSwap:
    d = tmp_path_factory.mktemp("standins")
    ort = OrtConfig()
    box = np.array([200.0, 150.0, 420.0, 400.0])
    kps = np.array([[260, 240], [360, 240], [310, 300], [270, 350], [350, 350]], dtype=np.float64)
    scrfd = build_scrfd_constant_standin(d / "scrfd_standin.onnx", scrfd_raw_outputs([(box, kps, 0.9)]))
    arcface = build_arcface_standin(d / "arcface_standin.onnx")
    inswapper_path = build_inswapper_standin(d / "inswapper_standin.onnx")
    swapper = InSwapper(OrtModel(batch_dynamic_copy(inswapper_path), ort, "inswapper_standin"))
    builder = InSwapperIdentityBuilder(
        ScrfdDetector(OrtModel(scrfd, ort, "scrfd_standin")), ArcFaceEmbedder(OrtModel(arcface, ort, "arcface_standin")), swapper
    )
    return NeuralSwap(swapper=swapper, identity_builder=builder)


def test_dynamic_copy_is_made_once_and_proven(neural: NeuralSwap) -> None:
    assert neural.swapper.model.dynamic_batch
    assert neural.swapper.model.path.name.endswith(".batch-dynamic.onnx")
    assert "standin" in neural.swapper.model.path.name


def test_inswapper_pipeline_swaps_the_tracked_face(neural: NeuralSwap) -> None:
    pipeline = FacePipeline(PipelineConfig(swapper="inswapper", track=False), neural=neural)
    frame = astronaut_bgr()
    identity = pipeline.build_identity(frame).identity
    assert isinstance(identity, LatentIdentity)
    assert identity.latent.shape == (512,)
    assert abs(float(np.linalg.norm(identity.latent)) - 1.0) < 1e-4
    result = pipeline.process(frame, identity, t=0.0)
    assert len(result.faces) == 1
    crop = neural.swapper.prepare(frame, np.zeros((5, 2)))  # shape only
    assert crop.image.shape == (128, 128, 3)
    changed = np.abs(result.frame.astype(int) - frame.astype(int)).sum(axis=2) > 0
    assert changed.sum() > 1000, "the stand-in swap changed nothing"
    ys, xs = np.nonzero(changed)
    face = result.faces[0].xy
    assert face[:, 0].min() - 40 <= xs.min() and xs.max() <= face[:, 0].max() + 40
    assert face[:, 1].min() - 40 <= ys.min() and ys.max() <= face[:, 1].max() + 40


def test_pipeline_refuses_inswapper_without_models() -> None:
    from mirage.errors import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="InSwapper"):
        FacePipeline(PipelineConfig(swapper="inswapper"))


def test_rewrite_is_cached(tmp_path: Path) -> None:
    path = build_inswapper_standin(tmp_path / "inswapper_standin.onnx")
    first = batch_dynamic_copy(path)
    stamp = first.stat().st_mtime_ns
    assert batch_dynamic_copy(path) == first
    assert first.stat().st_mtime_ns == stamp


def test_rewrite_that_mixes_the_batch_falls_back_to_batch_one(tmp_path: Path) -> None:
    """A graph that averages over the batch axis gives other results at batch 2: not used."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("target_standin", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 4, 4])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    nodes = [
        helper.make_node("ReduceMean", ["target_standin", "axes"], ["mean"], keepdims=1),
        helper.make_node("Sub", ["target_standin", "mean"], ["centred"]),
        helper.make_node("Add", ["centred", "target_standin"], ["output"]),
    ]
    graph = helper.make_graph(nodes, "batch_mixing_standin", [x], [y], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp_path / "mixing_standin.onnx"
    onnx.save(model, str(path))
    assert batch_dynamic_copy(path) == path
    assert not (tmp_path / "mixing_standin.batch-dynamic.onnx").exists()
