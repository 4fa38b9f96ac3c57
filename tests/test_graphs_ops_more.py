"""Ops the tracer used to call unknown (warned, every input feeding every output): softmax and kin,
F.normalize, pixel (un)shuffle, F.scaled_dot_product_attention, F.linear on an nn.Linear's weight."""
import warnings

import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphs
from graphs.graph import EDGE_SYNAPSE

torch.set_num_threads(1)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _graph_edges import edge_set, full, wires  # noqa: E402


def inner(g):
    """The edges past the input (a [N, T, 3] input's channel nodes reach ``a`` through a junction)."""
    return {e for e in edge_set(g) if not e[0].startswith(("x:", "a.input"))}


def build(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no op left unknown
        return graphs.build(model=model, level="unit", example_input=x, input_nodes="channels")


class Between(nn.Module):
    """a -> op -> b, with ``a`` writing 4 units on the last axis of [N, T, 4]."""

    def __init__(self, op):
        super().__init__()
        self.a, self.op, self.b = nn.Linear(3, 4), op, nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.op(self.a(x)))


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, h):
        return self.fn(h)


ACROSS_CHANNELS = {  # name of the node -> the op, over the last (channel) axis of [N, T, 4]
    "softmax": lambda: Fn(lambda h: F.softmax(h, dim=-1)),
    "log_softmax": lambda: Fn(lambda h: F.log_softmax(h, -1)),
    "softmin": lambda: Fn(lambda h: F.softmin(h, dim=2)),
    "softmax_method": lambda: Fn(lambda h: h.softmax(-1)),
    "log_softmax_method": lambda: Fn(lambda h: h.log_softmax(dim=-1)),
    "torch_softmax": lambda: Fn(lambda h: torch.softmax(h, -1)),
    "torch_log_softmax": lambda: Fn(lambda h: torch.log_softmax(h, dim=-1)),
    "normalize": lambda: Fn(lambda h: F.normalize(h, dim=-1)),
    "Softmax": lambda: nn.Softmax(dim=-1),
    "LogSoftmax": lambda: nn.LogSoftmax(dim=2),
    "Softmin": lambda: nn.Softmin(dim=-1),
}


@pytest.mark.parametrize("kind", sorted(ACROSS_CHANNELS))
def test_softmax_over_channels_is_a_normalisation_over_all_channels(kind):
    """Softmax over the channel axis: every output channel reads every input channel, through one
    statistics junction, as a LayerNorm is wired (channel c: a junction of a:c and the statistics).
    It was unknown: one junction fed by all four units, feeding every unit of b."""
    g = build(Between(ACROSS_CHANNELS[kind]()), torch.randn(2, 5, 3))
    op = next(gr.name for gr in g.groups if gr.kind == "junction" and not gr.name.startswith("a.")
              and not gr.name.endswith(".statistics"))
    assert inner(g) == (wires("a", op, [(i, i) for i in range(4)])
                           | wires("a", f"{op}.statistics", [(i, 0) for i in range(4)])
                           | wires(f"{op}.statistics", op, [(0, i) for i in range(4)])
                           | full(op, "b", 4, 2) | wires("b", "output", [(0, 0), (1, 1)]))
    assert not g.warnings


@pytest.mark.parametrize("make", [
    lambda: Fn(lambda h: F.softmax(h, dim=1)),  # over the 5 positions of [N, 5, 4]
    lambda: Fn(lambda h: h.log_softmax(1)),
    lambda: Fn(lambda h: F.normalize(h, p=1, dim=1)),
    lambda: nn.Softmax(dim=1),
])
def test_softmax_over_positions_keeps_each_channel_alone(make):
    """Softmax over an axis the units do not change along: channel c reads channel c only."""
    g = build(Between(make()), torch.randn(2, 5, 3))
    assert inner(g) == full("a", "b", 4, 2) | wires("b", "output", [(0, 0), (1, 1)])


