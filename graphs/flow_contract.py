"""The rule of contractions, ops that sum products over axes of their operands: ``torch.einsum`` (explicit or
implicit output, ``...``, a repeated subscript taking a diagonal), ``torch.matmul`` and ``@`` (1-D operands and
broadcast batch axes as torch reads them), ``torch.mm`` and ``torch.bmm``, and the other products of
:data:`PRODUCT_OPERANDS` (``mv``, ``dot``, ``vdot``, ``inner``, ``outer``, ``ger``, ``tensordot``; ``addmm``,
``baddbmm``, ``addbmm``, ``addmv`` and ``addr``, whose added ``input`` each output element reads at its own position,
broadcast, unless ``beta`` is 0), functions and methods. Evaluated exactly on
the id tensors, as :class:`FlowContractMixin`, which :class:`~graphs.flow.FlowProp` inherits.

Each output element reads, of every operand, the elements whose subscripts it shares with the output at its own
position, over every summed subscript: ``q @ k.transpose(-1, -2)`` at ``[b, h, i, j]`` reads row ``i`` of head ``h``'s
queries and row ``j`` of its keys, and ``attn @ v`` at ``[b, h, i, c]`` head ``h``'s scores and value channel ``c``. A
junction (op ``contraction``) where they are several units; output elements that read the same units share one. The
ids along an axis they do not vary on (the batch, a sequence's positions) are read once, so an attention written by
hand is wired per head and per value channel, as ``F.scaled_dot_product_attention`` is; the rules that close an
``nn.MultiheadAttention``'s scores (:func:`graphs.analysis.closed_gates`) need the softmax between the two products,
which a contraction does not know of, so they close nothing here.

A contraction with an operand computed from a parameter without traced data (``x @ self.w``, a weight that is no
layer's) stays an unknown op, with its warning naming the weight, which gets no synapse edges from it.
"""
from __future__ import annotations

import math
import operator
from typing import List

import torch

from .id_tensors import _squeeze_uniform

# past this many (output element, operand element) reads among the distinct output elements, a contraction is
# refused (the dense guess, with a warning): ids that vary along every axis of a large product
_CONTRACT_READS = 20_000_000
_MATMUL = {torch.matmul, operator.matmul, torch.mm, torch.bmm, "matmul", "__matmul__", "mm", "bmm"}
# the other products, by name (function or method): the names of their operands, in order; an ``add*`` op's first,
# ``input``, is added to the product (times ``beta``, the product times ``alpha``), read element by element
PRODUCT_OPERANDS = {
    "mv": ("input", "vec"), "outer": ("input", "vec2"), "ger": ("input", "vec2"), "dot": ("input", "tensor"),
    "vdot": ("input", "other"), "inner": ("input", "other"), "tensordot": ("a", "b"),
    "addmm": ("input", "mat1", "mat2"), "baddbmm": ("input", "batch1", "batch2"),
    "addbmm": ("input", "batch1", "batch2"), "addmv": ("input", "mat", "vec"), "addr": ("input", "vec1", "vec2"),
}
_PRODUCTS = {getattr(torch, name) for name in PRODUCT_OPERANDS} | set(PRODUCT_OPERANDS)
CONTRACTIONS = _MATMUL | {torch.einsum} | _PRODUCTS


def _ellipsis(n: int) -> list:
    """Labels of the ``n`` axes an ellipsis covers, named from the right, so that broadcast axes share labels."""
    return [("...", n - 1 - i) for i in range(n)]


def _subscripts(spec: str, dim: int) -> list:
    """The labels of an operand of ``dim`` axes written ``spec`` (letters, at most one ``...``)."""
    if "..." not in spec:
        labels = list(spec)
    else:
        pre, post = spec.split("...")
        labels = list(pre) + _ellipsis(dim - len(pre) - len(post)) + list(post)
    if len(labels) != dim or any(isinstance(c, str) and not c.isalpha() for c in labels):
        raise ValueError(f"its subscripts {spec!r} do not fit an operand of {dim} axes")
    return labels


def einsum_labels(eq: str, dims: List[int]):
    """(labels per operand, output labels) of einsum equation ``eq`` on operands of ``dims`` axes: the implicit
    output (no ``->``) is the ellipsis' axes, then the subscripts written once, in alphabetical order, as torch's."""
    eq = eq.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    specs = lhs.split(",")
    if len(specs) != len(dims):
        raise ValueError(f"its equation {eq!r} names {len(specs)} operands, it is given {len(dims)}")
    labels = [_subscripts(s, d) for s, d in zip(specs, dims)]
    width = max([sum(isinstance(c, tuple) for c in ls) for ls in labels] + [0])
    if arrow:
        pre, dots, post = rhs.partition("...")
        out = list(pre) + (_ellipsis(width) if dots else []) + list(post)
    else:
        letters = [c for ls in labels for c in ls if isinstance(c, str)]
        out = _ellipsis(width) + sorted(c for c in set(letters) if letters.count(c) == 1)
    return labels, out


