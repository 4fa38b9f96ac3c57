"""Per-layer slicing in :func:`graphs.compact`: a Linear, convolution (grouped, depthwise, transposed, a
FoldedConv's) or BatchNorm cut to the channels it keeps, the constants of the inputs that go folded in."""
from __future__ import annotations

import copy
import inspect
import warnings
from typing import Optional

import torch
from torch import nn

from adaptive.discovery import from_out_in

from . import ops
from .compact_functional import CHANNEL_ATTRS
from .compact_layers import _BN, _folds_into_bias, _out_in_weight
from .folded import FoldedConv, unfolded

def _shrink_weighted(m: nn.Module, ko: torch.Tensor, ki: torch.Tensor, k_in: torch.Tensor) -> nn.Module:
    """``m`` with the output units ``ko`` and the input channels ``ki`` (flags) only, the constants ``k_in`` of the
    inputs that go (NaN: none) folded into its bias or a :class:`FoldedConv`. A grouped convolution's flags must
    leave its groups alike (:func:`graphs.compact_plan._uneven_groups`): its groups with no kept channel go. A
    transposed convolution is cut in its ``(out, in/groups, *kernel)`` layout and stored back in its own. A
    FoldedConv (of an earlier compaction) is cut as its convolution, its kept outputs keeping the constants folded
    in before, to which those of the inputs that go now are added."""
    before = m
    m = unfolded(m)
    transposed = isinstance(m, ops.TRANSPOSED_MODULES)
    w = _out_in_weight(m)
    g = int(getattr(m, "groups", 1))
    bias = m.bias.detach().clone() if m.bias is not None else w.new_zeros(w.shape[0])
    k = torch.nan_to_num(k_in.to(w.dtype), nan=0.0) * ~ki  # the flags' device (the CPU): decided there
    # outputs that stay read them: a group that goes whole takes its constants with it
    folds = bool(((k != 0).view(g, -1).any(1) & ko.view(g, -1).any(1)).any())
    k = k.to(w.device)  # and computed with on the weight's (a CUDA model's)
    wg = w.view(g, w.shape[0] // g, *w.shape[1:])  # [groups, outputs per group, inputs per group, *kernel]
    fold, into_bias = None, False
    if folds:  # output o reads the constants of its own group's inputs
        contrib = (wg * k.view(g, 1, -1, *([1] * (w.dim() - 2)))).sum(2).reshape(w.shape[0], 1, *w.shape[2:])
        if not contrib.is_meta:  # none the kept outputs read (weights on them all 0): no bias, no fold
            folds = bool(((contrib.flatten(1) != 0).any(1) & ko.to(contrib.device)).any())
    if folds:
        uniform = _folds_into_bias(m)
        into_bias = uniform
        if uniform:
            bias = bias + contrib.flatten(1).sum(1)
        else:  # a transposed convolution's one input channel is axis 0 of its weight
            fold = (contrib[ko].transpose(0, 1) if transposed else contrib[ko]).contiguous()
    if g == 1:
        w2, g2 = w[ko][:, ki].contiguous(), 1
    else:  # the groups that stay, each with as many kept inputs and outputs as the others
        live = ko.view(g, -1).any(1)
        g2 = int(live.sum())
        o_idx = ko.view(g, -1)[live].nonzero()[:, 1].view(g2, -1)
        i_idx = ki.view(g, -1)[live].nonzero()[:, 1].view(g2, -1)
        at = torch.arange(g2)[:, None, None]
        w2 = wg[live][at, o_idx[:, :, None], i_idx[:, None, :]].flatten(0, 1).contiguous()
    has_bias = m.bias is not None or into_bias
    if isinstance(m, nn.Linear):
        new = _uninitialised(nn.Linear, w, w2.shape[1], w2.shape[0], bias=has_bias)
        for attr, size in zip(CHANNEL_ATTRS, (w2.shape[1], w2.shape[0])):  # a torch_geometric Linear's, as its new shape
            if attr in vars(m):
                setattr(new, attr, int(size))
    else:
        new = _uninitialised(type(m), w, w2.shape[1] * g2, w2.shape[0], m.kernel_size, bias=has_bias,
                             **_conv_options(m, g2))
    new.weight.copy_(from_out_in(w2, g2) if transposed else w2)
    if has_bias:
        new.bias.copy_(bias[ko])
    _grad_flags_kept(m, new)
    new.train(m.training)
    return _refolded(before, new, ko, fold)


def _grad_flags_kept(m: nn.Module, new: nn.Module) -> None:
    """``new``'s weight and bias require grad as ``m``'s do: a frozen layer (a fine-tuned model's backbone) stays
    frozen in the copy, as a BatchNorm does. A bias the copy has and ``m`` lacks (the constants of dead inputs
    folded in) takes the weight's flag."""
    new.weight.requires_grad_(m.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_((m.weight if m.bias is None else m.bias).requires_grad)


def _refolded(m: nn.Module, new: nn.Module, ko: torch.Tensor, fold: Optional[torch.Tensor] = None) -> nn.Module:
    """``new``, the shrunk convolution of ``m`` keeping the outputs ``ko`` (flags), with the constants folded
    into it: those ``m`` folded before, if a :class:`FoldedConv`, on the outputs kept, plus ``fold`` (a
    ``const_weight`` of the kept outputs) where given; a FoldedConv where there are any, else ``new`` itself."""
    if isinstance(m, FoldedConv):
        k = m.const_weight
        kept = k[:, ko.to(k.device)] if isinstance(m.conv, ops.TRANSPOSED_MODULES) else k[ko.to(k.device)]
        fold = kept if fold is None else fold + kept
    return FoldedConv(new, fold.contiguous()) if fold is not None else new


def _uninitialised(cls, like: torch.Tensor, *args, **kwargs) -> nn.Module:
    """``cls(*args, **kwargs)`` on ``like``'s device and dtype with its parameters left uninitialised, for the
    caller to fill: no time spent drawing weights that are overwritten, and none of torch's warnings that
    initialising a layer left with no inputs or outputs (``nn.Linear(0, k)``) is a no-op."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        if "device" in inspect.signature(cls).parameters:
            return nn.utils.skip_init(cls, *args, device=like.device, dtype=like.dtype, **kwargs)
        return cls(*args, **kwargs).to(like.device, like.dtype)


def _conv_options(m: nn.Module, groups: int) -> dict:
    """The keyword arguments that build a convolution like ``m`` (a transposed one too) with ``groups`` groups."""
    options = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=groups, padding_mode=m.padding_mode)
    if isinstance(m, ops.TRANSPOSED_MODULES):
        options["output_padding"] = m.output_padding
    return options


def _shrink_depthwise(m: nn.Module, k: torch.Tensor) -> nn.Module:
    """``m``, a depthwise convolution (a transposed one too: its weight ``(c, 1, *kernel)`` either way), with the
    channels ``k`` (flags) only."""
    c = int(k.sum())
    new = _uninitialised(type(m), m.weight, c, c, m.kernel_size, bias=m.bias is not None, **_conv_options(m, c))
    new.weight.data.copy_(m.weight.detach()[k])
    if m.bias is not None:
        new.bias.data.copy_(m.bias.detach()[k])
    _grad_flags_kept(m, new)
    new.train(m.training)
    return new


def _shrink_bn(m: _BN, k: torch.Tensor) -> _BN:
    new = copy.deepcopy(m)
    new.num_features = int(k.sum())
    for name in ("weight", "bias"):
        p = getattr(m, name)
        if p is not None:
            setattr(new, name, nn.Parameter(p.detach()[k].clone(), requires_grad=p.requires_grad))
    for name in ("running_mean", "running_var"):
        b = getattr(m, name)
        if b is not None:
            setattr(new, name, b[k].clone())
    return new