def test_softmax2d_and_implicit_dim_on_a_feature_map():
    """nn.Softmax2d normalises over the channels of [N, C, H, W]: all channels read the statistics;
    nn.Softmax() without dim picks axis 1 of a 4-d tensor, as torch does."""
    for op in (nn.Softmax2d(), nn.Softmax()):
        net = nn.Sequential(nn.Conv2d(2, 3, 1), op, nn.Conv2d(3, 2, 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's own implicit-dim deprecation warning
            g = graphs.build(model=net, level="unit", example_input=torch.randn(1, 2, 4, 4))
        assert not g.warnings
        op = "_1"  # the fx node's name (of module "1")
        assert edge_set(g) >= (wires("0", op, [(i, i) for i in range(3)]) | wires("0", f"{op}.statistics", [(i, 0) for i in range(3)])
                               | wires(f"{op}.statistics", op, [(0, i) for i in range(3)]) | full(op, "2", 3, 2))


def test_attention_softmax_over_keys_passes_each_channel():
    """An attention map computed by einsum is one node (every channel is summed over); its softmax over the key
    axis adds nothing (it was an unknown op), and the map times the values feeds channel c the map and value c.
    The einsums were unknown ops too (tests/test_graphs_contractions.py)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            w = torch.einsum("ntc,nsc->nts", h, h).softmax(-1)
            return self.b(torch.einsum("nts,nsc->ntc", w, h))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(model=Net(), level="unit", example_input=torch.randn(2, 5, 3), input_nodes="channels")
    scores = next(x.name for x in g.groups if x.op == "contraction" and x.count == 1)
    assert edge_set(g) >= wires("a", scores, [(i, 0) for i in range(4)])
    into_b = {l.module: l for l in g.layers}["b"].in_src
    names = g.node_names()
    for c in range(4):
        assert {names[s] for s, d in zip(g.src.tolist(), g.dst.tolist()) if d == int(into_b[c])} == {f"{scores}:0", f"a:{c}"}


def test_pixel_shuffle_moves_channels_exactly():
    """F.pixel_shuffle(x, 2) puts input channels 4c..4c+3 into output channel c (one per pixel of each
    2x2 block): a junction of those four for the next layer; pixel_unshuffle undoes it exactly."""

    class Net(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 8, 1), nn.Conv2d(2, 3, 1)
            self.c = nn.Conv2d(8, 1, 1)
            self.shuffle = nn.PixelShuffle(2) if module else None
            self.unshuffle = nn.PixelUnshuffle(2) if module else None

        def forward(self, x):
            h = self.a(x)
            s = self.shuffle(h) if self.shuffle is not None else F.pixel_shuffle(h, 2)
            u = self.unshuffle(s) if self.unshuffle is not None else F.pixel_unshuffle(s, 2)
            return self.b(s) + self.c(u).mean() * 0

    for module in (False, True):
        g = build(Net(module), torch.randn(1, 1, 3, 3))
        lay = {l.module: l for l in g.layers}
        names = g.node_names()
        assert [names[i] for i in lay["c"].in_src.tolist()] == [f"a:{i}" for i in range(8)]  # unshuffled back
        mixed = [names[i] for i in lay["b"].in_src.tolist()]
        assert edge_set(g) >= wires("a", mixed[0].split(":")[0], [(i, i // 4) for i in range(8)])
        assert len(set(mixed)) == 2


class SDPA(nn.Module):
    """Self-attention written with F.scaled_dot_product_attention: E = 4 channels, 2 heads of 2."""

    def __init__(self, heads=2, gqa=False):
        super().__init__()
        self.heads, self.gqa = heads, gqa
        self.q, self.k, self.v = nn.Linear(3, 4), nn.Linear(3, 4 // (2 if gqa else 1)), nn.Linear(3, 4 // (2 if gqa else 1))
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        N, T, _ = x.shape
        split = lambda t: t.view(N, T, -1, 2).transpose(1, 2)  # [N, heads, T, 2]
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True) if self.gqa else F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(N, T, 4))


def _feeds(g, group):
    """{unit index of the junction group: set of node names feeding it}"""
    names = g.node_names()
    out = {}
    for s, d in zip(g.src.tolist(), g.dst.tolist()):
        if names[d].startswith(group + ":"):
            out.setdefault(int(names[d].split(":")[1]), set()).add(names[s])
    return out


def test_scaled_dot_product_attention_wires_heads_like_multihead_attention():
    """Output channel c of head h reads value channel c and the query and key channels of head h only
    (2 * head_dim + 1 units), as nn.MultiheadAttention is wired; it was one junction of everything."""
    g = build(SDPA(), torch.randn(2, 5, 3))
    lay = {l.module: l for l in g.layers}
    names = g.node_names()
    att = [names[i] for i in lay["out"].in_src.tolist()]
    group = att[0].split(":")[0]
    feeds = _feeds(g, group)
    head = lambda t, h: {f"{t}:{2 * h}", f"{t}:{2 * h + 1}"}
    for c in range(4):  # channel c of the output = head c // 2, value channel c
        j = int(att[c].split(":")[1])
        assert feeds[j] == {f"v:{c}"} | head("q", c // 2) | head("k", c // 2)


def test_scaled_dot_product_attention_grouped_query_heads():
    """enable_gqa: 2 query heads share 1 key/value head: both read k's and v's only head."""
    g = build(SDPA(gqa=True), torch.randn(2, 5, 3))
    lay = {l.module: l for l in g.layers}
    names = g.node_names()
    att = [names[i] for i in lay["out"].in_src.tolist()]
    feeds = _feeds(g, att[0].split(":")[0])
    for c in range(4):
        j = int(att[c].split(":")[1])
        assert feeds[j] == {f"v:{c % 2}", "k:0", "k:1", f"q:{c // 2 * 2}", f"q:{c // 2 * 2 + 1}"}


def test_functional_linear_on_a_linear_weight_is_that_layer():
    """F.linear(x, self.fc.weight, self.fc.bias) (fc never called as a module) is the layer fc: its
    units and synapses are in the graph; it was an unknown op that no layer owned."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(F.relu(F.linear(x, self.fc.weight, self.fc.bias)))

    g = build(Net(), torch.randn(2, 3))
    assert [(l.module, l.param) for l in g.layers] == [("fc", "fc.weight"), ("b", "b.weight")]
    assert edge_set(g) == full("x", "fc", 3, 4) | full("fc", "b", 4, 2) | wires("b", "output", [(0, 0), (1, 1)])


def test_functional_linear_on_another_weight_says_why_it_is_unknown():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 3))
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            return self.b(F.linear(x, self.w * 2))

    with pytest.warns(UserWarning, match=r"'linear'.*weight 'mul' is computed in the forward.*call the nn.Linear "
                                         r"module itself") as rec:
        graphs.build(model=Net(), level="unit", example_input=torch.randn(2, 3))
    assert not any("graphs.register_op(" in str(w.message) for w in rec if "'linear'" in str(w.message))


