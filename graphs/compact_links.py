"""How channels pass through each op in :func:`graphs.compact`: the channel axis of a node's output, and the links
between the items of its inputs and its output (elementwise ops, broadcasts, reductions, concatenations, splits,
views, indexing, channel padding)."""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .compact_filled import _FILLED_LIKE, _filled_channel_axis, _filled_sizes, _link_filled
from .compact_items import _tensor_args
from .compact_layers import _BN
from .compact_probe import _node_consts, _product
from .compact_splits import _of_split, _part_axis, _unbinds
from .compact_views import (_channel_entry, _channels_last_like, _flatten_like, _getitem_channel_axis,
                            _keeps_channels, _reshape, _whole)

def _out_axis(n, cat, module, args, env, items) -> int:
    """The channel axis of ``n``'s output: the last one for a sequence Linear and for what keeps its
    layout (see the module docstring; :func:`_link` decides whether the channels really pass), else 1."""
    out = env[n]
    if out.dim() <= 2:
        return 1
    last = out.dim() - 1
    if cat == "weighted":
        return last if isinstance(module, nn.Linear) else 1
    t = n.target
    if _of_split(n, items):  # a part of a split, or its parts concatenated whole: the split tensor's layout
        return _part_axis(n, items)
    if _filled_sizes(n) is not None:  # x.new_zeros(y.size()): where it holds y's channel count
        return _filled_channel_axis(n, env, items) or 1
    if t in _FILLED_LIKE and args and env[args[0]].shape == out.shape:  # torch.zeros_like(x): x's layout
        return items.axis[args[0]]
    if t is operator.getitem and args and isinstance(env[args[0]], torch.Tensor) and args[0] in items.axis:
        oa = _getitem_channel_axis(n.args[1], env[args[0]].dim(), items.axis[args[0]])
        return oa if oa == last else 1  # channels on axis 1 or the last, as everywhere
    if cat == "shape" and _reshape(n) and args and _channels_last_like(args[0], env, items) \
            and env[args[0]].shape[-1] == out.shape[-1]:
        return last  # [N, T, C] <-> [N*T, C] and the like: the last axis is untouched
    if cat == "broadcast":  # the layout of an argument of the output's shape (others broadcast into it)
        args = [a for a in args if env[a].dim() == out.dim() and env[a].shape[-1] == out.shape[-1]] or args
    if not args or not items.last(args[0], env):
        return 1
    x = env[args[0]]
    if cat == "pointwise" and ops.elementwise(n, module) and x.shape == out.shape:
        return last
    if cat in ("broadcast", "reduce") and x.shape[-1] == out.shape[-1]:
        return last
    if cat == "shape" and (t in ops.CONCAT_FUNCTIONS or t == "contiguous"):
        return last
    return 1


def _constant_factor(n, a, args, env, items):
    """The channels (flags) of ``a``, a factor of the product ``n`` on axis 1 (a squeeze-excitation gate or what it
    scales, a GLU's half over channels), that the probe found constant, where there are any; else None. Such a
    channel is not linked to the product's: it may go while the product's stays (the rewrite fills the constant
    back in, :func:`graphs.compact_rewrite.channel_pad`), but stays wherever the product's does not go."""
    if not _product(n) or items.axis[n] != 1 or items.axis[a] != 1 or len(set(args)) != 2:
        return None
    const = ~torch.isnan(_node_consts(a, env, items.wider, 1))
    return const if bool(const.any()) else None


