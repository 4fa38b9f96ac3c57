"""graphs.write(g, "x.json") writes the JSON document a chunk of values at a time: the same bytes as
json.dumps of the whole document, the writer used before, and memory bounded by the chunk (that
writer's grew with the edges)."""
import dataclasses
import json
import math

import pytest
import torch

import graphs
import graphs.exporters
from test_graphs_export import assert_same
from test_graphs_graphml import CASES, _big, _conn, Cat, write_peak

torch.set_num_threads(1)


def _reference(g, strict: bool = True) -> str:
    """What write_json wrote before it streamed: json.dumps of the whole document; ``strict``: with
    non-finite floats as the strings "NaN", "Infinity", "-Infinity" (else json.dumps' bare tokens, as
    write_json wrote them before it wrote strict JSON)."""
    text = lambda x: "NaN" if x != x else "Infinity" if x > 0 else "-Infinity"
    enc = lambda v: [text(x) if strict and isinstance(x, float) and not math.isfinite(x) else x for x in v.tolist()]
    doc = graphs.exporters.header(g)
    if strict:
        doc = graphs.exporters._strict_header(doc)
    doc["nodes"] = {k: enc(v) for k, v in g.node_attrs.items()}
    doc["nodes"]["name"] = g.node_names()
    doc["edges"] = {"src": g.src.tolist(), "dst": g.dst.tolist(), **{k: enc(v) for k, v in g.edge_attrs.items()}}
    return json.dumps(doc)


def _assert_written_as_before(g, tmp_path, monkeypatch):
    old = _reference(g)
    for chunk in (1 << 18, 1, 7):  # the default chunk holds the whole graph: columns split at odd places too
        monkeypatch.setattr(graphs.exporters, "JSON_CHUNK", chunk, raising=False)
        path = graphs.write(g, tmp_path / f"new{chunk}.json")
        with open(path, encoding="utf-8") as f:
            assert f.read() == old, f"chunk {chunk}"
        with open(path, encoding="utf-8") as f:
            assert json.dumps(json.load(f)) == old  # parses to the same document (a nan equals no nan: compared as text)
    return graphs.read_json(path)


@pytest.mark.parametrize("level", ["unit", "synapse", "layer"])
@pytest.mark.parametrize("case", list(CASES))
def test_json_is_the_document_json_dumps_wrote(case, level, tmp_path, monkeypatch):
    conn, x = CASES[case]()
    g = graphs.build(conn, level, example_input=x)
    assert g.num_edges > 0
    assert_same(g, _assert_written_as_before(g, tmp_path, monkeypatch))


