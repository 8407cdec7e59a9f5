"""Face alignment: the ArcFace 5-point template, similarity estimation, aligned crops.

InSwapper and ArcFace both expect a face warped by a similarity transform (rotation,
uniform scale, translation; never a reflection) that maps its five keypoints onto the
ArcFace template. The template is defined for 112 px; for a crop size that is a
multiple of 112 it is scaled by ``size / 112``; otherwise (128, 256, 512) it is scaled
by ``size / 128`` and shifted right by ``8 * size / 128`` px, as insightface does.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import numpy.typing as npt

from mirage.types import Affine, FaceCrop, FaceLandmarks, Image, Points

#: ArcFace 5-point template for a 112x112 crop: image-left eye, image-right eye,
#: nose tip, image-left mouth corner, image-right mouth corner.
ARCFACE_TEMPLATE: Points = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def arcface_template(size: int) -> Points:
    """The template scaled (and for non-multiples of 112, shifted) to a ``size`` crop."""
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    if size % 112 == 0:
        ratio, shift_x = size / 112.0, 0.0
    else:
        ratio = size / 128.0
        shift_x = 8.0 * ratio
    points = ARCFACE_TEMPLATE.astype(np.float64) * ratio
    points[:, 0] += shift_x
    return points.astype(np.float32)


def estimate_similarity(src: npt.ArrayLike, dst: npt.ArrayLike) -> Affine:
    """Least-squares similarity (Umeyama 1991, no reflection) mapping ``src`` onto ``dst``.

    Returns the 2x3 float32 matrix ``M`` with ``dst ≈ M @ [x, y, 1]``.
    """
    src_pts = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst_pts = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src_pts.shape != dst_pts.shape or src_pts.shape[0] < 2:
        raise ValueError(f"need two matching point sets of at least 2 points, got {src_pts.shape} and {dst_pts.shape}")
    src_mean = src_pts.mean(axis=0)
    dst_mean = dst_pts.mean(axis=0)
    src_c = src_pts - src_mean
    dst_c = dst_pts - dst_mean
    n = src_pts.shape[0]
    cov = dst_c.T @ src_c / n
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1.0  # the best fit would mirror: take the best proper rotation instead
    rotation = u @ np.diag(d) @ vt
    src_var = (src_c**2).sum() / n
    scale = float((s * d).sum() / src_var) if src_var > 0 else 1.0
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix.astype(np.float32)


def transform_points(points: npt.ArrayLike, matrix: npt.ArrayLike) -> Points:
    """Apply a 2x3 affine matrix to (K, 2) points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(matrix, dtype=np.float64)
    return (pts @ m[:, :2].T + m[:, 2]).astype(np.float32)


def crop_extent_in_frame(matrix: Affine, size: int) -> npt.NDArray[np.float32]:
    """Bounding box (x1, y1, x2, y2), in the frame, of a ``size`` crop made with ``matrix``."""
    inverse = cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))
    corners = np.array([[0, 0], [size, 0], [size, size], [0, size]], dtype=np.float64)
    mapped = transform_points(corners, inverse)
    return np.array(
        [mapped[:, 0].min(), mapped[:, 1].min(), mapped[:, 0].max(), mapped[:, 1].max()], dtype=np.float32
    )


def align_face(image: Image, keypoints5: npt.ArrayLike, size: int) -> FaceCrop:
    """Warp the face with these five keypoints onto the ArcFace template at ``size``.

    ``landmarks`` of the result are the five keypoints in crop coordinates;
    ``frame_box`` is the crop square's extent in the frame (where paste-back writes).
    """
    kps = np.asarray(keypoints5, dtype=np.float32).reshape(-1, 2)
    if kps.shape != (5, 2):
        raise ValueError(f"align_face needs 5 keypoints, got shape {kps.shape}")
    matrix = estimate_similarity(kps, arcface_template(size))
    crop = cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    return FaceCrop(
        image=np.asarray(crop, np.uint8),
        matrix=matrix,
        frame_box=crop_extent_in_frame(matrix, size),
        landmarks=transform_points(kps, matrix),
    )


def square_crop(image: Image, box: npt.ArrayLike, size: int, margin: float = 0.25) -> FaceCrop:
    """An axis-aligned square crop around a face box, resized to ``size``.

    The square is centred on the box; its side is the box's longer side plus
    ``margin`` of it on each side. Parts outside the frame are black.
    """
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    if side <= 0 or size <= 0:
        raise ValueError(f"cannot crop an empty box {[x1, y1, x2, y2]} to size {size}")
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    left, top = cx - side / 2.0, cy - side / 2.0
    scale = size / side
    matrix = np.array([[scale, 0.0, -left * scale], [0.0, scale, -top * scale]], dtype=np.float32)
    crop = cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    frame_box = np.array([left, top, left + side, top + side], dtype=np.float32)
    return FaceCrop(image=np.asarray(crop, np.uint8), matrix=matrix, frame_box=frame_box)


def with_mesh(crop: FaceCrop, face: FaceLandmarks) -> FaceCrop:
    """``crop`` carrying the live 468-point mesh (and its depth) in crop coordinates.

    Paste-back draws the blend mask from it, whatever swapper made the crop.
    """
    matrix = np.asarray(crop.matrix, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    depth = (face.points[:, 2] * scale).astype(np.float32)
    return replace(crop, landmarks=transform_points(face.xy, matrix), depth=depth)
