"""The layers :func:`graphs.compact` shrinks, and how it reads them: their weights laid out ``(out, in/groups,
*kernel)``, the outputs adding constants an earlier compaction folded in, the input channels their live weights
read, a layer call's input node."""
from __future__ import annotations

import math

import torch
from torch import fx, nn

from adaptive.discovery import to_out_in

from . import ops
from .folded import FoldedConv, unfolded

_BN = nn.modules.batchnorm._BatchNorm


# the layers compaction shrinks; a FoldedConv (of an earlier compaction) as the convolution it wraps
_LAYERS = ops.WEIGHTED_MODULES + ops.TRANSPOSED_MODULES + (FoldedConv,)


def _out_in_weight(m: nn.Module) -> torch.Tensor:
    """``m``'s weight laid out ``(out, in/groups, *kernel)``: a transposed convolution's, stored
    ``(in, out/groups, *kernel)``, swapped within each group (a copy); any other's as it is. A FoldedConv's is
    its convolution's."""
    m = unfolded(m)
    w = m.weight.detach()
    return to_out_in(w, m.groups) if isinstance(m, ops.TRANSPOSED_MODULES) else w


def _folded_outputs(m: nn.Module) -> torch.Tensor:
    """Per output channel of a weighted layer: does it add constants folded in by an earlier compaction (a
    :class:`FoldedConv`'s ``const_weight`` non-zero there)? All False for any other layer."""
    if not isinstance(m, FoldedConv):
        return torch.zeros(_out_in_weight(m).shape[0], dtype=torch.bool)
    transposed = isinstance(m.conv, ops.TRANSPOSED_MODULES)  # its one input channel on axis 0
    k = m.const_weight.transpose(0, 1) if transposed else m.const_weight
    return (k != 0).flatten(1).any(1).cpu()


def _module_input(n):
    """The input node of an ``nn.Linear``/``nn.Conv`` call, however it was passed (None if not a node)."""
    x = n.args[0] if n.args else n.kwargs.get("input")
    return x if isinstance(x, fx.Node) else None


def _inputs_read(m: nn.Module) -> torch.Tensor:
    """Per input channel of a Linear, Conv or ConvTranspose (grouped too; a FoldedConv's): does any live weight
    read it?"""
    w = _out_in_weight(m)
    g = int(getattr(unfolded(m), "groups", 1))
    return (w != 0).reshape(g, w.shape[0] // g, w.shape[1], math.prod(w.shape[2:])).any(-1).any(1).reshape(-1)


def _depthwise(m) -> bool:
    """A convolution with one filter per channel (groups == in == out)."""
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
