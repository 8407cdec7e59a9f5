"""Give a batch-1 ONNX export a dynamic batch dimension.

The shipped InSwapper and SCRFD files are exported for batch 1. Serving batches
faces across users, so we rewrite them once at provisioning time:

1. the first dimension of every graph input and output becomes symbolic
   (``dim_name``), and ``value_info`` shape hints (which would pin batch 1) are
   dropped — ONNX Runtime re-infers them;
2. ``Reshape`` nodes whose target shape is a constant that hard-codes the batch
   are rewritten so the batch survives:

   * a leading ``1`` (``view(1, C, 1, 1)``) becomes ``0``, ONNX's "copy this
     dimension from the input";
   * a leading ``-1`` that flattens the batch into the rows of a graph output —
     SCRFD's batch-1 export ends every head with ``Transpose(0, 2, 3, 1)`` then
     ``Reshape(-1, C)``, giving 2-D ``[H*W*A, C]`` outputs — becomes
     ``[0, -1, C]``, so the output is ``[N, H*W*A, C]``. Only when the path from
     the Reshape to the output is element-wise (Sigmoid, Mul, …), so no later node
     depends on the 2-D rank.

Other ops with batch-pinning constants (Expand, Tile, ConstantOfShape) are not
rewritten. Because a graph can pin the batch in ways no rule sees (and a wrong
rewrite may run yet mix images up), ``check_batch_equivalence`` runs the original
at batch 1 and the rewrite at batch N on the same random inputs and compares;
provisioning calls it once per rewritten file. The result is written atomically
(temporary file in the same folder, then rename).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from mirage.errors import ModelUnavailableError

logger = logging.getLogger(__name__)

#: Ops through which a Reshape's 2-D result may reach a graph output unchanged in rank.
_ELEMENTWISE = frozenset(
    {"Sigmoid", "Relu", "Tanh", "Exp", "Identity", "Cast", "Mul", "Add", "Sub", "Div", "Clip", "LeakyRelu"}
)


def make_batch_dynamic(src: Path, dst: Path, dim_name: str = "batch", shared: Collection[str] = ()) -> None:
    """Write ``src`` with a symbolic batch dimension to ``dst`` (may equal ``src``).

    ``shared`` names inputs that are not per sample (CodeFormer's ``weight``: one value
    per call); they keep their shape and are not followed as batch tensors.
    """
    src, dst = Path(src), Path(dst)
    model = _load(src)
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}
    real_inputs = [vi for vi in graph.input if vi.name not in initializer_names]
    if not real_inputs or not graph.node:
        raise ModelUnavailableError(f"{src} is not an ONNX model with inputs and nodes.")

    input_names = {vi.name for vi in real_inputs} - set(shared)
    rewritten_outputs = _rewrite_reshapes(graph, input_names, _leading_dims(model))
    for value in graph.input:  # re-read: the rewrite may have rebuilt the input list
        if value.name in input_names:
            _set_leading_dim(value, dim_name)
    for value in graph.output:
        if value.name in rewritten_outputs:
            _prepend_batch_dim(value, dim_name)
        else:
            _set_leading_dim(value, dim_name)
    del graph.value_info[:]

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelUnavailableError(f"Rewriting {src} for dynamic batch produced an invalid model: {exc}") from exc
    _save_atomically(model, dst)
    logger.info(
        "made %s batch-dynamic as %s (%d output head(s) reshaped)", src.name, dst.name, len(rewritten_outputs)
    )


def _load(src: Path) -> onnx.ModelProto:
    if not src.is_file():
        raise ModelUnavailableError(f"Cannot make {src} batch-dynamic: the file does not exist.")
    try:
        model = onnx.load(str(src))
    except (DecodeError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelUnavailableError(f"{src} is not an ONNX model ({exc.__class__.__name__}).") from exc
    # An empty or unrelated protobuf can parse "successfully" into an empty model.
    if model.ir_version <= 0 or not model.graph.node:
        raise ModelUnavailableError(f"{src} is not an ONNX model.")
    return model


def _set_leading_dim(value: onnx.ValueInfoProto, dim_name: str) -> None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape") or not tensor_type.shape.dim:
        return
    dim = tensor_type.shape.dim[0]
    dim.ClearField("dim_value")
    dim.dim_param = dim_name


def _prepend_batch_dim(value: onnx.ValueInfoProto, dim_name: str) -> None:
    """``[K, C…]`` → ``[batch, rows, C…]`` for an output whose Reshape now keeps the batch."""
    shape = value.type.tensor_type.shape
    rest = [onnx.TensorShapeProto.Dimension() for _ in shape.dim[1:]]
    for new, old in zip(rest, shape.dim[1:]):
        new.CopyFrom(old)
    del shape.dim[:]
    shape.dim.add().dim_param = dim_name
    shape.dim.add().dim_param = f"{value.name}_rows"
    shape.dim.extend(rest)


def _leading_dims(model: onnx.ModelProto) -> dict[str, int | None]:
    """First dimension of every tensor shape inference can type (None where symbolic)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is only a hint here; failing it must not block the rewrite
        return {}
    dims: dict[str, int | None] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        shape = value.type.tensor_type.shape
        if value.type.tensor_type.HasField("shape") and shape.dim:
            first = shape.dim[0]
            dims[value.name] = first.dim_value if first.HasField("dim_value") else None
    return dims


