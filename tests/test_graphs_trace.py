"""graphs tracing and building on hand-built models whose graphs are known exactly."""

import copy
import inspect
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn, ones, randn, zeros

import adaptive
import graphs
from graphs.graph import EDGE_SYNAPSE, EDGE_WIRE
from graphs.trace import default_example_input

torch.set_num_threads(1)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _graph_edges import edge_set, full, wires  # noqa: E402


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1)
        self.b = nn.Conv2d(3, 3, 1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        h = self.a(x)
        h = F.relu(self.b(h) + h)
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_residual_add_gives_junctions_and_exact_edges():
    g = graphs.build(model=Residual(), level="unit", example_input=torch.randn(1, 2, 4, 4))
    expected = (full("x", "a", 2, 3) | full("a", "b", 3, 3) | wires("a", "add", [(i, i) for i in range(3)])
                | wires("b", "add", [(i, i) for i in range(3)]) | full("add", "fc", 3, 2)
                | wires("fc", "output", [(0, 0), (1, 1)]))
    assert edge_set(g) == expected
    d = dict(zip(g.node_names(), g.node_attrs["depth_max"].tolist()))
    dmin = dict(zip(g.node_names(), g.node_attrs["depth_min"].tolist()))
    assert (d["a:0"], d["b:0"], d["add:0"], d["fc:0"], d["output:1"]) == (1, 2, 2, 3, 3)
    assert (dmin["add:0"], dmin["fc:0"]) == (1, 2)  # the shortcut skips b


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 2, 1)
        self.b = nn.Conv2d(2, 3, 1)
        self.c = nn.Conv2d(5, 2, 1)
        self.fc = nn.Linear(8, 3)  # flatten of [2, 2, 2]: each channel owns 4 features

    def forward(self, x):
        h = torch.cat([self.a(x), F.relu(self.b(x))], 1)
        return self.fc(torch.flatten(self.c(h), 1))


def test_concat_offsets_and_flatten_after_conv():
    conn = adaptive.Connectome(Concat())
    x = torch.randn(1, 2, 2, 2)
    g = graphs.build(conn, "unit", example_input=x)
    expected = (full("x", "a", 2, 2) | full("x", "b", 2, 3) | full("a", "c", 2, 2) | full("b", "c", 3, 2)
                | full("c", "fc", 2, 3) | wires("fc", "output", [(i, i) for i in range(3)]))
    assert edge_set(g) == expected
    fc = g.edge_attrs["layer"] == 3
    assert g.edge_attrs["count"][fc].tolist() == [4.0] * 6  # h*w features per channel
    lay = {l.module: l for l in g.layers}
    names = g.node_names()
    assert [names[i] for i in lay["c"].in_src.tolist()] == ["a:0", "a:1", "b:0", "b:1", "b:2"]
    assert [names[i] for i in lay["fc"].in_src.tolist()] == ["c:0"] * 4 + ["c:1"] * 4
    comp = graphs.concat_composition(g)
    assert [p[1:] for p in comp[0]["parts"]] == [(0, 2), (2, 3)]
    assert comp[0]["depth"].tolist() == [1] * 5
    s = graphs.build(conn, "synapse", example_input=x)
    syn = s.edge_attrs["kind"] == EDGE_SYNAPSE
    assert int(syn.sum()) == conn.num_live()


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.g2 = nn.Conv2d(4, 6, 1, groups=2)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.g2(self.dw(self.a(x))).mean((2, 3)))


