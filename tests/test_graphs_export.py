"""graphs exporters: PyG <-> networkx round trips, file writers, utility, analysis, the CLI."""
import json
import os

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune
from torch import nn

import adaptive
import graphs
from graphs.trace import UNIT

torch.set_num_threads(1)


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        h = F.relu(self.a(x))
        h = torch.cat([h, F.relu(self.b(h)) + h], 1)
        return self.fc(self.c(h).mean((2, 3)))


@pytest.fixture(scope="module")
def conn():
    torch.manual_seed(0)
    c = adaptive.Connectome(Small())
    gen = torch.Generator().manual_seed(1)
    c.set_masks({k: torch.rand(v.shape, generator=gen) < 0.5 for k, v in c.masks.items()})
    return c


def canon(g):
    """Edges sorted by (src, dst, position) with all attributes; node table."""
    cols = [g.src, g.dst] + ([g.edge_attrs["position"]] if "position" in g.edge_attrs else [])
    key = torch.zeros_like(g.src)
    for c in cols:
        key = key * (int(c.max()) + 2 if c.numel() else 1) + (c + 1)
    order = torch.argsort(key)
    return (g.src[order], g.dst[order], {k: v[order] for k, v in g.edge_attrs.items()}, g.node_attrs, g.node_names())


def assert_same(a, b):
    ca, cb = canon(a), canon(b)
    assert a.level == b.level and a.num_nodes == b.num_nodes and a.num_edges == b.num_edges
    assert torch.equal(ca[0], cb[0]) and torch.equal(ca[1], cb[1])
    assert ca[2].keys() == cb[2].keys() and ca[3].keys() == cb[3].keys()
    for k in ca[2]:
        assert ca[2][k].dtype == cb[2][k].dtype and torch.equal(ca[2][k], cb[2][k]), k
    for k in ca[3]:
        assert ca[3][k].dtype == cb[3][k].dtype and torch.equal(ca[3][k], cb[3][k]), k
    assert ca[4] == cb[4]
    assert [(x.name, x.kind, x.start, x.count) for x in a.groups] == [(x.name, x.kind, x.start, x.count) for x in b.groups]


@pytest.mark.parametrize("level", ["synapse", "unit", "layer"])
def test_pyg_networkx_round_trip(conn, level):
    g = graphs.build(conn, level)
    data = graphs.to_pyg(g)
    assert data.edge_index.shape == (2, g.num_edges) and data.num_nodes == g.num_nodes
    assert torch.equal(data.edge_index[0], g.src) and torch.equal(data.edge_index[1], g.dst)
    G = graphs.to_networkx(graphs.from_pyg(data))
    assert G.number_of_nodes() == g.num_nodes and G.number_of_edges() == g.num_edges
    assert isinstance(G, nx.MultiDiGraph) == (level == "synapse")
    # networkx attributes equal the PyG columns, node by node
    for i, name in enumerate(data.node_attr_names):
        assert [G.nodes[n][name] for n in range(g.num_nodes)] == data.x[:, i].to(g.node_attrs[name].dtype).tolist()
    assert dict(G.in_degree()) == dict(enumerate(g.node_attrs["in_degree"].tolist()))
    back = graphs.from_pyg(graphs.to_pyg(graphs.from_networkx(G)))
    assert_same(g, back)
    assert back.live_synapses() == conn.num_live()



def test_from_pyg_refuses_a_batch_naming_how_to_read_its_graphs(conn):
    """A DataLoader's batch of exported graphs failed with a bare "unhashable type: 'list'" (its header's
    values are lists, one per graph); each graph of it reads back."""
    from torch_geometric.data import Batch

    g = graphs.build(conn, "unit")
    batch = Batch.from_data_list([graphs.to_pyg(g), graphs.to_pyg(g)])
    with pytest.raises(ValueError, match=r"Batch of 2 .*from_pyg\(batch\.get_example\(i\)\)"):
        graphs.from_pyg(batch)
    assert_same(g, graphs.from_pyg(batch.get_example(1)))


def _cut_nx(g):
    G = graphs.to_networkx(g)
    G.remove_node(g.num_nodes - 1)
    return graphs.from_networkx(G)


def _new_node_nx(g):
    G = graphs.to_networkx(g)
    G.add_edge(0, g.num_nodes, **{k: 0 for k in g.edge_attrs})
    return graphs.from_networkx(G)


def _dropped_attr_nx(g):
    G = graphs.to_networkx(g)
    del G.nodes[3]["depth_max"]
    return graphs.from_networkx(G)


def _relabelled_nx(g):
    return graphs.from_networkx(nx.relabel_nodes(graphs.to_networkx(g), {i: f"n{i}" for i in range(g.num_nodes)}))


def _subgraph_pyg(g):
    return graphs.from_pyg(graphs.to_pyg(g).subgraph(torch.arange(g.num_nodes - 1)))


def _cut_columns_pyg(g):
    data = graphs.to_pyg(g)
    data.x = data.x[:, :2]
    return graphs.from_pyg(data)


@pytest.mark.parametrize("level", ["unit", "layer"])
@pytest.mark.parametrize("read, match", [
    (_cut_nx, r"has \d+ nodes, but its header's groups hold \d+: nodes were removed or added"),
    (_new_node_nx, r"node \d+ has no attribute 'kind'.*added"),
    (_dropped_attr_nx, r"node 3 has no attribute 'depth_max'.*attribute removed"),
    (_relabelled_nx, r"node 'n0' of this networkx graph is no node id"),
    (_subgraph_pyg, r"nodes were removed or added since it was exported"),
    (_cut_columns_pyg, r"data\.x has 2 columns, but data\.node_attr_names names \d+"),
])
def test_reading_back_a_graph_changed_since_export_is_refused(conn, level, read, match):
    """A PyG subgraph read back as a graph whose groups counted nodes it no longer had; the other changes
    failed with a bare IndexError, KeyError or int() ValueError."""
    with pytest.raises(ValueError, match=match):
        read(graphs.build(conn, level))

@pytest.mark.parametrize("level", ["synapse", "layer"])
@pytest.mark.parametrize("edit, match", [
    (lambda d, n: d["nodes"].update(mine=[0] * n), r"nodes table holds column\(s\) \['mine'\] that its header's "
     r"'node_dtypes' does not list \(added since"),
    (lambda d, n: d["edges"].update(mine=[0] * len(d["edges"]["src"])), r"edges table holds column\(s\) \['mine'\]"),
    (lambda d, n: d["edges"].pop("src"), r"edges table lacks 'src', the ends of its edges"),
    (lambda d, n: d["edges"].pop("weight" if "weight" in d["edges"] else "count"), r"lacks its edge attribute"),
    (lambda d, n: d["edges"]["kind"].pop(), r"edge columns differ in length \((\d+) sources, \1 targets"),
    (lambda d, n: d["edges"]["dst"].__setitem__(0, n), r"an edge of the graph ends at node (\d+), but its nodes are 0\.\.(\d+)"),
])
def test_read_json_refuses_a_file_changed_since_it_was_written(conn, level, edit, match, tmp_path):
    """A column added to a table failed with a bare KeyError naming it (so did a table without "src");
    the other changes are refused by the checks every read-back makes, which the networkx and PyG tests
    above reach only in part."""
    g = graphs.build(conn, level)
    path = graphs.write(g, tmp_path / "g.json")
    doc = json.loads(open(path).read())
    assert_same(g, graphs.read_json(path))
    edit(doc, g.num_nodes)
    (tmp_path / "g.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=match):
        graphs.read_json(path)


def test_from_pyg_refuses_an_edge_to_a_node_that_is_not_there(conn):
    """edge_index changed since export (an edge to node N) read back as a graph with an edge to nowhere."""
    data = graphs.to_pyg(graphs.build(conn, "unit"))
    data.edge_index[1, 0] = data.num_nodes
    with pytest.raises(ValueError, match=rf"ends at node {data.num_nodes}, but its nodes are 0\.\.{data.num_nodes - 1}"):
        graphs.from_pyg(data)


@pytest.mark.parametrize("ext", [".graphml", ".gexf", ".json"])
def test_writers(conn, tmp_path, ext):
    g = graphs.build(conn, "unit")
    if ext == ".gexf":  # Small concatenates: GEXF, which keeps no graph attributes, says it drops that
        with pytest.warns(UserWarning, match=r"GEXF keeps no graph attributes.*1 concatenation.*\.graphml or \.json"):
            path = graphs.write(g, tmp_path / f"g{ext}")
    else:
        path = graphs.write(g, tmp_path / f"g{ext}")
    assert os.path.getsize(path) > 0
    if ext == ".json":
        assert_same(g, graphs.read_json(path))
    elif ext == ".graphml":
        assert_same(g, graphs.from_networkx(nx.read_graphml(path)))
    else:
        H = nx.read_gexf(path)
        assert H.number_of_nodes() == g.num_nodes and H.number_of_edges() == g.num_edges
    with pytest.raises(ValueError, match="unknown format"):
        graphs.write(g, tmp_path / "g.xyz")
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"it is a folder; give a file path in it .*out/connectome\.graphml"):
        graphs.write(g, folder)  # was "unknown format ''"
    assert list(folder.iterdir()) == []


