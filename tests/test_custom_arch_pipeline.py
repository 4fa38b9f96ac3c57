"""Architectures of the user's own, none in the model lists, through the whole public pipeline on tiny random
batches: dynamic sparse training and gradual pruning with the controller, mask-only optimisation, graph export
(networkx, PyG, GraphML) and compaction, and the diagnostics. Each checks the invariants: pruned synapses stay
exact zeros in the dense weights after every step, masks and weights agree, and the graph's synapse edges are
the live synapses. What is not supported (a forward of two inputs, a dict output, a branch on the data) is
refused with an error naming the workaround, which the tests then take."""
import math
import os
import warnings

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs
from adaptive.diagnostics import collinearity, gradient_by_depth, knowledge_distribution

B = 6


class TinyUNet(nn.Module):
    """Skip concatenation and a ConvTranspose2d up path; a class per pixel."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.dec = nn.Conv2d(8, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        e = F.relu(self.enc(x))
        u = F.relu(self.up(F.relu(self.down(F.max_pool2d(e, 2)))))
        return self.out(F.relu(self.dec(torch.cat([u, e], 1))))


class GRUClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.rnn = nn.GRU(6, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):
        return self.head(self.rnn(self.emb(tokens))[0][:, -1])


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.rnn = nn.LSTM(6, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):
        _, (h, _) = self.rnn(self.emb(tokens))
        return self.head(h[-1])


class BranchDict(nn.Module):
    """An nn.ModuleDict and a branch on the data, which torch.fx cannot trace."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(10, 8)
        self.paths = nn.ModuleDict({"pos": nn.Linear(8, 8), "neg": nn.Linear(8, 8)})
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.stem(x))
        h = self.paths["pos"](h) if x.mean() > 0 else self.paths["neg"](h)
        return self.head(F.relu(h))


class TopOneMoE(nn.Module):
    """Top-1 routing: the router's argmax picks one expert's output by gather (or index_select, or
    indexing), which is not scaled by the gate: the router reaches the output through the index alone."""

    def __init__(self, pick="gather"):
        super().__init__()
        self.pick = pick
        self.stem = nn.Linear(10, 8)
        self.router = nn.Linear(8, 3)
        self.experts = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.stem(x))
        idx = self.router(h).max(-1).indices if self.pick == "max" else self.router(h).argmax(-1)
        outs = torch.stack([e(h) for e in self.experts], 1)  # [B, experts, 8]
        if self.pick == "index_select":
            picked = outs.flatten(0, 1).index_select(0, idx + outs.shape[1] * torch.arange(outs.shape[0]))
        elif self.pick == "getitem":
            picked = outs[torch.arange(outs.shape[0]), idx]
        else:
            picked = outs.gather(1, idx[:, None, None].expand(-1, 1, outs.shape[-1])).squeeze(1)
        return self.head(F.relu(picked))


class DepthwiseSE(nn.Module):
    """Depthwise-separable and grouped convolutions and a squeeze-excitation gate (sigmoid)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.squeeze = nn.Conv2d(8, 2, 1)
        self.excite = nn.Conv2d(2, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.pw(F.relu(self.dw(F.relu(self.stem(x))))))
        h = F.relu(self.grouped(h))
        h = h * torch.sigmoid(self.excite(F.relu(self.squeeze(F.adaptive_avg_pool2d(h, 1)))))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


class TinyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 8)
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.layer(self.inp(x)).mean(1))


class AudioFrontEnd(nn.Module):
    """A strided Conv1d front end on a raw waveform [B, 1, T]."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(1, 4, 9, stride=4, padding=4)
        self.c2 = nn.Conv1d(4, 8, 5, stride=2, padding=2)
        self.head = nn.Linear(8, 3)

    def forward(self, wave):
        return self.head(F.adaptive_avg_pool1d(F.relu(self.c2(F.relu(self.c1(wave)))), 1).flatten(1))


class ImageTabular(nn.Module):
    """Two inputs (an image and tabular features) and a dict of outputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.tab = nn.Linear(5, 4)
        self.fuse = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)
        self.aux = nn.Linear(8, 1)

    def forward(self, img, tab):
        a = F.adaptive_avg_pool2d(F.relu(self.conv(img)), 1).flatten(1)
        h = F.relu(self.fuse(torch.cat([a, F.relu(self.tab(tab))], 1)))
        return {"logits": self.head(h), "aux": self.aux(h)}


class Logits(nn.Module):
    """The wrapper the refusals name: the batch's inputs as one argument, the logits alone out."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, inputs):
        return self.net(*inputs)["logits"]


