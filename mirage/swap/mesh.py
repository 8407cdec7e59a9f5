"""The embedded ``mesh`` swapper: the reference face warped onto the live face's mesh.

Per face: the reference texture is warped piecewise-affinely, triangle by
triangle of one fixed FaceMesh triangulation (``mirage.landmarks.tessellation``),
so the reference face follows the live head pose and expression. No neural
network: licence-clean and a few ms per face on a CPU.

- **Resolution.** The crop follows the face: a face smaller than ``max_crop``
  is cut out at scale 1 on whole pixels (crop and paste-back are then exact
  copies, no resampling blur), a larger one is scaled down to the cap. The
  reference texture keeps the reference face's own resolution (up to
  ``texture_max``), so a sharp photo gives a sharp face.
- **Only what is visible.** A triangle is used only where it faces the camera
  both in the live pose and in the reference (3-D normal from FaceMesh's depth,
  ``min_facing``); where triangles overlap in the image (the nose over the far
  cheek) the nearer one wins (a depth test per map cell). Background that falls
  inside a turned face's outline is therefore never pasted onto the cheek.
- **Mirrored texture.** Where the reference hides a triangle (its far cheek, a
  nostril behind the nose) and its mirror image shows, the mirror's texture is
  used, cross-faded over a few pixels into the own texture around it: two
  continuous maps are sampled and blended, never one map interpolated across
  the jump (that sampled whatever lay between: dark stepped lines, black
  nostrils).
- **The mouth.** An open reference mouth is inpainted from its lips when the
  identity is built, so its teeth are never squeezed between closed live lips;
  an open live mouth is cut out of the blend mask (``mirage.geometry.masks``).

The swapper returns the warped texture and where it is valid; the blend mask,
the shading transfer and paste-back are shared with every swapper
(``mirage.geometry``). The piecewise-affine map is evaluated on a grid of
``grid_step`` pixels and upsampled bilinearly (exact inside each triangle), then
applied with one ``cv2.remap``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from mirage.errors import MirageError
from mirage.geometry.align import transform_points
from mirage.geometry.masks import face_extent, fill_polygon, mouth_openness, skin_validity
from mirage.landmarks.tessellation import MIRROR, TRIANGLES
from mirage.landmarks.topology import FACE_OVAL, LIPS_INNER, LIPS_OUTER
from mirage.types import (
    FaceCrop,
    FaceLandmarks,
    Image,
    MeshIdentity,
    Points,
    SwapOptions,
    SwappedFace,
)


@dataclass(frozen=True)
class MeshSwapConfig:
    """``max_crop``: cap on the side of the face crop (below it, the face's own resolution).
    ``margin``: crop extent around the mesh's bounding box, as a fraction of its size.
    ``texture_max``: cap on the side of the reference texture.
    ``grid_step``: pixel step of the piecewise-affine map before upsampling.
    ``min_facing``: smallest cosine between the reference surface's normal and
    the view direction for its texture to be used (the live pose only needs a
    triangle to face the camera at all; the depth test sorts out overlaps).
    ``mouth_inpaint``: openness above which the reference's mouth interior is filled from its lips.
    ``shape_transfer``: how far the inner face (eyes, brows, nose) moves from the
    live proportions to the reference's, seen in the live pose (0: the live
    face's shape, 1: the reference's); the outline and the lips stay live, so
    the blend edge and the live mouth do not move.
    ``prefilter``: a reference face larger than ``prefilter`` × 1.25 times the
    live one is sampled from a copy reduced (area average) to ``prefilter`` times
    the live face's size, so its fine detail does not alias into shimmer.
    """

    max_crop: int = 384
    margin: float = 0.12
    texture_max: int = 512
    grid_step: int = 3
    min_facing: float = 0.15
    mouth_inpaint: float = 0.01
    shape_transfer: float = 0.7
    prefilter: float = 1.3


#: Each tessellation triangle's mirror image across the face's midline (vertex triples).
TRIANGLES_MIRRORED: npt.NDArray[np.int32] = MIRROR[TRIANGLES]


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


def face_crop_matrix(points_xy: Points, margin: float, max_side: int) -> tuple[npt.NDArray[np.float32], int]:
    """Frame -> crop affine and crop side for a face: scale 1 on whole pixels, or scaled to ``max_side``."""
    cx, cy, side = square_around_points(points_xy, margin)
    if side <= max_side:
        size = int(math.ceil(side))
        x0 = math.floor(cx - size / 2.0)
        y0 = math.floor(cy - size / 2.0)
        return np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]], dtype=np.float32), size
    return crop_matrix(cx, cy, side, max_side), max_side


def triangle_facing(xy: npt.NDArray[np.float64], z: npt.NDArray[np.float64] | None) -> npt.NDArray[np.float64]:
    """Per tessellation triangle, how squarely the surface there faces the camera (cosine; negative: away).

    See :func:`facing_of`.
    """
    return facing_of(TRIANGLES, xy, z)


def facing_of(
    tris: npt.NDArray[np.int32], xy: npt.NDArray[np.float64], z: npt.NDArray[np.float64] | None
) -> npt.NDArray[np.float64]:
    """Per triangle of ``tris`` (any vertex triples), how squarely the surface faces the camera.

    Normals come from the 3-D mesh (x, y and FaceMesh's depth), signed by the
    tessellation's front-facing winding, and are smoothed over two rings of
    each vertex's neighbours: a single folded eyelid or lip triangle
    (expression, landmark noise) does not count as facing away, a turned cheek
    does. Without depth, only the 2-D winding is known (±1).
    """
    if z is None:
        a, b, c = xy[tris[:, 0]], xy[tris[:, 1]], xy[tris[:, 2]]
        ab, ac = b - a, c - a
        return np.sign(ab[:, 0] * ac[:, 1] - ab[:, 1] * ac[:, 0])
    # The smoothed vertex normals carry the tessellation's front-facing orientation, whatever triple they form.
    normals = _vertex_normals(xy, z)[tris].sum(axis=1)
    norm = np.linalg.norm(normals, axis=1)
    return np.where(norm > 1e-9, normals[:, 2] / np.maximum(norm, 1e-9), 0.0)


def _vertex_normals(xy: npt.NDArray[np.float64], z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Per point, the surface normal smoothed over two rings of the tessellation (z > 0: facing the camera)."""
    a, b, c = xy[TRIANGLES[:, 0]], xy[TRIANGLES[:, 1]], xy[TRIANGLES[:, 2]]
    ab, ac = b - a, c - a
    za, zb, zc = z[TRIANGLES[:, 0]], z[TRIANGLES[:, 1]], z[TRIANGLES[:, 2]]
    ab3 = np.concatenate([ab, (zb - za)[:, None]], axis=1)
    ac3 = np.concatenate([ac, (zc - za)[:, None]], axis=1)
    normals = np.cross(ab3, ac3)  # z component == the signed 2-D area: + faces the camera
    count = xy.shape[0]
    flat = TRIANGLES.T.ravel()  # vertex of each (corner, triangle)
    vertex = np.zeros((count, 3))
    for ring in range(2):  # triangle -> vertex (-> triangle -> vertex): a two-ring smoothing
        repeated = np.tile(normals, (3, 1))
        vertex = np.stack([np.bincount(flat, weights=repeated[:, k], minlength=count) for k in range(3)], axis=1)
        if ring == 0:
            normals = vertex[TRIANGLES].sum(axis=1)
    return vertex


def texture_sources(
    xy: npt.NDArray[np.float64],
    z: npt.NDArray[np.float64] | None,
    min_facing: float,
    size: int | None = None,
    skin: npt.NDArray[np.uint8] | None = None,
    turned: float = 0.8,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.bool_]]:
    """Per tessellation triangle, the reference vertices its texture comes from, and whether it has any.

    A triangle visible in the reference (facing the camera, and not hidden
    behind the nose: a depth test over the ``size``-pixel texture; showing
    ``skin`` where that is given) uses its own texture; one that is not (the far cheek of a turned reference) uses its
    mirror image on the other side of the face when that one is visible (a face
    is nearly symmetric, and paste-back relights it like the live face);
    otherwise none. When the reference is turned so far that its far half shows
    less than ``turned`` of its skin (FaceMesh then lays part of that half on the
    background), the whole far half takes its mirror image: one seam on the
    midline instead of a patchwork of own and mirrored triangles with holes.
    """
    mirrored = TRIANGLES_MIRRORED
    own_facing = triangle_facing(xy, z) > min_facing
    mirror_facing = facing_of(mirrored, xy, z) > min_facing
    own_share = np.ones(len(TRIANGLES))
    mirror_share = np.ones(len(TRIANGLES))
    if z is not None and size is not None:
        own_share = visible_in_image(xy, z, TRIANGLES, size, skin)
        mirror_share = visible_in_image(xy, z, mirrored, size, skin)
    own = own_facing & (own_share > 0.5)
    mirror_ok = mirror_facing & (mirror_share > 0.5)
    use_mirror = ~own & mirror_ok
    side = _side_of_midline(xy)
    shown = {s: float(np.where(own_facing, own_share, 0.0)[side == s].mean()) for s in (-1.0, 1.0) if (side == s).any()}
    if len(shown) == 2:
        far = min(shown, key=lambda s: shown[s])
        if shown[far] < turned and shown[-far] > shown[far] + 0.1:
            use_mirror |= (side == far) & mirror_ok
    sources = np.where(use_mirror[:, None], mirrored, TRIANGLES).astype(np.int32)
    return sources, own | mirror_ok


