"""What the benchmarks share (they never import tests/; stand-ins and faces come from standins/): the packaged reference photo."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def tom_hanks_path() -> Path:
    """insightface's packaged Tom Hanks photo (the benchmarks' reference), found without importing insightface."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("insightface wheel is not installed (scripts/setup.sh installs it --no-deps)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "images" / "Tom_Hanks_54745.png"
