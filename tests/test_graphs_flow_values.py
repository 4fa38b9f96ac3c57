"""graphs in value where a careless edit went unnoticed: contraction (merged l2, junctions of the same units in any
order), in-place writes of views and buffers, recurrent cells' gate rows and h0 wiring, a layer graph's input depth, a
max_norm lookup's norm type, str defaults traced at their value, and kthvalue's dim."""
import warnings

import pytest
import torch
from torch import nn

import graphs


def _sources_of(g, prefix):
    names = g.node_names()
    return sorted({names[s] for s, d in zip(g.src.tolist(), g.dst.tolist()) if names[d].startswith(prefix)})


def _quiet_build(model, x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return graphs.build(model=model.eval(), level="unit", example_input=x, **kw)


class _Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.s, self.out = nn.Linear(3, 4), nn.Linear(3, 1), nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.a(x) + self.s(x))  # s:0 feeds every channel's junction


def test_contracted_copies_of_one_unit_merge_l2_as_a_root_of_summed_squares():
    torch.manual_seed(0)
    m = _Gate()
    g = _quiet_build(m, torch.randn(2, 3), junctions=False)
    names = g.node_names()
    got = {names[int(d)]: float(l2) for s, d, l2 in zip(g.src, g.dst, g.edge_attrs["l2"]) if names[int(s)] == "s:0"}
    want = m.out.weight.detach().norm(dim=1)
    assert got == pytest.approx({"out:0": float(want[0]), "out:1": float(want[1])}, rel=1e-6)


