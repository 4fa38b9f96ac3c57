"""Property-based tests of the diagnostics (gradient_by_depth, collinearity, knowledge_distribution) on
small random concatenation nets: each result is checked against an independent computation (depths
worked out from the net's description by hand, autograd gradients sliced by hand, weights removed by hand).

Settings from tests/_property.py: a few derandomized examples in CI, ``ADAPTIVE_PROPERTY_EXAMPLES=200``
explores more."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st
from torch import nn

import adaptive
from adaptive.diagnostics import collinearity, gradient_by_depth, knowledge_distribution
from adaptive.diagnostics.gradient_depth import weight_depths

from _property import prop

pytestmark = pytest.mark.filterwarnings("ignore:every input of .* carries a signal of depth")

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "none": lambda t: t}


class ConcatNet(nn.Module):
    """Signal 0 is the input; block i (signal i + 1) applies a layer to the concatenation of the earlier
    signals it reads, in the order given, plus, optionally, one earlier signal of its width added to its
    output (a residual); the classifier reads a concatenation of signals. ``conv``: channels of a 2-d map
    (3x3 convolutions, padding 1; a 1x1 classifier averaged over positions) instead of features."""

    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        in_w, blocks, head, self.act, self.conv, classes = spec
        widths = [in_w] + [b[1] for b in blocks]
        mk = (lambda i, o: nn.Conv2d(i, o, 3, padding=1)) if self.conv else nn.Linear
        self.blocks = nn.ModuleList(mk(sum(widths[r] for r in reads), w) for reads, w, _ in blocks)
        self.classifier = (nn.Conv2d if self.conv else nn.Linear)(*([sum(widths[r] for r in head), classes]
                                                                    + ([1] if self.conv else [])))

    def forward(self, x):
        signals = [x]
        for layer, (reads, _, add) in zip(self.blocks, self.spec[1]):
            out = ACTIVATIONS[self.act](layer(torch.cat([signals[r] for r in reads], 1)))
            signals.append(out if add is None else out + signals[add])
        out = self.classifier(torch.cat([signals[r] for r in self.spec[2]], 1))
        return out.mean((2, 3)) if self.conv else out


def reference_depths(spec):
    """Depth of each signal worked out from the description alone: the input 0, a block one more than
    the deepest signal it reads, or its residual's depth where that is deeper (the longest path)."""
    depths = [0]
    for reads, _, add in spec[1]:
        d = 1 + max(depths[r] for r in reads)
        depths.append(d if add is None else max(d, depths[add]))
    return depths


def classifier_input_depths(spec):
    """One depth per input unit of the classifier: each signal read, repeated over its width."""
    widths = [spec[0]] + [b[1] for b in spec[1]]
    d = reference_depths(spec)
    return torch.tensor([d[r] for r in spec[2] for _ in range(widths[r])])


@st.composite
def concat_specs(draw, conv=None):
    in_w = draw(st.integers(1, 3))
    widths, blocks = [in_w], []
    for i in range(draw(st.integers(1, 4))):
        # the previous signal always (every block reaches the classifier), the others in any order
        others = draw(st.lists(st.integers(0, i), max_size=2, unique=True))
        reads = [i] + [r for r in others if r != i]
        reads = draw(st.permutations(reads))
        w = draw(st.integers(1, 3))
        same = [s for s in range(i + 1) if widths[s] == w]
        add = draw(st.sampled_from([None] + same)) if same else None
        blocks.append((tuple(reads), w, add))
        widths.append(w)
    head = draw(st.lists(st.integers(0, len(blocks) - 1), max_size=3, unique=True))
    head = tuple(draw(st.permutations(head + [len(blocks)])))
    conv = draw(st.booleans()) if conv is None else conv
    return (in_w, tuple(blocks), head, draw(st.sampled_from(sorted(ACTIVATIONS))), conv, draw(st.integers(2, 3)))


def build(spec, seed):
    torch.manual_seed(seed)
    net = ConcatNet(spec).double()
    return net


def batches(spec, seed, n=3, size=4):
    g = torch.Generator().manual_seed(seed + 1)
    shape = (size, spec[0]) + ((3, 3) if spec[4] else ())
    return [(torch.randn(*shape, generator=g, dtype=torch.float64), torch.randint(0, spec[5], (size,), generator=g))
            for _ in range(n)]


def state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def same_state(net, before):
    after = net.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


