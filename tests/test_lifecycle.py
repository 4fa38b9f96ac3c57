"""One connectome masks a weight, one controller edits a connectome: a second one attached takes
over (with a warning), detach() stops what it says, and attach() starts it again."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    return model, opt, x, y


def _train(model, opt, x, y, steps):
    for i in range(steps):
        j = torch.arange(i * 8, i * 8 + 8) % len(x)
        F.cross_entropy(model(x[j]), y[j]).backward()
        opt.step()
        opt.zero_grad()


def _hooks(opt):
    return len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks)


def _pruned_nonzero(conn):
    return sum(int((p.detach()[~conn.masks[n]] != 0).sum()) for n, p in conn.params.items())


def test_a_cell_run_twice_leaves_one_connectome_and_one_controller_acting():
    model, opt, x, y = _setup()
    for run in range(2):  # the same notebook cell, run twice: the first pair loses its names
        if run == 1:
            with pytest.warns(UserWarning, match="another Connectome stepped by a Controller were masked by it"):
                conn = adaptive.Connectome(model)
                ctrl = adaptive.Controller(conn, opt, policy="set", density=0.5, budget="uniform", update_every=5, seed=0)
        else:
            conn = adaptive.Connectome(model)
            ctrl = adaptive.Controller(conn, opt, policy="set", density=0.5, budget="uniform", update_every=5, seed=0)
            first = ctrl
            _train(model, opt, x, y, 12)
    assert _hooks(opt) == (1, 2)  # one connectome's pre and post hooks, one controller's post hook
    before = len(first.events)
    _train(model, opt, x, y, 20)
    assert len(first.events) == before and len(ctrl.events) == 1 + 4
    assert _pruned_nonzero(conn) == 0
    assert conn.density() == pytest.approx(0.5, abs=0.01)


def test_a_second_connectome_attached_detaches_the_first():
    model, opt, x, y = _setup()
    c1 = adaptive.Connectome(model).attach(opt)
    c1.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in c1.masks.items()})
    c2 = adaptive.Connectome(model)
    c2.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in c2.masks.items()})
    with pytest.warns(UserWarning, match="0.weight and the other weights of another Connectome were masked by it"):
        c2.attach(opt)
    assert not c1._optimizers and _hooks(opt) == (1, 1)
    _train(model, opt, x, y, 5)
    # only c2's masks hold: its pruned weights are 0, and c1's pruned weights that c2 keeps learn again
    assert _pruned_nonzero(c2) == 0
    assert sum(int((p.detach()[~c1.masks[n] & c2.masks[n]] != 0).sum()) for n, p in c2.params.items()) > 0


def test_connectomes_of_disjoint_layers_both_mask():
    model, opt, x, y = _setup()
    c1 = adaptive.Connectome(model, include="0").attach(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c2 = adaptive.Connectome(model, include="2").attach(opt)
    c1.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in c1.masks.items()})
    c2.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in c2.masks.items()})
    _train(model, opt, x, y, 5)
    assert _pruned_nonzero(c1) == 0 and _pruned_nonzero(c2) == 0


def test_a_second_controller_attached_detaches_the_first():
    model, opt, x, y = _setup()
    conn = adaptive.Connectome(model)
    c1 = adaptive.Controller(conn, opt, policy="set", density=0.5, budget="uniform", update_every=5, seed=0)
    _train(model, opt, x, y, 10)
    with pytest.warns(UserWarning, match="another Controller attached to an optimizer \\(policy 'set'"):
        adaptive.Controller(conn, opt, policy="rigl", density=0.2, budget="uniform", update_every=5, seed=0)
    n1 = len(c1.events)
    _train(model, opt, x, y, 20)
    assert len(c1.events) == n1 and c1.optimizer is None
    assert conn.density() == pytest.approx(0.2, abs=0.01) and _pruned_nonzero(conn) == 0
    assert len(conn._observers) == 1


def test_connectome_detach_stops_its_controller_and_controller_attach_restarts_both():
    model, opt, x, y = _setup()
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, opt, policy="set", density=0.2, budget="uniform", update_every=5, seed=0)
    _train(model, opt, x, y, 12)
    conn.detach()
    assert _hooks(opt) == (0, 0)
    masks, events = {n: m.clone() for n, m in conn.masks.items()}, len(ctrl.events)
    _train(model, opt, x, y, 12)  # plain training: nothing edits, the pruned weights learn again
    assert len(ctrl.events) == events and all(torch.equal(masks[n], m) for n, m in conn.masks.items())
    assert _pruned_nonzero(conn) > 0
    ctrl.attach(opt)  # both again: the pruned weights go back to 0.0, and the controller edits
    assert _pruned_nonzero(conn) == 0 and _hooks(opt) == (1, 2)
    _train(model, opt, x, y, 10)
    assert len(ctrl.events) == events + 2 and _pruned_nonzero(conn) == 0


def test_controller_detach_keeps_the_connectome_masking():
    model, opt, x, y = _setup()
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, opt, policy="set", density=0.2, budget="uniform", update_every=5, seed=0)
    _train(model, opt, x, y, 6)
    ctrl.detach()
    events, masks = len(ctrl.events), {n: m.clone() for n, m in conn.masks.items()}
    _train(model, opt, x, y, 12)
    assert len(ctrl.events) == events and all(torch.equal(masks[n], m) for n, m in conn.masks.items())
    assert _pruned_nonzero(conn) == 0


def test_a_detached_controller_driven_explicitly_reads_dense_gradients():
    model, opt, x, y = _setup()
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.3, budget="uniform", update_every=4, seed=0)
    _train(model, opt, x, y, 3)
    ctrl.detach()
    F.cross_entropy(model(x[:8]), y[:8]).backward()
    # what ctrl.observe() reads: the gradients at pruned positions are there, not masked in backward
    assert all(float(p.grad[~conn.masks[n]].abs().sum()) > 0 for n, p in conn.params.items())
    ctrl.observe()
    opt.step()
    ctrl.step()
    opt.zero_grad()
    assert _pruned_nonzero(conn) == 0


def test_an_attached_controller_refuses_an_explicit_step_that_would_count_a_step_twice():
    """ctrl.step() after opt.step() on an attached controller advanced it twice per training step:
    its updates came at half the steps asked and its schedule ran twice as fast."""
    model, opt, x, y = _setup()
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, opt, policy="set", density=0.5, budget="uniform", update_every=4, seed=0)
    _train(model, opt, x, y, 3)
    masks, events = {n: m.clone() for n, m in conn.masks.items()}, len(ctrl.events)
    with pytest.raises(RuntimeError, match=r"attached to an optimizer and steps itself.*count each training step "
                                           r"twice: drop the ctrl.step\(\) call, or call ctrl.detach\(\) first"):
        ctrl.step()
    assert ctrl.step_count == 3 and all(torch.equal(masks[n], m) for n, m in conn.masks.items())
    _train(model, opt, x, y, 1)  # the optimizer's step is the fourth: the update is due there
    assert ctrl.step_count == 4 and len(ctrl.events) == events + 1
    ctrl.detach()
    ctrl.step()  # driven explicitly, as the error says
    assert ctrl.step_count == 5


def test_an_attached_controller_refuses_an_explicit_observe_that_would_count_a_gradient_twice():
    """ctrl.observe() before opt.step() on an attached controller added the gradient to the utility
    window, and the optimizer's step hook added it again: each batch counted twice."""
    model, opt, x, y = _setup()
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.3, budget="uniform", update_every=100, seed=0)
    F.cross_entropy(model(x[:8]), y[:8]).backward()
    with pytest.raises(RuntimeError, match=r"attached to an optimizer and observes the gradients itself.*window twice: "
                                           r"drop the ctrl.observe\(\) call, or call ctrl.detach\(\) first"):
        ctrl.observe()
    opt.step()  # the step hook observes this batch once
    opt.zero_grad()
    assert set(ctrl.stats.counts.values()) == {1}
    ctrl.detach()
    F.cross_entropy(model(x[:8]), y[:8]).backward()
    ctrl.observe()  # driven explicitly, as the error says
    assert set(ctrl.stats.counts.values()) == {2}


