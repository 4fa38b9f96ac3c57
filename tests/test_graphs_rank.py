"""Ops that order the elements along one dim (topk, sort, argsort, msort, kthvalue, median, mode; cummax, cummin) are
followed exactly: each result element reads its slice along ``dim`` (a scan: the slice's
prefix), the other axes element by element. They were unknown ops (a warning, every input unit feeding every output).

The truth the graph is checked against is the model's own, in float64: a unit of ``a`` feeds an input channel of
``head`` when moving that unit far up or down changes it, for some input (an index does not carry gradients, so
perturbation stands in for autograd: a top-k's values and indices change when any element of their slice moves
past the others)."""
import warnings

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs

torch.set_num_threads(1)


class Along(nn.Module):
    """``a``'s 8 units laid out as 2 rows of 4 (``[B, 2, 4]``), ``op`` applied, what it gives flattened into ``head``."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.a = nn.Linear(5, 8)
        width = op(torch.zeros(1, 2, 4)).reshape(1, -1).shape[1]
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        v = self.op(self.a(x).view(-1, 2, 4))
        return self.head(v.reshape(v.shape[0], -1).to(x.dtype))


OPS = {
    "topk values": lambda h: h.topk(2, dim=-1).values,
    "topk smallest indices": lambda h: h.topk(2, -1, largest=False)[1],
    "topk over rows, unsorted": lambda h: torch.topk(h, 1, dim=-2, sorted=False).indices,
    "sort": lambda h: h.sort(dim=-1).values,
    "sort descending indices": lambda h: torch.sort(h, dim=1, descending=True)[1],
    "argsort": lambda h: h.argsort(-1),
    "msort (over the batch)": lambda h: torch.msort(h),
    "kthvalue": lambda h: h.kthvalue(2, -1).values,
    "kthvalue keepdim indices": lambda h: torch.kthvalue(h, 1, dim=1, keepdim=True).indices,
    "median": lambda h: h.median(-1).values,
    "median indices": lambda h: torch.median(h, dim=-1, keepdim=True)[1],
    "mode": lambda h: torch.mode(h, -1).values,
    "cummax": lambda h: h.cummax(-1).values,
    "cummin indices over rows": lambda h: torch.cummin(h, dim=1).indices,
    "cummax over rows, negative dim": lambda h: torch.cummax(h, dim=-2)[0],
    # the positions among one element are 0 whatever the data (constants); its value is the element
    "argsort of one element, beside it": lambda h: torch.cat([h[:, :1].argsort(1).to(h.dtype), h[:, :1]], 1),
    "sort of one integer": lambda h: (h * 10).to(torch.long)[:, :1].sort(dim=1).values,
}


def _truth(model):
    """Per input channel of ``head``, the units of ``a`` whose moving (by +-100, at any of several inputs) changes
    it: float64, so what does not depend on a unit does not move by a single bit."""
    seen = {}
    model.head.register_forward_pre_hook(lambda m, args: seen.__setitem__("in", args[0].detach().clone()))
    bump = {}
    model.a.register_forward_hook(lambda m, args, out: out + bump.get("d", 0))
    x = torch.randn(16, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    feeds = torch.zeros(model.head.in_features, 8, dtype=torch.bool)
    with torch.no_grad():
        bump["d"] = 0
        model(x)
        base = seen["in"]
        for u in range(8):
            for step in (100.0, -100.0):
                d = torch.zeros(8, dtype=torch.float64)
                d[u] = step
                bump["d"] = d
                model(x)
                feeds[:, u] |= (seen["in"] != base).any(0)
    return feeds




def _graph_feeds_of(g, reader, group):
    """Per input channel of layer ``reader``, the units of layer ``group`` the graph has feeding it (through
    junctions)."""
    lay = {l.module: l for l in g.layers}
    nxg = graphs.to_networkx(g)
    start, count = g.groups[lay[group].group].start, g.groups[lay[group].group].count
    return torch.tensor([[start + u in nx.ancestors(nxg, node) | {node} for u in range(count)]
                         for node in lay[reader].in_src.tolist()])


def assert_followed_exactly(op):
    """The unit graph of ``Along(op)`` in float64, built with no unknown-op warning, has each input channel of
    ``head`` fed by exactly the units of ``a`` that moving changes it (:func:`_truth`), and one edge per live synapse."""
    torch.manual_seed(0)
    model = Along(op).double().eval()
    conn = adaptive.Connectome(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cannot follow the data flow"
        g = graphs.build(conn, "unit", example_input=torch.randn(4, 5, dtype=torch.float64))
    truth = _truth(model)
    assert bool(truth.any())  # the check checks something
    assert torch.equal(_graph_feeds_of(g, "head", "a"), truth)
    assert g.live_synapses() == conn.num_live()


@pytest.mark.parametrize("name", list(OPS))
def test_an_op_along_a_dim_feeds_each_element_its_slice_exactly(name):
    assert_followed_exactly(OPS[name])


def test_median_of_the_whole_tensor_reads_every_unit():
    class Whole(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(5, 4), nn.Linear(5, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.b(x) - torch.median(self.a(x)))

    model = Whole()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(adaptive.Connectome(model), "unit", example_input=torch.randn(3, 5))
    feeds = _graph_feeds_of(g, "head", "a")
    assert bool(feeds.all())




class TopTwoMoE(nn.Module):
    """Top-2 routing: each token's two best experts, weighted by the softmax of their two logits."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(10, 8)
        self.router = nn.Linear(8, 4)
        self.experts = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.stem(x))
        top = self.router(h).topk(2, dim=-1)
        weights = top.values.softmax(-1)  # [B, 2]
        outs = torch.stack([e(h) for e in self.experts], 1)  # [B, experts, 8]
        picked = outs.gather(1, top.indices[:, :, None].expand(-1, -1, outs.shape[-1]))  # [B, 2, 8]
        return self.head(F.relu((picked * weights[:, :, None]).sum(1)))


