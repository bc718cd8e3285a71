"""The scales and biases of an INT8 model tuned against FP32 (either flavour), in torch through
rtk.qat's fake quantization, and kept in the calibration manifest beside the ranges they start from.

    manifest ranges, float Convs -> the calibrated QDQ model (temporary)
      -> tune: Adam on the manifest's calibration images (CUDA when torch sees a GPU, else the CPU,
         with the time it will take printed after the first steps and a progress bar on a terminal)
      -> manifest["tuned"][target]: the recipe, each tuned tensor's range, the bias shift of every
         Conv and of the FC, the logit MSE before and after
      -> the shifts added to the FP32 model's biases, then quantize_static with those ranges

Reused while the recipe and the calibrated ranges are the same (their digest is kept beside the
tuned values; the manifest loses them when it is calibrated again), so a manifest shipped in calib/
spares every later run the minutes of tuning, and ranges edited by hand are tuned again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtk import augment, data
from rtk.errors import RtkError, require
from rtk.log import Log, info, progress
from rtk.names import TUNE_STEPS
from rtk.onnx_meta import load_onnx
from rtk.quantize.qdq import FLAVOURS, activation_quantization

__all__ = ["TUNE_STEPS", "add_bias_shifts", "recipe", "tune", "tuned_for", "tuning_device"]
# Adam, cosine to 0 from these peaks, TUNE_BATCH augmented calibration images a step. Chosen on the
# validation split of the shipped ResNet-20 (docs/quantization.md, "Tuned scales and biases").
TUNE_BATCH = 128
TUNE_LR_SCALES = 1e-3  # the scales are ~0.01-0.05: at most a few percent a step
TUNE_LR_BIASES = 3e-4
EVAL_BATCH = 500  # images per forward pass when the logit MSE is measured
ESTIMATE_STEPS = 3  # steps timed before tuning says how long it will take
# onnxruntime's scale from a range: symmetric INT8 max|range| / 127, UINT8 (high - low) / 255
SYMMETRIC_LEVELS, UNSIGNED_LEVELS = 127, 255


def recipe(steps: int, seed: int, float_convs: Sequence[str]) -> dict[str, Any]:
    """What tuned values depend on besides the ranges: another recipe tunes again."""
    return {"steps": steps, "seed": seed, "batch": TUNE_BATCH, "float_convs": sorted(float_convs),
            "lr": {"scales": TUNE_LR_SCALES, "biases": TUNE_LR_BIASES}, "loss": "logit MSE against FP32",
            "images": "the calibration images, augmented as in training"}


def tuning_device() -> str:
    """Where tuning runs: CUDA when torch sees a GPU, else the CPU."""
    return "cuda" if require("torch").cuda.is_available() else "cpu"


def ranges_digest(ranges: Mapping[str, Any]) -> str:
    """sha256 of calibrated ranges: tuned values start from them, so ranges edited in a manifest by hand
    (or recalibrated) are tuned again instead of being replaced by values tuned from others."""
    return hashlib.sha256(json.dumps(ranges, sort_keys=True).encode()).hexdigest()


def tuned_for(onnx_path: Path, manifest: dict[str, Any], cifar: data.Cifar10, normalization: Mapping[str, Any],
              target: str, wanted: Mapping[str, Any], write_calibrated: Callable[[Path], Any],
              log: Log) -> dict[str, Any]:
    """The manifest's tuned values of `target` for `wanted` (a recipe), tuned now and stored in
    `manifest` (the caller writes it) when it has none; `write_calibrated(path)` writes the untuned
    QDQ model and returns it."""
    recorded = manifest.get("tuned", {}).get(target)
    start = ranges_digest(manifest["ranges"])
    if isinstance(recorded, dict) and recorded.get("recipe") == wanted and recorded.get("from_ranges") == start:
        log(f"reusing the tuned scales and biases in the manifest ({wanted['steps']} steps)")
        return recorded
    with tempfile.TemporaryDirectory(prefix="rtk-tune-") as work:
        calibrated = Path(work) / "calibrated.onnx"
        zero_points = {name: q["zero_point"] for name, q in activation_quantization(write_calibrated(calibrated)).items()}
        images = cifar.train_images[np.asarray(manifest["indices"], dtype=np.int64)]
        result = tune(onnx_path, calibrated, images, dict(normalization), steps=wanted["steps"],
                      seed=wanted["seed"], log=log)
    signed = FLAVOURS[target].activation_type == "QInt8"  # symmetric, zero points 0
    graph = load_onnx(onnx_path).graph  # an rtk ResNet's, which tune has checked
    convs = [node for node in graph.node if node.op_type == "Conv"]
    gemm = next(node for node in graph.node if node.op_type == "Gemm")
    tuned = {"recipe": dict(wanted), "from_ranges": start,
             "ranges": {name: [-SYMMETRIC_LEVELS * scale, SYMMETRIC_LEVELS * scale] if signed else
                        [-zero_points[name] * scale, (UNSIGNED_LEVELS - zero_points[name]) * scale]
                        for name, scale in result["scales"].items()},
             "bias_shifts": {**{conv.name: shift for conv, shift in zip(convs, result["conv_bias_shifts"])},
                             gemm.name: result["fc_bias_shift"]},
             "logit_mse": result["logit_mse"], "device": result["device"]}
    manifest.setdefault("tuned", {})[target] = tuned
    return tuned


def tune(onnx_path: str | os.PathLike[str], qdq_path: str | os.PathLike[str], images: np.ndarray,
         normalization: dict[str, Any], *, steps: int, seed: int = 0, device: str | None = None,
         log: Log = info) -> dict[str, Any]:
    """Scales and biases for the QDQ file `qdq_path` (either flavour) of the FP32 `onnx_path` that
    bring its logits closer to FP32's, the weights left as they are.

    `steps` Adam steps, each on TUNE_BATCH of `images` (uint8 [N, 32, 32, 3], the calibration
    images) augmented as in training, minimize the mean squared logit error between FP32 and the
    fake-quantized model (rtk.qat.attach_qdq), training the scale of every quantized activation
    (LSQ, from the calibrated one; zero points stay) and the bias of every Conv and of the FC (the
    mean error each layer adds, absorbed where it arises). Rounding noise is what INT8 costs here,
    so the scales trade clipping against it by its effect on the logits instead of by a histogram.
    Runs on `device` (default tuning_device()). Returns {"scales": {tensor: scale}, "conv_bias_shifts":
    [[C_out floats] per Conv in graph order], "fc_bias_shift": [10 floats], "logit_mse":
    {"calibrated", "tuned"} (on `images`, unaugmented), "device"}.
    """
    from rtk import qat

    torch = require("torch")
    device = device or tuning_device()
    teacher = qat.folded_from_onnx(onnx_path).to(device)
    student = copy.deepcopy(teacher)
    fake = qat.attach_qdq(student, qdq_path, learn_scales=True)
    nchw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)  # uint8 [N, 3, 32, 32]

    def mse() -> float:
        with torch.no_grad():
            return float(sum(((student(x) - teacher(x)) ** 2).sum() for x in
                             (augment.normalize(nchw[i:i + EVAL_BATCH], normalization)
                              for i in range(0, len(nchw), EVAL_BATCH)))
                         / (len(nchw) * teacher.num_classes))

    scales = [q.scale for q in fake.tensors.values()]
    biases = [bn.bias for _, bn in qat.conv_bn_pairs(student)] + [student.fc.bias]
    start = [b.detach().clone() for b in biases]
    for p in student.parameters():
        p.requires_grad_(False)
    for b in biases:
        b.requires_grad_(True)
    optimizer = torch.optim.Adam([{"params": scales, "lr": TUNE_LR_SCALES}, {"params": biases, "lr": TUNE_LR_BIASES}])
    peaks = [group["lr"] for group in optimizer.param_groups]
    calibrated = mse()
    log(f"tuning {len(scales)} activation scales and the biases on {len(nchw)} calibration images, {steps} "
        f"steps of {TUNE_BATCH} on {device}: logit MSE against FP32 {calibrated:.5f} calibrated")
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same draws on any device
    started = time.perf_counter()
    with progress("tune", steps, log=log) as shown:
        for step in range(steps):
            for group, peak in zip(optimizer.param_groups, peaks):
                group["lr"] = peak * 0.5 * (1 + math.cos(math.pi * step / steps))
            x = augment.normalize(augment.augment(nchw[torch.randint(len(nchw), (TUNE_BATCH,), generator=generator)],
                                                  generator), normalization)
            with torch.no_grad():
                target = teacher(x)
            loss = torch.nn.functional.mse_loss(student(x), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for s in scales:
                    s.clamp_(min=1e-8)  # a scale at or below 0 quantizes nothing
            batch_mse = float(loss.item())  # also waits for the device, so the times below are real
            shown.update(step + 1, f"batch logit MSE {batch_mse:.5f}")
            if step + 1 == min(ESTIMATE_STEPS, steps) and step + 1 < steps:
                per_step = (time.perf_counter() - started) / (step + 1)
                shown.note(f"tuning will take about {_duration(per_step * steps)} on {device} "
                           f"({per_step:.2f} s a step, timed on the first {step + 1})")
            elif (step + 1) % max(1, steps // 5) == 0 and step + 1 < steps:
                shown.note(f"  step {step + 1}/{steps}: batch logit MSE {batch_mse:.5f} "
                           f"({time.perf_counter() - started:.0f} s)")
    tuned = mse()
    log(f"tuned: logit MSE against FP32 {tuned:.5f} on the calibration images ({time.perf_counter() - started:.0f} s)")
    shifts = [(b.detach() - b0).cpu().tolist() for b, b0 in zip(biases, start)]
    return {"scales": {name: float(q.scale.detach().cpu()) for name, q in fake.tensors.items()},
            "conv_bias_shifts": shifts[:-1], "fc_bias_shift": shifts[-1],
            "logit_mse": {"calibrated": calibrated, "tuned": tuned}, "device": device}


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def add_bias_shifts(model: Any, shifts: Mapping[str, Sequence[float]]) -> None:
    """Add each node's tuned shift to its float bias (input 2 of a Conv or Gemm) in the FP32 model
    that is then quantized; a node without one (the exporter leaves out a bias of zeros) gets the
    shift as its bias."""
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
