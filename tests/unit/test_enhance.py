"""Face enhancers (issue 11): manifest entries, stand-ins through the real loading code, the
align/run/warp-back contract, CodeFormer's fidelity, batch-N == N x batch-1, and the bank's grouping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mirage.enhance import (
    ENHANCER_NAMES,
    ENHANCER_UNAVAILABLE,
    EnhanceItem,
    EnhancerBank,
    EnhancerConfig,
    EnhanceRequest,
    FaceEnhancer,
    OnnxFaceEnhancer,
    available_enhancers,
    blend_enhanced,
    five_points_in_crop,
    load_enhancer,
    offline_store,
)
from mirage.enhance.onnx_enhancer import box_mask
from mirage.enhance.templates import template_points
from mirage.errors import ModelUnavailableError
from mirage.geometry.align import arcface_template, estimate_similarity, transform_points
from mirage.runtime.batch_rewrite import check_batch_equivalence, make_batch_dynamic
from mirage.runtime.onnx import OrtConfig, OrtModel
from mirage.runtime.served import SHARED_INPUTS, rewrite_path
from mirage.types import FaceCrop, SwappedFace
from mirage.weights.manifest import load_manifest
from standins.models import ENHANCER_STANDIN_SPECS, build_enhancer_standin, write_enhancer_standins

SMALL = 64  # stand-ins at 64 px: the same graphs, fast on two cores


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("enhancers")
    manifest = write_enhancer_standins(root, size=SMALL)
    return offline_store(root, manifest)


@pytest.fixture(scope="module")
def bank(small_store) -> EnhancerBank:  # type: ignore[no-untyped-def]
    return EnhancerBank.load(store=small_store)


def _face_crop(size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured crop and the five points of a face filling its middle (the ArcFace template)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(30, 220, (size, size, 3), dtype=np.uint8)
    return image, arcface_template(size)


# --------------------------------------------------------------------------- manifest


def test_manifest_declares_the_four_enhancers_with_their_conventions() -> None:
    manifest = load_manifest()
    expected = {"gfpgan_1.4": (512, "ffhq_512", True), "codeformer": (512, "ffhq_512", False),
                "gpen_bfr_256": (256, "arcface_128", False), "gpen_bfr_512": (512, "ffhq_512", False)}
    for name, (size, template, commercial) in expected.items():
        entry = manifest.get(name)
        assert entry.stage == "enhance" and entry.io is not None, name
        assert entry.url and entry.url.startswith("https://huggingface.co/facefusion/models-3.0.0/"), name
        assert entry.url_env and entry.url_env.startswith("MIRAGE_"), name
        assert entry.commercial_use is commercial, name
        assert entry.io.size == size and entry.io.template == template, name
        assert entry.io.normalisation == "minus_one_to_one" and entry.io.colour == "rgb", name
        assert entry.io.inputs[0].name == "input" and entry.io.inputs[0].shape == (1, 3, size, size), name
        assert entry.io.outputs[0].shape == (1, 3, size, size), name
        # No digest was found anywhere for these exports: none is pinned, and the notes say so.
        assert entry.sha256 is None and entry.size is None and entry.notes and "no independently published" in entry.notes
    codeformer = manifest.get("codeformer").io
    assert codeformer is not None
    assert [(t.name, t.shape, t.dtype) for t in codeformer.inputs][1] == ("weight", (1,), "float64")
    assert "non-commercial" in manifest.get("codeformer").licence and "S-Lab" in manifest.get("codeformer").licence
    assert "Apache-2.0" in manifest.get("gfpgan_1.4").licence
    assert tuple(n for n in manifest.names if manifest.get(n).stage == "enhance") == ENHANCER_NAMES


def test_templates_match_the_published_points() -> None:
    ffhq = template_points("ffhq_512", 512)
    np.testing.assert_allclose(ffhq[0], [192.98138, 239.94708], atol=1e-3)
    # GPEN-BFR 256's template is the ArcFace one on a 128 grid, i.e. Mirage's own arcface_template(256).
    np.testing.assert_allclose(template_points("arcface_128", 256), arcface_template(256), atol=1e-3)
    with pytest.raises(ValueError, match="unknown alignment template"):
        template_points("mtcnn", 512)


# --------------------------------------------------------------------------- loading


def test_standins_load_through_the_real_loading_code(small_store, bank: EnhancerBank) -> None:  # type: ignore[no-untyped-def]
    assert available_enhancers(small_store) == list(ENHANCER_NAMES)
    assert bank.available() == list(ENHANCER_NAMES)
    for name in ENHANCER_NAMES:
        enhancer = bank.get(name)
        assert isinstance(enhancer, OnnxFaceEnhancer) and isinstance(enhancer, FaceEnhancer)
        info = enhancer.info
        assert info.standin and "standin" in Path(info.path).name, name
        assert info.runtime == "cpu" and "not CUDA" in info.runtime_reason
        assert info.batched, f"{name}: the batch-1 stand-in must be served through its dynamic-batch rewrite"
        assert Path(info.path).name.endswith(".batch-dynamic.onnx")
    assert bank.get("codeformer").has_fidelity and not bank.get("gfpgan_1.4").has_fidelity  # type: ignore[union-attr]
    described = bank.info()
    assert described["codeformer"]["licence"].startswith("S-Lab") and described["codeformer"]["commercial_use"] is False


def test_stand_in_is_logged_as_a_stand_in(small_store, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO")
    load_enhancer("gpen_bfr_256", small_store, OrtConfig())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(("model gpen_bfr_256", "enhancer gpen_bfr_256"))]
    assert len(lines) >= 3  # runtime choice, provider, enhancer line
    assert all(line.split(":")[0].endswith("gpen_bfr_256 (stand-in)") for line in lines), lines


def test_unprovisioned_or_unknown_enhancer_raises_one_sentence(tmp_path: Path) -> None:
    store = offline_store(tmp_path)  # the real manifest, an empty models directory
    assert available_enhancers(store) == []
    with pytest.raises(ModelUnavailableError) as info:
        load_enhancer("codeformer", store)
    message = str(info.value)
    assert "CodeFormer is not provisioned" in message and "python -m mirage models fetch codeformer" in message
    assert "\n" not in message and message.count(". ") == 0 and message.endswith(".")
    with pytest.raises(ModelUnavailableError, match="Unknown enhancer 'gfpgan_9'; known enhancers: gfpgan_1.4"):
        load_enhancer("gfpgan_9", store)
    empty = EnhancerBank.load(store=store)
    assert empty.available() == [] and empty.enhancers == {}
    assert "not provisioned" in empty.reason("gpen_bfr_512")


def test_a_wrong_size_file_is_not_provisioned(tmp_path: Path) -> None:
    import yaml

    manifest = write_enhancer_standins(tmp_path, names=("gfpgan_1.4",), size=SMALL)
    raw = yaml.safe_load(manifest.read_text())
    for entry in raw["models"]:
        if entry["name"] == "gfpgan_1.4":
            entry["size"] = 12345
    manifest.write_text(yaml.safe_dump(raw, sort_keys=False))
    store = offline_store(tmp_path, manifest)
    assert available_enhancers(store) == []
    with pytest.raises(ModelUnavailableError, match="has .* bytes, expected 12345"):
        load_enhancer("gfpgan_1.4", store)


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("name", ENHANCER_NAMES)
def test_enhance_keeps_size_changes_the_face_and_keeps_the_outside(bank: EnhancerBank, name: str) -> None:
    enhancer = bank.get(name)
    assert isinstance(enhancer, OnnxFaceEnhancer)
    # A face that fills only the middle of a large crop: the template square covers part of it.
    image, _ = _face_crop(256, seed=3)
    points = arcface_template(96) + 80.0
    (out,) = enhancer.enhance([EnhanceItem(image, points, fidelity=0.3)])
    assert out.shape == image.shape and out.dtype == np.uint8
    # Where the template square lands in the crop (its box mask, warped back).
    matrix = estimate_similarity(points, enhancer.template)
    corners = transform_points(np.array([[0, 0], [enhancer.size, 0], [enhancer.size, enhancer.size], [0, enhancer.size]], np.float32),
                               np.vstack([np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]]))
    xs, ys = corners[:, 0], corners[:, 1]
    inside = np.zeros(image.shape[:2], bool)
    cx, cy = xs.mean(), ys.mean()
    half = 0.25 * (xs.max() - xs.min())
    inside[int(cy - half) : int(cy + half), int(cx - half) : int(cx + half)] = True
    changed = np.abs(out.astype(int) - image.astype(int)).max(axis=2) > 2
    assert changed[inside].mean() > 0.5, f"{name}: the face (template centre) must change"
    assert inside.sum() > 400
    outside = np.ones(image.shape[:2], bool)
    outside[max(int(ys.min()) - 2, 0) : int(ys.max()) + 3, max(int(xs.min()) - 2, 0) : int(xs.max()) + 3] = False
    assert outside.mean() > 0.3, f"{name}: the test face must leave crop outside the template square"
    np.testing.assert_array_equal(out[outside], image[outside])  # exactly the input outside the warped square


def test_box_mask_is_zero_at_the_border_and_one_inside() -> None:
    mask = box_mask(512)
    assert mask.dtype == np.float32 and mask.shape == (512, 512)
    assert mask[0].max() == 0 and mask[:, -1].max() == 0
    assert mask[256, 256] == pytest.approx(1.0, abs=1e-3) and mask[200:312, 200:312].min() > 0.99


def test_enhance_takes_crops_of_any_size_in_one_batch(bank: EnhancerBank) -> None:
    enhancer = bank.get("gfpgan_1.4")
    assert enhancer is not None
    items = [EnhanceItem(*_face_crop(s, seed=s)) for s in (96, 128, 200)]
    outs = enhancer.enhance(items)
    assert [o.shape for o in outs] == [i.image.shape for i in items]
    assert enhancer.enhance([]) == []


def test_codeformer_fidelity_reaches_the_model_input(bank: EnhancerBank) -> None:
    enhancer = bank.get("codeformer")
    assert isinstance(enhancer, OnnxFaceEnhancer)
    image, points = _face_crop(128, seed=7)
    low, high, same = enhancer.enhance(
        [EnhanceItem(image, points, fidelity=0.0), EnhanceItem(image, points, fidelity=1.0), EnhanceItem(image, points, fidelity=0.0)]
    )
    # The stand-in computes tanh(x + (1 - w) * 0.3 * conv(x)): w changes its output.
    assert np.abs(low.astype(int) - high.astype(int)).mean() > 1.0
    np.testing.assert_array_equal(low, same)
    # w = 1 leaves only tanh(x): the model's own round trip, close to the input inside the square.
    aligned, _ = enhancer.align(EnhanceItem(image, points, fidelity=1.0))
    direct = enhancer.from_tensor(np.tanh(enhancer.to_tensor([aligned]).astype(np.float32)))[0]
    face = enhancer.from_tensor(enhancer.run(enhancer.to_tensor([aligned]), 1.0))[0]
    assert np.abs(face.astype(int) - direct.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="fidelity"):
        EnhanceItem(image, points, fidelity=1.5)


def test_normalisation_round_trip_is_exact(bank: EnhancerBank) -> None:
    enhancer = bank.get("gpen_bfr_512")
    assert isinstance(enhancer, OnnxFaceEnhancer)
    faces = [np.random.default_rng(1).integers(0, 256, (SMALL, SMALL, 3), dtype=np.uint8)]
    tensor = enhancer.to_tensor(faces)
    assert tensor.shape == (1, 3, SMALL, SMALL) and tensor.dtype == np.float32
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0
    # RGB order: channel 0 of the tensor is the image's red (BGR index 2).
    np.testing.assert_allclose(tensor[0, 0], faces[0][..., 2] / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(enhancer.from_tensor(tensor)[0], faces[0])


# --------------------------------------------------------------------------- batching


@pytest.mark.parametrize("name", ENHANCER_NAMES)
def test_dynamic_batch_rewrite_batch_n_equals_n_single_runs(tmp_path: Path, name: str) -> None:
    side = ENHANCER_STANDIN_SPECS[name][0]
    src = build_enhancer_standin(tmp_path / f"{name}.standin.onnx", name, size=SMALL if side == 512 else None)
    dst = rewrite_path(src)
    shared = SHARED_INPUTS.get(name, ())
    make_batch_dynamic(src, dst, shared=shared)
    check_batch_equivalence(src, dst, batch=3, shared=shared)  # raises unless batch 3 == 3 x batch 1
    single, batched = OrtModel(src, OrtConfig(), f"{name}-1"), OrtModel(dst, OrtConfig(), f"{name}-n")
    assert not single.dynamic_batch and batched.dynamic_batch
    if shared:
        assert batched.input("weight").shape == (1,)  # one value per call, unchanged
    size = single.inputs[0].shape[2]
    x = np.random.default_rng(2).uniform(-1, 1, (4, 3, size, size)).astype(np.float32)
    extra = {"weight": np.array([0.4], np.float64)} if shared else {}
    together = batched.run({"input": x, **extra})[0]
    for i in range(4):
        alone = single.run({"input": x[i : i + 1], **extra})[0]
        np.testing.assert_allclose(together[i : i + 1], alone, rtol=1e-5, atol=1e-6)


def test_codeformer_rewrite_without_the_shared_weight_is_refused(tmp_path: Path) -> None:
    src = build_enhancer_standin(tmp_path / "cf.standin.onnx", "codeformer", size=SMALL)
    dst = tmp_path / "cf.standin.batch-dynamic.onnx"
    make_batch_dynamic(src, dst)  # weight made batch-dynamic too: the proof must catch it
    with pytest.raises(ModelUnavailableError, match="batch-dynamic rewrite of cf.standin.onnx"):
        check_batch_equivalence(src, dst, batch=2)


def test_enhancer_batch_equals_single_calls(bank: EnhancerBank) -> None:
    enhancer = bank.get("codeformer")
    assert enhancer is not None
    items = [EnhanceItem(*_face_crop(128, seed=s), fidelity=0.5) for s in range(3)]
    together = enhancer.enhance(items)
    for item, out in zip(items, together):
        assert np.abs(enhancer.enhance([item])[0].astype(int) - out.astype(int)).max() <= 1


# --------------------------------------------------------------------------- the bank (the deployment's core)


class _Recorder:
    """A FaceEnhancer that records each call's batch and inverts the crop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[int] = []

    def enhance(self, items):  # type: ignore[no-untyped-def]
        self.calls.append(len(items))
        return [255 - np.asarray(i.image) for i in items]


