"""graphs.compact: dead units removed physically, outputs unchanged."""
import copy
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
import graphs

torch.set_num_threads(1)


def randomize_bn(model):
    """Non-trivial running statistics so that a dead unit's output is a non-zero constant."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g).abs() + 0.1)
    return model.eval()


def masked_output(model, conn, x):
    conn.apply()
    with torch.no_grad():
        return model.eval()(x)


def assert_same_outputs(small, masked, ref, x, other):
    """The compacted model computes the masked one's outputs: on the example input (``ref``) and on
    ``other``, an input of another batch size."""
    assert torch.allclose(small(x), ref, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(small(other), masked(other), atol=1e-5)


def first_units_dead(model, weight, k):
    """A Connectome of ``model`` whose layer ``weight`` (a parameter name) has its first ``k`` units dead."""
    conn = adaptive.Connectome(model)
    mask = conn.masks[weight].clone()
    mask[:k] = False
    conn.set_masks({weight: mask})
    return conn


def n_params(m):
    return sum(p.numel() for p in m.parameters())


class Stream(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(4)
        self.c = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        h = F.relu(self.bn_a(self.a(x)))
        s = F.relu(self.bn_b(self.b(h)) + h)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.c(s), 2), 1))


def test_adds_flatten_constants_and_unused_units():
    torch.manual_seed(0)
    m = randomize_bn(Stream())
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["a.weight"][[1, 2]] = False  # a:1 and a:2 have no live input (constant after BN + ReLU)
    masks["b.weight"][1] = False  # channel 1 of the sum is constant in both summands -> removable
    masks["c.weight"][3] = False  # c:3 constant: folded through the flatten into fc's bias
    masks["fc.weight"][:, 0:4] = False  # c:0 (features 0..3) has no live output -> removable
    conn.set_masks(masks)
    x = torch.randn(3, 3, 8, 8)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"a": 1, "b": 1, "c": 2, "fc": 0}  # a:2 stays: b:2 is alive
    assert torch.allclose(small(x), ref, atol=1e-5)
    assert n_params(small) < n_params(m)
    assert small.get_submodule("bn_a").num_features == 3
    assert small.get_submodule("fc").in_features == 8
    y = torch.randn(2, 3, 12, 12)  # another size: the folded border constants still hold
    assert torch.allclose(small(y), masked_output(m, conn, y), atol=1e-5)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1)
        self.b = nn.Conv2d(3, 3, 1)
        self.c = nn.Conv2d(5, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.cat([F.relu(self.a(x)), torch.sigmoid(self.b(x))], 1)
        return self.fc(self.c(h).mean((2, 3)))


def _folded_concat():
    """``(model, conn, x, small)``: :class:`Concat` with a unit of ``b`` dead (sigmoid(bias) != 0: a constant at
    concat channel 3), compacted: its padded 3x3 reader ``c`` a FoldedConv."""
    torch.manual_seed(1)
    m = Concat().eval()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["b.weight"][1] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 6, 6)
    return m, conn, x, graphs.compact(m, conn, x)


def test_concat_offsets_and_border_exact_folding():
    m, conn, x, small = _folded_concat()
    assert small.compaction["removed"]["b"] == 1
    assert isinstance(small.get_submodule("c"), graphs.FoldedConv)  # padded 3x3 reader: exact border map
    assert small.get_submodule("c").conv.in_channels == 4
    assert torch.allclose(small(x), masked_output(m, conn, x), atol=1e-5)


def test_resnet20_with_dead_units():
    from adaptive.models import build_model

    m = randomize_bn(build_model("resnet20"))
    conn = adaptive.Connectome(m)
    gen = torch.Generator().manual_seed(0)
    masks = {}
    for k, v in conn.masks.items():
        mk = torch.ones_like(v)
        if "layer" in k and k.endswith("conv1.weight"):
            mk[torch.rand(v.shape[0], generator=gen) < 0.5] = False
        masks[k] = mk
    conn.set_masks(masks)
    x = torch.randn(2, 3, 32, 32)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["units_removed"] > 100
    assert n_params(small) < 0.7 * n_params(m)
    assert torch.allclose(small(x), ref, atol=1e-4)


def test_option_a_stream_channels_dead_everywhere_are_removed():
    """Channels of the residual stream go through the zero-pad shortcut when dead in every summand."""
    from adaptive.models import build_model

    m = randomize_bn(build_model("resnet20"))  # dead stream channels are non-zero constants
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    for k in masks:  # layer1 stream channel 5: dead in the stem and every layer1 conv2
        if k == "conv1.weight" or (k.startswith("layer1") and k.endswith("conv2.weight")):
            masks[k][5] = False
        if k.startswith("layer2") and k.endswith("conv2.weight"):  # and its padded continuation in layers 2, 3
            masks[k][8 + 5] = False
        if k.startswith("layer3") and k.endswith("conv2.weight"):
            masks[k][16 + 8 + 5] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 16, 16)
    small = graphs.compact(m, conn, x)
    r = small.compaction["removed"]
    assert r["conv1"] == 1 and r["layer1.0.conv2"] == 1 and r["layer2.0.conv2"] == 1 and r["layer3.2.conv2"] == 1
    assert small.get_submodule("linear").in_features == 63
    assert torch.allclose(small(x), masked_output(m, conn, x), atol=1e-4)


def test_a_connectome_of_another_model_is_refused_naming_the_fix():
    """compact(other, conn) with a connectome made for a model of other widths failed inside the masking with a bare
    RuntimeError (a tensor size mismatch), and of other layers with a KeyError; build names the misfit."""
    torch.manual_seed(0)
    mine = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    conn = adaptive.Connectome(mine)
    for other, said in ((nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 3)), r"0\.weight: mask \(8, 6\), weight \(9, 6\)"),
                        (nn.Sequential(nn.Linear(6, 8)), r"2\.weight: no such weight in Sequential")):
        with pytest.raises(ValueError, match=r"the connectome does not fit the model \(" + said + r".*graphs\.compact\(conn\.model, conn"):
            graphs.compact(other, conn, example_input=torch.randn(2, 6))
    twin = copy.deepcopy(mine)  # the same layers and shapes: compacted under these masks
    assert isinstance(graphs.compact(twin, conn, example_input=torch.randn(2, 6)), nn.Module)


def test_untraceable_model_is_refused():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3)

        def forward(self, x):
            return self.a(x) if x.sum() > 0 else -self.a(x)

    # the error names the line fx stopped at, not just the model
    with pytest.raises(RuntimeError, match=r"fx-traceable.* failed at .*test_graphs_compact.py:\d+ in forward "
                                           r"\(return self.a\(x\) if x.sum\(\) > 0 else -self.a\(x\)\)"):
        graphs.compact(Dynamic(), example_input=torch.randn(1, 4))


@pytest.mark.parametrize("shift, dtype, rounding", [
    (1e-2, torch.float32, True),  # 0.01 next to outputs of a few hundred: float32 rounding's size
    (10.0, torch.float32, False),  # a real change
    (1e-2, torch.float64, False),  # already float64: no float64 to try
])
def test_failed_check_gives_the_output_scale_the_tolerances_and_a_float64_hint_for_rounding(shift, dtype, rounding):
    from graphs.compact import _verify

    torch.manual_seed(0)
    ref = nn.Linear(4, 3).to(dtype)
    with torch.no_grad():
        ref.weight.mul_(1000)
    changed = copy.deepcopy(ref)
    with torch.no_grad():
        changed.bias[2] += shift
    with pytest.raises(RuntimeError, match=r"atol 1e-06 \+ rtol 2e-06 x \|output\|, with outputs up to \d+ in magnitude") as e:
        _verify(ref, changed, torch.randn(1, 4, dtype=dtype), 1e-6, 2e-6)
    assert ("looks like float32 rounding: compact a float64 copy" in str(e.value)) == rounding


def test_torchvision_resnet18_shared_relu_modules():
    """torchvision's BasicBlock calls one nn.ReLU twice; downsample shortcuts are 1x1 convs + BN."""
    from torchvision.models import resnet18

    m = randomize_bn(resnet18(num_classes=10))
    conn = adaptive.Connectome(m, ensemble="neuron")
    gen = torch.Generator().manual_seed(0)
    conn.set_ensemble_masks({k: (torch.rand(v.shape, generator=gen) > 0.3) | (conn.layers[k].kind == "linear")
                             for k, v in conn.ensemble_masks().items()})
    x = torch.randn(2, 3, 32, 32)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"]["layer4.1.conv1"] > 100  # block-internal units go
    assert small.compaction["removed"]["fc"] == 0
    assert torch.allclose(small(x), masked_output(m, conn, x), atol=1e-4)


class Inverted(nn.Module):
    """MobileNetV2-style: expand 1x1, depthwise 3x3, project 1x1."""

    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(3, 6, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.project = nn.Conv2d(6, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu6(self.bn1(self.expand(x)))
        h = F.relu6(self.bn2(self.dw(h)))
        return self.fc(self.project(h).mean((2, 3)))


def test_depthwise_channels_go_with_their_filter():
    torch.manual_seed(0)
    m = randomize_bn(Inverted())
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["project.weight"][:, [1, 4]] = False  # depthwise channels 1 and 4 have no live output
    masks["expand.weight"][2] = False  # constant expand unit: its depthwise output is not uniform (padding)
    conn.set_masks(masks)
    x = torch.randn(2, 3, 7, 7)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"expand": 2, "dw": 2, "project": 0, "fc": 0}
    assert small.get_submodule("dw").groups == 4 and small.get_submodule("bn2").num_features == 4
    assert torch.allclose(small(x), masked_output(m, conn, x), atol=1e-5)


def test_align_keeps_multiples():
    from adaptive.models import build_model

    m = randomize_bn(build_model("resnet20"))
    conn = adaptive.Connectome(m, ensemble="neuron")
    gen = torch.Generator().manual_seed(0)
    conn.set_ensemble_masks({k: (torch.rand(v.shape, generator=gen) > 0.5) | (conn.layers[k].kind == "linear")
                             for k, v in conn.ensemble_masks().items()})
    x = torch.randn(2, 3, 16, 16)
    small = graphs.compact(m, conn, x, align=8)
    widths = {n: mod.out_channels for n, mod in small.named_modules() if isinstance(mod, nn.Conv2d)}
    assert all(w % 8 == 0 for w in widths.values()), widths
    assert small.compaction["units_removed"] > 50
    assert torch.allclose(small(x), masked_output(m, conn, x), atol=1e-4)


def test_compact_verifies_a_model_of_several_inputs():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = torch.nn.Linear(4, 8), torch.nn.Linear(3, 8), torch.nn.Linear(8, 2)

        def forward(self, x, y):
            return self.head(torch.relu(self.a(x)) + torch.relu(self.b(y)))

    model = Two().eval()
    conn = adaptive.Connectome(model)
    dead = torch.ones(8, 4, dtype=torch.bool)
    dead[:2] = False  # units 0 and 1 of a lose every input ...
    deadb = torch.ones(8, 3, dtype=torch.bool)
    deadb[:2] = False  # ... and so do those of b: the sum's channels 0, 1 are constant
    conn.set_masks({"a.weight": dead, "b.weight": deadb})
    conn.apply()
    small = graphs.compact(model, conn, (torch.randn(4, 4), torch.randn(4, 3)))
    assert small.compaction["units_removed"] > 0 and small.compaction["max_abs_diff"] < 1e-5
    x, y = torch.randn(5, 4), torch.randn(5, 3)
    assert torch.allclose(small(x, y), model(x, y), atol=1e-5)


def test_transformer_mlp_hidden_units_are_removed():
    """vit_tiny: a hidden unit of an MLP (Linear applied to tokens, channels on the last axis) goes when
    its fc2 column is all zero or its fc1 row is (then GELU(bias), a non-zero constant, is folded into
    fc2's bias); the residual stream, read by LayerNorm, and attention stay whole."""
    from adaptive.models import build_model

    torch.manual_seed(0)
    m = build_model("vit_tiny").eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("mlp.0.bias"):
                p.normal_()  # torchvision starts these near 0: make the folded constants matter
    conn = adaptive.Connectome(m)
    gen = torch.Generator().manual_seed(1)
    masks, expected = {}, {}
    for k, v in conn.masks.items():
        mk = torch.ones_like(v)
        if k.endswith("mlp.0.weight"):
            mk[torch.rand(v.shape[0], generator=gen) < 0.3] = False  # no live input: a constant unit
        if k.endswith("mlp.3.weight"):
            mk[:, torch.rand(v.shape[1], generator=gen) < 0.3] = False  # no live output
        masks[k] = mk
    for k in masks:
        if k.endswith("mlp.0.weight"):
            fc2 = masks[k.replace("mlp.0", "mlp.3")]
            expected[k[: -len(".weight")]] = int((~masks[k].any(1) | ~fc2.any(0)).sum())
    conn.set_masks(masks)
    x = torch.randn(3, 3, 32, 32)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    removed = small.compaction["removed"]
    assert {k: removed[k] for k in expected} == expected
    assert all(v > 20 for v in expected.values())
    assert all(v == 0 for k, v in removed.items() if k not in expected)  # patch embedding, fc2, head
    for k, n in expected.items():
        assert small.get_submodule(k).out_features == 128 - n
        assert small.get_submodule(k.replace("mlp.0", "mlp.3")).in_features == 128 - n
    assert torch.allclose(small(x), ref, atol=1e-4)


class ChannelsLast(nn.Module):
    """Sequence Linears whose dead units may go (through GELU, a residual sum of two of them, a mean
    over tokens, a class token; through a sum over tokens only where the reader does not use them: a
    summed constant grows with the number of tokens) and ones whose may not (pooled or
    batch-normalised along another axis, scaled by a 1-D parameter, read by a Conv1d as channels of
    axis 1)."""

    def __init__(self):
        super().__init__()
        d = 6
        self.free_a = nn.Linear(d, d)
        self.free_b = nn.Linear(d, d)
        self.free_c = nn.Linear(d, d)
        self.free_d = nn.Linear(d, d)
        self.pooled = nn.Linear(d, d)
        self.pool = nn.MaxPool1d(3, stride=1, padding=1)  # along the last axis: mixes channels
        self.normed = nn.Linear(d, d)
        self.bn = nn.BatchNorm1d(5)  # statistics per token (axis 1)
        self.scaled = nn.Linear(d, d)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, d))
        self.convd = nn.Linear(d, d)
        self.conv = nn.Conv1d(5, 5, 1)  # reads the tokens as channels
        self.heads = nn.ModuleList(nn.Linear(d, 3) for _ in range(7))  # one per branch: a shared one is kept whole

    def forward(self, x):  # x: [N, 5 tokens, 6]
        a = F.gelu(self.free_a(x)) + F.gelu(self.free_b(x))  # one class of items: a channel goes from both or neither
        h = self.heads[0](a.mean(1)) + self.heads[1](F.relu(self.free_c(x))[:, 0]) + self.heads[2](self.free_d(x).sum(1))
        kept = (self.pool(self.pooled(x)), self.bn(self.normed(x)), self.scaled(x) * self.scale, self.conv(self.convd(x)))
        for head, k in zip(self.heads[3:], kept):  # each trap on its own: pinning one must not pin the others
            h = h + head(k.mean(1))
        return h


