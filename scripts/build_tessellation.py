"""Builds ``mirage/landmarks/tessellation.py``: one fixed triangulation of the 468-point FaceMesh.

    .venv/bin/python scripts/build_tessellation.py

A fixed triangle list (rather than a Delaunay triangulation of whatever mesh a
frame has) lets the mesh swap tell front-facing from back-facing triangles in
any pose: a triangle whose winding flips in a projection faces away there.

How it is made: FaceMesh runs on skimage's astronaut (a near-frontal face); the
3-D mesh is rotated to face the camera exactly (eye line to the x axis,
forehead-chin to the y axis); the frontal x-y projection is triangulated
(Delaunay), triangles that span the mouth opening are kept (the swap replaces
that area with the live mouth when it opens), and slivers on the hull are
dropped. Every triangle is stored counter-clockwise in image coordinates of the
frontal face (y down), so its signed area there is positive.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial import Delaunay

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirage.detect.blazeface import BlazeFaceConfig, BlazeFaceDetector, largest_faces  # noqa: E402
from mirage.landmarks.facemesh import FaceMeshLandmarker, roi_from_detection  # noqa: E402
from mirage.landmarks.topology import FACE_OVAL  # noqa: E402


def frontal_mesh() -> np.ndarray:
    from skimage import data

    image = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    det = largest_faces(BlazeFaceDetector(BlazeFaceConfig()).detect([image])[0], 1)[0]
    points = FaceMeshLandmarker().landmarks([(image, roi_from_detection(det))])[0].points.astype(np.float64)
    centred = points - points.mean(axis=0)
    x_axis = centred[263] - centred[33]
    x_axis /= np.linalg.norm(x_axis)
    down = centred[152] - centred[10]
    y_axis = down - x_axis * float(down @ x_axis)
    y_axis /= np.linalg.norm(y_axis)
    z_axis = np.cross(x_axis, y_axis)
    return centred @ np.stack([x_axis, y_axis, z_axis], axis=1)


def triangulate(frontal: np.ndarray) -> np.ndarray:
    xy = frontal[:, :2]
    tri = Delaunay(xy).simplices
    a, b, c = xy[tri[:, 0]], xy[tri[:, 1]], xy[tri[:, 2]]
    signed = 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1]))
    tri = np.where((signed < 0)[:, None], tri[:, [0, 2, 1]], tri)
    # Drop hull slivers: triangles whose three vertices are all on the face oval.
    oval = set(FACE_OVAL)
    keep = [t for t in tri if not all(int(v) in oval for v in t)]
    return np.array(sorted(tuple(int(v) for v in t) for t in keep), dtype=np.int32)


def mirror_map(frontal: np.ndarray) -> np.ndarray:
    """Per point, its mirror image across the face's vertical midline (nearest point to (-x, y, z))."""
    xy = frontal.copy()
    centre_x = float(np.median(frontal[[1, 4, 5, 6, 8, 9, 10, 151, 152, 164, 168, 175, 199, 200], 0]))
    xy[:, 0] -= centre_x
    mirrored = xy * np.array([-1.0, 1.0, 1.0])
    distances = np.linalg.norm(mirrored[:, None, :] - xy[None, :, :], axis=2)
    return distances.argmin(axis=1).astype(np.int32)


def main() -> int:
    frontal = frontal_mesh()
    tri = triangulate(frontal)
    mirror = mirror_map(frontal)
    mirror_rows = ",\n".join("    " + ", ".join(str(int(v)) for v in mirror[i : i + 16]) for i in range(0, len(mirror), 16))
    rows = ",\n".join("    " + ", ".join(f"({a}, {b}, {c})" for a, b, c in tri[i : i + 6]) for i in range(0, len(tri), 6))
    text = (
        '"""A fixed triangulation of the 468-point FaceMesh (generated: scripts/build_tessellation.py).\n\n'
        "Each triangle is counter-clockwise in the image coordinates (y down) of a frontal face, so a\n"
        "triangle with a negative signed area in some projection faces away from that camera.\n"
        '"""\n\n'
        "from __future__ import annotations\n\n"
        "import numpy as np\n"
        "import numpy.typing as npt\n\n"
        f"_TRIANGLES: tuple[tuple[int, int, int], ...] = (\n{rows},\n)\n\n"
        "#: (T, 3) int32 vertex indices.\n"
        "TRIANGLES: npt.NDArray[np.int32] = np.array(_TRIANGLES, dtype=np.int32)\n"
        "TRIANGLES.setflags(write=False)\n\n"
        f"_MIRROR: tuple[int, ...] = (\n{mirror_rows},\n)\n\n"
        "#: (468,) int32: each point's mirror image across the face's midline (the face is symmetric).\n"
        "MIRROR: npt.NDArray[np.int32] = np.array(_MIRROR, dtype=np.int32)\n"
        "MIRROR.setflags(write=False)\n"
    )
    out = ROOT / "mirage" / "landmarks" / "tessellation.py"
    out.write_text(text)
    print(f"{len(tri)} triangles -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
