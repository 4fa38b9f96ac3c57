"""graphs.compact removes an nn.MultiheadAttention's dead channels where that is exact (graphs.compact_attention): a
query/key pair whose key has no live synapse or whose query has none and no bias, a value channel with no live
synapse (its bias folded into out_proj) or that out_proj does not read; every head keeps the same widths. They were
all kept: attention stayed whole."""
import warnings

import pytest
import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

import adaptive
import graphs
from graphs.compact_attention import CompactAttention

torch.set_num_threads(1)
E, H, D = 8, 2, 4  # head 1 is channels 4..7 of each projection


class Net(nn.Module):
    """Attention between an input layer and a head (masks and the attention weights read when asked)."""

    def __init__(self, batch_first=True, kdim=None, bias=True, masks=False, pad=False, weights=False, **kw):
        super().__init__()
        self.emb = nn.Linear(4, E)
        self.kv = nn.Linear(4, kdim) if kdim else None
        self.attn = nn.MultiheadAttention(E, H, batch_first=batch_first, kdim=kdim, vdim=kdim, bias=bias, **kw)
        self.head = nn.Linear(E, 3)
        self.masks, self.pad, self.weights = masks, pad, weights
        causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
        self.register_buffer("causal", torch.zeros(5, 5).masked_fill(causal, -1e9) if masks == "float" else causal)

    def forward(self, x):
        h = self.emb(x)
        kv = self.kv(x) if self.kv is not None else h
        if not self.attn.batch_first:
            h, kv = h.transpose(0, 1), kv.transpose(0, 1)
        pad = x[..., 0] > 1  # some keys padded, never the first: no query is left with none
        pad = torch.cat([torch.zeros_like(pad[:, :1]), pad[:, 1:]], 1) if self.pad else None
        y, w = self.attn(h, kv, kv, key_padding_mask=pad,
                         attn_mask=self.causal if self.masks else None, need_weights=self.weights)
        if not self.attn.batch_first:
            y = y.transpose(0, 1)
        out = self.head(y.mean(1))
        return out + w.sum((1, 2)).unsqueeze(1) if self.weights else out


def _rows(model, t):
    if model.attn._qkv_same_embed_dim:
        i = "qkv".index(t)
        return "attn.in_proj_weight", slice(i * E, (i + 1) * E)
    return f"attn.{t}_proj_weight", slice(0, E)


def _compact(model, pruned, x):
    """``pruned``: projection -> channels whose rows are all pruned; the compact copy, checked by compact itself."""
    conn = adaptive.Connectome(model)
    masks = {n: torch.ones_like(m) for n, m in conn.masks.items()}
    for t, channels in pruned.items():
        name, rows = _rows(model, t)
        masks[name][rows][channels] = False
    conn.set_masks(masks)
    small = graphs.compact(model, conn, x)
    conn.apply()
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-10, rtol=0)  # float64: exact but for rounding
    return small


def _model(seed=0, bias="normal", **kw):
    torch.manual_seed(seed)
    model = Net(bias=bias != "none", **kw).double().eval()
    if bias == "normal":
        with torch.no_grad():
            model.attn.in_proj_bias.normal_()
    return model


X = torch.randn(3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kw", [{}, {"batch_first": False}, {"kdim": 6}, {"masks": True}, {"masks": "float"},
                                {"pad": True}, {"weights": True}])
def test_dead_keys_and_values_go_from_every_head_alike(kw):
    model = _model(**kw)
    # head 0 loses key 1 and values 0, 2; head 1 keys 5, 6 and value 7: each head drops 1 pair and 1 value
    small = _compact(model, {"k": [1, 5, 6], "v": [0, 2, 7]}, X)
    a = small.attn
    assert isinstance(a, CompactAttention) and (a.qk_dim, a.v_dim, a.num_heads) == (3, 3, 2)
    assert a.q_proj.weight.shape[0] == a.k_proj.weight.shape[0] == 6 and a.out_proj.weight.shape == (E, 6)
    assert {k: v for k, v in small.compaction["removed"].items() if k.startswith("attn")} == \
        {"attn.q": 2, "attn.k": 2, "attn.v": 2}


@pytest.mark.parametrize("bias", ["none", "zero", "normal"])
def test_a_dead_query_goes_with_its_key_only_where_it_has_no_bias(bias):
    """A pruned query with no bias is 0: its pair goes. With a bias it is a constant times a key that varies: it
    stays."""
    small = _compact(_model(bias=bias), {"q": [0, 4]}, X)
    assert isinstance(small.attn, CompactAttention) == (bias != "normal")
    if bias != "normal":
        assert small.attn.qk_dim == 3