def test_channels_last_units_go_only_where_the_last_axis_is_kept_apart():
    torch.manual_seed(0)
    m = ChannelsLast()
    with torch.no_grad():
        m.bn.running_mean.normal_()
        m.bn.running_var.uniform_(0.5, 1.5)
        for lin in (m.free_a, m.free_b, m.free_c, m.free_d, m.pooled, m.normed, m.scaled, m.convd):
            lin.bias.normal_()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    for k in masks:
        if not k.startswith("heads"):
            masks[k][:2] = False  # units 0 and 1 of every Linear: no live input, a non-zero constant after the bias
    masks["free_a.weight"][2] = False  # unit 2 dead in a only: a + b still carries b's
    masks["heads.2.weight"][:, 3] = False  # free_d's unit 3 has no live output
    conn.set_masks(masks)
    x = torch.randn(4, 5, 6)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    removed = small.compaction["removed"]
    assert removed["free_a"] == removed["free_b"] == 2
    assert removed["free_c"] == 2
    assert removed["free_d"] == 1  # unit 3; its constant units are summed over the tokens
    for k in ("pooled", "normed", "scaled", "convd", "conv", *(f"heads.{i}" for i in range(7))):
        assert removed[k] == 0, k
    assert_same_outputs(small, m, ref, x, torch.randn(7, 5, 6))


class Summed(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head_t = nn.Linear(8, 3)
        self.head_p = nn.Linear(8, 3)

    def forward(self, tokens, image):  # a sum over tokens, a sum over pixels
        return self.head_t(F.gelu(self.fc(tokens)).sum(1)) + self.head_p(F.relu(self.conv(image)).sum((2, 3)))


def test_constant_units_summed_over_tokens_or_pixels_stay():
    """A unit with no live input is a constant k; summed over T tokens or H x W pixels it is T*k or
    H*W*k, which depends on the input's size: folding it into the reader's bias at the example's size
    would be wrong at any other. Such units stay; units the reader does not use still go."""
    torch.manual_seed(0)
    m = Summed()
    with torch.no_grad():
        m.fc.bias.fill_(0.5)
        m.conv.bias.fill_(0.5)
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["fc.weight"][:2] = False
    masks["conv.weight"][:2] = False
    masks["head_t.weight"][:, 5] = False
    masks["head_p.weight"][:, 6:] = False
    conn.set_masks(masks)
    x = (torch.randn(2, 5, 6), torch.randn(2, 3, 4, 4))
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"]["fc"] == 1 and small.compaction["removed"]["conv"] == 2
    conn.apply()
    for x2 in ((torch.randn(3, 9, 6), torch.randn(3, 3, 8, 8)), (torch.randn(1, 1, 6), torch.randn(1, 3, 2, 2))):
        with torch.no_grad():
            assert torch.allclose(small(*x2), m.eval()(*x2), atol=1e-5)


class _Tokens(nn.Module):
    """fc1 (6 -> 8) on tokens [N, 5, 6], then ``between``, then what reads fc1's units."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)
        self.gate = nn.Linear(6, 1)
        self.dw = nn.Conv1d(5, 5, 3, padding=1, groups=5)
        self.cap = nn.Parameter(torch.linspace(0.1, 1.0, 8))

    def forward(self, x):
        k = self.kind
        if k == "kwargs":
            return self.fc2(F.relu(self.fc1(input=x)))
        h = self.fc1(x)
        if k == "squared_relu":
            h = F.relu(h) ** 2
        elif k == "gate":  # one value per token for every channel
            h = h * torch.sigmoid(self.gate(x))
        elif k == "reshape":  # [N, T, C] -> [N*T, C] -> back
            h = F.gelu(h).reshape(-1, 8).view(x.shape[0], -1, 8)
        elif k == "clamp_1d":  # a per-unit cap: units cannot go
            h = torch.clamp(h, max=self.cap)
        elif k == "weight_read":  # fc1's weight also read directly: fc1 cannot shrink
            h = h + F.linear(x, self.fc1.weight)
        elif k == "cat_of_chunks":  # torch.cat given the chunks' tuple: the channels come back in order
            h = torch.cat(h.chunk(2, -1), -1)
        elif k == "cat_of_chunks_other_axis":  # halves of the channels stacked along the tokens: mixed
            h = torch.cat(h.chunk(2, -1), 1).repeat(1, 1, 2)
        elif k == "channel_split_swapped":  # uneven parts of the channels, concatenated back the other way round
            a, b = h.split([3, 5], -1)
            h = torch.cat([b, a], -1)
        elif k == "token_split":  # tokens split and put back in another order: every part has every channel
            a, b = h.split([2, 3], 1)
            h = torch.cat([b, a], 1)
        elif k == "depthwise_on_tokens":  # a depthwise Conv1d reads the 5 tokens as channels
            h = self.dw(h)
        elif k == "ellipsis":  # every channel kept, tokens sliced
            h = F.relu(h)[..., 1:, :]
        elif k == "ellipsis_channels":  # channels sliced: units cannot go
            h = torch.cat([h[..., 1:], h[..., :1]], -1)
        elif k == "centred":  # the token mean, a new axis put back in with None
            h = h - h.mean(1)[:, None]
        elif k == "none_on_channels":  # a new axis before the channels; a sum is never a constant
            h = h[:, :, None].sum(2)
        return self.fc2(h)


@pytest.mark.parametrize("kind, removed", [
    ("kwargs", 2), ("squared_relu", 2), ("gate", 1), ("reshape", 2),  # gated, a constant unit is no longer one
    ("clamp_1d", 0), ("weight_read", 0), ("cat_of_chunks", 2), ("cat_of_chunks_other_axis", 0),
    ("channel_split_swapped", 2), ("token_split", 2), ("depthwise_on_tokens", 0),
    ("ellipsis", 2), ("ellipsis_channels", 0), ("centred", 2), ("none_on_channels", 1),
])
def test_sequence_linear_units_through_other_ops(kind, removed):
    torch.manual_seed(0)
    m = _Tokens(kind)
    with torch.no_grad():
        m.fc1.bias.normal_()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["fc1.weight"][0] = False  # a constant unit
    masks["fc2.weight"][:, 1] = False  # an unused one
    conn.set_masks(masks)
    x = torch.randn(2, 5, 6)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"]["fc1"] == removed
    assert_same_outputs(small, m, ref, x, torch.randn(4, 5, 6))


class _SqueezeExcite(nn.Module):
    """A CNN whose squeeze-excitation gate is indexed back to [N, C, 1, 1] with None."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.se = nn.Linear(8, 8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        s = torch.sigmoid(self.se(h.mean((2, 3))))
        return self.conv2(h * s[:, :, None, None])


def test_squeeze_excite_gate_indexed_with_none():
    torch.manual_seed(0)
    m = _SqueezeExcite()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["conv2.weight"][:, 1] = False  # conv1's unit 1 is read only by the gate and the product
    masks["se.weight"][:, 1] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 6, 6)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"conv1": 1, "se": 1, "conv2": 0}
    assert torch.allclose(small(x), ref, atol=1e-5)


class _LocalNorm(nn.Module):
    def __init__(self, functional=False):
        super().__init__()
        self.functional = functional
        self.a = nn.Conv2d(2, 4, 1)
        self.lrn = nn.LocalResponseNorm(3, alpha=1.0, k=1.0)
        self.b = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = self.a(x)
        h = F.local_response_norm(h, 3, alpha=1.0, k=1.0) if self.functional else self.lrn(h)
        return self.b(h).mean((2, 3))


@pytest.mark.parametrize("functional", [False, True])
def test_local_response_norm_mixes_neighbouring_channels(functional):
    """LRN's channel c is scaled by channels c-1..c+1: a unit nobody reads after the LRN still
    changes its neighbours, so the graph keeps it alive and compact keeps it (it used to remove it
    and fail its own check)."""
    torch.manual_seed(0)
    m = _LocalNorm(functional).eval()
    conn = adaptive.Connectome(m)
    mb = conn.masks["b.weight"].clone()
    mb[:, 1] = False
    conn.set_masks({"b.weight": mb})
    x = torch.randn(2, 2, 3, 3)
    g = graphs.build(conn, "unit", example_input=x)
    names = g.node_names()
    dead = [names[i] for i in graphs.dead_units(g)["dead"].nonzero().flatten().tolist()]
    assert "a:1" not in dead
    with torch.no_grad():  # and it really matters
        y0 = m(x)
        m.a.weight[1] += 3.0
        assert float((m(x) - y0).abs().max()) > 1e-3
        m.a.weight[1] -= 3.0
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"]["a"] == 0
    assert torch.allclose(small(x), ref, atol=1e-5)


def _with_a_constant_unit(cls):
    """A ``cls()`` whose unit ``a:1`` is cut from its inputs: it emits relu(bias = 1.0) everywhere."""
    torch.manual_seed(0)
    m = cls().eval()
    with torch.no_grad():
        m.a.bias.fill_(1.0)
    conn = adaptive.Connectome(m)
    ma = conn.masks["a.weight"].clone()
    ma[1] = False
    conn.set_masks({"a.weight": ma})
    return m, conn


