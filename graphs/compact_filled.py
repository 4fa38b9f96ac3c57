"""Tensors made filled with one value (``torch.zeros_like(x)``, ``x.new_zeros(y.size())``) in
:func:`graphs.compact`: whose channels they hold, which then go with theirs."""
from __future__ import annotations

from typing import Optional

import torch
from torch import fx

from . import shape_reads
from .compact_views import _size_entries

_FILLED_METHODS = {"new_zeros": 1, "new_ones": 1, "new_empty": 1, "new_full": 1}  # -> where the sizes start
_FILLED_FUNCTIONS = {torch.zeros: 0, torch.ones: 0, torch.empty: 0, torch.full: 0}
_FILLED_LIKE = {torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like}  # not the random ones


def _filled_sizes(n) -> Optional[list]:
    """The sizes of a tensor made filled with one value (``x.new_zeros(x.size())``, ``x.new_ones(b, c, h, w)``,
    ``torch.zeros(x.shape)``, ``torch.full(size, v)``) as written, one per argument; None for another node."""
    if n.op == "call_method" and n.target in _FILLED_METHODS:
        start = _FILLED_METHODS[n.target]
    elif n.op == "call_function" and n.target in _FILLED_FUNCTIONS:
        start = _FILLED_FUNCTIONS[n.target]
    else:
        return None
    if "size" in n.kwargs:
        sizes = [n.kwargs["size"]]
    else:
        sizes = list(n.args[start:start + 1] if n.target in ("new_full", torch.full) else n.args[start:])
    return list(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else sizes


def _filled_channel_axis(n, env, items) -> Optional[int]:
    """Where a tensor made filled from sizes holds channels: the one size that is a tensor's channel count read at
    run time (that tensor's channels then go with its), on axis 1 or the last; None when none does so."""
    sizes = _filled_sizes(n)
    entries = None if sizes is None else _size_entries(sizes, items.shapes)
    if entries is None or len(entries) != env[n].dim():
        return None
    at = [k for k, (e, _) in enumerate(entries) if shape_reads.counts(e)]
    if len(at) != 1 or at[0] not in (1, env[n].dim() - 1):
        return None
    z = entries[at[0]][0].count_of
    return at[0] if z is not None and z in items.axis and env[z].shape[items.axis[z]] == env[n].shape[at[0]] else None


def _link_filled(n, env, items) -> bool:
    """Link the channels of a tensor made filled with one value to those it is sized after: ``torch.zeros_like(x)``'s
    to x's, ``x.new_zeros(y.size())``'s to the tensor whose channel count it reads (see
    :func:`_filled_channel_axis`), whose count it then follows. False for another node."""
    if n.op == "call_function" and n.target in _FILLED_LIKE:
        x = n.args[0] if n.args else n.kwargs.get("input")
        ok = (x in items.offset and env[x].shape == env[n].shape and items.axis[x] == items.axis[n]
              and "size" not in n.kwargs)
        if ok:
            items.link(items.ids(x), items.ids(n))
        return ok
    sizes = _filled_sizes(n)
    if sizes is None or _filled_channel_axis(n, env, items) != items.axis[n]:
        return False
    z = _size_entries(sizes, items.shapes)[items.axis[n]][0].count_of
    items.link(items.ids(z), items.ids(n))
    read = []  # the sizes' shape values only: a channel count as the fill value (torch.full(s, c)) stays counted
    fx.node.map_arg(sizes, lambda a: read.append(a) or a)
    items.counted[n] = {a for a in read if a in items.shapes}
    return True
