"""Which ONNX file is served for a provisioned model: one decision for serving and ``models compile``.

A TensorRT engine is found by the sha256 of the ONNX file it was compiled from, so
serving and ``python -m mirage models compile`` must agree on that file byte for
byte. :func:`served_onnx` is the only place that decides it:

- a model whose every input already has a free batch dimension is served as it is;
- a batch-1 export (InSwapper, SCRFD as shipped) is served as its dynamic-batch
  rewrite ``<stem>.batch-dynamic.onnx`` beside it, made once and proven equivalent
  with ONNX Runtime (batch N equals N batch-1 runs) before it is used;
- if the rewrite fails its proof, the original batch-1 file is served (the stage
  then loops over its batch) and no 1..N engine can be built for it.

:func:`prepared_served_onnx` answers the same question without writing anything
(``None`` while the rewrite has not been made), for choices made before loading.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from mirage.errors import ModelUnavailableError
from mirage.runtime.batch_rewrite import check_batch_equivalence, make_batch_dynamic
from mirage.runtime.tensorrt import KNOWN_SAMPLE_SHAPES

logger = logging.getLogger(__name__)

REWRITE_SUFFIX = ".batch-dynamic.onnx"

#: Inputs that are one value per call, not per sample, by model name: they keep their
#: shape in the rewrite (CodeFormer's fidelity ``weight``, float64 [1]).
SHARED_INPUTS: dict[str, tuple[str, ...]] = {"codeformer": ("weight",)}


def rewrite_path(path: Path) -> Path:
    """Where the dynamic-batch rewrite of ``path`` lives (beside it)."""
    path = Path(path)
    return path.with_name(f"{path.stem}{REWRITE_SUFFIX}")


def is_batch_dynamic(path: Path, shared: Sequence[str] = ()) -> bool:
    """True when every graph input of the ONNX file (but the ``shared`` ones, one value per
    call) has a free (symbolic) leading dimension.

    Remembered per (path, size, mtime): InSwapper is half a gigabyte to parse.
    """
    try:
        st = Path(path).stat()
    except OSError as exc:
        raise ModelUnavailableError(f"Model file {path} cannot be read: {exc.strerror or exc}.") from exc
    return _is_batch_dynamic(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, tuple(shared))


@functools.lru_cache(maxsize=64)
def _is_batch_dynamic(path: str, size: int, mtime_ns: int, shared: tuple[str, ...] = ()) -> bool:
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf decode errors and I/O errors alike
        raise ModelUnavailableError(f"{Path(path).name} is not a readable ONNX model ({exc.__class__.__name__}).") from exc
    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers or value.name in shared:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return False
    return True


def _batch1_shapes(name: str) -> dict[str, tuple[int, ...]] | None:
    shapes = {k: (1, *v) for k, v in KNOWN_SAMPLE_SHAPES.get(name, {}).items()}
    return shapes or None


def batch_dynamic_copy(
    path: Path, input_shapes: Mapping[str, Sequence[int]] | None = None, shared: Sequence[str] = ()
) -> Path:
    """The dynamic-batch rewrite of a model file, made once beside it (a weights cache).

    The rewrite is proven once with ONNX Runtime (batch 2 equals two batch-1
    runs) before it is used; if the proof fails, the original batch-1 file is
    used and the stage loops over its batch instead.
    """
    path = Path(path)
    target = rewrite_path(path)
    if target.exists() and target.stat().st_mtime >= path.stat().st_mtime:
        return target
    try:
        make_batch_dynamic(path, target, shared=shared)
        check_batch_equivalence(path, target, input_shapes=input_shapes, shared=shared)
    except ModelUnavailableError as exc:
        target.unlink(missing_ok=True)
        logger.warning("%s: dynamic-batch rewrite not usable (%s); running it at batch 1.", path.name, exc)
        return path
    return target


def served_onnx(name: str, path: Path, *, dynamic: bool = True) -> Path:
    """The ONNX file serving loads for model ``name`` provisioned at ``path``, and the one
    ``models compile`` compiles (and keys the engine on). May make the rewrite."""
    path = Path(path)
    if not dynamic or path.name.endswith(REWRITE_SUFFIX) or is_batch_dynamic(path, SHARED_INPUTS.get(name, ())):
        return path
    return batch_dynamic_copy(path, _batch1_shapes(name), SHARED_INPUTS.get(name, ()))


def prepared_served_onnx(name: str, path: Path, *, dynamic: bool = True) -> Path | None:
    """What :func:`served_onnx` would return, without writing anything; ``None`` while the
    rewrite of a batch-1 file has not been made yet (so no engine can exist for it)."""
    path = Path(path)
    if not dynamic or path.name.endswith(REWRITE_SUFFIX) or is_batch_dynamic(path, SHARED_INPUTS.get(name, ())):
        return path
    target = rewrite_path(path)
    if target.exists() and target.stat().st_mtime >= path.stat().st_mtime:
        return target
    return None
