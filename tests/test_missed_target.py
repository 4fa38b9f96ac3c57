"""A controller whose schedule ends away from its target density says so, once, at its last update."""
import itertools
import warnings

import pytest
import torch
from torch import nn

import adaptive

MISSED = "the controller's schedule ended"


def _run(holdout_loss, steps=8, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, policy="threshold", density=0.2, update_every=2, end_step=steps,
                               holdout_loss=holdout_loss, **kw)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    for _ in range(steps):
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        ctrl.observe()
        ctrl.step()
    return ctrl, conn


def test_a_line_search_that_rejects_every_cut_is_warned_of_at_the_schedule_end():
    rising = itertools.count()  # every try raises the held-out loss: every update is rolled back
    with pytest.warns(UserWarning, match=MISSED) as record:
        ctrl, conn = _run(lambda: float(next(rising)))
    missed = [w for w in record if MISSED in str(w.message)]
    assert len(missed) == 1 and conn.density() == 1.0
    text = str(missed[0].message)
    assert "target 0.2" in text and "density 1," in text
    assert "rolled back 3 and halved 0 of the 3 " in text and "line_search_tolerance" in text and "end_step" in text


@pytest.mark.parametrize("policy,kw", [("threshold", {}), ("gmp", {}), ("rigl", {}), ("set", {"budget": "uniform"}),
                                       ("utility", {"budget": "global"}), ("crawl", {})])
def test_a_run_that_reaches_its_target_is_not_warned(policy, kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    conn = adaptive.Connectome(model, ensemble="0=kernel;synapse")  # ensembles of two sizes
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 5, (8,))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=MISSED)
        ctrl = adaptive.Controller(conn, policy=policy, density=0.3, update_every=2, end_step=8, **kw)
        for _ in range(8):
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            ctrl.observe()
            ctrl.step()
    assert abs(conn.density() - 0.3) < 0.02
