"""Reachability through nn.MultiheadAttention, head by head (graphs.analysis.closed_gates): a head whose
value projections are all pruned passes only its biases on, whatever its queries and keys; a head whose
queries are all pruned still passes its values on; a query whose key (its pair in the head's dot product) is
pruned reaches nothing, nor does what feeds only such queries. Every claim is checked on the model itself: the
attention output before out_proj at two inputs, and the gradient reaching the projections."""
import copy

import pytest
import torch
from torch import nn

import adaptive
import graphs

E, H, D = 8, 2, 4  # embed_dim, heads, head_dim: head 1 is channels 4..7


class Net(nn.Module):
    """Attention alone between an input layer and the head: no residual path around it."""

    def __init__(self, kdim=None, **kw):
        super().__init__()
        self.emb = nn.Linear(4, E)
        self.kv = nn.Linear(4, kdim) if kdim else None
        self.attn = nn.MultiheadAttention(E, H, batch_first=True, kdim=kdim, vdim=kdim, **kw)
        self.head = nn.Linear(E, 3)

    def kv_of(self, x):
        h = self.emb(x)
        return h, (self.kv(x) if self.kv is not None else h)

    def forward(self, x):
        h, kv = self.kv_of(x)
        return self.head(self.attn(h, kv, kv, need_weights=False)[0].mean(1))


def _weight(model, t):
    """(parameter name, rows of that parameter) of projection ``t`` (q, k or v)."""
    if model.attn._qkv_same_embed_dim:
        i = "qkv".index(t)
        return "attn.in_proj_weight", slice(i * E, (i + 1) * E)
    return f"attn.{t}_proj_weight", slice(0, E)


def _model_and_graph(prune, kdim=None, **kw):
    """A model whose projection ``prune`` has head 1's rows pruned (biases nonzero), and its unit graph."""
    torch.manual_seed(0)
    model = Net(kdim, **kw).eval()
    with torch.no_grad():  # nn.MultiheadAttention starts its biases at 0: trained ones are not
        model.attn.in_proj_bias.normal_()
        for p in (model.attn.bias_k, model.attn.bias_v):
            if p is not None:
                p.normal_()
    conn = adaptive.Connectome(model)
    name, rows = _weight(model, prune)
    mask = torch.ones_like(conn.masks[name])
    mask[rows][E // H:] = False  # head 1's rows of that projection
    conn.set_masks({name: mask})
    conn.apply()
    g = graphs.build(conn, "unit", example_input=torch.randn(2, 5, 4))
    return model, g


def _before_out_proj(model, x):
    """The attention output before out_proj (out_proj made the identity in a copy)."""
    attn = copy.deepcopy(model.attn)
    with torch.no_grad():
        attn.out_proj.weight.copy_(torch.eye(E))
        attn.out_proj.bias.zero_()
        h, kv = model.kv_of(x)
        return attn(h, kv, kv, need_weights=False)[0]


def _varies(model):
    """Per channel before out_proj: does it change when the input does?"""
    dtype = model.emb.weight.dtype
    a, b = (_before_out_proj(model, torch.randn(3, 5, 4, dtype=dtype, generator=torch.Generator().manual_seed(s)))
            for s in (1, 2))
    return ((a - b).abs() > 1e-5).flatten(0, 1).any(0)


def _gradient_rows(model, t):
    """Per unit of projection ``t``: does any of its weights get a gradient from the output?"""
    model.zero_grad()
    model(torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(3))).square().sum().backward()
    name, rows = _weight(model, t)
    grad = dict(model.named_parameters())[name].grad[rows]
    return grad.abs().amax(1) > 1e-6 * grad.abs().max()


def _graph_facts(g, t):
    """(reachable from an input per out_proj input channel, reaching an output per unit of projection t)."""
    lay = {l.module: l for l in g.layers}
    grp = g.groups[lay[f"attn.{t}"].group]
    r = graphs.reachability(g)
    return r["from_input"][lay["attn.out_proj"].in_src], r["to_output"][grp.start: grp.start + grp.count]


@pytest.mark.parametrize("kdim", [None, 6])
def test_a_head_whose_values_are_all_pruned_passes_nothing_on(kdim):
    model, g = _model_and_graph("v", kdim)
    varies = _varies(model)
    assert varies.tolist() == [True] * D + [False] * D  # the model: head 1 outputs its value biases
    reach, _ = _graph_facts(g, "v")
    assert torch.equal(reach, varies)  # the graph agrees, channel by channel
    for t in "qk":  # the queries and keys of head 1 change nothing at the output
        moved = _gradient_rows(model, t)
        assert moved.tolist() == [True] * D + [False] * D
        assert torch.equal(_graph_facts(g, t)[1], moved)
    dead = graphs.dead_units(g)
    assert graphs.summary(g)["dead"]["cannot_reach_output"] == int(dead["cannot_reach_output"].sum()) >= 2 * D


