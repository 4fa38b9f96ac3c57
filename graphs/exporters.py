"""The exporter registry: named converters of a :class:`ConnectomeGraph` into other libraries'
objects, and file writers chosen by extension.

``register_exporter("name")(fn)`` adds ``fn(graph) -> object``; ``register_writer(".ext")(fn)`` adds
``fn(graph, path)``, which writes the file at ``path`` (a temporary name beside the file asked for,
renamed onto it once ``fn`` returns). What such a function gives back is checked (a writer must
have written that file, an exporter must return something), and a failure of one not built in is
raised as a :class:`~adaptive.plugins.PluginError` naming it, with nothing written. Built in: exporters "pyg" and "networkx"; writers ".graphml" (streamed from the
graph's columns, not through networkx), ".gexf", ".json" (streamed too).

Every format but GEXF carries the :func:`header` (groups, layers, concatenations, dtypes), so
``read_json``, ``from_networkx(nx.read_graphml(...))`` and ``from_pyg`` give back a graph that
:func:`graphs.concat_composition` analyses as it did the original. GEXF keeps no graph attributes: a
GEXF file is for viewing (Gephi), and writing one from a graph with concatenations warns.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
from typing import Callable, Dict

import torch

from adaptive import jsonio
from adaptive import registry as _registry
from adaptive.atomic import atomic_path
from adaptive.plugins import PluginError
from adaptive.warn import warn_user

EXPORTERS: Dict[str, Callable] = {}
WRITERS: Dict[str, Callable] = {}
FORMAT = "adaptive.graph/1"


def register_exporter(name: str, replace: bool = False):
    """Decorator: ``fn(graph) -> object`` answers to ``export(g, name)``. A taken name (a built-in
    such as "pyg") is refused unless ``replace=True`` (the rule of every registry of the package,
    :mod:`adaptive.registry`)."""
    def deco(fn):
        _registry.add(EXPORTERS, "graph exporter", name, fn, replace)
        return fn
    return deco


def _extension(ext) -> str:
    if not isinstance(ext, str) or not ext.strip("."):
        raise ValueError(f"a graph writer's extension is a non-empty string such as '.csv', got {ext!r}")
    return "." + ext.lstrip(".").lower()


def register_writer(ext: str, replace: bool = False):
    """Decorator: ``fn(graph, path)`` writes files ending in ``ext`` (".csv" or "csv", any case:
    extensions are matched without regard to case). A taken extension (a built-in such as ".json")
    is refused unless ``replace=True``."""
    ext = _extension(ext)

    def deco(fn):
        _registry.add(WRITERS, "graph writer", ext, fn, replace)
        return fn
    return deco


def export(g, name: str):
    """Convert ``g`` with the exporter registered as ``name``; one that returns None is refused."""
    if name not in EXPORTERS:
        raise ValueError(f"unknown exporter {name!r}: registered are {sorted(EXPORTERS)}")
    fn = EXPORTERS[name]
    out = fn(g)
    if out is None:
        raise PluginError(f"graph exporter {name!r} ({_registry._origin(fn)}) returned None: an exporter returns the "
                          "converted graph (a file is written by a writer: graphs.register_writer('.ext'), "
                          "fn(graph, path))")
    return out


def write(g, path, format: str | None = None) -> str:
    """Write ``g`` to ``path``; the format comes from ``format`` ("json", ".graphml", any case) or
    the file extension. The built-in formats are gzip- or bzip2-compressed where ``path`` ends in .gz
    or .bz2 (``x.graphml.gz`` is GraphML, compressed). A ``format`` that contradicts a suffix naming another
    known format (``write(g, "x.graphml", format="json")``, which wrote JSON under a GraphML name) is refused,
    as the command line's ``--format`` is; with a suffix no writer knows (``x.dat``), ``format`` decides."""
    path = os.fspath(path)
    if os.path.isdir(path):  # (its empty suffix was read as an unknown format '')
        raise ValueError(f"cannot write {path!r}: it is a folder; give a file path in it with the format's suffix, "
                         f"e.g. {os.path.join(path, 'connectome.graphml')!r} (formats: {sorted(WRITERS)})")
    named = os.path.splitext(path)[1].lower()  # the format the path's suffix names
    if named in COMPRESSED:
        inner = os.path.splitext(os.path.splitext(path)[0])[1].lower()
        named = inner if inner in COMPRESSIBLE else named
    dotted = [e for e in WRITERS if e.count(".") > 1 and path.lower().endswith(e)]  # a writer's ".tar.gz"
    if dotted:
        named = max(dotted, key=len)
    ext = _extension(format) if format else named
    if format and named in WRITERS and named != ext:
        raise ValueError(f"cannot write {path!r} as format {format!r}: its suffix {named!r} names another format; "
                         f"leave format out (the suffix names it) or give the path a {ext!r} suffix")
    if ext not in WRITERS:
        raise ValueError(f"cannot write {path!r}: unknown format {ext!r}; known are {sorted(WRITERS)}")
    fn = WRITERS[ext]
    with atomic_path(path) as tmp:  # a failing writer leaves the old file, never half a new one
        if _BUILT_IN.get(ext) is fn:
            fn(g, os.fspath(tmp))
        else:
            _plugin_write(fn, ext, g, tmp, path)
    return path