@pytest.mark.parametrize("align,pairs", [(1, 3), (4, 2), (16, 0)])
def test_an_attentions_projections_keep_a_multiple_of_align(align, pairs):
    """compact(align=N) keeps a multiple of N output units in every Linear, but a compacted attention's
    projections took no notice of it: three dead keys per head left q_proj and k_proj 2 x 1 = 2 wide at align=4.
    Each head now drops as many pairs as keep the projection a multiple of align (none where none can)."""
    model = _model()
    conn = adaptive.Connectome(model)
    masks = {n: torch.ones_like(m) for n, m in conn.masks.items()}
    masks["attn.in_proj_weight"][E:2 * E][[0, 1, 2, 4, 5, 6]] = False  # keys 0-2 of head 0, 4-6 of head 1
    conn.set_masks(masks)
    small = graphs.compact(model, conn, X, align=align)
    conn.apply()
    with torch.no_grad():
        assert torch.allclose(small(X), model(X), atol=1e-10, rtol=0)
    if pairs:
        assert small.attn.q_proj.out_features == small.attn.k_proj.out_features == H * (D - pairs)
        assert small.attn.q_proj.out_features % align == 0 and small.compaction["removed"]["attn.k"] == H * pairs
    else:
        assert isinstance(small.attn, nn.MultiheadAttention) and "attn.k" not in small.compaction["removed"]


def test_units_removed_counts_the_attention_channels_removed():
    """``compaction["units_removed"]`` (which the CLI prints as the dead units removed) sums ``removed``, the
    attention's query, key and value channels too."""
    small = _compact(_model(), {"k": [1, 5], "v": [0, 7]}, X)
    removed = small.compaction["removed"]
    assert removed["attn.q"] == removed["attn.k"] == removed["attn.v"] == 2
    assert small.compaction["units_removed"] == sum(removed.values()) == 6


class Tied(nn.Module):
    """Two attentions holding one ``in_proj_weight`` (tied), each called once."""

    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Linear(4, E), nn.Linear(E, 3)
        self.a1 = nn.MultiheadAttention(E, H, batch_first=True)
        self.a2 = nn.MultiheadAttention(E, H, batch_first=True)
        self.a2.in_proj_weight = self.a1.in_proj_weight

    def forward(self, x):
        h = self.emb(x)
        y, _ = self.a1(h, h, h)
        y, _ = self.a2(y, y, y)
        return self.head(y.mean(1))


