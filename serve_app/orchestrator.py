"""Per-frame orchestration of one served session (DESIGN.md §1), on the one frame pipeline.

The pipeline itself — tracking, face choice, the face stages (swap, enhance,
…), paste-back, badge, the fallback policies — is
:class:`mirage.pipeline.frame.FramePipeline`, the same object the CLI and the
benchmark baseline run. This module adds what only a served session has: the
model client over Serve deployment handles (:class:`ServeModelClient`), the
conversion of decoded WebRTC frames (≤ ``max_output_side``, with an analysis
copy ≤ ``max_side``) in the same worker hop as the first model inputs, and the
loop from the latest-frame pump to the ordered output track.

Tracking is sequential per session (the tracker's state follows frame order);
rendering (swap, paste, encode-ready frame) of frame N overlaps the analysis
of frame N+1, within the output track's small window, and frames leave in order.
Everything that touches pixels runs in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from av import VideoFrame

from mirage.geometry.steady import SteadyConfig
from mirage.overlay import blur_frame
from mirage.pipeline.controls import NO_ENHANCER, FrameControls
from mirage.pipeline.frame import Analysis, Breakers, FramePipeline, FrameSettings, PipelineCounters, Rendered
from mirage.pipeline.models import ENHANCER, ModelClient
from mirage.pipeline.prepare import FramePreparer, ModelInputs, analysis_copy, even_size
from mirage.pipeline.stages import FACE_STAGES, FaceStage
from mirage.types import Image
from mirage.video import video_frame_to_bgr
from serve_app.control import ControlError
from serve_app.media import LatestFramePump, OrderedVideoTrack, video_frame_like
from serve_app.metrics import FrameRecord
from serve_app.settings import SessionSettings

logger = logging.getLogger(__name__)

#: A session's run-time choices (the pipeline's controls).
SessionControls = FrameControls
#: Builds the outgoing frame from the final picture (in the same worker hop as the picture).
FrameBuilder = Callable[[Image], VideoFrame]

__all__ = [
    "Analysis",
    "EnhanceState",
    "FrameBuilder",
    "FramePreparer",
    "FrameProcessor",
    "ModelInputs",
    "Rendered",
    "ServeModelClient",
    "SessionControls",
    "VideoLoop",
    "analysis_copy",
    "frame_settings",
    "to_bgr",
]


class ServeModelClient:
    """:class:`~mirage.pipeline.models.ModelClient` over Serve deployment handles, by deployment name."""

    def __init__(self, handles: Mapping[str, Any]) -> None:
        self._handles = dict(handles)

    def has(self, deployment: str) -> bool:
        return deployment in self._handles

    def handle(self, deployment: str) -> Any:
        try:
            return self._handles[deployment]
        except KeyError:
            raise LookupError(f"no {deployment} deployment in this application") from None

    async def infer(self, deployment: str, method: str, item: Any) -> Any:
        return await getattr(self.handle(deployment), method).remote(item)

    async def call(self, deployment: str, method: str, *args: Any) -> Any:
        return await getattr(self.handle(deployment), method).remote(*args)


@dataclass
class EnhanceState:
    """One replica's view of face enhancement: what the FaceEnhancer offers (asked once), shared counters."""

    counters: PipelineCounters = field(default_factory=PipelineCounters)
    _available: list[str] | None = None

    async def available(self, models: ModelClient) -> list[str]:
        """The enhancers sessions may choose (the deployment's ``available``; [] when there is none)."""
        if self._available is None:
            if not models.has(ENHANCER):
                return []
            try:
                self._available = list(await asyncio.wait_for(models.call(ENHANCER, "available"), 10.0))
            except Exception as exc:  # noqa: BLE001 - no enhancer then; asked again next time
                logger.warning("could not ask the enhancer for its models (%s)", type(exc).__name__)
                return []
        return list(self._available)

    async def apply(
        self,
        models: ModelClient,
        controls: FrameControls,
        enhancer: str | None,
        fidelity: float | None,
        blend: float | None,
        request_id: int | None = None,
    ) -> None:
        """Set a session's enhancement; an enhancer that is not provisioned here is refused (nothing changes)."""
        if enhancer is not None and enhancer != NO_ENHANCER:
            names = await self.available(models)
            if enhancer not in names:
                offered = ", ".join(names) if names else "none is provisioned"
                raise ControlError(
                    "enhancer_unavailable",
                    f"The enhancer {enhancer} is not available on this server ({offered}); "
                    "the session goes on without it.",
                    request_id,
                )
        if enhancer is not None:
            controls.enhancer = enhancer
        if fidelity is not None:
            controls.fidelity = float(fidelity)
        if blend is not None:
            controls.blend = float(blend)

    def metrics(self, live: Sequence[str], default_fidelity: float) -> dict[str, Any]:
        """``/metrics``' enhancer keys (the original product's names)."""
        in_use = [name for name in live if name != NO_ENHANCER]
        counts = {name: in_use.count(name) for name in sorted(set(in_use))}
        return {
            "enhanced_frames": self.counters.enhanced_frames,
            "enhance_skipped_frames": self.counters.skipped.get("enhance", 0),
            "enhancer": max(counts, key=lambda n: counts[n]) if counts else NO_ENHANCER,
            "enhancers_in_use": counts,
            "codeformer_fidelity": default_fidelity,
            "codeformer_loaded": "codeformer" in (self._available or []),
        }


