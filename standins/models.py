"""Stand-in ONNX models for the neural weights we cannot download (DESIGN.md §4).

Each builder writes a small random-weight graph with exactly the official input and
output names, shapes and dtypes, so pre-processing, batching, post-processing and
provider selection run for real. Paths must contain ``standin``; files are made at
test time under pytest's tmp_path and never committed.

The SCRFD stand-in reproduces the batch-1 export's head structure (Conv → Transpose
(0, 2, 3, 1) → Reshape(-1, C) [→ Sigmoid]) that flattens the batch into the rows, and
the InSwapper stand-in has a batch-pinned ``Reshape(1, C, 1, 1)`` of the style vector
and its 512x512 ``emap`` as the last initializer, so the dynamic-batch rewrite is
tested against the structures it must handle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 11
IR_VERSION = 7


def _check_path(path: Path) -> Path:
    path = Path(path)
    if "standin" not in path.name:
        raise ValueError(f"stand-in model paths must contain 'standin': {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save(graph: onnx.GraphProto, path: Path, opset: int = OPSET) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="mirage-standin")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class _Builder:
    """Tiny helper that names tensors and collects nodes/initializers."""

    def __init__(self, seed: int, dtype: type[np.generic] = np.float32) -> None:
        self.rng = np.random.default_rng(seed)
        self.dtype = dtype
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, array: np.ndarray, stem: str = "c") -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, shape: tuple[int, ...], scale: float, stem: str = "w") -> str:
        return self.const((self.rng.standard_normal(shape) * scale).astype(self.dtype), stem)

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, bias: float = 0.0) -> str:
        w = self.weight((cout, cin, k, k), 1.0 / np.sqrt(cin * k * k))
        b = self.const(np.full((cout,), bias, dtype=self.dtype), "b")
        pad = k // 2
        return self.node("Conv", [x, w, b], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)


def build_scrfd_standin(path: Path, dynamic: bool = False) -> Path:
    """SCRFD det_10g stand-in: ``input.1`` [1|batch, 3, ?, ?] → 9 outputs (scores, boxes, kps × strides 8/16/32).

    Batch-1 (default) outputs are 2-D ``[H*W*2, C]`` (declared for 640 input), as
    shipped; ``dynamic`` builds what a batch-aware export gives: ``[batch, ?, C]``.
    Scores sit mostly below 0.5 so random weights give few detections.
    """
    path = _check_path(path)
    b = _Builder(seed=10)
    x = "input.1"
    f = b.node("Relu", [b.conv(x, 3, 8, stride=2)])  # /2
    f = b.node("Relu", [b.conv(f, 8, 8, stride=2)])  # /4
    f8 = b.node("Relu", [b.conv(f, 8, 8, stride=2)])  # /8
    f16 = b.node("Relu", [b.conv(f8, 8, 8, stride=2)])
    f32 = b.node("Relu", [b.conv(f16, 8, 8, stride=2)])
    anchors = 2
    heads: dict[str, list[str]] = {"score": [], "bbox": [], "kps": []}
    for level, feat in enumerate((f8, f16, f32)):
        for kind, channels in (("score", 1), ("bbox", 4), ("kps", 10)):
            y = b.conv(feat, 8, anchors * channels, k=1, bias=-2.5 if kind == "score" else 0.5)
            if kind == "bbox":
                y = b.node("Mul", [y, b.const(np.array(1.2, np.float32), "scale")])  # SCRFD's learned Scale
            y = b.node("Transpose", [y], perm=[0, 2, 3, 1])
            shape = np.array([0, -1, channels] if dynamic else [-1, channels], dtype=np.int64)
            if (level + channels) % 2:  # some shape constants as Constant nodes, some as initializers
                shape_name = b.name("shape")
                b.nodes.append(
                    helper.make_node(
                        "Constant", [], [shape_name], value=numpy_helper.from_array(shape, shape_name + "_v")
                    )
                )
            else:
                shape_name = b.const(shape, "shape")
            y = b.node("Reshape", [y, shape_name])
            if kind == "score":
                y = b.node("Sigmoid", [y])
            heads[kind].append(y)
    outputs = heads["score"] + heads["bbox"] + heads["kps"]
    out_names = [f"{448 + i}" for i in range(9)]
    for produced, name in zip(outputs, out_names):
        b.nodes.append(helper.make_node("Identity", [produced], [name]))
    channels_of = [1, 1, 1, 4, 4, 4, 10, 10, 10]
    rows_of = [(640 // s) ** 2 * anchors for s in (8, 16, 32)] * 3
    batch: int | str = "batch" if dynamic else 1
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, 3, "?", "?"])]
    outs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "?", c] if dynamic else [r, c])
        for n, r, c in zip(out_names, rows_of, channels_of)
    ]
    return _save(helper.make_graph(b.nodes, "scrfd_standin", inputs, outs, b.inits), path)


def build_arcface_standin(path: Path, probe: bool = False) -> Path:
    """ArcFace w600k_r50 stand-in: ``input.1`` [None, 3, 112, 112] → ``683`` [None, 512].

    With ``probe`` the output is the first 512 values of the (flattened) input tensor,
    so a test can read back exactly what pre-processing fed the model.
    """
    path = _check_path(path)
    b = _Builder(seed=50)
    x = "input.1"
    if probe:
        flat = b.node("Flatten", [x], axis=1)
        y = b.node(
            "Slice",
            [
                flat,
                b.const(np.array([0], np.int64), "starts"),
                b.const(np.array([512], np.int64), "ends"),
                b.const(np.array([1], np.int64), "axes"),
            ],
        )
    else:
        f = b.node("Relu", [b.conv(x, 3, 16, stride=4)])
        f = b.node("Relu", [b.conv(f, 16, 16, stride=2)])
        pooled = b.node("Flatten", [b.node("GlobalAveragePool", [f])], axis=1)
        y = b.node("Gemm", [pooled, b.weight((16, 512), 0.5), b.const(np.zeros(512, np.float32), "fc_b")])
    b.nodes.append(helper.make_node("Identity", [y], ["683"]))
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [None, 3, 112, 112])]
    outs = [helper.make_tensor_value_info("683", TensorProto.FLOAT, [None, 512])]
    return _save(helper.make_graph(b.nodes, "arcface_standin", inputs, outs, b.inits), path)


def build_inswapper_standin(path: Path, dynamic: bool = False, fp16: bool = False, probe: bool = False) -> Path:
    """InSwapper stand-in: ``target`` [1, 3, 128, 128] + ``source`` [1, 512] → ``output`` [1, 3, 128, 128].

    Float32 inputs and output in both variants (the fp16 file computes in half
    precision inside, between Casts). The style vector is reshaped with a
    batch-pinned ``[1, C, 1, 1]`` (``[-1, C, 1, 1]`` when ``dynamic``); ``emap`` is
    the last initializer and, as in the real file, not used by the graph. With
    ``probe`` the output is the target itself (the source only adds ``0 *``), so a
    test can check the colour/scale round trip exactly.
    """
    path = _check_path(path)
    dtype = np.float16 if fp16 else np.float32
    b = _Builder(seed=128, dtype=dtype)
    target, source = "target", "source"
    t, s = target, source
    if fp16:
        t = b.node("Cast", [t], to=TensorProto.FLOAT16)
        s = b.node("Cast", [s], to=TensorProto.FLOAT16)
    channels = 8
    if probe:
        zero = b.node("Mul", [b.node("ReduceSum", [s], keepdims=0), b.const(np.array(0.0, dtype), "zero")])
        feat = b.node("Add", [t, zero])
        channels = 3
    else:
        feat = b.node("Relu", [b.conv(t, 3, channels)])
    style = b.node("Gemm", [s, b.weight((512, 2 * channels), 0.05), b.const(np.zeros(2 * channels, dtype), "style_b")])
    pinned = np.array([-1 if dynamic else 1, 2 * channels, 1, 1], dtype=np.int64)
    style4 = b.node("Reshape", [style, b.const(pinned, "style_shape")])
    def channel_slice(start: int, end: int) -> str:
        bounds = [b.const(np.array([v], np.int64)) for v in (start, end, 1)]  # starts, ends, axes
        return b.node("Slice", [style4, *bounds])

    gain, bias = channel_slice(0, channels), channel_slice(channels, 2 * channels)
    mod = b.node("Add", [b.node("Mul", [feat, b.node("Add", [gain, b.const(np.array(1.0, dtype), "one")])]), bias])
    y = feat if probe else b.node("Sigmoid", [b.conv(mod, channels, 3)])
    if fp16:
        y = b.node("Cast", [y], to=TensorProto.FLOAT)
    b.nodes.append(helper.make_node("Identity", [y], ["output"]))
    # emap goes last, exactly as insightface expects (graph.initializer[-1]).
    emap = (b.rng.standard_normal((512, 512)) / np.sqrt(512)).astype(dtype)
    b.inits.append(numpy_helper.from_array(emap, "emap"))
    batch: int | str = "batch" if dynamic else 1
    inputs = [
        helper.make_tensor_value_info(target, TensorProto.FLOAT, [batch, 3, 128, 128]),
        helper.make_tensor_value_info(source, TensorProto.FLOAT, [batch, 512]),
    ]
    outs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 3, 128, 128])]
    return _save(helper.make_graph(b.nodes, "inswapper_standin", inputs, outs, b.inits), path)


def scrfd_raw_outputs(
    faces: list[tuple[np.ndarray, np.ndarray, float]], input_size: int = 640, stride: int = 16
) -> list[np.ndarray]:
    """The 9 batch-1 SCRFD outputs that encode these faces (box, 5 keypoints, score) exactly.

    Boxes and keypoints are in detector-input pixels; each face sits on the anchor
    (second of the two) of the ``stride`` cell nearest its box centre. Every other
    anchor scores 0.
    """
    strides = (8, 16, 32)
    outs: list[np.ndarray] = []
    for channels in (1, 4, 10):
        for s in strides:
            cells = -(-input_size // s)
            outs.append(np.zeros((cells * cells * 2, channels), dtype=np.float32))
    level = strides.index(stride)
    cells = -(-input_size // stride)
    for box, kps, score in faces:
        box = np.asarray(box, dtype=np.float32)
        kps = np.asarray(kps, dtype=np.float32).reshape(5, 2)
        col = int(round((box[0] + box[2]) / 2 / stride))
        row = int(round((box[1] + box[3]) / 2 / stride))
        index = (row * cells + col) * 2 + 1
        ax, ay = col * stride, row * stride
        outs[level][index, 0] = score
        outs[3 + level][index] = np.array([ax - box[0], ay - box[1], box[2] - ax, box[3] - ay]) / stride
        outs[6 + level][index] = ((kps - np.array([ax, ay], np.float32)) / stride).reshape(10)
    return outs


def build_scrfd_constant_standin(path: Path, outputs: list[np.ndarray]) -> Path:
    """An SCRFD-shaped stand-in (``input.1`` [1, 3, ?, ?], 9 outputs) that always returns ``outputs``.

    The input still flows into every output (times zero), so the real session,
    pre-processing and decoding all run; use with :func:`scrfd_raw_outputs`.
    """
    path = _check_path(path)
    b = _Builder(seed=0)
    x = "input.1"
    zero = b.node("Mul", [b.node("ReduceMean", [x], keepdims=0), b.const(np.array(0.0, np.float32), "zero")])
    names = [f"{448 + i}" for i in range(9)]
    for name, array in zip(names, outputs):
        b.nodes.append(helper.make_node("Add", [b.const(np.asarray(array, np.float32), "raw"), zero], [name]))
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, "?", "?"])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape)) for n, a in zip(names, outputs)]
    return _save(helper.make_graph(b.nodes, "scrfd_constant_standin", inputs, outs, b.inits), path)


# --------------------------------------------------------------------------- face enhancers (issue 11)

#: Official I/O of the public enhancer exports (configs/models.yaml ``io``): name -> (side, has weight).
ENHANCER_STANDIN_SPECS: dict[str, tuple[int, bool]] = {
    "gfpgan_1.4": (512, False),
    "codeformer": (512, True),
    "gpen_bfr_256": (256, False),
    "gpen_bfr_512": (512, False),
}


def build_enhancer_standin(path: Path, name: str, dynamic: bool = False, size: int | None = None) -> Path:
    """Face-restorer stand-in with the public export's signature: ``input`` float32 [1, 3, S, S]
    (CodeFormer also ``weight`` float64 [1]) → ``output`` float32 [1, 3, S, S], values in [-1, 1].

    The output is ``tanh(x + 0.3 * conv(x))``: a visible, input-dependent change. The
    CodeFormer stand-in scales the conv term by ``(1 - w)`` (w cast from float64), so its
    output depends on the fidelity fed, and w = 1 gives ``tanh(x)``. The conv's weights
    are reshaped through a batch-pinned ``Reshape([1, C, 1, 1])`` bias (as the batch-1
    exports pin their batch), so the dynamic-batch rewrite has something to fix. ``size``
    overrides the side (small stand-ins for fast tests; the manifest's shapes then differ).
    """
    path = _check_path(path)
    side, has_weight = ENHANCER_STANDIN_SPECS[name]
    side = size or side
    b = _Builder(seed=512 + side + int(has_weight))
    x = "input"
    f = b.node("Relu", [b.conv(x, 3, 4)])
    f = b.conv(f, 4, 3)
    pinned = np.array([-1 if dynamic else 1, 3, 1, 1], dtype=np.int64)
    bias = b.node("Reshape", [b.node("ReduceMean", [x], axes=[2, 3], keepdims=0), b.const(pinned, "bias_shape")])
    f = b.node("Add", [f, b.node("Mul", [bias, b.const(np.array(0.2, np.float32), "bias_gain")])])
    f = b.node("Mul", [f, b.const(np.array(0.3, np.float32), "gain")])
    if has_weight:
        w = b.node("Cast", ["weight"], to=TensorProto.FLOAT)
        one_minus = b.node("Sub", [b.const(np.array([1.0], np.float32), "one"), w])
        f = b.node("Mul", [f, one_minus])
    y = b.node("Tanh", [b.node("Add", [x, f])])
    b.nodes.append(helper.make_node("Identity", [y], ["output"]))
    batch: int | str = "batch" if dynamic else 1
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, 3, side, side])]
    if has_weight:
        inputs.append(helper.make_tensor_value_info("weight", TensorProto.DOUBLE, [1]))
    outs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 3, side, side])]
    return _save(helper.make_graph(b.nodes, f"{name.replace('.', '_')}_standin", inputs, outs, b.inits), path)


def write_enhancer_standins(
    models_dir: Path, names: tuple[str, ...] | None = None, dynamic: bool = False, size: int | None = None
) -> Path:
    """Stand-ins of the enhancers (default: all four) in ``models_dir`` and a manifest naming them.

    The manifest is the real one with each enhancer's ``file`` moved to
    ``enhance/<name>.standin.onnx`` (so logs say stand-in) and no digest; it is written to
    ``models_dir/models.standin.yaml`` and its path returned, for
    ``EnhancerConfig(models_dir=..., manifest=...)`` or ``offline_store``.
    """
    import yaml

    from mirage.weights.manifest import DEFAULT_MANIFEST

    models_dir = Path(models_dir)
    raw = yaml.safe_load(DEFAULT_MANIFEST.read_text(encoding="utf-8"))
    chosen = tuple(ENHANCER_STANDIN_SPECS) if names is None else names
    for entry in raw["models"]:
        if entry.get("stage") != "enhance":
            continue
        rel = f"enhance/{entry['name']}.standin.onnx"
        entry["file"], entry["sha256"], entry["size"] = rel, None, None
        if size is not None and entry.get("io"):
            entry["io"]["size"] = size
            for tensor in entry["io"]["inputs"] + entry["io"]["outputs"]:
                if len(tensor["shape"]) == 4:
                    tensor["shape"] = [1, 3, size, size]
        if entry["name"] in chosen:
            build_enhancer_standin(models_dir / rel, entry["name"], dynamic=dynamic, size=size)
    manifest = models_dir / "models.standin.yaml"
    manifest.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return manifest
