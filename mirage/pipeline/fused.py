"""Landmarks and swap of a tracked face in one model call.

On a tracked frame (no detection) the pipeline needs, per face, FaceMesh on
the tracked ROI, the tracker's smoothing of those landmarks, a crop at the
smoothed landmarks and the swap. Served, that was two Serve calls per frame
(``FaceDetector.landmarks``, then ``FaceSwapper.swap``), and each call costs
the ingress and the replica a few ms of CPU, more than FaceMesh itself. Here
the swapper's replica does all four: the face's tracking state
(:class:`~mirage.tracking.tracker.TrackSlot`, a few KB) travels with the call
and comes back in the result, so any replica can serve any frame and the
ingress's tracker stays the one owner of the state (it adopts what comes back:
:meth:`~mirage.tracking.tracker.FaceTracker.observe_followed`). The crop is cut
from a region of the outgoing picture around the ROI, so the swap sees the
same pixels it would have seen cut from the whole picture; the reply says
where the crop is (:class:`~mirage.pipeline.messages.CropPlace`) and the caller
cuts the live pixels from its own copy for the paste-back, so they do not
travel back. Bytes cost CPU on both sides of a call: the region is the ROI's
extent and no more, and a face that moved so far that its crop leaves the
region is answered ``outside_region`` (the caller swaps it the usual way).

Detection frames keep the separate calls (detect, landmarks on the new ROIs,
swap): the FaceDetector deployment stays, scaled on its own.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import cv2
import numpy as np

from mirage.landmarks.facemesh import FaceMeshLandmarker, FaceRoi
from mirage.pipeline.identity import SwapEngine, SwapperConfig
from mirage.pipeline.messages import (
    FACE_LOST,
    OUTSIDE_REGION,
    CropPlace,
    Region,
    SwapResult,
    TrackSwapItem,
    TrackSwapResult,
)
from mirage.pipeline.prepare import FramePreparer
from mirage.swap.neural import NeuralSwap
from mirage.tracking.tracker import follow
from mirage.types import FaceCrop, FaceLandmarks, Image

#: The region around a tracked ROI that the crop is cut from, as a multiple of the ROI's
#: axis-aligned extent. The ROI is 1.5x the face and the crop 1.24x (MeshSwapConfig.margin): the
#: rest is room for the face's move since the last frame (a move of more than 0.08 face sizes
#: triggers a detection anyway).
REGION_PAD = 1.05


def region_box(roi: FaceRoi, scale: float, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in the picture (``scale`` times the analysed one) around a tracked ROI, clipped."""
    half = 0.5 * roi.size * (abs(math.cos(roi.rotation)) + abs(math.sin(roi.rotation))) * REGION_PAD * scale
    cx, cy = roi.center_x * scale, roi.center_y * scale
    x0 = int(np.clip(math.floor(cx - half), 0, width))
    y0 = int(np.clip(math.floor(cy - half), 0, height))
    x1 = int(np.clip(math.ceil(cx + half), 0, width))
    y1 = int(np.clip(math.ceil(cy + half), 0, height))
    return x0, y0, x1, y1


def cut_regions(picture: Image, rois: Sequence[FaceRoi], scale: float) -> list[Region]:
    """The regions of ``picture`` around each ROI (given in analysed coordinates)."""
    height, width = picture.shape[:2]
    regions = []
    for roi in rois:
        x0, y0, x1, y1 = region_box(roi, scale, width, height)
        regions.append(
            Region(image=np.ascontiguousarray(picture[y0:y1, x0:x1]), origin=(x0, y0), scale=scale, picture_size=(width, height))
        )
    return regions