def _side_of_midline(xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Per tessellation triangle, which side of the face's midline it lies on (−1 / +1, along the eye line)."""
    on_midline = np.arange(len(MIRROR)) == MIRROR
    centre = xy[on_midline].mean(axis=0) if on_midline.any() else xy.mean(axis=0)
    lateral = xy[263] - xy[33]
    lateral = lateral / max(float(np.linalg.norm(lateral)), 1e-9)
    side: npt.NDArray[np.float64] = np.sign((xy[TRIANGLES].mean(axis=1) - centre) @ lateral)
    return side


def similarity_3d(src: npt.NDArray[np.float64], dst: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``src`` (N, 3) mapped onto ``dst`` by the least-squares similarity (Umeyama, no reflection)."""
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    sc, dc = src - src_mean, dst - dst_mean
    u, sv, vt = np.linalg.svd(dc.T @ sc / len(src))
    d = np.ones(3)
    if np.linalg.det(u @ vt) < 0:
        d[2] = -1.0
    rotation = u @ np.diag(d) @ vt
    var = float((sc**2).sum() / len(src))
    scale = float((sv * d).sum() / var) if var > 0 else 1.0
    fitted: npt.NDArray[np.float64] = (sc @ rotation.T) * scale + dst_mean
    return fitted


def _shape_weights(xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Per point: 0 on the outline and the lips, rising to 1 in the inner face (eyes, brows, nose)."""
    size = max(float(np.ptp(xy[list(FACE_OVAL)], axis=0).max()), 1.0)
    d_oval = np.min(np.linalg.norm(xy[:, None, :] - xy[None, list(FACE_OVAL), :], axis=2), axis=1) / size
    d_lips = np.min(np.linalg.norm(xy[:, None, :] - xy[None, list(LIPS_OUTER), :], axis=2), axis=1) / size

    def ramp(d: npt.NDArray[np.float64], lo: float, hi: float) -> npt.NDArray[np.float64]:
        t = np.clip((d - lo) / (hi - lo), 0.0, 1.0)
        return t * t * (3.0 - 2.0 * t)

    return ramp(d_oval, 0.03, 0.15) * ramp(d_lips, 0.02, 0.10)


def reference_shape_in_pose(
    identity: MeshIdentity, live_xy: Points, live_z: npt.NDArray[np.float32], amount: float
) -> Points:
    """The live mesh with its inner face moved ``amount`` of the way to the reference's proportions.

    The reference's 3-D mesh is fitted onto the live one (similarity in 3-D), so
    what moves the points is the difference in shape, not in head pose.
    """
    assert identity.depth is not None
    live = np.concatenate([live_xy.astype(np.float64), live_z.astype(np.float64)[:, None]], axis=1)
    ref = np.concatenate([identity.landmarks.astype(np.float64), identity.depth.astype(np.float64)[:, None]], axis=1)
    fitted = similarity_3d(ref, live)[:, :2]
    # Where a point may move is a property of the face's layout: taken from the reference once
    # (computed from the live mesh it cost 1.5 ms a frame).
    layout = identity.shape_weights if identity.shape_weights is not None else _shape_weights(live[:, :2])
    weight = amount * layout
    moved: Points = (live[:, :2] + weight[:, None] * (fitted - live[:, :2])).astype(np.float32)
    return moved


def fill_from_neighbours(map_xy: npt.NDArray[np.float32], covered: npt.NDArray[np.float32], cells: npt.NDArray[np.bool_]) -> None:
    """Give the uncovered ``cells`` (in place) the mean map of their covered 5×5 neighbours."""
    weight = cv2.boxFilter(covered, -1, (5, 5), normalize=False, borderType=cv2.BORDER_CONSTANT)
    summed = cv2.boxFilter(map_xy * covered[:, :, None], -1, (5, 5), normalize=False, borderType=cv2.BORDER_CONSTANT)
    fillable = cells & (covered < 0.5) & (weight > 0.5)
    map_xy[fillable] = summed[fillable] / weight[fillable][:, None]
    covered[fillable] = 1.0


def close_and_extend(map_xy: npt.NDArray[np.float32], covered: npt.NDArray[np.float32], rim: int = 2) -> None:
    """Fill small enclosed holes of the map (up to ~8 cells), and extend it ``rim`` cells beyond the mesh's outline.

    The extension lets the blend mask follow the live outline with sub-pixel
    precision instead of the grid's stair steps (the texture there is the
    outline's own, continued); holes left by culled triangles stay holes.
    """
    closed = cv2.morphologyEx(covered, cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0.0)
    holes = closed > 0.5
    for _ in range(3):  # each pass reaches two cells further into a hole
        fill_from_neighbours(map_xy, covered, holes)
    for _ in range(rim):
        grown = cv2.dilate(covered, np.ones((3, 3), np.uint8))
        fill_from_neighbours(map_xy, covered, grown > 0.5)


class MeshSwapper:
    """Piecewise-affine mesh swap; stateless, so one instance serves every session."""

    def __init__(self, config: MeshSwapConfig | None = None) -> None:
        self.config = config or MeshSwapConfig()

    # --- identity -----------------------------------------------------------------
    def identity_from_landmarks(self, image: Image, landmarks: FaceLandmarks) -> MeshIdentity:
        """The reference face as texture + mesh, cut out of the reference photo at its own resolution."""
        cfg = self.config
        matrix, size = face_crop_matrix(landmarks.xy, cfg.margin, cfg.texture_max)
        texture = np.asarray(
            cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE), np.uint8
        )
        xy = transform_points(landmarks.xy, matrix)
        if mouth_openness(xy) > cfg.mouth_inpaint:
            texture = close_mouth(texture, xy)
        depth = (landmarks.points[:, 2] * float(matrix[0, 0])).astype(np.float32)
        # Texels from outside the photo (a tightly cropped portrait) are edge pixels smeared outwards.
        in_photo = cv2.warpAffine(
            np.full(image.shape[:2], 255, np.uint8), matrix, (size, size), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=0,
        )
        in_photo = cv2.erode(in_photo, np.ones((3, 3), np.uint8))
        valid = np.minimum(skin_validity(texture, xy), in_photo)
        sources, usable = texture_sources(xy.astype(np.float64), depth.astype(np.float64), cfg.min_facing, size, valid)
        return MeshIdentity(
            texture=texture, landmarks=xy, depth=depth, valid=valid, usable=usable, sources=sources,
            shape_weights=_shape_weights(xy.astype(np.float64)),
        )

    # --- per frame ----------------------------------------------------------------
    def prepare(self, frame: Image, landmarks: FaceLandmarks) -> FaceCrop:
        """A square crop around the live face, with its mesh (and depth) in crop coordinates."""
        xy = landmarks.xy
        matrix, size = face_crop_matrix(xy, self.config.margin, self.config.max_crop)
        image = np.asarray(
            cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE), np.uint8
        )
        lo = xy.min(axis=0)
        hi = xy.max(axis=0)
        frame_box = np.array([lo[0], lo[1], hi[0], hi[1]], dtype=np.float32)
        depth = (landmarks.points[:, 2] * float(matrix[0, 0])).astype(np.float32)
        return FaceCrop(
            image=image, matrix=matrix, frame_box=frame_box, landmarks=transform_points(xy, matrix), depth=depth
        )

    def swap(
        self,
        crops: Sequence[FaceCrop],
        identities: Sequence[MeshIdentity],
        options: Sequence[SwapOptions] | None = None,
    ) -> list[SwappedFace]:
        """Swap a batch of faces (from any frames, any sessions).

        ``options`` are accepted for a uniform interface; the mask they shape is
        drawn at paste-back (``mirage.geometry.masks``).
        """
        if len(crops) != len(identities):
            raise MirageError(f"swap() got {len(crops)} crops but {len(identities)} identities.")
        return [self._swap_one(c, i) for c, i in zip(crops, identities, strict=True)]

    def _swap_one(self, crop: FaceCrop, identity: MeshIdentity) -> SwappedFace:
        if crop.landmarks is None:
            raise MirageError("The mesh swapper needs the live face's landmarks in the crop.")
        size = int(crop.image.shape[0])
        dst = crop.landmarks
        if self.config.shape_transfer > 0.0 and crop.depth is not None and identity.depth is not None:
            dst = reference_shape_in_pose(identity, crop.landmarks, crop.depth, self.config.shape_transfer)
        warped, valid = self._warp(identity, dst, crop.depth, size)
        return SwappedFace(image=warped, mask=valid)

    def _warp(
        self, identity: MeshIdentity, dst_xy: Points, dst_z: npt.NDArray[np.float32] | None, size: int
    ) -> tuple[Image, npt.NDArray[np.float32]]:
        """Piecewise-affine warp of the reference texture onto the live mesh ``dst_xy``.

        Each usable triangle tests the grid points of its own bounding box with
        barycentric coordinates, in one vectorised pass (triangles grouped by
        box size); a grid point covered by several triangles takes the nearest
        (smallest FaceMesh depth). (scipy's ``find_simplex`` would be simpler,
        but building its per-simplex transforms costs ~6 ms a frame.)
        """
        step = float(self.config.grid_step if size <= 384 else self.config.grid_step + 1)
        grid_n = -(-size // int(step))
        dst = dst_xy.astype(np.float64)
        src = identity.landmarks.astype(np.float64)
        live_z = dst_z.astype(np.float64) if dst_z is not None else None
        ref_z = identity.depth.astype(np.float64) if identity.depth is not None else None
        if identity.usable is not None and identity.sources is not None:
            sources, ref_ok = identity.sources, identity.usable
        else:
            sources, ref_ok = texture_sources(src, ref_z, self.config.min_facing, int(identity.texture.shape[0]))
        usable = (triangle_facing(dst, live_z) > 0.0) & ref_ok
        tris = TRIANGLES[usable]
        dst_tri = dst[tris]  # (T, 3, 2)
        z_tri = live_z[tris] if live_z is not None else np.zeros(tris.shape, dtype=np.float64)
        mirrored = (sources != TRIANGLES).any(axis=1)[usable]
        # Two maps, each continuous: the triangles' own texture, and (where any triangle takes it) the
        # mirror image's; a pixel blends them by how mirrored its neighbourhood is. Interpolating one
        # map that switches between them would sample whatever lies between the two texture places.
        variants = [src[tris]] + ([src[TRIANGLES_MIRRORED[usable]]] if mirrored.any() else [])
        # One array of 2 or 4 channels: (own x, y[, mirrored x, y]), filled and upsampled together.
        map_xy = np.full((grid_n, grid_n, 2 * len(variants)), -1.0, dtype=np.float32)
        covered = np.zeros((grid_n, grid_n), dtype=np.float32)
        share = np.zeros((grid_n, grid_n), dtype=np.float32)
        cells = rasterise(dst_tri, z_tri, grid_n, step)
        if cells is not None:
            gx, gy, tri_index, bary = cells
            for k, src_tri in enumerate(variants):
                map_xy[gy, gx, 2 * k : 2 * k + 2] = np.einsum("ni,nij->nj", bary, src_tri[tri_index])
            covered[gy, gx] = 1.0
            share[gy, gx] = mirrored[tri_index].astype(np.float32)
            close_and_extend(map_xy, covered)
        if len(variants) > 1:
            share = np.asarray(cv2.GaussianBlur(share, (0, 0), 0.8), np.float32)  # a cross-fade about 5 px wide
        if step != 1.0:
            map_xy = upsample_grid(map_xy, size, step)
            covered = upsample_grid(covered, size, step)
            if len(variants) > 1:
                share = upsample_grid(share, size, step)
        texture, valid_texture = identity.texture, identity.valid
        factor = self.config.prefilter * face_extent(dst_xy) / max(face_extent(identity.landmarks), 1.0)
        if factor < 0.8:
            # The reference is much larger than the live face: sample a copy reduced to about the live
            # face's scale (an area average), so its fine detail does not alias into shimmer.
            side = max(8, int(round(texture.shape[1] * factor)))
            real = side / float(texture.shape[1])
            texture = np.asarray(cv2.resize(texture, (side, side), interpolation=cv2.INTER_AREA), dtype=np.uint8)
            if valid_texture is not None:
                valid_texture = np.asarray(cv2.resize(valid_texture, (side, side), interpolation=cv2.INTER_AREA), dtype=np.uint8)
            # Pixel centres: x' + 0.5 = (x + 0.5)·real; the (-1, -1) of uncovered cells stays outside.
            map_xy = (map_xy + 0.5) * np.float32(real) - np.float32(0.5)
        warped = _sample(texture, map_xy[..., 0:2], cv2.BORDER_REPLICATE)
        # Cells next to an uncovered one interpolate towards (-1, -1): not valid.
        valid = (covered > 0.999).astype(np.float32)
        skin = _sample(valid_texture, map_xy[..., 0:2], cv2.BORDER_CONSTANT) if valid_texture is not None else None
        if len(variants) > 1:
            rows = np.flatnonzero(share.max(axis=1) > 1e-3)
            cols = np.flatnonzero(share.max(axis=0) > 1e-3)
            if rows.size:
                # Only where the mirror image shows: sample it there, and cross-fade.
                box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
                weight = np.ascontiguousarray(share[box])
                mirror_map = map_xy[box][..., 2:4]
                mirror = _sample(texture, mirror_map, cv2.BORDER_REPLICATE)
                warped[box] = cv2.blendLinear(mirror, np.ascontiguousarray(warped[box]), weight, 1.0 - weight)
                if skin is not None and valid_texture is not None:
                    mirror_skin = _sample(valid_texture, mirror_map, cv2.BORDER_CONSTANT)
                    skin[box] = cv2.blendLinear(mirror_skin, np.ascontiguousarray(skin[box]), weight, 1.0 - weight)
        if skin is not None:
            valid *= skin.astype(np.float32) * (1.0 / 255.0)
        return warped, valid


def _sample(image: npt.NDArray[np.uint8], map_xy: npt.NDArray[np.float32], border: int) -> npt.NDArray[np.uint8]:
    """``image`` sampled (bilinear) at ``map_xy`` (H, W, 2)."""
    x = np.ascontiguousarray(map_xy[..., 0])
    y = np.ascontiguousarray(map_xy[..., 1])
    return np.asarray(cv2.remap(image, x, y, cv2.INTER_LINEAR, borderMode=border), dtype=np.uint8)


def rasterise(
    tri_xy: npt.NDArray[np.float64], tri_z: npt.NDArray[np.float64], grid_n: int, step: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]] | None:
    """Triangles (T, 3, 2) on a grid of cell centres (step·i + (step−1)/2), nearest first.

    Returns, per covered cell, (gx, gy, triangle index, barycentric weights) of
    the triangle that wins the depth test (smallest interpolated depth), or None.
    Each triangle tests the cells of its own bounding box, in one vectorised
    pass (triangles grouped by box size, so a few long slivers do not make every
    triangle test a large window).
    """
    offset = (step - 1.0) / 2.0
    d_inv = barycentric_inverse(tri_xy)
    lo = np.clip(np.ceil((tri_xy.min(axis=1) - offset) / step).astype(np.int64), 0, grid_n - 1)
    hi = np.clip(np.floor((tri_xy.max(axis=1) - offset) / step).astype(np.int64), -1, grid_n - 1)
    extent = (hi - lo).max(axis=1) + 1
    cells_x: list[np.ndarray] = []
    cells_y: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    owners: list[np.ndarray] = []
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
        row, cell = np.nonzero((cx <= hi[members, 0:1]) & (cy <= hi[members, 1:2]))
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
        owners.append(tri_index[inside])
    if not cells_x:
        return None
    gx_all = np.concatenate(cells_x)
    gy_all = np.concatenate(cells_y)
    bary_all = np.concatenate(weights)
    tri_all = np.concatenate(owners)
    depth = np.einsum("ni,ni->n", bary_all, tri_z[tri_all])
    cell_id = gy_all * grid_n + gx_all
    order = np.lexsort((depth, cell_id))
    sorted_cells = cell_id[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = sorted_cells[1:] != sorted_cells[:-1]
    pick = order[first]
    return gx_all[pick], gy_all[pick], tri_all[pick], bary_all[pick]


def visible_in_image(
    xy: npt.NDArray[np.float64],
    z: npt.NDArray[np.float64],
    tris: npt.NDArray[np.int32],
    size: int,
    skin: npt.NDArray[np.uint8] | None = None,
) -> npt.NDArray[np.float64]:
    """Per triangle, the share of its pixels in the image where it is the nearest surface and (with ``skin``) skin.

    0 means hidden (behind the nose of a turned face) or showing something else
    (background or hair where FaceMesh puts the far cheek).
    """
    cells = rasterise(xy[tris], z[tris], size, 1.0)
    if cells is None:
        return np.zeros(len(tris))
    gx, gy, owner, _ = cells
    weight = None
    if skin is not None:
        weight = skin[np.clip(gy, 0, skin.shape[0] - 1), np.clip(gx, 0, skin.shape[1] - 1)].astype(np.float64) / 255.0
    won = np.bincount(owner, weights=weight, minlength=len(tris)).astype(np.float64)
    a, b, c = xy[tris[:, 0]], xy[tris[:, 1]], xy[tris[:, 2]]
    area = 0.5 * np.abs((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1]))
    # Triangles of a few pixels have too few samples to judge: they keep their facing verdict.
    return np.where(area >= 12.0, np.minimum(won / np.maximum(area, 1e-9), 1.0), 1.0)


def upsample_grid(grid: npt.NDArray[np.float32], size: int, step: float) -> npt.NDArray[np.float32]:
    """A map sampled at cell centres (step·i + (step−1)/2) resized to every pixel of a size × size crop."""
    n = grid.shape[0]
    # cv2.resize maps output pixel x to input (x + 0.5)·n/out − 0.5; with out = n·step that is
    # exactly (x − (step−1)/2)/step, the cell-centre convention; then cut to the crop.
    full = cv2.resize(grid, (int(n * step), int(n * step)), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(full[:size, :size])


def close_mouth(texture: Image, xy: Points) -> Image:
    """The reference's open mouth (teeth, cavity) filled in from its lips."""
    shape = (int(texture.shape[0]), int(texture.shape[1]))
    inner = fill_polygon(shape, xy[list(LIPS_INNER)])
    width = float(np.ptp(xy[list(LIPS_OUTER)][:, 0]))
    grow = max(1, int(round(width * 0.04)))
    hole = cv2.dilate((inner > 0.05).astype(np.uint8) * 255, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    return np.asarray(cv2.inpaint(texture, hole, max(3, grow * 2), cv2.INPAINT_TELEA), np.uint8)


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
