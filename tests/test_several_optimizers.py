"""A controller over layers that several optimizers step (SGD for one layer, Adam for another): each
layer's window holds its dense gradients of the same steps as when driven explicitly, and a controller
attached to an optimizer stepped before another one in each training step warns."""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import adaptive

KW = dict(policy="rigl", density=0.5, budget="uniform", update_every=4, start_step=4, window=2, seed=0)


def _run(how, steps=9, closure=False):
    """``how``: "explicit" (observe() after backward, step() after both steps), "last" (attached to the
    optimizer stepped last) or "first" (attached to the one stepped first); ``closure``: SGD (stepped first)
    is stepped as ``opt.step(closure)``. Returns the masks and, at each update, the window's gradient sums
    by layer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    conn = adaptive.Connectome(model)
    opts = [torch.optim.SGD(model[0].parameters(), lr=0.05), torch.optim.Adam(model[2].parameters(), lr=0.01)]
    if how == "explicit":
        ctrl = adaptive.Controller(conn, **KW)
        for o in opts:
            conn.attach(o)
    else:
        ctrl = adaptive.Controller(conn, opts[1] if how == "last" else opts[0], **KW)
        conn.attach(opts[0] if how == "last" else opts[1])
    windows = []
    update = ctrl.update

    def logged():
        windows.append({n: (ctrl.stats.counts[n], ctrl.stats.g_sum[n].clone()) for n in conn.names})
        return update()
    ctrl.update = logged
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(32, 8, generator=g), torch.randn(32, 4, generator=g)
        for o in opts:
            o.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if how == "explicit":
            ctrl.observe()
        for o in opts:
            if closure and o is opts[0]:
                o.step(lambda: loss.detach())  # a closure computing nothing anew: the same gradients
            else:
                o.step()
        if how == "explicit":
            ctrl.step()
    return conn.masks, windows


@pytest.mark.parametrize("closure", [False, True])
def test_each_layer_is_observed_dense_at_the_steps_an_explicit_controller_observes(closure):
    """The first optimizer's step once masked every layer's gradient, the second optimizer's layers'
    too, before that optimizer's observers read them: the window held 0.0 at their pruned positions,
    where RigL grows by gradient, and the masks parted from the explicitly driven run's. So did a
    step given a closure (``opt.step(closure)``) after the step without one was fixed: the wrapped
    closure masked every layer's gradient."""
    ref_masks, ref_windows = _run("explicit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # attached to the optimizer stepped last: nothing to warn of
        masks, windows = _run("last", closure=closure)
    assert len(windows) == len(ref_windows) == 2
    for w, ref in zip(windows, ref_windows):
        for n in ref:
            assert w[n][0] == ref[n][0] == 2
            torch.testing.assert_close(w[n][1], ref[n][1])
    for n in ref_masks:
        assert torch.equal(masks[n], ref_masks[n]), n


def test_a_controller_attached_to_the_optimizer_stepped_first_warns_once():
    """Attached to the optimizer stepped first, the controller updates before the second one's layers'
    gradients of that step are observed (their windows one step behind): it warns, naming the layer."""
    with pytest.warns(UserWarning, match=r"Adam steps 2\.weight after it in the same training step") as seen:
        _run("first")
    assert sum("stepped last" in str(w.message) for w in seen) == 1
