"""Loading the neural swap path (SCRFD + ArcFace + InSwapper) from provisioned weights.

The live path needs only InSwapper (its 5 keypoints come from the FaceMesh);
SCRFD and ArcFace turn the reference photo into the identity latent.
Missing weights raise ModelUnavailableError with the command that fetches them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mirage.detect.scrfd import ScrfdDetector
from mirage.identity.arcface import ArcFaceEmbedder
from mirage.errors import ModelUnavailableError
from mirage.runtime.batch_rewrite import check_batch_equivalence, make_batch_dynamic
from mirage.runtime.onnx import OrtConfig
from mirage.runtime.select import RuntimeChoice, RuntimeConfig, default_engine_dir, load_model
from mirage.swap.inswapper import InSwapper, InSwapperIdentityBuilder
from mirage.weights.provision import ModelStore, ProvisionConfig

logger = logging.getLogger(__name__)

#: Preference order: the fp32 file runs faster on CPUs; GPUs take either.
INSWAPPER_NAMES = ("inswapper_128", "inswapper_128_fp16")


@dataclass(frozen=True)
class NeuralSwap:
    swapper: InSwapper
    identity_builder: InSwapperIdentityBuilder
    #: What runs each model (TensorRT engine, CUDA or CPU) and why, for /debug/models.
    runtimes: dict[str, RuntimeChoice] = field(default_factory=dict)


def batch_dynamic_copy(path: Path, input_shapes: Mapping[str, Sequence[int]] | None = None) -> Path:
    """The dynamic-batch rewrite of a model file, made once beside it (a weights cache).

    The rewrite is proven once with ONNX Runtime (batch 2 equals two batch-1
    runs) before it is used; if the proof fails, the original batch-1 file is
    used and the stage loops over its batch instead.
    """
    target = path.with_name(f"{path.stem}.batch-dynamic.onnx")
    if target.exists() and target.stat().st_mtime >= path.stat().st_mtime:
        return target
    try:
        make_batch_dynamic(path, target)
        check_batch_equivalence(path, target, input_shapes=input_shapes)
    except ModelUnavailableError as exc:
        target.unlink(missing_ok=True)
        logger.warning("%s: dynamic-batch rewrite not usable (%s); running it at batch 1.", path.name, exc)
        return path
    return target


def load_neural_swap(
    store: ModelStore | None = None,
    ort: OrtConfig | None = None,
    runtime: RuntimeConfig | None = None,
    *,
    dynamic: bool = True,
) -> NeuralSwap:
    """SCRFD, ArcFace and the first provisioned InSwapper, each on the best runtime
    available (a prebuilt TensorRT engine, CUDA, then CPU; see mirage/runtime/select.py)."""
    store = store or ModelStore(ProvisionConfig.from_env())
    ort = ort or OrtConfig.from_env()
    runtime = runtime or RuntimeConfig.from_env()
    inswapper_path = None
    last_error: Exception | None = None
    for name in INSWAPPER_NAMES:
        try:
            inswapper_path = (name, store.ensure_available(name))
            break
        except Exception as exc:  # try the other file before giving up
            last_error = exc
    if inswapper_path is None:
        assert last_error is not None
        raise last_error
    name, path = inswapper_path
    scrfd_path = store.ensure_available("scrfd_10g")
    arcface_path = store.ensure_available("arcface_w600k_r50")
    if dynamic:
        path = batch_dynamic_copy(path)
        scrfd_path = batch_dynamic_copy(scrfd_path, {"input.1": (1, 3, 640, 640)})
    engines = default_engine_dir(store.root)
    swap_model, swap_choice = load_model(name, path, engines, runtime, ort)
    scrfd_model, scrfd_choice = load_model("scrfd_10g", scrfd_path, engines, runtime, ort)
    arcface_model, arcface_choice = load_model("arcface_w600k_r50", arcface_path, engines, runtime, ort)
    swapper = InSwapper(swap_model)
    detector = ScrfdDetector(scrfd_model)
    embedder = ArcFaceEmbedder(arcface_model)
    runtimes = {name: swap_choice, "scrfd_10g": scrfd_choice, "arcface_w600k_r50": arcface_choice}
    return NeuralSwap(swapper=swapper, identity_builder=InSwapperIdentityBuilder(detector, embedder, swapper), runtimes=runtimes)
