"""The connectome as a graph at three levels, built with tensor operations.

- ``synapse``: one edge per live synapse, from the node feeding the synapse's input channel to the
  synapse's output unit (attributes: layer, position in the weight, weight value, utility).
- ``unit``: one edge per live ensemble of synapses joining two nodes (all synapses of a layer
  between one source node and one output unit): live synapse count, L1 and L2 of their weights,
  summed utility.
- ``layer``: one node per layer / junction op / input / output; edges aggregate the unit edges.

Nodes at the synapse and unit levels are the same: the constant node (id 0, zero padding), input
channels or features, units (one per output channel/feature of each Linear/Conv, one per row of an
attention projection or a recurrent matrix), junctions (where
a residual addition or a product merges several sources; wires join their summands to them) and
output classes; a recurrent layer adds state nodes (kind input) for its previous step's output.
Edge ``kind``: 0 synapse, 1 wire, 2 recurrent (a back edge from a recurrent layer's output unit to
the state node that holds it at the next step; it carries no synapse, and signal depth ignores it).
Every node carries its kind, group, layer, index, signal depth (the number of
weighted layers on the longest and the shortest live path from an input; -1 when unreached) and
its in- and out-degree in this graph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune
from torch.nn.utils.spectral_norm import SpectralNorm

from .batch_axis import checked_batch_axis
from .locking import serialized
from .trace import trace
from .trace_types import (CONST, EDGE_RECURRENT, EDGE_SYNAPSE, EDGE_WIRE, INPUT, JUNCTION, KIND_NAMES, OUTPUT, UNIT,
                          Group, LayerFlow, Trace)
from adaptive.connectome import _plain_module
from adaptive.discovery import pruning_hooks, transposed_shape, weight_hooks
from adaptive.warn import warn_user

LEVELS = ("synapse", "unit", "layer")


@dataclass
class ConnectomeGraph:
    """A directed graph held as tensors: ``src``/``dst`` LongTensors [E] (source -> target),
    ``edge_attrs`` name -> tensor [E], ``node_attrs`` name -> tensor [N], plus the ``groups``
    (inputs, layers, junction ops, outputs) the nodes belong to. Node ids are 0..N-1.

    ``level``: "synapse", "unit" or "layer" (see :func:`build`); ``layers``: each weighted layer's
    flow (its input and output groups); ``concats``: each concatenation, its node and the parts it
    joins (what :func:`graphs.concat_composition` analyses); ``warnings``: what the trace could not
    follow exactly; ``meta``: facts of the build (model class, ensemble, live counts); ``edge_ptr``:
    where edges are grouped by target group, the edges into group g are ``edge_ptr[g]:edge_ptr[g+1]``
    (None otherwise); ``unit_node_attrs``: at the layer level, the node attributes of the unit graph
    behind it (None at other levels)."""

    level: str
    node_attrs: Dict[str, torch.Tensor]
    src: torch.Tensor
    dst: torch.Tensor
    edge_attrs: Dict[str, torch.Tensor]
    groups: List[Group]
    layers: List[LayerFlow] = field(default_factory=list)
    concats: List[dict] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    meta: Dict[str, object] = field(default_factory=dict)
    edge_ptr: Optional[torch.Tensor] = None  # edges into group g are edge_ptr[g]:edge_ptr[g+1]
    unit_node_attrs: Optional[Dict[str, torch.Tensor]] = None  # layer level: the unit nodes behind it

    @property
    def num_nodes(self) -> int:
        return int(next(iter(self.node_attrs.values())).numel())

    @property
    def num_edges(self) -> int:
        return int(self.src.numel())

    def node_names(self) -> List[str]:
        """``group:index`` for unit-level nodes, the group name at the layer level."""
        if self.level == "layer":
            return [g.name for g in self.groups]
        return [f"{g.name}:{i}" if g.count > 1 or g.kind != "constant" else g.name for g in self.groups for i in range(g.count)]

    def live_synapses(self) -> int:
        """Number of live synapses the graph holds (every synapse once, whatever its sources; a weight
        tied between layers has edges at each use and counts once)."""
        if self.meta.get("contracted") or self.meta.get("shared_weights"):
            return int(self.meta["live_synapses"])
        if self.level == "synapse":
            return int((self.edge_attrs["kind"] == EDGE_SYNAPSE).sum())
        return int(self.edge_attrs["count"].sum(dtype=torch.float64))

    def __repr__(self) -> str:
        kinds = torch.bincount(self.node_attrs["kind"], minlength=len(KIND_NAMES)) if self.level != "layer" else None
        ks = "" if kinds is None else ", " + ", ".join(f"{k}={int(c)}" for k, c in zip(KIND_NAMES, kinds) if c)
        return f"ConnectomeGraph(level={self.level!r}, nodes={self.num_nodes:,}, edges={self.num_edges:,}{ks})"


# ------------------------------------------------------------------------------------ helpers
def _computed(model: nn.Module, name: str):
    """``(module, attribute, hook)`` when ``name`` is a weight computed at every call from other
    parameters (a parametrization: hook None; old-style weight_norm or spectral_norm, or the
    ``NAME_orig * NAME_mask`` of ``torch.nn.utils.prune``: its hook), else None."""
    mname, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(mname)
    except AttributeError:
        return None
    hook = weight_hooks(module).get(attr) or pruning_hooks(module).get(attr)
    return (module, attr, hook) if hook is not None or parametrize.is_parametrized(module, attr) else None


def _param(model: nn.Module, name: str) -> Optional[nn.Parameter]:
    """``model``'s parameter called ``name`` (a tied weight answers to each of its names), or None
    for a computed weight (:func:`_computed`): such a layer holds no synapses of any connectome."""
    if _computed(model, name) is not None:  # asked first: reading a parametrized weight computes it
        return None
    try:
        return model.get_parameter(name)
    except AttributeError as e:
        raise KeyError(f"{type(model).__name__} has no parameter {name!r}") from e


def _param_or_none(model: nn.Module, name: str) -> Optional[nn.Parameter]:
    """``model``'s parameter ``name``, or None when it has none by that name."""
    try:
        return model.get_parameter(name)
    except AttributeError:
        return None


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    """The values of the weight ``name``: its parameter's, or those its parametrization or
    weight_norm/spectral_norm hook computes now (as an eval-mode call would)."""
    p = _param(model, name)
    if p is not None:
        return p
    module, attr, hook = _computed(model, name)
    with torch.no_grad():
        if isinstance(hook, SpectralNorm):
            return hook.compute_weight(module, do_power_iteration=False)
        if isinstance(hook, torch_prune.BasePruningMethod):  # weight_orig * weight_mask, as its next call
            return hook.apply_mask(module)
        if hook is not None:  # old-style weight_norm: the attribute holds the last call's value, stale
            return hook.compute_weight(module)  # after an optimizer step
        # a parametrization in training mode may update its state when read (spectral_norm's power
        # iteration moves its buffers): read it as an eval-mode call would, and leave it as it was
        plist = module.parametrizations[attr]
        modes = [(m, m.training) for m in plist.modules()]
        plist.eval()
        try:
            return getattr(module, attr).clone()
        finally:
            for m, mode in modes:
                m.training = mode


