"""The two INT8 QDQ flavours (which ops get Q/DQ, symmetric or U8S8) and the graph edits and
read-back that go with them.

TensorRT wants symmetric INT8 (zero point 0) on the inputs of the Convs it runs in INT8; onnxruntime
and OpenVINO on x86 are fastest with unsigned activations and signed weights (U8S8). Both are written
by onnxruntime.quantization.quantize_static (rtk.quantize).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rtk.errors import require
from rtk.names import INT8_TARGETS
from rtk.onnx_meta import load_onnx


@dataclass(frozen=True)
class Flavour:
    """How quantize_static writes one INT8 target."""

    activation_type: str  # onnxruntime QuantType member
    op_types: tuple[str, ...]  # node types whose inputs (and outputs, unless excluded) get Q/DQ
    extra_options: Mapping[str, Any]
    leading_float_convs: int  # the first Convs in graph order, left float by default
    quantized_for_convs_only: bool  # other readers of a quantized activation read it float (float_readers)
    tuned: bool  # scales and biases tuned against FP32 by default (rtk.quantize.tuning)


FLAVOURS: dict[str, Flavour] = {
    # Symmetric INT8 (zero points 0), weights per output channel (axis 0), activations per tensor,
    # on the inputs of the Convs only: no Q/DQ between Conv and ReLU, so TensorRT fuses Conv+ReLU
    # and requantizes after it. The residual Adds read float (both inputs; float_readers): quantizing the shortcut,
    # as TensorRT's guide does for its INT8 Conv+Add+ReLU fusion, puts rounding noise on the residual
    # stream itself, where it accumulates (measured on the shipped ResNet-20: the logit MSE against
    # FP32 0.0188 without it against 0.0251 with it, docs/quantization.md). The first two Convs stay
    # float: the stem (the image in symmetric INT8 is the largest single error, 1% of the MACs) and
    # the first block's conv1 (the stem's output; its float copy lowered the tuned model's
    # validation MSE from 0.0101 to 0.0071, 6% of the MACs). Biases stay float (no INT32 bias
    # behind a DequantizeLinear); Pad, Slice, ReLU, the pooling and the last FC (Gemm) stay float:
    # the FC is 640 MACs of 40M and keeps the logits exact.
    "tensorrt": Flavour(
        activation_type="QInt8",
        op_types=("Conv",),
        extra_options={
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            "QDQOpTypePerChannelSupportToAxis": {"Conv": 0},
            "OpTypesToExcludeOutputQuantization": ["Conv"],
        },
        leading_float_convs=2,
        quantized_for_convs_only=True,
        tuned=True,
    ),
    # U8S8: unsigned asymmetric activations, signed symmetric per-channel weights, INT32 biases.
    # With Relu listed, quantize_static folds each ReLU into the zero point of the tensor before it
    # (asymmetric activations make it removable), so onnxruntime runs QLinearConv / QLinearAdd chains
    # with no float ReLU in between. The last FC stays float as in the TensorRT flavour. Measured
    # (ResNet-20, onnxruntime 1.32, 2 threads, batch 256, busy 2-core EPYC, median img/s): FP32 956,
    # Conv only 1705, Conv+Relu 1851, Conv+Add+Relu 2117; OpenVINO 2026.4: 7855 / 8470 / 8447.
    # The stem stays float (its input, the image, is the flavour's largest single error: floating it
    # lowered the validation logit MSE by 10-14% at every shipped depth, no other Conv by more than
    # 3%; 0.3-1.1% of the MACs) and the scales and biases are tuned (ResNet-32, validation: MSE 0.0110
    # -> 0.0074 with both; docs/quantization.md, "Deeper ResNets"). The float stem costs onnxruntime
    # 39% of its INT8 throughput at batch 256 (OpenVINO 3%; scripts/cpu_stem_speed.py), same doc.
    "cpu": Flavour(
        activation_type="QUInt8",
        op_types=("Conv", "Add", "Relu"),
        extra_options={"WeightSymmetric": True, "QDQOpTypePerChannelSupportToAxis": {"Conv": 0}},
        leading_float_convs=1,
        quantized_for_convs_only=False,
        tuned=True,
    ),
}
assert tuple(FLAVOURS) == INT8_TARGETS
# One calibration serves every flavour: it records the inputs and outputs of all their node types.
CALIBRATED_OP_TYPES = tuple(sorted({op for flavour in FLAVOURS.values() for op in flavour.op_types}))


def float_readers(model: Any) -> int:
    """Give the float tensor back to every reader of a quantized activation that is not a Conv;
    returns how many inputs were rewired.

    quantize_static puts one Q/DQ pair on a tensor and makes all its readers read the DequantizeLinear:

        ReLU -> Q -> DQ -> Conv (next block's conv1)
                       -> Add / Slice (the shortcut)

    so the residual stream itself would carry the rounding of every block input. The shortcut's
    readers get the ReLU output back; only Convs read the quantized copy:

        ReLU -> Q -> DQ -> Conv
             -> Add / Slice
    """
    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output}
    weights = {init.name for init in graph.initializer}
    rewired = 0
    for node in graph.node:
        if node.op_type in ("Conv", "QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in weights:
                node.input[i] = q.input[0]
                rewired += 1
    return rewired


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

