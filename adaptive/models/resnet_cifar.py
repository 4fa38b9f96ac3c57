"""CIFAR ResNets of He et al. (2016), section 4.2: ResNet-20/32/44/56 with option-A shortcuts.

Module names and parameter layout match the widely used pretrained checkpoints
(``resnet20-12fca82f.th`` etc.), which load with ``strict=True`` once the ``module.`` prefix is
stripped (:func:`adaptive.models.load_weights` does that).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from . import register_model
from ._shape import image_shape


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad ``planes // 4`` channels on each side."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = PadShortcut(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2): conv1/bn1, layer1..3 of ``n`` BasicBlocks (16, 32, 64 channels), GAP, linear."""

    def __init__(self, n: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, n, 1)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _register(depth: int):
    n = (depth - 2) // 6

    @register_model(f"resnet{depth}")
    def build(num_classes=10, in_shape=None):
        c, _, _ = image_shape(in_shape, (3, 32, 32), f"resnet{depth}")
        return CifarResNet(n, num_classes=num_classes, in_channels=c)

    build.__doc__ = f"CIFAR ResNet-{depth} ({n} BasicBlocks per stage, option-A shortcuts)."
    return build


for _depth in (20, 32, 44, 56, 110):
    _register(_depth)