def test_bank_groups_a_batch_by_model_name_and_reports_unavailable_per_item() -> None:
    a, b = _Recorder("gfpgan_1.4"), _Recorder("codeformer")
    bank = EnhancerBank({"gfpgan_1.4": a, "codeformer": b}, {"gpen_bfr_512": "not provisioned"})
    image, points = _face_crop(32)
    names = ["gfpgan_1.4", "codeformer", "gpen_bfr_512", "gfpgan_1.4", "codeformer", "gfpgan_1.4"]
    results = bank.enhance_batch([EnhanceRequest(n, EnhanceItem(image, points)) for n in names])
    assert a.calls == [3] and b.calls == [2]  # one call per model, with all of its faces
    assert [r.ok for r in results] == [True, True, False, True, True, True]
    np.testing.assert_array_equal(results[0].image, 255 - image)
    assert results[2].error == ENHANCER_UNAVAILABLE and results[2].message and "gpen_bfr_512" in results[2].message
    counters = bank.counters()
    assert counters["enhanced_frames"] == 5 and counters["enhanced_by_model"] == {"gfpgan_1.4": 3, "codeformer": 2}
    assert counters["errors"] == {ENHANCER_UNAVAILABLE: 1}
    assert bank.available() == ["gfpgan_1.4", "codeformer"]
    assert "Unknown enhancer 'x'" in bank.reason("x")