def _plugin_write(fn, ext: str, g, tmp, path: str) -> None:
    """Run a writer not built in on the temporary path ``tmp`` of ``path``: its bug (any error but
    an OSError or a missing import, which say what to fix themselves) is raised as a PluginError
    naming it, and so is a writer that leaves no file at ``tmp``."""
    who = f"graph writer {ext!r} ({_registry._origin(fn)})"
    try:
        out = fn(g, os.fspath(tmp))
    except BaseException as e:
        _remove_non_file(tmp)  # a folder it made before raising hid its error behind atomic_path's IsADirectoryError
        if isinstance(e, (OSError, ImportError)) or not isinstance(e, Exception):
            raise
        raise PluginError(f"{who} failed writing {path!r}: {type(e).__name__}: {e}; nothing was written "
                          "(a file already there is kept)") from e
    if os.path.isdir(tmp) and not os.path.islink(tmp):
        _remove_non_file(tmp)
        raise PluginError(f"{who} wrote a folder, not a file, for {path!r}: a writer fn(graph, path) writes one file "
                          "at the path it is given; nothing was written")
    if not os.path.isfile(tmp):
        _remove_non_file(tmp)  # a link to nowhere
        returned = "" if out is None else (f"; it returned a {type(out).__name__} (what it returns is ignored; an "
                                           "exporter returning an object is registered with graphs.register_exporter)")
        raise PluginError(f"{who} wrote no file for {path!r}: a writer fn(graph, path) writes the file at the path it "
                          f"is given (a temporary name beside {os.path.basename(path)}, renamed onto it when fn "
                          f"returns){returned}")


def _remove_non_file(tmp) -> None:
    """Remove what a writer left at ``tmp`` that :func:`~adaptive.atomic.atomic_path` would not: a
    folder (it removes files only, and fails on one) or a symbolic link (one to nowhere it misses)."""
    if os.path.islink(tmp):
        os.unlink(tmp)
    elif os.path.isdir(tmp):
        shutil.rmtree(tmp)


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


