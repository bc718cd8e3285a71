"""The two INT8 QDQ flavours (which ops get Q/DQ, symmetric or U8S8) and the graph edits and
read-back that go with them.

TensorRT wants symmetric INT8 (zero point 0) on the inputs of Conv and on the shortcut input of each
residual Add; onnxruntime and OpenVINO on x86 are fastest with unsigned activations and signed
weights (U8S8). Both are written by onnxruntime.quantization.quantize_static (rtk.quantize).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rtk.errors import RtkError, require
from rtk.names import INT8_TARGETS
from rtk.onnx_meta import load_onnx


@dataclass(frozen=True)
class Flavour:
    """How quantize_static writes one INT8 target."""

    activation_type: str  # onnxruntime QuantType member
    op_types: tuple[str, ...]  # node types whose inputs (and outputs, unless excluded) get Q/DQ
    extra_options: Mapping[str, Any]
    qdq_on_shortcut_only: bool  # cut the Q/DQ between a Conv and the residual Add it feeds


FLAVOURS: dict[str, Flavour] = {
    # Symmetric INT8 everywhere (zero points 0), weights per output channel (axis 0), activations
    # per tensor. Only inputs are quantized: no Q/DQ between Conv and ReLU, or between Add and ReLU,
    # so TensorRT fuses Conv+ReLU and Conv+Add+ReLU and requantizes after the fused ReLU. "Add" is
    # listed to put a Q/DQ pair on the shortcut input of each residual Add; the pair quantize_static
    # also puts on the conv-branch input is cut out afterwards (qdq_on_shortcuts_only). Biases stay
    # float (no INT32 bias behind a DequantizeLinear); Pad, Slice, ReLU, the pooling and the last FC
    # (Gemm) stay float: the FC is 640 MACs of 40M and keeps the logits exact.
    "tensorrt": Flavour(
        activation_type="QInt8",
        op_types=("Conv", "Add"),
        extra_options={
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            "QDQOpTypePerChannelSupportToAxis": {"Conv": 0},
            "OpTypesToExcludeOutputQuantization": ["Conv", "Add"],
        },
        qdq_on_shortcut_only=True,
    ),
    # U8S8: unsigned asymmetric activations, signed symmetric per-channel weights, INT32 biases.
    # With Relu listed, quantize_static folds each ReLU into the zero point of the tensor before it
    # (asymmetric activations make it removable), so onnxruntime runs QLinearConv / QLinearAdd chains
    # with no float ReLU in between. The last FC stays float as in the TensorRT flavour. Measured
    # (ResNet-20, onnxruntime 1.32, 2 threads, batch 256, busy 2-core EPYC, median img/s): FP32 956,
    # Conv only 1705, Conv+Relu 1851, Conv+Add+Relu 2117; OpenVINO 2026.4: 7855 / 8470 / 8447.
    "cpu": Flavour(
        activation_type="QUInt8",
        op_types=("Conv", "Add", "Relu"),
        extra_options={"WeightSymmetric": True, "QDQOpTypePerChannelSupportToAxis": {"Conv": 0}},
        qdq_on_shortcut_only=False,
    ),
}
assert tuple(FLAVOURS) == INT8_TARGETS
# One calibration serves every flavour: it records the inputs and outputs of all their node types.
CALIBRATED_OP_TYPES = tuple(sorted({op for flavour in FLAVOURS.values() for op in flavour.op_types}))


def qdq_on_shortcuts_only(model: Any) -> int:
    """Cut the Q/DQ pair between a Conv and the residual Add it feeds; returns how many were cut.

    With "Add" quantized, quantize_static puts a QuantizeLinear -> DequantizeLinear pair on both
    inputs of each residual Add:

        Conv -> Q -> DQ -> Add <- DQ <- (shared with the next Conv's input) <- Q <- ReLU / Pad

    TensorRT fuses Conv + Add + ReLU into one INT8 kernel only when the conv branch reaches the Add
    unquantized, so that pair goes and the Add reads the Conv output:  Conv -> Add <- DQ <- Q <- ...
    The pair belongs to the Add alone (quantize_static adds it for the Add input; Conv outputs are
    excluded from output quantization), so nothing else loses its input.
    """
    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    def made_by(tensor: str, op_type: str) -> Any:
        node = producer.get(tensor)
        return node if node is not None and node.op_type == op_type else None

    cut = []
    for add in [node for node in graph.node if node.op_type == "Add"]:
        for i, name in enumerate(add.input):
            dq = made_by(name, "DequantizeLinear")
            q = dq and made_by(dq.input[0], "QuantizeLinear")
            conv = q and made_by(q.input[0], "Conv")
            if conv is None:
                continue
            if readers[dq.output[0]] != 1 or readers[q.output[0]] != 1:
                raise RtkError(f"unexpected graph: the Q/DQ between {conv.name} and {add.name} has "
                               f"other readers")
            add.input[i] = q.input[0]
            cut += [q, dq]
    for node in cut:
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for initializer in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(initializer)  # the scale and zero point of the cut pairs
    return len(cut) // 2


def conv_macs(onnx_path: str | os.PathLike[str]) -> dict[str, int]:
    """{Conv node name: multiply-accumulates per image}, in graph order, from the FP32 model's
    weight shapes and inferred output shapes ([1, C_out, H, W] x C_in/groups * kH * kW)."""
    onnx = require("onnx")
    model = onnx.shape_inference.infer_shapes(load_onnx(onnx_path))
    shapes = {value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
              for value in (*model.graph.value_info, *model.graph.output)}
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    macs = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            _, c_out, height, width = shapes[node.output[0]]
            _, in_per_group, kh, kw = weights[node.input[1]]  # [C_out, C_in / groups, kH, kW]
            macs[node.name] = c_out * height * width * in_per_group * kh * kw
    return macs


def int8_mac_share(onnx_path: str | os.PathLike[str], exclude: Sequence[str]) -> float:
    """The share of the convolutions' multiply-accumulates that run in INT8 when `exclude` stay float."""
    macs = conv_macs(onnx_path)
    return sum(v for name, v in macs.items() if name not in set(exclude)) / sum(macs.values())


def activation_quantization(model: Any) -> dict[str, dict[str, float]]:
    """{tensor: {"scale": s, "zero_point": z}} of every QuantizeLinear in the model: the
    activations (weights are stored quantized and only dequantized)."""
    from onnx import numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return {node.input[0]: {"scale": float(constants[node.input[1]].item()),
                            "zero_point": int(constants[node.input[2]].item())}
            for node in model.graph.node if node.op_type == "QuantizeLinear"}

