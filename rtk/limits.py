"""Bounds on the sizes a user can ask for: threads, batch sizes, image counts (the depth's is
rtk.names.MAX_DEPTH). Defined here once; the CLI's options, rtk.runtime.load and the stages check them
before any work starts, so an absurd request is one clear error, not minutes of a crawling machine,
a MemoryError or a segfault. Only the standard library: the CLI imports this at start-up.
"""

from __future__ import annotations

import math
import os

from rtk.errors import RtkError

# Images in one batch. A runtime keeps a few of ResNet's widest maps alive at once (16 x 32 x 32 float32,
# 64 KiB an image): ~0.3 MB an image, so 16,384 images take ~5 GB. The defaults are 256 (CPU) and 4096 (CUDA);
# `rtk bench --batch-sizes 10000000` asked numpy for 28.6 GiB of input alone.
MAX_BATCH = 16_384
TRAIN_IMAGES = 50_000  # CIFAR-10's training set: the most any training split or calibration sample can hold
TEST_IMAGES = 10_000  # its test set
VALIDATION_IMAGES = 5_000  # the validation split rtk train holds out by default (rtk.data.split_indices)


def max_threads() -> int:
    """The logical CPUs of this machine: more threads only wait for each other (`--threads 100000`
    segfaulted OpenVINO and had onnxruntime start thousands of spinning threads)."""
    return os.cpu_count() or 1


def check_count(what: str, value: object, high: int, why: str) -> int:
    """`value` when it is an int in 1..`high`; else RtkError naming `what` and `why` the bound is there."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise RtkError(f"{what} must be an integer from 1 to {high:,} ({why}), got {value!r}")
    return value


def check_threads(threads: int | None, what: str = "threads") -> int | None:
    """None (the backend's own choice) or a thread count within max_threads()."""
    if threads is None:
        return None
    return check_count(what, threads, max_threads(), f"the {max_threads()} logical CPUs of this machine")


def check_batch(size: int, what: str = "a batch size") -> int:
    return check_count(what, size, MAX_BATCH, "rtk's bound on images per batch")


def check_budget(points: float, what: str = "--max-drop", *, gain_ok: bool = False) -> float:
    """An accuracy budget in points: finite (NaN is no JSON, and compares false with every drop) and
    at least 0, or with `gain_ok` any finite number (a negative budget asks for a gain: a test aid)."""
    if isinstance(points, bool) or not isinstance(points, (int, float)) or not math.isfinite(points) \
            or (points < 0 and not gain_ok):
        raise RtkError(f"{what} must be a finite number of points{'' if gain_ok else ' >= 0'}, got {points!r}")
    return float(points)
