"""What a padding's value, a split's tuple handed on whole, and ops that make a number of NaN do to the
graphs package: a padding's value is a constant, not a unit (F.pad's value was read as a node id); a
split's parts concatenated again are followed as the same parts in a list are; and compaction does not
take a channel for a constant because ``nan_to_num`` or ``sign`` made a number of its probe's NaN."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs
from graphs.graph import EDGE_SYNAPSE

torch.set_num_threads(1)


def _sources(g, prefix):
    names = g.node_names()
    return sorted({names[s] for s, d in zip(g.src.tolist(), g.dst.tolist()) if names[d].startswith(prefix)})


class Padded(nn.Module):
    def __init__(self, value, channel, positional):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(4 + channel, 3, 1 if channel else 3)
        self.value, self.channel, self.positional = value, channel, positional

    def forward(self, x):
        pad = (0, 0, 0, 0, 1, 0) if self.channel else (1, 1, 1, 1)
        h = self.a(x)
        if self.positional:
            return self.b(F.pad(h, pad, "constant", self.value))
        return self.b(F.pad(h, pad, value=self.value))


@pytest.mark.parametrize("positional", [False, True], ids=["keyword", "positional"])
@pytest.mark.parametrize("channel", [True, False], ids=["channel", "spatial"])
@pytest.mark.parametrize("value", [0.0, 1.0, 2.0, 5.0, -1.0])
def test_a_paddings_value_is_a_constant_whatever_it_is(value, channel, positional):
    """value=1.0 wired the model's first input channel to every unit reading the padding, 5.0 made the padded
    channel unit a:1, and a negative value failed the build (ids are counted with bincount)."""
    torch.manual_seed(0)
    conn = adaptive.Connectome(Padded(value, channel, positional).eval())
    g = graphs.build(conn, example_input=torch.randn(1, 3, 4, 4), junctions=False)
    expected = [f"a:{i}" for i in range(4)] + (["constant"] if channel else [])
    assert _sources(g, "b:") == expected
    s = graphs.build(conn, "synapse", example_input=torch.randn(1, 3, 4, 4))
    assert int((s.edge_attrs["kind"] == EDGE_SYNAPSE).sum()) == conn.num_live()


class Rejoined(nn.Module):
    def __init__(self, form):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(4, 3, 1)
        self.form = form

    def forward(self, x):
        h = self.a(x)
        if self.form == "list":
            p = h.chunk(2, 1)
            return self.b(torch.cat([p[0], p[1]], 1))
        if self.form == "chunk":
            return self.b(torch.cat(h.chunk(2, 1), 1))
        if self.form == "split":
            return self.b(torch.cat(h.split([1, 3], 1), 1))
        if self.form == "reversed":  # channels (2, 3, 0, 1)
            return self.b(torch.cat(h.chunk(2, 1)[::-1], 1))
        return self.b(torch.stack(h.unbind(2), 2))  # "stack"


@pytest.mark.parametrize("form", ["list", "chunk", "split", "reversed", "stack"])
def test_a_splits_tuple_concatenated_whole_is_followed_as_its_parts_in_a_list(form):
    """torch.cat(h.chunk(2, 1), 1) was an unknown op (its tuple is one fx node, not a list of them): every channel of
    h fed every unit of b, with a warning that torch.cat fits no category."""
    torch.manual_seed(0)
    conn = adaptive.Connectome(Rejoined(form).eval())
    m = torch.ones(3, 4, 1, 1, dtype=torch.bool)
    m[0] = False
    m[0, 1] = True  # b:0 reads its input channel 1 alone
    conn.set_masks({"a.weight": torch.ones(4, 3, 1, 1, dtype=torch.bool), "b.weight": m})
    x = torch.randn(1, 3, 3, 3)
    with torch.no_grad():
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "cannot follow" warning
            g = graphs.build(conn, example_input=x, junctions=False)
    read = "a:3" if form == "reversed" else "a:1"  # channel 1 of (a:2, a:3, a:0, a:1) is a:3
    names = g.node_names()
    assert sorted(names[s] for s, d in zip(g.src.tolist(), g.dst.tolist()) if names[d] == "b:0") == [read]
    assert _sources(g, "b:") == [f"a:{i}" for i in range(4)]
    if form in ("chunk", "split", "reversed"):  # the concatenation's parts are recorded, named by the split's node
        comp = graphs.concat_composition(g)
        assert len(comp) == 1 and [p[1:] for p in comp[0]["parts"]] == (
            [(0, 1), (1, 3)] if form == "split" else [(0, 2), (2, 2)])


class Through(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(4, 3, 1)
        self.op = op

    def forward(self, x):
        return self.c(self.op(self.a(x)))


THROUGH = {
    "nan_to_num": lambda h: h.nan_to_num(0.0),
    "nan_to_num(nan=1)": lambda h: torch.nan_to_num(h, nan=1.0),
    "nan_to_num_": lambda h: h.nan_to_num_(),
    "sign": lambda h: h.sign(),
    "torch.sgn": lambda h: torch.sgn(h),
    "sign_": lambda h: h.sign_(),
}


@pytest.mark.parametrize("op", sorted(THROUGH))
def test_a_channel_passed_through_an_op_that_makes_a_number_of_nan_is_no_constant(op):
    """The probe feeds NaN to find what does not depend on the data; nan_to_num and sign made 0.0 of it, so 3 of
    a's 4 units of a network with every synapse live were removed as constants (outputs wrong by up to 1.0 with
    verify=False; CompactionMismatchError with verify)."""
    torch.manual_seed(0)
    net = Through(THROUGH[op]).double().eval()
    conn = adaptive.Connectome(net)  # every synapse live: nothing to remove
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    small = graphs.compact(copy.deepcopy(net), conn, x)
    assert small.compaction["removed"] == {"a": 0, "c": 0}
    with torch.no_grad():
        assert torch.equal(small(x), net(x))


def test_a_dead_unit_passed_through_nan_to_num_is_still_folded():
    """The constant a unit with no live input emits stays a constant through nan_to_num (no NaN there)."""
    torch.manual_seed(0)
    net = Through(lambda h: h.nan_to_num(0.0)).double().eval()
    conn = adaptive.Connectome(net)
    m = torch.ones(4, 3, 1, 1, dtype=torch.bool)
    m[2] = False  # a:2 reads nothing: it emits its bias
    conn.set_masks({"a.weight": m, "c.weight": torch.ones(3, 4, 1, 1, dtype=torch.bool)})
    conn.apply()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
    small = graphs.compact(copy.deepcopy(net), conn, x)
    assert small.compaction["removed"]["a"] == 1
    with torch.no_grad():
        assert torch.allclose(small(x), ref, rtol=0, atol=1e-12)
