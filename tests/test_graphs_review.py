"""Review of the graph export: unit edges recomputed from the masks with plain torch, densities of
graphs with contracted junctions, connectomes of other models, atomic file writes."""
import json

import pytest
import torch
from torch import nn

import adaptive
import graphs
from adaptive.models import build_model
from _figures import close_kept_figures


_close_kept_figures = pytest.fixture(autouse=True)(close_kept_figures)


def _random_masks(conn, density=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = {n: torch.rand(p.shape, generator=g) < density for n, p in conn.params.items()}
    for m in masks.values():
        m[:1] = False  # one dead unit per layer
    conn.set_masks(masks)


def test_unit_edges_recomputed_from_masks_lenet5():
    torch.manual_seed(0)
    conn = adaptive.Connectome(build_model("lenet5"))
    _random_masks(conn, 0.2)
    g = graphs.build(conn, "unit")
    groups = {x.name: x for x in g.groups}
    syn = g.edge_attrs["kind"] == graphs.graph.EDGE_SYNAPSE
    for name, p in conn.params.items():
        m, w = conn.masks[name], p.detach()
        x = groups[name.rsplit(".", 1)[0]]
        sel = syn & (g.dst >= x.start) & (g.dst < x.start + x.count)
        if m.dim() == 4:  # channel i -> unit o exists iff a kernel weight between them is live
            m3, w3 = m.flatten(2), (w * m).flatten(2)
        else:  # a Linear reading a flattened map: the h*w features of a channel share one source
            k = m.shape[1] // len(torch.unique(g.layers[x.layer].in_src))
            m3, w3 = m.view(m.shape[0], -1, k), (w * m).view(m.shape[0], -1, k)
        live = m3.any(-1)
        o = g.dst[sel] - x.start
        i = torch.searchsorted(torch.unique(g.layers[x.layer].in_src), g.src[sel])
        assert int(sel.sum()) == int(live.sum())
        assert bool(live[o, i].all())
        assert torch.equal(g.edge_attrs["count"][sel].long(), m3.sum(-1)[o, i])
        torch.testing.assert_close(g.edge_attrs["l1"][sel], w3.abs().sum(-1)[o, i])
        torch.testing.assert_close(g.edge_attrs["l2"][sel], w3.norm(dim=-1)[o, i])
    assert graphs.summary(g)["dead"]["no_live_input"] == len(conn.params)


def test_contracted_junctions_keep_true_layer_densities():
    conn = adaptive.Connectome(build_model("resnet20"))
    _random_masks(conn)
    tr = graphs.trace(conn.model)
    ref = {k[: -len(".weight")]: v for k, v in conn.layer_density().items()}
    unit = graphs.build(conn, "unit", traced=tr, junctions=False)
    layer = graphs.build(conn, "layer", traced=tr, junctions=False)
    for g in (unit, layer, graphs.from_pyg(graphs.to_pyg(unit))):
        assert graphs.density_per_layer(g) == pytest.approx(ref, abs=1e-12)
    live = dict(zip([x.name for x in layer.groups], layer.node_attrs["live"].tolist()))
    assert sum(live[k] for k in ref) == conn.num_live()


def test_connectome_of_another_model_is_refused():
    conn = adaptive.Connectome(build_model("lenet300", in_shape=(1, 28, 28)))
    with pytest.raises(ValueError, match="does not fit the model.*fc1.weight: mask \\(300, 784\\), weight \\(120, 400\\)"):
        graphs.build(conn, "unit", model=build_model("lenet5"))
    other = adaptive.Connectome(build_model("densecat", in_shape=(20,), depth=2, width=4))
    with pytest.raises(ValueError, match="none of its layers"):
        graphs.build(other, "unit", model=build_model("lenet5"))


def test_layer_graph_of_a_layer_graph_is_refused():
    g = graphs.build(model=build_model("lenet300", in_shape=(1, 28, 28)), level="layer")
    with pytest.raises(ValueError, match="already at the layer level"):
        graphs.layer_graph(g)


def test_failing_writer_leaves_the_old_file(tmp_path):
    g = graphs.build(model=build_model("lenet300", in_shape=(1, 28, 28)), level="layer")
    path = tmp_path / "g.json"
    graphs.write(g, path)
    before = path.read_bytes()

    @graphs.register_writer(".json", replace=True)
    def broken(g, p):
        with open(p, "w") as f:
            f.write('{"half": ')
        raise OSError("disk full")

    try:
        with pytest.raises(OSError, match="disk full"):
            graphs.write(g, path)
    finally:
        graphs.register_writer(".json", replace=True)(graphs.exporters.write_json)
    assert path.read_bytes() == before and json.loads(before)["level"] == "layer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.json"]


