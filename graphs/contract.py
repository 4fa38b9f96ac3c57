"""Contracting junctions: direct edges from the units that feed a layer through residual additions.

In a built graph a channel fed by several units (a residual sum, a squeeze-excitation product)
is a junction node with wires from its sources. :func:`contract_junctions` removes every junction
and wire and gives each edge that left a junction one copy per unit (or input) that feeds the
junction, through chains of junctions. At the unit level copies that join the same two nodes are
merged (counts and L1 add, L2 combines as a root of summed squares), so a synapse shared by several
sources is counted once per source: ``meta["live_synapses"]`` keeps the true number.

The copies are merged as they are made, so time and memory follow the contracted graph: edges
leaving junctions with the same set of sources (a LayerNorm's channels all share its statistics
junction's: every unit that wrote to the residual stream) are summed per target, then per block of
sources found in the same junctions (an attention head's query and key units), and only then
expanded to sources, a chunk of targets at a time (where that merges nothing and the copies are
few, as in a ResNet, they are laid out at once: see :data:`PLAIN`). Laying out every copy first
made width^3 x depth^2 of them in a transformer (`python recipes/benchmarks/graphs_package.py
--only-contract` compares the two).
Tensor code: one join per level of junction nesting, a loop over chunks, no loop per edge.
"""
from __future__ import annotations

import torch

from .trace_types import JUNCTION, Group


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
# where no two edges into a unit leave junctions with the same sources, the copies are laid out at
# once and merged as a whole (faster: ResNets, whose copies are the result) when they are at most
# this many times the edges and (junction, source) pairs
PLAIN = 4


def _expand(src, dst, attrs, is_j, cnt, ptr, ss):
    """One copy of each edge per source of its junction end, in edge order (no merging)."""
    reps = torch.where(is_j[src], cnt[src], torch.ones_like(src))
    idx = torch.repeat_interleave(torch.arange(src.numel()), reps)
    within = torch.arange(idx.numel()) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
    new_src = torch.where(is_j[src[idx]], ss[(ptr[src[idx]] + within).clamp(max=max(ss.numel() - 1, 0))], src[idx])
    return new_src, dst[idx], {k: v[idx] for k, v in attrs.items()}


def _same_rows(r, c, nr):
    """Rows of the 0/1 matrix with entries ``(r, c)`` (sorted by row, then column) that hold the same
    columns: (the group of each of the ``nr`` rows, -1 for an empty one; the first row of each
    group). Rows are hashed, then checked entry by entry against their group's first row; a hash
    collision falls back to one group per row."""
    cnt = torch.bincount(r, minlength=nr)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), cnt.cumsum(0)])
    rows = (cnt > 0).nonzero().squeeze(1)
    grp = torch.full((nr,), -1, dtype=torch.long)
    if not rows.numel():
        return grp, rows
    h = torch.randint(-(1 << 62), 1 << 62, (int(c.max()) + 1,), generator=torch.Generator().manual_seed(0))
    row_hash = torch.zeros(nr, dtype=torch.long).index_add_(0, r, h[c])  # wraps around: fine for a hash
    _, inv = torch.unique(torch.stack([cnt[rows], row_hash[rows]], 1), dim=0, return_inverse=True)
    first = torch.full((int(inv.max()) + 1,), nr, dtype=torch.long).scatter_reduce_(0, inv, rows, "amin")
    grp[rows] = inv
    within = torch.arange(r.numel()) - ptr[r]
    if not bool((c == c[ptr[first[grp[r]]] + within]).all()):
        grp[rows] = torch.arange(rows.numel())
        first = rows
    return grp, first


def _factors(js, ss, cnt, ptr, n):
    """The junctions' sources as classes of blocks: junctions with the same set of sources form a
    class (a LayerNorm's channels share their statistics junction's), sources in the same classes
    form a block (the query and key units of an attention head), so each class's set of sources
    is a disjoint union of blocks. Returns the class of each node (-1 off junctions with sources),
    each class's sources (CSR: pointers, node ids), each class's blocks (CSR) and each block's
    sources (CSR)."""
    cls, rep = _same_rows(js, ss, n)
    ncls = rep.numel()
    pc, ps = _spread(rep, ptr, ss)  # (class, source), sorted by class then source
    o = torch.argsort(ps * max(ncls, 1) + pc)
    blk, brep = _same_rows(ps[o], pc[o], n)
    nb = max(brep.numel(), 1)
    cb = torch.unique(pc * nb + blk[ps])  # sorted by class, then block
    cb_ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(cb // nb, minlength=ncls).cumsum(0)])
    srcs = (blk >= 0).nonzero().squeeze(1)
    b_src = srcs[torch.argsort(blk[srcs], stable=True)]
    b_ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(blk[srcs], minlength=nb).cumsum(0)])
    cs_ptr = torch.cat([torch.zeros(1, dtype=torch.long), cnt[rep].cumsum(0)])
    return cls, (cs_ptr, ps), (cb_ptr, cb % nb), (b_ptr, b_src)