def test_connectome_attach_after_its_detach_restarts_its_controller():
    model, opt, x, y = _setup()
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, opt, policy="set", density=0.2, budget="uniform", update_every=5, seed=0)
    _train(model, opt, x, y, 7)
    conn.detach()
    _train(model, opt, x, y, 3)
    events = len(ctrl.events)
    conn.attach(opt)
    assert ctrl.optimizer is opt and _pruned_nonzero(conn) == 0
    _train(model, opt, x, y, 10)
    assert len(ctrl.events) == events + 2


def test_a_connectome_over_part_of_another_attached_one_is_refused_before_anything_changes():
    model, opt, x, y = _setup()
    full = adaptive.Connectome(model).attach(opt)
    full.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in full.masks.items()})
    part = adaptive.Connectome(model, include="2", ensemble="neuron")
    with pytest.raises(ValueError, match="2.weight is already masked by another Connectome .* also masks 0.weight"):
        part.attach(opt)
    with pytest.raises(ValueError, match="already masked by another Connectome"):
        adaptive.Controller(part, opt, policy="set", density=0.5, budget="uniform")
    assert all(m.all() for m in part.masks.values()) and full._optimizers
    _train(model, opt, x, y, 5)
    assert _pruned_nonzero(full) == 0


def test_a_connectome_left_with_hooks_by_a_dead_optimizer_is_taken_over():
    model, opt, x, y = _setup()
    old = adaptive.Connectome(model).attach(opt)
    old.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in old.masks.items()})
    del opt  # the optimizer is rebuilt; the old connectome's backward hooks are still on the weights
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.warns(UserWarning, match="were masked by it through an optimizer"):
        new = adaptive.Connectome(model).attach(opt)
    F.cross_entropy(model(x[:8]), y[:8]).backward()
    assert all(float(p.grad[~old.masks[n]].abs().sum()) > 0 for n, p in new.params.items())


