"""PyTorch Geometric export: ``Data(edge_index [2, E] source->target, edge_attr [E, D], x [N, F])``.

Columns of ``x``/``edge_attr`` are named by ``data.node_attr_names``/``data.edge_attr_names`` and
held in float64 so that every value (ids, counts, weights) survives a round trip exactly; cast with
``.float()`` for learning. ``data.graph_header`` keeps groups, layers and dtypes for :func:`from_pyg`.
"""
from __future__ import annotations

import warnings

import torch


def _pyg_data():
    """``torch_geometric.data``, imported without the FutureWarning torch gives for the ``torch.jit.script`` calls
    torch_geometric makes at import: it is torch_geometric's to change, and printed ``warning (FutureWarning):
    torch.jit.script is deprecated`` on every graphs export to PyG, which nobody running it can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        import torch_geometric.data

    return torch_geometric.data


def to_pyg(g):
    """A validated ``torch_geometric.data.Data`` holding ``g``."""
    Data = _pyg_data().Data

    from .exporters import header

    nn_ = list(g.node_attrs)
    en = list(g.edge_attrs)
    data = Data(
        x=torch.stack([g.node_attrs[k].to(torch.float64) for k in nn_], 1),
        edge_index=torch.stack([g.src, g.dst]).long(),
        edge_attr=torch.stack([g.edge_attrs[k].to(torch.float64) for k in en], 1) if en else None,
        num_nodes=g.num_nodes,
    )
    data.node_attr_names = nn_
    data.edge_attr_names = en
    data.node_name = g.node_names()
    data.graph_header = header(g)
    data.validate(raise_on_error=True)
    return data


def from_pyg(data):
    """The :class:`ConnectomeGraph` that :func:`to_pyg` exported."""
    from .exporters import from_header

    Batch = _pyg_data().Batch

    if not hasattr(data, "graph_header"):
        raise ValueError("this Data was not made by graphs.to_pyg (it has no graph_header)")
    if isinstance(data, Batch):  # its header's values are lists, one per graph: one graph is read at a time
        raise ValueError(f"from_pyg reads one graph, and this is a {type(data).__name__} of {data.num_graphs} (a "
                         "DataLoader's or Batch.from_data_list's): read each with graphs.from_pyg(batch.get_example(i)), "
                         "or [graphs.from_pyg(d) for d in batch.to_data_list()]")
    for table, names in (("x", data.node_attr_names), ("edge_attr", data.edge_attr_names)):
        cols = getattr(data, table)
        width = 0 if cols is None else (cols.shape[1] if cols.dim() == 2 else -1)
        if width != len(names):
            raise ValueError(f"data.{table} has {width if width >= 0 else 'not 2 dims, so no'} columns, but "
                             f"data.{'node' if table == 'x' else 'edge'}_attr_names names {len(names)}: it was changed "
                             "since graphs.to_pyg made it; from_pyg reads back the columns to_pyg wrote")
    nodes = {k: data.x[:, i] for i, k in enumerate(data.node_attr_names)}
    edges = {k: data.edge_attr[:, i] for i, k in enumerate(data.edge_attr_names)}
    return from_header(data.graph_header, nodes, data.edge_index[0], data.edge_index[1], edges)
