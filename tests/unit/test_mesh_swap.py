"""The mesh swapper on real faces: astronaut <- Tom Hanks, and faces of t1.jpg."""

from __future__ import annotations

import numpy as np
import pytest

from mirage.geometry.paste import paste_region
from mirage.pipeline import FacePipeline, PipelineConfig
from mirage.swap.mesh import barycentric_inverse, match_colour
from mirage.types import MeshIdentity, SwapOptions
from tests.faces import astronaut_bgr, t1_bgr, tom_hanks_bgr


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline(PipelineConfig(track=False))


@pytest.fixture(scope="module")
def hanks(pipeline: FacePipeline) -> MeshIdentity:
    identity = pipeline.build_identity(tom_hanks_bgr()).identity
    assert isinstance(identity, MeshIdentity)
    return identity


def test_identity_is_texture_and_mesh(hanks: MeshIdentity) -> None:
    assert hanks.texture.shape == (256, 256, 3)
    assert hanks.landmarks.shape == (468, 2)
    assert "MeshIdentity(texture=(256, 256, 3)" in repr(hanks)  # no pixel data in reprs


def test_swap_changes_face_and_nothing_outside_the_box(pipeline: FacePipeline, hanks: MeshIdentity) -> None:
    frame = astronaut_bgr()
    result = pipeline.process(frame, hanks, t=0.0)
    assert len(result.faces) == 1
    crop = pipeline.mesh_swapper.prepare(frame, result.faces[0])
    x1, y1, x2, y2 = paste_region(frame.shape, crop)
    outside = np.ones(frame.shape[:2], dtype=bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(result.frame[outside], frame[outside]), "pixels outside the blended face box changed"
    # Inner face (between eyes and mouth): substantially different.
    xy = result.faces[0].xy
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    centre = (lo + hi) / 2
    half = (hi - lo) * 0.25
    ix1, iy1 = (centre - half).astype(int)
    ix2, iy2 = (centre + half).astype(int)
    diff = np.abs(result.frame[iy1:iy2, ix1:ix2].astype(int) - frame[iy1:iy2, ix1:ix2].astype(int)).mean()
    assert diff > 12, f"face region barely changed (mean abs diff {diff:.1f})"


def test_swap_between_faces_of_t1() -> None:
    pipeline = FacePipeline(PipelineConfig(track=False, detector_model="full", max_faces=6))
    image = t1_bgr()
    people = pipeline.detector.detect([image])[0]
    assert len(people) >= 5
    # Reference: the first person, cut out with some margin; targets: everyone.
    x1, y1, x2, y2 = people[0].box.astype(int)
    w, h = x2 - x1, y2 - y1
    reference = image[max(0, y1 - h) : y2 + h, max(0, x1 - w) : x2 + w].copy()
    identity = pipeline.build_identity(reference).identity
    result = pipeline.process(image, identity, t=0.0)
    assert len(result.faces) >= 5
    changed = np.abs(result.frame.astype(int) - image.astype(int)).sum(axis=2) > 0
    assert changed.mean() < 0.2, "the swap touched more than the faces"
    assert changed.sum() > 500


def test_mouth_mask_keeps_the_live_mouth(pipeline: FacePipeline, hanks: MeshIdentity) -> None:
    frame = astronaut_bgr()
    face = pipeline.process(frame, hanks, t=0.0).faces[0]
    crop = pipeline.mesh_swapper.prepare(frame, face)
    plain = pipeline.mesh_swapper.swap([crop], [hanks], [SwapOptions()])[0]
    kept = pipeline.mesh_swapper.swap([crop], [hanks], [SwapOptions(mouth_mask=True)])[0]
    assert crop.landmarks is not None
    from mirage.landmarks.topology import LIPS_INNER

    mouth = crop.landmarks[list(LIPS_INNER)].mean(axis=0).astype(int)
    assert plain.mask[mouth[1], mouth[0]] > 0.9
    assert kept.mask[mouth[1], mouth[0]] < 0.2


def test_coverage_shrinks_the_mask(pipeline: FacePipeline, hanks: MeshIdentity) -> None:
    frame = astronaut_bgr()
    face = pipeline.process(frame, hanks, t=0.0).faces[0]
    crop = pipeline.mesh_swapper.prepare(frame, face)
    full = pipeline.mesh_swapper.swap([crop], [hanks], [SwapOptions(coverage=1.0)])[0]
    small = pipeline.mesh_swapper.swap([crop], [hanks], [SwapOptions(coverage=0.6)])[0]
    assert small.mask.sum() < 0.6 * full.mask.sum()


def test_batch_equals_single_calls(pipeline: FacePipeline, hanks: MeshIdentity) -> None:
    frame = astronaut_bgr()
    face = pipeline.process(frame, hanks, t=0.0).faces[0]
    crop = pipeline.mesh_swapper.prepare(frame, face)
    shifted = pipeline.mesh_swapper.prepare(np.roll(frame, 7, axis=1), face)
    batch = pipeline.mesh_swapper.swap([crop, shifted], [hanks, hanks])
    for one, item in zip(batch, [crop, shifted], strict=True):
        single = pipeline.mesh_swapper.swap([item], [hanks])[0]
        assert np.array_equal(one.image, single.image)
        assert np.array_equal(one.mask, single.mask)


def test_barycentric_inverse_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    tri = rng.uniform(0, 100, (40, 3, 2))
    m = barycentric_inverse(tri)
    d = np.concatenate([tri.transpose(0, 2, 1), np.ones((40, 1, 3))], axis=1)
    assert np.allclose(m, np.linalg.inv(d), atol=1e-9)
    degenerate = np.array([[[0, 0], [1, 1], [2, 2]]], dtype=float)
    assert not barycentric_inverse(degenerate).any(axis=(1, 2))[0] or barycentric_inverse(degenerate)[0, 2, 2] == -1.0


def test_colour_match_moves_the_mean() -> None:
    rng = np.random.default_rng(2)
    source = rng.integers(0, 80, (64, 64, 3), dtype=np.uint8)
    target = rng.integers(150, 230, (64, 64, 3), dtype=np.uint8)
    region = np.ones((64, 64), dtype=bool)
    out = match_colour(source, target, region)
    assert abs(float(out.mean()) - float(target.mean())) < 12
