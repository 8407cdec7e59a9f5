"""The one frame pipeline (no Ray): the CLI, the benchmark baseline and every served session run it.

- :mod:`~mirage.pipeline.frame`: :class:`FramePipeline`, one stream's tracker, face stages, fallbacks
- :mod:`~mirage.pipeline.stages`: the face stages as data (:data:`FACE_STAGES`: swap, enhance)
- :mod:`~mirage.pipeline.models`: the model client protocol and its in-process implementation
- :mod:`~mirage.pipeline.prepare`: pure pre-processing (model inputs, face crops), no model
- :mod:`~mirage.pipeline.identity`: identity building, the identity cache, the batched swap
- :mod:`~mirage.pipeline.enhance`: the enhancers of this process, batched by name
- :mod:`~mirage.pipeline.local`: :class:`FacePipeline`, the synchronous in-process face (CLI, benchmarks)
"""

from mirage.pipeline.controls import FrameControls
from mirage.pipeline.frame import Analysis, FramePipeline, FrameSettings, Rendered
from mirage.pipeline.identity import IdentityResult
from mirage.pipeline.local import STAGES, FacePipeline, FrameResult, PipelineConfig
from mirage.pipeline.stages import FACE_STAGES, EnhanceStage, FaceStage, FaceWork, StageContext, SwapStage

__all__ = [
    "FACE_STAGES",
    "STAGES",
    "Analysis",
    "EnhanceStage",
    "FacePipeline",
    "FaceStage",
    "FaceWork",
    "FrameControls",
    "FramePipeline",
    "FrameResult",
    "FrameSettings",
    "IdentityResult",
    "PipelineConfig",
    "Rendered",
    "StageContext",
    "SwapStage",
]
