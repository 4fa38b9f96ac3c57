"""Data-flow tracing: which units feed every input channel of every weighted layer.

The model is traced with ``torch.fx`` and run once on an example input by a
:class:`torch.fx.passes.shape_prop.ShapeProp` interpreter that, next to the real values, carries an
*id tensor* for every tensor of the graph: each element holds the id of the graph node that produced
it (0 for a constant such as zero padding). Weighted layers (Linear, Conv, the projections of
attention and the matrices of recurrent layers and cells, transposed convolutions) start new units, embedding
lookups new input nodes (their tables are no synapse layers); shape
ops (view, flatten, cat, getitem, pad, split, permute) are evaluated exactly on the id tensors, so
concatenation offsets, the ``h*w`` features of each flattened channel and the CIFAR ResNet's
zero-padding shortcut come out right without special cases; per-channel ops (normalisation,
activations, pooling) keep channel ids; elementwise arithmetic of several tensors (a residual add,
a squeeze-excitation product) creates *junction* nodes, one per distinct combination of sources.

Node ids: 0 is the constant node, then groups in topological order (inputs, layers, junctions,
outputs), each a contiguous range. Everything is tensor code; Python loops run over fx nodes only.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import io
import math
import operator
import os
import sys
import threading
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_leaves
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from . import ops
from .batch_axis import checked_batch_axis, input_batch_axes, input_channel_axes
from .folded import FoldedConv, unfolded
from adaptive.discovery import to_out_in, transposed_shape
from adaptive.warn import warn_user
from adaptive.global_rng import global_states, set_global_states

# fx's check on an input traced as None, whose wrap() SignatureTracer drops: a private name of fx's, so None
# where a torch lacks it (graphs still imports and traces; only that drop is skipped)
_assert_is_none = getattr(fx._symbolic_trace, "_assert_is_none", None)

# fx's tracer patches ``nn.Module.__call__`` and ``__getattr__`` for the whole process while it traces (and
# _sizes_packed torch's factories): a module called in another thread meanwhile is taken by that trace ("module is
# not installed as a submodule"). graphs' entry points that trace or run a model hold this lock for all of their
# work (reentrant: compact traces inside, the CLI builds what it compacted). Threads running models outside
# graphs are not held back: trace before starting them, or from the thread that runs them.
TRACING = threading.RLock()


def _new_lock_in_child() -> None:
    """A forked process (multiprocessing's fork, a DataLoader's workers) copies the lock as it was: held by another
    thread of the parent, it would never be released there, and the child's first graphs call would wait forever.
    The child gets a lock of its own (a call the forking thread was in releases the copy it took)."""
    global TRACING
    TRACING = threading.RLock()


if hasattr(os, "register_at_fork"):  # not on Windows, which spawns
    os.register_at_fork(after_in_child=_new_lock_in_child)


def serialized(fn):
    """``fn`` run holding :data:`TRACING` (released however it returns or raises)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with TRACING:
            return fn(*args, **kwargs)
    return run


CONST, INPUT, UNIT, JUNCTION, OUTPUT = range(5)
KIND_NAMES = ("constant", "input", "unit", "junction", "output")
# edge kinds: a live synapse (or the synapses joining two nodes), a wire into a junction (or into a
# recurrent layer's state node, from its initial state), a recurrent back edge (see _on_recurrent)
EDGE_SYNAPSE, EDGE_WIRE, EDGE_RECURRENT = 0, 1, 2


@dataclass
class Group:
    """A contiguous range of node ids created by one event (an input, a layer, a junction op)."""

    name: str
    kind: str  # constant | input | layer | junction | output
    op: str
    start: int
    count: int
    layer: int = -1  # index into Trace.layers for kind == "layer"


@dataclass
class LayerFlow:
    """One weighted layer: its units and the node feeding each of its input channels. ``module`` is
    the module's name, or for the parts of an attention or recurrent module a label under it
    (``attn.q``, ``rnn.l0_reverse.hh``), with ``#k`` for the k-th call of a module called more than once
    (``fc#2``, ``attn.q#2``: a layer of its own, sharing the weight); ``param`` is always the weight's
    parameter name. ``shape``
    is ``(out, in/groups, *kernel)``; a transposed convolution's parameter is stored
    ``(in, out/groups, *kernel)``, which :meth:`part` turns into that layout."""

    module: str
    param: str
    group: int
    kind: str  # linear | conv1d | conv2d | conv3d | convtranspose1d | convtranspose2d | convtranspose3d
    shape: tuple
    groups: int
    in_src: torch.Tensor  # LongTensor [in_units]: node id feeding each input channel/feature
    fx_node: str = ""
    rows: Optional[Tuple[int, int]] = None  # the rows of ``param`` this layer is (attention q/k/v), else all
    transposed: bool = False  # the parameter is (in, out/groups, *kernel) (nn.ConvTranspose*)

    def part(self, t: torch.Tensor) -> torch.Tensor:
        """This layer's rows of a tensor shaped like the whole parameter, laid out as ``shape``."""
        if self.transposed:
            return to_out_in(t, self.groups)  # as a transposed layer's granularity sees it
        return t if self.rows is None else t[self.rows[0]:self.rows[1]]


@dataclass
class Trace:
    groups: List[Group]
    layers: List[LayerFlow]
    wires: Dict[int, Tuple[torch.Tensor, torch.Tensor]]  # group id -> (src, dst) into that group
    concats: List[dict]  # {"node": name, "parts": [(operand name, LongTensor ids)]}
    warnings: List[str] = field(default_factory=list)
    traced: bool = True  # False: fx could not trace the model (``reason`` says why); module order stands in
    # group id of a recurrent layer's state nodes -> (src, dst): the units whose values the state
    # nodes hold at the next time step (the graph's back edges, kind "recurrent")
    recurrent: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # ops the tracer could not follow (it assumed every input feeds every output there): for each, the
    # number of layers recorded before it (those layers' inputs do not depend on it) and its description
    unknown: List[Tuple[int, str]] = field(default_factory=list)
    reason: str = ""  # why fx could not trace the model, when ``traced`` is False
    # each unknown op's description (as in ``unknown``) -> the parameters it reads: a module's own, or
    # those its operands are computed from (``x @ self.w``); the layers whose wiring the graph guesses
    unknown_weights: Dict[str, List[str]] = field(default_factory=dict)
    batch_axis: Optional[int] = None  # the batch axis the caller fixed for the inputs (None: inferred per input)

    @property
    def num_nodes(self) -> int:
        g = self.groups[-1]
        return g.start + g.count

    def node_table(self) -> Dict[str, torch.Tensor]:
        """kind, group, layer and index of every node, as LongTensors of length num_nodes."""
        counts = torch.tensor([g.count for g in self.groups])
        group = torch.repeat_interleave(torch.arange(len(self.groups)), counts)
        starts = torch.tensor([g.start for g in self.groups])
        kind_of = {"constant": CONST, "input": INPUT, "layer": UNIT, "junction": JUNCTION, "output": OUTPUT}
        gkind = torch.tensor([kind_of[g.kind] for g in self.groups])
        glayer = torch.tensor([g.layer for g in self.groups])
        return {
            "kind": gkind[group],
            "group": group,
            "layer": glayer[group],
            "index": torch.arange(self.num_nodes) - starts[group],
        }


def _truncate(d: dict, n: int) -> None:
    """Drop the entries of ``d`` added after its first ``n``."""
    for k in list(d)[n:]:
        del d[k]


class InputError(ValueError):
    """The example input does not fit the trace (no batch dimension): raised, never taken for an
    op the tracer does not know."""


class InputGuessError(ValueError):
    """No example input could be guessed for a model (none of the guesses ran): pass one. ``what`` says
    which model and why, ``tried`` what each guess raised (empty where there was nothing to guess from),
    ``inputs`` the names of the inputs its forward takes where it takes more than one (never guessed),
    ``keyword`` those of them that are keyword-only (given in the tuple too, after the positional ones)."""

    def __init__(self, what: str, tried: str = "", inputs: Sequence[str] = (), keyword: Sequence[str] = ()):
        self.what, self.tried, self.inputs, self.keyword = what, tried, tuple(inputs), tuple(keyword)
        super().__init__(f"{what}{f' ({tried})' if tried else ''}: pass example_input={self.example()}")

    def example(self, batch: str = "") -> str:
        """What to pass as ``example_input`` (``batch``: words said of each tensor)."""
        if len(self.inputs) < 2:
            return "tensor"
        them = "it" if len(self.keyword) == 1 else "them"
        last = f" ({', '.join(self.keyword)}: keyword-only, last; graphs passes {them} by name)" if self.keyword else ""
        return f"({', '.join(self.inputs)}), a tensor each{batch}{last}"


class _Book:
    """Allocates node ids and records junction wires and recurrent back edges."""

    def __init__(self):
        self.groups: List[Group] = [Group("constant", "constant", "zero", 0, 1)]
        self.n = 1
        self.wires: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.layers: List[LayerFlow] = []
        self.concats: List[dict] = []
        self.warnings: List[str] = []
        self.recurrent: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.unknown: List[Tuple[int, str]] = []
        self.unknown_weights: Dict[str, List[str]] = {}

    def snapshot(self) -> tuple:
        """Sizes of what is recorded (every record only grows: lists and insertion-ordered dicts)."""
        return (self.n, len(self.groups), len(self.layers), len(self.wires), len(self.recurrent), len(self.concats))

    def restore(self, snap: tuple) -> None:
        """Forget what was recorded since ``snap`` (a rule that failed halfway leaves nothing behind)."""
        self.n, ng, nl, nw, nr, nc = snap
        del self.groups[ng:], self.layers[nl:], self.concats[nc:]
        _truncate(self.wires, nw)
        _truncate(self.recurrent, nr)

    def new_group(self, name, kind, op, count, layer=-1) -> Tuple[int, int]:
        start = self.n
        self.groups.append(Group(name, kind, op, start, int(count), layer))
        self.n += int(count)
        return len(self.groups) - 1, start

    def combine(self, row: torch.Tensor, val: torch.Tensor, nrows: int, name: str, op: str) -> torch.Tensor:
        """Each row is fed by the node ids ``val`` listed with it; returns one id per row: 0 when
        no non-constant source, the source itself when there is one, else a new junction node."""
        keep = val != 0
        row, val = row[keep], val[keep]
        n = max(self.n, 1)
        key = torch.unique(row * n + val)
        r, v = key // n, key % n
        cnt = torch.bincount(r, minlength=nrows)
        out = torch.zeros(nrows, dtype=torch.long)
        one = cnt[r] == 1
        out[r[one]] = v[one]
        multi = (cnt >= 2).nonzero().flatten()
        if multi.numel():
            gid, start = self.new_group(name, "junction", op, multi.numel())
            jid = torch.full((nrows,), -1, dtype=torch.long)
            jid[multi] = torch.arange(start, start + multi.numel())
            out[multi] = jid[multi]
            many = ~one
            self.wires[gid] = (v[many], jid[r[many]])
        return out


