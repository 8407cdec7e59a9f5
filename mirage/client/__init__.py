"""The aiortc client of the served application: tests, benchmarks, load, desktop.

Sends a video source with the frame number stamped into the pixels
(:mod:`mirage.client.stamp`) and measures glass-to-glass latency on what comes
back. See :class:`mirage.client.session.MirageSession`.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names re-exported lazily, so `import mirage.client.load` (the CLI parser) does not pull in aiortc.
_EXPORTS = {
    "ClientConfig": "session",
    "MirageSession": "session",
    "ReceivedFrame": "session",
    "SessionError": "session",
    "SessionFailed": "session",
    "SessionOptions": "session",
    "SessionRefused": "session",
    "SessionStats": "session",
    "EncodedClip": "encoded",
    "encode_clip": "encoded",
    "ArraySource": "sources",
    "FileSource": "sources",
    "ImageSequenceSource": "sources",
    "SyntheticFaceSource": "sources",
    "VideoSource": "sources",
    "astronaut_source": "sources",
    "open_source": "sources",
    "synthetic_moving_face": "sources",
    "read_stamp": "stamp",
    "stamp": "stamp",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"mirage.client.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mirage.client' has no attribute {name!r}")
