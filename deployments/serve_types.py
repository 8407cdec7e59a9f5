"""Typed views of what Ray Serve adds at runtime and its type hints do not say.

``@serve.deployment`` turns a class into a :class:`ray.serve.Deployment` (with ``options``
and ``bind``), and ``@serve.batch`` gives a method ``set_max_batch_size`` and friends; mypy
sees neither. These helpers check at runtime and return the typed object, so callers need no
``type: ignore`` and a missing decorator fails with one sentence.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ray.serve import Deployment


@runtime_checkable
class BatchControls(Protocol):
    """The controls ``@serve.batch`` adds to a batched method."""

    def set_max_batch_size(self, new_max_batch_size: int) -> None: ...

    def set_batch_wait_timeout_s(self, new_batch_wait_timeout_s: float) -> None: ...

    async def _is_batching_task_alive(self) -> bool: ...


def batch_controls(method: object) -> BatchControls:
    """``method``'s batching controls; TypeError when it is not a ``@serve.batch`` method."""
    if not isinstance(method, BatchControls):
        raise TypeError(f"{method!r} is not a @serve.batch method")
    return method


def as_deployment(target: object) -> Deployment:
    """``target`` as the Serve deployment its decorator made of it; TypeError when it is not one."""
    if not isinstance(target, Deployment):
        raise TypeError(f"{target!r} is not a Serve deployment (is @serve.deployment missing?)")
    return target
