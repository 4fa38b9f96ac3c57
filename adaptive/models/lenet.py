"""LeNet-5: conv6 - pool - conv16 - pool - fc120 - fc84 - fc."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import register_model
from ._shape import image_shape


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max pooling.

    ``conv1`` is 5x5 with padding 2 (so 28x28 MNIST gives the classic 16x5x5 = 400 features);
    ``conv2`` is 5x5 unpadded, or padded by 2 when the pooled map is smaller than 6x6 (8x8
    digits; 10x10), so any input of at least 4x4 works.
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int):
        super().__init__()
        c, h, w = in_shape
        self.conv1 = nn.Conv2d(c, 6, 5, padding=2)
        h, w = h // 2, w // 2
        pad2 = 0 if min(h, w) >= 6 else 2  # unpadded, a 5x5 map would pool to nothing
        self.conv2 = nn.Conv2d(6, 16, 5, padding=pad2)
        h, w = (h + 2 * pad2 - 4) // 2, (w + 2 * pad2 - 4) // 2
        if min(h, w) < 1:
            raise ValueError(f"LeNet5 input {tuple(in_shape)} is too small (need at least 4x4)")
        self.fc1 = nn.Linear(16 * h * w, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@register_model("lenet5")
def lenet5(num_classes=10, in_shape=None):
    return LeNet5(image_shape(in_shape, (1, 28, 28), "lenet5"), num_classes)
