"""nn.MultiheadAttention: its projections are synapses (discovery, masking, training, save/load,
mask-only) and the graph follows queries, keys and values through it."""
import copy
import warnings

import pytest
import torch
from torch import nn

import adaptive
import graphs
from graphs.graph import EDGE_SYNAPSE
from _training import train_steps


class Block(nn.Module):
    """A tiny attention block: self-attention, or cross-attention to keys/values of another size."""

    def __init__(self, E=16, H=4, batch_first=True, kdim=None):
        super().__init__()
        self.batch_first = batch_first
        self.emb = nn.Linear(8, E)
        self.kv = nn.Linear(8, kdim) if kdim else None
        self.attn = nn.MultiheadAttention(E, H, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.head = nn.Linear(E, 3)

    def forward(self, x):  # x: [B, L, 8]
        if not self.batch_first:
            x = x.transpose(0, 1)
        h = self.emb(x)
        kv = self.kv(x) if self.kv is not None else h
        a, _ = self.attn(h, kv, kv)
        out = h + a
        return self.head(out.mean(1 if self.batch_first else 0))


def _connectome(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no weight tensor is left dense with a warning
        return adaptive.Connectome(model, **kw)


def test_projections_are_synapses_packed_and_separate():
    c = _connectome(Block())
    assert {n: tuple(l.shape) for n, l in c.layers.items()} == {
        "emb.weight": (16, 8), "attn.in_proj_weight": (48, 16), "attn.out_proj.weight": (16, 16), "head.weight": (3, 16)}
    assert c.layers["attn.in_proj_weight"].module_name == "attn"
    c2 = _connectome(Block(kdim=12))
    assert {n: tuple(c2.layers[n].shape) for n in c2.layers if n.startswith("attn.")} == {
        "attn.q_proj_weight": (16, 16), "attn.k_proj_weight": (16, 12), "attn.v_proj_weight": (16, 12),
        "attn.out_proj.weight": (16, 16)}
    # patterns see the parameter name and the module name
    assert "attn.in_proj_weight" not in _connectome(Block(), exclude="attn").layers
    assert list(_connectome(Block(), include="*in_proj*").layers) == ["attn.in_proj_weight"]


@pytest.mark.parametrize("kdim,attr,how", [(None, "in_proj_weight", "weight_norm"), (12, "q_proj_weight", "spectral_norm"),
                                           (None, "in_proj_weight", "old_weight_norm")])
def test_a_reparametrised_projection_is_named_with_its_fix_not_left_dense_unsaid(kdim, attr, how):
    """A projection that a parametrization (or old-style weight_norm) computes holds no synapses: it stays
    dense, as a reparametrised Linear's weight does, and the warning says so and names the fix (it was
    left out of discovery before, so nothing was said), and an include pattern naming it says why it
    selects nothing."""
    from torch.nn.utils import parametrizations

    def build():
        m = Block(kdim=kdim)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # (old-style weight_norm is deprecated)
            if how == "old_weight_norm":
                torch.nn.utils.weight_norm(m.attn, attr)
            else:
                getattr(parametrizations, how)(m.attn, attr)
        return m

    fix = r"remove_weight_norm\(module" if how == "old_weight_norm" else r"remove_parametrizations\(module, NAME\)"
    with pytest.warns(UserWarning, match=rf"\(attn\.{attr}\).*{fix}"):
        conn = adaptive.Connectome(build())
    assert f"attn.{attr}" not in conn.layers and "attn.out_proj.weight" in conn.layers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ValueError, match=rf"match layer 'attn\.{attr}'.*reparametrised.*remove"):
            adaptive.Connectome(build(), include=f"attn.{attr}")


@pytest.mark.parametrize("batch_first", [True, False])
def test_training_keeps_pruned_projections_zero_and_a_vanilla_model_reproduces_it(batch_first):
    torch.manual_seed(0)
    model = Block(batch_first=batch_first)
    conn = _connectome(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.3, budget="erk", update_every=2, end_step=20)
    x, y = torch.randn(8, 5, 8), torch.randint(0, 3, (8,))
    train_steps(model, opt, ctrl, x, y, 12)
    w, m = model.attn.in_proj_weight, conn.masks["attn.in_proj_weight"]
    assert 0 < int(m.sum()) < m.numel()
    assert bool((w[~m.bool()] == 0).all())
    model.eval()
    vanilla = Block(batch_first=batch_first).eval()
    vanilla.load_state_dict(conn.dense_state_dict())
    with torch.no_grad():  # the inference fast path of nn.MultiheadAttention reads the same weights
        assert torch.equal(vanilla(x), model(x))


def test_save_and_load_keep_attention_masks(tmp_path):
    torch.manual_seed(1)
    model = Block(kdim=12)
    conn = _connectome(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    adaptive.Controller(conn, opt, policy="magnitude", density=0.4, budget="uniform")
    conn.save(tmp_path / "c.safetensors")
    fresh = Block(kdim=12)
    fresh.load_state_dict(model.state_dict())
    loaded = adaptive.Connectome.load(tmp_path / "c.safetensors", fresh)
    assert loaded.mask_hash() == conn.mask_hash()
    assert set(loaded.masks) == set(conn.masks)


def _pruned(model, density=0.4, seed=0):
    """A connectome with a random mask of about ``density`` in every layer."""
    conn = _connectome(model)
    gen = torch.Generator().manual_seed(seed)
    conn.set_masks({n: torch.rand(m.shape, generator=gen) < density for n, m in conn.masks.items()})
    conn.apply()
    return conn


@pytest.mark.parametrize("kdim", [None, 12])
def test_graph_follows_queries_keys_and_values(kdim):
    model = Block(kdim=kdim)
    conn = _pruned(model)
    x = torch.randn(2, 5, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the attention call is followed, not assumed all-to-all
        g = graphs.build(conn, level="unit", example_input=x)
        s = graphs.build(conn, level="synapse", example_input=x)
    live = conn.num_live()
    assert g.live_synapses() == live and s.live_synapses() == live
    lay = {l.module: l for l in g.layers}
    assert {"attn.q", "attn.k", "attn.v", "attn.out_proj"} <= set(lay)
    emb = g.groups[lay["emb"].group]
    src = g.groups[lay["kv" if kdim else "emb"].group]
    # queries read the embedding's units; keys and values read their own input's
    assert set(lay["attn.q"].in_src.tolist()) == set(range(emb.start, emb.start + emb.count))
    for t in "kv":
        assert set(lay[f"attn.{t}"].in_src.tolist()) == set(range(src.start, src.start + src.count))
    # out_proj's input c is a junction of value unit c and head h's scores, a junction of head h's
    # query and key units (d = 4)
    q, k, v = (g.groups[lay[f"attn.{t}"].group] for t in "qkv")
    junction = int(lay["attn.out_proj"].in_src[5])  # channel 5: head 1 (channels 4..7)
    feeding = g.src[g.dst == junction].tolist()
    scores = [s for s in feeding if s != v.start + 5]
    assert len(feeding) == 2 and v.start + 5 in feeding
    assert g.groups[int(g.node_attrs["group"][scores[0]])].op == "attention_scores"
    expect = set(range(q.start + 4, q.start + 8)) | set(range(k.start + 4, k.start + 8))
    assert set(g.src[g.dst == scores[0]].tolist()) == expect
    # synapse edges: positions index the whole parameter, weights are the parameter's values there
    param = dict(model.named_parameters())[lay["attn.k"].param]
    sel = (s.edge_attrs["kind"] == EDGE_SYNAPSE) & (s.edge_attrs["layer"] == g.layers.index(lay["attn.k"]))
    pos, wv = s.edge_attrs["position"][sel], s.edge_attrs["weight"][sel]
    assert pos.numel() == int(lay["attn.k"].part(conn.masks[lay["attn.k"].param]).sum())
    assert torch.equal(param.detach().reshape(-1)[pos], wv)
    if kdim is None:
        assert lay["attn.k"].rows == (16, 32) and int(pos.min()) >= 16 * 16 and int(pos.max()) < 32 * 16


def test_graph_density_and_json_round_trip_keep_the_attention_rows(tmp_path):
    model = Block()
    conn = _pruned(model, density=0.3, seed=3)
    g = graphs.build(conn, level="unit", example_input=torch.randn(2, 5, 8))
    dens = graphs.density_per_layer(g)
    m = conn.masks["attn.in_proj_weight"].float()
    for i, t in enumerate("qkv"):
        assert dens[f"attn.{t}"] == pytest.approx(float(m[16 * i:16 * (i + 1)].mean()))
    path = graphs.write(g, str(tmp_path / "g.json"))
    back = graphs.read_json(path)
    assert [l.rows for l in back.layers] == [l.rows for l in g.layers]
    assert back.live_synapses() == g.live_synapses()


def test_torchvision_vit_is_a_connectome_and_a_graph_without_warnings():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    vit = tv.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                      mlp_dim=32, num_classes=10)
    conn = _connectome(vit)
    weights = {n for n, p in vit.named_parameters() if p.dim() >= 2 and "weight" in n}
    assert set(conn.layers) == weights  # every weight matrix, in_proj included
    opt = torch.optim.SGD(vit.parameters(), lr=0.1)
    adaptive.Controller(conn, opt, policy="magnitude", density=0.5, budget="uniform")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(conn, example_input=torch.randn(2, 3, 32, 32))
    assert g.live_synapses() == conn.num_live()
    assert sum(l.module.endswith(".self_attention.q") for l in g.layers) == 2


def test_mask_only_on_a_vit_changes_no_surviving_weight():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    vit = tv.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
                                      mlp_dim=32, num_classes=10).eval()
    before = copy.deepcopy(vit.state_dict())
    data = torch.utils.data.TensorDataset(torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,)))
    train = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    hold = torch.utils.data.DataLoader(data, batch_size=64)
    res = adaptive.optimize_connectome(vit, train, hold, target=0.3, passes=1, progress=False)
    after = vit.state_dict()
    name = "encoder.layers.encoder_layer_0.self_attention.in_proj_weight"
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in res.conn.masks
    assert int((after[name] == 0).sum()) > int((before[name] == 0).sum())
    for k in before:
        kept = after[k] != 0
        assert torch.equal(after[k][kept], before[k][kept]), k