def _rewrite_reshapes(
    graph: onnx.GraphProto, input_names: set[str], leading: dict[str, int | None]
) -> set[str]:
    """Rewrite batch-pinning Reshape constants in place; returns the outputs whose rank grew."""
    constants = _constant_arrays(graph)
    batch_tensors = set(input_names)
    for node in graph.node:  # ONNX requires topological order
        if any(name in batch_tensors for name in node.input):
            batch_tensors.update(node.output)

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    output_names = {value.name for value in graph.output}

    grown: set[str] = set()
    replaced: set[str] = set()
    new_initializers: list[onnx.TensorProto] = []
    for index, node in enumerate(graph.node):
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[0] not in batch_tensors:
            continue
        if any(attr.name == "allowzero" and attr.i == 1 for attr in node.attribute):
            continue  # 0 would mean a literal zero dimension
        shape = constants.get(node.input[1])
        if shape is None or shape.ndim != 1 or shape.size == 0:
            continue
        new_shape: np.ndarray | None = None
        if shape[0] == 1:
            new_shape = shape.copy()
            new_shape[0] = 0
        elif _flattens_batch(shape, leading.get(node.input[0])):
            reached = _elementwise_outputs(node.output[0], consumers, output_names)
            if reached:
                new_shape = np.concatenate([np.array([0, -1], dtype=shape.dtype), shape[1:]])
                grown.update(reached)
        if new_shape is None:
            continue
        name = f"{node.input[1]}__batch_{index}"
        new_initializers.append(numpy_helper.from_array(new_shape.astype(np.int64), name))
        replaced.add(node.input[1])
        node.input[1] = name
    if new_initializers:
        _drop_unused(graph, replaced)
        # New constants go first: InSwapper's emap must remain the LAST initializer.
        existing = list(graph.initializer)
        del graph.initializer[:]
        graph.initializer.extend(new_initializers + existing)
    return grown


