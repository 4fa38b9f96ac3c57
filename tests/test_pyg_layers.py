"""torch_geometric's layers (GCNConv, GATConv, SAGEConv) hold their weights in torch_geometric's own ``Linear``
(``[out, in]``, read by ``F.linear``), no ``nn.Linear``: those weights were left dense, with a warning calling
them "parameters of your own module(s)" and advising to rewrite the layer, so a GNN's connectome held its head
alone. They are synapses now: masked in the forward, exact zeros after every optimizer step, saved and loaded,
edited mask-only, and counted in the graph (a MessagePassing layer, which torch.fx cannot trace, is chained in
module order, with the warning saying so).

torch_geometric is imported inside the tests (the ``pyg`` fixture), never at collection: its import costs seconds in
every pytest-xdist worker, and it puts functions of its own in place of torch's (``torch.index_select``) for every
test that worker runs after."""
import copy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs



@pytest.fixture
def pyg():
    """``torch_geometric.nn``, imported when a test needs it (skipped where it is not installed)."""
    return pytest.importorskip("torch_geometric.nn")

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
def test_a_gnn_layers_weights_are_synapses_masked_in_the_forward_and_kept_at_zero(conv, pyg):
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


def test_a_gcn_connectome_saves_loads_and_optimises_mask_only(tmp_path, pyg):
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


def test_a_gcns_graph_counts_its_synapses_in_module_order_with_a_warning(pyg):
    torch.manual_seed(0)
    conn = adaptive.Connectome(GNN(pyg.GCNConv))
    conn.set_masks({n: torch.rand(m.shape, generator=torch.Generator().manual_seed(1)) < 0.6
                    for n, m in conn.masks.items()})
    with pytest.warns(UserWarning, match=r"torch.fx could not trace.*falling back to module order"):
        g = graphs.build(conn, level="synapse", example_input=(_batches(1)[0][0],))
    assert [l.param for l in g.layers] == ["c1.lin.weight", "c2.lin.weight", "head.weight"]
    assert all(l.kind == "linear" for l in g.layers)
    assert g.live_synapses() == conn.num_live() == int((g.edge_attrs["kind"] == 0).sum())


def test_a_traced_torch_geometric_linear_is_a_layer_of_the_graph(pyg):
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


class _PygMLP(nn.Module):
    """A torch_geometric Linear between two nn.Linear layers (as in ``torch_geometric.nn.MLP``, a GNN's head)."""
    def __init__(self, pyg, bias=True):
        super().__init__()
        self.inp, self.lin, self.head = nn.Linear(5, 8), pyg.Linear(8, 8, bias=bias), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(F.relu(self.lin(F.relu(self.inp(x)))))


def _dead_rows(conn, rows):
    conn.set_masks({n: torch.ones_like(m).index_fill_(0, torch.tensor(rows), False) for n, m in conn.masks.items()
                    if n != "head.weight"})


@pytest.mark.parametrize("bias", [True, False])
def test_compact_shrinks_a_torch_geometric_linear_as_the_nn_linear_it_computes(bias, tmp_path, pyg):
    """graphs.compact kept a torch_geometric Linear at full size, silently, and with it the dead units of the layer
    feeding it: its F.linear call is now that layer's, an nn.Linear holding its parameters in the copy (which loads
    without torch_geometric's classes)."""
    torch.manual_seed(0)
    model = _PygMLP(pyg, bias).eval()
    conn = adaptive.Connectome(model)
    _dead_rows(conn, [1, 4, 6])
    x = torch.randn(10, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = graphs.compact(model, conn, x)
    assert small.compaction["removed"] == {"inp": 3, "lin": 3, "head": 0}
    assert type(small.lin) is nn.Linear and small.lin.weight.shape == (5, 5)
    assert small.compaction["params_after"] < small.compaction["params_before"]
    conn.apply()
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-6)
    torch.save(small, tmp_path / "small.pt")
    loaded = torch.load(tmp_path / "small.pt", weights_only=False)
    assert not any(type(m).__module__.startswith("torch_geometric") for m in loaded.modules())
    assert torch.equal(loaded(x), small(x))