REPARAMETRIZE = {
    "parametrizations.weight_norm": lambda m: nn.utils.parametrizations.weight_norm(m),
    "parametrizations.orthogonal": lambda m: nn.utils.parametrizations.orthogonal(m),
    "weight_norm": lambda m: nn.utils.weight_norm(m),
    "spectral_norm": lambda m: nn.utils.spectral_norm(m),
    "prune": lambda m: torch.nn.utils.prune.random_unstructured(m, "weight", 0.5),  # weight_orig * weight_mask
}


@pytest.mark.parametrize("how", list(REPARAMETRIZE))
@pytest.mark.parametrize("with_connectome", [True, False])
def test_a_layer_with_a_computed_weight_is_in_the_graph_fully_live_with_its_values(how, with_connectome, tmp_path):
    """A weight a parametrization, weight_norm or torch.nn.utils.prune computes holds no synapses; building
    the graph raised KeyError ("has no parameter '0.weight'") instead of treating it as a layer outside the
    connectome (torch.nn.utils.prune's too, until it was taken as a computed weight)."""
    import warnings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation, and the Connectome's "holds no synapses" warning
        REPARAMETRIZE[how](model[0])
        conn = adaptive.Connectome(model) if with_connectome else None
    mask = torch.rand(5, 12) < 0.5
    if conn is not None:
        assert conn.names == ["2.weight"]
        conn.set_masks({"2.weight": mask})
    tr = graphs.trace(model, torch.randn(1, 12))
    m = model[0]
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))  # so the weight an old-style hook set at the trace's call is stale
        if how == "weight_norm":
            expected = m.weight_g * m.weight_v / m.weight_v.norm(dim=1, keepdim=True)
        elif how == "spectral_norm":  # eval mode: no power iteration
            expected = m.weight_orig / torch.dot(m.weight_u, m.weight_orig @ m.weight_v)
        elif how == "prune":  # its zeros are torch.nn.utils.prune's, not the connectome's: live synapses of weight 0
            expected = m.weight_orig * m.weight_mask
        else:
            expected = m.weight.detach().clone()
    live2 = int(mask.sum()) if conn is not None else 60
    kw = dict(model=model, traced=tr) if conn is None else dict(traced=tr)
    syn = graphs.build(conn, "synapse", **kw)
    first = syn.edge_attrs["layer"] == [l.module for l in syn.layers].index("0")
    pos = syn.edge_attrs["position"][first]
    assert torch.equal(pos.sort().values, torch.arange(144))  # every synapse of the layer is live
    assert torch.allclose(syn.edge_attrs["weight"][first], expected.reshape(-1)[pos])
    assert syn.live_synapses() == 144 + live2
    unit = graphs.build(conn, "unit", **kw)
    first = unit.edge_attrs["layer"] == 0
    assert int(unit.edge_attrs["count"][first].sum()) == 144 and unit.live_synapses() == 144 + live2
    assert torch.allclose(unit.edge_attrs["l1"][first].sum(), expected.abs().sum())
    lay = graphs.build(conn, "layer", **kw)
    i = [g.name for g in lay.groups].index("0")
    assert float(lay.node_attrs["live"][i]) == 144 and float(lay.node_attrs["density"][i]) == 1.0
    for g in (syn, unit, lay):
        assert graphs.to_networkx(g).number_of_edges() == g.num_edges
        assert graphs.to_pyg(g).edge_index.shape[1] == g.num_edges
    for ext in (".graphml", ".json", ".gexf"):
        assert os.path.getsize(graphs.write(unit, tmp_path / f"g{ext}")) > 0
    assert_same(unit, graphs.read_json(tmp_path / "g.json"))
    kw.pop("traced")
    assert_same(unit, graphs.build(conn, "unit", example_input=torch.randn(1, 12), **kw))  # a trace of its own


def test_unit_edges_aggregate_synapses_and_utility(conn):
    util = {k: torch.rand(v.shape) for k, v in conn.masks.items()}
    u = graphs.build(conn, "unit", utility=util)
    s = graphs.build(conn, "synapse", utility=util)
    syn = u.edge_attrs["kind"] == 0
    total_util = sum(float((util[k] * conn.masks[k]).sum()) for k in util)
    assert float(u.edge_attrs["utility"][syn].double().sum()) == pytest.approx(total_util, rel=1e-5)
    assert float(s.edge_attrs["utility"].double().sum()) == pytest.approx(total_util, rel=1e-5)
    l1 = sum(float(p.detach().abs().sum()) for p in conn.params.values())
    assert float(u.edge_attrs["l1"].double().sum()) == pytest.approx(l1, rel=1e-5)
    # L2 of an ensemble = sqrt of the sum of squares of its synapse weights
    sq = torch.zeros(u.num_nodes, dtype=torch.float64).index_add_(0, s.dst, s.edge_attrs["weight"].double() ** 2)
    sq_u = torch.zeros(u.num_nodes, dtype=torch.float64).index_add_(0, u.dst, u.edge_attrs["l2"].double() ** 2)
    assert torch.allclose(sq, sq_u, rtol=1e-5)


def test_utility_keys_that_name_no_layer_are_refused(conn):
    """Module names ("conv1" for "conv1.weight") or a typo were ignored: every edge's utility summed to 0."""
    name = next(iter(conn.masks))
    module = name.rsplit(".", 1)[0]
    for bad in ({module: torch.ones(conn.masks[name].shape)}, {name: torch.ones(conn.masks[name].shape), "nope": torch.ones(3)}):
        with pytest.raises(KeyError, match=rf"utility has scores for \[{sorted(set(bad) - {name})[0]!r}\], which name no "
                                           rf"weighted layer: key it by parameter name, one of \[{name!r}"):
            graphs.build(conn, "unit", utility=bad)
    model = Small()  # without a connectome: the traced layers' parameter names
    ok = graphs.build(model=model, level="unit", utility={name: torch.ones(conn.masks[name].shape)})
    assert float(ok.edge_attrs["utility"].sum()) > 0
    with pytest.raises(KeyError, match="name no weighted layer"):
        graphs.build(model=model, level="unit", utility={module: torch.ones(conn.masks[name].shape)})


def test_dead_units_and_reachability():
    m = Small()
    c = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in c.masks.items()}
    masks["a.weight"][1] = False  # a:1 has no live input
    masks["c.weight"][:, 3] = False  # a:3 feeds c only through channel 3 of the concat ...
    masks["b.weight"][:, 3] = False  # ... and b; but it also feeds the add -> still alive
    masks["fc.weight"][:, 4] = False  # c:4 has no live output
    c.set_masks(masks)
    g = graphs.build(c, "unit")
    d = graphs.dead_units(g)
    names = g.node_names()
    dead = {names[i] for i in d["dead"].nonzero().flatten().tolist()}
    assert dead == {"a:1", "c:4"}
    assert {names[i] for i in d["no_live_output"].nonzero().flatten().tolist()} == {"c:4"}
    s = graphs.summary(g)
    assert s["outputs_reachable"] == 3 and s["inputs_reaching_output"] == 3
    assert s["dead"]["dead"] == 2


