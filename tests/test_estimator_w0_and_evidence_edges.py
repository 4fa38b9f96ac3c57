"""The presence derivative's w0 in train mode with restore values, and evidence at its edges (batches that
agree exactly, weights of extreme scale), found by a review against the estimators' documented formulas."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import adaptive
from adaptive.utility.base import UtilityContext
from adaptive.utility.stats import GradientStats


def test_train_mode_with_original_restore_values_reads_a_present_synapse_at_its_trained_weight():
    """grow_init='original' (what the controller's warning advises for presence and evidence in train mode)
    gave every synapse its weight at construction as w0: a present synapse trained from 0.007 to 3.5 was valued
    at 0.007 and pruned first. w0 is a present synapse's current weight, an absent one's original."""
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long()
    m = torch.nn.Sequential(torch.nn.Linear(8, 2, bias=False))
    conn = adaptive.Connectome(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctrl = adaptive.Controller(conn, opt, policy="utility", estimator="evidence", density=1.0,
                                   update_every=10_000, grow_init="original")
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    pruned = torch.zeros(2, 8, dtype=torch.bool)
    pruned[1, 3] = True
    conn.set_masks({"0.weight": ~pruned})
    ctx = ctrl.context("0.weight", 0)
    w, original = m[0].weight.detach(), conn.original["0.weight"]
    assert not torch.equal(w[~pruned], original[~pruned])  # (trained away from the originals)
    assert torch.equal(ctx.w0[~pruned], w[~pruned]) and torch.equal(ctx.w0[pruned], original[pruned])
    for name in ("evidence", "presence"):  # the costliest synapse of row 0 is its largest trained weight
        cost = adaptive.get_estimator(name).removal_cost(ctx)[0]
        assert int(cost.argmax()) == int(w[0].abs().argmax()), name


def _evidence_after_identical_batches(jitter, clip=3.0):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    conn = adaptive.Connectome(m, mode="mask_only")
    est = adaptive.get_estimator("evidence", clip=clip)
    ctrl = adaptive.Controller(conn, policy="crawl", estimator=est, update_every=2, edit_decay="constant")
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    for k in range(6):
        m.zero_grad()
        F.cross_entropy(m(x), y).backward()  # the same (only) batch at every step
        if jitter and k % 2:
            for p in conn.params.values():
                p.grad.mul_(1 + 2 ** -23)  # one ulp apart
        ctrl.observe()
        ctrl.step()
    return {n: e.clone() for n, e in est.evidence.items()}


def test_evidence_counts_batches_that_agree_exactly_as_the_clips_agreement():
    """Windows of two identical batches (a one-batch or full-batch dataset): zero spread set t to 0, so no
    evidence was ever added, silently, where batches one ulp apart got the full clipped step. They count as the
    clip's agreement now: the same evidence as one ulp apart; an infinite clip still adds nothing."""
    exact, ulp = _evidence_after_identical_batches(False), _evidence_after_identical_batches(True)
    assert sum(float(e.abs().sum()) for e in exact.values()) > 0
    assert all(torch.equal(exact[n], ulp[n]) for n in exact)
    unclipped = _evidence_after_identical_batches(False, clip=float("inf"))
    assert all(float(e.abs().sum()) == 0 for e in unclipped.values())


@pytest.mark.parametrize("power", [70, -80])
def test_evidence_values_scale_with_the_weights_at_extreme_scales(power):
    """The same loss reparametrised by 2**power: evidence's layer scale rms(w0), squared in float32, overflowed
    (values +-inf at 2**70) or underflowed (the evidence lost at 2**-80), and a 1e-20 floor on the spread cut its
    t-statistic at 2**70. Its values now scale with the weights exactly, as presence's do."""
    def values(scale):
        m = torch.nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            m.weight.copy_(torch.tensor([[0.5, -1.0, 2.0]]) * scale)
        conn = adaptive.Connectome(m, mode="mask_only")
        stats = GradientStats(conn)
        for b in ([1.0, 1.0, -1.0], [2.0, 0.5, -2.0]):
            m.weight.grad = torch.tensor([b]) / scale
            stats.observe()
        ctx = UtilityContext("weight", m.weight.detach(), conn.masks["weight"], conn.original["weight"], stats,
                             torch.Generator(), 8)
        return adaptive.get_estimator("evidence").removal_cost(ctx) / scale

    assert torch.equal(values(2.0 ** power), values(1.0))


class _Window:
    """A window's statistics for one layer, as GradientStats gives them: batches, mean gradient, batch variance."""

    def __init__(self, mean, variance, batches=8):
        self._mean, self._variance, self._batches = mean, variance, batches

    def n(self, name):
        return self._batches

    def mean(self, name):
        return self._mean

    def batch_variance(self, name):
        return self._variance


def _context(w0, stats):
    return UtilityContext(name="w", weight=w0, mask=torch.ones_like(w0, dtype=torch.bool), restore=w0, stats=stats,
                          generator=torch.Generator().manual_seed(0))


def test_evidence_values_a_synapse_whose_batches_say_it_helps_above_one_they_say_hurts():
    """dL/dm = g * w0 < 0 in every batch: switching the synapse on lowers the loss, so it must gain value (cost the
    most to remove); > 0, lose it. The update's sign flipped passed every estimator and controller test but one."""
    w0 = torch.tensor([0.5, 0.5])
    est = adaptive.get_estimator("evidence", step=0.05)
    start = est.removal_cost(_context(w0, _Window(torch.zeros(2), torch.ones(2), batches=0))).clone()  # the prior
    for _ in range(5):
        value = est.removal_cost(_context(w0, _Window(torch.tensor([-1.0, 1.0]), torch.full((2,), 0.25))))
    assert value[0] > start[0] and value[1] < start[1]  # helpful up, harmful down, from the same start


def test_presence_moves_each_value_by_its_step_at_the_first_update():
    """Adam-like, with its bias correction: the first update moves every value by exactly ``step`` against the
    presence derivative's sign (m_hat / sqrt(v_hat) = sign(d)); without the correction it moved by step * 0.1."""
    torch.manual_seed(0)
    w0 = torch.randn(6)
    est = adaptive.get_estimator("presence", step=0.01)
    start = est.removal_cost(_context(w0, None))
    g = torch.randn(6)
    moved = est.removal_cost(_context(w0, _Window(g, None, batches=1))) - start
    assert torch.allclose(moved, -0.01 * est.step_scale * torch.sign(g * w0), rtol=1e-4, atol=0)
