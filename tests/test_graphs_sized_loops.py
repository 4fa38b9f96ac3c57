"""A loop bounded by the input's shape (``for t in range(x.shape[1])``, ``range(x.size(1))``, ``for xt in
x.unbind(1)``), which fx alone cannot trace (``range()`` of a proxy): graphs traces it with the example input's
sizes, each call of the cell a step of its own, checked by perturbing inputs and initial states, and the graph
the same as that of the loop written with a fixed count. A question about the data still falls back."""
import warnings

import pytest
import torch
from torch import nn

import adaptive
import graphs
from _graph_edges import edge_set
from graphs.trace import trace
from test_recurrent_cells import Loop, _changed, _reached

HOW = ["shape", "size", "unbind", "len"]


class SizedLoop(nn.Module):
    """Loop (a fixed count of steps) with the count read from the input instead."""

    def __init__(self, cell, how, head=False):
        super().__init__()
        self.how = how
        self.cell = getattr(nn, cell)(6, 5)
        self.head = nn.Linear(5, 3) if head else None

    def forward(self, x, h=None):  # x: [B, T, 6]
        if self.how == "unbind":
            for xt in x.unbind(1):
                h = self.cell(xt, h)
        else:
            steps = {"shape": lambda: x.shape[1], "size": lambda: int(x.size(1)), "len": lambda: len(x[0])}[self.how]()
            for t in range(steps):
                h = self.cell(x[:, t], h)
        h = h[0] if isinstance(self.cell, nn.LSTMCell) else h
        return h if self.head is None else self.head(h)


def _masked(model):
    conn = adaptive.Connectome(model)
    gen = torch.Generator().manual_seed(1)
    conn.set_masks({n: torch.rand(m.shape, generator=gen) < 0.5 for n, m in conn.masks.items()})
    conn.apply()
    return conn


def _build(conn, example):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # traced, not module order with a warning
        return graphs.build(conn, example_input=example)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("cell,state", [("GRUCell", False), ("LSTMCell", True), ("RNNCell", True)])
def test_a_loop_over_the_input_s_steps_matches_perturbation(cell, state, how):
    torch.manual_seed(0)
    model = SizedLoop(cell, how).double()
    conn = _masked(model)
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    hidden = [torch.randn(2, 5, dtype=torch.float64) for _ in range(2 if cell == "LSTMCell" else 1)] if state else []
    inputs = [x] + hidden
    example = (x, hidden[0] if len(hidden) == 1 else tuple(hidden)) if state else x
    g = _build(conn, example)
    assert [l.module for l in g.layers] == ["cell.ih", "cell.hh", "cell.ih#2", "cell.hh#2", "cell.ih#3", "cell.hh#3"]
    assert g.live_synapses() == conn.num_live()
    groups = [gr for gr in g.groups if gr.kind == "input"]
    out = next(gr for gr in g.groups if gr.kind == "output")
    for which, gr in enumerate(groups):
        reach = _reached(g, list(range(gr.start, gr.start + gr.count)))[:, out.start: out.start + out.count]
        want = torch.stack([_changed(model, inputs, which, i) for i in range(gr.count)])
        assert torch.equal(reach, want), (gr.name, reach.int(), want.int())
    # the graph of the loop written with the example's count of steps
    fixed = Loop(cell, steps=3, head=False).double()
    fixed.load_state_dict(model.state_dict())
    assert edge_set(_build(_masked(fixed), example)) == edge_set(g)


@pytest.mark.parametrize("how", HOW)
def test_the_steps_are_the_example_s(how):
    model = SizedLoop("GRUCell", how, head=True)
    g = _build(adaptive.Connectome(model), torch.randn(4, 5, 6))
    assert [l.module for l in g.layers][-3:] == ["cell.ih#5", "cell.hh#5", "head"]
    guessed = graphs.build(adaptive.Connectome(model))  # no example: 16 guessed steps (as for a fixed count)
    assert [l.module for l in guessed.layers][-3:] == ["cell.ih#16", "cell.hh#16", "head"]


