"""Five-point alignment templates of the face restorers, as fractions of the crop side.

``ffhq_512`` is the FFHQ alignment GFPGAN, CodeFormer and GPEN-BFR 512 were trained
on; ``arcface_128`` is the ArcFace 112 template on a 128 grid (shifted 8 px right),
which GPEN-BFR 256 is fed with in FaceFusion's pairing. Points are in ArcFace order:
image-left eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner.
"""

from __future__ import annotations

import numpy as np

from mirage.geometry.align import ARCFACE_TEMPLATE
from mirage.types import Points

#: FFHQ 512 template (pixels at 512 / 512).
_FFHQ_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.19366],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float64,
) / 512.0

#: ArcFace template on a 128 grid: (112 template + 8 px) / 128.
_ARCFACE_128 = (ARCFACE_TEMPLATE.astype(np.float64) + np.array([8.0, 0.0])) / 128.0

TEMPLATES: dict[str, np.ndarray] = {"ffhq_512": _FFHQ_512, "arcface_128": _ARCFACE_128}


def template_points(name: str, size: int) -> Points:
    """The template ``name`` in pixels of a ``size`` x ``size`` crop."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown alignment template {name!r}; known: {', '.join(sorted(TEMPLATES))}")
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    return (TEMPLATES[name] * float(size)).astype(np.float32)
