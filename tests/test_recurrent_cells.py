"""nn.RNNCell / nn.LSTMCell / nn.GRUCell called once per step in a loop of the model's own: their matrices
(weight_ih, weight_hh) are synapses like a recurrent layer's (they were left dense with a warning), kept at
exactly 0 where pruned through training, saved and loaded; the graph has each call's units, checked by
perturbing inputs and initial states of a pruned model."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs
from _training import train_steps

CELLS = ["RNNCell", "GRUCell", "LSTMCell"]
GATES = {"RNNCell": 1, "GRUCell": 3, "LSTMCell": 4}


class Loop(nn.Module):
    """A recurrent loop of the model's own: the cell called once per step, then a classifier."""

    def __init__(self, cell="LSTMCell", steps=4, head=True):
        super().__init__()
        self.steps = steps
        self.cell = getattr(nn, cell)(6, 5)
        self.head = nn.Linear(5, 3) if head else None

    def forward(self, x, h=None):  # x: [B, steps, 6]; h: the initial state ((h, c) for an LSTMCell)
        for t in range(self.steps):
            h = self.cell(x[:, t], h)
        h = h[0] if isinstance(self.cell, nn.LSTMCell) else h
        return h if self.head is None else self.head(h)


def _connectome(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no cell matrix is left dense with a warning
        return adaptive.Connectome(model, **kw)


def _reference(model, masks, x):
    """The loop written out in plain PyTorch from weight * mask (zero initial state)."""
    cell = model.cell
    w_ih, w_hh = cell.weight_ih * masks["cell.weight_ih"], cell.weight_hh * masks["cell.weight_hh"]
    h = c = x.new_zeros(x.shape[0], cell.hidden_size)
    for t in range(model.steps):
        gi, gh = F.linear(x[:, t], w_ih, cell.bias_ih), F.linear(h, w_hh, cell.bias_hh)
        if isinstance(cell, nn.RNNCell):
            h = torch.tanh(gi + gh)
        elif isinstance(cell, nn.GRUCell):
            (ir, iz, in_), (hr, hz, hn) = gi.chunk(3, 1), gh.chunk(3, 1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            h = (1 - z) * torch.tanh(in_ + r * hn) + z * h
        else:
            i, f, g, o = (gi + gh).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
    return F.linear(h, model.head.weight * masks["head.weight"], model.head.bias)


@pytest.mark.parametrize("cell", CELLS)
def test_the_cell_matrices_are_synapse_layers(cell):
    conn = _connectome(Loop(cell))
    G = GATES[cell]
    assert {n: l.shape for n, l in conn.layers.items()} == {
        "cell.weight_ih": (G * 5, 6), "cell.weight_hh": (G * 5, 5), "head.weight": (3, 5)}
    assert conn.layers["cell.weight_hh"].out_units == G * 5 and conn.layers["cell.weight_hh"].in_units == 5
    # a Bilinear beside it is still named, and the message lists the cells among what is pruned
    model = nn.ModuleDict({"cell": getattr(nn, cell)(4, 4), "bi": nn.Bilinear(3, 3, 2)})
    with pytest.warns(UserWarning, match=r"bi.weight \(Bilinear\).*nn.RNNCell/LSTMCell/GRUCell matrices"):
        assert list(adaptive.Connectome(model).layers) == ["cell.weight_ih", "cell.weight_hh"]


@pytest.mark.parametrize("cell,policy,optim", [("LSTMCell", "rigl", "sgd"), ("GRUCell", "utility", "adam"),
                                               ("RNNCell", "rigl", "adam")])
def test_dst_keeps_pruned_cell_weights_zero_and_forward_reads_them(cell, policy, optim):
    torch.manual_seed(0)
    model = Loop(cell)
    conn = _connectome(model)
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3) if optim == "sgd"
           else torch.optim.Adam(model.parameters(), lr=1e-2))
    kw = {"estimator": "taylor"} if policy == "utility" else {}
    ctrl = adaptive.Controller(conn, opt, policy=policy, density=0.5, budget="erk", update_every=2, end_step=20,
                               edit_fraction=0.5, **kw)
    start = {n: m.clone() for n, m in conn.masks.items()}
    x, y = torch.randn(8, 4, 6), torch.randint(0, 3, (8,))
    train_steps(model, opt, ctrl, x, y, 8)
    params = dict(model.named_parameters())
    for name in ("cell.weight_ih", "cell.weight_hh"):
        m = conn.masks[name]
        assert 0 < int(m.sum()) < m.numel(), name  # pruned, not emptied
        assert bool((params[name][~m] == 0).all()), name  # momentum, weight decay and Adam revived nothing
    assert any(not torch.equal(start[n], conn.masks[n]) for n in ("cell.weight_ih", "cell.weight_hh"))  # edited
    with torch.no_grad():
        assert torch.allclose(model(x), _reference(model, conn.masks, x), atol=1e-6)
        plain = Loop(cell)
        plain.load_state_dict(conn.dense_state_dict())
        assert torch.equal(plain(x), model(x))


