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


# second pass (stop 74): evidence's decay and layer scale, presence's step scale, resume and w0, consistency's
# two-batch shrinkage, zero-cost ties' floor and ceiling, gain units, state keys, signed-cost flags
def test_evidence_decay_shrinks_only_the_earlier_evidence_not_the_windows_own_step():
    """E <- decay * E - step * clip(t): the first window (E = 0) adds the full step, the second halves the first's."""
    w0 = torch.tensor([1.0, 1.0])
    est = adaptive.get_estimator("evidence", step=0.1, clip=3.0, decay=0.5)
    window = _Window(torch.tensor([-1.0, 1.0]), torch.full((2,), 8.0), batches=8)  # t = -+1, inside the clip
    est.removal_cost(_context(w0, window))
    assert torch.allclose(est.evidence["w"], torch.tensor([0.1, -0.1]))
    est.removal_cost(_context(w0, window))
    assert torch.allclose(est.evidence["w"], torch.tensor([0.15, -0.15]))


def test_evidence_scales_its_evidence_by_the_root_mean_square_of_the_layers_weights():
    """v = |w0| + rms(w0) * E, rms the root mean square (here sqrt((9 + 16) / 2) = 3.536), not the mean |w0|."""
    w0 = torch.tensor([3.0, -4.0])
    est = adaptive.get_estimator("evidence", step=0.1)
    value = est.removal_cost(_context(w0, _Window(torch.tensor([-1.0, -1.0]), torch.full((2,), 8.0), batches=8)))
    e = est.evidence["w"]
    assert torch.allclose(e, torch.tensor([0.1, -0.1]))
    assert torch.allclose(value, w0.abs() + (12.5 ** 0.5) * e)


def test_presence_moves_by_its_step_times_the_drivers_step_scale():
    """The driver scales the step over time (step_scale, a cosine decay per stage): at half the scale the first
    update moves every value by half the step."""
    torch.manual_seed(0)
    w0, g = torch.randn(6), torch.randn(6)
    est = adaptive.get_estimator("presence", step=0.01)
    est.step_scale = 0.5
    start = est.removal_cost(_context(w0, None))
    moved = est.removal_cost(_context(w0, _Window(g, None, batches=1))) - start
    assert torch.allclose(moved, -0.005 * torch.sign(g * w0), rtol=1e-4, atol=0)


def test_presence_resumed_from_its_state_dict_continues_as_the_run_it_was_saved_from():
    """The moments' step count (their bias correction) and the driver's step_scale travel in the state: a resumed
    estimator's next update gives the values the uninterrupted one gives."""
    torch.manual_seed(0)
    w0 = torch.randn(6)
    grads = [torch.randn(6) for _ in range(3)]
    est = adaptive.get_estimator("presence", step=0.01)
    est.step_scale = 0.5
    for g in grads[:2]:
        est.removal_cost(_context(w0, _Window(g, None, batches=1)))
    again = adaptive.get_estimator("presence", step=0.01)
    again.load_state_dict(est.state_dict())
    expected = est.removal_cost(_context(w0, _Window(grads[2], None, batches=1)))
    assert torch.equal(again.removal_cost(_context(w0, _Window(grads[2], None, batches=1))), expected)


def test_presence_learns_for_absent_synapses_from_their_original_value():
    """d = g * w0, w0 an absent synapse's original value (mask_only: ctx.restore), not its current weight 0: an
    absent synapse whose batches say it helps gains value at the first update."""
    w0 = torch.tensor([1.0, 2.0])
    mask = torch.tensor([True, False])
    ctx = lambda stats: UtilityContext(name="w", weight=w0 * mask, mask=mask, restore=w0, stats=stats,
                                       generator=torch.Generator().manual_seed(0))
    est = adaptive.get_estimator("presence", step=0.01)
    start = est.removal_cost(ctx(None))
    moved = est.removal_cost(ctx(_Window(torch.tensor([-1.0, -1.0]), None, batches=1))) - start
    assert torch.allclose(moved, torch.tensor([0.01, 0.01]), rtol=1e-4, atol=0)


def test_consistency_shrinks_the_gradient_of_a_window_of_two_batches():
    """Two batches already have a spread: g * max(0, 1 - (v/n) / g^2), here 1 - (2/2)/1 = 0 and 1 - 0.5/4."""
    est = adaptive.get_estimator("consistency")
    window = _Window(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0]), batches=2)
    assert torch.allclose(est.gradient(_context(torch.ones(2), window)), torch.tensor([0.0, 2.0 * (1 - 0.5 / 4)]))


def test_zero_cost_ties_keep_the_order_of_weights_down_to_their_floor_and_read_as_zero_up_to_two_to_the_20():
    from adaptive.utility.ties import TIE, order_zero_costs, untied

    key = order_zero_costs(torch.zeros(3), torch.tensor([1e-7, 2e-6, 4e-6]))
    assert 0 < key[0] < key[1] < key[2]  # 2e-6 and 4e-6 (above the floor 2**-26) still told apart
    assert untied(float(TIE * 2.0 ** 15)) == 0.0 and untied(float(TIE * 2.0 ** 19)) == 0.0  # weights of 3e4, 5e5
    assert untied(1e-20) == 1e-20


def test_an_estimators_gain_units_default_to_its_cost_units_of_mask_only_when_restoring_and_of_train_when_not():
    """A plugin whose removal costs are loss changes in mask_only mode only: its gains (by default) are in loss
    units where they restore (mask_only's immediate change), not for a synapse grown and trained."""
    from adaptive.utility.base import Estimator

    class MaskOnlyLoss(Estimator):
        def loss_units(self, mode):
            return mode == "mask_only"

    est = MaskOnlyLoss()
    assert est.gain_loss_units(True) is True and est.gain_loss_units(False) is False


def test_an_estimator_refuses_a_state_with_entries_it_does_not_keep_and_takes_one_with_fewer():
    import pytest

    with pytest.raises(ValueError, match="another estimator"):
        adaptive.get_estimator("obd").load_state_dict({"evidence": {}})
    est = adaptive.get_estimator("evidence")
    est.load_state_dict({"evidence": {"w": torch.ones(2)}})  # no "value": taken, the values recomputed
    assert torch.equal(est.evidence["w"], torch.ones(2))


def test_a_signed_cost_flag_set_on_the_instance_is_the_one_read():
    from adaptive.utility.base import declares_signed_cost

    est = adaptive.get_estimator("obd")
    assert declares_signed_cost(est)
    est.signed_cost = False  # this instance's costs declared never negative
    assert not declares_signed_cost(est)
    mag = adaptive.get_estimator("magnitude")
    mag.signed_cost = True
    assert declares_signed_cost(mag)


def test_a_subclass_overriding_the_removal_cost_does_not_inherit_its_parents_signed_cost_flag():
    from adaptive.utility.base import declares_signed_cost
    from adaptive.utility.obd import OBD

    class Curv(OBD):  # a cost that is never negative, the flag not restated
        def removal_cost(self, ctx):
            return ctx.weight.abs()

    class Signed(Curv):  # a subclass of the class defining the cost restates it
        signed_cost = True

    assert not declares_signed_cost(Curv()) and declares_signed_cost(Signed())