class EncoderNet(nn.Module):
    def __init__(self, batch_first=True, norm_first=False):
        super().__init__()
        self.batch_first = batch_first
        self.emb = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=batch_first, norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.emb(x if self.batch_first else x.transpose(0, 1))
        return self.head(self.enc(h).mean(1 if self.batch_first else 0))


class Seq2Seq(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 16), nn.Linear(5, 16)
        self.tr = nn.Transformer(16, 2, 1, 1, 32, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x, y):
        return self.head(self.tr(self.a(x), self.b(y)))


def _sources(g, nodes):
    """The units and inputs feeding ``nodes``, through any chain of junctions (sums, norms)."""
    js, ss = graphs.junction_sources(g)
    direct = nodes[~torch.isin(nodes, js)]
    return set(ss[torch.isin(js, nodes)].tolist()) | set(direct.tolist())


@pytest.mark.parametrize("which", ["encoder", "encoder_seq_first_norm_first", "transformer"])
def test_graph_writes_out_torch_transformer_modules(which):
    if which == "transformer":
        model, x = Seq2Seq(), (torch.randn(2, 7, 6), torch.randn(2, 4, 5))
    else:
        model, x = EncoderNet(*((False, True) if "norm_first" in which else (True, False))), torch.randn(2, 7, 6)
    conn = _pruned(model, density=0.5, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fx cannot trace into these modules: without the rules, one junction
        g = graphs.build(conn, example_input=x)
    assert g.live_synapses() == conn.num_live()
    lay = {l.module: l for l in g.layers}
    prefix = "tr.encoder.layers" if which == "transformer" else "enc.layers"
    first = g.groups[lay[f"{prefix}.0.linear2"].group]
    # block 1's queries read the sum of block 0's input path and its feed-forward output
    q1 = lay[f"{prefix}.1.self_attn.q"].in_src if which != "transformer" else None
    if q1 is not None:
        feeding = _sources(g, q1)
        assert feeding & set(range(first.start, first.start + first.count))
    if which == "transformer":  # the decoder's cross-attention reads the encoder's output as keys and values
        k = lay["tr.decoder.layers.0.multihead_attn.k"].in_src
        enc_out = _sources(g, k)
        assert enc_out & set(range(first.start, first.start + first.count))


def test_transformer_reads_src_into_the_encoder_and_tgt_into_the_decoder():
    conn = _pruned(Seq2Seq(), density=0.5, seed=4)
    g = graphs.build(conn, example_input=(torch.randn(2, 7, 6), torch.randn(2, 4, 5)))
    lay = {l.module: l for l in g.layers}
    units = lambda m: set(range(g.groups[lay[m].group].start, g.groups[lay[m].group].start + 16))
    assert set(lay["tr.encoder.layers.0.self_attn.q"].in_src.tolist()) == units("a")
    assert set(lay["tr.decoder.layers.0.self_attn.q"].in_src.tolist()) == units("b")


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_a_channel_read_only_through_layer_norm_statistics_is_alive(norm):
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6) if norm == "layer" else nn.BatchNorm1d(6), nn.Linear(6, 2)).eval()
    conn = _connectome(model)
    head = torch.zeros(2, 6, dtype=torch.bool)
    head[:, 0] = True  # the head reads channel 0 only
    conn.set_masks({"2.weight": head})
    conn.apply()
    g = graphs.build(conn, example_input=torch.randn(2, 4))
    dead = graphs.dead_units(g)["cannot_reach_output"]
    first = g.groups[g.layers[0].group]
    unit2 = bool(dead[first.start + 2])
    x = torch.randn(16, 4)
    (grad,) = torch.autograd.grad(model(x).sum(), [model[0].weight])
    assert unit2 == bool((grad[2] == 0).all())  # the graph agrees with the gradient
    assert unit2 == (norm == "batch")  # LayerNorm's statistics read every channel; BatchNorm's do not


