"""The desktop client: camera → Mirage server → virtual camera / window / file (+ audio).

``mirage cam`` (:mod:`mirage.cam.cli`) wires :mod:`~mirage.cam.capture`,
:mod:`~mirage.cam.sinks`, :mod:`~mirage.cam.fallback` and the controller
:mod:`~mirage.cam.app` onto the shared aiortc client in :mod:`mirage.client`.
Optional extras: ``pyvirtualcam`` (virtual camera) and ``sounddevice`` (audio),
imported only when used.
"""

from __future__ import annotations

from mirage.cam.errors import CamError

__all__ = ["CamError"]
