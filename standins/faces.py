"""Real faces shipped by installed packages (DESIGN.md §6); no network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np


def insightface_images_dir() -> Path:
    """The insightface wheel's packaged test images, found without importing it."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("insightface wheel is not installed (scripts/setup.sh installs it --no-deps)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "images"


def astronaut_bgr() -> np.ndarray:
    """scikit-image's astronaut (Eileen Collins), 512x512, BGR."""
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def t1_bgr() -> np.ndarray:
    """insightface's t1.jpg: six people in a row."""
    image = cv2.imread(str(insightface_images_dir() / "t1.jpg"), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def tom_hanks_path() -> Path:
    return insightface_images_dir() / "Tom_Hanks_54745.png"


def tom_hanks_bgr() -> np.ndarray:
    image = cv2.imread(str(tom_hanks_path()), cv2.IMREAD_COLOR)
    assert image is not None
    return image