def _conn_name(conn, model: nn.Module, layer: LayerFlow) -> Optional[str]:
    """The connectome's name for ``layer``'s weight: its own name or, for a weight tied to another
    module's (the connectome keeps it once, under that module's name), the name it is kept under."""
    if conn is None or layer.param in conn.masks:
        return layer.param
    w = _param(model, layer.param)
    return next((n for n, p in conn.params.items() if p is w), layer.param) if w is not None else layer.param


def _weight_and_mask(conn, model: nn.Module, layer: LayerFlow, w: Optional[torch.Tensor] = None):
    """``layer``'s weight (``w``, the whole weight's values, when given) and mask (its rows of them for
    an attention projection), on the CPU. A weight outside the connectome is all live. Values are float32
    (half and bfloat16 widen exactly), a float64 weight's float64: the graph's ``weight`` edges equal the
    model's weights, and its L1 and L2 are summed without rounding them first."""
    w = (_weight(model, layer.param) if w is None else w).detach()
    m = conn.masks.get(_conn_name(conn, model, layer)) if conn is not None else None
    if m is None:
        m = torch.ones(w.shape, dtype=torch.bool)
    w = layer.part(w)
    return w.to(torch.float64 if w.dtype == torch.float64 else torch.float32).cpu(), layer.part(m).cpu()