def test_depthwise_and_grouped_convs():
    g = graphs.build(model=Depthwise(), level="unit", example_input=torch.randn(1, 3, 5, 5))
    expected = (full("x", "a", 3, 4) | {(f"a:{i}", f"dw:{i}", EDGE_SYNAPSE) for i in range(4)}
                | {(f"dw:{i}", f"g2:{j}", EDGE_SYNAPSE) for i in range(4) for j in range(6) if i // 2 == j // 3}
                | full("g2", "fc", 6, 2) | wires("fc", "output", [(0, 0), (1, 1)]))
    assert edge_set(g) == expected
    dw = g.edge_attrs["layer"] == 1
    assert g.edge_attrs["count"][dw].tolist() == [9.0] * 4


class OptionA(nn.Module):
    """The CIFAR ResNet's parameter-free shortcut: subsample and zero-pad channels."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 1)
        self.b = nn.Conv2d(2, 4, 1, stride=2)
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        h = self.a(x)
        s = F.pad(h[:, :, ::2, ::2], (0, 0, 0, 0, 1, 1))
        return self.fc(F.adaptive_avg_pool2d(self.b(h) + s, 1).flatten(1))


def test_zero_pad_shortcut():
    g = graphs.build(model=OptionA(), level="unit", example_input=torch.randn(1, 1, 4, 4))
    lay = {l.module: l for l in g.layers}
    names = g.node_names()
    assert [names[i] for i in lay["fc"].in_src.tolist()] == ["b:0", "add:0", "add:1", "b:3"]
    assert wires("a", "add", [(0, 0), (1, 1)]) | wires("b", "add", [(1, 0), (2, 1)]) <= edge_set(g)


def test_resnet20_live_synapses_match_connectome():
    from adaptive.models import build_model

    conn = adaptive.Connectome(build_model("resnet20"))
    gen = torch.Generator().manual_seed(0)
    conn.set_masks({k: torch.rand(v.shape, generator=gen) < 0.3 for k, v in conn.masks.items()})
    tr = graphs.trace(conn.model)
    s = graphs.build(conn, "synapse", traced=tr)
    u = graphs.build(conn, "unit", traced=tr)
    lay = graphs.build(conn, "layer", traced=tr)
    assert s.live_synapses() == u.live_synapses() == lay.live_synapses() == conn.num_live()
    dens = graphs.density_per_layer(u)
    assert dens == pytest.approx({conn.layers[k].module_name: v for k, v in conn.layer_density().items()})
    # option-A shortcuts: layer2.0's first 8 stream channels come from its conv2 alone
    l21 = next(l for l in u.layers if l.module == "layer2.1.conv1")
    names = u.node_names()
    assert names[int(l21.in_src[0])] == "layer2.0.conv2:0" and names[int(l21.in_src[8])].startswith("add_3:")
    assert int(u.node_attrs["depth_max"].max()) == 20  # 19 convs + the classifier


def test_densecat_concat_depths_match_the_model():
    from adaptive.models import build_model

    m = build_model("densecat", depth=4, width=8)
    g = graphs.build(model=m, level="unit")
    comps = graphs.concat_composition(g)
    for k in range(4):
        assert torch.equal(comps[k]["depth"], m.input_depths(f"layers.{k}"))


def test_untraceable_model_falls_back_with_warning():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                x = -x
            return self.b(self.a(x))

    with pytest.warns(UserWarning, match=r"could not trace Dynamic at .*test_graphs_trace.py:\d+ in forward \(if x.sum\(\) > 0:.*module order"):
        g = graphs.build(model=Dynamic(), level="unit")
    assert edge_set(g) == full("input", "a", 4, 3) | full("a", "b", 3, 2) | wires("b", "output", [(0, 0), (1, 1)])
    assert g.meta["traced"] is False


def test_unknown_op_warns_naming_the_node():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.b(torch.renorm(self.a(x), 2, 1, 1.0))

    with pytest.warns(UserWarning, match="renorm"):
        g = graphs.build(model=Odd(), level="unit")
    names = g.node_names()
    lay = {l.module: l for l in g.layers}
    assert {names[i] for i in lay["b"].in_src.tolist()} == {"renorm:0"}  # one node fed by every unit of a
    assert wires("a", "renorm", [(i, 0) for i in range(3)]) <= edge_set(g)


def test_unknown_module_warning_names_its_type_and_a_register_op_call_that_works():
    class Soft(nn.Module):  # nn.Threshold: an activation the tables do not list
        def __init__(self):
            super().__init__()
            self.a, self.soft, self.b = nn.Linear(4, 3), nn.Threshold(0.1, 0.0), nn.Linear(3, 2)

        def forward(self, x):
            return self.b(self.soft(self.a(x)))

    with pytest.warns(UserWarning, match=r"'soft' \(call_module soft, a Threshold\)") as rec:
        graphs.build(model=Soft(), level="unit")
    call = next(str(w.message) for w in rec if "Threshold" in str(w.message)).split("teach it with ")[1].split(" if it")[0]
    assert call == 'graphs.register_op(torch.nn.modules.activation.Threshold, "pointwise")'
    try:
        eval(call, {"graphs": graphs, "torch": torch})
        g = graphs.build(model=Soft(), level="unit")
        assert not g.warnings
    finally:
        graphs.ops._EXTRA.pop(nn.Threshold, None)


def test_unknown_torch_function_warning_suggests_a_call_that_works():
    """For a torch.* built-in the hint read graphs.register_op(torch._VariableFunctionsClass.renorm, ...),
    which fails with AttributeError when pasted."""
    class Renorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.b(torch.renorm(self.a(x), 2, 1, 1.0))

    with pytest.warns(UserWarning, match="renorm") as rec:
        graphs.build(model=Renorm(), level="unit")
    call = next(str(w.message) for w in rec if "renorm" in str(w.message)).split("teach it with ")[1].split(" if it")[0]
    assert call == 'graphs.register_op(torch.renorm, "pointwise")'
    try:
        eval(call, {"graphs": graphs, "torch": torch})
        assert not graphs.build(model=Renorm(), level="unit").warnings
    finally:
        graphs.ops._EXTRA.pop(torch.renorm, None)


def test_unknown_operator_warning_names_the_operator_module():
    """x // 2 read graphs.register_op(_operator.floordiv, ...): no such name to paste."""
    class Div(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.b(self.a(x) // 2)

    with pytest.warns(UserWarning, match="floordiv") as rec:
        graphs.build(model=Div(), level="unit")
    msg = next(str(w.message) for w in rec if "floordiv" in str(w.message))
    assert 'graphs.register_op(operator.floordiv, "pointwise")' in msg


@pytest.mark.parametrize("f, target, category", [
    (lambda h: torch.renorm(h, 2, 2, 1.0), torch.renorm, "pointwise"),  # keeps the shape
    (lambda h: torch.adjoint(h), torch.adjoint, "shape"),  # keeps the element count
    (lambda h: torch.logsumexp(h, dim=2), torch.logsumexp, "reduce"),  # drops a dimension
    (lambda h: torch.hypot(h, h[:, :1]), torch.hypot, "broadcast"),  # several operands, their broadcast shape
    (lambda h: torch.diff(h, dim=1), torch.diff, None),  # one channel fewer: no rule fits
    (lambda h: torch.cdist(h, h), torch.cdist, None),  # a matrix product is followed (graphs.flow_contract)
])
def test_unknown_op_hint_suggests_the_category_that_fits_its_shapes(f, target, category):
    """The hint said "pointwise" whatever the op; registering a shape-changing op so fails again."""
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)

        def forward(self, x):
            return f(self.a(x))

    name = target.__name__
    with pytest.warns(UserWarning, match=name) as rec:
        graphs.trace(Odd(), torch.randn(1, 6, 3))
    msg = next(str(w.message) for w in rec if name in str(w.message))
    if category is None:
        assert f"no graphs.register_op category fits torch.{name}, which takes (1, 6, 4)" in msg
        assert "teach it with" not in msg
        return
    call = msg.split("teach it with ")[1].split(" if ")[0]
    assert call == f'graphs.register_op(torch.{name}, "{category}")'
    try:
        eval(call, {"graphs": graphs, "torch": torch})
        assert not graphs.trace(Odd(), torch.randn(1, 6, 3)).unknown  # the suggested rule follows it
    finally:
        graphs.ops._EXTRA.pop(target, None)


@pytest.mark.parametrize("groups", [1, 2])
def test_transposed_conv_is_a_weighted_layer(groups):
    class UpNet(nn.Module):  # a U-Net's up path: the up-convolution's output is one layer deeper
        def __init__(self):
            super().__init__()
            self.enc = nn.Conv2d(2, 4, 3, padding=1)
            self.down = nn.Conv2d(4, 4, 3, padding=1, stride=2)
            self.up = nn.ConvTranspose2d(4, 6, 2, stride=2, groups=groups)  # weight (in 4, out/groups, 2, 2)
            self.dec = nn.Conv2d(6 + 4, 2, 1)

        def forward(self, x):
            e = F.relu(self.enc(x))
            return self.dec(torch.cat([self.up(F.relu(self.down(e))), e], 1))

    import warnings

    model, x = UpNet(), torch.randn(1, 2, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing unknown
        g = graphs.build(model=model, level="synapse", example_input=x)
    lay = {l.module: l for l in g.layers}
    assert lay["up"].kind == "convtranspose2d" and lay["up"].shape == (6, 4 // groups, 2, 2)
    assert g.node_attrs["depth_max"][lay["dec"].in_src].tolist() == [3] * 6 + [1] * 4
    assert g.live_synapses() == sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
    # every synapse of the up-convolution: its position in the parameter, its value, its input and output channel
    e = g.edge_attrs["layer"] == list(lay).index("up")
    pos, w = g.edge_attrs["position"][e], model.up.weight.detach()
    assert torch.equal(pos.sort().values, torch.arange(w.numel())) and torch.equal(g.edge_attrs["weight"][e], w.reshape(-1)[pos])
    cin, cout = pos // w[0].numel(), (pos % w[0].numel()) // w[0, 0].numel()  # (in, out/groups, kH, kW)
    assert torch.equal(g.src[e], lay["up"].in_src[cin])
    assert torch.equal(g.dst[e] - g.groups[lay["up"].group].start, cin // (4 // groups) * (6 // groups) + cout)
    unit = graphs.build(model=model, level="unit", example_input=x)
    assert int(unit.edge_attrs["count"].sum()) == g.live_synapses()
    conn = adaptive.Connectome(model)  # a synapse layer like the others
    assert conn.layers["up.weight"].transposed and graphs.build(conn, level="unit", example_input=x).live_synapses() == g.live_synapses()


def test_contracted_junctions_give_direct_unit_edges():
    g = graphs.build(model=Residual(), level="unit", example_input=torch.randn(1, 2, 4, 4), junctions=False)
    expected = (full("x", "a", 2, 3) | full("a", "b", 3, 3) | {(f"{s}:{i}", f"fc:{j}", EDGE_SYNAPSE)
                for s in "ab" for i in range(3) for j in range(2)} | wires("fc", "output", [(0, 0), (1, 1)]))
    assert edge_set(g) == expected
    d = dict(zip(g.node_names(), g.node_attrs["depth_max"].tolist()))
    assert (d["b:0"], d["fc:0"]) == (2, 3)


def test_contraction_through_chained_residual_adds():
    from adaptive.models import build_model

    conn = adaptive.Connectome(build_model("resnet20"))
    tr = graphs.trace(conn.model)
    u = graphs.build(conn, "unit", traced=tr)
    c = graphs.build(conn, "unit", traced=tr, junctions=False)
    assert int((c.node_attrs["kind"] == 3).sum()) == 0 and c.live_synapses() == conn.num_live()
    names = c.node_names()
    # layer1.2.conv1 reads channel 0 of the stream: stem conv1 + conv2 of blocks 0 and 1
    l = next(i for i, x in enumerate(c.layers) if x.module == "layer1.2.conv1")
    into = c.dst[(c.edge_attrs["layer"] == l)]
    feeders = {names[s] for s, d in zip(c.src.tolist(), c.dst.tolist()) if names[d] == "layer1.2.conv1:0"}
    assert feeders == {f"{m}:{i}" for m in ("conv1", "layer1.0.conv2", "layer1.1.conv2") for i in range(16)}
    assert into.numel() > 0
    # each copy carries the ensemble's synapse count: 3 sources -> 3 x 9 synapses per (channel, unit)
    e = [k for k, (s, d) in enumerate(zip(c.src.tolist(), c.dst.tolist())) if names[s] == "conv1:0" and names[d] == "layer1.2.conv1:0"]
    assert c.edge_attrs["count"][e].tolist() == [9]
    assert int(c.node_attrs["depth_max"].max()) == int(u.node_attrs["depth_max"].max())
    lay = graphs.build(conn, "layer", traced=tr, junctions=False)
    assert all(x.kind != "junction" for x in lay.groups)


def test_contraction_merges_copies_of_one_unit_pair():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1), nn.Conv2d(4, 1, 3, padding=1)

        def forward(self, x):
            h = self.a(x)
            return self.c(torch.cat([h + self.b(h), h], 1)).mean((2, 3))

    m = Twice()
    conn = adaptive.Connectome(m)
    g = graphs.build(conn, "unit", example_input=torch.randn(1, 1, 3, 3), junctions=False)
    names = g.node_names()
    pairs = {(names[s], names[d]): (int(k), float(l2)) for s, d, k, l2 in
             zip(g.src.tolist(), g.dst.tolist(), g.edge_attrs["count"].tolist(), g.edge_attrs["l2"].tolist())}
    w = m.c.weight.detach()
    assert pairs[("a:0", "c:0")] == (18, pytest.approx(float(w[0, [0, 2]].norm()), rel=1e-5))  # channels 0 and 2
    assert pairs[("b:1", "c:0")] == (9, pytest.approx(float(w[0, 1].norm()), rel=1e-5))
    assert g.live_synapses() == conn.num_live() == 2 + 4 + 36


def test_a_reduction_to_a_scalar_is_followed():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            y = self.fc(x)
            return y + y.sum()  # a 0-d tensor broadcast back

    conn = adaptive.Connectome(M())
    g = graphs.build(conn, example_input=torch.randn(2, 4))
    assert g.live_synapses() == conn.num_live() and graphs.summary(g)["dead"]["dead"] == 0


def test_dead_unit_counts_agree_with_and_without_junctions():
    from adaptive.models import build_model

    model = build_model("resnet20")
    conn = adaptive.Connectome(model, ensemble="kernel")
    gen = torch.Generator().manual_seed(3)
    conn.set_ensemble_masks({n: torch.rand(conn.granularity.ensemble_shape(m.shape), generator=gen) < 0.03
                             for n, m in conn.masks.items()})
    x = torch.randn(1, 3, 32, 32)
    with_j = graphs.dead_units(graphs.build(conn, example_input=x))
    without = graphs.dead_units(graphs.build(conn, example_input=x, junctions=False))
    counts = {k: (int(with_j[k].sum()), int(without[k].sum())) for k in with_j}
    assert all(a == b for a, b in counts.values()), counts
    assert counts["no_live_output"][0] > 0  # the case is exercised


class _AuxOutputs(nn.Module):
    """Logits beside a 0-dim auxiliary loss and a per-sample value."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        z = self.b(h)
        return z, h.pow(2).mean(), z[:, 0]


@pytest.mark.parametrize("batch", [1, 3])
def test_a_scalar_output_is_one_output_node(batch):
    """A 0-dim output (an auxiliary loss) crashed graphs.build (its ids stayed 0-dim and the wire
    targets came out 2-D); a per-sample [N] output had one output node per sample."""
    g = graphs.build(model=_AuxOutputs(), level="unit", example_input=torch.randn(batch, 4))
    links = {e for e in edge_set(g) if not e[0].startswith("x:")}
    assert links == (full("a", "b", 3, 2) | wires("a", "mean", [(i, 0) for i in range(3)])
                     | wires("b", "output0", [(0, 0), (1, 1)]) | wires("mean", "output1", [(0, 0)])
                     | wires("b", "output2", [(0, 0)]))
    assert graphs.summary(g)["outputs"] == 4
    g = graphs.build(model=_AuxOutputs(), level="synapse", example_input=torch.randn(batch, 4), junctions=False)
    assert graphs.summary(g)["dead"]["dead"] == 0
    assert graphs.to_networkx(g).number_of_nodes() == len(g.node_names())


def test_gradient_by_depth_traces_a_model_with_an_auxiliary_loss_output():
    """The trace failure above surfaced as 'cannot tell the signal depth ... pass depths='."""
    from torch.utils.data import DataLoader, TensorDataset

    from adaptive.diagnostics import gradient_by_depth

    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=8)
    with pytest.warns(UserWarning, match="one band"):  # b reads depth 1 only
        out = gradient_by_depth(_AuxOutputs(), loader, layer="b", batches=2,
                                loss_fn=lambda o, y: F.cross_entropy(o[0], y) + o[1])
    assert [r["depth"] for r in out.table] == [1]


@pytest.mark.parametrize("make,shape", [
    (lambda: nn.Linear(6, 5), (2, 6)),
    (lambda: nn.Conv1d(3, 4, 3), (2, 3, 9)),
    (lambda: nn.Conv2d(4, 6, 3, groups=2), (2, 4, 7, 7)),
    (lambda: nn.Conv3d(2, 3, 2), (2, 2, 4, 4, 4)),
])
def test_a_model_that_is_one_linear_or_conv_layer_keeps_its_synapses_in_the_graph(make, shape):
    """fx never makes the root a leaf, so a bare nn.Linear (nn.Conv*) traced into an F.linear call that
    no layer owns: the graph had 0 live synapses for the connectome's live ones, with a warning that
    the layer was off the data path and a register_op(torch._C._nn.linear, ...) hint. It is now
    followed as one call, as inside a Sequential: the same edges, under the model's own names."""
    import warnings

    torch.manual_seed(0)
    layer, x = make(), torch.randn(*shape)
    masks = {"weight": torch.rand(layer.weight.shape) < 0.5}
    bare = adaptive.Connectome(layer)
    bare.set_masks(masks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(bare, example_input=x)
    assert g.live_synapses() == bare.num_live() > 0
    assert [l.param for l in g.layers] == ["weight"] and [l.module for l in g.layers] == [""]

    seq = adaptive.Connectome(nn.Sequential(layer))
    seq.set_masks({"0.weight": masks["weight"]})
    ref = graphs.build(seq, example_input=x)
    assert torch.equal(g.src, ref.src) and torch.equal(g.dst, ref.dst)
    assert g.edge_attrs.keys() == ref.edge_attrs.keys()
    assert all(torch.equal(g.edge_attrs[k], ref.edge_attrs[k]) for k in g.edge_attrs)
    small = graphs.compact(layer, bare, example_input=x)  # one layer: its outputs stay, nothing to remove
    with torch.no_grad():
        assert torch.allclose(small(x), layer.eval()(x), atol=1e-6)


class _ChannelsLastBlock(nn.Module):
    """A ConvNeXt block: depthwise conv, permute to channels last, LayerNorm over the channels, MLP."""

    def __init__(self, c=4):
        super().__init__()
        self.stem, self.dw = nn.Conv2d(3, c, 1), nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm, self.l1, self.l2, self.fc = nn.LayerNorm(c), nn.Linear(c, 8), nn.Linear(8, c), nn.Linear(c, 2)

    def forward(self, x):
        x = self.stem(x)
        y = self.l2(F.gelu(self.l1(self.norm(self.dw(x).permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
        return self.fc((x + y).mean((2, 3)))


class _SequenceNorm(nn.Module):
    """A LayerNorm over the positions of a Conv1d's [N, C, L] output: each channel alone."""

    def __init__(self):
        super().__init__()
        self.a, self.norm, self.b = nn.Conv1d(2, 3, 1), nn.LayerNorm(5), nn.Conv1d(3, 2, 1)

    def forward(self, x):
        return self.b(self.norm(self.a(x))).mean(-1)


def test_layer_norm_channels_are_found_on_the_axis_the_units_lie_on():
    """The LayerNorm's channel axis was guessed from the rank alone: axis 1 of a 4-D map, so a
    ConvNeXt block's LayerNorm over the channels of its channels-last map counted as per-channel (no
    statistics junction), and a depthwise unit that still moves every channel's statistics was called
    dead once its own l1 column was pruned; the last axis of a 3-D tensor, so a LayerNorm over the
    positions of a Conv1d's output joined every channel into every position."""
    torch.manual_seed(0)
    m = _ChannelsLastBlock().eval()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["l1.weight"][:, 0] = False  # dw:0 reaches l1 only through the LayerNorm's statistics
    conn.set_masks(masks)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        y0 = m(x)
        m.dw.bias[0] += 1
        moved = (m(x) - y0).abs().max()
        m.dw.bias[0] -= 1
    assert moved > 1e-3  # dw:0 is alive: it moves the output
    g = graphs.build(conn, "unit", example_input=x)
    names = g.node_names()
    into_l1 = {names[s] for s, d in zip(g.src.tolist(), g.dst.tolist()) if names[d].startswith("l1:")}
    assert into_l1 and all(n.startswith("norm:") for n in into_l1)  # junctions of a channel and the statistics
    assert graphs.summary(g)["dead"]["dead"] == 0

    g = graphs.build(model=_SequenceNorm(), level="unit", example_input=torch.randn(2, 2, 5))
    assert edge_set(g) >= {(f"a:{i}", f"b:{j}", EDGE_SYNAPSE) for i in range(3) for j in range(2)}
    assert not any(gr.kind == "junction" for gr in g.groups)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_the_guessed_input_has_the_dtype_of_the_model(dtype):
    """The input guessed when no example_input is given was float32 whatever the model's dtype, so a
    float64 or bfloat16 model could not be built into a graph (or compacted) without one: "could not
    guess an input ... pass example_input" (compact: a dtype mismatch from deep inside the model)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 1)).to(dtype)
    conn = adaptive.Connectome(m)
    conn.set_masks({k: torch.rand(v.shape) < 0.5 for k, v in conn.masks.items()})
    g = graphs.build(conn, "synapse")
    assert g.live_synapses() == conn.num_live() > 0
    assert graphs.compact(m, conn).compaction["params_after"] <= sum(p.numel() for p in m.parameters())


class _RecurrentFirst(nn.Module):
    def __init__(self, batch_first):
        super().__init__()
        self.rnn, self.head = nn.GRU(6, 8, batch_first=batch_first), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


@pytest.mark.parametrize("batch_first", [True, False])
def test_the_guessed_input_of_a_recurrent_first_layer_is_a_sequence_of_its_input_size(batch_first):
    """The guess read the first Linear or Conv (here the head, 8 features), so a model that starts with an RNN,
    LSTM or GRU (README's Tagger) could not be built into a graph or compacted without an example_input."""
    conn = adaptive.Connectome(_RecurrentFirst(batch_first))
    (x,) = default_example_input(conn.model)
    assert x.shape == ((1, 16, 6) if batch_first else (16, 1, 6))
    g = graphs.build(conn)
    assert g.live_synapses() == conn.num_live()
    graphs.compact(conn.model, conn)


class _HeadRegisteredFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 5)  # registered before the stem, called after it
        self.stem = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.head(self.stem(x).mean((2, 3)))


class _TokensCalledFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.head, self.rnn, self.emb = nn.Linear(6, 30), nn.GRU(6, 6, batch_first=True), nn.Embedding(30, 6)

    def forward(self, idx):
        return self.head(self.rnn(self.emb(idx))[0])


class _WeightReadFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.head, self.rnn = nn.Linear(6, 2), nn.LSTM(4, 6)

    def forward(self, x):  # the LSTM's weight read through F.linear: no call of the module, used first all the same
        return self.head(self.rnn(F.linear(x, self.rnn.weight_ih_l0[:4]))[0])


def test_the_input_is_guessed_from_the_first_layer_the_forward_calls():
    """The guess read the first layer in registration order: a model that registers its head before its
    stem was guessed the head's input (floats [1, 8] for a Conv2d stem: "could not guess an input"), a
    language model whose Linear head comes before its embedding got floats tried first. The guess
    follows the fx trace's order (a layer whose weight the forward reads counts as used there)."""
    (x, *_), conn = default_example_input(_HeadRegisteredFirst()), adaptive.Connectome(_HeadRegisteredFirst())
    assert x.shape == (1, 3, 32, 32)
    assert graphs.build(conn).live_synapses() == conn.num_live()
    assert graphs.compact(conn.model, conn).compaction["max_abs_diff"] == 0.0
    assert [(tuple(x.shape), x.dtype) for x in default_example_input(_TokensCalledFirst())] == [
        ((1, 16), torch.long), ((1, 16, 6), torch.float32)]  # tokens first; floats for the GRU, not the head
    (x,) = default_example_input(_WeightReadFirst(), tokens=False)
    assert x.shape == (16, 1, 4)


class _HeadDtypeReadFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)

    def forward(self, x):  # the head's dtype, device and size read before the stem runs: no use of the head
        x = x.to(self.head.weight.dtype).to(device=self.head.weight.device)
        return self.head(self.stem(x).mean((2, 3)))[:, : self.head.weight.shape[0]]


def test_a_read_of_a_weights_dtype_device_or_shape_is_no_use_of_its_layer():
    """Any read of a layer's weight counted as its first use, so that ``x.to(self.head.weight.dtype)`` at
    the top of a forward made the head the first layer: the stem (registered first, and called first)
    was guessed the head's input [1, 8], and build said it could not guess an input."""
    assert default_example_input(_HeadDtypeReadFirst())[0].shape == (1, 3, 32, 32)
    assert [(gr.name, gr.count) for gr in graphs.build(model=_HeadDtypeReadFirst()).groups if gr.kind == "input"] == [
        ("x", 3)]


class _Wide(nn.Module):
    compiled = []  # of the class: graphs puts back what a forward appends to the model's own lists

    def __init__(self):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 2, 3, padding=1), nn.Linear(2 * 28 * 28, 3)

    def forward(self, x):  # 28 x 28 images only: the 32 x 32 and 224 x 224 guesses fail
        self.compiled.append(torch.compiler.is_compiling())
        return self.head(self.stem(x).flatten(1))


def test_the_input_of_a_torch_compile_wrapper_is_guessed_for_the_module_it_runs():
    """default_example_input(torch.compile(m)) could not trace the wrapper, so it guessed the input of the
    first layer registered (a head's [1, 8]), and took the wrapper's (*args, **kwargs) for one input (a
    keyword-only mask went unnamed); runnable_example_input ran the compiled forward on each guess,
    compiling it for each (seconds). Both read and run the module the wrapper holds, as build does."""
    from graphs.trace import InputGuessError, runnable_example_input

    assert default_example_input(torch.compile(_HeadRegisteredFirst()))[0].shape == (1, 3, 32, 32)
    with pytest.raises(InputGuessError, match=r"takes 2 inputs \(x, mask\)"):
        default_example_input(torch.compile(_KeywordOnly()))
    assert runnable_example_input(torch.compile(_Wide())).shape == (1, 3, 28, 28)
    assert _Wide.compiled and not any(_Wide.compiled)


class _KeywordOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, *, mask):
        return self.fc(x) * mask


class _PaddedMean(nn.Module):
    def __init__(self, reduce):
        super().__init__()
        self.a, self.fc, self.reduce = nn.Conv2d(2, 3, 1), nn.Linear(3, 2), reduce

    def forward(self, x):
        y = F.pad(self.a(x), (1, 1, 1, 1))
        return self.fc(y.mean((2, 3)) if self.reduce == "mean" else torch.amax(y, dim=(2, 3)))


@pytest.mark.parametrize("reduce", ["mean", "amax"])
def test_a_reduction_over_a_zero_padded_map_keeps_each_channel_apart(reduce):
    """Averaging (or max-pooling) a zero-padded map over its positions met the padding's constant
    beside each channel's unit and took the result as mixing every channel: fc read one junction of
    all of a's units (adaptive_avg_pool2d of the same map read each unit apart), so a unit whose fc
    column was pruned still counted as reaching the output."""
    torch.manual_seed(0)
    m = _PaddedMean(reduce).eval()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["fc.weight"][:, 0] = False
    conn.set_masks(masks)
    x = torch.randn(2, 2, 4, 4)
    g = graphs.build(conn, "unit", example_input=x)
    assert edge_set(g) == full("x", "a", 2, 3) | full("a", "fc", 3, 2) - full("a", "fc", 1, 2) | wires(
        "fc", "output", [(0, 0), (1, 1)])
    dead = graphs.dead_units(g)["dead"]
    assert [g.node_names()[i] for i in dead.nonzero().flatten().tolist()] == ["a:0"]
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"]["a"] == 1


@pytest.mark.parametrize("make, x", [
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)), torch.randn(3, 8, 8)),
    (lambda: nn.Sequential(nn.Conv1d(3, 4, 3)), torch.randn(3, 8)),
    (lambda: nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), torch.randn(4)),
])
def test_an_example_input_without_its_batch_dimension_is_refused(make, x):
    """One sample without the batch (an image [C, H, W], which torch's convolutions take) was traced
    with its first axis as the batch: every Conv read the wrong axis, and that error (like the
    placeholder's own 'needs a batch dimension') was taken for an op the tracer does not know, so
    build returned a graph with no live synapse of the connectome's, warning to register Conv2d (or
    the input) as "pointwise". It is refused, naming the fix."""
    m = make()
    conn = adaptive.Connectome(m)
    with pytest.raises(ValueError, match=r"batch dimension first.*unsqueeze\(0\)") as e:
        graphs.build(conn, example_input=x)
    assert "While executing" not in str(e.value)
    assert graphs.build(conn, example_input=x.unsqueeze(0)).live_synapses() == conn.num_live()


class _InPlaceAdd(nn.Module):
    def __init__(self, view):
        super().__init__()
        self.a, self.b, self.fc, self.view = nn.Conv2d(2, 4, 1), nn.Conv2d(2, 2, 1), nn.Linear(4, 2), view

    def forward(self, x):
        y, z = self.a(x), self.b(x)
        if self.view:
            y[:, :2].add_(z)
        else:
            y.add_(torch.cat([z, z], 1))  # fx hands fc's mean y, not add_'s result
        return self.fc(y.mean((2, 3)))


def test_an_in_place_addition_reaches_the_nodes_that_read_its_tensor_after_it():
    """fx gives the nodes after ``y.add_(z)`` the node ``y``, not the method's (unused) result, so the
    graph had fc read a's units alone: b, whose output the model adds in, had no edge out and counted
    as dead, without a warning. They now read the sum; an in-place change of a view of a tensor read
    again later, which the graph cannot follow, is warned and counted as an unknown op."""
    x = torch.randn(1, 2, 3, 3)
    g = graphs.build(model=_InPlaceAdd(False), level="unit", example_input=x)
    names = g.node_names()
    into_fc = {names[s] for s, d in zip(g.src.tolist(), g.dst.tolist()) if names[d].startswith("fc:")}
    assert into_fc == {f"add_:{i}" for i in range(4)}
    assert edge_set(g) >= wires("b", "add_", [(0, 0), (1, 1), (0, 2), (1, 3)]) | wires("a", "add_", [(i, i) for i in range(4)])
    assert graphs.summary(g)["dead"]["dead"] == 0 and not g.warnings

    with pytest.warns(UserWarning, match="changes 'getitem' in place, a view of 'a'.*out of place"):
        tr = graphs.trace(_InPlaceAdd(True), x)
    assert [what for _, what in tr.unknown] == ["'add_' (call_method add_)"]


class _WithOptions(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Linear(4, 2)

    def forward(self, x, mask=None, return_features=False):
        h = self.a(x)
        h = h + self.b(h)
        if mask is not None:
            h = h * mask
        f = h.mean((2, 3))
        return f if return_features else self.fc(f)


def test_forward_options_left_at_their_defaults_are_traced_at_them():
    """fx traced ``mask=None`` and ``return_features=False`` as proxies: the ``if`` on the flag stopped
    it (module-order fallback, the residual junctions missing, with a warning) and, without the
    flag, the ``mask is not None`` branch was traced as taken, so the run failed ("ShapeProp error").
    Options the example input does not give are traced at their defaults, as the model runs."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 4)
    conn = adaptive.Connectome(_WithOptions())
    for example in (x, None):
        g = graphs.build(conn, "unit", example_input=example)
        assert g.meta["traced"] and not g.warnings
        assert edge_set(g) >= wires("b", "add", [(i, i) for i in range(4)]) | full("add", "fc", 4, 2)
    g = graphs.build(conn, "unit", example_input=(x, torch.ones(1, 4, 1, 1)))  # a mask given: traced through it
    assert g.meta["traced"] and [gr.name for gr in g.groups if gr.kind == "input"] == ["x", "mask"]


@pytest.mark.skipif(not hasattr(nn, "RMSNorm"), reason="torch without nn.RMSNorm")
@pytest.mark.parametrize("functional", [False, True])
def test_rms_norm_is_a_normalisation_like_layer_norm(functional):
    """nn.RMSNorm (F.rms_norm), torch's own normalisation, was an unknown op: every channel merged into
    one junction, with a warning that suggested registering it as "pointwise" (which would drop the
    statistics it reads). It is now followed as LayerNorm is: each channel with the statistics."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.norm, self.b = nn.Linear(3, 4), nn.RMSNorm(4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(F.rms_norm(h, (4,)) if functional else self.norm(h))

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(model=Net(), level="unit", example_input=torch.randn(2, 3))
    norm = "rms_norm" if functional else "norm"
    assert edge_set(g) == (full("x", "a", 3, 4) | wires("a", norm, [(i, i) for i in range(4)])
                           | wires("a", f"{norm}.statistics", [(i, 0) for i in range(4)])
                           | wires(f"{norm}.statistics", norm, [(0, i) for i in range(4)])
                           | full(norm, "b", 4, 2) | wires("b", "output", [(0, 0), (1, 1)]))


class _InPlaceChain(nn.Module):
    """``y.add_(b).mul_(c)``: fx hands mul_ the add_ node and the Linear after it the node ``y``."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.out = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, x):
        y = self.a(x)
        y.add_(self.b(x)).mul_(self.c(x))
        return self.out(y)


def test_a_chain_of_in_place_methods_reaches_the_nodes_that_read_its_tensor():
    """The second method of ``y.add_(b).mul_(c)`` changed the ids of the add_ node alone: out read the
    sum without c's product, so c, whose output scales out's input, had no edge out and counted as dead,
    without a warning."""
    g = graphs.build(model=_InPlaceChain(), level="unit", example_input=torch.randn(2, 4))
    names = g.node_names()
    into_out = {names[s] for s, d in zip(g.src.tolist(), g.dst.tolist()) if names[d].startswith("out:")}
    assert into_out == {f"mul_:{i}" for i in range(3)}
    assert graphs.summary(g)["dead"]["dead"] == 0 and not g.warnings


class _InPlaceAlias(nn.Module):
    def __init__(self, case):
        super().__init__()
        self.a, self.b, self.case = nn.Linear(4, 6), nn.Linear(4, 6), case
        self.out = nn.Linear(6 if case == "view of a view" else 2, 2)

    def forward(self, x):
        y = self.a(x)
        if self.case == "view of a view":  # the view's own base is no longer held: y still is
            w = y.view(y.shape[0], 2, 3)[:, 0]
            w[:, :2].add_(self.b(x)[:, :2])
            return self.out(y)
        v = y[:, :2]  # a view of y, read after y changes
        y.add_(self.b(x))
        return self.out(v)


@pytest.mark.parametrize("case", ["view of a view", "tensor with a view read later"])
def test_an_in_place_change_the_ids_cannot_follow_is_warned_however_the_views_are_taken(case):
    """Only the chain of shape ops from the changed view up to a node still in the interpreter's
    environment was searched: a view of a view whose middle was freed, or a tensor changed in place
    while a view of it is read later, gave a graph in which b counted as dead, with no warning."""
    with pytest.warns(UserWarning, match="in place.*read again after it"):
        tr = graphs.trace(_InPlaceAlias(case), torch.randn(2, 4))
    assert [what for _, what in tr.unknown] == ["'add_' (call_method add_)"]


class _FrozenScaleFirst(nn.Module):
    """A float32 network whose first parameter is a frozen float64 constant (a calibration scale)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, dtype=torch.float64), requires_grad=False)
        self.fc, self.out = nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.out(self.fc(x) * self.scale.float())


def test_the_guessed_input_has_the_dtype_of_the_first_layer_not_of_the_first_parameter():
    """The guessed input took the dtype of the model's first floating-point parameter: a frozen
    float64 scale registered before a float32 Linear made it float64, so a model traced without an
    example_input before could no longer be ("could not guess an input"), nor compacted."""
    m = _FrozenScaleFirst()
    conn = adaptive.Connectome(m)
    g = graphs.build(conn, "unit")
    assert g.meta["traced"] and g.live_synapses() == conn.num_live()
    assert graphs.compact(m, conn).compaction["units_removed"] == 0


class _TupleOption(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Linear(4, 2)

    def forward(self, x, dims=(2, 3), sizes=[1], extra={"scale": 1.0}, enable=True):
        h = self.a(x)
        h = h + self.b(h)
        return self.fc(h.mean(dims)) if enable else h


def test_forward_options_fx_cannot_specialise_on_stay_as_before():
    """fx flattens a tuple, list or dict given in concrete_args into placeholders it cannot write out
    (a SyntaxError): a forward with a ``dims=(2, 3)`` default, traced before, fell back to module
    order (the residual junctions missing) once every default was handed to fx. Such defaults stay
    proxies, as before; a bool or None still is traced at its value."""
    import warnings

    x = torch.randn(1, 3, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(model=_TupleOption(), level="unit", example_input=x)
    assert g.meta["traced"] and not g.warnings
    assert edge_set(g) >= wires("b", "add", [(i, i) for i in range(4)]) | full("add", "fc", 4, 2)


class _TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.branches = nn.ModuleDict({"a": nn.Sequential(nn.Linear(8, 16), nn.ReLU()), "b": nn.Linear(8, 4)})
        self.out = nn.Linear(20, 2)

    def forward(self, x):
        return self.out(torch.cat([self.branches["a"](x), self.branches["b"](x)], -1))


def test_an_input_the_model_cannot_run_is_refused_with_the_models_own_error():
    """torch's ShapeProp re-raises an op's error as 'ShapeProp error for: node=... with meta={...}': the
    message kept the first 200 characters of that metadata dump, so neither a wrong dtype nor a wrong
    size was ever named. It names the op's own error and the node where it failed."""
    conn = adaptive.Connectome(_TwoBranches())
    with pytest.raises(RuntimeError, match=r"must have the same dtype.*at node 'branches_a_0'"):
        graphs.build(conn, "unit", example_input=torch.randn(1, 8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"\(1x7 and 8x16\).*at node 'branches_a_0'") as err:
        graphs.build(conn, "unit", example_input=torch.randn(1, 7))
    assert "ShapeProp" not in str(err.value) and "meta=" not in str(err.value)


class _Renorming(nn.Module):
    """An embedding that renormalises its rows in place on every forward (max_norm, in eval mode too), a
    BatchNorm (left in train mode) and a buffer its forward counts in."""

    def __init__(self):
        super().__init__()
        self.tok, self.bn, self.fc = nn.Embedding(11, 4, max_norm=1.0), nn.BatchNorm1d(4), nn.Linear(4, 3)
        self.register_buffer("calls", torch.zeros(()))
        with torch.no_grad():
            self.tok.weight.mul_(5.0)  # rows far above max_norm

    def forward(self, idx):
        self.calls.add_(1)
        return self.fc(self.bn(self.tok(idx).mean(1)))


def test_guessing_and_tracing_leave_the_model_bit_identical():
    """The input guesses and the trace run the user's model: nn.Embedding(max_norm=1.0) renormalised the
    rows it looked up in place (eval mode and no_grad do not stop it), and a counting buffer counted.
    graphs.build and graphs.compact leave every parameter and buffer bit for bit as it was, and the
    modules in the mode they were in (BatchNorm's running statistics untouched in train mode)."""
    import warnings

    torch.manual_seed(0)
    m = _Renorming().train()
    with torch.no_grad():
        m.bn.running_mean.uniform_()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no parameter left changed
        assert graphs.build(model=m).meta["traced"]  # guesses token indices and traces on them
        graphs.compact(m)  # runs the guesses on the model, then compacts a copy
    assert m.training and m.bn.training
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert int(m.bn.num_batches_tracked) == 0 and m.tok.weight.norm(dim=1).min() > 1.0


def test_a_parameter_a_forward_changes_in_place_is_named_in_a_warning():
    """Only buffers and max_norm lookup weights are copied before the trace runs the model: any other
    parameter its forward changes in place stays changed, and the warning names it."""

    class Decaying(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            self.fc.weight.mul_(0.5)
            return self.fc(x)

    with pytest.warns(UserWarning, match=r"changed parameter\(s\) \['fc.weight'\] in place"):
        graphs.build(model=Decaying(), example_input=torch.randn(1, 3))
    import warnings

    with warnings.catch_warnings():  # a lazy module's first forward shapes its tensors: nothing to copy or warn of
        warnings.simplefilter("error")
        graphs.build(model=nn.Sequential(nn.Linear(3, 4), nn.LazyBatchNorm1d(), nn.Linear(4, 2)))


class _Rotary(nn.Module):
    """A cache that grows to the longest sequence seen, with its length in a plain attribute (the rotary
    embedding of transformers before 4.38), read by a model of tokens (two tables: two guesses)."""

    def __init__(self):
        super().__init__()
        self.tok, self.pos, self.fc = nn.Embedding(50, 4), nn.Embedding(12, 4), nn.Linear(4, 3)
        self._grow(4)

    def _grow(self, n):
        self.cached = n
        self.register_buffer("cache", torch.arange(n, dtype=torch.float)[:, None], persistent=False)

    def forward(self, idx):
        if idx.shape[1] > self.cached:
            self._grow(idx.shape[1])
        return self.fc(self.tok(idx) * self.cache[: idx.shape[1]])


def test_an_attribute_a_forward_reassigns_is_put_back_with_the_buffers():
    """A guess grew the cache and its length (16 tokens); the buffer was put back (4 rows) and the length
    not, so the model's next forward on 10 tokens sliced a 4-row cache and failed. Both are put back;
    a parameter made under torch.inference_mode() (no version count) does not break the trace."""
    from graphs.trace import runnable_example_input

    m = _Rotary()
    assert tuple(runnable_example_input(m).shape) == (1, 16)
    assert m.cached == 4 and m.cache.shape == (4, 1)
    assert m(torch.randint(0, 50, (2, 10))).shape == (2, 10, 3)
    with torch.inference_mode():
        frozen = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    assert graphs.build(model=frozen, example_input=torch.randn(2, 4)).live_synapses() == 56


class _KeepsFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.head, self.stem = nn.Linear(8, 5), nn.Linear(4, 8)
        self.feats, self.seen = [], {}

    def forward(self, x):
        h = self.stem(x)
        self.feats.append(h)
        self.seen["stem"] = h
        return self.head(h)


def test_a_list_or_dict_a_forward_fills_is_emptied_after_the_guess_and_the_trace():
    """The symbolic trace that orders the layers for the input guess (and build's own trace and run) left
    what the forward stores in ``self.feats`` and ``self.seen`` on the model: a Proxy after
    default_example_input, a Proxy and a tensor after build. Their items are put back."""
    m = _KeepsFeatures()
    assert default_example_input(m)[0].shape == (1, 4)
    assert m.feats == [] and m.seen == {}
    graphs.build(model=m)
    assert m.feats == [] and m.seen == {}
    m(torch.randn(2, 4))
    assert [tuple(h.shape) for h in m.feats] == [(2, 8)] and list(m.seen) == ["stem"]


def test_a_max_norm_lookup_has_only_its_rows_above_max_norm_copied():
    """The whole table of a max_norm lookup was copied around the trace (a second table's worth of
    memory); the forward only rescales the rows it reads above max_norm, and only those are copied."""
    from graphs.trace import _unchanged

    m = _Renorming()
    with torch.no_grad():
        m.tok.weight[:8].div_(100.0)  # 8 rows well below max_norm, 3 above
    before = m.tok.weight.detach().clone()
    kept = _unchanged(m)
    with kept:
        m(torch.arange(11)[None])
    assert kept.renormed[id(m.tok.weight)][1].tolist() == [8, 9, 10]
    assert torch.equal(m.tok.weight, before)


def test_unary_maths_of_a_sinusoidal_timestep_embedding_is_followed_per_element():
    """sin, cos, log and kin (functions and methods, in place too) were unknown ops: a sinusoidal timestep
    embedding warned and wired every unit before it to every unit after. Each acts on each element."""
    import math
    import warnings

    class Diffusion(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.temb = nn.Conv2d(2, 3, 3, padding=1), nn.Linear(4, 3)
            self.register_buffer("freqs", torch.exp(-math.log(1e4) * torch.arange(2) / 2))

        def forward(self, x, t):
            f = self.conv(x).mean((2, 3))[:, :2] * self.freqs  # x's channels 0, 1 through the embedding
            e = self.temb(torch.cat([f.sin(), torch.cos(f).log1p().exp_()], 1)) + t[:, None].log().sign()
            return torch.rsqrt(e.abs() + 1)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(model=Diffusion(), level="unit", example_input=(torch.randn(2, 2, 5, 5), torch.rand(2)))
    assert {e for e in edge_set(g) if e[1].startswith("temb:")} == {
        (f"conv:{i}", f"temb:{j}", EDGE_SYNAPSE) for i in range(2) for j in range(3)}


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fx, self.fy = nn.Linear(3, 4), nn.Linear(2, 4)
        self.head = nn.Linear(8, 2)

    def forward(self, x, y):
        return self.head(torch.cat([torch.relu(self.fx(x)), self.fy(y)], 1))


class _OneListInput(_TwoInputs):
    def forward(self, xy):  # the inputs as one argument, as the diagnostics and mask-only pass a batch's
        x, y = xy
        return super().forward(x, y)


def test_inputs_given_as_one_tuple_or_list_argument_are_input_nodes():
    """The tensors of a tuple or list passed as one argument were taken for constants: the graph had
    no input node and every unit read as dead, with no warning."""
    torch.manual_seed(0)
    two = adaptive.Connectome(_TwoInputs())
    ref = graphs.build(two, example_input=(torch.randn(2, 3), torch.randn(2, 2)))
    one = _OneListInput()
    one.load_state_dict(two.model.state_dict())
    for pack in (list, tuple):
        g = graphs.build(adaptive.Connectome(one), example_input=(pack([torch.randn(2, 3), torch.randn(2, 2)]),))
        assert graphs.summary(g)["inputs"] == 5 and graphs.summary(g)["dead"]["dead"] == 0
        named = {(s.replace("xy[0]", "x").replace("xy[1]", "y"), d, k) for s, d, k in edge_set(g)}
        assert named == edge_set(ref)
        assert [gr.name for gr in g.groups if gr.kind == "input"] == ["xy[0]", "xy[1]"]


def test_an_input_dict_inside_the_argument_is_refused():
    class DictIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, xs):
            return self.fc(xs[0]["a"])

    with pytest.raises(ValueError, match="dict of tensors; graphs follows tensors only"):
        graphs.build(adaptive.Connectome(DictIn()), example_input=([{"a": torch.randn(2, 3)}],))


def test_a_namedtuple_argument_and_a_scalar_beside_the_tensors_are_followed():
    """A namedtuple given as one input failed in the input's placeholder (its constructor takes its
    fields, not an iterable: 'cannot follow the data flow', every unit dead), and a 0-d tensor beside
    the tensors of one argument ((x, temperature)) was refused as an input without a batch dimension."""
    import collections
    import warnings

    Pair = collections.namedtuple("Pair", "x y")

    class Named(_TwoInputs):
        def forward(self, p):
            return super().forward(p.x, p[1])

    class Scaled(_TwoInputs):
        def forward(self, inp):
            (x, y), scale = inp
            return super().forward(x, y) * scale

    torch.manual_seed(0)
    two = adaptive.Connectome(_TwoInputs())
    ref = edge_set(graphs.build(two, example_input=(torch.randn(2, 3), torch.randn(2, 2))))
    cases = [(Named(), "p", Pair(torch.randn(2, 3), torch.randn(2, 2))),
             (Scaled(), "inp[0]", ((torch.randn(2, 3), torch.randn(2, 2)), torch.tensor(2.0)))]
    for model, prefix, ex in cases:
        model.load_state_dict(two.model.state_dict())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            g = graphs.build(adaptive.Connectome(model), example_input=(ex,))
        assert graphs.summary(g)["dead"]["dead"] == 0
        named = {(s.replace(f"{prefix}[0]", "x").replace(f"{prefix}[1]", "y"), d, k) for s, d, k in edge_set(g)}
        synapses = {e for e in named if e[2] == EDGE_SYNAPSE}
        assert synapses == {e for e in ref if e[2] == EDGE_SYNAPSE}
        if prefix == "p":
            assert named == ref
        else:  # the scalar is an input of one node, which scales each output unit
            assert {e for e in named if e[0] == "inp[1]:0"} == {("inp[1]:0", "mul:0", EDGE_WIRE),
                                                                ("inp[1]:0", "mul:1", EDGE_WIRE)}


class _Filled(nn.Module):
    """A residual add of a filled tensor sized from ``h``'s shape (``how``: the factory call)."""

    def __init__(self, how):
        super().__init__()
        self.a, self.b, self.how = nn.Linear(3, 4), nn.Linear(4, 2), how

    def forward(self, x):
        h = self.a(x)
        b, c = h.shape[0], h.shape[1]
        z = {"shape": lambda: torch.zeros(h.shape), "zeros": lambda: torch.zeros(b, c),
             "ones": lambda: torch.ones(h.size(0), h.size(1), dtype=h.dtype), "empty": lambda: torch.empty(b, 4),
             "full": lambda: torch.full((b, c), 2.0), "new_zeros": lambda: h.new_zeros(b, c),
             "randn": lambda: torch.randn(b, c),
             # bound by name when this module was imported, before graphs patched torch.zeros & co.
             "imported zeros": lambda: zeros(b, c), "imported ones": lambda: ones(h.size(0), h.size(1), dtype=h.dtype),
             "imported randn": lambda: randn(b, c)}[self.how]()
        return self.b(F.relu(h + z) + h)


@pytest.mark.parametrize("how", ["zeros", "ones", "empty", "full", "new_zeros", "randn", "imported zeros",
                                 "imported ones", "imported randn"])
def test_a_factory_given_separate_traced_sizes_is_traced(how):
    """``torch.zeros(h.shape[0], h.shape[1])``: torch's parser takes separate sizes only as ints, and fx failed
    on the traced ones ("zeros() takes 1 positional argument but 2 were given": module order, the residual
    junction missing), where ``torch.zeros(h.shape)`` traced. The graph is now the one of the latter; so is that
    of ``zeros(b, c)`` after ``from torch import zeros``, which the patching of ``torch.zeros`` does not reach."""
    x = torch.randn(2, 3)
    want = graphs.build(model=_Filled("shape"), level="unit", example_input=x)
    g = graphs.build(model=_Filled(how), level="unit", example_input=x)
    assert g.meta["traced"] and not g.warnings
    assert edge_set(g) == edge_set(want)
    assert torch.zeros(2, 3).shape == (2, 3) and torch.zeros is torch._C._VariableFunctions.zeros  # put back
    assert zeros is torch._C._VariableFunctions.zeros and ones is torch._C._VariableFunctions.ones


def test_a_factory_imported_by_name_compacts_and_the_copy_loads_back(tmp_path):
    """``zeros(h.shape[0], h.shape[1])`` (``from torch import zeros``): compact failed ("compact needs an
    fx-traceable model"). The copy makes it with the kept channel count, and is written as
    ``torch.zeros((b, c))``, which torch.load traces again with fx alone (not ``zeros(b, c)``, which it could
    not, nor fx's ``wrap("torch.zeros")``, after which every later fx trace failed)."""
    torch.manual_seed(0)
    model = _Filled("imported zeros").eval()
    conn = adaptive.Connectome(model)
    masks = {n: torch.ones_like(v) for n, v in conn.masks.items()}
    masks["b.weight"][:, 1] = False  # unit a:1 has no live output
    conn.set_masks(masks)
    small = graphs.compact(model, conn, torch.randn(5, 3))
    assert small.compaction["removed"] == {"a": 1, "b": 0}
    torch.save(small, tmp_path / "small.pt")
    back = torch.load(tmp_path / "small.pt", weights_only=False)
    x = torch.randn(7, 3)
    with torch.no_grad():
        conn.apply()
        assert torch.allclose(back(x), model(x), atol=1e-6)
    assert graphs.build(model=_Filled("imported ones"), example_input=x).meta["traced"]  # fx still traces after it


class _Optional(nn.Module):
    def __init__(self, keyword_default=True):
        super().__init__()
        self.a, self.b, self.keyword_default = nn.Linear(3, 4), nn.Linear(4, 2), keyword_default

    def run(self, x, y, mask):
        h = self.a(x)
        if y is not None:
            h = h + y
        if mask is not None:
            h = h * mask
        return self.b(h)


class _OptionalKeyword(_Optional):
    def forward(self, x, y=None, *, mask=None):
        return self.run(x, y, mask)


class _RequiredKeyword(_Optional):
    def forward(self, x, y=None, *, mask):
        return self.run(x, y, mask)


class _OneInput(_Optional):
    """What _RequiredKeyword computes, written with its inputs as the forward's positional arguments."""

    def forward(self, x, mask):
        return self.run(x, None, mask)


def test_an_optional_input_before_a_keyword_only_one_is_traced_at_its_default():
    """``forward(self, x, y=None, *, mask)``: fx wrote the graph as ``def forward(self, x, y = None, mask)``, a
    SyntaxError (module order, with a warning); and a keyword-only input given in example_input, ``(x, y,
    mask)`` for ``mask=None``, was traced as None (its default) and the run failed on the assert fx puts there.
    The inputs bind to the parameters in order, keyword-only ones last; None leaves an optional one at its
    default. The graph is the one of the same model with the inputs as plain arguments."""
    x, y, m = torch.randn(2, 3), torch.randn(2, 4), torch.ones(2, 4)
    torch.manual_seed(0)
    want = graphs.build(model=_OneInput(), level="unit", example_input=(x, m))
    for model, example in ((_RequiredKeyword(), (x, None, m)), (_OptionalKeyword(), (x, None, m))):
        g = graphs.build(model=model, level="unit", example_input=example)
        assert g.meta["traced"] and not g.warnings
        assert edge_set(g) == edge_set(want) and [gr.name for gr in g.groups if gr.kind == "input"] == ["x", "mask"]
    g = graphs.build(model=_OptionalKeyword(), level="unit", example_input=(x, y, m))
    assert g.meta["traced"] and [gr.name for gr in g.groups if gr.kind == "input"] == ["x", "y", "mask"]
    assert edge_set(g) >= wires("y", "add", [(i, i) for i in range(4)]) | wires("mask", "mul", [(i, i) for i in range(4)])
    assert edge_set(graphs.build(model=_OptionalKeyword(), level="unit", example_input=x)) == edge_set(
        graphs.build(model=_OneInput(), level="unit", example_input=(x, None)))


def test_an_example_input_leaving_out_a_required_keyword_only_input_is_refused_naming_the_order():
    """``(x, mask)`` for ``forward(self, x, y=None, *, mask)`` binds ``y=mask``: the run said only "Expected
    positional argument for parameter mask"; the guess asked for ``(x, mask)``, which is that very tuple."""
    x, m = torch.randn(2, 3), torch.ones(2, 4)
    with pytest.raises(TypeError, match=r"^example_input gives 2 input\(s\) and _RequiredKeyword\.forward also needs "
                                        r"mask: .* pass example_input=\(x, y or None, mask\), None for an optional"):
        graphs.trace(_RequiredKeyword(), (x, m))
    with pytest.raises(ValueError, match=r"pass example_input=\(x, y or None, mask\), a tensor each"):
        graphs.trace(_RequiredKeyword())


def test_compact_traces_an_optional_input_given_as_none_at_its_default():
    """graphs.compact traced ``y`` given as None in ``(x, None, mask)`` as an input (a proxy): the ``if y is
    not None`` branch was taken and the run failed ("unsupported operand type(s) for +: 'Tensor' and
    'NoneType'"). build's binding is compact's: None leaves it at its default."""
    x, m = torch.randn(2, 3), torch.ones(2, 4)
    for model in (_OptionalKeyword(), _RequiredKeyword()):
        small = graphs.compact(model, example_input=(x, None, m))
        assert torch.allclose(small(x, None, mask=m), model(x, None, mask=m), atol=1e-6)


def _saved_and_copied(small, tmp_path):
    """``small``, itself read back by torch.load (which traces its code again) and deep-copied."""
    torch.save(small, tmp_path / "small.pt")
    return small, torch.load(tmp_path / "small.pt", weights_only=False), copy.deepcopy(small)


def test_a_compact_copy_keeps_a_keyword_only_input_after_a_defaulted_one(tmp_path):
    """``forward(self, x, y=None, *, mask)``: fx writes every input as a positional parameter, and the copy's
    forward was ``forward(self, x, y, mask)``: ``small(x, mask=m)`` failed (y missing), a call the model takes.
    The copy keeps the model's signature, read back by torch.load and deep-copied too. And loading a copy
    traced with y as None (fx checks y is None) broke every later fx trace in the process (KeyError:
    'torch.fx._symbolic_trace._assert_is_none')."""
    x, y, m = torch.randn(2, 3), torch.randn(2, 4), torch.ones(2, 4)
    torch.manual_seed(0)
    model = _RequiredKeyword().eval()
    for example in ((x, None, m), (x, y, m)):
        for small in _saved_and_copied(graphs.compact(model, example_input=example), tmp_path):
            assert str(inspect.signature(small.forward)) == "(x, y=None, *, mask)"
            if example[1] is None:  # y traced at its default: left out or None, another value refused by name
                assert torch.allclose(small(x, mask=m), model(x, mask=m), atol=1e-6)
                assert torch.allclose(small(x, None, mask=m), model(x, None, mask=m), atol=1e-6)
                with pytest.raises(AssertionError, match="y has been specialized to have value None"):
                    small(x, y, mask=m)
            else:  # y traced as an input
                assert torch.allclose(small(x, y, mask=m), model(x, y, mask=m), atol=1e-6)
            with pytest.raises(TypeError, match="positional argument"):
                small(x, y, m)  # mask keyword-only, as the model's
    assert graphs.build(model=model, level="unit", example_input=(x, None, m)).meta["traced"]  # fx still traces


class _ImageIn(nn.Module):
    """A conv net taking its image channels first, or channels last and moving them to axis 1 itself (by a
    permute after a pointwise op, or a movedim), or channels last and reshaped (its axes lost on the way)."""

    def __init__(self, layout):
        super().__init__()
        torch.manual_seed(0)
        self.layout, self.conv, self.fc = layout, nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        if self.layout == "permute":
            x = (x - 0.5).permute(0, 3, 1, 2)
        elif self.layout == "movedim":
            x = torch.movedim(x, -1, 1)
        elif self.layout == "reshape":
            x = x.reshape(-1, 3, 5, 6)
        return self.fc(self.conv(x).amax((2, 3)))


class _SequenceIn(nn.Module):
    """A Linear over the features of a [B, T, F] sequence, then a Conv1d over its steps; ``first``: the
    sequence given [B, F, T] and transposed for the Linear."""

    def __init__(self, first):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.fc, self.conv = first, nn.Linear(3, 4), nn.Conv1d(4, 2, 1)

    def forward(self, x):
        return self.conv(self.fc(x.transpose(1, 2) if self.first else x).transpose(1, 2))


def _input_counts(g):
    return [gr.count for gr in g.groups if gr.kind == "input"]


@pytest.mark.parametrize("layout", ["permute", "movedim"])
def test_per_channel_input_nodes_are_the_channels_its_first_layer_reads(layout):
    """Input nodes per channel (chosen for a model with convolutions) were those of axis 1 whatever the model
    did with it: a channels-last image [N, H, W, C] permuted for its Conv2d had H input nodes, each feeding
    every unit of the conv through a junction. The input is followed to its first convolution or linear layer:
    the graph is its channels-first twin's, one node per channel. A reshape on the way keeps axis 1."""
    x = torch.randn(2, 3, 5, 6)
    want = graphs.build(model=_ImageIn("first"), level="unit", example_input=x)
    g = graphs.build(model=_ImageIn(layout), level="unit", example_input=x.permute(0, 2, 3, 1))
    assert _input_counts(g) == [3] and edge_set(g) == edge_set(want) and not g.warnings
    reshaped = graphs.build(model=_ImageIn("reshape"), level="unit", example_input=x.permute(0, 2, 3, 1))
    assert _input_counts(reshaped) == [5]  # the channels' axis not known: axis 1, as before
    s = torch.randn(2, 7, 3)  # features last, read by a Linear: their nodes, as for the [B, F, T] twin's
    g = graphs.build(model=_SequenceIn(False), level="unit", example_input=s, input_nodes="channels")
    want = graphs.build(model=_SequenceIn(True), level="unit", example_input=s.transpose(1, 2), input_nodes="channels")
    assert _input_counts(g) == [3] and edge_set(g) == edge_set(want)


_LOAD_WITHOUT_GRAPHS = """
import sys, torch

class NoProject:  # a process where graphs is not installed (the project is, in this test's environment)
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("graphs", "adaptive"):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NoProject())
x, m = torch.load(sys.argv[1] + "/inputs.pt")
print(torch.equal(torch.load(sys.argv[1] + "/plain.pt", weights_only=False)(x, m), torch.load(sys.argv[1] + "/want.pt")))
try:
    torch.load(sys.argv[1] + "/keyword.pt", weights_only=False)
except ModuleNotFoundError as e:
    print(e)
"""


def test_a_compact_copy_loads_without_graphs_unless_its_signature_needs_its_tracer(tmp_path):
    """A GraphModule pickles its tracer's class, which torch.load imports to trace the code again: once every
    copy was traced by SignatureTracer, none loaded where graphs is not installed (ModuleNotFoundError:
    graphs), where a copy read back with torch alone before. Only a copy whose code fx cannot write (keyword-only
    parameters; an input traced as None) keeps graphs' tracer, and its load names graphs as missing."""
    import subprocess

    x, m = torch.randn(2, 3), torch.ones(2, 4)
    torch.manual_seed(0)
    plain = graphs.compact(_OneInput().eval(), example_input=(x, m))
    torch.save(plain, tmp_path / "plain.pt")
    torch.save(plain(x, m), tmp_path / "want.pt")
    torch.save((x, m), tmp_path / "inputs.pt")
    torch.save(graphs.compact(_RequiredKeyword().eval(), example_input=(x, None, m)), tmp_path / "keyword.pt")
    run = subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_GRAPHS, str(tmp_path)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["True", "No module named 'graphs'"]


class _PositionalOptional(_Optional):
    def forward(self, x, mask=None):
        return self.run(x, None, mask)


def test_a_copy_with_an_input_traced_as_none_read_back_leaves_fx_tracing(tmp_path):
    """A copy with no keyword-only parameter but a check that mask is None: read back with fx's tracer, its code
    got fx's wrap() of the check again, and every later fx trace in the process failed (KeyError); it keeps
    graphs' tracer, which drops it."""
    x = torch.randn(2, 3)
    small = graphs.compact(_PositionalOptional().eval(), example_input=x)
    torch.save(small, tmp_path / "small.pt")
    back = torch.load(tmp_path / "small.pt", weights_only=False)
    assert torch.equal(back(x), small(x)) and "wrap(" not in back.code
    torch.fx.symbolic_trace(_OneInput())  # fx still traces


def test_graphs_traces_where_torch_lacks_fx_private_none_check():
    """graphs imported fx's private ``_assert_is_none`` by name (to drop the wrap() of its check): a torch
    without it failed ``import graphs`` with an ImportError. It imports (fx's own tracing needs the function
    back, in this torch) and compacts a model traced with an input at None."""
    import subprocess

    code = ("import torch, torch.fx._symbolic_trace as t; f = t._assert_is_none; del t._assert_is_none\n"
            "import graphs, test_graphs_trace as tg\n"
            "t._assert_is_none = f; x = torch.randn(2, 3)\n"
            "print(graphs.compact(tg._OptionalKeyword().eval(), example_input=x).compaction['max_abs_diff'])")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(graphs.__file__)), os.path.dirname(__file__)])}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[-1] == "0.0"


class _OneLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)

    def forward(self, x):
        return self.a(x)


