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
