"""ResNets for 32x32 CIFAR images (He et al. 2016, section 4.2): 6n+2 layers in three stages.

The layout and module names (`conv1`, `bn1`, `layer1..3` of `BasicBlock`s, `linear`) match the widely
used community checkpoints (e.g. resnet20-12fca82f.th), so their state dicts load unchanged.

Shortcuts between stages of different widths come in the paper's two options:
- "A": no parameters; the input is sub-sampled with stride 2 and zero-padded with planes // 4 channels
  on each side of the channel axis. It is built as the exactly equivalent fixed selection convolution
  `ChannelPadShortcut` (compress.layers), so the residual streams prune like every other group.
- "B": a 1x1 convolution with batch norm (prunable like any other layer).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ChannelPadShortcut, is_fixed

DEPTHS = (20, 32, 44, 56, 110)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = ChannelPadShortcut(in_planes, planes, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-`depth` for CIFAR: 16/32/64 filters, (depth - 2) / 6 basic blocks per stage."""

    def __init__(self, depth: int = 20, num_classes: int = 10, shortcut: str = "A"):
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        blocks = (depth - 2) // 6
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, blocks, 1, shortcut)
        self.layer2 = self._stage(32, blocks, 2, shortcut)
        self.layer3 = self._stage(64, blocks, 2, shortcut)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not is_fixed(m):
                nn.init.kaiming_normal_(m.weight)

    def _stage(self, planes: int, blocks: int, stride: int, shortcut: str) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s, shortcut))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)
