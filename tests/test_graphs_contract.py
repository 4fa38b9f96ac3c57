"""graphs.contract merges copies while it expands them: its memory follows the contracted graph,
not the copies (a transformer's LayerNorm made width^3 x depth^2 of them; a ViT of width 128 took
6.5 GB and 23 s, 55M copies for 564k edges), and it gives the same graphs as the implementation it
replaced, which is kept below as the reference."""
import contextlib

import pytest
import torch
from torch import nn

import adaptive
import graphs
import graphs.contract as contract
from adaptive.models import build_model
from graphs.trace import JUNCTION, Group


# ------------------------------------------------------------- the previous implementation
def _ref_junction_sources(g):
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


def _ref_contract(g):
    from graphs.graph import ConnectomeGraph, _annotate, _edge_ptr

    if g.level == "layer":
        raise ValueError("contract junctions on a unit- or synapse-level graph, then collapse it with layer_graph")
    kind = g.node_attrs["kind"]
    is_j = kind == JUNCTION
    n = g.num_nodes
    if not bool(is_j.any()):
        return g
    js, ss = _ref_junction_sources(g)
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
    from graphs.analysis import layer_live

    meta = dict(g.meta, contracted=True, live_synapses=g.live_synapses(), layer_live=[int(v) for v in layer_live(g).tolist()])
    # concatenation records and layers' in_src name uncontracted node ids: analyse concats on the
    # uncontracted graph
    out = ConnectomeGraph(g.level, node_attrs, new_id[src], new_id[dst], attrs, groups, g.layers, [],
                          list(g.warnings), meta)
    _edge_ptr(out)
    _annotate(out)
    return out


# ------------------------------------------------------------------------------ models
def _vit(heads=2):
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=heads, hidden_dim=32, mlp_dim=64,
                             num_classes=10), torch.randn(1, 3, 32, 32)


