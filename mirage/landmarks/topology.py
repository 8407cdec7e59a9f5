"""Index sets of MediaPipe's 468-point FaceMesh, and the 5-point reduction.

"Left"/"right" follow MediaPipe: the subject's own side. For a face looking at
the camera the subject's RIGHT eye is on the IMAGE-LEFT (mesh points 33..133),
the LEFT eye on the image-right (263..362). Contours are closed rings (the last
point connects back to the first), ordered around the feature.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: Face silhouette, clockwise from the forehead top (10).
FACE_OVAL: tuple[int, ...] = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)
#: Outer lip contour: upper lip from corner 61 to corner 291, then the lower lip back.
LIPS_OUTER: tuple[int, ...] = (
    61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146,
)
#: Inner lip contour (the mouth opening): 78 to 308 along the upper lip, back along the lower.
LIPS_INNER: tuple[int, ...] = (
    78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95,
)
#: Subject's right eye (image-left): outer corner 33, upper lid, inner corner 133, lower lid.
RIGHT_EYE: tuple[int, ...] = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
#: Subject's left eye (image-right): outer corner 263, upper lid, inner corner 362, lower lid.
LEFT_EYE: tuple[int, ...] = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)
#: Upper edges of the eyebrows (subject's right, then left).
BROWS: tuple[int, ...] = (70, 63, 105, 66, 107, 336, 296, 334, 293, 300)
NOSE_TIP: int = 1
#: Mouth corners: 61 on the image-left, 291 on the image-right.
MOUTH_LEFT, MOUTH_RIGHT = 61, 291
#: Eye corners (outer, inner) for the image-left and image-right eyes.
IMAGE_LEFT_EYE_CORNERS = (33, 133)
IMAGE_RIGHT_EYE_CORNERS = (362, 263)


def five_point_from_mesh(points_xy: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """(5, 2) points in ArcFace template order from a (468, 2+) mesh.

    Image-left eye centre, image-right eye centre, nose tip, image-left mouth
    corner, image-right mouth corner; eye centres are the mid-points of the corners.
    """
    pts = np.asarray(points_xy, dtype=np.float32)[:, :2]
    if pts.shape[0] != 468:
        raise ValueError(f"expected 468 mesh points, got {pts.shape[0]}")
    return np.stack([
        pts[list(IMAGE_LEFT_EYE_CORNERS)].mean(axis=0),
        pts[list(IMAGE_RIGHT_EYE_CORNERS)].mean(axis=0),
        pts[NOSE_TIP],
        pts[MOUTH_LEFT],
        pts[MOUTH_RIGHT],
    ]).astype(np.float32)