def _spread(a, ptr, vals):
    """For each index in ``a``, every entry of its CSR row: (position in ``a``, entry)."""
    r = ptr[a + 1] - ptr[a]
    idx = torch.repeat_interleave(torch.arange(a.numel()), r)
    within = torch.arange(idx.numel()) - torch.repeat_interleave(torch.cumsum(r, 0) - r, r)
    return idx, vals[ptr[a][idx] + within]


def _merge(key, cols, first, ordered=False):
    """Sum ``cols`` (float64) over equal keys; ``first`` (an edge index) keeps its minimum. Keys come
    out sorted where some merge or ``ordered`` asks for it, else as they came (cheaper)."""
    skey, order = torch.sort(key)
    if not bool((skey[1:] == skey[:-1]).any()):  # nothing to merge
        if not ordered:
            return key, cols, first
        return skey, {k: v[order] for k, v in cols.items()}, first[order]
    uk, inv = torch.unique_consecutive(skey, return_inverse=True)
    out = {k: torch.zeros(uk.numel(), dtype=torch.float64).index_add_(0, inv, v[order]) for k, v in cols.items()}
    fst = torch.full((uk.numel(),), torch.iinfo(torch.long).max, dtype=torch.long).scatter_reduce_(0, inv, first[order], "amin")
    return uk, out, fst


def _merged_unit_edges(src, dst, attrs, is_j, js, ss, cnt, ptr, n):
    """The unit level's contracted edges, merged, without the copies at once: edges leaving
    junctions with the same sources are summed per (target, class), then per (target, block) (see
    :func:`_factors`), then expanded to sources a chunk of targets at a time and merged with the
    edges from units.
    Returns keys ``src * n + dst`` (distinct, in no particular order), float64 sums (``l2`` as a
    sum of squares) and the index of the first edge of each merged edge (its ``kind`` and ``layer``);
    None where the copies are better laid out at once (see :data:`PLAIN`)."""
    names = [k for k in _MERGED if k in attrs]
    eid = torch.arange(src.numel())
    fj = is_j[src] & (cnt[src] > 0)  # edges from a junction without sources have no copies
    direct = ~is_j[src]
    cls, (cs_ptr, cs_src), (cb_ptr, cb_blk), (b_ptr, b_src) = _factors(js, ss, cnt, ptr, n)
    ncls, nb = max(cb_ptr.numel() - 1, 1), max(b_ptr.numel() - 1, 1)
    sizes = cs_ptr[1:] - cs_ptr[:-1]
    by_block = (cb_ptr[1:] - cb_ptr[:-1]) < sizes  # classes worth summing per block on the way
    k1 = dst[fj] * ncls + cls[src[fj]]
    sk1 = torch.sort(k1).values
    copies = int(sizes[cls[src[fj]]].sum()) + int(direct.sum())
    if not bool((sk1[1:] == sk1[:-1]).any()) and copies <= PLAIN * (src.numel() + js.numel()):
        return None  # nothing to gain from the classes and blocks: the copies are few enough
    del sk1
    cols = {k: attrs[k].double() ** 2 if k == "l2" else attrs[k].double() for k in names}
    ck, ccols, cfirst = _merge(k1, {k: v[fj] for k, v in cols.items()}, eid[fj], True)
    cd, cc = torch.div(ck, ncls, rounding_mode="floor"), ck % ncls  # sorted by target
    # chunks of targets with at most CHUNK copies each (a target's copies stay in one chunk)
    b_all = direct.nonzero().squeeze(1)
    b_all = b_all[torch.argsort(dst[b_all], stable=True)]
    load = torch.bincount(cd, weights=sizes[cc].double(), minlength=n) + torch.bincount(dst[b_all], minlength=n)
    chunk_of = (torch.cumsum(load, 0) - load).div(CHUNK, rounding_mode="floor").long()
    c_chunk, d_chunk = chunk_of[cd], chunk_of[dst[b_all]]  # both sorted
    keys, sums, firsts = [], {k: [] for k in names}, []
    for c in torch.unique(torch.cat([c_chunk, d_chunk])).tolist():
        lo, hi = torch.searchsorted(c_chunk, torch.tensor([c, c + 1])).tolist()
        a = torch.arange(lo, hi)
        lo, hi = torch.searchsorted(d_chunk, torch.tensor([c, c + 1])).tolist()
        b = b_all[lo:hi]
        blocked = by_block[cc[a]]
        # (target, class) -> (target, block), merged: a block lies in a class whole or not at all
        i1, blk = _spread(cc[a[blocked]], cb_ptr, cb_blk)
        i1 = a[blocked][i1]
        bk, bcols, bfirst = _merge(cd[i1] * nb + blk, {k: ccols[k][i1] for k in names}, cfirst[i1])
        bd, bb = torch.div(bk, nb, rounding_mode="floor"), bk % nb
        # (target, block) -> (target, source), and (target, class) -> (target, source) for the rest
        i2, s2 = _spread(bb, b_ptr, b_src)
        i3, s3 = _spread(cc[a[~blocked]], cs_ptr, cs_src)
        i3 = a[~blocked][i3]
        key = torch.cat([s2, s3, src[b]]) * n + torch.cat([bd[i2], cd[i3], dst[b]])
        uk, out, fst = _merge(key, {k: torch.cat([bcols[k][i2], ccols[k][i3], cols[k][b]]) for k in names},
                              torch.cat([bfirst[i2], cfirst[i3], b]))
        keys.append(uk)
        firsts.append(fst)
        for k in names:
            sums[k].append(out[k])
    if not keys:
        return torch.zeros(0, dtype=torch.long), {k: torch.zeros(0, dtype=torch.float64) for k in names}, eid[:0]
    return torch.cat(keys), {k: torch.cat(v) for k, v in sums.items()}, torch.cat(firsts)