def test_an_example_input_with_more_inputs_than_the_forward_takes_is_refused():
    """``(x, None, mask, extra)`` for ``forward(self, x, y=None, *, mask)``, or ``(x, x)`` for ``forward(self, x)``:
    build and compact dropped the extra inputs silently (the model itself refuses them); and compact ran a
    tuple leaving out a required input as far as fx's "Expected positional argument for parameter mask"."""
    x, m = torch.randn(2, 3), torch.ones(2, 4)
    for run in (lambda model, ex: graphs.build(model=model, example_input=ex),
                lambda model, ex: graphs.compact(model, example_input=ex)):
        with pytest.raises(TypeError, match=r"^example_input gives 4 inputs and _RequiredKeyword\.forward takes 3 "
                                            r"\(x, y, mask\): .* pass example_input=\(x, y or None, mask\), None"):
            run(_RequiredKeyword(), (x, None, m, m))
        with pytest.raises(TypeError, match=r"^example_input gives 2 inputs and _OneLayer\.forward takes 1 \(x\): "
                                            r".* pass example_input=\(x,\)"):
            run(_OneLayer(), (x, x))
        with pytest.raises(TypeError, match=r"_RequiredKeyword\.forward also needs mask"):
            run(_RequiredKeyword(), (x, None))


@pytest.mark.parametrize("contract, said", [
    (lambda q, k: torch.einsum("bhid,hjd->bhij", q, k), "einsum 'bhid,hjd->bhij'"),
    (lambda q, k: q @ k.transpose(-2, -1), "a matrix product"),
])
def test_a_contraction_s_warning_says_what_the_graph_approximates(contract, said):
    """MaxViT's attention scores are an einsum: the warning called it torch.functional.einsum and said only that
    no register_op category fits, not that the graph then joins units the einsum keeps apart (heads). One of traced
    tensors is followed now (tests/test_graphs_contractions.py); one reading a parameter no layer owns (learned keys
    here) is still the dense guess."""
    class Scores(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.keys = nn.Linear(4, 4), nn.Parameter(torch.randn(2, 3, 2))

        def forward(self, x):  # two heads of 2 channels: [B, H, T, D]
            q = self.q(x).unflatten(-1, (2, 2)).transpose(1, 2)
            return contract(q, self.keys)

    with pytest.warns(UserWarning, match="cannot follow") as rec:
        tr = graphs.trace(Scores(), torch.randn(1, 3, 4))
    assert tr.unknown
    msg = next(str(w.message) for w in rec if "cannot follow" in str(w.message))
    assert f"As {said} sums products over axes" in msg and "over-approximation" in msg
    assert "torch.functional" not in msg


def test_the_module_order_trace_maps_each_flattened_channel_to_its_block_of_inputs():
    """Where fx cannot trace, the module-order trace wires a Linear reading a flattened convolution channel by
    channel: its 36 inputs are 4 channels of 9 positions, each block from its channel's unit (without that rule
    every input read one combined node, and the graph lost which channel feeds which weights)."""
    import warnings

    from graphs.trace import fallback_trace

    m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(36, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = fallback_trace(m, "a test")
    src = tr.layers[1].in_src.reshape(4, 9)
    assert all(len(set(row.tolist())) == 1 for row in src) and len(set(src[:, 0].tolist())) == 4