def test_padded_1x1_conv_reading_a_constant_channel_folds_it_exactly():
    """A 1x1 convolution with padding 1 adds its bias alone on the zero border: a removed constant
    channel must not be folded into the bias there (it was, and the check failed)."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 3, 3, padding=1)
            self.b = nn.Conv2d(3, 2, 1, padding=1)

        def forward(self, x):
            return self.b(F.relu(self.a(x)))

    m, conn = _with_a_constant_unit(Net)
    x = torch.randn(2, 3, 5, 5)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"]["a"] == 1
    assert_same_outputs(small, m, ref, x, torch.randn(3, 3, 7, 7))


def test_constants_judged_on_a_1x1_example_hold_at_other_sizes():
    """After a padded average pool a constant channel is uniform only on a 1x1 map: judged on a 1x1
    example it looked constant and was folded with the wrong value for larger inputs. The probe now
    also runs at twice the example's size."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 3, 3, padding=1)
            self.b = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            h = F.avg_pool2d(F.relu(self.a(x)), 3, stride=1, padding=1)
            return self.fc(F.relu(self.b(h)).mean((2, 3)))

    m, conn = _with_a_constant_unit(Net)
    x = torch.randn(2, 3, 1, 1)
    masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    for other in (torch.randn(4, 3, 1, 1), torch.randn(4, 3, 8, 8)):
        with torch.no_grad():
            assert torch.allclose(small(other), m(other), atol=1e-5)


@pytest.mark.filterwarnings("ignore")
def test_a_model_torch_cannot_copy_is_refused_with_the_fix_named():
    """An old-style weight_norm layer makes deepcopy fail inside torch with a RuntimeError about graph
    leaves; compact and knowledge_distribution, which work on copies, name the layer and the fix."""
    from adaptive.diagnostics.knowledge import knowledge_distribution

    m = nn.Sequential(nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 5))
    torch.nn.utils.weight_norm(m[0])
    conn = adaptive.Connectome(m)
    with pytest.raises(TypeError, match=r"graphs.compact\(conn.model, conn, ...\)"):
        graphs.compact(conn, example_input=torch.randn(2, 12))
    with pytest.raises(ValueError, match=r"graphs.compact .*0.weight \(weight_norm\).*remove_weight_norm"):
        graphs.compact(m, conn, example_input=torch.randn(2, 12))
    data = [(torch.randn(4, 12), torch.randint(0, 5, (4,)))]
    with pytest.raises(ValueError, match=r"knowledge_distribution .*0.weight \(weight_norm\).*remove_weight_norm"):
        knowledge_distribution(m, data, data, counts=[0, 10])
    torch.nn.utils.remove_weight_norm(m[0])  # the fix the message names works
    graphs.compact(m, adaptive.Connectome(m), example_input=torch.randn(2, 12))


def test_compact_takes_a_torch_compile_wrapper_as_connectome_does():
    """Connectome(torch.compile(m)) names weights as the plain module does; compact(torch.compile(m),
    conn) looked the connectome's names up in the wrapper's ``_orig_mod.``-prefixed ones and raised a
    bare KeyError."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["0.weight"][[1, 3]] = False  # two hidden units with no input: their constant bias folds on
    conn.set_masks(masks)
    x = torch.randn(4, 6)
    ref = masked_output(m, conn, x)
    small = graphs.compact(torch.compile(m), conn, x)
    assert small.compaction["removed"] == {"0": 2, "2": 0}
    assert torch.allclose(small(x), ref, atol=1e-5)


def test_unit_l1_l2_sum_live_synapses_only_whatever_the_weights_hold():
    """Unit-level edges carry the L1 and L2 of their LIVE synapses only, even when the weights at pruned
    positions are not zero (build(conn, model=...) given the unpruned model)."""
    import copy

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    dense = copy.deepcopy(net)
    conn = adaptive.Connectome(net)
    masks = {n: torch.rand(m.shape) > 0.5 for n, m in conn.masks.items()}
    conn.set_masks(masks)
    g = graphs.build(conn, "unit", model=dense, example_input=torch.randn(1, 3, 5, 5))  # unpruned weights
    live_l1 = sum(float((p.detach().abs() * masks[n]).sum()) for n, p in dense.named_parameters() if n in masks)
    live_l2 = sum(float((p.detach().pow(2) * masks[n]).sum()) for n, p in dense.named_parameters() if n in masks)
    assert float(g.edge_attrs["l1"].sum()) == pytest.approx(live_l1, rel=1e-6)
    assert float(g.edge_attrs["l2"].double().pow(2).sum()) == pytest.approx(live_l2, rel=1e-5)  # l2: root of the sum of squares
    assert int(g.edge_attrs["count"].sum()) == sum(int(m.sum()) for m in masks.values())


def _nonfinite_at_pruned_positions():
    """A conv net, a connectome of it with random masks, and a copy of the net whose weights hold NaN
    and inf at pruned positions of rows (kernels, flattened channels) that keep live synapses."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    conn = adaptive.Connectome(copy.deepcopy(net))
    masks = {n: torch.rand(m.shape, generator=torch.Generator().manual_seed(1)) > 0.5 for n, m in conn.masks.items()}
    conn.set_masks(masks)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if n in masks:
                p[~masks[n]] = torch.tensor([float("nan"), float("inf"), -float("inf")]).repeat(p.numel())[
                    : int((~masks[n]).sum())]
    return net, conn, masks


def test_unit_edges_leave_out_nan_and_inf_at_pruned_positions():
    """A unit edge summed weight x mask and utility x mask over its synapses: a NaN or inf at an absent
    synapse (0 * inf is NaN) made the l1, l2 or utility of its whole edge NaN."""
    net, conn, masks = _nonfinite_at_pruned_positions()
    utility = {n: torch.where(m, 1.0, float("nan")) for n, m in masks.items()}
    g = graphs.build(conn, "unit", model=net, utility=utility, example_input=torch.randn(1, 3, 5, 5))
    live = {n: p.detach()[masks[n]] for n, p in net.named_parameters() if n in masks}
    assert all(bool(torch.isfinite(g.edge_attrs[k]).all()) for k in ("l1", "l2", "utility"))
    assert float(g.edge_attrs["l1"].sum()) == pytest.approx(sum(float(v.abs().sum()) for v in live.values()), rel=1e-6)
    assert float(g.edge_attrs["l2"].double().pow(2).sum()) == pytest.approx(
        sum(float(v.pow(2).sum()) for v in live.values()), rel=1e-5)
    assert float(g.edge_attrs["utility"].sum()) == sum(int(m.sum()) for m in masks.values())
    # a NaN at a live synapse stays visible
    utility["0.weight"][masks["0.weight"].nonzero()[0].unbind()] = float("nan")
    g = graphs.build(conn, "unit", model=net, utility=utility, example_input=torch.randn(1, 3, 5, 5))
    assert int(torch.isnan(g.edge_attrs["utility"]).sum()) == 1


def test_compact_sets_pruned_positions_to_zero_whatever_they_held():
    """compact masked its copy's weights by multiplying: a NaN or inf held at a pruned position stayed
    NaN (0 * inf is NaN) and reached the outputs of every unit that keeps the rest of its row."""
    net, conn, _ = _nonfinite_at_pruned_positions()
    x = torch.randn(2, 3, 5, 5)
    small = graphs.compact(net, conn, example_input=x)
    want = masked_output(conn.model, conn, x)
    with torch.no_grad():
        got = small(x)
    assert bool(torch.isfinite(got).all()) and torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("align", [2.5, 0, "8", True])
def test_align_that_is_not_a_positive_integer_is_refused(align):
    """align=2.5 was cut to 2 although the error for align=0 asks for a positive integer."""
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    conn = adaptive.Connectome(m, ensemble="neuron")
    with pytest.raises(ValueError, match=r"align must be a positive integer, got"):
        graphs.compact(m, conn, torch.randn(2, 6), align=align)


def test_align_given_as_a_whole_float_is_taken():
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    conn = adaptive.Connectome(m, ensemble="neuron")
    small = graphs.compact(m, conn, torch.randn(2, 6), align=4.0)
    assert small.compaction["params_after"] <= small.compaction["params_before"]


def test_compact_without_an_example_input_guesses_one_the_model_runs_on(tmp_path, capsys):
    """compact (and the compact command) took the first guessed input, 32x32, where build tries each
    guess until the model runs: LeNet-5 without an in_shape was built into a graph but compact failed
    with "mat1 and mat2 shapes cannot be multiplied"; the model's modes are left as they were."""
    from adaptive.models import build_model
    from graphs.cli import main

    torch.manual_seed(0)
    m = build_model("lenet5")
    assert getattr(m, "in_shape", None) is None
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["conv2.weight"][:3] = False  # three dead units
    conn.set_masks(masks)
    m.train()
    graphs.build(conn)  # the guess build makes
    small = graphs.compact(m, conn)
    assert small.compaction["removed"]["conv2"] == 3
    assert all(x.training for x in m.modules())
    run = tmp_path / "run"
    conn.save(run / "connectome.safetensors")
    torch.save(conn.dense_state_dict(), run / "model_state.pt")
    (run / "config.yaml").write_text("model: lenet5\n")
    assert main(["compact", str(run)]) == 0, capsys.readouterr().err


class FunctionalLinear(nn.Module):
    """Layer ``a`` read through F.linear: with its own weight and bias (``how="own"``, compacted as the
    layer's call), without its bias (``"no_bias"``: kept, warned), or a bare parameter (``"bare"``)."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.w = nn.Parameter(torch.randn(6, 4))

    def forward(self, x):
        if self.how == "own":
            h = F.linear(x, self.a.weight, self.a.bias)
        elif self.how == "no_bias":
            h = F.linear(x, self.a.weight)
        else:
            h = F.linear(x, self.w)
        return self.b(torch.relu(h))


@pytest.mark.parametrize("how, removed, warned", [
    ("own", 3, None),
    ("no_bias", 0, r"layer 'a' keeps its size: node\(s\) \['linear'\] read its parameters directly.*self\.a\(x\)"),
    ("bare", 0, None),
])
def test_a_layer_read_through_functional_linear_is_compacted_or_named(how, removed, warned):
    """F.linear(x, self.a.weight, self.a.bias) is a's call: its 3 dead units go (they were kept, silently);
    F.linear without a's bias keeps its channels, with a warning naming the layer. F.linear on a bare weight reads
    the model's input, where no dead unit stays: nothing to say (see
    test_functional_linear_on_a_bare_or_computed_weight_is_warned_of_once_per_weight_where_dead_units_stay)."""
    torch.manual_seed(0)
    model = FunctionalLinear(how).eval()
    conn = first_units_dead(model, "a.weight", 3)
    x = torch.randn(4, 4)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        small = graphs.compact(model, conn, x)
    messages = [str(w.message) for w in rec if "graphs.compact" in str(w.message)]
    if warned is None:
        assert messages == []
        if how == "own":
            assert small.a.weight.shape == (3, 4) and small.b.weight.shape == (3, 3)
    else:
        assert len(messages) == 1 and re.search(warned, messages[0]), messages
    assert small.compaction["units_removed"] == removed
    with torch.no_grad():
        assert torch.allclose(small(x), masked_output(model, conn, x), atol=1e-5)


class BareLinear(nn.Module):
    """F.linear on a bare Parameter in a loop the trace unrolls (``self.w`` read 4 times) and on a weight computed in
    the forward (``2 * self.v.t()``), both fed by the units of layer ``inp``."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.w = nn.Parameter(torch.randn(5, 8))
        self.v = nn.Parameter(torch.randn(8, 5))
        self.head = nn.Linear(10, 2)

    def forward(self, x):
        z = F.relu(self.inp(x))
        acc = F.linear(z[:, 0], self.w)
        for t in range(1, 4):
            acc = acc + F.linear(z[:, t], self.w)
        return self.head(torch.cat([acc, F.linear(z.mean(1), 2 * self.v.t())], 1))


