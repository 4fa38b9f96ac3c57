"""The rules of shape ops (view, flatten, cat, getitem, pad, split, permute), evaluated exactly on the id tensors,
and of table lookups (``nn.Embedding``, ``F.embedding``, a parameter indexed by a traced index), whose tables'
columns are input nodes. As :class:`FlowShapesMixin`, which :class:`~graphs.flow.FlowProp` inherits.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx

from . import ops
from .compact_rewrite import channel_pad
from .id_tensors import _expand, _squeeze_uniform


def _indexed_axis(idx, ndim: int, picks) -> int:
    """The axis of a ``ndim``-dimensional tensor that the first of the nodes ``picks`` indexes in
    ``t[idx]`` (``t[i]``: 0; ``t[:, i]``: 1; ``t[..., i]``: the last)."""
    parts = [p for p in (idx if isinstance(idx, tuple) else (idx,)) if p is not None]
    k = next((j for j, p in enumerate(parts) if isinstance(p, fx.Node) and p in picks), 0)  # 0: inside a list
    return ndim - (len(parts) - k) if any(p is Ellipsis for p in parts[:k]) else k


# ops whose index argument (gather's and index_select's third, getitem's tensors) decides which elements they move
_PICKS = {ops.TORCH_OWN.gather: "gather", "gather": "gather", ops.TORCH_OWN.index_select: "index_select",
          "index_select": "index_select", operator.getitem: "getitem"}


class FlowShapesMixin:
    """The shape and lookup rules of :class:`~graphs.flow.FlowProp` (they read its env and flows)."""

    def _on_channel_pad(self, n):
        """:func:`graphs.compact_rewrite.channel_pad` in a compact copy traced again: evaluated on the ids, as
        ``F.pad`` is; the channels it inserts (zeros, or the constants of its ``fill``) are constants, read from no
        unit. It was an unknown op, every input channel feeding every output with a warning."""
        x = self._flow_of(n.args[0] if n.args else n.kwargs.get("x"))
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float64:
            raise ValueError("its data input carries no traced ids")
        spatial = self._real(n.args[1] if len(n.args) > 1 else n.kwargs["spatial"])
        index = self._real(n.args[2] if len(n.args) > 2 else n.kwargs["index"])
        return self._mark(channel_pad(x, list(spatial), index))  # where fill would go: 0.0, no unit

    def _on_lookup(self, n, module, result):
        """``nn.Embedding`` / ``F.embedding(idx, table)``, and ``nn.EmbeddingBag`` / ``F.embedding_bag(idx,
        table, ...)``, which sums, averages or takes the max of each bag's rows: output feature ``e`` at
        every position (every bag) is column ``e`` of the table, a node of its own (see
        :meth:`_table_ids`), fed by what the index (and a bag's offsets and per_sample_weights) is
        computed from."""
        if not isinstance(self._arg(n, 0, "input"), torch.Tensor):
            raise ValueError("its index carries no traced data")
        if module is not None:
            name, dim, reads = str(n.target), int(module.embedding_dim), (n.args, n.kwargs)
        else:
            w = n.args[1] if len(n.args) > 1 else n.kwargs.get("weight")
            name, dim = self._table_name(w), int(self._real(w).shape[-1])
            reads = (n.args[:1] + n.args[2:], {k: v for k, v in n.kwargs.items() if k != "weight"})
        ids = self._table_ids(name, (1, dim), -1, self._tensor_flows(reads))
        return ids.reshape(dim).to(torch.float64).expand(result.shape)

    def _table_name(self, w) -> str:
        """The name of a looked-up table: its module's (``emb`` for ``emb.weight``), a bare parameter's own
        name, or the node computing it."""
        if getattr(w, "op", None) == "get_attr":
            owner, _, attr = str(w.target).rpartition(".")
            return owner if attr == "weight" and owner else str(w.target)
        return getattr(w, "name", "table")

    def _table_ids(self, name, shape, axis, index_flows) -> torch.Tensor:
        """An id tensor of ``shape`` for a table looked up by an index with ids ``index_flows``: one node
        per entry along ``axis`` (kind input, op ``lookup``, named ``name``, ``name#2`` for a second
        lookup in the same table), wired from the node of all the index's ids (a junction where they
        differ; none for a constant index: a positional embedding of ``torch.arange``)."""
        vals = torch.unique(torch.cat([_squeeze_uniform(f).reshape(-1) for f in index_flows]).long())
        uses = sum(1 for g in self.book.groups  # its input nodes; the ".index" junctions are "lookup" ops too
                   if g.kind == "input" and g.op == "lookup" and g.name.split("#")[0] == name)
        label = name if uses == 0 else f"{name}#{uses + 1}"
        src = self.book.combine(torch.zeros_like(vals), vals, 1, f"{label}.index", "lookup")
        count = shape[axis]
        gid, start = self.book.new_group(label, "input", "lookup", count)
        dst = torch.arange(start, start + count)
        if int(src[0]):
            self.book.wires[gid] = (src.expand(count).clone(), dst)
        return _expand(dst, shape, axis)

    def _lookup_table(self, n, args):
        """For ``table[idx]`` / ``table.index_select(dim, idx)`` / ``table.gather(dim, idx)`` on a table that
        carries no traced data (a parameter) with a traced integer index: the table's id tensor
        (:meth:`_table_ids`, units on its last axis, or on axis 0 when the index picks along the last:
        ``w[:, idx]``, ``w.index_select(-1, idx)``), else None (an ordinary shape op)."""
        if n.target not in (operator.getitem, ops.TORCH_OWN.index_select, "index_select", ops.TORCH_OWN.gather,
                            "gather"):
            return None
        table = args[0]
        if not isinstance(table, torch.Tensor) or table.dim() < 1 or bool(table.any()):
            return None
        picks = [a for a in n.all_input_nodes[1:] if isinstance(self.env.get(a), torch.Tensor)
                 and not self.env[a].is_floating_point() and self.env[a].dtype != torch.bool
                 and isinstance(self.flows.get(a), torch.Tensor) and bool(self.flows[a].any())]
        if not picks:
            return None
        if n.target is operator.getitem:
            picked = _indexed_axis(n.args[1], table.dim(), picks)
        else:
            picked = int(self._real(n.args[1]) if len(n.args) > 1 else self._real(n.kwargs.get("dim")))
        axis = 0 if picked % table.dim() == table.dim() - 1 else -1
        return self._table_ids(self._table_name(n.args[0]), tuple(table.shape), axis, [self.flows[a] for a in picks])

    def _on_shape(self, n, module, result):
        def sub0(a):
            f = self._flow_of(a)
            return f if isinstance(f, torch.Tensor) else self._real(a)

        args = list(n.args)
        kwargs = {k: self._real(v) for k, v in n.kwargs.items()}
        if not args:
            raise ValueError("no arguments")
        table = None
        if n.target in ops.CONCAT_FUNCTIONS or n.target is torch.stack:
            # a list of tensors, or a split's tuple as it is (torch.cat(h.chunk(2, 1), 1)): its parts' ids
            if isinstance(args[0], fx.Node):
                given = self._flow_of(args[0])
                first = list(given) if isinstance(given, (tuple, list)) else [None]
            else:
                first = [sub0(a) for a in args[0]]
            if any(not isinstance(f, torch.Tensor) for f in first):
                raise ValueError("an operand carries no traced data")
            args = [first] + [self._real(a) for a in args[1:]]
        else:
            args = [sub0(args[0])] + [self._real(a) for a in args[1:]]
            table = self._lookup_table(n, args)
            if table is not None:
                args[0] = table
        if n.target is F.pad:
            # the padding's value is a constant, not a unit: padded with it, the ids would name the unit whose id it
            # is (value=1.0 wired the model's first input to every reader of the padding); 0.0 names none
            if len(args) > 3:
                args[3] = None
            kwargs.pop("value", None)
        if not isinstance(args[0], (torch.Tensor, list)) or (isinstance(args[0], torch.Tensor) and args[0].dtype != torch.float64):
            raise ValueError("its data input carries no traced ids")
        if n.op == "call_method":
            # id tensors are often broadcast views: reshape where the real op could view
            method = {"view": "reshape", "view_as": "reshape_as"}.get(n.target, n.target)
            out = getattr(args[0], method)(*args[1:], **kwargs)
        elif n.op == "call_module":
            out = module(*args, **kwargs)
        else:
            out = n.target(*args, **kwargs)
        if n.target in ops.CONCAT_FUNCTIONS:
            self._record_concat(n, args[0], args[1] if len(args) > 1 else kwargs.get("dim", 0))
        if n.target in _PICKS and args[0] is not table:
            out = self._picked_by(n, out, _PICKS[n.target])
        return self._mark(out)

    def _picked_by(self, n, out, kind):
        """``gather``/``index_select`` on traced data with an index computed from traced data (a router's
        argmax): which element is picked depends on the index, so each picked element is a junction of the
        element moved and the index entry that picked it (an index of constants, ``torch.arange``, adds
        nothing; an index of the model's inputs alone, an edge list it is given, feeds through one node of them, as
        an embedding's tokens do: one junction per entry made graphs of edge models 100 times larger). Indexing
        ``x[rows, idx]`` (``x[mask]``) is followed less closely: each element moved is a junction with one node
        of every unit its index tensors are computed from."""
        if kind == "getitem":  # x[rows, idx], x[mask]: every element reads the units the index tensors are computed from
            idx = n.args[1]
            nodes = [a for a in (idx if isinstance(idx, (tuple, list)) else (idx,)) if isinstance(a, fx.Node)]
            flows = [f for f in map(self._flow_of, nodes) if isinstance(f, torch.Tensor) and bool(f.any())]
            return self._junction(n, [out, self._mix(n, flows, out, "index")], out) if flows else out
        index = n.args[2] if len(n.args) > 2 else n.kwargs.get("index")
        f = self._flow_of(index) if isinstance(index, fx.Node) else None
        if not isinstance(f, torch.Tensor) or not bool(f.any()):
            return out
        if self._inputs_only(f):  # an index the caller gives (an edge list, labels): one node of it, as an embedding's
            return self._junction(n, [out, self._mix(n, [f], out, "index")], out)
        if kind == "index_select":  # entry j of the index picks position j along dim
            dim = self._real(n.args[1] if len(n.args) > 1 else n.kwargs["dim"]) % out.dim()
            f = f.reshape([-1 if d == dim else 1 for d in range(out.dim())])
        return self._junction(n, [out, f.expand(out.shape)], out)

    def _inputs_only(self, f) -> bool:
        """Whether the ids of ``f`` (an index's flow) are the model's input nodes alone (the index is given, not
        computed by the model: a graph's edge list, the labels)."""
        ids = torch.unique(f).long()
        ids = ids[ids != 0]
        given = torch.zeros(ids.shape, dtype=torch.bool)
        for g in self.book.groups:
            if g.kind == "input":
                given |= (ids >= g.start) & (ids < g.start + g.count)
        return bool(given.all())

    def _record_concat(self, n, parts, dim):
        if not parts or dim % parts[0].dim() != 1:
            return
        varies = lambda t: t.shape[1] > 1 and t.stride(1) != 0 and not bool((t == t.narrow(1, 0, 1)).all())
        if not any(varies(p) for p in parts):
            return  # every part holds the same units all along axis 1: positions (a class token), not channels
        given = n.args[0]
        names = ([f"{given.name}.{i}" for i in range(len(parts))] if isinstance(given, fx.Node)  # a split's tuple
                 else [a.name if isinstance(a, fx.Node) else "?" for a in given])
        self.book.concats.append(
            {"node": n.name, "parts": [(nm, self.readout(p, 1, f"{n.name}.{nm}")) for nm, p in zip(names, parts)]}
        )
