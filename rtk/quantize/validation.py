"""Validation of a written model against its FP32 reference on the 10,000 test images: accuracy,
the difference in points with its paired evidence, top-1 agreement, the KL divergence and logit
MSE against FP32; stored beside the model as `<model>.json`
("rtk.validation/1", with the sha256 of the file validated, which the C++ Classifier checks), and a
model that loses more than MAX_ACCURACY_DROP points is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from rtk import data, stats
from rtk.errors import RtkError
from rtk.fileio import sha256_file, write_text_atomic
from rtk.log import Log
from rtk.quantize.calibration import onnxruntime_version
from rtk.quantize.metadata import fp32_metadata
from rtk.runtime import open_model
from rtk.runtime.onnxruntime_runner import OnnxRuntimeRunner

VALIDATION_FORMAT = "rtk.validation/1"
# Points of test accuracy a written model may lose against the FP32 model before it is refused.
# The targets for a fully trained ResNet-20 are far tighter (0.1 INT8, 0.05 FP16; docs/quantization.md).
MAX_ACCURACY_DROP = {"int8": 1.0, "fp16": 0.2}
EVAL_BATCH = 1000  # test images per onnxruntime call during validation


class AccuracyDropError(RtkError):
    """A model lost more accuracy against FP32 than allowed (on the test set, or on the validation
    split whatever Convs --max-drop left float), so it was not written; `figures` holds its test-set
    validation figures, where there are some."""

    def __init__(self, message: str, figures: dict[str, Any] | None = None):
        super().__init__(message)
        self.figures = figures


def validation_path(model_path: str | os.PathLike[str]) -> Path:
    """Where the validation figures of a written model live: `<model>.json`."""
    return Path(f"{os.fspath(model_path)}.json")


def validate_into(model_path: Path, out: Path, reference: Path, precision: str,
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
    report["sha256"] = sha256_file(model_path)  # the bytes validated; a changed file no longer matches
    limit = MAX_ACCURACY_DROP[precision] if max_drop is None else max_drop
    log(f"{out.name}: test accuracy {report['accuracy_pct']:.2f}% (FP32 "
        f"{report['reference_accuracy_pct']:.2f}%, {stats.Paired(**report['evidence']).summary()}), top-1 "
        f"agreement {report['top1_agreement_pct']:.2f}%, KL to FP32 {report['kl_to_reference']:.5f} on "
        f"{report['test_images']} images")
    report["max_drop_pct"] = limit
    if report["delta_pct"] < -limit:
        raise AccuracyDropError(f"{out.name} loses {-report['delta_pct']:.2f} points of test accuracy "
                                f"against FP32 (more than {limit}); not written", report)
    write_text_atomic(record, json.dumps(report, indent=2) + "\n")


def validate(model_path: str | os.PathLike[str], reference_path: str | os.PathLike[str],
             images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Accuracy of a model and of its FP32 reference on `images` (uint8 [N, 32, 32, 3]), with
    onnxruntime on the CPU, each preprocessed as its metadata says (the reference's, copied)."""
    fp32_metadata(Path(reference_path))
    outputs = [logits(path, images) for path in (model_path, reference_path)]  # float32 [N, 10] each
    predictions = [output.argmax(axis=1) for output in outputs]
    correct = [prediction == labels for prediction in predictions]
    accuracy, reference_accuracy = (100.0 * float(np.mean(c)) for c in correct)
    return {
        "format": VALIDATION_FORMAT,
        "test_images": len(labels),
        "accuracy_pct": round(accuracy, 4),
        "reference_accuracy_pct": round(reference_accuracy, 4),
        "delta_pct": round(accuracy - reference_accuracy, 4),
        "top1_agreement_pct": round(100.0 * float(np.mean(predictions[0] == predictions[1])), 4),
        # the images behind delta_pct: fixed / broken against FP32, 95% interval, exact McNemar p
        "evidence": stats.paired(correct[0], correct[1]).as_dict(),
        # How far the outputs are from FP32's over all images, not only the few near a decision
        # boundary that agreement and delta_pct count: two INT8 models of one network that differ
        # here differ in quantization error; two that differ only in agreement may not
        # (docs/quantization.md, the error budget).
        "kl_to_reference": round(stats.kl_divergence(outputs[1], outputs[0]), 6),
        "logit_mse": round(float(np.mean((outputs[0] - outputs[1]) ** 2)), 6),
        "runtime": f"onnxruntime {onnxruntime_version()} CPUExecutionProvider",
    }


def logits(model_path: str | os.PathLike[str], images: np.ndarray) -> np.ndarray:
    """float32 [N, 10] for uint8 images [N, 32, 32, 3] through rtk.runtime.Model (onnxruntime, CPU),
    EVAL_BATCH images per call."""
    with open_model(OnnxRuntimeRunner(os.fspath(model_path), device="cpu")) as model:
        return model.logits(images, batch_sizes=(EVAL_BATCH,))