def test_a_transformer_linear_also_called_alone_is_counted_once():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Linear(5, 8), nn.Linear(8, 3)
            self.layer = nn.TransformerEncoderLayer(8, 2, 8, 0.0, batch_first=True)

        def forward(self, x):
            return self.head(self.layer.linear2(self.layer(self.emb(x))))

    conn = _pruned(M(), density=0.5, seed=5)
    with pytest.warns(UserWarning, match="called more than once"):
        g = graphs.build(conn, example_input=torch.randn(2, 6, 5))
    assert g.live_synapses() == conn.num_live()


def test_a_transformer_with_a_custom_encoder_is_refused_without_leftovers():
    class MyEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.ff = nn.Linear(8, 8)

        def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
            return src + self.ff(src)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(5, 8), nn.Linear(4, 8), nn.Linear(8, 3)
            self.tr = nn.Transformer(8, 2, num_decoder_layers=1, dim_feedforward=8, batch_first=True,
                                     custom_encoder=MyEncoder())

        def forward(self, x, y):
            return self.head(self.tr(self.a(x), self.b(y)))

    conn = _connectome(M())
    with pytest.warns(UserWarning, match="not the standard torch layers"):
        g = graphs.build(conn, example_input=(torch.randn(2, 6, 5), torch.randn(2, 3, 4)))
    assert [l.module for l in g.layers] == ["a", "b", "head"]  # nothing half-written by the refused rule