def _check_columns(h: dict, node_attrs, src, dst, edge_attrs) -> None:
    """Refuse columns that are not the whole graph the header describes: nodes or edges removed or added
    after export (a networkx or PyG subgraph), an attribute dropped, an edge to a node that is not there.
    Such a graph read back silently had nodes its groups did not count, or failed on a bare IndexError."""
    nodes = len(h["groups"]) if h["level"] == "layer" else sum(int(x[4]) for x in h["groups"])
    fix = ("from_networkx, from_pyg and read_json read back a whole exported graph, as it was written: analyse a "
           "part of one with networkx or torch_geometric, or build the graph again (graphs.build)")
    missing = ([f"node attribute {k!r}" for k in h["node_dtypes"] if k not in node_attrs]
               + [f"edge attribute {k!r}" for k in h["edge_dtypes"] if k not in edge_attrs])
    if missing:
        raise ValueError(f"the graph lacks its {', '.join(missing[:4])}, which its header lists; {fix}")
    sizes = {len(v) for v in node_attrs.values()}
    if sizes - {nodes}:
        raise ValueError(f"the graph has {max(sizes - {nodes})} nodes, but its header's groups hold {nodes}: nodes were "
                         f"removed or added since it was exported; {fix}")
    e = len(src)
    if len(dst) != e or any(len(v) != e for v in edge_attrs.values()):
        raise ValueError(f"the graph's edge columns differ in length ({e} sources, {len(dst)} targets, attributes "
                         f"{sorted({len(v) for v in edge_attrs.values()})}); {fix}")
    ends = torch.cat([torch.as_tensor(src).reshape(-1), torch.as_tensor(dst).reshape(-1)])
    if ends.numel() and (int(ends.min()) < 0 or int(ends.max()) >= nodes):
        raise ValueError(f"an edge of the graph ends at node {int(ends.max()) if int(ends.max()) >= nodes else int(ends.min())}, "
                         f"but its nodes are 0..{nodes - 1}; {fix}")


def from_header(h: dict, node_attrs, src, dst, edge_attrs):
    """Rebuild a ConnectomeGraph from :func:`header` output and attribute tensors."""
    from .graph import ConnectomeGraph, _edge_ptr
    from .trace_types import Group, LayerFlow

    if h.get("format") != FORMAT:
        raise ValueError(f"not an adaptive graph (format {h.get('format')!r}, expected {FORMAT!r})")
    _check_columns(h, node_attrs, src, dst, edge_attrs)
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


GRAPHML_CHUNK = 1 << 18  # edges (or nodes) formatted and written at a time by write_graphml


@register_writer(".graphml")
def _graphml_writer(g, path):
    """What :func:`write` calls (inside its own atomic write): the file, compressed by its suffix."""
    with _open_text(path) as f:
        _write_graphml_to(g, f, GRAPHML_CHUNK)


COMPRESSED = (".gz", ".bz2")
COMPRESSIBLE = (".graphml", ".gexf", ".json")  # the built-in writers, which compress by the path's suffix


@contextlib.contextmanager
def _gzip_out(path):
    """``path`` opened for gzip-compressed binary writing with no file name and a zero time in the
    gzip header: the same graph gives the same bytes, whatever temporary name a write went through
    (``gzip.open`` recorded the atomic write's temporary file name and the time)."""
    import gzip
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        yield gz


@contextlib.contextmanager
def _open_text(path, mode: str = "w"):
    """``path`` opened for text (``mode`` "w" or "r"), gzip- or bzip2-compressed where it ends in .gz
    or .bz2, in any case, as :func:`write` finds the format inside them (``g.JSON.GZ`` is compressed)."""
    p = os.fspath(path)
    newline = "\n" if mode == "w" else None
    if p.lower().endswith(".gz"):
        import gzip
        if mode == "w":
            with _gzip_out(p) as gz, io.TextIOWrapper(gz, encoding="utf-8", newline=newline) as f:
                yield f
            return
        with gzip.open(p, mode + "t", encoding="utf-8", newline=newline) as f:
            yield f
        return
    if p.lower().endswith(".bz2"):
        import bz2
        with bz2.open(p, mode + "t", encoding="utf-8", newline=newline) as f:
            yield f
        return
    with open(p, mode, encoding="utf-8", newline=newline) as f:
        yield f