class DenseRes(nn.Module):
    """DenseNet-like: each conv reads the concatenation of all earlier outputs; a residual stream and
    a squeeze-excitation product make junctions on the way."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(4 * (k + 1), 4, 3, padding=1) for k in range(3))
        self.se = nn.Linear(4, 4)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        feats = [self.stem(x)]
        res = feats[0]
        for conv in self.convs:
            y = conv(torch.cat(feats, 1)).relu()
            res = res + y
            feats.append(y)
        gate = torch.sigmoid(self.se(res.mean((2, 3))))[:, :, None, None]
        feats[-1] = feats[-1] * gate
        return self.head(torch.cat(feats, 1).mean((2, 3)))


class Diamonds(nn.Module):
    """Junctions feeding junctions: y feeds two sums that feed a third, level after level, so the
    paths from the last junction back to its sources double at every level."""

    def __init__(self, depth=12, w=3):
        super().__init__()
        self.inp = nn.Linear(4, w)
        self.a = nn.ModuleList(nn.Linear(4, w) for _ in range(depth))
        self.b = nn.ModuleList(nn.Linear(4, w) for _ in range(depth))
        self.out = nn.Linear(w, 2)

    def forward(self, x):
        y = self.inp(x)
        for a, b in zip(self.a, self.b):
            y = (y + a(x)) + (y + b(x))
        return self.out(y)


def _model(name):
    torch.manual_seed(0)
    if name == "vit":
        return _vit()
    if name == "resnet20":
        return build_model("resnet20"), torch.randn(1, 3, 32, 32)
    if name == "denseres":
        return DenseRes(), torch.randn(1, 3, 8, 8)
    return Diamonds(), torch.randn(1, 4)


def _connectome(model):
    conn = adaptive.Connectome(model)
    g = torch.Generator().manual_seed(0)
    conn.set_masks({k: torch.rand(v.shape, generator=g) < 0.6 for k, v in conn.masks.items()})
    return conn


def _identical(a, b):
    assert torch.equal(a.src, b.src) and torch.equal(a.dst, b.dst)
    assert a.edge_attrs.keys() == b.edge_attrs.keys() and a.node_attrs.keys() == b.node_attrs.keys()
    for new, old in ((a.edge_attrs, b.edge_attrs), (a.node_attrs, b.node_attrs)):
        for k in old:
            assert new[k].dtype == old[k].dtype and torch.equal(new[k], old[k]), k
    assert a.groups == b.groups and a.meta == b.meta and a.level == b.level
    assert torch.equal(a.edge_ptr, b.edge_ptr)


@contextlib.contextmanager
def _largest_expansion():
    """The most elements one torch.repeat_interleave call made (where copies are laid out)."""
    seen, orig = [0], torch.repeat_interleave

    def counting(*args, **kwargs):
        out = orig(*args, **kwargs)
        seen[0] = max(seen[0], out.numel())
        return out

    torch.repeat_interleave = counting
    try:
        yield seen
    finally:
        torch.repeat_interleave = orig


# ------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", ["vit", "resnet20", "denseres", "diamonds"])
@pytest.mark.parametrize("level", ["unit", "synapse"])
def test_contraction_matches_the_previous_implementation(name, level, monkeypatch):
    model, x = _model(name)
    conn = _connectome(model)
    utility = {k: torch.rand(v.shape) for k, v in list(conn.masks.items())[:2]}
    g = graphs.build(conn, level, example_input=x, utility=utility if level == "unit" else None)
    assert bool((g.node_attrs["kind"] == JUNCTION).any())
    ref = _ref_contract(g)
    _identical(contract.contract_junctions(g), ref)
    monkeypatch.setattr(contract, "CHUNK", 7)  # many chunks of targets
    _identical(contract.contract_junctions(g), ref)
    monkeypatch.setattr(contract, "PLAIN", 0)  # classes and blocks even where they merge nothing
    _identical(contract.contract_junctions(g), ref)
    js, ss = contract.junction_sources(g)
    rjs, rss = _ref_junction_sources(g)
    assert torch.equal(js, rjs) and torch.equal(ss, rss)


def test_junctions_whose_source_hashes_collide_are_kept_apart(monkeypatch):
    model, x = _model("vit")
    g = graphs.build(_connectome(model), "unit", example_input=x)
    ref = _ref_contract(g)
    monkeypatch.setattr(contract, "PLAIN", 0)
    monkeypatch.setattr(torch, "randint", lambda lo, hi, size, generator=None: torch.zeros(size, dtype=torch.long))
    _identical(contract.contract_junctions(g), ref)  # every row hashes alike: one class per junction


@pytest.mark.parametrize("name", ["vit", "diamonds"])
def test_contraction_does_not_lay_out_every_copy(name):
    """The old code laid out one copy per (edge, source of its junction) before merging: 909k
    copies for this ViT's 36.5k edges (its LayerNorms), and for Diamonds' nested junctions one
    (junction, source) pair per path, 2^12 paths per channel."""
    model, x = _model(name) if name == "diamonds" else _vit(heads=4)
    g = graphs.build(model=model, level="unit", example_input=x)
    with _largest_expansion() as seen:
        c = contract.contract_junctions(g)
    pairs = contract.junction_sources(g)[0].numel()
    assert seen[0] <= max(c.num_edges, pairs), (seen[0], c.num_edges, pairs)


def test_big_contractions_go_in_chunks(monkeypatch):
    model, x = _vit(heads=4)
    g = graphs.build(model=model, level="unit", example_input=x)
    ref = contract.contract_junctions(g)
    monkeypatch.setattr(contract, "CHUNK", 1000)
    with _largest_expansion() as seen:
        _identical(contract.contract_junctions(g), ref)
    pairs = contract.junction_sources(g)[0].numel()  # laid out whole: as many as the (junction, source) pairs
    assert seen[0] <= max(1000 + 544, pairs)  # a chunk may run over by one target's copies (an out_proj unit: 32 x 17)


def test_an_edge_attribute_without_a_merge_rule_is_refused_by_name():
    import dataclasses

    import graphs as gr
    from graphs.contract import contract_junctions

    class Res(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 3)

        def forward(self, x):
            h = self.a(x)
            return self.c(h + self.b(h))

    g = gr.build(model=Res(), level="unit", example_input=torch.randn(1, 4))
    g = dataclasses.replace(g, edge_attrs={**g.edge_attrs, "note": torch.zeros(g.num_edges)})
    with pytest.raises(ValueError, match=r"\['note'\] have no rule"):
        contract_junctions(g)