def matmul_labels(da: int, db: int):
    """(labels of both operands, output labels) of ``torch.matmul`` on operands of ``da`` and ``db`` axes: a 1-D
    operand is a vector (its axis summed), the axes before the last two are batch axes, broadcast."""
    if da == 0 or db == 0:
        raise ValueError("matmul of a 0-dim tensor")
    a = ["k"] if da == 1 else _ellipsis(da - 2) + ["n", "k"]
    b = ["k"] if db == 1 else _ellipsis(db - 2) + ["k", "m"]
    width = max(da - 2, db - 2, 0)
    out = _ellipsis(width) + (["n"] if da > 1 else []) + (["m"] if db > 1 else [])
    return [a, b], out


def product_labels(name: str, dims: List[int], dims_arg=2):
    """(labels of the operands, output labels) of product ``name`` (a key of :data:`PRODUCT_OPERANDS`) on operands of
    ``dims`` axes, the added ``input`` of an ``add*`` op first, broadcast against the output from the right.
    ``dims_arg``: ``tensordot``'s ``dims``, a count of axes or the two lists of axes it sums."""
    add = name.startswith("add") or name == "baddbmm"
    prod = dims[1:] if add else dims
    if name in ("mv", "addmv"):
        labels, out = [["n", "k"], ["k"]], ["n"]
    elif name in ("outer", "ger", "addr"):
        labels, out = [["n"], ["m"]], ["n", "m"]
    elif name in ("dot", "vdot"):
        labels, out = [["k"], ["k"]], []
    elif name == "addmm":
        labels, out = [["n", "k"], ["k", "m"]], ["n", "m"]
    elif name in ("baddbmm", "addbmm"):
        labels, out = [["b", "n", "k"], ["b", "k", "m"]], ["b", "n", "m"] if name == "baddbmm" else ["n", "m"]
    elif name == "inner":
        if 0 in prod:  # a scalar operand: torch multiplies by it, element by element
            a, b = ([(t, i) for i in range(d)] for t, d in zip("AB", prod))
            labels, out = [a, b], a + b
        else:
            a, b = ([(t, i) for i in range(d - 1)] for t, d in zip("AB", prod))
            labels, out = [a + ["k"], b + ["k"]], a + b
    else:  # tensordot
        if isinstance(dims_arg, torch.Tensor):  # as torch reads one: a count where it holds one number, else two lists
            dims_arg = int(dims_arg.item()) if dims_arg.numel() == 1 else dims_arg.tolist()
        if isinstance(dims_arg, int):
            pairs = list(zip(range(prod[0] - dims_arg, prod[0]), range(dims_arg)))
        else:
            pairs = list(zip(*(list(d) if isinstance(d, (list, tuple)) else [d] for d in dims_arg)))
        a, b = ([(t, i) for i in range(d)] for t, d in zip("AB", prod))
        for j, (i, k) in enumerate(pairs):
            a[i % prod[0]] = b[k % prod[1]] = ("k", j)
        summed = {("k", j) for j in range(len(pairs))}
        labels, out = [a, b], [c for c in a + b if c not in summed]
    if [len(ls) for ls in labels] != list(prod):
        raise ValueError(f"operands of {list(prod)} axes where {name} takes {[len(ls) for ls in labels]}")
    if add:
        if dims[0] > len(out):
            raise ValueError(f"an added input of {dims[0]} axes to a product of {len(out)}")
        labels = [out[len(out) - dims[0]:]] + labels
    return labels, out


def _diagonals(t: torch.Tensor, labels: list):
    """``t`` with each subscript it repeats (``'ii->i'``) taken along its diagonal, and its labels then."""
    while len(set(labels)) < len(labels):
        first = next(c for c in labels if labels.count(c) > 1)
        i = labels.index(first)
        j = labels.index(first, i + 1)
        t = t.diagonal(0, i, j)  # the diagonal becomes the last axis
        labels = [c for k, c in enumerate(labels) if k not in (i, j)] + [first]
    return t, labels


