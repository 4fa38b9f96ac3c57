"""Compact copies saved before graphs' modules were split: their pickles and code name classes and functions by the
module that held them then, which still names them."""
import os
import pickle
import subprocess
import sys
import types
import zipfile
from pathlib import Path

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


def _option_a_copy():
    """``_Net`` whose option-A shortcut becomes a channel padding (``channel_pad`` in the copy's code), its example."""
    torch.manual_seed(0)
    m = randomize_bn(_Net()).eval()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["conv3.weight"][:, [0, 4, 6]] = False
    masks["fc.weight"][:, [0, 1]] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 6, 6)
    return graphs.compact(m, conn, x), x


_LOAD_AND_COMPACT = """
import sys, torch, graphs
args = sys.argv[1:]
for path, expected, atol in zip(args[::3], args[1::3], map(float, args[2::3])):
    small = torch.load(path, weights_only=False)
    x, y = torch.load(expected)
    assert "channel_pad(" in small.code and torch.allclose(small(x), y, rtol=0, atol=atol), path
    again = graphs.compact(small, example_input=x)
    assert torch.allclose(again(x), y, atol=max(atol, 1e-5)), path
    print("loaded and compacted again:", path)
"""


def load_and_compact_in_a_fresh_process(*checks):
    """In a new Python (graphs imported from this checkout), for each ``(path, expected, atol)``: torch.load the copy
    saved at ``path`` (a channel padding in its code), check that it computes the ``y`` of the ``(x, y)`` saved at
    ``expected`` (to ``atol``; 0: the same), and compact it again with graphs.compact."""
    root = str(Path(graphs.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", _LOAD_AND_COMPACT, *(str(a) for c in checks for a in c)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.count("compacted again") == len(checks), done.stderr[-3000:]


def test_a_copy_with_a_channel_padding_loads_back_and_compacts_again(tmp_path):
    """A copy whose option-A shortcut became a channel padding could not be read back (torch.load traces the saved
    code again, with fx's tracer, and went into ``channel_pad``: "Proxy object cannot be iterated") nor compacted
    again; ``channel_pad`` is recorded as one call by any tracer now, as ``F.pad`` is. The fix is in the function,
    not in what is saved (no ``wrap(`` in the code, which registers the loaded code's globals with fx for good),
    so copies saved before it load too."""
    small, x = _option_a_copy()
    assert "channel_pad(" in small.code and "wrap(" not in small.code
    torch.save(small, tmp_path / "small.pt")
    torch.save((x, small(x)), tmp_path / "expected.pt")
    load_and_compact_in_a_fresh_process((tmp_path / "small.pt", tmp_path / "expected.pt", 0))


def test_the_compact_command_saves_a_copy_with_a_channel_padding_that_loads(tmp_path, capsys):
    """``python -m graphs compact`` of a ResNet-20 whose dead stream channels go through the option-A shortcuts saved
    a copy that torch.load could not read back (its channel paddings)."""
    from adaptive.models import build_model
    from graphs.cli import main
    from test_graphs_compact import masked_output

    m = randomize_bn(build_model("resnet20"))
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    for k in masks:  # stream channel 5: dead in the stem and every layer1 conv2, and its padded continuation
        if k == "conv1.weight" or (k.startswith("layer1") and k.endswith("conv2.weight")):
            masks[k][5] = False
        if k.startswith("layer2") and k.endswith("conv2.weight"):
            masks[k][8 + 5] = False
        if k.startswith("layer3") and k.endswith("conv2.weight"):
            masks[k][16 + 8 + 5] = False
    conn.set_masks(masks)
    run = tmp_path / "run"
    conn.save(run / "connectome.safetensors")
    torch.save(conn.dense_state_dict(), run / "model_state.pt")
    (run / "config.yaml").write_text("model: resnet20\n")
    assert main(["compact", str(run), "--in-shape", "3,16,16"]) == 0, capsys.readouterr().err
    x = torch.randn(2, 3, 16, 16)
    torch.save((x, masked_output(m, conn, x)), tmp_path / "expected.pt")
    load_and_compact_in_a_fresh_process((run / "compact_model.pt", tmp_path / "expected.pt", 1e-4))


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
    what it did (run here without the trace that rebuilds the graph), and torch.load reads it back in a new Python
    (that trace went into channel_pad, which fx records as one call now) and it compacts again."""
    from graphs import compact_rewrite

    small, x = _option_a_copy()
    pickled = saved_as_then(small, tmp_path / "old.pt", monkeypatch, "graphs.compact", compact_rewrite.channel_pad)
    assert b"from graphs.compact import channel_pad" in pickled and b"graphs_compact_channel_pad(" in pickled
    saved_code = types.ModuleType("saved_code")
    saved_code.Unpickler, saved_code.load = _SavedCode, pickle.load
    forward, body = torch.load(tmp_path / "old.pt", weights_only=False, pickle_module=saved_code)
    assert forward.__globals__["graphs_compact_channel_pad"] is compact_rewrite.channel_pad
    assert torch.equal(forward(small, x), small(x)) and body["compaction"] == small.compaction
    torch.save((x, small(x)), tmp_path / "expected.pt")
    load_and_compact_in_a_fresh_process((tmp_path / "old.pt", tmp_path / "expected.pt", 0))


class _PadsFromGraphsCompact(torch.nn.Module):
    """Looks channel_pad up in graphs.compact as its forward runs (channel 1 a zero channel)."""

    def forward(self, x):
        from graphs.compact import channel_pad

        return channel_pad(x, (), torch.tensor([0, -1, 1]))


def test_channel_pad_taken_from_graphs_compact_is_traced_as_one_call():
    """Code that takes channel_pad from graphs.compact as its forward runs is traced as one call, as before the
    split (when graphs.compact fx.wrap-ped the name): an fx.wrap covers only the namespace of the module that calls
    it, so channel_pad now dispatches ``__torch_function__`` itself, which every tracer records as one call; traced
    into, its ``tuple(x.shape[2:])`` fails on a proxy."""
    from graphs import compact_rewrite
    from graphs.tracer import symbolic_trace

    gm = symbolic_trace(_PadsFromGraphsCompact())
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"] == [compact_rewrite.channel_pad]
    x = torch.randn(2, 2, 3, 3)
    assert torch.equal(gm(x), torch.stack([x[:, 0], torch.zeros_like(x[:, 0]), x[:, 1]], 1))
