"""The swap-quality judge's parts (benchmarks/quality_metrics.py) on inputs whose answer is known."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from benchmarks import quality_metrics as qm


def _texture(seed: int, size: int = 240, sigma: float = 2.0, contrast: float = 40.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0.0, 1.0, (size, size)).astype(np.float32), (0, 0), sigma)
    grey = np.clip(128.0 + contrast * noise / noise.std(), 0, 255).astype(np.uint8)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)


SQUARE = qm.Box(70, 70, 170, 170)


def _pasted(feather_sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """A skin-like target texture and a copy with a brighter (+25), different texture pasted on SQUARE."""
    target = _texture(1, contrast=8.0)
    patch = np.clip(_texture(2, contrast=8.0).astype(np.float32) + 25.0, 0, 255)
    alpha = SQUARE.mask(target.shape).astype(np.float32)
    if feather_sigma > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), feather_sigma)
    out = patch * alpha[..., None] + target.astype(np.float32) * (1.0 - alpha[..., None])
    return target, np.clip(np.round(out), 0, 255).astype(np.uint8)


def test_hard_paste_has_a_large_edge_step_and_a_feathered_one_none() -> None:
    target, hard = _pasted(0.0)
    region = qm.changed_region(hard, target, SQUARE)
    assert abs(int(region.sum()) - SQUARE.width * SQUARE.height) < 0.05 * SQUARE.width * SQUARE.height
    report = qm.edge_report(hard, target, SQUARE)
    assert report.width_px == 4
    assert report.step_out > 1.6  # ≈ 1.9: only the outermost pixel ring of band 1 sees the step
    assert 0.7 < report.step_target < 1.3  # the scene itself has no edge there
    _, feathered = _pasted(12.0)
    soft = qm.edge_report(feathered, target, SQUARE)
    assert soft.step_out < 1.3
    assert 0.7 < soft.step_target < 1.3


def test_unchanged_frame_has_no_region() -> None:
    target = _texture(3)
    assert not qm.changed_region(target.copy(), target, SQUARE).any()


def test_boundary_bands_are_rings_inside_the_region() -> None:
    region = SQUARE.mask((240, 240))
    band1, band2 = qm.boundary_bands(region, 5)
    assert not (band1 & band2).any()
    assert band1[SQUARE.top, 120] and band1[SQUARE.top + 4, 120] and not band1[SQUARE.top + 6, 120]
    assert band2[SQUARE.top + 6, 120] and not band2[SQUARE.top + 11, 120]
    assert not (band1 | band2)[~region].any()


def test_greyscale_has_no_chroma_and_colour_has() -> None:
    grey = _texture(4)
    mask = np.ones(grey.shape[:2], dtype=bool)
    assert qm.max_mean_chroma(grey, mask) < 0.05
    tinted = np.clip(grey.astype(np.int16) + np.array([0, 0, 25]), 0, 255).astype(np.uint8)  # redder
    assert qm.max_mean_chroma(tinted, mask) > 5.0


def test_blurred_copy_is_less_sharp() -> None:
    target = _texture(5, sigma=1.0)
    box = qm.Box(20, 20, 220, 220)
    assert qm.sharpness_ratio(target.copy(), target, box) == pytest.approx(1.0)
    blurred = cv2.GaussianBlur(target, (0, 0), 2.0)
    assert qm.sharpness_ratio(blurred, target, box) < 0.5


def test_flicker_ratio() -> None:
    base = _texture(6, size=240, sigma=3.0)
    shifts = [np.float32([[1, 0, 0.6 * t], [0, 1, 0.3 * t]]) for t in range(6)]  # sub-pixel panning
    frames = [cv2.warpAffine(base, m, (240, 240), borderMode=cv2.BORDER_REFLECT101) for m in shifts]
    boxes: list[qm.Box | None] = [qm.Box(60, 60, 180, 180)] * len(frames)
    assert qm.flicker_ratio(frames, [f.copy() for f in frames], boxes) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = [np.clip(f.astype(np.int16) + rng.integers(-12, 13, f.shape), 0, 255).astype(np.uint8) for f in frames]
    assert qm.flicker_ratio(frames, noisy, boxes) > 2.0


def test_identity_ratio() -> None:
    assert qm.identity_ratio(0.3, 0.7) == pytest.approx(0.7)
    assert qm.identity_ratio(0.0, 0.6) == pytest.approx(1.0)
    assert qm.identity_ratio(0.6, 0.0) == pytest.approx(0.0)


def _octagon(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    angles = np.linspace(np.pi, -np.pi, 8, endpoint=False)
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1)


def test_mouth_interior_difference() -> None:
    target = _texture(7)
    landmarks = np.zeros((68, 2))
    landmarks[60:68] = _octagon(120, 150, 30, 12)
    landmarks[48], landmarks[54] = (85, 150), (155, 150)  # mouth corners
    assert 0.2 < qm.mouth_opening(landmarks) < 0.35
    inside = qm.inner_lip_mask(target.shape, landmarks)
    out = target.astype(np.int16)
    out[inside] += 10
    out = np.clip(out, 0, 255).astype(np.uint8)
    assert qm.mouth_interior_mad(out, target, landmarks) == pytest.approx(10.0, abs=0.5)
    landmarks[60:68] = _octagon(120, 150, 30, 1.0)  # closed lips: nothing to measure
    assert np.isnan(qm.mouth_interior_mad(out, target, landmarks))


@pytest.fixture(scope="module")
def judge() -> qm.Judge:
    return qm.Judge()


def test_judge_on_real_faces(judge: qm.Judge) -> None:
    astronaut = qm.astronaut()
    face = judge.face(astronaut)
    assert face is not None and 70 < face.box.width < 160
    assert len(judge.faces(qm.t1())) == 6
    hanks = judge.face(qm.tom_hanks())  # 112 px: found with an upsampled detector
    assert hanks is not None
    same = judge.descriptor(astronaut, face)
    assert qm.descriptor_distance(same, judge.descriptor(astronaut.copy(), face)) < 1e-6
    other = judge.descriptor(qm.tom_hanks(), hanks)
    assert qm.descriptor_distance(same, other) > 0.6  # dlib's same-person threshold


def test_colour_report_sees_a_paler_pinker_face(judge: qm.Judge) -> None:
    target = qm.astronaut()
    face = judge.face(target)
    assert face is not None
    same = qm.colour_report(target.copy(), target, face.landmarks)
    assert same.delta_e_rel == pytest.approx(0.0, abs=1e-6)
    assert same.delta_e_out == pytest.approx(same.delta_e_target)
    assert same.ring_pixels > 500
    hull = qm.face_hull_mask(target.shape, face.landmarks)
    lab = qm.lab(target)
    lab[hull, 0] += 8.0  # paler
    lab[hull, 1] += 6.0  # pinker
    paler = np.clip(np.round(cv2.cvtColor(lab, cv2.COLOR_Lab2BGR) * 255.0), 0, 255).astype(np.uint8)
    report = qm.colour_report(paler, target, face.landmarks)
    assert report.d_lightness > 5.0 and report.d_a > 3.0
    assert report.delta_e_rel > 6.0


def test_naive_baseline_changes_only_the_face(judge: qm.Judge) -> None:
    target = qm.astronaut()
    reference = qm.tom_hanks()
    tgt_face, ref_face = judge.face(target), judge.face(reference)
    assert tgt_face is not None and ref_face is not None
    out = qm.naive_paste(reference, ref_face.landmarks, target, tgt_face.landmarks)
    changed = np.abs(out.astype(np.int16) - target.astype(np.int16)).sum(axis=2) > 2
    assert changed[tgt_face.box.scaled(0.5).mask(target.shape)].mean() > 0.9
    assert not changed[~tgt_face.box.scaled(2.0).mask(target.shape)].any()
