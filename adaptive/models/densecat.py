"""DenseCat: every layer reads the input and all earlier layers' outputs, concatenated.

The connectome of such a net decides which layers talk to which, so pruning and regrowing its
synapses learns an architecture. ``input_depths(layer)`` says, for each input feature/channel of
a layer, which depth its signal comes from (0 = raw input, k = output of the k-th layer), so
diagnostics can group gradients and masks by depth.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import register_model
from ._shape import as_shape, numel, size_option

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class DenseCat(nn.Module):
    """``depth`` densely concatenated layers of ``width`` units, then a Linear ``classifier``.

    kind="mlp": the input is flattened; layer k is ``Linear(F0 + (k-1)*width, width)`` +
    activation. kind="cnn": layer k is a 3x3 padded ``Conv2d(C + (k-1)*width, width)`` +
    activation, concatenated along channels; the classifier reads the global average pool of the
    concatenation of everything. Prunable layers are named ``layers.{k-1}`` and ``classifier``;
    optional batch norms (``norms.{k-1}``) sit between each layer and its activation.
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, depth: int = 8, width: int = 32,
                 kind: str = "mlp", batchnorm: bool = False, activation: str = "relu"):
        super().__init__()
        if kind not in ("mlp", "cnn"):
            raise ValueError(f"DenseCat kind must be 'mlp' or 'cnn', got {kind!r}")
        depth, width = size_option("DenseCat", "depth", depth), size_option("DenseCat", "width", width)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)}")
        in_shape = tuple(in_shape)
        if kind == "cnn" and len(in_shape) != 3:
            raise ValueError(f"DenseCat kind='cnn' needs in_shape=(C, H, W), got {in_shape}")
        self.kind, self.depth, self.width = kind, int(depth), int(width)
        self.in_shape = in_shape
        self.in_units = numel(in_shape) if kind == "mlp" else in_shape[0]
        layers, norms = [], []
        for k in range(self.depth):
            fan_in = self.in_units + k * self.width
            if kind == "mlp":
                layers.append(nn.Linear(fan_in, self.width))
                norms.append(nn.BatchNorm1d(self.width) if batchnorm else nn.Identity())
            else:
                layers.append(nn.Conv2d(fan_in, self.width, 3, padding=1, bias=not batchnorm))
                norms.append(nn.BatchNorm2d(self.width) if batchnorm else nn.Identity())
        self.layers = nn.ModuleList(layers)
        self.norms = nn.ModuleList(norms)
        self.act = _ACTIVATIONS[activation]()
        self.classifier = nn.Linear(self.in_units + self.depth * self.width, num_classes)
        self.register_buffer(
            "_depth_of_feature",
            torch.cat([torch.zeros(self.in_units, dtype=torch.long),
                       torch.arange(1, self.depth + 1).repeat_interleave(self.width)]),
            persistent=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "mlp":
            x = x.flatten(1)
        feats = [x]
        for layer, norm in zip(self.layers, self.norms):
            feats.append(self.act(norm(layer(torch.cat(feats, 1)))))
        h = torch.cat(feats, 1)
        if self.kind == "cnn":
            h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.classifier(h)

    def input_depths(self, layer_name: str) -> torch.Tensor:
        """Depth of each input feature/channel of ``layer_name`` (LongTensor, one per input unit).

        ``layer_name`` is a module name (``layers.3``, ``classifier``) or its weight's parameter
        name (``layers.3.weight``). Layer ``layers.{k-1}`` reads depths ``0..k-1``; the classifier
        reads ``0..depth``; depth 0 covers the raw input's features (mlp) or channels (cnn).
        """
        name = layer_name[: -len(".weight")] if layer_name.endswith(".weight") else layer_name
        if name == "classifier":
            n = self.in_units + self.depth * self.width
        elif name.startswith("layers.") and name[len("layers."):].isdigit() and int(name[7:]) < self.depth:
            n = self.in_units + int(name[7:]) * self.width
        else:
            names = [f"layers.{k}" for k in range(self.depth)] + ["classifier"]
            raise KeyError(f"DenseCat has no prunable layer {layer_name!r}; its layers are {names}")
        return self._depth_of_feature[:n].clone().cpu()


@register_model("densecat")
def densecat(num_classes=10, in_shape=None, depth=8, width=32, kind="mlp", batchnorm=False, activation="relu"):
    default = (1, 28, 28) if kind == "mlp" else (3, 32, 32)
    return DenseCat(as_shape(in_shape, default), num_classes, depth=depth, width=width, kind=kind,
                    batchnorm=batchnorm, activation=activation)
