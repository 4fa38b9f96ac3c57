"""graphs.write(g, "x.graphml") writes GraphML from the graph's columns, a chunk at a time: networkx
reads the file back to the graph it read from nx.write_graphml(to_networkx(g, flat=True)), the writer
used before, and memory stays bounded by the chunk (that writer's grew with the edges)."""
import dataclasses
import os
import tracemalloc
import xml.etree.ElementTree as ET

import networkx as nx
import pytest
import torch
from torch import nn

import adaptive
import graphs
import graphs.exporters
from test_graphs_export import Small

torch.set_num_threads(1)
NS = "{http://graphml.graphdrawing.org/xmlns}"


Cat = Small  # a channel concatenation and a residual sum


class Attention(nn.Module):  # multi-head attention, LayerNorm's statistics junctions, an MLP
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 6), nn.GELU(), nn.Linear(6, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        h = self.norm(h + self.attn(h, h, h, need_weights=False)[0])
        return self.head((h + self.mlp(h)).mean(1))


def _conn(model, empty=()):
    torch.manual_seed(0)
    c = adaptive.Connectome(model)
    gen = torch.Generator().manual_seed(1)
    masks = {k: torch.rand(v.shape, generator=gen) < 0.5 for k, v in c.masks.items()}
    for k in empty:  # a pruned layer: no live synapse
        masks[k] = torch.zeros_like(masks[k])
    c.set_masks(masks)
    return c


CASES = {
    "concat": lambda: (_conn(Cat()), None),
    "concat_pruned_layer": lambda: (_conn(Cat(), empty=["b.weight"]), None),
    "attention_layernorm": lambda: (_conn(Attention(), empty=["mlp.0.weight"]), torch.randn(2, 5, 4)),
}


def _escaped(g):
    """``g`` with names, warnings and meta that XML must escape (node names are group names)."""
    odd = 'a<b>&c"d\'e'
    groups = [dataclasses.replace(x, name=f"{x.name}{odd}") if i % 2 else x for i, x in enumerate(g.groups)]
    return dataclasses.replace(g, groups=groups, warnings=g.warnings + [f"op {odd} <built-in function> & more"],
                               meta={**g.meta, "model": f"Net{odd}"})


def _reference(g, path):
    """The writer graphs used before: networkx's, from the networkx graph."""
    nx.write_graphml(graphs.to_networkx(g, flat=True), path)


def _keys(path):
    return sorted((k.get("for"), k.get("attr.name"), k.get("attr.type")) for k in ET.parse(path).getroot().iter(f"{NS}key"))


def assert_same_read(new, old):
    """nx.read_graphml gives the same graph from both files: type, graph attributes, nodes and edges
    with their attributes (and the attributes' Python types), in the same order both ways."""
    A, B = nx.read_graphml(new), nx.read_graphml(old)
    assert type(A) is type(B) and A.is_directed() and B.is_directed()
    assert A.graph == B.graph
    assert list(A.nodes(data=True)) == list(B.nodes(data=True))
    ea = list(A.edges(keys=True, data=True) if A.is_multigraph() else A.edges(data=True))
    eb = list(B.edges(keys=True, data=True) if B.is_multigraph() else B.edges(data=True))
    assert ea == eb
    assert [tuple(map(type, d.values())) for *_, d in ea] == [tuple(map(type, d.values())) for *_, d in eb]
    assert [tuple(map(type, d.values())) for _, d in A.nodes(data=True)] == [tuple(map(type, d.values())) for _, d in B.nodes(data=True)]
    assert [list(A.pred[v]) for v in A] == [list(B.pred[v]) for v in B]
    assert _keys(new) == _keys(old)
    return A


@pytest.mark.parametrize("escape", [False, True], ids=["plain", "escaped"])
@pytest.mark.parametrize("level", ["unit", "synapse", "layer"])
@pytest.mark.parametrize("case", list(CASES))
def test_graphml_reads_back_as_networkx_wrote_it(case, level, escape, tmp_path, monkeypatch):
    conn, x = CASES[case]()
    g = graphs.build(conn, level, example_input=x)
    if escape:
        g = _escaped(g)
    assert g.num_edges > 0
    _reference(g, tmp_path / "old.graphml")
    for chunk in (1 << 18, 1, 7):  # the default chunk holds the whole graph: edges split at odd places too
        monkeypatch.setattr(graphs.exporters, "GRAPHML_CHUNK", chunk, raising=False)
        G = assert_same_read(graphs.write(g, tmp_path / f"new{chunk}.graphml"), tmp_path / "old.graphml")
    back = graphs.from_networkx(G)
    assert back.num_edges == g.num_edges and back.node_names() == g.node_names()
    assert back.warnings == g.warnings and back.meta["model"] == g.meta["model"]
    for a, b in zip(graphs.concat_composition(g), graphs.concat_composition(back), strict=True):
        assert (a["node"], a["parts"], a["histogram"]) == (b["node"], b["parts"], b["histogram"])
        assert torch.equal(a["depth"], b["depth"]) and torch.equal(a["depth_min"], b["depth_min"])


def test_graphml_of_a_repeated_node_pair_and_of_no_edges(tmp_path):
    """Off the synapse level networkx holds one edge per node pair (where it first came, with the last
    one's attributes); a graph without edges declares no edge keys. Bool and float attributes keep
    their GraphML types (boolean, double)."""
    g = graphs.build(_conn(Cat()), "unit")
    g.node_attrs["flag"] = torch.arange(g.num_nodes) % 3 == 0
    g.node_attrs["score"] = torch.linspace(-1e-7, 3e17, g.num_nodes, dtype=torch.float64)
    twice = torch.tensor([3, 0, 3, g.num_edges - 1])
    rep = dataclasses.replace(g, src=torch.cat([g.src, g.src[twice]]), dst=torch.cat([g.dst, g.dst[twice]]),
                              edge_attrs={k: torch.cat([v, v[twice] + 1]) for k, v in g.edge_attrs.items()})
    none = dataclasses.replace(g, src=g.src[:0], dst=g.dst[:0], edge_attrs={k: v[:0] for k, v in g.edge_attrs.items()})
    for i, h in enumerate([rep, none]):
        _reference(h, tmp_path / f"old{i}.graphml")
        graphs.write(h, tmp_path / f"new{i}.graphml")
        G = assert_same_read(tmp_path / f"new{i}.graphml", tmp_path / f"old{i}.graphml")
        assert G.number_of_edges() == (g.num_edges if h is rep else 0)
    assert ("node", "flag", "boolean") in _keys(tmp_path / "new0.graphml")
    assert ("edge", "count", "long") not in _keys(tmp_path / "new1.graphml")


@pytest.mark.parametrize("level", ["synapse", "unit"])
def test_graphml_of_edges_in_any_order(level, tmp_path):
    """networkx wrote a source's edges grouped by target (a MultiDiGraph's adjacency); written in their
    order, by source, they read back to the same graph, adjacency and predecessor order included."""
    g = graphs.build(_conn(Cat()), level)
    p = torch.randperm(g.num_edges, generator=torch.Generator().manual_seed(3))
    g = dataclasses.replace(g, src=g.src[p], dst=g.dst[p], edge_attrs={k: v[p] for k, v in g.edge_attrs.items()})
    _reference(g, tmp_path / "old.graphml")
    G = assert_same_read(graphs.write(g, tmp_path / "new.graphml"), tmp_path / "old.graphml")
    assert isinstance(G, nx.MultiDiGraph) == (level == "synapse")


def _big():
    """A synapse-level graph of 50,200 edges (one dense 250 -> 200 Linear, its 200 units wired to outputs)."""
    g = graphs.build(model=nn.Sequential(nn.Linear(250, 200)), level="synapse", example_input=torch.randn(1, 250))
    assert g.num_edges == 50_200
    return g


def write_peak(g, path) -> int:
    """Peak Python memory (bytes, tracemalloc) of ``graphs.write(g, path)``."""
    tracemalloc.start()
    try:
        graphs.write(g, path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_graphml_memory_is_bounded_by_the_chunk(tmp_path, monkeypatch):
    """Writing GraphML held the networkx graph and the whole XML tree, memory growing with the edges;
    it now holds one chunk of edges at a time."""
    g = _big()
    monkeypatch.setattr(graphs.exporters, "GRAPHML_CHUNK", 1000, raising=False)
    peak = write_peak(g, tmp_path / "g.graphml")
    assert peak < 8e6, f"writing 50,200 edges in chunks of 1,000 took {peak / 1e6:.0f} MB of Python memory"
    G = nx.read_graphml(tmp_path / "g.graphml")
    assert G.number_of_edges() == 50_200


def test_graphml_is_written_atomically(tmp_path, monkeypatch):
    """A write that fails midway (after some chunks reached the file) leaves the earlier file whole
    and no temporary file beside it."""
    g = _big()
    path = tmp_path / "g.graphml"
    path.write_text("earlier")
    real, calls = graphs.exporters._graphml_text, []

    def failing(v):
        calls.append(1)
        if len(calls) > 30:
            raise OSError("disk full")
        return real(v)

    monkeypatch.setattr(graphs.exporters, "_graphml_text", failing)
    with pytest.raises(OSError, match="disk full"):
        graphs.exporters.write_graphml(g, path, chunk=1000)
    assert path.read_text() == "earlier" and os.listdir(tmp_path) == ["g.graphml"]
    with pytest.raises(ValueError, match="chunk must be a positive"):
        graphs.exporters.write_graphml(g, path, chunk=0)


@pytest.mark.parametrize("suffix", [".graphml.gz", ".graphml.bz2"])
def test_graphml_is_compressed_by_its_suffix_as_networkx_did(suffix, tmp_path):
    g = graphs.build(_conn(Cat()), "unit")
    _reference(g, tmp_path / f"old{suffix}")
    graphs.exporters.write_graphml(g, tmp_path / f"direct{suffix}")
    graphs.write(g, tmp_path / f"via{suffix}", format="graphml")
    old = nx.read_graphml(tmp_path / f"old{suffix}")
    for name in ("direct", "via"):
        new = nx.read_graphml(tmp_path / f"{name}{suffix}")  # fails unless compressed
        assert list(new.nodes(data=True)) == list(old.nodes(data=True))
        assert list(new.edges(data=True)) == list(old.edges(data=True)) and new.graph == old.graph


def test_graphml_goes_to_an_open_file_as_networkx_wrote_it(tmp_path):
    import io

    g = graphs.build(_conn(Cat()), "unit")
    _reference(g, tmp_path / "old.graphml")
    binary, text = io.BytesIO(), io.StringIO()
    graphs.exporters.write_graphml(g, binary)
    graphs.exporters.write_graphml(g, text)
    assert not binary.closed and not text.closed  # the caller's files stay open
    (tmp_path / "b.graphml").write_bytes(binary.getvalue())
    (tmp_path / "t.graphml").write_text(text.getvalue(), encoding="utf-8")
    assert_same_read(tmp_path / "b.graphml", tmp_path / "old.graphml")
    assert_same_read(tmp_path / "t.graphml", tmp_path / "old.graphml")


def test_graphml_through_write_takes_one_temporary_name(tmp_path):
    """graphs.write writes atomically already: a second temporary name inside it made names of 200
    characters too long for the file system."""
    g = graphs.build(_conn(Cat()), "unit")
    path = tmp_path / ("n" * 200 + ".graphml")
    graphs.write(g, path)
    assert nx.read_graphml(path).number_of_edges() > 0


def test_graphml_refuses_a_node_attribute_called_name(tmp_path):
    g = graphs.build(_conn(Cat()), "unit")
    g.node_attrs["name"] = torch.arange(g.num_nodes)
    with pytest.raises(ValueError, match="rename the attribute"):
        graphs.write(g, tmp_path / "x.graphml")
    assert list(tmp_path.iterdir()) == []



class Keyed(nn.Module):  # a layer under an nn.ModuleDict key, which may hold any character but "."
    def __init__(self, key):
        super().__init__()
        self.key = key
        self.d = nn.ModuleDict({key: nn.Linear(3, 4)})

    def forward(self, x):
        return self.d[self.key](x)


@pytest.mark.filterwarnings("ignore:graphs. torch.fx could not trace")  # fx's own code cannot name such a module
def test_graphml_keeps_a_carriage_return_in_a_node_name(tmp_path):
    """A bare carriage return in XML text reads back as a newline: it is written as a reference."""
    g = graphs.build(adaptive.Connectome(Keyed("a\rb")), "unit")
    graphs.write(g, tmp_path / "x.graphml")
    back = nx.read_graphml(tmp_path / "x.graphml")
    assert [back.nodes[n]["name"] for n in back.nodes] == g.node_names()


@pytest.mark.parametrize("ext", [".graphml", ".gexf", ".graphml.gz"])
@pytest.mark.parametrize("char", ["\x01", "\ud800"])
@pytest.mark.filterwarnings("ignore:graphs. torch.fx could not trace")
def test_xml_refuses_a_name_no_xml_file_can_hold(ext, char, tmp_path):
    """A control character was written and the file then failed to parse; a lone surrogate failed
    half-way with a bare UnicodeEncodeError. Both are refused up front, naming the module; JSON keeps them."""
    g = graphs.build(adaptive.Connectome(Keyed(f"a{char}b")), "unit")
    old = tmp_path / f"x{ext}"
    old.write_bytes(b"old")
    with pytest.raises(ValueError, match=r"node group 'd\.a.*b' \(a module's name\).*rename it.*\.json"):
        graphs.write(g, old)
    assert old.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == [old.name]
    assert graphs.read_json(graphs.write(g, tmp_path / "x.json")).groups[-2].name == f"d.a{char}b"

@pytest.mark.parametrize("level", ["unit", "synapse"])
def test_networkx_keeps_the_edges_of_a_graph_without_edge_attributes(level, tmp_path):
    g = graphs.build(_conn(Cat()), level)
    bare = dataclasses.replace(g, edge_attrs={})
    assert graphs.to_networkx(bare).number_of_edges() == len(set(zip(g.src.tolist(), g.dst.tolist()))) \
        if level == "unit" else g.num_edges
    graphs.write(bare, tmp_path / "x.graphml")
    assert nx.read_graphml(tmp_path / "x.graphml").number_of_edges() == graphs.to_networkx(bare).number_of_edges()


def test_graphml_reads_back_whole_numbers_beyond_float_precision_and_the_synapse_order(tmp_path):
    """from_networkx passed every column through float64 (2**63-1 came back as -2**63), and a
    synapse-level file without a repeated node pair, read back as a DiGraph, lost the edge order."""
    g = graphs.build(_conn(Cat()), "synapse")
    keep = torch.unique(g.src * g.num_nodes + g.dst, return_inverse=True)[1]
    first = torch.zeros(int(keep.max()) + 1, dtype=torch.long).scatter_reduce(
        0, keep, torch.arange(keep.numel()), "amin", include_self=False)
    one = torch.sort(first).values  # one synapse per node pair, in their order
    g = dataclasses.replace(g, src=g.src[one], dst=g.dst[one], edge_attrs={k: v[one] for k, v in g.edge_attrs.items()})
    big = torch.full((g.num_edges,), 2**53 + 1, dtype=torch.long)
    big[0], big[1] = 2**63 - 1, -2**63
    g.edge_attrs["big"] = big
    graphs.write(g, tmp_path / "x.graphml")
    G = nx.read_graphml(tmp_path / "x.graphml")
    assert not G.is_multigraph()
    back = graphs.from_networkx(G)
    assert torch.equal(back.edge_attrs["big"], big)
    assert torch.equal(back.src, g.src) and torch.equal(back.dst, g.dst)