def test_cli_export_and_report(tmp_path, capsys):
    from graphs.cli import main

    models = pytest.importorskip("adaptive.models")
    m = models.build_model("mlp", hidden=(16,))
    c = adaptive.Connectome(m)
    c.set_masks({k: torch.rand(v.shape) < 0.5 for k, v in c.masks.items()})
    run = tmp_path / "run"
    c.save(run / "connectome.safetensors")
    torch.save(c.dense_state_dict(), run / "model_state.pt")
    assert main(["export", str(run)]) == 2  # no config.yaml and no --model
    assert "--model" in capsys.readouterr().err
    (run / "config.yaml").write_text("model: mlp\n")  # default hidden sizes: the connectome does not fit
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err
    assert "layer fc1.weight has shape (16, 784), the rebuilt model's (256, 784)" in err and err.count("\n") == 1
    assert "--model-kw KEY=VALUE" in err
    (run / "config.yaml").write_text("model:\n  name: mlp\n  hidden: [16]\n")
    assert main(["export", str(run), "--level", "unit", "--format", "graphml"]) == 0
    G = nx.read_graphml(run / "connectome_unit.graphml")
    assert graphs.from_networkx(G).live_synapses() == c.num_live()
    assert main(["export", str(run / "connectome.safetensors"), "--model", "mlp", "--format", "json",
                 "--out", str(tmp_path / "x.json")]) == 0  # a connectome file instead of the folder
    assert graphs.read_json(tmp_path / "x.json").live_synapses() == c.num_live()
    assert main(["export", str(run), "--model", "lenet300"]) == 2  # other model: config keywords dropped
    err = capsys.readouterr().err
    assert err.startswith("error: the connectome's layer fc1.weight") and "check --model" in err and err.count("\n") == 1
    assert main(["export", str(run), "--level", "layer", "--format", "gexf", "--contract"]) == 0
    assert (run / "connectome_layer.gexf").exists()
    assert main(["report", str(run)]) == 0
    assert main(["compact", str(run)]) == 0
    small = torch.load(run / "compact_model.pt", weights_only=False)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(small(x), m.eval()(x), atol=1e-5)
    out = capsys.readouterr().out
    assert "density per layer" in out and "fc1" in out
    for f in ("density_per_layer.png", "degree_distribution.png", "dead_units.png", "reachability.png", "summary.json"):
        assert (run / "graph_report" / f).exists(), f
    assert json.loads((run / "graph_report" / "summary.json").read_text())["live_synapses"] == c.num_live()


def test_report_figures_name_the_run(mlp_run, tmp_path, monkeypatch):
    """The report's figures named neither the model nor the run; config.yaml has both."""
    import shutil

    from graphs.cli import main

    run = tmp_path / "run"
    shutil.copytree(mlp_run, run)  # the fixture's folder is shared: its config.yaml stays as it is
    figs = []
    real = graphs.figures._save
    monkeypatch.setattr(graphs.figures, "_save", lambda fig, out_dir, name: figs.append(fig) or real(fig, out_dir, name))
    (run / "config.yaml").write_text("model:\n  name: mlp\n  hidden: [8]\n  in_shape: [1, 4, 4]\ndataset: digits\n")
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert len(figs) == 4
    for fig in figs:
        said = " ".join([fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title() for ax in fig.axes])
        assert "connectome of mlp on digits (run run)" in said, said
    assert graphs.figures.plot_density.__defaults__ == (None,)  # the title stays optional


def test_figures_include_concat_depths(tmp_path):
    models = pytest.importorskip("adaptive.models")
    m = models.build_model("densecat", depth=3, width=4, kind="cnn", in_shape=(3, 8, 8))
    g = graphs.build(model=m, level="unit")
    paths = graphs.figures.plot_all(g, tmp_path)
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["concat_depths.png", "dead_units.png", "degree_distribution.png", "density_per_layer.png",
                     "reachability.png"]
    assert all(os.path.getsize(p) > 1000 for p in paths)


def test_readme_example(tmp_path, monkeypatch):
    """The example of docs/graphs.md (once the README's graphs section) on a dense connectome, with checks
    (run in a temporary folder; the page's own version, 20% of the filters pruned, runs verbatim in
    tests/test_readme.py)."""
    monkeypatch.chdir(tmp_path)
    import torch

    import adaptive
    import graphs
    from adaptive.models import build_model

    model = build_model("resnet20")
    conn = adaptive.Connectome(model)
    g = graphs.build(conn, level="unit")       # "synapse", "unit" or "layer"
    data = graphs.to_pyg(g)                    # torch_geometric Data: edge_index [2, E] source -> target
    nxg = graphs.to_networkx(g)                # networkx DiGraph with the same nodes and attributes
    graphs.write(g, "run/connectome.graphml")  # also .gexf and .json
    print(graphs.summary(g)["dead"])
    small = graphs.compact(model.eval(), conn, torch.randn(8, 3, 32, 32))  # dead units physically removed
    print(small.compaction["params_before"], "->", small.compaction["params_after"])

    assert data.num_edges == nxg.number_of_edges() == g.num_edges
    assert (tmp_path / "run" / "connectome.graphml").exists()
    assert small.compaction["units_removed"] == 0  # a dense connectome has no dead unit


def test_cli_reads_a_recipe_config(tmp_path):
    """config.yaml as recipes/adaptive.py writes it: model name, model_kw, dataset (shapes from it)."""
    from graphs.cli import main

    models = pytest.importorskip("adaptive.models")
    m = models.build_model("lenet5", num_classes=10, in_shape=(1, 28, 28))
    c = adaptive.Connectome(m)
    c.set_masks({k: torch.rand(v.shape) < 0.5 for k, v in c.masks.items()})
    c.save(tmp_path / "connectome.safetensors")
    torch.save(c.dense_state_dict(), tmp_path / "dense_state_dict.pt")
    (tmp_path / "config.yaml").write_text("dataset: mnist\nmodel: lenet5\nmodel_kw: {}\nseed: 0\n")
    assert main(["export", str(tmp_path), "--level", "layer", "--format", "json"]) == 0
    g = graphs.read_json(tmp_path / "connectome_layer.json")
    assert g.live_synapses() == c.num_live()


def test_the_class_count_and_input_shape_come_from_the_dataset_not_an_excluded_classifier(tmp_path, capsys):
    """A run whose config keeps the classifier out of the connectome (exclude=) was rebuilt with the
    connectome's last layer's units as num_classes (the hidden layer's 16, not the dataset's 7): its
    weights did not fit. The dataset's facts say the classes and the input shape, without building its
    Source (which, for an image folder, scans every file)."""
    from adaptive.data.base import _DATASETS, _FACTS, register_dataset
    from graphs.cli import load_run, main

    models = pytest.importorskip("adaptive.models")
    m = models.build_model("mlp", hidden=(16,), num_classes=7, in_shape=(12,))
    c = adaptive.Connectome(m, exclude=["fc2*"])
    assert list(c.masks) == ["fc1.weight"]
    c.save(tmp_path / "connectome.safetensors")
    torch.save(c.dense_state_dict(), tmp_path / "dense_state_dict.pt")
    (tmp_path / "config.yaml").write_text("dataset: fake\ndataset_kw: {num_classes: 7, shape: [12]}\nmodel: mlp\n"
                                          "model_kw: {hidden: [16]}\nexclude: [fc2*]\n")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    capsys.readouterr()
    built = []

    @register_dataset("review_unbuilt", facts=lambda data_dir=None: (7, (12,)))
    def unbuilt(data_dir=None, download=False, augment=False):
        built.append(1)
        raise AssertionError("the Source is built")

    try:
        (tmp_path / "config.yaml").write_text("dataset: review_unbuilt\nmodel: mlp\nmodel_kw: {hidden: [16]}\n")
        net, _ = load_run(str(tmp_path))
        assert (net.fc1.in_features, net.fc2.out_features, built) == (12, 7, [])
    finally:
        _DATASETS.pop("review_unbuilt", None)
        _FACTS.pop("review_unbuilt", None)


def test_a_gexf_file_read_back_says_the_format_dropped_the_header(tmp_path):
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    g = graphs.build(conn, "unit", example_input=torch.randn(1, 4))
    graphs.write(g, tmp_path / "g.gexf")
    with pytest.raises(ValueError, match="GEXF does.*graphml"):
        graphs.from_networkx(nx.read_gexf(tmp_path / "g.gexf"))
    graphs.write(g, tmp_path / "g.graphml")  # GraphML keeps it
    assert graphs.from_networkx(nx.read_graphml(tmp_path / "g.graphml")).num_edges == g.num_edges