def test_json_of_bool_and_float_columns_and_of_no_edges(tmp_path, monkeypatch):
    """Bools, floats (nan and infinities too, as the strings "NaN", "Infinity", "-Infinity") and a graph
    without edges."""
    g = graphs.build(_conn(Cat()), "unit")
    g.node_attrs["flag"] = torch.arange(g.num_nodes) % 3 == 0
    score = torch.linspace(-1e-7, 3e17, g.num_nodes, dtype=torch.float64)
    score[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    g.node_attrs["score"] = score
    g.edge_attrs["w"] = torch.randn(g.num_edges, generator=torch.Generator().manual_seed(0))  # float32
    _assert_written_as_before(g, tmp_path, monkeypatch)
    none = dataclasses.replace(g, src=g.src[:0], dst=g.dst[:0], edge_attrs={k: v[:0] for k, v in g.edge_attrs.items()})
    assert _assert_written_as_before(none, tmp_path, monkeypatch).num_edges == 0


def test_json_memory_is_bounded_by_the_chunk(tmp_path, monkeypatch):
    """Writing JSON held every value as a Python object and the whole text, memory growing with the
    edges; it now holds one chunk of values at a time."""
    g = _big()
    monkeypatch.setattr(graphs.exporters, "JSON_CHUNK", 1000, raising=False)
    peak = write_peak(g, tmp_path / "g.json")
    assert peak < 1e6, f"writing 50,200 edges in chunks of 1,000 took {peak / 1e6:.1f} MB of Python memory"
    assert graphs.read_json(tmp_path / "g.json").num_edges == 50_200


def test_json_is_written_atomically(tmp_path, monkeypatch):
    """A write that fails midway (after some chunks reached the file) leaves the earlier file whole
    and no temporary file beside it."""
    g = _big()
    path = tmp_path / "g.json"
    path.write_text("earlier")
    monkeypatch.setattr(graphs.exporters, "JSON_CHUNK", 1000, raising=False)
    real, calls = json.dumps, []

    def failing(obj, *a, **kw):
        calls.append(1)
        if len(calls) == 20:
            raise OSError("disk full")
        return real(obj, *a, **kw)

    monkeypatch.setattr(graphs.exporters.json, "dumps", failing)
    with pytest.raises(OSError, match="disk full"):
        graphs.write(g, path)
    monkeypatch.undo()
    assert path.read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["g.json"]


def test_read_json_refuses_a_file_that_is_no_graph_by_name(tmp_path):
    """read_json of a report's summary.json (written beside the exports) raised KeyError: 'edges', of
    a JSON list a TypeError, of a GraphML file a bare JSONDecodeError; each is now a ValueError
    naming the file and what read_json reads (from_header's format check came too late)."""
    g = graphs.build(_conn(Cat()), "unit")
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"level": "unit", "nodes": 3, "edges": 2}))
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    xml = graphs.write(g, tmp_path / "g.graphml")
    for path, says in ((summary, "not a graph written by graphs.write"), (listed, "not a graph written"),
                       (xml, "is not JSON")):
        with pytest.raises(ValueError, match=says) as e:
            graphs.read_json(path)
        assert str(path) in str(e.value)
    assert graphs.read_json(graphs.write(g, tmp_path / "g.json")).num_edges == g.num_edges


@pytest.mark.parametrize("suffix, opener", [(".gz", "gzip"), (".bz2", "bz2")])
def test_json_and_graphml_are_compressed_by_their_suffix_and_named_by_the_format_before_it(suffix, opener, tmp_path):
    """GraphML and GEXF were compressed where the path ends in .gz or .bz2, JSON was not: write(g,
    "g.json.gz", format="json") wrote plain text under a gzip name, and read_json could not read a
    compressed file. write(g, "g.graphml.gz") was refused as the unknown format '.gz'."""
    import importlib

    import networkx as nx

    g = graphs.build(_conn(Cat()), "unit")
    for name in (f"g.json{suffix}", f"g.graphml{suffix}"):
        path = graphs.write(g, tmp_path / name)  # the format is the extension before the suffix
        with importlib.import_module(opener).open(path, "rt", encoding="utf-8") as f:
            text = f.read()
        assert text.startswith("{") if ".json" in name else text.startswith("<?xml")
    assert_same(g, graphs.read_json(tmp_path / f"g.json{suffix}"))
    assert_same(g, graphs.from_networkx(nx.read_graphml(tmp_path / f"g.graphml{suffix}")))
    graphs.write(g, tmp_path / f"h.json{suffix}", format="json")
    assert_same(g, graphs.read_json(tmp_path / f"h.json{suffix}"))
    with pytest.raises(ValueError, match="unknown format"):
        graphs.write(g, tmp_path / f"g.txt{suffix}")


@pytest.mark.parametrize("name, magic", [("g.JSON.GZ", b"\x1f\x8b"), ("g.GraphML.Gz", b"\x1f\x8b"),
                                         ("g.gexf.BZ2", b"BZh")])
def test_a_compression_suffix_in_upper_case_compresses_as_the_format_it_names(name, magic, tmp_path):
    """write found the format inside a .GZ or .BZ2 suffix in any case (write(g, "g.JSON.GZ") is JSON)
    but compressed only where the suffix was lower case: the file named .GZ was plain text."""
    g = graphs.build(_conn(Cat()), "unit")
    if "gexf" in name:
        with pytest.warns(UserWarning, match="GEXF keeps no graph attributes"):
            path = graphs.write(g, tmp_path / name)
    else:
        path = graphs.write(g, tmp_path / name)
    with open(path, "rb") as f:
        assert f.read(len(magic)) == magic
    if name.lower().startswith("g.json"):
        assert_same(g, graphs.read_json(path))


