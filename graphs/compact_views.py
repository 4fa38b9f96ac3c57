"""Views, reshapes and indexing in :func:`graphs.compact`: where they put a tensor's channels, and whether a
view's channel entry can follow them as they shrink."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import fx, nn

from . import shape_reads

def _flatten_like(node, module, x, out) -> bool:
    """Does ``node`` flatten [N, C, *S] into [N, C*prod(S)] without naming C?"""
    if x.dim() < 3 or out.dim() != 2 or out.shape[1] != math.prod(x.shape[1:]):
        return False
    t = node.target
    if isinstance(module, nn.Flatten):
        return module.start_dim == 1 and module.end_dim in (-1, x.dim() - 1)
    if t is torch.flatten or t == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end in (-1, x.dim() - 1)
    if t in ("view", "reshape") or t is torch.reshape:
        rest = node.args[1:] if t in ("view", "reshape") else node.args[1]
        if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
            rest = rest[0]
        return isinstance(rest, (tuple, list)) and len(rest) == 2 and _whole(rest[1]) and rest[1] == -1
    return False


def _keeps_channels(node, module, x, out) -> bool:
    """Does ``node`` reshape [N, C, *S] into [N, C, *S'] (``x.reshape(b, c, h * w)``, ``x.flatten(2)``,
    ``s.view(b, c, 1, 1)``)? Each sample's channel ``c`` keeps its values in channel ``c``."""
    if x.dim() < 2 or out.dim() < 2 or out.shape[:2] != x.shape[:2]:
        return False
    if isinstance(module, nn.Flatten):
        return module.start_dim % x.dim() >= 2
    if node.target is torch.flatten or node.target == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return _whole(start) and start % x.dim() >= 2
    return _reshape(node)


def _expand_ellipsis(idx, ndim):
    """``x[idx]``'s index as a tuple with a lone ``...`` replaced by the full slices it stands for."""
    if not isinstance(idx, tuple):
        idx = (idx,)
    dots = [k for k, i in enumerate(idx) if i is Ellipsis]
    if len(dots) != 1:
        return idx
    k = dots[0]
    fill = ndim - sum(1 for i in idx if i is not Ellipsis and i is not None)
    return idx[:k] + (slice(None),) * max(fill, 0) + idx[k + 1:]


def _getitem_channel_axis(idx, ndim, xa):
    """Where ``x[idx]`` puts ``x``'s channel axis ``xa``, when it keeps the whole batch and every
    channel (ints and slices over the other axes, ``None`` and ``...`` anywhere after the batch);
    None otherwise (advanced indexing, a channel slice, a batch index)."""
    idx = _expand_ellipsis(idx, ndim)
    if not idx or idx[0] != slice(None):
        return None
    out_axis, axis = 0, 0
    for i in idx:
        if i is None:
            out_axis += 1
            continue
        if isinstance(i, bool) or not isinstance(i, (int, slice)) or axis >= ndim:
            return None
        if axis == xa:
            return out_axis if i == slice(None) else None
        if isinstance(i, slice):
            out_axis += 1
        axis += 1
    return out_axis + (xa - axis) if xa >= axis else None  # the channel axis lies past the index


def _reshape(n) -> bool:
    return (n.op == "call_method" and n.target in ("view", "reshape")) or n.target is torch.reshape


def _reshape_sizes(n):
    """``(sizes, where)`` of a view/reshape: the target sizes and how to put new ones back
    (``where(sizes)`` gives the node's new args), or None when they are not written out plainly."""
    if n.op == "call_method":
        rest = list(n.args[1:])
        if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
            return list(rest[0]), lambda sz: (n.args[0], tuple(sz))
        return rest, lambda sz: (n.args[0], *sz)
    shape = n.args[1] if len(n.args) > 1 else n.kwargs.get("shape")
    if isinstance(shape, fx.Node) and not n.kwargs:  # torch.reshape(x, y.shape): one size value
        return [shape], lambda sz: (n.args[0], *sz)
    if not isinstance(shape, (tuple, list)) or n.kwargs:
        return None
    return list(shape), lambda sz: (n.args[0], tuple(sz))


def _reshape_entries(n, shapes) -> Optional[list]:
    """A view/reshape's sizes, one per output axis, as ``(size, index)``: ``size`` an int or a
    :class:`shape_reads.Dim`, ``index`` its place among the sizes written in (None for one taken from a size
    value, ``x.view(y.shape)``, which a rewrite cannot change); None when they are not all so."""
    got = _reshape_sizes(n)
    return None if got is None else _size_entries(got[0], shapes)


def _size_entries(sizes, shapes) -> Optional[list]:
    """Sizes as written (ints, shape-value nodes), one ``(size, index)`` per axis, as :func:`_reshape_entries`
    gives them."""
    entries = []
    for i, size in enumerate(sizes):
        value = shapes.get(size) if isinstance(size, fx.Node) else size
        if isinstance(value, tuple):
            entries.extend((v, None) for v in value)
        elif _whole(value) or isinstance(value, shape_reads.Dim):
            entries.append((value, i if _whole(size) else None))
        else:
            return None
    return entries if all(_whole(v) or isinstance(v, shape_reads.Dim) for v, _ in entries) else None


def _channel_entry(n, pos, x, env, items) -> bool:
    """Can the view/reshape ``n`` of ``x``, which keeps x's channels on its output axis ``pos``, follow them as
    they shrink? Its size there must be -1, a number written in (rewritten to the kept count), or a channel count
    read at run time: ``x``'s own, or another tensor's, whose channels are then linked to x's (kept or removed
    channel for channel, they keep the same count). The shape values it reads are then counted, unless another
    of its sizes holds a channel count."""
    entries = _reshape_entries(n, items.shapes)
    out = env[n]
    if entries is None or len(entries) != out.dim():
        return False
    size, index = entries[pos]
    if isinstance(size, shape_reads.Dim):
        z = size.count_of
        if z is None or env[z].shape[items.axis[z]] != out.shape[pos]:
            return False
        if z is not x:
            items.link(items.ids(z), items.ids(x))
    elif size != -1:
        if index is None or size != out.shape[pos]:
            return False
        n.meta["graphs_reshape_channels"] = index
    elif items.wider is not None:  # -1 holds the count only if the other sizes hold the rest at any input size:
        wx, wo = items.wider.get(x), items.wider.get(n)  # h.reshape(b, -1, 16) merges channels on a wider map
        if not (isinstance(wx, torch.Tensor) and isinstance(wo, torch.Tensor) and wo.dim() == out.dim()
                and wo.shape[pos] == wx.shape[items.axis[x]]):
            return False
    if not any(shape_reads.counts(e) for k, (e, _) in enumerate(entries) if k != pos):
        items.counted[n] = {a for a in n.all_input_nodes if a in items.shapes}
    return True


def _channels_last_like(a, env, items) -> bool:
    """Are ``a``'s channels on its last axis (a 2-D tensor's axis 1 included)?"""
    return a in items.axis and (items.axis[a] == env[a].dim() - 1)


def _whole(i) -> bool:
    """Is ``i`` an int written into the graph (not a bool, not a node)?"""
    return isinstance(i, int) and not isinstance(i, bool)
