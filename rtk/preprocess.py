"""Normalization, defined once.

Training (as batched torch ops on the device), export metadata, the Python runtime and the C++ app
all take the constants from here (the runtime and C++ via the artifact metadata written from
`normalization_metadata()`). Only numpy is imported so the runtime can preprocess without torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rtk.errors import RtkError

# CIFAR-10 training-set statistics on the [0, 1] scale (REFERENCE.md section 2), per RGB channel.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
IMAGE_SHAPE = (3, 32, 32)  # C, H, W of one network input


def _channel_stats(name: str, values: Sequence[float], *, positive: bool) -> list[float]:
    """Three finite per-channel figures on the [0, 1] pixel scale (a std must be above 0)."""
    stats = [float(v) for v in values]
    if len(stats) != 3 or not all(math.isfinite(v) for v in stats):
        raise RtkError(f"{name} needs three finite numbers, one per RGB channel, got {list(values)}")
    if max(stats) > 1:
        raise RtkError(f"{name} {stats} is not on the [0, 1] pixel scale that rtk normalizes on (uint8 pixels "
                       f"are divided by 255 first): for statistics of 0..255 pixels pass them divided by 255, "
                       f"e.g. {[round(v / 255, 4) for v in stats]}")
    if min(stats) < 0 or (positive and min(stats) == 0):
        raise RtkError(f"{name} {stats} must be {'above 0' if positive else 'at least 0'} in every channel")
    return stats


def normalization_metadata(mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> dict[str, Any]:
    """What every artifact records so an app can preprocess exactly as training did.

    `mean` and `std` are per RGB channel on the [0, 1] scale; the defaults are the CIFAR-10 training
    statistics rtk trains with, other values describe weights trained elsewhere (rtk import).
    """
    return {
        "mean": _channel_stats("mean", mean, positive=False),
        "std": _channel_stats("std", std, positive=True),
        "scale": 1.0 / 255.0,  # uint8 pixels are divided by 255 before (x - mean) / std
        "value_range": [0, 255],
        "input_dtype": "uint8",
        "channel_order": "RGB",
        "layout": "NCHW",
        "source_layout": "NHWC",
    }


def normalization_from_metadata(meta: dict[str, Any] | str) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean, std, scale) as float32 arrays shaped [1, 3, 1, 1] from an artifact's metadata."""
    if isinstance(meta, str):
        meta = json.loads(meta)
    mean = np.asarray(meta["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(meta["std"], dtype=np.float32).reshape(1, 3, 1, 1)
    return mean, std, float(meta["scale"])


def normalize_uint8_nhwc(images: np.ndarray, meta: dict[str, Any] | None = None) -> np.ndarray:
    """uint8 [N, 32, 32, 3] RGB -> float32 [N, 3, 32, 32], normalized as in training."""
    mean, std, scale = normalization_from_metadata(meta or normalization_metadata())
    x = images.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(scale)
    return np.ascontiguousarray((x - mean) / std)
