"""The frame pipeline with its models in this process, driven synchronously: the CLI, the benchmark baseline.

:class:`FacePipeline` is a thin synchronous face on
:class:`~mirage.pipeline.frame.FramePipeline` — the same object, stage list,
face choice and fallbacks the served session runs — over a
:class:`~mirage.pipeline.models.LocalModelClient` (calls inline, no threads)
and an event loop of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mirage.errors import ModelUnavailableError
from mirage.pipeline.controls import DEFAULT_FIDELITY, NO_ENHANCER, FrameControls
from mirage.pipeline.frame import FramePipeline, FrameSettings, inline
from mirage.pipeline.identity import IdentityResult, SwapEngine, SwapperConfig
from mirage.pipeline.models import DETECTOR, ENHANCER, SWAPPER, DetectorEngine, LocalModelClient
from mirage.pipeline.prepare import FramePreparer
from mirage.pipeline.stages import FACE_STAGES, FaceStage
from mirage.swap.mesh import MeshSwapConfig
from mirage.tracking.tracker import TrackerConfig
from mirage.types import FaceLandmarks, Identity, Image, SwapOptions, SwapperName

if TYPE_CHECKING:  # ONNX Runtime is imported only when the neural path is used
    from mirage.swap.neural import NeuralSwap

logger = logging.getLogger(__name__)

#: The stages a frame's timings name, in order (the face stages come from the stage list).
STAGES: tuple[str, ...] = ("detect", "landmarks", *(stage.name for stage in FACE_STAGES), "paste")

__all__ = ["STAGES", "FacePipeline", "FrameResult", "IdentityResult", "PipelineConfig"]


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline does; built at the edge (CLI flags, benchmark args)."""

    swapper: SwapperName = "mesh"
    max_faces: int = 1
    detector_model: Literal["short", "full"] = "short"
    track: bool = True
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    swap_options: SwapOptions = field(default_factory=SwapOptions)
    mesh: MeshSwapConfig = field(default_factory=MeshSwapConfig)
    num_threads: int = 1
    #: ``none`` or an enhancer's name (its backend must be given to :class:`FacePipeline`).
    enhancer: str = NO_ENHANCER
    fidelity: float = DEFAULT_FIDELITY
    #: How much of the enhanced face shows through the swap's mask (0..1).
    enhance_blend: float = 1.0
    badge: bool = False


@dataclass
class FrameResult:
    frame: Image
    faces: list[FaceLandmarks]
    timings_ms: dict[str, float]
    fallback: str | None = None
    skipped: list[str] = field(default_factory=list)
    enhanced: int = 0


class FacePipeline:
    """Embedded models (plus an optional InSwapper, enhancers, extra stages) for one video stream.

    ``backends``: more objects by deployment name (an enhancer engine under
    ``FaceEnhancer``, the backend of an added stage); ``stages``: the face stages
    (default :data:`~mirage.pipeline.stages.FACE_STAGES`).
    """

    def __init__(
        self,
        config: PipelineConfig,
        neural: NeuralSwap | None = None,
        *,
        backends: Mapping[str, Any] | None = None,
        stages: Sequence[FaceStage] = FACE_STAGES,
    ) -> None:
        self.config = config
        if config.swapper == "inswapper" and neural is None:
            raise ModelUnavailableError("The inswapper swapper needs the InSwapper model; provision it or use --swapper mesh.")
        self.engine = DetectorEngine(config.detector_model, num_threads=config.num_threads)
        self.swap_engine = SwapEngine(
            SwapperConfig(mesh=config.mesh, inswapper=False, reference_detector=config.detector_model, num_threads=config.num_threads),
            neural=neural,
        )
        all_backends: dict[str, Any] = {DETECTOR: self.engine, SWAPPER: self.swap_engine, **(backends or {})}
        if config.enhancer != NO_ENHANCER and ENHANCER not in all_backends:
            raise ModelUnavailableError(f"The enhancer {config.enhancer} is not loaded in this pipeline.")
        self.models = LocalModelClient(all_backends, in_thread=False)
        self.preparer = FramePreparer(config.detector_model, config.mesh)
        self.controls = FrameControls(
            swapper=config.swapper,
            max_faces=config.max_faces,
            options=config.swap_options,
            fallback="blur",
            enhancer=config.enhancer,
            fidelity=config.fidelity,
            blend=config.enhance_blend,
        )
        detect_every = config.tracker.detect_every if config.track else 1
        settings = FrameSettings(deadline_s=None, detect_every=detect_every, badge=config.badge)
        self.frames = FramePipeline(self.models, self.preparer, settings, self.controls, offload=inline, stages=stages)
        self._loop = asyncio.new_event_loop()

    # --- compatibility views --------------------------------------------------------
    @property
    def detector(self) -> Any:
        return self.engine.detector

    @property
    def landmarker(self) -> Any:
        return self.engine.landmarker

    @property
    def mesh_swapper(self) -> Any:
        return self.preparer._mesh  # noqa: SLF001 - the same stateless swapper the crops come from

    @property
    def neural(self) -> NeuralSwap | None:
        return self.swap_engine.inswapper

    # --- reference ------------------------------------------------------------------
    def reference_landmarks(self, reference: Image) -> tuple[FaceLandmarks, int]:
        """The largest face's mesh in a reference photo, and how many faces it had."""
        return self.swap_engine._finders[0].landmarks(reference)  # noqa: SLF001

    def build_identity(self, reference: Image, swapper: SwapperName | None = None) -> IdentityResult:
        """Identity data for the chosen swapper, from the reference's largest face (as served sessions choose it)."""
        return self.swap_engine.identity_from_image(reference, swapper or self.config.swapper)

    # --- frames -----------------------------------------------------------------------
    def process(self, frame: Image, identity: Identity, t: float | None = None) -> FrameResult:
        """Swap every tracked face (up to max_faces) in one frame."""
        if self.controls.identity is not identity:
            self.controls.set_identity(identity)
        now = time.monotonic() if t is None else t
        analysis, rendered = self._loop.run_until_complete(self.frames.process(frame, now))
        timings = {stage: 0.0 for stage in STAGES}
        for stage in self.frames.stages:
            timings.setdefault(stage.name, 0.0)
        timings.update(rendered.stages_ms)
        return FrameResult(
            frame=rendered.image,
            faces=analysis.faces if rendered.fallback is None else [],
            timings_ms=timings,
            fallback=rendered.fallback,
            skipped=list(rendered.skipped),
            enhanced=rendered.enhanced,
        )

    def reset(self) -> None:
        """Forget tracked faces (a new, unrelated stream or image)."""
        self.frames.reset()

    def close(self) -> None:
        self._loop.close()

    def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_closed():
            loop.close()
