"""The exporter registry: named converters of a :class:`ConnectomeGraph` into other libraries'
objects, and file writers chosen by extension.

``register_exporter("name")(fn)`` adds ``fn(graph) -> object``; ``register_writer(".ext")(fn)`` adds
``fn(graph, path)``. Built in: exporters "pyg" and "networkx"; writers ".graphml", ".gexf", ".json".

Every format but GEXF carries the :func:`header` (groups, layers, concatenations, dtypes), so
``read_json``, ``from_networkx(nx.read_graphml(...))`` and ``from_pyg`` give back a graph that
:func:`graphs.concat_composition` analyses as it did the original. GEXF keeps no graph attributes: a
GEXF file is for viewing (Gephi), and writing one from a graph with concatenations warns.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict

import torch

from adaptive.atomic import write_text
from adaptive.warn import warn_user

EXPORTERS: Dict[str, Callable] = {}
WRITERS: Dict[str, Callable] = {}
FORMAT = "adaptive.graph/1"


def register_exporter(name: str):
    def deco(fn):
        EXPORTERS[name] = fn
        return fn
    return deco


def register_writer(ext: str):
    ext = ext if ext.startswith(".") else "." + ext

    def deco(fn):
        WRITERS[ext] = fn
        return fn
    return deco


def export(g, name: str):
    """Convert ``g`` with the exporter registered as ``name``."""
    if name not in EXPORTERS:
        raise ValueError(f"unknown exporter {name!r}: registered are {sorted(EXPORTERS)}")
    return EXPORTERS[name](g)


def write(g, path, format: str | None = None) -> str:
    """Write ``g`` to ``path``; the format comes from ``format`` or the file extension."""
    path = os.fspath(path)
    ext = ("." + format.lstrip(".")) if format else os.path.splitext(path)[1].lower()
    if ext not in WRITERS:
        raise ValueError(f"cannot write {path!r}: unknown format {ext!r}; known are {sorted(WRITERS)}")
    from adaptive.atomic import atomic_path

    with atomic_path(path) as tmp:  # a failing writer leaves the old file, never half a new one
        WRITERS[ext](g, os.fspath(tmp))
    return path


def header(g) -> dict:
    """Graph-level metadata as JSON-able values (groups, layers, concatenations, meta, dtypes).

    ``concats`` holds each concatenation's fx node and, per operand, the ids of the nodes feeding its
    channels (a plain list, or runs of ids where they repeat: see :func:`_runs`); at the layer level those are unit node ids, so ``unit_depths`` keeps the unit nodes'
    ``depth_max`` and ``depth_min`` that :func:`graphs.concat_composition` reads."""
    h = {
        "format": FORMAT,
        "level": g.level,
        "groups": [[x.name, x.kind, x.op, x.start, x.count, x.layer] for x in g.groups],
        "layers": [[l.module, l.param, l.kind, list(l.shape), l.groups, list(l.rows) if l.rows else None] for l in g.layers],
        "meta": {k: v for k, v in g.meta.items() if isinstance(v, (int, float, str, bool))
                 or (isinstance(v, list) and all(isinstance(x, (int, float)) for x in v))},
        "warnings": list(g.warnings),
        "node_dtypes": {k: str(v.dtype).replace("torch.", "") for k, v in g.node_attrs.items()},
        "edge_dtypes": {k: str(v.dtype).replace("torch.", "") for k, v in g.edge_attrs.items()},
        "concats": [{"node": c["node"], "parts": [[name, _runs(ids)] for name, ids in c["parts"]]} for c in g.concats],
    }
    if g.concats and g.level == "layer":
        h["unit_depths"] = {k: g.unit_node_attrs[k].tolist() for k in ("depth_max", "depth_min")}
    return h


def _runs(ids: torch.Tensor):
    """A concatenation operand's node ids as runs ``{"ids", "repeats"}``: a flattened feature map
    repeats each channel's node once per pixel, so the header grows with the channels, not the
    pixels. Where no id repeats (a channel concatenation) the plain list of ids, a third shorter."""
    values, counts = torch.unique_consecutive(ids.reshape(-1), return_counts=True)
    if bool((counts == 1).all()):
        return values.tolist()
    return {"ids": values.tolist(), "repeats": counts.tolist()}


def _from_runs(ids) -> torch.Tensor:
    """The ids :func:`_runs` wrote (or a plain list of ids)."""
    if isinstance(ids, dict):
        return torch.tensor(ids["ids"], dtype=torch.long).repeat_interleave(torch.tensor(ids["repeats"], dtype=torch.long))
    return torch.tensor(ids, dtype=torch.long)


def from_header(h: dict, node_attrs, src, dst, edge_attrs):
    """Rebuild a ConnectomeGraph from :func:`header` output and attribute tensors."""
    from .graph import ConnectomeGraph, _edge_ptr
    from .trace import Group, LayerFlow

    if h.get("format") != FORMAT:
        raise ValueError(f"not an adaptive graph (format {h.get('format')!r}, expected {FORMAT!r})")
    groups = [Group(*x) for x in h["groups"]]
    layers = [LayerFlow(x[0], x[1], -1, x[2], tuple(x[3]), x[4], torch.zeros(0, dtype=torch.long), "",
                        tuple(x[5]) if len(x) > 5 and x[5] else None, x[2].startswith("convtranspose"))
              for x in h["layers"]]
    for x_id, x in enumerate(groups):
        if x.layer >= 0 and x.kind == "layer":
            layers[x.layer].group = x_id
    nd = {k: node_attrs[k].to(getattr(torch, t)) for k, t in h["node_dtypes"].items()}
    ed = {k: edge_attrs[k].to(getattr(torch, t)) for k, t in h["edge_dtypes"].items()}
    concats = [{"node": c["node"], "parts": [(name, _from_runs(ids)) for name, ids in c["parts"]]}
               for c in h.get("concats", [])]  # files written before concats were kept have none
    unit_nodes = ({k: torch.tensor(v, dtype=torch.long) for k, v in h["unit_depths"].items()}
                  if "unit_depths" in h else None)
    g = ConnectomeGraph(h["level"], nd, src.long(), dst.long(), ed, groups, layers, concats, list(h.get("warnings", [])),
                        dict(h.get("meta", {})), unit_node_attrs=unit_nodes)
    _edge_ptr(g)
    return g


@register_exporter("pyg")
def _pyg(g):
    from .pyg import to_pyg
    return to_pyg(g)


@register_exporter("networkx")
def _nx(g):
    from .netx import to_networkx
    return to_networkx(g)


@register_writer(".graphml")
def write_graphml(g, path):
    import networkx as nx
    from .netx import to_networkx
    nx.write_graphml(to_networkx(g, flat=True), path)


@register_writer(".gexf")
def write_gexf(g, path):
    import networkx as nx
    from .netx import to_networkx
    if g.concats:
        warn_user(f"graphs.write: GEXF keeps no graph attributes, so the .gexf file drops the graph's {len(g.concats)} "
                  "concatenation record(s) and the header from_networkx needs to read it back; write .graphml or "
                  ".json to keep them")
    nx.write_gexf(to_networkx(g, flat=True), path)


@register_writer(".json")
def write_json(g, path):
    doc = header(g)
    doc["nodes"] = {k: v.tolist() for k, v in g.node_attrs.items()}
    doc["nodes"]["name"] = g.node_names()
    doc["edges"] = {"src": g.src.tolist(), "dst": g.dst.tolist(), **{k: v.tolist() for k, v in g.edge_attrs.items()}}
    write_text(path, json.dumps(doc))


def read_json(path):
    """Read a graph written by ``write(g, "x.json")``."""
    with open(path) as f:
        doc = json.load(f)
    e = doc["edges"]
    edges = {k: torch.tensor(v, dtype=getattr(torch, doc["edge_dtypes"][k])) for k, v in e.items() if k not in ("src", "dst")}
    nodes = {k: torch.tensor(v, dtype=getattr(torch, doc["node_dtypes"][k])) for k, v in doc["nodes"].items() if k != "name"}
    return from_header(doc, nodes, torch.tensor(e["src"], dtype=torch.long), torch.tensor(e["dst"], dtype=torch.long), edges)