def test_masks_built_in_forward_are_constants_not_unknown_ops():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Linear(5, 8), nn.Linear(8, 3)
            self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2,
                                             enable_nested_tensor=False)

        def forward(self, x):
            causal = nn.Transformer.generate_square_subsequent_mask(x.shape[1])  # torch.full, torch.triu
            padding = x[..., 0] > 1  # a comparison
            return self.head(self.enc(self.emb(x), mask=causal, src_key_padding_mask=padding))

    conn = _pruned(M(), density=0.5, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = graphs.build(conn, example_input=torch.randn(2, 6, 5))
    assert g.live_synapses() == conn.num_live()


@pytest.mark.parametrize("which", ["mha", "lstm", "encoder", "transformer", "decoder_layer"])
def test_an_attention_recurrent_or_transformer_module_as_the_whole_model(which):
    x2 = (torch.randn(2, 5, 8), torch.randn(2, 3, 8))
    model, x = {
        "mha": (nn.MultiheadAttention(8, 2, batch_first=True), torch.randn(2, 5, 8)),
        "lstm": (nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True), torch.randn(2, 5, 4)),
        "encoder": (nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2,
                                          enable_nested_tensor=False), torch.randn(2, 5, 8)),
        "transformer": (nn.Transformer(8, 2, 1, 1, 16, batch_first=True), x2),
        "decoder_layer": (nn.TransformerDecoderLayer(8, 2, 16, batch_first=True), x2),
    }[which]
    conn = _pruned(model, density=0.5, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fx cannot trace these modules' own forward: no fallback chain
        g = graphs.build(conn, example_input=x)
    assert g.live_synapses() == conn.num_live()
    assert {l.param for l in g.layers} == set(conn.masks)  # the model's own parameter names


def test_a_class_token_is_not_reported_as_a_channel_concatenation():
    tv = pytest.importorskip("torchvision")
    vit = tv.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
                                      mlp_dim=32, num_classes=10)
    g = graphs.build(_connectome(vit), example_input=torch.randn(1, 3, 32, 32))
    assert graphs.summary(g)["concats"] == []


