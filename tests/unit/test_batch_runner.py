"""deployments.detector.run_batch: where a batch runs, and what it records."""

from __future__ import annotations

import asyncio
import threading

import pytest

from deployments.detector import BatchingConfig, run_batch
from deployments.metrics import BatchMetrics


def _run(in_thread: bool, fn) -> tuple[list[int], int]:  # type: ignore[no-untyped-def]
    async def go() -> tuple[list[int], int]:
        return await run_batch(BatchMetrics("test"), "double", fn, [1, 2, 3], in_thread), threading.get_ident()

    return asyncio.run(go())


@pytest.mark.parametrize("in_thread", [False, True])
def test_a_batch_runs_on_the_loop_by_default_or_in_a_worker_thread(in_thread: bool) -> None:
    seen: list[int] = []

    def double(items):  # type: ignore[no-untyped-def]
        seen.append(threading.get_ident())
        return [2 * i for i in items]

    results, loop_thread = _run(in_thread, double)
    assert results == [2, 4, 6]
    assert (seen[0] != loop_thread) is in_thread


def test_a_short_result_list_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="returned 2 results for 3 inputs"):
        _run(False, lambda items: items[:2])


def test_user_config_defaults_to_the_event_loop() -> None:
    assert BatchingConfig().compute_in_thread is False
    assert BatchingConfig.model_validate({"compute_in_thread": True}).compute_in_thread is True