class FlowContractMixin:
    """The contraction rule of :class:`~graphs.flow.FlowProp` (it reads its flows and writes junctions to its
    book)."""

    def _contraction_operands(self, n):
        """(id tensors of the operands, their labels, the output labels) of contraction ``n``."""
        if n.target is torch.einsum:
            eq = n.args[0] if n.args else n.kwargs.get("equation")
            rest = list(n.args[1:])
            if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
                rest = list(rest[0])  # torch.einsum(eq, [a, b])
            if not isinstance(eq, str) or not rest:
                raise ValueError("einsum in sublist form (operand, [subscripts], ...) is not followed")
        elif n.target in _PRODUCTS:
            return self._product_operands(n)
        else:
            rest = list(n.args[:2]) + [n.kwargs[k] for k in ("input", "other", "mat2") if k in n.kwargs]
            if len(rest) != 2:
                raise ValueError(f"{len(rest)} operands where a matrix product takes 2")
        flows = self._operand_flows(rest)
        dims = [f.dim() for f in flows]
        labels, out = einsum_labels(eq, dims) if n.target is torch.einsum else matmul_labels(*dims)
        return flows, labels, out

    def _operand_flows(self, operands) -> list:
        """The id tensors of ``operands`` (constants where made from no traced data)."""
        flows = []
        for a in operands:
            f = self._flow_of(a)
            if not isinstance(f, torch.Tensor):
                real = self._real(a)
                if not isinstance(real, torch.Tensor):
                    raise ValueError(f"an operand {real!r} is not a tensor")
                f = torch.zeros((), dtype=torch.float64).expand(real.shape)  # made from no traced data
            flows.append(f)
        return flows

    def _product_operands(self, n):
        """:meth:`_contraction_operands` of a product of :data:`PRODUCT_OPERANDS` (``torch.addmm``, ``x.mv(v)``, ...):
        an ``add*`` op's ``input`` is left out where ``beta`` is 0 (torch ignores it then, NaN too), its product
        where ``alpha`` is 0."""
        name = n.target if isinstance(n.target, str) else n.target.__name__
        names = PRODUCT_OPERANDS[name]
        if len(n.args) > len(names) and name != "tensordot":
            raise ValueError(f"{name} given {len(n.args)} positional operands")
        rest = [n.args[i] if i < len(n.args) else n.kwargs[k] for i, k in enumerate(names)]
        dims_arg = self._real(n.args[2] if len(n.args) > 2 else n.kwargs.get("dims", 2)) if name == "tensordot" else 2
        flows = self._operand_flows(rest)
        labels, out = product_labels(name, [f.dim() for f in flows], dims_arg)
        if len(names) == 3:  # beta * input + alpha * (product)
            keep = [self._real(n.kwargs.get("beta", 1)) != 0] + [self._real(n.kwargs.get("alpha", 1)) != 0] * 2
            flows, labels = [f for f, k in zip(flows, keep) if k], [ls for ls, k in zip(labels, keep) if k]
        return flows, labels, out

    def _on_contraction(self, n, result):
        """Each output element a junction of the operand elements its sum reads (see the module docstring)."""
        if not isinstance(result, torch.Tensor):
            raise ValueError("non-tensor result")
        flows, labels, out = self._contraction_operands(n)
        if not flows:  # torch.addmm(..., beta=0, alpha=0): zeros
            return torch.zeros((), dtype=torch.float64).expand(result.shape)
        pairs = [_diagonals(f, ls) for f, ls in zip(flows, labels)]
        sizes, squeezed = {}, []  # each label's size in the result; each operand shrunk where its ids are uniform
        for t, ls in pairs:
            for c, s in zip(ls, t.shape):
                if s != 1:
                    sizes[c] = s
            squeezed.append(_squeeze_uniform(t))
        if tuple(result.shape) != tuple(sizes.get(c, 1) for c in out):
            raise ValueError(f"its result's shape {tuple(result.shape)} is not that of its subscripts")
        shape = [max([s.shape[ls.index(c)] for s, (_, ls) in zip(squeezed, pairs) if c in ls] + [1]) for c in out]
        rows = math.prod(shape)
        width = sum(math.prod(s.shape[ls.index(c)] for c in ls if c not in out) for s, (_, ls) in zip(squeezed, pairs))
        if rows * width > _CONTRACT_READS:  # counted before they are laid out: rows x width ids would not fit in memory
            raise ValueError(f"{rows} distinct output elements reading {width} elements each are too many reads to "
                             "follow")
        parts = []
        for s, (_, ls) in zip(squeezed, pairs):
            mine = [c for c in out if c in ls]
            summed = [c for c in ls if c not in out]
            t = s.permute([ls.index(c) for c in mine + summed])
            t = t.reshape([t.shape[mine.index(c)] if c in ls else 1 for c in out] + list(t.shape[len(mine):]))
            t = t.expand(shape + list(t.shape[len(out):]))
            parts.append(t.reshape(rows, -1))
        feeds = torch.cat(parts, 1).long()
        combos, which = torch.unique(feeds.sort(dim=1).values, dim=0, return_inverse=True)
        S, L = combos.shape
        ids = self.book.combine(torch.arange(S).repeat_interleave(L), combos.reshape(-1), S, n.name, "contraction")
        return ids[which].to(torch.float64).view(shape).expand(result.shape)