def test_model_spec_reads_the_input_size_of_folder_and_imagenet_runs():
    import argparse

    from graphs.cli import _model_spec

    ns = argparse.Namespace(model=None, num_classes=None, in_shape=None)
    name, kw = _model_spec({"model": "resnet20", "dataset": "folder", "dataset_kw": {"image_size": 32}}, ns)
    assert name == "resnet20" and kw == {"in_shape": (3, 32, 32)}  # classes: from the connectome
    _, kw = _model_spec({"model": "mlp", "dataset": "folder"}, ns)
    assert kw == {"in_shape": (3, 224, 224)}
    _, kw = _model_spec({"model": "torchvision:mobilenet_v3_large", "dataset": "imagenet",
                         "dataset_kw": {"image_size": 160}}, ns)
    assert kw == {"in_shape": (3, 160, 160)}  # an ImageNet folder may hold any classes: the connectome says
    _, kw = _model_spec({"model": "torchvision:resnet18", "dataset": "imagenet", "num_classes": 3}, ns)
    assert kw["num_classes"] == 3  # what the run recorded wins over any default


def test_summary_of_a_layer_graph_says_summary_and_what_a_layer_graph_gives():
    """The refusal named dead units, a call the user had not made, and not what a layer graph offers."""
    conn = adaptive.Connectome(torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)))
    layer = graphs.build(conn, "layer", example_input=torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"graphs\.summary counts dead .*build it at unit or synapse level.*"
                                         r"graphs\.density_per_layer\(g\)"):
        graphs.summary(layer)
    assert graphs.density_per_layer(layer) == {"0": 1.0, "2": 1.0}


def test_unit_facts_refuse_a_layer_graph_and_the_report_reads_units(tmp_path, capsys, monkeypatch):
    """Dead units and reachability are facts about single units: a layer-level graph (nodes are
    whole layers) is refused with the fix, and `report --level layer` reports on the unit graph."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.figure

    from graphs.cli import main

    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, in_shape=(1, 8, 8))
    conn = adaptive.Connectome(model)
    masks = {n: torch.ones_like(m) for n, m in conn.masks.items()}
    first = next(iter(masks))
    masks[first][:5] = False  # five hidden units of the first layer lose every input synapse,
    masks[list(masks)[1]][:, :1] = False  # and the first of them every output synapse too
    conn.set_masks(masks)
    layer = graphs.build(conn, "layer")
    for fn in (graphs.analysis.dead_units, graphs.analysis.reachability, graphs.summary):
        with pytest.raises(ValueError, match="build it at unit or synapse level"):
            fn(layer)
    unit = graphs.build(conn, "unit")
    assert graphs.summary(unit)["dead"]["no_live_input"] == 5
    run = tmp_path / "run"
    run.mkdir()
    conn.save(run / "connectome.safetensors")
    torch.save(conn.dense_state_dict(), run / "dense_state_dict.pt")
    (run / "config.yaml").write_text("model: mlp\ndataset: digits\n")
    bars = {}
    real_bar = matplotlib.axes.Axes.bar

    def spy(ax, x, h, *a, **kw):  # the dead-unit figure's bars: disjoint parts stacked to the dead fraction
        bars.setdefault(kw.get("label"), list(h))
        return real_bar(ax, x, h, *a, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy)
    assert main(["report", str(run), "--level", "layer"]) == 0
    out = capsys.readouterr()
    assert "reads the unit-level graph" in out.err
    s = json.loads((run / "graph_report" / "summary.json").read_text())
    assert s["level"] == "unit" and s["dead"]["dead"] == 5
    stacked = [sum(v) for v in zip(*(h for k, h in bars.items() if k and k != "density"))]
    assert stacked[0] == pytest.approx(5 / conn.masks[first].shape[0]) and all(v <= 1 for v in stacked)


def test_a_misspelt_option_is_reported_with_the_subcommand_usage(capsys):
    from graphs.cli import main

    with pytest.raises(SystemExit):
        main(["report", "somewhere", "--levle", "unit"])
    err = capsys.readouterr().err
    assert "usage: python -m graphs report" in err and "unrecognized arguments: --levle unit" in err


class _TiedPair(nn.Module):
    """dec reuses enc's weight (one set of synapses, two uses on the data path)."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.out(torch.relu(self.dec(torch.relu(self.enc(x)))))