class _Recurrent(nn.Module):
    """A recurrent layer whose last step feeds a small classifier."""

    def __init__(self, cell="LSTM", hidden=3, **kw):
        super().__init__()
        self.rnn = getattr(nn, cell)(4, hidden, batch_first=True, **kw)
        out = kw.get("proj_size") or hidden
        self.o = nn.Linear(out * (2 if kw.get("bidirectional") else 1), 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.o(y[:, -1])


def _live_output_reference(g):
    """no live output, by its definition, edge by edge: a node passes its value on if a live edge
    leaves it into a non-junction or into a junction that passes it on, or if a recurrent back edge
    leaves it into a state node that passes it on (least fixed point)."""
    from graphs.analysis import _live
    from graphs.trace import EDGE_RECURRENT, JUNCTION

    is_j = (g.node_attrs["kind"] == JUNCTION).tolist()
    live, rec = _live(g).tolist(), (g.edge_attrs["kind"] == EDGE_RECURRENT).tolist()
    edges = list(zip(g.src.tolist(), g.dst.tolist(), live, rec))
    out = [False] * g.num_nodes
    changed = True
    while changed:
        changed = False
        for s, d, ok, back in edges:
            if not out[s] and ((ok and (not is_j[d] or out[d])) or (back and out[d])):
                out[s] = changed = True
    return torch.tensor(out)


def test_recurrent_units_feeding_the_next_step_have_a_live_output():
    """The output reads hidden unit 0 only; hidden unit 1 feeds hidden unit 0 at the next step
    through weight_hh (autograd: d out / d h_prev[1] != 0), so its gate rows have a live output."""
    torch.manual_seed(0)
    m = _Recurrent("LSTM", hidden=2)
    c = adaptive.Connectome(m)
    keep = torch.zeros(2, 2, dtype=torch.bool)
    keep[:, 0] = True
    c.set_masks({"o.weight": keep})
    x = torch.randn(1, 4, 4)
    h0 = torch.zeros(1, 1, 2, requires_grad=True)
    y, _ = m.rnn(x, (h0, torch.zeros(1, 1, 2)))
    m.o(y[:, -1]).sum().backward()
    assert float(h0.grad[0, 0, 1]) != 0
    g = graphs.build(c, "unit", example_input=x)
    d = graphs.dead_units(g)
    assert not d["no_live_output"].any() and not d["dead"].any()
    # once weight_hh reads hidden unit 1 nowhere, its gate rows truly pass nothing on
    hh = torch.ones(8, 2, dtype=torch.bool)
    hh[:, 1] = False
    c.set_masks({"o.weight": keep, "rnn.weight_hh_l0": hh})
    g = graphs.build(c, "unit", example_input=x)
    names = g.node_names()
    d = graphs.dead_units(g)
    assert {names[i] for i in d["no_live_output"].nonzero().flatten().tolist()} == {
        f"rnn.l0.{w}:{r}" for w in ("ih", "hh") for r in (1, 3, 5, 7)}


@pytest.mark.parametrize("cell,kw", [("LSTM", {}), ("GRU", {}), ("RNN", {}), ("LSTM", {"bidirectional": True}),
                                     ("GRU", {"num_layers": 2}), ("LSTM", {"proj_size": 2}),
                                     ("LSTM", {"proj_size": 2, "num_layers": 2, "bidirectional": True})])
def test_dead_units_of_recurrent_layers_match_their_definition(cell, kw):
    """no_live_output, edge by edge, for every kind of recurrent layer; a unit with no live output
    cannot reach an output either."""
    for seed in range(3):
        torch.manual_seed(seed)
        c = adaptive.Connectome(_Recurrent(cell, hidden=3, **kw))
        c.set_masks({k: torch.rand(v.shape) < 0.4 for k, v in c.masks.items()})
        g = graphs.build(c, "unit", example_input=torch.randn(1, 3, 4))
        d = graphs.dead_units(g)
        unit = g.node_attrs["kind"] == UNIT
        assert torch.equal(d["no_live_output"], unit & ~_live_output_reference(g)), (cell, kw, seed)
        assert not (d["no_live_output"] & ~d["cannot_reach_output"]).any(), (cell, kw, seed)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """A run folder of a small MLP: connectome, weights, config.yaml."""
    models = pytest.importorskip("adaptive.models")
    torch.manual_seed(0)
    c = adaptive.Connectome(models.build_model("mlp", hidden=(8,), in_shape=(1, 4, 4)))
    c.set_masks({k: torch.rand(v.shape) < 0.5 for k, v in c.masks.items()})
    run = tmp_path_factory.mktemp("cli") / "run"
    c.save(run / "connectome.safetensors")
    torch.save(c.dense_state_dict(), run / "model_state.pt")
    (run / "config.yaml").write_text("model:\n  name: mlp\n  hidden: [8]\n  in_shape: [1, 4, 4]\n")
    return run


def test_cli_reads_the_weights_file_once(tmp_path, monkeypatch):
    """A connectome without the head (exclude=) leaves the class count to the weights file: it was read
    twice, once for the head's shape, once to load it. Once now, and the model still gets its weights."""
    models = pytest.importorskip("adaptive.models")
    import adaptive.models.weights as weights_module
    from graphs.cli import load_run

    torch.manual_seed(0)
    net = models.build_model("mlp", hidden=(8,), num_classes=7, in_shape=(1, 4, 4))
    run = tmp_path / "run"
    adaptive.Connectome(net, exclude="fc2").save(run / "connectome.safetensors")
    torch.save(net.state_dict(), run / "model_state.pt")
    (run / "config.yaml").write_text("model:\n  name: mlp\n  hidden: [8]\n  in_shape: [1, 4, 4]\n")
    real, reads = weights_module.read_state_dict, []
    monkeypatch.setattr(weights_module, "read_state_dict", lambda path: reads.append(path) or real(path))
    model, _ = load_run(str(run))
    assert reads == [str(run / "model_state.pt")]
    assert model.fc2.out_features == 7 and torch.equal(model.fc2.weight, net.fc2.weight)


def test_cli_compact_passes_its_tolerances_and_float64_to_the_check(mlp_run, tmp_path, capsys, monkeypatch):
    """python -m graphs compact had no way to set the check's atol/rtol or to compact in float64,
    which the check's error suggests."""
    import importlib
    import inspect

    from graphs.cli import main

    compact_module = importlib.import_module("graphs.compact")
    real, seen = compact_module._verify, []

    def spy(ref, gm, x, atol, rtol, *rest):  # rest: the inputs' batch axis
        seen.append((atol, rtol, x.dtype))
        return real(ref, gm, x, atol, rtol, *rest)

    monkeypatch.setattr(compact_module, "_verify", spy)
    api = inspect.signature(graphs.compact).parameters
    assert main(["compact", str(mlp_run), "--out", str(tmp_path / "a.pt")]) == 0
    assert seen.pop() == (api["atol"].default, api["rtol"].default, torch.float32)
    assert main(["compact", str(mlp_run), "--out", str(tmp_path / "b.pt"), "--atol", "0.5", "--rtol", "2.5e-3",
                 "--float64"]) == 0
    assert seen.pop() == (0.5, 2.5e-3, torch.float64)
    small = torch.load(tmp_path / "b.pt", weights_only=False)
    assert {p.dtype for p in small.parameters()} == {torch.float64}
    capsys.readouterr()
    for bad in ("-1", "nan", "x"):
        with pytest.raises(SystemExit):
            main(["compact", str(mlp_run), "--atol", bad])
        assert f"argument --atol: {bad!r} is not a tolerance: give a finite number >= 0" in capsys.readouterr().err

    def mismatch(ref, gm, x, atol, rtol, *rest):
        raise compact_module.CompactionMismatchError(f"compaction changed the outputs (atol {atol} + rtol {rtol}). "
                                                     "Pass verify=False to get the model anyway.")

    monkeypatch.setattr(compact_module, "_verify", mismatch)
    assert main(["compact", str(mlp_run), "--out", str(tmp_path / "c.pt"), "--rtol", "0.01"]) == 2
    err = _error_line(capsys)
    # an --atol not given is None, the dtype's default that the check works out (the stand-in check prints it as given)
    assert "(atol None + rtol 0.01)" in err and "--atol and --rtol set the tolerances (now the dtype's default and 0.01)" in err
    assert "rebuilding or tracing the model failed" not in err and not (tmp_path / "c.pt").exists()
    assert "Pass verify=False" not in err and "graphs.compact(..., verify=False)" in err  # no CLI option of that name


def _error_line(capsys):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line, no traceback
    return err


def test_cli_export_writes_the_format_its_out_names(mlp_run, tmp_path, capsys):
    """--out's extension is the format; a --format that disagrees is refused, not ignored; a folder
    receives connectome_LEVEL.FORMAT; a path without extension is refused with the fix."""
    from graphs.cli import main

    assert main(["export", str(mlp_run), "--format", "gexf", "--out", str(tmp_path / "y.json")]) == 2
    assert "--format gexf" in _error_line(capsys) and not (tmp_path / "y.json").exists()
    assert main(["export", str(mlp_run), "--format", "json", "--out", str(tmp_path / "x.graphml")]) == 2
    assert "--format json" in _error_line(capsys)
    assert main(["export", str(mlp_run), "--format", "pt", "--out", str(tmp_path / "g.graphml")]) == 2
    assert ".graphml" in _error_line(capsys) and not list(tmp_path.iterdir())
    assert main(["export", str(mlp_run), "--out", str(tmp_path / "y.xyz")]) == 2
    assert "cannot write" in _error_line(capsys)
    assert main(["export", str(mlp_run), "--format", "json", "--out", str(tmp_path / "noext")]) == 2
    assert "no file extension" in _error_line(capsys) and not list(tmp_path.iterdir())
    # agreeing or implied formats are written as such
    assert main(["export", str(mlp_run), "--format", "json", "--out", str(tmp_path / "a.json")]) == 0
    assert graphs.read_json(tmp_path / "a.json").num_edges > 0
    assert main(["export", str(mlp_run), "--out", str(tmp_path / "b.GEXF")]) == 0
    assert (tmp_path / "b.GEXF").read_text().lstrip().startswith("<?xml")
    # an existing folder (or a path ending in /) receives the default name
    assert main(["export", str(mlp_run), "--format", "json", "--out", str(tmp_path)]) == 0
    assert graphs.read_json(tmp_path / "connectome_unit.json").num_edges > 0
    assert main(["export", str(mlp_run), "--level", "layer", "--out", str(tmp_path / "new") + os.sep]) == 0
    assert nx.read_graphml(tmp_path / "new" / "connectome_layer.graphml").number_of_nodes() > 0
    # under a file: refused before anything is built
    assert main(["export", str(mlp_run), "--out", str(mlp_run / "config.yaml" / "g.json")]) == 2
    assert "which is a file, not a folder" in _error_line(capsys)


@pytest.mark.parametrize("value", ["", " "])
@pytest.mark.parametrize("cmd", ["export", "report", "compact"])
def test_cli_refuses_an_empty_out_instead_of_writing_the_default(mlp_run, capsys, monkeypatch, tmp_path, cmd, value):
    """compact and report took --out '' (an unset shell variable) for no --out and wrote into the run
    folder, where export refused it: all three refuse it, naming the fix, and write nothing. --out ' '
    made a folder named by a space (report) or wrote a file named by one in the working directory."""
    from graphs.cli import main

    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in mlp_run.iterdir())
    assert main([cmd, str(mlp_run), "--out", value]) == 2
    err = _error_line(capsys)
    assert f"--out is empty ({value!r}): give a path" in err and "leave --out out" in err
    assert sorted(p.name for p in mlp_run.iterdir()) == before and not list(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["", " "])
