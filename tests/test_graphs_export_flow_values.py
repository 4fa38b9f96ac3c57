"""Exported graphs and traced wiring: values a user reads (each guarded against one careless edit no test noticed)."""
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs


class _PaddedConcat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.c(torch.cat([F.pad(self.a(x), (0, 0, 0, 0, 2, 0)), self.b(x)], 1))


def test_json_keeps_a_concat_operand_of_repeated_and_single_ids(tmp_path):
    """An operand whose ids repeat in part (two padded constant channels, then one node per channel) comes back
    whole: run-length coded, not as its distinct ids (which dropped a channel)."""
    torch.manual_seed(0)
    g = graphs.build(model=_PaddedConcat(), example_input=torch.randn(1, 2, 3, 3))
    back = graphs.read_json(graphs.write(g, tmp_path / "g.json"))
    assert [ids.tolist() for _, ids in back.concats[0]["parts"]] == [ids.tolist() for _, ids in g.concats[0]["parts"]]
    assert graphs.concat_composition(back)[0]["histogram"] == graphs.concat_composition(g)[0]["histogram"] == {-1: 2, 1: 4}


def test_read_back_layers_keep_their_group(tmp_path):
    """Every layer read back names the group of its units, the first layer's too."""
    torch.manual_seed(0)
    g = graphs.build(model=nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), example_input=torch.randn(1, 3))
    back = graphs.read_json(graphs.write(g, tmp_path / "g.json"))
    assert [l.group for l in back.layers] == [l.group for l in g.layers] == [2, 3]


def test_layer_level_l2_and_out_degree():
    """A layer edge's l2 is the L2 norm of the layer's live weights; a group's out_degree counts the edges leaving it."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    g = graphs.build(model=m, level="layer", example_input=torch.randn(1, 3))
    syn = g.edge_attrs["kind"] == 0
    want = torch.tensor([float(l.weight.detach().double().norm()) for l in (m[0], m[2])], dtype=torch.float64)
    assert torch.allclose(g.edge_attrs["l2"][syn], want, rtol=1e-6)
    assert g.node_attrs["out_degree"].tolist() == torch.bincount(g.src, minlength=g.num_nodes).tolist()
    assert g.node_attrs["in_degree"].tolist() == torch.bincount(g.dst, minlength=g.num_nodes).tolist()


def test_per_ensemble_utility_is_spread_over_its_synapses():
    """A utility given per kernel (ensemble) is shared among its synapses: the unit edges sum to the kernels' sum."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3))
    conn = adaptive.Connectome(net, ensemble="kernel")
    util = {n: torch.ones(conn.granularities[n].ensemble_shape(m.shape)) for n, m in conn.masks.items()}
    g = graphs.build(conn, "unit", utility=util, example_input=torch.randn(1, 2, 6, 6))
    assert float(g.edge_attrs["utility"].sum()) == sum(u.numel() for u in util.values()) == 12


def _wires_into(g, name):
    grp = {x.name: x for x in g.groups}[name]
    w = (g.edge_attrs["kind"] == 1) & (g.dst >= grp.start) & (g.dst < grp.start + grp.count)
    return g.src[w], g.dst[w] - grp.start


def test_local_response_norm_window():
    """LocalResponseNorm(3): channel c reads channels c-1..c+1 (two at the borders)."""
    net = nn.Sequential(nn.Conv2d(1, 4, 1), nn.LocalResponseNorm(3), nn.Conv2d(4, 1, 1))
    g = graphs.build(model=net, example_input=torch.randn(1, 1, 3, 3))
    conv = {x.name: x for x in g.groups}["0"]
    src, dst = _wires_into(g, "_1")
    reads = {c: sorted(int(s) - conv.start for s, d in zip(src, dst) if int(d) == c and int(s) >= conv.start) for c in range(4)}
    assert reads == {0: [0, 1], 1: [0, 1, 2], 2: [1, 2, 3], 3: [2, 3]}


def test_group_norm_statistics_read_contiguous_groups():
    """GroupNorm(2, 4): group 0's statistics read channels 0 and 1, group 1's channels 2 and 3."""
    net = nn.Sequential(nn.Conv2d(1, 4, 1), nn.GroupNorm(2, 4), nn.Conv2d(4, 1, 1))
    g = graphs.build(model=net, example_input=torch.randn(1, 1, 3, 3))
    conv = {x.name: x for x in g.groups}["0"]
    src, dst = _wires_into(g, "_1.statistics")
    assert sorted((int(d), int(s) - conv.start) for s, d in zip(src, dst)) == [(0, 0), (0, 1), (1, 2), (1, 3)]


