"""Compact copies saved before graphs' modules were split: their pickles and code name classes and functions by the
module that held them then, which still names them."""
import pickle
import sys
import types
import zipfile

import torch
from torch.fx.graph_module import _forward_from_src

import adaptive
import graphs
from test_graphs_compact import randomize_bn
from test_graphs_compact_device import _Net

torch.set_num_threads(1)


def saved_as_then(gm, path, monkeypatch, module: str, *objs) -> bytes:
    """Save ``gm`` to ``path`` as graphs saved it before a split moved ``objs`` (classes, functions) out of
    ``module``: the same objects, under that module's name and in its namespace. The pickle's bytes."""
    for obj in objs:
        monkeypatch.setattr(obj, "__module__", module)
        monkeypatch.setattr(sys.modules[module], obj.__name__, obj, raising=False)
    gm.recompile()  # its code, written as then
    torch.save(gm, path)
    monkeypatch.undo()
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))


class _SavedCode(pickle.Unpickler):
    """Unpickles a GraphModule as ``(forward, body)``: its saved code (import block and forward) made a function
    as torch.load makes it, without the trace that rebuilds the graph from it."""

    def find_class(self, module, name):
        if (module, name) == ("torch.fx.graph_module", "reduce_graph_module"):
            return lambda body, import_block: (_forward_from_src(import_block + body["_code"], {}), body)
        return super().find_class(module, name)


def test_the_code_of_a_copy_saved_before_graphs_compact_was_split_still_runs(tmp_path, monkeypatch):
    """A copy whose option-A shortcut became a channel padding calls ``channel_pad``, and a copy saved before the
    split imports it as ``from graphs.compact import channel_pad`` (fx writes the import of each function it calls
    into the pickle, from the module the function was in): it lives in graphs.compact_rewrite now, and
    graphs.compact still names it (a re-export that pyflakes calls unused), so the saved code runs and computes
    what it did. (torch.load of such a copy, saved before or after the split, fails in the trace that rebuilds
    its graph, which goes into channel_pad: the saved code is run here without it.)"""
    from graphs import compact_rewrite

    torch.manual_seed(0)
    m = randomize_bn(_Net()).eval()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["conv3.weight"][:, [0, 4, 6]] = False
    masks["fc.weight"][:, [0, 1]] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 6, 6)
    small = graphs.compact(m, conn, x)
    pickled = saved_as_then(small, tmp_path / "old.pt", monkeypatch, "graphs.compact", compact_rewrite.channel_pad)
    assert b"from graphs.compact import channel_pad" in pickled and b"graphs_compact_channel_pad(" in pickled
    saved_code = types.ModuleType("saved_code")
    saved_code.Unpickler, saved_code.load = _SavedCode, pickle.load
    forward, body = torch.load(tmp_path / "old.pt", weights_only=False, pickle_module=saved_code)
    assert forward.__globals__["graphs_compact_channel_pad"] is compact_rewrite.channel_pad
    assert torch.equal(forward(small, x), small(x)) and body["compaction"] == small.compaction


class _PadsFromGraphsCompact(torch.nn.Module):
    """Looks channel_pad up in graphs.compact as its forward runs (channel 1 a zero channel)."""

    def forward(self, x):
        from graphs.compact import channel_pad

        return channel_pad(x, (), torch.tensor([0, -1, 1]))


def test_channel_pad_taken_from_graphs_compact_is_traced_as_one_call():
    """fx.wrap wraps a name in the namespace of the module that calls it: before the split graphs.compact wrapped
    channel_pad, and a trace of code taking it from there recorded one call. Moved to graphs.compact_rewrite, the
    wrap covered that module's name only, and such a trace went into channel_pad, whose ``tuple(x.shape[2:])``
    fails on a proxy."""
    from graphs import compact_rewrite
    from graphs.tracer import symbolic_trace

    gm = symbolic_trace(_PadsFromGraphsCompact())
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"] == [compact_rewrite.channel_pad]
    x = torch.randn(2, 2, 3, 3)
    assert torch.equal(gm(x), torch.stack([x[:, 0], torch.zeros_like(x[:, 0]), x[:, 1]], 1))
