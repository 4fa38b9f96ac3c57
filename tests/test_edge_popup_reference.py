"""The mask-only benchmark's outside references, checked against independent computations: edge-popup
(adaptive.baselines.edge_popup) against a straight-through reference written here with
torch.func.functional_call, the global-magnitude row against torch.nn.utils.prune.global_unstructured;
and edge-popup's refusals of training targets that do not fit the model's head."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from adaptive import Connectome
from adaptive.baselines.edge_popup import edge_popup
from recipes.benchmarks.mask_only import magnitude_masks


def net(seed=1):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    with torch.no_grad():  # statistics that matter: evaluation mode must be kept
        m[1].running_mean.normal_()
        m[1].running_var.uniform_(0.5, 2.0)
    return m


def data(y=None, n=64, bs=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 4, 4, generator=g)
    y = torch.randint(0, 5, (n,), generator=g) if y is None else y
    return (DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(3)),
            DataLoader(TensorDataset(x[:32], y[:32] % 5), batch_size=16))


def test_edge_popup_equals_an_independent_straight_through_reference():
    """Scores |w| / the layer's RMS weight, global top-k of exactly the target's count, dL/ds = dL/dw_eff * w
    (written here as w * (mask + s - s.detach())), Adam on a cosine per stage, BN in evaluation mode: the
    library's masks equal the reference's at both targets, and the weights and BN statistics stay bit-exact."""
    targets, passes, lr = [0.3, 0.6], 2, 0.05
    m = net()
    before = copy.deepcopy(m.state_dict())
    tr, ho = data()
    conn, snaps = edge_popup(m, tr, ho, targets, passes=passes, lr=lr, progress=False)
    ref = net().eval()
    names = [n for n, p in ref.named_parameters() if p.dim() > 1]
    w = {n: p.detach().clone() for n, p in ref.named_parameters() if n in names}
    s = {n: (w[n].abs() / w[n].pow(2).mean().sqrt()).requires_grad_(True) for n in names}
    total = sum(v.numel() for v in w.values())
    tr2, _ = data()
    batches = [b for _ in range(2 * passes * len(targets)) for b in tr2]  # the loader's passes in order
    steps = math.ceil(passes * len(tr2))

    def top(keep):
        flat = torch.cat([s[n].detach().reshape(-1) for n in names])
        on = torch.zeros(flat.numel(), dtype=torch.bool)
        on[torch.topk(flat, keep).indices] = True
        return dict(zip(names, (c.view(w[n].shape) for n, c in zip(names, on.split([w[n].numel() for n in names])))))

    for i, t in enumerate(targets):
        keep = total - round(t * total)
        opt = torch.optim.Adam(list(s.values()), lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
        for x, y in batches[i * steps:(i + 1) * steps]:
            mask = top(keep)
            weights = {n: w[n] * (mask[n].float() + s[n] - s[n].detach()) for n in names}
            opt.zero_grad()
            F.cross_entropy(functional_call(ref, weights, (x,)), y).backward()
            opt.step()
            sched.step()
        mask = top(keep)
        got = snaps[f"{t:g}"]
        assert got["removed"] == round(t * total)
        assert all(torch.equal(got["masks"][n], mask[n]) for n in names), t
    conn.set_masks({n: torch.ones_like(v) for n, v in conn.masks.items()})
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_magnitude_row_equals_global_unstructured_on_a_fresh_model_target_after_target():
    """The benchmark sets each target's mask on its model before the next target's is computed (from a copy
    of that masked model): each mask still equals global_unstructured (L1) on every conv and linear weight
    of the unmasked model."""
    model = net().eval()
    conn = Connectome(model, mode="mask_only")
    mods = {n: m for n, m in net().named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert sorted(mods) == sorted(conn.layers[n].module_name for n in conn.names)
    for t in (0.2, 0.5, 0.8):
        fresh = copy.deepcopy(mods)
        prune.global_unstructured([(m, "weight") for m in fresh.values()], pruning_method=prune.L1Unstructured, amount=t)
        masks = magnitude_masks(model, conn, t)
        assert all(torch.equal(masks[n], fresh[conn.layers[n].module_name].weight_mask.bool()) for n in conn.names), t
        conn.set_masks(masks)


@pytest.mark.parametrize("where, label, msg", [
    (40, 7, "labels go up to 7: labels are class indices 0..4"),  # a later batch (the third of four)
    (0, 9, "labels go up to 9: labels are class indices 0..4"),  # the first batch
    (40, -3, "the labels include -3"),
])
def test_edge_popup_refuses_a_training_label_beyond_the_head_naming_it_and_leaving_the_model(where, label, msg):
    """Edge-popup checked no training batch's labels: a label beyond the 5-class head was torch's bare
    IndexError "Target 7 is out of bounds" (on a GPU a device-side assert), whether in the first batch or a
    later one. Each batch is now checked before the loss, as mask-only's own loop does, naming the fix; the
    model comes back as it was given."""
    y = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(0))
    y[where] = label
    m = net()
    before = copy.deepcopy(m.state_dict())
    tr = DataLoader(TensorDataset(torch.randn(64, 3, 4, 4), y), batch_size=16)
    with pytest.raises(ValueError, match=msg) as info:
        edge_popup(m, tr, data()[1], [0.5], passes=1.0, progress=False)
    if where:
        assert "found in edge-popup's training batch 3 (target 0.5)" in " ".join(info.value.__notes__)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize("y, msg", [(torch.zeros(64, 1, dtype=torch.long), "takes one class index per example"),
                                    (torch.zeros(64, dtype=torch.int32), "takes class indices as int64")])
def test_edge_popup_names_training_targets_of_the_wrong_shape_or_type(y, msg):
    """(B, 1) labels and int32 labels reached torch's loss: "0D or 1D target tensor expected, multi-target
    not supported", "expected target dtype to be Long or Byte". Both are now named with their fix."""
    m = net()
    tr = DataLoader(TensorDataset(torch.randn(64, 3, 4, 4), y), batch_size=16)
    with pytest.raises(ValueError, match=msg):
        edge_popup(m, tr, data()[1], [0.5], passes=1.0, progress=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_edge_popup_runs_on_a_bfloat16_or_float64_model_as_the_optimisation_does(dtype):
    """The scores are float32; a bf16 (or float64) model's gradient times its weight was assigned to them as
    it was, which torch refused: "attempting to assign a gradient with dtype 'c10::BFloat16' to a tensor with
    grad_dtype 'Float'", where optimize_connectome runs. The product is now taken in float32."""
    m = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 5)).to(dtype)
    x, y = torch.randn(64, 12, dtype=dtype), torch.randint(0, 5, (64,))
    tr, ho = DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8)
    conn, snaps = edge_popup(m, tr, ho, [0.5], passes=1.0, progress=False)
    assert snaps["0.5"]["removed"] == 68
    assert all(torch.equal(conn.params[n], conn.original[n] * snaps["0.5"]["masks"][n]) for n in conn.names)