def test_functional_linear_of_a_linear_subclass_given_as_the_model_names_its_weight():
    """A subclass of nn.Linear defined outside torch.nn, given as the whole model, is traced into: its
    F.linear(x, self.weight, self.bias) is the model's own layer, whose parameter is "weight" (as for a
    plain nn.Linear); it was named ".weight", so utility={"weight": ...} was refused."""

    class MyLinear(nn.Linear):
        pass

    g = graphs.build(model=MyLinear(3, 4), level="synapse", example_input=torch.randn(2, 3),
                     utility={"weight": torch.ones(4, 3)})
    assert [(l.module, l.param) for l in g.layers] == [("", "weight")]
    assert int((g.edge_attrs["kind"] == EDGE_SYNAPSE).sum()) == 12


class TimmAttention(nn.Module):
    """timm's ViT attention: one qkv Linear, its output split by reshape/permute/unbind, 2 heads of 4."""

    def __init__(self, dim=8, heads=2, fn=False):
        super().__init__()
        self.heads, self.fn = heads, fn
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = torch.unbind(qkv, 0) if self.fn else qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("fn", [False, True])
def test_timm_attention_split_by_unbind_reaches_the_heads(fn):
    """q, k, v = qkv.unbind(0) (timm's ViT) is a shape op: proj input channel c (head c // 4) reads
    qkv's value unit 16 + c and the query and key units of its head only. unbind was unknown: one
    junction of all 24 qkv units feeding every proj unit."""
    g = build(TimmAttention(fn=fn), torch.randn(2, 5, 8))
    lay = {l.module: l for l in g.layers}
    names = g.node_names()
    att = [names[i] for i in lay["proj"].in_src.tolist()]
    feeds = _feeds(g, att[0].split(":")[0])
    for c in range(8):
        h = c // 4
        want = {f"qkv:{16 + c}"} | {f"qkv:{4 * h + i}" for i in range(4)} | {f"qkv:{8 + 4 * h + i}" for i in range(4)}
        assert feeds[int(att[c].split(":")[1])] == want


