"""Which face restorers exist, which are provisioned here, and loading one on the best runtime.

Same path as the other neural models: the provisioned file (present, with the
manifest's size when it pins one; never downloaded here), its dynamic-batch
rewrite when the export is batch 1 (:func:`mirage.runtime.served.served_onnx`,
proven batch-N = N x batch-1 before use), then a compiled TensorRT engine, ONNX
Runtime CUDA or CPU (:func:`mirage.runtime.select.load_model`, which logs the
choice and why). A name that is not provisioned raises
:class:`~mirage.errors.ModelUnavailableError` with one sentence saying how to fetch it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mirage.enhance.onnx_enhancer import OnnxFaceEnhancer
from mirage.errors import MirageError, ModelUnavailableError
from mirage.runtime.onnx import OrtConfig
from mirage.runtime.select import Accelerators, RuntimeConfig, default_engine_dir, load_model, probe_accelerators
from mirage.runtime.served import served_onnx
from mirage.swap.neural import provisioned_path
from mirage.weights.manifest import Manifest, load_manifest
from mirage.weights.provision import ModelStore, ProvisionConfig

logger = logging.getLogger(__name__)

#: The enhancers Mirage knows (manifest names), in the order /config lists them.
ENHANCER_NAMES: tuple[str, ...] = ("gfpgan_1.4", "codeformer", "gpen_bfr_256", "gpen_bfr_512")


def offline_store(models_dir: Path, manifest: Manifest | Path | None = None) -> ModelStore:
    """A store reading ``models_dir`` as it is (no persistence switch, no downloads)."""
    loaded = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    config = ProvisionConfig(
        models_dir=Path(models_dir),
        persist=False,
        persist_dir=Path(models_dir),
        fresh=False,
        offline=True,
        allow_download=False,
    )
    return ModelStore(config, loaded)


def _store(source: ModelStore | Path) -> ModelStore:
    """The store for ``source`` (the environment is read at the edges, never here)."""
    if isinstance(source, ModelStore):
        return source
    return offline_store(Path(source))


def _known(store: ModelStore) -> list[str]:
    names = set(store.manifest.names)
    return [n for n in ENHANCER_NAMES if n in names] + [
        e.name for e in store.manifest.models if e.stage == "enhance" and e.name not in ENHANCER_NAMES
    ]


def provisioned_enhancer_path(store: ModelStore, name: str) -> Path:
    """The provisioned file of enhancer ``name``; one-sentence ModelUnavailableError otherwise."""
    known = _known(store)
    if name not in known:
        raise ModelUnavailableError(f"Unknown enhancer {name[:40]!r}; known enhancers: {', '.join(known)}.")
    return provisioned_path(store, name)


def available_enhancers(source: ModelStore | Path) -> list[str]:
    """The enhancers whose weights are provisioned (present, size as pinned), in :data:`ENHANCER_NAMES` order.

    ``source``: a :class:`ModelStore` (built at an edge from ``ProvisionConfig.from_env()``)
    or a models directory (read as it is).
    """
    store = _store(source)
    found: list[str] = []
    for name in _known(store):
        try:
            provisioned_enhancer_path(store, name)
        except MirageError:
            continue
        found.append(name)
    return found


def load_enhancer(
    name: str,
    source: ModelStore | Path,
    ort: OrtConfig | None = None,
    runtime: RuntimeConfig | None = None,
    *,
    dynamic: bool = True,
    accelerators: Accelerators | None = None,
) -> OnnxFaceEnhancer:
    """Load enhancer ``name`` from its provisioned file on the best runtime (never downloads).

    Raises ModelUnavailableError (one sentence) when it is unknown, not provisioned,
    declares no tensors in the manifest, or cannot be opened.
    """
    store = _store(source)
    path = provisioned_enhancer_path(store, name)
    entry = store.manifest.get(name)
    if entry.io is None:
        raise ModelUnavailableError(f"The manifest entry of {entry.title} declares no inputs/outputs (io), so it cannot be fed.")
    ort = ort or OrtConfig()
    runtime = runtime or RuntimeConfig()
    acc = accelerators if accelerators is not None else probe_accelerators()
    served = served_onnx(name, path, dynamic=dynamic)
    model, choice = load_model(name, served, default_engine_dir(store.root), runtime, ort, acc)
    enhancer = OnnxFaceEnhancer(
        name,
        model,
        entry.io,
        title=entry.title,
        licence=entry.licence,
        commercial_use=entry.commercial_use,
        runtime=choice.kind,
        runtime_reason=choice.reason,
    )
    label = f"{name} (stand-in)" if enhancer.info.standin else name
    logger.info(
        "enhancer %s: %s, %s batch, runtime %s", label, entry.licence, "dynamic" if enhancer.info.batched else "fixed", choice.kind
    )
    return enhancer