def _inputs(kind, g):
    return {"image": lambda: torch.randn(B, 3, 8, 8, generator=g),
            "tokens": lambda: torch.randint(0, 20, (B, 5), generator=g),
            "vector": lambda: torch.randn(B, 10, generator=g),
            "sequence": lambda: torch.randn(B, 4, 5, generator=g),
            "wave": lambda: torch.randn(B, 1, 32, generator=g),
            "two": lambda: (torch.randn(B, 3, 8, 8, generator=g), torch.randn(B, 5, generator=g))}[kind]()


# name: (class, input kind, per-pixel targets, layer gradient_by_depth reads)
ARCHS = {
    "unet": (TinyUNet, "image", True, "dec"),      # dec reads the up path and the skip: two depths
    "gru": (GRUClassifier, "tokens", False, "head"),
    "lstm": (LSTMClassifier, "tokens", False, "head"),
    "branch": (BranchDict, "vector", False, "head"),
    "moe": (TopOneMoE, "vector", False, "head"),
    "dwse": (DepthwiseSE, "image", False, "head"),
    "encoder": (TinyEncoder, "sequence", False, "head"),
    "audio": (AudioFrontEnd, "wave", False, "head"),
    "two": (ImageTabular, "two", False, "head"),
}


def _batches(name, n=3):
    _, kind, per_pixel, _ = ARCHS[name]
    g = torch.Generator().manual_seed(0)
    return [(_inputs(kind, g), torch.randint(0, 3, (B, 8, 8) if per_pixel else (B,), generator=g)) for _ in range(n)]


def _build(name):
    torch.manual_seed(0)
    return ARCHS[name][0]()


def _logits(model, x):
    out = model(*x) if isinstance(x, tuple) else model(x)
    return out["logits"] if isinstance(out, dict) else out


def _check_masked(conn):
    """Pruned synapses are exact zeros in the dense weights, and the counts agree with the masks."""
    for n, p in conn.params.items():
        assert conn.masks[n].shape == p.shape
        assert bool((p.detach()[~conn.masks[n]] == 0).all()), n
    assert conn.num_live() == sum(int(m.sum()) for m in conn.masks.values())
    sd = conn.dense_state_dict()
    assert all(bool((sd[n][~conn.masks[n]] == 0).all()) for n in conn.masks)


def _train(model, opt, batches, conn, epochs=2):
    for _ in range(epochs):
        for x, y in batches:
            F.cross_entropy(_logits(model, x), y).backward()
            opt.step()
            opt.zero_grad()
            _check_masked(conn)


def _one_input(name, model):
    """The model as the mask-only optimisation and the diagnostics take it: the two-input one wrapped."""
    return Logits(model) if name == "two" else model


def _half_masks(conn):
    g = torch.Generator().manual_seed(1)
    conn.set_masks({n: torch.rand(m.shape, generator=g) < 0.6 for n, m in conn.masks.items()})


