"""The interpreter that runs a traced model once on its example input, carrying an *id tensor* next to every
value (see :mod:`graphs.trace`): :class:`FlowProp`. Here: the dispatch of each node to its rule, the inputs, and
the ops it cannot follow (every input assumed to feed every output). The rules are mixins, one concern each:
in-place changes (:mod:`graphs.flow_in_place`), weighted and recurrent layers (:mod:`graphs.flow_layers`),
attention and transformers (:mod:`graphs.flow_attention`), per-channel ops (:mod:`graphs.flow_channels`), shape
ops and table lookups (:mod:`graphs.flow_shapes`), ops that order or accumulate along a dim (:mod:`graphs.flow_rank`),
matrix products and einsum (:mod:`graphs.flow_contract`).
"""
from __future__ import annotations

import math
import operator
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from . import ops
from .batch_axis import input_batch_axes, input_channel_axes
from .book import _Book
from .compact_rewrite import channel_pad
from .flow_attention import FlowAttentionMixin
from .flow_channels import FlowChannelsMixin
from .flow_contract import CONTRACTIONS, FlowContractMixin
from .flow_in_place import FlowInPlaceMixin
from .flow_layers import FlowLayersMixin
from .flow_rank import FlowRankMixin
from .flow_shapes import FlowShapesMixin
from .forward_inputs import _nested
from .id_tensors import _expand, _squeeze_uniform, _uniform_except
from .trace_types import InputError
from adaptive.warn import warn_user


def _has_tensor(x) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, (tuple, list)) and not isinstance(x, torch.Size):
        return any(_has_tensor(y) for y in x)
    return False


def _input_starts(gm: fx.GraphModule, args) -> Dict[str, Tuple[fx.Node, int]]:
    """The tensor inputs of ``gm`` run on ``args`` by the names :meth:`FlowProp._on_placeholder` gives them, with
    the node their values start at and their rank: a placeholder, or the ``getitem`` taking a tuple input's
    item (``name[i]``)."""
    starts = {}
    for n, a in zip([n for n in gm.graph.nodes if n.op == "placeholder"], args):
        if isinstance(a, torch.Tensor):
            starts[n.name] = (n, a.dim())
        elif _nested(a):
            for user in n.users:
                i = user.args[1] if user.target is operator.getitem and len(user.args) == 2 else None
                if isinstance(i, int) and -len(a) <= i < len(a) and isinstance(a[i], torch.Tensor):
                    starts[f"{n.name}[{i % len(a)}]"] = (user, a[i].dim())
    return starts


