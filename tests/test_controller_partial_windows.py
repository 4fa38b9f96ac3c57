"""Update windows that are empty for some layers, or left out, found by a review: under one GradScaler over two
optimizers, a step the scaler skipped for one of them left its layers unobserved, and the update still edited
them from all-zero statistics (RigL grew all 96 synapses on the first output units, by index); an explicit loop
whose observed step the scaler skipped was told to call observe(), which it did; and an update skipped for NaN
weights kept the window's gradients for the next update, which then read twice the window."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive


@pytest.mark.parametrize("how", ["explicit", "attached"])
def test_a_layer_unobserved_in_its_window_is_not_edited(how):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
    conn = adaptive.Connectome(model)
    opts = [torch.optim.SGD(model[0].parameters(), lr=0.05), torch.optim.SGD(model[2].parameters(), lr=0.05)]
    for o in opts:
        conn.attach(o)
    kw = dict(policy="rigl", density=0.5, update_every=4, start_step=4, end_step=8, window=1, budget="uniform")
    ctrl = adaptive.Controller(conn, **kw) if how == "explicit" else adaptive.Controller(conn, optimizer=opts[1], **kw)
    scaler = torch.amp.GradScaler("cpu")
    g = torch.Generator().manual_seed(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 5):
            before = {n: m.clone() for n, m in conn.masks.items()}
            x, y = torch.randn(16, 20, generator=g), torch.randint(0, 5, (16,), generator=g)
            for o in opts:
                o.zero_grad()
            scaler.scale(F.cross_entropy(model(x), y)).backward()
            if step == 4:
                model[0].weight.grad[0, 0] = float("inf")  # the scaler skips 0.weight's optimizer's step
            if how == "explicit":
                ctrl.observe(scaler=scaler)
            for o in opts:
                scaler.step(o)
            scaler.update()
            if how == "explicit":
                ctrl.step()
    assert all(torch.equal(before[n], m) for n, m in conn.masks.items())  # no edit from a partial window
    assert any("no gradient of 1 editable layer(s) (0.weight) was observed" in str(w.message) for w in caught)


def test_an_explicit_loop_whose_steps_the_scaler_skipped_is_told_so():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    conn = adaptive.Connectome(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    conn.attach(opt)
    ctrl = adaptive.Controller(conn, policy="rigl", density=0.5, update_every=2, end_step=8, window=1)
    scaler = torch.amp.GradScaler("cpu")
    with pytest.warns(UserWarning, match=r"step 2: no gradient was observed since the last update, so the update is "
                                         r"skipped; the GradScaler skipped the steps observed since it"):
        for step in range(1, 3):
            opt.zero_grad()
            scaler.scale(F.cross_entropy(model(torch.randn(4, 6)), torch.randint(0, 3, (4,)))).backward()
            if step == 2:
                model[0].weight.grad[0, 0] = float("nan")
            ctrl.observe(scaler=scaler)
            scaler.step(opt)
            scaler.update()
            ctrl.step()


def test_an_update_skipped_for_non_finite_weights_leaves_its_window_out():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, None, policy="utility", density=0.5, update_every=4, end_step=12,
                               estimator="taylor")
    read = []
    real_update = ctrl.policy.update
    ctrl.policy.update = lambda c, step: read.append(c.stats.count) or real_update(c, step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(1, 9):
            model.zero_grad()
            F.cross_entropy(model(torch.randn(4, 6)), torch.randint(0, 3, (4,))).backward()
            ctrl.observe()
            if step == 4:
                saved = model[0].weight.detach().clone()
                with torch.no_grad():
                    model[0].weight[0, 0] = float("nan")
            ctrl.step()
            if step == 4:
                with torch.no_grad():
                    model[0].weight.copy_(saved)
    assert ctrl.nonfinite_windows == 1 and read == [4]  # the update at step 8 reads its own 4 batches, not 8


class _Scripted:
    """A policy returning one plan (``plan``) at every update."""

    def __new__(cls, plan):
        from adaptive.policies.base import Policy

        class Scripted(Policy):
            sparse_at_start = False
            needs_density = False

            def update(self, ctrl, step):
                return plan

        return Scripted()


@pytest.mark.parametrize("half_rise,kept", [(0.08, 0.0), (0.04, 0.5)])
def test_a_shrunk_plan_is_held_to_its_share_of_the_plans_tolerance(half_rise, kept):
    """A plan's own tolerance was scaled with the plan by EditPlan.shrink, but the line search read the whole
    plan's at every try: a half plan rising 0.08 passed a tolerance of 0.1 that its half, 0.05, does not."""
    from adaptive.policies.base import EditPlan

    torch.manual_seed(0)
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)))
    losses = iter([1.0, 1.2, 1.0 + half_rise, 1.0 + half_rise, 1.0 + half_rise])
    ctrl = adaptive.Controller(conn, policy=_Scripted(EditPlan(prune={"0.weight": torch.arange(8)}, tolerance=0.1)),
                               update_every=1, holdout_loss=lambda: next(losses), line_search_tolerance=0.0,
                               line_search_tries=1)
    assert ctrl.step()["line_search_fraction"] == kept
