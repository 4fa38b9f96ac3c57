"""graphs.compact in value where a careless edit went unnoticed: attention value channels out_proj never reads (removed
and counted as values), an unbatched attention returning its weights, frozen attention and BatchNorm kept frozen,
shrunk layers in eval mode, a pre-hooked Linear read by F.linear, uneven channel padding, a view sized by another
tensor's channel count."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs
from graphs.compact_attention import CompactAttention

E, H = 8, 2


def _attn_model(seed=0):
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Linear(4, E)
            self.attn = nn.MultiheadAttention(E, H, batch_first=True)
            self.head = nn.Linear(E, 3)

        def forward(self, x):
            h = self.emb(x)
            return self.head(self.attn(h, h, h, need_weights=False)[0].mean(1))

    model = Net().double().eval()
    with torch.no_grad():
        model.attn.in_proj_bias.normal_()
    return model


_XA = torch.randn(3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _masked(model, edit):
    conn = adaptive.Connectome(model)
    masks = {n: torch.ones_like(m) for n, m in conn.masks.items()}
    edit(masks)
    conn.set_masks(masks)
    return conn


def test_a_value_channel_out_proj_does_not_read_goes_from_the_attention():
    """A2: a value channel is unread where out_proj's COLUMN for it is all zero (not its row)."""
    model = _attn_model()

    def edit(masks):
        masks["attn.out_proj.weight"][:, [1, 5]] = False  # value channel 1 of each head unread

    conn = _masked(model, edit)
    small = graphs.compact(model, conn, _XA)
    conn.apply()
    with torch.no_grad():
        assert torch.allclose(small(_XA), model(_XA), atol=1e-10, rtol=0)
    assert isinstance(small.attn, CompactAttention)
    assert small.compaction["removed"]["attn.v"] == 2 and small.attn.v_proj.out_features == E - 2


def test_the_value_channels_removed_are_counted_as_values_not_keys():
    """A6: removed["attn.v"] counts the value channels, here more than the query/key pairs."""
    model = _attn_model()

    def edit(masks):
        rows = masks["attn.in_proj_weight"]
        rows[E + 1] = rows[E + 5] = False  # key channel 1 of each head
        for c in (2 * E + 0, 2 * E + 2, 2 * E + 4, 2 * E + 6):  # value channels 0 and 2 of each head
            rows[c] = False

    small = graphs.compact(model, _masked(model, edit), _XA)
    removed = small.compaction["removed"]
    assert (removed["attn.q"], removed["attn.k"], removed["attn.v"]) == (2, 2, 4)


def test_a_frozen_attention_stays_frozen_in_the_copy():
    """A11: the CompactAttention's projections require grad as the attention's parameters did."""
    model = _attn_model()
    model.attn.requires_grad_(False)

    def edit(masks):
        masks["attn.in_proj_weight"][[E + 1, E + 5]] = False

    small = graphs.compact(model, _masked(model, edit), _XA)
    assert isinstance(small.attn, CompactAttention)
    assert not any(p.requires_grad for p in small.attn.parameters())
    assert small.emb.weight.requires_grad


def test_an_unbatched_attention_returning_its_weights_compacts():
    """A7: one sequence [L, E]: the compact attention's weights are [L, S] as nn.MultiheadAttention's."""
    torch.manual_seed(0)

    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Linear(4, E)
            self.attn = nn.MultiheadAttention(E, H)

        def forward(self, x):
            h = self.emb(x)
            y, w = self.attn(h, h, h)
            return y.sum(1, keepdim=True) + w

    model = One().double().eval()
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def edit(masks):
        masks["attn.in_proj_weight"][[E + 1, E + 5]] = False

    conn = _masked(model, edit)
    small = graphs.compact(model, conn, x)
    conn.apply()
    assert isinstance(small.attn, CompactAttention)
    with torch.no_grad():
        assert small(x).shape == (5, 5) and torch.allclose(small(x), model(x), atol=1e-10, rtol=0)


def _prune_rows(model, name, rows):
    conn = adaptive.Connectome(model)
    masks = {n: torch.ones_like(m) for n, m in conn.masks.items()}
    masks[name][rows] = False
    conn.set_masks(masks)
    return conn


def test_the_shrunk_layers_of_the_copy_are_in_eval_mode_as_the_copy():
    """S6: every module of the copy (the shrunk layers too) is in the copy's mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).train()
    small = graphs.compact(model, _prune_rows(model, "0.weight", [2]), torch.randn(5, 4))
    assert small.compaction["units_removed"] == 1
    assert not small.training and not any(m.training for m in small.modules())


def test_a_pre_hooked_linear_read_by_f_linear_is_not_turned_into_its_call():
    """FN1: F.linear on a layer with a forward pre-hook is not the layer's call (which would run the hook)."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.fc = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            return F.linear(torch.relu(self.a(x)), self.fc.weight, self.fc.bias)

    model = Net().eval()
    model.fc.register_forward_pre_hook(lambda mod, args: (2 * args[0],))
    x = torch.randn(5, 4)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        small = graphs.compact(model, example_input=x)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x))
    assert any("'fc' keeps its size" in str(w.message) and "forward hooks" in str(w.message) for w in got)


def test_an_asymmetric_channel_padding_follows_the_channels():
    """K6: F.pad over the channels by (1 before, 2 after): a dead channel goes and the padding stays where it was."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.out = nn.Conv1d(2, 4, 1), nn.Conv1d(7, 3, 1)

        def forward(self, x):
            return self.out(F.pad(torch.relu(self.conv(x)), (0, 0, 1, 2)))

    model = Net().eval()
    with torch.no_grad():
        model.conv.bias[1] = -1.0  # dead after the ReLU once its weights go
    conn = _prune_rows(model, "conv.weight", [1])
    x = torch.randn(3, 2, 5)
    small = graphs.compact(model, conn, x)
    conn.apply()
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-6)
    assert small.conv.out_channels == 3 and small.out.in_channels == 3  # the padded zeros go too


def test_a_view_sized_by_another_tensors_channel_count_keeps_the_two_alike():
    """V2: h.view(n, y.shape[1], -1) ties h's channels to y's: a channel dead in y alone stays in both."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head, self.fc = nn.Conv2d(2, 4, 1), nn.Conv2d(2, 4, 1), nn.Conv1d(4, 3, 1), nn.Linear(4, 3)

        def forward(self, x):
            h, y = torch.relu(self.a(x)), torch.relu(self.b(x))
            return self.head(h.view(h.shape[0], y.shape[1], -1)).mean(-1) + self.fc(y.mean((2, 3)))

    model = Net().eval()
    conn = _prune_rows(model, "b.weight", [3])
    x = torch.randn(2, 2, 3, 3)
    small = graphs.compact(model, conn, x)
    conn.apply()
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-6)
    assert small.a.out_channels == small.b.out_channels


def test_a_frozen_batchnorm_stays_frozen_when_shrunk():
    """S1: a shrunk BatchNorm's weight and bias require grad as the original's did."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()
    model[1].requires_grad_(False)
    small = graphs.compact(model, _prune_rows(model, "0.weight", [1]), torch.randn(2, 2, 3, 3))
    bn = small.get_submodule("1")
    assert bn.num_features == 3
    assert not bn.weight.requires_grad and not bn.bias.requires_grad and small.get_submodule("0").weight.requires_grad
