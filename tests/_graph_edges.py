"""Edge-set helpers for graph tests: a graph's edges as (source name, target name, kind) triples."""
from graphs.graph import EDGE_SYNAPSE, EDGE_WIRE


def edge_set(g):
    names = g.node_names()
    return {(names[s], names[d], int(k)) for s, d, k in zip(g.src.tolist(), g.dst.tolist(), g.edge_attrs["kind"].tolist())}


def full(a, b, n_a, n_b, kind=EDGE_SYNAPSE):
    """Every unit of group ``a`` to every unit of group ``b``."""
    return {(f"{a}:{i}", f"{b}:{j}", kind) for i in range(n_a) for j in range(n_b)}


def wires(a, b, pairs):
    """Wires from unit i of ``a`` to unit j of ``b`` for each pair (i, j)."""
    return {(f"{a}:{i}", f"{b}:{j}", EDGE_WIRE) for i, j in pairs}