def test_bank_failed_model_call_fails_only_its_group() -> None:
    class Broken:
        name = "gpen_bfr_256"

        def enhance(self, items):  # type: ignore[no-untyped-def]
            raise ModelUnavailableError("engine lost")

    ok = _Recorder("gfpgan_1.4")
    bank = EnhancerBank({"gpen_bfr_256": Broken(), "gfpgan_1.4": ok})
    image, points = _face_crop(32)
    results = bank.enhance_batch([EnhanceRequest("gpen_bfr_256", EnhanceItem(image, points)), EnhanceRequest("gfpgan_1.4", EnhanceItem(image, points))])
    assert results[0].error == "enhance_failed" and results[0].message and "gpen_bfr_256" in results[0].message
    assert results[1].ok


def test_bank_loads_only_the_configured_names(small_store) -> None:  # type: ignore[no-untyped-def]
    bank = EnhancerBank.load(EnhancerConfig(names=("gpen_bfr_256",)), store=small_store)
    assert bank.available() == ["gpen_bfr_256"]
    assert bank.info()["codeformer"] == {"available": False, "reason": "not configured on this server"}


# --------------------------------------------------------------------------- blending and points


def test_blend_enhanced_mixes_through_the_mask() -> None:
    swapped_image = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), np.float32)
    mask[:, 2:] = 1.0
    mask[0, 2] = 0.5
    swapped = SwappedFace(image=swapped_image, mask=mask)
    enhanced = np.full((4, 4, 3), 200, np.uint8)
    out = blend_enhanced(swapped, enhanced, 0.5)
    assert out.mask is swapped.mask
    assert out.image[1, 0, 0] == 100 and out.image[1, 3, 0] == 150 and out.image[0, 2, 0] == 125
    assert blend_enhanced(swapped, enhanced, 1.0).image[1, 3, 0] == 200
    assert blend_enhanced(swapped, enhanced, 0.0) is swapped
    with pytest.raises(ValueError, match="blend"):
        blend_enhanced(swapped, enhanced, 1.2)
    with pytest.raises(ValueError, match="enhanced crop"):
        blend_enhanced(swapped, enhanced[:2], 0.5)