# ---------------------------------------------------------------------------------------------- depths

@prop(12)
@given(spec=concat_specs(), seed=st.integers(0, 2**16))
def test_traced_depths_of_the_classifier_are_the_longest_paths_worked_out_by_hand(spec, seed):
    net = build(spec, seed)
    data = batches(spec, seed, n=1)
    bands = gradient_by_depth(net, data, layer="classifier", batches=1, train_mode=False)
    expect = weight_depths(net.classifier.weight.shape, classifier_input_depths(spec))
    assert torch.equal(bands.band, expect.reshape(-1))
    assert bands.depths == sorted(set(reference_depths(spec)[r] for r in spec[2]))


@prop(12)
@given(spec=concat_specs(), seed=st.integers(0, 2**16), block=st.integers(0, 3))
def test_traced_depths_of_an_inner_block_are_the_longest_paths_worked_out_by_hand(spec, seed, block):
    block = block % len(spec[1])
    net = build(spec, seed)
    widths = [spec[0]] + [b[1] for b in spec[1]]
    d = reference_depths(spec)
    per_unit = torch.tensor([d[r] for r in spec[1][block][0] for _ in range(widths[r])])
    bands = gradient_by_depth(net, batches(spec, seed, n=1), layer=f"blocks.{block}", batches=1, train_mode=False)
    assert torch.equal(bands.band, weight_depths(net.blocks[block].weight.shape, per_unit).reshape(-1))


class FlatHead(nn.Module):
    """A conv ConcatNet's concatenated signals flattened (channel-major) into a Linear classifier."""

    def __init__(self, spec, hw):
        super().__init__()
        self.body = ConcatNet(spec)
        widths = [spec[0]] + [b[1] for b in spec[1]]
        self.classifier = nn.Linear(sum(widths[r] for r in spec[2]) * hw * hw, spec[5])

    def forward(self, x):
        signals = [x]
        for layer, (reads, _, add) in zip(self.body.blocks, self.body.spec[1]):
            out = ACTIVATIONS[self.body.act](layer(torch.cat([signals[r] for r in reads], 1)))
            signals.append(out if add is None else out + signals[add])
        return self.classifier(torch.cat([signals[r] for r in self.body.spec[2]], 1).flatten(1))


@prop(8)
@given(spec=concat_specs(conv=True), seed=st.integers(0, 2**16))
def test_a_linear_reading_a_flattened_map_gets_each_channels_depth_at_every_position(spec, seed):
    torch.manual_seed(seed)
    net = FlatHead(spec, 3).double()
    bands = gradient_by_depth(net, batches(spec, seed, n=1), layer="classifier", batches=1, train_mode=False)
    per_feature = classifier_input_depths(spec).repeat_interleave(9)  # C x 3 x 3, channel-major
    assert torch.equal(bands.band, weight_depths(net.classifier.weight.shape, per_feature).reshape(-1))


# ------------------------------------------------------------------------------- gradients by depth

def autograd_grads(net, data, layer):
    weight = dict(net.named_parameters())[f"{layer}.weight"]
    out = []
    for x, y in data:
        (g,) = torch.autograd.grad(F.cross_entropy(net(x), y), [weight])
        out.append(g)
    return torch.stack(out)