def test_normalize_over_several_dims():
    """F.normalize(x, dim=(2, 3)) (torch takes a tuple of dims: the norm over every pixel of a channel)
    keeps each channel alone; dim=(1, 3) reads all channels through one statistics junction. A tuple
    was an unknown op (TypeError in the rule), all to all, with a hint to register normalize as pointwise."""
    for dims, across in (((2, 3), False), ((-1, -2), False), ((1, 3), True)):
        net = nn.Sequential(nn.Conv2d(2, 3, 1), Fn(lambda h, dims=dims: F.normalize(h, dim=dims)), nn.Conv2d(3, 2, 1))
        g = build(net, torch.randn(1, 2, 4, 4))
        op = "normalize"
        if across:
            assert edge_set(g) >= (wires("0", op, [(i, i) for i in range(3)])
                                   | wires("0", f"{op}.statistics", [(i, 0) for i in range(3)]) | full(op, "2", 3, 2))
        else:
            assert edge_set(g) >= full("0", "2", 3, 2) and not [gr for gr in g.groups if gr.kind == "junction"]


@pytest.mark.parametrize("make", [lambda h: h + torch.zeros_like(h), lambda h: h * torch.ones_like(h),
                                  lambda h: h + h.new_zeros(h.shape), lambda h: h - h.new_full(h.shape, 2.0),
                                  lambda h: h + torch.randn_like(h)],
                         ids=["zeros_like", "ones_like", "new_zeros", "new_full", "randn_like"])
def test_tensors_made_from_a_shape_are_constants(make):
    """``torch.zeros_like(h)``, ``h.new_zeros(...)`` and their kind read h's shape, not its values: a constant
    (each unit of ``a`` feeds only itself), as ``h + 1`` is; they were unknown ops, warned about, joining every
    unit of ``a`` to every unit of ``b``."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3)
    assert inner(build(Between(Fn(make)), x)) == inner(build(Between(Fn(lambda h: h + 1.0)), x))


@pytest.mark.parametrize("make", [lambda h: h + torch.full_like(h, h.mean()),
                                  lambda h: h + h.new_full(h.shape, fill_value=h.mean())],
                         ids=["full_like", "new_full"])
def test_a_tensor_filled_with_a_traced_value_carries_that_value(make):
    """``torch.full_like(h, h.mean())`` is the mean everywhere, as ``h + h.mean()`` reads it: taken for a
    constant, the mean's node fed nothing."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3)
    assert inner(build(Between(Fn(make)), x)) == inner(build(Between(Fn(lambda h: h + h.mean())), x))


def _empty(h):
    """An uninitialised tensor of h's shape made from traced sizes, as a model makes one."""
    return torch.empty(h.shape[0], h.shape[1], h.shape[2])


@pytest.mark.parametrize("make", [lambda h: h + _empty(h).zero_(), lambda h: h * _empty(h).fill_(2.0),
                                  lambda h: h + _empty(h).normal_(), lambda h: h + _empty(h).uniform_(-1, 1),
                                  lambda h: h + _empty(h).bernoulli_(0.5), lambda h: h + torch.zero_(_empty(h)),
                                  lambda h: h + torch.fill_(_empty(h), 3.0), lambda h: h + h.clone().zero_()],
                         ids=["zero_", "fill_", "normal_", "uniform_", "bernoulli_", "torch.zero_", "torch.fill_",
                              "zero_ traced data"])
def test_an_in_place_fill_is_a_constant(make):
    """``torch.empty(b, t, c).zero_()`` (``fill_``, ``normal_``, ...) overwrites what the tensor held: a constant,
    as ``torch.zeros_like(h)`` is. The fill was an unknown op, warned about, joining every unit of ``a`` to every
    unit of ``b``; zeroing a copy of traced data leaves none of it."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3)
    assert inner(build(Between(Fn(make)), x)) == inner(build(Between(Fn(lambda h: h + 1.0)), x))


def test_an_in_place_fill_with_a_traced_value_carries_that_value_as_full_like_does():
    """``torch.empty(...).fill_(h.mean())`` is the mean everywhere, as ``torch.full_like(h, h.mean())`` is; and
    the tensor the fill changed in place reads so too, where the model reads it rather than the fill's result."""
    def in_place(h):
        z = _empty(h)
        z.fill_(h.mean())
        return h + z

    torch.manual_seed(0)
    x = torch.randn(2, 5, 3)
    want = inner(build(Between(Fn(lambda h: h + torch.full_like(h, h.mean()))), x))
    assert inner(build(Between(Fn(lambda h: h + _empty(h).fill_(h.mean()))), x)) == want
    assert inner(build(Between(Fn(in_place)), x)) == want != inner(build(Between(Fn(lambda h: h + 1.0)), x))


def _fill_fn(h):
    z = _empty(h)
    torch.fill_(z, h.mean())
    return h + z


