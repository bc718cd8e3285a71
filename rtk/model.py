"""The CIFAR-10 ResNets of He et al. 2016, section 4.2, with option-A (parameter-free) shortcuts.

depth = 6n + 2: a 3x3 conv (16 filters), three stages of n basic blocks on 32x32 / 16x16 / 8x8 maps
with 16 / 32 / 64 filters, global average pool, a 10-way linear layer.

| depth | n   | params     | forward MACs / image |
|------:|----:|-----------:|---------------------:|
| 20    | 3   | 269,722    | 40.55M               |
| 32    | 5   | 464,154    | 68.86M               |
| 44    | 7   | 658,586    | 97.17M               |
| 56    | 9   | 853,018    | 125.49M              |
| 110   | 18  | 1,727,962  | 252.89M              |
| 1202  | 200 | 19,421,274 | 2,829.2M             |

tests/test_model.py asserts these numbers; a 1x1 projection shortcut (option B) would give 272,474
for depth 20.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rtk.errors import RtkError
from rtk.names import depth_problem

STAGE_WIDTHS = (16, 32, 64)
NUM_CLASSES = 10
# The paper's CIFAR-10 test accuracy per depth (He et al. 2016, Table 6: 100 - the error in %; for
# ResNet-110 the best of its five runs, whose mean is 93.39), beside which `rtk info` shows a checkpoint's.
PAPER_TEST_ACCURACY = {20: 91.25, 32: 92.49, 44: 92.83, 56: 93.03, 110: 93.57, 1202: 92.07}


def blocks_per_stage(depth: int) -> int:
    """n for depth = 6n + 2; a clear error for any other depth, or one beyond rtk.names.MAX_DEPTH."""
    problem = depth_problem(depth)
    if problem:
        raise RtkError(problem)
    return (depth - 2) // 6


class ShortcutA(nn.Module):
    """Option A: keep every second pixel, zero-pad the new channels (no parameters).

    [N, C_in, H, W] -> [N, C_out, H/stride, W/stride]; the C_out - C_in zero channels are split
    evenly before and after (16 -> 32: 8 and 8). Written with slicing and F.pad so the ONNX export
    shows a Slice (step 2) and one constant-mode Pad on the channel axis.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        extra = out_channels - in_channels
        self.pad_before, self.pad_after = extra // 2, extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # F.pad lists pads from the last dim backwards: (W, W, H, H, C, C).
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, stride={self.stride}, zero-pad"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ShortcutA(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-<depth> for 32x32 RGB inputs: [N, 3, 32, 32] float -> logits [N, 10]."""

    def __init__(self, depth: int = 20, num_classes: int = NUM_CLASSES):
        super().__init__()
        n = blocks_per_stage(depth)
        self.depth, self.num_classes = depth, num_classes
        self.conv1 = nn.Conv2d(3, STAGE_WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        stages, in_ch = [], STAGE_WIDTHS[0]
        for i, width in enumerate(STAGE_WIDTHS):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(in_ch, width, 2 if (i > 0 and b == 0) else 1))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(STAGE_WIDTHS[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He initialisation (the paper's [13], eq. 10: std = sqrt(2 / (k^2 c_in)), i.e. fan_in) for
        # every conv and the classifier. fan_out, as torchvision uses, was measured worse here: one
        # epoch of the paper recipe on ResNet-20 gave 38.8% test accuracy against 44.9% (docs/training.md).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # [N, 16, 32, 32]
        x = self.stage3(self.stage2(self.stage1(x)))  # [N, 64, 8, 8]
        return self.fc(torch.flatten(self.pool(x), 1))  # [N, 10]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_count(depth: int) -> int:
    """count_parameters(ResNet(depth)) by arithmetic, without building the model (MAX_DEPTH's takes seconds)."""
    n = blocks_per_stage(depth)
    total, channels = 3 * STAGE_WIDTHS[0] * 9 + 2 * STAGE_WIDTHS[0], STAGE_WIDTHS[0]  # stem conv, BN
    for width in STAGE_WIDTHS:
        for _ in range(n):
            total += (channels * width + width * width) * 9 + 2 * 2 * width  # conv1, conv2, their BNs
            channels = width
    return total + channels * NUM_CLASSES + NUM_CLASSES  # fc


@dataclass(frozen=True)
class LayerRow:
    """One row of the paper's architecture table, as `rtk arch` prints it."""

    name: str
    output_size: int  # H = W of the output map
    filters: int
    blocks: int
    params: int
    macs: int  # multiply-accumulates per image


def _conv_macs(conv: nn.Conv2d, out_hw: int) -> int:
    k = conv.kernel_size[0] * conv.kernel_size[1]
    return conv.in_channels * conv.out_channels * k * out_hw * out_hw


def describe(depth: int) -> list[LayerRow]:
    """Per stage: output map size, filters, blocks, parameters and forward MACs (paper Table 6)."""
    model = ResNet(depth)
    n = blocks_per_stage(depth)
    rows = [
        LayerRow("conv1", 32, 16, 1, count_parameters(model.conv1) + count_parameters(model.bn1),
                 _conv_macs(model.conv1, 32)),
    ]
    for i, (stage, hw) in enumerate(zip((model.stage1, model.stage2, model.stage3), (32, 16, 8))):
        macs = sum(_conv_macs(m, hw) for m in stage.modules() if isinstance(m, nn.Conv2d))
        rows.append(LayerRow(f"stage{i + 1}", hw, STAGE_WIDTHS[i], n, count_parameters(stage), macs))
    rows.append(LayerRow("pool+fc", 1, NUM_CLASSES, 1, count_parameters(model.fc),
                         model.fc.in_features * model.fc.out_features))
    return rows