@pytest.mark.parametrize("level", ["synapse", "unit", "layer"])
def test_a_tied_weight_has_edges_at_each_use_and_counts_once(level):
    torch.manual_seed(0)
    conn = adaptive.Connectome(_TiedPair())
    conn.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in conn.masks.items()})
    with pytest.warns(UserWarning, match="1 weight\\(s\\) are used by several layers"):
        g = graphs.build(conn, level=level, example_input=torch.randn(1, 8))
    assert g.live_synapses() == conn.num_live()
    if level != "layer":
        assert graphs.summary(g)["live_synapses"] == conn.num_live()
    if level == "synapse":  # both uses are on the data path
        from graphs.trace import EDGE_SYNAPSE

        tied = int(conn.masks["enc.weight"].sum())
        assert int((g.edge_attrs["kind"] == EDGE_SYNAPSE).sum()) == conn.num_live() + tied


def test_a_damaged_config_is_named_and_model_overrides_it(tmp_path, capsys):
    """A truncated or binary-damaged config.yaml gave a yaml ScannerError or 'utf-8 codec' traceback
    naming no file; it is one line naming the file now, and --model goes on without it."""
    from graphs.cli import main

    model = build_model("mlp", num_classes=10, in_shape=(1, 8, 8))
    run = tmp_path / "run"
    run.mkdir()
    adaptive.Connectome(model).save(run / "connectome.safetensors")
    for damage in (b"model: mlp\ndataset: [digits\n", b"model: ml\xff\xfe\n", b"- a list\n"):
        (run / "config.yaml").write_bytes(damage)
        assert main(["export", str(run), "--out", str(tmp_path / "g.graphml")]) == 2
        err = capsys.readouterr().err
        assert "config.yaml" in err and "damaged" in err and "--model" in err and "Traceback" not in err
    with pytest.warns(UserWarning, match="config.yaml.*ignored, the model is --model mlp"):
        assert main(["export", str(run), "--model", "mlp", "--num-classes", "10", "--in-shape", "1,8,8",
                     "--out", str(tmp_path / "g.graphml")]) == 0
    assert (tmp_path / "g.graphml").is_file()


