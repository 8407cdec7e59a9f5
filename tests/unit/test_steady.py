"""Temporal steadying of the swapped face (mirage.geometry.steady)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from mirage.geometry.steady import FaceSteadier, SteadyConfig


def _grid_landmarks(shift: float = 0.0) -> npt.NDArray[np.float32]:
    """A 468-point stand-in mesh: a grid over the crop's middle, moved by ``shift`` px in x."""
    ys, xs = np.mgrid[20:80:2.7, 20:80:2.7]
    points = np.stack([xs.ravel(), ys.ravel()], axis=1)[:468]
    assert points.shape == (468, 2)
    return (points + np.array([shift, 0.0])).astype(np.float32)


def _face(rng: np.random.Generator, noise: float) -> npt.NDArray[np.uint8]:
    base = np.full((100, 100, 3), 120.0)
    base[:, 50:] = 160.0  # an edge, so a wrong motion would show
    return np.clip(base + rng.normal(0.0, noise, base.shape), 0, 255).astype(np.uint8)


def _mask() -> npt.NDArray[np.float32]:
    mask = np.zeros((100, 100), np.float32)
    mask[10:90, 10:90] = 1.0
    return mask


def test_jitter_is_averaged_and_the_first_frame_passes_unchanged() -> None:
    rng = np.random.default_rng(0)
    steadier = FaceSteadier(SteadyConfig(strength=0.6))
    assert steadier.begin(1, "identity", 0)
    landmarks, mask = _grid_landmarks(), _mask()
    raw = [_face(rng, 2.0) for _ in range(12)]
    out = []
    for index, face in enumerate(raw):
        steadied, _ = steadier(0, face, landmarks, mask)
        if index == 0:
            assert np.array_equal(steadied, face)
        out.append(steadied.astype(np.float32))
    inside = mask > 0
    raw_change = np.mean([np.abs(b.astype(np.float32) - a.astype(np.float32))[inside].mean() for a, b in zip(raw[4:], raw[5:])])
    out_change = np.mean([np.abs(b - a)[inside].mean() for a, b in zip(out[4:], out[5:])])
    assert out_change < 0.7 * raw_change


def test_a_real_change_passes_at_once() -> None:
    rng = np.random.default_rng(1)
    steadier = FaceSteadier()
    assert steadier.begin(1, "identity", 0)
    landmarks, mask = _grid_landmarks(), _mask()
    steadier(0, _face(rng, 0.0), landmarks, mask)
    changed = _face(rng, 0.0)
    changed[30:60, 30:60] = 20  # e.g. the lips parting: far beyond the gate
    steadied, _ = steadier(0, changed, landmarks, mask)
    assert np.array_equal(steadied[30:60, 30:60], changed[30:60, 30:60])


def test_the_previous_face_follows_the_head() -> None:
    """A face that only moved is predicted from the last one moved with the mesh, not smeared."""
    steadier = FaceSteadier()
    assert steadier.begin(1, "identity", 0)
    mask = _mask()
    first = np.full((100, 100, 3), 120, np.uint8)
    first[:, 50:] = 160
    steadier(0, first, _grid_landmarks(), mask)
    moved = np.full((100, 100, 3), 120, np.uint8)
    moved[:, 53:] = 160  # the edge moved 3 px with the mesh
    steadied, _ = steadier(0, moved, _grid_landmarks(3.0), mask)
    assert np.abs(steadied[15:85, 15:85].astype(int) - moved[15:85, 15:85].astype(int)).max() <= 2


def test_the_mask_never_reaches_beyond_this_frame_and_a_new_identity_starts_afresh() -> None:
    rng = np.random.default_rng(2)
    steadier = FaceSteadier()
    assert steadier.begin(1, "first", 0)
    landmarks = _grid_landmarks()
    wide = _mask()
    steadier(0, _face(rng, 2.0), landmarks, wide)
    narrow = np.zeros_like(wide)
    narrow[30:70, 30:70] = 1.0  # e.g. the live mouth opened: its interior left the mask
    _, mask = steadier(0, _face(rng, 2.0), landmarks, narrow)
    assert not mask[narrow <= 0].any()
    assert steadier.begin(1, "second", 1)
    face = _face(rng, 2.0)
    steadied, kept = steadier(0, face, landmarks, narrow)
    assert np.array_equal(steadied, face) and np.array_equal(kept, narrow)


def test_strength_zero_is_off() -> None:
    rng = np.random.default_rng(3)
    steadier = FaceSteadier(SteadyConfig(strength=0.0))
    assert steadier.begin(1, "identity", 0)
    landmarks, mask = _grid_landmarks(), _mask()
    steadier(0, _face(rng, 2.0), landmarks, mask)
    face = _face(rng, 2.0)
    assert np.array_equal(steadier(0, face, landmarks, mask)[0], face)


def test_a_frame_older_than_one_begun_is_not_steadied() -> None:
    """Served, renders overlap: a late older frame must neither use nor overwrite the newer state."""
    steadier = FaceSteadier()
    assert steadier.begin(1, "identity", 5)
    assert not steadier.begin(1, "identity", 4)
    assert steadier.begin(1, "identity", 6)