@pytest.mark.parametrize("norm_first,final_norm", [(False, False), (True, False), (True, True)])
def test_transformer_layer_norms_feed_their_statistics_like_the_gradient(norm_first, final_norm):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Linear(5, 8), nn.Linear(8, 3)
            layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=norm_first)
            self.enc = nn.TransformerEncoder(layer, 1, norm=nn.LayerNorm(8) if final_norm else None,
                                             enable_nested_tensor=False)

        def forward(self, x):
            return self.head(self.enc(self.emb(x)))

    torch.manual_seed(0)
    model = M().eval()
    conn = _connectome(model)
    head = torch.ones(3, 8, dtype=torch.bool)
    head[:, 2] = False  # nothing reads channel 2 of the encoder's output directly
    conn.set_masks({"head.weight": head})
    conn.apply()
    x = torch.randn(4, 6, 5)
    g = graphs.build(conn, example_input=x)
    lay = {l.module: l for l in g.layers}
    grp = g.groups[lay["enc.layers.0.linear2"].group]
    called_dead = graphs.dead_units(g)["cannot_reach_output"][grp.start: grp.start + grp.count]
    (grad,) = torch.autograd.grad(model(x).pow(2).sum(), [model.enc.layers[0].linear2.weight])
    no_grad = (grad == 0).all(1)
    assert torch.equal(called_dead, no_grad)  # the graph agrees with the gradient, row by row
    assert bool(called_dead[2]) == (norm_first and not final_norm)


def test_separate_qkv_computes_the_same_function_with_three_synapse_layers():
    from adaptive.models import build_model, separate_qkv

    torch.manual_seed(0)
    packed = build_model("vit_tiny", depth=2).eval()
    torch.manual_seed(0)
    apart = build_model("vit_tiny", depth=2, qkv="separate").eval()
    x = torch.randn(3, 3, 32, 32)
    out_p, out_a = packed(x), apart(x)
    assert torch.allclose(out_p, out_a, atol=1e-6)
    out_p.square().sum().backward()
    out_a.square().sum().backward()
    g = packed.encoder.layers[0].self_attention.in_proj_weight.grad
    att = apart.encoder.layers[0].self_attention
    assert att.in_proj_weight is None
    assert torch.allclose(torch.cat([att.q_proj_weight.grad, att.k_proj_weight.grad, att.v_proj_weight.grad]), g, atol=1e-6)
    names = list(adaptive.Connectome(apart).masks)
    assert sum(n.endswith(("q_proj_weight", "k_proj_weight", "v_proj_weight")) for n in names) == 6
    assert not any(n.endswith("in_proj_weight") for n in names)
    # its own budget share: ERK gives each 64x64 projection the same density
    conn = adaptive.Connectome(apart)
    adaptive.Controller(conn, policy="set", density=0.2, budget="erk")
    layer = "encoder.layers.encoder_layer_1.self_attention."
    d = {k: conn.masks[layer + f"{k}_proj_weight"].float().mean().item() for k in "qkv"}
    assert d["q"] == d["k"] == d["v"] < 1.0
    g = graphs.build(conn, "layer")  # the graph follows the three projections
    assert g.live_synapses() == conn.num_live()
    enc = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True).eval()
    ref = copy.deepcopy(enc)
    separate_qkv(enc)
    s = torch.randn(2, 5, 16)
    assert torch.allclose(enc(s), ref(s), atol=1e-6)
    with pytest.raises(ValueError, match="qkv must be 'packed'"):
        build_model("vit_tiny", qkv="split")
    with pytest.raises(TypeError, match="expects an nn.Module"):
        separate_qkv({"attn": enc})
    built = build_model("vit_tiny", depth=1)
    conn = adaptive.Connectome(built)
    separate_qkv(built)  # the connectome's in_proj_weight is gone from the model: it says so
    with pytest.raises(RuntimeError, match="no longer the ones this Connectome masks"):
        conn.set_masks({k: torch.ones_like(v) for k, v in conn.masks.items()})


