"""Stage 2: checkpoint -> ONNX, checked against the torch model after every export.

    export_onnx(checkpoint, out)   ->  out: one self-contained .onnx file
        input  "input"  float32 [batch, 3, 32, 32]  (normalized, rtk.preprocess)
        output "logits" float32 [batch, 10]
        metadata_props rtk.* (rtk.onnx_meta): depth, normalization, classes, checkpoint sha256, ...

The export spec (names, dynamic axis, opset, tolerances) is data at the top of this module. After
writing the file to a temporary path beside `out`, two checks run and every failure is collected
before one RtkError is raised; only a file that passes is renamed onto `out`:

- graph_report: onnx.checker (full check), shape inference with static C, H, W, the input/output
  contract, and the shape of the graph itself: BN folded into the convolutions, each option-A
  shortcut a Slice (step 2 on H, W) plus one constant-mode Pad on the channel axis, exactly two Pads
  for every depth, no runtime helper chains (Shape/ConstantOfShape/Concat/Cast/...).
- validate_onnx: onnxruntime (CPU) against the torch model on real test images when CIFAR-10 is
  available, else on seeded random images, in batches of 1, 7 and 256 (or the fixed batch).

What torch 2.13's exporter emits (dynamo, optimize=True, opset 20), measured for depths 20-1202:
Conv (BN folded: new weights plus a bias initializer), Relu, Add, 2 Slice + 1 Pad per shortcut
(Slice: starts 0, ends INT64_MAX, one axis each, step 2; Pad: constant mode, pads
[0, p, 0, 0, 0, p, 0, 0], no constant_value input), ReduceMean over H, W (keepdims) for the
global pool, Reshape [-1, 64], Gemm. With optimize=False the same export has unfolded
BatchNormalization nodes (19 in ResNet-20) and Shape/Expand/Cast/Concat chains: the onnxscript
optimizer that optimize=True runs constant-folds those and fuses BN into Conv. graph_report
checks that this happened, so another torch/onnxscript version that stops doing it fails loudly
instead of shipping a slower graph.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtk import __version__
from rtk.checkpoint import build_model
from rtk.checkpoint import load as load_checkpoint
from rtk.describe import OnnxSummary, summarize_onnx
from rtk.errors import RtkError, require
from rtk.fileio import atomic_path, sha256_file
from rtk.log import Log, info
from rtk.model import NUM_CLASSES, STAGE_WIDTHS
from rtk.onnx_meta import FORMAT, MIN_OPSET, OPSET, encode_metadata, load_onnx
from rtk.preprocess import IMAGE_SHAPE, normalize_uint8_nhwc
from rtk.runtime.base import INPUT_NAME, OUTPUT_NAME

# Minimum versions, as pyproject's `cpu` extra pins them (tests/test_export.py keeps them equal).
MIN_VERSIONS = {"onnx": "1.16", "onnxruntime": "1.27", "onnxscript": "0.2"}

BATCH_AXIS = "batch"  # name of the dynamic batch dimension in the exported graph
EXAMPLE_BATCH = 2  # torch.export specializes sizes 0 and 1, so trace with 2 and declare the axis dynamic

# Tolerances. A logit fails when |onnx - torch| > max(ATOL, RTOL * s), s = the largest |torch logit|
# of the same image. So the bound is 1e-4 absolute for every image whose logits stay within +-10,
# and widens with the logit scale beyond that, because fp32 noise (summation order, BN folded into
# the weights) grows with the scale of the whole activation stream, not with each logit's own
# value. Measured, untrained nets with real BN statistics, 2-core AMD EPYC: max abs diff 2e-6..2e-5 for
# depths 20-110 (logits up to 13); ResNet-1202 4.4e-4 on a logit of -1.6 in an image whose
# logits reach 64 (7e-6 of the scale): numpy-style rtol * |that logit| could not tell it from a bug,
# RTOL * s does. A real export bug (wrong pad, weights, BN eps) is off by 1e-2 of s or more.
ATOL = 1e-4
RTOL = 1e-5
SWEEP_BATCHES = (1, 7, 256)  # onnxruntime batch sizes in the validation: 1, 7, then 256 until done
VALIDATION_IMAGES = 512

# Everything a clean export may contain. Anything else (BatchNormalization, Shape, ConstantOfShape,
# Concat, Transpose, Cast, Expand, ...) means BN was not folded or pads are computed at run time.
ALLOWED_OPS = frozenset({"Conv", "Relu", "Add", "Slice", "Pad", "ReduceMean", "GlobalAveragePool",
                         "Reshape", "Flatten", "Gemm"})
# Option A changes the shape at the first block of every stage but the first: 2 Pads for any depth.
EXPECTED_PADS = len(STAGE_WIDTHS) - 1
CHANNEL_AXIS = 1
SPATIAL_AXES = (2, 3)
SHORTCUT_STRIDE = 2


# ---------------------------------------------------------------------------------------------
# Graph structure


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


# ---------------------------------------------------------------------------------------------
# Numerical validation


@dataclass
class Validation:
    """onnxruntime against torch on the same inputs."""

    source: str  # e.g. "512 CIFAR-10 test images" or "64 random images (no CIFAR-10 found)"
    num_images: int
    batch_sizes: list[int]  # the distinct batch sizes onnxruntime ran
    max_abs_diff: float
    max_rel_diff: float  # max |onnx - torch| / s, s = the image's largest |torch logit|
    top1_agreement: float  # fraction of images whose argmax matches
    atol: float
    rtol: float
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (f"onnxruntime vs torch on {self.source}, batches {self.batch_sizes}: "
                f"max abs diff {self.max_abs_diff:.2e} (atol {self.atol:g}), max diff / logit scale "
                f"{self.max_rel_diff:.2e} (rtol {self.rtol:g}), top-1 agreement {self.top1_agreement:.2%}")


def _batches(num_images: int, batch_size: int | None) -> Iterator[slice]:
    """Dynamic batch: slices of 1, 7, then 256 images until done; fixed: slices of batch_size."""
    start, sizes = 0, iter(SWEEP_BATCHES)
    while start < num_images:
        size = batch_size or next(sizes, SWEEP_BATCHES[-1])
        yield slice(start, start + size)
        start += size


def _logit_scale(logits: np.ndarray) -> np.ndarray:
    """[N, 10] -> [N, 1]: each image's largest |logit|."""
    return np.abs(logits).max(axis=1, keepdims=True)


