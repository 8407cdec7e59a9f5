"""Dynamic-batch rewrite of batch-1 exports, proven with ONNX Runtime: batch N == N x batch 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mirage.errors import ModelUnavailableError
from mirage.runtime.batch_rewrite import check_batch_equivalence, make_batch_dynamic
from mirage.runtime.onnx import OrtConfig, OrtModel
from standins.models import build_inswapper_standin, build_scrfd_standin

CONFIG = OrtConfig()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rewrite")


def test_inswapper_batch_n_equals_n_single_runs(folder: Path) -> None:
    src = build_inswapper_standin(folder / "inswapper_128_standin.onnx")
    dst = folder / "inswapper_128_dynamic_standin.onnx"
    make_batch_dynamic(src, dst)
    single, batched = OrtModel(src, CONFIG, "inswapper-1"), OrtModel(dst, CONFIG, "inswapper-n")
    assert not single.dynamic_batch and batched.dynamic_batch
    assert [i.shape[0] for i in batched.inputs] == ["batch", "batch"]
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 1, (3, 3, 128, 128)).astype(np.float32)
    source = rng.standard_normal((3, 512)).astype(np.float32)
    with pytest.raises(Exception):  # the original really is pinned to batch 1
        single.run({"target": target, "source": source})
    out = batched.run({"target": target, "source": source})[0]
    assert out.shape == (3, 3, 128, 128)
    for i in range(3):
        one = single.run({"target": target[i : i + 1], "source": source[i : i + 1]})[0]
        np.testing.assert_allclose(out[i : i + 1], one, rtol=1e-5, atol=1e-6)
    # The emap is still the last initializer, unchanged.
    before, after = onnx.load(str(src)).graph.initializer[-1], onnx.load(str(dst)).graph.initializer[-1]
    assert after.name == "emap"
    np.testing.assert_array_equal(numpy_helper.to_array(after), numpy_helper.to_array(before))


def test_scrfd_heads_keep_the_batch(folder: Path) -> None:
    src = build_scrfd_standin(folder / "det_10g_standin.onnx")
    dst = folder / "det_10g_dynamic_standin.onnx"
    make_batch_dynamic(src, dst)
    single, batched = OrtModel(src, CONFIG, "scrfd-1"), OrtModel(dst, CONFIG, "scrfd-n")
    assert batched.dynamic_batch
    # 2-D [H*W*2, C] heads became [batch, rows, C].
    assert all(len(o.shape) == 3 and o.shape[0] == "batch" for o in batched.outputs)
    x = np.random.default_rng(1).standard_normal((2, 3, 640, 640)).astype(np.float32)
    outs = batched.run({"input.1": x})
    rows = [12800, 3200, 800] * 3
    channels = [1, 1, 1, 4, 4, 4, 10, 10, 10]
    assert [o.shape for o in outs] == [(2, r, c) for r, c in zip(rows, channels)]
    for i in range(2):
        ones = single.run({"input.1": x[i : i + 1]})
        for got, want in zip(outs, ones):
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)


def test_rewrite_is_idempotent_and_in_place(folder: Path) -> None:
    path = build_scrfd_standin(folder / "det_10g_inplace_standin.onnx")
    make_batch_dynamic(path, path)
    first = path.read_bytes()
    make_batch_dynamic(path, path)
    assert path.read_bytes() == first
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # atomic write left nothing behind
    outs = OrtModel(path, CONFIG, "scrfd").run({"input.1": np.zeros((3, 3, 640, 640), np.float32)})
    assert outs[0].shape == (3, 12800, 1)


def test_not_onnx_gives_a_clear_error(tmp_path: Path) -> None:
    text = tmp_path / "notes_standin.onnx"
    text.write_text("definitely not a model\n" * 10)
    with pytest.raises(ModelUnavailableError, match="not an ONNX model"):
        make_batch_dynamic(text, tmp_path / "out_standin.onnx")
    empty = tmp_path / "empty_standin.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelUnavailableError, match="not an ONNX model"):
        make_batch_dynamic(empty, tmp_path / "out_standin.onnx")
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        make_batch_dynamic(tmp_path / "missing_standin.onnx", tmp_path / "out_standin.onnx")
    assert not (tmp_path / "out_standin.onnx").exists()


def _naive_rewrite(src: Path, dst: Path) -> None:
    """What most scripts do: make only the I/O batch dims symbolic."""
    model = onnx.load(str(src))
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "batch"
    onnx.save(model, str(dst))


def test_equivalence_check_accepts_the_rewrite_and_catches_naive_ones(folder: Path) -> None:
    scrfd = build_scrfd_standin(folder / "det_10g_check_standin.onnx")
    swapper = build_inswapper_standin(folder / "inswapper_check_standin.onnx")
    shapes = {"input.1": (1, 3, 640, 640)}
    for src, extra in ((scrfd, shapes), (swapper, None)):
        good = folder / f"good_{src.name}"
        make_batch_dynamic(src, good)
        check_batch_equivalence(src, good, batch=2, input_shapes=extra)
        naive = folder / f"naive_{src.name}"
        _naive_rewrite(src, naive)
        # SCRFD's naive rewrite runs but flattens both images into one list of rows;
        # InSwapper's fails at its pinned Reshape. Both are caught.
        with pytest.raises(ModelUnavailableError, match="batch-dynamic rewrite"):
            check_batch_equivalence(src, naive, batch=2, input_shapes=extra)


def test_scrfd_export_with_explicit_row_counts(folder: Path) -> None:
    """Some exports write Reshape(12800, C) instead of Reshape(-1, C); the batch is still recovered."""
    src = build_scrfd_standin(folder / "det_10g_rows_standin.onnx")
    model = onnx.load(str(src))
    producers = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    inits = {i.name: i for i in model.graph.initializer}
    reshapes = [n for n in model.graph.node if n.op_type == "Reshape"]
    assert len(reshapes) == 9
    # The stand-in builds its heads stride by stride (score, bbox, kps at 8, then 16, then 32).
    for node, count in zip(reshapes, [12800] * 3 + [3200] * 3 + [800] * 3):
        name = node.input[1]
        tensor = producers[name].attribute[0].t if name in producers else inits[name]
        value = numpy_helper.to_array(tensor).copy()
        value[0] = count
        tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    explicit = folder / "det_10g_rows_explicit_standin.onnx"
    onnx.save(model, str(explicit))
    dst = folder / "det_10g_rows_dynamic_standin.onnx"
    make_batch_dynamic(explicit, dst)
    check_batch_equivalence(explicit, dst, batch=2, input_shapes={"input.1": (1, 3, 640, 640)})