def test_five_points_in_crop_from_mesh_or_five() -> None:
    five = arcface_template(128)
    crop = FaceCrop(image=np.zeros((128, 128, 3), np.uint8), matrix=np.eye(2, 3, dtype=np.float32),
                    frame_box=np.zeros(4, np.float32), landmarks=five)
    np.testing.assert_array_equal(five_points_in_crop(crop), five)
    mesh = np.random.default_rng(0).uniform(0, 128, (468, 2)).astype(np.float32)
    from mirage.landmarks.topology import five_point_from_mesh

    meshed = FaceCrop(image=crop.image, matrix=crop.matrix, frame_box=crop.frame_box, landmarks=mesh)
    np.testing.assert_array_equal(five_points_in_crop(meshed), five_point_from_mesh(mesh))
    with pytest.raises(ValueError, match="no landmarks"):
        five_points_in_crop(FaceCrop(image=crop.image, matrix=crop.matrix, frame_box=crop.frame_box))


def test_bank_takes_plain_name_item_pairs() -> None:
    a = _Recorder("gpen_bfr_512")
    bank = EnhancerBank({"gpen_bfr_512": a})
    image, points = _face_crop(32)
    (result,) = bank.enhance_batch([("gpen_bfr_512", EnhanceItem(image, points))])
    assert result.ok and a.calls == [1]


