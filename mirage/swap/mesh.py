"""The embedded ``mesh`` swapper: the reference face warped onto the live face's mesh.

Per face: the reference texture is warped piecewise-affinely, triangle by
triangle of a Delaunay triangulation of the live 468-point mesh, so the
reference face follows the live head pose and expression; its colour is
matched to the live face (mean/std in YCrCb, Reinhard); a feathered mask over
the face oval (optionally minus the live mouth) says where it replaces the
live pixels. No neural network: licence-clean and a few ms per face on a CPU.

The piecewise-affine map is evaluated on a grid at half the crop's
resolution and upsampled with bilinear interpolation, then applied with one
``cv2.remap``: much faster than warping 900 triangles one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from scipy.spatial import Delaunay

from mirage.errors import MirageError
from mirage.geometry.align import transform_points
from mirage.landmarks.topology import FACE_OVAL, LIPS_INNER, LIPS_OUTER
from mirage.types import FaceCrop, FaceLandmarks, Image, MeshIdentity, Points, SwapOptions, SwappedFace


@dataclass(frozen=True)
class MeshSwapConfig:
    """``crop_size``: side of the square face crop the swap works in.
    ``margin``: crop extent around the mesh's bounding box, as a fraction of its size.
    ``grid_step``: pixel step of the piecewise-affine map before upsampling.
    ``feather``: mask blur, as a fraction of the face's size in the crop.
    """

    crop_size: int = 256
    margin: float = 0.25
    grid_step: int = 3
    feather: float = 0.08
    colour_match: bool = True


def square_around_points(points_xy: Points, margin: float) -> tuple[float, float, float]:
    """(centre_x, centre_y, side) of a square around points, enlarged by ``margin``."""
    lo = points_xy.min(axis=0)
    hi = points_xy.max(axis=0)
    centre = (lo + hi) / 2.0
    side = float(max(hi - lo) * (1.0 + 2.0 * margin))
    return float(centre[0]), float(centre[1]), max(side, 8.0)


def crop_matrix(centre_x: float, centre_y: float, side: float, size: int) -> npt.NDArray[np.float32]:
    """Frame -> crop affine: the square (centre, side) onto a size x size crop."""
    scale = size / side
    return np.array(
        [[scale, 0.0, size / 2.0 - scale * centre_x], [0.0, scale, size / 2.0 - scale * centre_y]],
        dtype=np.float32,
    )


def _scaled_about_centroid(polygon: Points, factor: float) -> Points:
    centre = polygon.mean(axis=0)
    return (centre + (polygon - centre) * factor).astype(np.float32)


class MeshSwapper:
    """Piecewise-affine mesh swap; stateless, so one instance serves every session."""

    def __init__(self, config: MeshSwapConfig | None = None) -> None:
        self.config = config or MeshSwapConfig()
        size = self.config.crop_size
        step = self.config.grid_step
        # The map is sampled at cell centres (offset (step-1)/2) so that the
        # bilinear upsample to the crop lands on integer pixels.
        self._grid_shape = (-(-size // step), -(-size // step))
        self._grid_scale = float(step)

    # --- identity -----------------------------------------------------------------
    def identity_from_landmarks(self, image: Image, landmarks: FaceLandmarks) -> MeshIdentity:
        """The reference face as texture + mesh, cut out of the reference photo."""
        crop = self.prepare(image, landmarks)
        assert crop.landmarks is not None
        return MeshIdentity(texture=crop.image, landmarks=crop.landmarks)

    # --- per frame ----------------------------------------------------------------
    def prepare(self, frame: Image, landmarks: FaceLandmarks) -> FaceCrop:
        """A square crop around the live face, with its mesh in crop coordinates."""
        size = self.config.crop_size
        xy = landmarks.xy
        cx, cy, side = square_around_points(xy, self.config.margin)
        matrix = crop_matrix(cx, cy, side, size)
        image = cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        lo = xy.min(axis=0)
        hi = xy.max(axis=0)
        frame_box = np.array([lo[0], lo[1], hi[0], hi[1]], dtype=np.float32)
        return FaceCrop(image=image, matrix=matrix, frame_box=frame_box, landmarks=transform_points(xy, matrix))

    def swap(
        self,
        crops: Sequence[FaceCrop],
        identities: Sequence[MeshIdentity],
        options: Sequence[SwapOptions] | None = None,
    ) -> list[SwappedFace]:
        """Swap a batch of faces (from any frames, any sessions)."""
        if len(crops) != len(identities):
            raise MirageError(f"swap() got {len(crops)} crops but {len(identities)} identities.")
        opts = list(options) if options is not None else [SwapOptions()] * len(crops)
        return [self._swap_one(c, i, o) for c, i, o in zip(crops, identities, opts, strict=True)]

    def _swap_one(self, crop: FaceCrop, identity: MeshIdentity, options: SwapOptions) -> SwappedFace:
        if crop.landmarks is None:
            raise MirageError("The mesh swapper needs the live face's landmarks in the crop.")
        warped, covered = self._warp(identity.texture, identity.landmarks, crop.landmarks)
        mask = self._mask(crop.landmarks, options) * covered
        if self.config.colour_match:
            warped = match_colour(warped, crop.image, mask > 0.5)
        return SwappedFace(image=warped, mask=mask.astype(np.float32))

    def _warp(self, texture: Image, src_xy: Points, dst_xy: Points) -> tuple[Image, npt.NDArray[np.float32]]:
        """Piecewise-affine warp of ``texture`` (mesh ``src_xy``) onto mesh ``dst_xy``.

        The live mesh is triangulated (Delaunay: the reference's own
        triangulation folds where the reference face is turned) and rasterised
        on the grid in one vectorised pass: each triangle tests the grid points of its
        own bounding box with barycentric coordinates, and the points inside
        take the same barycentric combination of the reference triangle's
        vertices. (scipy's ``find_simplex`` would be simpler, but building its
        per-simplex transforms costs ~6 ms a frame.)
        """
        size = self.config.crop_size
        step = self._grid_scale
        offset = (step - 1.0) / 2.0
        grid_h, grid_w = self._grid_shape
        triangles = Delaunay(dst_xy.astype(np.float64)).simplices
        dst_tri = dst_xy[triangles].astype(np.float64)  # (T, 3, 2)
        src_tri = src_xy[triangles].astype(np.float64)
        d_inv = barycentric_inverse(dst_tri)
        # Grid cells covered by each triangle's bounding box.
        lo = np.ceil((dst_tri.min(axis=1) - offset) / step).astype(np.int64)
        hi = np.floor((dst_tri.max(axis=1) - offset) / step).astype(np.int64)
        lo = np.clip(lo, 0, [grid_w - 1, grid_h - 1])
        hi = np.clip(hi, -1, [grid_w - 1, grid_h - 1])
        extent = (hi - lo).max(axis=1) + 1
        cells_x: list[np.ndarray] = []
        cells_y: list[np.ndarray] = []
        weights: list[np.ndarray] = []
        sources: list[np.ndarray] = []
        # Triangles grouped by bounding-box size, so a few long slivers on the
        # hull do not make every triangle test a large window.
        bucket_lo = 0
        for bucket_hi in (2, 4, 8, 16, 32, 10**6):
            members = np.flatnonzero((extent > bucket_lo) & (extent <= bucket_hi))
            bucket_lo = bucket_hi
            if members.size == 0:
                continue
            window = int(extent[members].max())
            wy, wx = np.mgrid[0:window, 0:window]
            cx = lo[members, 0:1] + wx.ravel()[None, :]
            cy = lo[members, 1:2] + wy.ravel()[None, :]
            valid = (cx <= hi[members, 0:1]) & (cy <= hi[members, 1:2])
            row, cell = np.nonzero(valid)
            gx = cx[row, cell]
            gy = cy[row, cell]
            tri_index = members[row]
            inv = d_inv[tri_index]
            px = gx * step + offset
            py = gy * step + offset
            bary = inv[:, :, 0] * px[:, None] + inv[:, :, 1] * py[:, None] + inv[:, :, 2]
            inside = (bary >= -1e-6).all(axis=1)
            cells_x.append(gx[inside])
            cells_y.append(gy[inside])
            weights.append(bary[inside])
            sources.append(tri_index[inside])
        gx_all = np.concatenate(cells_x)
        gy_all = np.concatenate(cells_y)
        source = np.einsum("ni,nij->nj", np.concatenate(weights), src_tri[np.concatenate(sources)])
        map_xy = np.full((grid_h, grid_w, 2), -1.0, dtype=np.float32)
        map_xy[gy_all, gx_all] = source
        covered = np.zeros((grid_h, grid_w), dtype=np.float32)
        covered[gy_all, gx_all] = 1.0
        if step != 1.0:
            map_xy = cv2.resize(map_xy, (size, size), interpolation=cv2.INTER_LINEAR)
            covered = cv2.resize(covered, (size, size), interpolation=cv2.INTER_LINEAR)
        warped = cv2.remap(texture, map_xy[..., 0], map_xy[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return warped, (covered > 0.99).astype(np.float32)

    def _mask(self, dst_xy: Points, options: SwapOptions) -> npt.NDArray[np.float32]:
        """Feathered face-oval mask in the crop; optionally keeps the live mouth."""
        size = self.config.crop_size
        oval = dst_xy[list(FACE_OVAL)]
        face_size = float(max(oval.max(axis=0) - oval.min(axis=0)))
        feather = max(1, int(round(face_size * self.config.feather)))
        # Shrink by the feather so the blurred edge stays inside the face.
        shrink = max(0.5, options.coverage * (1.0 - feather / max(face_size, 1.0)))
        polygon = _scaled_about_centroid(oval, shrink)
        mask = np.zeros((size, size), dtype=np.uint8)
        cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 255)
        kernel = 2 * feather + 1
        blurred = cv2.GaussianBlur(mask, (kernel, kernel), 0)
        if options.mouth_mask:
            blurred = np.minimum(blurred, 255 - self._mouth(dst_xy, size))
        return blurred.astype(np.float32) / 255.0

    @staticmethod
    def _mouth(dst_xy: Points, size: int) -> npt.NDArray[np.uint8]:
        """The live open mouth, grown a little into the lips and feathered (uint8)."""
        inner = dst_xy[list(LIPS_INNER)]
        width = float(np.ptp(dst_xy[list(LIPS_OUTER)][:, 0]))
        mouth = np.zeros((size, size), dtype=np.uint8)
        cv2.fillPoly(mouth, [np.round(inner).astype(np.int32)], 255)
        grow = max(1, int(round(width * 0.12)))
        mouth = cv2.dilate(mouth, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
        blur = 2 * max(1, grow // 2) + 1
        return cv2.GaussianBlur(mouth, (blur, blur), 0)


def barycentric_inverse(tri: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Per triangle (T, 3, 2), the 3x3 matrix M with lambda = M @ [x, y, 1].

    Closed form (Cramer's rule), vectorised; degenerate triangles get a zero
    matrix, so no point ever lands inside them.
    """
    x0, y0 = tri[:, 0, 0], tri[:, 0, 1]
    x1, y1 = tri[:, 1, 0], tri[:, 1, 1]
    x2, y2 = tri[:, 2, 0], tri[:, 2, 1]
    det = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
    ok = np.abs(det) > 1e-9
    inv_det = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    m = np.empty((len(tri), 3, 3))
    m[:, 0, 0] = (y1 - y2) * inv_det
    m[:, 0, 1] = (x2 - x1) * inv_det
    m[:, 0, 2] = -(m[:, 0, 0] * x2 + m[:, 0, 1] * y2)
    m[:, 1, 0] = (y2 - y0) * inv_det
    m[:, 1, 1] = (x0 - x2) * inv_det
    m[:, 1, 2] = -(m[:, 1, 0] * x2 + m[:, 1, 1] * y2)
    m[:, 2, 0] = -(m[:, 0, 0] + m[:, 1, 0])
    m[:, 2, 1] = -(m[:, 0, 1] + m[:, 1, 1])
    m[:, 2, 2] = np.where(ok, 1.0 - m[:, 0, 2] - m[:, 1, 2], -1.0)
    return m