def test_functional_linear_on_a_bare_or_computed_weight_is_warned_of_once_per_weight_where_dead_units_stay():
    """F.linear on a weight no nn.Linear owns was warned of once per node (4 times for one weight read in an
    unrolled loop) at every call, dead units or none, where a convolution or product on a bare weight is warned
    of once per tensor and only where dead units stay: F.linear now is too, naming the nodes."""
    torch.manual_seed(0)
    model = BareLinear().eval()
    x = torch.randn(2, 4, 4)
    with pytest.warns(UserWarning, match="stay dense"):
        conn = adaptive.Connectome(model, ensemble="neuron")

    def compact_warnings():
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            small = graphs.compact(model, conn, x)
        assert small.compaction["params_after"] == small.compaction["params_before"]
        return [str(w.message) for w in rec if "graphs.compact" in str(w.message)]

    assert compact_warnings() == []  # nothing dead: nothing to say
    conn.set_ensemble_masks({"inp.weight": torch.tensor([1, 0, 1, 1, 1, 1, 1, 1], dtype=torch.bool)})
    said = compact_warnings()
    assert len(said) == 2, said
    assert re.search(r"nodes 'linear' \(call_function linear\), 'linear_1' .* \.\.\. \(4 in all\) read 'w', a "
                     r"parameter of the model's own that no nn.Linear module holds: the channels it reads and writes "
                     r"keep their size \(dead units feeding it included\); hold the weight in an nn.Linear", said[0])
    assert re.search(r"node 'linear_4' \(call_function linear\) reads the weight 'mul', computed in the forward "
                     r"\(F.linear on it\).*keep their size.*hold the weight in an nn.Linear", said[1])


class HookedOrInside(nn.Module):
    """F.linear on the own weight and bias of a layer with a forward hook (``"hook"``: its call would run the
    hook) or of a MultiheadAttention's out_proj (``"inside"``: the attention reads it at its full size)."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.attn, self.a, self.b = nn.MultiheadAttention(4, 2, batch_first=True), nn.Linear(4, 4), nn.Linear(4, 3)
        self.a.register_forward_hook(lambda module, args, out: 2 * out)

    def forward(self, x):
        fc = self.a if self.how == "hook" else self.attn.out_proj
        h = x if self.how == "hook" else self.attn(x, x, x)[0]
        return self.b(torch.relu(F.linear(h, fc.weight, fc.bias)))


@pytest.mark.parametrize("how, killed, layer, why", [
    ("hook", "b", "a", "it has forward hooks"),
    ("inside", "attn.out_proj", "attn.out_proj", "'attn', called whole, reads it too"),
])
def test_functional_linear_on_a_hooked_layer_or_one_inside_a_whole_module_is_left_as_it_is(how, killed, layer, why):
    """Taken for the layer's call, the F.linear ran the hook (outputs doubled: a mismatch, or a wrong model
    with verify=False) or shrank the attention's out_proj under it (a shape error)."""
    torch.manual_seed(0)
    model = HookedOrInside(how).eval()
    conn = first_units_dead(model, f"{killed}.weight", 2)
    x = torch.randn(2, 5, 4)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        small = graphs.compact(model, conn, x, verify=False)
    assert small.compaction["units_removed"] == 0
    with torch.no_grad():
        assert torch.allclose(small(x), masked_output(model, conn, x), atol=1e-5)
    messages = [str(w.message) for w in rec if "graphs.compact" in str(w.message)]
    assert len(messages) == 1 and f"layer {layer!r} keeps its size" in messages[0] and why in messages[0], messages


class OptionalArgs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x, features=False, mask=None):
        h = self.fc1(x).relu()
        if mask is not None:
            h = h * mask
        return h if features else self.fc2(h)


def test_forward_parameters_with_defaults_are_traced_at_their_defaults():
    """As graphs.build does: fx traced ``features`` and ``mask`` as inputs, and compact refused the model
    ('symbolically traced variables cannot be used as inputs to control flow') that build had traced."""
    torch.manual_seed(0)
    model = OptionalArgs().eval()
    conn = adaptive.Connectome(model, ensemble="neuron")
    conn.set_ensemble_masks({"fc1.weight": torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool),
                             "fc2.weight": torch.ones(3, dtype=torch.bool)})
    x = torch.randn(2, 4)
    small = graphs.compact(model, conn, x)
    assert small.compaction["removed"] == {"fc1": 2, "fc2": 0}
    assert small.fc1.weight.shape == (4, 4)
    assert_same_outputs(small, lambda t: masked_output(model, conn, t), masked_output(model, conn, x), x, torch.randn(3, 4))


def test_a_compact_copy_takes_the_defaulted_parameters_by_their_names():
    """fx names a parameter it specialises ``mask_1``: the copy refused ``small(x, mask=None)``, a call the model
    takes (TypeError: unexpected keyword argument 'mask'); another value than the default is refused by name."""
    torch.manual_seed(0)
    model = OptionalArgs().eval()
    x = torch.randn(2, 4)
    small = graphs.compact(model, example_input=x)
    assert torch.allclose(small(x, features=False, mask=None), model(x), atol=1e-6)
    with pytest.raises(AssertionError, match="features has been specialized to have value False"):
        small(x, features=True)


class Tempered(nn.Module):
    """A flag an ``if`` reads, and a number used only in arithmetic."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x, temperature=1.0, logits=True):
        y = self.fc2(torch.relu(self.fc1(x))) / temperature
        return y if logits else y.softmax(-1)


def test_a_numeric_default_stays_an_input_of_the_compact_copy():
    """Only the flags an ``if`` reads are fixed at their defaults: ``temperature`` stays an input, so the copy
    takes another value as the model does (it had been fixed at 1.0, and small(x, temperature=2.0) refused)."""
    torch.manual_seed(0)
    model = Tempered().eval()
    x = torch.randn(2, 4)
    small = graphs.compact(model, example_input=x)
    assert torch.allclose(small(x, temperature=2.0), model(x, temperature=2.0), atol=1e-6)
    with pytest.raises(AssertionError, match="logits has been specialized to have value True"):
        small(x, logits=False)


def test_a_compacted_model_with_string_annotations_saves_and_loads(tmp_path):
    """A model written under `from __future__ import annotations` (adaptive.models' are) left fx's
    placeholder typed by the string 'torch.Tensor', and `python -m graphs compact` failed to save the
    copy on torch 2.11 (its pickler took the string for an object: seen on a GPU machine's torch)."""
    from adaptive.models import build_model

    torch.manual_seed(0)
    m = build_model("lenet5", num_classes=10, in_shape=(1, 28, 28)).eval()
    assert isinstance(type(m).forward.__annotations__.get("x"), str)  # the premise: a string annotation
    small = graphs.compact(m, adaptive.Connectome(m))
    assert not any(isinstance(n.type, str) for n in small.graph.nodes)
    torch.save(small, tmp_path / "small.pt")
    again = torch.load(tmp_path / "small.pt", weights_only=False)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(again(x), small(x))


class GluMlp(nn.Module):
    """A gated linear unit: fc1's first half gated by the sigmoid of its second half."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(4, 3)

    def forward(self, x):
        a, b = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(a * torch.sigmoid(b))


@pytest.mark.parametrize("shape, removed", [((2, 6), 5), ((2, 5, 6), 4)])
def test_glu_halves_shrink_with_their_gating_partners(shape, removed):
    """``a * sigmoid(b)`` links channel j of each half: an unused product takes fc1's units j and 4 + j, a
    product of two constant halves is a constant folded into fc2; a constant ``a_j`` gated by a live ``b_j``
    is no constant: ``b_j`` stays, and ``a_j`` goes, filled back into the product, on axis 1 (``[N, C]``); on the
    last axis of a sequence it stays."""
    torch.manual_seed(0)
    m = GluMlp()
    with torch.no_grad():
        m.fc1.bias.normal_()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["fc2.weight"][:, 1] = False  # product 1 unused: fc1 units 1 and 5 go
    masks["fc1.weight"][[3, 7]] = False  # product 3 constant: fc1 units 3 and 7 go, folded into fc2's bias
    masks["fc1.weight"][2] = False  # a_2 constant, b_2 live: b_2 stays (a_2 too on a sequence)
    conn.set_masks(masks)
    x = torch.randn(*shape)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"fc1": removed, "fc2": 0}
    assert small.fc1.out_features == 8 - removed and small.fc2.in_features == 2
    assert_same_outputs(small, m, ref, x, torch.randn(4, *shape[1:]))


class GluGate(nn.Module):
    """A convolution whose channels gate each other in halves (a GLU over channels)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        a, b = self.bn(self.conv1(x)).chunk(2, 1)
        return self.fc(F.adaptive_avg_pool2d(self.conv2(a * torch.sigmoid(b)), 1).flatten(1))


def test_glu_channel_gate_in_a_cnn():
    torch.manual_seed(0)
    m = randomize_bn(GluGate())
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["conv2.weight"][:, 1] = False  # gated channel 1 unused: conv1 units 1 and 5 go
    masks["conv1.weight"][[2, 6]] = False  # gated channel 2 constant: folded into conv2 at its padded border
    masks["conv1.weight"][3] = False  # a constant gated by a live unit: it goes, filled back into the product
    conn.set_masks(masks)
    x = torch.randn(2, 3, 6, 6)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"conv1": 5, "conv2": 0, "fc": 0}
    assert small.get_submodule("bn").num_features == 3 and split_sizes(small) == [[1, 2]]
    assert "channel_pad(" in small.code
    assert_same_outputs(small, m, ref, x, torch.randn(3, 3, 6, 6))


def split_sizes(gm):
    """The sizes of every split left in a compacted graph, in order (a rewritten chunk is one of them)."""
    return [list(n.args[1]) for n in gm.graph.nodes if n.target in (torch.split, "split")]


class SplitCat(nn.Module):
    """fc1's channels split (six ways of saying it), each part activated its own way, then concatenated back."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc1(x)
        if self.how == "split_sizes":
            a, b = torch.split(h, [3, 5], dim=1)
            y = torch.cat([F.relu(a), torch.tanh(b)], 1)
        elif self.how == "split_int":
            a, b, c = h.split(3, 1)
            y = torch.cat([F.relu(a), torch.tanh(b), c], 1)
        elif self.how == "tensor_split":
            a, b, c = torch.tensor_split(h, [2, 7], dim=1)
            y = torch.cat([F.relu(a), torch.tanh(b), c], 1)
        elif self.how == "hsplit":
            a, b, c = torch.hsplit(h, [2, 7])
            y = torch.cat([F.relu(a), torch.tanh(b), c], 1)
        elif self.how == "split_with_sizes":
            a, b = h.split_with_sizes([3, 5], 1)
            y = torch.cat([F.relu(a), torch.tanh(b)], 1)
        elif self.how == "chunk":
            a, b, c = torch.chunk(h, 3, 1)
            y = torch.cat([F.relu(a), torch.tanh(b), c], 1)
        else:  # the parts' tuple concatenated whole
            y = torch.cat(h.tensor_split(3, dim=-1), -1)
        return self.fc2(y)


@pytest.mark.parametrize("how, sizes", [("split_sizes", [2, 3]), ("split_int", [2, 2, 1]),
                                        ("tensor_split", [1, 3, 1]), ("chunk", [2, 2, 1]), ("whole_tuple", [2, 2, 1]),
                                        ("hsplit", [1, 3, 1]), ("split_with_sizes", [2, 3])])
def test_uneven_split_then_cat_back(how, sizes):
    """Part k's channel j is fc1's channel offset_k + j; the compacted split takes each part's kept count."""
    torch.manual_seed(0)
    m = SplitCat(how)
    with torch.no_grad():
        m.fc1.bias.normal_()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["fc2.weight"][:, [0, 4]] = False  # unused
    masks["fc1.weight"][6] = False  # constant, folded into fc2's bias
    conn.set_masks(masks)
    x = torch.randn(2, 6)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"fc1": 3, "fc2": 0}
    assert split_sizes(small) == [sizes]
    assert_same_outputs(small, m, ref, x, torch.randn(5, 6))


