"""The mesh swap on real faces (astronaut, Tom Hanks, the six of t1.jpg): what a viewer would notice.

Resolution, the live mouth, colour, edges, what is left untouched. The figures
a person judges (identity, sharpness, ΔE, edge step, flicker) are in
``benchmarks/bench_quality.py``; these tests hold the properties that must never break.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mirage.geometry.masks import (
    MaskConfig,
    blend_mask,
    face_extent,
    fill_polygon,
    mouth_openness,
    skin_validity,
)
from mirage.geometry.paste import BlendConfig, blended_face, paste_region
from mirage.geometry.shading import ShadingConfig
from mirage.landmarks.tessellation import TRIANGLES
from mirage.landmarks.topology import FACE_OVAL, LIPS_INNER, LIPS_OUTER
from mirage.pipeline import FacePipeline, PipelineConfig
from mirage.swap.mesh import MeshSwapConfig, MeshSwapper, barycentric_inverse, triangle_facing
from mirage.types import FaceLandmarks, MeshIdentity, SwapOptions, SwappedFace
from standins.faces import astronaut_bgr, t1_bgr, tom_hanks_bgr

#: Regions of t1.jpg (x0, y0, x1, y1) around one person each.
T1_LAUGHING = (700, 280, 920, 520)  # open mouth, teeth
T1_TURNED = (880, 30, 1100, 260)  # three-quarter view
T1_CLOSED = (30, 230, 230, 430)  # closed mouth


def _cut(box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(t1_bgr()[y0:y1, x0:x1])


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline(PipelineConfig(track=False))


@pytest.fixture(scope="module")
def hanks(pipeline: FacePipeline) -> MeshIdentity:
    identity = pipeline.build_identity(tom_hanks_bgr()).identity
    assert isinstance(identity, MeshIdentity)
    return identity


@pytest.fixture(scope="module")
def astronaut(pipeline: FacePipeline) -> MeshIdentity:
    identity = pipeline.build_identity(astronaut_bgr()).identity
    assert isinstance(identity, MeshIdentity)
    return identity


def _face(pipeline: FacePipeline, frame: np.ndarray) -> FaceLandmarks:
    return pipeline.reference_landmarks(frame)[0]


def test_identity_keeps_the_reference_resolution(pipeline: FacePipeline, hanks: MeshIdentity) -> None:
    # The 112-px portrait stays at its own size (no 256-px resample); a 3x larger copy gives a 3x texture.
    assert 100 <= hanks.texture.shape[0] <= 140
    big = cv2.resize(tom_hanks_bgr(), (336, 336), interpolation=cv2.INTER_CUBIC)
    large = pipeline.build_identity(big).identity
    assert isinstance(large, MeshIdentity)
    assert abs(large.texture.shape[0] - 3 * hanks.texture.shape[0]) <= 6
    assert hanks.landmarks.shape == (468, 2) and hanks.depth is not None and hanks.valid is not None
    assert "MeshIdentity(texture=(" in repr(hanks) and "[" not in repr(hanks)  # no pixel data in reprs


def test_crop_follows_the_face_up_to_the_cap(pipeline: FacePipeline) -> None:
    frame = astronaut_bgr()
    face = _face(pipeline, frame)
    crop = pipeline.mesh_swapper.prepare(frame, face)
    extent = float(np.ptp(face.xy, axis=0).max())
    assert abs(crop.image.shape[0] - extent * (1 + 2 * pipeline.mesh_swapper.config.margin)) <= 2
    # Scale 1 on whole pixels: the crop is an exact copy of the frame.
    x0, y0 = int(-crop.matrix[0, 2]), int(-crop.matrix[1, 2])
    size = crop.image.shape[0]
    np.testing.assert_array_equal(crop.image, frame[y0 : y0 + size, x0 : x0 + size])
    capped = FacePipeline(PipelineConfig(track=False, mesh=MeshSwapConfig(max_crop=96)))
    assert capped.mesh_swapper.prepare(frame, face).image.shape == (96, 96, 3)


def test_swap_changes_the_face_and_nothing_else(pipeline: FacePipeline, hanks: MeshIdentity) -> None:
    frame = astronaut_bgr()
    pipeline.reset()
    result = pipeline.process(frame, hanks, t=0.0)
    assert len(result.faces) == 1
    crop = pipeline.mesh_swapper.prepare(frame, result.faces[0])
    swapped = pipeline.mesh_swapper.swap([crop], [hanks])[0]
    _, mask = blended_face(crop, swapped, SwapOptions(), BlendConfig())
    x1, y1, x2, y2 = paste_region(frame.shape, crop)
    outside = np.ones(frame.shape[:2], dtype=bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(result.frame[outside], frame[outside]), "pixels outside the blended face box changed"
    # Inside the crop, every pixel whose blend weight is 0 is bit-identical too.
    x0, y0 = int(-crop.matrix[0, 2]), int(-crop.matrix[1, 2])
    size = crop.image.shape[0]
    untouched = mask == 0.0
    np.testing.assert_array_equal(result.frame[y0 : y0 + size, x0 : x0 + size][untouched], crop.image[untouched])
    inner = mask > 0.99
    assert inner.sum() > 0.15 * size * size
    diff = np.abs(result.frame[y0 : y0 + size, x0 : x0 + size].astype(int) - crop.image.astype(int))[inner].mean()
    assert diff > 8, f"face region barely changed (mean abs diff {diff:.1f})"


def test_swap_between_faces_of_t1() -> None:
    pipeline = FacePipeline(PipelineConfig(track=False, detector_model="full", max_faces=6))
    image = t1_bgr()
    people = pipeline.detector.detect([image])[0]
    assert len(people) >= 5
    x1, y1, x2, y2 = people[0].box.astype(int)
    w, h = x2 - x1, y2 - y1
    reference = image[max(0, y1 - h) : y2 + h, max(0, x1 - w) : x2 + w].copy()
    identity = pipeline.build_identity(reference).identity
    result = pipeline.process(image, identity, t=0.0)
    assert len(result.faces) >= 5
    changed = np.abs(result.frame.astype(int) - image.astype(int)).sum(axis=2) > 0
    assert changed.mean() < 0.2, "the swap touched more than the faces"
    assert changed.sum() > 500


def test_open_mouth_keeps_the_live_mouth_interior(pipeline: FacePipeline, astronaut: MeshIdentity) -> None:
    frame = _cut(T1_LAUGHING)
    face = _face(pipeline, frame)
    assert mouth_openness(face.xy) > MaskConfig().mouth_open[1], "the test target should have an open mouth"
    pipeline.reset()
    out = pipeline.process(frame, astronaut).frame
    inner = fill_polygon(frame.shape[:2], face.xy[list(LIPS_INNER)]) > 0.99
    assert inner.sum() > 50
    grey_in = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)[inner].astype(float)
    grey_out = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)[inner].astype(float)
    assert np.abs(grey_out - grey_in).mean() <= 8.0, "the live mouth interior was replaced"
    # ...while the rest of the face is swapped.
    assert np.abs(out.astype(int) - frame.astype(int)).mean() > 1.0


def test_mouth_mask_also_keeps_the_live_lips(pipeline: FacePipeline, hanks: MeshIdentity) -> None:
    frame = cv2.resize(astronaut_bgr(), (1024, 1024), interpolation=cv2.INTER_CUBIC)  # lips thick enough to test
    face = _face(pipeline, frame)
    crop = pipeline.mesh_swapper.prepare(frame, face)
    assert crop.landmarks is not None
    shape = crop.image.shape[:2]
    plain = blend_mask(crop.landmarks, shape, None, SwapOptions())
    kept = blend_mask(crop.landmarks, shape, None, SwapOptions(mouth_mask=True))
    outer = fill_polygon(shape, crop.landmarks[list(LIPS_OUTER)]) > 0.5
    opening = cv2.dilate((fill_polygon(shape, crop.landmarks[list(LIPS_INNER)]) > 0).astype(np.uint8), np.ones((9, 9), np.uint8))
    lips = outer & (opening == 0)
    assert lips.sum() > 30
    assert plain[lips].mean() > 0.6  # the reference's lips, by default
    assert kept[lips].mean() < 0.1  # the live lips, with mouth_mask


def test_reference_teeth_never_show_between_closed_lips(pipeline: FacePipeline, astronaut: MeshIdentity) -> None:
    # The astronaut smiles with her teeth showing: her mouth interior is filled from her lips.
    inner = fill_polygon(astronaut.texture.shape[:2], astronaut.landmarks[list(LIPS_INNER)]) > 0.5
    assert inner.sum() > 20
    ycc = cv2.cvtColor(astronaut.texture, cv2.COLOR_BGR2YCrCb).astype(float)[inner]
    teeth = (ycc[:, 0] > 170) & (np.abs(ycc[:, 1] - 128) < 12) & (np.abs(ycc[:, 2] - 128) < 12)
    original = cv2.cvtColor(astronaut_bgr(), cv2.COLOR_BGR2YCrCb)  # the photo itself does show white teeth
    assert (original[..., 0] > 170).any()
    assert teeth.mean() < 0.05, f"{teeth.mean():.0%} of the reference's mouth interior is still teeth"


def test_greyscale_frame_gets_no_tint(pipeline: FacePipeline, astronaut: MeshIdentity) -> None:
    grey = cv2.cvtColor(cv2.cvtColor(_cut(T1_CLOSED), cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    pipeline.reset()
    out = pipeline.process(grey, astronaut).frame
    assert np.abs(out.astype(int) - grey.astype(int)).sum() > 0, "nothing was swapped"
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 1], out[..., 2])


def test_face_takes_the_live_skin_tone(pipeline: FacePipeline, hanks: MeshIdentity) -> None:
    # A greyscale reference on a colour frame comes out in the live face's colours, not grey.
    grey_ref = cv2.cvtColor(cv2.cvtColor(tom_hanks_bgr(), cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    identity = pipeline.build_identity(grey_ref).identity
    frame = astronaut_bgr()
    face = _face(pipeline, frame)
    crop = pipeline.mesh_swapper.prepare(frame, face)
    swapped = pipeline.mesh_swapper.swap([crop], [identity])[0]  # type: ignore[list-item]
    relit, mask = blended_face(crop, swapped, SwapOptions(), BlendConfig())
    core = mask > 0.99

    def lab(image: np.ndarray) -> np.ndarray:  # CIELAB in its own units (L 0-100)
        return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)[core].mean(axis=0)

    live, out, raw = lab(crop.image), lab(relit), lab(swapped.image)
    assert np.linalg.norm(out - live) < 4.0, f"ΔE to the live face {np.linalg.norm(out - live):.1f}"
    assert np.linalg.norm(raw - live) > 8.0  # the test would be empty if the raw swap already matched


@pytest.mark.parametrize("coverage", [0.8, 1.0, 1.1])
@pytest.mark.parametrize("target", ["astronaut", "turned"])
def test_blend_mask_has_no_step(pipeline: FacePipeline, astronaut: MeshIdentity, coverage: float, target: str) -> None:
    frame = astronaut_bgr() if target == "astronaut" else _cut(T1_TURNED)
    face = _face(pipeline, frame)
    crop = pipeline.mesh_swapper.prepare(frame, face)
    swapped = pipeline.mesh_swapper.swap([crop], [astronaut])[0]
    assert crop.landmarks is not None
    config = MaskConfig()
    mask = blend_mask(crop.landmarks, crop.image.shape[:2], swapped.mask, SwapOptions(coverage=coverage), config, crop.image)
    assert mask.max() > 0.99
    gy, gx = np.gradient(mask.astype(np.float64))
    steepest = float(np.hypot(gx, gy).max())
    feather_px = config.feather * face_extent(crop.landmarks)
    assert steepest <= 2.5 / feather_px, f"mask gradient {steepest:.3f}/px, a step (feather {feather_px:.1f} px)"
    # Never beyond where the warped texture is valid.
    assert float(mask[swapped.mask < 0.01].max(initial=0.0)) < 0.01


def test_turned_reference_never_pastes_its_background(pipeline: FacePipeline) -> None:
    reference = _cut(T1_TURNED).copy()
    identity = pipeline.build_identity(reference).identity
    assert isinstance(identity, MeshIdentity) and identity.valid is not None
    # Paint the texture's outer ring pure blue where it is not skin: those texels must be marked unusable.
    texture = identity.texture
    blue = (texture[..., 0] > 200) & (texture[..., 1] < 60)
    assert not blue.any()
    painted = texture.copy()
    outline = fill_polygon(texture.shape[:2], identity.landmarks[list(FACE_OVAL)]) > 0.5
    oval = identity.landmarks[list(FACE_OVAL)]
    centre = oval.mean(axis=0)
    core = fill_polygon(texture.shape[:2], (centre + (oval - centre) * 0.8).astype(np.float32)) > 0.0
    ring = outline & ~core
    ring[: int(identity.landmarks[1, 1]) + 1] = False  # the jaw and cheeks below the nose tip, away from eyes and brows
    lips = identity.landmarks[list(LIPS_OUTER)]
    ring &= ~(fill_polygon(texture.shape[:2], (lips.mean(axis=0) + (lips - lips.mean(axis=0)) * 1.4).astype(np.float32)) > 0)
    assert ring.sum() > 100
    painted[ring] = (255, 0, 0)
    valid = skin_validity(painted, identity.landmarks)
    assert valid[ring].max() == 0, "a blue background at the face's edge counted as skin"
    # Triangles facing away in the reference are not used: the turned face has some.
    assert (triangle_facing(identity.landmarks.astype(float), identity.depth.astype(float)) <= 0.15).sum() > 0  # type: ignore[union-attr]


def test_tessellation_faces_the_camera_on_a_frontal_face(pipeline: FacePipeline) -> None:
    face = _face(pipeline, astronaut_bgr())
    facing = triangle_facing(face.xy.astype(float), face.points[:, 2].astype(float))
    assert TRIANGLES.shape[1] == 3 and TRIANGLES.max() == 467
    assert (facing > 0).mean() > 0.97


def test_batch_equals_single_calls(pipeline: FacePipeline, hanks: MeshIdentity) -> None:
    frame = astronaut_bgr()
    face = _face(pipeline, frame)
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
    assert barycentric_inverse(degenerate)[0, 2, 2] == -1.0


def test_open_live_mouth_shows_none_of_the_swap_inside_the_lips(pipeline: FacePipeline) -> None:
    # The mouth interior's cut is exactly 1 inside the live inner-lip polygon, not the ~0.84 a blur leaves.
    frame = _cut(T1_LAUGHING)
    face = _face(pipeline, frame)
    crop = pipeline.mesh_swapper.prepare(frame, face)
    assert crop.landmarks is not None
    shape = crop.image.shape[:2]
    mask = blend_mask(crop.landmarks, shape, None, SwapOptions())
    inner = fill_polygon(shape, crop.landmarks[list(LIPS_INNER)]) > 0.99
    assert inner.sum() > 50
    assert float(mask[inner].max()) == 0.0


def _laplacian_variance(image: np.ndarray, region: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32), cv2.CV_32F)[region].var())


def test_a_soft_reference_takes_the_live_grain(pipeline: FacePipeline) -> None:
    # A blurred reference on the sharp astronaut: the live frame's finest grain is added where the swap lacks it.
    soft = cv2.GaussianBlur(_cut(T1_CLOSED), (0, 0), 2.0)
    identity = pipeline.build_identity(soft).identity
    frame = astronaut_bgr()
    face = _face(pipeline, frame)
    crop = pipeline.mesh_swapper.prepare(frame, face)
    swapped = pipeline.mesh_swapper.swap([crop], [identity])[0]  # type: ignore[list-item]
    with_grain, mask = blended_face(crop, swapped, SwapOptions(), BlendConfig())
    without, _ = blended_face(crop, swapped, SwapOptions(), BlendConfig(shading=ShadingConfig(live_detail=0.0)))
    core = mask > 0.99
    live = _laplacian_variance(crop.image, core)
    sharp, flat = _laplacian_variance(with_grain, core), _laplacian_variance(without, core)
    assert flat < 0.5 * live, "the test needs a reference softer than the live face"
    assert sharp > 1.5 * flat and sharp < 1.5 * live, (live, flat, sharp)
    # A reference as sharp as the live face gets (almost) nothing added.
    same = SwappedFace(image=crop.image.copy(), mask=np.ones(crop.image.shape[:2], np.float32))
    relit, _ = blended_face(crop, same, SwapOptions(), BlendConfig())
    plain, _ = blended_face(crop, same, SwapOptions(), BlendConfig(shading=ShadingConfig(live_detail=0.0)))
    assert np.abs(relit.astype(int) - plain.astype(int))[core].mean() < 0.5


def test_a_large_reference_is_sampled_at_the_live_scale(pipeline: FacePipeline, astronaut: MeshIdentity) -> None:
    # The 512-px astronaut onto a face a third of her size: sampled from a reduced copy (no aliasing), valid inside.
    small = cv2.resize(astronaut_bgr(), (170, 170), interpolation=cv2.INTER_AREA)
    face = _face(pipeline, small)
    crop = pipeline.mesh_swapper.prepare(small, face)
    assert crop.landmarks is not None
    factor = MeshSwapConfig().prefilter * face_extent(crop.landmarks) / face_extent(astronaut.landmarks)
    assert factor < 0.8, "the test needs a reference much larger than the live face"
    swapped = pipeline.mesh_swapper.swap([crop], [astronaut])[0]
    unfiltered = MeshSwapper(MeshSwapConfig(prefilter=1e9)).swap([crop], [astronaut])[0]
    core = swapped.mask > 0.99
    assert core.sum() > 500
    # Same face, same place: the reduced copy only removes detail finer than the live face can show.
    assert np.abs(swapped.image.astype(int) - unfiltered.image.astype(int))[core].mean() < 6.0
    assert _laplacian_variance(swapped.image, core) < _laplacian_variance(unfiltered.image, core)


def test_turned_reference_covers_both_halves_of_a_frontal_face(pipeline: FacePipeline) -> None:
    # A three-quarter reference: its far half (partly laid on the background by FaceMesh) is taken
    # whole from its mirror image, so a frontal live face is swapped on both sides, not in patches.
    identity = pipeline.build_identity(_cut(T1_TURNED)).identity
    assert isinstance(identity, MeshIdentity) and identity.sources is not None
    mirrored = (identity.sources != TRIANGLES).any(axis=1)
    assert 0.3 < mirrored.mean() < 0.7, f"{mirrored.mean():.0%} of the triangles mirrored"
    frame = astronaut_bgr()
    face = _face(pipeline, frame)
    crop = pipeline.mesh_swapper.prepare(frame, face)
    assert crop.landmarks is not None
    swapped = pipeline.mesh_swapper.swap([crop], [identity])[0]
    mask = blend_mask(crop.landmarks, crop.image.shape[:2], swapped.mask, SwapOptions(), live=crop.image)
    midline = float(crop.landmarks[[1, 4, 6, 168]][:, 0].mean())  # nose bridge and tip
    columns = np.arange(mask.shape[1])[None, :]
    left, right = float(mask[:, columns[0] < midline].sum()), float(mask[:, columns[0] >= midline].sum())
    assert min(left, right) > 0.6 * max(left, right), f"blend mask left {left:.0f}, right {right:.0f}"



def test_a_mirrored_patch_cross_fades_into_its_own_texture(pipeline: FacePipeline, astronaut: MeshIdentity) -> None:
    """Where triangles take their mirror image's texture, each pixel is a blend of the own and the mirrored sample.

    One map switching between the two texture places would, interpolated between grid cells,
    sample whatever lies between them (a dark stepped line on a cheek, a black nostril).
    """
    from dataclasses import replace

    from mirage.swap.mesh import TRIANGLES_MIRRORED

    nose = [k for k, tri in enumerate(TRIANGLES) if 1 in tri or 4 in tri]  # a patch around the nose tip
    mixed_sources = astronaut.sources.copy()
    mixed_sources[nose] = TRIANGLES_MIRRORED[nose]
    frame = cv2.resize(t1_bgr()[280:520, 700:920], (330, 360))  # another person: the warp is not the identity
    crop = pipeline.mesh_swapper.prepare(frame, _face(pipeline, frame))
    swapper = MeshSwapper(MeshSwapConfig(shape_transfer=0.0))
    size = crop.image.shape[0]

    def warp(sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return swapper._warp(replace(astronaut, sources=sources), crop.landmarks, crop.depth, size)

    own, _ = warp(TRIANGLES.copy())
    mirror, _ = warp(TRIANGLES_MIRRORED.copy())
    mixed, valid = warp(mixed_sources)
    assert not np.array_equal(mixed, own)
    lo = np.minimum(own, mirror).astype(int) - 2
    hi = np.maximum(own, mirror).astype(int) + 2
    outside = np.maximum(lo - mixed.astype(int), mixed.astype(int) - hi).max(axis=2)
    assert outside[valid > 0.5].max() <= 0