def test_edge_popup_warns_of_a_layer_no_gradient_reaches_and_learns_the_others():
    """A prunable layer the forward pass does not use (an auxiliary head) has no gradient: the score update
    multiplied None by its weights, a bare TypeError. Its scores now stay as they started, with a warning
    naming it and exclude=; an exclude= of it runs as before."""
    class Aux(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b, self.aux = nn.Linear(12, 8), nn.Linear(8, 5), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    x, y = torch.randn(64, 12), torch.randint(0, 5, (64,))
    tr, ho = DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8)
    with pytest.warns(UserWarning, match=r"no gradient reached 1 layer\(s\) in any batch \(aux: .*exclude=\['aux'\]"):
        _, snaps = edge_popup(Aux(), tr, ho, [0.5], passes=1.0, progress=False)
    _, alone = edge_popup(Aux(), tr, ho, [0.5], passes=1.0, progress=False, exclude="aux")
    assert snaps["0.5"]["removed"] == round(0.5 * (96 + 40 + 24))
    assert alone["0.5"]["removed"] == round(0.5 * (96 + 40))


def test_edge_popup_starting_scores_of_a_float16_model_are_computed_in_float32(monkeypatch):
    """The starting scores |w| / the layer's RMS weight were computed in the model's dtype, then made float32:
    on a float16 model a layer of small weights (RMS below about 2.4e-4, whose squares are below float16's
    smallest number) had a mean square of 0, so every score of that layer was inf (the top-k then kept that
    whole layer in any order and removed the other: at 50% the head here lost all its synapses). They are
    now computed in float32 from the weights (a float32 model's exactly as before): finite at every step,
    the first top-k of the float16 run that of the float32 scores of its weights."""
    import sys

    ep = sys.modules["adaptive.baselines.edge_popup"]
    seen = []
    topk = ep._topk_masks
    monkeypatch.setattr(ep, "_topk_masks", lambda scores, keep: seen.append({n: s.clone() for n, s in scores.items()})
                        or topk(scores, keep))
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 5))
    with torch.no_grad():
        m[0].weight.mul_(1e-3)  # RMS about 1.7e-4: squares below 6e-8
    m = m.half()
    w = {n: p.detach().float() for n, p in m.named_parameters() if p.dim() > 1}
    x, y = torch.randn(64, 12).half(), torch.randint(0, 5, (64,))
    tr, ho = DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8)
    _, snaps = edge_popup(m, tr, ho, [0.5], passes=1.0, lr=0.01, progress=False)
    assert seen and all(torch.isfinite(s).all() for step in seen for s in step.values())
    first = {n: (v.abs() / v.pow(2).mean().sqrt()).flatten() for n, v in w.items()}
    assert all(torch.allclose(seen[0][n].flatten(), first[n], rtol=1e-6) for n in first)
    live = [int(v.sum()) for v in snaps["0.5"]["masks"].values()]
    assert sum(live) == 68 and min(live) > 0, live


