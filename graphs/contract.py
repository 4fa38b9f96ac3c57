"""Contracting junctions: direct edges from the units that feed a layer through residual additions.

In a built graph a channel fed by several units (a residual sum, a squeeze-excitation product)
is a junction node with wires from its sources. :func:`contract_junctions` removes every junction
and wire and gives each edge that left a junction one copy per unit (or input) that feeds the
junction, through chains of junctions. At the unit level copies that join the same two nodes are
merged (counts and L1 add, L2 combines as a root of summed squares), so a synapse shared by several
sources is counted once per source: ``meta["live_synapses"]`` keeps the true number.

The copies are merged as they are made, so memory follows the contracted graph: edges leaving
junctions with the same set of sources (a LayerNorm's channels all share its statistics junction's,
every unit that wrote to the residual stream) are summed per target before they are expanded, and
the rest is expanded a chunk of targets at a time. Laying out every copy first made width^3 x
depth^2 of them in a transformer (55M for the 564k edges of a ViT of width 128, 6.5 GB).
Tensor code: one join per level of junction nesting, a loop over chunks, no loop per edge.
"""
from __future__ import annotations

import torch

from .trace import JUNCTION, Group


def junction_sources(g):
    """(junction, source) pairs: every non-junction node feeding each junction, transitively.

    Sorted by junction, then source. Each round follows one more level of junctions feeding
    junctions and keeps each (junction, node) pair once, so the pairs in flight stay as many as the
    distinct pairs, not the paths (which multiply where junctions share inputs)."""
    kind = g.node_attrs["kind"]
    is_j = kind == JUNCTION
    wire = (g.edge_attrs["kind"] == 1) & is_j[g.dst]
    ws, wd = g.src[wire], g.dst[wire]
    n = g.num_nodes
    key = torch.unique(wd * n + ws)
    wd, ws = torch.div(key, n, rounding_mode="floor"), key % n
    cnt = torch.bincount(wd, minlength=n)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), cnt.cumsum(0)])
    pj, ps = wd, ws
    done = []
    for _ in range(n):  # bounded by the nesting depth of junctions
        inner = is_j[ps]
        done.append(pj[~inner] * n + ps[~inner])
        pj, ps = pj[inner], ps[inner]
        if not pj.numel():
            break
        reps = cnt[ps]
        starts = ptr[ps].repeat_interleave(reps)
        within = torch.arange(int(reps.sum())) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
        key = torch.unique(pj.repeat_interleave(reps) * n + ws[starts + within])
        pj, ps = torch.div(key, n, rounding_mode="floor"), key % n
    key = torch.unique(torch.cat(done))
    return torch.div(key, n, rounding_mode="floor"), key % n


# copies of edges expanded at once while merging (bounds the peak memory of contract_junctions)
CHUNK = 1 << 22


def _expand(src, dst, attrs, is_j, cnt, ptr, ss):
    """One copy of each edge per source of its junction end, in edge order (no merging)."""
    reps = torch.where(is_j[src], cnt[src], torch.ones_like(src))
    idx = torch.repeat_interleave(torch.arange(src.numel()), reps)
    within = torch.arange(idx.numel()) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
    new_src = torch.where(is_j[src[idx]], ss[(ptr[src[idx]] + within).clamp(max=max(ss.numel() - 1, 0))], src[idx])
    return new_src, dst[idx], {k: v[idx] for k, v in attrs.items()}


def _source_classes(js, ss, cnt, ptr, n):
    """Junctions grouped by their set of sources: (class of each node, -1 off junctions with sources;
    the first junction of each class). Rows are hashed, then checked entry by entry against their
    class's first junction; a hash collision falls back to one class per junction."""
    has = cnt > 0
    jl = has.nonzero().squeeze(1)
    if not jl.numel():
        return torch.full((n,), -1, dtype=torch.long), jl
    h = torch.randint(-(1 << 62), 1 << 62, (n,), generator=torch.Generator().manual_seed(0))
    row = torch.zeros(n, dtype=torch.long).index_add_(0, js, h[ss])
    _, inv = torch.unique(torch.stack([cnt[jl], row[jl]], 1), dim=0, return_inverse=True)
    rep = torch.full((int(inv.max()) + 1,), n, dtype=torch.long).scatter_reduce_(0, inv, jl, "amin")
    cls = torch.full((n,), -1, dtype=torch.long)
    cls[jl] = inv
    within = torch.arange(js.numel()) - ptr[js]
    if not bool((ss == ss[ptr[rep[cls[js]]] + within]).all()):
        cls[jl] = torch.arange(jl.numel())
        rep = jl
    return cls, rep


