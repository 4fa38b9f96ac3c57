"""OBD's scores (and consistency's, which shares them) computed in place, in fewer passes over a layer
than the formulas as written take: the same bits."""
import pytest
import torch
from torch import nn

import adaptive


@pytest.mark.parametrize("name", ["obd", "consistency"])
@pytest.mark.parametrize("window", [1, 3])
@pytest.mark.parametrize("batch_size", [None, 8])
@pytest.mark.parametrize("damping", [0.0, 1e-12])
def test_obd_scores_are_its_formulas_bit_for_bit(name, window, batch_size, damping):
    """OBD's removal cost and growth gain, computed in place in fewer passes, equal the formulas as
    written (-g*w + f*w^2/2; g^2/(2(F + damping)), 0 where g is 0) bit for bit: signed zeros, weights of 0,
    gradients of 0 and of one batch (F the layer's mean) included."""
    from adaptive.utility import get_estimator
    from adaptive.utility.base import UtilityContext
    from adaptive.utility.stats import GradientStats

    g = torch.Generator().manual_seed(window * 7 + (batch_size or 0))
    net = nn.Sequential(nn.Linear(40, 30, bias=False))
    conn = adaptive.Connectome(net)
    stats = GradientStats(conn)
    w = net[0].weight
    with torch.no_grad():
        w.copy_(torch.randn(30, 40, generator=g))
        w[:5] = 0.0
        w[5:8] = -0.0
    for _ in range(window):
        grad = torch.randn(30, 40, generator=g)
        grad[10:14] = 0.0
        grad[14:16] = -0.0
        w.grad = grad
        stats.observe()
    est = get_estimator(name, damping=damping)
    ctx = UtilityContext(name="0.weight", weight=w.detach(), mask=conn.masks["0.weight"], restore=None,
                         stats=stats, generator=torch.Generator(), batch_size=batch_size)
    gm, wf = est.gradient(ctx), w.detach().float()
    f = stats.fisher("0.weight", batch_size)
    want_cost = -gm * wf + 0.5 * f * wf * wf
    if stats.n("0.weight") < 2:
        f = f.mean()
    gain = gm * gm
    want_gain = torch.where(gain == 0, gain, gain / (2.0 * (f + damping)))
    for got, want in ((est.removal_cost(ctx), want_cost), (est.restoration_gain(ctx), want_gain)):
        assert got.dtype == want.dtype and torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("gain_dtype, scale_dtype, curvature", [(torch.float32, torch.float64, 1e-46),
                                                                (torch.float32, torch.float64, 1e-300),
                                                                (torch.float16, torch.float32, 1e-8),
                                                                (torch.bfloat16, torch.float64, 1e-300)])
def test_a_one_batch_curvature_that_vanishes_in_the_gains_dtype_keeps_zero_gradients_at_zero(gain_dtype, scale_dtype,
                                                                                              curvature):
    """The growth gain divides in place by a positive 0-d curvature, where 0 / it is 0; one given in a wider dtype
    (a statistics object of one's own) whose value rounds to 0 in the gain's dtype made 0 / 0 = NaN there: those
    gradients of 0 keep a gain of 0, as the formula's guard gives."""
    from adaptive.utility import get_estimator

    g = torch.tensor([0.0, -0.0, 1.0, 2.0], dtype=gain_dtype)

    class Stats:
        def mean(self, name):
            return g.clone()

        def fisher(self, name, batch_size):
            return torch.tensor(curvature, dtype=scale_dtype)

        def n(self, name):
            return 3

    class Ctx:
        name, weight, stats, batch_size, restore = "w", g, Stats(), None, None

    gain = get_estimator("obd", damping=0.0).restoration_gain(Ctx())
    want = torch.where(g * g == 0, g * g, g * g / (2.0 * torch.tensor(curvature, dtype=scale_dtype)))
    assert gain[:2].tolist() == [0.0, 0.0] and torch.equal(gain, want), gain