def test_a_compacted_torch_geometric_linear_keeps_in_and_out_channels_of_its_new_shape(tmp_path, pyg):
    """The nn.Linear a torch_geometric Linear became had no ``in_channels``/``out_channels`` (what users read of
    torch_geometric's layer): they are kept, as the shrunk layer's sizes, also on a layer that keeps its size, and
    survive torch.save/torch.load."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), pyg.Linear(8, 6), nn.ReLU(), pyg.Linear(6, 3)).eval()
    conn = adaptive.Connectome(model)
    conn.set_masks({n: torch.ones_like(m).index_fill_(0, torch.tensor([1, 4, 6]), False) if n == "0.weight"
                    else torch.ones_like(m) for n, m in conn.masks.items()})
    small = graphs.compact(model, conn, torch.randn(10, 5))
    assert small.compaction["removed"] == {"0": 3, "2": 0, "4": 0}
    kept = {name: (m.in_channels, m.out_channels, m.in_features, m.out_features) for name, m in small.named_modules()
            if isinstance(m, nn.Linear) and name != "0"}
    assert kept == {"2": (5, 6, 5, 6), "4": (6, 3, 6, 3)}
    torch.save(small, tmp_path / "small.pt")
    loaded = torch.load(tmp_path / "small.pt", weights_only=False)
    assert (loaded.get_submodule("2").in_channels, loaded.get_submodule("2").out_channels) == (5, 6)
    assert not hasattr(loaded.get_submodule("0"), "in_channels")  # a plain nn.Linear gets none


def test_compact_warns_that_a_hooked_torch_geometric_linear_keeps_its_size(pyg):
    """A torch_geometric Linear whose F.linear cannot be taken for its call (a forward hook) keeps its size with a
    warning naming it, as an nn.Linear does (it kept it silently)."""
    model = _PygMLP(pyg).eval()
    model.lin.register_forward_hook(lambda *a: None)
    conn = adaptive.Connectome(model)
    _dead_rows(conn, [1])
    with pytest.warns(UserWarning, match=r"layer 'lin' keeps its size.*forward hooks"):
        small = graphs.compact(model, conn, torch.randn(4, 5))
    assert small.compaction["removed"] == {"inp": 0, "head": 0}


@pytest.mark.parametrize("conv", ["GCNConv", "GATConv"])
def test_compact_refuses_a_gnn_naming_its_message_passing_layers(conv, pyg):
    """fx cannot trace a MessagePassing layer: the refusal names those layers, not a branch on the data to rewrite."""
    model = GNN(getattr(pyg, conv)).eval()
    with pytest.raises(RuntimeError, match=rf"message-passing layers \(c1: {conv}, c2: {conv}\)") as e:
        graphs.compact(model, adaptive.Connectome(model), (_batches(1)[0][0],))
    assert "torch.where" not in str(e.value)


@pytest.mark.parametrize("init", [None, "glorot", "uniform"])
def test_a_gnn_reset_parameters_after_pruning_is_re_masked_at_the_next_step(init, pyg):
    """torch_geometric's initialisers write ``weight.data``, which autograd's version counter does not see: after
    ``GCNConv.reset_parameters()`` with SGD (zero-preserving, so weights were re-masked only after a write the
    counter saw) the pruned synapses of the GCN kept their new non-zero values through every later step."""
    torch.manual_seed(0)
    model = GNN(pyg.GCNConv)
    for conv in (model.c1, model.c2):
        conv.lin.weight_initializer = init
    conn = adaptive.Connectome(model)
    conn.set_masks({n: torch.rand(m.shape, generator=torch.Generator().manual_seed(1)) < 0.5
                    for n, m in conn.masks.items()})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    conn.attach(opt)
    for i, (x, y) in enumerate(_batches(3)):
        if i == 1:
            model.c1.reset_parameters()  # GCNConv -> its Linear -> torch_geometric.nn.inits: weight.data.uniform_
            assert int((model.c1.lin.weight.detach()[~conn.masks["c1.lin.weight"]] != 0).sum()) > 0
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        for n, p in conn.params.items():
            assert bool((p.detach()[~conn.masks[n]] == 0).all()), (i, n)


def test_a_lazy_gnn_layer_asks_for_a_forward_pass_then_its_checkpoint_resumes(tmp_path, pyg):
    """``GCNConv(-1, 8)``: its weight is materialised by the first forward pass (or by loading a state dict, through
    torch_geometric's own hook); a connectome built before asks for that pass, one built after holds the weight."""
    torch.manual_seed(0)
    model = GNN(lambda i, o: pyg.GCNConv(-1, o))
    with pytest.raises(ValueError, match=r"uninitialised \(lazy\) weight: run one forward pass"):
        adaptive.Connectome(model)
    x = _batches(1)[0][0]
    model(x)
    conn = adaptive.Connectome(model)
    assert conn.layers["c1.lin.weight"].shape == (8, 5)
    conn.set_masks({n: torch.rand(m.shape, generator=torch.Generator().manual_seed(1)) < 0.5
                    for n, m in conn.masks.items()})
    torch.save(model.state_dict(), tmp_path / "m.pt")
    conn.save(tmp_path / "c.safetensors")
    fresh = GNN(lambda i, o: pyg.GCNConv(-1, o))
    fresh.load_state_dict(torch.load(tmp_path / "m.pt"))  # torch_geometric's hook materialises the lazy weights
    back = adaptive.Connectome.load(tmp_path / "c.safetensors", fresh)
    assert all(torch.equal(back.masks[n], conn.masks[n]) for n in conn.masks)
    assert torch.equal(fresh(x), model(x))


def test_a_gnn_layers_neuron_ensemble_is_one_output_channel(pyg):
    """A neuron of torch_geometric's Linear is a row of its ``[out_channels, in_channels]`` weight, as for nn.Linear."""
    conn = adaptive.Connectome(GNN(pyg.SAGEConv), ensemble="neuron")
    for n in ("c1.lin_l.weight", "c1.lin_r.weight", "c2.lin_l.weight"):
        assert conn.ensemble_mask(n).shape == (8,)
    mask = torch.ones(8, 5, dtype=torch.bool)
    mask[2] = False
    conn.set_masks({"c1.lin_l.weight": mask})
    assert conn.ensemble_mask("c1.lin_l.weight").tolist() == [i != 2 for i in range(8)]
    assert conn.num_live() == conn.num_synapses() - 5


FRESH = """
import sys
import adaptive, graphs
print("torch_geometric imported by adaptive:", any(m.split(".")[0] == "torch_geometric" for m in sys.modules))
import torch_geometric.nn as pyg
from torch import nn
conn = adaptive.Connectome(nn.ModuleDict({"c": pyg.GCNConv(5, 8), "s": pyg.SAGEConv(8, 3)}))
print(sorted(conn.layers))
"""


def test_torch_geometric_imported_after_adaptive_is_discovered_and_adaptive_does_not_import_it(pyg):
    """Which classes are a Linear is read when a model is discovered, not when adaptive is imported (a user imports
    torch_geometric after adaptive); adaptive and graphs never import torch_geometric themselves."""
    r = subprocess.run([sys.executable, "-c", FRESH], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines()[-2:] == ["torch_geometric imported by adaptive: False",
                                         str(["c.lin.weight", "s.lin_l.weight", "s.lin_r.weight"])]