@prop(12)
@given(spec=concat_specs(), seed=st.integers(0, 2**16), n=st.integers(1, 4), masked=st.booleans())
def test_bands_partition_the_autograd_gradient_of_the_layer(spec, seed, n, masked):
    net = build(spec, seed)
    data = batches(spec, seed, n=n)
    conn = None
    w = net.classifier.weight
    live = torch.ones_like(w, dtype=torch.bool)
    if masked:
        conn = adaptive.Connectome(net)
        live = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed)) < 0.6
        live.view(-1)[0] = True
        conn.set_masks({"classifier.weight": live})
    before = state(net)
    bands = gradient_by_depth(net, data, layer="classifier", batches=n, train_mode=False, conn=conn)
    assert same_state(net, before) and all(p.grad is None for p in net.parameters())
    g = autograd_grads(net, data, "classifier").abs()  # (batches, *shape), the masked weights at 0 already
    assert torch.allclose(bands.per_weight.double(), g.mean(0)[live], rtol=1e-5, atol=1e-30)
    band = weight_depths(w.shape, classifier_input_depths(spec))[live]
    assert torch.equal(bands.band, band)
    # the groups partition the (live) gradient: counts, and the sum of squares over the groups is the total
    rows = {r["depth"]: r for r in bands.table}
    assert sum(r["weights"] for r in bands.table) == int(live.sum()) and bands.pruned == int((~live).sum())
    assert sum(float((bands.per_weight.double()[bands.band == d] ** 2).sum()) for d in rows) == pytest.approx(
        float((g.mean(0)[live] ** 2).sum()), rel=1e-6)
    for d, r in rows.items():
        vals = g[:, live][:, band == d].reshape(-1)
        assert r["weights"] == int((band == d).sum()) and r["values"] == vals.numel()
        if vals.numel():
            assert r["mean"] == pytest.approx(float(vals.mean()), rel=1e-9, abs=1e-300)
            assert r["zero_fraction"] == pytest.approx(float((vals == 0).double().mean()))
            for q, key in ((0.25, "q1"), (0.5, "median"), (0.75, "q3")):
                assert r[key] == pytest.approx(float(torch.quantile(vals, q)), rel=0.03, abs=1e-300)
            assert r["q1"] <= r["median"] <= r["q3"]
        else:
            assert math.isnan(r["median"])


@prop(8)
@given(spec=concat_specs(conv=False), seed=st.integers(0, 2**16), perm_seed=st.integers(0, 100))
def test_bands_do_not_depend_on_the_order_of_the_batches(spec, seed, perm_seed):
    net = build(spec, seed)
    data = batches(spec, seed, n=4)
    order = torch.randperm(4, generator=torch.Generator().manual_seed(perm_seed)).tolist()
    a = gradient_by_depth(net, data, layer="classifier", batches=None, train_mode=False)
    b = gradient_by_depth(net, [data[i] for i in order], layer="classifier", batches=None, train_mode=False)
    assert torch.allclose(a.per_weight, b.per_weight, rtol=1e-6) and torch.equal(a.band, b.band)
    for ra, rb in zip(a.table, b.table):
        assert ra["values"] == rb["values"] and ra["median"] == pytest.approx(rb["median"], rel=1e-9, nan_ok=True)


# ------------------------------------------------------------------------------------- collinearity

def reference_collinearity(net, data):
    """Cosine and sign agreement of every weight from each batch's autograd gradient, by definition."""
    found = {n: p for n, p in net.named_parameters() if n.endswith("weight")}
    per = {n: [] for n in found}
    for x, y in data:
        gs = torch.autograd.grad(F.cross_entropy(net(x), y), list(found.values()))
        for n, g in zip(found, gs):
            per[n].append(g.reshape(-1))
    out = {}
    for n, gs in per.items():
        g = torch.stack(gs)  # (batches, weights)
        mean, rms = g.mean(0), g.square().mean(0).sqrt()
        cos = torch.where(rms > 0, mean.abs() / rms, torch.zeros_like(mean))
        pos, neg = (g > 0).double().mean(0), (g < 0).double().mean(0)
        agree = torch.where(mean > 0, pos, torch.where(mean < 0, neg, (pos + neg) / 2))
        out[n] = (cos, agree, mean.square(), g.var(0, unbiased=False))
    return out


@prop(12)
@given(spec=concat_specs(), seed=st.integers(0, 2**16), n=st.integers(2, 5))
def test_collinearity_is_the_definition_computed_from_autograd_gradients(spec, seed, n):
    net = build(spec, seed)
    data = batches(spec, seed, n=n)
    before = state(net)
    col = collinearity(net, data, train_mode=False)
    assert same_state(net, before) and all(p.grad is None for p in net.parameters())
    ref = reference_collinearity(net, data)
    assert set(col.cosine) == set(ref)
    for name, (cos, agree, g2, var) in ref.items():
        assert torch.allclose(col.cosine[name].double(), cos, rtol=1e-5, atol=1e-6), name
        assert torch.allclose(col.sign_agreement[name].double(), agree, atol=1e-6), name
        assert torch.allclose(col.full_grad_sq[name].double(), g2, rtol=1e-5, atol=1e-30), name
        assert torch.allclose(col.grad_var[name].double(), var, rtol=1e-4, atol=1e-12), name
        c = col.cosine[name]
        assert bool(((c >= 0) & (c <= 1)).all()) and bool(((col.sign_agreement[name] >= 0)
                                                            & (col.sign_agreement[name] <= 1)).all())
    assert col.batches == n and col.measured == sum(c.numel() for c in col.cosine.values())