def _utility_for(utility, conn, layer: LayerFlow, shape, model=None) -> Optional[torch.Tensor]:
    """``utility`` of ``layer``'s synapses (its rows of the parameter's); ``shape`` is the whole
    parameter's. float32 (half and bfloat16 widen exactly), a float64 utility's float64, as the weights
    (:func:`_weight_and_mask`): it was rounded to float32, so the graph's ``utility`` (and an export of
    it) lost the precision the estimator's float64 scores had."""
    name = layer.param if model is None else _conn_name(conn, model, layer)
    if not utility or name not in utility:
        return None
    u = utility[name].detach()
    u = u.to(torch.float64 if u.dtype == torch.float64 else torch.float32).cpu()
    if tuple(u.shape) == tuple(shape):
        return layer.part(u)
    gran = conn.granularities.get(name) if conn is not None else None
    if gran is not None:
        if tuple(u.shape) == tuple(gran.ensemble_shape(torch.Size(shape))):
            # spread an ensemble's utility evenly over its synapses so sums are preserved
            size = torch.Size(shape)
            return layer.part(gran.expand(u, size) / gran.expand(gran.ensemble_sizes(size), size))
    raise ValueError(
        f"utility[{layer.param!r}] has shape {tuple(u.shape)}: give one value per synapse {tuple(shape)} or per ensemble"
    )


def _aggregate(key: torch.Tensor, cols: Dict[str, torch.Tensor]):
    """Sum ``cols`` over equal ``key``; returns (unique keys, summed cols)."""
    uk, inv = torch.unique(key, return_inverse=True)
    out = {}
    for k, v in cols.items():
        out[k] = torch.zeros(uk.numel(), dtype=v.dtype).index_add_(0, inv, v)
    return uk, out


def _unit_edges(layer: LayerFlow, start: int, w, m, u):
    """Edges of one weighted layer at the unit level: one per (source node, output unit) pair.

    When several input channels share a source (the h*w features of a flattened channel, zero
    padding) the per-channel sums are first pooled onto the distinct sources with a dense
    ``index_add_`` along the input axis (groups == 1) or a sort (grouped layers)."""
    o_n, ipg = layer.shape[0], layer.shape[1]
    if m.numel() == 0:  # a layer of no units or no inputs (a Linear(4, 0), which compact leaves of dead units): no edges
        none = torch.zeros(0, dtype=torch.long)
        cols = {"count": torch.zeros(0, dtype=torch.int32), "l1": w.new_zeros(0), "l2": w.new_zeros(0)}
        if u is not None:
            cols["utility"] = u.new_zeros(0)
        return none, none, cols
    opg = o_n // layer.groups
    per = (o_n, ipg, math.prod(m.shape[2:]))  # not -1: ambiguous for a layer of no units or no inputs (a Linear(4, 0))
    mf = m.reshape(per)
    # absent synapses selected out, not multiplied by 0: a NaN or inf weight or utility there (0 * inf
    # is NaN) would make the sum of its whole unit edge NaN
    wm = torch.where(m, w, 0.0).reshape(per)
    mats = {"count": mf.sum(-1, dtype=torch.int32), "l1": wm.abs().sum(-1), "l2": (wm * wm).sum(-1)}
    if u is not None:
        mats["utility"] = torch.where(m, u, 0.0).reshape(per).sum(-1)
    srcs, inv = torch.unique(layer.in_src, return_inverse=True)
    in_src = layer.in_src
    hw = in_src.numel() // srcs.numel()
    blocks = in_src.view(-1, hw) if in_src.numel() == hw * srcs.numel() else None
    if hw > 1 and layer.groups == 1 and blocks is not None and bool((blocks == blocks[:, :1]).all()):
        # a flatten: each source owns hw consecutive features
        mats = {k: v.view(o_n, -1, hw).sum(-1) for k, v in mats.items()}
        in_src, ipg, opg = blocks[:, 0].contiguous(), blocks.shape[0], o_n
    elif srcs.numel() < in_src.numel() and layer.groups == 1:
        mats = {k: torch.zeros(o_n, srcs.numel(), dtype=v.dtype).index_add_(1, inv, v) for k, v in mats.items()}
        in_src, ipg = srcs, srcs.numel()
        opg = o_n
    o, i = (mats["count"] > 0).nonzero(as_tuple=True)
    c = torch.div(o, opg, rounding_mode="floor") * ipg + i
    src = in_src[c]
    cols = {k: v[o, i] for k, v in mats.items()}
    if torch.unique(in_src).numel() < in_src.numel():  # grouped layer with shared sources
        key, cols = _aggregate(src * o_n + o, cols)
        src, o = torch.div(key, o_n, rounding_mode="floor"), key % o_n
    cols["l2"] = cols["l2"].sqrt()
    return src, start + o, cols