class TwoReaders(nn.Module):
    """fc1's halves read by different layers."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fa, self.fb = nn.Linear(6, 8), nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        a, b = self.fc1(x).chunk(2, 1)
        return self.fa(F.relu(a)) + self.fb(b)


@pytest.mark.parametrize("constant, sizes", [(False, [3, 2]), (True, [2, 2])])
def test_split_parts_read_by_different_layers_shrink_unevenly(constant, sizes):
    """An even chunk whose halves lose 1 and 2 channels becomes ``torch.split(h, [3, 2], 1)``."""
    torch.manual_seed(0)
    m = TwoReaders()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["fa.weight"][:, 0] = False
    masks["fb.weight"][:, [1, 2]] = False
    if constant:
        masks["fc1.weight"][3] = False  # constant, but fa reads it: folded into fa's bias
    conn.set_masks(masks)
    x = torch.randn(2, 6)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"fc1": 3 + constant, "fa": 0, "fb": 0}
    assert (small.fa.in_features, small.fb.in_features) == tuple(sizes) and split_sizes(small) == [sizes]
    assert not any(n.target == "chunk" for n in small.graph.nodes)
    assert_same_outputs(small, m, ref, x, torch.randn(5, 6))


class SpatialChunk(nn.Module):
    """conv1's map cut into top and bottom halves, each read by its own 1x1 convolution."""

    def __init__(self, how="chunk"):
        super().__init__()
        self.how = how
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.top, self.bottom = nn.Conv2d(4, 3, 1), nn.Conv2d(4, 3, 1)

    def forward(self, x):
        h = self.conv1(x)
        t, b = h.chunk(2, dim=2) if self.how == "chunk" else h.dsplit(2)
        return torch.cat([self.top(t), self.bottom(b)], 2)


@pytest.mark.parametrize("how", ["chunk", "dsplit"])
def test_chunk_along_a_spatial_axis_keeps_every_channel_in_each_part(how):
    """Every part holds every channel: a channel goes when both halves can do without it, and the
    chunk (or dsplit), which counts rows, is left as it is (the copy takes another image size)."""
    torch.manual_seed(0)
    m = SpatialChunk(how)
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["top.weight"][:, 1] = False
    masks["bottom.weight"][:, 1] = False  # channel 1 unused by both halves: goes
    masks["top.weight"][:, 2] = False  # channel 2 read by the bottom half: stays
    masks["conv1.weight"][3] = False  # constant: folded into both 1x1 convolutions' biases
    conn.set_masks(masks)
    x = torch.randn(2, 3, 6, 6)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"conv1": 2, "top": 0, "bottom": 0}
    assert small.top.in_channels == small.bottom.in_channels == 2
    assert any(n.target == how for n in small.graph.nodes)
    assert_same_outputs(small, m, ref, x, torch.randn(3, 3, 6, 6))
    with torch.no_grad():
        x2 = torch.randn(1, 3, 10 if how == "dsplit" else 9, 5)  # dsplit's halves must be even
        assert torch.allclose(small(x2), m(x2), atol=1e-5)


class PartsElsewhere(nn.Module):
    """fc1's halves used in ways whose channels compaction cannot follow."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(4, 3)

    def forward(self, x):
        h = self.fc1(x)
        if self.how == "stack":  # the tuple stacked: half a's channel j sums with half b's
            return self.fc2(torch.stack(h.chunk(2, 1)).sum(0))
        if self.how == "tuple_sliced":  # a slice of the parts' tuple
            return self.fc2(torch.cat(h.chunk(4, 1)[:2], 1))
        return self.fc2(torch.cat(h.chunk(2, 1), 0))  # concatenated along the batch: half a's channel j on b's


@pytest.mark.parametrize("how", ["stack", "tuple_sliced", "cat_batch"])
def test_split_parts_used_otherwise_keep_their_channels(how):
    torch.manual_seed(0)
    m = PartsElsewhere(how)
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["fc2.weight"][:, 1] = False
    conn.set_masks(masks)
    x = torch.randn(2, 6)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"]["fc1"] == 0
    assert torch.allclose(small(x), ref, atol=1e-5)


class PairDifference(nn.Module):
    """A batch of pairs: the first half of the batch minus the second, through one layer."""

    def __init__(self, how="chunk"):
        super().__init__()
        self.how = how
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        first, second = h.chunk(2, 0) if self.how == "chunk" else torch.vsplit(h, 2)
        return self.fc2(first - second)


@pytest.mark.parametrize("how", ["chunk", "vsplit"])
def test_chunk_along_the_batch_links_each_part_to_the_same_channels(how):
    """Both halves of the batch hold every channel; the probe, which one sample would not split in two,
    runs on the whole example. A constant unit's difference is a constant (zero)."""
    torch.manual_seed(0)
    m = PairDifference(how)
    with torch.no_grad():
        m.fc1.bias.normal_()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["fc2.weight"][:, 1] = False
    masks["fc1.weight"][3] = False
    conn.set_masks(masks)
    x = torch.randn(4, 6)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"fc1": 2, "fc2": 0}
    assert_same_outputs(small, m, ref, x, torch.randn(6, 6))


class EmptyParts(nn.Module):
    """Splits with a part that holds nothing: sizes with a zero, more sections than channels, and the
    rest of a batch one sample lacks."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.fc1, self.f3, self.fc2, self.fb = nn.Linear(6, 8), nn.Linear(3, 3), nn.Linear(8, 3), nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        if self.how == "zero_size":
            a, none, b = torch.split(h, [3, 0, 5], -1)
            return self.fc2(torch.cat([b, none, self.f3(a)], -1))
        if self.how == "more_sections":  # 10 sections of 8 channels: the last two are empty
            p = h.tensor_split(10, dim=-1)
            a = self.f3(torch.cat([p[0], p[1], p[2]], -1))
            return self.fc2(torch.cat([a, p[9], p[3], p[4], p[5], p[6], p[7]], -1))
        first, rest = h.split([1, x.shape[0] - 1], 0)  # one sample against the rest of the batch
        return self.fc2(first) + self.fb(rest).mean(0, keepdim=True)


@pytest.mark.parametrize("how, removed", [("zero_size", {"fc1": 3, "f3": 1, "fc2": 0}),
                                          ("more_sections", {"fc1": 3, "f3": 1, "fc2": 0}),
                                          ("first_and_rest", {"fc1": 4, "fc2": 0, "fb": 0})])
def test_split_parts_that_hold_nothing(how, removed):
    """An empty part crashed the search for constants; the rest of a batch that one sample lacks is
    probed on the whole example, so the constant units it holds still go."""
    torch.manual_seed(0)
    m = EmptyParts(how)
    with torch.no_grad():
        m.fc1.bias.normal_()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["fc2.weight"][:, [0, 5]] = False  # unused
    masks["fb.weight"][:, [0, 5]] = False
    masks["fc1.weight"][[1, 6]] = False  # constant, folded into their readers' biases
    conn.set_masks(masks)
    x = torch.randn(4, 6)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == removed
    assert_same_outputs(small, m, ref, x, torch.randn(5, 6))


class DeadPart(nn.Module):
    """conv1's halves through a BatchNorm and a depthwise convolution, and through a 1x1 convolution."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.pw = nn.Conv2d(4, 4, 1, bias=False)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        a, b = F.relu(self.conv1(x)).chunk(2, 1)
        y = torch.cat([self.dw(self.bn(a)), self.pw(b)], 1)
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


@pytest.mark.parametrize("dead, removed", [
    ("dw_unused", {"conv1": 3, "dw": 3, "pw": 0, "fc": 0}),  # BatchNorm and depthwise conv: one channel each stays
    ("pw_reads_nothing", {"conv1": 3, "dw": 0, "pw": 3, "fc": 0}),  # pw keeps one input and one (zero) output
    ("both", {"conv1": 6, "dw": 3, "pw": 3, "fc": 0}),  # one channel of each half
])
def test_a_convolution_or_batchnorm_whose_channels_all_go_keeps_one(dead, removed):
    """A split part whose every channel could go left a BatchNorm of no features, a depthwise convolution of no
    groups, or a convolution reading no channels (which returns none): compaction raised. Each keeps one channel."""
    torch.manual_seed(0)
    m = randomize_bn(DeadPart())
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    if dead in ("dw_unused", "both"):
        masks["fc.weight"][:, :4] = False
    if dead in ("pw_reads_nothing", "both"):
        masks["pw.weight"][:] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 6, 6)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == removed
    assert small.get_submodule("bn").num_features == (1 if removed["dw"] == 3 else 4)
    assert_same_outputs(small, m, ref, x, torch.randn(3, 3, 6, 6))


