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
