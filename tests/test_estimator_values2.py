"""Utility estimators in value, second pass (evidence's decay and layer scale, presence's step scale, resume and w0,
consistency's two-batch shrinkage, zero-cost ties' floor and ceiling, gain units, state keys, signed-cost flags)."""
import torch

import adaptive
from adaptive.utility.base import UtilityContext


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