def beyond_tolerance(got: np.ndarray, expected: np.ndarray, atol: float = ATOL, rtol: float = RTOL) -> np.ndarray:
    """Boolean [N, 10]: logits of `got` off `expected` by more than max(atol, rtol * image logit scale)."""
    return np.abs(got - expected) > np.maximum(atol, rtol * _logit_scale(expected))


def _torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[s])).numpy()
                               for s in _batches(len(x), SWEEP_BATCHES[-1])])


def validate_onnx(onnx_path: Path, model: torch.nn.Module, x: np.ndarray, *, source: str,
                  batch_size: int | None = None, atol: float = ATOL, rtol: float = RTOL) -> Validation:
    """Run `x` (float32 [N, 3, 32, 32]) through onnxruntime CPU and the torch model; compare logits.

    Every problem is collected (output names, shapes and dtypes per batch, tolerance, top-1), none
    raised.
    """
    ort = require("onnxruntime", min_version=MIN_VERSIONS["onnxruntime"])
    nan = float("nan")
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
        return Validation(source, len(x), [], nan, nan, 0.0, atol, rtol,
                          [f"onnxruntime cannot load the file: {str(exc).splitlines()[0]}"])
    outputs = [o.name for o in session.get_outputs()]
    if outputs != [OUTPUT_NAME]:
        return Validation(source, len(x), [], nan, nan, 0.0, atol, rtol,
                          [f"onnxruntime sees outputs {outputs}, expected [{OUTPUT_NAME!r}]"])

    chunks, sizes, problems = [], [], []
    for s in _batches(len(x), batch_size):
        feed = x[s]
        count = len(feed)
        if batch_size and count < batch_size:  # fixed batch: pad the last chunk with copies
            feed = np.resize(feed, (batch_size, *feed.shape[1:]))
        logits = session.run(None, {INPUT_NAME: feed})[0]
        sizes.append(len(feed))
        if logits.shape != (len(feed), NUM_CLASSES) or logits.dtype != np.float32:
            problems.append(f"batch of {len(feed)}: logits {logits.dtype} {list(logits.shape)}, "
                            f"expected float32 [{len(feed)}, {NUM_CLASSES}]")
            return Validation(source, len(x), sorted(set(sizes)), nan, nan, 0.0, atol, rtol, problems)
        chunks.append(logits[:count])
    got, expected = np.concatenate(chunks), _torch_logits(model, x)  # both [N, 10]

    diff = np.abs(got - expected)
    outside = beyond_tolerance(got, expected, atol, rtol)
    if outside.any():
        image, cls = np.unravel_index(int(np.argmax(diff)), diff.shape)
        problems.append(f"{int(outside.sum())} of {diff.size} logits differ by more than max(atol {atol:g}, "
                        f"rtol {rtol:g} * the image's largest |logit|): max abs diff {diff.max():.3g} "
                        f"(image {image}, class {cls})")
    agree = got.argmax(1) == expected.argmax(1)
    if not agree.all():
        problems.append(f"top-1 differs from torch on {int((~agree).sum())} of {len(x)} images "
                        f"(first: {np.flatnonzero(~agree)[:5].tolist()})")
    rel = diff / np.maximum(_logit_scale(expected), np.finfo(np.float32).tiny)
    return Validation(source, len(x), sorted(set(sizes)), float(diff.max()), float(rel.max()),
                      float(agree.mean()), atol, rtol, problems)


