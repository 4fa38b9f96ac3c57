"""torch_geometric's layers (GCNConv, GATConv, SAGEConv) hold their weights in torch_geometric's own ``Linear``
(``[out, in]``, read by ``F.linear``), no ``nn.Linear``: those weights were left dense, with a warning calling
them "parameters of your own module(s)" and advising to rewrite the layer, so a GNN's connectome held its head
alone. They are synapses now: masked in the forward, exact zeros after every optimizer step, saved and loaded,
edited mask-only, and counted in the graph (a MessagePassing layer, which torch.fx cannot trace, is chained in
module order, with the warning saying so)."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs

pyg = pytest.importorskip("torch_geometric.nn")

N = 10
EDGES = torch.randint(0, N, (2, 30), generator=torch.Generator().manual_seed(3))


class GNN(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.c1, self.c2, self.head = conv(5, 8), conv(8, 8), nn.Linear(8, 3)

    def forward(self, inputs):
        x, edges = inputs
        return self.head(F.relu(self.c2(F.relu(self.c1(x, edges)), edges)))


def _batches(n=3):
    g = torch.Generator().manual_seed(0)
    return [((torch.randn(N, 5, generator=g), EDGES), torch.randint(0, 3, (N,), generator=g)) for _ in range(n)]


LAYERS = {"GCNConv": ["c1.lin.weight", "c2.lin.weight"], "GATConv": ["c1.lin.weight", "c2.lin.weight"],
          "SAGEConv": ["c1.lin_l.weight", "c1.lin_r.weight", "c2.lin_l.weight", "c2.lin_r.weight"]}


@pytest.mark.parametrize("conv", list(LAYERS))
def test_a_gnn_layers_weights_are_synapses_masked_in_the_forward_and_kept_at_zero(conv):
    torch.manual_seed(0)
    model = GNN(getattr(pyg, conv))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "stay dense" warning
        conn = adaptive.Connectome(model)
    assert list(conn.layers) == LAYERS[conv] + ["head.weight"]
    assert all(conn.layers[n].kind == "linear" for n in conn.layers)
    ref = copy.deepcopy(model)
    conn.set_masks({n: torch.rand(m.shape, generator=torch.Generator().manual_seed(1)) < 0.5
                    for n, m in conn.masks.items()})
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n in conn.masks:
                p.mul_(conn.masks[n])
    x = _batches(1)[0][0]
    assert torch.equal(model.eval()(x), ref.eval()(x))  # the forward reads the masked weights
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.5, budget="uniform", update_every=2, end_step=6)
    for _ in range(2):
        for x, y in _batches():
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            for n, p in conn.params.items():
                assert bool((p.detach()[~conn.masks[n]] == 0).all()), n
    assert any(e["pruned"] for e in ctrl.events[1:])  # the GNN's layers take part in the swaps
    assert abs(conn.density() - 0.5) < 0.05


def test_a_gcn_connectome_saves_loads_and_optimises_mask_only(tmp_path):
    torch.manual_seed(0)
    model = GNN(pyg.GCNConv)
    conn = adaptive.Connectome(model)
    conn.set_masks({n: torch.rand(m.shape, generator=torch.Generator().manual_seed(1)) < 0.7
                    for n, m in conn.masks.items()})
    conn.save(tmp_path / "c.safetensors")
    back = adaptive.Connectome.load(tmp_path / "c.safetensors", copy.deepcopy(model))
    assert all(torch.equal(back.masks[n], conn.masks[n]) for n in conn.masks)
    conn.detach()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the zeros set above count as removed already
        res = adaptive.optimize_connectome(model, _batches(), _batches(2), target=0.5, progress=False)
    snap = res.use("0.5")
    assert {"c1.lin.weight", "c2.lin.weight"} <= set(snap.masks)
    assert adaptive.mask_only.changed_weights(res.conn) == 0
    for k, v in model.state_dict().items():  # no surviving weight moved a bit
        assert torch.equal(v, before[k] * snap.masks[k] if k in snap.masks else before[k]), k


def test_a_gcns_graph_counts_its_synapses_in_module_order_with_a_warning():
    torch.manual_seed(0)
    conn = adaptive.Connectome(GNN(pyg.GCNConv))
    conn.set_masks({n: torch.rand(m.shape, generator=torch.Generator().manual_seed(1)) < 0.6
                    for n, m in conn.masks.items()})
    with pytest.warns(UserWarning, match=r"torch.fx could not trace.*falling back to module order"):
        g = graphs.build(conn, level="synapse", example_input=(_batches(1)[0][0],))
    assert [l.param for l in g.layers] == ["c1.lin.weight", "c2.lin.weight", "head.weight"]
    assert all(l.kind == "linear" for l in g.layers)
    assert g.live_synapses() == conn.num_live() == int((g.edge_attrs["kind"] == 0).sum())


def test_a_traced_torch_geometric_linear_is_a_layer_of_the_graph():
    """fx traces into torch_geometric's Linear (no leaf module): its F.linear on the weight is that layer's call."""
    torch.manual_seed(0)
    model = nn.Sequential(pyg.Linear(5, 8), nn.ReLU(), pyg.Linear(8, 3))
    conn = adaptive.Connectome(model)
    conn.set_masks({n: torch.rand(m.shape, generator=torch.Generator().manual_seed(1)) < 0.6
                    for n, m in conn.masks.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # followed exactly: no unknown op
        g = graphs.build(conn, level="synapse", example_input=torch.randn(2, 5))
    assert [(l.param, l.kind, l.shape) for l in g.layers] == [("0.weight", "linear", (8, 5)),
                                                              ("2.weight", "linear", (3, 8))]
    assert g.live_synapses() == conn.num_live() == int((g.edge_attrs["kind"] == 0).sum())
