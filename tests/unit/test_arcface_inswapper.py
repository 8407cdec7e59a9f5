"""ArcFace embeddings, InSwapper latent and swap, and the reference-photo identity builder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mirage.detect.scrfd import ScrfdDetector
from mirage.errors import InvalidImageError, NoFaceError
from mirage.geometry.align import align_face, arcface_template
from mirage.identity.arcface import ArcFaceEmbedder
from mirage.runtime.batch_rewrite import make_batch_dynamic
from mirage.runtime.onnx import OrtConfig, OrtModel
from mirage.swap.inswapper import InSwapper, InSwapperIdentityBuilder
from mirage.types import LatentIdentity
from standins.faces import astronaut_bgr, t1_bgr
from standins.models import (
    build_arcface_standin,
    build_inswapper_standin,
    build_scrfd_constant_standin,
    scrfd_raw_outputs,
)
from tests.unit.test_geometry import astronaut_keypoints

CONFIG = OrtConfig()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("identity")


@pytest.fixture(scope="module")
def embedder(folder: Path) -> ArcFaceEmbedder:
    return ArcFaceEmbedder(OrtModel(build_arcface_standin(folder / "w600k_r50_standin.onnx"), CONFIG, "arcface"))


@pytest.fixture(scope="module")
def swapper(folder: Path) -> InSwapper:
    path = build_inswapper_standin(folder / "inswapper_128_dynamic_standin.onnx", dynamic=True)
    return InSwapper(OrtModel(path, CONFIG, "inswapper"))


def random_crops(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_embeddings_are_unit_vectors_and_batch_independent(embedder: ArcFaceEmbedder) -> None:
    crops = random_crops(3, 112)
    batch = embedder.embed(crops)
    assert batch.shape == (3, 512) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, rtol=1e-5)
    for i, crop in enumerate(crops):
        np.testing.assert_allclose(embedder.embed([crop])[0], batch[i], rtol=1e-4, atol=1e-5)
    assert embedder.embed([]).shape == (0, 512)
    with pytest.raises(InvalidImageError):
        embedder.embed([np.zeros((128, 128, 3), np.uint8)])


def test_arcface_preprocessing_is_rgb_minus_127_5_over_127_5(folder: Path) -> None:
    path = build_arcface_standin(folder / "arcface_probe_standin.onnx", probe=True)
    probe = ArcFaceEmbedder(OrtModel(path, CONFIG, "probe"))
    crop = random_crops(1, 112, seed=5)[0]
    fed = ((crop[..., ::-1].astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1).reshape(-1)[:512]
    np.testing.assert_allclose(probe.embed([crop])[0], fed / np.linalg.norm(fed), rtol=1e-5, atol=1e-6)


def test_embed_faces_aligns_to_112(embedder: ArcFaceEmbedder) -> None:
    frame = astronaut_bgr()
    kps = astronaut_keypoints()
    expected = embedder.embed([align_face(frame, kps, 112).image])
    np.testing.assert_allclose(embedder.embed_faces([frame], [kps]), expected, rtol=1e-5)


def test_emap_and_latent(swapper: InSwapper) -> None:
    last = onnx.load(str(swapper.model.path)).graph.initializer[-1]
    np.testing.assert_array_equal(swapper.emap, numpy_helper.to_array(last))
    assert swapper.emap.shape == (512, 512)
    rng = np.random.default_rng(3)
    emb = rng.standard_normal(512).astype(np.float32)
    emb /= np.linalg.norm(emb)
    identity = swapper.latent_from_embedding(emb)
    expected = emb @ numpy_helper.to_array(last).astype(np.float64)
    expected /= np.linalg.norm(expected)
    assert isinstance(identity, LatentIdentity) and identity.latent.shape == (512,)
    assert identity.latent.dtype == np.float32
    np.testing.assert_allclose(identity.latent, expected, rtol=1e-4, atol=1e-6)


def test_prepare_aligns_to_the_128_template(swapper: InSwapper) -> None:
    crop = swapper.prepare(astronaut_bgr(), astronaut_keypoints())
    assert crop.image.shape == (128, 128, 3)
    np.testing.assert_allclose(crop.landmarks, arcface_template(128), atol=1e-3)


def _identities(swapper: InSwapper, n: int) -> list[LatentIdentity]:
    rng = np.random.default_rng(11)
    return [swapper.latent_from_embedding(rng.standard_normal(512)) for _ in range(n)]


def test_swap_batch_equals_one_by_one(swapper: InSwapper) -> None:
    assert swapper.model.dynamic_batch
    crops = [swapper.prepare(astronaut_bgr(), astronaut_keypoints() + d) for d in (0, 3, -4)]
    identities = _identities(swapper, 3)
    batched = swapper.swap(crops, identities)
    assert len(batched) == 3
    for i, face in enumerate(batched):
        assert face.image.shape == (128, 128, 3) and face.image.dtype == np.uint8
        assert face.mask.shape == (128, 128) and face.mask.dtype == np.float32 and (face.mask == 1).all()
        single = swapper.swap([crops[i]], [identities[i]])[0]
        assert np.abs(face.image.astype(int) - single.image.astype(int)).max() <= 1
    # Different identities give different faces.
    other = swapper.swap([crops[0]], [identities[1]])[0]
    assert np.abs(batched[0].image.astype(int) - other.image.astype(int)).max() > 0
    assert swapper.swap([], []) == []


def test_swap_output_is_bgr_uint8(folder: Path) -> None:
    """A probe swapper returns its target: the crop must come back exactly (RGB/255 and back to BGR)."""
    path = build_inswapper_standin(folder / "inswapper_probe_standin.onnx", probe=True)
    probe = InSwapper(OrtModel(path, CONFIG, "probe"))
    crop = probe.prepare(astronaut_bgr(), astronaut_keypoints())
    out = probe.swap([crop], _identities(probe, 1))[0]
    np.testing.assert_array_equal(out.image, crop.image)


@pytest.mark.parametrize("fp16", [False, True])
def test_fixed_batch_model_loops_and_matches_its_rewrite(folder: Path, fp16: bool) -> None:
    tag = "fp16_" if fp16 else ""
    fixed_path = build_inswapper_standin(folder / f"inswapper_128_{tag}standin.onnx", fp16=fp16)
    dynamic_path = folder / f"inswapper_128_{tag}rewritten_standin.onnx"
    make_batch_dynamic(fixed_path, dynamic_path)
    fixed = InSwapper(OrtModel(fixed_path, CONFIG, "inswapper-fixed"))
    dynamic = InSwapper(OrtModel(dynamic_path, CONFIG, "inswapper-dynamic"))
    assert not fixed.model.dynamic_batch and dynamic.model.dynamic_batch
    assert fixed.emap.dtype == np.float32
    crops = [fixed.prepare(t1_bgr(), astronaut_keypoints() + [x, 0]) for x in (0, 40)]
    identities = _identities(fixed, 2)
    for a, b in zip(fixed.swap(crops, identities), dynamic.swap(crops, identities)):
        assert a.image.dtype == np.uint8
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1


def test_identity_builder_uses_the_largest_face(folder: Path, embedder: ArcFaceEmbedder, swapper: InSwapper) -> None:
    frame = astronaut_bgr()  # 512 x 512: letterbox scale 1.25
    kps = astronaut_keypoints()
    small_box = np.array([20.0, 20.0, 60.0, 60.0])
    big_box = np.array([*kps.min(0) - 30, *kps.max(0) + 30])
    raw = scrfd_raw_outputs(
        [(small_box * 1.25, (kps - kps.mean(0) + 40) * 1.25, 0.95), (big_box * 1.25, kps * 1.25, 0.8)]
    )
    path = build_scrfd_constant_standin(folder / "det_10g_reference_standin.onnx", raw)
    builder = InSwapperIdentityBuilder(ScrfdDetector(OrtModel(path, CONFIG, "scrfd-constant")), embedder, swapper)
    identity = builder.build(frame)
    expected = swapper.latent_from_embedding(embedder.embed_faces([frame], [kps])[0])
    np.testing.assert_allclose(identity.latent, expected.latent, rtol=1e-3, atol=1e-5)
    with pytest.raises(InvalidImageError):
        builder.build(np.zeros((0, 0, 3), np.uint8))


def test_identity_builder_without_a_face(folder: Path, embedder: ArcFaceEmbedder, swapper: InSwapper) -> None:
    path = build_scrfd_constant_standin(folder / "det_10g_empty_standin.onnx", scrfd_raw_outputs([]))
    detector = ScrfdDetector(OrtModel(path, CONFIG, "scrfd-constant"))
    builder = InSwapperIdentityBuilder(detector, embedder, swapper)
    with pytest.raises(NoFaceError, match="No face found in the reference photo."):
        builder.build(np.full((300, 300, 3), 128, np.uint8))