def _synapse_edges(layer: LayerFlow, start: int, w, m, u):
    o_n, ipg = layer.shape[0], layer.shape[1]
    k = math.prod(m.shape[2:])  # kernel positions per (output, input) pair (m[0] is out of range for no units)
    opg = o_n // layer.groups
    flat = m.reshape(-1).nonzero().squeeze(1)
    o = torch.div(flat, ipg * k, rounding_mode="floor")
    i = torch.div(flat % (ipg * k), k, rounding_mode="floor")
    c = torch.div(o, opg, rounding_mode="floor") * ipg + i
    offset = layer.rows[0] * math.prod(m.shape[1:]) if layer.rows else 0
    position = flat + offset  # in the whole parameter
    if layer.transposed:  # the parameter is (in, out/groups, *kernel): number its elements in that order
        stored = transposed_shape(layer.shape, layer.groups)
        position = layer.part(torch.arange(m.numel()).view(stored)).reshape(-1)[flat]
    cols = {"position": position, "weight": w.reshape(-1)[flat]}
    if u is not None:
        cols["utility"] = u.reshape(-1)[flat]
    return layer.in_src[c], start + o, cols


# ------------------------------------------------------------------------------------ build
@serialized  # a parametrized weight is computed by calling its parametrization: not while another thread traces
def build(
    conn=None,
    level: str = "unit",
    example_input=None,
    utility: Optional[Mapping[str, torch.Tensor]] = None,
    model: Optional[nn.Module] = None,
    input_nodes: str = "auto",
    traced: Optional[Trace] = None,
    junctions: bool = True,
    batch_axis: Optional[int] = None,
) -> ConnectomeGraph:
    """Build the graph of ``conn`` (an :class:`adaptive.Connectome`) at ``level``.

    ``example_input`` (batch first) drives the fx trace; None infers one from the first layer (float
    features, or token indices where it is an embedding: :func:`graphs.trace.default_example_input`).
    ``utility`` maps parameter names to per-synapse (or per-ensemble) scores, summed onto edges (a
    key that names no weighted layer, such as a module name without ``.weight``, is refused).
    ``model`` stands in for ``conn.model`` (or replaces ``conn`` entirely: every weight live).
    ``traced`` reuses a :func:`graphs.trace.trace` result as it was made: ``example_input``, a non-default
    ``input_nodes`` or a ``batch_axis`` other than the trace's are refused with it (they would change nothing). ``input_nodes``: "channels" (one node
    per input channel), "elements" (one per input feature or pixel) or "auto" (elements for models
    without convolutions), as :func:`graphs.trace.trace` takes it. ``batch_axis``: which axis of the
    example's inputs holds the batch, 0 or 1 (sequence-first ``[T, B, F]`` inputs), for every input of two axes
    or more; None (default) infers it from the layers the inputs reach (:mod:`graphs.batch_axis`). Linear/Conv layers outside the
    connectome count as fully live, with their weights' values; so does a layer whose weight a
    parametrization or old-style weight_norm/spectral_norm computes (it holds no synapses), with the
    weight that call computes. Guarantee: every input channel of a layer has exactly one
    source node (a junction where several units merge), so the synapse level holds exactly one
    edge per live synapse and the unit level's ``count`` attributes sum to the same number.
    ``junctions=False`` contracts junctions into direct edges from every feeding unit
    (:func:`graphs.contract.contract_junctions`; a synapse shared by k sources then appears k times).
    The contracted graph is larger: in a transformer every LayerNorm reads every channel of the
    residual stream, whose channels each come from every earlier block, so a layer after a LayerNorm
    gets an edge from each of its units to each unit that wrote to the stream (unit edges grow like
    width^2 x depth^2: a torchvision ViT of width 128 and 8 layers has 1.07M unit edges, 6.2M
    contracted, in about 5 s and 1.2 GB over the unit graph, one thread). Time and memory follow the
    contracted graph; the synapse level keeps every copy of a shared synapse, so it grows faster.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}: use one of {LEVELS}")
    checked_batch_axis(batch_axis)  # refused before a trace, even one given
    if traced is not None:
        _refuse_trace_options(traced, example_input, input_nodes, batch_axis)
    model = model if model is not None else getattr(conn, "model", None)
    if model is None:
        raise ValueError("build needs a Connectome (conn=...) or a model (model=...)")
    if conn is not None and hasattr(conn, "_check_params"):
        # its masks are of the weights it was built on: one a parametrization registered since computes (unmasked),
        # or a parameter replaced since, would be drawn with masks that no longer act on the model
        conn._check_params()
    model = _plain_module(model)  # a torch.compile or DDP wrapper: the module it runs (as Connectome takes it)
    tr = traced if traced is not None else trace(model, example_input, input_nodes, batch_axis)
    notes = []
    if conn is not None:
        _check_belongs(conn, model, tr)
        seen = {_conn_name(conn, model, l) for l in tr.layers}
        # a weight an op the tracer cannot follow reads (x @ self.fc.weight.t()) is on the data path: that
        # op's warning names it, so it is not called absent here too
        read = {id(p) for names in tr.unknown_weights.values() for p in map(lambda n: _param_or_none(model, n), names)
                if p is not None}
        missing = [n for n in conn.masks if n not in seen and id(conn.params[n]) not in read]
        if missing:
            why = ("graphs traces the forward in eval mode, so a branch only training takes, such as GoogLeNet's or "
                   "Inception-v3's auxiliary heads, never runs; else the forward does not call them, or they sit "
                   "inside a module fx treats as a leaf" if tr.traced else
                   "fx could not trace the model, and the module-order fallback chains only Linear, Conv and ConvTranspose layers")
            live = sum(int(torch.count_nonzero(conn.masks[n])) for n in missing)
            msg = (f"graphs: {len(missing)} connectome layer(s) are not on the traced data path and are left out of "
                   f"the graph: {missing[:5]}{'...' if len(missing) > 5 else ''}, with their {live:,} live synapse(s), "
                   f"by which the graph's live_synapses() falls short of the connectome's num_live() ({why})")
            warn_user(msg)
            notes.append(msg)
    if utility:
        _check_utility_names(utility, conn, model, tr)
    unit = _build_nodes_and_edges(tr, conn, model, "synapse" if level == "synapse" else "unit", utility)
    unit.warnings.extend(notes)
    _annotate(unit)
    if not junctions:
        from .contract import contract_junctions

        unit = contract_junctions(unit)
    if "zero" in unit.node_attrs:  # read by the depths above; the last column, the others' places as without it
        unit.node_attrs["zero"] = unit.node_attrs.pop("zero")
    if level == "layer":
        return layer_graph(unit)
    return unit


def _refuse_trace_options(traced: Trace, example_input, input_nodes: str, batch_axis: Optional[int]) -> None:
    """Refuse what only a new trace would use next to ``traced``: the trace was made on its own input, its
    input nodes and batch axes fixed then, and the graph would silently ignore them."""
    given = [name for name, unused in (("example_input", example_input is None), ("input_nodes", input_nodes == "auto"),
                                       ("batch_axis", batch_axis in (None, traced.batch_axis))) if not unused]
    if given:
        made = f"batch_axis={traced.batch_axis}" if traced.batch_axis is not None else "its batch axes inferred"
        raise ValueError(
            f"build(traced=...) reuses a trace as it was made (on its own example input, {made}), so "
            f"{', '.join(given)} would change nothing: pass them to graphs.trace(model, example_input, input_nodes, "
            "batch_axis) and build from that trace, or leave traced out and let build trace")


def _check_belongs(conn, model: nn.Module, tr: Trace) -> None:
    """Refuse a connectome whose masks do not fit ``model``'s weights (one made for another model)."""
    wrong = []
    for l in tr.layers:
        name = _conn_name(conn, model, l)
        m = conn.masks.get(name)
        if m is not None and l.rows is not None and m.shape[0] < l.rows[1]:
            wrong.append(f"{name}: mask {tuple(m.shape)}, weight rows {l.rows}")
        elif m is not None and tuple(l.part(m).shape) != tuple(l.shape):
            wrong.append(f"{name}: mask {tuple(m.shape)}, weight {tuple(l.shape)}")
    on_path = any(_conn_name(conn, model, l) in conn.masks for l in tr.layers)
    if wrong or (conn.masks and not on_path and model is not conn.model):
        what = "; ".join(wrong[:3]) if wrong else f"none of its layers {list(conn.masks)[:3]} is in {type(model).__name__}"
        raise ValueError(
            f"the connectome does not fit the model ({what}): it was made for another model "
            f"({type(conn.model).__name__}); build the graph from a Connectome of this model, or pass model=conn.model"
        )


