"""A module called more than once in one forward (weight sharing) has its units at every call: each later
call is a layer of its own, labelled NAME#k, reading what that call reads and sharing the weight (its
synapses have edges at every call and count once). The graph used to keep the first call only: the
second call's output stood for the first's units, its input edges were lost."""
import os
import sys
import warnings

import pytest
import torch
from torch import nn

import adaptive
import graphs
from graphs.graph import EDGE_SYNAPSE

torch.set_num_threads(1)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _graph_edges import edge_set, full  # noqa: E402


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.b(self.a(torch.relu(self.a(x))))


@pytest.mark.parametrize("level", ["synapse", "unit"])
def test_a_linear_called_twice_has_units_at_both_calls(level):
    torch.manual_seed(0)
    conn = adaptive.Connectome(Twice())
    conn.set_masks({n: torch.rand(m.shape) < 0.6 for n, m in conn.masks.items()})
    with pytest.warns(UserWarning, match=r"node 'a_1' uses weights used before in the forward \('a.weight': a module "
                                         r"called more than once\).*this call's as 'a#2'") as rec:
        g = graphs.build(conn, level=level, example_input=torch.randn(2, 4))
    assert not any("tied" in str(w.message) for w in rec)  # said once, by the trace
    assert [(l.module, l.param) for l in g.layers] == [("a", "a.weight"), ("a#2", "a.weight"), ("b", "b.weight")]
    assert g.live_synapses() == conn.num_live()
    live_a = int(conn.masks["a.weight"].sum())
    assert int((g.edge_attrs["kind"] == EDGE_SYNAPSE).sum() if level == "synapse"
               else g.edge_attrs["count"].sum()) == conn.num_live() + live_a
    if level == "unit":  # the second call reads the first's units, b reads the second's
        live = {(f"a:{i}", f"a#2:{o}", EDGE_SYNAPSE) for o, i in conn.masks["a.weight"].nonzero().tolist()}
        assert {e for e in edge_set(g) if e[1].startswith("a#2:")} == live
        assert {e[0].split(":")[0] for e in edge_set(g) if e[1].startswith("b:")} == {"a#2"}


def test_attention_and_a_recurrent_layer_called_twice_are_followed():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.rnn, self.head = nn.GRU(8, 8, batch_first=True), nn.Linear(8, 3)

        def forward(self, x):
            h = self.attn(x, x, x)[0]
            h = self.attn(h, h, h)[0]
            return self.head(self.rnn(self.rnn(h)[0])[0])

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        g = graphs.build(model=Net(), level="unit", example_input=torch.randn(2, 5, 8))
    messages = [str(w.message) for w in rec]
    assert not any("cannot follow" in m for m in messages)
    assert sum("called more than once" in m for m in messages) == 2
    labels = [l.module for l in g.layers]
    assert labels[:8] == ["attn.q", "attn.k", "attn.v", "attn.out_proj",
                          "attn.q#2", "attn.k#2", "attn.v#2", "attn.out_proj#2"]
    assert "rnn.l0.ih#2" in labels and "rnn.l0.hh#2" in labels
    edges = edge_set(g)
    # the second call's queries read the first call's output projection (the residual-free chain)
    assert full("attn.out_proj", "attn.q#2", 8, 8) <= edges


def test_call_labels_are_counted_per_weight_not_by_scanning_every_layer_before(monkeypatch):
    """Each layer's NAME#k label counted the earlier layers of its weight by scanning every layer
    recorded before it: quadratic in the layers (a 4,000-layer MLP spent a second there). The book now
    keeps a count per (weight, rows), brought up to date as layers are appended and undone by restore."""
    from graphs.book import _Book
    from graphs.trace_types import LayerFlow

    scanned = []

    class Layers(list):
        def __iter__(self):
            scanned.append(len(self))
            return super().__iter__()

    real_init = _Book.__init__

    def init(self):
        real_init(self)
        self.layers = Layers()

    monkeypatch.setattr(_Book, "__init__", init)
    net = nn.Sequential(*[nn.Linear(3, 3) for _ in range(60)])
    g = graphs.build(adaptive.Connectome(net), example_input=torch.randn(2, 3))
    assert [l.module for l in g.layers] == [str(i) for i in range(60)]
    assert sum(scanned) < 10 * 60, f"{sum(scanned)} layer records read to trace 60 layers"

    book = _Book()
    add = lambda p, rows=None: book.layers.append(LayerFlow(p, p, 0, "linear", (1, 1), 1, torch.zeros(1), "", rows))
    add("a"), add("a", (0, 1))
    assert (book.uses("a"), book.uses("a", (0, 1)), book.uses("b")) == (1, 1, 0)
    snap = book.snapshot()
    add("a"), add("b")
    assert (book.uses("a"), book.uses("b")) == (2, 1)
    add("a")
    book.restore(snap)  # a rule that failed halfway: its layers are not counted
    assert (book.uses("a"), book.uses("b"), book.uses("a", (0, 1))) == (1, 0, 1)
