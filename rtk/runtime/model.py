"""Model: one runner plus the preprocessing and checks an app needs (numpy only, no torch).

    model = rtk.runtime.load("runs/resnet20/model.int8.cpu.onnx")
    pred = model.predict(images)          # uint8 [N, 32, 32, 3] RGB, as CIFAR-10 stores them
    pred.classes, pred.probs              # int64 [N], float32 [N, 10]
    [model.classes[i] for i in pred.classes]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rtk.errors import RtkError
from rtk.limits import check_batch
from rtk.preprocess import IMAGE_SHAPE, normalization_from_metadata, normalize_uint8_nhwc
from rtk.runtime.base import INPUT_NAME, OUTPUT_NAME, Runner

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

HWC_SHAPE = (IMAGE_SHAPE[1], IMAGE_SHAPE[2], IMAGE_SHAPE[0])  # (32, 32, 3): one uint8 image
# Normalized pixels lie in [(0 - mean) / std, (1 - mean) / std], about [-2.0, 2.1] for CIFAR-10;
# this much beyond that range means the caller did not normalize (0..255 floats reach 255).
RANGE_SLACK = 1.0


@dataclass(frozen=True)
class Prediction:
    classes: np.ndarray  # int64 [N]: index of the most probable class
    probs: np.ndarray  # float32 [N, num_classes]: softmax of the logits, rows sum to 1


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float32 [N, C], stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def normalized_range(normalization: dict[str, Any]) -> tuple[float, float]:
    """(lowest, highest) value a correctly normalized pixel can take under `normalization`."""
    mean, std, scale = normalization_from_metadata(normalization)
    top = scale * normalization.get("value_range", [0, 255])[1]
    return float(((0.0 - mean) / std).min()), float(((top - mean) / std).max())


def network_input(images: Any, normalization: dict[str, Any]) -> np.ndarray:
    """uint8 NHWC pixels or float32 NCHW normalized input -> float32 [N, 3, 32, 32], checked.

    Raises RtkError for the mistakes apps make: channels-first uint8, RGBA or grayscale, another
    image size, a dtype other than uint8/float32, float pixels that were never normalized.
    """
    x = np.asarray(images)
    if x.dtype == np.uint8:
        x = x[None] if x.ndim == 3 else x
        if x.ndim != 4:
            raise RtkError(f"uint8 images must be [N, 32, 32, 3] (or one [32, 32, 3]), got shape {x.shape}")
        if x.shape[1:] == IMAGE_SHAPE:
            raise RtkError(f"uint8 images must be channels-last NHWC [N, 32, 32, 3], got channels-first "
                           f"{x.shape}: pass images.transpose(0, 2, 3, 1)")
        if x.shape[1:3] == HWC_SHAPE[:2] and x.shape[3] != 3:
            raise RtkError(f"images must have 3 channels (RGB), got {x.shape[3]} in {x.shape}"
                           + (": drop the alpha channel with images[..., :3]" if x.shape[3] == 4 else ""))
        if x.shape[1:] != HWC_SHAPE:
            raise RtkError(f"images must be 32x32 RGB [N, 32, 32, 3], got {x.shape}: resize them first")
        _check_not_empty(x)
        return normalize_uint8_nhwc(x, normalization)
    if x.dtype == np.float32:
        x = x[None] if x.ndim == 3 else x
        if x.ndim == 4 and x.shape[1:] == HWC_SHAPE:
            raise RtkError(f"float32 input must be normalized NCHW [N, 3, 32, 32], got channels-last {x.shape}; "
                           "pass uint8 [N, 32, 32, 3] pixels to have the model normalize them")
        if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
            raise RtkError(f"float32 input must be normalized NCHW [N, 3, 32, 32], got shape {x.shape}")
        _check_not_empty(x)
        if not np.isfinite(x).all():
            raise RtkError("float32 input contains NaN or infinity")
        low, high = normalized_range(normalization)
        if x.max() > high + RANGE_SLACK or x.min() < low - RANGE_SLACK:
            raise RtkError(f"float32 input ranges over [{x.min():.3g}, {x.max():.3g}], outside the normalized "
                           f"range [{low:.2f}, {high:.2f}]: it looks like raw pixels; pass them as uint8 "
                           "[N, 32, 32, 3] or normalize with the model's mean/std (model.metadata)")
        return np.ascontiguousarray(x)
    raise RtkError(f"images must be uint8 [N, 32, 32, 3] pixels or float32 [N, 3, 32, 32] normalized input, "
                   f"got dtype {x.dtype}")


def batch_slices(num_images: int, sizes: Sequence[int]) -> list[slice]:
    """Consecutive slices of sizes[0], sizes[1], ..., then sizes[-1] again until `num_images` are
    covered; the last slice may reach past the end (slicing an array stops at its end)."""
    parts, start = [], 0
    while start < num_images:
        size = sizes[min(len(parts), len(sizes) - 1)]
        parts.append(slice(start, start + size))
        start += size
    return parts


UNNORMALIZED_WARNING = (
    "float32 input lies wholly in [0, 1]: it looks like pixels divided by 255 but not normalized "
    "with the model's mean/std, which gives confident wrong answers; pass uint8 [N, 32, 32, 3] pixels, "
    "or normalize as model.normalization says (this warning is shown once per model)")


def looks_unnormalized(x: np.ndarray) -> bool:
    """Whether float input has the value statistics of pixels scaled to [0, 1] and not normalized.

    Normalized CIFAR-10 pixels have mean 0 and std 1 per channel, so about half of them are
    negative: an image with none below 0 and none above 1 would need every pixel between its
    channel's mean and mean + 1 std (a flat, mid-grey picture). Scaled-only pixels always pass.
    """
    return bool(x.size) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def _check_not_empty(x: np.ndarray) -> None:
    if x.shape[0] == 0:
        raise RtkError("no images: the batch is empty")


class Model:
    """A loaded rtk model: one backend runner behind the same predict() for every artifact.

    predict(images) / logits(images) take either
      - uint8 [N, 32, 32, 3] RGB pixels (or one [32, 32, 3] image), normalized here with the mean/std
        recorded in the artifact's metadata, or
      - float32 [N, 3, 32, 32] (or [3, 32, 32]) already normalized the same way.
    Batches larger than the backend's limit (a TensorRT profile's max) are split and joined.
    Calls are safe from several threads at once (each runner keeps per-thread state where it needs it).

    Errors (rtk.errors.RtkError, one message saying what to do):
      - shape: not [N, 32, 32, 3] / [N, 3, 32, 32], another image size, an empty batch;
      - channel order: uint8 channels-first [N, 3, 32, 32]; float32 channels-last [N, 32, 32, 3];
      - channels: RGBA [N, 32, 32, 4] or grayscale [N, 32, 32, 1];
      - dtype: anything but uint8 or float32 (float64 too: convert with .astype(np.float32));
      - value range: float32 input outside the normalized range by more than 1.0 (raw 0..255
        pixels passed as floats), NaN or infinity;
      - a closed model (after close()), the backend's own failures, and NaN or infinite logits
        (weights from a diverged training: argmax would say class 0 for everything).
    A RuntimeWarning (once per model) for float32 input that lies wholly in [0, 1]: pixels scaled
    by 1/255 but never normalized (see looks_unnormalized).
    Models exported with a fixed batch get any batch size: split into, and padded to, their batch.

    What cannot be told from the values: BGR instead of RGB channel order (both are plausible
    images), and float input normalized with other statistics than the model's. Pass RGB, and
    uint8 pixels when unsure: the model then normalizes them itself.
    """

    def __init__(self, runner: Runner):
        if not runner.is_active:
            runner.activate()
        self.runner = runner
        self.metadata: dict[str, Any] = runner.metadata
        missing = [key for key in ("normalization", "classes") if key not in self.metadata]
        if missing:
            raise RtkError(f"{runner.path} carries no rtk metadata ({', '.join(missing)} missing): "
                           "export it with `rtk export` or pass an rtk artifact")
        self.classes: tuple[str, ...] = tuple(self.metadata["classes"])
        self._warned_unnormalized = False
        self.normalization: dict[str, Any] = self.metadata["normalization"]

    @property
    def backend(self) -> str:
        return self.runner.backend

    @property
    def precision(self) -> str:
        return self.runner.precision

    @property
    def name(self) -> str:
        return self.runner.name

    def logits(self, images: Any, batch_sizes: Sequence[int] = (), pad: bool = False) -> np.ndarray:
        """Raw logits float32 [N, num_classes] (see the class docstring for the accepted input).

        batch_sizes: the images go to the backend in consecutive batches of these sizes, the last
        repeated until done (see batch_slices), each capped at the backend's limit; () sends them all
        at once (or in batches of the limit). pad: the last batch is filled up to its full size with
        copies of its own images (their logits dropped), so every call has one shape: CUDA graphs
        and torch.compile then reuse what they captured. A fixed-batch model always gets batches of
        its own size, padded.
        """
        self.runner.require_active()
        for size in batch_sizes:
            check_batch(size, "every batch size")
        float_input = np.asarray(images).dtype == np.float32
        x = network_input(images, self.normalization)
        if float_input and not self._warned_unnormalized and looks_unnormalized(x):
            self._warned_unnormalized = True
            warnings.warn(UNNORMALIZED_WARNING, RuntimeWarning, stacklevel=2)
        limit, fixed = self.runner.max_batch, self.runner.fixed_batch
        if fixed:
            sizes, pad = [fixed], True
        else:
            sizes = [min(size, limit or size) for size in batch_sizes] or [limit or len(x)]
        chunks = []
        for part in batch_slices(len(x), sizes):
            feed = x[part]
            count, size = len(feed), part.stop - part.start
            if pad and count < size:
                feed = np.resize(feed, (size, *feed.shape[1:]))
            out = self.runner.infer({INPUT_NAME: feed})[OUTPUT_NAME]
            if out.shape != (len(feed), len(self.classes)):
                raise RtkError(f"{self.runner.path}: {self.name} returned logits of shape {list(out.shape)} for "
                               f"a batch of {len(feed)}, expected [{len(feed)}, {len(self.classes)}]")
            chunks.append(out[:count])
        logits = np.concatenate(chunks).astype(np.float32, copy=False)
        bad = ~np.isfinite(logits).all(axis=1)
        if bad.any():  # argmax of NaN is class 0: a silently wrong answer
            raise RtkError(f"{self.runner.path} gave NaN or infinite logits for {int(bad.sum())} of {len(logits)} "
                           "images: its weights are not finite (a diverged training?)")
        return logits

    def predict(self, images: Any, batch_sizes: Sequence[int] = (), pad: bool = False) -> Prediction:
        """Top-1 class indices int64 [N] and softmax probabilities float32 [N, num_classes];
        batch_sizes and pad as for logits()."""
        logits = self.logits(images, batch_sizes, pad)
        return Prediction(classes=logits.argmax(axis=1).astype(np.int64), probs=softmax(logits))

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Model({self.runner.path!r}, backend={self.backend!r}, precision={self.precision!r})"
