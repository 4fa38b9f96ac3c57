"""The estimators' gains in value, not only in order: the balanced and crawl policies weigh a gain
against a removal cost, so a gain on another scale makes other swaps."""
import torch
from torch import nn

import adaptive
from adaptive.utility import get_estimator
from adaptive.utility.base import UtilityContext
from adaptive.utility.stats import GradientStats


def _window(grads, weight):
    """A one-layer connectome whose window holds ``grads`` (one tensor per observed batch)."""
    net = nn.Sequential(nn.Linear(2, 3, bias=False))
    conn = adaptive.Connectome(net)
    stats = GradientStats(conn)
    w = net[0].weight
    with torch.no_grad():
        w.copy_(weight)
    for g in grads:
        w.grad = g.clone()
        stats.observe()
    return conn, stats, w


def _ctx(conn, stats, w, restore=None, batch_size=None):
    return UtilityContext(name="0.weight", weight=w.detach(), mask=conn.masks["0.weight"], restore=restore,
                          stats=stats, generator=torch.Generator().manual_seed(0), batch_size=batch_size)


def test_taylor_train_mode_growth_gain_is_the_squared_gradient():
    g = torch.tensor([[0.5, -2.0], [0.0, 3.0], [-0.25, 1.0]])
    conn, stats, wt = _window([g], torch.zeros(3, 2))
    gain = get_estimator("taylor").restoration_gain(_ctx(conn, stats, wt))
    torch.testing.assert_close(gain, g * g)


def test_magnitude_restoration_gain_is_the_restore_values_magnitude():
    """A synapse returning to -3.0 gains as much as one returning to 3.0 (|w_orig|)."""
    conn, stats, wt = _window([], torch.zeros(3, 2))
    restore = torch.tensor([[-3.0, 3.0], [-0.5, 0.25], [0.0, -1.0]])
    gain = get_estimator("magnitude").restoration_gain(_ctx(conn, stats, wt, restore=restore))
    torch.testing.assert_close(gain, restore.abs())


def _unbiased_fisher(grads, batch_size):
    """Per-sample Fisher from a window of batch gradients, computed here by hand: mean^2 + B * unbiased variance."""
    g = torch.stack(grads)
    return g.mean(0) ** 2 + batch_size * g.var(0, unbiased=True)


def test_curvature_removal_cost_is_half_the_per_sample_fisher_times_w_squared():
    grads = [torch.tensor([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]]), torch.tensor([[0.0, -1.0], [1.5, 2.0], [1.0, 1.0]])]
    w = torch.tensor([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]])
    conn, stats, wt = _window(grads, w)
    cost = get_estimator("curvature").removal_cost(_ctx(conn, stats, wt, batch_size=8))
    torch.testing.assert_close(cost, 0.5 * _unbiased_fisher(grads, 8) * w * w)


def test_obd_growth_gain_uses_each_synapses_own_fisher_from_two_batches_on():
    """With two batch gradients in the window the per-synapse Fisher is no longer the gradient's own
    square: the layer mean stands in for it only with one batch."""
    grads = [torch.tensor([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]]), torch.tensor([[0.0, -1.0], [1.5, 2.0], [1.0, 1.0]])]
    conn, stats, wt = _window(grads, torch.zeros(3, 2))
    est = get_estimator("obd")
    gain = est.restoration_gain(_ctx(conn, stats, wt, batch_size=4))
    g = torch.stack(grads).mean(0)
    torch.testing.assert_close(gain, g * g / (2 * (_unbiased_fisher(grads, 4) + est.damping)))


def test_a_new_window_overwrites_the_previous_windows_sums():
    g1, g2 = torch.full((3, 2), 5.0), torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    conn, stats, _ = _window([g1], torch.zeros(3, 2))
    stats.reset()
    conn.params["0.weight"].grad = g2.clone()
    stats.observe()
    torch.testing.assert_close(stats.mean("0.weight"), g2)
    torch.testing.assert_close(stats.sq_mean("0.weight"), g2 * g2)


def test_the_window_count_is_the_most_any_layer_observed():
    """With several optimizers each layer is observed at its own step: count is the fullest layer's."""
    net = nn.Sequential(nn.Linear(2, 3, bias=False), nn.Linear(3, 2, bias=False))
    conn = adaptive.Connectome(net)
    stats = GradientStats(conn)
    for p in conn.params.values():
        p.grad = torch.ones_like(p)
    stats.observe()
    stats.observe(names=["0.weight"])
    assert (stats.n("0.weight"), stats.n("1.weight"), stats.count) == (2, 1, 2)
