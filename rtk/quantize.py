"""INT8 and FP16 ONNX models from the FP32 one, each checked on the real test set before it is written.

    model.onnx ─ calibrate: onnxruntime's calibrator runs N CIFAR-10 *training* images through it
      │          -> calib/resnet20-<checkpoint sha256[:12]>-<method>-n1024-s0.json
      │             (which images, data checksum, method, per-tensor ranges, the scales written)
      ├─ quantize_int8(target="tensorrt") -> model.int8.tensorrt.onnx   + model.int8.tensorrt.onnx.json
      ├─ quantize_int8(target="cpu")      -> model.int8.cpu.onnx        + model.int8.cpu.onnx.json
      └─ convert_fp16                     -> model.fp16.onnx            + model.fp16.onnx.json

One calibration, two QDQ flavours (REFERENCE.md section 3). TensorRT wants symmetric INT8 (zero
point 0) on the inputs of Conv and on the shortcut input of each residual Add; onnxruntime and
OpenVINO on x86 are fastest with unsigned activations and signed weights (U8S8). Both come from
onnxruntime.quantization.quantize_static fed with the same per-tensor ranges, so the calibration
manifest serves both and a second target (or a rerun) does not calibrate again.

Why rtk runs onnxruntime's calibrator itself instead of letting quantize_static do it:
quantize_static hands the calibrator only the CalibTensorRangeSymmetric / CalibMovingAverage /
CalibPercentile / ... extra options, never the histogram size. Entropy then runs with its defaults
num_bins = num_quantized_bins = 128, and its KL search (thresholds from num_quantized_bins / 2 to
num_bins / 2 bins around zero) has exactly one candidate: the whole histogram, max(|min|, |max|).
With symmetric activations that is MinMax's scale to the last bit, which is why a probe found MinMax
and Entropy identical. `calibrate` passes 2048 histogram bins (TensorRT's own entropy calibrator used
2048 bins and 128 quantized bins) and hands the ranges to quantize_static through its calibration
cache (onnxruntime >= 1.27).

Every written model is validated with onnxruntime on the CPU against the FP32 model on the 10,000
test images (accuracy, the difference in points, top-1 agreement). The figures are printed and stored
beside the model as `<model>.json` (format "rtk.validation/1"); a model that loses more than
MAX_ACCURACY_DROP points is not written. The TensorRT flavour runs on onnxruntime too (same QDQ
arithmetic, slower kernels), so its accuracy is known before any GPU sees it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtk import data
from rtk.errors import RtkError, require
from rtk.fileio import atomic_path, sha256_file, write_text_atomic
from rtk.log import Log, info
from rtk.names import CALIBRATION_METHODS, INT8_TARGETS, default_calib_dir
from rtk.onnx_meta import decode_metadata, encode_metadata, load_onnx, missing_fields
from rtk.preprocess import normalize_uint8_nhwc
from rtk.runtime.base import INPUT_NAME, OUTPUT_NAME

MIN_ONNXRUNTIME = "1.27"  # quantize_static(calibration_cache_path=...) first shipped in 1.27.0
MANIFEST_FORMAT = "rtk.calibration/1"
VALIDATION_FORMAT = "rtk.validation/1"
# Points of test accuracy a written model may lose against the FP32 model before it is refused.
# The targets for a fully trained ResNet-20 are far tighter (0.1 INT8, 0.05 FP16; docs/quantization.md).
MAX_ACCURACY_DROP = {"int8": 1.0, "fp16": 0.2}
EVAL_BATCH = 1000  # test images per onnxruntime call during validation
CALIB_BATCH = 64  # images per calibrator session run
# The histogram calibrators hold the activations of every image of a chunk before they bin them
# (ResNet-20: ~1.9 MB of float32 per image): chunks of 2560 / depth images keep that near 250 MB
# for any depth. MinMax reduces inside the graph and does not care.
CALIB_IMAGES_PER_DEPTH = 2560
# The training/validation split the calibration images are drawn from: rtk train's default
# (rtk.data.split_indices), so no calibration image is a validation (or test) image.
SPLIT = {"seed": 0, "val_size": 5000}


@dataclass(frozen=True)
class Method:
    """One calibration method: onnxruntime's CalibrationMethod member and its calibrator options."""

    calibration_method: str
    options: Mapping[str, Any]