def _check_utility_names(utility: Mapping, conn, model: nn.Module, tr: Trace) -> None:
    """Refuse ``utility`` keys that name no weighted layer: they would add nothing to any edge."""
    known = {_conn_name(conn, model, l) for l in tr.layers} | set(conn.masks if conn is not None else ())
    unknown = [k for k in utility if k not in known]
    if unknown:
        names = sorted(known)
        raise KeyError(
            f"utility has scores for {unknown[:5]}{'...' if len(unknown) > 5 else ''}, which name no weighted layer: "
            f"key it by parameter name, one of {names[:8]}{'...' if len(names) > 8 else ''}"
            + (" (the connectome's names: conn.names)" if conn is not None else ""))


def _build_nodes_and_edges(tr: Trace, conn, model, level, utility) -> ConnectomeGraph:
    chunks_src, chunks_dst, chunks = [], [], []
    ptr = [0]
    total_live = 0
    uses: Dict[tuple, int] = {}  # (weight, rows) -> traced layers that use it (a tied weight: several)
    users: Dict[tuple, set] = {}  # (weight, rows) -> the labels of those layers, less a repeated call's "#k"
    names = (["count", "l1", "l2"] if level == "unit" else ["position", "weight"])
    if utility:
        names.append("utility")
    for gid, g in enumerate(tr.groups):
        if g.kind == "layer":
            layer = tr.layers[g.layer]
            whole = _weight(model, layer.param)
            w, m = _weight_and_mask(conn, model, layer, whole)
            u = _utility_for(utility, conn, layer, tuple(whole.shape), model)
            p = _param(model, layer.param)  # a computed weight is a new tensor at each call: key it by name
            key = (id(p) if p is not None else layer.param, layer.rows)
            uses[key] = uses.get(key, 0) + 1
            users.setdefault(key, set()).add(_first_call(layer.module))
            if uses[key] == 1:
                total_live += int(m.sum())
            fn = _unit_edges if level == "unit" else _synapse_edges
            s, d, cols = fn(layer, g.start, w, m, u)
            kind = torch.full((s.numel(),), EDGE_SYNAPSE, dtype=torch.long)
            lay = torch.full((s.numel(),), g.layer, dtype=torch.long)
        elif gid in tr.wires or gid in tr.recurrent:
            # wires into a junction (or a recurrent layer's state nodes, from h0), then the back edges
            # that carry a recurrent layer's output to its state nodes at the next step
            s, d = tr.wires.get(gid, (torch.zeros(0, dtype=torch.long),) * 2)
            rs, rd = tr.recurrent.get(gid, (torch.zeros(0, dtype=torch.long),) * 2)
            kind = torch.cat([torch.full((s.numel(),), EDGE_WIRE, dtype=torch.long),
                              torch.full((rs.numel(),), EDGE_RECURRENT, dtype=torch.long)])
            s, d = torch.cat([s, rs]), torch.cat([d, rd])
            cols = {}
            lay = torch.full((s.numel(),), -1, dtype=torch.long)
        else:
            s = d = torch.zeros(0, dtype=torch.long)
            cols, kind, lay = {}, s, s
        full = {"kind": kind, "layer": lay}
        for nme in names:
            if nme in cols:
                full[nme] = cols[nme]
            elif nme == "position":
                full[nme] = torch.full((s.numel(),), -1, dtype=torch.long)
            elif nme == "count":
                full[nme] = torch.zeros(s.numel(), dtype=torch.int32)
            else:
                full[nme] = torch.zeros(s.numel(), dtype=torch.float32)
        chunks_src.append(s)
        chunks_dst.append(d)
        chunks.append(full)
        ptr.append(ptr[-1] + s.numel())
    src, dst = torch.cat(chunks_src), torch.cat(chunks_dst)
    edge_attrs = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
    nodes = tr.node_table()
    zero = _zero_queries(tr, conn, model)
    if zero is not None:
        nodes["zero"] = zero
    meta = {"live_synapses": total_live, "traced": tr.traced}
    shared = sum(1 for v in uses.values() if v > 1)
    tied = sum(1 for v in users.values() if len(v) > 1)  # a module called again: the trace warned
    warns = list(tr.warnings)
    if shared:
        meta["shared_weights"] = shared
    if tied:
        msg = (f"graphs: {tied} weight(s) are used by several layers (tied): their synapses have edges at every "
               "use, and live_synapses() counts them once")
        warn_user(msg)
        warns.append(msg)
    if conn is not None:
        meta["connectome_live"] = conn.num_live()
        meta["ensemble"] = conn.ensemble
    meta["model"] = type(model).__name__
    return ConnectomeGraph(level, nodes, src, dst, edge_attrs, tr.groups, tr.layers, tr.concats, warns,
                           meta, torch.tensor(ptr))