def _drop_unused(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove the replaced shape constants that no node reads any more."""
    used = {name for node in graph.node for name in node.input}
    unused = names - used
    keep_inits = [init for init in graph.initializer if init.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)
    keep_inputs = [value for value in graph.input if value.name not in unused]  # old IR lists initializers
    del graph.input[:]
    graph.input.extend(keep_inputs)
    keep_nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in unused)]
    del graph.node[:]
    graph.node.extend(keep_nodes)


def _flattens_batch(shape: np.ndarray, data_leading_dim: int | None) -> bool:
    """A 2-D+ target whose first dimension swallows the batch: ``[-1, C]``, or ``[K, C]``
    with K > 1 applied to data known to start with batch 1."""
    if shape.size < 2 or -1 in shape[1:] or 0 in shape:
        return False
    if shape[0] == -1:
        return True
    return bool(shape[0] > 1 and data_leading_dim == 1)


def _elementwise_outputs(
    start: str, consumers: dict[str, list[onnx.NodeProto]], output_names: set[str]
) -> set[str]:
    """Graph outputs reached from ``start`` through element-wise nodes only; empty if any other path."""
    reached: set[str] = set()
    frontier = [start]
    seen: set[str] = set()
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in output_names:
            reached.add(name)
        for node in consumers.get(name, []):
            if node.op_type not in _ELEMENTWISE:
                return set()
            frontier.extend(node.output)
    return reached


def _constant_arrays(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Integer 1-D constants (initializers and Constant nodes) by tensor name."""
    arrays: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        if init.data_type == onnx.TensorProto.INT64 and len(init.dims) == 1:
            arrays[init.name] = numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type != "Constant":
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.t.data_type == onnx.TensorProto.INT64:
                arrays[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name == "value_ints":
                arrays[node.output[0]] = np.array(list(attr.ints), dtype=np.int64)
    return arrays


def _save_atomically(model: onnx.ModelProto, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_batch_equivalence(
    src: Path,
    dst: Path,
    batch: int = 2,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    shared: Collection[str] = (),
) -> None:
    """Raise ModelUnavailableError unless ``dst`` at batch N equals ``src`` run N times at batch 1.

    ``input_shapes`` gives the batch-1 shape of inputs with symbolic non-batch dims
    (e.g. SCRFD's ``{"input.1": (1, 3, 640, 640)}``). ``shared`` inputs (not per sample)
    get one value of their declared shape, the same in every run. Runs on the CPU provider.
    """
    import onnxruntime as ort  # local: only provisioning needs a session here

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    single = ort.InferenceSession(str(src), sess_options=options, providers=["CPUExecutionProvider"])
    batched = ort.InferenceSession(str(dst), sess_options=options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    fixed: dict[str, np.ndarray] = {}
    for arg in single.get_inputs():
        dtype = {"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(arg.type, np.float32)
        if arg.name in shared:
            dims = [d if isinstance(d, int) and d > 0 else 1 for d in (input_shapes or {}).get(arg.name, arg.shape)]
            fixed[arg.name] = rng.uniform(0.0, 1.0, size=dims).astype(dtype)
            continue
        shape = list((input_shapes or {}).get(arg.name, arg.shape))
        if not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            raise ValueError(f"give a concrete batch-1 shape for input {arg.name!r} (model says {arg.shape})")
        feeds[arg.name] = rng.uniform(0.0, 1.0, size=[batch, *shape[1:]]).astype(dtype)
    try:
        together = batched.run(None, {**feeds, **fixed})
    except Exception as exc:  # onnxruntime's own exception types
        raise ModelUnavailableError(
            f"The batch-dynamic rewrite of {src.name} fails at batch {batch}: {exc}; serve it at batch 1 instead."
        ) from exc
    for i in range(batch):
        alone = single.run(None, {**{name: value[i : i + 1] for name, value in feeds.items()}, **fixed})
        for output, got, want in zip(single.get_outputs(), together, alone):
            got_i = got[i] if got.ndim == want.ndim + 1 else got[i : i + 1]
            if got_i.shape != want.shape and got_i.size == want.size:
                got_i = got_i.reshape(want.shape)
            if got_i.shape != want.shape or not np.allclose(got_i, want, rtol=rtol, atol=atol):
                raise ModelUnavailableError(
                    f"The batch-dynamic rewrite of {src.name} does not reproduce batch-1 results "
                    f"(output {output.name}, image {i}); serve it at batch 1 instead."
                )
