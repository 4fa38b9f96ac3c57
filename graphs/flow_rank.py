"""The rules of ops that order or accumulate the elements along one ``dim``, evaluated exactly on the id tensors:
``topk``, ``sort``, ``argsort``, ``msort``, ``kthvalue``, ``median``/``nanmedian``/``mode`` (category ``rank``:
every result element reads every element of its slice along ``dim``) and ``cummax``, ``cummin``, ``cumsum``, ``cumprod``,
``logcumsumexp`` (category ``scan``: position ``j`` reads positions ``0..j``). As
:class:`FlowRankMixin`, which :class:`~graphs.flow.FlowProp` inherits.

Which element a top-k keeps, and where a sort puts it, depend on every element it is compared with: a top-2
router's indices (and values) read every expert's logit of their token, so every router unit feeds the experts'
pick, and none of another token's. Along an axis the units do not vary on (the positions of a sequence whose units
are its channels: keeping the top-k tokens) each channel reads only itself, and the ids pass unchanged.
"""
from __future__ import annotations

import torch

from . import ops
from .id_tensors import _squeeze_uniform

# a scan reads every prefix of every distinct slice: refused (dense guess, with a warning) past this many reads
_SCAN_READS = 20_000_000


def _index_results(n, result) -> list:
    """Per result of rank or scan node ``n``: whether it holds positions (a returned pair's ``indices``,
    ``argsort``'s result), not values."""
    if isinstance(result, tuple):
        return [i == 1 for i in range(len(result))]
    return [n.target in ("argsort", torch.argsort)]


class FlowRankMixin:
    """The ``rank`` and ``scan`` rules of :class:`~graphs.flow.FlowProp` (they read its flows and write junctions
    to its book)."""

    def _rank_dim(self, n, table):
        """The ``dim`` argument of ``n`` (an op of ``table``, :data:`graphs.ops.RANK_OPS` or ``SCAN_OPS``), None
        for the whole tensor (``median()``)."""
        name = n.target if isinstance(n.target, str) else n.target.__name__
        pos, default = table[name]
        if pos is None:
            return default
        dim = self._real(n.args[pos]) if len(n.args) > pos else self._real(n.kwargs.get("dim", default))
        if dim is not None and not isinstance(dim, int):
            raise ValueError(f"its dim {dim!r} is not an axis number")
        return dim

    def _on_rank(self, n, result, scan=False):
        """``rank``: each element of every result (values and indices) is a junction of the elements along
        ``dim`` of its slice, one per distinct set of units; ``scan``: element ``j`` along ``dim`` one of the
        elements ``0..j`` of its slice. The other axes are followed element by element."""
        x = self._flow_of(n.args[0] if n.args else n.kwargs.get("input"))
        if not isinstance(x, torch.Tensor):
            raise ValueError("no tensor input")
        outs = list(result) if isinstance(result, tuple) else [result]
        if not all(isinstance(r, torch.Tensor) for r in outs):
            raise ValueError("non-tensor result")
        dim = self._rank_dim(n, ops.SCAN_OPS if scan else ops.RANK_OPS)
        if x.dim() == 0:
            flows = [x.expand(r.shape) for r in outs]
        elif dim is None:  # median(): every element
            flows = [self._slice_ids(n, _squeeze_uniform(x).reshape(1, -1), 1).reshape(()).expand(r.shape) for r in outs]
        else:
            d = dim % x.dim()
            ids = self._scanned(n, x, d) if scan else self._ranked(n, x, d)
            flows = [self._index_ids(ids, x, d, scan) if i else ids for i in _index_results(n, result)]
            flows = [(f if r.dim() == x.dim() else f.squeeze(d)).expand(r.shape) for f, r in zip(flows, outs)]
        return type(result)(flows) if isinstance(result, tuple) else flows[0]

    def _index_ids(self, ids, x, d, scan):
        """The ids of an index result: those of the values, except where it is the same whatever the data, 0 (the
        constant): the first position of a scan (``cummax(...).indices[..., 0]``), any of a slice of one element."""
        if x.shape[d] == 1:
            return torch.zeros((), dtype=torch.float64).expand(ids.shape)
        if not scan:
            return ids
        shape = list(ids.shape)
        shape[d] = x.shape[d]
        out = ids.expand(shape).clone()
        out.narrow(d, 0, 1).zero_()
        return out

    def _slice_ids(self, n, s, d):
        """One id per slice of ``s`` along axis ``d`` (a junction of its units; slices holding the same units
        share one), shaped as ``s`` with axis ``d`` of size 1."""
        t = s.movedim(d, -1)
        rows = t.reshape(-1, t.shape[-1]).long().sort(dim=1).values  # a slice's units in any order: one set
        slices, which = torch.unique(rows, dim=0, return_inverse=True)
        S, L = slices.shape
        ids = self.book.combine(torch.arange(S).repeat_interleave(L), slices.reshape(-1), S, n.name, "rank")
        return ids[which].to(torch.float64).view(t.shape[:-1]).unsqueeze(d)

    def _ranked(self, n, x, d):
        s = _squeeze_uniform(x)
        return s if s.shape[d] == 1 else self._slice_ids(n, s, d)

    def _scanned(self, n, x, d):
        s = _squeeze_uniform(x)
        if s.shape[d] == 1:
            return s
        t = s.movedim(d, -1)
        L = t.shape[-1]
        slices, which = torch.unique(t.reshape(-1, L).long(), dim=0, return_inverse=True)
        S = slices.shape[0]
        if S * L * (L + 1) // 2 > _SCAN_READS:
            raise ValueError(f"{S} distinct slices of {L} elements along dim {d} are too many prefixes to follow")
        j, i = torch.tril_indices(L, L)  # output position j reads input position i <= j
        row = (torch.arange(S)[:, None] * L + j[None, :]).reshape(-1)
        ids = self.book.combine(row, slices[:, i].reshape(-1), S * L, n.name, "scan")
        return ids.view(S, L)[which].to(torch.float64).view(t.shape).movedim(-1, d)
