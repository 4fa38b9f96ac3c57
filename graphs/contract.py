"""Contracting junctions: direct edges from the units that feed a layer through residual additions.

In a built graph a channel fed by several units (a residual sum, a squeeze-excitation product)
is a junction node with wires from its sources. :func:`contract_junctions` removes every junction
and wire and gives each edge that left a junction one copy per unit (or input) that feeds the
junction, through chains of junctions. At the unit level copies that join the same two nodes are
merged (counts and L1 add, L2 combines as a root of summed squares), so a synapse shared by several
sources is counted once per source: ``meta["live_synapses"]`` keeps the true number.
Tensor code: one join per level of junction nesting, no loop per edge.
"""
from __future__ import annotations

import torch

from .trace import JUNCTION, Group


def junction_sources(g):
    """(junction, source) pairs: every non-junction node feeding each junction, transitively."""
    kind = g.node_attrs["kind"]
    is_j = kind == JUNCTION
    wire = (g.edge_attrs["kind"] == 1) & is_j[g.dst]
    ws, wd = g.src[wire], g.dst[wire]
    order = torch.argsort(wd, stable=True)
    ws, wd = ws[order], wd[order]
    n = g.num_nodes
    cnt = torch.bincount(wd, minlength=n)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), cnt.cumsum(0)])
    pj, ps = wd, ws
    done_j, done_s = [], []
    for _ in range(n):  # bounded by the nesting depth of junctions
        inner = is_j[ps]
        done_j.append(pj[~inner])
        done_s.append(ps[~inner])
        pj, ps = pj[inner], ps[inner]
        if not pj.numel():
            break
        reps = cnt[ps]
        pj = pj.repeat_interleave(reps)
        starts = ptr[ps].repeat_interleave(reps)
        within = torch.arange(int(reps.sum())) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
        ps = ws[starts + within]
    j, s = torch.cat(done_j), torch.cat(done_s)
    key = torch.unique(j * n + s)
    return torch.div(key, n, rounding_mode="floor"), key % n


def contract_junctions(g):
    """A copy of unit- or synapse-level graph ``g`` without junction nodes (see module docstring)."""
    from .graph import ConnectomeGraph, _annotate, _edge_ptr

    if g.level == "layer":
        raise ValueError("contract junctions on a unit- or synapse-level graph, then collapse it with layer_graph")
    kind = g.node_attrs["kind"]
    is_j = kind == JUNCTION
    n = g.num_nodes
    if not bool(is_j.any()):
        return g
    js, ss = junction_sources(g)
    cnt = torch.bincount(js, minlength=n)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), cnt.cumsum(0)])
    keep_e = ~is_j[g.dst]  # wires into junctions go
    src, dst = g.src[keep_e], g.dst[keep_e]
    attrs = {k: v[keep_e] for k, v in g.edge_attrs.items()}
    reps = torch.where(is_j[src], cnt[src], torch.ones_like(src))
    idx = torch.repeat_interleave(torch.arange(src.numel()), reps)
    within = torch.arange(idx.numel()) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
    new_src = torch.where(is_j[src[idx]], ss[(ptr[src[idx]] + within).clamp(max=max(ss.numel() - 1, 0))], src[idx])
    dst = dst[idx]
    attrs = {k: v[idx] for k, v in attrs.items()}
    src = new_src
    if g.level == "unit":  # merge copies joining the same two nodes
        skey, order = torch.sort(src * n + dst)
        if bool((skey[1:] == skey[:-1]).any()):
            uk, inv = torch.unique_consecutive(skey, return_inverse=True)
            starts = torch.ones(skey.numel(), dtype=torch.bool)
            starts[1:] = skey[1:] != skey[:-1]
            first = order[starts]
            merged = {k: attrs[k][first] for k in ("kind", "layer")}
            for k in ("count", "l1", "utility", "l2"):
                if k in attrs:
                    v = attrs[k][order].double()
                    v = v * v if k == "l2" else v
                    tot = torch.zeros(uk.numel(), dtype=torch.float64).index_add_(0, inv, v)
                    merged[k] = (tot.sqrt() if k == "l2" else tot).to(attrs[k].dtype)
            src, dst = torch.div(uk, n, rounding_mode="floor"), uk % n
            attrs = {k: merged[k] for k in g.edge_attrs}
    # renumber nodes without the junctions
    keep_n = ~is_j
    new_id = torch.cumsum(keep_n.long(), 0) - 1
    node_attrs = {k: v[keep_n] for k, v in g.node_attrs.items() if k not in ("depth_max", "depth_min", "in_degree", "out_degree")}
    groups, old_to_new_group, start = [], {}, 0
    for gi, x in enumerate(g.groups):
        if x.kind == "junction":
            continue
        old_to_new_group[gi] = len(groups)
        groups.append(Group(x.name, x.kind, x.op, start, x.count, x.layer))
        start += x.count
    remap = torch.full((len(g.groups),), -1, dtype=torch.long)
    for a, b in old_to_new_group.items():
        remap[a] = b
    node_attrs["group"] = remap[node_attrs["group"]]
    from .analysis import layer_live

    meta = dict(g.meta, contracted=True, live_synapses=g.live_synapses(), layer_live=[int(v) for v in layer_live(g).tolist()])
    # concatenation records and layers' in_src name uncontracted node ids: analyse concats on the
    # uncontracted graph
    out = ConnectomeGraph(g.level, node_attrs, new_id[src], new_id[dst], attrs, groups, g.layers, [],
                          list(g.warnings), meta)
    _edge_ptr(out)
    _annotate(out)
    return out