def test_the_take_over_warnings_point_at_the_callers_line():
    model, opt, x, y = _setup()
    conn = adaptive.Connectome(model)
    adaptive.Controller(conn, opt, policy="set", density=0.5, budget="uniform", update_every=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conn2 = adaptive.Connectome(model)
        adaptive.Controller(conn2, opt, policy="set", density=0.5, budget="uniform", update_every=5)
        adaptive.Controller(conn2, opt, policy="set", density=0.5, budget="uniform", update_every=5)
    assert len(caught) == 2 and all(w.filename == __file__ for w in caught), [(w.filename, str(w.message)) for w in caught]



def test_a_warning_raised_inside_an_optimizer_step_points_at_the_step_line():
    model, opt, x, y = _setup()
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.5, budget="uniform", update_every=2, seed=0)
    ctrl.detach()  # driven explicitly, without observe(): its update has seen no gradient
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            F.cross_entropy(model(x[:8]), y[:8]).backward()
            opt.step()
            ctrl.step()
    found = [w for w in caught if "no gradient was observed" in str(w.message)]
    assert found and all(w.filename == __file__ for w in found), [(w.filename, str(w.message)[:60]) for w in caught]


def test_a_warning_raised_inside_an_accelerate_optimizer_step_points_at_the_step_line():
    from accelerate import Accelerator

    model, opt, x, y = _setup()
    model, opt = Accelerator(cpu=True).prepare(model, opt)
    conn = adaptive.Connectome(model)
    adaptive.Controller(conn, opt, policy="rigl", density=0.5, budget="uniform", update_every=2, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(2):
            F.cross_entropy(model(x[:8]) * (float("nan") if i else 1.0), y[:8]).backward()
            opt.step()
            opt.zero_grad()
    found = [w for w in caught if "NaN or inf" in str(w.message)]
    assert found and all(w.filename == __file__ for w in found), [(w.filename, str(w.message)[:60]) for w in caught]
