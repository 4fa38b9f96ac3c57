"""Analysis of a connectome graph: signal depth, reachability, density per layer, degree
distributions, dead units and the signal-depth composition of every concatenation.

Passes over the graph run group by group in topological order (edges into group ``g`` are
``edge_ptr[g]:edge_ptr[g+1]``), with one scatter per group: O(E) tensor work, no loop per edge.
Edges from the constant node carry zeros and count as no signal.
"""
from __future__ import annotations

from typing import Dict, List

import torch

from .trace_types import EDGE_RECURRENT, EDGE_SYNAPSE, EDGE_WIRE, INPUT, JUNCTION, OUTPUT, UNIT

_BIG = torch.iinfo(torch.long).max


def _spans(g):
    ptr = g.edge_ptr.tolist()
    return [(i, a, b) for i, (a, b) in enumerate(zip(ptr[:-1], ptr[1:])) if b > a]


def _wired(g) -> torch.Tensor:
    """Synapse edges with live synapses and wires, never from the constant."""
    live = (g.src != 0) & (g.edge_attrs["kind"] != EDGE_RECURRENT)  # back edges: see signal_depth, reachability
    if "count" in g.edge_attrs:
        live &= (g.edge_attrs["count"] > 0) | (g.edge_attrs["kind"] == EDGE_WIRE)
    return live


def _live(g) -> torch.Tensor:
    """Edges that carry signal: :func:`_wired`, less the attention scores' wires :func:`closed_gates` closes."""
    live = _wired(g)
    return live & ~closed_gates(g, live)


def _of_groups(g, op: str) -> torch.Tensor:
    """Bool per node: it belongs to a group whose op is ``op``."""
    return torch.tensor([x.op == op for x in g.groups] + [False])[g.node_attrs["group"]]


def closed_gates(g, live=None) -> torch.Tensor:
    """Bool per edge: the wires into and out of an attention head's scores (a junction of op
    ``attention_scores``, fed by the head's query and key units) that pass nothing on.

    Out of the scores: the wire into an attention output channel (a junction of op ``attention``)
    whose value unit has no live synapse. That unit holds its bias at every position, and attention
    weights sum to 1 over positions, so the channel is that constant whatever the scores (queries and
    keys reach the output only through channels whose values can vary). A value unit with live
    synapses keeps the wire open even where nothing upstream reaches it from an input: a constant
    added on the way (a positional table) can make it vary over positions, and then the scores reach
    the output.

    Into the scores: the wires from query unit ``c`` and key unit ``c`` (the same position in the
    head's dot product) where key unit ``c`` has no live synapse. Its term of every score is query
    ``c`` times one constant, the same at every key position, and a softmax over key positions does
    not change when one number is added to all of them (with a mask too, and before dropout), so
    neither unit moves the weights. A query unit with no live synapse keeps key ``c`` counting: its
    bias times a key that varies over positions. Where that bias is absent or exactly 0 (the node column
    ``zero``, which :func:`graphs.build` adds for such queries), query ``c`` is 0 at every position, its term of every
    score is 0, and the wires of both close too. Where every key of a head is so, its queries reach nothing; its
    values still pass on.

    A unit with a live synapse from the constant node (its input a parameter or buffer: a table of
    learned keys or values, which the graph holds as one constant) has no such constant: the table's
    rows may differ from one position to the next, so it keeps its wires open.

    ``live``: the edges live apart from this (default: synapse edges with live synapses and wires,
    not from the constant node). A contracted graph has no junctions, so nothing is closed there:
    analyse the uncontracted graph."""
    scores = _of_groups(g, "attention_scores")
    if not bool(scores.any()):
        return torch.zeros(g.num_edges, dtype=torch.bool)
    live = _wired(g) if live is None else live
    wire = g.edge_attrs["kind"] == EDGE_WIRE
    # a live synapse from the constant node reads a parameter or buffer taken as data (a table of learned
    # keys or values, one row per position): constant over the inputs, not over positions
    tables = (g.src == 0) & (g.edge_attrs["kind"] == EDGE_SYNAPSE)
    if "count" in g.edge_attrs:
        tables &= g.edge_attrs["count"] > 0
    live_in = torch.bincount(g.dst[live | tables], minlength=g.num_nodes) > 0
    pinned = (g.node_attrs["kind"] == UNIT) & ~live_in  # a unit with no live synapse: its bias, everywhere
    into = _of_groups(g, "attention")[g.dst] & wire
    gate = into & scores[g.src]
    opened = torch.zeros(g.num_nodes, dtype=torch.bool)
    opened[g.dst[into & ~gate & ~pinned[g.src]]] = True  # some value source may vary over positions
    zero = g.node_attrs["zero"].bool() if "zero" in g.node_attrs else torch.zeros(g.num_nodes, dtype=torch.bool)
    return (gate & ~opened[g.dst]) | _constant_key_terms(g, scores[g.dst] & wire, pinned, zero & pinned)