class _Scores(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(3, 4), nn.Linear(4, 1)

    def forward(self, x):
        h = self.fc(x)
        z = torch.stack([h, h.flip(-1)], 1)  # row 1 holds row 0's units, reversed
        return self.out((z @ z.transpose(1, 2)).flatten(1))


def test_contraction_outputs_reading_the_same_units_in_another_order_share_one_junction():
    g = _quiet_build(_Scores(), torch.randn(2, 3))
    assert sum(gr.count for gr in g.groups if gr.op == "contraction") == 1


class _HalfInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(3, 4), nn.Linear(3, 2), nn.Linear(2, 1)

    def forward(self, x):
        h = self.a(x)
        lo, hi = h[:, :2], h[:, 2:]  # same shape and strides, another offset
        lo.add_(self.b(x))  # changes lo, not hi
        return self.out(hi)


def test_an_in_place_change_of_a_view_does_not_reach_a_view_at_another_offset():
    g = _quiet_build(_HalfInPlace(), torch.randn(2, 3), junctions=False)
    assert _sources_of(g, "out:") == ["a:2", "a:3"]


class _TwoWrites(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(2, 1)
        self.register_buffer("buf", torch.zeros(1, 2))

    def forward(self, x):
        self.buf.copy_(self.a(x)[:1])
        self.buf.copy_(self.b(x)[:1])  # the last write is what the read below sees
        return self.out(self.buf)


def test_a_buffer_changed_in_place_twice_is_read_with_its_last_ids():
    g = _quiet_build(_TwoWrites(), torch.randn(1, 3), junctions=False)
    assert {"b:0", "b:1"} <= set(_sources_of(g, "out:"))


class _AddOtherHalf(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.out = nn.Linear(3, 4), nn.Linear(2, 1)

    def forward(self, x):
        h = self.a(x)
        lo = h[:, :2]
        lo.add_(h[:, 2:])  # the other half is read by the add_ itself, never after it
        return self.out(lo)


def test_an_in_place_change_reading_a_sibling_view_only_itself_is_not_warned_about():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        g = graphs.build(model=_AddOtherHalf().eval(), level="unit", example_input=torch.randn(2, 3))
    assert not g.warnings and not [x for x in w if "in place" in str(x.message)]


class _Cell(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.cell, self.out, self.lstm = cell, nn.Linear(2, 1), isinstance(cell, nn.LSTMCell)

    def forward(self, x):
        h = self.cell(x)  # no state given: zeros
        return self.out(h[0] if self.lstm else h)


def _dead_ih_rows(cell):
    g = _quiet_build(_Cell(cell), torch.randn(1, 3), junctions=False)
    names, dead = g.node_names(), g.node_attrs["out_degree"] == 0
    return [names[i] for i in range(g.num_nodes) if names[i].startswith("cell.ih") and bool(dead[i])]


def test_an_lstm_cell_without_state_has_only_its_forget_gate_rows_feed_nothing():
    # gates i, f, g, o of hidden 2: rows 2, 3 are f, which multiplies the zero cell state
    assert _dead_ih_rows(nn.LSTMCell(3, 2)) == ["cell.ih:2", "cell.ih:3"]


def test_a_gru_cell_with_biases_and_no_state_keeps_its_reset_gate_rows():
    # r * (W_hn h + b_hn): with b_hn, the reset gate matters even where h is zeros; without it, it does not
    assert _dead_ih_rows(nn.GRUCell(3, 2)) == []
    assert _dead_ih_rows(nn.GRUCell(3, 2, bias=False)) == ["cell.ih:0", "cell.ih:1"]


class _InitGRU(nn.Module):
    def __init__(self, zeros_for_layer_1=False):
        super().__init__()
        self.zeros = zeros_for_layer_1
        self.init = nn.Linear(3, 2 if zeros_for_layer_1 else 8)
        self.rnn = nn.GRU(3, 2, num_layers=2, bidirectional=not zeros_for_layer_1, batch_first=True)

    def forward(self, x):
        if self.zeros:
            h = self.init(x[:, 0])
            return self.rnn(x, torch.stack([h, torch.zeros_like(h)]))[0]  # layer 1 starts from a constant
        h0 = self.init(x[:, 0]).view(-1, 4, 2).transpose(0, 1).contiguous()  # 2 layers x 2 directions
        return self.rnn(x, h0)[0]


def _state_wires(g):
    names = g.node_names()
    return [(names[s], names[d]) for s, d in zip(g.src.tolist(), g.dst.tolist())
            if ".state" in names[d] and not names[s].startswith("rnn")]


def test_each_layer_and_direction_of_a_recurrent_layer_starts_from_its_own_h0_row():
    g = _quiet_build(_InitGRU(), torch.randn(2, 5, 3))
    wires = dict((d, s) for s, d in _state_wires(g))
    assert wires["rnn.l1.state:0"] == "init:4" and wires["rnn.l1_reverse.state:1"] == "init:7"
    assert wires["rnn.l0_reverse.state:0"] == "init:2"


def test_layer_graph_gives_inputs_depth_min_zero():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    g = graphs.build(model=m, level="layer", example_input=torch.randn(2, 3))
    depth = {gr.name: (int(a), int(b)) for gr, a, b in zip(g.groups, g.node_attrs["depth_min"], g.node_attrs["depth_max"])}
    assert depth["input_1"] == (0, 0) and depth["2"] == (2, 2)


class _L1Lookup(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Embedding(5, 4, max_norm=1.0, norm_type=1.0), nn.Linear(4, 2)

    def forward(self, t):
        return self.out(self.emb(t))


def test_build_puts_back_rows_a_max_norm_lookup_renormalises_under_its_own_norm_type():
    m = _L1Lookup().eval()
    with torch.no_grad():
        m.emb.weight.fill_(0.4)  # L1 norm 1.6 > max_norm, L2 norm 0.8 < max_norm
    before = m.emb.weight.detach().clone()
    graphs.build(model=m, level="unit", example_input=torch.tensor([[0, 1, 2]]))
    assert torch.equal(m.emb.weight.detach(), before)


class _StrMode(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x, mode: str = "a"):
        return self.a(x) if mode == "a" else self.b(x)


def test_a_str_default_is_traced_at_its_value():
    g = _quiet_build(_StrMode(), torch.randn(2, 3))
    assert g.meta["traced"] is True and [l.module for l in g.layers] == ["a"]


class _Kth(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(3, 4), nn.Linear(1, 1)

    def forward(self, x):
        v = torch.kthvalue(self.fc(x), 2, 1).values  # k=2 along the positions (dim 1, positional)
        return self.out(v[:, :1])


def test_kthvalue_reads_its_dim_after_k():
    g = _quiet_build(_Kth(), torch.randn(2, 3, 3), junctions=False)
    assert _sources_of(g, "out:0") == ["fc:0"]
