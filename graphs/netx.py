"""networkx export: a ``DiGraph`` (``MultiDiGraph`` at the synapse level, where several synapses
join the same two nodes, keyed by edge number) with the same nodes and attributes.

Node keys are the integer node ids; each node also has ``name`` (``group:index``). The graph
attribute ``header`` (a JSON string) keeps groups, layers and dtypes for :func:`from_networkx`.
Built in bulk from attribute columns (networkx itself needs one dict per edge).
"""
from __future__ import annotations

import json
from itertools import repeat

import torch


def to_networkx(g, flat: bool = False):
    """``flat=True`` stores only scalar graph attributes (what GraphML and GEXF accept)."""
    import networkx as nx

    from .exporters import header_text

    multi = g.level == "synapse"
    G = nx.MultiDiGraph() if multi else nx.DiGraph()
    G.graph["level"] = g.level
    G.graph["header"] = header_text(g)  # strict JSON: non-finite meta values as strings
    if not flat:
        G.graph["meta"] = dict(g.meta)
    n = g.num_nodes
    nkeys = ["name"] + list(g.node_attrs)
    ncols = [g.node_names()] + [v.tolist() for v in g.node_attrs.values()]
    G.add_nodes_from(zip(range(n), map(dict, map(zip, repeat(nkeys), zip(*ncols)))))
    ekeys = list(g.edge_attrs)
    ecols = [v.tolist() for v in g.edge_attrs.values()]
    datas = list(map(dict, map(zip, repeat(ekeys), zip(*ecols)))) if ekeys else [{} for _ in range(g.src.numel())]
    if multi:
        G._adj, G._pred = _multi_adjacency(g.src.tolist(), g.dst.tolist(), datas, n)
    else:
        # Fill the adjacency dicts directly (networkx supports assigning G._adj/G._pred): one
        # dict(zip(...)) per node instead of one Python call per edge. succ and pred share datadicts.
        G._adj = _adjacency(g.src, g.dst, datas, n)
        G._pred = _adjacency(g.dst, g.src, datas, n)
    return G


def _multi_adjacency(src: list, dst: list, datas: list, n: int):
    """A MultiDiGraph's successor and predecessor dicts, ``{u: {v: {key: data}}}`` and ``{v: {u: ...}}``
    sharing each pair's key dict, as ``add_edges_from`` leaves them for the edges in this order (keyed by
    edge number), in the same insertion order, without its per-edge checks and calls (5.7 us an edge:
    6 s for a million synapses)."""
    succ = {u: {} for u in range(n)}
    pred = {u: {} for u in range(n)}
    for key, (u, v, data) in enumerate(zip(src, dst, datas)):
        nbrs = succ[u]
        keydict = nbrs.get(v)
        if keydict is None:
            keydict = nbrs[v] = {}
            pred[v][u] = keydict
        keydict[key] = data
    return succ, pred


def _adjacency(key: torch.Tensor, other: torch.Tensor, datas: list, n: int) -> dict:
    order = torch.argsort(key, stable=True)
    bounds = [0] + torch.bincount(key, minlength=n).cumsum(0).tolist()
    nbrs = other[order].tolist()
    dd = list(map(datas.__getitem__, order.tolist())) if len(datas) else []
    return {u: dict(zip(nbrs[a:b], dd[a:b])) for u, a, b in zip(range(n), bounds[:-1], bounds[1:])}


def from_networkx(G):
    """The :class:`ConnectomeGraph` that :func:`to_networkx` exported (edges in networkx order,
    or in their original order at the synapse level)."""
    from .exporters import from_header, header_from_doc

    if "header" not in G.graph:
        raise ValueError("this networkx graph has no 'header' graph attribute: it was not made by graphs.to_networkx, or "
                         "it went through a format that drops graph attributes (GEXF does); write GraphML "
                         "(graphs.write(g, 'x.graphml')), which reads back whole")
    given = G.graph["header"]
    h = header_from_doc(json.loads(given) if isinstance(given, str) else {**given, "meta": dict(given.get("meta", {}))})
    nodes = sorted(G.nodes(data=True), key=lambda t: _node_id(t[0]))
    ndatas = [d for _, d in nodes]
    ncols = {k: _column(_values(ndatas, k, "node", lambda i: nodes[i][0])) for k in h["node_dtypes"]}
    if G.is_multigraph():
        edges = sorted(G.edges(keys=True, data=True), key=lambda t: int(t[2]))
        src = _node_ids([u for u, _, _, _ in edges])
        dst = _node_ids([v for _, v, _, _ in edges])
        datas = [d for _, _, _, d in edges]
    else:
        edges = list(G.edges(data=True))
        if h.get("level") == "synapse" and edges and all("id" in d for _, _, d in edges):
            # a synapse-level file with no repeated node pair reads back as a DiGraph: the edge ids
            # GraphML kept give the original order
            edges.sort(key=lambda t: int(t[2]["id"]))
        src = _node_ids([u for u, _, _ in edges])
        dst = _node_ids([v for _, v, _ in edges])
        datas = [d for _, _, d in edges]
    ecols = {k: _column(_values(datas, k, "edge", lambda i: edges[i][:2])) for k in h["edge_dtypes"]}
    return from_header(h, ncols, torch.tensor(src, dtype=torch.long), torch.tensor(dst, dtype=torch.long), ecols)


def _node_id(key) -> int:
    """A node's key as the integer id :func:`to_networkx` gave it (``nx.read_graphml`` gives its string)."""
    try:
        return int(key)
    except (TypeError, ValueError):
        raise ValueError(f"node {key!r} of this networkx graph is no node id: graphs.to_networkx keys nodes by their "
                         "integer ids 0..N-1 (nx.read_graphml gives them as strings), which from_networkx reads back; "
                         "a graph relabelled since (nx.relabel_nodes) is read back after relabelling it to them") from None


def _node_ids(keys: list) -> list:
    """:func:`_node_id` of every key (one ``int`` per key in bulk; the first that is none named)."""
    try:
        return list(map(int, keys))
    except (TypeError, ValueError):
        return [_node_id(k) for k in keys]  # raises, naming it


def _values(datas: list, k: str, what: str, key_of) -> list:
    """Attribute ``k`` of every attribute dict in ``datas``; one without it (a node or edge added in networkx)
    is named in a ValueError by ``key_of(its index)``."""
    try:
        return [d[k] for d in datas]
    except KeyError:
        key = key_of(next(i for i, d in enumerate(datas) if k not in d))
        raise ValueError(f"{what} {key!r} has no attribute {k!r}, which every {what} of an exported graph has (the "
                         f"{what} was added, or its attribute removed, in networkx); from_networkx reads back a whole "
                         "exported graph, as it was written") from None


def _column(values: list) -> torch.Tensor:
    """Values read back from networkx as a tensor that loses nothing: whole numbers as int64 (float64
    would round those above 2**53), anything else as float64 (:func:`from_header` casts to the
    recorded dtype)."""
    if values and all(isinstance(v, (bool, int)) for v in values):
        return torch.tensor([int(v) for v in values], dtype=torch.int64)
    return torch.tensor(values, dtype=torch.float64)
