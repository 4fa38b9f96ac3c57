"""graphs: the connectome as a graph.

``graphs.build(conn, level="synapse"|"unit"|"layer")`` traces the model's data flow with torch.fx
and returns a :class:`ConnectomeGraph` held as tensors; ``to_pyg``, ``to_networkx`` and ``write``
(.graphml, .gexf, .json) export it; :mod:`graphs.analysis` measures it and :mod:`graphs.figures`
plots it; ``compact`` turns dead units into a physically smaller model. Command line:
``python -m graphs export|report|compact RUN_DIR``.
"""
from .analysis import (concat_composition, dead_units, degree_distribution, density_per_layer, reachability,
                       signal_depth, state_nodes, summary)
from .graph import LEVELS, ConnectomeGraph, build, layer_graph
from . import figures
from .compact import compact
from .folded import FoldedConv
from .compact_attention import CompactAttention
from .contract import contract_junctions, junction_sources
from .exporters import EXPORTERS, WRITERS, export, read_json, register_exporter, register_writer, write
from .netx import from_networkx, to_networkx
from .ops import register_op
from .pyg import from_pyg, to_pyg
from .trace import trace

__all__ = [
    "build", "ConnectomeGraph", "LEVELS", "layer_graph", "trace", "register_op",
    "summary", "signal_depth", "state_nodes", "reachability", "dead_units", "density_per_layer", "degree_distribution",
    "concat_composition", "figures",
    "to_pyg", "from_pyg", "to_networkx", "from_networkx", "write", "read_json", "export",
    "register_exporter", "register_writer", "EXPORTERS", "WRITERS",
    "compact", "FoldedConv", "CompactAttention", "contract_junctions", "junction_sources",
]
