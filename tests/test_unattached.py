"""An optimizer that steps a connectome's weights without being attached to it is warned of
(adaptive/unattached.py): its moments and dense gradients revive pruned synapses silently otherwise."""
import gc
import warnings

import pytest
import torch
import torch.nn.functional as F

import adaptive


def _run(switch_to=None, attach=None, steps=8):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.3, update_every=2, end_step=20)
    for s in range(steps):
        if s == 3 and switch_to is not None:
            opt = switch_to(model)
            if attach is not None:
                attach(conn, ctrl, opt)
        F.cross_entropy(model(torch.randn(4, 6)), torch.randint(0, 3, (4,))).backward()
        opt.step()
        opt.zero_grad()
    revived = sum(int((p[~conn.masks[n]] != 0).sum()) for n, p in conn.params.items())
    return revived, ctrl


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def test_an_optimizer_built_anew_and_not_attached_is_warned_of():
    with pytest.warns(UserWarning, match=r"not attached to \(SGD\) steps its weights 0.weight, 2.weight.*ctrl.attach"):
        revived, _ = _run(switch_to=_sgd)
    assert revived > 0  # what the warning is about: the pruned synapses moved


def test_attaching_the_new_optimizer_keeps_pruned_synapses_at_zero_quietly():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        revived, ctrl = _run(switch_to=_sgd, attach=lambda conn, ctrl, opt: ctrl.attach(opt))
    assert revived == 0 and ctrl.events[-1]["step"] == 8


def test_a_second_optimizer_over_some_layers_is_warned_of_once_and_quiet_once_attached():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    body = torch.optim.SGD(model[0].parameters(), lr=0.1, momentum=0.9)
    head = torch.optim.Adam(model[2].parameters(), lr=1e-2)
    conn = adaptive.Connectome(model)
    adaptive.Controller(conn, body, policy="rigl", density=0.3, update_every=2, end_step=20)

    def step():
        F.cross_entropy(model(torch.randn(4, 6)), torch.randint(0, 3, (4,))).backward()
        head.step()
        body.step()  # the controller's optimizer stepped last, as the docs ask
        body.zero_grad()
        head.zero_grad()

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(4):
            step()
    assert [str(w.message) for w in seen if "not attached" in str(w.message)] and \
        sum("not attached" in str(w.message) for w in seen) == 1
    assert "steps its weights 2.weight (" in str(seen[0].message)
    conn.attach(head)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(4):
            step()
    assert all(int((p[~conn.masks[n]] != 0).sum()) == 0 for n, p in conn.params.items())


def test_an_optimizer_after_detach_trains_densely_without_a_warning():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    conn = adaptive.Connectome(model)
    adaptive.Controller(conn, opt, policy="magnitude", density=0.5)
    conn.detach()
    pruned = ~conn.masks["weight"]
    assert pruned.any() and not model.weight[pruned].any()
    other = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(2, 6)).sum().backward()
        other.step()
    assert model.weight[pruned].all()  # densely: every pruned weight moved, as detach() says it may


def test_weights_without_a_gradient_in_an_unattached_optimizer_are_warned_of_only_once_they_have_one():
    """Every torch optimizer leaves a weight with no gradient as it is (a frozen layer listed in a second
    optimizer built from model.parameters()): no warning then, but one as soon as it gets a gradient."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model[2].parameters(), lr=0.1, momentum=0.9)
    conn = adaptive.Connectome(model)
    conn.attach(opt)
    other = torch.optim.SGD(model[0].parameters(), lr=0.1, momentum=0.9)
    model[0].requires_grad_(False)

    def step():
        F.cross_entropy(model(torch.randn(4, 6)), torch.randint(0, 3, (4,))).backward()
        opt.step()
        other.step()
        opt.zero_grad()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            step()
    model[0].requires_grad_(True)
    with pytest.warns(UserWarning, match=r"not attached to \(SGD\) steps its weights 0.weight \(the Connectome is attached to SGD\)"):
        step()


def test_the_warning_says_so_where_the_optimizer_the_connectome_was_attached_to_is_gone():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    conn = adaptive.Connectome(model)
    conn.attach(opt)
    conn.set_masks({"weight": torch.rand(3, 6) < 0.5})
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)  # the first one is gone: nothing else refers to it
    with pytest.warns(UserWarning, match=r"steps its weights weight \(the optimizer the Connectome was attached to is "
                                         r"gone, but it still masks these weights\)") as seen:
        model(torch.randn(2, 6)).sum().backward()
        opt.step()
    assert "attached to )" not in str(seen[0].message)


def test_each_new_connectome_is_warned_of_though_it_may_take_a_dead_ones_id():
    """Once per optimizer and connectome: a connectome built after another was dropped (CPython often gives
    it the dead one's id) is warned of again, not taken for the one already warned about."""
    model = torch.nn.Linear(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    other = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = 0
    for _ in range(12):
        conn = adaptive.Connectome(model)
        conn.attach(opt)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            model(torch.randn(2, 6)).sum().backward()
            other.step()
            other.step()  # the same pair again: not warned twice
            opt.zero_grad()
        seen += sum("not attached" in str(x.message) for x in w)
        conn.detach()
        del conn
        gc.collect()
    assert seen == 12


def _hand_driven(attach_first: bool, calls_step: bool):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    conn = adaptive.Connectome(model)
    if attach_first:
        conn.attach(opt)
    ctrl = adaptive.Controller(conn, policy="rigl", density=0.3, update_every=2, end_step=20)
    if not attach_first and calls_step:
        conn.attach(opt)  # the Controller built first, the connectome attached after: as good
    for _ in range(4):
        F.cross_entropy(model(torch.randn(4, 6)), torch.randint(0, 3, (4,))).backward()
        if calls_step:
            ctrl.observe()
        opt.step()
        opt.zero_grad()
        if calls_step:
            ctrl.step()
    return sum(int((p[~conn.masks[n]] != 0).sum()) for n, p in conn.params.items())


def test_a_hand_driven_controller_over_a_connectome_attached_to_none_is_warned_of():
    """Controller(conn, policy=...) without an optimizer, conn.attach forgotten, and a loop that never calls
    ctrl.step(): density() said 0.3 while 838 pruned weights moved off 0.0, with no warning (the one that
    names the fix came from ctrl.step(), never called). The documented ways stay quiet."""
    with pytest.warns(UserWarning, match=r"an optimizer \(SGD\) steps the weights 0.weight, 2.weight of a Connectome "
                                         r"attached to no optimizer, whose Controller is driven by hand: .*conn.attach"
                                         r"\(optimizer\)"):
        revived = _hand_driven(attach_first=False, calls_step=False)
    assert revived > 0  # what the warning is about
    for attach_first in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _hand_driven(attach_first=attach_first, calls_step=True) == 0