def _zero_fn(h):
    torch.zero_(h)
    return h


def _zero_detached(h):
    h.detach().zero_()
    return h


def _zero_view_fn(h):
    torch.zero_(h[..., :2])
    return h


def test_torchs_in_place_functions_and_aliases_change_the_tensor_read_after_them():
    """``torch.fill_(z, h.mean())`` fills ``z`` with the mean of ``h``: ``z`` kept its constant ids, the mean's
    edges lost without a warning, where ``z.fill_(h.mean())`` carried them. ``torch.zero_(h)`` and
    ``h.detach().zero_()`` leave ``h``, read after them, nothing of ``a``; and ``torch.zero_(h[..., :2])``, a
    view's, is warned about as ``h[..., :2].zero_()`` is."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3)
    want = inner(build(Between(Fn(lambda h: h + torch.full_like(h, h.mean()))), x))
    assert inner(build(Between(Fn(_fill_fn)), x)) == want
    nothing = inner(build(Between(Fn(torch.zeros_like)), x))
    assert inner(build(Between(Fn(_zero_fn)), x)) == inner(build(Between(Fn(_zero_detached)), x)) == nothing
    with pytest.warns(UserWarning, match=r"call_function zero_\) changes 'getitem' in place"):
        graphs.build(model=Between(Fn(_zero_view_fn)), level="unit", example_input=x)


SPLITS = {  # name -> h [N, 6, 4, 4] split along the channels as torch.split(h, [1, 2, 3], 1) splits it
    "tensor_split": lambda h: torch.tensor_split(h, [1, 3], 1),
    "tensor_split_method": lambda h: h.tensor_split([1, 3], dim=1),
    "hsplit": lambda h: torch.hsplit(h, [1, 3]),
    "hsplit_method": lambda h: h.hsplit([1, 3]),
    "split_with_sizes": lambda h: torch.split_with_sizes(h, [1, 2, 3], 1),
    "split_with_sizes_method": lambda h: h.split_with_sizes([1, 2, 3], 1),
}


class Parts(nn.Module):
    """a (3 -> 6 channels), split into three parts; b, c and d read the last channel of one part each."""

    def __init__(self, parts):
        super().__init__()
        torch.manual_seed(0)
        self.parts, self.a = parts, nn.Conv2d(3, 6, 1)
        self.b, self.c, self.d = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 2, 1), nn.Conv2d(1, 2, 1)

    def forward(self, x):
        p, q, r = self.parts(self.a(x))
        return torch.cat([self.b(p[:, -1:]), self.c(q[:, -1:]), self.d(r[:, -1:])], 1)


def synapses_from_a(g):
    return {(s, d) for s, d, k in edge_set(g) if k == EDGE_SYNAPSE and s.startswith("a:")}


@pytest.mark.parametrize("kind", sorted(SPLITS) + ["tensor_split_sections", "tensor_split_sections_method"])
def test_tensor_split_and_its_kin_are_wired_as_split_and_chunk(kind):
    """torch.tensor_split, hsplit and split_with_sizes (functions and methods) split as split does, and
    tensor_split into sections as chunk does: each layer reads the channel of a its part holds. They were
    unknown ops: warned, every unit of a feeding one junction that fed b, c and d."""
    x = torch.randn(2, 3, 4, 4)
    if kind.startswith("tensor_split_sections"):
        parts = (lambda h: h.tensor_split(3, 1)) if kind.endswith("method") else (lambda h: torch.tensor_split(h, 3, 1))
        as_split, last = (lambda h: h.chunk(3, 1)), (1, 3, 5)
    else:
        parts, as_split, last = SPLITS[kind], (lambda h: torch.split(h, [1, 2, 3], 1)), (0, 2, 5)
    g = build(Parts(parts), x)
    assert edge_set(g) == edge_set(build(Parts(as_split), x))
    assert synapses_from_a(g) == {(f"a:{i}", f"{layer}:{j}") for i, layer in zip(last, "bcd") for j in (0, 1)}


class AlongOtherAxes(nn.Module):
    """a, its output split along the batch (vsplit) or the rows (dsplit) or taken apart by unbind, each part
    read by a layer of its own; ``as_chunk`` writes the same with chunk."""

    def __init__(self, kind, as_chunk):
        super().__init__()
        torch.manual_seed(0)
        self.kind, self.as_chunk = kind, as_chunk
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = self.a(x)
        if self.kind == "vsplit":
            p, q = h.chunk(2, 0) if self.as_chunk else torch.vsplit(h, 2)
        elif self.kind == "dsplit":
            p, q = h.chunk(2, 2) if self.as_chunk else h.dsplit(2)
        else:  # unbind over a stack of two copies: each part every channel of a
            s = torch.stack([h, 2 * h])
            p, q = s.chunk(2, 0) if self.as_chunk else (torch.unbind(s) if self.kind == "unbind" else s.unbind(0))
            if self.as_chunk:
                p, q = p[0], q[0]
        return torch.cat([self.b(p), self.c(q)], 0)


@pytest.mark.parametrize("kind", ["vsplit", "dsplit", "unbind", "unbind_method"])
def test_splits_along_other_axes_are_wired_as_chunk(kind):
    """vsplit (the batch) and dsplit (rows) keep every channel in each part, as chunk along those axes does;
    unbind (function and method) too."""
    x = torch.randn(2, 3, 4, 4)
    g = build(AlongOtherAxes(kind, False), x)
    assert edge_set(g) == edge_set(build(AlongOtherAxes(kind, True), x))
    assert edge_set(g) >= full("a", "b", 4, 2) | full("a", "c", 4, 2)


SWAPS = {
    "swapaxes": lambda h: torch.swapaxes(h, 1, 2),
    "swapdims": lambda h: torch.swapdims(h, 1, -1),
    "swapaxes_method": lambda h: h.swapaxes(1, 2),
    "swapdims_method": lambda h: h.swapdims(-1, 1),
}


class Swapped(nn.Module):
    """a writes 4 channels on axis 1 of [N, 4, T]; the swap puts them last for b, a Linear."""

    def __init__(self, swap):
        super().__init__()
        torch.manual_seed(0)
        self.swap, self.a, self.b = swap, nn.Conv1d(3, 4, 1), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.swap(self.a(x)))


@pytest.mark.parametrize("kind", sorted(SWAPS))
def test_swapaxes_and_swapdims_move_channels_as_transpose_does(kind):
    """torch.swapaxes / swapdims and their methods are transpose under other names: the graph is the one of
    the same model written with transpose. They were unknown ops: warned, every unit of a feeding b."""
    x = torch.randn(2, 3, 5)
    g = build(Swapped(SWAPS[kind]), x)
    assert edge_set(g) == edge_set(build(Swapped(lambda h: h.transpose(1, 2)), x))
    assert {(s, d) for s, d, k in edge_set(g) if s.startswith("a:")} == {(f"a:{i}", f"b:{j}") for i in range(4) for j in range(2)}


class _Written(nn.Module):
    """A buffer written in place with a value of unit 0 of ``a`` (alone), then read again: unit 0 reaches ``b``
    through the buffer only."""

    def __init__(self, how):
        super().__init__()
        self.a, self.b, self.how = nn.Linear(3, 4), nn.Linear(3, 2), how
        self.register_buffer("buf", torch.zeros(3))

    def forward(self, x):
        h = self.a(x)
        v = h[:, 0].mean()
        if self.how == "fill_":
            self.buf.fill_(v)
        elif self.how == "add_":
            self.buf.add_(v)
        else:
            self.buf[:2].add_(v)
        return self.b(h[:, 1:] + self.buf)


@pytest.mark.parametrize("how", ["fill_", "add_"])
def test_a_buffer_changed_in_place_is_read_again_with_what_was_written(how):
    """fx gives each ``self.buf`` a get_attr node of its own: the one read after ``self.buf.fill_(v)`` was a
    constant, and unit a:0, which reaches the output through the buffer alone (as perturbing its bias shows),
    reached none, without a warning."""
    from graphs.analysis import reachability

    torch.manual_seed(0)
    model, x = _Written(how).eval(), torch.randn(3, 3)
    with torch.no_grad():
        y = model(x)
        model.a.bias[0] += 1.0
        assert not torch.allclose(model(x), y)  # unit 0 reaches the output
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(model=model, level="unit", example_input=x)
    grp = next(gr for gr in g.groups if gr.name == "a")
    assert reachability(g)["to_output"][grp.start:grp.start + grp.count].tolist() == [True] * 4


def test_a_buffer_changed_in_part_in_place_and_read_again_is_warned_about():
    with pytest.warns(UserWarning, match=r"changes a part of 'buf' in place, which is read again after it"):
        graphs.build(model=_Written("part").eval(), level="unit", example_input=torch.randn(3, 3))
