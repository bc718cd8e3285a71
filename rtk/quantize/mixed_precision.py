"""Accuracy-budgeted mixed precision: the fewest, cheapest convolutions left float so that the INT8
model loses at most `max_drop` points against FP32 on the validation split.

    1. the full INT8 model on the validation split (rtk train's held-out 5,000 training images): within
       the budget, nothing is left out;
    2. sensitivity of each Conv: the INT8 model with that one Conv float, and how much closer its
       softmax outputs come to FP32's (mean KL divergence, FP32 || INT8, on `sensitivity_images`
       validation images; a continuous measure that ranks layers where a few dozen flipped images
       on 1,000 could not);
    3. Convs leave INT8 in order of that gain (ties: the fewer multiply-accumulates first), each step
       quantized and measured on the whole validation split, until the drop is within the budget.

The test set is never looked at here: quantize_int8 validates the chosen model on it afterwards. A
float Conv has no Q/DQ on its inputs (TensorRT flavour: the engine runs it in FP32/TF32, still strongly
typed) or runs float between Q/DQ'd neighbours (CPU flavour).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtk import data
from rtk.log import Log, info
from rtk.quantize.calibration import SPLIT
from rtk.quantize.metadata import fp32_metadata
from rtk.quantize.qdq import conv_macs, int8_mac_share
from rtk.quantize.validation import AccuracyDropError, logits
from rtk.stats import kl_divergence, paired

SELECTION_FORMAT = "rtk.mixed_precision/1"


def choose_float_convs(onnx_path: str | os.PathLike[str], quantize_to: Callable[[Path, list[str]], Any], *,
                       max_drop: float, data_dir: str | os.PathLike[str] | None = None,
                       sensitivity_images: int = 1000, keep_float: Sequence[str] = (),
                       log: Log = info) -> dict[str, Any]:
    """The Conv nodes to leave float, and the evidence (format rtk.mixed_precision/1).

    `quantize_to(out, exclude)` writes the INT8 model of one flavour with the Convs `exclude` float
    (rtk.quantize.quantize_int8 with fixed calibration, no test-set validation). The Convs
    `keep_float` are float in every candidate (the flavour's and the user's) and in the result.
    """
    onnx_path = Path(onnx_path)
    fp32_metadata(onnx_path)
    macs = conv_macs(onnx_path)
    cifar = data.load_cifar10(data_dir)
    _, val_idx = data.split_indices(len(cifar.train_labels), SPLIT["val_size"], SPLIT["seed"])
    images, labels = cifar.train_images[val_idx], cifar.train_labels[val_idx]
    reference = logits(onnx_path, images)
    reference_correct = reference.argmax(axis=1) == labels
    probe = slice(0, min(sensitivity_images, len(images)))

    with tempfile.TemporaryDirectory(prefix="rtk-mixed-") as work:
        def measure(exclude: list[str], subset: slice = slice(None)) -> np.ndarray:
            path = Path(work) / "candidate.onnx"
            quantize_to(path, [*keep_float, *exclude])
            return logits(path, images[subset])

        def figures(exclude: list[str], out: np.ndarray) -> dict[str, Any]:
            evidence = paired(out.argmax(axis=1) == labels, reference_correct)
            floats = [*keep_float, *exclude]
            return {"float_convs": floats, "int8_mac_share": int8_mac_share(onnx_path, floats),
                    "validation": evidence.as_dict(),
                    "agreement_pct": 100.0 * float(np.mean(out.argmax(axis=1) == reference.argmax(axis=1)))}

        steps = [figures([], measure([]))]
        candidates = [name for name in macs if name not in set(keep_float)]
        log(f"mixed precision: {len(candidates)} of {len(macs)} Convs INT8: {_line(steps[-1])} on the validation split")
        sensitivity: dict[str, float] = {}
        if -steps[-1]["validation"]["delta_pct"] > max_drop:
            full_kl = kl_divergence(reference[probe], measure([], probe))
            for name in candidates:
                sensitivity[name] = full_kl - kl_divergence(reference[probe], measure([name], probe))
                log(f"mixed precision: {name} float: KL to FP32 {full_kl:.5f} -> {full_kl - sensitivity[name]:.5f}")
            order = sorted(candidates, key=lambda name: (-sensitivity[name], macs[name]))
            exclude: list[str] = []
            for name in order:
                exclude = [*exclude, name]
                steps.append(figures(exclude, measure(exclude)))
                log(f"mixed precision: {', '.join(exclude)} float too: {_line(steps[-1])}")
                if -steps[-1]["validation"]["delta_pct"] <= max_drop:
                    break
            else:
                raise AccuracyDropError(f"no mix of INT8 and float Convs loses at most {max_drop} points on the "
                                        f"validation split")
    chosen = steps[-1]
    return {"format": SELECTION_FORMAT, "max_drop_pct": max_drop, "split": dict(SPLIT),
            "validation_images": len(images), "sensitivity_images": probe.stop,
            "sensitivity_kl_gain": sensitivity, "steps": steps, "float_convs": chosen["float_convs"],
            "int8_mac_share": chosen["int8_mac_share"]}


def _line(step: dict[str, Any]) -> str:
    from rtk.stats import Paired

    return (f"{Paired(**step['validation']).summary()}, agreement {step['agreement_pct']:.2f}%, "
            f"{100 * step['int8_mac_share']:.1f}% of conv MACs in INT8")
