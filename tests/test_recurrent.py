"""nn.RNN / nn.LSTM / nn.GRU: their matrices are synapses (masking, training, save/load) and the graph
unrolls one time step of every layer and direction."""
import warnings

import pytest
import torch
from torch import nn

import adaptive
import graphs
from graphs.trace import INPUT, OUTPUT


class Net(nn.Module):
    def __init__(self, cell="LSTM", bidirectional=False, layers=2, proj=0, batch_first=True):
        super().__init__()
        kw = {"proj_size": proj} if proj else {}
        self.batch_first = batch_first
        self.emb = nn.Linear(6, 8)
        self.rnn = getattr(nn, cell)(8, 5, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, **kw)
        self.head = nn.Linear((proj or 5) * (2 if bidirectional else 1), 3)

    def forward(self, x):  # x: [B, L, 6]
        y, _ = self.rnn(self.emb(x if self.batch_first else x.transpose(0, 1)))
        return self.head(y[:, -1] if self.batch_first else y[-1])


CASES = [("LSTM", False, 0, True), ("GRU", True, 0, False), ("RNN", True, 0, True), ("LSTM", True, 3, True)]


def _connectome(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no recurrent matrix is left dense with a warning
        return adaptive.Connectome(model)


def test_every_matrix_is_a_synapse_layer():
    c = _connectome(Net("LSTM", bidirectional=True, proj=3))
    rnn = sorted(n for n in c.layers if n.startswith("rnn."))
    expect = sorted(f"rnn.weight_{w}_l{k}{s}" for w in ("ih", "hh", "hr") for k in (0, 1) for s in ("", "_reverse"))
    assert rnn == expect
    assert c.layers["rnn.weight_hh_l1_reverse"].shape == (20, 3)  # 4 gates x 5 hidden, reading the projection
    assert "rnn.bias_ih_l0" not in c.layers


@pytest.mark.parametrize("cell,bi,proj,batch_first", CASES)
def test_training_keeps_pruned_recurrent_weights_zero(cell, bi, proj, batch_first):
    torch.manual_seed(0)
    model = Net(cell, bi, proj=proj, batch_first=batch_first)
    conn = _connectome(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctrl = adaptive.Controller(conn, opt, policy="set", density=0.4, budget="uniform", update_every=3, end_step=30)
    x, y = torch.randn(4, 7, 6), torch.randint(0, 3, (4,))
    for _ in range(10):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        ctrl.step()
    for name, m in conn.masks.items():
        w = dict(model.named_parameters())[name]
        assert bool((w[~m.bool()] == 0).all()), name
    vanilla = Net(cell, bi, proj=proj, batch_first=batch_first)
    vanilla.load_state_dict(conn.dense_state_dict())
    with torch.no_grad():
        assert torch.equal(vanilla(x), model(x))


def test_save_and_load_keep_recurrent_masks(tmp_path):
    model = Net("GRU", bidirectional=True)
    conn = _connectome(model)
    gen = torch.Generator().manual_seed(0)
    conn.set_masks({n: torch.rand(m.shape, generator=gen) < 0.5 for n, m in conn.masks.items()})
    conn.apply()
    conn.save(tmp_path / "c.safetensors")
    fresh = Net("GRU", bidirectional=True)
    fresh.load_state_dict(model.state_dict())
    assert adaptive.Connectome.load(tmp_path / "c.safetensors", fresh).mask_hash() == conn.mask_hash()


@pytest.mark.parametrize("cell,bi,proj,batch_first", CASES)
def test_graph_unrolls_one_step(cell, bi, proj, batch_first):
    model = Net(cell, bi, proj=proj, batch_first=batch_first)
    conn = _connectome(model)
    gen = torch.Generator().manual_seed(1)
    conn.set_masks({n: torch.rand(m.shape, generator=gen) < 0.5 for n, m in conn.masks.items()})
    conn.apply()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # followed, not assumed all-to-all
        g = graphs.build(conn, example_input=torch.randn(2, 7, 6))
    assert g.live_synapses() == conn.num_live()
    lay = {l.module: l for l in g.layers}
    emb = g.groups[lay["emb"].group]
    gates, hidden = {"LSTM": 4, "GRU": 3}.get(cell, 1), 5
    # layer 0 reads the embedding's units; its recurrent matrix reads state nodes (kind input)
    assert set(lay["rnn.l0.ih"].in_src.tolist()) == set(range(emb.start, emb.start + emb.count))
    state = lay["rnn.l0.hh"].in_src
    assert bool((g.node_attrs["kind"][state] == INPUT).all()) and state.numel() == (proj or hidden)
    # layer 1 reads the outputs of both directions of layer 0
    width = (proj or hidden) * (2 if bi else 1)
    assert lay["rnn.l1.ih"].in_src.numel() == width and lay["rnn.l1.ih"].shape == (gates * hidden, width)
    # the head reads the last layer's outputs; every path from the input runs through both layers
    depth = g.node_attrs["depth_max"]
    out = g.node_attrs["kind"] == OUTPUT
    assert int(depth[out].max()) == 4 + (2 if proj else 0)  # emb, two recurrent layers (+ projections), head
