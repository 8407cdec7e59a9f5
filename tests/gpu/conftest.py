"""GPU tests: marked ``gpu`` and skipped, with the reason, where CUDA or TensorRT is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def gpu_unavailable_reason() -> str | None:
    """Why the GPU tests cannot run here, or None when they can."""
    from mirage.runtime.cuda import CudaRuntime, CudaUnavailableError
    from mirage.runtime.select import probe_accelerators

    acc = probe_accelerators()
    if acc.gpu is None:
        return f"no CUDA GPU: {acc.gpu_reason}"
    if acc.tensorrt_version is None:
        return f"TensorRT unavailable: {acc.tensorrt_reason}"
    try:
        CudaRuntime()
    except CudaUnavailableError as exc:
        return f"CUDA runtime library unavailable: {exc}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in Path(str(item.path)).resolve().parents]
    if not mine:
        return
    reason = gpu_unavailable_reason()
    for item in mine:
        item.add_marker(pytest.mark.gpu)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
