"""adaptive.clipping.clip_gradients: the gradient norm of a masked network is measured on the live
gradients the optimizer uses, so the clip factor does not depend on whether ``.grad`` still holds
the dense gradient (an observation step); every gradient is scaled by it; train_one_epoch clips with
it once per optimizer step and records the norms."""
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptive import Connectome, clip_gradients
from adaptive.training import TrainState, train_one_epoch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _training import cpu_accelerator, reset_accelerate  # noqa: E402

torch.set_num_threads(1)


accelerator = pytest.fixture(cpu_accelerator)


def masked_net(seed=0):
    """A tiny MLP (biases: parameters outside the connectome) with half of its synapses pruned."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    conn = Connectome(model)
    g = torch.Generator().manual_seed(seed)
    conn.set_masks({n: torch.rand(m.shape, generator=g) < 0.5 for n, m in conn.masks.items()})
    return model, conn


def test_the_clip_factor_is_the_same_whether_grad_is_dense_at_pruned_positions_or_not():
    """.grad of a masked weight holds nonzero values at pruned positions at an observation step and
    zeros at the others: the clipped live gradients, and the norm returned, are the same; torch's own
    clip_grad_norm_ on masked copies gives them too. The dense values are scaled by the same factor."""
    model, conn = masked_net()
    g = torch.Generator().manual_seed(1)
    dense = {n: torch.randn(p.shape, generator=g) * 3 for n, p in model.named_parameters()}
    masks = {n: conn.masks[n] for n in conn.params}

    def with_grads(masked: bool):
        for n, p in model.named_parameters():
            p.grad = dense[n] * masks[n] if masked and n in masks else dense[n].clone()
        return model

    norms, live = [], []
    for masked in (False, True):
        norms.append(clip_gradients(with_grads(masked).parameters(), 1.0, conn))
        live.append({n: p.grad * masks[n] if n in masks else p.grad.clone() for n, p in model.named_parameters()})
    holders = []  # the reference: torch's clip_grad_norm_ on masked copies
    for n, d in dense.items():
        h = nn.Parameter(torch.zeros_like(d))
        h.grad = d * masks[n] if n in masks else d.clone()
        holders.append((n, h))
    ref_norm = torch.nn.utils.clip_grad_norm_([h for _, h in holders], 1.0)
    assert float(norms[0]) > 1.0  # it clips
    assert torch.equal(norms[0], norms[1]) and torch.equal(norms[0], ref_norm)
    for n, h in holders:
        assert torch.equal(live[0][n], live[1][n]) and torch.equal(live[0][n], h.grad), n
    # the dense gradient (what an observer reads) is scaled by the same factor, pruned positions included
    with_grads(False)
    clip_gradients(model.parameters(), 1.0, conn)
    factor = 1.0 / (float(ref_norm) + 1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, dense[n] * factor, rtol=1e-6, atol=0)
        if n in masks:
            assert (p.grad[~masks[n]] != 0).all()


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_an_inf_or_nan_at_a_pruned_position_of_a_dense_gradient_does_not_reach_the_norm(bad):
    """The live gradient was taken as grad * mask, and 0 * inf = NaN: a non-finite value where no
    synapse is (a dense gradient at an observation step) made the norm NaN and the clip factor
    NaN, which turned every live gradient NaN. It is now masked exactly: the norm is the live one."""
    model, conn = masked_net()
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 3
    conn.params["0.weight"].grad[~conn.masks["0.weight"]] = bad
    ref = torch.nn.utils.get_total_norm([p.grad.where(conn.masks[n], 0.0) if n in conn.masks else p.grad
                                         for n, p in model.named_parameters()])
    total = clip_gradients(model.parameters(), 1.0, conn)
    assert torch.isfinite(total) and torch.equal(total, ref)
    for n, p in model.named_parameters():
        assert bool(torch.isfinite(p.grad[conn.masks[n]] if n in conn.masks else p.grad).all()), n


def test_a_norm_below_the_limit_changes_nothing_and_a_bad_limit_is_refused():
    model, conn = masked_net()
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    before = [p.grad.clone() for p in model.parameters()]
    clip_gradients(model.parameters(), 10.0, conn)
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))
    for bad in (0.0, -1.0, math.nan, math.inf, "abc", None):
        with pytest.raises(ValueError, match="max_norm must be a finite number > 0"):
            clip_gradients(model.parameters(), bad, conn)


@pytest.mark.parametrize("with_conn", [False, True])
def test_a_single_tensor_is_clipped_as_torch_clips_it(with_conn):
    # iterated as a collection, a tensor gave its rows (none with a .grad): nothing was clipped and
    # the norm returned was 0
    model, conn = masked_net()
    w = model[0].weight
    dense = torch.randn(w.shape, generator=torch.Generator().manual_seed(1)) * 3
    live = dense * conn.masks["0.weight"] if with_conn else dense
    ref = nn.Parameter(torch.zeros_like(w))
    ref.grad = live.clone()
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    w.grad = live.clone()
    norm = clip_gradients(w, 1.0, conn if with_conn else None)
    assert float(ref_norm) > 1.0 and torch.equal(norm, ref_norm)
    assert torch.equal(w.grad, ref.grad)


def batches(n, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(5, 6, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("observed", [True, False], ids=["observation step", "masked in backward"])
def test_one_sgd_step_moves_each_weight_by_lr_times_its_clipped_masked_gradient(accelerator, observed):
    """Against a hand computation: the gradient of the batch, masked copies clipped by torch's
    clip_grad_norm_, w - lr * that. At an observation step the observer reads the dense gradient
    clipped by the same factor; otherwise backward masks the gradient before the clip."""
    model, conn = masked_net()
    (x, y), = batches(1)
    lr, limit = 0.5, 0.05
    ref = {n: p.detach().clone() for n, p in model.named_parameters()}
    F.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    holders = {}
    for n, gr in grads.items():
        holders[n] = h = nn.Parameter(torch.zeros_like(gr))
        h.grad = gr * conn.masks[n] if n in conn.params else gr.clone()
    norm = torch.nn.utils.clip_grad_norm_(list(holders.values()), limit)
    assert float(norm) > limit  # the reference clips
    expect = {n: ref[n].add(holders[n].grad, alpha=-lr) for n in ref}

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0)
    conn.attach(opt)
    seen = []
    if observed:
        conn.add_observer(lambda: seen.append({n: p.grad.clone() for n, p in conn.params.items()}))
    state = TrainState()
    train_one_epoch(accelerator, model, opt, [(x, y)], state, conn=conn, log_every=1, max_grad_norm=limit)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expect[n], rtol=0, atol=1e-7)
        if n in conn.params:
            assert (p[~conn.masks[n]] == 0).all()
    if observed:  # the dense gradient, clipped by the live gradient's factor
        factor = limit / (float(norm) + 1e-6)
        for n, got in seen[0].items():
            torch.testing.assert_close(got, grads[n] * factor, rtol=1e-6, atol=1e-9)
            assert (got[~conn.masks[n]] != 0).any()
    row = state.metrics[-1]
    assert row["grad_norm"] == pytest.approx(float(norm), rel=1e-6) and row["clipped"] == 1.0


def test_the_loop_trains_alike_whether_gradients_are_masked_in_backward_or_at_the_step(accelerator):
    """An observer active every other step: with the backward hooks (masked gradients at the steps
    between observations) and without them (dense gradients at every clip), a run with clipping is
    bit-identical; a norm taken on .grad as it stands would clip the two by other factors."""
    data = batches(8)
    runs = []
    for in_backward in (True, False):
        model, conn = masked_net()
        conn.mask_in_backward = in_backward
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        conn.attach(opt)
        state = TrainState()
        conn.add_observer(lambda: None, active=lambda: state.step % 2 == 0)
        train_one_epoch(accelerator, model, opt, data, state, conn=conn, log_every=4, max_grad_norm=0.05)
        runs.append((model, state))
    (a, sa), (b, sb) = runs
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert [r["grad_norm"] for r in sa.metrics] == [r["grad_norm"] for r in sb.metrics]
    assert all(r["clipped"] == 1.0 and r["grad_norm"] > 0.05 for r in sa.metrics)


def test_gradient_accumulation_clips_once_per_step_on_the_accumulated_gradient():
    """Two accumulated batches of 5 clip as one batch of 10 (the same weights, to rounding): the
    clip comes after the group's last backward, not after each."""
    from accelerate import Accelerator

    data = batches(4)
    examples = torch.utils.data.TensorDataset(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))
    out = []
    for k, batch in ((1, 10), (2, 5)):
        reset_accelerate()
        acc = Accelerator(cpu=True, gradient_accumulation_steps=k)
        model, conn = masked_net()
        opt, loader = acc.prepare(torch.optim.SGD(model.parameters(), lr=0.5),
                                  torch.utils.data.DataLoader(examples, batch_size=batch))
        conn.attach(opt)
        state = TrainState()
        train_one_epoch(acc, model, opt, loader, state, conn=conn, log_every=1, max_grad_norm=0.05)
        assert state.step == 2
        out.append((model, state))
    reset_accelerate()
    (one, s1), (two, s2) = out
    for p, q in zip(one.parameters(), two.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert [r["grad_norm"] for r in s2.metrics] == pytest.approx([r["grad_norm"] for r in s1.metrics], rel=1e-5)


def test_a_clip_on_a_batch_accumulated_without_a_step_is_refused_and_clips_nothing():
    """Inside a group of accumulated batches .grad holds part of the group's gradient: clipping it
    scales those batches by their own partial norm (a run other than one clip per step, silently), so
    a call given the accelerator there is refused, the gradient untouched; at the group's last batch
    it clips."""
    from accelerate import Accelerator

    reset_accelerate()
    try:
        acc = Accelerator(cpu=True, gradient_accumulation_steps=2)
        model, conn = masked_net()
        opt = acc.prepare(torch.optim.SGD(model.parameters(), lr=0.5))
        conn.attach(opt)
        for i, (x, y) in enumerate(batches(2)):
            with acc.accumulate(model):
                acc.backward(F.cross_entropy(model(x), y))
                before = [p.grad.clone() for p in model.parameters()]
                if i == 0:
                    with pytest.raises(RuntimeError, match=r"accumulates without an optimizer step.*nothing was "
                                                           r"clipped.*if accelerator.sync_gradients: clip_gradients"):
                        clip_gradients(model.parameters(), 0.05, conn, accelerator=acc)
                    assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before))
                else:
                    assert float(clip_gradients(model.parameters(), 0.05, conn, accelerator=acc)) > 0.05
                    assert not all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before))
                opt.step()
                opt.zero_grad()
    finally:
        reset_accelerate()