METHODS: dict[str, Method] = {
    # |x| at the 99.999th percentile of a 2048-bin histogram of |x| (clipped to the observed range).
    "percentile": Method("Percentile", {"num_bins": 2048, "percentile": 99.999, "symmetric": True}),
    # The range whose 128-level quantization keeps the histogram's KL divergence smallest (TensorRT's
    # legacy entropy calibrator: 2048 bins, 128 levels). On ReLU outputs, whose histograms are a spike
    # at 0 and a long tail, it clips hard (a trained ResNet-20 lost 2.2 points, docs/quantization.md);
    # 256 levels clipped harder still in a probe.
    "entropy": Method("Entropy", {"num_bins": 2048, "num_quantized_bins": 128}),
    # The observed minimum and maximum of each tensor over all calibration images.
    "minmax": Method("MinMax", {}),
}
assert tuple(METHODS) == CALIBRATION_METHODS


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
    # also puts on the conv-branch input is cut out afterwards (_qdq_on_shortcuts_only). Biases stay
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


class AccuracyDropError(RtkError):
    """A model lost more test accuracy against FP32 than allowed, so it was not written; `figures`
    holds its validation figures."""

    def __init__(self, message: str, figures: dict[str, Any]):
        super().__init__(message)
        self.figures = figures


def validation_path(model_path: str | os.PathLike[str]) -> Path:
    """Where the validation figures of a written model live: `<model>.json`."""
    return Path(f"{os.fspath(model_path)}.json")


# ---------------------------------------------------------------------------------------------
# The stages


def quantize_int8(onnx_path: str | os.PathLike[str], out: str | os.PathLike[str], *, target: str,
                  method: str = "percentile", data_dir: str | os.PathLike[str] | None = None,
                  log: Log = info, num_images: int = 1024, seed: int = 0,
                  calib_dir: str | os.PathLike[str] | None = None, verify: bool = True,
                  max_drop: float | None = None) -> Path:
    """The INT8 QDQ model of `target` ("tensorrt" | "cpu") from the FP32 `onnx_path`, written to `out`.

    Calibrates with `method` on `num_images` class-balanced training images chosen by `seed` (or
    reuses the manifest under `calib_dir` for the same model, method, N and seed), quantizes, and
    with `verify` validates on the test set (refusing a drop over `max_drop` points).
    """
    if target not in FLAVOURS:
        raise RtkError(f"unknown INT8 target {target!r}; choose one of {', '.join(FLAVOURS)}")
    if method not in METHODS:
        raise RtkError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    quantization = _quantization_module()
    onnx = require("onnx")
    onnx_path, out = Path(onnx_path), Path(out)
    meta = _fp32_metadata(onnx_path)
    cifar = data.load_cifar10(data_dir)
    manifest_path = calibration_manifest_path(calib_dir, meta, method, num_images, seed, onnx_path)
    manifest = _calibration(onnx_path, meta, cifar, manifest_path, method, num_images, seed, log)
    flavour = FLAVOURS[target]

    log(f"quantizing {onnx_path} for {target} ({flavour.activation_type} activations, QInt8 weights "
        f"per channel, QDQ on {', '.join(flavour.op_types)})")
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory(prefix="rtk-quantize-") as work:
        cache = Path(work) / "ranges.json"
        quantization.save_tensors_data(_tensors_data(quantization, manifest["ranges"], method), cache)
        with _quiet():
            quantization.quantize_static(
                onnx_path, tmp, None, quant_format=quantization.QuantFormat.QDQ,
                op_types_to_quantize=list(flavour.op_types), per_channel=True, reduce_range=False,
                activation_type=getattr(quantization.QuantType, flavour.activation_type),
                weight_type=quantization.QuantType.QInt8,
                calibrate_method=getattr(quantization.CalibrationMethod, METHODS[method].calibration_method),
                extra_options=dict(flavour.extra_options), calibration_cache_path=cache)
        model = onnx.load(tmp)
        if flavour.qdq_on_shortcut_only:
            cut = _qdq_on_shortcuts_only(model)
            log(f"moved Q/DQ off the conv branch of {cut} residual Adds (shortcut input only)")
        calibration = {"manifest": manifest_path.as_posix(), "method": method,
                       "num_images": num_images, "seed": seed}
        _set_rtk_metadata(onnx, model, onnx_path, precision="int8", int8_target=target, calibration=calibration)
        onnx.save(model, tmp)
        _validate_into(tmp, out, onnx_path, "int8", data_dir, verify, max_drop, log)

    manifest.setdefault("quantized", {})[target] = {
        "model": out.name, "sha256": sha256_file(out), "activations": activation_quantization(model)}
    _write_manifest(manifest_path, manifest)
    return out