@pytest.mark.parametrize("option", ["--connectome", "--weights"])
def test_cli_refuses_an_empty_connectome_or_weights_as_the_other_path_options(mlp_run, capsys, tmp_path, option,
                                                                              value):
    """--connectome '' and --weights '' (an unset shell variable) were read as left out, the run's own file used
    unsaid; ' ' was looked for as a file named by a space. Both are refused as --out '' is, naming the fix."""
    from graphs.cli import main

    out = tmp_path / "g.graphml"
    assert main(["export", str(mlp_run), option, value, "--out", str(out)]) == 2
    err = _error_line(capsys)
    assert f"{option} is empty ({value!r}): give " in err and f"leave {option} out" in err
    assert not out.exists()


@pytest.mark.parametrize("value", ["", "  "])
def test_cli_refuses_an_empty_format_naming_the_formats(mlp_run, capsys, value):
    """--format '' was read as left out (the default graphml written, unsaid)."""
    from graphs.cli import main

    before = sorted(p.name for p in mlp_run.iterdir())
    assert main(["export", str(mlp_run), "--format", value]) == 2
    err = _error_line(capsys)
    assert f"--format is empty ({value!r}): give one of " in err and "graphml" in err and "gexf" in err
    assert sorted(p.name for p in mlp_run.iterdir()) == before


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc, a folder that takes no new files")
@pytest.mark.parametrize("name", ["g.json", "g.graphml.gz", "g.pt"])
def test_cli_export_to_an_unwritable_folder_names_the_file_asked_for(mlp_run, capsys, name):
    """export --out /proc/g.json said '... No such file or directory: /proc/..g.json.PID-X.tmp.json.PID-Y.tmp.json',
    the temporary file of graphs.write's temporary file: it names /proc/g.json."""
    from graphs.cli import main

    assert main(["export", str(mlp_run), "--out", f"/proc/{name}"]) == 2
    err = _error_line(capsys)
    assert err.rstrip().endswith(f"'/proc/{name}'") and ".tmp" not in err, err


def test_cli_export_writes_compressed_files_the_writers_compress(mlp_run, tmp_path, capsys):
    """--out x.graphml.gz was refused ('ends in .gz, a format graphs cannot write') though graphs.write
    writes it compressed: .graphml, .gexf and .json followed by .gz or .bz2 are written so (the format
    before the suffix; --format may agree with it); a .pt.gz or an unknown inner extension is refused
    with a message naming the endings that work."""
    import bz2
    import gzip

    from graphs.cli import main

    plain = tmp_path / "plain.json"
    assert main(["export", str(mlp_run), "--out", str(plain)]) == 0
    ref = graphs.read_json(plain)
    pairs = lambda g: set(zip(g.src.tolist(), g.dst.tolist()))
    assert main(["export", str(mlp_run), "--out", str(tmp_path / "g.graphml.gz")]) == 0
    with gzip.open(tmp_path / "g.graphml.gz", "rb") as f:
        back = graphs.from_networkx(nx.read_graphml(f))
    assert pairs(back) == pairs(ref) and back.num_edges == ref.num_edges > 0
    assert main(["export", str(mlp_run), "--format", "json", "--out", str(tmp_path / "g.json.bz2")]) == 0
    assert bz2.open(tmp_path / "g.json.bz2").read(1) == b"{"
    back = graphs.read_json(tmp_path / "g.json.bz2")
    assert torch.equal(back.src, ref.src) and torch.equal(back.dst, ref.dst)
    assert main(["export", str(mlp_run), "--out", str(tmp_path / "g.GEXF.GZ")]) == 0
    assert gzip.open(tmp_path / "g.GEXF.GZ").read(5) == b"<?xml"
    assert main(["export", str(mlp_run), "--format", "gexf", "--out", str(tmp_path / "h.json.gz")]) == 2
    assert "--format gexf" in _error_line(capsys) and not (tmp_path / "h.json.gz").exists()
    for bad in ("g.pt.gz", "g.xyz.bz2", "g.gz"):
        assert main(["export", str(mlp_run), "--out", str(tmp_path / bad)]) == 2
        err = _error_line(capsys)
        assert "cannot write compressed" in err and ".graphml.gz" in err and ".json.bz2" in err, err
        assert not (tmp_path / bad).exists()