@prop(10)
@given(spec=concat_specs(), seed=st.integers(0, 2**16), perm_seed=st.integers(0, 100), scale=st.floats(0.01, 100))
def test_collinearity_ignores_batch_order_repetition_and_loss_scale(spec, seed, perm_seed, scale):
    net = build(spec, seed)
    data = batches(spec, seed, n=3)
    order = torch.randperm(3, generator=torch.Generator().manual_seed(perm_seed)).tolist()
    a = collinearity(net, data, train_mode=False)
    for other in (collinearity(net, [data[i] for i in order], train_mode=False),
                  collinearity(net, [b for b in data for _ in range(2)], train_mode=False),
                  collinearity(net, data, train_mode=False, loss_fn=lambda o, y: scale * F.cross_entropy(o, y))):
        for name in a.cosine:
            assert torch.allclose(a.cosine[name], other.cosine[name], rtol=1e-4, atol=1e-6)
            assert torch.allclose(a.sign_agreement[name], other.sign_agreement[name])


@prop(8)
@given(spec=concat_specs(conv=False), seed=st.integers(0, 2**16), size=st.integers(1, 6))
def test_collinearity_recut_batches_are_those_cut_by_hand(spec, seed, size):
    net = build(spec, seed)
    data = batches(spec, seed, n=3, size=4)  # 12 samples
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    cut = [(x[i:i + size], y[i:i + size]) for i in range(0, 12 - size + 1, size)]
    if size == 1 or len(cut) < 2:
        return
    a = collinearity(net, data, batch_size=size, train_mode=False)
    b = collinearity(net, cut, train_mode=False)
    assert a.batches == len(cut)
    for name in a.cosine:
        assert torch.allclose(a.cosine[name], b.cosine[name], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ knowledge distribution

def removed_by_hand(net, k, live=None):
    """A copy of ``net`` with the ``k`` (live) prunable weights of smallest magnitude set to 0."""
    work = copy.deepcopy(net)
    weights = [p for n, p in work.named_parameters() if n.endswith("weight")]
    flat = torch.cat([p.detach().abs().reshape(-1) for p in weights])
    alive = torch.ones_like(flat, dtype=torch.bool) if live is None else live
    flat = torch.where(alive, flat, torch.full_like(flat, math.inf))
    drop = torch.zeros_like(alive)
    drop[flat.argsort(stable=True)[:k]] = True
    drop |= ~alive
    with torch.no_grad():
        for p, d in zip(weights, drop.split([p.numel() for p in weights])):
            p[d.view(p.shape)] = 0
    return work


def loss_acc(net, data):
    with torch.no_grad():
        x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
        out = net(x)
        return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


@prop(10)
@given(spec=concat_specs(), seed=st.integers(0, 2**16), counts=st.lists(st.integers(0, 10**6), max_size=5),
       pruned=st.booleans())
def test_each_point_of_the_curve_is_the_net_with_those_weights_removed_by_hand(spec, seed, counts, pruned):
    net = build(spec, seed)
    data = batches(spec, seed, n=2)
    conn, live = None, None
    if pruned:
        conn = adaptive.Connectome(net)
        g = torch.Generator().manual_seed(seed)
        conn.set_masks({n: torch.rand(m.shape, generator=g) < 0.7 for n, m in conn.masks.items()})
        live = torch.cat([m.reshape(-1) for m in conn.masks.values()])
        if not bool(live.any()):
            return
    total = sum(p.numel() for n, p in net.named_parameters() if n.endswith("weight"))
    alive = total if live is None else int(live.sum())
    counts = [c % (alive + 1) for c in counts] + ([alive] if counts else [])
    before = state(net)
    curve = knowledge_distribution(net, data, order_loader=data, estimator="magnitude", counts=counts + counts,
                                   noise_floor=1e-3, conn=conn)
    assert same_state(net, before)
    rows = list(curve.table)
    assert [r["removed"] for r in rows] == sorted(set([0] + counts))  # duplicates once, the intact net first
    assert curve.total == alive and curve.pruned_before == (0 if live is None else int((~live).sum()))
    base_loss, base_acc = loss_acc(net if live is None else removed_by_hand(net, 0, live), data)
    assert rows[0]["loss"] == pytest.approx(base_loss, rel=1e-9) and rows[0]["accuracy"] == pytest.approx(base_acc)
    for r in rows:
        loss, acc = loss_acc(removed_by_hand(net, r["removed"], live), data)
        assert r["loss"] == pytest.approx(loss, rel=1e-9, abs=1e-12), r["removed"]
        assert r["accuracy"] == pytest.approx(acc) and r["accuracy_drop"] == pytest.approx(base_acc - acc)
        assert r["fraction"] == pytest.approx(r["removed"] / alive)


@prop(6)
@given(spec=concat_specs(), seed=st.integers(0, 2**16))
def test_removing_every_weight_leaves_the_biases_alone(spec, seed):
    net = build(spec, seed)
    data = batches(spec, seed, n=1)
    total = sum(p.numel() for n, p in net.named_parameters() if n.endswith("weight"))
    curve = knowledge_distribution(net, data, order_loader=data, counts=[total])
    x, y = data[0]
    expect = net.classifier.bias.detach().expand(len(y), -1)
    assert list(curve.table)[-1]["loss"] == pytest.approx(float(F.cross_entropy(expect, y)), rel=1e-9)


# ------------------------------------------------------------------------------------------ bad input

SPEC = (2, (((0,), 2, None), ((0, 1), 2, 1)), (0, 1, 2), "relu", False, 3)


def test_an_empty_loader_is_refused_by_every_diagnostic_naming_it_and_the_model_is_unchanged():
    net = build(SPEC, 0)
    before = state(net)
    for call in (lambda: gradient_by_depth(net, [], layer="classifier"),
                 lambda: collinearity(net, []),
                 lambda: knowledge_distribution(net, [], order_loader=batches(SPEC, 0), counts=[1])):
        with pytest.raises(ValueError, match="(?i)empty|no batch|yielded no|no examples|holds no"):
            call()
        assert same_state(net, before)


def test_a_layer_that_does_not_exist_is_refused_naming_the_layers_there_are():
    net = build(SPEC, 0)
    with pytest.raises((KeyError, ValueError), match="classifer") as e:
        gradient_by_depth(net, batches(SPEC, 0), layer="classifer")
    assert "classifier" in str(e.value)


def test_a_model_without_prunable_layers_is_refused_naming_the_problem():
    net = nn.Sequential(nn.Flatten(), nn.Softmax(1)).double()
    data = batches(SPEC, 0)
    with pytest.raises(ValueError, match="(?i)prunable"):
        collinearity(net, data)
    with pytest.raises(ValueError, match="(?i)prunable"):
        knowledge_distribution(net, data, order_loader=data, counts=[0])


@pytest.mark.parametrize("layer", ["blocks.0", "classifier"])
def test_a_nan_weight_is_refused_by_name_and_the_model_is_unchanged(layer):
    net = build(SPEC, 0)
    with torch.no_grad():
        dict(net.named_parameters())[f"{layer}.weight"].view(-1)[0] = math.nan
    before = state(net)
    data = batches(SPEC, 0)
    for call in (lambda: gradient_by_depth(net, data, layer="classifier", train_mode=False),
                 lambda: collinearity(net, data, train_mode=False)):
        with pytest.raises(ValueError, match="(?i)nan|finite"):
            call()
        assert all(torch.equal(a, b) or (a.isnan() == b.isnan()).all() and torch.equal(a.nan_to_num(), b.nan_to_num())
                   for a, b in zip(net.state_dict().values(), before.values()))


# ------------------------------------------------------------------------ regressions found by the above

def test_gradient_by_depth_refuses_a_layers_bias_rather_than_measuring_its_weight():
    """``classifier.bias`` was taken as the layer ``classifier``, whose weight was measured in its place."""
    net = build(SPEC, 0)
    with pytest.raises(ValueError, match=r"'bias'.*weight.*pass 'classifier'"):
        gradient_by_depth(net, batches(SPEC, 0), layer="classifier.bias", train_mode=False)


def test_knowledge_distribution_refuses_a_model_with_nan_weights_naming_them():
    """A NaN weight gave a curve of NaN losses (and a magnitude order that ranks the NaN anywhere), no error."""
    net = build(SPEC, 0)
    with torch.no_grad():
        net.blocks[1].weight[0, 0] = math.nan
    data = batches(SPEC, 0)
    with pytest.raises(ValueError, match=r"NaN or inf values in blocks\.1\.weight.*load finite weights"):
        knowledge_distribution(net, data, order_loader=data, counts=[1])
    assert bool(net.blocks[1].weight.isnan()[0, 0]) and int(net.blocks[1].weight.isnan().sum()) == 1


def test_knowledge_distribution_refuses_evaluation_data_whose_intact_loss_is_nan():
    """NaN inputs in the evaluation data gave a curve of NaN loss increases, no error."""
    net = build(SPEC, 0)
    data = batches(SPEC, 0)
    bad = [(torch.full_like(data[0][0], math.nan), data[0][1])]
    with pytest.raises(ValueError, match="intact network's loss on the evaluation data is nan.*check the evaluation data"):
        knowledge_distribution(net, bad, order_loader=data, counts=[1])


@pytest.mark.parametrize("counts", [[2.5], [True, 3]])
def test_knowledge_distribution_refuses_counts_that_are_not_whole_numbers(counts):
    """2.5 was cut to 2 and True counted as 1 weight."""
    net = build(SPEC, 0)
    data = batches(SPEC, 0)
    with pytest.raises(ValueError, match="counts must be whole numbers"):
        knowledge_distribution(net, data, order_loader=data, counts=counts)


@pytest.mark.parametrize("size", [2.5, True])
def test_collinearity_refuses_a_batch_size_that_is_not_a_whole_number(size):
    """2.5 failed deep inside the re-cut with a TypeError about slice indices; True re-cut into batches of 1."""
    net = build(SPEC, 0)
    with pytest.raises(ValueError, match="batch_size must be a whole number"):
        collinearity(net, batches(SPEC, 0), batch_size=size)


# --------------------------------------------------------------- regressions found reviewing the above

class MaskedAttention(nn.Module):
    """A causal self-attention over the features with its mask a buffer of -inf above the diagonal (as
    many transformers register it): a legitimate infinite buffer, the loss finite."""

    def __init__(self, width=4, classes=3):
        super().__init__()
        self.fc, self.head = nn.Linear(width, width), nn.Linear(width, classes)
        self.register_buffer("causal", torch.full((width, width), -math.inf).triu(1))

    def forward(self, x):
        attend = torch.softmax(x[:, None, :] + self.causal, -1)
        return self.head(torch.relu(self.fc((attend @ x[:, :, None]).squeeze(-1))))


def test_knowledge_distribution_measures_a_model_with_an_attention_mask_buffer_of_minus_inf():
    """The non-finite refusal read buffers too, and refused a causal mask of -inf as a damaged model."""
    torch.manual_seed(0)
    net = MaskedAttention().double()
    data = [(torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))) for _ in range(2)]
    curve = knowledge_distribution(net, data, order_loader=data, estimator="magnitude", counts=[3])
    rows = list(curve.table)
    assert [r["removed"] for r in rows] == [0, 3]
    assert rows[0]["loss"] == pytest.approx(loss_acc(net, data)[0], rel=1e-9)
    assert rows[1]["loss"] == pytest.approx(loss_acc(removed_by_hand(net, 3), data)[0], rel=1e-9)


