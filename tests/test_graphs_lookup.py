"""Embedding lookups (nn.Embedding, F.embedding, table[idx], index_select) are followed: the table is no
synapse layer (a Connectome leaves embeddings dense), its output features are input nodes (op "lookup")
wired from the token positions. They were unknown ops: every token position fed one junction that
fed every channel of the residual stream, with a warning."""
import os
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs
from graphs.graph import EDGE_SYNAPSE
from graphs.trace import InputGuessError, default_example_input, runnable_example_input
from graphs.trace import trace as trace_model

torch.set_num_threads(1)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _graph_edges import edge_set, wires  # noqa: E402

V, T, E = 11, 5, 8


class TinyLM(nn.Module):
    """Token and positional embeddings, a pre-norm MLP block, a head: the lookup written four ways."""

    def __init__(self, how="module"):
        super().__init__()
        self.how = how
        self.tok, self.pos = nn.Embedding(V, E), nn.Embedding(T, E)
        self.ln, self.fc1, self.fc2, self.head = nn.LayerNorm(E), nn.Linear(E, 16), nn.Linear(16, E), nn.Linear(E, V)

    def lookup(self, idx):
        w = self.tok.weight
        if self.how == "module":
            return self.tok(idx)
        if self.how == "functional":
            return F.embedding(idx, w)
        if self.how == "getitem":
            return w[idx]
        # the method (torch.index_select, which importing torch_geometric replaces, is tested below)
        return w.index_select(0, idx.flatten()).view(idx.shape[0], idx.shape[1], E)

    def forward(self, idx):
        h = self.lookup(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        h = h + self.fc2(torch.relu(self.fc1(self.ln(h))))
        return self.head(h)


@pytest.mark.parametrize("how", ["module", "functional", "getitem", "index_select"])
def test_an_embedding_is_a_lookup_whose_features_are_input_nodes(how):
    torch.manual_seed(0)
    conn = adaptive.Connectome(TinyLM(how))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unknown op, no layer off the data path
        g = graphs.build(conn, example_input=torch.randint(0, V, (2, T)))
    groups = {x.name: x for x in g.groups}
    tok, pos = groups["tok"], groups["pos"]
    assert (tok.kind, tok.op, tok.count) == ("input", "lookup", E)
    assert (pos.kind, pos.op, pos.count) == ("input", "lookup", E)
    assert [l.module for l in g.layers] == ["fc1", "fc2", "head"]  # the tables are no synapse layers
    assert g.live_synapses() == conn.num_live()
    edges = edge_set(g)
    # every token position feeds the index node, which feeds every column of the token table; the
    # positional table's index is a constant (arange): nothing feeds it
    assert {e for e in edges if e[1].startswith("tok.index")} == wires("idx", "tok.index", [(t, 0) for t in range(T)])
    assert {e for e in edges if e[1].startswith("tok:")} == wires("tok.index", "tok", [(0, c) for c in range(E)])
    assert not any(e[1].startswith("pos:") for e in edges)
    # the residual stream's channel c is the sum of column c of both tables
    add = next(x.name for x in g.groups if x.kind == "junction" and x.op == "add")
    assert {e for e in edges if e[1].startswith(add + ":")} == (
        wires("tok", add, [(c, c) for c in range(E)]) | wires("pos", add, [(c, c) for c in range(E)]))
    s = graphs.summary(g)
    assert s["dead"]["dead"] == 0 and s["outputs_reachable"] == V
    assert g.node_attrs["depth_max"][g.node_attrs["kind"] == 4].max() == 3  # tables at depth 0, then 3 layers


def test_index_select_on_traced_data_is_a_shape_op():
    """x.index_select(-1, perm) permutes the channels: b's input channel c reads a's unit perm[c]."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
            self.register_buffer("perm", torch.tensor([2, 0, 3, 1]))

        def forward(self, x):
            return self.b(self.a(x).index_select(-1, self.perm))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(model=Net(), level="unit", example_input=torch.randn(2, 3))
    names = g.node_names()
    assert [names[i] for i in g.layers[1].in_src.tolist()] == ["a:2", "a:0", "a:3", "a:1"]
    assert int((g.edge_attrs["kind"] == EDGE_SYNAPSE).sum()) == 12 + 8


def test_a_table_looked_up_three_times_has_nodes_for_each_lookup():
    """Labels count the lookups, not the "NAME#k.index" junctions (the third lookup was "emb#4")."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(V, E), nn.Linear(E, 3)

        def forward(self, a, b, c):
            return self.fc(self.emb(a) * self.emb(b) * self.emb(c))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(model=Net(), level="unit", example_input=(torch.randint(0, V, (2, T)),) * 3)
    looked = [(x.name, x.count) for x in g.groups if x.op == "lookup" and x.kind == "input"]
    assert looked == [("emb", E), ("emb#2", E), ("emb#3", E)]
    assert [x.name for x in g.groups if x.op == "lookup" and x.kind == "junction"] == [
        "emb.index", "emb#2.index", "emb#3.index"]


@pytest.mark.parametrize("how", ["w[:, idx]", "w[..., idx]", "index_select"])
def test_a_table_looked_up_along_its_last_axis_has_its_rows_as_nodes(how):
    """w[:, idx] picks columns of a (E, V) table: its E rows are the features, as for index_select(-1, idx).
    getitem took the V columns for nodes: each of fc's input channels became a junction of the
    picked columns."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.fc = nn.Parameter(torch.randn(E, V)), nn.Linear(E, 3)

        def forward(self, idx):
            if how == "index_select":
                cols = self.w.index_select(-1, idx.flatten()).view(E, idx.shape[0], idx.shape[1])
            else:
                cols = self.w[:, idx] if how == "w[:, idx]" else self.w[..., idx]
            return self.fc(cols.permute(1, 2, 0))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(model=Net(), level="unit", example_input=torch.randint(0, V, (2, T)))
    assert [(x.name, x.count) for x in g.groups if x.op == "lookup" and x.kind == "input"] == [("w", E)]
    names = g.node_names()
    assert [names[i] for i in g.layers[0].in_src.tolist()] == [f"w:{c}" for c in range(E)]


LM_PLUGIN = '''
import torch
from torch import nn
from adaptive.models import register_model


class PluginLM(nn.Module):
    """Tokens and positions looked up, an MLP, a head: its first layer reads token indices."""

    def __init__(self, num_classes, vocab=11, seq=12, dim=8):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(seq, dim)
        self.fc, self.head = nn.Linear(dim, 16), nn.Linear(16, num_classes)

    def forward(self, idx):
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        return self.head(torch.relu(self.fc(h)))


@register_model("lookup_lm_plugin")
def lookup_lm(num_classes=10, in_shape=None):
    return PluginLM(num_classes)


class Reshaping(nn.Module):
    """Reads (batch, 15) features as 5 rows of 3: no guess from its first layer runs it."""

    def __init__(self, num_classes):
        super().__init__()
        self.fc, self.head = nn.Linear(3, 4), nn.Linear(20, num_classes)

    def forward(self, x):
        return self.head(self.fc(x.view(x.shape[0], 5, 3)).flatten(1))


@register_model("lookup_reshaping_plugin")
def reshaping(num_classes=10, in_shape=None):
    return Reshaping(num_classes)


class Timed(nn.Module):
    """Features and a diffusion timestep t [B]: two inputs, which no option of the command line gives."""

    def __init__(self, num_classes):
        super().__init__()
        self.fc, self.temb, self.head = nn.Linear(4, 8), nn.Linear(1, 8), nn.Linear(8, num_classes)

    def forward(self, x, t):
        return self.head(torch.relu(self.fc(x) + self.temb(t[:, None])))


@register_model("lookup_timed_plugin")
def timed(num_classes=10, in_shape=None):
    return Timed(num_classes)
'''


def _plugin_run(tmp_path, name):
    from adaptive.models import build_model
    from adaptive.plugins import load_plugins

    plugin = tmp_path / "lookup_lm_plugin.py"
    plugin.write_text(LM_PLUGIN)
    load_plugins([str(plugin)])
    torch.manual_seed(0)
    conn = adaptive.Connectome(build_model(name))
    run = tmp_path / "run"
    conn.save(run / "connectome.safetensors")
    torch.save(conn.dense_state_dict(), run / "model_state.pt")
    (run / "config.yaml").write_text(f"model: {name}\nplugins: [{plugin}]\n")
    return run, conn


def test_the_command_line_builds_the_graph_of_a_model_whose_first_layer_is_an_embedding(tmp_path, capsys):
    """The guessed input was a float tensor, which an nn.Embedding refuses, and the error said to pass
    example_input=tensor, which the command line has no way to: report, export and compact all failed.
    Token indices are guessed (16 of them, or as many as the positional table holds: 12), and
    --in-shape / --in-dtype give the input."""
    from graphs.cli import main

    run, conn = _plugin_run(tmp_path, "lookup_lm_plugin")
    assert main(["export", str(run), "--out", str(tmp_path / "g.json")]) == 0
    g = graphs.read_json(str(tmp_path / "g.json"))
    groups = {x.name: x for x in g.groups}
    assert (groups["idx"].count, groups["tok"].op, groups["tok"].count) == (12, "lookup", 8)
    assert g.live_synapses() == conn.num_live()
    assert main(["export", str(run), "--out", str(tmp_path / "g5.json"), "--in-shape", "5", "--in-dtype", "long"]) == 0
    assert {x.name: x.count for x in graphs.read_json(str(tmp_path / "g5.json")).groups}["idx"] == 5
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert main(["compact", str(run), "--out", str(tmp_path / "small.pt")]) == 0
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "report"), "--in-dtype", "float"]) == 2
    err = capsys.readouterr().err
    assert "Expected tensor for argument #1 'indices'" in err and "--in-dtype" in err, err


def test_an_input_the_command_line_cannot_guess_names_its_options(tmp_path, capsys):
    from adaptive.models import build_model
    from graphs.cli import main

    run, _ = _plugin_run(tmp_path, "lookup_reshaping_plugin")
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not guess an input for Reshaping: give the input with --in-shape (without "
                          "the batch: 16 for 16 tokens, 3,32,32 for an image) and --in-dtype"), err
    assert "tried input [(1, 3)]" in err and "example_input" not in err and err.count("\n") == 1
    assert main(["report", str(run), "--out", str(tmp_path / "report"), "--in-shape", "15"]) == 0
    with pytest.raises(InputGuessError, match=r"could not guess .*: pass example_input=tensor"):
        trace_model(build_model("lookup_reshaping_plugin"))


def test_a_model_of_two_inputs_is_not_guessed_and_the_error_says_how_to_give_them(tmp_path, capsys):
    """A forward taking two inputs was tried on one guessed tensor, and the error said to pass
    example_input=tensor (or on the command line --in-shape / --in-dtype, which shape one input only).
    It names the inputs, the tuple to pass from Python, and says the command line cannot give them."""
    from adaptive.models import build_model
    from graphs.cli import main

    run, conn = _plugin_run(tmp_path, "lookup_timed_plugin")
    said = (r"Timed.forward takes 2 inputs \(x, t\) and graphs guesses a single one \(t: no guess\): pass "
            r"example_input=\(x, t\), a tensor each$")
    for guess in (lambda m: graphs.build(model=m), lambda m: graphs.compact(m), runnable_example_input):
        with pytest.raises(InputGuessError, match=said):
            guess(build_model("lookup_timed_plugin"))
    for args in (["export", "--out", str(tmp_path / "g.json")], ["report", "--in-shape", "4", "--in-dtype", "float"],
                 ["compact", "--out", str(tmp_path / "small.pt")]):
        assert main([args[0], str(run), *args[1:]]) == 2
        err = capsys.readouterr().err
        assert err == ("error: Timed.forward takes 2 inputs (x, t) and graphs guesses a single one (t: no guess): the "
                       "command line "
                       "gives a model one input only (--in-shape, --in-dtype); from Python, pass example_input=(x, t), "
                       "a tensor each, batch first, to graphs.build (then graphs.write) or graphs.compact\n"), err
    xt = (torch.randn(2, 4), torch.rand(2))
    assert graphs.build(conn, example_input=xt).live_synapses() == conn.num_live()
    assert graphs.compact(conn.model, conn, xt).compaction["max_abs_diff"] < 1e-5
    # MultiheadAttention's forward takes query, key and value: a guess is traced as self-attention
    assert graphs.build(model=nn.MultiheadAttention(E, 2)).groups[1].count == E


class _KeywordMask(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, x, *, mask, scale=1.0):
        return self.b(self.a(x) * mask) * scale


def test_a_keyword_only_input_is_named_and_given_last_in_the_tuple():
    """``forward(self, x, *, mask)`` was guessed one tensor, and the error said "could not guess an input
    ... pass example_input=tensor", which cannot give mask; compact refused the tuple (x, mask) (it ran
    the model on both positionally). The error names mask as the input with no guess and keyword-only,
    the tuple takes it last, and build and compact pass it by name; the copy takes it by name, as the model."""
    from graphs.cli import _one_line

    said = (r"_KeywordMask.forward takes 2 inputs \(x, mask\) and graphs guesses a single one \(mask: no guess\): "
            r"pass example_input=\(x, mask\), a tensor each \(mask: keyword-only, last; graphs passes it by name\)$")
    for guess in (lambda m: graphs.build(model=m), lambda m: graphs.compact(m), runnable_example_input):
        with pytest.raises(InputGuessError, match=said) as e:
            guess(_KeywordMask())
    assert "example_input=(x, mask), a tensor each, batch first (mask: keyword-only, last; graphs passes it by name), " \
        "to graphs.build" in _one_line(e.value)
    torch.manual_seed(0)
    m = _KeywordMask()
    x, mask = torch.randn(2, 4), (torch.rand(2, 3) < 0.5).float()
    g = graphs.build(model=m, example_input=(x, mask))
    assert [(gr.name, gr.count) for gr in g.groups if gr.kind == "input"] == [("x", 4), ("mask", 3)]
    small = graphs.compact(m, example_input=(x, mask))
    assert small.compaction["max_abs_diff"] == 0.0
    assert torch.equal(small(x, mask=mask), m(x, mask=mask))
    with pytest.raises(TypeError, match="positional argument"):  # mask keyword-only in the copy, as in the model
        small(x, mask)


class _BatchDict(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, batch):
        return self.b(self.a(batch["features"]))


def test_a_dict_example_input_is_refused_with_the_tuple_to_pass():
    """A dict of the inputs by name (``{"x": x, "mask": mask}``, the natural way to give a keyword-only
    one) failed in build with ``KeyError: 0`` and in compact with fx's "Expected positional argument for
    parameter mask". Both say to pass the tuple, in the forward's order. A dict the forward takes as its
    one argument (a batch) was ``KeyError: 0`` in build, or, with input_nodes given, a graph without an
    input: refused, saying graphs follows tensors only; compact, which runs it, still takes it."""
    x, mask = torch.randn(2, 4), torch.rand(2, 3)
    said = r"dict of _KeywordMask.forward's inputs: pass them as a tuple.* example_input=\(x, mask\)"
    for run in (lambda: graphs.build(model=_KeywordMask(), example_input={"mask": mask, "x": x}),
                lambda: graphs.compact(_KeywordMask(), example_input={"mask": mask, "x": x})):
        with pytest.raises(TypeError, match=said):
            run()
    batch = {"features": x}
    for nodes in ("auto", "elements"):
        with pytest.raises(TypeError, match="dict, which _BatchDict.forward takes as one argument; graphs follows "
                                            "tensors only"):
            graphs.build(model=_BatchDict(), example_input=batch, input_nodes=nodes)
    assert graphs.compact(_BatchDict(), example_input=batch).compaction["max_abs_diff"] == 0.0


def test_a_float_timestep_next_to_other_inputs_is_one_input_node():
    """A diffusion timestep t [B] next to the image was refused as a sample without its batch dimension,
    where an integer one was one input node: any 1-D input next to others is one node, wired to every
    unit that reads it; a lone 1-D float input is still refused."""

    class Diffusion(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.temb = nn.Conv2d(2, 3, 3, padding=1), nn.Linear(4, 3)
            self.register_buffer("freqs", torch.tensor([1.0, 10.0]))

        def forward(self, x, t):
            f = t[:, None] * self.freqs  # a timestep embedding: [B, 4], every feature from t
            e = self.temb(torch.cat([f.tanh(), f.sigmoid()], 1))
            return self.conv(x) + e[:, :, None, None]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(model=Diffusion(), level="unit", example_input=(torch.randn(2, 2, 5, 5), torch.rand(2)))
    assert [(x.name, x.count) for x in g.groups if x.kind == "input"] == [("x", 2), ("t", 1)]
    edges = edge_set(g)
    assert {e for e in edges if e[0].startswith("t:")} == {("t:0", f"temb:{j}", EDGE_SYNAPSE) for j in range(3)}
    assert {e for e in edges if e[0].startswith("x:")} == {(f"x:{i}", f"conv:{j}", EDGE_SYNAPSE)
                                                            for i in range(2) for j in range(3)}
    with pytest.raises(ValueError, match=r"batch dimension first"):
        graphs.build(model=nn.Linear(4, 2), example_input=torch.randn(4))


def test_guessed_token_indices_are_in_range_of_every_table():
    """Token indices are long, below the smallest table's size, first where an embedding is the first
    layer; tokens=True / False keep one kind."""

    class ImageFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.emb = nn.Linear(4, 3), nn.Embedding(20, 3)

    xs = default_example_input(TinyLM(), batch=2)
    assert [(tuple(x.shape), x.dtype) for x in xs] == [((2, 16), torch.long), ((2, V), torch.long),
                                                       ((2, T), torch.long), ((2, E), torch.float32)]
    assert all(int(x.max()) < T for x in xs[:3])
    assert [x.dtype for x in default_example_input(ImageFirst())] == [torch.float32, torch.long]
    assert [x.dtype for x in default_example_input(ImageFirst(), tokens=True)] == [torch.long]
    assert [x.dtype for x in default_example_input(ImageFirst(), tokens=False)] == [torch.float32]
    assert runnable_example_input(TinyLM()).shape == (1, T)


def test_torch_functions_torch_geometric_replaces_are_followed():
    """torch_geometric, once imported, replaces torch.index_select and torch.select with Python functions
    that fx traced into and stopped at (an ``if`` on input.dim()): the whole model fell back to module
    order, its lookup and channel permutation lost, and graphs.compact refused it."""
    pytest.importorskip("torch_geometric")  # imported for what it does to torch

    assert torch.index_select is not torch._C._VariableFunctions.index_select  # what the test is about

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.a, self.b = nn.Parameter(torch.randn(V, E)), nn.Linear(E, 4), nn.Linear(4, 2)
            self.register_buffer("perm", torch.tensor([2, 0, 3, 1]))

        def forward(self, idx):
            h = torch.index_select(self.w, 0, idx.flatten()).view(idx.shape[0], idx.shape[1], E)  # a lookup
            h = torch.index_select(self.a(h), -1, self.perm)  # a permutation of a's units
            return self.b(torch.select(h, 1, 0))

    torch.manual_seed(0)
    m = Net()
    with pytest.warns(UserWarning, match="not synapses of the connectome"):  # the table: no synapse layer
        conn = adaptive.Connectome(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to module order, no unknown op
        g = graphs.build(conn, "unit", example_input=torch.randint(0, V, (2, T)))
    assert g.meta["traced"]
    assert [(x.name, x.count) for x in g.groups if x.op == "lookup" and x.kind == "input"] == [("w", E)]
    names = g.node_names()
    assert [names[i] for i in g.layers[0].in_src.tolist()] == [f"w:{c}" for c in range(E)]
    assert [names[i] for i in g.layers[1].in_src.tolist()] == ["a:2", "a:0", "a:3", "a:1"]
    assert torch.index_select is not torch._C._VariableFunctions.index_select  # torch_geometric's, put back
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["b.weight"][:, 0] = False  # b reads a:2 at its input 0: a:2 feeds nothing
    conn.set_masks(masks)
    dead = graphs.dead_units(graphs.build(conn, "unit", example_input=torch.randint(0, V, (2, T))))["dead"]
    assert [names[i] for i in dead.nonzero().flatten().tolist()] == ["a:2"]
    small = graphs.compact(m, conn, torch.randint(0, V, (4, T)))  # traced (it was refused), and checked
    assert small.compaction["params_after"] <= small.compaction["params_before"]


@pytest.mark.parametrize("how", ["module", "functional"])
def test_an_embedding_bag_is_a_lookup_whose_features_are_input_nodes(how):
    """nn.EmbeddingBag and F.embedding_bag (a bag's rows summed or averaged) were unknown ops: every
    token position fed one junction feeding every input channel of fc, with a warning. Its columns are
    lookup nodes, fed by the index and by the per_sample_weights the functional call is given."""

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.bag, self.fc = nn.EmbeddingBag(V, E, mode="mean"), nn.Linear(E, 3)

        def forward(self, idx, weights):
            if how == "module":
                return self.fc(self.bag(idx))
            return self.fc(F.embedding_bag(idx, self.bag.weight, mode="sum", per_sample_weights=weights.abs()))

    torch.manual_seed(0)
    conn = adaptive.Connectome(Bag())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unknown op
        g = graphs.build(conn, "unit", example_input=(torch.randint(0, V, (2, T)), torch.randn(2, T)))
    assert [(x.name, x.kind, x.op, x.count) for x in g.groups if x.op == "lookup" and x.kind == "input"] == [
        ("bag", "input", "lookup", E)]
    assert [l.module for l in g.layers] == ["fc"] and g.live_synapses() == conn.num_live()
    names = g.node_names()
    assert [names[i] for i in g.layers[0].in_src.tolist()] == [f"bag:{c}" for c in range(E)]
    edges = edge_set(g)
    read = wires("idx", "bag.index", [(t, 0) for t in range(T)])
    if how == "functional":
        read |= wires("weights", "bag.index", [(t, 0) for t in range(T)])
    assert {e for e in edges if e[1].startswith("bag.index")} == read


def test_float_features_asked_of_a_model_of_embeddings_only_say_what_is_missing():
    """tokens=False (--in-dtype float) on a model whose only layer is an embedding said it had no
    Embedding layer."""

    class Tables(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.w = nn.Embedding(V, E), nn.Parameter(torch.randn(E, 2))

        def forward(self, idx):
            return self.tok(idx) @ self.w

    with pytest.raises(InputGuessError, match="no Linear, Conv, ConvTranspose or recurrent layer to shape float features from"):
        default_example_input(Tables(), tokens=False)
    assert [x.dtype for x in default_example_input(Tables())] == [torch.long] * 2  # (1, 16) and (1, V)


def test_a_flat_index_with_offsets_and_a_class_label_are_inputs_of_one_node_each():
    """nn.EmbeddingBag's flat form (a 1-D index and the bags' offsets) and a class label [B] next to an
    image were refused as inputs without a batch dimension (pass x.unsqueeze(0), which EmbeddingBag
    refuses with offsets). A 1-D integer input next to others is one input node; a lone one is still
    refused."""

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.bag, self.fc = nn.EmbeddingBag(V, E, mode="max"), nn.Linear(E, 3)

        def forward(self, idx, offsets):
            return self.fc(self.bag(idx, offsets))

    class Conditioned(nn.Module):
        def __init__(self):
            super().__init__()
            self.label, self.conv, self.fc = nn.Embedding(10, 4), nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 2)

        def forward(self, x, y):
            return self.fc((self.conv(x) + self.label(y)[:, :, None, None]).mean((2, 3)))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(model=Bag(), level="unit", example_input=(torch.tensor([1, 2, 4, 5, 4, 3]), torch.tensor([0, 4])))
    assert [(x.name, x.count) for x in g.groups if x.kind == "input"] == [("idx", 1), ("offsets", 1), ("bag", E)]
    assert {e for e in edge_set(g) if e[1].startswith("bag")} == (
        wires("idx", "bag.index", [(0, 0)]) | wires("offsets", "bag.index", [(0, 0)])
        | wires("bag.index", "bag", [(0, c) for c in range(E)]))
    g = graphs.build(model=Conditioned(), level="unit", example_input=(torch.randn(2, 1, 6, 6), torch.tensor([3, 1])))
    assert {e for e in edge_set(g) if e[1].startswith("label")} == wires("y", "label", [(0, c) for c in range(4)])
    with pytest.raises(ValueError, match=r"batch dimension first"):
        graphs.build(model=nn.Sequential(nn.Embedding(V, E), nn.Linear(E, 2)), example_input=torch.tensor([1, 2]))


def test_gather_on_a_table_is_a_lookup_and_on_traced_data_a_shape_op():
    """w.gather(0, idx) picks rows of a parameter table: its columns are lookup nodes, as for w[idx];
    torch.gather(h, -1, perm) on traced data moves h's units (b's input channel c reads a's unit
    perm[c]). Both were unknown ops."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.a, self.b = nn.Parameter(torch.randn(V, E)), nn.Linear(E, 4), nn.Linear(4, 2)
            self.register_buffer("perm", torch.tensor([2, 0, 3, 1]))

        def forward(self, idx):
            rows = self.w.gather(0, idx.reshape(-1, 1).expand(-1, E)).view(idx.shape[0], idx.shape[1], E)
            h = self.a(rows)
            return self.b(torch.gather(h, -1, self.perm.expand_as(h)))

    with pytest.warns(UserWarning, match="not synapses of the connectome"):  # the table: no synapse layer
        conn = adaptive.Connectome(Net())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(conn, "unit", example_input=torch.randint(0, V, (2, T)))
    assert [(x.name, x.count) for x in g.groups if x.op == "lookup" and x.kind == "input"] == [("w", E)]
    names = g.node_names()
    assert [names[i] for i in g.layers[0].in_src.tolist()] == [f"w:{c}" for c in range(E)]
    assert [names[i] for i in g.layers[1].in_src.tolist()] == ["a:2", "a:0", "a:3", "a:1"]