def convert_fp16(onnx_path: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 data_dir: str | os.PathLike[str] | None = None, log: Log = info, verify: bool = True,
                 max_drop: float | None = None) -> Path:
    """An FP16 copy of the FP32 `onnx_path` with FP32 inputs and outputs (Casts at both ends),
    for strongly typed FP16 TensorRT engines; validated on the test set like the INT8 models."""
    float16 = require("onnxruntime.transformers.float16")
    onnx = require("onnx")
    onnx_path, out = Path(onnx_path), Path(out)
    _fp32_metadata(onnx_path)
    log(f"converting {onnx_path} to FP16 (inputs and outputs stay FP32)")
    model = float16.convert_float_to_float16(load_onnx(onnx_path), keep_io_types=True)
    _set_rtk_metadata(onnx, model, onnx_path, precision="fp16")
    with atomic_path(out) as tmp:
        onnx.save(model, tmp)
        _validate_into(tmp, out, onnx_path, "fp16", data_dir, verify, max_drop, log)
    return out


# ---------------------------------------------------------------------------------------------
# Calibration


class _CalibrationBatches:
    """Feeds normalized images to onnxruntime's calibrator, CALIB_BATCH at a time. (onnxruntime's
    CalibrationDataReader accepts any object with get_next, through its __subclasshook__.)"""

    def __init__(self, images: np.ndarray):  # float32 [N, 3, 32, 32]
        self._batches = iter(range(0, len(images), CALIB_BATCH))
        self._images = images

    def get_next(self) -> dict[str, np.ndarray] | None:
        start = next(self._batches, None)
        return None if start is None else {INPUT_NAME: self._images[start:start + CALIB_BATCH]}


