"""Stage 2: checkpoint -> ONNX, checked against the torch model after every export.

    export_onnx(checkpoint, out)   ->  out: one self-contained .onnx file
        input  "input"  float32 [batch, 3, 32, 32]  (normalized, rtk.preprocess)
        output "logits" float32 [batch, 10]
        metadata_props rtk.* (rtk.onnx_meta): depth, normalization, classes, checkpoint sha256, ...

The export spec (names, dynamic axis, opset, tolerances) is data at the top of these modules. After
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

This module holds the export itself; graph.py the graph contract (graph_report), validation.py the
comparison with torch (validate_onnx).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from rtk import __version__
from rtk.checkpoint import build_model
from rtk.checkpoint import load as load_checkpoint
from rtk.errors import RtkError, require
from rtk.export.graph import BATCH_AXIS, GraphReport, graph_report
from rtk.export.validation import ATOL, RTOL, VALIDATION_IMAGES, Validation, validate_onnx, validation_inputs
from rtk.fileio import atomic_path, check_output, sha256_file
from rtk.limits import check_batch
from rtk.log import Log, info
from rtk.onnx_meta import FORMAT, MIN_OPSET, OPSET, encode_metadata, load_onnx
from rtk.preprocess import IMAGE_SHAPE
from rtk.runtime.base import INPUT_NAME, OUTPUT_NAME

__all__ = ["GraphReport", "Validation", "check_versions", "export_onnx", "graph_report", "validate_onnx"]

# Minimum versions, as pyproject's `cpu` extra pins them (tests/test_export.py keeps them equal).
MIN_VERSIONS = {"onnx": "1.16", "onnxruntime": "1.27", "onnxscript": "0.2"}

EXAMPLE_BATCH = 2  # torch.export specializes sizes 0 and 1, so trace with 2 and declare the axis dynamic


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
    if batch_size is not None:
        check_batch(batch_size, "a fixed batch")
    checkpoint, out = Path(checkpoint), check_output(out)
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
    inputs = validation_inputs(data_dir, num_images, normalization, log) if verify else None

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
