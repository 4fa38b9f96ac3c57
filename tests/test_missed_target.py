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
    kw = {"line_search_tolerance": 0.0, **kw}
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


def test_a_held_out_loss_of_nan_before_the_edit_is_warned_of_at_the_first_update_naming_the_cause():
    """A held-out set holding one corrupt example makes every held-out loss NaN, and NaN compares false with
    any tolerance: every update was rolled back in silence, and only the schedule's end warned, blaming edits
    that raise the held-out loss. Now the first such update says why, once; the masks are as before."""
    nonfinite = "holdout_loss() gave nan before the edit"
    with pytest.warns(UserWarning) as record:
        ctrl, conn = _run(lambda: float("nan"))
    said = [str(w.message) for w in record if nonfinite in str(w.message)]
    assert len(said) == 1 and said[0].startswith("step 2: ") and "check the held-out data for NaN or inf" in said[0]
    assert conn.density() == 1.0 and [e["line_search_fraction"] for e in ctrl.events] == [0.0, 0.0, 0.0, None]
    with warnings.catch_warnings():  # a finite held-out loss, or a tolerance that keeps every update: no word
        warnings.filterwarnings("error", message=r".*holdout_loss\(\) gave")
        _run(lambda: 1.0)
        _run(lambda: float("nan"), line_search_tolerance=float("inf"))


def test_a_held_out_loss_of_inf_before_an_edit_that_makes_it_finite_is_not_warned_of_as_rolled_back():
    """From a held-out loss of +inf, an edit that makes it finite is a fall of inf, which the line search keeps;
    the warning of a non-finite held-out loss said, before the try, that the update was rolled back. It is given
    now only where the update was rolled back (a NaN one is, test above)."""
    calls = itertools.count()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r".*holdout_loss\(\) gave")
        ctrl, conn = _run(lambda: float("inf") if next(calls) == 0 else 1.0)  # inf only before the first edit
    assert ctrl.events[0]["line_search_fraction"] == 1.0 and ctrl.events[0]["pruned"] > 0  # the first edit kept


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


def _oneshot_rolled_back(conn=None, steps=2):
    """A one-shot prune (magnitude policy, gradient scores) whose line search rolls the prune back:
    the policy is done, the density stays 1 and every later due update checks the target again."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    conn = conn or adaptive.Connectome(model)
    rising = itertools.count()
    ctrl = adaptive.Controller(conn, policy="magnitude", estimator="taylor", density=0.2, update_every=2,
                               holdout_loss=lambda: float(next(rising)), line_search_tolerance=0.0)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    for _ in range(steps):
        conn.model.zero_grad()
        nn.functional.cross_entropy(conn.model(x), y).backward()
        ctrl.observe()
        ctrl.step()
    return ctrl, conn


@pytest.mark.parametrize("old_state", [False, True])
def test_the_warning_is_not_given_again_by_a_resumed_run(old_state):
    """The warned flag travels with the controller's state: a resume after the last update (a
    one-shot prune's, then due updates with nothing to do) does not warn again. A state saved
    before the flag was recorded still loads, and warns (it cannot tell)."""
    with pytest.warns(UserWarning, match=MISSED):
        ctrl, conn = _oneshot_rolled_back()
    assert ctrl.policy.finished and conn.density() == 1.0
    sd = ctrl.state_dict()
    if old_state:
        del sd["warned_missed"]
    resumed = adaptive.Controller(conn, policy="magnitude", estimator="taylor", density=0.2, update_every=2,
                                  holdout_loss=lambda: 0.0, line_search_tolerance=0.0)
    resumed.load_state_dict(sd)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(4):  # two more due updates
            resumed.step()
    assert resumed.step_count == 6 and resumed.policy.finished
    assert sum(MISSED in str(w.message) for w in record) == (1 if old_state else 0)


def _no_gradient_last_window(model, x, y, step):
    if step < 6:
        nn.functional.cross_entropy(model(x), y).backward()


def _nan_last_window(model, x, y, step):
    loss = nn.functional.cross_entropy(model(x), y)
    (loss * float("nan") if step >= 6 else loss).backward()


@pytest.mark.parametrize("last_window", [_no_gradient_last_window, _nan_last_window])
def test_a_skipped_last_update_still_checks_the_target(last_window):
    """The last due update (step 8) skipped for want of a gradient, or for NaN ones, still checks
    the density the schedule leaves, once."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    conn = adaptive.Connectome(model)
    rising = itertools.count()
    ctrl = adaptive.Controller(conn, policy="threshold", density=0.2, update_every=2, end_step=8,
                               holdout_loss=lambda: float(next(rising)), line_search_tolerance=0.0)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for step in range(10):
            model.zero_grad()
            last_window(model, x, y, step)
            ctrl.observe()
            ctrl.step()
    texts = [str(w.message) for w in record]
    assert any("update is skipped" in t or "update skipped" in t for t in texts)
    missed = [t for t in texts if MISSED in t]
    assert len(missed) == 1 and "ended at step 8" in missed[0] and conn.density() == 1.0


def test_a_target_the_protected_layers_overfill_at_a_skipped_last_update_is_warned_not_raised():
    """Protected layers refilled by hand past the target, then the last due update skipped for want
    of a gradient: the check warns with the reason; a warning never stops the run."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    conn = adaptive.Connectome(model)
    name = next(n for n in conn.masks if n.startswith("0"))
    sparse = torch.zeros_like(conn.masks[name])
    sparse.view(-1)[:20] = 1
    conn.set_masks({name: sparse})
    ctrl = adaptive.Controller(conn, policy="threshold", density=0.4, update_every=2, end_step=8, protect="0")
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for step in range(10):
            if step == 6:
                conn.set_masks({name: torch.ones_like(sparse)})  # 128 protected synapses, 77 due in all
            model.zero_grad()
            _no_gradient_last_window(model, x, y, step)
            ctrl.observe()
            ctrl.step()
    missed = [str(w.message) for w in record if MISSED in str(w.message)]
    assert len(missed) == 1 and "ended at step 8" in missed[0] and "protect" in missed[0]