def test_knowledge_distribution_refuses_a_nan_running_statistic_through_the_intact_loss_naming_buffers():
    """A NaN buffer is not refused by name (buffers may hold -inf), but the NaN loss it gives is, naming buffers."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double().eval()
    net[1].running_var[0] = math.nan
    data = [(torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,)))]
    with pytest.raises(ValueError, match="loss on the evaluation data is nan.*buffer.*check the evaluation data and "
                                         "the model's buffers"):
        knowledge_distribution(net, data, order_loader=data, counts=[1])
    assert bool(net[1].running_var.isnan()[0])


@pytest.mark.parametrize("counts", [lambda: (c for c in [1, 3, 5]), lambda: iter([5, 1, 3]),
                                    lambda: [1.0, 3.0, 5.0], lambda: __import__("numpy").linspace(1, 5, 3)])
def test_knowledge_distribution_takes_counts_from_a_generator_and_as_whole_floats(counts):
    """The whole-number check read a generator to its end, which then reached the measurement empty (only the
    intact network measured, no error); and it refused np.linspace's whole floats (5.0), taken before."""
    net = build(SPEC, 0)
    data = batches(SPEC, 0)
    curve = knowledge_distribution(net, data, order_loader=data, estimator="magnitude", counts=counts())
    assert [r["removed"] for r in curve.table] == [0, 1, 3, 5]
    assert all(type(r["removed"]) is int for r in curve.table)