@pytest.mark.parametrize("cell", CELLS)
def test_neuron_granularity_prunes_whole_gate_rows(cell):
    torch.manual_seed(0)
    conn = _connectome(Loop(cell), ensemble="neuron")
    adaptive.Controller(conn, policy="magnitude", density=0.5, budget="erk")
    for name in ("cell.weight_ih", "cell.weight_hh"):
        m = conn.masks[name]
        rows = m.any(1)
        assert bool((m.all(1) | ~rows).all()), name  # each gate row kept or pruned whole
        assert 0 < int(rows.sum()) < m.shape[0], name
        assert bool((conn.params[name][~rows] == 0).all())


@pytest.mark.parametrize("cell", CELLS)
def test_save_and_load_keep_cell_masks(cell, tmp_path):
    model = Loop(cell)
    conn = _connectome(model)
    gen = torch.Generator().manual_seed(0)
    conn.set_masks({n: torch.rand(m.shape, generator=gen) < 0.5 for n, m in conn.masks.items()})
    conn.apply()
    conn.save(tmp_path / "c.safetensors")
    fresh = Loop(cell)
    fresh.load_state_dict(model.state_dict())
    loaded = adaptive.Connectome.load(tmp_path / "c.safetensors", fresh)
    assert loaded.mask_hash() == conn.mask_hash()
    assert all(torch.equal(loaded.masks[n], conn.masks[n]) for n in ("cell.weight_ih", "cell.weight_hh"))


def _reached(g, sources):
    """Bool [len(sources), nodes]: the nodes a path of the graph's edges reaches from each source."""
    adj = torch.zeros(g.num_nodes, g.num_nodes)
    adj[g.src, g.dst] = 1.0
    reach = torch.zeros(len(sources), g.num_nodes, dtype=torch.bool)
    reach[torch.arange(len(sources)), torch.as_tensor(sources)] = True
    while True:
        more = reach | ((reach.float() @ adj) > 0)
        if torch.equal(more, reach):
            return reach
        reach = more


def _changed(model, inputs, which, index):
    """Bool per output unit: does adding 1 to feature ``index`` of input ``which`` (``inputs`` flattened,
    batch first) change it, on some sample?"""
    flat = list(inputs)
    t = flat[which].clone()
    t.view(t.shape[0], -1)[:, index] += 1.0
    flat[which] = t
    with torch.no_grad():
        return (_call(model, flat) - _call(model, inputs)).abs().amax(0) > 0


def _call(model, flat):
    x, *state = flat
    return model(x, None if not state else state[0] if len(state) == 1 else tuple(state))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("state", [True, False])
def test_the_graph_of_a_cell_loop_matches_perturbation(cell, state):
    torch.manual_seed(0)
    model = Loop(cell, steps=3, head=False).double()
    conn = _connectome(model)
    gen = torch.Generator().manual_seed(1)
    masks = {n: torch.rand(m.shape, generator=gen) < 0.5 for n, m in conn.masks.items()}
    masks["cell.weight_ih"][1] = False  # a gate row reading no input
    masks["cell.weight_ih"][:, 4] = False  # an input feature no gate reads
    masks["cell.weight_hh"][:, 2] = False  # a hidden unit no gate reads (a GRU's z * h still passes it on)
    if cell == "LSTMCell":  # an input feature only the forget gate reads: at the first step without a state, f * 0
        masks["cell.weight_ih"][:, 5] = False
        masks["cell.weight_ih"][5:10, 5] = True
    conn.set_masks(masks)
    conn.apply()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    hidden = [torch.randn(2, 5, dtype=torch.float64) for _ in range(2 if cell == "LSTMCell" else 1)] if state else []
    inputs = [x] + hidden
    example = (x, hidden[0] if len(hidden) == 1 else tuple(hidden)) if state else x
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # followed, not assumed all-to-all; a cell called per step is no news
        g = graphs.build(conn, example_input=example)
    assert g.live_synapses() == conn.num_live()
    labels = [l.module for l in g.layers]
    assert labels == ["cell.ih", "cell.hh", "cell.ih#2", "cell.hh#2", "cell.ih#3", "cell.hh#3"]
    groups = [gr for gr in g.groups if gr.kind == "input"]
    assert [gr.count for gr in groups] == [t[0].numel() for t in inputs]  # x: 3 steps x 6 features; h (and c): 5
    out = next(gr for gr in g.groups if gr.kind == "output")
    for which, gr in enumerate(groups):
        reach = _reached(g, list(range(gr.start, gr.start + gr.count)))[:, out.start: out.start + out.count]
        want = torch.stack([_changed(model, inputs, which, i) for i in range(gr.count)])
        assert torch.equal(reach, want), (gr.name, reach.int(), want.int())
    # graphs.compact keeps the cell whole (and its readers and writers), computing what the masked model does
    small = graphs.compact(model, conn, example_input=example)
    assert small.cell.weight_ih.shape == model.cell.weight_ih.shape
    with torch.no_grad():
        assert torch.allclose(_call(small, inputs), _call(model, inputs))