def test_a_loop_state_saved_before_the_norm_columns_loads_with_empty_ones():
    """A checkpoint's window of loss, correct and examples (written before clipping was recorded)
    loads with the norm sums at zero."""
    state = TrainState()
    state.load_state_dict({"step": 3, "epoch": 0, "window": [6.0, 2.0, 10.0]})
    assert state.window == [6.0, 2.0, 10.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("offset, expect", [(0.0, 1.0), (5e-7, 1.0), (-5e-7, 1.0), (1e-3, 0.0)],
                         ids=["limit equal to the norm", "limit a hair above it", "limit a hair below it", "limit well above it"])
def test_clipped_counts_the_steps_torch_scales_down_also_within_its_epsilon(accelerator, offset, expect):
    """torch multiplies every gradient by min(1, limit / (norm + 1e-6)): a limit equal to the
    pre-clip norm, or up to 1e-6 above it, still scales the step down; ``clipped`` counts such a
    step (it counted only norm > limit) and the weights show the factor below 1."""
    model, conn = masked_net()
    (x, y), = batches(1)
    F.cross_entropy(model(x), y).backward()
    live = [p.grad * conn.masks[n] if n in conn.params else p.grad for n, p in model.named_parameters()]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in live]))
    model.zero_grad(set_to_none=True)
    limit = float(norm) + offset
    factor = float(torch.clamp(limit / (norm + 1e-6), max=1.0))
    assert (factor < 1.0) == (expect == 1.0)  # what torch does with this limit
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.0)
    conn.attach(opt)
    state = TrainState()
    train_one_epoch(accelerator, model, opt, [(x, y)], state, conn=conn, log_every=1, max_grad_norm=limit)
    row = state.metrics[-1]
    assert row["grad_norm"] == pytest.approx(float(norm), rel=1e-6)
    assert row["clipped"] == expect