def test_edge_popup_a_layer_no_gradient_reaches_in_one_batch_is_not_stepped_with_an_older_gradient(monkeypatch):
    """A layer the forward uses in some batches only (an expert no example is routed to, a branch taken by
    the input) has no gradient in the others: its scores kept the gradient of the last batch that reached it,
    and Adam stepped them with it again at every batch that did not. Such a batch now leaves them as they are
    (no gradient, no step, as torch's optimisers do for a parameter without one); the batch that reaches it
    moves them."""
    import sys

    ep = sys.modules["adaptive.baselines.edge_popup"]
    seen = []
    topk = ep._topk_masks
    monkeypatch.setattr(ep, "_topk_masks", lambda scores, keep: seen.append(scores["aux.weight"].clone())
                        or topk(scores, keep))

    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b, self.aux = nn.Linear(12, 8), nn.Linear(8, 5), nn.Linear(8, 5)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(h) + self.aux(h) if x[0, -1] > 0 else self.b(h)  # the branch: the first batch only

    x, y = torch.randn(64, 12), torch.randint(0, 5, (64,))
    x[:, -1] = 0.0
    x[:16, -1] = 1.0
    tr, ho = DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8)
    edge_popup(Branch(), tr, ho, [0.5], passes=1.0, lr=0.05, progress=False)
    assert len(seen) == 5  # before each of the 4 steps, and the stage's snapshot
    assert not torch.equal(seen[0], seen[1])  # the first batch reached the branch
    assert all(torch.equal(seen[1], s) for s in seen[2:])  # the other three did not: no step


def test_edge_popup_refuses_a_held_out_label_beyond_the_head_before_any_training_batch():
    """Edge-popup read its first held-out batch only after its first stage (a whole stage of training batches,
    forward and backward), so a held-out label beyond the head was refused only then. The first held-out batch is
    now checked before any work, as optimize_connectome checks it: no training example is read, the model comes
    back as it was given (its mode too)."""
    read = []

    class Counted(TensorDataset):
        def __getitem__(self, i):
            read.append(i)
            return super().__getitem__(i)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 4, 4, generator=g), torch.randint(0, 5, (64,), generator=g)
    tr = DataLoader(Counted(x, y), batch_size=16)
    bad = y[:32].clone()
    bad[3] = 9
    ho = DataLoader(TensorDataset(x[:32], bad), batch_size=16)
    m = net().train()
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(ValueError, match="labels go up to 9: labels are class indices 0..4"):
        edge_popup(m, tr, ho, [0.2, 0.5], passes=1.0, progress=False)
    assert read == []  # no training batch drawn
    assert m.training and all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in m.parameters())