_MERGED = ("count", "l1", "utility", "l2")  # edge attributes that merged copies add (l2 as a root of summed squares)


def contract_junctions(g):
    """A copy of unit- or synapse-level graph ``g`` without junction nodes (see module docstring).

    At the unit level time and memory grow with the contracted graph (plus the (junction, source)
    pairs and at most :data:`CHUNK` copies at once), not with the copies before merging: a
    transformer's LayerNorm feeds every channel from every channel of the residual stream, so the
    copies grow like width^3 x depth^2 while the merged edges grow like width^2 x depth^2. The
    synapse level keeps every copy, so its size is the copies'.

    Merged values are summed in float64, grouped first, so in another order than copy by copy: cast
    back to float32 they can differ from an edge-by-edge sum by one rounding where the values span
    more than float32's 24 bits (the grouped sum is then the correctly rounded one)."""
    from .graph import ConnectomeGraph, _annotate, _edge_ptr

    if g.level == "layer":
        raise ValueError("contract junctions on a unit- or synapse-level graph, then collapse it with layer_graph")
    kind = g.node_attrs["kind"]
    is_j = kind == JUNCTION
    n = g.num_nodes
    if not bool(is_j.any()):
        return g
    extra = sorted(set(g.edge_attrs) - set(_MERGED) - {"kind", "layer"})
    if g.level == "unit" and extra:
        raise ValueError(f"contract_junctions: edge attribute(s) {extra} have no rule for merging the copies "
                         f"that join the same two units (known: {', '.join(_MERGED)}, kind, layer); drop them "
                         "before contracting and compute them on the contracted graph")
    js, ss = junction_sources(g)
    cnt = torch.bincount(js, minlength=n)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), cnt.cumsum(0)])
    keep_e = ~is_j[g.dst]  # wires into junctions go
    src, dst = g.src[keep_e], g.dst[keep_e]
    attrs = {k: v[keep_e] for k, v in g.edge_attrs.items()}
    copies = int(torch.where(is_j[src], cnt[src], torch.ones_like(src)).sum())
    merged = _merged_unit_edges(src, dst, attrs, is_j, js, ss, cnt, ptr, n) if g.level == "unit" else None
    if merged is not None:
        key, sums, first = merged
        new_src = torch.div(key, n, rounding_mode="floor")
        # edges in order of source then target; where no two copies met, in the order of the edges
        # they copy (then of their sources), as the copies were laid out
        order = torch.argsort(key if key.numel() < copies else first * n + new_src)
        attrs_out = {k: attrs[k][first[order]] for k in ("kind", "layer")}
        for k, v in sums.items():
            v = v[order]
            attrs_out[k] = (v.sqrt() if k == "l2" else v).to(attrs[k].dtype)
        src, dst = new_src[order], key[order] % n
        attrs = {k: attrs_out[k] for k in g.edge_attrs}
    else:  # every copy laid out, in the order of the edges they copy
        src, dst, attrs = _expand(src, dst, attrs, is_j, cnt, ptr, ss)
        if g.level == "unit":  # merge copies joining the same two nodes
            skey, order = torch.sort(src * n + dst)
            if bool((skey[1:] == skey[:-1]).any()):
                uk, inv = torch.unique_consecutive(skey, return_inverse=True)
                starts = torch.ones(skey.numel(), dtype=torch.bool)
                starts[1:] = skey[1:] != skey[:-1]
                first = order[starts]
                merged = {k: attrs[k][first] for k in ("kind", "layer")}
                for k in _MERGED:
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