def _validation_inputs(data_dir: str | os.PathLike[str] | None, num_images: int, normalization: dict,
                       log: Log) -> tuple[np.ndarray, str]:
    """(float32 [N, 3, 32, 32], description): CIFAR-10 test images, else seeded random images.

    Only a missing default data set falls back to random images; a --data-dir / RTK_DATA_DIR that
    does not hold CIFAR-10 is an error.
    """
    from rtk import data

    if num_images < 1:
        raise RtkError(f"--num-images must be at least 1, got {num_images}")
    try:
        images = data.load_test_set(data_dir)[0][:num_images]
        source = f"{len(images)} CIFAR-10 test images"
    except RtkError:
        if data_dir is not None or os.environ.get("RTK_DATA_DIR"):
            raise
        log("no CIFAR-10 test set found (see `rtk data download` or --data-dir): "
            "validating on random images instead")
        images = np.random.default_rng(0).integers(0, 256, (num_images, 32, 32, 3), dtype=np.uint8)
        source = f"{num_images} random images (no CIFAR-10 found)"
    return normalize_uint8_nhwc(images, normalization), source


# ---------------------------------------------------------------------------------------------
# Export


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence torch.onnx's progress chatter: warnings about optional torchvision ops it cannot
    register and FutureWarnings from torch internals; neither says anything about this model."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _to_onnx(model: torch.nn.Module, *, opset: int, batch_size: int | None) -> Any:
    """The traced graph as an onnx.ModelProto (weights inline, BN folded by the exporter's optimizer)."""
    example = torch.zeros(batch_size or EXAMPLE_BATCH, *IMAGE_SHAPE)
    dynamic = None if batch_size else {"x": {0: torch.export.Dim(BATCH_AXIS)}}
    with _quiet_exporter():
        program = torch.onnx.export(model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    opset_version=opset, dynamo=True, dynamic_shapes=dynamic,
                                    optimize=True, external_data=False, verbose=False)
    assert program is not None  # dynamo=True always returns an ONNXProgram
    proto = program.model_proto
    # The exporter annotates every node with debugging metadata, including Python stack traces with
    # the absolute paths of this checkout and its venv. Dropped: a shipped file should not carry
    # local paths, and the same checkpoint must give the same bytes from any checkout (the
    # calibration manifest is keyed by the ONNX sha256).
    for node in proto.graph.node:
        del node.metadata_props[:]
    return proto


