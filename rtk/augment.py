"""Batched augmentation and normalization of uint8 CIFAR-10 images on the training device (torch):
the paper's pad-crop-flip in two gathers, and the one normalization of rtk.preprocess as tensor ops.

torch is imported inside the functions, so importing this module (rtk.train does) costs nothing more.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

from rtk.preprocess import normalization_from_metadata, normalization_metadata

if TYPE_CHECKING:
    import torch

PAD = 4  # pixels of zero padding on each side before the random 32x32 crop


def augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The paper's augmentation for a batch: uint8 [N, 3, 32, 32] -> uint8 [N, 3, 32, 32].

    Each image is zero-padded by 4 pixels on every side ([N, 3, 40, 40]), cropped to 32x32 at its
    own random offset (dy, dx in 0..8) and flipped left-right with probability 1/2. Two gathers do
    all images at once on the images' device: rows [N, 3, 32, 40], then columns [N, 3, 32, 32],
    with the flip folded into the column index. The random draws come from `generator` (on its
    own device, then moved), so the same seeded generator gives the same output on CPU and CUDA;
    None uses torch's default generator of the images' device. Returns a contiguous NCHW tensor.
    """
    import torch

    n, channels, height, width = images.shape
    padded = torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD))  # [N, 3, 40, 40], zeros
    draw_on = generator.device if generator is not None else images.device
    offsets = torch.randint(0, 2 * PAD + 1, (2, n), generator=generator, device=draw_on)
    flips = torch.randint(0, 2, (n, 1), generator=generator, device=draw_on).bool()
    offsets, flips = offsets.to(images.device), flips.to(images.device)
    steps = torch.arange(width, device=images.device)  # [32]
    rows = offsets[0, :, None] + steps  # [N, 32] source row in the padded image
    cols = offsets[1, :, None] + torch.where(flips, steps.flip(0), steps)  # [N, 32]
    out = padded.gather(2, rows[:, None, :, None].expand(n, channels, height, width + 2 * PAD))
    return out.gather(3, cols[:, None, None, :].expand(n, channels, height, width))


@functools.cache
def _normalization_on(device: torch.device, meta: str | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(mean, std) float32 [1, 3, 1, 1] on `device` and the pixel scale, of the normalization
    metadata `meta` (JSON; None: rtk's own); made once per device so a training step copies nothing
    from the host (which would also break CUDA graph capture)."""
    import torch

    mean, std, scale = normalization_from_metadata(meta if meta is not None else normalization_metadata())
    return torch.from_numpy(mean).to(device), torch.from_numpy(std).to(device), scale


def normalize(images: torch.Tensor, meta: dict[str, Any] | None = None) -> torch.Tensor:
    """uint8 [N, 3, 32, 32] -> float32 [N, 3, 32, 32]: (x / 255 - mean) / std per channel, the same
    arithmetic as rtk.preprocess.normalize_uint8_nhwc, on the images' device; `meta` is an
    artifact's normalization metadata (default: the CIFAR-10 statistics rtk trains with)."""
    import torch

    mean, std, scale = _normalization_on(images.device, None if meta is None else json.dumps(meta, sort_keys=True))
    x = images.to(torch.float32)  # the one new tensor; the rest is in place
    return x.mul_(scale).sub_(mean).div_(std)
