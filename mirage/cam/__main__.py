"""``python -m mirage.cam`` (same as ``mirage cam``)."""

from __future__ import annotations

import sys

from mirage.cam.cli import main

sys.exit(main())