def test_edge_popup_target_0_keeps_the_dense_network_without_a_stage_of_its_own():
    """Target 0 ran a whole stage of training with every synapse kept: no mask could change, but the scores moved
    and the train loader moved on, so [0, 0.5] learned other masks at 0.5 than [0.5] alone (and read twice the
    training batches). It now keeps the start as its snapshot with no stage, as optimize_connectome's target 0
    does; on a sparse model, so does a target of its absent count."""
    read = []

    class Counted(TensorDataset):
        def __getitem__(self, i):
            read.append(i)
            return super().__getitem__(i)

    def run(targets, sparse=False):
        m = net()
        if sparse:
            with torch.no_grad():
                m[4].weight[:, :32] = 0.0  # 160 of 432 synapses absent
        tr, ho = data()
        read.clear()
        tr = DataLoader(Counted(*tr.dataset.tensors), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(3))
        out = edge_popup(m, tr, ho, targets, passes=1.0, progress=False)[1]
        return out, len(read) // 16  # training batches read

    with_0, n_with = run([0, 0.5])
    alone, n_alone = run([0.5])
    assert n_with == n_alone == 4
    assert with_0["0"]["removed"] == 0 and all(m.all() for m in with_0["0"]["masks"].values())
    assert all(torch.equal(with_0["0.5"]["masks"][n], alone["0.5"]["masks"][n]) for n in alone["0.5"]["masks"])
    only_0, n_0 = run(0)
    assert n_0 == 0 and only_0["0"]["holdout_loss"] == with_0["0"]["holdout_loss"]
    at_start, n_start = run([160, 0.5], sparse=True)
    sparse_alone, _ = run([0.5], sparse=True)
    assert n_start == 4 and at_start["160"]["removed"] == 160
    assert all(torch.equal(at_start["0.5"]["masks"][n], sparse_alone["0.5"]["masks"][n]) for n in sparse_alone["0.5"]["masks"])


