"""Fully connected networks: a configurable MLP and LeNet-300-100."""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from . import register_model
from ._shape import as_shape, numel
from ..counts import whole_number

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


def parse_hidden(hidden: Union[int, str, Sequence[int]]) -> tuple:
    """Hidden sizes from an int, a sequence, or a comma-separated string like ``"300,100"``."""
    given = hidden
    if whole_number(hidden) is not None:
        hidden = (hidden,)
    elif isinstance(hidden, str):
        hidden = tuple(h for h in hidden.replace(" ", "").split(",") if h)
    try:
        # text is read as int ("300"); anything else must already be a whole number: 300.7 or True is
        # refused, never cut to 300 or taken as 1
        hidden = tuple(int(h) if isinstance(h, str) else whole_number(h) for h in hidden)
    except (TypeError, ValueError):
        hidden = (None,)
    if any(h is None for h in hidden):
        raise ValueError(f"hidden sizes must be whole numbers, one per hidden layer (e.g. 300,100), got {given!r}")
    if any(h <= 0 for h in hidden):
        raise ValueError(f"hidden sizes must be positive, got {hidden}")
    return hidden


class MLP(nn.Module):
    """Flatten, then ``fc1 .. fcN`` Linear layers with an activation between them.

    ``fcN`` (the last) maps to ``num_classes`` and is the classifier.
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, hidden=(300, 100),
                 activation: str = "relu", bias: bool = True):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)}")
        self.in_shape = tuple(in_shape)
        sizes = (numel(in_shape),) + parse_hidden(hidden) + (int(num_classes),)
        self.names = [f"fc{i + 1}" for i in range(len(sizes) - 1)]
        for name, a, b in zip(self.names, sizes[:-1], sizes[1:]):
            self.add_module(name, nn.Linear(a, b, bias=bias))
        self.act = _ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for name in self.names[:-1]:
            x = self.act(getattr(self, name)(x))
        return getattr(self, self.names[-1])(x)


@register_model("mlp")
def mlp(num_classes=10, in_shape=None, hidden=(256, 128), activation="relu", bias=True):
    return MLP(as_shape(in_shape, (1, 28, 28)), num_classes, hidden=hidden, activation=activation, bias=bias)


@register_model("lenet300")
def lenet300(num_classes=10, in_shape=None, bias=True):
    """LeNet-300-100 (LeCun et al. 1998): in -> 300 -> 100 -> classes, ReLU."""
    return MLP(as_shape(in_shape, (1, 28, 28)), num_classes, hidden=(300, 100), activation="relu", bias=bias)
