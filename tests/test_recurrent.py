"""nn.RNN / nn.LSTM / nn.GRU: their matrices are synapses (masking, training, save/load) and the graph
unrolls one time step of every layer and direction."""
import warnings

import pytest
import torch
from torch import nn

import adaptive
import graphs
from graphs.trace import INPUT, OUTPUT
from _training import train_steps


class Net(nn.Module):
    def __init__(self, cell="LSTM", bidirectional=False, layers=2, proj=0, batch_first=True):
        super().__init__()
        kw = {"proj_size": proj} if proj else {}
        self.batch_first = batch_first
        self.emb = nn.Linear(6, 8)
        self.rnn = getattr(nn, cell)(8, 5, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, **kw)
        self.head = nn.Linear((proj or 5) * (2 if bidirectional else 1), 3)

    def forward(self, x):  # x: [B, L, 6]
        y, _ = self.rnn(self.emb(x if self.batch_first else x.transpose(0, 1)))
        return self.head(y[:, -1] if self.batch_first else y[-1])


CASES = [("LSTM", False, 0, True), ("GRU", True, 0, False), ("RNN", True, 0, True), ("LSTM", True, 3, True)]


def _connectome(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no recurrent matrix is left dense with a warning
        return adaptive.Connectome(model)


def test_every_matrix_is_a_synapse_layer():
    c = _connectome(Net("LSTM", bidirectional=True, proj=3))
    rnn = sorted(n for n in c.layers if n.startswith("rnn."))
    expect = sorted(f"rnn.weight_{w}_l{k}{s}" for w in ("ih", "hh", "hr") for k in (0, 1) for s in ("", "_reverse"))
    assert rnn == expect
    assert c.layers["rnn.weight_hh_l1_reverse"].shape == (20, 3)  # 4 gates x 5 hidden, reading the projection
    assert "rnn.bias_ih_l0" not in c.layers


@pytest.mark.parametrize("cell,bi,proj,batch_first", CASES)
def test_training_keeps_pruned_recurrent_weights_zero(cell, bi, proj, batch_first):
    torch.manual_seed(0)
    model = Net(cell, bi, proj=proj, batch_first=batch_first)
    conn = _connectome(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctrl = adaptive.Controller(conn, opt, policy="set", density=0.4, budget="uniform", update_every=3, end_step=30)
    x, y = torch.randn(4, 7, 6), torch.randint(0, 3, (4,))
    train_steps(model, opt, ctrl, x, y, 10)
    for name, m in conn.masks.items():
        w = dict(model.named_parameters())[name]
        assert bool((w[~m.bool()] == 0).all()), name
    vanilla = Net(cell, bi, proj=proj, batch_first=batch_first)
    vanilla.load_state_dict(conn.dense_state_dict())
    with torch.no_grad():
        assert torch.equal(vanilla(x), model(x))


def test_save_and_load_keep_recurrent_masks(tmp_path):
    model = Net("GRU", bidirectional=True)
    conn = _connectome(model)
    gen = torch.Generator().manual_seed(0)
    conn.set_masks({n: torch.rand(m.shape, generator=gen) < 0.5 for n, m in conn.masks.items()})
    conn.apply()
    conn.save(tmp_path / "c.safetensors")
    fresh = Net("GRU", bidirectional=True)
    fresh.load_state_dict(model.state_dict())
    assert adaptive.Connectome.load(tmp_path / "c.safetensors", fresh).mask_hash() == conn.mask_hash()


@pytest.mark.parametrize("cell,bi,proj,batch_first", CASES)
def test_graph_unrolls_one_step(cell, bi, proj, batch_first):
    model = Net(cell, bi, proj=proj, batch_first=batch_first)
    conn = _connectome(model)
    gen = torch.Generator().manual_seed(1)
    conn.set_masks({n: torch.rand(m.shape, generator=gen) < 0.5 for n, m in conn.masks.items()})
    conn.apply()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # followed, not assumed all-to-all
        g = graphs.build(conn, example_input=torch.randn(2, 7, 6))
    assert g.live_synapses() == conn.num_live()
    lay = {l.module: l for l in g.layers}
    emb = g.groups[lay["emb"].group]
    gates, hidden = {"LSTM": 4, "GRU": 3}.get(cell, 1), 5
    # layer 0 reads the embedding's units; its recurrent matrix reads state nodes (kind input)
    assert set(lay["rnn.l0.ih"].in_src.tolist()) == set(range(emb.start, emb.start + emb.count))
    state = lay["rnn.l0.hh"].in_src
    assert bool((g.node_attrs["kind"][state] == INPUT).all()) and state.numel() == (proj or hidden)
    # layer 1 reads the outputs of both directions of layer 0
    width = (proj or hidden) * (2 if bi else 1)
    assert lay["rnn.l1.ih"].in_src.numel() == width and lay["rnn.l1.ih"].shape == (gates * hidden, width)
    # the head reads the last layer's outputs; every path from the input runs through both layers
    depth = g.node_attrs["depth_max"]
    out = g.node_attrs["kind"] == OUTPUT
    assert int(depth[out].max()) == 4 + (2 if proj else 0)  # emb, two recurrent layers (+ projections), head


class Seq2Seq(nn.Module):
    """An encoder whose final state starts the decoder."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec, self.head = nn.GRU(3, 4, batch_first=True), nn.GRU(3, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, a, b):
        _, h = self.enc(a)
        y, _ = self.dec(b, h)
        return self.head(y)


def test_an_initial_state_is_wired_from_the_units_that_produce_it():
    conn = _connectome(Seq2Seq())
    g = graphs.build(conn, example_input=(torch.randn(2, 5, 3), torch.randn(2, 4, 3)))
    assert graphs.summary(g)["dead"]["dead"] == 0  # the encoder reaches the output through the decoder's state
    lay = {l.module: l for l in g.layers}
    state = lay["dec.l0.hh"].in_src
    feeding = set(g.src[(g.edge_attrs["kind"] == 1) & torch.isin(g.dst, state)].tolist())
    enc_hidden = set(g.src[(g.edge_attrs["kind"] == 2) & torch.isin(g.dst, lay["enc.l0.hh"].in_src)].tolist())
    assert feeding == enc_hidden and len(feeding) == 4  # h0 of the decoder = the encoder's hidden units


class Last(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.RNN(3, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y[:, -1])


@pytest.mark.parametrize("junctions", [True, False])
def test_a_unit_that_reaches_the_output_only_at_a_later_step_is_not_dead(junctions):
    model = Last()
    conn = _connectome(model)
    head = torch.zeros(2, 4, dtype=torch.bool)
    head[:, 0] = True  # the head reads hidden unit 0 only
    conn.set_masks({"head.weight": head})
    conn.apply()
    x = torch.randn(2, 5, 3)
    g = graphs.build(conn, example_input=x, junctions=junctions)
    assert graphs.summary(g)["dead"]["dead"] == 0  # units 1..3 feed unit 0 at the next step (weight_hh)
    # the gradient agrees: every ih row gets one
    model.zero_grad()
    model(x).sum().backward()
    assert bool((model.rnn.weight_ih_l0.grad.abs().sum(1) > 0).all())
    # cut weight_hh's columns 1..3: now units 1..3 reach nothing, at any step
    hh = torch.zeros(4, 4, dtype=torch.bool)
    hh[:, 0] = True
    conn.set_masks({"rnn.weight_hh_l0": hh})
    conn.apply()
    g = graphs.build(conn, example_input=x, junctions=junctions)
    assert graphs.summary(g)["dead"]["dead"] == 6  # ih and hh units of rows 1..3
    model.zero_grad()
    model(x).sum().backward()
    assert bool((model.rnn.weight_ih_l0.grad[1:] == 0).all())


def test_layer_graph_keeps_recurrent_edges_apart():
    lg = graphs.build(_connectome(Last()), level="layer", example_input=torch.randn(2, 5, 3))
    rec = lg.edge_attrs["kind"] == 2
    assert int(rec.sum()) == 1 and float(lg.edge_attrs["count"][rec].sum()) == 0


def test_parametrized_and_old_weight_norm_matrices_are_named_not_pruned():
    import torch.nn.utils.parametrize as P

    m = Net("GRU")
    P.register_parametrization(m.rnn, "weight_hh_l0", nn.Identity())
    with pytest.warns(UserWarning, match=r"parametrized weight \(rnn.weight_hh_l0\)"):
        c = adaptive.Connectome(m)
    assert "rnn.weight_hh_l0" not in c.layers and "rnn.weight_ih_l0" in c.layers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        rnn = torch.nn.utils.weight_norm(nn.LSTM(4, 3), "weight_hh_l0")
    with pytest.warns(UserWarning, match=r"computed by torch.nn.utils.weight_norm \(rnn.weight_hh_l0\).*"
                                         r"remove_weight_norm\(module, NAME\)"):
        c = adaptive.Connectome(nn.ModuleDict({"rnn": rnn}))
    assert list(c.layers) == ["rnn.weight_ih_l0"]  # the gain vector is not a set of synapses


@pytest.mark.parametrize("how", ["old_weight_norm", "parametrization", "prune"])
@pytest.mark.parametrize("holder,attr", [("rnn", "weight_hh_l0"), ("attn", "in_proj_weight")])
def test_a_pattern_naming_what_a_reparametrised_matrix_is_stored_as_names_the_call_that_removes_it(holder, attr, how):
    """A pattern naming the tensors a recurrent matrix or an attention projection is computed from (old-style
    weight_norm's NAME_g, a parametrization's parametrizations.NAME.original, prune's NAME_orig) is told to
    remove that reparametrisation, as for a Linear's weight: it was told these were no prunable layer's
    weights and to hold them in an nn.Linear."""
    import torch.nn.utils.parametrize as P
    from torch.nn.utils import prune

    m = nn.ModuleDict({"rnn": nn.LSTM(4, 4), "attn": nn.MultiheadAttention(4, 2), "fc": nn.Linear(4, 2)})
    module = m[holder]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # (old-style weight_norm is deprecated)
        if how == "old_weight_norm":
            torch.nn.utils.weight_norm(module, attr)
            stored, fix = f"{holder}.{attr}_g", rf"remove_weight_norm\(module, '{attr}'\)"
        elif how == "parametrization":
            P.register_parametrization(module, attr, nn.Identity())
            stored, fix = f"{holder}.parametrizations.{attr}.original", rf"remove_parametrizations\(module, '{attr}'"
        else:
            prune.l1_unstructured(module, attr, amount=0.5)
            stored, fix = f"{holder}.{attr}_orig", rf"prune.remove\(module, '{attr}'\)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ValueError, match=rf"reparametrised.*remove the reparametrisation first \(.*{fix}") as e:
            adaptive.Connectome(m, include=stored)
    assert "hold it in such a layer" not in str(e.value)


def test_a_matrix_parametrized_after_the_connectome_is_refused_naming_its_own_attribute():
    """The refusal of a weight a parametrization computes since the connectome was built names the call for
    that weight (remove_parametrizations(module, 'weight_hh_l0')); it named 'weight', which an LSTM has not."""
    from torch.nn.utils import parametrizations

    m = nn.ModuleDict({"rnn": nn.LSTM(4, 4), "fc": nn.Linear(4, 2)})
    conn = adaptive.Connectome(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    conn.attach(opt)
    parametrizations.weight_norm(m.rnn, "weight_hh_l0")
    with pytest.raises(RuntimeError, match=r"\['rnn.weight_hh_l0'\].*remove_parametrizations\(module, 'weight_hh_l0'"):
        opt.step()


@pytest.mark.parametrize("how", ["old_weight_norm", "old_spectral_norm", "prune", "parametrization"])
@pytest.mark.parametrize("holder,attr", [("rnn", "weight_hh_l0"), ("attn", "in_proj_weight"), ("fc", "weight")])
def test_a_matrix_reparametrised_after_the_connectome_is_refused_naming_the_call_that_removes_it(holder, attr, how):
    """Old-style weight_norm/spectral_norm or torch.nn.utils.prune applied after the Connectome was built: the
    refusal named remove_parametrizations(module, NAME), which raises on a module that has no parametrization. It
    names the call for what computes the weight now, and that call (run as named) lets a new Connectome take it."""
    import re

    from torch.nn.utils import parametrizations, prune

    m = nn.ModuleDict({"rnn": nn.LSTM(4, 4), "attn": nn.MultiheadAttention(4, 2), "fc": nn.Linear(4, 2)})
    conn = adaptive.Connectome(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    conn.attach(opt)
    module, which = m[holder], "" if attr == "weight" else f", '{attr}'"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # (old-style weight_norm is deprecated)
        if how == "old_weight_norm":
            torch.nn.utils.weight_norm(module, attr)
            fix = rf"torch.nn.utils.remove_weight_norm\(module{which}\)"
        elif how == "old_spectral_norm":
            torch.nn.utils.spectral_norm(module, attr)
            fix = rf"torch.nn.utils.remove_spectral_norm\(module{which}\)"
        elif how == "prune":
            prune.random_unstructured(module, attr, amount=0.5)
            fix = rf"torch.nn.utils.prune.remove\(module, '{attr}'\)"
        else:
            parametrizations.weight_norm(module, attr)
            fix = rf"torch.nn.utils.parametrize.remove_parametrizations\(module, '{attr}', leave_parametrized=True\)"
    with pytest.raises(RuntimeError, match=rf"\['{holder}.{attr}'\] are no longer.*first: {fix} for '{holder}.{attr}'") as e:
        opt.step()
    call = re.search(fix, str(e.value)).group(0)
    eval(call.replace("(module", "(m[holder]"), {"torch": torch, "m": m, "holder": holder})
    assert f"{holder}.{attr}" in adaptive.Connectome(m).layers


def test_a_model_whose_only_matrices_are_parametrized_is_refused_naming_the_call_for_each_attribute():
    """Refused for holding no synapses, the fix names remove_parametrizations(module, 'weight_hh_l0', ...) for
    a recurrent matrix and 'in_proj_weight' for an attention projection; it named only 'weight'."""
    from torch.nn.utils import parametrizations

    m = nn.ModuleDict({"rnn": nn.GRU(4, 4), "attn": nn.MultiheadAttention(4, 2, bias=False)})
    for name in ("weight_ih_l0", "weight_hh_l0"):
        parametrizations.weight_norm(m.rnn, name)
    parametrizations.weight_norm(m.attn, "in_proj_weight")
    parametrizations.weight_norm(m.attn.out_proj)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ValueError, match=r"no prunable layers.*rnn.weight_hh_l0: torch.nn.utils.parametrize."
                                             r"remove_parametrizations\(module, 'weight_hh_l0', leave_parametrized=True\)"
                                             r".*attn.in_proj_weight: .*\(module, 'in_proj_weight'"):
            adaptive.Connectome(m)


def test_a_packed_sequence_example_input_is_refused_with_the_fix():
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(2, 7, 6), torch.tensor([7, 4]), batch_first=True)
    with pytest.raises(ValueError, match="PackedSequence.*pass the padded batch"):
        graphs.build(_connectome(Net()), example_input=packed)


class LSTMSeq2Seq(nn.Module):
    """The encoder's (h, c) repacked as a tuple for the decoder: fx records a tuple of nodes."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec, self.head = nn.LSTM(3, 4, batch_first=True), nn.LSTM(3, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, a, b):
        _, (h, c) = self.enc(a)
        y, _ = self.dec(b, (h, c))
        return self.head(y)


def test_an_lstm_initial_state_given_as_a_tuple_is_wired():
    conn = _connectome(LSTMSeq2Seq())
    g = graphs.build(conn, example_input=(torch.randn(2, 5, 3), torch.randn(2, 4, 3)))
    assert graphs.summary(g)["dead"]["dead"] == 0
    lay = {l.module: l for l in g.layers}
    into_state = torch.isin(g.dst, lay["dec.l0.hh"].in_src) & (g.edge_attrs["kind"] == 1)
    assert int(into_state.sum()) == 4


def test_state_nodes_are_not_inputs_of_their_own():
    model = Last()
    conn = _connectome(model)
    conn.set_masks({"rnn.weight_ih_l0": torch.zeros(4, 3, dtype=torch.bool)})  # the input reaches nothing
    conn.apply()
    s = graphs.summary(graphs.build(conn, example_input=torch.randn(2, 5, 3)))
    assert s["inputs"] == 15 and s["state_nodes"] == 4
    assert s["outputs_reachable"] == 0 and s["inputs_reaching_output"] == 0


def test_a_second_layer_reads_both_directions_in_order():
    g = graphs.build(_connectome(Net("GRU", bidirectional=True)), example_input=torch.randn(2, 7, 6))
    lay = {l.module: l for l in g.layers}
    fwd, rev = (set(g.src[(g.edge_attrs["kind"] == 2) & torch.isin(g.dst, lay[f"rnn.l0{s}.hh"].in_src)].tolist())
                for s in ("", "_reverse"))
    first, second = lay["rnn.l1.ih"].in_src[:5], lay["rnn.l1.ih"].in_src[5:]
    assert set(first.tolist()) == fwd and set(second.tolist()) == rev