class SequenceFirst(nn.Module):
    """Steps on axis 0, the batch on axis 1 ([T, B, F]); a zero state sized from the batch as a number."""

    def __init__(self, steps=None):
        super().__init__()
        self.steps = steps
        self.cell = nn.GRUCell(6, 5)

    def forward(self, x):
        h = torch.zeros(int(x.shape[1]), 5, dtype=x.dtype) if x.dim() == 3 else None
        for t in range(self.steps or x.shape[0]):
            h = self.cell(x[t], h)
        return h


@pytest.mark.parametrize("input_nodes", ["elements", "channels"])
def test_a_sequence_first_loop_keeps_its_batch_axis(input_nodes):
    torch.manual_seed(0)
    model, fixed = SequenceFirst(), SequenceFirst(steps=3)
    fixed.load_state_dict(model.state_dict())
    x = torch.randn(3, 2, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = graphs.build(_masked(model), example_input=x, batch_axis=1, input_nodes=input_nodes)
        b = graphs.build(_masked(fixed), example_input=x, batch_axis=1, input_nodes=input_nodes)
    assert edge_set(a) == edge_set(b) and len(a.layers) == 6  # 3 steps, specialised on T only
    if input_nodes == "elements":  # one sample's [T, F] elements: the batch on axis 1, as given
        assert next(gr for gr in a.groups if gr.kind == "input").count == 18


class DataLoop(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        for _ in range(int(x.abs().sum() > 0) + 1):  # a count read from the values, not the shape
            x = self.fc(x)
        return x


def test_a_loop_counted_from_the_data_still_falls_back():
    with pytest.warns(UserWarning, match="falling back to module order"):
        tr = trace(DataLoop(), torch.randn(2, 6))
    assert not tr.traced and "not 'Proxy'" in tr.reason  # fx's own reason


def test_compact_still_needs_a_forward_fx_traces_alone():
    """Its copy runs on inputs of any length: a loop unrolled over the example's steps would be wrong for others."""
    model = SizedLoop("GRUCell", "shape", head=True)
    with pytest.raises(RuntimeError, match="compact needs an fx-traceable model"):
        graphs.compact(model, example_input=torch.randn(2, 3, 6))


class DataCount(nn.Module):
    """A branch or a loop whose count is a shape that only the values tell (a nonzero's rows, a masked selection's
    length), or a random draw's: fx alone refuses them, and the example's answer holds for that example only."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x):
        count = {"len": lambda: len((x > 0).nonzero()), "shape": lambda: x.nonzero().shape[0],
                 "numel": lambda: torch.masked_select(x, x > 0).numel(), "iter": lambda: sum(1 for _ in x[x > 0]),
                 "arange": lambda: torch.arange((x > 0).sum()).shape[0],
                 "random": lambda: int(torch.randn(x.shape[0]).sum() > 0)}[self.how]()
        for _ in range(min(count, 2)):
            x = self.b(x)
        return self.a(x)


@pytest.mark.parametrize("how", ["len", "shape", "numel", "iter", "arange", "random"])
def test_a_count_only_the_values_tell_falls_back(how):
    with pytest.warns(UserWarning, match="falling back to module order"):
        tr = trace(DataCount(how), torch.randn(2, 6))
    assert not tr.traced  # on fx's reason


class InPlace(nn.Module):
    """The shape read after an in-place op changed it: x is [1, B, 6] then, one step."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(6, 5)

    def forward(self, x):
        x.unsqueeze_(0)
        h = None
        for t in range(x.shape[0]):
            h = self.cell(x[t], h)
        return h


def test_a_shape_read_after_an_in_place_op_is_the_changed_one():
    x = torch.randn(3, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # graphs does not know unsqueeze_'s flow
        tr = trace(InPlace(), x)
    assert tr.traced and [l.module for l in tr.layers] == ["cell.ih", "cell.hh"]  # as InPlace()(x) runs: one step