def test_degree_distribution_refuses_a_layer_graph_and_concats_of_a_read_one_are_none(tmp_path):
    """On a layer-level graph degree_distribution sliced the layer nodes with the unit-level group
    spans: the first layer got the degrees of unrelated nodes, the others empty tensors."""
    torch.manual_seed(0)
    conn = adaptive.Connectome(build_model("lenet5", num_classes=10, in_shape=(1, 28, 28)))
    unit = graphs.build(conn, "unit")
    assert {k: v.numel() for k, v in graphs.degree_distribution(unit, "in").items()} == {
        "conv1": 6, "conv2": 16, "fc1": 120, "fc2": 84, "fc3": 10}
    layer = graphs.build(conn, "layer")
    with pytest.raises(ValueError, match=r"build it at unit or synapse level.*g.node_attrs\['out_degree'\]"):
        graphs.degree_distribution(layer, "out")
    with pytest.raises(ValueError, match="which must be 'in' or 'out'"):
        graphs.degree_distribution(unit, "both")
    # LeNet-5 concatenates nothing: a layer-level graph of it read back from a file has none to report
    read = graphs.read_json(graphs.write(layer, tmp_path / "g.json"))
    assert read.level == "layer" and graphs.concat_composition(read) == []


def test_build_takes_a_torch_compile_wrapper_as_connectome_does():
    """Connectome(torch.compile(m)) uses the module the wrapper runs; graphs.build(conn,
    model=torch.compile(m)) fell back to module order with an fx error about OptimizedModule."""
    import warnings

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    conn = adaptive.Connectome(m)
    masks = {n: torch.rand(mk.shape) < 0.5 for n, mk in conn.masks.items()}
    conn.set_masks(masks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        g = graphs.build(conn, level="synapse", model=torch.compile(m), example_input=torch.randn(1, 3, 8, 8))
    plain = graphs.build(conn, level="synapse", example_input=torch.randn(1, 3, 8, 8))
    assert g.live_synapses() == plain.live_synapses() == conn.num_live()
    assert graphs.to_networkx(g).number_of_edges() == graphs.to_networkx(plain).number_of_edges()
    compiled = torch.compile(m)  # a trace of the wrapper, reused: it named the weights '_orig_mod.*'
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tr = graphs.trace(compiled, torch.randn(1, 3, 8, 8))
        assert graphs.build(conn, level="synapse", model=compiled, traced=tr).live_synapses() == conn.num_live()


def test_writers_and_exporters_follow_the_registry_rule(tmp_path):
    """register_writer("JSONL") stored ".JSONL", which write() (lowercasing the file's extension)
    never found; a writer or exporter registered under a built-in's name replaced it silently."""
    g = graphs.build(model=build_model("lenet300", in_shape=(1, 28, 28)), level="layer")
    seen = []

    @graphs.register_writer("MyFmt")
    def mine(g, p):
        seen.append(p)
        with open(p, "w") as f:
            f.write("ok")

    try:
        for name in ("a.myfmt", "b.MYFMT"):
            graphs.write(g, tmp_path / name)
        graphs.write(g, tmp_path / "c.txt", format="MYFMT")
        assert len(seen) == 3 and (tmp_path / "c.txt").read_text() == "ok"
        assert graphs.write(g, tmp_path / "d.bin", format="JSON") and json.loads((tmp_path / "d.bin").read_text())
    finally:
        graphs.WRITERS.pop(".myfmt", None)
    with pytest.raises(ValueError, match=r"graph writer '.json' is already registered .*replace=True"):
        graphs.register_writer(".JSON")(lambda g, p: None)
    with pytest.raises(ValueError, match=r"graph exporter 'pyg' is already registered .*replace=True"):
        graphs.register_exporter("pyg")(lambda g: None)
    assert graphs.WRITERS[".json"] is graphs.exporters.write_json and "pyg" in graphs.EXPORTERS
    with pytest.raises(ValueError, match="extension is a non-empty string"):
        graphs.register_writer(".")


def test_a_run_folder_of_several_targets_names_its_remove_subfolders(tmp_path, capsys):
    """prune_pretrained.py writes one remove_<target> folder per target, and the top-level folder
    holds no connectome: the error said only that none was there, not which folder to pass."""
    from graphs.cli import main

    model = build_model("mlp", num_classes=10, in_shape=(1, 8, 8))
    run = tmp_path / "run"
    for target in ("0.2", "0.5"):
        (run / f"remove_{target}").mkdir(parents=True)
        adaptive.Connectome(model).save(run / f"remove_{target}" / "connectome.safetensors")
    (run / "remove_0.9").mkdir()  # no connectome in it: not named
    (run / "config.yaml").write_text("model: mlp\ndataset: digits\n")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is a run of several targets" in err and "Traceback" not in err
    assert str(run / "remove_0.2") in err and str(run / "remove_0.5") in err and "remove_0.9" not in err
    assert main(["report", str(run / "remove_0.2"), "--out", str(tmp_path / "rep")]) == 0


def test_plugins_given_several_times_add_up():
    """--plugins a.py --plugins b.py loaded only b.py (argparse kept the last one's values)."""
    from graphs.cli import _parser

    p, _ = _parser()
    for cmd in ("export", "report", "compact"):
        assert p.parse_args([cmd, "run", "--plugins", "a.py", "--plugins", "b.py", "c.py"]).plugins == [
            "a.py", "b.py", "c.py"]
        assert p.parse_args([cmd, "run"]).plugins == []


def test_degree_histogram_gives_units_of_degree_zero_a_bar_of_their_own(tmp_path, monkeypatch):
    """Fifty equal bins over degrees 0..64 are 1.28 wide, so the first bar of the out-degree histogram
    held the units with no live output together with every unit of out-degree 1 (a ResNet's conv2
    units, which write to one junction each): a pretrained ResNet-20 pruned to 50% with 9 such units
    showed about 340."""
    import graphs.figures as figures

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 60))
    conn = adaptive.Connectome(model)
    masks = {n: torch.ones_like(m) for n, m in conn.masks.items()}
    masks["2.weight"][:, :2] = False  # hidden units 0 and 1 feed nothing: out-degree 0
    conn.set_masks(masks)
    g = graphs.build(conn, "unit")
    out_deg = g.node_attrs["out_degree"][g.node_attrs["kind"] == 2]
    assert int((out_deg == 0).sum()) == 2 and int((out_deg == 1).sum()) == 60  # the 60 outputs' units
    figs = []
    monkeypatch.setattr(figures, "_save", lambda fig, out_dir, name: figs.append(fig) or name)
    figures.plot_degrees(g, tmp_path)
    bars = [p for p in figs[0].axes[1].patches if p.get_height() > 0]
    first = min(bars, key=lambda p: p.get_x())
    assert first.get_height() == 2 and first.get_x() < 0 < first.get_x() + first.get_width() <= 0.5
    assert all(p.get_x() + p.get_width() <= 0.5 or p.get_x() >= 0.5 for p in bars)  # no bar spans 0 and 1


