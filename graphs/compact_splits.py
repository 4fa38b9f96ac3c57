"""Splits in :func:`graphs.compact` (``chunk``, ``split``, ``tensor_split``, ``unbind``, ...): which of them it
follows, and which channels of the split tensor each part holds."""
from __future__ import annotations

import operator

import torch
from torch import fx

from . import ops, shape_reads
from .compact_views import _whole

_SPLITS = {torch.split, torch.chunk, torch.tensor_split, torch.split_with_sizes, torch.hsplit, torch.vsplit, torch.dsplit,
           torch.unbind}
_SPLIT_METHODS = {"split", "chunk", "tensor_split", "split_with_sizes", "hsplit", "vsplit", "dsplit", "unbind"}


def _unbinds(n) -> bool:
    """Is ``n`` an unbind (``torch.unbind(x, dim)``, ``x.unbind(dim)``), whose parts lack the axis it splits?"""
    return n.target is torch.unbind or (n.op == "call_method" and n.target == "unbind")


def _split_dim(n, ndim: int):
    """The axis a split node splits: hsplit/vsplit/dsplit name it (hsplit: the columns, axis 0 of a vector), the
    others take it as their third argument or ``dim``."""
    fixed = {"vsplit": 0, "hsplit": 1 if ndim > 1 else 0, "dsplit": 2}
    name = n.target if isinstance(n.target, str) else n.target.__name__
    if name in fixed:
        return fixed[name]
    if _unbinds(n):  # unbind(x, dim=0): no sizes before the axis
        return n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
    return n.args[2] if len(n.args) > 2 else n.kwargs.get("dim", 0)


def _concat_dim(n):
    return n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)


def _split(n, env, items) -> bool:
    """Record in ``items.splits`` a chunk / split / tensor_split (or hsplit, vsplit, dsplit, split_with_sizes)
    whose parts compaction can follow: every use of the parts' tuple takes one part by its index, or
    concatenates them all back along the split axis. Along the channel axis the parts must tile it (their
    sizes add up to its length); the parts' sizes are then rewritten to the channels each keeps. An unbind is
    followed along another axis than the channels', its parts (each without that axis) taken by their index or
    stacked back along it, where their channels end on axis 1 or the last of a part of two axes or more. False
    (nothing recorded) otherwise."""
    if n.target not in (_SPLITS if n.op == "call_function" else _SPLIT_METHODS if n.op == "call_method" else ()):
        return False
    x = n.args[0] if n.args else n.kwargs.get("input", n.kwargs.get("tensor"))
    parts = env.get(n)
    if x not in items.offset or not isinstance(parts, (tuple, list)):
        return False
    v, ax = env[x], items.axis[x]
    dim = _split_dim(n, v.dim())
    if not _whole(dim):
        return False
    d = dim % v.dim()
    unbind = _unbinds(n)
    if not parts or not all(isinstance(p, torch.Tensor) and p.dim() == v.dim() - unbind for p in parts):
        return False
    if unbind:  # a part's channels must lie where every op reads them: on axis 1, or the last of a sequence
        pa = ax - (d < ax)
        if d == ax or parts[0].dim() < 2 or pa not in (1, parts[0].dim() - 1):
            return False
    for u in n.users:
        index = u.target is operator.getitem and len(u.args) == 2 and u.args[0] is n and _whole(u.args[1])
        whole = (u.target in (_STACKS if unbind else ops.CONCAT_FUNCTIONS) and u.args and u.args[0] is n
                 and _whole(_concat_dim(u)) and _concat_dim(u) % v.dim() == d)
        if not (index or whole):
            return False
    if d != ax:  # rows, tokens or samples apart: every part has every channel
        if any(p.shape[ax - (unbind and d < ax)] != v.shape[ax] for p in parts):
            return False
        items.splits[n] = (x, d, None)
        return True
    sizes = [p.shape[d] for p in parts]
    if sum(sizes) != v.shape[d]:  # tensor_split with indices out of order: overlapping parts
        return False
    given = [a for a in n.all_input_nodes if a is not x]  # sizes computed from shapes: h.split([2, h.shape[1] - 2], 1)
    if any(a not in items.shapes or shape_reads.varies(items.shapes[a]) for a in given):
        return False  # they change with the input's size: the sizes compact writes in would hold at one size only
    items.splits[n] = (x, d, sizes)
    items.counted[n] = set(given)  # replaced by the kept counts where a tensor whose count they read loses channels
    return True


_STACKS = {torch.stack}  # what puts an unbind's parts back whole


def _of_split(n, items) -> bool:
    """Does ``n`` take a part of a split _split follows, or concatenate (stack) its parts whole?"""
    return ((n.target is operator.getitem or n.target in ops.CONCAT_FUNCTIONS or n.target in _STACKS)
            and bool(n.args) and isinstance(n.args[0], fx.Node) and n.args[0] in items.splits)


def _part_axis(n, items) -> int:
    """The channel axis of ``n``, a part of a split _split follows or its parts put back whole: the split tensor's,
    one less for a part of an unbind along an axis before the channels."""
    x, d, _ = items.splits[n.args[0]]
    ax = items.axis[x]
    return ax - (d < ax) if _unbinds(n.args[0]) and n.target is operator.getitem else ax