# ------------------------------------------- weight sharing: each call's part against autograd by hand

class SharedLoop(nn.Module):
    """A stem, then one layer applied ``calls`` times in a recurrent-style loop (optionally residual, a
    3x3 convolution where ``conv``); ``unshare()`` gives each call its own copy of the layer (same values),
    whose gradients are the parts of the shared weight's gradient, call by call."""

    def __init__(self, calls, res, conv, width=2):
        super().__init__()
        self.calls, self.res, self.conv, self.copies = calls, res, conv, None
        self.stem = nn.Conv2d(2, width, 3, padding=1) if conv else nn.Linear(2, width)
        self.shared = nn.Conv2d(width, width, 3, padding=1) if conv else nn.Linear(width, width)
        self.head = nn.Linear(width, 3)

    def unshare(self):
        self.copies = nn.ModuleList(copy.deepcopy(self.shared) for _ in range(self.calls))
        return self

    def forward(self, x):
        h = torch.tanh(self.stem(x))
        for t in range(self.calls):
            o = torch.tanh((self.shared if self.copies is None else self.copies[t])(h))
            h = h + o if self.res else o
        return self.head(h.mean((2, 3)) if self.conv else h)


@prop(6)
@given(calls=st.integers(1, 3), res=st.booleans(), conv=st.booleans(), seed=st.integers(0, 2**16))
def test_a_layer_called_in_a_loop_has_each_calls_gradient_in_the_band_of_its_depth(calls, res, conv, seed):
    torch.manual_seed(seed)
    net = SharedLoop(calls, res, conv).double()
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(3, 2, *((3, 3) if conv else ()), generator=g, dtype=torch.float64),
             torch.randint(0, 3, (3,), generator=g)) for _ in range(2)]
    bands = gradient_by_depth(net, data, layer="shared", batches=2, train_mode=False)
    apart = copy.deepcopy(net).unshare()
    expect = torch.stack([torch.stack(torch.autograd.grad(F.cross_entropy(apart(x), y), [c.weight for c in apart.copies]))
                          for x, y in data]).abs().mean(0)  # (calls, *shape)
    assert bands.calls == calls and bands.depths == list(range(1, calls + 1))
    assert torch.allclose(bands.per_weight.double(), expect.reshape(-1), rtol=1e-6, atol=1e-30)
    shape = net.shared.weight.shape
    assert torch.equal(bands.band, torch.stack([weight_depths(shape, torch.full((shape[1],), k + 1))
                                                for k in range(calls)]).reshape(-1))