@pytest.mark.parametrize("limit", [torch.tensor(99.999999, dtype=torch.float64), torch.tensor(100.000001, dtype=torch.float64),
                                   99.999999, 100.0], ids=["float64 tensor below", "float64 tensor above", "float below", "float"])
def test_clip_factor_is_the_factor_torch_scales_by_whatever_the_limit_type(limit):
    """clip_gradients takes a 0-d tensor limit and, as torch, clips with float(limit) in the norm's
    dtype: clip_factor computes the same factor (a float64 limit against a float32 norm of 100 is no
    reason to count a step torch leaves unscaled as clipped)."""
    from adaptive.clipping import clip_factor

    p = nn.Parameter(torch.zeros(4))
    p.grad = torch.full((4,), 50.0)  # norm 100: 100 + 1e-6 rounds to 100 in float32
    before = p.grad.clone()
    total = clip_gradients([p], limit)
    scaled = not torch.equal(p.grad, before)
    factor = clip_factor(total, limit)
    assert factor.dtype == total.dtype and bool(factor < 1) == scaled
    assert torch.equal(p.grad, before * factor)


def test_a_weight_cast_narrower_on_its_own_after_the_masks_were_cached_is_measured_right():
    """The connectome caches its 0/1 masks in its first weight's width; a later layer cast to
    float16 since (model[2].half()) kept an int32 mask, and the norm came out NaN."""
    model, conn = masked_net()
    conn._hot_lists()  # cached, as after a step
    model[2].half()
    g = torch.Generator().manual_seed(3)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
    live = [torch.where(conn.masks[n], p.grad, 0) if n in conn.masks else p.grad for n, p in model.named_parameters()]
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t).float() for t in live]))
    total = clip_gradients(model.parameters(), 1e9, conn)
    torch.testing.assert_close(total.float(), expected, rtol=1e-3, atol=0)