def test_edge_popup_says_a_batch_left_out_had_every_label_ignored_not_nan_in_the_data():
    """A training batch whose every label is the ignored one (-100) has a cross-entropy of NaN (a mean over no
    label), so edge-popup left it out, but its warning blamed NaN or inf in the training data, which held none.
    It now says the batch had no label to score (read with the finite flag: no read of its own), and a whole pass
    of such batches is refused saying so; a batch of NaN data is still named as such."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 4, 4, generator=g), torch.randint(0, 5, (64,), generator=g)
    ho = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=16)
    for first, n in ((True, 2), (False, 1)):  # the first batch (checked on the host; drawn again at the 4th step) and
        y2 = y.clone()  # a later one (on the device)
        y2[(0 if first else 32):(16 if first else 48)] = -100
        with pytest.warns(UserWarning) as said:
            edge_popup(net(), DataLoader(TensorDataset(x, y2), batch_size=16), ho, [0.5], passes=1.0, progress=False)
        said = [str(w.message) for w in said if "left out" in str(w.message)]
        assert len(said) == 1 and f"left out {n} training batch(es)" in said[0], said
        assert f"{n} whose every label was the ignored one (-100), so no label was left to score" in said[0], said
        assert "NaN or inf" not in said[0], said
    x2 = x.clone()
    x2[16] = float("nan")
    y2 = y.clone()
    y2[32:48] = -100
    with pytest.warns(UserWarning) as said:  # one of each: each named
        edge_popup(net(), DataLoader(TensorDataset(x2, y2), batch_size=16), ho, [0.5], passes=1.0, progress=False)
    said = [str(w.message) for w in said if "left out" in str(w.message)]
    # (batches 1 and 2 of 4, each drawn twice in the 4 steps)
    assert "left out 4 training batch(es)" in said[0] and "2 whose loss was NaN or inf (check the training data" in said[0]
    assert "2 whose every label was the ignored one (-100)" in said[0], said
    m = net()
    before = copy.deepcopy(m.state_dict())
    y2 = y.clone()
    y2[:] = -100  # every batch: a whole pass in a row
    with pytest.raises(ValueError, match=r"NaN or inf on 4 batches in a row .a whole pass. at target 0.5, so no score "
                                         r"can be learned: 4 whose every label was the ignored one \(-100\), so no label was left") as refused:
        edge_popup(m, DataLoader(TensorDataset(x, y2), batch_size=16), ho, [0.5], passes=1.0, progress=False)
    assert "whose loss was NaN or inf" not in str(refused.value)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


class _NanGradOnMarked(torch.autograd.Function):
    """Identity forward; a backward of NaN where the batch held the marker (a finite loss, a NaN gradient)."""

    @staticmethod
    def forward(ctx, x, bad):
        ctx.bad = bad
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return (g * float("nan") if ctx.bad else g), None


class _NanGradNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = net()

    def forward(self, x):
        bad = bool((x == 7.0).any())  # (the marker: a test's own read)
        h = self.body[:4](x)
        return self.body[4](_NanGradOnMarked.apply(h, bad))


def test_edge_popup_leaves_out_a_batch_whose_gradient_is_nan_though_its_loss_is_finite():
    """A batch whose loss was finite but whose gradient held NaN (an overflow in the backward pass) went straight
    into Adam: its moments, and so every score of the layer, became NaN, the top-k arbitrary ever after, with no
    word said. It is now left out and another drawn in its place, as a NaN loss is (and as the mask-only path
    leaves out a window with a NaN gradient), named in the warning; the masks are exactly those of a run on the
    batches drawn in its place. A whole pass of such batches is refused, naming the gradient, the model untouched."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 4, 4, generator=g), torch.randint(0, 5, (64,), generator=g)
    ho = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=16)
    xb = x.clone()
    xb[16, 0, 0, 0] = 7.0  # batch 2 of 4 (unshuffled): drawn at step 2, left out, batches 3, 4, 1 drawn after it
    with pytest.warns(UserWarning) as said:
        conn, snaps = edge_popup(_NanGradNet(), DataLoader(TensorDataset(xb, y), batch_size=16), ho, [0.5],
                                 passes=1.0, progress=False)
    said = [str(w.message) for w in said if "left out" in str(w.message)]
    assert len(said) == 1 and "left out 1 training batch(es)" in said[0], said
    assert "1 whose loss was finite but whose gradient held NaN or inf" in said[0], said
    assert "whose loss was NaN or inf" not in said[0], said
    order = torch.cat([torch.arange(0, 16), torch.arange(32, 64), torch.arange(0, 16)])
    _, clean = edge_popup(_NanGradNet(), DataLoader(TensorDataset(x[order], y[order]), batch_size=16), ho, [0.5],
                          passes=1.0, progress=False)
    assert all(torch.equal(snaps["0.5"]["masks"][n], m) for n, m in clean["0.5"]["masks"].items())
    assert snaps["0.5"]["holdout_loss"] == clean["0.5"]["holdout_loss"]
    m = _NanGradNet()
    before = copy.deepcopy(m.state_dict())
    xb = x.clone()
    xb[::16, 0, 0, 0] = 7.0  # every batch
    with pytest.raises(ValueError, match=r"loss or gradient was NaN or inf on 4 batches in a row .a whole pass. at target "
                                         r"0.5, so no score can be learned: 4 whose loss was finite but whose gradient "
                                         r"held NaN or inf"):
        edge_popup(m, DataLoader(TensorDataset(xb, y), batch_size=16), ho, [0.5], passes=1.0, progress=False)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_edge_popup_counts_a_batch_left_out_for_its_gradient_once_though_it_had_no_label_to_score():
    """A batch whose every label was the ignored one, under a loss that sums (finite, 0, over no label), with a NaN
    gradient was counted both as unlabelled and as a gradient's: one batch given three reasons, among them "-1 whose
    loss was NaN or inf" (and a NaN mean blamed where the loss was 0). No label scored explains a NaN loss only: it is
    now counted once, for its gradient, in the warning and in a whole pass's refusal."""
    import functools

    summed = functools.partial(F.cross_entropy, reduction="sum")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 4, 4, generator=g), torch.randint(0, 5, (64,), generator=g)
    ho = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=16)
    xb, yb = x.clone(), y.clone()
    xb[16, 0, 0, 0], yb[16:32] = 7.0, -100  # batch 2 of 4: no label scored, a NaN gradient
    with pytest.warns(UserWarning) as said:
        edge_popup(_NanGradNet(), DataLoader(TensorDataset(xb, yb), batch_size=16), ho, [0.5], passes=1.0,
                   loss_fn=summed, progress=False)
    said = [str(w.message) for w in said if "left out" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("edge-popup left out 1 training batch(es) and drew others in their "
                                                 "place (no score learned from them): 1 whose loss was finite but "
                                                 "whose gradient held NaN or inf"), said
    assert "whose loss was NaN or inf" not in said[0] and "ignored one" not in said[0], said
    xb[::16, 0, 0, 0], yb[:] = 7.0, -100  # every batch
    yb[0] = 0  # (the first batch has a label to score: the first-batch check refuses one with none)
    with pytest.raises(ValueError) as refused:
        edge_popup(_NanGradNet(), DataLoader(TensorDataset(xb, yb), batch_size=16), ho, [0.5], passes=1.0,
                   loss_fn=summed, progress=False)
    assert str(refused.value).endswith("so no score can be learned: 4 whose loss was finite but whose gradient held "
                                       "NaN or inf (none of it reached the scores: check the training data for extreme "
                                       "values and the model's backward pass for an overflow, e.g. a half-precision "
                                       "layer or a sqrt or log at 0)"), str(refused.value)

def test_edge_popup_closes_its_progress_bar_when_the_run_raises(capsys):
    """Edge-popup's bar was closed only after the last target: an error in the run (here the user's loader, at
    its third batch) left it open, garbling the terminal and the error's message. It is closed however the run
    ends, and the error comes through intact."""
    from tqdm import tqdm

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 4, 4, generator=g), torch.randint(0, 5, (64,), generator=g)

    class Failing(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            if i == 40:
                raise RuntimeError("the loader's own error at example 40")
            return x[i], y[i]

    ho = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=16)
    opened = []
    init = tqdm.__init__

    def keep(self, *a, **k):
        init(self, *a, **k)
        opened.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tqdm, "__init__", keep)
        with pytest.raises(RuntimeError) as raised:
            edge_popup(net(), DataLoader(Failing(), batch_size=16), ho, [0.5], passes=1.0, progress=True)
    assert str(raised.value) == "the loader's own error at example 40"
    bars = [b for b in opened if b.desc == "edge-popup"]
    assert len(bars) == 1 and bars[0].n == 2, bars
    assert bars[0] not in getattr(tqdm, "_instances", set()), "the bar was left open"
    assert capsys.readouterr().err.endswith("\n")  # (its line ended: what follows starts on a line of its own)


