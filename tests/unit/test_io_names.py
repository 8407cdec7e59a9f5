"""Inputs and outputs by name, in the ONNX file's order, for every runtime; SCRFD heads by name.

TensorRT lists an engine's I/O tensors in an order of its own (InsightFace-REST #37:
SCRFD's outputs came back permuted). These tests use SCRFD's 9-output stand-in: the
engine-order mapping is fed a shuffled tensor list, and the detector is run behind a
runtime that lists (and by default returns) its outputs in a shuffled order, as an
engine may; the detections must not change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest

from mirage.detect.scrfd import ScrfdDetector, decode_outputs, head_names
from mirage.errors import ModelUnavailableError
from mirage.runtime.onnx import (
    ModelInfo,
    OrtConfig,
    OrtModel,
    TensorInfo,
    onnx_io_names,
    order_like_onnx,
)
from mirage.runtime.tensorrt_model import engine_io_in_onnx_order
from standins.faces import astronaut_bgr
from standins.models import (
    build_scrfd_constant_standin,
    build_scrfd_standin,
    scrfd_raw_outputs,
)

SCRFD_NAMES = [f"{448 + i}" for i in range(9)]
SHUFFLE = [4, 8, 0, 6, 2, 7, 1, 5, 3]  # a permutation that moves every head


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("io")


@pytest.fixture(scope="module")
def encoded_scrfd(folder: Path) -> Path:
    """A 9-output SCRFD stand-in that always 'detects' two known faces (in 640 px detector input)."""
    faces = [
        (np.array([100, 120, 228, 280], np.float32), np.array([[140, 180], [190, 180], [165, 210], [145, 245], [188, 245]], np.float32), 0.92),
        (np.array([380, 90, 540, 300], np.float32), np.array([[420, 160], [500, 160], [460, 200], [430, 250], [495, 250]], np.float32), 0.81),
    ]
    return build_scrfd_constant_standin(folder / "scrfd_encoded_standin.onnx", scrfd_raw_outputs(faces))


class EngineOrder(ModelInfo):
    """A runtime that lists its outputs in its own order and returns them so when not asked by name:
    the behaviour TensorRT is allowed to have. Runs the real ONNX Runtime session underneath."""

    def __init__(self, model: OrtModel, order: Sequence[int]) -> None:
        self._model = model
        self.name, self.path = model.name, model.path
        self.inputs = model.inputs
        self.outputs = tuple(model.outputs[i] for i in order)

    @property
    def dynamic_batch(self) -> bool:
        return self._model.dynamic_batch

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        return self._model.run(feeds, list(output_names) if output_names is not None else self.output_names)


def _info(name: str, channels: int) -> TensorInfo:
    return TensorInfo(name, ("batch", None, channels), np.float32)


def test_engine_io_is_put_in_the_onnx_order_by_name(folder: Path) -> None:
    path = build_scrfd_standin(folder / "scrfd_standin.onnx")
    inputs, outputs = onnx_io_names(path)
    assert inputs == ("input.1",) and list(outputs) == SCRFD_NAMES
    channels = [1, 1, 1, 4, 4, 4, 10, 10, 10]
    engine_listing = [(TensorInfo("input.1", ("batch", 3, 640, 640), np.float32), True)]
    engine_listing += [(_info(SCRFD_NAMES[i], channels[i]), False) for i in SHUFFLE]
    engine_listing.reverse()  # the input last, too
    ins, outs = engine_io_in_onnx_order(engine_listing, path, "scrfd_10g")
    assert [i.name for i in ins] == ["input.1"]
    assert [o.name for o in outs] == SCRFD_NAMES
    assert [o.shape[-1] for o in outs] == channels  # each name kept its own tensor description


def test_an_engine_whose_names_do_not_match_is_refused(folder: Path) -> None:
    path = build_scrfd_standin(folder / "scrfd_standin.onnx")
    listing = [(TensorInfo("input.1", ("batch", 3, 640, 640), np.float32), True)]
    listing += [(_info(n, 1), False) for n in SCRFD_NAMES[:8]] + [(_info("renamed", 10), False)]
    with pytest.raises(ModelUnavailableError, match=r"missing \['456'\], unknown \['renamed'\]"):
        engine_io_in_onnx_order(listing, path, "scrfd_10g")
    with pytest.raises(ModelUnavailableError, match="do not match its ONNX file by name"):
        order_like_onnx([_info("a", 1)], ["a", "b"], "outputs", "m")


def test_onnx_runtime_model_lists_outputs_in_the_file_order_and_runs_by_name(encoded_scrfd: Path) -> None:
    model = OrtModel(encoded_scrfd, OrtConfig(), "scrfd_10g")
    assert model.output_names == SCRFD_NAMES
    blob = np.zeros((1, 3, 640, 640), np.float32)
    every = model.run({"input.1": blob})
    picked = model.run({"input.1": blob}, [SCRFD_NAMES[7], SCRFD_NAMES[0]])
    np.testing.assert_array_equal(picked[0], every[7])
    np.testing.assert_array_equal(picked[1], every[0])


def test_scrfd_decodes_the_same_faces_whatever_order_the_runtime_lists(encoded_scrfd: Path) -> None:
    model = OrtModel(encoded_scrfd, OrtConfig(), "scrfd_10g")
    frame = astronaut_bgr()
    plain = ScrfdDetector(model).detect([frame])[0]
    shuffled_runtime = EngineOrder(model, SHUFFLE)
    detector = ScrfdDetector(shuffled_runtime)
    assert detector.heads == SCRFD_NAMES  # asked for by name, in SCRFD's layout
    moved = detector.detect([frame])[0]
    assert len(plain) == len(moved) == 2
    for a, b in zip(plain, moved):
        np.testing.assert_allclose(a.box, b.box, atol=1e-4)
        np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-4)
        assert a.score == pytest.approx(b.score)
    # What reading by the runtime's position would have done: heads mixed up, refused loudly.
    raw = shuffled_runtime.run({"input.1": detector.blob([detector.prepare(frame)])})
    with pytest.raises(ModelUnavailableError, match="not in SCRFD's layout"):
        decode_outputs(raw, 640, 640, 0.5, 0.4)


def _renamed(src: Path, dst: Path, names: dict[str, str], order: Sequence[int]) -> Path:
    model = onnx.load(str(src))
    for node in model.graph.node:
        node.output[:] = [names.get(o, o) for o in node.output]
    outputs = list(model.graph.output)
    for value in outputs:
        value.name = names.get(value.name, value.name)
    del model.graph.output[:]
    model.graph.output.extend(outputs[i] for i in order)
    onnx.save(model, str(dst))
    return dst


def test_named_heads_are_used_by_their_names_in_any_file_order(encoded_scrfd: Path, folder: Path) -> None:
    semantic = [f"{kind}_{stride}" for kind in ("score", "bbox", "kps") for stride in (8, 16, 32)]
    path = _renamed(encoded_scrfd, folder / "scrfd_named_standin.onnx", dict(zip(SCRFD_NAMES, semantic)), SHUFFLE)
    model = OrtModel(path, OrtConfig(), "scrfd_10g")
    assert model.output_names == [semantic[i] for i in SHUFFLE]  # the file's (shuffled) order
    detector = ScrfdDetector(model)
    assert detector.heads == semantic
    reference = ScrfdDetector(OrtModel(encoded_scrfd, OrtConfig(), "scrfd_10g")).detect([astronaut_bgr()])[0]
    got = detector.detect([astronaut_bgr()])[0]
    assert len(got) == len(reference) == 2
    for a, b in zip(reference, got):
        np.testing.assert_allclose(a.box, b.box, atol=1e-4)


def test_numeric_heads_out_of_layout_are_refused_with_the_reason(encoded_scrfd: Path, folder: Path) -> None:
    path = _renamed(encoded_scrfd, folder / "scrfd_permuted_standin.onnx", {}, SHUFFLE)
    model = OrtModel(path, OrtConfig(), "scrfd_10g")
    with pytest.raises(ModelUnavailableError, match="channels, not"):
        ScrfdDetector(model)
    with pytest.raises(ModelUnavailableError, match="has no score_32, bbox_32, kps_32"):
        head_names([_info(f"{k}_{s}", 1) for k in ("score", "bbox", "kps") for s in (8, 16, 8)])
