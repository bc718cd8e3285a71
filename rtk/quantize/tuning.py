"""The TensorRT flavour's scales and biases tuned against FP32 (rtk.qat.tune), kept in the
calibration manifest beside the ranges they start from.

    manifest ranges, float Convs -> the calibrated QDQ model (temporary)
      -> rtk.qat.tune on the manifest's calibration images (torch, fake quantization)
      -> manifest["tuned"]["tensorrt"]: the recipe, each quantized Conv input's range, the bias
         shift of every Conv and of the FC, the logit MSE before and after
      -> quantize_static with those ranges; the shifts added to the QDQ model's float biases

Reused while the recipe is the same (the manifest loses it when it is calibrated again), so a
tracked manifest in calib/ spares every later run the minutes of tuning.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtk import data
from rtk.errors import RtkError
from rtk.log import Log
from rtk.names import TUNE_STEPS
from rtk.onnx_meta import load_onnx

__all__ = ["TUNE_STEPS", "add_bias_shifts", "recipe", "tuned_for"]
SYMMETRIC_LEVELS = 127  # onnxruntime's symmetric INT8 scale is max|range| / 127


def recipe(steps: int, seed: int, float_convs: Sequence[str]) -> dict[str, Any]:
    """What tuned values depend on besides the ranges: another recipe tunes again."""
    from rtk import qat

    return {"steps": steps, "seed": seed, "batch": qat.TUNE_BATCH, "float_convs": sorted(float_convs),
            "lr": {"scales": qat.TUNE_LR_SCALES, "biases": qat.TUNE_LR_BIASES}, "loss": "logit MSE against FP32",
            "images": "the calibration images, augmented as in training"}


def tuned_for(onnx_path: Path, manifest: dict[str, Any], cifar: data.Cifar10, normalization: Mapping[str, Any],
              wanted: Mapping[str, Any], write_calibrated: Callable[[Path], Any], log: Log) -> dict[str, Any]:
    """The manifest's tuned values for `wanted` (a recipe), tuned now and stored in `manifest` (the
    caller writes it) when it has none; `write_calibrated(path)` writes the untuned QDQ model."""
    from rtk import qat

    recorded = manifest.get("tuned", {}).get("tensorrt")
    if isinstance(recorded, dict) and recorded.get("recipe") == wanted:
        log(f"reusing the tuned scales and biases in the manifest ({wanted['steps']} steps)")
        return recorded
    with tempfile.TemporaryDirectory(prefix="rtk-tune-") as work:
        calibrated = Path(work) / "calibrated.onnx"
        write_calibrated(calibrated)
        images = cifar.train_images[np.asarray(manifest["indices"], dtype=np.int64)]
        result = qat.tune(onnx_path, calibrated, images, dict(normalization), steps=wanted["steps"],
                          seed=wanted["seed"], log=log)
    graph = load_onnx(onnx_path).graph  # an rtk ResNet's, which qat.tune has checked
    convs = [node for node in graph.node if node.op_type == "Conv"]
    gemm = next(node for node in graph.node if node.op_type == "Gemm")
    tuned = {"recipe": dict(wanted),
             "ranges": {conv.input[0]: [-SYMMETRIC_LEVELS * scale, SYMMETRIC_LEVELS * scale]
                        for conv, scale in zip(convs, result["conv_input_scales"]) if scale is not None},
             "bias_shifts": {**{conv.name: shift for conv, shift in zip(convs, result["conv_bias_shifts"])},
                             gemm.name: result["fc_bias_shift"]},
             "logit_mse": result["logit_mse"]}
    manifest.setdefault("tuned", {})["tensorrt"] = tuned
    return tuned


def add_bias_shifts(model: Any, shifts: Mapping[str, Sequence[float]]) -> None:
    """Add each node's tuned shift to its float bias (input 2 of a Conv or Gemm), in the QDQ model;
    a node without one (the exporter leaves out a bias of zeros) gets the shift as its bias."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    nodes = {node.name: node for node in model.graph.node}
    for name, shift in shifts.items():
        node = nodes.get(name)
        if node is None or node.op_type not in ("Conv", "Gemm"):
            raise RtkError(f"the tuned biases name {name}, not a Conv or Gemm of this model: delete the "
                           f"manifest's \"tuned\" entry to tune again")
        values = np.asarray(shift, dtype=np.float32)
        if len(node.input) > 2 and node.input[2]:
            values = values + numpy_helper.to_array(initializers[node.input[2]])
            initializers[node.input[2]].CopyFrom(numpy_helper.from_array(values, node.input[2]))
        else:
            model.graph.initializer.append(numpy_helper.from_array(values, f"{name}.tuned_bias"))
            node.input.append(f"{name}.tuned_bias")