def calibrate(onnx_path: str | os.PathLike[str], images: np.ndarray, method: str) -> dict[str, list[float]]:
    """{tensor: [low, high]} for the inputs and outputs of every Conv, Add and Relu of the FP32
    model, from onnxruntime's calibrator with `method` over `images` (float32 [N, 3, 32, 32],
    normalized). The histogram methods see the images in chunks and merge their histograms."""
    quantization = _quantization_module()
    spec = METHODS[method]
    depth = _fp32_metadata(Path(onnx_path))["depth"]
    chunk = max(CALIB_BATCH, CALIB_IMAGES_PER_DEPTH // depth)
    with tempfile.TemporaryDirectory(prefix="rtk-calibrate-") as work, _quiet():
        calibrator = quantization.create_calibrator(
            Path(onnx_path), list(CALIBRATED_OP_TYPES),
            augmented_model_path=str(Path(work) / "augmented.onnx"),
            calibrate_method=getattr(quantization.CalibrationMethod, spec.calibration_method),
            extra_options=dict(spec.options))
        for start in range(0, len(images), chunk):
            calibrator.collect_data(_CalibrationBatches(images[start:start + chunk]))
        tensors = calibrator.compute_data()
    return {name: [float(np.asarray(value).item()) for value in tensors[name].range_value]
            for name in sorted(tensors)}


def calibration_manifest_path(calib_dir: str | os.PathLike[str] | None, meta: Mapping[str, Any],
                              method: str, num_images: int, seed: int,
                              onnx_path: str | os.PathLike[str]) -> Path:
    """calib/resnet<depth>-<checkpoint sha256[:12]>-<method>-n<N>-s<seed>.json (the ONNX file's
    sha256 stands in for a model without a recorded checkpoint)."""
    model_id = meta.get("checkpoint_sha256") or sha256_file(onnx_path)
    root = Path(calib_dir) if calib_dir is not None else default_calib_dir()
    return root / f"resnet{meta['depth']}-{model_id[:12]}-{method}-n{num_images}-s{seed}.json"


def _calibration(onnx_path: Path, meta: Mapping[str, Any], cifar: data.Cifar10, path: Path,
                 method: str, num_images: int, seed: int, log: Log) -> dict[str, Any]:
    """The manifest at `path` with ranges for this exact FP32 file: reused when it has them,
    calibrated on its recorded images when the ONNX changed, created when there is none."""
    onnx_sha = sha256_file(onnx_path)
    checksum = cifar.checksum()
    if path.is_file():
        manifest = _read_manifest(path)
        expected = {"method": method, "num_images": num_images, "seed": seed}
        found = {key: manifest.get(key) for key in expected}
        if found != expected:
            raise RtkError(f"calibration manifest {path} records {found}, not {expected}; delete it")
        if manifest["data"]["checksum"] != checksum:
            raise RtkError(f"calibration manifest {path} was made from other CIFAR-10 data (checksum "
                           f"{manifest['data']['checksum'][:12]}, this copy {checksum[:12]}); "
                           f"delete it to recalibrate")
        indices = np.asarray(manifest["indices"], dtype=np.int64)
        if manifest["model"].get("onnx_sha256") == onnx_sha and manifest.get("ranges"):
            log(f"reusing the calibration in {path} ({method}, {len(indices)} images, seed {seed})")
            return manifest
        log(f"{onnx_path} differs from the model calibrated in {path}: recalibrating on its "
            f"{len(indices)} images")
    else:
        train_idx, _ = data.split_indices(len(cifar.train_labels), SPLIT["val_size"], SPLIT["seed"])
        indices = data.calibration_indices(cifar.train_labels, train_idx, num_images, seed)
        manifest = {
            "format": MANIFEST_FORMAT,
            "data": {"checksum": checksum, "split": SPLIT, "subset": "training split"},
            "method": method, "num_images": num_images, "seed": seed,
            "class_counts": np.bincount(cifar.train_labels[indices], minlength=data.NUM_CLASSES).tolist(),
            "indices": indices.tolist(),
        }
    images = normalize_uint8_nhwc(cifar.train_images[indices], meta["normalization"])
    log(f"calibrating ({method}) on {len(indices)} CIFAR-10 training images with onnxruntime")
    manifest["model"] = {"depth": meta["depth"], "checkpoint_sha256": meta.get("checkpoint_sha256"),
                         "onnx": onnx_path.name, "onnx_sha256": onnx_sha}
    manifest["calibrator"] = {"onnxruntime": _onnxruntime_version(),
                              "method": METHODS[method].calibration_method,
                              "options": dict(METHODS[method].options),
                              "op_types": list(CALIBRATED_OP_TYPES)}
    manifest["ranges"] = calibrate(onnx_path, images, method)
    manifest.pop("quantized", None)  # scales of models quantized from other ranges
    _write_manifest(path, manifest)
    log(f"wrote {path}")
    return manifest



def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RtkError(f"cannot read calibration manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise RtkError(f"{path} is not an rtk calibration manifest (format {MANIFEST_FORMAT})")
    return manifest


# The order a reviewer reads a manifest in; the long list of image indices goes last.
MANIFEST_KEYS = ("format", "model", "data", "method", "num_images", "seed", "calibrator", "class_counts",
                 "ranges", "quantized", "indices")


def _write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    ordered = {key: manifest[key] for key in MANIFEST_KEYS if key in manifest}
    write_text_atomic(path, json.dumps(ordered, indent=1) + "\n")


def _tensors_data(quantization: Any, ranges: Mapping[str, list[float]], method: str) -> Any:
    """The manifest's ranges as onnxruntime's TensorsData, for quantize_static's calibration cache."""
    method_member = getattr(quantization.CalibrationMethod, METHODS[method].calibration_method)
    return quantization.TensorsData(method_member, {
        name: quantization.TensorData(lowest=np.array(low, np.float32), highest=np.array(high, np.float32))
        for name, (low, high) in ranges.items()})


# ---------------------------------------------------------------------------------------------
# Graph edits and read-back


def _qdq_on_shortcuts_only(model: Any) -> int:
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


def activation_quantization(model: Any) -> dict[str, dict[str, float]]:
    """{tensor: {"scale": s, "zero_point": z}} of every QuantizeLinear in the model: the
    activations (weights are stored quantized and only dequantized)."""
    from onnx import numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return {node.input[0]: {"scale": float(constants[node.input[1]].item()),
                            "zero_point": int(constants[node.input[2]].item())}
            for node in model.graph.node if node.op_type == "QuantizeLinear"}


# ---------------------------------------------------------------------------------------------
# Metadata and validation


def _fp32_metadata(onnx_path: Path) -> dict[str, Any]:
    model = load_onnx(onnx_path, load_weights=False)
    meta = decode_metadata({prop.key: prop.value for prop in model.metadata_props})
    missing = missing_fields(meta)
    if missing:
        raise RtkError(f"{onnx_path} has no rtk metadata ({', '.join(missing)} missing): "
                       f"export it with `rtk export`")
    if meta["precision"] != "fp32":
        raise RtkError(f"{onnx_path} is a {meta['precision']} model; quantize starts from the FP32 "
                       f"model.onnx")
    return meta


def _set_rtk_metadata(onnx: Any, model: Any, source: Path, **fields: Any) -> None:
    """The metadata of the FP32 model at `source`, every key as it is, with `fields` set over it."""
    props = {prop.key: prop.value for prop in load_onnx(source, load_weights=False).metadata_props}
    onnx.helper.set_model_props(model, {**props, **encode_metadata(fields)})


def _validate_into(model_path: Path, out: Path, reference: Path, precision: str,
                   data_dir: str | os.PathLike[str] | None, verify: bool, max_drop: float | None,
                   log: Log) -> None:
    """Validate the model about to become `out`; write `<out>.json`, or raise if it lost too much."""
    record = validation_path(out)
    if not verify:
        record.unlink(missing_ok=True)  # figures of an earlier model at `out` would mislead
        return
    images, labels = data.load_test_set(data_dir)
    report = validate(model_path, reference, images, labels)
    report["model"], report["reference"] = out.name, reference.name
    limit = MAX_ACCURACY_DROP[precision] if max_drop is None else max_drop
    log(f"{out.name}: test accuracy {report['accuracy_pct']:.2f}% (FP32 "
        f"{report['reference_accuracy_pct']:.2f}%, {report['delta_pct']:+.2f} points), top-1 "
        f"agreement {report['top1_agreement_pct']:.2f}% on {report['test_images']} images")
    report["max_drop_pct"] = limit
    if report["delta_pct"] < -limit:
        raise AccuracyDropError(f"{out.name} loses {-report['delta_pct']:.2f} points of test accuracy "
                                f"against FP32 (more than {limit}); not written", report)
    write_text_atomic(record, json.dumps(report, indent=2) + "\n")


def validate(model_path: str | os.PathLike[str], reference_path: str | os.PathLike[str],
             images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Accuracy of a model and of its FP32 reference on `images` (uint8 [N, 32, 32, 3]), with
    onnxruntime on the CPU, preprocessed as the reference's metadata says."""
    normalization = _fp32_metadata(Path(reference_path))["normalization"]
    predictions = [_predict(path, images, normalization) for path in (model_path, reference_path)]
    correct = [prediction == labels for prediction in predictions]
    accuracy, reference_accuracy = (100.0 * float(np.mean(c)) for c in correct)
    return {
        "format": VALIDATION_FORMAT,
        "test_images": len(labels),
        "accuracy_pct": round(accuracy, 4),
        "reference_accuracy_pct": round(reference_accuracy, 4),
        "delta_pct": round(accuracy - reference_accuracy, 4),
        "top1_agreement_pct": round(100.0 * float(np.mean(predictions[0] == predictions[1])), 4),
        "runtime": f"onnxruntime {_onnxruntime_version()} CPUExecutionProvider",
    }


def _predict(model_path: str | os.PathLike[str], images: np.ndarray, normalization: Any) -> np.ndarray:
    """Top-1 class per image, EVAL_BATCH images per onnxruntime call."""
    ort = require("onnxruntime")
    session = ort.InferenceSession(os.fspath(model_path), providers=["CPUExecutionProvider"])
    return np.concatenate([
        session.run([OUTPUT_NAME], {INPUT_NAME: normalize_uint8_nhwc(images[i:i + EVAL_BATCH], normalization)})
        [0].argmax(axis=1) for i in range(0, len(images), EVAL_BATCH)])


def _quantization_module() -> Any:
    require("onnxruntime", min_version=MIN_ONNXRUNTIME)
    return require("onnxruntime.quantization")


def _onnxruntime_version() -> str:
    return str(require("onnxruntime").__version__)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence onnxruntime.quantization while it runs: its calibrators print progress to stdout
    (where rtk prints results) and it logs a "consider pre-processing" warning on every call;
    rtk logs its own one-line messages instead. Errors still raise."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)
