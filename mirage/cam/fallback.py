"""What the desktop client shows while it has no swapped picture: the live camera, made safe.

While connecting, reconnecting, or while the server is full, the virtual camera
must neither freeze nor go black, and must never show the real face by
surprise. So it shows the live picture under the same policy the server uses
when a stage fails: ``blur`` (default) pixelates and smooths every face
region found by the client's own BlazeFace (the embedded short-range model,
the server's default detector), ``passthrough`` (opt-in) shows the picture as
it is. A small status badge ("connecting...") says what is going on.

Face boxes are remembered for ``remember_s`` after the detector loses them
(a turned head or a blurry frame must not unblur the face), and a detector
failure blurs the whole frame.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from mirage.overlay import blur_frame, blur_regions, draw_badge
from mirage.types import Image

logger = logging.getLogger(__name__)

LocalFallback = Literal["blur", "passthrough"]


@dataclass(frozen=True)
class FallbackConfig:
    policy: LocalFallback = "blur"
    #: BlazeFace range model: "short" suits a webcam at arm's length, "full" small faces.
    detector: Literal["short", "full"] = "short"
    #: Lower than a detector's usual 0.5: here a missed face costs privacy, a false box only blur.
    score_threshold: float = 0.4
    #: Each face box grows by this fraction of its size on every side (hair, chin, ears).
    grow: float = 0.35
    #: Keep blurring where a face was for this long after the detector loses it.
    remember_s: float = 1.5


class FallbackRenderer:
    """Renders fallback frames; call :meth:`render` from one thread at a time."""

    def __init__(self, config: FallbackConfig | None = None, detector: object | None = None) -> None:
        self.config = config or FallbackConfig()
        self._detector = detector
        self._boxes: list[npt.NDArray[np.float32]] = []
        self._boxes_at = -1e9
        self.frames = 0

    def load(self) -> FallbackRenderer:
        """Load the detector now (so a broken install fails at start, not mid-call)."""
        if self.config.policy == "blur" and self._detector is None:
            from mirage.detect.blazeface import BlazeFaceConfig, BlazeFaceDetector

            self._detector = BlazeFaceDetector(
                BlazeFaceConfig(model=self.config.detector, score_threshold=self.config.score_threshold)
            )
        return self

    def face_boxes(self, frame: Image, now: float | None = None) -> list[npt.NDArray[np.float32]] | None:
        """Boxes to hide in ``frame`` (found now, or remembered); None when detection failed."""
        self.load()
        now = time.monotonic() if now is None else now
        try:
            detections = self._detector.detect([frame])[0]  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - a failing detector must blur, never crash the camera
            logger.warning("fallback face detection failed; blurring the whole frame", exc_info=True)
            return None
        if detections:
            self._boxes = [np.asarray(d.box, np.float32) for d in detections]
            self._boxes_at = now
            return list(self._boxes)
        if now - self._boxes_at <= self.config.remember_s:
            return list(self._boxes)
        return []

    def render(self, frame: Image, status: str | None = None, now: float | None = None) -> Image:
        """``frame`` under the fallback policy, with ``status`` as a small badge."""
        self.frames += 1
        out = frame
        if self.config.policy == "blur":
            boxes = self.face_boxes(frame, now)
            if boxes is None:
                out = blur_frame(frame)
            elif boxes:
                out = blur_regions(frame, boxes, grow=self.config.grow)
        return draw_badge(out, status) if status else np.array(out, copy=True)