def test_cli_user_mistakes_end_with_one_error_line(mlp_run, tmp_path, capsys, monkeypatch):
    """Not a connectome, weights of another model, a report folder that is a file, Ctrl-C: one
    line naming the problem and the fix (status 2; 130 for Ctrl-C), no traceback."""
    from graphs.cli import main

    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    assert main(["export", str(mlp_run / "config.yaml")]) == 2
    assert "is not a connectome file" in _error_line(capsys)
    assert main(["export", str(mlp_run), "--connectome", str(mlp_run / "model_state.pt")]) == 2
    assert "--connectome PATH" in _error_line(capsys)
    from adaptive.models import build_model

    other = build_model("lenet5", num_classes=10, in_shape=(1, 28, 28))
    torch.save(other.state_dict(), tmp_path / "other.pt")
    assert main(["export", str(mlp_run), "--weights", str(tmp_path / "other.pt")]) == 2
    err = _error_line(capsys)
    assert "does not match model MLP" in err and "unexpected keys [conv1.weight" in err
    (tmp_path / "file").write_text("x")
    assert main(["report", str(mlp_run), "--out", str(tmp_path / "file")]) == 2
    assert "report writes a folder" in _error_line(capsys)

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(graphs, "build", interrupted)
    assert main(["export", str(mlp_run), "--out", str(tmp_path / "g.json")]) == 130
    assert capsys.readouterr().err == "interrupted: export stopped (Ctrl-C)\n"
    assert not (tmp_path / "g.json").exists()