def inside(crop: FaceCrop, region: Region) -> bool:
    """Whether every pixel of the crop comes from the region (or lies past the picture's own edge)."""
    size = crop.image.shape[1], crop.image.shape[0]
    inverse = cv2.invertAffineTransform(np.asarray(crop.matrix, np.float64))
    corners = np.array([[0, 0], [size[0], 0], [0, size[1]], [size[0], size[1]]], np.float64)
    xy = corners @ inverse[:, :2].T + inverse[:, 2]
    height, width = region.image.shape[:2]
    ox, oy = region.origin
    pw, ph = region.picture_size
    lo_x, lo_y = (0.0 if ox > 0 else -np.inf), (0.0 if oy > 0 else -np.inf)
    hi_x = width if ox + width < pw else np.inf
    hi_y = height if oy + height < ph else np.inf
    tolerance = 0.5
    return bool(
        xy[:, 0].min() >= lo_x - tolerance
        and xy[:, 1].min() >= lo_y - tolerance
        and xy[:, 0].max() <= hi_x + tolerance
        and xy[:, 1].max() <= hi_y + tolerance
    )


def in_region(face: FaceLandmarks, region: Region) -> FaceLandmarks:
    """Analysed-picture landmarks → the region's coordinates (scaled like ``Analysis.scaled``, then shifted)."""
    points = (face.points * np.float32(region.scale)).astype(np.float32)
    points[:, 0] -= np.float32(region.origin[0])
    points[:, 1] -= np.float32(region.origin[1])
    return FaceLandmarks(points=points, confidence=face.confidence)


def place_in_picture(crop: FaceCrop, origin: tuple[int, int], border: int) -> CropPlace:
    """Where a crop cut from a region sits in the whole picture (its pixels stay behind)."""
    ox, oy = float(origin[0]), float(origin[1])
    matrix = np.asarray(crop.matrix, np.float32).copy()
    # region = picture - origin, so picture -> crop is M (p - o) + t.
    matrix[:, 2] -= matrix[:, 0] * ox + matrix[:, 1] * oy
    box = np.asarray(crop.frame_box, np.float32) + np.array([ox, oy, ox, oy], np.float32)
    size = (int(crop.image.shape[1]), int(crop.image.shape[0]))
    return CropPlace(matrix=matrix, size=size, frame_box=box, landmarks=crop.landmarks, depth=crop.depth, border=border)


class TrackSwapEngine(SwapEngine):
    """The swapper, plus FaceMesh and the tracker's smoothing for tracked faces: what ``FaceSwapper`` runs.

    ``swap_batch`` swaps crops the caller cut (detection frames);
    :meth:`track_swap_batch` finds, smooths, cuts and swaps tracked faces.
    """

    def __init__(self, config: SwapperConfig | None = None, neural: NeuralSwap | None = None) -> None:
        super().__init__(config, neural)
        self.landmarker = FaceMeshLandmarker(num_threads=self.config.num_threads)
        self._prep = FramePreparer(mesh=self.config.mesh)

    def track_swap_batch(self, items: Sequence[TrackSwapItem]) -> list[TrackSwapResult]:
        """Landmarks, smoothing, crop and swap for tracked faces of any sessions (one landmarker batch, one swap batch)."""
        if not items:
            return []
        raws = self.landmarker.infer([item.mesh for item in items])
        slots = []
        crops: list[FaceCrop | None] = []
        for item, raw in zip(items, raws, strict=True):
            # A copy: the caller's state stays as it was if this result never reaches it (in process too).
            slot = follow(copy.deepcopy(item.slot), raw, item.t, item.tracker)
            slots.append(slot)
            if raw.confidence < item.tracker.min_confidence:
                crops.append(None)
                continue
            face = in_region(slot.smoothed, item.region)
            crops.append(self._prep.crops(item.region.image, [face], item.swapper)[0])
        outside = {i for i, crop in enumerate(crops) if crop is not None and not inside(crop, items[i].region)}
        wanted = [i for i, crop in enumerate(crops) if crop is not None and i not in outside]
        swaps = self.swap_batch([items[i].swap_item(crop) for i in wanted if (crop := crops[i]) is not None])
        results: list[SwapResult] = [SwapResult(error=OUTSIDE_REGION if i in outside else FACE_LOST) for i in range(len(items))]
        for i, result in zip(wanted, swaps, strict=True):
            results[i] = result
        return [
            TrackSwapResult(
                raw=raw,
                slot=slot,
                place=place_in_picture(crop, item.region.origin, self._prep.crop_border(item.swapper)) if crop is not None else None,
                swap=result,
            )
            for item, raw, slot, crop, result in zip(items, raws, slots, crops, results, strict=True)
        ]