def _zero_queries(tr: Trace, conn, model: nn.Module) -> Optional[torch.Tensor]:
    """The node column ``zero`` (int8, 1 on a unit that is exactly 0 at every input), or None where no unit is so:
    a query unit of an attention's scores (``nn.MultiheadAttention``'s, op ``attention_scores``) whose synapses are
    all pruned and whose bias is absent or exactly 0. :func:`graphs.analysis.closed_gates` closes the scores' wires
    of such a query and of its key, whose term of every score it multiplies by 0. Only such queries are flagged,
    so a graph without them has no column and is as it was."""
    zero = torch.zeros(tr.num_nodes, dtype=torch.int8)
    nodes = tr.node_table()
    for gid, g in enumerate(tr.groups):
        if g.op != "attention_scores" or gid not in tr.wires:
            continue
        src = tr.wires[gid][0]
        qg = tr.groups[int(nodes["group"][src.min()])]  # its query units are numbered first (see _attention_units)
        if qg.kind != "layer":
            continue
        layer = tr.layers[qg.layer]
        _, m = _weight_and_mask(conn, model, layer)
        bias = _attention_bias(model, layer, m.shape[0])
        dead = ~m.flatten(1).any(1) & (bias == 0)
        zero[qg.start:qg.start + qg.count] |= dead.to(torch.int8)
    return zero if bool(zero.any()) else None