def test_cli_help_describes_every_command_and_option(capsys):
    """Subcommands have descriptions; every option says what it does and its default; a subcommand
    accepts only the options it reads."""
    import re

    from graphs.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    for cmd in ("export", "report", "compact"):
        assert re.search(rf"^    {cmd} +\w", top, flags=re.M), top
    for cmd in ("export", "report", "compact"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        options = text.split("options:")[1]
        entries = re.split(r"\n  (?=-)", options)[2:]  # after -h
        for e in entries:
            assert "default" in e, (cmd, e)
        assert ("--level" in text) == (cmd != "compact") and ("--contract" in text) == (cmd != "compact")
        assert ("--format" in text) == (cmd == "export")
    with pytest.raises(SystemExit):
        main(["compact", "run", "--contract"])
    assert "unrecognized arguments: --contract" in capsys.readouterr().err


@pytest.mark.parametrize("level", ["synapse", "unit", "layer"])
def test_concat_composition_survives_files_and_conversions(tmp_path, level):
    """Exports dropped the concatenation records: concat_composition of a graph read back was []."""
    models = pytest.importorskip("adaptive.models")
    m = models.build_model("densecat", depth=3, width=4, kind="cnn", in_shape=(3, 8, 8))
    conn = adaptive.Connectome(m)
    conn.set_masks({k: torch.rand(v.shape, generator=torch.Generator().manual_seed(2)) < 0.5 for k, v in conn.masks.items()})
    g = graphs.build(conn, level)
    want = graphs.concat_composition(g)
    assert len(want) == 4 and any(len(c["histogram"]) > 1 for c in want)  # channels of several depths
    backs = {
        "json": graphs.read_json(graphs.write(g, tmp_path / "g.json")),
        "graphml": graphs.from_networkx(nx.read_graphml(graphs.write(g, tmp_path / "g.graphml"))),
        "networkx": graphs.from_networkx(graphs.to_networkx(g)),
        "pyg": graphs.from_pyg(graphs.to_pyg(g)),
    }
    for how, back in backs.items():
        got = graphs.concat_composition(back)
        assert len(got) == len(want), how
        for a, b in zip(want, got):
            assert (a["node"], a["parts"], a["histogram"]) == (b["node"], b["parts"], b["histogram"]), how
            assert torch.equal(a["depth"], b["depth"]) and torch.equal(a["depth_min"], b["depth_min"]), how
    with pytest.warns(UserWarning, match="GEXF keeps no graph attributes.*4 concatenation"):
        graphs.write(g, tmp_path / "g.gexf")


@pytest.mark.filterwarnings("ignore")
def test_building_a_graph_of_a_training_mode_spectral_norm_layer_leaves_its_state_alone():
    """A new-style spectral_norm in training mode runs a power iteration at every read of its weight:
    graphs.build moved its buffers and recorded a weight no eval-mode call uses, differing between
    two builds of the same model."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 5))
    nn.utils.parametrizations.spectral_norm(model[0])
    sn = model[0].parametrizations.weight[0]
    with torch.no_grad():
        model[0].parametrizations.weight.original.add_(torch.randn(12, 12))  # as an optimizer step would
    model.eval()
    with torch.no_grad():
        w_eval = model[0].weight.clone()
    model.train()
    u0, v0 = sn._u.clone(), sn._v.clone()
    x = torch.randn(2, 12)
    g = graphs.build(model=model, level="synapse", example_input=x)
    assert torch.equal(u0, sn._u) and torch.equal(v0, sn._v)
    assert model.training and sn.training
    first = g.edge_attrs["layer"] == 0
    w, pos = g.edge_attrs["weight"][first], g.edge_attrs["position"][first]
    torch.testing.assert_close(w, w_eval.reshape(-1)[pos].to(w.dtype))
    g2 = graphs.build(model=model, level="synapse", example_input=x)
    assert torch.equal(g.edge_attrs["weight"], g2.edge_attrs["weight"])


class _FlatCat(nn.Module):
    """Two conv branches, flattened and concatenated before the classifier."""

    def __init__(self, side):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 5, padding=2)
        self.fc = nn.Linear(2 * 8 * side * side, 10)

    def forward(self, x):
        return self.fc(torch.cat([torch.relu(self.a(x)).flatten(1), torch.relu(self.b(x)).flatten(1)], 1))


@pytest.mark.parametrize("level", ["layer", "unit"])
def test_concatenation_records_grow_with_channels_not_pixels(level, tmp_path):
    """The header listed one node id per concatenated element: a flattened 32x32 map made a layer-level
    file 140 times larger. Runs of ids keep it the same size at any resolution, and read back whole."""
    import json

    from graphs.exporters import header

    sizes = {}
    for side in (4, 32):
        m = _FlatCat(side).eval()
        g = graphs.build(model=m, level=level, example_input=torch.randn(1, 3, side, side))
        sizes[side] = len(json.dumps(header(g)["concats"]))
        back = graphs.read_json(graphs.write(g, tmp_path / f"g{side}.json"))
        assert [[(n, ids.tolist()) for n, ids in c["parts"]] for c in back.concats] == \
               [[(n, ids.tolist()) for n, ids in c["parts"]] for c in g.concats]
        assert sum(ids.numel() for _, ids in g.concats[0]["parts"]) == 2 * 8 * side * side
    assert sizes[32] < 2 * sizes[4]  # node ids may take a digit more; one per pixel was 64 times as many


@pytest.mark.parametrize("level", ["layer", "unit"])
def test_concatenation_records_are_plain_lists_unless_an_id_repeats(level, tmp_path):
    """Every record was written as runs (ids, repeats), even with no repeat above 1: GoogLeNet's and
    DenseNet's channel concatenations made headers half again as big as the plain lists. Both forms
    read back whole."""
    from graphs.exporters import header

    cases = {"channels": (Small().eval(), torch.randn(1, 3, 6, 6)), "flattened": (_FlatCat(4).eval(), torch.randn(1, 3, 4, 4))}
    for name, (m, x) in cases.items():
        g = graphs.build(model=m, level=level, example_input=x)
        parts = [ids for c in header(g)["concats"] for _, ids in c["parts"]]
        assert parts and all(isinstance(p, list) if name == "channels" else isinstance(p, dict) for p in parts), name
        back = graphs.read_json(graphs.write(g, tmp_path / f"{name}.json"))
        assert [[(n, ids.tolist()) for n, ids in c["parts"]] for c in back.concats] == \
               [[(n, ids.tolist()) for n, ids in c["parts"]] for c in g.concats], name


def test_cli_on_a_model_that_is_one_linear_layer(tmp_path, capsys):
    """A bare nn.Linear as the whole model: export wrote a graph with none of its live synapses
    (fx traced into the root's forward); export, report and compact now see its one layer."""
    from adaptive.models import _REGISTRY, register_model
    from graphs.cli import main

    torch.manual_seed(0)

    @register_model("bare_linear_for_test")
    def bare(num_classes=10, in_shape=(6,)):
        return nn.Linear(in_shape[0], num_classes)

    try:
        c = adaptive.Connectome(bare(num_classes=4))
        c.set_masks({"weight": torch.rand(4, 6) < 0.5})
        run = tmp_path / "run"
        c.save(run / "connectome.safetensors")
        torch.save(c.dense_state_dict(), run / "model_state.pt")
        (run / "config.yaml").write_text("model: bare_linear_for_test\nnum_classes: 4\nin_shape: [6]\n")
        assert main(["export", str(run), "--format", "json"]) == 0
        assert graphs.read_json(run / "connectome_unit.json").live_synapses() == c.num_live() > 0
        assert main(["report", str(run)]) == 0
        assert json.loads((run / "graph_report" / "summary.json").read_text())["live_synapses"] == c.num_live()
        assert main(["compact", str(run)]) == 0
    finally:
        _REGISTRY.pop("bare_linear_for_test", None)


@pytest.mark.parametrize("cmd", ["export", "compact"])
def test_cli_a_failed_pt_write_is_named_as_one_not_as_a_model_failure(cmd, mlp_run, tmp_path, capsys, monkeypatch):
    """torch.save reports a failed write (a full disk, a folder it may not write) as a RuntimeError,
    which the CLI labelled "rebuilding or tracing the model failed: check --model, --in-shape and
    --num-classes"."""
    from graphs.cli import main

    def full_disk(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: "
                           "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "x.pt"
    assert main([cmd, str(mlp_run), "--out", str(out)]) == 2
    err = _error_line(capsys)
    assert f"cannot write {out}: open file failed with strerror: No space left on device" in err
    assert "--model" not in err and "enforce fail" not in err and not list(tmp_path.iterdir())


def test_cli_export_format_disagreeing_with_a_compressed_out_names_the_whole_ending(mlp_run, tmp_path, capsys):
    """--format graphml --out x.json.gz: the refusal said --out "ends in .json" and to give it a
    .graphml name (which would drop the compression); it names .json.gz and .graphml.gz now."""
    from graphs.cli import main

    assert main(["export", str(mlp_run), "--format", "graphml", "--out", str(tmp_path / "x.json.GZ")]) == 2
    err = _error_line(capsys)
    assert "ends in .json.GZ" in err and "a .graphml.GZ name" in err, err
    assert main(["export", str(mlp_run), "--format", "pt", "--out", str(tmp_path / "x.json.bz2")]) == 2
    err = _error_line(capsys)
    assert "ends in .json.bz2" in err and "a .pt name" in err, err


class _HeadFirst(nn.Module):
    """A classifier whose head is registered before its stem (and used last)."""

    def __init__(self, num_classes=10, in_shape=(6,)):
        super().__init__()
        self.head = nn.Linear(8, num_classes)
        self.stem = nn.Linear(in_shape[0], 8)

    def forward(self, x):
        return self.head(torch.relu(self.stem(x)))


def test_cli_takes_the_class_count_from_the_layer_the_forward_uses_last(tmp_path, capsys):
    """A run that records no class count (no num_classes, no dataset) was rebuilt with the units of the
    connectome's last registered layer: the stem's 8 for a head registered first, so its weights were
    refused. The layer the forward uses last (the head) gives the count now."""
    from adaptive.models import _REGISTRY, register_model
    from graphs.cli import load_run, main

    torch.manual_seed(0)
    register_model("head_first_for_test")(_HeadFirst)
    try:
        c = adaptive.Connectome(_HeadFirst(num_classes=10))
        c.set_masks({k: torch.rand(v.shape) < 0.5 for k, v in c.masks.items()})
        run = tmp_path / "run"
        c.save(run / "connectome.safetensors")
        torch.save(c.dense_state_dict(), run / "model_state.pt")
        (run / "config.yaml").write_text("model: head_first_for_test\nin_shape: [6]\n")
        net, conn = load_run(str(run))
        assert (net.head.out_features, net.stem.out_features, conn.num_live()) == (10, 8, c.num_live())
        assert main(["export", str(run), "--format", "json"]) == 0
        c2 = adaptive.Connectome(_HeadFirst(num_classes=10), exclude=["head*"])  # the head only in the weights file
        c2.save(run / "connectome.safetensors")
        assert load_run(str(run))[0].head.out_features == 10
    finally:
        _REGISTRY.pop("head_first_for_test", None)


def test_docs_name_every_node_and_edge_attribute_at_every_level():
    """docs/graphs.md lists the attributes by name: it named the unit level's only (no position and weight of
    the synapse level, no units, synapses, live, density, wires, recurrent of the layer level) and said that
    `layer` is -1 outside the connectome's layers, where it is the index into g.layers of any weighted layer's
    unit (a Linear outside the connectome included), -1 only on the other kinds of node."""
    import re

    from graphs.trace import KIND_NAMES

    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "graphs.md")).read()
    part = text[text.index("By name ("):text.index("`graphs.summary(g)")]
    named = set(re.findall(r"`([a-z_0-9]+)`", part))
    assert ", ".join(f"{i} {k}" for i, k in enumerate(KIND_NAMES)) in " ".join(part.split())
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    conn = adaptive.Connectome(m, include=["2.weight"])  # the first Linear outside the connectome
    for level in ("synapse", "unit", "layer"):
        g = graphs.build(conn, level, torch.zeros(1, 4), utility={"2.weight": torch.ones(2, 3)})
        assert set(g.node_attrs) | set(g.edge_attrs) | {"name"} <= named, level
        units = g.node_attrs["kind"] == UNIT
        assert sorted(set(g.node_attrs["layer"][units].tolist())) == [0, 1]  # g.layers: 0.weight, 2.weight
        assert (g.node_attrs["layer"][~units] == -1).all() and [x.param for x in g.layers] == ["0.weight", "2.weight"]


def test_per_layer_figures_label_a_few_layers_upright_and_readable(tmp_path, monkeypatch):
    """lenet300's report drew fc1, fc2, fc3 as 6-point text on its side under bars 2 inches wide;
    a ResNet's 20 names still stand on their side, as they must to fit."""
    models = pytest.importorskip("adaptive.models")
    figs = []
    real = graphs.figures._save
    monkeypatch.setattr(graphs.figures, "_save", lambda fig, out_dir, name: figs.append((name, fig)) or real(fig, out_dir, name))
    for model, upright in (("lenet300", True), ("resnet20", False)):
        figs.clear()
        m = models.build_model(model, num_classes=10, in_shape=(1, 28, 28) if model == "lenet300" else (3, 32, 32))
        g = graphs.build(model=m, level="unit")
        for plot in (graphs.figures.plot_density, graphs.figures.plot_dead, graphs.figures.plot_reachability):
            plot(g, tmp_path)
        for name, fig in figs:
            labels = [t for t in fig.axes[0].get_xticklabels() if t.get_text()]
            assert labels, name
            for t in labels:
                assert (t.get_rotation() == 0) == upright, (model, name, t.get_text(), t.get_rotation())
                assert t.get_fontsize() >= 8, (model, name, t.get_text(), t.get_fontsize())


def test_per_layer_figures_keep_eight_medium_layer_names_apart(tmp_path, monkeypatch):
    """Eight names of 12 characters (layer0.conv1, ...) passed the rule "eight or fewer names of 12
    characters or fewer" and stood upright at 9 pt, each running into the next under a 6-inch axis;
    names that do not fit side by side stand on their side, and no two labels overlap."""
    from collections import OrderedDict

    m = nn.Sequential(OrderedDict((f"layer{i}", nn.Sequential(OrderedDict(conv1=nn.Linear(3, 3)))) for i in range(8)))
    g = graphs.build(model=m, level="unit")
    figs = []
    real = graphs.figures._save
    monkeypatch.setattr(graphs.figures, "_save", lambda fig, out_dir, name: figs.append((name, fig)) or real(fig, out_dir, name))
    for plot in (graphs.figures.plot_density, graphs.figures.plot_dead, graphs.figures.plot_reachability):
        plot(g, tmp_path)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for name, fig in figs:  # laid out as saved
        renderer = FigureCanvasAgg(fig).get_renderer()
        labels = [t for t in fig.axes[0].get_xticklabels() if t.get_text()]
        assert [t.get_text() for t in labels][:8] == [f"layer{i}.conv1" for i in range(8)], name  # (reachability: and output)
        boxes = [t.get_window_extent(renderer) for t in labels]
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), (name, [(b.x0, b.x1) for b in boxes])