def write_graphml(g, path, chunk: int | None = None):
    """GraphML written straight from the graph's columns, ``chunk`` edges (default
    :data:`GRAPHML_CHUNK`) formatted and written at a time, so memory stays bounded by the chunk
    (nx.write_graphml of to_networkx(g, flat=True) built the networkx graph, then the whole XML tree,
    so its memory grew with the edges). ``nx.read_graphml`` reads the file back to the graph it read from
    networkx's file: the same node ids, attributes and their types (``long``,
    ``double``, ``boolean``, ``string``), graph attributes ``level`` and ``header``, edges in the same
    order, numbered by ``id`` at the synapse level (a MultiDiGraph), one edge per node pair otherwise
    (the last one's attributes, as networkx keeps them). ``path`` may be an open file (text or
    binary) or a path, gzip- or bzip2-compressed where it ends in .gz or .bz2; a path is written
    atomically."""
    chunk = GRAPHML_CHUNK if chunk is None else chunk
    if chunk < 1:
        raise ValueError(f"write_graphml: chunk must be a positive number of edges, got {chunk}")
    if hasattr(path, "write"):  # an open file, as nx.write_graphml takes
        if isinstance(path, io.TextIOBase):
            _write_graphml_to(g, path, chunk)
        else:
            f = io.TextIOWrapper(path, encoding="utf-8", newline="\n", write_through=True)
            try:
                _write_graphml_to(g, f, chunk)
                f.flush()
            finally:
                f.detach()  # the caller's file stays open
        return path
    with atomic_path(path) as tmp, _open_text(tmp) as f:
        _write_graphml_to(g, f, chunk)
    return path


def _write_graphml_to(g, f, chunk: int) -> None:
    if "name" in g.node_attrs:
        raise ValueError("write_graphml: a node attribute is called 'name', which GraphML files of this "
                         "package give the node names; rename the attribute (g.node_attrs['my_name'] = "
                         "g.node_attrs.pop('name'))")
    _refuse_non_xml(g, "GraphML")  # before the first byte: an open file given is left as it was
    multi = g.level == "synapse"
    n, src, dst = g.num_nodes, g.src, g.dst
    keep, data = _graphml_edges(src, dst, n, multi)
    ncols = {"name": None, **g.node_attrs}
    ecols = dict(g.edge_attrs)
    # networkx numbers its keys in the order it met them: graph, then node, then edge attributes
    keys = [("graph", "level", "string"), ("graph", "header", "string")]
    keys += [("node", k, "string" if v is None else _graphml_type(k, v)) for k, v in ncols.items()] if n else []
    keys += [("edge", k, _graphml_type(k, v)) for k, v in ecols.items()] if keep.numel() else []
    kid = {(fr, k): f"d{i}" for i, (fr, k, _) in enumerate(keys)}
    f.write("<?xml version='1.0' encoding='utf-8'?>\n<graphml xmlns=\"http://graphml.graphdrawing.org/xmlns\" "
            "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:schemaLocation=\"http://graphml."
            "graphdrawing.org/xmlns http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd\">\n")
    f.writelines(f'  <key id="{kid[fr, k]}" for="{fr}" attr.name={_xml_attr(k)} attr.type="{t}" />\n'
                 for fr, k, t in reversed(keys))
    f.write('  <graph edgedefault="directed">\n')
    names = [_xml_text(x) for x in g.node_names()]
    nlits = ['    <node id="'] + _data_lits("node", list(ncols) if n else [], kid, "    </node>\n")
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        cols = [_graphml_text(torch.arange(a, b)), names[a:b]] + [_graphml_text(v[a:b]) for v in g.node_attrs.values()]
        f.write(_interleave(nlits, cols))
    elits = ['    <edge source="', '" target="'] + (['" id="'] if multi else [])
    elits += _data_lits("edge", list(ecols) if keep.numel() else [], kid, "    </edge>\n")
    for a in range(0, keep.numel(), chunk):
        at, by = keep[a:a + chunk], data[a:a + chunk]
        cols = [_graphml_text(src[at]), _graphml_text(dst[at])] + ([_graphml_text(at)] if multi else [])
        f.write(_interleave(elits, cols + [_graphml_text(v[by]) for v in ecols.values()]))
    f.write(f'    <data key="{kid["graph", "level"]}">{_xml_text(g.level)}</data>\n'
            f'    <data key="{kid["graph", "header"]}">{_xml_text(header_text(g))}</data>\n'
            "  </graph>\n</graphml>\n")