def _attention_bias(model: nn.Module, layer: LayerFlow, rows: int) -> torch.Tensor:
    """The bias of an attention projection's units (``in_proj_bias``, its rows of it; zeros where it has none)."""
    owner, _, attr = layer.param.rpartition(".")
    module = model.get_submodule(owner)
    bias = getattr(module, "in_proj_bias", None)
    if bias is None:
        return torch.zeros(rows)
    bias = bias.detach().cpu()
    if layer.rows is not None:
        return bias[layer.rows[0]:layer.rows[1]]
    at = {"q_proj_weight": 0, "k_proj_weight": 1, "v_proj_weight": 2}[attr]  # separate projections, one bias
    return bias[at * rows:(at + 1) * rows]


def _first_call(label: str) -> str:
    """A layer's label without the ``#k`` the trace gives the k-th call of a module (``fc#2`` -> ``fc``)."""
    head, sep, last = label.rpartition(".")
    return head + sep + last.split("#")[0]


def _edge_ptr(g: ConnectomeGraph) -> None:
    """Order edges by their target's group (topological order) and set ``edge_ptr``."""
    grp = g.node_attrs["group"][g.dst]
    if grp.numel() > 1 and bool((grp[1:] < grp[:-1]).any()):
        order = torch.argsort(grp, stable=True)
        g.src, g.dst, grp = g.src[order], g.dst[order], grp[order]
        g.edge_attrs = {k: v[order] for k, v in g.edge_attrs.items()}
    counts = torch.bincount(grp, minlength=len(g.groups))
    g.edge_ptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])


def _annotate(g: ConnectomeGraph) -> None:
    """Add signal depth and degrees to the node table."""
    from .analysis import signal_depth

    n = g.num_nodes
    dmax, dmin = signal_depth(g)
    g.node_attrs["depth_max"] = dmax
    g.node_attrs["depth_min"] = dmin
    g.node_attrs["in_degree"] = torch.bincount(g.dst, minlength=n)
    g.node_attrs["out_degree"] = torch.bincount(g.src, minlength=n)