@pytest.mark.parametrize("kdim", [None, 6])
def test_a_head_whose_queries_are_all_pruned_still_passes_its_values_on(kdim):
    model, g = _model_and_graph("q", kdim)
    assert bool(_varies(model).all())  # the values flow: the scores are constant queries times live keys
    reach, _ = _graph_facts(g, "q")
    assert bool(reach.all())
    moved = _gradient_rows(model, "k")  # the keys of head 1 still matter (the query biases are not 0)
    assert bool(moved.all())
    assert torch.equal(_graph_facts(g, "k")[1], moved)


@pytest.mark.parametrize("kw", [{"add_bias_kv": True}, {"add_zero_attn": True}])
def test_an_appended_key_and_value_keep_a_value_pruned_head_alive(kw):
    model, g = _model_and_graph("v", **kw)
    varies = _varies(model)  # the appended position's value differs from the bias: the scores matter
    assert bool(varies.all())
    reach, _ = _graph_facts(g, "v")
    assert torch.equal(reach, varies)
    assert bool(_graph_facts(g, "q")[1].all()) and bool(_gradient_rows(model, "q").all())


@pytest.mark.parametrize("pruned", ["v", "k"])
def test_a_graph_read_back_from_json_closes_the_same_wires(tmp_path, pruned):
    g = _model_and_graph("v")[1] if pruned == "v" else _pruned_keys([4, 5])[1]
    back = graphs.read_json(graphs.write(g, str(tmp_path / "g.json")))
    assert int(graphs.analysis.closed_gates(g).sum()) == (D if pruned == "v" else 4)  # 2 queries, 2 keys
    assert torch.equal(graphs.analysis.closed_gates(back), graphs.analysis.closed_gates(g))
    for k in ("from_input", "to_output"):
        assert torch.equal(graphs.reachability(back)[k], graphs.reachability(g)[k])


class MaskedNet(Net):
    """:class:`Net` whose attention reads a causal mask (and drops attention weights in training)."""

    def __init__(self, kdim=None, **kw):
        super().__init__(kdim, **kw)
        self.register_buffer("causal", torch.ones(5, 5, dtype=torch.bool).triu(1))

    def forward(self, x):
        h, kv = self.kv_of(x)
        return self.head(self.attn(h, kv, kv, attn_mask=self.causal, need_weights=False)[0].mean(1))


def _pruned_keys(channels, kdim=None, dropout=0.0):
    """A float64 :class:`MaskedNet` whose key units ``channels`` have every synapse pruned (biases
    nonzero), and its unit graph."""
    torch.manual_seed(0)
    model = MaskedNet(kdim, dropout=dropout).double().eval()
    with torch.no_grad():
        model.attn.in_proj_bias.normal_()
    return _pruned_rows(model, "k", channels)


def _pruned_rows(model, which, channels):
    """``model`` with every synapse of its ``which`` ("q" or "k") units ``channels`` pruned, and its unit graph
    on a float64 example."""
    conn = adaptive.Connectome(model)
    name, rows = _weight(model, which)
    mask = torch.ones_like(conn.masks[name])
    mask[rows][channels] = False
    conn.set_masks({name: mask})
    conn.apply()
    return model, graphs.build(conn, "unit", example_input=torch.randn(2, 5, 4, dtype=torch.float64))


def _moved(model, params, train=False):
    """Per row of each named parameter: does the output's gradient reach it? In float64, so what
    cannot reach it is below 1e-9 of the largest gradient of them all (rounding), not just small."""
    model.zero_grad()
    model.train(train)
    torch.manual_seed(4)  # the dropout drawn in training
    model(torch.randn(3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))).square().sum().backward()
    model.eval()
    named = dict(model.named_parameters())
    grads = [named[p].grad[rows].abs().reshape(named[p].grad[rows].shape[0], -1).amax(1) for p, rows in params]
    top = max(float(x.max()) for x in grads)
    return [x > 1e-9 * top for x in grads]