def match_colour(source: Image, target: Image, region: npt.NDArray[np.bool_], stride: int = 3) -> Image:
    """Reinhard colour transfer: ``source``'s YCrCb mean/std in ``region`` set to ``target``'s.

    Statistics come from every ``stride``-th pixel of the region, and the
    per-channel linear map is applied as a lookup table on 8-bit YCrCb: about
    1 ms on a 256x256 crop instead of ~9 ms in float.
    """
    sub = region[::stride, ::stride]
    if int(sub.sum()) < 16:
        return source
    src_ycc = cv2.cvtColor(source, cv2.COLOR_BGR2YCrCb)
    tgt_ycc = cv2.cvtColor(target, cv2.COLOR_BGR2YCrCb)
    src_px = src_ycc[::stride, ::stride][sub].astype(np.float32)
    tgt_px = tgt_ycc[::stride, ::stride][sub].astype(np.float32)
    src_mean, src_std = src_px.mean(axis=0), src_px.std(axis=0) + 1e-3
    tgt_mean, tgt_std = tgt_px.mean(axis=0), tgt_px.std(axis=0) + 1e-3
    ratio = np.clip(tgt_std / src_std, 0.5, 2.0)
    levels = np.arange(256, dtype=np.float32)[:, None]
    table = np.clip((levels - src_mean) * ratio + tgt_mean, 0, 255).astype(np.uint8)  # (256, 3)
    out = cv2.LUT(src_ycc, table.reshape(256, 1, 3))
    return cv2.cvtColor(out, cv2.COLOR_YCrCb2BGR)