def _graphml_edges(src, dst, n, multi):
    """(edges to write, edges whose attributes they carry), in the order networkx wrote them: by source
    node, each source's edges in their order. A DiGraph holds one edge per node pair: a repeated pair
    is written once, where it first came, with its last attributes."""
    order = torch.argsort(src, stable=True)
    if multi or src.numel() < 2:
        return order, order
    pair = src * n + dst
    by_pair = torch.argsort(pair, stable=True)
    sp = pair[by_pair]
    starts = torch.ones_like(sp, dtype=torch.bool)
    starts[1:] = sp[1:] != sp[:-1]
    if bool(starts.all()):
        return order, order
    first = by_pair[starts]  # each pair's first edge ...
    ends = torch.ones_like(starts)
    ends[:-1] = starts[1:]
    last = by_pair[ends]  # ... and its last (both in pair order)
    at = torch.argsort(first)  # first edges in their order, then by source
    first, last = first[at], last[at]
    by_src = torch.argsort(src[first], stable=True)
    return first[by_src], last[by_src]


def _data_lits(scope, names, kid, close) -> list:
    """The text between an element's values: its opening tag's end, then one <data> per attribute."""
    if not names:
        return ['" />\n']
    opens = [f'<data key="{kid[scope, k]}">' for k in names]
    return (['">\n      ' + opens[0]] + [f"</data>\n      {o}" for o in opens[1:]] + ["</data>\n" + close])


def _graphml_type(name, v: torch.Tensor) -> str:
    if v.dtype == torch.bool:
        return "boolean"
    if v.dtype.is_floating_point:
        return "double"
    if v.dtype.is_complex:
        raise TypeError(f"write_graphml: attribute {name!r} is complex ({v.dtype}), which GraphML cannot hold; "
                        "store its real and imaginary parts as two attributes")
    return "long"


def _graphml_text(v: torch.Tensor) -> list:
    """A column's values as the text networkx wrote (str of the Python value: float64 repr, True/False)."""
    v = v.detach().cpu()
    if v.dtype.is_floating_point:
        v = v.double()
    return v.numpy().astype(str).tolist()


def _interleave(lits, cols) -> str:
    """One string of every row's ``lits[0] + cols[0][i] + lits[1] + ... + lits[-1]``."""
    rows, k = len(cols[0]), len(cols)
    pieces = [None] * (rows * (2 * k + 1))
    for j, lit in enumerate(lits):
        pieces[2 * j::2 * k + 1] = [lit] * rows
    for j, col in enumerate(cols):
        pieces[2 * j + 1::2 * k + 1] = col
    return "".join(pieces)


# what XML 1.0 cannot hold, not even as a character reference: C0 controls other than tab, newline and
# carriage return, lone surrogates, U+FFFE and U+FFFF
_NON_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _refuse_non_xml(g, fmt: str) -> None:
    """Refuse a graph whose names (its groups', which name its nodes, and its attributes') hold a character
    XML cannot hold (an ``nn.ModuleDict`` key may hold any but "."): the file would be written and then
    fail to parse (a control character) or fail half-written (a lone surrogate)."""
    texts = [("level", g.level)] + [("group", x.name) for x in g.groups]
    texts += [("attribute", k) for k in (*g.node_attrs, *g.edge_attrs)]
    for what, text in texts:
        bad = _NON_XML.search(text)
        if bad:
            name = f"the graph's {what} {text!r}" if what != "group" else f"the node group {text!r} (a module's name)"
            raise ValueError(f"cannot write {fmt}: {name} holds the character {bad.group()!r}, which no XML file can "
                             "hold, so the file would not read back; rename it (a ModuleDict key, say), or write "
                             ".json, which keeps any name")


def _xml_text(s: str) -> str:
    # a carriage return as a reference: XML readers turn a bare one (and CR LF) into a newline
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def _xml_attr(s: str) -> str:
    return '"' + _xml_text(s).replace('"', "&quot;").replace("\n", "&#10;").replace("\t", "&#09;") + '"'