@pytest.mark.parametrize("name", list(ARCHS))
def test_dynamic_sparse_training_and_gradual_pruning(name):
    batches = _batches(name)
    for policy in ("set", "rigl", "utility"):
        model = _build(name)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        conn = adaptive.Connectome(model)
        ctrl = adaptive.Controller(conn, opt, policy=policy, density=0.5, budget="uniform", update_every=2,
                                   end_step=6)
        _train(model, opt, batches, conn)
        assert len(ctrl.events) >= 2 and any(e["pruned"] or e.get("grown") for e in ctrl.events[1:]), policy
        assert abs(conn.density() - 0.5) < 0.05, (policy, conn.density())
    model = _build(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    conn = adaptive.Connectome(model)
    adaptive.Controller(conn, opt, policy="gmp", density=0.3, update_every=2, end_step=4)
    _train(model, opt, batches, conn)
    assert abs(conn.density() - 0.3) < 0.05, conn.density()


@pytest.mark.parametrize("name", list(ARCHS))
def test_mask_only_on_the_trained_net(name):
    model = _build(name)
    batches = _batches(name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    conn = adaptive.Connectome(model)
    adaptive.Controller(conn, opt, policy="rigl", density=0.6, update_every=2, end_step=4)
    _train(model, opt, batches, conn, epochs=1)
    conn.detach()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if name == "two":  # two inputs, a dict out: refused, naming the wrapper that takes them as one
        with pytest.raises(TypeError, match=r"ImageTabular.forward takes them as 2 separate arguments: wrap it"):
            adaptive.optimize_connectome(model, batches, batches[:1], target=0.6, progress=False)
        with pytest.raises(TypeError, match=r"dict"):
            adaptive.optimize_connectome(_DictOut(model), batches, batches[:1], target=0.6, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the trained net's pruned zeros count as removed already (a warning)
        res = adaptive.optimize_connectome(_one_input(name, model), batches, batches[:2], target=0.6, progress=False)
    snap = res.use("0.6")  # the model now runs with the snapshot's masks
    assert snap.removed == round(0.6 * conn.num_synapses())
    assert adaptive.mask_only.changed_weights(res.conn) == 0
    masks = {n if name != "two" else n.removeprefix("net."): m for n, m in snap.masks.items()}
    for k, v in model.state_dict().items():  # no surviving weight moved a bit; the removed ones are exact zeros
        expect = before[k] * masks[k] if k in masks else before[k]
        assert torch.equal(v, expect), k
    for n, m in masks.items():  # the snapshot never restores a synapse the training pruned
        assert not bool((m & ~conn.masks[n]).any()), n


class _DictOut(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, inputs):
        return self.net(*inputs)


def _synapse_edges(g):
    return int((g.edge_attrs["kind"] == 0).sum())


@pytest.mark.parametrize("name", list(ARCHS))
def test_graph_export_and_compaction(name, tmp_path):
    model = _build(name)
    conn = adaptive.Connectome(model)
    _half_masks(conn)
    x = _batches(name, 1)[0][0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        unit = graphs.build(conn, level="unit", example_input=x)
        g = graphs.build(conn, level="synapse", example_input=x)
    messages = [str(w.message) for w in caught if "graphs" in str(w.message)]
    if name == "branch":  # fx cannot trace the branch: module order, with a warning naming the line
        assert any("x.mean() > 0" in m for m in messages), messages
    else:
        assert not messages, messages  # every op of these followed exactly (a MoE's max/argmax and gather too)
    assert unit.live_synapses() == g.live_synapses() == conn.num_live()
    assert _synapse_edges(g) == conn.num_live()  # one edge per live synapse
    nxg = graphs.to_networkx(g)
    assert sum(1 for *_, k in nxg.edges(data="kind") if k == 0) == conn.num_live()
    data = graphs.to_pyg(g)
    kind = data.edge_attr[:, data.edge_attr_names.index("kind")]
    assert data.edge_index.shape[1] == g.src.numel() and int((kind == 0).sum()) == conn.num_live()
    path = os.path.join(tmp_path, "c.graphml")
    graphs.write(unit, path)
    back = graphs.from_networkx(nx.read_graphml(path))
    assert back.live_synapses() == conn.num_live()
    if name == "branch":  # a compact copy is one fixed data flow: refused, naming the line and the fix
        with pytest.raises(RuntimeError, match=r"x.mean\(\) > 0.*torch.where"):
            graphs.compact(model.eval(), conn, x)
        return
    small = graphs.compact(model.eval(), conn, x)  # checks its outputs against the masked model itself
    assert small.compaction["params_after"] <= small.compaction["params_before"]


@pytest.mark.parametrize("pick", ["gather", "max", "index_select", "getitem"])
def test_a_router_that_picks_by_index_reaches_the_output(pick):
    """The router's units feed nothing but the index of the expert picked: they decide the output all the
    same, so they are no dead units (before, the index's data flow was dropped, and max/argmax were unknown ops)."""
    torch.manual_seed(0)
    model = TopOneMoE(pick)
    conn = adaptive.Connectome(model)
    x = 3 * torch.randn(64, 10)  # the ids move as this example's router picks: it reaches every expert
    assert model.router(F.relu(model.stem(x))).argmax(-1).unique().numel() == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(conn, example_input=x)
    assert graphs.summary(g)["dead"]["dead"] == 0
    small = graphs.compact(model.eval(), conn, x)
    assert small.compaction["params_after"] == small.compaction["params_before"]  # nothing dead to remove


def test_max_of_two_tensors_stays_element_wise():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.head(torch.max(self.a(x), self.b(x)))

    conn = adaptive.Connectome(Two())
    g = graphs.build(conn, example_input=torch.randn(2, 4))
    assert graphs.summary(g)["dead"]["dead"] == 0 and g.live_synapses() == conn.num_live()
    graphs.compact(Two().eval(), None, torch.randn(2, 4))


@pytest.mark.parametrize("name", list(ARCHS))
def test_diagnostics(name):
    model = _build(name)
    batches = _batches(name)
    layer = ARCHS[name][3]
    if name == "two":  # refused, naming the wrapper that takes the inputs as one
        for fn in (lambda: gradient_by_depth(model, batches, layer=layer, batches=1),
                   lambda: collinearity(model, batches)):
            with pytest.raises(TypeError, match=r"2 separate arguments: wrap it .*self.net\(\*inputs\)"):
                fn()
        layer = f"net.{layer}"
    net = _one_input(name, model)
    conn = adaptive.Connectome(net)
    _half_masks(conn)
    if name == "branch":  # no depths from a model fx cannot trace: refused, naming depths=
        with pytest.raises(ValueError, match=r"x.mean\(\) > 0.*pass depths="):
            gradient_by_depth(net, batches, layer=layer, batches=1, conn=conn)
        bands = gradient_by_depth(net, batches, layer=layer, batches=2, conn=conn, depths=torch.full((8,), 2))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a layer reading one depth warns that there is nothing to compare
            bands = gradient_by_depth(net, batches, layer=layer, batches=2, conn=conn)
    live = int(conn.masks[f"{layer}.weight"].sum())
    assert bands.pruned == conn.masks[f"{layer}.weight"].numel() - live
    if name == "unet":
        assert len({r["depth"] for r in bands.table}) == 2  # the skip and the up path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        col = collinearity(net, batches, conn=conn)
    # a layer no gradient reaches is left out, with a warning naming it: the branch these batches never take,
    # the router, which reaches the loss only through the argmax's index, and the aux output the wrapper drops
    unused = {"branch": ["paths.neg.weight"], "moe": ["router.weight"], "two": ["net.aux.weight"]}.get(name, [])
    assert sorted(set(conn.masks) - set(col.cosine)) == unused
    assert all(any(u in str(w.message) for w in caught) for u in unused)
    live = sum(int(conn.masks[n].sum()) for n in col.cosine)
    assert col.measured == live and col.pruned == sum(conn.masks[n].numel() for n in col.cosine) - live
    curve = knowledge_distribution(net, batches, order_loader=batches, points=3, order_batches=2, conn=conn)
    assert curve.table[0]["removed"] == 0 and curve.table[-1]["removed"] > 0
    _check_masked(conn)  # the diagnostics leave the masks and the pruned zeros as they were
    assert math.isfinite(curve.table[0]["loss"])


class _EdgeNet(nn.Module):
    """An edge classifier: each edge reads its two nodes' features, picked by the edge list it is given."""

    def __init__(self):
        super().__init__()
        self.a, self.h = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x, edges):
        h = self.a(x)
        return self.h(F.relu(h.index_select(0, edges[0]) + h.gather(0, edges[1][:, None].expand(-1, 8))))


def test_an_index_the_caller_gives_feeds_through_one_node_not_one_per_entry():
    """An edge list (labels, lengths) given as an input picks rows as a router's index does, but it is no unit:
    each element picked was a junction per (unit, entry of the index), a graph 100 times the model's for an
    edge list of 2,000 edges. Such an index feeds what it picks through one node, as an embedding's tokens do."""
    torch.manual_seed(0)
    model = _EdgeNet()
    conn = adaptive.Connectome(model)
    x = torch.randn(10, 4)
    sizes = []
    for e in (20, 60):
        g = graphs.build(conn, level="unit", example_input=(x, torch.randint(0, 10, (2, e))))
        sizes.append(g.num_nodes)
        names = g.node_names()
        nxg = graphs.to_networkx(g)
        out = [i for i, nm in enumerate(names) if nm.startswith("output:")]
        reach = set().union(*(nx.ancestors(nxg, o) for o in out))
        assert {i for i, nm in enumerate(names) if nm.startswith("edges:")} <= reach  # the edge list still feeds
    assert sizes[1] - sizes[0] == 40  # only the 40 more input nodes of the longer edge list