def test_degree_bins_stay_few_and_the_bar_of_degree_zero_as_wide_as_the_others():
    """A unit of degree 100,000 gives bins 2,000 degrees wide: the bin of degree 0 was one degree wide,
    1/100,000 of the axis, so the bar of the dead units could not be seen."""
    import graphs.figures as figures

    for top in (0, 1, 64, 100_000):
        deg = torch.tensor([0, 0, 1, top])
        edges = figures.degree_bins(deg)
        widths = [b - a for a, b in zip(edges, edges[1:])]
        assert len(widths) <= 51 and len(set(widths)) == 1  # bounded, all bars alike
        assert edges[0] < 0 < edges[1] <= 0.5 and edges[-1] >= top  # degree 0 alone; the top degree counted
        assert all(float(e).is_integer() is False for e in edges)  # no degree on an edge


def test_report_into_a_pipe_its_reader_closed_still_writes_its_files(tmp_path, monkeypatch):
    """`python -m graphs report RUN | head -2`: the closed pipe's BrokenPipeError stopped the report
    before summary.json and the figures were written, and ended it with status 2."""
    from graphs.cli import main

    class Closed:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    model = build_model("mlp", num_classes=10, in_shape=(1, 8, 8))
    run = tmp_path / "run"
    adaptive.Connectome(model).save(run / "connectome.safetensors")
    (run / "config.yaml").write_text("model: mlp\ndataset: digits\n")
    monkeypatch.setattr("sys.stdout", Closed())
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "summary.json").is_file() and (tmp_path / "rep" / "reachability.png").is_file()