def check_versions() -> None:
    """RtkError (MissingDependency) when onnx, onnxruntime or onnxscript is missing or too old."""
    for name, version in MIN_VERSIONS.items():
        require(name, min_version=version)


def export_onnx(
    checkpoint: Path,
    out: Path,
    *,
    depth: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    log: Log = info,
    batch_size: int | None = None,
    opset: int = OPSET,
    verify: bool = True,
    num_images: int = VALIDATION_IMAGES,
    atol: float = ATOL,
    rtol: float = RTOL,
    on_validation: Callable[[Validation], None] | None = None,
) -> Path:
    """Export `checkpoint` to `out` (dynamic batch; batch_size=N fixes it) and check it; returns `out`.

    The graph check always runs; verify=False skips only the onnxruntime-vs-torch comparison.
    `on_validation` receives the comparison (passed or not) before a failure is raised; by default
    its summary line is logged.
    Any failure raises one RtkError listing every problem, and nothing is left at `out`.
    """
    check_versions()
    import onnx

    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise RtkError(f"opset {opset} is not supported: choose {MIN_OPSET}..{onnx.defs.onnx_opset_version()} "
                       f"(default {OPSET}, the newest TensorRT 10 reads)")
    if batch_size is not None and batch_size < 1:
        raise RtkError(f"a fixed batch must be at least 1, got {batch_size}")
    checkpoint, out = Path(checkpoint), Path(out)
    model, ckpt = load_checkpoint(checkpoint, depth)
    # The reference is a second copy built from the checkpoint dict, so whatever happens to the
    # traced module on its way through the exporter, the file is compared with the checkpoint.
    reference = build_model(ckpt)
    # The weights were trained with the checkpoint's normalization (written from rtk.preprocess).
    normalization = ckpt["normalization"]
    metrics = ckpt.get("metrics") or {}
    metadata = encode_metadata({
        "format": FORMAT, "depth": ckpt["model"]["depth"], "precision": "fp32",
        "normalization": normalization, "classes": ckpt["classes"],
        "checkpoint_sha256": sha256_file(checkpoint),
        "val_acc": metrics.get("val_acc"), "test_acc": metrics.get("test_acc"), "version": __version__,
    })
    inputs = _validation_inputs(data_dir, num_images, normalization, log) if verify else None

    with atomic_path(out) as tmp:
        log(f"exporting ResNet-{ckpt['model']['depth']} from {checkpoint} (opset {opset}, "
            f"{'batch ' + str(batch_size) if batch_size else 'dynamic batch'})")
        proto = _to_onnx(model, opset=opset, batch_size=batch_size)
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save_model(proto, tmp, save_as_external_data=False)

        # Check the bytes on disk, not the object in memory.
        problems = graph_report(load_onnx(tmp), batch_size=batch_size).problems
        if inputs is not None:
            validation = validate_onnx(tmp, reference, inputs[0], source=inputs[1], batch_size=batch_size,
                                       atol=atol, rtol=rtol)
            if on_validation is None:
                log(validation.summary())
            else:
                on_validation(validation)
            problems += validation.problems
        else:
            log("validation against torch skipped (--no-verify)")
        if problems:
            raise RtkError(f"the ONNX export of {checkpoint} failed its checks, so {out} was not written: "
                           + "; ".join(problems))
    log(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return out