class PooledPart(nn.Module):
    """conv1's first half max-pooled into one Linear, its second averaged into another."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.fa, self.fb = nn.Linear(36, 2), nn.Linear(4, 2)

    def forward(self, x):
        a, b = F.relu(self.conv1(x)).chunk(2, 1)
        return self.fa(F.max_pool2d(a, 2).flatten(1)) + self.fb(F.adaptive_avg_pool2d(b, 1).flatten(1))


def test_a_pooled_split_part_whose_channels_all_go_keeps_one():
    """max_pool2d takes no map of no channels: the half fa does not read keeps one channel."""
    torch.manual_seed(0)
    m = PooledPart()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["fa.weight"][:] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 6, 6)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"conv1": 3, "fa": 0, "fb": 0} and small.fa.in_features == 9
    assert_same_outputs(small, m, ref, x, torch.randn(3, 3, 6, 6))


class PooledConstants(nn.Module):
    """conv(3 -> 8) -> BN -> ReLU -> a global average -> fc, the units a:1..7 cut from their inputs: each emits
    a positive constant of its own (its bias through BN and ReLU)."""

    def __init__(self, pool):
        super().__init__()
        self.pool = pool
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 9 if pool == "bins" else 8, 4)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.bn.running_mean.copy_(torch.randn(8, generator=g))
            self.bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)
            self.bn.weight.copy_(torch.rand(8, generator=g) + 0.5)
            self.bn.bias.copy_(torch.rand(8, generator=g))
            self.a.bias.copy_(self.bn.running_mean + torch.rand(8, generator=g) + 0.1)

    def forward(self, x):
        h = F.relu(self.bn(self.a(x)))
        if self.pool == "padded":  # the zero border lowers the mean of a constant, the more the smaller the map
            h = F.avg_pool2d(h, 3, stride=1, padding=1)
        if self.pool == "mean":
            return self.fc(h.mean((2, 3)))
        return self.fc(F.adaptive_avg_pool2d(h, 3 if self.pool == "bins" else 1).flatten(1))


@pytest.mark.parametrize("size", [5, 6, 7, 8, 12])
@pytest.mark.parametrize("pool, removed", [("adaptive", 7), ("mean", 7), ("bins", 7), ("padded", 0)])
def test_constants_averaged_over_the_map_go_at_every_input_size(pool, removed, size):
    """A mean over pixels rounds a constant differently at the example's size and at twice it (and over
    bins of different sizes): judged by exact equality, constant channels read as not constant and stayed,
    how many depending on the size, and so did those pooled into bins of different sizes (8 pixels into 3
    bins). They are now judged to float rounding; a constant whose mean depends on the size (a zero-padded
    pool's border) still stays."""
    torch.manual_seed(0)
    m = PooledConstants(pool).eval()
    conn = adaptive.Connectome(m)
    mask = conn.masks["a.weight"].clone()
    mask[1:] = False
    conn.set_masks({"a.weight": mask})
    x = torch.randn(2, 3, size, size)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"]["a"] == removed
    assert_same_outputs(small, m, ref, x, torch.randn(3, 3, size + 3, size + 3))


def test_a_linear_emptied_of_every_unit_or_input_is_built_without_a_warning():
    """fc1's units all cut from their inputs: fc1 keeps no unit (Linear(6, 0)) and fc2 no input (Linear(0, 3), their
    constants folded into its bias). Building those layers made torch warn 'Initializing zero-element tensors is
    a no-op' twice to the user; compaction now warns nothing."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    conn = adaptive.Connectome(m)
    conn.set_masks({"0.weight": torch.zeros_like(conn.masks["0.weight"])})
    x = torch.randn(2, 6)
    ref = masked_output(m, conn, x)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        small = graphs.compact(m, conn, x)
    assert [str(w.message) for w in rec] == []
    fc1, fc2 = small.get_submodule("0"), small.get_submodule("2")
    assert (fc1.in_features, fc1.out_features, fc2.in_features, fc2.out_features) == (6, 0, 0, 3)
    assert_same_outputs(small, m, ref, x, torch.randn(5, 6))


class CastsToBfloat16(PooledConstants):
    """PooledConstants in float32 up to the pool, which casts to bfloat16 for fc itself: a float32 copy of
    the model does not run (fc's weight in float32, its input bfloat16)."""

    def forward(self, x):
        h = F.avg_pool2d(F.relu(self.bn(self.a(x))), 3, stride=1, padding=1)
        return self.fc(h.mean((2, 3)).to(torch.bfloat16))


@pytest.mark.parametrize("dtype, size", [(torch.bfloat16, 24), (torch.float16, 192)])
@pytest.mark.parametrize("pool, removed", [("adaptive", 7), ("padded", 0)])
def test_a_half_precision_model_is_probed_in_float32(dtype, size, pool, removed):
    """In the model's own float16 or bfloat16, probe values 4 of its ulps apart passed as one constant: the mean
    of a zero-padded pool (2/(3n) lower at a map n wide than at 2n) was folded at the example's size and the
    compact model was some 10% off on smaller inputs. The probe now computes in float32 and keeps those units;
    true constants still go."""
    torch.manual_seed(0)
    m = PooledConstants(pool).eval().to(dtype)
    conn = adaptive.Connectome(m)
    mask = conn.masks["a.weight"].clone()
    mask[1:] = False
    conn.set_masks({"a.weight": mask})
    x = torch.randn(2, 3, size, size, dtype=dtype)
    masked_output(m, conn, x)
    small = graphs.compact(m, conn, x, atol=2e-2, rtol=2e-2)
    assert small.compaction["removed"]["a"] == removed
    assert next(small.parameters()).dtype == dtype
    with torch.no_grad():
        for s in (6, 12):
            other = torch.randn(3, 3, s, s, dtype=dtype)
            assert torch.allclose(small(other).float(), m(other).float(), atol=2e-2, rtol=2e-2)


def test_a_model_that_casts_to_a_half_dtype_itself_is_probed_in_its_own_dtypes():
    """The float32 copy of a model that casts to bfloat16 in its forward does not run: the probe falls back to
    the model's own dtypes, which judge the padded pool's mean as before (it stays) and compact the rest."""
    torch.manual_seed(0)
    m = CastsToBfloat16("padded").eval()
    m.fc.to(torch.bfloat16)
    conn = adaptive.Connectome(m)
    mask = conn.masks["a.weight"].clone()
    mask[1:] = False
    conn.set_masks({"a.weight": mask})
    x = torch.randn(2, 3, 8, 8)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x, atol=2e-2, rtol=2e-2)
    assert small.compaction["removed"]["a"] == 0
    assert torch.allclose(small(x).float(), ref.float())


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class _AkamasterBlock(nn.Module):
    """akamaster/pytorch_resnet_cifar10's BasicBlock: option-A shortcut as a lambda."""

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = _Lambda(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4),
                                                    "constant", 0))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _AkamasterResNet(nn.Module):
    """akamaster's CIFAR ResNet, small: its pooling and flattening read the shape of the last stage's output."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(_AkamasterBlock(4, 4))
        self.layer2 = nn.Sequential(_AkamasterBlock(4, 8, 2), _AkamasterBlock(8, 8))
        self.linear = nn.Linear(8, 3)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = F.avg_pool2d(out, out.size()[3])
        out = out.view(out.size(0), -1)
        return self.linear(out)


def test_akamaster_resnet_reading_its_shapes_compacts_the_last_stage():
    """``F.avg_pool2d(out, out.size()[3])`` and ``out.view(out.size(0), -1)`` read the last stage's shape: every
    channel of its stream was kept. Its stream channels 0 and 7 (zero-padded in the shortcut, constant in both
    blocks' residual branches) now go, with a hidden unit of each block."""
    torch.manual_seed(0)
    m = randomize_bn(_AkamasterResNet())
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    for block in ("layer2.0", "layer2.1"):
        masks[f"{block}.conv2.weight"][[0, 7]] = False
        masks[f"{block}.conv1.weight"][3] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 8, 8)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"conv1": 0, "layer1.0.conv1": 0, "layer1.0.conv2": 0, "layer2.0.conv1": 1,
                                           "layer2.0.conv2": 2, "layer2.1.conv1": 1, "layer2.1.conv2": 2, "linear": 0}
    assert small.get_submodule("linear").in_features == 6
    assert_same_outputs(small, m, ref, x, torch.randn(3, 3, 16, 16))


class _ShapeReads(nn.Module):
    """conv's six channels reach fc through a global mean written with the shape read out; ``how`` says how."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fa, self.fb = nn.Conv2d(2, 3, 1), nn.Conv2d(4, 3, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.tanh(self.conv(x))
        b, c, hh, ww = h.shape
        if self.how == "reshape":
            h = h.reshape(b, c, hh * ww)
        elif self.how == "reshape_kept_axes":
            h = h.reshape(h.shape[0], h.shape[1], -1)
        elif self.how == "view_written":
            h = h.view(b, 6, hh * ww)
        elif self.how == "flatten2":
            h = h.flatten(2)
        elif self.how == "split":  # split sizes computed from the count: rewritten with the kept counts
            a, s = h.split([2, h.shape[1] - 2], 1)
            h = torch.cat([self.fa(a), self.fb(s)], 1).flatten(2)
        elif self.how == "assert":  # the count compared: the channels stay
            torch._assert(c == 6, "six channels")
            h = h.reshape(b, c, -1)
        elif self.how == "arithmetic":  # the count multiplied into a view: the channels stay
            h = h.reshape(b, c * hh * ww).view(b, 6, -1)
        return self.fc(h.mean(-1))


@pytest.mark.parametrize("how, removed", [
    ("reshape", 2), ("reshape_kept_axes", 2), ("view_written", 2), ("flatten2", 2), ("split", 2),
    ("assert", 0), ("arithmetic", 0)])
def test_shape_reads_keep_channels_only_where_their_count_is_used_otherwise(how, removed):
    """``b, c, h, w = x.shape; x.reshape(b, c, h * w).mean(-1)``: the reads kept every channel of x. Reads of the
    batch or the map hold no channel count; the count itself may go into a view's channel entry or a split along
    the channels, which compact rewrites; used otherwise (compared, multiplied) it keeps x's channels."""
    torch.manual_seed(0)
    m = _ShapeReads(how)
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["conv.weight"][1] = False  # constant: folded into fc's bias (or fa's)
    if how == "split":
        masks["fb.weight"][:, 3] = False  # conv's channel 5 has no live output
    else:
        masks["fc.weight"][:, 5] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 5, 5)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"]["conv"] == removed
    if how == "split":
        assert split_sizes(small) == [[1, 3]]
    if how == "view_written":
        assert [n.args for n in small.graph.nodes if n.target == "view"][0][2] == 4
    assert_same_outputs(small, m, ref, x, torch.randn(3, 3, 9, 7))


class _SequenceReads(nn.Module):
    """A token MLP whose hidden units pass views written with the sequence's shape read out."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 4)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        n, t = h.shape[0], h.shape[1]
        flat = h.view(-1, h.shape[-1])  # [N*T, C]: the channel count read back
        h = self.fc2(flat).view(n, t, -1) + x.new_zeros(x.shape[:-1] + (1,))
        return h.reshape(h.shape[0], h.shape[1], -1)


def test_sequence_shape_reads_of_tokens_or_the_channel_count_of_a_view():
    """``shape[0]``, ``shape[1]`` and ``shape[:-1]`` of an ``[N, T, C]`` sequence hold no channel count; the count
    read into ``h.view(-1, h.shape[-1])`` is the viewed tensor's own, which shrinks with it."""
    torch.manual_seed(0)
    m = _SequenceReads()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["fc2.weight"][:, [1, 4]] = False
    conn.set_masks(masks)
    x = torch.randn(2, 5, 4)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"fc1": 2, "fc2": 0}
    assert_same_outputs(small, m, ref, x, torch.randn(3, 7, 4))


class _SizedSqueezeExcite(nn.Module):
    """The squeeze-excitation block as usually written: ``b, c, _, _ = x.size()``, then views to [b, c] and
    [b, c, 1, 1] that name the input's channel count, and the gate spread over the map (``how``)."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 8), nn.Sigmoid())
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        b, c, hh, ww = h.size()
        y = self.fc(self.pool(h).view(b, c)).view(b, c, 1, 1)
        if self.how == "expand_as":
            y = y.expand_as(h)
        elif self.how == "expand":
            y = y.expand(b, c, hh, ww)
        elif self.how == "expand_written":
            y = y.expand(-1, 8, hh, -1)
        return self.conv2(h * y)


@pytest.mark.parametrize("how", ["broadcast", "expand_as", "expand", "expand_written"])
def test_squeeze_excite_views_naming_the_channel_count(how):
    """The gate's view to [b, c, 1, 1] reads conv1's count into another tensor (fc's output): the two are then
    kept or removed channel for channel, so the count read at run time fits both. Expanded over the map (its
    count read, -1 or written in) the gate keeps its channels apart."""
    torch.manual_seed(0)
    m = _SizedSqueezeExcite(how)
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["conv2.weight"][:, [1, 6]] = False  # conv1's units 1 and 6 reach only the gate and the product
    masks["fc.0.weight"][:, [1, 6]] = False  # the gate reads them nowhere
    masks["fc.2.weight"][[1, 6]] = False  # and its own 1 and 6 are constant
    masks["fc.0.weight"][2] = False  # a hidden unit of the gate with no live input
    conn.set_masks(masks)
    x = torch.randn(2, 3, 6, 6)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"conv1": 2, "fc.0": 1, "fc.2": 2, "conv2": 0}
    assert_same_outputs(small, m, ref, x, torch.randn(3, 3, 10, 10))


class _CountedPad(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        h = self.conv(x)
        return self.out(F.pad(h, (0, 0, 0, 0, h.shape[1] // 2, h.shape[1] // 2)))


def test_channel_padding_by_a_computed_amount_keeps_the_channels_it_counts():
    """``F.pad`` over the channels by ``h.shape[1] // 2`` failed ('unsupported operand type(s) for +: 'int' and
    'Node''); the padded channels stay as they are, and so do h's, whose count sets the amount."""
    torch.manual_seed(0)
    m = _CountedPad()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["out.weight"][:, 3] = False  # h's channel 1 has no live output
    conn.set_masks(masks)
    x = torch.randn(2, 3, 5, 5)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"] == {"conv": 0, "out": 0}
    assert_same_outputs(small, m, ref, x, torch.randn(3, 3, 7, 7))


class _SplitByExtent(nn.Module):
    """Splits sized by a count read on axis 1 of a tensor whose axis 1 holds no channels: the input's tokens, a
    convolution's length after a transpose."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 4)
        self.conv = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        if self.how == "tokens":
            cls, rest = x.split([1, x.shape[1] - 1], 1)
        else:
            t = self.conv(x.transpose(1, 2)).transpose(1, 2)
            cls, rest = t.split(t.shape[1] // 2, 1)
        return self.fc2(F.relu(self.fc1(rest))) + cls.mean(1, keepdim=True)


@pytest.mark.parametrize("how", ["tokens", "length"])
def test_a_split_sized_by_a_token_count_read_on_axis_1_holds_at_other_lengths(how):
    """``x.split([1, x.shape[1] - 1], 1)`` of an ``[N, T, C]`` input: axis 1 of a tensor whose channels all stay
    may hold its tokens, and its count read there was written in as the example's ([1, 5]): the compact model
    failed on other lengths. A tensor that keeps its channels keeps the split as written."""
    torch.manual_seed(0)
    m = _SplitByExtent(how)
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["fc1.weight"][[1, 6]] = False
    masks["fc2.weight"][:, 3] = False
    conn.set_masks(masks)
    x = torch.randn(2, 6, 4)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"]["fc1"] == 3
    assert_same_outputs(small, m, ref, x, torch.randn(3, 10, 4))


class _RowsOf16(nn.Module):
    """``h.reshape(b, -1, 16)``: one channel a row on a 4x4 map, rows across channels on a 6x6 one."""

    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        b, c, hh, ww = h.shape
        rows = h.reshape(b, -1, 16)
        rows = rows - rows.mean(-1, keepdim=True)
        return self.out(rows.reshape(b, c, hh, ww))


def test_a_view_whose_minus_one_is_the_channel_count_only_at_the_example_size_keeps_the_channels():
    """``h.reshape(b, -1, 16)`` on a 4x4 map has the channels on axis 1, and its -1 was taken for their count: four
    constant channels went, and on a 6x6 map (rows of 16 across channels) the compact model was silently wrong.
    -1 is the count only where it stays so on the probe twice the example's size."""
    torch.manual_seed(0)
    m = randomize_bn(_RowsOf16())
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["conv.weight"][[1, 4, 6, 7]] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 4, 4)
    ref = masked_output(m, conn, x)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"]["conv"] == 0
    assert_same_outputs(small, m, ref, x, torch.randn(2, 3, 6, 6))


class _RowCentred(nn.Module):
    """Each channel's map centred: ``h.reshape(b, c, hh * ww)`` less its mean, reshaped back."""

    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.conv(x))
        b, c, hh, ww = h.shape
        rows = h.reshape(b, c, hh * ww)
        rows = rows - rows.mean(-1, keepdim=True)
        return self.out(rows.reshape(b, c, hh, ww))


