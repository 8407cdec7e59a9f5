"""Loading the neural swap path (SCRFD + ArcFace + InSwapper) from provisioned weights.

The live path needs only InSwapper (its 5 keypoints come from the FaceMesh);
SCRFD and ArcFace turn the reference photo into the identity latent.

Nothing here downloads: a replica must start fast and offline, and provisioning is
``python -m mirage models fetch`` (or the RayService's init container). A missing
model raises ModelUnavailableError with the command that fetches it.

Which InSwapper file is served (:func:`choose_inswapper`) is decided among the files
that are **already provisioned**: first one that has a TensorRT engine compiled for
this server, else the one that suits the hardware (``inswapper_128_fp16`` on a GPU,
``inswapper_128`` on a CPU). A replica where only the fp16 file was provisioned and
compiled (what docs/gpu.md and the init container do) serves that one on TensorRT.
Each model is served from the file :func:`mirage.runtime.served.served_onnx` decides,
the same function ``models compile`` uses, so the engine it built is found.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from mirage.detect.scrfd import ScrfdDetector
from mirage.errors import ModelUnavailableError
from mirage.identity.arcface import ArcFaceEmbedder
from mirage.runtime.onnx import OrtConfig
from mirage.runtime.select import (
    Accelerators,
    RuntimeChoice,
    RuntimeConfig,
    default_engine_dir,
    load_model,
    probe_accelerators,
    tensorrt_blocker,
)
from mirage.runtime.served import batch_dynamic_copy, prepared_served_onnx, served_onnx
from mirage.runtime.tensorrt import find_engine, make_engine_key
from mirage.swap.inswapper import InSwapper, InSwapperIdentityBuilder
from mirage.weights.provision import ModelStore

__all__ = [
    "INSWAPPER_NAMES",
    "InSwapperChoice",
    "NeuralSwap",
    "batch_dynamic_copy",
    "choose_inswapper",
    "load_neural_swap",
    "provisioned_path",
]

logger = logging.getLogger(__name__)

#: The InSwapper files Mirage knows, fp16 first (the GPU default; what docs/gpu.md provisions).
INSWAPPER_NAMES = ("inswapper_128_fp16", "inswapper_128")


@dataclass(frozen=True)
class NeuralSwap:
    swapper: InSwapper
    identity_builder: InSwapperIdentityBuilder
    #: What runs each model (TensorRT engine, CUDA or CPU) and why, for /debug/models.
    runtimes: dict[str, RuntimeChoice] = field(default_factory=dict)


@dataclass(frozen=True)
class InSwapperChoice:
    name: str
    path: Path
    reason: str


def provisioned_path(store: ModelStore, name: str) -> Path:
    """The provisioned file of ``name`` (present, with the manifest's size); never downloads."""
    entry = store.manifest.get(name)
    path = store.path(name)
    if path.is_file():
        size = path.stat().st_size
        if entry.size is None or size == entry.size:
            return path
        problem = f"{path} has {size} bytes, expected {entry.size}"
    else:
        problem = f"{path} is missing"
    disabled = f"; {entry.enables} is disabled" if entry.enables else ""
    raise ModelUnavailableError(
        f"{entry.title} is not provisioned ({problem}){disabled}; fetch it with `python -m mirage models fetch {name}`."
    )


def _has_engine(
    name: str, path: Path, engine_dir: Path, runtime: RuntimeConfig, acc: Accelerators, dynamic: bool
) -> bool:
    """True when a TensorRT engine for this server exists for ``name``'s served file (nothing is written)."""
    if tensorrt_blocker(runtime, acc) is not None:
        return False
    served = prepared_served_onnx(name, path, dynamic=dynamic)
    if served is None:
        return False
    assert acc.gpu is not None and acc.tensorrt_version is not None
    try:
        shapes = (runtime.sample_shapes or {}).get(name)
        key = make_engine_key(
            served, name, acc.gpu, acc.tensorrt_version, runtime.precision, runtime.profile, shapes,
            cuda_version=acc.cuda_runtime or "",
        )
        find_engine(engine_dir, name, key)
    except ModelUnavailableError:
        return False
    return True


def choose_inswapper(
    store: ModelStore,
    runtime: RuntimeConfig,
    accelerators: Accelerators | None = None,
    *,
    engine_dir: Path | None = None,
    dynamic: bool = True,
) -> InSwapperChoice:
    """The InSwapper file to serve, among those already provisioned (never downloads).

    A file with a compiled TensorRT engine for this server comes first; otherwise fp16
    on a GPU, fp32 on a CPU (where it runs faster); otherwise whichever is present.
    """
    acc = accelerators if accelerators is not None else probe_accelerators()
    engines = engine_dir if engine_dir is not None else runtime.engine_dir or default_engine_dir(store.root, {})
    present: dict[str, Path] = {}
    for name in INSWAPPER_NAMES:
        try:
            present[name] = provisioned_path(store, name)
        except ModelUnavailableError:
            continue
    if not present:
        raise ModelUnavailableError(
            "InSwapper is not provisioned (neither inswapper_128_fp16 nor inswapper_128); the inswapper swapper is disabled. "
            "Fetch it with `python -m mirage models fetch inswapper_128_fp16`."
        )
    on_gpu = acc.gpu is not None
    order = sorted(present, key=lambda n: INSWAPPER_NAMES.index(n) if on_gpu else -INSWAPPER_NAMES.index(n))
    for name in order:
        if _has_engine(name, present[name], engines, runtime, acc, dynamic):
            choice = InSwapperChoice(name, present[name], "provisioned, with a TensorRT engine compiled for this server")
            break
    else:
        name = order[0]
        why = (
            "fp16 suits the GPU"
            if on_gpu and name.endswith("fp16")
            else "fp32 runs faster on a CPU"
            if not on_gpu and not name.endswith("fp16")
            else "the only one provisioned"
        )
        others = [n for n in present if n != name]
        choice = InSwapperChoice(name, present[name], f"provisioned ({why}{'; also present: ' + ', '.join(others) if others else ''})")
    logger.info("InSwapper: serving %s (%s)", choice.name, choice.reason)
    return choice


def load_neural_swap(
    store: ModelStore,
    ort: OrtConfig,
    runtime: RuntimeConfig,
    *,
    dynamic: bool = True,
    accelerators: Accelerators | None = None,
) -> NeuralSwap:
    """SCRFD, ArcFace and the chosen provisioned InSwapper, each on the best runtime available
    (a prebuilt TensorRT engine, CUDA, then CPU; see mirage/runtime/select.py). Never downloads."""
    acc = accelerators if accelerators is not None else probe_accelerators()
    engines = runtime.engine_dir or default_engine_dir(store.root, {})
    chosen = choose_inswapper(store, runtime, acc, engine_dir=engines, dynamic=dynamic)
    scrfd_path = provisioned_path(store, "scrfd_10g")
    arcface_path = provisioned_path(store, "arcface_w600k_r50")
    name = chosen.name
    path = served_onnx(name, chosen.path, dynamic=dynamic)
    scrfd_path = served_onnx("scrfd_10g", scrfd_path, dynamic=dynamic)
    arcface_path = served_onnx("arcface_w600k_r50", arcface_path, dynamic=dynamic)
    swap_model, swap_choice = load_model(name, path, engines, runtime, ort, acc)
    scrfd_model, scrfd_choice = load_model("scrfd_10g", scrfd_path, engines, runtime, ort, acc)
    arcface_model, arcface_choice = load_model("arcface_w600k_r50", arcface_path, engines, runtime, ort, acc)
    swapper = InSwapper(swap_model)
    detector = ScrfdDetector(scrfd_model)
    embedder = ArcFaceEmbedder(arcface_model)
    runtimes = {name: swap_choice, "scrfd_10g": scrfd_choice, "arcface_w600k_r50": arcface_choice}
    return NeuralSwap(swapper=swapper, identity_builder=InSwapperIdentityBuilder(detector, embedder, swapper), runtimes=runtimes)