def _constant_key_terms(g, into_scores: torch.Tensor, pinned: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Bool per edge: of the wires ``into_scores``, those of the query/key pairs whose key unit is
    ``pinned`` or whose query unit is ``zero`` (see :func:`closed_gates`). A head's scores junction is fed by its
    ``d`` query units then its ``d`` key units, each layer's units numbered in order and the query layer's first, so
    sorted by source its wires are query 0..d-1, key 0..d-1: query ``r`` pairs with key ``r``."""
    e = into_scores.nonzero().squeeze(1)
    e = e[torch.argsort(g.dst[e] * g.num_nodes + g.src[e])]
    dst = g.dst[e]
    cnt = torch.bincount(dst, minlength=g.num_nodes)
    start = (cnt.cumsum(0) - cnt)[dst]
    half = cnt[dst] // 2
    rank = torch.arange(e.numel()) - start
    pos = torch.where(rank < half, rank, rank - half)
    top = max(e.numel() - 1, 0)
    key = (start + half + pos).clamp(max=top)  # the key of each wire's pair
    query = (start + pos).clamp(max=top)  # and its query
    shut = pinned[g.src[e[key]]] | zero[g.src[e[query]]]
    closed = torch.zeros(g.num_edges, dtype=torch.bool)
    closed[e[(cnt[dst] % 2 == 0) & shut]] = True
    return closed


def state_nodes(g) -> torch.Tensor:
    """Bool per node: the state nodes of recurrent layers (kind input, standing for the previous
    time step's output of that layer, not for the model's input)."""
    is_state = torch.tensor([x.op == "state" for x in g.groups] + [False])
    return is_state[g.node_attrs["group"]]


def signal_depth(g):
    """(longest, shortest) number of weighted layers on a live path from an input to each node;
    -1 where no such path exists. Inputs have depth 0; units add 1, junctions and outputs 0. A
    recurrent layer's state nodes count as inputs of depth 0 (one time step) once the unit whose
    value they hold at the next step is reached from a real input, or when their initial state is. An
    embedding's columns (op ``lookup``) are inputs of depth 0: the table has no units or synapses and
    sums nothing (each value is one entry picked by one token), so its lookup counts no layer; a learned
    positional table, which reads no input, is a source of depth 0 too."""
    n = g.num_nodes
    kind = g.node_attrs["kind"]
    w = (kind == UNIT).long()
    dmax = torch.full((n,), -1, dtype=torch.long)
    dmin = torch.full((n,), _BIG, dtype=torch.long)
    state = state_nodes(g)
    inputs = (kind == INPUT) & ~state
    dmax[inputs] = 0
    dmin[inputs] = 0
    live = _live(g)
    spans = _spans(g)
    rec = g.edge_attrs["kind"] == EDGE_RECURRENT
    rs, rd = g.src[rec], g.dst[rec]
    for _ in range(n + 1):
        for _, a, b in spans:
            s, d, ok = g.src[a:b], g.dst[a:b], live[a:b]
            ok = ok & (dmax[s] >= 0)
            s, d = s[ok], d[ok]
            if s.numel():
                # a state node reached by its initial state (h0's wire) is an input of depth 0 as well, not
                # h0's depth (it took h0's, and its layer's depth then changed with whether h0 was passed)
                dmax.scatter_reduce_(0, d, torch.where(state[d], 0, dmax[s] + w[d]), "amax")
                dmin.scatter_reduce_(0, d, torch.where(state[d], 0, dmin[s] + w[d]), "amin")
        new = (dmax[rs] >= 0) & (dmax[rd] < 0)
        if not bool(new.any()):
            break
        dmax[rd[new]] = 0
        dmin[rd[new]] = 0
    dmin[dmax < 0] = -1
    return dmax, dmin


def _per_unit(g, what: str, instead: str = "") -> None:
    """Facts about single units need a graph whose nodes are units."""
    if g.level == "layer":
        raise ValueError(f"{what} is a fact about single units, but this graph's nodes are whole layers; "
                         f"build it at unit or synapse level: graphs.build(conn, 'unit'){instead}")


def reachability(g) -> Dict[str, torch.Tensor]:
    """Boolean per node: ``from_input`` (a live path from some input reaches it) and ``to_output``
    (a live path from it reaches some output class, also through later time steps of a recurrent
    layer: its recurrent back edges). Unit or synapse level."""
    _per_unit(g, "reachability")
    kind = g.node_attrs["kind"]
    fwd = g.node_attrs["depth_max"] >= 0 if "depth_max" in g.node_attrs else signal_depth(g)[0] >= 0
    bwd = (kind == OUTPUT).clone()
    live = _live(g)
    spans = list(reversed(_spans(g)))
    rec = g.edge_attrs["kind"] == EDGE_RECURRENT
    rs, rd = g.src[rec], g.dst[rec]
    for _ in range(g.num_nodes + 1):  # a recurrent layer: until no unit newly reaches an output
        for _, a, b in spans:
            s, d, ok = g.src[a:b], g.dst[a:b], live[a:b]
            hit = ok & bwd[d]
            bwd[s[hit]] = True
        # a unit whose value the state nodes hold at the next step reaches an output if they do
        new = bwd[rd] & ~bwd[rs]
        if not bool(new.any()):
            break
        bwd[rs[new]] = True
    bwd[0] = False
    return {"from_input": fwd, "to_output": bwd}


def dead_units(g) -> Dict[str, torch.Tensor]:
    """Units with no live input (no live synapse from a non-constant node), no live output (no
    live edge out, counting an edge into a junction only when the junction passes it on: the same
    answer as with contracted junctions, but for the attention scores' wires :func:`closed_gates`
    closes, which a contracted graph has not), unreachable from the inputs, or unable to reach an output.
    Each a bool per node. Unit or synapse level."""
    _per_unit(g, "dead units")
    kind = g.node_attrs["kind"]
    unit = kind == UNIT
    is_j = kind == JUNCTION
    live = _live(g)
    n = g.num_nodes
    live_in = torch.bincount(g.dst[live], minlength=n) > 0
    live_out = torch.zeros(n, dtype=torch.bool)
    spans = list(reversed(_spans(g)))
    rec = g.edge_attrs["kind"] == EDGE_RECURRENT
    rs, rd = g.src[rec], g.dst[rec]
    for _ in range(n + 1):  # a recurrent layer: until no node newly passes its value on
        for _, a, b in spans:  # a junction's outputs are settled before its sources'
            s, d, ok = g.src[a:b], g.dst[a:b], live[a:b]
            live_out[s[ok & (~is_j[d] | live_out[d])]] = True
        # a unit or junction whose value a state node holds at the next step has an output there, if
        # that node does; then so do the gate, ih and hh units feeding it: sweep again
        new = live_out[rd] & ~live_out[rs]
        if not bool(new.any()):
            break
        live_out[rs[new]] = True
    r = reachability(g)
    return {
        "no_live_input": unit & ~live_in,
        "no_live_output": unit & ~live_out,
        "unreachable_from_input": unit & ~r["from_input"],
        "cannot_reach_output": unit & ~r["to_output"],
        "dead": unit & ~(r["from_input"] & r["to_output"]),
    }


def layer_live(g) -> torch.Tensor:
    """Live synapses of each weighted layer (float64 [L]), every synapse once. A graph with
    contracted junctions repeats a synapse once per source, so it keeps the true counts in
    ``meta["layer_live"]``."""
    if "layer_live" in g.meta:
        return torch.tensor(g.meta["layer_live"], dtype=torch.float64)
    lay = g.edge_attrs["layer"]
    syn = g.edge_attrs["kind"] == EDGE_SYNAPSE
    if g.level == "synapse":
        return torch.bincount(lay[syn], minlength=len(g.layers)).double()
    return torch.zeros(len(g.layers), dtype=torch.float64).index_add_(0, lay[syn], g.edge_attrs["count"][syn].double())


def density_per_layer(g, conn=None) -> Dict[str, float]:
    """Live fraction of each weighted layer's synapses, read from the graph alone (it equals the
    connectome's; 0.0 for a layer of no synapses, as at every level). ``conn`` is not used: it is accepted so that calls written
    ``density_per_layer(g, conn)`` still run."""
    if g.level == "layer":
        return {x.name: d for x, d in zip(g.groups, g.node_attrs["density"].tolist()) if x.kind == "layer"}
    per = layer_live(g)
    total = torch.tensor([float(torch.tensor(l.shape).prod()) for l in g.layers], dtype=torch.float64)
    # a layer of no synapses (one compacted to no units) is 0.0, as a layer-level graph gives it (it was NaN here)
    return {l.module: float(p / t) if t > 0 else 0.0 for l, p, t in zip(g.layers, per, total)}


def degree_distribution(g, which: str = "in") -> Dict[str, torch.Tensor]:
    """Per layer: the in-degree (``which="in"``) or out-degree (``"out"``) of each of its units
    (LongTensor) in this graph. Unit or
    synapse level (a layer-level graph has no unit nodes: its ``node_attrs["in_degree"]`` holds
    each layer's own degree)."""
    if which not in ("in", "out"):
        raise ValueError(f"degree_distribution: which must be 'in' or 'out', got {which!r}")
    _per_unit(g, "the degree distribution", f"; each layer's own degree is in g.node_attrs['{which}_degree']")
    deg = g.node_attrs[f"{which}_degree"]
    return {x.name: deg[x.start: x.start + x.count] for x in g.groups if x.kind == "layer"}


def concat_composition(g) -> List[dict]:
    """For every channel concatenation: the signal depth of each channel it joins, per operand.

    Returns ``[{"node": fx node, "depth": LongTensor [C] (longest depth per channel, -1 if
    unreached), "depth_min": LongTensor [C], "parts": [(operand, offset, size)],
    "histogram": {depth: channels}}]``. A graph read back from .json or .graphml, or converted to
    and from PyG or networkx, gives the same answer as the graph written (GEXF files keep none)."""
    if not g.concats:  # none traced, or a contracted graph (analyse the uncontracted one)
        return []
    nodes = g.unit_node_attrs if g.level == "layer" else g.node_attrs
    dmax, dmin = nodes["depth_max"], nodes["depth_min"]
    out = []
    for c in g.concats:
        ids = torch.cat([p for _, p in c["parts"]])
        sizes = [p.numel() for _, p in c["parts"]]
        offsets = [0] + torch.tensor(sizes).cumsum(0).tolist()[:-1]
        depth = torch.where(ids == 0, torch.full_like(ids, -1), dmax[ids])
        vals, cnt = torch.unique(depth, return_counts=True)
        out.append({
            "node": c["node"],
            "depth": depth,
            "depth_min": torch.where(ids == 0, torch.full_like(ids, -1), dmin[ids]),
            "parts": [(name, o, s) for (name, _), o, s in zip(c["parts"], offsets, sizes)],
            "histogram": dict(zip(vals.tolist(), cnt.tolist())),
        })
    return out


def summary(g) -> dict:
    """Everything above in one dict of plain numbers (for printing and JSON). Unit or synapse level:
    dead units and reachability are facts about single units."""
    if g.level == "layer":  # said here: dead_units' own refusal names dead units, not the call made
        raise ValueError("graphs.summary counts dead and unreachable units, facts about single units, but this graph's "
                         "nodes are whole layers: build it at unit or synapse level, graphs.build(conn, 'unit'); "
                         "of a layer-level graph, graphs.density_per_layer(g) gives each layer's density")
    dead = dead_units(g)
    units = int((g.node_attrs["kind"] == UNIT).sum())
    r = reachability(g)
    outputs = g.node_attrs["kind"] == OUTPUT
    state = state_nodes(g)
    inputs = (g.node_attrs["kind"] == INPUT) & ~state
    return {
        "level": g.level,
        "nodes": g.num_nodes,
        "edges": g.num_edges,
        # the edges that are no synapse: wires (into the outputs, into junctions: residual additions, products,
        # a recurrent cell's gates; a concatenation makes none) and recurrent back edges
        "edge_kinds": {name: int((g.edge_attrs["kind"] == k).sum())
                       for name, k in (("synapse", EDGE_SYNAPSE), ("wire", EDGE_WIRE), ("recurrent", EDGE_RECURRENT))},
        "units": units,
        "junctions": int((g.node_attrs["kind"] == JUNCTION).sum()),
        "inputs": int(inputs.sum()),
        "state_nodes": int(state.sum()),
        "outputs": int(outputs.sum()),
        "live_synapses": g.live_synapses(),
        "dead": {k: int(v.sum()) for k, v in dead.items()},
        "outputs_reachable": int((outputs & r["from_input"]).sum()),
        "inputs_reaching_output": int((inputs & r["to_output"]).sum()),
        "depth_max": int(g.node_attrs["depth_max"].max()),
        "density": density_per_layer(g),
        "concats": [{"node": c["node"], "histogram": c["histogram"]} for c in concat_composition(g)],
        "warnings": list(g.warnings),
    }