def _has_tensor(x) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, (tuple, list)) and not isinstance(x, torch.Size):
        return any(_has_tensor(y) for y in x)
    return False


def _expand(ids: torch.Tensor, shape: Sequence[int], axis: int) -> torch.Tensor:
    """Broadcast per-channel ids along every other dimension of ``shape`` (a view, no copy)."""
    nd = len(shape)
    axis = axis % nd
    view = [1] * nd
    view[axis] = ids.numel()
    return ids.to(torch.float64).view(view).expand(tuple(shape))


def _changes_in_place(n: fx.Node) -> bool:
    """``x.add_(y)``, ``x[:, :2].zero_()``, and torch's own in-place functions (``torch.fill_(x, v)``,
    ``torch.relu_(x)``): a call that changes its first argument."""
    if n.op == "call_method":
        return str(n.target).endswith("_")
    name = getattr(n.target, "__name__", "")
    return (n.op == "call_function" and name.endswith("_") and not name.startswith("_")
            and getattr(torch, name, None) is n.target)


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold their values in one memory (a view of it, ``x.detach()``, ``x.data``)."""
    pa = a.untyped_storage().data_ptr()
    return pa != 0 and pa == b.untyped_storage().data_ptr()


def _alias(a, b: torch.Tensor) -> bool:
    """``a`` is ``b``, or the same elements of the same memory (``b.detach()``): a change to one is the other's."""
    return a is b or (isinstance(a, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                      and a.stride() == b.stride() and a.storage_offset() == b.storage_offset()
                      and _same_storage(a, b))


def _uniform_except(t: torch.Tensor, axis: int) -> bool:
    for d in range(t.dim()):
        if d == axis % t.dim() or t.shape[d] == 1 or t.stride(d) == 0:
            continue
        if not bool((t == t.narrow(d, 0, 1)).all()):
            return False
    return True


def _indexed_axis(idx, ndim: int, picks) -> int:
    """The axis of a ``ndim``-dimensional tensor that the first of the nodes ``picks`` indexes in
    ``t[idx]`` (``t[i]``: 0; ``t[:, i]``: 1; ``t[..., i]``: the last)."""
    parts = [p for p in (idx if isinstance(idx, tuple) else (idx,)) if p is not None]
    k = next((j for j, p in enumerate(parts) if isinstance(p, fx.Node) and p in picks), 0)  # 0: inside a list
    return ndim - (len(parts) - k) if any(p is Ellipsis for p in parts[:k]) else k


def _squeeze_uniform(t: torch.Tensor) -> torch.Tensor:
    """Shrink every dimension along which ``t`` is constant to size 1 (keeps broadcastability)."""
    for d in range(t.dim()):
        if t.shape[d] > 1 and (t.stride(d) == 0 or bool((t == t.narrow(d, 0, 1)).all())):
            t = t.narrow(d, 0, 1)
    return t


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


class FlowProp(ShapeProp):
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
        tt = t.movedim(axis, 0).reshape(t.shape[axis], -1)
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

    def _in_place(self, n: fx.Node) -> None:
        """``x.add_(y)`` changes ``x``: the nodes after it that read ``x`` (fx gives them ``x``, not the
        method's result, which may go unused) read the new ids, as do those holding the same tensor
        (the ``y.add_(a)`` of ``y.add_(a).mul_(b)``) or an alias of it (``x.detach().zero_()`` zeroes ``x``).
        torch's own in-place functions (``torch.fill_(z, h.mean())``, ``torch.zero_(x)``) change their first
        argument as the methods do. A change to a view of another tensor (``x[:, :2].add_(y)``), or to a
        tensor with a view of it, cannot reach the other's ids: where the other is read after it, warned,
        and counted as unknown."""
        if not _changes_in_place(n) or not n.args or not isinstance(n.args[0], fx.Node):
            return
        base, new = n.args[0], self.flows.get(n)
        old = self.flows.get(base)
        if not isinstance(new, torch.Tensor) or not isinstance(old, torch.Tensor) or torch.equal(new, old):
            return
        t = self.env.get(base)
        if not isinstance(t, torch.Tensor):
            self.flows[base] = new
            return
        self.written.append((t, new, n))
        for v, r in self.env.items():  # every node holding this very tensor (in-place methods return it)
            if _alias(r, t):
                self.flows[v] = new
        # another view of its memory (``t``'s base, or a view of it, or a tensor sharing its storage: a view of
        # ``x.detach()`` is none of ``x``'s) read after ``n`` keeps its old ids. The env still holds every node
        # read after ``n``, however many views away it is
        root = t if t._base is None else t._base
        order = {m: i for i, m in enumerate(n.graph.nodes)}
        later = [v for v, r in self.env.items() if isinstance(r, torch.Tensor) and not _alias(r, t)
                 and (r is root or r._base is root or _same_storage(r, t))
                 and any(order[u] > order[n] for u in v.users)]
        if later:
            what = ops.describe(n)
            rel = "a view of" if self.env[later[0]] is root else "sharing memory with"
            msg = (f"graphs: node {what} changes {base.name!r} in place, {rel} {later[0].name!r}, which is read "
                   f"again after it: the graph does not see {later[0].name!r} change; write it out of place "
                   f"(x = torch.cat(...) or x = x + ...) to have it followed")
            self._unfollowed(what, msg)

    def _unfollowed(self, what: str, msg: str) -> None:
        self.book.unknown.append((len(self.book.layers), what))
        self.book.warnings.append(msg)
        warn_user(msg)

    def _attr_flow(self, n: fx.Node, result):
        """A parameter's or buffer's ids: a constant, or those an in-place change earlier in the forward wrote to
        it (``self.buf.fill_(h.mean())``, then ``self.buf`` read again). A change to a part of it
        (``self.buf[:2].add_(h)``) is warned about, as one to a view of a tensor read again later is."""
        if isinstance(result, torch.Tensor):
            for t, new, m in reversed(self.written):
                if _alias(result, t):
                    return new
                if _same_storage(result, t):
                    what = ops.describe(m)
                    self._unfollowed(what, f"graphs: node {what} changes a part of {n.target!r} in place, which is "
                                           f"read again after it: the graph does not see {n.target!r} change; write "
                                           "it out of place (x = torch.cat(...) or x = x + ...) to have it followed")
                    break
        return self._constant_like(result)

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
            if isinstance(f, tuple) and n.args[1] in getattr(f, "_fields", ()):  # a namedtuple input's field
                return getattr(f, n.args[1])
        module = self.mods.get(n.target) if n.op == "call_module" else None
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
        axis = -1 if isinstance(module, nn.Linear) else 1
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
        kind = "linear" if isinstance(module, nn.Linear) else f"conv{'transpose' if transposed else ''}{w.dim() - 2}d"
        self.book.layers.append(LayerFlow(label, param, gid, kind, shape, groups, in_src, n.name,
                                          transposed=transposed))
        ids = torch.arange(start, start + shape[0])
        return _expand(ids, result.shape, axis)

    def _on_attention(self, n, module, result):
        """``nn.MultiheadAttention`` called on traced query, key and value tensors (see
        :meth:`_attention_units`); ``F.scaled_dot_product_attention`` (see :meth:`_on_sdpa`)."""
        if n.op == "call_function":
            return self._on_sdpa(n, result)
        name = str(n.target)
        flows = [self._arg(n, i, k) for i, k in enumerate(("query", "key", "value"))]
        if any(not isinstance(f, torch.Tensor) for f in flows):
            raise ValueError("a query, key or value input carries no traced data")
        srcs = [self.readout(f, -1, f"{name}.{t}.input") for f, t in zip(flows, "qkv")]
        out, q, k = self._attention_units(module, name, srcs, n.name)
        y, weights = result if isinstance(result, (tuple, list)) else (result, None)
        flow_y = _expand(out, y.shape, -1)
        read = any(u.target is operator.getitem and u.args[1] == 1 for u in n.users)
        if not isinstance(weights, torch.Tensor) or not read:  # the attention weights, if the model reads them
            return (flow_y, None)
        score = self.book.combine(torch.zeros(2 * q.numel(), dtype=torch.long), torch.cat([q, k]), 1,
                                  f"{name}.weights", "attention")
        return (flow_y, torch.full((), float(score[0]), dtype=torch.float64).expand(weights.shape))

    def _attention_units(self, module, name, srcs, node_name):
        """The units of one ``nn.MultiheadAttention`` reading channel sources ``srcs`` (query, key,
        value): three layers of ``embed_dim`` units (queries, keys, values: rows of ``in_proj_weight``
        or the separate ``q/k/v_proj_weight``), then ``out_proj``. Attention mixes positions, not
        channels within a head: output channel ``c`` of head ``h`` is a sum of value unit ``c``
        weighted by scores computed from the query and key units of head ``h``, so it is a junction
        of those ``2 * head_dim + 1`` units. Returns (out_proj units, query units, key units)."""
        E, H = int(module.embed_dim), int(module.num_heads)
        if module._qkv_same_embed_dim:
            parts = [("in_proj_weight", (i * E, (i + 1) * E)) for i in range(3)]
        else:
            parts = [(f"{t}_proj_weight", None) for t in "qkv"]
        q, k, v = (self._matrix_layer(module, name, attr, f"{name}.{tag}", src, node_name, rows)
                   for (attr, rows), tag, src in zip(parts, "qkv", srcs))
        d = E // H
        per_head = torch.stack([q, k]).view(2, H, d).permute(1, 0, 2).reshape(H, 2 * d)
        feeds = torch.cat([v.view(E, 1), per_head[torch.arange(E) // d]], dim=1)  # [E, 2d + 1]
        mixed = self.book.combine(torch.arange(E).repeat_interleave(2 * d + 1), feeds.reshape(-1), E,
                                  f"{name}.attention", "attention")
        out = self._matrix_layer(module.out_proj, f"{name}.out_proj", "weight", f"{name}.out_proj", mixed, node_name)
        return out, q, k

    def _on_sdpa(self, n, result):
        """``F.scaled_dot_product_attention(q, k, v, attn_mask, ...)``: tensors ``[*B, L, E]`` (``*B`` the
        batch and head axes), output ``[*B, L, Ev]``. Output channel ``c`` at batch/head index ``b`` is a
        junction of value channel ``c`` and every query and key channel at ``b`` (and of a traced
        mask's ids), as :meth:`_attention_units` wires ``nn.MultiheadAttention``: the weights mix
        positions, so each channel's ids along the sequence axis are merged first (a junction where
        they differ). With ``enable_gqa`` key/value head ``j`` serves query heads ``j*r .. j*r+r-1``."""
        q, k, v = (self._arg(n, i, key) for i, key in enumerate(("query", "key", "value")))
        if any(not isinstance(f, torch.Tensor) for f in (q, k, v)):
            raise ValueError("a query, key or value input carries no traced data")
        gqa = self._real(n.args[7]) if len(n.args) > 7 else self._real(n.kwargs.get("enable_gqa", False))
        if gqa and q.dim() >= 3 and k.shape[-3] != q.shape[-3]:
            r = q.shape[-3] // k.shape[-3]
            k, v = k.repeat_interleave(r, dim=-3), v.repeat_interleave(r, dim=-3)
        qc, kc, vc = (self._positions_merged(f, -2, f"{n.name}.{t}") for f, t in zip((q, k, v), "qkv"))
        parts = [qc.unsqueeze(-2), kc.unsqueeze(-2), vc.unsqueeze(-1)]  # [*B, 1, 1, E], ..., [*B, 1, Ev, 1]
        mask = self._arg(n, 3, "attn_mask")
        if isinstance(mask, torch.Tensor):  # [*B, L, S]: its ids at b, all positions
            m = self._positions_merged(self._positions_merged(mask, -1, f"{n.name}.mask"), -2, f"{n.name}.mask")
            parts.append(m.unsqueeze(-1))
        target = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))  # [*B, 1, Ev]
        feeds = torch.cat([torch.broadcast_to(p, tuple(target) + (p.shape[-1],)) for p in parts], -1)
        K = feeds.shape[-1]
        combos, inverse = torch.unique(feeds.reshape(-1, K).long(), dim=0, return_inverse=True)
        ids = self.book.combine(torch.arange(combos.shape[0]).repeat_interleave(K), combos.reshape(-1),
                                combos.shape[0], n.name, "attention")
        return torch.broadcast_to(ids[inverse].to(torch.float64).view(target), result.shape)

    def _positions_merged(self, t, axis, name):
        """``t`` with ``axis`` shrunk to size 1, each entry the node of all the ids along ``axis`` beside it
        (a junction where they differ); other axes along which ``t`` is constant shrink to 1 too."""
        s = _squeeze_uniform(t)
        axis = axis % s.dim()
        if s.shape[axis] == 1:
            return s
        m = s.movedim(axis, -1)
        L = m.shape[-1]
        rows = m.reshape(-1, L).long()
        ids = self.book.combine(torch.arange(rows.shape[0]).repeat_interleave(L), rows.reshape(-1), rows.shape[0],
                                name, "mix")
        return ids.to(torch.float64).view(m.shape[:-1]).unsqueeze(axis)

    # nn.Transformer and its parts: fx cannot trace into them (their fast-path checks branch on
    # tensor properties), so their wiring is written out here, at the level of channels. Dropout
    # keeps each channel's source; residual sums are junctions; LayerNorms are as _on_normalize.
    def _on_transformer(self, n, module, result):
        name = str(n.target)
        _check_standard_transformer(module)
        if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerEncoder)):
            flows = [self._arg(n, 0, "src")]
        elif isinstance(module, (nn.TransformerDecoderLayer, nn.TransformerDecoder)):
            flows = [self._arg(n, 0, "tgt"), self._arg(n, 1, "memory")]
        else:  # nn.Transformer(src, tgt): the decoder's input first, then the encoder's
            flows = [self._arg(n, 1, "tgt"), self._arg(n, 0, "src")]
        if any(not isinstance(f, torch.Tensor) for f in flows):
            raise ValueError("an input carries no traced data")
        ids = [self.readout(f, -1, f"{name}.input{i}") for i, f in enumerate(flows)]
        if isinstance(module, nn.TransformerEncoderLayer):
            out = self._encoder_layer(module, name, ids[0], n.name)
        elif isinstance(module, nn.TransformerDecoderLayer):
            out = self._decoder_layer(module, name, ids[0], ids[1], n.name)
        elif isinstance(module, nn.TransformerEncoder):
            out = self._encoder(module, name, ids[0], n.name)
        elif isinstance(module, nn.TransformerDecoder):
            out = self._decoder(module, name, ids[0], ids[1], n.name)
        else:
            memory = self._encoder(module.encoder, f"{name}.encoder", ids[1], n.name)
            out = self._decoder(module.decoder, f"{name}.decoder", ids[0], memory, n.name)
        return _expand(out, result.shape, -1)

    def _residual(self, a, b, name):
        """A junction per channel summing ``a`` and ``b`` (a residual connection)."""
        E = a.numel()
        return self.book.combine(torch.arange(E).repeat(2), torch.cat([a, b]), E, name, "add")

    def _feed_forward(self, layer, name, x, node_name):
        h = self._matrix_layer(layer.linear1, f"{name}.linear1", "weight", f"{name}.linear1", x, node_name)
        return self._matrix_layer(layer.linear2, f"{name}.linear2", "weight", f"{name}.linear2", h, node_name)

    def _blocks(self, layer, name, x, blocks):
        """Residual blocks ``x + f(x)``, each with its LayerNorm before ``f`` (``norm_first``) or
        after the sum, as the torch layer runs them; ``blocks``: (tag, f) pairs, norm1, norm2, ..."""
        for i, (tag, f) in enumerate(blocks, 1):
            norm = lambda ids: self._normalized(ids, 1, f"{name}.norm{i}")
            if layer.norm_first:
                x = self._residual(x, f(norm(x)), f"{name}.{tag}")
            else:
                x = norm(self._residual(x, f(x), f"{name}.{tag}"))
        return x

    def _encoder_layer(self, layer, name, x, node_name):
        return self._blocks(layer, name, x, [
            ("add1", lambda h: self._attention_units(layer.self_attn, f"{name}.self_attn", [h, h, h], node_name)[0]),
            ("add2", lambda h: self._feed_forward(layer, name, h, node_name))])

    def _decoder_layer(self, layer, name, x, mem, node_name):
        return self._blocks(layer, name, x, [
            ("add1", lambda h: self._attention_units(layer.self_attn, f"{name}.self_attn", [h, h, h], node_name)[0]),
            ("add2", lambda h: self._attention_units(layer.multihead_attn, f"{name}.multihead_attn", [h, mem, mem],
                                                     node_name)[0]),
            ("add3", lambda h: self._feed_forward(layer, name, h, node_name))])

    def _encoder(self, enc, name, x, node_name):
        for i, layer in enumerate(enc.layers):
            x = self._encoder_layer(layer, f"{name}.layers.{i}", x, node_name)
        return x if enc.norm is None else self._normalized(x, 1, f"{name}.norm")

    def _decoder(self, dec, name, x, mem, node_name):
        for i, layer in enumerate(dec.layers):
            x = self._decoder_layer(layer, f"{name}.layers.{i}", x, mem, node_name)
        return x if dec.norm is None else self._normalized(x, 1, f"{name}.norm")

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
        k = 1 + sum(1 for l in self.book.layers if l.param == param and l.rows == rows)
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

    def _on_pointwise(self, n, result):
        x = self._flow_of(n.args[0]) if n.args else None
        if not isinstance(x, torch.Tensor) or not isinstance(result, torch.Tensor):
            raise ValueError("no tensor input")
        if tuple(result.shape) == tuple(x.shape):
            return x
        if result.dim() == x.dim() and result.shape[1] == x.shape[1]:
            return _expand(self.readout(x, 1, n.name), result.shape, 1)
        raise ValueError(f"a per-channel op changed the channel count ({tuple(x.shape)} -> {tuple(result.shape)})")

    def _on_normalize(self, n, module, result):
        """LayerNorm (RMSNorm) / GroupNorm: output channel ``c`` is a junction of input channel ``c`` and one
        *statistics* junction per normalised group of channels (all of them for a LayerNorm over the
        channel axis; a LayerNorm over positions only acts on each channel alone). A LayerNorm's channel
        axis is the one axis along which the units vary (the last for a channels-last map), else the
        last of a sequence's and axis 1 of a map."""
        x = self._flow_of(n.args[0]) if n.args else None
        if not isinstance(x, torch.Tensor) or not isinstance(result, torch.Tensor):
            raise ValueError("no tensor input")
        real = lambda i, key: self._real(n.args[i]) if len(n.args) > i else self._real(n.kwargs.get(key))
        nd = x.dim()
        if isinstance(module, ops.ALONG_DIM_MODULES) or n.target in ops.ALONG_DIM_FUNCTIONS or n.target in ops.ALONG_DIM_METHODS:
            return self._on_along_dim(n, module, x, result)
        if isinstance(module, nn.LocalResponseNorm) or n.target is F.local_response_norm:
            size = int(module.size if module is not None else real(1, "size"))
            return _expand(self._windowed(self.readout(x, 1, f"{n.name}.input"), size, n.name), result.shape, 1)
        if isinstance(module, nn.GroupNorm) or n.target is F.group_norm:
            axis, groups = 1, int(module.num_groups if module is not None else real(1, "num_groups"))
        else:
            shape = module.normalized_shape if module is not None else real(1, "normalized_shape")
            k = 1 if isinstance(shape, int) else len(shape)
            axis = nd - 1 if nd <= 3 else 1  # channels last for sequences, first after the batch for maps
            # unless the ids say otherwise: units on the last axis only (a ConvNeXt block permutes its map
            # to channels last before its LayerNorm), or on axis 1 only (a Conv1d's [N, C, L] output)
            last, first = _uniform_except(x, nd - 1), _uniform_except(x, 1)
            if last != first:
                axis = nd - 1 if last else 1
            if axis < nd - k:  # normalised over positions only: each channel alone
                return self._on_pointwise(n, result)
            groups = 1
        out = self._normalized(self.readout(x, axis, f"{n.name}.input"), groups, n.name)
        return _expand(out, result.shape, axis)

    def _on_along_dim(self, n, module, x, result):
        """Softmax (log-softmax, softmin) and ``F.normalize`` along ``dim``, followed exactly on the ids:
        each output element is a junction of its own input element and a *statistics* node of every
        element along ``dim`` in its slice (the slices that hold the same ids share one). Along the
        channel axis of a tensor whose units vary along it alone, that is :meth:`_normalized` with one
        group (LayerNorm's wiring); along an axis the ids do not vary on (positions, an attention map's
        keys), every element reads only its own unit: the ids pass unchanged."""
        nd = x.dim()
        if module is not None:
            dim = -3 if isinstance(module, nn.Softmax2d) else module.dim
        elif n.target is F.normalize:
            dim = self._real(n.args[2]) if len(n.args) > 2 else self._real(n.kwargs.get("dim", 1))
        else:
            dim = self._real(n.args[1]) if len(n.args) > 1 else self._real(n.kwargs.get("dim"))
        if dim is None:  # torch's implicit dim (deprecated): 0 for 0-, 1- and 3-d tensors, else 1
            dim = 0 if nd in (0, 1, 3) else 1
        if tuple(result.shape) != tuple(x.shape):
            raise ValueError(f"it changed the shape ({tuple(x.shape)} -> {tuple(result.shape)})")
        d = sorted({int(k) % nd for k in (dim if isinstance(dim, (tuple, list)) else (dim,))})  # F.normalize: several
        s = _squeeze_uniform(x)
        if all(s.shape[k] == 1 for k in d):
            return x
        ends = list(range(nd - len(d), nd))
        t = s.movedim(d, ends)
        L = math.prod(t.shape[nd - len(d):])
        rows = t.reshape(-1, L).long()
        slices, which = torch.unique(rows, dim=0, return_inverse=True)
        stats = self.book.combine(torch.arange(slices.shape[0]).repeat_interleave(L), slices.reshape(-1),
                                  slices.shape[0], f"{n.name}.statistics", "statistics")
        pairs = torch.stack([rows.reshape(-1), stats[which].repeat_interleave(L)])  # [2, elements]
        combos, inverse = torch.unique(pairs, dim=1, return_inverse=True)
        m = combos.shape[1]
        ids = self.book.combine(torch.arange(m).repeat(2), combos.reshape(-1), m, n.name, "normalize")
        return ids[inverse].to(torch.float64).view(t.shape).movedim(ends, d).expand(result.shape)

    def _windowed(self, ch, size, name):
        """Channel sources ``ch`` after a LocalResponseNorm of ``size``: channel ``c`` is scaled by the
        squares of channels ``c - size // 2`` to ``c + (size - 1) // 2``, so it is a junction of them all."""
        C = ch.numel()
        src = torch.arange(C)[:, None] + torch.arange(-(size // 2), (size - 1) // 2 + 1)[None, :]
        row = torch.arange(C)[:, None].expand_as(src)
        ok = (src >= 0) & (src < C)
        return self.book.combine(row[ok], ch[src[ok]], C, name, "normalize")

    def _normalized(self, ch, groups, name):
        """Channel sources ``ch`` after a normalisation whose statistics span ``groups`` equal groups
        of channels: channel ``c`` becomes a junction of ``ch[c]`` and its group's statistics node."""
        C = ch.numel()
        if C % groups:
            raise ValueError(f"{C} channels do not split into {groups} groups")
        group_of = torch.arange(C) // (C // groups)
        stats = self.book.combine(group_of, ch, groups, f"{name}.statistics", "statistics")
        return self.book.combine(torch.arange(C).repeat(2), torch.cat([ch, stats[group_of]]), C, name, "normalize")

    def _on_broadcast(self, n, result):
        flows = self._tensor_flows((n.args, n.kwargs))
        if not isinstance(result, torch.Tensor):
            raise ValueError("non-tensor result")
        if not flows:
            return self._constant_like(result)
        if len(flows) == 1:
            if tuple(flows[0].shape) == tuple(result.shape):
                return flows[0]
            return flows[0].expand(result.shape) if flows[0].dim() == result.dim() else torch.broadcast_to(flows[0], result.shape)
        small = torch.broadcast_tensors(*[_squeeze_uniform(f) for f in flows])
        shape = small[0].shape
        stacked = torch.stack([s.reshape(-1) for s in small]).long()  # [k, P]
        combos, inverse = torch.unique(stacked, dim=1, return_inverse=True)
        k, m = combos.shape
        row = torch.arange(m).repeat(k)
        op = getattr(n.target, "__name__", str(n.target)).strip("_")
        ids = self.book.combine(row, combos.reshape(-1), m, n.name, op)
        return ids[inverse].to(torch.float64).view(shape).expand(result.shape)

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
        if n.target in ops.CONCAT_FUNCTIONS or n.target is torch.stack:
            first = [sub0(a) for a in args[0]]
            if any(not isinstance(f, torch.Tensor) for f in first):
                raise ValueError("an operand carries no traced data")
            args = [first] + [self._real(a) for a in args[1:]]
        else:
            args = [sub0(args[0])] + [self._real(a) for a in args[1:]]
            table = self._lookup_table(n, args)
            if table is not None:
                args[0] = table
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
        return self._mark(out)

    def _record_concat(self, n, parts, dim):
        if not parts or dim % parts[0].dim() != 1:
            return
        varies = lambda t: t.shape[1] > 1 and t.stride(1) != 0 and not bool((t == t.narrow(1, 0, 1)).all())
        if not any(varies(p) for p in parts):
            return  # every part holds the same units all along axis 1: positions (a class token), not channels
        names = [a.name if isinstance(a, fx.Node) else "?" for a in n.args[0]]
        self.book.concats.append(
            {"node": n.name, "parts": [(nm, self.readout(p, 1, f"{n.name}.{nm}")) for nm, p in zip(names, parts)]}
        )

    def _on_reduce(self, n, result):
        x = self._flow_of(n.args[0])
        if not isinstance(x, torch.Tensor):
            raise ValueError("no tensor input")
        args = [self._real(a) for a in n.args[1:]]
        kwargs = {k: self._real(v) for k, v in n.kwargs.items() if k != "dtype"}
        # the constant (zero padding) is no source: a padded map's mean is still each channel's own
        hi = torch.amax(x, *args, **kwargs)
        lo = torch.amin(torch.where(x == 0, torch.inf, x), *args, **kwargs)
        if torch.equal(hi, torch.where(torch.isinf(lo), 0.0, lo)):
            return hi
        return self._mix(n, [x], result, "reduce")

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


@contextlib.contextmanager
def _torch_own_functions():
    """Put torch's own functions back in the torch namespace where another library replaced them with
    Python functions of its own (torch_geometric's ``torch.index_select`` and ``torch.select``, which
    check ``input.dim()`` in Python), restoring the replacements on exit."""
    replaced = {name: f for name, f in vars(torch).items()
                if isinstance(f, types.FunctionType) and not name.startswith("_") and hasattr(ops.TORCH_OWN, name)
                and not (f.__module__ == "torch" or str(f.__module__).startswith("torch."))}
    try:
        for name in replaced:
            setattr(torch, name, getattr(ops.TORCH_OWN, name))
        yield
    finally:
        for name, f in replaced.items():
            setattr(torch, name, f)


# factories that take their sizes as separate ints (torch.zeros(b, c)) as well as one size (torch.zeros((b, c)))
_SIZED_FACTORIES = ("zeros", "ones", "empty", "rand", "randn")
# the functions themselves, for a forward whose module bound them by name (``from torch import zeros``): fx's
# autowrap records a call of one with a traced argument as one call_function node, sizes as given
SIZED_FACTORIES = tuple(getattr(torch, name) for name in _SIZED_FACTORIES)


@contextlib.contextmanager
def _sizes_packed():
    """Let fx trace ``torch.zeros(h.shape[0], h.shape[1])``: torch's argument parser takes separate sizes only
    as ints, and a traced shape read (a Proxy) among them failed with "zeros() takes 1 positional argument but
    2 were given", where ``torch.zeros(h.shape)`` traced. Inside, such a call is made with its sizes packed
    into one tuple, which fx records as ``torch.zeros((b, c))``: the same tensor when run. Restored on exit.
    A factory imported by name before tracing (``from torch import zeros``) is not reached so: fx's
    ``autowrap_functions`` record it (:data:`SIZED_FACTORIES`, given to :class:`SignatureTracer`)."""
    def packed(f):
        def call(*args, **kwargs):
            if len(args) > 1 and any(isinstance(a, fx.Proxy) for a in args):
                return f(args, **kwargs)
            return f(*args, **kwargs)
        return call

    own = {name: getattr(torch, name) for name in _SIZED_FACTORIES}
    try:
        for name, f in own.items():
            setattr(torch, name, packed(f))
        yield
    finally:
        for name, f in own.items():
            setattr(torch, name, f)


@serialized
def symbolic_trace(root: nn.Module, concrete_args=None) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` with torch's own functions in place of a library's Python replacements
    (:func:`_torch_own_functions`): fx records torch's function as one call, as it records any torch
    function, where it traced into the replacement and stopped at its ``if`` on a traced value (once
    torch_geometric was imported, every model calling ``torch.index_select`` fell back to module order,
    and ``graphs.compact`` refused it). The graph runs torch's function. Factories given separate traced
    sizes are traced too (:func:`_sizes_packed`), and a forward with keyword-only parameters keeps its
    calling convention (``forward(self, x, y=None, *, mask)``: :class:`SignatureTracer`)."""
    with _torch_own_functions(), _sizes_packed():
        tracer = SignatureTracer(autowrap_functions=SIZED_FACTORIES)
        graph = tracer.trace(root, concrete_args)
    return fx.GraphModule(tracer.root, graph, type(root).__name__)


class _Signature(fx.graph.CodeGen):
    """Writes a graph's forward with its first ``positional`` placeholders positional-only, before a ``/``, and
    its last ``keyword`` ones keyword-only, after a ``*``: fx writes every placeholder as a positional parameter,
    so ``forward(self, x, y=None, *, mask)`` became ``def forward(self, x, y = None, mask)``, a SyntaxError
    ("non-default argument follows default argument"), and without y's default ``forward(self, x, y, mask)``,
    which ``model(x, mask=m)`` does not call; ``forward(self, x, /)`` became ``forward(self, x)``."""

    def __init__(self, keyword: int, positional: int = 0):
        super().__init__()
        self.count, self.positional = keyword, positional

    def gen_fn_def(self, free_vars, maybe_return_annotation, **kwargs):
        free_vars = list(free_vars)
        if self.count:
            free_vars.insert(len(free_vars) - self.count, "*")
        if self.positional:
            free_vars.insert(self.positional, "/")
        return super().gen_fn_def(free_vars, maybe_return_annotation, **kwargs)


def _annotations(fn) -> Dict[str, Any]:
    """``fn``'s annotations as objects (a string one, ``from __future__ import annotations``, evaluated in the
    namespace ``fn`` was written in), those that a copy's code can write (:func:`_writable`); an annotation that
    does not evaluate or write is left out."""
    found = {}
    for name, a in inspect.get_annotations(fn).items():
        if isinstance(a, str):
            try:
                a = eval(a, getattr(fn, "__globals__", {}))  # noqa: S307 - what Python itself does for eval_str
            except Exception:  # noqa: BLE001 - a name imported only for type checkers
                continue
        if _writable(a):
            found[name] = a
    return found


def _writable(annotation) -> bool:
    """Can fx write ``annotation`` into a forward's code that runs (a type fx spells so that it names it), naming
    only what torch and Python's own library hold? The code a copy is saved with imports what it names, so the
    user's class (``cfg: Optional[Config]``) would have torch.load need the user's module, where a copy loads
    with torch alone."""
    g = fx.Graph()
    g.output(g.placeholder("a", type_expr=annotation), type_expr=annotation)
    code = g.python_code("self")
    try:
        exec(compile(code.src, "<annotation>", "exec"), dict(code.globals))  # noqa: S102 - fx's own code
    except Exception:  # noqa: BLE001 - a Literal's values, a local class fx cannot name, ...
        return False
    return all(_importable_anywhere(v) for v in code.globals.values())


def _importable_anywhere(obj) -> bool:
    """Is ``obj`` torch's, or of Python's own library (``typing.Optional``, ``int``), or without a module?"""
    module = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
    root = module.partition(".")[0] if isinstance(module, str) else None
    return root is None or root == "torch" or root in sys.stdlib_module_names


_NoneType = type(None)


def none_only(value: Any, msg: str) -> None:
    """The check on an input traced as None (the copy computes what the model does without it): fx's own,
    ``_assert_is_none``, which TorchScript cannot compile (its ``value: object``), so that ``torch.jit.script``
    of a copy with one failed where it scripted the model."""
    torch._assert(torch.jit.isinstance(value, _NoneType), msg)


class SignatureTracer(fx.Tracer):
    """``fx.Tracer`` whose graph is written with the traced forward's signature: its positional-only and
    keyword-only parameters so (:class:`_Signature`), defaults kept, and its annotations and return annotation
    on the placeholders and the output, as objects (a string one evaluated where the forward was written: the
    copy's code lives elsewhere; fx drops the return annotation of a forward with keyword-only parameters or
    inputs traced at a value, and those inputs' annotations). A
    GraphModule keeps its tracer's class, and torch.load traces the saved module's code again with it (the graph
    itself is not saved): the copy read back, whose code has that signature, is written so too; so is a copy
    with an input traced as None (its check, see below). Reading those back needs graphs importable; any other
    graph keeps ``fx.Tracer`` as its tracer, and a copy loads with torch alone. Where the placeholders are not the parameters one for one (a ``*args``, a tuple given in
    ``concrete_args``), the defaults of those a required one follows are dropped
    (:func:`_required_after_defaults`)."""

    def __init__(self, *args, autowrap_functions=(), **kwargs):
        # the check of an input traced as None, recorded as a call where torch.load traces a copy's code again
        super().__init__(*args, autowrap_functions=tuple(autowrap_functions) + (none_only,), **kwargs)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # a compacted model's FoldedConv is one call, taken as its convolution's (see ops.categorize)
        return isinstance(m, FoldedConv) or super().is_leaf_module(m, module_qualified_name)

    def trace(self, root, concrete_args=None):
        graph = super().trace(root, concrete_args)
        fn = getattr(type(root), self.traced_func_name) if isinstance(root, nn.Module) else root
        code = getattr(inspect.unwrap(fn), "__code__", None)
        holders = [n for n in graph.nodes if n.op == "placeholder"]
        keyword = code.co_kwonlyargcount if code is not None else 0
        bound = isinstance(root, nn.Module)  # self, not a placeholder
        own = code is not None and not code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS) \
            and len(holders) == code.co_argcount + keyword - bound
        if own:
            positional = max(code.co_posonlyargcount - bound, 0)
            if keyword or positional:
                graph._codegen = _Signature(keyword, positional)
            _annotate(graph, inspect.unwrap(fn), holders, code.co_varnames[bound:len(holders) + bound])
        else:
            _required_after_defaults(graph)
        checks = [n for n in graph.nodes if n.target is none_only or _assert_is_none is not None and n.target is _assert_is_none]
        for n in checks:
            n.target = none_only
        factories = [n for n in graph.nodes if n.op == "call_function" and n.target in SIZED_FACTORIES]
        for n in factories:  # autowrapped, ``zeros(b, c)``: packed as _sizes_packed packs ``torch.zeros(b, c)``,
            if len(n.args) > 1:  # which fx alone (torch.load traces the code again) cannot trace
                n.args = (tuple(n.args),)
        for n in checks + factories:
            # fx writes wrap("torch.fx._symbolic_trace._assert_is_none") into the code of the check it puts on
            # an input traced as None (and wrap("torch.zeros") for an autowrapped factory); torch.load runs it,
            # and every later fx trace in the process failed (KeyError: no global has that dotted name). The
            # check, none_only in its place, is autowrapped by this tracer, which torch.load traces such a copy with.
            n.meta.pop("is_wrapped", None)
        if not checks and not isinstance(graph._codegen, _Signature):
            # a GraphModule pickles its tracer's class, and torch.load needs it importable: where it would
            # write nothing fx's does not, fx's, so such a copy loads where graphs is not installed
            graph._tracer_cls = fx.Tracer
        return graph


def _annotate(graph: fx.Graph, fn, holders: List[fx.Node], names: Sequence[str]) -> None:
    """Give the placeholders ``holders`` of ``fn``'s parameters ``names`` (one for one) and the output of ``graph``
    ``fn``'s annotations (:func:`_annotations`); an input traced at a value (``mask=None``) has its own."""
    found = _annotations(fn)
    for n, name in zip(holders, names):
        n.type = found.get(name)
    out = next(n for n in graph.nodes if n.op == "output")
    out.type = found.get("return")


def _required_after_defaults(graph: fx.Graph) -> None:
    """Drop the defaults of the placeholders that a placeholder without one follows, which fx's positional
    signature cannot write (see :class:`_Signature`). Such a graph is run with a value for every
    placeholder (:func:`_placeholder_values`)."""
    required = False
    for n in reversed([n for n in graph.nodes if n.op == "placeholder"]):
        if not n.args:
            required = True
        elif required:
            n.args = ()


def _check_standard_transformer(module: nn.Module) -> None:
    """The transformer rules write out the standard layers' forward: refuse anything else (a custom
    layer inside nn.TransformerEncoder, a custom encoder inside nn.Transformer) before recording."""
    enc_dec = {nn.TransformerEncoder: nn.TransformerEncoderLayer, nn.TransformerDecoder: nn.TransformerDecoderLayer}
    parts = [module]
    if type(module) is nn.Transformer:
        parts = [module.encoder, module.decoder]
    for part in parts:
        kind = type(part)
        if kind in enc_dec:
            odd = [type(layer).__name__ for layer in part.layers if type(layer) is not enc_dec[kind]]
        else:
            odd = [] if kind in enc_dec.values() else [kind.__name__]
        if odd:
            raise ValueError(f"its parts are not the standard torch layers ({', '.join(sorted(set(odd)))}), whose "
                             "wiring the graph writes out; write the model with standard layers or your own modules")


# ---------------------------------------------------------------------------------------- API
TOKENS = 16  # the sequence length guessed for token indices (and float steps for a recurrent first layer)
# the layers whose input size shapes a float guess (a transposed conv reads its in_channels: a generator's first layer)
_FEATURE_LAYERS = ops.WEIGHTED_MODULES + ops.TRANSPOSED_MODULES + (nn.RNNBase, nn.RNNCellBase)


def default_example_input(model: nn.Module, tokens: Optional[bool] = None, batch: int = 1) -> List[torch.Tensor]:
    """Candidate example inputs (``batch`` samples), tried in order: float tensors shaped from
    ``in_shape`` or the first weighted layer, on the device and in the floating-point dtype of that
    layer's weight (a float64 or bfloat16 model cannot run a float32 input; a frozen parameter of
    another dtype registered before it says nothing of what the layer reads), else of the model's first
    floating-point parameter; and token indices (torch.long, each below the smallest ``nn.Embedding``
    / ``nn.EmbeddingBag``'s ``num_embeddings``, so in range for every table) shaped ``in_shape``, else
    ``(batch, 16)`` and ``(batch, n)`` for every smaller table size ``n`` (a positional table caps the
    sequence). The token guesses come first where the model's first layer is an embedding, after the
    float ones where a later one is, and not at all without one. The first layer is the first one the
    forward uses, in the order of its fx trace (symbolic: no input needed), so that a head registered
    before the stem is not taken for the layer reading the input; registration order where fx cannot
    trace the model. ``tokens=True`` keeps the token guesses only, ``False`` the float ones only. A
    model whose forward takes several inputs (no default; keyword-only ones too) is refused: nothing
    says what each of them is. The values come from a generator of their own, seeded 0: the same
    guesses at every call, and no draw from the global random generators (which would change what the
    caller's code draws next). A ``torch.compile`` wrapper is guessed for the module it runs."""
    from adaptive.connectome import _plain_module

    return _example_inputs(_plain_module(model), tokens, batch)


def _example_inputs(model: nn.Module, tokens: Optional[bool], batch: int,
                    gm: Optional[fx.GraphModule] = None) -> List[torch.Tensor]:
    """:func:`default_example_input`, with the model's fx graph where the caller traced it already."""
    names, keyword = _forward_inputs(model), _keyword_inputs(model)
    if len(names) > 1:
        raise InputGuessError(f"{type(model).__name__}.forward takes {len(names)} inputs ({', '.join(names)}) and "
                              f"graphs guesses a single one ({', '.join(names[1:])}: no guess)",
                              inputs=_input_order(model) or names, keyword=keyword)
    layers = _in_call_order(model, [m for m in model.modules() if isinstance(m, _FEATURE_LAYERS + ops.LOOKUP_MODULES)],
                            gm)
    tables = [m for m in layers if isinstance(m, ops.LOOKUP_MODULES)]
    first = next((m for m in layers if isinstance(m, _FEATURE_LAYERS)), None)
    w = (None if first is None else first.weight_ih_l0 if isinstance(first, nn.RNNBase)
         else first.weight_ih if isinstance(first, nn.RNNCellBase) else first.weight)
    p = w if isinstance(w, torch.Tensor) and w.is_floating_point() else next(
        (q for q in model.parameters() if q.is_floating_point()), None)
    dev = p.device if p is not None else torch.device("cpu")
    shape = getattr(model, "in_shape", None)
    g = torch.Generator().manual_seed(0)  # on the CPU, whatever the model's device: the same values anywhere
    ids = []
    if tables or tokens:
        high = min((int(m.num_embeddings) for m in tables), default=1)  # none: index 0, in range for any table
        lengths = [tuple(shape)] if shape is not None else [
            (n,) for n in sorted({TOKENS} | {int(m.num_embeddings) for m in tables if m.num_embeddings < TOKENS},
                                 reverse=True)]
        ids = [torch.randint(0, high, (batch, *s), generator=g).to(dev) for s in lengths]
    if tokens:
        return ids
    floats = []
    if shape is not None or first is not None:
        floats = [x.to(dev, p.dtype if p is not None else None) for x in _default_inputs(first, shape, batch, g)]
    elif tokens is False or not tables:  # tables: float features asked of a model of embeddings only
        raise InputGuessError(f"{type(model).__name__} has no " + ("Linear, Conv, ConvTranspose or recurrent layer to "
                                                                 "shape float features from" if tables else "Linear, "
                                                                 "Conv, ConvTranspose, recurrent or Embedding layer "
                                                                 "to guess an input from"))
    if tokens is False:
        return floats
    return ids + floats if tables and isinstance(layers[0], ops.LOOKUP_MODULES) else floats + ids


def _in_call_order(model: nn.Module, layers: List[nn.Module], gm: Optional[fx.GraphModule] = None) -> List[nn.Module]:
    """``layers`` (in registration order) in the order ``model``'s forward first uses them
    (:func:`_first_uses`); those it never uses keep their place after the others. Registration order
    where fx cannot trace the model."""
    if len(layers) < 2:
        return layers
    first = _first_uses(model, gm)
    if first is None:
        return layers
    owners = {id(m): i for i, m in enumerate(layers)}
    return sorted(layers, key=lambda m: (first.get(id(m), len(first)), owners[id(m)]))


def _first_uses(model: nn.Module, gm: Optional[fx.GraphModule] = None) -> Optional[Dict[int, int]]:
    """``{id(submodule): rank}``: the order in which ``model``'s forward first uses its submodules, as
    a module it calls or through a weight it computes with (``F.linear(x, self.fc.weight)``, a Linear
    subclass fx traces into; a read of the weight's dtype, device or shape is no use), in its fx graph
    (``gm``, else a symbolic trace: no input needed); a submodule it never uses is not in it. None where
    fx cannot trace the model or traces a torch module whole (its own first layer)."""
    if _wrap_root(model):
        return None
    if gm is None:
        try:
            with _unchanged(model), warnings.catch_warnings():  # a forward may store a proxy on the model
                warnings.simplefilter("ignore")
                gm = symbolic_trace(model, concrete_args=_unsupplied_defaults(model, 1))
        except Exception:  # noqa: BLE001 - fx raises many types: no order
            return None
    first = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            paths = [n.target]
        elif n.op in ("call_function", "call_method") and not _reads_metadata(n):  # computes with a weight
            paths = [a.target.rpartition(".")[0] for a in n.all_input_nodes if a.op == "get_attr"]
        else:
            continue
        for path in paths:
            try:
                m = model.get_submodule(path)
            except AttributeError:
                continue
            first.setdefault(id(m), len(first))
            first.setdefault(id(unfolded(m)), len(first))  # a FoldedConv's call uses its convolution
    return first


_METADATA_ATTRS = frozenset({"dtype", "device", "shape", "ndim", "is_cuda", "layout", "requires_grad"})
_METADATA_METHODS = frozenset({"size", "dim", "numel", "nelement", "get_device", "element_size"})


def _reads_metadata(n: fx.Node) -> bool:
    """Does ``n`` read a tensor's dtype, device or shape, not its values (``x.to(self.head.weight.dtype)``
    at the top of a forward uses no head)?"""
    if n.op == "call_function" and n.target is getattr:
        return n.args[1] in _METADATA_ATTRS
    return n.op == "call_method" and n.target in _METADATA_METHODS


@serialized
def runnable_example_input(model: nn.Module, tokens: Optional[bool] = None, batch: int = 1,
                           batch_axis: Optional[int] = None) -> torch.Tensor:
    """The first of :func:`default_example_input`'s candidates that ``model`` runs on (in eval mode,
    without gradients; the model is left as it was: see :func:`_unchanged`), as :func:`trace` picks one.
    ``batch_axis=1``: each candidate of two axes or more is laid out sequence-first before it is tried
    (``[B, T, ...]`` as ``[T, B, ...]``), for a model whose sequences hold their batch on axis 1.
    A ``torch.compile`` wrapper's module runs them uncompiled (compiling for each guess takes seconds)."""
    from adaptive.connectome import _plain_module

    model = _plain_module(model)
    candidates = default_example_input(model, tokens, batch)
    if checked_batch_axis(batch_axis) == 1:
        candidates = [x.movedim(0, 1).contiguous() if x.dim() >= 2 else x for x in candidates]
    if len(candidates) == 1:
        return candidates[0]
    errors = []
    with _unchanged(model):
        for x in candidates:
            try:
                with torch.no_grad():
                    model(x)
                return x
            except Exception as e:  # noqa: BLE001 - a wrong guess: try the next size
                errors.append(f"input {_described(x)}: {type(e).__name__}: {str(e)[:200]}")
    raise InputGuessError(f"could not guess an input for {type(model).__name__}", "; ".join(errors)[:400])


def _forward_params(model: nn.Module) -> list:
    """The parameters of ``model.forward`` (none where its signature cannot be read)."""
    try:
        return list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return []


def _forward_inputs(model: nn.Module) -> List[str]:
    """The names of the inputs ``model.forward`` needs (its parameters without a default: the positional
    ones, then the keyword-only ones, the order in which fx makes them the traced graph's placeholders);
    a MultiheadAttention's query alone, as a guessed input is traced as self-attention."""
    if isinstance(model, nn.MultiheadAttention):
        return ["query"]
    params = _forward_params(model)
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.default is p.empty]
    return positional + _keyword_inputs(model)


def _keyword_inputs(model: nn.Module) -> List[str]:
    """The keyword-only parameters of ``model.forward`` without a default (``forward(self, x, *, mask)``)."""
    return [p.name for p in _forward_params(model) if p.kind is p.KEYWORD_ONLY and p.default is p.empty]


def _call_with_inputs(model: nn.Module, args: Sequence[Any]):
    """``model(*args)`` with the inputs past its positional parameters given by name to its keyword-only
    ones, in order: an ``example_input=(x, mask)`` for ``forward(self, x, *, mask)`` runs the model as
    it runs its fx graph (whose placeholders are the positional parameters, then the keyword-only ones)."""
    params = _forward_params(model)
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return model(*args)
    npos = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    keyword = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    args = tuple(args)
    return model(*args[:npos], **dict(zip(keyword, args[npos:])))


def _refuse_named_inputs(model: nn.Module, example_input) -> None:
    """Refuse an ``example_input`` dict that gives the forward's inputs by name (``{"x": x, "mask": m}``,
    or several inputs however named): graphs takes them as a tuple, in the forward's order."""
    if not isinstance(example_input, Mapping):
        return
    named = [p.name for p in _forward_params(model) if p.name in example_input]
    if named or len(_forward_inputs(model)) > 1:
        order = ", ".join(named or _forward_inputs(model))
        raise TypeError(f"example_input is a dict of {type(model).__name__}.forward's inputs: pass them as a tuple, in "
                        f"the order of its parameters, example_input=({order}) (keyword-only ones last: graphs passes "
                        "them by name)")


class _unchanged:
    """Run forwards of ``model`` (the input guesses, the trace) in eval mode and leave it as they found
    it, bit for bit: the modules' modes, every buffer (BatchNorm statistics, a step a forward counts; put
    back where reassigned) and the weights that a lookup with ``max_norm`` (``nn.Embedding``,
    ``nn.EmbeddingBag``) renormalises in place on every forward, in eval mode too (the rows above
    ``max_norm``, the only ones it changes, are copied: other parameters would cost a model's worth of
    memory), the modules' other attributes a forward reassigns (a cache's length next to the cache
    buffer; a lazy module's aside) and the items of those that are a list, dict or set, which a forward
    may fill (features appended to ``self.feats``: by a symbolic trace, a Proxy), and the global random
    generators (a forward that draws noise, in eval mode too: see :mod:`adaptive.global_rng`); a parameter
    a forward changed in place anyway is warned about, by name. (A class, not a generator: the warning
    points at the user's call.)"""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        model = self.model
        self.modes = {m: m.training for m in model.modules()}
        self.bufs = [(m, k, b) for m in model.modules() for k, b in m._buffers.items() if isinstance(b, torch.Tensor)]
        # the other attributes a forward may set (a cache's length next to the cache buffer), those of a lazy
        # module aside: its first forward turns it into the module it stands for (no change to undo)
        self.attrs = [(m, {k: v for k, v in vars(m).items() if k not in _MODULE_STATE})
                      for m in model.modules() if not isinstance(m, nn.modules.lazy.LazyModuleMixin)]
        # and what a list, dict or set among them holds (a forward appending its features to self.feats: a
        # symbolic trace left a Proxy there)
        self.contents = [(v, type(v)(v)) for _, attrs in self.attrs for v in attrs.values()
                         if type(v) in (list, dict, set)]
        # a lazy module's uninitialised tensors have no values to copy (its first forward gives them a shape)
        self.saved = {id(b): (b, b.detach().clone()) for _, _, b in self.bufs if not nn.parameter.is_lazy(b)}
        # a max_norm lookup rescales only the rows it reads whose norm is above max_norm: those are copied
        self.renormed = {}
        for m in model.modules():
            w = getattr(m, "weight", None)
            if getattr(m, "max_norm", None) is not None and isinstance(w, torch.Tensor) and not nn.parameter.is_lazy(w):
                rows = (w.detach().norm(p=m.norm_type, dim=-1) > m.max_norm * 0.99).nonzero().squeeze(1)
                self.renormed[id(w)] = (w, rows, w.detach()[rows].clone())
        self.versions = {id(p): _version(p) for p in model.parameters() if not nn.parameter.is_lazy(p)}
        self.rng = global_states()
        model.eval()

    def __exit__(self, *exc):
        set_global_states(self.rng)
        for m, t in self.modes.items():
            m.training = t
        for m, k, b in self.bufs:
            if m._buffers.get(k) is not b:
                m._buffers[k] = b
        for m, attrs in self.attrs:
            for k, v in attrs.items():
                if k in vars(m) and vars(m)[k] is not v:
                    vars(m)[k] = v
        for v, held in self.contents:
            if type(v) is list:
                v[:] = held
            else:
                v.clear()
                v.update(held)
        with torch.no_grad():
            for t, copy in self.saved.values():
                if not torch.equal(t, copy):
                    t.copy_(copy)
            for w, rows, copy in self.renormed.values():
                if not torch.equal(w[rows], copy):
                    w[rows] = copy
        changed = [n for n, p in self.model.named_parameters()
                   if id(p) not in self.renormed and self.versions.get(id(p), _version(p)) != _version(p)]
        if changed:
            warn_user(f"graphs: running {type(self.model).__name__} to trace it changed parameter(s) {changed[:5]} in "
                      "place (in eval mode, without gradients); they are left changed")
        return False


def _version(t: torch.Tensor) -> Optional[int]:
    """How many times ``t`` was changed in place; None for an inference tensor (made under
    ``torch.inference_mode()``), which has no count and cannot be changed outside it."""
    return None if t.is_inference() else t._version


# a module's own tables (its parameters, buffers, submodules and hooks), which _unchanged does not put back
_MODULE_STATE = frozenset(vars(nn.Module()))


def _described(x) -> str:
    """A guessed input for an error message: its shape, and ``long`` for token indices."""
    return f"{tuple(x.shape)}" + ("" if x.is_floating_point() else f" {str(x.dtype).replace('torch.int64', 'long')}")


def _default_inputs(first: Optional[nn.Module], shape, batch: int, g: torch.Generator) -> List[torch.Tensor]:
    """Float guesses shaped ``shape`` where given, else from what ``first`` (the first feature layer) reads,
    drawn from ``g``."""
    if shape is not None:
        return [torch.randn(batch, *shape, generator=g)]
    if isinstance(first, nn.RNNBase):  # a sequence of TOKENS steps, on the axes the layer reads
        steps = (batch, TOKENS) if first.batch_first else (TOKENS, batch)
        return [torch.randn(*steps, first.input_size, generator=g)]
    if isinstance(first, nn.RNNCellBase):  # TOKENS steps that a loop of the model's own reads (x[:, t]), or one
        return [torch.randn(batch, TOKENS, first.input_size, generator=g),
                torch.randn(batch, first.input_size, generator=g)]
    if isinstance(first, nn.Linear):
        return [torch.randn(batch, first.in_features, generator=g)]
    c, d = first.in_channels, first.weight.dim() - 2
    sizes = {1: [64, 256, 28, 32], 2: [32, 224, 28, 64, 96], 3: [16, 32]}[d]
    return [torch.randn(batch, c, *([s] * d), generator=g) for s in sizes]


def _nested(x) -> bool:
    """A tuple or list given as one input (not a PackedSequence, which is a tuple too)."""
    return isinstance(x, (tuple, list)) and not isinstance(x, (nn.utils.rnn.PackedSequence, torch.Size))


def _auto_input_nodes(model: nn.Module, x: torch.Tensor) -> str:
    convs = any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d) + ops.TRANSPOSED_MODULES) for m in model.modules())
    first = next((t for t in tree_leaves(x) if isinstance(t, torch.Tensor) and t.dim() > 0), None)  # x nested too
    return "channels" if convs or (first is not None and first[0].numel() > 1_000_000) else "elements"


@serialized
def trace(model: nn.Module, example_input=None, input_nodes: str = "auto", batch_axis: Optional[int] = None) -> Trace:
    """Trace ``model``'s data flow (see module docstring). ``example_input``: a tensor or a tuple of
    tensors (batch first), one per positional input; an input that is itself a tuple or list of tensors
    (``forward(self, xy)``: ``example_input=((x, y),)``) gives an input group per tensor, ``xy[0]``,
    ``xy[1]``; None infers one. ``input_nodes``: "channels" (one node per input
    channel), "elements" (per input feature or pixel) or "auto" (elements for models without
    convolutions). ``batch_axis``: the axis of every input (of two axes or more) that holds its batch, 0 or 1
    (``[T, B, F]`` sequences); None infers it (:mod:`graphs.batch_axis`). A forward that needs a size as a Python
    number (``range(x.shape[1])``) is traced with the example input's sizes (:mod:`graphs.sized`). Falls back to
    module order, with a warning, when fx cannot trace the model."""
    if input_nodes not in ("auto", "channels", "elements"):
        raise ValueError(f"input_nodes must be 'auto', 'channels' or 'elements', got {input_nodes!r}")
    batch_axis = checked_batch_axis(batch_axis)
    if batch_axis is not None and example_input is None:
        raise ValueError(f"batch_axis={batch_axis} needs an example_input laid out so: graphs guesses inputs itself "
                         "(batch first, or as a recurrent first layer's batch_first says) and knows their batch axis")
    from adaptive.connectome import _plain_module

    model = _plain_module(model)  # a torch.compile or DDP wrapper: the module it runs, under its own names
    if isinstance(example_input, Mapping):
        _refuse_named_inputs(model, example_input)
        raise TypeError(f"example_input is a dict, which {type(model).__name__}.forward takes as one argument; graphs "
                        "follows tensors only (a tensor, or a tuple of them, one per input): trace a module whose "
                        "forward takes the tensors and builds the dict")
    # trace and run the inference graph (no aux heads, dropout or batch statistics), leaving the model as it was
    with _unchanged(model):
        tr = _trace_eval(model, example_input, input_nodes, batch_axis)
    tr.batch_axis = batch_axis
    return tr


class _Root(nn.Module):
    """Holds an attention, recurrent, transformer or other torch.nn module with a rule (a Linear, a
    Conv, a normalisation, ...) given as the whole model, so that fx records it as one call (which
    the rules above follow) instead of tracing into its forward: fx never treats the root as a leaf,
    so a bare nn.Linear would otherwise become an F.linear call that no layer owns."""

    def __init__(self, m: nn.Module, nargs: int):
        super().__init__()
        self.m, self.nargs = m, nargs

    def forward(self, a, b=None, c=None):
        if isinstance(self.m, nn.MultiheadAttention) and self.nargs == 1:
            return self.m(a, a, a)  # self-attention
        return self.m(*(a, b, c)[: self.nargs])


_ROOT_RULES = (nn.MultiheadAttention, nn.RNNBase, nn.RNNCellBase) + ops.TRANSFORMER_MODULES
# modules followed as one call only when fx makes them a leaf (torch.nn's own, not a subclass defined
# elsewhere, which fx traces into wherever it is): wrapped as the root too, as inside a Sequential
_LEAF_RULES = (ops.WEIGHTED_MODULES + ops.TRANSPOSED_MODULES + ops.NORMALIZE_MODULES + ops.POINTWISE_MODULES
               + ops.SHAPE_MODULES + ops.LOOKUP_MODULES)


def _wrap_root(model: nn.Module) -> bool:
    """Is ``model`` traced as ``_Root(model)``: a module a rule follows as one call?"""
    return isinstance(model, _ROOT_RULES) or (
        isinstance(model, _LEAF_RULES) and fx.Tracer().is_leaf_module(model, "m"))


def _unwrap(tr: Trace) -> Trace:
    """Names of a trace of ``_Root(model)`` as the model's own (drop the ``m.`` prefix; ``m``, the
    model itself, is ``""`` as in ``model.named_modules()``)."""
    cut = lambda name: name[2:] if name.startswith("m.") else "" if name == "m" else name
    for g in tr.groups:
        g.name = cut(g.name)
    for l in tr.layers:
        l.module, l.param = cut(l.module), cut(l.param)
    tr.unknown_weights = {what: [cut(p) for p in names] for what, names in tr.unknown_weights.items()}
    return tr


def _failure(e: Exception) -> str:
    """``Type: message (at node 'name')`` of what running the model on an input raised. torch's ShapeProp
    re-raises an op's error as ``ShapeProp error for: node=... with meta={...}``, whose first few hundred
    characters are the node's metadata: the op's own error (its ``__cause__``) is what says what was
    wrong (a dtype, a shape), and the node fx was executing where it failed."""
    where = str(e).partition("\n\nWhile executing %")[2].split(" ", 1)[0]
    if isinstance(e, RuntimeError) and str(e).startswith("ShapeProp error") and e.__cause__ is not None:
        e = e.__cause__
    msg = str(e).split("\n\nWhile executing")[0]
    return f"{type(e).__name__}: {msg[:200]}" + (f" (at node {where!r})" if where else "")


def _input_failure(xs: tuple, e: Exception) -> str:
    """``input [shapes]: Type: message (at node 'name')`` of what running a model on the inputs ``xs`` raised."""
    shapes = ", ".join(_described(t) if isinstance(t, torch.Tensor) else type(t).__name__ for t in xs)
    return f"input [{shapes}]: {_failure(e)}"


def example_input_failed(model: nn.Module, x, e: Exception) -> RuntimeError:
    """The error :func:`build` and :func:`graphs.compact` raise when ``model`` fails on the caller's
    ``example_input`` ``x`` (a tensor or a tuple of inputs): what was wrong and at which node, without
    fx's dump of the node it was executing."""
    xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    return RuntimeError(f"running {type(model).__name__} on example_input failed: {_input_failure(xs, e)}")


def _trace_eval(model, example_input, input_nodes, batch_axis: Optional[int] = None) -> Trace:
    root, gm, sized = _wrap_root(model), None, False
    if not root:
        given = (tuple(example_input) if isinstance(example_input, (tuple, list))
                 and not isinstance(example_input, nn.utils.rnn.PackedSequence)
                 else () if example_input is None else (example_input,))
        _refuse_miscounted_inputs(model, given)
        fixed = _unsupplied_defaults(model, len(given), given)
        try:
            gm = symbolic_trace(model, concrete_args=fixed)
        except Exception as e:
            # fx needed a size as a number (range(x.shape[1])): traced again with each example input's sizes
            failed = f"torch.fx could not trace {type(model).__name__}{_where(e)}: {type(e).__name__}: {e}"
            sized = True
    if sized:
        try:
            candidates = [example_input] if example_input is not None else _example_inputs(model, None, 1)
        except Exception:  # noqa: BLE001 - nothing to trace the sizes of: module order, as fx failed
            return fallback_trace(model, failed)
    else:
        candidates = [example_input] if example_input is not None else _example_inputs(model, None, 1, None if root else gm)
    errors = []
    for x in candidates:
        xs = tuple(x) if isinstance(x, (tuple, list)) and not isinstance(x, nn.utils.rnn.PackedSequence) else (x,)
        if any(isinstance(t, nn.utils.rnn.PackedSequence) for t in xs):
            raise ValueError(
                "graphs cannot trace a PackedSequence input: pass the padded batch instead (a tensor [B, L, features] "
                "or [L, B, features]); the graph of one time step does not depend on the sequence lengths")
        traced = _Root(model, len(xs)) if root else model
        if root:
            gm = symbolic_trace(traced, concrete_args={k: None for k in "abc"[len(xs):]})
        elif sized:
            from .sized import sized_trace
            try:
                with _unchanged(model), warnings.catch_warnings():  # the sizes are computed by running the model
                    warnings.simplefilter("ignore")
                    gm = sized_trace(model, lambda holders: _placeholder_values(model, holders, xs), fixed)
            except Exception:  # noqa: BLE001 - a question about data, or an input it does not run on: the next one
                gm = None
                continue
        mode = input_nodes if input_nodes != "auto" else _auto_input_nodes(model, xs[0])
        book = _Book()
        prop = FlowProp(gm, book, mode, traced, batch_axis)
        try:
            # torch's ShapeProp prints a traceback for a failing input; a wrong guess is not news
            with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")  # re-emitted below, once
                holders = sum(n.op == "placeholder" for n in gm.graph.nodes)
                result = prop.propagate(*(xs if root else _placeholder_values(model, holders, xs)))
        except Exception as e:
            if isinstance(e, InputError) and example_input is not None:  # fx appends the node: said once
                raise InputError(str(e).split("\n\nWhile executing")[0]) from None
            errors.append(_input_failure(xs, e))
            continue
        _add_outputs(prop, gm, result)
        for w in book.warnings:
            warn_user(w)
        tr = Trace(book.groups, book.layers, book.wires, book.concats, book.warnings, True, book.recurrent, book.unknown,
                   unknown_weights=book.unknown_weights)
        return _unwrap(tr) if root else tr
    if sized and not errors:  # no example's sizes traced it either: module order, for fx's reason
        return fallback_trace(model, failed)
    if example_input is not None:
        raise RuntimeError(f"running {type(model).__name__} on example_input failed: {errors[0]}")
    raise InputGuessError(f"could not guess an input for {type(model).__name__}", "; ".join(errors)[:400])


def _input_params(model: nn.Module) -> Optional[list]:
    """The parameters of ``model.forward`` in the order the inputs bind to them (:func:`_call_with_inputs`):
    the positional ones, then the keyword-only ones; None for a forward taking ``*args`` or ``**kwargs``
    (or without a signature), whose inputs bind as fx and Python bind them."""
    params = _forward_params(model)
    if not params or any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return None
    return ([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            + [p for p in params if p.kind is p.KEYWORD_ONLY])


def _unsupplied_defaults(model: nn.Module, nargs: int, given: Sequence[Any] = ()) -> Optional[Dict[str, Any]]:
    """The parameters of ``model.forward`` after the ``nargs`` inputs (positional ones, then keyword-only
    ones, as :func:`_call_with_inputs` binds them) that have defaults, with their defaults, and those of the
    inputs ``given`` as None: the run uses them, so fx traces with them (``mask=None``,
    ``return_features=False``: traced as proxies, an ``if`` on them stopped fx, or took the branch the run
    does not)."""
    params = _forward_params(model)
    bound = _input_params(model)
    if bound is None:  # *args takes the inputs past the positional parameters; keyword-only ones keep defaults
        bound = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        rest = bound[nargs:] + [p for p in params if p.kind is p.KEYWORD_ONLY]
    else:
        rest = bound[nargs:]
    none = {p.name: None for p, v in zip(bound, given) if v is None}
    # only values fx can specialise on (and check): a tuple, list or dict it flattens into placeholders
    # it cannot write out (a SyntaxError, so module order); a tensor, function or object stays a proxy
    fixed = {p.name: p.default for p in rest if p.default is None or type(p.default) in (bool, int, float, str)}
    return {**none, **fixed} or None


def _refuse_miscounted_inputs(model: nn.Module, given: Sequence[Any]) -> None:
    """Refuse an ``example_input`` that leaves out an input ``model.forward`` requires after it, or gives
    more inputs than it has parameters (the extra ones were silently dropped: graphs and compact's check
    ran the model without them): the inputs bind in order, keyword-only ones after the positional ones,
    so ``(x, mask)`` for ``forward(self, x, y=None, *, mask)`` is ``y=mask`` (a run of its fx graph said
    only "Expected positional argument for parameter mask"); None stands for an optional input left at
    its default."""
    params = _input_params(model)
    if not given or params is None:
        return
    if len(given) > len(params):
        order = ", ".join(_input_order(model) or [params[0].name]) + ("," if len(_input_order(model)) < 2 else "")
        raise TypeError(f"example_input gives {len(given)} inputs and {type(model).__name__}.forward takes "
                        f"{len(params)} ({', '.join(p.name for p in params)}): the inputs bind to its parameters in "
                        f"order (keyword-only ones last, passed by name), so pass example_input=({order}), None "
                        "for an optional input left at its "
                        "default; an input that is itself a tuple of tensors goes in a tuple of its own, ((x, y),)")
    missing = [p.name for p in params[len(given):] if p.default is p.empty]
    if missing:
        raise TypeError(f"example_input gives {len(given)} input(s) and {type(model).__name__}.forward also needs "
                        f"{', '.join(missing)}: the inputs bind to its parameters in order (keyword-only ones last, "
                        f"passed by name), so pass example_input=({', '.join(_input_order(model))}), None for an "
                        "optional input left at its default")


def _input_order(model: nn.Module) -> List[str]:
    """The tuple of inputs ``example_input`` gives ``model``: forward's parameters in the order inputs bind
    to them, up to the last one it requires, ``y or None`` for an optional one before it (``forward(self, x,
    y=None, *, mask)``: ``x, y or None, mask``); empty for a forward taking ``*args`` or ``**kwargs``."""
    params = _input_params(model) or []
    last = max((i for i, p in enumerate(params) if p.default is p.empty), default=-1)
    return [p.name if p.default is p.empty else f"{p.name} or None" for p in params[:last + 1]]


def _placeholder_values(model: nn.Module, holders: int, xs: Sequence[Any]) -> tuple:
    """The values to run ``model``'s fx graph (of ``holders`` placeholders) on for the inputs ``xs``: one per placeholder, the
    inputs bound to forward's parameters as :func:`_call_with_inputs` binds them (keyword-only ones after
    the positional ones) and the defaults of the rest, so that an ``(x, mask)`` for ``forward(self, x,
    y=None, *, mask)`` gives ``mask`` the mask, not ``y``. ``xs`` as they are where the placeholders are
    not forward's parameters one for one (``*args``), and up to the first required input ``xs`` lacks
    (the run then says which)."""
    params = _input_params(model)
    if params is None or holders != len(params) or len(xs) > len(params):
        return tuple(xs)
    values = list(xs)
    for p in params[len(xs):]:
        if p.default is p.empty:
            break
        values.append(p.default)
    return tuple(values)


def _add_outputs(prop: FlowProp, gm: fx.GraphModule, result) -> None:
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    flows = prop._tensor_flows(out_node.args)
    for i, f in enumerate(flows):
        # logits [N, classes] and images [N, C, ...] keep units on axis 1; sequences [N, T, F] on the last
        if f.dim() > 1:
            axis = 1 if f.dim() == 2 or _uniform_except(f, 1) else -1
            ids = prop.readout(f, axis, "output")
        else:
            # a 0-dim value (an auxiliary loss) or one value per sample ([N]): one output node when
            # every element comes from the same node, whatever the batch size; else one per element
            ids = f.reshape(-1).long()
            if ids.numel() > 1 and bool((ids == ids[0]).all()):
                ids = ids[:1]
        gid, start = prop.book.new_group("output" if len(flows) == 1 else f"output{i}", "output", "logits", ids.numel())
        dst = torch.arange(start, start + ids.numel())
        live = ids != 0
        prop.book.wires[gid] = (ids[live], dst[live])


def _where(e: BaseException) -> str:
    """' at file:line (code)' of the innermost frame of the failure that is outside torch."""
    import traceback

    frames = [f for f in traceback.extract_tb(e.__traceback__) if "/torch/" not in f.filename.replace("\\", "/")]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {f.filename}:{f.lineno} in {f.name} ({(f.line or '').strip()})"


def fallback_trace(model: nn.Module, reason: str) -> Trace:
    """Chain the weighted layers in module registration order (used when fx tracing fails).

    A layer reading as many units as the previous one wrote is wired one to one; a multiple of it
    (a flatten) maps each unit to its block of features; anything else is wired all to all."""
    msg = f"graphs: {reason}; falling back to module order (residual and concat links are missing)"
    warn_user(msg)
    book = _Book()
    book.warnings.append(msg)
    prev = None
    for name, m in model.named_modules():
        if not isinstance(m, ops.WEIGHTED_MODULES + ops.TRANSPOSED_MODULES):
            continue
        groups, transposed = int(getattr(m, "groups", 1)), isinstance(m, ops.TRANSPOSED_MODULES)
        # (out, in/groups, *kernel); a transposed convolution stores (in, out/groups, *kernel)
        shape = transposed_shape(m.weight.shape, groups) if transposed else tuple(m.weight.shape)
        n_in = shape[1] * groups
        if prev is None:
            _, s = book.new_group("input", "input", "channels", n_in)
            in_src = torch.arange(s, s + n_in)
        elif n_in == prev.numel():
            in_src = prev
        elif n_in % prev.numel() == 0:
            in_src = prev.repeat_interleave(n_in // prev.numel())
        else:
            row = torch.zeros(prev.numel(), dtype=torch.long)
            j = book.combine(row, prev, 1, f"{name}.input", "unknown")
            in_src = j.expand(n_in).clone()
        lid = len(book.layers)
        gid, start = book.new_group(name, "layer", type(m).__name__, shape[0], layer=lid)
        kind = "linear" if isinstance(m, nn.Linear) else f"conv{'transpose' if transposed else ''}{m.weight.dim() - 2}d"
        book.layers.append(LayerFlow(name, f"{name}.weight", gid, kind, shape, groups, in_src, "", transposed=transposed))
        prev = torch.arange(start, start + shape[0])
    if prev is not None:
        gid, start = book.new_group("output", "output", "logits", prev.numel())
        book.wires[gid] = (prev, torch.arange(start, start + prev.numel()))
    return Trace(book.groups, book.layers, book.wires, book.concats, book.warnings, traced=False, reason=reason)