def test_report_line_says_which_edges_carry_no_synapse():
    """The report printed '53,250 edges' beside '53,240 live synapses' with no word on the 10 extra
    edges (the wires from the last layer's units to the output nodes): the line now splits the edge
    count into synapse edges and wires, recounted here from the graph's edge kinds."""
    from graphs.cli import format_summary

    torch.manual_seed(0)
    conn = adaptive.Connectome(build_model("mlp", num_classes=10, in_shape=(1, 8, 8)))
    _random_masks(conn, 0.5)
    g = graphs.build(conn, "unit")
    kind = g.edge_attrs["kind"]
    synapse, wire = int((kind == graphs.graph.EDGE_SYNAPSE).sum()), int((kind == graphs.graph.EDGE_WIRE).sum())
    assert wire == 10 and synapse + wire == g.num_edges  # one wire per output class, nothing else
    s = graphs.summary(g)
    assert s["edge_kinds"] == {"synapse": synapse, "wire": wire, "recurrent": 0}
    line = format_summary(s).splitlines()[0]
    assert (f"{g.num_edges:,} edges ({synapse:,} synapse edges; {wire:,} wires carrying no synapse: into the outputs"
            in line), line
    assert f"{conn.num_live():,} live synapses" in line


def test_report_densities_are_never_rounded_onto_all_or_none():
    """The report printed a layer with 1 of its 235,200 synapses pruned as "100.00%" and one with 1 of 30,000 live
    as "0.00%": a pruned layer read as dense, a live one as empty (summary.json held the exact values)."""
    from graphs.cli import format_summary

    conn = adaptive.Connectome(build_model("lenet300", num_classes=10, in_shape=(1, 28, 28)))
    fc1, fc2, fc3 = conn.names
    with torch.no_grad():
        conn.masks[fc1].view(-1)[0] = False
        conn.masks[fc2].zero_()
        conn.masks[fc2].view(-1)[0] = True
    lines = {line.split()[0]: line.split()[-1] for line in format_summary(graphs.summary(graphs.build(conn, "unit")))
             .split("density per layer:\n")[1].splitlines() if line.startswith("  ")}
    assert lines == {"fc1": "99.9996%", "fc2": "0.003%", "fc3": "100.00%"}, lines


