"""graphs.write's format checks and the precision of the exported utility."""
import networkx as nx
import pytest
import torch
from torch import nn

import graphs
from adaptive import Connectome


def _conn():
    torch.manual_seed(0)
    return Connectome(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))


@pytest.mark.parametrize("name, fmt", [("x.graphml", "json"), ("x.json", "graphml"), ("x.graphml.gz", "json"),
                                       ("x.JSON", "gexf")])
def test_write_refuses_a_format_that_contradicts_the_suffix(name, fmt, tmp_path):
    """write(g, "x.graphml", format="json") wrote JSON under a GraphML name (the command line refuses
    this): the API refuses it too, naming both and the fix, and writes nothing."""
    g = graphs.build(_conn(), "unit")
    with pytest.raises(ValueError) as e:
        graphs.write(g, tmp_path / name, format=fmt)
    msg = str(e.value)
    assert repr(fmt) in msg and "suffix" in msg and "leave format out" in msg
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name, fmt", [("x.json", "JSON"), ("x.json.gz", ".json"), ("x.dat", "json")])
def test_write_takes_a_format_that_agrees_or_a_suffix_it_does_not_know(name, fmt, tmp_path):
    g = graphs.build(_conn(), "unit")
    graphs.write(g, tmp_path / name, format=fmt)
    assert graphs.exporters.read_json(tmp_path / name).num_edges == g.num_edges


@pytest.mark.parametrize("level", ["unit", "synapse"])
def test_a_float64_utility_keeps_its_precision_through_the_graph_and_its_export(level, tmp_path):
    """The utility was rounded to float32 on the way into the graph: a float64 estimator's scores lost
    their last 29 bits (1 + 2**-40 read back as 1.0). It is kept float64 now (float32 stays float32), and
    the JSON and GraphML exports give it back exactly."""
    conn = _conn()
    util = {n: (torch.rand(m.shape, dtype=torch.float64) + 1) * (1 + 2.0 ** -40) for n, m in conn.masks.items()}
    g = graphs.build(conn, level, utility=util)
    u = g.edge_attrs["utility"]
    assert u.dtype == torch.float64
    if level == "synapse":
        want = torch.cat([util[n][conn.masks[n]].flatten() for n in conn.masks])
        assert torch.equal(u[u != 0].sort().values, want.sort().values)  # (the junction edges hold 0)
    graphs.write(g, tmp_path / "g.json")
    back = graphs.exporters.read_json(tmp_path / "g.json")
    assert back.edge_attrs["utility"].dtype == torch.float64 and torch.equal(back.edge_attrs["utility"], u)
    graphs.write(g, tmp_path / "g.graphml")
    read = [d["utility"] for _, _, d in nx.read_graphml(tmp_path / "g.graphml").edges(data=True) if "utility" in d]
    assert sorted(read) == sorted(u.tolist())
    g32 = graphs.build(conn, level, utility={n: v.float() for n, v in util.items()})
    assert g32.edge_attrs["utility"].dtype == torch.float32