class ReentrantCheckpoint(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.fc, self.head = nn.Linear(2, 3), nn.Linear(5, 3), nn.Linear(3, 3)

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint
        h = checkpoint(lambda z: torch.tanh(self.fc(z)), torch.cat([x, torch.tanh(self.stem(x))], 1), use_reentrant=True)
        return self.head(h)


def test_gradient_by_depth_under_a_reentrant_checkpoint_names_use_reentrant_false():
    """A layer inside a reentrant torch.utils.checkpoint (its forward runs under no_grad) was refused as 'called
    only under torch.no_grad()', the fix 'measure a layer the forward runs with grad enabled': not the way out."""
    net = ReentrantCheckpoint().double()
    data = batches(SPEC, 0)
    with pytest.raises(ValueError, match="use_reentrant=False"):
        gradient_by_depth(net, data, layer="fc", train_mode=False)
    assert all(p.grad is None for p in net.parameters())


def test_band_scaler_refusing_a_functional_read_of_a_shared_weight_names_it():
    """A weight read by its module and by F.linear(x, layer.weight) at another depth: the scaler's refusal spoke
    only of depths= rows and train-mode calls."""
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.mid, self.shared, self.head = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 3)

        def forward(self, x):
            h = torch.tanh(self.stem(x))
            return self.head(torch.tanh(self.shared(h)) + F.linear(torch.tanh(self.mid(h)), self.shared.weight))

    net = Functional().double()
    x, y = batches(SPEC, 0)[0]
    scaler = adaptive.diagnostics.BandGradientScaler(net, layers=["shared"], example=x)
    try:
        with pytest.raises(ValueError, match=r"F\.linear\(x, layer\.weight\)"):
            F.cross_entropy(net(x), y).backward()
    finally:
        scaler.remove()
