"""The face stages of the frame pipeline, as data.

After tracking (detect when the tracker asks → landmarks → smoothing, the
fixed front of every frame), each chosen face is cut into a crop and goes
through :data:`FACE_STAGES` in order, then is pasted back. A stage is one
object with a ``name`` (also its circuit breaker's and timing's name), whether
it is ``required`` (a required stage that fails or is late sends the frame out
under the stream's fallback policy; an optional one is skipped and the faces go
on as they were), whether it is ``wanted`` for the stream's controls, and
``run``, which calls its model through the :class:`~mirage.pipeline.models.ModelClient`
by deployment name. Adding a stage = one entry in that list (+ a backend under
the deployment's name: a Serve deployment shell in ``serve_app.app``'s list,
an object for :class:`~mirage.pipeline.models.LocalModelClient`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from mirage.pipeline.controls import NO_ENHANCER, FrameControls
from mirage.pipeline.messages import UNKNOWN_IDENTITY, SwapItem, SwapResult
from mirage.pipeline.models import ENHANCER, SWAPPER, ModelClient
from mirage.types import FaceCrop, Image, SwappedFace

T = TypeVar("T")

#: Runs pixel work off the event loop (``asyncio.to_thread`` when served; inline in the CLI).
Offload = Callable[..., Awaitable[Any]]
class EnhanceError(RuntimeError):
    """An enhancer answered with an error (not provisioned on that replica, or its batch failed)."""


#: Swap calls after an identity change that carry the identity itself (then only its key).
IDENTITY_WARMUP_CALLS = 3


def identity_sends(state: dict[str, Any], key: str) -> bool:
    """Whether this swap call carries the identity itself (the first calls after a change), else only its key."""
    if key != state.get("warm_key"):
        state["warm_key"], state["sends"] = key, IDENTITY_WARMUP_CALLS
    attach = bool(state["sends"] > 0)
    if attach:
        state["sends"] -= 1
    return attach


def resend_identity(state: dict[str, Any]) -> None:
    """A replica did not know the identity (new or restarted): the next calls carry it again."""
    state["sends"] = IDENTITY_WARMUP_CALLS


@dataclass(frozen=True)
class FaceWork:
    """The faces of one frame on their way through the stages (crops, and what each became)."""

    crops: list[FaceCrop]
    swapped: list[SwappedFace] = field(default_factory=list)
    #: Faces an enhancer changed in this frame.
    enhanced: int = 0


@dataclass
class StageContext:
    """What a stage may use: the model client, the stream's controls, its own per-stream state."""

    models: ModelClient
    controls: FrameControls
    offload: Offload
    state: dict[str, Any]


class FaceStage(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def required(self) -> bool: ...

    def wanted(self, controls: FrameControls) -> bool: ...

    async def run(self, ctx: StageContext, work: FaceWork) -> FaceWork: ...


@dataclass(frozen=True)
class SwapStage:
    """The identity on every crop (mesh or InSwapper); required: a failure never shows the real face."""

    name: str = "swap"
    required: bool = True
    deployment: str = SWAPPER

    def wanted(self, controls: FrameControls) -> bool:
        return True

    async def run(self, ctx: StageContext, work: FaceWork) -> FaceWork:
        """Swap the crops; the identity travels only while the swapper replicas may not hold it."""
        controls, state, models = ctx.controls, ctx.state, ctx.models
        identity, key, swapper, options = controls.identity, controls.identity_key, controls.swapper, controls.options
        if identity is None:
            raise LookupError("no identity")
        if work.swapped:  # swapped already, in the tracking call (mirage.pipeline.fused)
            return work
        attach = identity_sends(state, key)

        def item(crop: FaceCrop, with_identity: bool) -> SwapItem:
            return SwapItem(crop=crop, identity_key=key, identity=identity if with_identity else None, swapper=swapper, options=options)

        calls = [models.infer(self.deployment, "swap", item(c, attach)) for c in work.crops]
        results: list[SwapResult] = list(await asyncio.gather(*calls))
        unknown = [i for i, r in enumerate(results) if r.error == UNKNOWN_IDENTITY]
        if unknown:
            # A replica that never saw this identity (a new or restarted replica): send it again.
            resend_identity(state)
            retried = await asyncio.gather(*(models.infer(self.deployment, "swap", item(work.crops[i], True)) for i in unknown))
            for i, result in zip(unknown, retried, strict=True):
                results[i] = result
        failed = [r.error for r in results if r.error is not None]
        if failed:
            raise RuntimeError(f"swap failed: {failed[0]}")
        return replace(work, swapped=[r.face() for r in results])


@dataclass(frozen=True)
class EnhanceStage:
    """A face restorer on the swapped crop, blended back through the swap's mask; optional.

    Late or failed: the swapped face goes out as it is (counted), never a blurred one.
    """

    name: str = "enhance"
    required: bool = False
    deployment: str = ENHANCER

    def wanted(self, controls: FrameControls) -> bool:
        return controls.enhancer != NO_ENHANCER

    async def run(self, ctx: StageContext, work: FaceWork) -> FaceWork:
        from mirage.enhance import EnhanceItem, blend_enhanced, five_points_in_crop

        controls = ctx.controls
        name, fidelity, blend = controls.enhancer, controls.fidelity, controls.blend
        requests = [
            (name, EnhanceItem(image=face.image, five_points=five_points_in_crop(crop), fidelity=fidelity))
            for crop, face in zip(work.crops, work.swapped, strict=True)
        ]
        results = await asyncio.gather(*(ctx.models.infer(self.deployment, "enhance", r) for r in requests))
        failed = [r for r in results if not r.ok]
        if failed:  # the replica does not have it, or its batch failed: the swapped faces go on
            raise EnhanceError(failed[0].message or failed[0].error or "enhancement failed")
        enhanced: list[Image] = [r.image for r in results]

        def mix() -> list[SwappedFace]:
            return [blend_enhanced(face, out, blend) for face, out in zip(work.swapped, enhanced, strict=True)]

        swapped = await ctx.offload(mix)
        return replace(work, swapped=swapped, enhanced=len(swapped))


#: The face stages every caller runs, in order (after tracking and cropping, before paste-back).
FACE_STAGES: tuple[FaceStage, ...] = (SwapStage(), EnhanceStage())
