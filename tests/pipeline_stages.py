"""A face stage added to the pipeline's list for tests: ``tint`` stripes the swapped crop (dark bands).

Stripes in brightness, not a colour shift: paste-back gives the swapped face the live face's
low-frequency shading and chroma, which would take a uniform or colour tint out again; detail
(the bands) goes through.

:data:`TINT_STAGES` is the default stage list plus this one; :class:`TintBackend` is its model for
the in-process client, :class:`TintDeployment` its Serve shell (importable in Ray workers: the
served tests put the repository on PYTHONPATH).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from mirage.pipeline import FACE_STAGES, FaceWork, StageContext
from mirage.pipeline.controls import FrameControls
from mirage.types import Image, SwappedFace

TINT = "Tint"
#: Taken off every other band of rows of each swapped crop.
TINT_DARK = 70


def tint(image: Image) -> Image:
    """Every other 3-pixel band of rows is TINT_DARK darker."""
    out = image.astype(np.int16)
    rows = (np.arange(out.shape[0]) // 3) % 2 == 0
    out[rows] -= TINT_DARK
    return np.clip(out, 0, 255).astype(np.uint8)


class TintBackend:
    """The tint "model" in process (what LocalModelClient calls: ``tint_batch``); counts its batches."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def tint_batch(self, items: Sequence[Image]) -> list[Image]:
        self.batches.append(len(items))
        return [tint(item) for item in items]


@dataclass(frozen=True)
class TintStage:
    name: str = "tint"
    required: bool = False
    deployment: str = TINT

    def wanted(self, controls: FrameControls) -> bool:
        return True

    async def run(self, ctx: StageContext, work: FaceWork) -> FaceWork:
        images = [await ctx.models.infer(self.deployment, "tint", face.image) for face in work.swapped]
        faces = [SwappedFace(image=image, mask=face.mask) for image, face in zip(images, work.swapped, strict=True)]
        return replace(work, swapped=faces)


TINT_STAGES = (*FACE_STAGES, TintStage())


def tint_deployment():  # type: ignore[no-untyped-def]
    """The Serve shell of the tint stage (imports Ray only when asked for)."""
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0.05}, max_ongoing_requests=32)
    class TintDeployment:
        def __init__(self) -> None:
            self.core = TintBackend()

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
        async def tint(self, items: list[Image]) -> list[Image]:
            return self.core.tint_batch(items)

        async def stats(self) -> dict[str, object]:
            return {"deployment": TINT, "batches": len(self.core.batches), "items": sum(self.core.batches)}

    return TintDeployment
