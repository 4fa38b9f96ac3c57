"""The rules of the layers that hold synapses: ``nn.Linear`` and ``F.linear`` on a Linear's weight, convolutions
(transposed ones too), the matrices of recurrent layers and cells; each call of a layer is a group of units, a
module called again a layer of its own (``#k``). As :class:`FlowLayersMixin`, which :class:`~graphs.flow.FlowProp`
inherits.
"""
from __future__ import annotations

from typing import List

import torch
from torch import fx, nn

from . import ops
from .folded import FoldedConv
from .id_tensors import _expand
from .trace_types import InputError, LayerFlow
from adaptive.discovery import linear_types, transposed_shape
from adaptive.warn import warn_user


class FlowLayersMixin:
    """The layer rules of :class:`~graphs.flow.FlowProp` (they read its flows and write layers to its book)."""

    def _on_linear(self, n, result):
        """``F.linear(x, self.fc.weight, ...)``: the call of the ``nn.Linear`` owning the weight (see
        :func:`ops.linear_owner`); any other weight: unknown, the warning saying why."""
        owner, why = ops.linear_owner(n, self.root)
        if owner is None:
            return self._on_unknown(n, result, f": {why}")
        return self._on_weighted(n, self.root.get_submodule(owner), result, owner)

    def _on_weighted(self, n, module, result, name=None):
        if isinstance(module, FoldedConv):  # its convolution's call: the folded term adds a constant, no edge
            module, name = module.conv, f"{n.target}.conv"
        x = self.flows.get(n.args[0] if n.args else n.kwargs.get("input"))
        axis = -1 if isinstance(module, linear_types()) else 1
        w, groups = module.weight, int(getattr(module, "groups", 1))
        transposed = isinstance(module, ops.TRANSPOSED_MODULES)
        # (out, in/groups, *kernel); a transposed convolution stores (in, out/groups, *kernel)
        shape = transposed_shape(w.shape, groups) if transposed else tuple(w.shape)
        if not isinstance(x, torch.Tensor):
            raise ValueError("its input carries no traced data")
        name = str(n.target) if name is None else name
        param = f"{name}.weight" if name else "weight"  # F.linear(x, self.weight) in the model itself
        label = self._call_label(name, param)
        in_src = self.readout(x, axis, f"{label}.input")
        if in_src.numel() != shape[1] * groups:  # a batched input's axis 1 (a Linear's last) holds them all
            raise InputError(f"{name} reads {in_src.numel()} input units on axis {axis} of its input "
                             f"{tuple(x.shape)} but its weight expects {shape[1] * groups}: graphs needs a batch "
                             "dimension first; is example_input one sample without it? (pass x.unsqueeze(0))")
        lid = len(self.book.layers)
        gid, start = self.book.new_group(label, "layer", type(module).__name__, shape[0], layer=lid)
        kind = "linear" if isinstance(module, linear_types()) else f"conv{'transpose' if transposed else ''}{w.dim() - 2}d"
        self.book.layers.append(LayerFlow(label, param, gid, kind, shape, groups, in_src, n.name,
                                          transposed=transposed))
        ids = torch.arange(start, start + shape[0])
        return _expand(ids, result.shape, axis)

    def _residual(self, a, b, name):
        """A junction per channel summing ``a`` and ``b`` (a residual connection)."""
        E = a.numel()
        return self.book.combine(torch.arange(E).repeat(2), torch.cat([a, b]), E, name, "add")

    def _on_recurrent(self, n, module, result):
        """``nn.RNN``/``nn.LSTM``/``nn.GRU``, one time step unrolled. For each layer and direction:
        ``weight_ih`` units (one per gate row) read the layer's input; ``weight_hh`` units read
        *state* nodes (kind input) that hold the previous step's output of this layer, wired from
        the initial state ``h0`` when the call passes one; gate ``r`` is a junction of the two,
        hidden unit ``j`` a junction of its gates (rows ``j``, ``H + j``, ...) and of ``c0[j]`` for an
        LSTM given one; an LSTM's ``weight_hr`` projects the hidden units. The layer's output units
        feed the next layer and, through *recurrent* back edges, its own state nodes (so a unit that
        reaches the output only at a later step is not counted dead)."""
        name = str(n.target)
        x = self._arg(n, 0, "input")
        if not isinstance(x, torch.Tensor):
            raise ValueError("its input carries no traced data (a PackedSequence is not followed)")
        hx = self._arg(n, 1, "hx")
        h0, c0 = (hx if isinstance(hx, (tuple, list)) else (hx, None))
        G = {"LSTM": 4, "GRU": 3}.get(module.mode, 1)
        H, P = int(module.hidden_size), int(getattr(module, "proj_size", 0) or 0)
        R = P or H
        dirs = ["", "_reverse"] if module.bidirectional else [""]
        src = self.readout(x, -1, f"{name}.input")
        finals, cells = [], []
        for k in range(module.num_layers):
            outs = []
            for di, sfx in enumerate(dirs):
                tag, i = f"{name}.l{k}{sfx}", k * len(dirs) + di
                ih = self._matrix_layer(module, name, f"weight_ih_l{k}{sfx}", f"{tag}.ih", src, n.name)
                sg, s0 = self.book.new_group(f"{tag}.state", "input", "state", R)
                state = torch.arange(s0, s0 + R)
                if isinstance(h0, torch.Tensor):  # the initial state comes from these units
                    init = self.readout(h0[i], -1, f"{tag}.h0")
                    keep = init != 0
                    self.book.wires[sg] = (init[keep], state[keep])
                hh = self._matrix_layer(module, name, f"weight_hh_l{k}{sfx}", f"{tag}.hh", state, n.name)
                gates = self._residual(ih, hh, f"{tag}.gates")
                rows, feeds = torch.arange(H).repeat(G), gates
                if isinstance(c0, torch.Tensor):  # an LSTM's initial cell state feeds the hidden units
                    rows, feeds = torch.cat([rows, torch.arange(H)]), torch.cat([feeds, self.readout(c0[i], -1, f"{tag}.c0")])
                hidden = self.book.combine(rows, feeds, H, f"{tag}.hidden", "gates")
                out = self._matrix_layer(module, name, f"weight_hr_l{k}{sfx}", f"{tag}.hr", hidden, n.name) if P else hidden
                self.book.recurrent[sg] = (out.clone(), state)
                outs.append(out)
                finals.append(out)
                cells.append(hidden)
            src = torch.cat(outs)
        out_flow = _expand(src, result[0].shape, -1)

        def state_flow(ids, like):
            t = torch.stack(ids).to(torch.float64)  # [layers * directions, units]
            return (t.unsqueeze(1) if like.dim() == 3 else t).expand(like.shape)

        h = result[1]
        if isinstance(h, (tuple, list)):  # LSTM: (h_n, c_n)
            return (out_flow, (state_flow(finals, h[0]), state_flow(cells, h[1])))
        return (out_flow, state_flow(finals, h))

    def _on_cell(self, n, module, result):
        """``nn.RNNCell``/``nn.LSTMCell``/``nn.GRUCell``: one step of a loop the model writes itself (fx
        unrolls it, so each call is a layer of its own, ``NAME.ih#k`` from the second on, sharing the
        weights). ``weight_ih`` units (one per gate row) read the input, ``weight_hh`` units the state
        the call is given (the constant node where it is given none: zeros); gate row ``r`` is a junction
        of the two. Hidden unit ``j`` is a junction of its gate rows (``j``, ``H + j``, ...) and of what
        reaches it without a matrix: a GRU's ``h[j]`` (``z * h``); an LSTM's new cell state ``c[j]`` reads
        its gates i, g, f and the old ``c[j]`` (not f where that ``c[j]`` is constant, given as zeros or not
        given: ``f * 0``), and the new ``h[j]`` reads the new ``c[j]`` and gate o. A bias-free GRU's gate r
        passes nothing where the state is constant (``r * (W_hn h)``, ``h`` zeros)."""
        name = str(n.target)
        x = self._arg(n, 0, "input")
        if not isinstance(x, torch.Tensor):
            raise ValueError("its input carries no traced data")
        hx = self._arg(n, 1, "hx")
        h, c = hx if isinstance(hx, (tuple, list)) else (hx, None)
        H, j = int(module.hidden_size), torch.arange(int(module.hidden_size))
        state = self.readout(h, -1, f"{name}.h") if isinstance(h, torch.Tensor) else torch.zeros(H, dtype=torch.long)
        ih = self._matrix_layer(module, name, "weight_ih", f"{name}.ih", self.readout(x, -1, f"{name}.input"), n.name)
        hh = self._matrix_layer(module, name, "weight_hh", f"{name}.hh", state, n.name)
        gates = self._residual(ih, hh, f"{name}.gates")
        if isinstance(module, nn.LSTMCell):
            i, f, g, o = gates.view(4, H)
            old = self.readout(c, -1, f"{name}.c") if isinstance(c, torch.Tensor) else torch.zeros(H, dtype=torch.long)
            parts = [i, g, torch.where(old != 0, f, 0), old]  # f * c: nothing where the old c[j] is constant (zeros)
            cell = self.book.combine(j.repeat(4), torch.cat(parts), H, f"{name}.cell", "gates")
            hidden = self.book.combine(j.repeat(2), torch.cat([o, cell]), H, f"{name}.hidden", "gates")
            return (_expand(hidden, result[0].shape, -1), _expand(cell, result[1].shape, -1))
        G = 3 if isinstance(module, nn.GRUCell) else 1
        if G == 3 and module.bias_hh is None and not bool(state.any()):  # r * (W_hn h + 0) with h constant: 0
            gates = torch.cat([torch.zeros(H, dtype=gates.dtype), gates[H:]])
        feeds = torch.cat([gates, state]) if G == 3 else gates  # a GRU's h' = (1 - z) * n + z * h
        hidden = self.book.combine(j.repeat(G + (G == 3)), feeds, H, f"{name}.hidden", "gates")
        return _expand(hidden, result.shape, -1)

    def _matrix_layer(self, module, owner, attr, label, in_src, node_name, rows=None) -> torch.Tensor:
        """A layer of units for the matrix ``module.<attr>`` (its ``rows`` only, when given; rows =
        units) reading ``in_src``; returns the units' ids. A matrix used again (its module called once
        more) is a layer again, labelled ``label#k`` (:meth:`_call_label`)."""
        w = getattr(module, attr)
        if in_src.numel() != w.shape[1]:
            raise ValueError(f"{label} reads {in_src.numel()} units but {attr} expects {w.shape[1]}")
        param = f"{owner}.{attr}"
        label = self._call_label(label, param, rows)
        out = int(w.shape[0]) if rows is None else rows[1] - rows[0]
        lid = len(self.book.layers)
        gid, start = self.book.new_group(label, "layer", type(module).__name__, out, layer=lid)
        self.book.layers.append(LayerFlow(label, param, gid, "linear", (out, int(w.shape[1])), 1,
                                          in_src.long(), node_name, rows))
        return torch.arange(start, start + out)

    def _call_label(self, label: str, param: str, rows=None) -> str:
        """``label`` for the first layer using the rows ``rows`` of ``param``, ``label#k`` for the k-th
        (a module called k times: each call's units are a layer of their own, sharing one weight)."""
        k = 1 + self.book.uses(param, rows)
        return label if k == 1 else f"{label}#{k}"

    def _note_repeat(self, n: fx.Node, layers: List[LayerFlow]) -> None:
        """Warn that node ``n`` uses again the weights of ``layers`` (labelled ``#k``: a module called again)."""
        again = [l for l in layers if "#" in l.module.rpartition(".")[2]]
        if not again:
            return
        weights = ", ".join(dict.fromkeys(repr(l.param) for l in again))
        labels = ", ".join(repr(l.module) for l in again[:4]) + (", ..." if len(again) > 4 else "")
        msg = (f"graphs: node {n.name!r} uses weights used before in the forward ({weights}: a module called more than "
               f"once): the graph has units at every call, this call's as {labels}; the calls share one weight, whose "
               "synapses have edges at every call (live_synapses() counts them once)")
        self.book.warnings.append(msg)
        warn_user(msg)