def _link(n, cat, module, args, env, items) -> bool:
    """Link the channel items ``n`` passes through; False when ``n`` must pin its neighbours."""
    out = env[n]
    ax = items.axis[n]
    if n.target in _FILLED_LIKE or _filled_sizes(n) is not None:
        return _link_filled(n, env, items)

    def same_layout(a) -> bool:  # channel for channel: same rank, same channel axis, same channel count
        v = env[a]
        return v.dim() == out.dim() and items.axis[a] == ax and v.shape[ax] == out.shape[ax]

    others = [a for a in _tensor_args(n) if a not in items.offset]
    if any(isinstance(env.get(a), torch.Tensor) and env[a].numel() > 1 for a in others):
        return False  # a 1-D tensor (clamp(x, max=cap), x * gamma) may run along the channel axis
    if cat == "pointwise":
        if not args or not same_layout(args[0]):
            return False
        if items.last(n, env) and not ops.elementwise(n, module):
            return False  # pooling, batch norm, padding or resampling act along axis 1, not the last
        if module is not None and not isinstance(module, _BN) and (any(True for _ in module.parameters())
                                                                    or any(True for _ in module.buffers())):
            return False  # per-channel parameters or state (InstanceNorm's running statistics) we do not know how to slice
        if module is None and n.target is F.batch_norm:
            return False
        items.link(items.ids(args[0]), items.ids(n))
        return all(env[a].dim() < 2 or a is args[0] for a in args)
    if cat == "broadcast":
        ones = [a for a in args if env[a].dim() == out.dim() and items.axis[a] == ax and env[a].shape[ax] == 1
                and out.shape[ax] > 1]  # one value for every channel (a per-token or per-pixel gate)
        if any(not same_layout(a) for a in args if a not in ones):
            return False
        for a in args:
            if a in ones:
                items.pin(a)
                continue
            ids, out_ids = items.ids(a), items.ids(n)
            const = _constant_factor(n, a, args, env, items)
            if const is not None:  # a product reads a constant channel as a reader folds one: it fills it back in
                items.factors.append((n, a))
                ids, out_ids = ids[~const], out_ids[~const]
            items.link(ids, out_ids)
        return True
    if cat == "reduce":
        x = env[args[0]]
        xa = items.axis[args[0]]
        if out.dim() < 2 or out.shape[ax] != x.shape[xa]:
            return False
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        if not dims or any(d % x.dim() in (0, xa) for d in dims):
            return False
        if xa != 1 and not items.last(n, env) and out.dim() >= 3:
            return False
        items.link(items.ids(args[0]), items.ids(n))
        return True
    if cat != "shape":
        return False
    t = n.target
    if _of_split(n, items):
        x, _, sizes = items.splits[n.args[0]]
        part = _unbinds(n.args[0]) and t is operator.getitem  # one axis fewer
        if items.axis[n] != _part_axis(n, items) or env[n].dim() != env[x].dim() - part:
            return False
        if t is operator.getitem and sizes is not None:  # part k's channel j is x's channel offset_k + j
            k = n.args[1] % len(sizes)
            items.link(items.offset[x] + sum(sizes[:k]) + torch.arange(sizes[k]), items.ids(n))
        else:  # every channel of x, in order: a part along another axis, or the parts concatenated back
            items.link(items.ids(x), items.ids(n))
        return True
    if t in ops.CONCAT_FUNCTIONS:
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        seq = n.args[0] if n.args else n.kwargs.get("tensors")  # (torch.cat(tensors=[a, b], dim=1): an IndexError)
        if not isinstance(seq, (tuple, list)):
            return False  # a tuple of parts _split could not follow
        parts = list(seq)
        if not all(p in items.offset and env[p].dim() == out.dim() and items.axis[p] == ax for p in parts):
            return False
        if dim % out.dim() == ax:
            off = items.offset[n]
            for p in parts:
                c = items.count[p]
                items.link(items.ids(p), torch.arange(off, off + c))
                off += c
            return True
        if dim % out.dim() == 0:
            return False
        for p in parts:
            items.link(items.ids(p), items.ids(n))
        return True
    x = env[args[0]] if args else None
    if x is None:
        return False
    if t == "contiguous" or (_reshape(n) and _channels_last_like(args[0], env, items) and ax == out.dim() - 1):
        if env[args[0]].shape[items.axis[args[0]]] != out.shape[ax] or (
                t != "contiguous" and not _channel_entry(n, ax, args[0], env, items)):
            return False
        items.link(items.ids(args[0]), items.ids(n))
        return True
    if t in ("expand", "expand_as") and all(same_layout(a) for a in args) and out.dim() == x.dim() and (
            t == "expand_as" or _channel_entry(n, ax, args[0], env, items)):  # a gate spread over the map
        for a in args:  # expand_as(h): h's count is the output's, so h's channels go with them too
            items.link(items.ids(a), items.ids(n))
        return True
    if t is operator.getitem and isinstance(x, torch.Tensor):
        xa = items.axis[args[0]]
        ok = _getitem_channel_axis(n.args[1], x.dim(), xa) == ax and out.shape[ax] == x.shape[xa]
        if ok:
            items.link(items.ids(args[0]), items.ids(n))
        return ok
    if items.axis[args[0]] != 1:
        return False  # flattening or padding a channels-last tensor reaches its channels
    if _flatten_like(n, module, x, out):
        hw = out.shape[1] // x.shape[1]
        items.link(items.ids(args[0]).repeat_interleave(hw), items.ids(n))
        return True
    if _keeps_channels(n, module, x, out) and (not _reshape(n) or _channel_entry(n, 1, args[0], env, items)):
        items.link(items.ids(args[0]), items.ids(n))
        return True
    if t is F.pad:
        pad = n.args[1] if len(n.args) > 1 else n.kwargs.get("pad")
        mode = n.kwargs.get("mode", n.args[2] if len(n.args) > 2 else "constant")
        value = n.kwargs.get("value", n.args[3] if len(n.args) > 3 else None)
        if mode != "constant" or (value not in (None, 0, 0.0)) or not isinstance(pad, (tuple, list)):
            return False
        pad = list(pad)
        nsp = 2 * (x.dim() - 2)
        if len(pad) > nsp + 2 or not all(_whole(p) for p in pad[nsp:]):
            return False  # channels padded by a computed amount: compact writes the amounts it keeps in
        left = pad[nsp] if len(pad) > nsp else 0
        items.link(items.ids(args[0]), items.offset[n] + left + torch.arange(x.shape[1]))
        n.meta["graphs_channel_pad"] = (tuple(pad[:nsp]), left, x.shape[1])
        return True
    return False
