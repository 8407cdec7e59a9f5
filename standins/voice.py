"""Stand-in ONNX models for the RVC path (DESIGN.md §4): official I/O names, shapes and dtypes, random weights.

Made at test time under pytest's tmp_path, never committed, always named
``standin``; never presented as the real models.

- ContentVec (``vec-768-layer-12``): ``source`` float32 [B, 1, N] (16 kHz) -> ``embed``
  float32 [B, 768, N/320]: one strided Conv (kernel = stride = 320) with random weights.
- RVC v2 generator: ``phone`` [B, T, 768], ``phone_lengths`` [B] int64, ``pitch`` [B, T]
  int64, ``pitchf`` [B, T] float32, ``ds`` [B] int64, ``rnd`` [B, 192, T] float32 ->
  ``audio`` [B, 1, T * 400] (40 kHz). It sings a sine at ``pitchf`` (a running phase
  sum) plus a small random projection of ``phone``, so a test can follow the pitch
  through SwiftF0, the transposition and the generator; every input is consumed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from standins.models import _check_path
from standins.models import _save as _save_model

OPSET = 13
GEN_RATE = 40000
GEN_HOP = 400  # samples per 10 ms frame at 40 kHz


def _check(path: Path) -> Path:
    return _check_path(path)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    return _save_model(graph, path, opset=OPSET)


def build_contentvec_standin(path: Path, dynamic_batch: bool = True, seed: int = 3) -> Path:
    path = _check(path)
    rng = np.random.default_rng(seed)
    batch: str | int = "batch" if dynamic_batch else 1
    weight = (rng.standard_normal((768, 1, 320)) * 0.05).astype(np.float32)
    bias = np.zeros(768, np.float32)
    nodes = [helper.make_node("Conv", ["source", "w", "b"], ["embed"], kernel_shape=[320], strides=[320])]
    graph = helper.make_graph(
        nodes,
        "contentvec_standin",
        [helper.make_tensor_value_info("source", TensorProto.FLOAT, [batch, 1, "samples"])],
        [helper.make_tensor_value_info("embed", TensorProto.FLOAT, [batch, 768, "frames"])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return _save(graph, path)


def build_rvc_generator_standin(path: Path, dynamic_batch: bool = True, seed: int = 5) -> Path:
    path = _check(path)
    rng = np.random.default_rng(seed)
    batch: str | int = "batch" if dynamic_batch else 1
    inits = [
        numpy_helper.from_array((rng.standard_normal((768, GEN_HOP)) * 0.01).astype(np.float32), "proj"),
        numpy_helper.from_array(np.ones(GEN_HOP, np.float32), "ones_hop"),
        numpy_helper.from_array(np.array(2 * np.pi / GEN_RATE, np.float32), "omega"),
        numpy_helper.from_array(np.array(0.2, np.float32), "amp"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(1, np.int64), "axis1"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
        numpy_helper.from_array(np.array([0, 1, -1], np.int64), "shape_out"),
    ]
    nodes = [
        # a sine at pitchf: every 10 ms frame repeated over its 400 samples, phase = running sum
        helper.make_node("Unsqueeze", ["pitchf", "axes2"], ["pf3"]),
        helper.make_node("Mul", ["pf3", "ones_hop"], ["pf_rep"]),  # [B, T, 400]
        helper.make_node("Reshape", ["pf_rep", "flat"], ["pf_flat"]),  # [B, T*400]
        helper.make_node("Mul", ["pf_flat", "omega"], ["dphi"]),
        helper.make_node("CumSum", ["dphi", "axis1"], ["phi"]),
        helper.make_node("Sin", ["phi"], ["tone"]),
        helper.make_node("Mul", ["tone", "amp"], ["voice"]),
        # content: a random projection of the features, small
        helper.make_node("MatMul", ["phone", "proj"], ["content3"]),  # [B, T, 400]
        helper.make_node("Reshape", ["content3", "flat"], ["content"]),
        helper.make_node("Tanh", ["content"], ["content_t"]),
        helper.make_node("Mul", ["content_t", "amp_small"], ["content_s"]),
        helper.make_node("Add", ["voice", "content_s"], ["mix"]),
        # the other inputs, consumed at zero weight (as shapes/ids only matter here)
        helper.make_node("ReduceMean", ["rnd"], ["rnd_m"], keepdims=0),
        helper.make_node("Cast", ["pitch"], ["pitch_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pitch_f"], ["pitch_m"], keepdims=0),
        helper.make_node("Cast", ["ds"], ["ds_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["ds_f"], ["ds_m"], keepdims=0),
        helper.make_node("Cast", ["phone_lengths"], ["len_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["len_f"], ["len_m"], keepdims=0),
        helper.make_node("Sum", ["rnd_m", "pitch_m", "ds_m", "len_m"], ["extras"]),
        helper.make_node("Mul", ["extras", "zero"], ["nothing"]),
        helper.make_node("Add", ["mix", "nothing"], ["mixed"]),
        helper.make_node("Reshape", ["mixed", "shape_out"], ["audio"]),
    ]
    inits += [
        numpy_helper.from_array(np.array([2], np.int64), "axes2"),
        numpy_helper.from_array(np.array(0.01, np.float32), "amp_small"),
    ]
    graph = helper.make_graph(
        nodes,
        "rvc_v2_generator_standin",
        [
            helper.make_tensor_value_info("phone", TensorProto.FLOAT, [batch, "frames", 768]),
            helper.make_tensor_value_info("phone_lengths", TensorProto.INT64, [batch]),
            helper.make_tensor_value_info("pitch", TensorProto.INT64, [batch, "frames"]),
            helper.make_tensor_value_info("pitchf", TensorProto.FLOAT, [batch, "frames"]),
            helper.make_tensor_value_info("ds", TensorProto.INT64, [batch]),
            helper.make_tensor_value_info("rnd", TensorProto.FLOAT, [batch, 192, "frames"]),
        ],
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [batch, 1, "samples"])],
        inits,
    )
    return _save(graph, path)
