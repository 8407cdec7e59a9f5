from __future__ import annotations

import sys

from mirage.cli import main

sys.exit(main())