class _SeqNet(nn.Module):
    """Features in, attention (or a transformer encoder) with a residual add, logits out; ``batch_first`` as given."""

    def __init__(self, batch_first, encoder=False):
        super().__init__()
        self.inp, self.out, self.encoder = nn.Linear(3, 8), nn.Linear(8, 2), encoder
        self.attn = (nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=batch_first), 1,
                                           enable_nested_tensor=False) if encoder
                     else nn.MultiheadAttention(8, 2, batch_first=batch_first))

    def forward(self, x):
        h = self.inp(x)
        return self.out(self.attn(h) if self.encoder else self.attn(h, h, h)[0] + h)


@pytest.mark.parametrize("encoder", [False, True])
def test_a_sequence_first_model_has_the_graph_of_its_batch_first_twin(encoder):
    """nn.MultiheadAttention and the transformer layers take ``[T, B, E]`` by default (batch_first=False): the
    input's nodes were the elements of ``x[0]``, one position of every sample (as many as the batch holds),
    where a batch-first model's are those of one sample. A model whose attention and recurrent layers are all
    sequence-first reads its sequences' batch on axis 1: the graph is its batch-first twin's."""
    from _graph_edges import edge_set

    torch.manual_seed(0)
    x = torch.randn(5, 2, 3)
    first = graphs.build(model=_SeqNet(False, encoder), level="unit", example_input=x)
    batch = graphs.build(model=_SeqNet(True, encoder), level="unit", example_input=x.transpose(0, 1))
    assert [(g.name, g.count) for g in first.groups if g.kind == "input"] == [("x", 15)]
    assert edge_set(first) == edge_set(batch)


class _TransposingNet(nn.Module):
    """Batch-first inputs ([B, S, 3] features, or [B, S] tokens) that the model transposes itself for its
    sequence-first (batch_first=False) attention or LSTM, and back; ``batch_first=True``: no transposes."""

    def __init__(self, batch_first, tokens=False):
        super().__init__()
        self.batch_first = batch_first
        self.inp = nn.Embedding(10, 8) if tokens else nn.Linear(3, 8)
        self.core = (nn.LSTM(8, 8, batch_first=batch_first) if tokens
                     else nn.MultiheadAttention(8, 2, batch_first=batch_first))
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = self.inp(x)
        h = h if self.batch_first else h.transpose(0, 1)
        h = self.core(h)[0] if isinstance(self.core, nn.LSTM) else self.core(h, h, h)[0] + h
        return self.out(h if self.batch_first else h.transpose(0, 1))


@pytest.mark.parametrize("tokens", [False, True])
def test_a_batch_first_input_the_model_transposes_for_its_sequence_first_layers_keeps_its_batch_on_axis_0(tokens):
    """The sequence-first reading came from the layers' flag alone: a model transposing its [B, S, F] input for
    its batch_first=False attention (or its [B, S] tokens for an LSTM) had its input read as [T, B, F], its nodes
    those of one position of every sample (x[:, 0], B * F of them). The input is followed to the layers: its
    axis 0 lands on their batch axis, so it is batch first, and the graph is that of the batch-first twin."""
    from _graph_edges import edge_set

    torch.manual_seed(0)
    x = torch.randint(0, 10, (2, 5)) if tokens else torch.randn(2, 5, 3)
    got = graphs.build(model=_TransposingNet(False, tokens), level="unit", example_input=x)
    want = graphs.build(model=_TransposingNet(True, tokens), level="unit", example_input=x)
    assert [(g.name, g.count) for g in got.groups if g.kind == "input"][0] == ("x", 5 if tokens else 15)
    assert edge_set(got) == edge_set(want) and not got.warnings
