"""Numerical validation of an export: onnxruntime (CPU) against the torch model on the same inputs,
real test images when CIFAR-10 is available, else seeded random images, in batches of 1, 7 and 256
(or the fixed batch); every problem collected, none raised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rtk.errors import RtkError
from rtk.limits import TEST_IMAGES, check_count
from rtk.log import Log
from rtk.onnx_meta import load_onnx
from rtk.preprocess import normalize_uint8_nhwc
from rtk.runtime import open_model
from rtk.runtime.base import OUTPUT_NAME
from rtk.runtime.model import batch_slices
from rtk.runtime.onnxruntime_runner import OnnxRuntimeRunner

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


def _logit_scale(logits: np.ndarray) -> np.ndarray:
    """[N, 10] -> [N, 1]: each image's largest |logit|."""
    return np.abs(logits).max(axis=1, keepdims=True)


def beyond_tolerance(got: np.ndarray, expected: np.ndarray, atol: float = ATOL, rtol: float = RTOL) -> np.ndarray:
    """Boolean [N, 10]: logits of `got` off `expected` by more than max(atol, rtol * image logit scale),
    or not finite in either (a comparison with NaN is never greater than a tolerance: it would pass)."""
    within = np.abs(got - expected) <= np.maximum(atol, rtol * _logit_scale(expected))
    return ~within


def _torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[s])).numpy()
                               for s in batch_slices(len(x), SWEEP_BATCHES[-1:])])


def validate_onnx(onnx_path: Path, model: torch.nn.Module, x: np.ndarray, *, source: str,
                  batch_size: int | None = None, atol: float = ATOL, rtol: float = RTOL) -> Validation:
    """Run `x` (float32 [N, 3, 32, 32]) through onnxruntime CPU (rtk.runtime.Model, the path apps
    use) and the torch model; compare logits.

    Every problem is collected (loading, output names, shapes per batch, tolerance, top-1), none
    raised.
    """
    nan = float("nan")
    sizes = (batch_size,) if batch_size else SWEEP_BATCHES
    ran = sorted({batch_size or len(x[part]) for part in batch_slices(len(x), sizes)})
    try:
        outputs = [o.name for o in load_onnx(onnx_path, load_weights=False).graph.output]
        if outputs != [OUTPUT_NAME]:
            return Validation(source, len(x), [], nan, nan, 0.0, atol, rtol,
                              [f"the file has outputs {outputs}, expected [{OUTPUT_NAME!r}]"])
        with open_model(OnnxRuntimeRunner(str(onnx_path), device="cpu")) as onnx_model:
            # a fixed batch pads its last chunk with copies of its images
            got = onnx_model.logits(x, sizes, pad=batch_size is not None)
    except RtkError as exc:  # cannot load, no rtk metadata, logits of the wrong shape
        return Validation(source, len(x), [], nan, nan, 0.0, atol, rtol, [str(exc)])
    expected = _torch_logits(model, x)  # both [N, 10]
    problems = []
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
    return Validation(source, len(x), ran, float(diff.max()), float(rel.max()),
                      float(agree.mean()), atol, rtol, problems)


def validation_inputs(data_dir: str | os.PathLike[str] | None, num_images: int, normalization: dict,
                      log: Log) -> tuple[np.ndarray, str]:
    """(float32 [N, 3, 32, 32], description): CIFAR-10 test images, else seeded random images.

    Only a missing default data set falls back to random images; a --data-dir / RTK_DATA_DIR that
    does not hold CIFAR-10 is an error.
    """
    from rtk import data

    check_count("--num-images", num_images, TEST_IMAGES, "the test set")
    test_set = data.test_set_if_present(data_dir)
    if test_set is not None:
        images = test_set[0][:num_images]
        source = f"{len(images)} CIFAR-10 test images"
    else:
        log("no CIFAR-10 test set found (see `rtk data download` or --data-dir): "
            "validating on random images instead")
        images = np.random.default_rng(0).integers(0, 256, (num_images, 32, 32, 3), dtype=np.uint8)
        source = f"{num_images} random images (no CIFAR-10 found)"
    return normalize_uint8_nhwc(images, normalization), source