class _Concatenating(nn.Module):
    """Two concatenations (DenseNet-like), no addition: its only wires are those into the outputs."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(5, 4), nn.Linear(9, 4), nn.Linear(13, 3)

    def forward(self, x):
        h = torch.cat([x, torch.relu(self.a(x))], 1)
        return self.c(torch.cat([h, torch.relu(self.b(h))], 1))


class _Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(6, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def test_report_line_names_the_wires_a_graph_has_not_concatenation_links():
    """The line called every wire 'output wiring, residual and concatenation links', but a concatenation
    makes no wire (its units feed the next layer's synapse edges), and an LSTM's wires run into its gates'
    junctions: the counts add up to the edges at unit and synapse level, and the words name junctions."""
    from graphs.cli import format_summary

    torch.manual_seed(0)
    for model, outputs in ((_Concatenating(), 3), (_Tagger(), 3)):
        conn = adaptive.Connectome(model)
        for level in ("unit", "synapse"):
            s = graphs.summary(graphs.build(conn, level))
            kinds = s["edge_kinds"]
            assert sum(kinds.values()) == s["edges"], (level, kinds)
            if isinstance(model, _Concatenating):
                assert kinds == {"synapse": s["edges"] - outputs, "wire": outputs, "recurrent": 0}
            else:
                assert kinds["recurrent"] == 8 and kinds["wire"] > outputs and s["junctions"] > 0
            line = format_summary(s).splitlines()[0]
            assert "concatenation links" not in line and "into the outputs, into junctions" in line, line


def test_two_functions_one_factory_made_are_two_definitions_under_one_name(tmp_path):
    """Every closure one factory makes has one qualified name, so a second exporter registered under a
    taken name replaced the first silently (export() returned the other's result); the same definition
    registered again (a plugin file loaded twice) stays quiet."""
    def make(column):
        def exporter(g):
            return ("exporter for", column)
        return exporter

    try:
        graphs.register_exporter("cols_review")(make("l1"))
        graphs.register_exporter("cols_review")(make("l1"))  # the same definition again: quiet
        with pytest.raises(ValueError, match=r"graph exporter 'cols_review' is already registered "
                                             r"\(.*exporter with closure \('l1'\)\); register .*exporter with closure "
                                             r"\('l2'\) under another name, or pass replace=True"):
            graphs.register_exporter("cols_review")(make("l2"))
        g = graphs.build(adaptive.Connectome(build_model("mlp", in_shape=(4,), num_classes=3)), level="layer")
        assert graphs.export(g, "cols_review") == ("exporter for", "l1")
    finally:
        graphs.EXPORTERS.pop("cols_review", None)


def test_a_writer_of_a_two_part_extension_is_chosen_by_the_path(tmp_path):
    """register_writer(".tar.gz") was taken and listed, but write(g, "b.tar.gz") read only the last suffix:
    "unknown format '.gz'; known are [..., '.tar.gz']"."""
    g = graphs.build(adaptive.Connectome(build_model("mlp", in_shape=(4,), num_classes=3)), level="layer")
    try:
        graphs.register_writer(".tar.gz")(lambda g, p: open(p, "w").write("tarred"))
        graphs.write(g, tmp_path / "b.TAR.gz")
        assert (tmp_path / "b.TAR.gz").read_text() == "tarred"
        graphs.write(g, tmp_path / "c.json.gz")  # a built-in format compressed: as before
        assert graphs.read_json(tmp_path / "c.json.gz").num_nodes == g.num_nodes
    finally:
        graphs.WRITERS.pop(".tar.gz", None)


@pytest.mark.parametrize("suffix", [".json.gz", ".graphml.gz", ".gexf.gz"])
def test_a_compressed_graph_file_is_the_same_bytes_at_every_write(tmp_path, suffix):
    """gzip.open on the atomic write's temporary path recorded that name (with a pid and a random token)
    and the time in the gzip header: two writes of one graph differed, and gunzip -N restored the
    temporary name."""
    import gzip

    g = graphs.build(adaptive.Connectome(build_model("mlp", in_shape=(4,), num_classes=3)), level="unit")
    graphs.write(g, tmp_path / f"a{suffix}")
    graphs.write(g, tmp_path / f"b{suffix}")
    a, b = (tmp_path / f"a{suffix}").read_bytes(), (tmp_path / f"b{suffix}").read_bytes()
    assert a == b
    assert a[3] & 0x08 == 0 and a[4:8] == b"\0\0\0\0"  # no FNAME field, no time in the header
    assert gzip.decompress(a).decode().lstrip().startswith(("{", "<?xml"))


def test_a_module_named_as_another_modules_later_call_is_refused():
    """A ModuleDict key "fc#2" beside "fc" called twice: graphs labels the second call of d.fc "d.fc#2",
    so two layers shared their units' names and density_per_layer kept one of them."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.d = nn.ModuleDict({"fc": nn.Linear(4, 4), "fc#2": nn.Linear(4, 3)})

        def forward(self, x):
            return self.d["fc#2"](torch.relu(self.d["fc"](torch.relu(self.d["fc"](x)))))

    conn = adaptive.Connectome(M().eval())
    with pytest.raises(ValueError, match=r"the module 'd.fc#2' is named as the call #2 of 'd.fc' would be: rename it "
                                         r"without '#'"):
        graphs.build(conn, level="unit", example_input=torch.randn(2, 4))
