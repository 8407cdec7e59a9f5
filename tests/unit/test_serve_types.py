"""deployments.serve_types: runtime-checked typed views of Serve's decorators (no Ray cluster needed)."""

from __future__ import annotations

import asyncio

import pytest
from ray import serve

from deployments.serve_types import as_deployment, batch_controls


@serve.deployment
class _Doubler:
    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.001)
    async def double(self, items: list[int]) -> list[int]:
        return [2 * i for i in items]

    async def plain(self, x: int) -> int:
        return x


class _NotDeployed:
    pass


def test_as_deployment_accepts_only_deployments() -> None:
    deployment = as_deployment(_Doubler)
    assert deployment.name == "_Doubler" and deployment.options(name="other").name == "other"
    with pytest.raises(TypeError, match="not a Serve deployment"):
        as_deployment(_NotDeployed)


def test_batch_controls_of_a_bound_batch_method() -> None:
    # Running a batch needs a replica context (a real Serve app: tests/integration); the controls do not.
    instance = as_deployment(_Doubler).func_or_class()
    controls = batch_controls(instance.double)
    controls.set_max_batch_size(2)
    controls.set_batch_wait_timeout_s(0.0)
    assert asyncio.iscoroutinefunction(controls._is_batching_task_alive)
    with pytest.raises(TypeError, match="not a @serve.batch method"):
        batch_controls(instance.plain)