def _merge(key, cols, first):
    """Sum ``cols`` (float64) over equal keys; ``first`` (an edge index) keeps its minimum."""
    uk, inv = torch.unique(key, return_inverse=True)
    out = {k: torch.zeros(uk.numel(), dtype=torch.float64).index_add_(0, inv, v) for k, v in cols.items()}
    fst = torch.full((uk.numel(),), torch.iinfo(torch.long).max, dtype=torch.long).scatter_reduce_(0, inv, first, "amin")
    return uk, out, fst


def _merged_unit_edges(src, dst, attrs, is_j, js, ss, cnt, ptr, n):
    """The unit level's contracted edges, merged, without the copies at once: edges leaving
    junctions with the same sources are summed per target first (a LayerNorm's channels all share
    the sources of its statistics junction), then expanded a chunk of targets at a time and merged.
    Returns keys ``src * n + dst`` (sorted), float64 sums (``l2`` as a sum of squares) and the index
    of the first edge of each merged edge (its ``kind`` and ``layer``)."""
    names = [k for k in ("count", "l1", "utility", "l2") if k in attrs]
    cols = {k: attrs[k].double() ** 2 if k == "l2" else attrs[k].double() for k in names}
    eid = torch.arange(src.numel())
    fj = is_j[src] & (cnt[src] > 0)  # edges from a junction without sources have no copies
    direct = ~is_j[src]
    cls, rep = _source_classes(js, ss, cnt, ptr, n)
    ncls = max(rep.numel(), 1)
    ck, ccols, cfirst = _merge(dst[fj] * ncls + cls[src[fj]], {k: v[fj] for k, v in cols.items()}, eid[fj])
    cd, cc = torch.div(ck, ncls, rounding_mode="floor"), ck % ncls  # sorted by target
    reps = cnt[rep[cc]]
    # chunks of targets with at most CHUNK copies each (a target's copies stay in one chunk)
    b_all = direct.nonzero().squeeze(1)
    b_all = b_all[torch.argsort(dst[b_all], stable=True)]
    load = torch.bincount(cd, weights=reps.double(), minlength=n) + torch.bincount(dst[b_all], minlength=n)
    chunk_of = (torch.cumsum(load, 0) - load).div(CHUNK, rounding_mode="floor").long()
    c_chunk, d_chunk = chunk_of[cd], chunk_of[dst[b_all]]  # both sorted
    keys, sums, firsts = [], {k: [] for k in names}, []
    for c in torch.unique(torch.cat([c_chunk, d_chunk])).tolist():
        lo, hi = torch.searchsorted(c_chunk, torch.tensor([c, c + 1])).tolist()
        a = torch.arange(lo, hi)
        lo, hi = torch.searchsorted(d_chunk, torch.tensor([c, c + 1])).tolist()
        b = b_all[lo:hi]
        r = reps[a]
        idx = torch.repeat_interleave(a, r)
        within = torch.arange(idx.numel()) - torch.repeat_interleave(torch.cumsum(r, 0) - r, r)
        s = torch.cat([ss[ptr[rep[cc[idx]]] + within], src[b]])
        key = s * n + torch.cat([cd[idx], dst[b]])
        uk, out, fst = _merge(key, {k: torch.cat([ccols[k][idx], cols[k][b]]) for k in names},
                              torch.cat([cfirst[idx], b]))
        keys.append(uk)
        firsts.append(fst)
        for k in names:
            sums[k].append(out[k])
    if not keys:
        return torch.zeros(0, dtype=torch.long), {k: torch.zeros(0, dtype=torch.float64) for k in names}, eid[:0]
    key = torch.cat(keys)
    key, order = torch.sort(key)
    return key, {k: torch.cat(v)[order] for k, v in sums.items()}, torch.cat(firsts)[order]


def contract_junctions(g):
    """A copy of unit- or synapse-level graph ``g`` without junction nodes (see module docstring).

    At the unit level the memory needed grows with the contracted graph and the edges expanded
    in one chunk (:data:`CHUNK`), not with the copies before merging: a transformer's LayerNorm
    feeds every channel from every channel of the residual stream, so the copies grow like
    width^3 x depth^2 while the merged edges grow like width^2 x depth^2. The synapse level keeps
    every copy, so its size is the copies'."""
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
    copies = int(torch.where(is_j[src], cnt[src], torch.ones_like(src)).sum())
    merged = None
    if g.level == "unit":  # merge copies joining the same two nodes
        key, sums, first = _merged_unit_edges(src, dst, attrs, is_j, js, ss, cnt, ptr, n)
        if key.numel() < copies:
            merged = {k: attrs[k][first] for k in ("kind", "layer")}
            for k, v in sums.items():
                merged[k] = (v.sqrt() if k == "l2" else v).to(attrs[k].dtype)
            src, dst = torch.div(key, n, rounding_mode="floor"), key % n
            attrs = {k: merged[k] for k in g.edge_attrs}
    if merged is None:  # every copy is an edge of its own: the copies are the result
        src, dst, attrs = _expand(src, dst, attrs, is_j, cnt, ptr, ss)
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