def layer_graph(unit: ConnectomeGraph) -> ConnectomeGraph:
    """Collapse a unit- or synapse-level graph onto its groups (inputs, layers, junction ops, outputs)."""
    if unit.level == "layer":
        raise ValueError("layer_graph needs a unit- or synapse-level graph; this one is already at the layer level")
    grp = unit.node_attrs["group"]
    ng = len(unit.groups)
    gs, gd = grp[unit.src], grp[unit.dst]
    is_syn = unit.edge_attrs["kind"] == EDGE_SYNAPSE
    is_rec = unit.edge_attrs["kind"] == EDGE_RECURRENT
    cols = {"wires": (~is_syn & ~is_rec).to(torch.float64), "recurrent": is_rec.to(torch.float64)}
    if unit.level == "unit":
        cols["count"] = unit.edge_attrs["count"].to(torch.float64)
        cols["l1"] = unit.edge_attrs["l1"].to(torch.float64)
        cols["l2"] = unit.edge_attrs["l2"].to(torch.float64) ** 2
    else:
        w = unit.edge_attrs["weight"].to(torch.float64)
        cols["count"] = is_syn.to(torch.float64)
        cols["l1"] = w.abs()
        cols["l2"] = w * w
    if "utility" in unit.edge_attrs:
        cols["utility"] = unit.edge_attrs["utility"].to(torch.float64)
    key = gs * ng + gd
    if ng * ng <= 4_000_000:  # few groups: dense bins, no sort
        present = torch.bincount(key, minlength=ng * ng) > 0
        key_u = present.nonzero().squeeze(1)
        agg = {k: torch.bincount(key, weights=v.double(), minlength=ng * ng)[key_u] for k, v in cols.items()}
        key = key_u
    else:
        key, agg = _aggregate(key, cols)
    src, dst = torch.div(key, ng, rounding_mode="floor"), key % ng
    agg["l2"] = agg["l2"].sqrt()
    agg["kind"] = torch.where(agg["count"] > 0, EDGE_SYNAPSE, torch.where(agg["wires"] > 0, EDGE_WIRE, EDGE_RECURRENT))
    # edges sorted by target group so per-group passes stay in topological order
    order = torch.argsort(dst, stable=True)
    src, dst = src[order], dst[order]
    agg = {k: v[order] for k, v in agg.items()}
    kind_of = {"constant": CONST, "input": INPUT, "layer": UNIT, "junction": JUNCTION, "output": OUTPUT}
    units = torch.tensor([x.count for x in unit.groups])
    synapses = torch.tensor([float(math.prod(unit.layers[x.layer].shape)) if x.layer >= 0 else 0.0 for x in unit.groups], dtype=torch.float64)
    live_in = torch.zeros(ng, dtype=torch.float64).index_add_(0, dst, agg["count"])
    if "layer_live" in unit.meta:  # contracted junctions repeat shared synapses: use the true counts
        from .analysis import layer_live

        lg = torch.tensor([x.layer for x in unit.groups])
        live_in[lg >= 0] = layer_live(unit)[lg[lg >= 0]]
    dmax = torch.full((ng,), -1, dtype=torch.long).scatter_reduce_(0, grp, unit.node_attrs["depth_max"], "amax")
    dmin_src = torch.where(unit.node_attrs["depth_min"] >= 0, unit.node_attrs["depth_min"], torch.iinfo(torch.long).max)
    dmin = torch.full((ng,), torch.iinfo(torch.long).max, dtype=torch.long).scatter_reduce_(0, grp, dmin_src, "amin")
    dmin[dmin == torch.iinfo(torch.long).max] = -1
    nodes = {
        "kind": torch.tensor([kind_of[x.kind] for x in unit.groups]),
        "group": torch.arange(ng),
        "layer": torch.tensor([x.layer for x in unit.groups]),
        "index": torch.zeros(ng, dtype=torch.long),
        "units": units,
        "synapses": synapses,
        "live": live_in,
        "density": torch.where(synapses > 0, live_in / synapses.clamp(min=1), torch.zeros(ng, dtype=torch.float64)),
        "depth_max": dmax,
        "depth_min": dmin,
        "in_degree": torch.bincount(dst, minlength=ng),
        "out_degree": torch.bincount(src, minlength=ng),
    }
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(dst, minlength=ng).cumsum(0)])
    agg["layer"] = nodes["layer"][dst]
    return ConnectomeGraph("layer", nodes, src, dst, agg, unit.groups, unit.layers, unit.concats, unit.warnings,
                           dict(unit.meta), ptr, unit_node_attrs=unit.node_attrs)