def test_a_float64_models_synapse_weights_are_its_weights_to_the_last_bit(tmp_path):
    """The graph held every weight as float32: a float64 model's synapse-level ``weight`` edges (and the
    PyG and GraphML exports, float64 columns) were its weights rounded, and unit-level L1 was summed
    from the rounded values."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, dtype=torch.float64))  # not float32 values widened
    conn = adaptive.Connectome(model)
    conn.set_masks({k: torch.rand(v.shape) < 0.7 for k, v in conn.masks.items()})
    x = torch.randn(2, 4, dtype=torch.float64)
    s = graphs.build(conn, "synapse", example_input=x)
    params = dict(model.named_parameters())
    for i, layer in enumerate(s.layers):
        on = (s.edge_attrs["layer"] == i) & (s.edge_attrs["kind"] == 0)
        want = params[layer.param].detach().reshape(-1)[s.edge_attrs["position"][on]]
        assert torch.equal(s.edge_attrs["weight"][on], want), layer.module
    back = graphs.from_pyg(graphs.to_pyg(s))
    assert torch.equal(back.edge_attrs["weight"], s.edge_attrs["weight"])
    graphs.write(s, tmp_path / "s.graphml")
    back = graphs.from_networkx(nx.read_graphml(tmp_path / "s.graphml"))
    assert torch.equal(back.edge_attrs["weight"], s.edge_attrs["weight"])
    u = graphs.build(conn, "unit", example_input=x)
    on = u.edge_attrs["kind"] == 0
    l1 = sum((params[k].detach().abs() * conn.masks[k]).sum() for k in conn.masks)
    assert float(u.edge_attrs["l1"][on].sum()) == pytest.approx(float(l1), rel=1e-12)


def test_per_layer_figures_make_room_for_long_layer_names_on_their_side(tmp_path, monkeypatch):
    """A ViT's 25 names such as encoder.layers.encoder_layer_3.self_attention.out_proj, on their side, were taller
    than the 3.5-inch figure: tight_layout warned "Tight layout not applied" and the saved PNG cut them off."""
    import warnings
    from collections import OrderedDict

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    def block():
        return nn.Sequential(OrderedDict(self_attention=nn.Sequential(OrderedDict(out_proj=nn.Linear(3, 3)))))

    m = nn.Sequential(OrderedDict(encoder=nn.Sequential(OrderedDict((f"encoder_layer_{i}", block()) for i in range(25)))))
    g = graphs.build(model=m, level="unit")
    figs = []
    real = graphs.figures._save
    monkeypatch.setattr(graphs.figures, "_save", lambda fig, out_dir, name: figs.append((name, fig)) or real(fig, out_dir, name))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Tight layout not applied" is a UserWarning
        for plot in (graphs.figures.plot_density, graphs.figures.plot_dead, graphs.figures.plot_reachability):
            plot(g, tmp_path)
    for name, fig in figs:  # laid out as saved: every name whole on the canvas
        renderer = FigureCanvasAgg(fig).get_renderer()
        labels = [t for t in fig.axes[0].get_xticklabels() if t.get_text()]
        assert "encoder.encoder_layer_24.self_attention.out_proj" in [t.get_text() for t in labels], name
        assert all(t.get_window_extent(renderer).y0 >= 0 for t in labels), name
        assert fig.axes[0].get_window_extent(renderer).height >= 1.2 * fig.dpi, name  # an axis to read, not a strip


def test_cli_compact_prints_the_difference_relative_to_the_outputs_too(mlp_run, tmp_path, capsys):
    """"outputs agree to 5.2e-18" alone said nothing of a fresh-initialised model whose outputs are 1e-12."""
    from graphs.cli import main

    assert main(["compact", str(mlp_run), "--out", str(tmp_path / "a.pt")]) == 0
    c = torch.load(tmp_path / "a.pt", weights_only=False).compaction
    assert 0 <= c["max_rel_diff"] < 1e-5 and (c["max_rel_diff"] > 0) == (c["max_abs_diff"] > 0)
    said = f"(outputs agree to {c['max_abs_diff']:.2g}, {c['max_rel_diff']:.2g} relative to their largest magnitude)"
    out = capsys.readouterr().out
    assert said in out and f"{said}, checked at atol 0.0001 (x each output's largest magnitude where below 1), rtol 0.0001;" in out


def test_per_layer_figure_legends_lie_beside_the_axes_on_the_saved_canvas(tmp_path, monkeypatch):
    """dead_units.png of lenet300 at 5% density: fc2's bar (88% dead) reached under the legend, which matplotlib's
    "best" placed inside over it, every corner holding a bar. The legends of the dead-units and reachability
    figures now lie right of the axes, and the saved canvas holds them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    models = pytest.importorskip("adaptive.models")
    m = models.build_model("lenet300", num_classes=10, in_shape=(1, 28, 28))
    g = graphs.build(model=m, level="unit")
    figs = []
    real = graphs.figures._save
    monkeypatch.setattr(graphs.figures, "_save", lambda fig, out_dir, name: figs.append((name, fig)) or real(fig, out_dir, name))
    for plot in (graphs.figures.plot_dead, graphs.figures.plot_reachability):
        path = plot(g, tmp_path)
        from PIL import Image

        with Image.open(path) as im:
            width = im.size[0]
        name, fig = figs[-1]
        renderer = FigureCanvasAgg(fig).get_renderer()
        ax = fig.axes[0]
        legend = ax.get_legend().get_window_extent(renderer)
        assert not legend.overlaps(ax.get_window_extent(renderer)), name
        assert legend.x0 > ax.get_window_extent(renderer).x1, name
        assert width > fig.get_figwidth() * 110, name  # the canvas grew to hold it (dpi 110)


def test_a_synapse_level_multigraph_is_the_one_add_edges_from_makes():
    """to_networkx fills a MultiDiGraph's adjacency dicts directly (networkx's add_edges_from checked and
    called per edge): the same edges, keys, attributes and insertion orders, out and in, each pair's key
    dict shared by its successor and predecessor entries, and it reads back and edits as networkx's own."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4))
    conn = adaptive.Connectome(net)
    conn.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in conn.masks.items()})
    g = graphs.build(conn, level="synapse", example_input=torch.randn(1, 12))
    G = graphs.to_networkx(g)
    H = nx.MultiDiGraph()
    H.graph.update(G.graph)
    H.add_nodes_from(G.nodes(data=True))
    datas = [dict(zip(g.edge_attrs, c)) for c in zip(*[v.tolist() for v in g.edge_attrs.values()])]
    H.add_edges_from(zip(g.src.tolist(), g.dst.tolist(), range(len(datas)), datas))
    assert list(G.edges(keys=True, data=True)) == list(H.edges(keys=True, data=True))
    assert list(G.in_edges(keys=True, data=True)) == list(H.in_edges(keys=True, data=True))
    assert all(G._pred[v][u] is G._succ[u][v] for u, v in G.edges())
    assert nx.utils.graphs_equal(G, H) and G.number_of_edges() == g.src.numel()
    back = graphs.from_networkx(G)
    assert torch.equal(back.src, g.src) and torch.equal(back.dst, g.dst)
    u, v = g.src[0].item(), g.dst[0].item()
    G.remove_edge(u, v, key=0)
    assert not G.has_edge(u, v, key=0) and not any(k == 0 for _, _, k in G.in_edges(v, keys=True))


def test_the_cli_names_its_own_options_not_the_apis_example_input_when_the_model_fails_on_its_input(
        mlp_run, tmp_path, capsys):
    """The API's advice ("pass an example_input ...") reached the command line, which has no such option."""
    from graphs.cli import main

    assert main(["report", str(mlp_run), "--in-dtype", "long", "--out", str(tmp_path / "rep")]) == 2
    err = _error_line(capsys)
    assert "running MLP on example_input failed" in err and "check --model, --in-shape, --in-dtype" in err
    assert "pass an example_input" not in err
