"""Shape reads in a traced graph, for :func:`graphs.compact`: which values hold a channel count.

fx traces ``x.shape``, ``x.size()``, ``x.size(3)``, ``b, c, h, w = x.shape`` and arithmetic on them as nodes
of the graph, and the compacted GraphModule recomputes them at run time from the tensors it then holds. Compaction
changes channel counts only, so a shape value matters only where it holds one: ``out.size(0)``, ``h.shape[-1]``,
``x.shape[2:]`` of an NCHW tensor or ``x.shape[:-1]`` of an ``[N, T, C]`` sequence hold none and may go anywhere;
a value that holds a count is safe only where compact rewrites its use (the channel entry of a view, the sizes of
a split along the channels) and elsewhere keeps the channels it counts.

A shape value is a :class:`Dim` (one number), an int written into the graph, or a tuple of them (a ``torch.Size``,
a slice of one, a concatenation with written sizes).
"""
from __future__ import annotations

import builtins
import operator
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import fx


@dataclass(frozen=True)
class Dim:
    """What one traced number depends on. ``counts``: the tensors whose channel count it depends on; ``varies``:
    whether it may change with the input's size (a batch, spatial or token extent); ``count_of``: the tensor whose
    channel count it is, exactly (``x.shape[1]`` of an NCHW tensor), else None. (Not a tuple: a tuple is a size.)"""
    counts: frozenset = frozenset()
    varies: bool = False
    count_of: Optional[fx.Node] = None


FIXED = Dim()  # the rank, a dtype or device, a number written in
_FIXED_ATTRS = {"ndim", "dtype", "device", "is_cuda", "layout"}
_FIXED_METHODS = {"dim", "ndimension", "get_device"}
_PLAIN = (int, float, bool, torch.Size, torch.device, torch.dtype)


def counts(value) -> frozenset:
    """The tensors whose channel count a shape value depends on."""
    if isinstance(value, Dim):
        return value.counts
    if isinstance(value, tuple):
        return frozenset().union(*(counts(v) for v in value))
    return frozenset()


def varies(value) -> bool:
    """Whether a shape value may change with the input's size."""
    if isinstance(value, Dim):
        return value.varies
    return isinstance(value, tuple) and any(varies(v) for v in value)


def _scalar(value) -> Dim:
    """A shape value as one number: what it depends on, whatever arithmetic made it."""
    return Dim(counts(value), varies(value))


def _of(arg, shapes: Dict[fx.Node, object]):
    """The shape value of an argument: a node's recorded one, a number written in, a tuple of either; None for
    anything else (a tensor, a node that is no shape value)."""
    if isinstance(arg, fx.Node):
        return shapes.get(arg)
    if isinstance(arg, bool) or not isinstance(arg, _PLAIN + (tuple, list, slice, type(None), str)):
        return None
    if isinstance(arg, (tuple, list)):
        parts = [_of(a, shapes) for a in arg]
        return None if any(p is None for p in parts) else tuple(parts)
    return arg


def _plain(value) -> bool:
    """Is a node's traced value a number, a size, a dtype or device, or a tuple of them (no tensor)?"""
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def _axes(x: fx.Node, env, axis: Dict[fx.Node, int]) -> tuple:
    """``x.shape`` as shape values: its channel axis holds its channel count; every other axis may vary."""
    t = env[x]
    return tuple(Dim(frozenset({x}), False, x) if x in axis and d == axis[x] else Dim(varies=True)
                 for d in range(t.dim()))


def value(n: fx.Node, env, axis: Dict[fx.Node, int], shapes: Dict[fx.Node, object]):
    """``n``'s shape value when ``n`` reads a tensor's shape (``x.shape``, ``x.size(d)``, ``x.dim()``,
    ``x.numel()``, its dtype or device) or computes a number from such values; None for any other node.
    ``axis``: the channel axis of each tensor compact follows (others' every axis may vary); ``shapes``: the
    shape values of earlier nodes."""
    if n.op not in ("call_function", "call_method") or not n.args or not _plain(env.get(n)):
        return None
    x, t = n.args[0], n.target
    read = isinstance(x, fx.Node) and isinstance(env.get(x), torch.Tensor)
    if read and t is builtins.getattr and len(n.args) == 2:
        if n.args[1] == "shape":
            return _axes(x, env, axis)
        return FIXED if n.args[1] in _FIXED_ATTRS else None
    if read and n.op == "call_method" and t in _FIXED_METHODS:
        return FIXED
    if read and n.op == "call_method" and t == "size":
        d = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        whole = _axes(x, env, axis)
        k = env.get(d) if isinstance(d, fx.Node) else d
        if d is None or not isinstance(k, int):
            return whole if d is None else None
        one = whole[k % len(whole)]
        extra = counts(shapes.get(d)) if isinstance(d, fx.Node) else frozenset()  # a dim computed from a count
        return Dim(one.counts | extra, one.varies, one.count_of if not extra else None)
    if read and ((n.op == "call_method" and t in ("numel", "nelement")) or t is torch.numel):
        return Dim(frozenset({x}) if x in axis else frozenset(), True)
    if any(a not in shapes for a in n.all_input_nodes):
        return None  # reads a tensor's data, an input or something else compact does not follow
    args = [_of(a, shapes) for a in n.args]
    if t is operator.getitem and isinstance(args[0], tuple) and isinstance(n.args[1], (int, slice)):
        return args[0][n.args[1]]
    if t is operator.add and all(isinstance(a, tuple) for a in args) and len(args) == 2:
        return args[0] + args[1]  # x.shape[:-1] + (4, -1)
    every = args + [_of(v, shapes) for v in n.kwargs.values()]
    return _scalar(tuple(v for v in every if isinstance(v, (Dim, tuple))))