@register_writer(".gexf")
def write_gexf(g, path):
    import networkx as nx
    from .netx import to_networkx
    _refuse_non_xml(g, "GEXF")
    if g.concats:
        warn_user(f"graphs.write: GEXF keeps no graph attributes, so the .gexf file drops the graph's {len(g.concats)} "
                  "concatenation record(s) and the header from_networkx needs to read it back; write .graphml or "
                  ".json to keep them")
    p = os.fspath(path)
    if p.lower().endswith(".gz"):  # (networkx's own gzip records the file's name and time: see _gzip_out)
        with _gzip_out(p) as f:
            nx.write_gexf(to_networkx(g, flat=True), f)
        return
    if p.lower().endswith(".bz2") and not p.endswith(".bz2"):  # networkx compresses .bz2 in lower case only
        import bz2
        with bz2.open(p, "wb") as f:
            nx.write_gexf(to_networkx(g, flat=True), f)
        return
    nx.write_gexf(to_networkx(g, flat=True), p)


JSON_CHUNK = 1 << 18  # values of a column formatted and written at a time by write_json
# JSON has no NaN or infinity (json.dumps' bare NaN/Infinity tokens are refused by JavaScript's JSON.parse,
# Go, serde...): write_json writes them as these strings (protobuf's JSON mapping does the same), which
# read_json turns back into the floats in a float column or a meta key listed under "nonfinite_meta"
# (the convention of every JSON file the project writes: adaptive.jsonio)
NONFINITE = jsonio.NONFINITE
_nonfinite_text = jsonio.nonfinite_text


def _json_values(part) -> str:
    """``json.dumps`` of a column's chunk (a tensor or a list), non-finite floats as :data:`NONFINITE` strings."""
    if not torch.is_tensor(part):
        return json.dumps(part)
    vals = part.tolist()
    if part.is_floating_point():
        for i in (~torch.isfinite(part)).nonzero().flatten().tolist():  # the non-finite values only
            vals[i] = _nonfinite_text(vals[i])
    return json.dumps(vals, allow_nan=False)


def _strict_header(h: dict) -> dict:
    """:func:`header` with the meta's non-finite floats as :data:`NONFINITE` strings, their keys listed
    under ``"nonfinite_meta"`` (a meta string "NaN" stays a string)."""
    fix = lambda v: _nonfinite_text(v) if isinstance(v, float) and not math.isfinite(v) else v
    meta = {k: [fix(x) for x in v] if isinstance(v, list) else fix(v) for k, v in h["meta"].items()}
    keys = [k for k in h["meta"] if json.dumps(meta[k]) != json.dumps(h["meta"][k])]
    return {**h, "meta": meta, "nonfinite_meta": keys} if keys else h


def header_text(g) -> str:
    """:func:`header` as strict JSON text (:func:`_strict_header`): the ``header`` graph attribute of
    GraphML and of :func:`~graphs.netx.to_networkx`, read back by :func:`header_from_doc`."""
    return json.dumps(_strict_header(header(g)), allow_nan=False)


def header_from_doc(doc: dict) -> dict:
    """A parsed header (or JSON document) with the meta keys listed under ``"nonfinite_meta"`` given
    back their non-finite floats; a header written before (bare NaN tokens, no list) as it is."""
    back = lambda v: [back(x) for x in v] if isinstance(v, list) else NONFINITE.get(v, v)
    for k in doc.pop("nonfinite_meta", []):
        doc["meta"][k] = back(doc["meta"][k])
    return doc


def _float_column(v: list, dtype) -> torch.Tensor:
    """A column read back: the :data:`NONFINITE` strings of a float column as their floats (a file
    written before them holds bare NaN tokens, which ``json.load`` reads as floats already)."""
    try:
        return torch.tensor(v, dtype=dtype)
    except (TypeError, ValueError):
        if not dtype.is_floating_point:
            raise
        try:
            return torch.tensor([NONFINITE[x] if isinstance(x, str) else x for x in v], dtype=dtype)
        except KeyError as e:
            raise ValueError(f"a float column holds the string {e.args[0]!r}, not a number") from None