@pytest.mark.parametrize("kdim", [None, 6])
@pytest.mark.parametrize("train", [False, True])
def test_a_query_whose_key_is_pruned_reaches_nothing(kdim, train):
    model, g = _pruned_keys([4, 5], kdim, dropout=0.5 if train else 0.0)
    name, rows = _weight(model, "q")
    bias_k = slice(E + 4, E + 6)  # the pruned keys' biases: added alike at every key position
    moved_q, moved_bias_k = _moved(model, [(name, rows), ("attn.in_proj_bias", bias_k)], train)
    assert moved_q.tolist() == [True] * 4 + [False] * 2 + [True] * 2  # the model, also with dropout
    assert not bool(moved_bias_k.any())
    assert torch.equal(_graph_facts(g, "q")[1], moved_q)  # the graph agrees, unit by unit
    assert _graph_facts(g, "k")[1].tolist() == [True] * 4 + [False] * 2 + [True] * 2
    assert bool(_varies(model).all())  # the values all pass on


def test_queries_whose_keys_are_all_pruned_reach_nothing_nor_what_feeds_only_them():
    """With kdim, the queries read ``emb`` alone: once every key is pruned, nothing of ``emb`` reaches
    the output (the attention weights are uniform), while the keys' and values' own input does."""
    model, g = _pruned_keys(list(range(E)), kdim=6)
    name, rows = _weight(model, "q")
    moved_q, moved_emb, moved_kv = _moved(model, [(name, rows), ("emb.weight", slice(None)), ("kv.weight", slice(None))])
    assert not bool(moved_q.any()) and not bool(moved_emb.any()) and bool(moved_kv.all())
    assert not bool(_graph_facts(g, "q")[1].any())
    lay = {l.module: l for l in g.layers}
    emb = g.groups[lay["emb"].group]
    assert not bool(graphs.reachability(g)["to_output"][emb.start: emb.start + emb.count].any())
    assert bool(_graph_facts(g, "v")[1].all()) and bool(_varies(model).all())
    dead = graphs.dead_units(g)["cannot_reach_output"]
    assert int(dead[emb.start: emb.start + emb.count].sum()) == E