def test_attentions_with_tied_weights_stay_whole_and_tied():
    """Compacting each into a CompactAttention of its own would untie the weight they hold (two copies, trained
    apart): both stay as they were, still holding one parameter, as a tied Linear does."""
    torch.manual_seed(0)
    model = Tied().double().eval()
    conn = adaptive.Connectome(model)
    masks = {n: torch.ones_like(m) for n, m in conn.masks.items()}
    masks["a1.in_proj_weight"][E:2 * E][[1, 5]] = False  # a dead key in each head, of both attentions
    conn.set_masks(masks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = graphs.compact(model, conn, X)
    assert type(small.a1) is type(small.a2) is nn.MultiheadAttention
    assert small.a1.in_proj_weight is small.a2.in_proj_weight


def test_an_attention_with_nothing_to_remove_stays_as_it_was():
    small = _compact(_model(), {"k": [1]}, X)  # only head 0 could lose a pair: the heads must stay alike
    assert type(small.attn) is nn.MultiheadAttention


def test_a_compacted_torchvision_vit_loses_its_dead_attention_channels(tmp_path):
    torch.manual_seed(0)
    model = VisionTransformer(16, 8, 2, 2, 16, 32, num_classes=3).double().eval()
    conn = adaptive.Connectome(model)
    masks = {n: torch.ones_like(m) for n, m in conn.masks.items()}
    for i in range(2):
        w = masks[f"encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight"]
        # queries 1 and 10 (torch's zero biases: they are 0), keys 3 and 13, values 0 and 9: two pairs and one
        # value channel of each head go
        w[[1, 10, 16 + 3, 16 + 13, 32 + 0, 32 + 9]] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = graphs.compact(model, conn, x)
    conn.apply()
    attn = small.get_submodule("encoder.layers.encoder_layer_0.self_attention")
    assert isinstance(attn, CompactAttention) and (attn.qk_dim, attn.v_dim) == (6, 7)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-10, rtol=0)
    torch.save(small, tmp_path / "small.pt")
    loaded = torch.load(tmp_path / "small.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))


def test_a_compact_attention_scripts_and_compacts_again():
    """The copy compiles with torch.jit.script, and graphs traces it again: compacting it removes nothing more."""
    small = _compact(_model(), {"k": [1, 5], "v": [0, 7]}, X)
    with torch.no_grad():
        assert torch.allclose(torch.jit.script(small)(X), small(X), atol=1e-12, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = graphs.compact(small, None, X)
    assert again.compaction["units_removed"] == 0


@pytest.mark.parametrize("kw", [{"add_bias_kv": True}, {"add_zero_attn": True}])
def test_an_appended_key_and_value_keep_the_attention_whole(kw):
    """The appended position's key and value are not the biases: a pinned key's term varies over the key positions,
    a pinned value's channel is no constant. Nothing goes (compact's own check holds the copy to the model)."""
    small = _compact(_model(**kw), {"k": [1, 5], "v": [0, 7]}, X)
    assert type(small.attn) is nn.MultiheadAttention


class Fed(nn.Module):
    """An input layer read by the attention alone (self-attention, no residual), and a head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(3, E)
        self.attn = nn.MultiheadAttention(E, H, batch_first=True)
        self.head = nn.Linear(E, 3)

    def forward(self, x):
        h = self.emb(x)
        return self.head(self.attn(h, h, h, need_weights=False)[0].mean(1))


@pytest.mark.parametrize("masks", [False, True])
def test_units_only_removed_rows_read_go_in_the_same_pass(masks):
    """Compacting a compact copy again removes nothing more (it removed the input layer's units that only the
    attention's removed rows read, and its constant ones, once traced through the CompactAttention; they stayed,
    the attention reading every input channel). ``emb`` unit 6 is read only by the query rows whose keys are
    pinned (their pairs go), unit 7 has no live weight (a constant, folded into the kept rows' biases)."""
    torch.manual_seed(0)
    model = (Net(masks=True) if masks else Fed()).double().eval()  # masks: a buffer, no traced value, traced again
    conn = adaptive.Connectome(model)
    m = {n: torch.ones_like(t) for n, t in conn.masks.items()}
    m["emb.weight"][7] = False
    w = m["attn.in_proj_weight"]
    w[E + 1], w[E + 5] = False, False  # keys 1 and 5 pinned: one pair of each head goes
    w[:, 6] = False
    w[[1, 5], 6] = True  # unit 6: read by queries 1 and 5 alone
    conn.set_masks(m)
    small = graphs.compact(model, conn, X if masks else X[..., :3])
    assert isinstance(small.attn, CompactAttention) and small.attn.qk_dim == 3
    assert small.emb.out_features == small.attn.q_proj.in_features == small.attn.v_proj.in_features == E - 2
    again = graphs.compact(small, None, X if masks else X[..., :3])
    assert again.compaction["units_removed"] == 0, again.compaction["removed"]


def test_an_attention_the_model_cannot_be_traced_through_stays_whole(monkeypatch):
    """Where fx cannot trace the model again through the CompactAttention (here made untraceable), compact says so
    and keeps the attention as it was, instead of failing: the copy still computes the masked model."""
    def untraceable(self, query, *args, **kwargs):
        if query.sum() > 0:  # a branch on the data
            return query, None
        return query, None

    monkeypatch.setattr(CompactAttention, "forward", untraceable)
    with pytest.warns(UserWarning, match=r"could not be traced through the compacted attention.*attn stay whole"):
        small = _compact(_model(), {"k": [1, 5], "v": [0, 7]}, X)
    assert type(small.attn) is nn.MultiheadAttention and "attn.q" not in small.compaction["removed"]


def test_the_copy_trained_again_keeps_the_attention_dropout():
    """The copy's graph runs the CompactAttention's ops inline: its dropout was F.dropout(..., self.training), which
    fx traced as ``training=False``, so ``small.train()`` (fine-tuning the copy as a new model) applied no attention
    dropout at all. It is the module ``drop`` now, which the copy's ``train()`` switches, as ``nn.Dropout`` anywhere."""
    small = _compact(_model(dropout=0.5), {"k": [1, 5], "v": [0, 7]}, X)
    with torch.no_grad():
        evaluated = small(X)
        small.train()
        torch.manual_seed(0)
        trained = small(X)
        small.eval()
        assert torch.equal(small(X), evaluated)
    assert not torch.allclose(trained, evaluated)
    assert isinstance(small.attn, CompactAttention) and small.attn.drop is small.get_submodule("attn.drop")