@register_writer(".json")
def write_json(g, path):
    """The :func:`header`'s keys, then ``"nodes"`` (each node attribute, then ``"name"``) and ``"edges"``
    (``"src"``, ``"dst"``, each edge attribute), each a list: the bytes ``json.dumps`` gave of that
    document, written :data:`JSON_CHUNK` values at a time, so memory stays bounded by the chunk
    (``json.dumps`` of the whole document held every value as a Python object, then the whole text).
    Written atomically; gzip- or bzip2-compressed where ``path`` ends in .gz or .bz2. Strict JSON: a NaN or
    infinite float (a diverged run's weights) is the string "NaN", "Infinity" or "-Infinity" (see
    :data:`NONFINITE`), not the bare token ``json.dumps`` writes, which other tools' parsers refuse."""
    nodes = dict(g.node_attrs)
    nodes["name"] = g.node_names()
    tables = {"nodes": nodes, "edges": {"src": g.src, "dst": g.dst, **g.edge_attrs}}
    with atomic_path(path) as tmp, _open_text(tmp) as f:
        f.write(json.dumps(_strict_header(header(g)), allow_nan=False)[:-1])  # the header's object, left open
        for table, cols in tables.items():
            f.write(f", {json.dumps(table)}: {{")
            for i, (name, col) in enumerate(cols.items()):
                f.write(f"{', ' if i else ''}{json.dumps(name)}: [")
                for a in range(0, len(col), JSON_CHUNK):
                    part = col[a:a + JSON_CHUNK]
                    f.write((", " if a else "") + _json_values(part)[1:-1])
                f.write("]")
            f.write("}")
        f.write("}")


def read_json(path):
    """Read a graph written by ``write(g, "x.json")`` (or ``"x.json.gz"``, ``"x.json.bz2"``); any other
    file (a report's summary.json, a GraphML file) is refused with a ValueError naming it. Non-finite
    floats come back from the strings write_json writes, and from the bare NaN/Infinity tokens of files
    written before it wrote strict JSON."""
    with _open_text(path, "r") as f:
        try:
            doc = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as e:
            raise ValueError(f"{os.fspath(path)!r} is not JSON ({type(e).__name__}: {e}): read_json reads the .json files "
                             "graphs.write writes (a .graphml file reads back with "
                             "graphs.from_networkx(networkx.read_graphml(path)))") from None
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if fmt != FORMAT or not isinstance(doc.get("edges"), dict) or not isinstance(doc.get("nodes"), dict):
        raise ValueError(f"{os.fspath(path)!r} is not a graph written by graphs.write (format {fmt!r}, expected "
                         f"{FORMAT!r}, with 'nodes' and 'edges')")
    _refuse_unlisted_columns(doc)
    e = doc["edges"]
    edges = {k: _float_column(v, getattr(torch, doc["edge_dtypes"][k])) for k, v in e.items() if k not in ("src", "dst")}
    nodes = {k: _float_column(v, getattr(torch, doc["node_dtypes"][k])) for k, v in doc["nodes"].items() if k != "name"}
    return from_header(header_from_doc(doc), nodes, torch.tensor(e["src"], dtype=torch.long), torch.tensor(e["dst"], dtype=torch.long), edges)


def _refuse_unlisted_columns(doc: dict) -> None:
    """Refuse a .json graph whose tables hold a column its header does not list (added since it was
    written: a bare KeyError naming the column) or lack the edges' ends (``src``, ``dst``)."""
    fix = ("read_json reads back a whole exported graph, as graphs.write wrote it: remove the column, or analyse "
           "the changed table with another tool")
    for table, ends, dtypes in (("nodes", ("name",), "node_dtypes"), ("edges", ("src", "dst"), "edge_dtypes")):
        listed = doc.get(dtypes)
        if not isinstance(listed, dict):
            raise ValueError(f"the graph's header has no {dtypes!r} (the type of each {table[:-1]} column); {fix}")
        extra = [k for k in doc[table] if k not in ends and k not in listed]
        if extra:
            raise ValueError(f"the graph's {table} table holds column(s) {extra[:4]} that its header's {dtypes!r} does "
                             f"not list (added since it was written); {fix}")
    lost = [k for k in ("src", "dst") if k not in doc["edges"]]
    if lost:
        raise ValueError(f"the graph's edges table lacks {' and '.join(map(repr, lost))}, the ends of its edges; {fix}")


_BUILT_IN = dict(WRITERS)  # their failures are raised as they are; a plugin's are named as its (write)