def test_edge_popup_takes_optimize_connectomes_target_name():
    """optimize_connectome takes target=, edge_popup targets: edge_popup(..., target=0.5) failed with Python's
    'unexpected keyword argument', naming nothing. It is the same argument under either name; both, or neither,
    are refused naming the argument."""
    _, by_target = edge_popup(net(), *data(), target=[0.5], passes=0.5, progress=False)
    _, by_targets = edge_popup(net(), *data(), [0.5], passes=0.5, progress=False)  # fresh loaders: the same batches
    tr, ho = data()
    assert all(torch.equal(by_target["0.5"]["masks"][n], m) for n, m in by_targets["0.5"]["masks"].items())
    with pytest.raises(TypeError, match="both targets= and target="):
        edge_popup(net(), tr, ho, [0.5], target=[0.5], progress=False)
    with pytest.raises(TypeError, match=r"targets=\[0.5, 0.9\]"):
        edge_popup(net(), tr, ho, progress=False)


def test_a_target_of_zero_on_a_dense_network_trains_nothing_and_warns_of_nothing():
    """A target at the start (0 removed of a dense network) is a snapshot with no training of its own: counted as a
    stage to train, it said "no gradient reached" its layers (and counted it in the progress bar's total)."""
    import warnings

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    dl = DataLoader(TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,))), batch_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        edge_popup(m, dl, dl, targets=[0], progress=False)
    assert not [w for w in caught if "no gradient" in str(w.message)]