class _ReadsWeights(nn.Module):
    """A :class:`MaskedNet` whose output also reads the attention weights."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        h, kv = self.net.kv_of(x)
        y, w = self.net.attn(h, kv, kv, need_weights=True)
        return self.net.head(y.mean(1)) + w.sum((1, 2)).unsqueeze(1)


def test_a_query_whose_key_is_pruned_still_counts_where_the_weights_are_read():
    """The weights output (need_weights, read) is its own junction of every query and key unit: it
    keeps them all counting."""
    model, g = _pruned_keys([4, 5])
    assert _graph_facts(g, "q")[1].tolist() == [True] * 4 + [False] * 2 + [True] * 2  # weights not read
    conn = adaptive.Connectome(_ReadsWeights(model))
    conn.set_masks({"net.attn.in_proj_weight": model.attn.in_proj_weight != 0})
    g = graphs.build(conn, "unit", example_input=torch.randn(2, 5, 4, dtype=torch.float64))
    lay = {l.module: l for l in g.layers}
    grp = g.groups[lay["net.attn.q"].group]
    assert graphs.density_per_layer(g)["net.attn.k"] == 0.75  # the pruned keys carried over
    assert bool(graphs.reachability(g)["to_output"][grp.start: grp.start + grp.count].all())


class TableNet(Net):
    """:class:`Net` whose keys, values or both read a learned table (one row per key position, a parameter the
    graph holds as the constant node) in place of the input."""

    def __init__(self, reads):
        super().__init__()
        self.reads = reads
        self.table = nn.Parameter(torch.randn(5, E))

    def kv_of(self, x):
        return self.emb(x), self.table.unsqueeze(0).expand(x.shape[0], -1, -1)

    def forward(self, x):
        h, table = self.kv_of(x)
        k, v = (table if t in self.reads else h for t in "kv")
        return self.head(self.attn(h, k, v, need_weights=False)[0].mean(1))


@pytest.mark.parametrize("reads", ["k", "v", "kv"])
@pytest.mark.parametrize("pruned", [[], [4, 5]])
def test_keys_or_values_read_from_a_learned_table_vary_over_positions(reads, pruned):
    """A table's rows differ from one key position to the next: a key or value unit reading it (a live
    synapse from the constant node) is no constant, so it closes nothing; only keys whose synapses are
    all pruned close their queries."""
    torch.manual_seed(0)
    model = TableNet(reads).double().eval()
    with torch.no_grad():
        model.attn.in_proj_bias.normal_()
    with pytest.warns(UserWarning, match="stay dense"):  # the table is no synapse of the connectome
        conn = adaptive.Connectome(model)
    mask = torch.ones_like(conn.masks["attn.in_proj_weight"])
    mask[E:2 * E][pruned] = False
    conn.set_masks({"attn.in_proj_weight": mask})
    conn.apply()
    g = graphs.build(conn, "unit", example_input=torch.randn(2, 5, 4, dtype=torch.float64))
    moved_q, moved_emb = _moved(model, [("attn.in_proj_weight", slice(0, E)), ("emb.weight", slice(None))])
    assert moved_q.tolist() == [c not in pruned for c in range(E)] and bool(moved_emb.all())  # the model
    assert torch.equal(_graph_facts(g, "q")[1], moved_q)  # the graph agrees
    lay = {l.module: l for l in g.layers}
    emb = g.groups[lay["emb"].group]
    assert bool(graphs.reachability(g)["to_output"][emb.start: emb.start + emb.count].all())


def _pruned_queries(channels, bias, kdim=None):
    """A float64 :class:`Net` whose query units ``channels`` have every synapse pruned; ``bias``: "none"
    (``bias=False``), "zero" (torch's initial zeros) or "normal" (trained-like); and its unit graph."""
    torch.manual_seed(0)
    model = Net(kdim, bias=bias != "none").double().eval()
    if bias == "normal":
        with torch.no_grad():
            model.attn.in_proj_bias.normal_()
    return _pruned_rows(model, "q", channels)


@pytest.mark.parametrize("kdim", [None, 6])
@pytest.mark.parametrize("bias", ["none", "zero", "normal"])
def test_a_key_whose_query_is_pruned_and_bias_free_reaches_nothing(kdim, bias):
    """A pruned query with no bias (``bias=False``) or a bias of exactly 0 is 0 at every position, so its key's term
    of every score is 0: the graph counted that key as live (the query's bias unknown to it). Checked on the model
    in float64: the key's rows get no gradient where the query's bias is 0, and do where it is not."""
    model, g = _pruned_queries([4, 5], bias, kdim)
    name, rows = _weight(model, "k")
    moved_k, = _moved(model, [(name, rows)])
    expected = [True] * 4 + [bias == "normal"] * 2 + [True] * 2
    assert moved_k.tolist() == expected  # the model
    assert _graph_facts(g, "k")[1].tolist() == expected  # the graph agrees, unit by unit
    assert ("zero" in g.node_attrs) == (bias != "normal")
    dead = graphs.dead_units(g)["cannot_reach_output"]
    lay = {l.module: l for l in g.layers}
    k = g.groups[lay["attn.k"].group]
    assert int(dead[k.start:k.start + k.count].sum()) == (0 if bias == "normal" else 2)


def test_a_bias_free_pruned_query_survives_a_json_round_trip(tmp_path):
    """The graph's ``zero`` column is written and read back, and closes the same wires."""
    g = _pruned_queries([1, 6], "none")[1]
    back = graphs.read_json(graphs.write(g, str(tmp_path / "g.json")))
    assert int(graphs.analysis.closed_gates(g).sum()) == 4  # 2 queries, 2 keys
    assert torch.equal(graphs.analysis.closed_gates(back), graphs.analysis.closed_gates(g))


def test_a_graph_without_bias_free_pruned_queries_has_no_zero_column():
    """Only such queries add the column: a graph of a model with every query live (bias-free) is as it was; where
    there is one, it is the last column."""
    g = _pruned_queries([], "none")[1]
    assert "zero" not in g.node_attrs and not bool(graphs.analysis.closed_gates(g).any())
    g = _pruned_queries([1], "none")[1]
    assert list(g.node_attrs)[-1] == "zero"  # the last column: data.x's other columns keep their places
    assert graphs.to_pyg(g).node_attr_names[-1] == "zero"


def test_the_zero_column_stays_last_in_a_graph_without_junctions():
    """``graphs.build(..., junctions=False)`` recomputes the depth and degree columns after contracting: ``zero`` is
    still the last column (it came before them), so ``data.x``'s other columns are where they are without it."""
    model = _pruned_queries([1], "none")[0]
    conn = adaptive.Connectome(model)
    conn.set_masks({n: p.detach() != 0 for n, p in conn.params.items()})  # the pruned rows, as applied
    g = graphs.build(conn, "unit", example_input=torch.randn(2, 5, 4, dtype=torch.float64), junctions=False)
    assert list(g.node_attrs)[-1] == "zero" and int(g.node_attrs["zero"].sum()) == 1
    plain = graphs.build(adaptive.Connectome(model), "unit", example_input=torch.randn(2, 5, 4, dtype=torch.float64),
                         junctions=False)
    assert list(g.node_attrs)[:-1] == list(plain.node_attrs)
