"""The desktop client's expected failures (camera, sinks, audio)."""

from __future__ import annotations

from mirage.errors import MirageError


class CamError(MirageError):
    """A device or output could not be used; the message says what to do, in one sentence or paragraph."""