def test_layer_norm_of_a_sequence_traced_by_elements_has_statistics():
    """LayerNorm(F) on a [B, T, F] input traced element by element normalises each position's features
    together: a statistics junction, not each feature alone."""
    g = graphs.build(model=nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 2)), example_input=torch.randn(1, 3, 4))
    assert [x.op for x in g.groups if x.kind == "junction"].count("statistics") == 1


def test_lstm_initial_state_of_zeros_is_wired_from_no_node():
    """An LSTM given zeros made in the forward as (h0, c0): no wire from the constant node to its state nodes."""
    class R(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(3, 2, batch_first=True)

        def forward(self, x):
            z = torch.zeros(1, x.shape[0], 2)
            return self.rnn(x, (z, z))[0]

    g = graphs.build(model=R(), example_input=torch.randn(1, 4, 3))
    assert int((g.src == 0).sum()) == 0


def test_index_from_an_input_and_the_next_unit_is_the_models():
    """An index computed from an input feature and from the unit numbered right after the inputs is not the
    caller's: each picked element is a junction of the element moved and its own index entry (no 'index' node)."""
    class P(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.v, self.out = nn.Linear(3, 1), nn.Linear(3, 3), nn.Linear(2, 1)

        def forward(self, x):
            idx = (torch.cat([x[:, 2:3], self.fc(x)], 1) > 0).long()
            return self.out(torch.gather(self.v(x), 1, idx))

    g = graphs.build(model=P(), example_input=torch.randn(1, 3))
    assert [(x.name, x.op, x.count) for x in g.groups if x.kind == "junction"] == [("gather", "gather", 2)]


def test_topk_slices_of_the_same_units_in_another_order_share_a_junction():
    """Two top-k slices over the same units, one flipped, rank the same set: one shared rank junction."""
    class K(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.out = nn.Linear(2, 3), nn.Linear(2, 1)

        def forward(self, x):
            h = self.fc(x)
            return self.out(torch.stack([h, h.flip(-1)], 1).topk(1, dim=-1).values.squeeze(-1))

    g = graphs.build(model=K(), example_input=torch.randn(1, 2))
    assert [(x.op, x.count) for x in g.groups if x.kind == "junction"] == [("rank", 1)]


def test_second_call_after_a_failed_rule_is_labelled_again(recwarn):
    """A module called again after an op whose rule failed (followed as unknown) is still its second call: fc#2."""
    class T(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = F.adaptive_avg_pool1d(self.fc(x), 2).repeat(1, 2)  # 2-d: its rule refuses it
            return self.fc(h)

    g = graphs.build(model=T(), example_input=torch.randn(1, 4))
    assert [l.module for l in g.layers] == ["fc", "fc#2"]


def test_loop_over_a_count_read_with_numel_is_traced(recwarn):
    """range(x.numel() // batch) is answered from the example's sizes: traced, the loop unrolled (two calls)."""
    class L(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            for _ in range(x.numel() // x.shape[0] - 1):
                x = torch.relu(self.fc(x)) + x
            return x

    g = graphs.build(model=L(), example_input=torch.randn(1, 3))
    assert g.meta["traced"] and [l.module for l in g.layers] == ["fc", "fc#2"]


def test_folded_conv_keeps_the_dilation_of_its_convolution():
    """A folded bias through a dilated kernel is convolved with that dilation (the conv's own output shape)."""
    from graphs.folded import FoldedConv

    torch.manual_seed(0)
    conv, k, x = nn.Conv2d(2, 3, 3, dilation=2, padding=2), torch.randn(3, 1, 3, 3), torch.randn(1, 2, 5, 5)
    want = conv(x) + F.conv2d(torch.ones(1, 1, 5, 5), k, None, 1, 2, 2)
    assert torch.allclose(FoldedConv(conv, k)(x), want, atol=1e-6)


def test_concat_figure_rows_are_fractions_of_each_concat(tmp_path, monkeypatch):
    """concat_depths.png shows, per concatenation, the fraction of its channels at each depth: rows sum to 1."""
    import matplotlib.axes
    from graphs import figures

    shown = []
    real = matplotlib.axes.Axes.imshow
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", lambda self, X, *a, **k: shown.append(X) or real(self, X, *a, **k))
    torch.manual_seed(0)
    g = graphs.build(model=_PaddedConcat(), example_input=torch.randn(1, 2, 3, 3))
    assert figures.plot_concats(g, str(tmp_path)) is not None
    assert torch.allclose(torch.as_tensor(shown[0]), torch.tensor([[2 / 6, 4 / 6]]))