def _sized_for_the_example(monkeypatch, change):
    """Have compact's rewrite end with ``change(gm)``: a rewrite right at the example's size only."""
    import importlib

    compact_module = importlib.import_module("graphs.compact")
    real = compact_module._rewrite

    def rewrite(gm, plan, env):
        real(gm, plan, env)
        change(gm)
        gm.recompile()

    monkeypatch.setattr(compact_module, "_rewrite", rewrite)


def test_compact_checks_the_outputs_at_other_input_sizes(monkeypatch):
    """A compact model right at the example's size and wrong at another is refused, naming that size: here a
    rewrite that wrote ``h.reshape(b, -1, 16)`` for ``h.reshape(b, c, hh * ww)`` (16 = 4x4, the example's map),
    which on an 8x8 map centres rows of 16 across channels, silently, in outputs of the right shape."""
    from graphs.compact import CompactionMismatchError

    def rows_of_16(gm):
        n, = [n for n in gm.graph.nodes if n.target == "reshape" and len(n.args) == 4]
        n.args = (n.args[0], n.args[1], -1, 16)

    torch.manual_seed(0)
    m = _RowCentred()
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["out.weight"][:, [2, 5]] = False
    conn.set_masks(masks)
    x = torch.randn(2, 3, 4, 4)
    assert graphs.compact(m, conn, x).compaction["removed"]["conv"] == 2  # the rewrite as compact writes it
    _sized_for_the_example(monkeypatch, rows_of_16)
    with pytest.raises(CompactionMismatchError, match=re.escape("changed the outputs on an input of shape (2, 3, 8, 8) "
                                                                "(the example's is (2, 3, 4, 4))")):
        graphs.compact(m, conn, x)
    assert graphs.compact(m, conn, x, verify=False)(x).shape == (2, 2, 4, 4)  # right at the example's size


def test_compact_checks_a_sequence_model_at_other_lengths(monkeypatch):
    """``x.split([1, x.shape[1] - 1], 1)`` of an ``[N, T, C]`` input written as the example's ``[1, 5]``: the
    compact model fails on 12 tokens, where the masked model runs, and compact says so."""
    def example_sizes(gm):
        n, = [n for n in gm.graph.nodes if n.target == "split"]
        n.args = (n.args[0], [1, 5]) + n.args[2:]

    torch.manual_seed(0)
    m = _SplitByExtent("tokens")
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["fc1.weight"][[1, 6]] = False
    conn.set_masks(masks)
    _sized_for_the_example(monkeypatch, example_sizes)
    from graphs.compact import CompactionMismatchError

    with pytest.raises(CompactionMismatchError, match=re.escape("compaction broke the model on an input of shape "
                                                                "(2, 12, 4) (the example's is (2, 6, 4)), where the "
                                                                "masked model runs")):
        graphs.compact(m, conn, torch.randn(2, 6, 4))


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x, y):
        return self.b(self.a(x) + y)


@pytest.mark.parametrize("model, example, said", [
    (lambda: nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3)), torch.randn(2, 5),
     r"input \[\(2, 5\)\]: RuntimeError: mat1 and mat2 shapes cannot be multiplied \(2x5 and 4x6\) \(at node '_0'\)"),
    (_TwoInputs, (torch.randn(2, 4), None),
     r"input \[\(2, 4\), NoneType\]: TypeError: unsupported operand .* \(at node 'add'\)"),
    (lambda: nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3)), torch.randn(2, 4, dtype=torch.float64),
     r"input \[\(2, 4\)\]: RuntimeError: mat1 and mat2 must have the same dtype, but got Double and Float \(at node '_0'\)"),
], ids=["wrong shape", "None for a required input", "float64 to a float32 model"])
def test_an_example_input_the_model_cannot_run_is_refused_as_build_refuses_it(model, example, said):
    """compact raised torch's own error with fx's "While executing %node ..." dump; it says what build says."""
    m = model()
    for call in (lambda: graphs.build(model=m, example_input=example), lambda: graphs.compact(m, example_input=example)):
        with pytest.raises(RuntimeError, match=rf"^running {type(m).__name__} on example_input failed: {said}; pass an "
                           r"example_input the model runs on as it is: a batch of its input") as e:
            call()
        assert "While executing" not in str(e.value)
        # the parameters' dtype named only where a floating input's differs from it (token ids are long)
        assert ("(floating inputs of torch.float32, as its parameters), of the shape its forward expects"
                in str(e.value)) is (example[0].dtype == torch.float64 if isinstance(example, torch.Tensor) else False)


