"""Temporal steadying of the swapped face: each frame's face is blended with the last one, moved with the head.

A video swap shimmers even where nothing moves on the live face: the landmarks
jitter by a few tenths of a pixel, and the reference's edges (brows, nostrils,
stubble) follow them. The eye sees that shimmer at once; a still photo does not
have it. So, per face and per stream, the relit face in its crop is blended with
the previous frame's result, carried onto this crop by the similarity between
the two frames' meshes (the head's motion):

    out = face + w · (moved_previous − face),  w = strength · gate(|face − moved_previous|)

The gate falls from 1 to 0 between ``gate_low`` and ``gate_high`` grey levels
of difference, so a real change (a blink, the lips, a turn of the head that a
similarity does not describe) passes at once; only the small differences that
are jitter are averaged away. The blend mask is steadied the same way (its edge
follows the jittering outline too), gated on its own change (the live mouth
opening cuts its hole at once), and never reaches beyond this frame's mask.
A recursive (IIR) filter of ``strength`` 0.6 averages about four frames. On
the moving clip of ``bench_quality.py`` it brings the flicker from 1.42x to
1.11-1.13x the input's (benchmarks/README.md). The previous face is resampled bicubically each
frame, which keeps its detail (Laplacian variance ~0.9 of the unsteadied face on
the moving clip; bilinear gave ~0.8).

The state is the last relit face of each slot (memory only, one stream's): it is
derived from the reference, so it is dropped with the stream, on a new identity,
and whenever the number of faces changes or a frame is not swapped.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from mirage.geometry.align import estimate_similarity
from mirage.types import Image, Points


@dataclass(frozen=True)
class SteadyConfig:
    """``strength``: weight of the moved previous face where the gate is open (0 turns steadying off).

    ``gate_low`` / ``gate_high``: a pixel whose mean absolute BGR difference from
    the moved previous face is below ``gate_low`` grey levels is steadied fully,
    one above ``gate_high`` not at all; ``max_motion``: a mesh
    whose change since the last frame is not a similarity (a head's motion) to
    within this fraction of its size starts afresh; ``mask_gate_low`` /
    ``mask_gate_high``: the same gate for the blend mask, in mask units.
    """

    strength: float = 0.6
    gate_low: float = 4.0
    gate_high: float = 12.0
    max_motion: float = 0.15
    mask_gate_low: float = 0.05
    mask_gate_high: float = 0.2

    @property
    def enabled(self) -> bool:
        return self.strength > 0.0


#: Mean of the three channels (``cv2.transform``): the per-pixel difference the gate looks at.
_CHANNEL_MEAN = np.full((1, 3), 1.0 / 3.0, dtype=np.float32)


@dataclass
class _Previous:
    face: Image
    mask: npt.NDArray[np.float32]
    landmarks: Points


class FaceSteadier:
    """One stream's steadying state: the last relit face and mask of each face slot (see the module docstring).

    Served, the frames of a stream are rendered in overlapping tasks whose pixel
    work runs in worker threads: :meth:`begin` is called in frame order and
    refuses a frame older than one already begun (it is pasted unsteadied), and
    a lock keeps the slots whole.
    """

    def __init__(self, config: SteadyConfig | None = None) -> None:
        self.config = config or SteadyConfig()
        self._previous: list[_Previous | None] = []
        self._key: object | None = None
        self._sequence = -1
        self._lock = threading.Lock()
        self._lut: npt.NDArray[np.float32] | None = None

    def begin(self, faces: int, key: object, sequence: int) -> bool:
        """Start frame ``sequence`` with ``faces`` faces swapped with ``key`` (the identity).

        Other counts or keys start afresh. False (do not steady this frame) for a
        frame older than the newest begun.
        """
        with self._lock:
            if sequence <= self._sequence:
                return False
            self._sequence = sequence
            if faces != len(self._previous) or key is not self._key:
                self._previous = [None] * faces
                self._key = key
            return True

    def reset(self) -> None:
        with self._lock:
            self._previous = []
            self._key = None

    def __call__(
        self, slot: int, face: Image, landmarks: Points, mask: npt.NDArray[np.float32]
    ) -> tuple[Image, npt.NDArray[np.float32]]:
        """``face`` (a relit crop, BGR uint8) and its blend mask steadied against the slot's previous ones.

        Remembers the result for the next frame.
        """
        cfg = self.config
        with self._lock:
            slots = self._previous
            if not cfg.enabled or slot >= len(slots):
                return face, mask
            previous = slots[slot]
        out, out_mask = face, mask
        if previous is not None and previous.landmarks.shape == landmarks.shape:
            steadied = self._steady(face, mask, landmarks, previous)
            if steadied is not None:
                out, out_mask = steadied
        with self._lock:
            if slots is self._previous:  # not started afresh meanwhile
                slots[slot] = _Previous(face=out, mask=out_mask, landmarks=np.array(landmarks, dtype=np.float32, copy=True))
        return out, out_mask

    def _weights(self) -> npt.NDArray[np.float32]:
        """The gate times the strength, per whole grey level of difference (0..255)."""
        if self._lut is None:
            cfg = self.config
            levels = np.arange(256, dtype=np.float32)
            gate = np.clip((cfg.gate_high - levels) / (cfg.gate_high - cfg.gate_low), 0.0, 1.0)
            self._lut = (cfg.strength * gate).astype(np.float32)
        return self._lut

    def _steady(
        self, face: Image, mask: npt.NDArray[np.float32], landmarks: Points, previous: _Previous
    ) -> tuple[Image, npt.NDArray[np.float32]] | None:
        cfg = self.config
        motion = estimate_similarity(previous.landmarks, landmarks).astype(np.float64)
        size = float(max(np.ptp(landmarks, axis=0).max(), 1.0))
        moved_points = previous.landmarks.astype(np.float64) @ motion[:, :2].T + motion[:, 2]
        if float(np.abs(moved_points - landmarks).max()) > cfg.max_motion * size:
            return None  # not a head's motion (a lost and found face, a jump): start afresh
        rows = np.flatnonzero(mask.max(axis=1) > 0.0)
        cols = np.flatnonzero(mask.max(axis=0) > 0.0)
        if rows.size == 0:
            return None
        # Only the mask's bounding box is pasted: steady that, warping the previous frame straight into it.
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        into_box = motion.copy()
        into_box[:, 2] -= (x0, y0)
        box_size = (x1 - x0, y1 - y0)
        part = np.ascontiguousarray(face[y0:y1, x0:x1])
        part_mask = mask[y0:y1, x0:x1]
        moved = cv2.warpAffine(previous.face, into_box, box_size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        difference = cv2.transform(cv2.absdiff(moved, part), _CHANNEL_MEAN)  # uint8, one channel
        weight = self._weights()[difference]
        steadied = face.copy()
        steadied[y0:y1, x0:x1] = cv2.blendLinear(moved, part, weight, 1.0 - weight)
        moved_mask = cv2.warpAffine(
            previous.mask, into_box, box_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0
        )
        # steady = mask + strength · gate(|Δ|) · Δ, with Δ = moved − mask, in place (float32 throughout).
        delta = moved_mask - part_mask
        box_mask = np.abs(delta)
        span = np.float32(1.0 / (cfg.mask_gate_high - cfg.mask_gate_low))
        box_mask *= -span
        box_mask += np.float32(cfg.mask_gate_high) * span
        np.clip(box_mask, 0.0, 1.0, out=box_mask)
        box_mask *= np.float32(cfg.strength)
        box_mask *= delta
        box_mask += part_mask
        np.clip(box_mask, 0.0, 1.0, out=box_mask)
        box_mask[part_mask <= 0.0] = 0.0  # never beyond this frame's region (valid texture, outside the live mouth)
        steady_mask = mask.copy()
        steady_mask[y0:y1, x0:x1] = box_mask
        return steadied, steady_mask
