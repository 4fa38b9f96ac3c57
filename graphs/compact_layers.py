"""The layers :func:`graphs.compact` shrinks, and how it reads them: their weights laid out ``(out, in/groups,
*kernel)``, the outputs adding constants an earlier compaction folded in, the input channels their live weights
read, a layer call's input node."""
from __future__ import annotations

import math
from typing import Optional

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


def _live_weights(m: nn.Module) -> torch.Tensor:
    """Per output unit and input channel of its group of a Linear, Conv or ConvTranspose (a FoldedConv's): is any
    weight between them live? Flags ``[out, in/groups]``."""
    w = _out_in_weight(m)
    return (w != 0).reshape(w.shape[0], w.shape[1], math.prod(w.shape[2:])).any(-1)


def _inputs_read(m: nn.Module, outputs: Optional[torch.Tensor] = None, live: Optional[torch.Tensor] = None
                 ) -> torch.Tensor:
    """Per input channel of a Linear, Conv or ConvTranspose (grouped too; a FoldedConv's): does any live weight
    read it? ``outputs`` (flags per output unit; None: all): only the weights of those outputs count (the others
    go, and what only they read with them). ``live``: ``m``'s :func:`_live_weights`, where already computed."""
    g = int(getattr(unfolded(m), "groups", 1))
    live = _live_weights(m) if live is None else live  # [out, in/groups]
    if outputs is not None:
        live = live & outputs.to(live.device)[:, None]
    return live.reshape(g, live.shape[0] // g, live.shape[1]).any(1).reshape(-1)


def _folds_into_bias(m: nn.Module) -> bool:
    """Does a constant input channel add the same amount to every position of each output of ``m`` (a Linear,
    convolution, transposed convolution; a FoldedConv's), so that it folds into the bias? A Linear, a convolution
    with no zero padding (or another padding mode: a uniform map pads uniformly), a transposed one of a 1-wide
    kernel at stride 1 with no output padding; else the zero padding (the stride's tiling) makes a border
    pattern (see :class:`graphs.folded.FoldedConv`)."""
    m = unfolded(m)
    if isinstance(m, ops.TRANSPOSED_MODULES):  # a constant input adds its kernel at every input position
        return all(n == 1 for n in m.kernel_size) and all(s == 1 for s in m.stride) and not any(m.output_padding)
    pad = getattr(m, "padding", 0)
    return isinstance(m, nn.Linear) or m.padding_mode != "zeros" or (
        not isinstance(pad, str) and all(p == 0 for p in pad))


def _depthwise(m) -> bool:
    """A convolution with one filter per channel (groups == in == out)."""
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
