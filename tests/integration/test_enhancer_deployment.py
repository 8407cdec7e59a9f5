"""The FaceEnhancer deployment alone on a real local Ray + Serve, with stand-in enhancers
(official signatures, named stand-ins): faces of concurrent sessions share batches grouped by
model, every crop comes back the same size and changed, an enhancer that is not provisioned is
answered per item with one sentence, ``user_config`` reaches ``reconfigure``, health and stats answer.

Run under the heavy-job lock (it starts Ray):
    flock /tmp/mirage-heavy.lock timeout 900 .venv/bin/pytest tests/integration/test_enhancer_deployment.py -x -q
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mirage.enhance import ENHANCER_UNAVAILABLE, EnhanceItem, EnhancerConfig, EnhanceRequest, EnhanceResult
from mirage.geometry.align import arcface_template
from standins.models import write_enhancer_standins

REPO = Path(__file__).resolve().parents[2]
APP = "enhancer-only"
SESSIONS = 3
FRAMES = 6
SIZE = 128  # stand-ins at 128 px: the real graphs' signatures, quick on two cores


@pytest.fixture(scope="module")
def enhancer_handle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import ray
    from ray import serve

    from deployments.enhancer import FaceEnhancer
    from tests.integration.served import free_port

    models = tmp_path_factory.mktemp("enhancer-models")
    manifest = write_enhancer_standins(models, names=("gfpgan_1.4", "codeformer"), size=SIZE)
    paths = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024 * 1024)
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    app = FaceEnhancer.options(
        user_config={"max_batch_size": 8, "batch_wait_timeout_s": 0.02, "compute_in_thread": True}
    ).bind(EnhancerConfig(models_dir=str(models), manifest=str(manifest)))
    handle = serve.run(app, name=APP, route_prefix=None)
    try:
        yield handle
    finally:
        serve.delete(APP)
        if started:
            serve.shutdown()
            ray.shutdown()


def _crop(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(40, 210, (112, 112, 3), dtype=np.uint8)


async def _session(handle: Any, index: int, name: str) -> list[tuple[np.ndarray, EnhanceResult]]:
    out: list[tuple[np.ndarray, EnhanceResult]] = []
    points = arcface_template(112)
    for k in range(FRAMES):
        crop = _crop(100 * index + k)
        request = EnhanceRequest(name, EnhanceItem(crop, points, fidelity=0.5))
        result = await asyncio.wait_for(handle.enhance.remote(request), timeout=30.0)
        out.append((crop, result))
    return out


def test_sessions_share_batches_grouped_by_model(enhancer_handle: Any) -> None:
    names = ["gfpgan_1.4", "codeformer", "gfpgan_1.4"]

    async def run() -> list[list[tuple[np.ndarray, EnhanceResult]]]:
        return list(await asyncio.gather(*(_session(enhancer_handle, i, names[i]) for i in range(SESSIONS))))

    sessions = asyncio.run(run())
    for frames in sessions:
        for crop, result in frames:
            assert result.ok, result.message
            assert result.image is not None and result.image.shape == crop.shape
            assert np.abs(result.image.astype(int) - crop.astype(int)).mean() > 2.0  # the stand-in changed the face
    stats = asyncio.run(_call(enhancer_handle.stats.remote()))
    assert stats["enhancers"] == ["gfpgan_1.4", "codeformer"]
    assert stats["enhanced_frames"] == SESSIONS * FRAMES
    assert stats["enhanced_by_model"] == {"gfpgan_1.4": 2 * FRAMES, "codeformer": FRAMES}
    method = stats["methods"]["enhance"]
    assert method["items"] == SESSIONS * FRAMES and method["errors"] == 0
    assert method["max_batch_size"] > 1, f"three sessions never shared a batch: {method}"
    assert stats["batching"]["batch_wait_timeout_s"] == pytest.approx(0.02)


def test_unprovisioned_enhancer_is_answered_per_item(enhancer_handle: Any) -> None:
    available = asyncio.run(_call(enhancer_handle.available.remote()))
    assert available == ["gfpgan_1.4", "codeformer"]
    request = EnhanceRequest("gpen_bfr_512", EnhanceItem(_crop(1), arcface_template(112)))
    result = asyncio.run(_call(enhancer_handle.enhance.remote(request)))
    assert not result.ok and result.error == ENHANCER_UNAVAILABLE
    assert result.message and "gpen_bfr_512" in result.message and "\n" not in result.message
    models = asyncio.run(_call(enhancer_handle.models.remote()))
    assert models["gfpgan_1.4"]["standin"] is True and models["gfpgan_1.4"]["licence"].startswith("Apache-2.0")
    assert models["gpen_bfr_512"]["available"] is False


def test_health_check_answers(enhancer_handle: Any) -> None:
    from ray import serve

    status = serve.status().applications[APP]
    assert str(status.status).endswith("RUNNING")


async def _call(response: Any) -> Any:
    return await response