class KeepTopTokens(nn.Module):
    """Scores each token and keeps the best ``k`` (a token-dropping encoder): the scorer reaches the output only
    through which tokens are kept."""

    def __init__(self, k=3):
        super().__init__()
        self.k = k
        self.inp = nn.Linear(4, 6)
        self.score = nn.Linear(6, 1)
        self.head = nn.Linear(6, 2)

    def forward(self, x):  # [B, T, 4]
        h = F.relu(self.inp(x))
        _, idx = torch.topk(self.score(h).squeeze(-1), self.k, dim=1)
        kept = h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))  # [B, k, 6]
        return self.head(kept.mean(1))


@pytest.mark.parametrize("model_x", [(TopTwoMoE, (64, 10)), (KeepTopTokens, (8, 7, 4))], ids=["moe", "tokens"])
def test_a_top_k_router_and_token_dropping_get_their_graph_without_warnings(model_x):
    cls, shape = model_x
    torch.manual_seed(0)
    model = cls()
    conn = adaptive.Connectome(model)
    x = 3 * torch.randn(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(conn, example_input=x)
    assert graphs.summary(g)["dead"]["dead"] == 0  # the router (scorer) feeds the pick
    assert g.live_synapses() == conn.num_live()
    if cls is KeepTopTokens:  # the kept channel c is channel c of the tokens, picked by the score: nothing else
        nxg, names = graphs.to_networkx(g), g.node_names()
        src = {l.module: l for l in g.layers}["head"].in_src.tolist()
        assert [sorted(names[p] for p in nxg.predecessors(s)) for s in src] == [[f"inp:{c}", "score:0"] for c in range(6)]
    else:  # every router unit decides both picks and both weights
        assert bool(_graph_feeds_of(g, "head", "router").all())
    small = graphs.compact(model.eval(), conn, x)
    assert small.compaction["params_after"] == small.compaction["params_before"]


def test_a_registered_category_still_wins_over_the_rank_rule():
    from graphs import ops

    class Sorts(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.head = nn.Linear(5, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.msort(self.a(x).t()).t())

    saved = dict(ops._EXTRA)
    try:
        graphs.register_op(torch.msort, "pointwise")
        model = Sorts()
        node = next(n for n in torch.fx.symbolic_trace(model).graph.nodes if n.target is torch.msort)
        assert ops.categorize(node) == "pointwise"
    finally:
        ops._EXTRA.clear()
        ops._EXTRA.update(saved)
