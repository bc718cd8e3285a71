"""Stage 3: INT8 and FP16 ONNX models from the FP32 one, each checked on the test set before it is written.

    model.onnx ─ calibrate: onnxruntime's calibrator runs N CIFAR-10 *training* images through it
      │          -> calib/resnet20-<checkpoint sha256[:12]>-<method>-n1024-s0.json
      │             (which images, data checksum, method, per-tensor ranges, the scales written)
      ├─ quantize_int8(target="tensorrt") -> model.int8.tensorrt.onnx   + model.int8.tensorrt.onnx.json
      ├─ quantize_int8(target="cpu")      -> model.int8.cpu.onnx        + model.int8.cpu.onnx.json
      └─ convert_fp16                     -> model.fp16.onnx            + model.fp16.onnx.json

This module holds the two stages; its parts:
    calibration.py  the calibrator, its methods and the manifest (reused across targets and reruns)
    qdq.py          the two QDQ flavours and the graph edit the TensorRT one needs
    tuning.py       scales and biases tuned against FP32 in torch (rtk.qat's fake quantization)
    mixed_precision.py  the Convs --max-drop leaves float
    validation.py   accuracy against FP32 on the test set, the <model>.json record, the drop limit
    metadata.py     the FP32 source's rtk metadata, checked and carried into every model written

One calibration, two QDQ flavours (REFERENCE.md section 3). TensorRT wants symmetric INT8 (zero
point 0) on the inputs of the Convs it runs in INT8; onnxruntime and OpenVINO on x86 are fastest with
unsigned activations and signed weights (U8S8). Both come from onnxruntime.quantization.quantize_static
fed with the same per-tensor ranges, so the calibration manifest serves both and a second target (or a
rerun) does not calibrate again. The scales and biases are then tuned against FP32 (tuning.py; by
default the flavours with Flavour.tuned), and the manifest keeps those too. The manifests of the
weights rtk ships are shipped with it (calibration.readable_manifest), so a run anywhere reuses them.

Every written model is validated with onnxruntime on the CPU against the FP32 model on the 10,000
test images (accuracy, the difference in points, top-1 agreement). The figures are printed and stored
beside the model as `<model>.json` (format "rtk.validation/1"); a model that loses more than
MAX_ACCURACY_DROP points is not written. The TensorRT flavour runs on onnxruntime too (same QDQ
arithmetic, slower kernels), so its accuracy is known before any GPU sees it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rtk import data
from rtk.errors import RtkError, require
from rtk.fileio import atomic_path, check_output, sha256_file
from rtk.limits import check_budget
from rtk.log import Log, info
from rtk.onnx_meta import load_onnx
from rtk.quantize.calibration import (
    METHODS,
    calibration_for,
    calibration_manifest_path,
    check_covers,
    manifest_named,
    quantization_module,
    quiet,
    read_manifest,
    readable_manifest,
    tensors_data,
    write_manifest,
)
from rtk.quantize.metadata import fp32_metadata, set_rtk_metadata
from rtk.quantize.qdq import (
    FLAVOURS,
    activation_quantization,
    conv_macs,
    float_readers,
    int8_mac_share,
)
from rtk.quantize.tuning import TUNE_STEPS, add_bias_shifts, recipe, tuned_for
from rtk.quantize.validation import AccuracyDropError, validate_into, validation_path

__all__ = ["AccuracyDropError", "convert_fp16", "manifest_named", "quantize_int8", "validation_path"]
FILE_KEYS = ("model", "sha256")  # of a manifest's record of a written model: which file, not what is in it


def quantize_int8(onnx_path: str | os.PathLike[str], out: str | os.PathLike[str], *, target: str,
                  method: str = "percentile", data_dir: str | os.PathLike[str] | None = None,
                  log: Log = info, num_images: int = 1024, seed: int = 0,
                  calib_dir: str | os.PathLike[str] | None = None, verify: bool = True,
                  max_drop: float | None = None, exclude: Sequence[str] = (),
                  max_validation_drop: float | None = None, ranges_from: str | os.PathLike[str] | None = None,
                  reference: str | os.PathLike[str] | None = None, tune_steps: int | None = None) -> Path:
    """The INT8 QDQ model of `target` ("tensorrt" | "cpu") from the FP32 `onnx_path`, written to `out`.

    Calibrates with `method` on `num_images` class-balanced training images chosen by `seed` (or
    reuses the manifest under `calib_dir` for the same model, method, N and seed), quantizes, and
    with `verify` validates on the test set (refusing a drop over `max_drop` points). The Conv nodes
    named in `exclude` stay float: no Q/DQ on their inputs; with `max_validation_drop` (points)
    rtk.mixed_precision adds the fewest it takes to lose no more than that on the validation split.
    With `ranges_from` (a manifest of another file of this network: the scales a QAT fine-tuning kept)
    nothing is calibrated and no manifest is written; `reference` is the FP32 model validation
    compares against (default: `onnx_path`). A flavour leaves its first Convs float
    (Flavour.leading_float_convs) and tunes its scales and biases against FP32 for `tune_steps`
    (default TUNE_STEPS where Flavour.tuned, else 0: the calibrated ranges as they are;
    rtk.quantize.tuning).
    """
    if target not in FLAVOURS:
        raise RtkError(f"unknown INT8 target {target!r}; choose one of {', '.join(FLAVOURS)}")
    if method not in METHODS:
        raise RtkError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    if max_validation_drop is not None:
        check_budget(max_validation_drop)
    if max_drop is not None:
        check_budget(max_drop, "max_drop", gain_ok=True)
    quantization_module()
    onnx_path, out = Path(onnx_path), check_output(out)
    check_output(validation_path(out))
    meta = fp32_metadata(onnx_path)
    if ranges_from is None:
        manifest_path = check_output(calibration_manifest_path(calib_dir, meta, method, num_images, seed, onnx_path))
        cifar = data.load_cifar10(data_dir)
        manifest = calibration_for(onnx_path, meta, cifar, manifest_path, method, num_images, seed, log)
    else:
        manifest_path = Path(ranges_from)
        manifest = read_manifest(manifest_path)
        recorded = (manifest.get("method"), manifest["model"].get("depth"))
        if recorded != (method, meta["depth"]):
            raise RtkError(f"{manifest_path} holds {recorded[0]} ranges of a ResNet-{recorded[1]}, "
                           f"not {method} ranges of this ResNet-{meta['depth']}")
        check_covers(manifest_path, manifest, onnx_path)
        cifar = data.load_cifar10(data_dir)
        log(f"using the ranges in {manifest_path} ({method}), not calibrating")
    convs = list(conv_macs(onnx_path))
    unknown = sorted(set(exclude) - set(convs))
    if unknown:
        raise RtkError(f"cannot leave {', '.join(unknown)} out of INT8: not a Conv of {onnx_path}")
    flavour = FLAVOURS[target]
    leading = convs[:flavour.leading_float_convs]
    exclude = [*leading, *(name for name in exclude if name not in leading)]
    steps = tune_steps if tune_steps is not None else TUNE_STEPS if flavour.tuned and ranges_from is None else 0
    if steps and ranges_from is not None:
        raise RtkError("tuning the scales and biases starts from calibrated ranges, not QAT's")
    # the manifest by name: where it was found (a calib dir, the package) must not change the file's bytes
    calibration = {"manifest": manifest_path.name, "method": method, "num_images": num_images, "seed": seed}
    selection = None
    if max_validation_drop is not None:
        from rtk.quantize import mixed_precision

        with _naming(manifest_path):
            selection = mixed_precision.choose_float_convs(
                onnx_path, lambda path, convs: _write_int8(onnx_path, path, manifest, method, target, convs,
                                                            calibration, None),
                max_drop=max_validation_drop, data_dir=data_dir, log=log, keep_float=exclude)
        exclude = list(selection["float_convs"])
        calibration["mixed_precision"] = selection  # the evidence of the choice travels with the model
    tuned = None
    if steps:
        tuned = tuned_for(onnx_path, manifest, cifar, meta["normalization"], target, recipe(steps, seed, exclude),
                          lambda path: _write_int8(onnx_path, path, manifest, method, target, exclude, calibration,
                                                   None), log)
        calibration["tuned"] = tuned["recipe"]

    log(f"quantizing {onnx_path} for {target} ({flavour.activation_type} activations, QInt8 weights "
        f"per channel, QDQ on {', '.join(flavour.op_types)}"
        f"{'; float: ' + ', '.join(exclude) if exclude else ''})")
    with atomic_path(out) as tmp, _naming(manifest_path):
        model = _write_int8(onnx_path, tmp, manifest, method, target, exclude, calibration, tuned)
        validate_into(tmp, out, Path(reference or onnx_path), "int8", data_dir, verify, max_drop, log)

    if ranges_from is not None:
        return out  # the manifest describes the file it calibrated
    # What the flavour's model is: its file and sha256, and what makes it (float Convs, tuning, scales). The
    # same quantization in another file (another --out; a --max-drop that kept the Convs, whose evidence
    # is in that file's own metadata) is not news: the record, and a manifest tracked in git, stay.
    record = {"model": out.name, "sha256": sha256_file(out), "float_convs": sorted(exclude),
              "int8_mac_share": int8_mac_share(onnx_path, exclude),
              **({"tuned": {"steps": steps, "logit_mse": tuned["logit_mse"]}} if tuned else {}),
              "activations": activation_quantization(model)}
    recorded = manifest.setdefault("quantized", {}).get(target, {})
    if {k: v for k, v in recorded.items() if k not in FILE_KEYS} != {k: v for k, v in record.items() if k not in FILE_KEYS}:
        manifest["quantized"][target] = record
    # written to the user's calib dir only when it says something new against the one read
    write_manifest(manifest_path, manifest, readable_manifest(manifest_path))
    return out


@contextlib.contextmanager
def _naming(manifest_path: Path) -> Iterator[None]:
    """An accuracy the manifest's ranges could not reach names the manifest: every rerun reuses it."""
    try:
        yield
    except AccuracyDropError as exc:
        raise AccuracyDropError(f"{exc}; its ranges are those of calibration manifest "
                                f"{readable_manifest(manifest_path)}, which every "
                                "rerun reuses: if it was edited, delete it to calibrate again", exc.figures) from exc