def test_the_copy_of_a_model_in_train_mode_comes_back_in_eval_mode_where_it_matches():
    """docs/graphs.md: the copy comes back in eval mode whatever the model's mode, and matches the masked
    model there; in train mode BatchNorm normalises a dead unit's channel by the batch, not the running
    statistics its constant was folded through, so the two differ."""
    torch.manual_seed(0)
    m = randomize_bn(nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                   nn.Conv2d(6, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    conn = adaptive.Connectome(m)
    masks = {k: torch.ones_like(v) for k, v in conn.masks.items()}
    masks["0.weight"][:2] = False  # two units with no live input: constants after BatchNorm
    conn.set_masks(masks)
    m.train()
    small = graphs.compact(m, conn, torch.randn(2, 3, 8, 8))
    assert small.compaction["removed"]["0"] == 2 and not small.training and m.training
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(small(x), m.eval()(x), atol=1e-5)
        assert not torch.allclose(small.train()(x), m.train()(x), atol=1e-3)


def _tiny_net(scale):
    """Linear-ReLU-Linear with three dead hidden units (no input weight, no bias), weights times ``scale``:
    outputs of about ``scale ** 2``."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        m[0].weight[:3] = 0
        m[0].bias[:3] = 0
        for p in m.parameters():
            p.mul_(scale)
        m[2].bias.mul_(scale)  # the size of what the hidden units bring, not of a first layer's output
    return m.eval()


def test_the_check_refuses_a_wrong_copy_of_a_model_whose_outputs_are_tiny():
    """A fresh-initialised deep net's outputs can be 1e-10: a fixed atol of 1e-4 passed a compact copy whose
    outputs were all wrong (here twice too large)."""
    from graphs.compact import CompactionMismatchError, _verify

    ref = _tiny_net(1e-5)
    x = torch.randn(2, 4)
    assert 1e-12 < float(ref(x).abs().max()) < 1e-8
    wrong = copy.deepcopy(ref)
    with torch.no_grad():
        wrong[2].weight.mul_(2)
        wrong[2].bias.mul_(2)
    with pytest.raises(CompactionMismatchError, match=r"atol 0\.0001 \(atol x [\d.e-]+: outputs below 1 scale it down\)"):
        _verify(ref, wrong, x, 1e-4, 1e-4)


@pytest.mark.parametrize("scale", [1e-5, 1.0, 1e3])
def test_compaction_of_tiny_and_large_float32_outputs_passes_and_reports_the_relative_difference(scale):
    """Scaling atol down for outputs below 1 leaves true agreements passing, at 1e-10 and at 1e6 in float32;
    the report gives the difference relative to the outputs' largest magnitude next to the absolute one."""
    m = _tiny_net(scale)
    x = torch.randn(8, 4)
    small = graphs.compact(m, example_input=x)
    c = small.compaction
    assert c["units_removed"] == 3
    top = float(m(x).abs().max())
    assert c["max_abs_diff"] <= 1e-5 * top and c["max_rel_diff"] <= 1e-5
    assert c["max_rel_diff"] == 0.0 if c["max_abs_diff"] == 0 else c["max_rel_diff"] >= c["max_abs_diff"] / top / 10


def test_an_output_that_is_zero_everywhere_keeps_the_plain_atol():
    """Scaling atol by the outputs' largest magnitude must not turn an all-zero output into an exact-match demand
    (atol x 0): rounding of a folded constant is allowed there as the plain atol allows it; a real miss is not."""
    from graphs.compact_check import _close

    zero = torch.zeros(3, 5)
    assert _close(zero, zero + 1e-9, 1e-4, 1e-4)
    assert not _close(zero, zero + 1e-3, 1e-4, 1e-4)
    assert not _close(torch.full((3, 5), 1e-10), torch.full((3, 5), 2e-10), 1e-4, 1e-4)


class ScoresAndDecisions(nn.Module):
    """Scores, with the decisions taken on them: a bool and a uint8 output next to the float one."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        y = self.fc2(torch.relu(self.fc1(x)))
        return y, y > 0, (y > 0).to(torch.uint8)


def test_a_model_with_bool_and_integer_outputs_is_checked():
    """The check subtracted the outputs to measure their difference: a bool output (a decision, a mask) made
    compaction raise torch's 'Subtraction ... with two bool tensors is not supported', and a uint8 output's
    difference wrapped (0 - 1 read as 255). Both are compared as float64 now."""
    torch.manual_seed(0)
    m = ScoresAndDecisions().eval()
    conn = first_units_dead(m, "fc1.weight", 3)
    x = torch.randn(2, 4)
    small = graphs.compact(m, conn, x)
    assert small.compaction["removed"]["fc1"] == 3
    assert small.compaction["max_abs_diff"] < 1e-5
    for a, b in zip(small(x), masked_output(m, conn, x)):
        assert torch.equal(a, b) if a.dtype in (torch.bool, torch.uint8) else torch.allclose(a, b, atol=1e-5)
    from graphs.compact_check import _diff

    assert _diff(torch.tensor([0, 2], dtype=torch.uint8), torch.tensor([1, 2], dtype=torch.uint8)) == 1.0
    assert _diff(torch.tensor([True, False]), torch.tensor([True, True])) == 1.0


def _half_model(dtype, width=128):
    """A small MLP in ``dtype`` with 5/16 of the units of its second layer pruned (constants folded into the last
    layer's bias), its connectome and an input."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)).eval()
    with torch.no_grad():
        m[4].weight.mul_(0.1)
        m[4].bias.mul_(0.1)
    m = m.to(dtype)
    conn = adaptive.Connectome(m)
    mask = conn.masks["2.weight"].clone()
    mask[:width * 5 // 16] = False
    conn.set_masks({"2.weight": mask})
    return m, conn, torch.randn(8, 64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_compaction_passes_the_default_check_at_the_dtypes_tolerance(dtype):
    """The default check's atol of 1e-4 (scaled by outputs below 1) failed every correct bfloat16 compaction and
    float16 ones: their rounding (eps 2^-7, 2^-10) differs legitimately in a compact copy. The default tolerance
    follows the dtype now, and the compaction reports it; explicit tolerances are taken as given, and where they
    fail on a difference of the dtype's rounding the message names it."""
    from graphs.compact_check import CompactionMismatchError

    m, conn, x = _half_model(dtype)
    small = graphs.compact(m, conn, x)
    c = small.compaction
    eps = torch.finfo(dtype).eps
    assert c["removed"]["2"] == 40 and next(small.parameters()).dtype == dtype
    assert (c["atol"], c["rtol"]) == (4 * eps, 0.0) and 0 < c["max_rel_diff"] <= 4 * eps
    assert c["tolerance"] == f"atol {4 * eps:.3g} (4 {str(dtype)[6:]} roundings) x each output's largest magnitude, rtol 0"
    with pytest.raises(CompactionMismatchError, match=f"{str(dtype)[6:]} rounding: compact a float64 copy"):
        graphs.compact(m, conn, x, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("error", ["wrong_unit", "doubled_weight", "dropped_bias"])
def test_a_wrong_half_precision_compaction_fails_the_default_check(dtype, error):
    """The half dtypes' looser default still refuses a compact copy that computes something else: a kept unit
    with another's weights, a weight doubled, a bias dropped."""
    from graphs.compact_check import CompactionMismatchError, _verify

    m, conn, x = _half_model(dtype, width=32)
    small = graphs.compact(m, conn, x)
    conn.apply()  # m is the masked model now
    with torch.no_grad():
        layers = [mod for mod in small.modules() if isinstance(mod, nn.Linear)]
        if error == "wrong_unit":
            layers[1].weight[0], layers[1].bias[0] = layers[1].weight[1].clone(), layers[1].bias[1].clone()
        elif error == "doubled_weight":
            layers[0].weight.mul_(2)
        else:
            layers[2].bias.zero_()
    with pytest.raises(CompactionMismatchError, match=r"x [\d.e-]+ \(the output's largest magnitude\)"):
        _verify(m, small, x, None, None)


class _Float32WithStoredBuffers(nn.Module):
    """A float32 MLP that holds a float16 and a float8 buffer it does not compute in (a stored statistic)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        self.register_buffer("stat", torch.zeros(3, dtype=torch.float16))
        self.register_buffer("codes", torch.zeros(3).to(torch.float8_e4m3fn))

    def forward(self, x):
        return self.net(x)


def test_a_float32_model_holding_half_buffers_keeps_the_float32_check():
    """The check's dtype was the coarsest of the parameters, buffers and inputs: a float32 model holding a float16
    buffer was checked at 4 float16 roundings of its outputs with rtol 0 (some 39 times looser than the 1e-4 it had
    before the dtype-aware defaults), and a float8 one at 4 float8 roundings (half the outputs' magnitude). The
    parameters decide now; a model with none in a compute dtype goes by its buffers, then its inputs."""
    from graphs.compact_check import CompactionMismatchError, _tolerances, _verify

    torch.manual_seed(0)
    m = _Float32WithStoredBuffers().eval()
    conn = first_units_dead(m, "net.0.weight", 5)
    x = torch.randn(4, 8)
    c = graphs.compact(m, conn, x).compaction
    assert (c["atol"], c["rtol"]) == (1e-4, 1e-4) and c["removed"]["net.0"] == 5
    assert c["tolerance"] == "atol 0.0001 (x each output's largest magnitude where below 1), rtol 0.0001"
    wrong = copy.deepcopy(m)
    with torch.no_grad():
        wrong.net[2].bias.add_(3e-3 * m(x).abs().max())  # 3e-3 of the outputs: within 4 float16 roundings
    with pytest.raises(CompactionMismatchError, match="atol 0.0001"):
        _verify(m, wrong, x, None, None)

    class Scale(nn.Module):  # no parameters: its buffer, then its input, decides
        def __init__(self, buffer):
            super().__init__()
            self.register_buffer("s", buffer)

        def forward(self, x):
            return x * self.s.to(x.dtype)

    half = torch.finfo(torch.float16).eps
    assert _tolerances(Scale(torch.ones(1, dtype=torch.float16)), torch.randn(2, 3), None, None)[:3] == (4 * half, 0.0, True)
    assert _tolerances(Scale(torch.ones(1)), torch.randn(2, 3).half(), None, None)[:3] == (1e-4, 1e-4, False)
    assert _tolerances(Scale(torch.ones(1).to(torch.float8_e4m3fn)), torch.randn(2, 3).half(), None, None)[:3] == (
        4 * half, 0.0, True)


class _LogitsAndAux(nn.Module):
    """Large logits beside a small auxiliary output, as a tuple or a dict."""

    def __init__(self, as_dict: bool):
        super().__init__()
        self.fc, self.aux, self.as_dict = nn.Linear(4, 3), nn.Linear(4, 2), as_dict

    def forward(self, x):
        y, a = self.fc(x), self.aux(x)
        return {"logits": y, "aux": a} if self.as_dict else (y, a)


@pytest.mark.parametrize("as_dict, name", [(False, "[1]"), (True, "['aux']")])
def test_a_wrong_small_output_beside_large_logits_is_named_and_not_called_rounding(as_dict, name):
    """The mismatch's hint measured the difference against the largest output of all: a small auxiliary output
    gone entirely wrong beside logits of a few hundred was called float32 rounding. Each output tensor is judged at
    its own scale now, and the message names the one that differs."""
    from graphs.compact_check import CompactionMismatchError, _verify

    torch.manual_seed(0)
    ref = _LogitsAndAux(as_dict).eval()
    with torch.no_grad():
        ref.fc.weight.mul_(1000)
        ref.aux.weight.mul_(1e-3)
        ref.aux.bias.mul_(1e-3)
    wrong = copy.deepcopy(ref)
    with torch.no_grad():
        wrong.aux.bias.neg_()  # a wrong aux output, by its own size (some 1e-3)
    with pytest.raises(CompactionMismatchError) as e:
        _verify(ref, wrong, torch.randn(2, 4), None, None)
    said = str(e.value)
    assert f"compaction changed output {name} of the 2 output tensors (max abs diff" in said
    assert "rounding" not in said
    assert float(re.search(r"with outputs up to ([\d.e-]+) in magnitude", said).group(1)) < 1e-2  # the aux's scale


def test_where_several_outputs_differ_the_one_that_differs_most_for_its_size_is_named():
    """Logits off by 1 in a few hundred and an auxiliary output gone entirely wrong both fail: the message names
    the auxiliary one (the larger difference for its size), not the first."""
    from graphs.compact_check import CompactionMismatchError, _verify

    torch.manual_seed(0)
    ref = _LogitsAndAux(as_dict=False).eval()
    with torch.no_grad():
        ref.fc.weight.mul_(1000)
        ref.aux.weight.mul_(1e-3)
        ref.aux.bias.mul_(1e-3)
    wrong = copy.deepcopy(ref)
    with torch.no_grad():
        wrong.fc.bias.add_(1.0)
        wrong.aux.bias.neg_()
    with pytest.raises(CompactionMismatchError, match=r"compaction changed output \[1\] of the 2 output tensors"):
        _verify(ref, wrong, torch.randn(2, 4), None, None)


def test_compact_keeps_which_shrunk_layers_are_frozen():
    """A shrunk Linear or convolution (a depthwise one too) is a new layer: its weight and bias required grad
    whatever the model's did, so a frozen backbone fine-tuned after compaction trained again (a BatchNorm kept its
    flags). They are kept; a bias the copy adds (dead inputs' constants folded in) takes the weight's flag."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4),
                          nn.ReLU(), nn.Flatten(), nn.Linear(64, 6), nn.ReLU(), nn.Linear(6, 5, bias=False),
                          nn.ReLU(), nn.Linear(5, 3)).eval()
    with torch.no_grad():
        model[0].bias[1] = -1.0  # its dead channel is relu(-1) = 0, and with it the depthwise channel reading it
        model[5].bias.fill_(0.5)  # its dead unit is relu(0.5), a constant folded into a bias layer 7 lacks
    for i in (0, 2, 5, 7):
        model[i].requires_grad_(False)
    conn = adaptive.Connectome(model)
    conn.set_masks({"0.weight": conn.masks["0.weight"].index_fill(0, torch.tensor([1]), False),
                    "5.weight": conn.masks["5.weight"].index_fill(0, torch.tensor([2]), False),
                    "7.weight": conn.masks["7.weight"].index_fill(0, torch.tensor([0]), False)})
    small = graphs.compact(model, conn, torch.randn(2, 3, 4, 4))
    assert small.compaction["removed"] == {"0": 1, "2": 1, "5": 1, "7": 1, "9": 0}
    assert model[7].bias is None and small.get_submodule("7").bias is not None  # folded in
    flags = {n: p.requires_grad for n, p in small.named_parameters()}
    assert flags == {n: n.startswith("9.") for n in flags} and len(flags) == 10


class LogOut(nn.Module):
    """Outputs that are NaN where the hidden sum is negative (a log): on the check's random inputs, some are."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))).log()


def test_outputs_nan_alike_in_the_model_and_the_copy_pass_the_check():
    """The check compared NaN with NaN as a NaN difference, and refused a correct copy of a model whose outputs are
    NaN at some places of its random inputs (a log; an attention query that the random key padding and attention
    masks hide entirely). A NaN at the same place agrees; one in the copy alone still fails."""
    from graphs.compact_check import _close, _diff, _scale
    torch.manual_seed(0)
    model = LogOut().double().eval()
    x = torch.randn(8, 4, dtype=torch.float64)
    with torch.no_grad():
        assert model(x).isnan().any() and not model(x).isnan().all()
    small = graphs.compact(model, first_units_dead(model, "a.weight", 2), x)
    assert small.compaction["units_removed"] == 2 and small.compaction["max_abs_diff"] < 1e-12
    nan = float("nan")
    a = torch.tensor([nan, 1.0, -3.0, float("inf")])
    assert _diff(a, a.clone()) == 0.0 and _scale(a) == float("inf") and _close(a, a.clone(), 1e-4, 1e-4)
    b = torch.tensor([0.0, 1.0, -3.0, float("inf")])
    assert not _close(a, b, 1e-4, 1e-4) and not _close(b, a, 1e-4, 1e-4)
    assert _diff(a, b) != _diff(a, b)  # NaN: the difference said as such


def test_a_copy_holding_a_folded_conv_loads_with_torch_alone_once_scripted(tmp_path):
    """docs/graphs.md said any copy with a plain forward(x) loads with torch alone, but a copy holding a FoldedConv
    (most compacted CNNs) pickles graphs' class: torch.load needs graphs importable. The docs say so now, and the
    way they give, torch.jit.script then torch.jit.save, loads in a process where graphs cannot be imported."""
    import subprocess
    import sys

    _, _, x, small = _folded_concat()
    assert isinstance(small.get_submodule("c"), graphs.FoldedConv)
    torch.save(small, tmp_path / "pickled.pt")
    torch.jit.save(torch.jit.script(small), tmp_path / "scripted.pt")
    torch.save(x, tmp_path / "x.pt")
    torch.save(small(x).detach(), tmp_path / "y.pt")
    code = ("import sys; sys.modules['graphs'] = None; import torch; d = sys.argv[1]\n"
            "y = torch.jit.load(d + '/scripted.pt')(torch.load(d + '/x.pt'))\n"
            "assert torch.equal(y, torch.load(d + '/y.pt'))\n"
            "try:\n    torch.load(d + '/pickled.pt', weights_only=False)\nexcept Exception as e:\n    print('needs graphs:', type(e).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "needs graphs" in out.stdout


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_a_unit_with_no_live_input_folds_into_the_next_layer_exactly_and_keeps_a_frozen_bias_frozen(kind):
    """A unit with no live input is a constant (its bias through the activation), folded into the next layer's bias:
    through an unpadded 3x3 convolution that is the sum over its kernel's positions (a mean passed every test:
    Linear layers, one position, cannot tell). A frozen bias beside a trainable weight stays frozen (it came back
    trainable from the weight's flag, unnoticed)."""
    import warnings

    torch.manual_seed(0)
    if kind == "linear":
        m, x = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)), torch.randn(5, 4)
    else:
        m, x = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3)), torch.randn(5, 2, 8, 8)
    with torch.no_grad():
        m[0].bias.fill_(0.5)
    m[2].bias.requires_grad_(False)
    conn = adaptive.Connectome(m)
    masks = {n: torch.ones_like(k) for n, k in conn.masks.items()}
    masks[conn.names[0]][0] = False  # unit (channel) 0 of the first layer: no live input
    conn.set_masks(masks)
    want = m(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = graphs.compact(m, conn, x, verify=False)
    torch.testing.assert_close(small(x), want, atol=1e-5, rtol=1e-5)
    last = [mod for mod in small.modules() if isinstance(mod, (nn.Linear, nn.Conv2d))][-1]
    assert not last.bias.requires_grad and last.weight.requires_grad