def test_json_is_strict_and_non_finite_floats_round_trip(tmp_path):
    """NaN and infinite floats (a diverged run's weights) were written as json.dumps' bare NaN/Infinity
    tokens, which are not JSON: strict parsers (JavaScript's JSON.parse, Go, serde) refuse the file.
    They are the strings "NaN", "Infinity", "-Infinity" now, and read_json gives the floats back
    exactly, in float columns and in the meta; a file written before (bare tokens) still reads."""
    g = graphs.build(_conn(Cat()), "unit")
    w = torch.randn(g.num_edges, generator=torch.Generator().manual_seed(0))  # float32
    w[[0, 2, 5]] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    g.edge_attrs["w"] = w
    g.node_attrs["score"] = torch.full((g.num_nodes,), float("nan"), dtype=torch.float64)
    g.meta["loss"], g.meta["curve"], g.meta["label"] = float("inf"), [1.0, float("nan")], "NaN"

    def refuse(token):
        raise ValueError(token)

    for name in ("g.json", "g.json.gz"):
        path = graphs.write(g, tmp_path / name)
        with graphs.exporters._open_text(path, "r") as f:
            doc = json.load(f, parse_constant=refuse)  # no bare NaN / Infinity token
        assert doc["edges"]["w"][:6:] == ["NaN", doc["edges"]["w"][1], "Infinity", *doc["edges"]["w"][3:5], "-Infinity"]
        back = graphs.read_json(path)
        assert back.edge_attrs["w"].dtype == torch.float32 and bool(back.edge_attrs["w"][0].isnan())
        assert torch.equal(back.edge_attrs["w"].isnan(), w.isnan()) and torch.equal(back.edge_attrs["w"][1:], w[1:])
        assert bool(back.node_attrs["score"].isnan().all())
        assert back.meta["loss"] == float("inf") and back.meta["curve"][0] == 1.0 and back.meta["curve"][1] != back.meta["curve"][1]
        assert back.meta["label"] == "NaN"  # a string stays a string
        assert torch.equal(back.src, g.src) and torch.equal(back.dst, g.dst)  # (assert_same: nan != nan)
    old = tmp_path / "old.json"  # what write_json wrote before: json.dumps' bare tokens
    old.write_text(_reference(g, strict=False))
    assert "NaN" in old.read_text() and '"NaN"' not in old.read_text().split('"edges"')[1]
    back = graphs.read_json(old)
    assert torch.equal(back.edge_attrs["w"].isnan(), w.isnan()) and torch.equal(back.edge_attrs["w"][1:], w[1:])
    assert back.meta["loss"] == float("inf")


def test_the_graphml_and_networkx_header_is_strict_json_and_its_meta_round_trips(tmp_path):
    """GraphML (and to_networkx) carry the graph's header as JSON text, which held json.dumps' bare
    NaN/Infinity tokens for a non-finite meta value; it is strict JSON now, read back exactly, and a
    header written before (bare tokens) still reads."""
    import networkx as nx

    g = graphs.build(_conn(Cat()), "unit")
    g.meta["loss"], g.meta["curve"], g.meta["label"] = float("inf"), [1.0, float("nan")], "NaN"

    def refuse(token):
        raise ValueError(token)

    G = graphs.to_networkx(g)
    doc = json.loads(G.graph["header"], parse_constant=refuse)  # no bare NaN / Infinity token
    assert doc["meta"]["loss"] == "Infinity" and sorted(doc["nonfinite_meta"]) == ["curve", "loss"]
    path = graphs.write(g, tmp_path / "g.graphml")
    back = graphs.from_networkx(nx.read_graphml(path))
    json.loads(nx.read_graphml(path).graph["header"], parse_constant=refuse)
    assert back.meta["loss"] == float("inf") and back.meta["curve"][0] == 1.0 and back.meta["curve"][1] != back.meta["curve"][1]
    assert back.meta["label"] == "NaN"
    edges = lambda x: set(zip(x.src.tolist(), x.dst.tolist()))  # (a unit-level graph reads back in another order)
    assert back.num_edges == g.num_edges and edges(back) == edges(g)
    G.graph["header"] = json.dumps(graphs.exporters.header(g))  # what to_networkx wrote before
    assert graphs.from_networkx(G).meta["loss"] == float("inf")