def test_a_cell_first_layer_is_guessed_a_sequence_of_steps():
    model = Loop("GRUCell", head=True)
    conn = _connectome(model)
    g = graphs.build(conn)  # no example input: 16 batch-first steps of the cell's input size
    assert [l.module for l in g.layers][-3:] == ["cell.ih#4", "cell.hh#4", "head"]
    assert g.live_synapses() == conn.num_live()


def test_a_bare_cell_is_traced_as_one_call():
    conn = _connectome(nn.LSTMCell(3, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(conn, example_input=(torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 4))))
    assert [l.module for l in g.layers] == ["ih", "hh"] and g.live_synapses() == conn.num_live()
    assert [gr.name for gr in g.groups if gr.kind == "output"] == ["output0", "output1"]  # h and c


class ZeroStart(nn.Module):
    """A loop that starts from a zero state of its own making (``x.new_zeros``), or from none."""

    def __init__(self, cell, steps, zeros, **kw):
        super().__init__()
        self.steps, self.zeros = steps, zeros
        self.cell = getattr(nn, cell)(4, 5, **kw)

    def forward(self, x, h=None):
        if self.zeros:
            h = x.new_zeros(x.shape[0], 5)
            h = (h, torch.zeros_like(h)) if isinstance(self.cell, nn.LSTMCell) else h
        for t in range(self.steps):
            h = self.cell(x[:, t], h)
        return h[0] if isinstance(self.cell, nn.LSTMCell) else h


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("cell,rows,kw", [("LSTMCell", slice(5, 10), {}),  # the forget gate: f * c
                                          ("GRUCell", slice(0, 5), {"bias": False})])  # the reset gate: r * (W_hn h)
def test_a_gate_that_multiplies_a_zero_state_passes_nothing(cell, rows, kw, zeros, steps):
    """An input feature that only the gate rows ``rows`` read reaches the output only where the state that gate
    multiplies is not zero: an LSTM's f times the old cell state, a bias-free GRU's r times ``W_hn h``. A state
    the model makes itself from zeros is as zero as none (the graph joined the gate all the same)."""
    torch.manual_seed(0)
    model = ZeroStart(cell, steps, zeros, **kw).double()
    conn = _connectome(model)
    masks = {n: torch.ones_like(m) for n, m in conn.masks.items()}
    masks["cell.weight_ih"][:, 3] = False
    masks["cell.weight_ih"][rows, 3] = True
    conn.set_masks(masks)
    conn.apply()
    x = torch.randn(16, steps, 4, dtype=torch.float64)
    g = graphs.build(conn, example_input=x)
    inp = next(gr for gr in g.groups if gr.kind == "input")
    out = next(gr for gr in g.groups if gr.kind == "output")
    for t in range(steps):
        reach = _reached(g, [inp.start + 4 * t + 3])[0, out.start: out.start + out.count]
        assert torch.equal(reach, _changed(model, [x], 0, 4 * t + 3)), t
    assert bool(reach.any()) == (steps == 2)  # the first step's feature passes through the gate at the second


def test_a_state_saved_before_cells_were_synapses_is_refused_with_the_way_to_resume_it():
    # what an older version saved (a --resume checkpoint's connectome): the cell was dense then, outside it
    old = adaptive.Connectome(Loop("GRUCell"), exclude=["cell"])
    sd = old.state_dict()
    with pytest.raises(KeyError, match=r"no mask for \['cell.weight_ih', 'cell.weight_hh'\].*recurrent cells.*"
                                       r"exclude=\['cell'\]"):
        _connectome(Loop("GRUCell")).load_state_dict(sd)
    adaptive.Connectome(Loop("GRUCell"), exclude=["cell"]).load_state_dict(sd)  # as the message says