def test_engine_accuracy_check_has_real_face_inputs_for_the_enhancers(tmp_path: Path) -> None:
    from mirage.runtime.accuracy import check_against_onnxruntime, reference_feeds

    path = build_enhancer_standin(tmp_path / "codeformer.standin.onnx", "codeformer", dynamic=True, size=SMALL)
    model = OrtModel(path, OrtConfig(), "codeformer")
    feeds, samples = reference_feeds("codeformer", model.inputs, max_batch=3)
    x = feeds["input"]
    if x.shape[0] == 0:
        pytest.skip("no packaged face photos installed")
    assert x.shape[1:] == (3, SMALL, SMALL) and x.min() >= -1.0 and x.max() <= 1.0
    assert feeds["weight"].dtype == np.float64 and feeds["weight"].shape == (1,)
    assert "real aligned faces" in samples
    report = check_against_onnxruntime("codeformer", path, lambda f: dict(zip(model.output_names, model.run(f))), model.inputs)
    assert report.worst.max_abs == 0.0


def test_outputs_beyond_the_range_are_clipped(bank: EnhancerBank) -> None:
    enhancer = bank.get("gfpgan_1.4")
    assert isinstance(enhancer, OnnxFaceEnhancer)
    out = np.zeros((2, 3, 4, 4), np.float32)
    out[0, 0] = 3.0  # red far above 1
    out[0, 2] = -5.0  # blue far below -1
    out[1] = 0.5
    first, second = enhancer.from_tensor(out)
    assert first.dtype == np.uint8 and first.shape == (4, 4, 3)
    assert (first[..., 2] == 255).all() and (first[..., 0] == 0).all() and (first[..., 1] == 128).all()
    assert (second == 191).all()  # (0.5 + 1) * 127.5 = 191.25


def test_alignment_maps_the_five_points_onto_the_template(bank: EnhancerBank) -> None:
    # GPEN-BFR 256's arcface_128 template is the 128 px ArcFace template scaled by 2, so a face
    # already aligned at 128 px goes in by a pure 2x scale; the other models' matrices put the
    # crop's points on their template (a similarity, no reflection).
    image, points = _face_crop(128)
    for name in ENHANCER_NAMES:
        enhancer = bank.get(name)
        assert isinstance(enhancer, OnnxFaceEnhancer)
        aligned, matrix = enhancer.align(EnhanceItem(image, points))
        assert aligned.shape == (enhancer.size, enhancer.size, 3)
        mapped = transform_points(points, matrix)
        assert np.abs(mapped - enhancer.template).max() < 0.05 * enhancer.size, name
        assert np.linalg.det(matrix[:, :2]) > 0, name
    gpen = bank.get("gpen_bfr_256")
    assert isinstance(gpen, OnnxFaceEnhancer)
    real = OnnxFaceEnhancer("gpen_bfr_256", gpen.model, gpen.io.model_copy(update={"size": 256}))
    _, matrix = real.align(EnhanceItem(image, points))
    np.testing.assert_allclose(matrix, [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]], atol=1e-4)