def frame_settings(settings: SessionSettings) -> FrameSettings:
    return FrameSettings(
        deadline_s=settings.deadline_ms / 1000.0,
        detect_every=settings.detect_every,
        badge=settings.badge,
        hold_s=settings.hold_s,
        fuse_tracking=settings.fuse_tracking,
        steady=SteadyConfig(strength=settings.steady),
    )


def to_bgr(frame: VideoFrame, max_side: int) -> Image:
    """Decoded frame → BGR array, longest side at most ``max_side`` (aspect kept, even sides).

    The frame is scaled while still YUV (libswscale, area filter: cheap, and no
    colour conversion there) and converted to BGR by OpenCV, which is accurate
    where swscale's BGR path darkens every hop (see ``mirage.video``).
    """
    width, height = frame.width, frame.height
    if max(width, height) > max_side:
        new_w, new_h = even_size(width, height, max_side)
        frame = frame.reformat(width=new_w, height=new_h, format="yuv420p", interpolation="AREA")
    return np.ascontiguousarray(video_frame_to_bgr(frame))


class FrameProcessor(FramePipeline):
    """The frame pipeline of one served session: :class:`FramePipeline` fed with decoded WebRTC frames."""

    def __init__(
        self,
        models: ModelClient,
        preparer: FramePreparer,
        settings: SessionSettings,
        controls: FrameControls,
        clock: Callable[[], float] = time.monotonic,
        breakers: Breakers | None = None,
        stages: Sequence[FaceStage] = FACE_STAGES,
        counters: PipelineCounters | None = None,
    ) -> None:
        super().__init__(models, preparer, frame_settings(settings), controls, clock=clock, breakers=breakers,
                         stages=stages, counters=counters)

    async def analyze_frame(
        self, frame: VideoFrame, t: float, max_side: int, max_output_side: int | None = None
    ) -> tuple[Image, Analysis]:
        """Convert a decoded frame and analyze a copy of it (≤ ``max_side``).

        Returns the picture that goes out (the camera's resolution, at most
        ``max_output_side``; default ``max_side``) and the analysis in its
        coordinates. Conversion and the first model inputs share one
        worker-thread hop: the tracker's plan (detect, or landmarks in the
        tracked regions) is known before the pixels are, and every hop costs a
        thread hand-over under load.
        """
        plan = self.plan()
        start = time.perf_counter()
        output_side = max(max_output_side or max_side, max_side)

        def convert_and_prepare() -> tuple[Image, Image, float, ModelInputs]:
            picture = to_bgr(frame, output_side)
            small, factor = picture, 1.0
            if max(picture.shape[:2]) > max_side:
                # The analysis copy from the decoded YUV frame (libswscale's area filter, ~0.4 ms at
                # 640x480) rather than from the BGR picture (OpenCV's INTER_AREA at a ratio like 1.25:
                # ~3 ms, the ingress's largest pixel cost after the codec).
                small = to_bgr(frame, max_side)
                factor = picture.shape[1] / float(small.shape[1])
            return picture, small, factor, self.model_inputs(small, plan, picture, factor)

        picture, small, factor, inputs = await asyncio.to_thread(convert_and_prepare)
        convert_ms = (time.perf_counter() - start) * 1000.0
        analysis = await self.analyze_prepared(small, t, plan, inputs)
        analysis.stages_ms["convert"] = convert_ms
        return picture, analysis.scaled(factor)


class VideoLoop:
    """Pump → processor → ordered output track, for one session."""

    def __init__(
        self,
        pump: LatestFramePump,
        processor: FrameProcessor,
        output: OrderedVideoTrack,
        max_side: int,
        on_frame: Callable[[FrameRecord], None],
        max_output_side: int | None = None,
    ) -> None:
        self._pump = pump
        self._processor = processor
        self._output = output
        self._max_side = max_side
        self._max_output_side = max_output_side
        self._on_frame = on_frame
        self.errors = 0

    async def run(self) -> None:
        try:
            while True:
                item = await self._pump.next()
                if item is None:
                    break
                frame, arrived = item
                try:
                    image, analysis = await self._processor.analyze_frame(
                        frame, arrived, self._max_side, self._max_output_side
                    )
                except Exception:  # noqa: BLE001 - a broken frame must not end the session
                    self.errors += 1
                    logger.exception("frame preparation failed; frame skipped")
                    continue
                task = asyncio.ensure_future(self._finish(image, analysis, frame.pts, frame.time_base, arrived))
                await self._output.put(task)
        finally:
            self._output.finish()

    async def _finish(self, image: Image, analysis: Analysis, pts: int | None, time_base: Any, arrived: float) -> VideoFrame:
        def build(picture: Image) -> VideoFrame:
            return video_frame_like(picture, pts, time_base)

        try:
            rendered = await self._processor.render(image, analysis, build)
        except Exception:  # noqa: BLE001 - render is meant not to raise; belt and braces
            self.errors += 1
            logger.exception("render failed; frame blurred")
            rendered = Rendered(image=blur_frame(image), faces=0, fallback="blur", stages_ms=dict(analysis.stages_ms))
        frame = rendered.frame
        if frame is None:  # passthrough / hold: the picture is ready, only the frame is left
            frame = await asyncio.to_thread(video_frame_like, rendered.image, pts, time_base)
        stages = dict(rendered.stages_ms)
        stages["total"] = (time.monotonic() - arrived) * 1000.0
        self._on_frame(FrameRecord(stages_ms=stages, faces=rendered.faces, fallback=rendered.fallback))
        return frame

