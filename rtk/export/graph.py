"""The export contract for the graph itself: onnx.checker, shape inference with static C, H, W, the
input/output names and shapes, BN folded into the convolutions, each option-A shortcut a Slice (step 2
on H, W) plus one constant-mode Pad on the channel axis, exactly two Pads for every depth, and no
run-time helper chains (Shape/ConstantOfShape/Concat/Cast/...). See rtk.export for what torch emits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtk.describe import OnnxSummary, summarize_onnx
from rtk.model import NUM_CLASSES, STAGE_WIDTHS
from rtk.preprocess import IMAGE_SHAPE
from rtk.runtime.base import INPUT_NAME, OUTPUT_NAME

BATCH_AXIS = "batch"  # name of the dynamic batch dimension in the exported graph

# Everything a clean export may contain. Anything else (BatchNormalization, Shape, ConstantOfShape,
# Concat, Transpose, Cast, Expand, ...) means BN was not folded or pads are computed at run time.
ALLOWED_OPS = frozenset({"Conv", "Relu", "Add", "Slice", "Pad", "ReduceMean", "GlobalAveragePool",
                         "Reshape", "Flatten", "Gemm"})
# Option A changes the shape at the first block of every stage but the first: 2 Pads for any depth.
EXPECTED_PADS = len(STAGE_WIDTHS) - 1
CHANNEL_AXIS = 1
SPATIAL_AXES = (2, 3)
SHORTCUT_STRIDE = 2


@dataclass
class GraphReport:
    """What the exported graph contains, and every way it breaks the export contract."""

    summary: OnnxSummary
    pads: list[list[int]]  # the pads of each Pad node, ONNX order (begin of each axis, then end)
    slices: list[dict[str, list[int]]]  # starts/ends/axes/steps of each Slice node
    problems: list[str] = field(default_factory=list)


def _constants(graph: Any) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs by name."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _attribute(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _pad_problems(node: Any, constants: dict[str, np.ndarray]) -> tuple[list[int], list[str]]:
    if len(node.input) < 2 or node.input[1] not in constants:
        return [], [f"Pad {node.name}: pads are computed at run time, not a constant"]
    pads = constants[node.input[1]].astype(int).tolist()
    problems = []
    mode = _attribute(node, "mode", "constant")
    if mode != "constant":
        problems.append(f"Pad {node.name}: mode {mode!r}, expected 'constant'")
    rank = len(pads) // 2
    if len(node.input) > 3 and node.input[3]:
        problems.append(f"Pad {node.name}: has an axes input; expected pads for all {rank} axes")
    padded_axes = {i % rank for i, p in enumerate(pads) if p}
    if rank != 4 or padded_axes != {CHANNEL_AXIS}:
        problems.append(f"Pad {node.name}: pads {pads} touch axes {sorted(padded_axes)} of a rank-{rank} "
                        f"tensor; expected only the channel axis {CHANNEL_AXIS} of NCHW")
    fill = node.input[2] if len(node.input) > 2 else ""
    if fill and (fill not in constants or np.any(constants[fill] != 0)):
        problems.append(f"Pad {node.name}: constant value is not a constant zero")
    return pads, problems


def _slice_problems(node: Any, constants: dict[str, np.ndarray]) -> tuple[dict[str, list[int]], list[str]]:
    names = ("starts", "ends", "axes", "steps")
    if len(node.input) < 5 or any(i not in constants for i in node.input[1:5]):
        return {}, [f"Slice {node.name}: starts/ends/axes/steps must all be given as constants"]
    spec = {name: constants[i].astype(int).tolist() for name, i in zip(names, node.input[1:5])}
    problems = []
    if not set(spec["axes"]) <= set(SPATIAL_AXES) or set(spec["steps"]) != {SHORTCUT_STRIDE} \
            or any(spec["starts"]):
        problems.append(f"Slice {node.name}: {spec}; expected start 0 and step {SHORTCUT_STRIDE} "
                        f"on H and W (axes {SPATIAL_AXES}) only")
    return spec, problems


def _io_problems(summary: OnnxSummary, batch: int | str) -> list[str]:
    expected = {
        "input": [(INPUT_NAME, "float32", (batch, *IMAGE_SHAPE))],
        "output": [(OUTPUT_NAME, "float32", (batch, NUM_CLASSES))],
    }
    problems = []
    for kind, specs in (("input", summary.inputs), ("output", summary.outputs)):
        found = [(t.name, t.dtype, t.shape) for t in specs]
        if found != expected[kind]:
            problems.append(f"{kind}s are {found}, expected {expected[kind]}")
    return problems


def _shape_problems(model: Any, batch: int | str) -> list[str]:
    """Shape inference must give every tensor a shape whose non-batch dims are static."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                                     data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        return [f"shape inference failed: {str(exc).splitlines()[0]}"]
    graph = inferred.graph
    shaped = {v.name: v for v in (*graph.value_info, *graph.output)}
    problems = []
    for node in graph.node:
        for name in node.output:
            value = shaped.get(name)
            dims = value.type.tensor_type.shape.dim if value is not None else None
            if not dims:
                problems.append(f"shape inference gives no shape for {name} ({node.op_type})")
            elif any(not d.HasField("dim_value") for d in dims[1:]) or \
                    (dims[0].dim_value or dims[0].dim_param) != batch:
                shape = [d.dim_value or d.dim_param or "?" for d in dims]
                problems.append(f"{name} ({node.op_type}) has shape {shape}: expected [{batch}, static...]")
    return problems


def graph_report(model: Any, *, batch_size: int | None = None) -> GraphReport:
    """Check an exported onnx.ModelProto against the export contract (see the module docstring).

    batch_size None: the batch axis must be the dynamic "batch"; an int: that fixed size.
    """
    import onnx

    summary = summarize_onnx(model)
    batch: int | str = batch_size or BATCH_AXIS
    problems: list[str] = []
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        problems.append(f"onnx.checker: {str(exc).splitlines()[0]}")
    problems += _shape_problems(model, batch)
    problems += _io_problems(summary, batch)
    if summary.external_initializers:
        problems.append(f"{len(summary.external_initializers)} initializers are stored outside the file")
    unexpected = {op: n for op, n in summary.op_histogram.items() if op not in ALLOWED_OPS}
    if unexpected:
        problems.append(f"unexpected ops {unexpected} (unfolded BN or run-time helper chains); "
                        f"a clean export has only {', '.join(sorted(ALLOWED_OPS))}")

    constants = _constants(model.graph)
    pads, slices = [], []
    for node in model.graph.node:
        if node.op_type == "Pad":
            pad, found = _pad_problems(node, constants)
            pads.append(pad)
            problems += found
        elif node.op_type == "Slice":
            spec, found = _slice_problems(node, constants)
            slices.append(spec)
            problems += found
    if len(pads) != EXPECTED_PADS:
        problems.append(f"{len(pads)} Pad nodes, expected exactly {EXPECTED_PADS} (one per option-A shortcut)")
    for axis in SPATIAL_AXES:
        sliced = sum(axis in spec.get("axes", ()) for spec in slices)
        if sliced != EXPECTED_PADS:
            problems.append(f"axis {axis} is strided by {sliced} Slices, expected {EXPECTED_PADS}")
    return GraphReport(summary, pads, slices, problems)