class FlowProp(FlowInPlaceMixin, FlowLayersMixin, FlowAttentionMixin, FlowChannelsMixin, FlowShapesMixin,
               FlowRankMixin, FlowContractMixin, ShapeProp):
    """ShapeProp that also propagates id tensors (see the module docstring)."""

    def __init__(self, gm: fx.GraphModule, book: _Book, input_nodes: str, root: Optional[nn.Module] = None,
                 batch_axis: Optional[int] = None):
        super().__init__(gm)
        self.batch_axis = batch_axis  # the caller's (0 or 1), or None: inferred
        # the module traced, whose submodules ``get_attr`` targets name (the GraphModule keeps only the
        # parameter of a module it does not call, under a bare nn.Module)
        self.root = gm if root is None else root
        self.book = book
        self.input_nodes = input_nodes
        self.inputs = 1  # the example inputs propagate is given
        self.batch_axes: Dict[str, int] = {}  # the inputs holding their batch on axis 1 (batch_axis.py)
        self.channel_axes: Dict[str, int] = {}  # the per-channel inputs holding their channels elsewhere than on axis 1
        self.flows: Dict[fx.Node, Any] = {}
        # (tensor, its new ids, the node) for each tensor changed in place: a parameter or buffer read again later
        # (fx gives each ``self.buf`` a get_attr node of its own) reads what was written
        self.written: List[Tuple[torch.Tensor, torch.Tensor, fx.Node]] = []
        self.mods = dict(gm.named_modules())

    # -------------------------------------------------------------- helpers
    def readout(self, t: torch.Tensor, axis: int, name: str) -> torch.Tensor:
        """One node id per channel along ``axis``; channels fed by several nodes get a junction."""
        axis = axis % t.dim()
        if _uniform_except(t, axis):
            idx = [0] * t.dim()
            idx[axis] = slice(None)
            return t[tuple(idx)].long()
        # the other axes' size given, not -1: ambiguous where there are no channels (a Linear of 0 units)
        tt = t.movedim(axis, 0).reshape(t.shape[axis], math.prod(t.shape) // max(1, t.shape[axis]))
        row = torch.arange(tt.shape[0]).repeat_interleave(tt.shape[1])
        return self.book.combine(row, tt.reshape(-1).long(), tt.shape[0], name, "mix")

    def _flow_of(self, a):
        return self.flows.get(a) if isinstance(a, fx.Node) else None

    def _real(self, a):
        return fx.node.map_arg(a, lambda n: self.env[n])

    def _mark(self, t):
        """Shape-op results as float64 id tensors (tuples of them for split/chunk)."""
        if isinstance(t, torch.Tensor):
            return t.to(torch.float64)
        if isinstance(t, (tuple, list)):
            return type(t)(self._mark(x) for x in t)
        return None

    def _tensor_flows(self, args) -> List[torch.Tensor]:
        found = []
        fx.node.map_arg(args, lambda n: found.append(self.flows.get(n)) or n)
        out = []
        while found:
            f = found.pop(0)
            if isinstance(f, torch.Tensor):
                out.append(f)
            elif isinstance(f, (tuple, list)):  # an LSTM's (h0, c0); nested inputs, ((x, t), mask)
                found[:0] = f
        return out

    # -------------------------------------------------------------- interpreter
    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        snap = self.book.snapshot()
        try:
            self.flows[n] = self.flow(n, result)
        except InputError:
            raise
        except Exception as e:  # a rule that cannot handle this use of a known op
            self.book.restore(snap)
            self.flows[n] = self._on_unknown(n, result, f": {type(e).__name__}: {e}")
        if not isinstance(self.mods.get(n.target) if n.op == "call_module" else None, nn.RNNCellBase):
            self._note_repeat(n, self.book.layers[snap[2]:])  # a cell is called once per step: no news
        self._in_place(n)
        return result

    def _arg(self, n: fx.Node, i: int, key: str):
        """The id flow of argument ``i`` (or keyword ``key``) of ``n``; tuples of tensors (an
        LSTM's ``(h0, c0)``) come back as tuples of flows; None when absent or not traced."""
        a = n.args[i] if len(n.args) > i else n.kwargs.get(key)
        return fx.node.map_arg(a, lambda m: self.flows.get(m)) if a is not None else None

    def flow(self, n: fx.Node, result):
        if n.op == "placeholder":
            return self._on_placeholder(n, result)
        if n.op == "get_attr":
            return self._attr_flow(n, result)
        if n.op == "output":
            return None
        if not _has_tensor(result):
            return None  # sizes, shapes, ints: not data
        if n.op == "call_function" and n.target is operator.getitem:
            f = self._flow_of(n.args[0])
            if isinstance(f, (tuple, list)):
                return f[n.args[1]]
        if n.op == "call_function" and n.target is getattr and isinstance(n.args[1], str):
            f = self._flow_of(n.args[0])
            fields = getattr(f, "_fields", ()) or (("values", "indices") if type(f).__module__ == "torch.return_types" else ())
            if isinstance(f, tuple) and n.args[1] in fields:  # a namedtuple input's field, x.max(dim).values
                return getattr(f, n.args[1])
        module = self.mods.get(n.target) if n.op == "call_module" else None
        if n.op == "call_function" and n.target is channel_pad:  # a compact copy's own channel padding
            return self._on_channel_pad(n)
        if n.op == "call_function" and not self._tensor_flows((n.args, n.kwargs)):
            return self._constant_like(result)  # made from no traced data (torch.full, a causal mask)
        if ops.reads_shape_only(n):  # torch.zeros_like(x), x.new_zeros(...): x's shape, not its data
            fill = self._tensor_flows((n.args[1:], {k: v for k, v in n.kwargs.items() if k != "input"}))
            if not fill:
                return self._constant_like(result)
            if len(fill) == 1 and fill[0].numel() == 1:  # full_like(x, x.mean()): that one value everywhere
                return fill[0].reshape(()).expand(result.shape)
        if n.op == "call_function" and n.target is F.linear:
            return self._on_linear(n, result)
        cat = ops.categorize(n, module)
        if cat == "weighted":
            return self._on_weighted(n, module, result)
        if cat == "attention":
            return self._on_attention(n, module, result)
        if cat == "recurrent":
            if isinstance(module, nn.RNNCellBase):
                return self._on_cell(n, module, result)
            return self._on_recurrent(n, module, result)
        if cat == "transformer":
            return self._on_transformer(n, module, result)
        if cat == "normalize":
            return self._on_normalize(n, module, result)
        if cat == "lookup":
            return self._on_lookup(n, module, result)
        if cat == "pointwise":
            return self._on_pointwise(n, result)
        if cat == "broadcast":
            return self._on_broadcast(n, result)
        if cat == "shape":
            return self._on_shape(n, module, result)
        if cat == "reduce":
            return self._on_reduce(n, result)
        if cat in ("rank", "scan"):
            return self._on_rank(n, result, scan=cat == "scan")
        if cat == "unknown" and n.op != "call_module" and n.target in CONTRACTIONS and not self._weights_read(n, None):
            return self._on_contraction(n, result)  # a weight it reads (x @ self.w) gets the unknown op's warning
        return self._on_unknown(n, result, "")

    def _constant_like(self, result):
        if isinstance(result, torch.Tensor):
            return torch.zeros((), dtype=torch.float64).expand(result.shape)
        return None

    def propagate(self, *args):
        self.inputs = sum(len(a) if _nested(a) else 1 for a in args)
        starts = _input_starts(self.module, args)
        if self.input_nodes == "elements":
            self.batch_axes = input_batch_axes(self.module, starts, self.batch_axis)
        else:  # inferred, the batch is on axis 0 here, as it always was
            given = input_batch_axes(self.module, starts, self.batch_axis) if self.batch_axis is not None else {}
            self.channel_axes = input_channel_axes(self.module, starts, given)
        return super().propagate(*args)

    def _on_placeholder(self, n, x, name=None):
        name = n.name if name is None else name
        if _nested(x):  # one argument holding several tensors (forward(self, xy): x, y = xy): an input each
            flows = [self._on_placeholder(n, t, f"{name}[{i}]") for i, t in enumerate(x)]
            return type(x)(*flows) if hasattr(x, "_fields") else type(x)(flows)  # a namedtuple takes its fields
        if isinstance(x, torch.Tensor) and x.dim() == 0 and name != n.name:
            # a scalar beside the tensors of one argument ((x, temperature)): one value for every sample, one node
            _, start = self.book.new_group(name, "input", "channels", 1)
            return torch.tensor(float(start), dtype=torch.float64)
        if isinstance(x, Mapping) and _has_tensor(list(x.values())):
            raise InputError(f"input {name!r} is a dict of tensors; graphs follows tensors only (a tensor, or a tuple "
                             "or list of them): trace a module whose forward takes the tensors and builds the dict")
        if not isinstance(x, torch.Tensor):
            return None
        if x.dim() == 1 and self.inputs > 1:
            # one value per sample, or indices, next to other inputs (a diffusion timestep t [B] or a class
            # label [B] next to an image, nn.EmbeddingBag's flat input and its offsets): no axis of units,
            # one node; a lone one is a sample without its batch
            _, start = self.book.new_group(name, "input", "channels", 1)
            return _expand(torch.tensor([start]), x.shape, 0)
        if x.dim() < 2:
            raise InputError(f"input {name!r} has shape {tuple(x.shape)}: graphs needs a batch dimension first "
                             "(pass x.unsqueeze(0) for one sample)")
        if self.input_nodes == "elements":
            b = self.batch_axes.get(name, 0)  # 1: the sequences of sequence-first layers, [T, B, F] or [T, B]
            one = x.select(b, 0)
            _, start = self.book.new_group(name, "input", "elements", one.numel())
            return torch.arange(start, start + one.numel(), dtype=torch.float64).view(one.shape).unsqueeze(b).expand(*x.shape)
        c = self.channel_axes.get(name, 1)  # another where the input is permuted for its first layers (channels last)
        _, start = self.book.new_group(name, "input", "channels", x.shape[c])
        return _expand(torch.arange(start, start + x.shape[c]), x.shape, c)

    def _mix(self, n, flows, result, op):
        vals = torch.unique(torch.cat([torch.unique(f.reshape(-1) if f.is_contiguous() else _squeeze_uniform(f).reshape(-1)) for f in flows]).long())
        ids = self.book.combine(torch.zeros_like(vals), vals, 1, n.name, op)
        fill = lambda r: torch.full((), float(ids[0]), dtype=torch.float64).expand(r.shape) if isinstance(r, torch.Tensor) else None
        if isinstance(result, (tuple, list)):
            return type(result)(fill(r) for r in result)
        return fill(result)

    def _weights_read(self, n, module) -> List[str]:
        """The parameters node ``n`` reads: a called module's own, else those its operands are computed
        from without traced data (``x @ self.w``, ``F.linear(x, self.w * self.mask)``)."""
        if module is not None:
            return [f"{n.target}.{p}" for p, _ in module.named_parameters()]
        names, todo, seen = [], list(n.all_input_nodes), set()
        while todo:
            m = todo.pop()
            if m in seen:
                continue
            seen.add(m)
            if m.op == "get_attr":
                if isinstance(self.fetch_attr(m.target), nn.Parameter):  # (the env drops values once read)
                    names.append(str(m.target))
            elif m.op != "placeholder":
                f = self.flows.get(m)
                if not (isinstance(f, torch.Tensor) and bool(f.any())):  # made from no traced data
                    todo.extend(m.all_input_nodes)
        return sorted(names)

    def _on_unknown(self, n, result, reason):
        module = self.mods.get(n.target) if n.op == "call_module" else None
        shapes = [tuple(f.shape) for f in self._tensor_flows((n.args, n.kwargs))]  # ids: the operands' shapes
        hint = ops.how_to_register(n, module, shapes, tuple(result.shape) if isinstance(result, torch.Tensor) else None)
        what, weights = ops.describe(n, module), self._weights_read(n, module)
        reads = (f", reading the weights {', '.join(map(repr, weights))} (which get no synapse edges from it)"
                 if weights else "")
        msg = (
            f"graphs: cannot follow the data flow through node {what}{reads}{reason}; assuming every "
            f"input unit feeds every output ({hint})"
        )
        self.book.unknown.append((len(self.book.layers), what))
        if weights:
            self.book.unknown_weights[what] = weights
        self.book.warnings.append(msg)
        warn_user(msg)
        flows = self._tensor_flows((n.args, n.kwargs))
        if not flows:
            return self._constant_like(result) if isinstance(result, torch.Tensor) else None
        return self._mix(n, flows, result, "unknown")