def test_clipping_under_a_grad_scaler_measures_and_clips_the_unscaled_gradients():
    """Under fp16 the gradients hold the loss scale until Accelerate unscales them: clip_gradients(accelerator=)
    unscales first. Skipped, the norm read 72,376 (scaled by 2**16) and the step came out some 1e-5 of its size. A
    CPU GradScaler stands in for the GPU recipe's, behind what Accelerate's unscale_gradients does."""
    import torch.nn.functional as F

    from adaptive.clipping import clip_gradients

    torch.manual_seed(0)
    m = nn.Linear(4, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)

    class Accelerator:
        gradient_accumulation_steps, sync_gradients = 1, True

        def unscale_gradients(self):
            scaler.unscale_(opt)

    x, y = torch.randn(8, 4), torch.randn(8, 2)
    F.mse_loss(m(x), y).backward()
    plain = float(torch.cat([p.grad.flatten() for p in m.parameters()]).norm())
    m.zero_grad()
    scaler.scale(F.mse_loss(m(x), y)).backward()
    total = clip_gradients(m.parameters(), 1.0, accelerator=Accelerator())
    assert float(total) == pytest.approx(plain, rel=1e-5)
    assert float(torch.cat([p.grad.flatten() for p in m.parameters()]).norm()) == pytest.approx(min(1.0, plain), rel=1e-4)
