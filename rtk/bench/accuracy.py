"""Accuracy of every row on the CIFAR-10 test set through rtk.runtime.Model.predict (the path apps
use), with agreement against the baseline's predictions (and, for TensorRT INT8, against onnxruntime
running the same QDQ file)."""

from __future__ import annotations

import numpy as np

from rtk.bench.results import Accuracy, Row
from rtk.bench.rows import BenchConfig
from rtk.log import Log
from rtk.pipeline import RunPaths
from rtk.runtime import Model, open_model
from rtk.runtime.onnxruntime_runner import OnnxRuntimeRunner
from rtk.stats import paired

ACCURACY_BATCH = 256  # images per predict() call when measuring accuracy (a default timed batch size)


def top1_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Percent of predictions equal to labels."""
    return 100.0 * float(np.mean(predictions == labels))


def predictions(model: Model, images: np.ndarray) -> np.ndarray:
    """Top-1 class of every image through Model.predict, ACCURACY_BATCH images per call.

    The last batch is padded to ACCURACY_BATCH so every call has one shape: CUDA graphs and
    torch.compile then reuse what the timing at batch 256 captured or compiled.
    """
    return model.predict(images, batch_sizes=(ACCURACY_BATCH,), pad=True).classes


def measure_accuracy(rows: list[Row], models: list[Model], paths: RunPaths, config: BenchConfig,
                     threads: int, log: Log) -> None:
    from rtk import data

    images, labels = data.load_test_set(config.data_dir)
    if config.limit_images:
        images, labels = images[:config.limit_images], labels[:config.limit_images]
    base_pred = None
    for row, model in zip(rows, models):
        log(f"accuracy: {row.name} on {len(images)} test images")
        pred = predictions(model, images)
        if base_pred is None:
            base_pred = pred
        row.accuracy = Accuracy(top1=top1_accuracy(pred, labels), images=len(images),
                                delta_vs_baseline=top1_accuracy(pred, labels) - top1_accuracy(base_pred, labels),
                                agreement_vs_baseline=top1_accuracy(pred, base_pred),
                                evidence_vs_baseline=paired(pred == labels, base_pred == labels).as_dict())
        if row.device == "cuda" and row.backend in ("tensorrt", "tensorrt-rtx", "onnxruntime") and row.precision == "int8":
            qdq = paths.int8_onnx("tensorrt")
            with open_model(OnnxRuntimeRunner(str(qdq), threads=threads)) as reference:
                ref_pred = predictions(reference, images)
            row.accuracy.reference = f"onnxruntime on {qdq.name}"
            row.accuracy.delta_vs_reference = top1_accuracy(pred, labels) - top1_accuracy(ref_pred, labels)
            row.accuracy.agreement_vs_reference = top1_accuracy(pred, ref_pred)
            row.accuracy.evidence_vs_reference = paired(pred == labels, ref_pred == labels).as_dict()