def _write_int8(onnx_path: Path, out: Path, manifest: Mapping[str, Any], method: str, target: str,
                exclude: Sequence[str], calibration: Mapping[str, Any], tuned: Mapping[str, Any] | None) -> Any:
    """quantize_static with the manifest's ranges (those `tuned` has replaced) into `out` (the Convs
    `exclude` float) from the FP32 model with the tuned bias shifts; rtk metadata; returns the written model."""
    quantization = quantization_module()
    onnx = require("onnx")
    flavour = FLAVOURS[target]
    with tempfile.TemporaryDirectory(prefix="rtk-quantize-") as work:
        cache, source = Path(work) / "ranges.json", onnx_path
        ranges = {**manifest["ranges"], **(tuned["ranges"] if tuned else {})}
        quantization.save_tensors_data(tensors_data(quantization, ranges, method), cache)
        if tuned:  # the biases shifted before quantizing: the CPU flavour's become INT32
            fp32 = load_onnx(onnx_path)
            add_bias_shifts(fp32, tuned["bias_shifts"])
            source = Path(work) / "tuned.onnx"
            onnx.save(fp32, source)
        with quiet():
            quantization.quantize_static(
                source, out, None, quant_format=quantization.QuantFormat.QDQ,
                op_types_to_quantize=list(flavour.op_types), per_channel=True, reduce_range=False,
                activation_type=getattr(quantization.QuantType, flavour.activation_type),
                weight_type=quantization.QuantType.QInt8,
                calibrate_method=getattr(quantization.CalibrationMethod, METHODS[method].calibration_method),
                extra_options=dict(flavour.extra_options), calibration_cache_path=cache,
                nodes_to_exclude=list(exclude))
    model = onnx.load(out)
    if flavour.quantized_for_convs_only:
        float_readers(model)
    set_rtk_metadata(onnx, model, onnx_path, precision="int8", int8_target=target,
                      calibration={**calibration, "float_convs": sorted(exclude)})
    onnx.save(model, out)
    return model


def convert_fp16(onnx_path: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 data_dir: str | os.PathLike[str] | None = None, log: Log = info, verify: bool = True,
                 max_drop: float | None = None) -> Path:
    """An FP16 copy of the FP32 `onnx_path` with FP32 inputs and outputs (Casts at both ends),
    for strongly typed FP16 TensorRT engines; validated on the test set like the INT8 models."""
    float16 = require("onnxruntime.transformers.float16")
    onnx = require("onnx")
    if max_drop is not None:
        check_budget(max_drop, "max_drop", gain_ok=True)
    onnx_path, out = Path(onnx_path), check_output(out)
    check_output(validation_path(out))
    fp32_metadata(onnx_path)
    log(f"converting {onnx_path} to FP16 (inputs and outputs stay FP32)")
    model = float16.convert_float_to_float16(load_onnx(onnx_path), keep_io_types=True)
    set_rtk_metadata(onnx, model, onnx_path, precision="fp16")
    with atomic_path(out) as tmp:
        onnx.save(model, tmp)
        validate_into(tmp, out, onnx_path, "fp16", data_dir, verify, max_drop, log)
    return out

