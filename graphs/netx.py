"""networkx export: a ``DiGraph`` (``MultiDiGraph`` at the synapse level, where several synapses
join the same two nodes, keyed by edge number) with the same nodes and attributes.

Node keys are the integer node ids; each node also has ``name`` (``group:index``). The graph
attribute ``header`` (a JSON string) keeps groups, layers and dtypes for :func:`from_networkx`.
Built in bulk from attribute columns (networkx itself needs one dict per edge).
"""
from __future__ import annotations

import json

import torch


def to_networkx(g, flat: bool = False):
    """``flat=True`` stores only scalar graph attributes (what GraphML and GEXF accept)."""
    import networkx as nx

    from .exporters import header

    multi = g.level == "synapse"
    G = nx.MultiDiGraph() if multi else nx.DiGraph()
    G.graph["level"] = g.level
    G.graph["header"] = json.dumps(header(g))
    if not flat:
        G.graph["meta"] = dict(g.meta)
    nkeys = ["name"] + list(g.node_attrs)
    ncols = [g.node_names()] + [v.tolist() for v in g.node_attrs.values()]
    G.add_nodes_from(zip(range(g.num_nodes), (dict(zip(nkeys, row)) for row in zip(*ncols))))
    ekeys = list(g.edge_attrs)
    ecols = [v.tolist() for v in g.edge_attrs.values()]
    attrs = (dict(zip(ekeys, row)) for row in zip(*ecols))
    src, dst = g.src.tolist(), g.dst.tolist()
    if multi:
        G.add_edges_from(zip(src, dst, range(len(src)), attrs))
    else:
        G.add_edges_from(zip(src, dst, attrs))
    return G


def from_networkx(G):
    """The :class:`ConnectomeGraph` that :func:`to_networkx` exported (edges in networkx order,
    or in their original order at the synapse level)."""
    from .exporters import from_header

    if "header" not in G.graph:
        raise ValueError("this networkx graph was not made by graphs.to_networkx (no 'header' graph attribute)")
    h = json.loads(G.graph["header"]) if isinstance(G.graph["header"], str) else G.graph["header"]
    nodes = sorted(G.nodes(data=True), key=lambda t: int(t[0]))
    ncols = {k: torch.tensor([d[k] for _, d in nodes], dtype=torch.float64) for k in h["node_dtypes"]}
    if G.is_multigraph():
        edges = sorted(G.edges(keys=True, data=True), key=lambda t: int(t[2]))
        src = [int(u) for u, _, _, _ in edges]
        dst = [int(v) for _, v, _, _ in edges]
        datas = [d for _, _, _, d in edges]
    else:
        edges = list(G.edges(data=True))
        src = [int(u) for u, _, _ in edges]
        dst = [int(v) for _, v, _ in edges]
        datas = [d for _, _, d in edges]
    ecols = {k: torch.tensor([d[k] for d in datas], dtype=torch.float64) for k in h["edge_dtypes"]}
    return from_header(h, ncols, torch.tensor(src, dtype=torch.long), torch.tensor(dst, dtype=torch.long), ecols)
