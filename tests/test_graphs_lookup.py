"""Embedding lookups (nn.Embedding, F.embedding, table[idx], index_select) are followed: the table is no
synapse layer (a Connectome leaves embeddings dense), its output features are input nodes (op "lookup")
wired from the token positions. They were unknown ops: every token position fed one junction that
fed every channel of the residual stream, with a warning."""
import os
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs
from graphs.graph import EDGE_SYNAPSE

torch.set_num_threads(1)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _graph_edges import edge_set, wires  # noqa: E402

V, T, E = 11, 5, 8


class TinyLM(nn.Module):
    """Token and positional embeddings, a pre-norm MLP block, a head: the lookup written four ways."""

    def __init__(self, how="module"):
        super().__init__()
        self.how = how
        self.tok, self.pos = nn.Embedding(V, E), nn.Embedding(T, E)
        self.ln, self.fc1, self.fc2, self.head = nn.LayerNorm(E), nn.Linear(E, 16), nn.Linear(16, E), nn.Linear(E, V)

    def lookup(self, idx):
        w = self.tok.weight
        if self.how == "module":
            return self.tok(idx)
        if self.how == "functional":
            return F.embedding(idx, w)
        if self.how == "getitem":
            return w[idx]
        # the method: importing torch_geometric replaces torch.index_select by a Python function fx traces into
        return w.index_select(0, idx.flatten()).view(idx.shape[0], idx.shape[1], E)

    def forward(self, idx):
        h = self.lookup(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        h = h + self.fc2(torch.relu(self.fc1(self.ln(h))))
        return self.head(h)


@pytest.mark.parametrize("how", ["module", "functional", "getitem", "index_select"])
def test_an_embedding_is_a_lookup_whose_features_are_input_nodes(how):
    torch.manual_seed(0)
    conn = adaptive.Connectome(TinyLM(how))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unknown op, no layer off the data path
        g = graphs.build(conn, example_input=torch.randint(0, V, (2, T)))
    groups = {x.name: x for x in g.groups}
    tok, pos = groups["tok"], groups["pos"]
    assert (tok.kind, tok.op, tok.count) == ("input", "lookup", E)
    assert (pos.kind, pos.op, pos.count) == ("input", "lookup", E)
    assert [l.module for l in g.layers] == ["fc1", "fc2", "head"]  # the tables are no synapse layers
    assert g.live_synapses() == conn.num_live()
    edges = edge_set(g)
    # every token position feeds the index node, which feeds every column of the token table; the
    # positional table's index is a constant (arange): nothing feeds it
    assert {e for e in edges if e[1].startswith("tok.index")} == wires("idx", "tok.index", [(t, 0) for t in range(T)])
    assert {e for e in edges if e[1].startswith("tok:")} == wires("tok.index", "tok", [(0, c) for c in range(E)])
    assert not any(e[1].startswith("pos:") for e in edges)
    # the residual stream's channel c is the sum of column c of both tables
    add = next(x.name for x in g.groups if x.kind == "junction" and x.op == "add")
    assert {e for e in edges if e[1].startswith(add + ":")} == (
        wires("tok", add, [(c, c) for c in range(E)]) | wires("pos", add, [(c, c) for c in range(E)]))
    s = graphs.summary(g)
    assert s["dead"]["dead"] == 0 and s["outputs_reachable"] == V
    assert g.node_attrs["depth_max"][g.node_attrs["kind"] == 4].max() == 3  # tables at depth 0, then 3 layers


def test_index_select_on_traced_data_is_a_shape_op():
    """x.index_select(-1, perm) permutes the channels: b's input channel c reads a's unit perm[c]."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
            self.register_buffer("perm", torch.tensor([2, 0, 3, 1]))

        def forward(self, x):
            return self.b(self.a(x).index_select(-1, self.perm))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(model=Net(), level="unit", example_input=torch.randn(2, 3))
    names = g.node_names()
    assert [names[i] for i in g.layers[1].in_src.tolist()] == ["a:2", "a:0", "a:3", "a:1"]
    assert int((g.edge_attrs["kind"] == EDGE_SYNAPSE).sum()) == 12 + 8


def test_a_table_looked_up_three_times_has_nodes_for_each_lookup():
    """Labels count the lookups, not the "NAME#k.index" junctions (the third lookup was "emb#4")."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(V, E), nn.Linear(E, 3)

        def forward(self, a, b, c):
            return self.fc(self.emb(a) * self.emb(b) * self.emb(c))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(model=Net(), level="unit", example_input=(torch.randint(0, V, (2, T)),) * 3)
    looked = [(x.name, x.count) for x in g.groups if x.op == "lookup" and x.kind == "input"]
    assert looked == [("emb", E), ("emb#2", E), ("emb#3", E)]
    assert [x.name for x in g.groups if x.op == "lookup" and x.kind == "junction"] == [
        "emb.index", "emb#2.index", "emb#3.index"]


@pytest.mark.parametrize("how", ["w[:, idx]", "w[..., idx]", "index_select"])
def test_a_table_looked_up_along_its_last_axis_has_its_rows_as_nodes(how):
    """w[:, idx] picks columns of a (E, V) table: its E rows are the features, as for index_select(-1, idx).
    getitem took the V columns for nodes: each of fc's input channels became a junction of the
    picked columns."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.fc = nn.Parameter(torch.randn(E, V)), nn.Linear(E, 3)

        def forward(self, idx):
            if how == "index_select":
                cols = self.w.index_select(-1, idx.flatten()).view(E, idx.shape[0], idx.shape[1])
            else:
                cols = self.w[:, idx] if how == "w[:, idx]" else self.w[..., idx]
            return self.fc(cols.permute(1, 2, 0))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(model=Net(), level="unit", example_input=torch.randint(0, V, (2, T)))
    assert [(x.name, x.count) for x in g.groups if x.op == "lookup" and x.kind == "input"] == [("w", E)]
    names = g.node_names()
    assert [names[i] for i in g.layers[0].in_src.tolist()] == [f"w:{c}" for c in range(E)]
