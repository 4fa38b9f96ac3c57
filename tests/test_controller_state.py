"""The controller leaves no half-done state: a failed construction, a rolled-back edit, a second
attach and a foreign checkpoint each leave the connectome, the optimizer and the controller as
they were (invariant 6)."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive

torch.set_num_threads(1)


def controller_net():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
    return m, adaptive.Connectome(m)


def train(m, opt, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(8, 20, generator=g), torch.randint(0, 5, (8,), generator=g)
        F.cross_entropy(m(x), y).backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("case", ["policy as optimizer", "model as optimizer", "foreign optimizer", "budget", "option"])
def test_a_failed_construction_leaves_the_connectome_as_it_was(case):
    m, conn = controller_net()
    before = conn.mask_hash(), {k: v.clone() for k, v in m.state_dict().items()}
    make = {
        "policy as optimizer": lambda: adaptive.Controller(conn, "rigl", density=0.3),
        "model as optimizer": lambda: adaptive.Controller(conn, m, policy="rigl", density=0.3),
        "foreign optimizer": lambda: adaptive.Controller(
            conn, torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=0.1), policy="rigl", density=0.3, grow_init="original"),
        "budget": lambda: adaptive.Controller(conn, None, policy="rigl", density=0.1, min_density=0.9, grow_init="original"),
        "option": lambda: adaptive.Controller(conn, None, policy="threshold", prune_boundary="x"),
    }[case]
    match = {"policy as optimizer": "policy='rigl'", "model as optimizer": "torch.optim.Optimizer",
             "foreign optimizer": "none of this connectome", "budget": "min_density",
             "option": "option prune_boundary must be a number"}[case]
    with pytest.raises((TypeError, ValueError), match=match):
        make()
    assert conn.mask_hash() == before[0]
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before[1].items())
    assert conn._observers == [] and conn.original == {}
    # and nothing lingers: gradients at pruned positions are masked in backward as before
    masks = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) < 0.5 for n, p in conn.params.items()}
    conn.set_masks(masks)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    conn.attach(opt)
    F.cross_entropy(m(torch.randn(8, 20)), torch.randint(0, 5, (8,))).backward()
    assert all(float(p.grad[~conn.masks[n]].abs().max()) == 0.0 for n, p in conn.params.items())


def test_a_rolled_back_edit_keeps_the_optimizer_moments():
    m, conn = controller_net()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    calls = [0]

    def holdout_loss():  # every edit "hurts": the line search rolls the update back
        calls[0] += 1
        return float(calls[0])

    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.3, update_every=1000, end_step=5000, seed=0,
                               holdout_loss=holdout_loss, line_search_tries=1, line_search_tolerance=0.0)
    train(m, opt, 5)
    ctrl.detach()  # driven explicitly from here (an attached one refuses observe()); the connectome stays on opt
    F.cross_entropy(m(torch.randn(8, 20)), torch.randint(0, 5, (8,))).backward()
    ctrl.observe()
    h0 = conn.mask_hash()
    w0 = {n: p.detach().clone() for n, p in conn.params.items()}
    s0 = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in conn.params.items()}
    ev = ctrl.update()
    assert ev["line_search_fraction"] == 0.0 and ev["pruned"] == ev["grown"] == 0
    assert conn.mask_hash() == h0
    assert all(torch.equal(w0[n], p) for n, p in conn.params.items())
    for n, p in conn.params.items():
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][k], s0[n][k]), (n, k)


def test_attaching_the_same_optimizer_twice_counts_each_step_once():
    m, conn = controller_net()
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.3, update_every=10, end_step=100, seed=0)
    ctrl.attach(opt)
    train(m, opt, 20)
    assert ctrl.step_count == 20
    assert [e["step"] for e in ctrl.events if e["kind"] != "init"] == [10, 20]
    other = torch.optim.SGD(m.parameters(), lr=0.05)
    ctrl.attach(other)  # the controller now steps with the other optimizer only
    train(m, opt, 3)
    assert ctrl.step_count == 20
    train(m, other, 3)
    assert ctrl.step_count == 23


def test_loading_another_models_controller_state_changes_nothing():
    def make(h):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, h))
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        ctrl = adaptive.Controller(adaptive.Connectome(m), opt, policy="rigl", density=0.3, update_every=50,
                                   end_step=500, seed=0)
        g = torch.Generator().manual_seed(h)
        for _ in range(7):
            x = torch.randn(8, 20, generator=g)
            F.cross_entropy(m(x), torch.randint(0, h, (8,), generator=g)).backward()
            opt.step()
            opt.zero_grad()
        return ctrl

    a, b = make(5), make(7)
    b.step_count += 5
    before = a.step_count, len(a.events), {n: t.clone() for n, t in a.stats.g_sum.items()}
    with pytest.raises(ValueError, match=r"\['2.weight'\] has shape \(7, 32\).*another model"):
        a.load_state_dict(b.state_dict())
    assert (a.step_count, len(a.events)) == before[:2]
    assert all(torch.equal(t, before[2][n]) for n, t in a.stats.g_sum.items())
    with pytest.raises(ValueError, match="not a controller state_dict"):
        a.load_state_dict({"masks": {}})


@pytest.mark.parametrize("make, key, fresh", [
    (lambda ps: torch.optim.Adagrad(ps, lr=0.1, initial_accumulator_value=1.0), "sum", 1.0),
    (lambda ps: torch.optim.Rprop(ps, lr=0.01), "step_size", 0.01),  # it restarted at 0: the synapse stayed frozen
])
def test_a_regrown_synapse_starts_from_a_fresh_optimizer_state(make, key, fresh):
    torch.manual_seed(0)
    lin = nn.Linear(4, 2, bias=False)
    conn = adaptive.Connectome(lin)
    opt = make(lin.parameters())
    conn.attach(opt)
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0, 3] = False
    conn.set_masks({"weight": mask})
    for _ in range(3):
        lin(torch.randn(5, 4)).sum().backward()
        opt.step()
        opt.zero_grad()
    conn.set_masks({"weight": torch.ones(2, 4, dtype=torch.bool)})  # regrown at 0.0
    assert float(opt.state[lin.weight][key][0, 3]) == pytest.approx(fresh)  # as a fresh entry starts


def _same(a, b):
    """Bitwise equality of two state dicts (nested dicts, lists, tensors, numbers)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _trained(model, steps, seed, **kw):
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opts = dict(policy="utility", density=0.5, update_every=2, end_step=40, seed=0)
    opts.update(kw)
    ctrl = adaptive.Controller(adaptive.Connectome(model), opt, **opts)
    g = torch.Generator().manual_seed(seed)
    classes = model(torch.zeros(1, 8)).shape[1]
    for _ in range(steps):
        x = torch.randn(16, 8, generator=g)
        F.cross_entropy(model(x), torch.randint(0, classes, (16,), generator=g)).backward()
        opt.step()
        opt.zero_grad()
    return ctrl


@pytest.mark.parametrize("saved, loaded, match", [
    # a bare module's layers are named "weight" and "bias", with no dot: they were never checked, the counters
    # were overwritten and the stats' copy_ raised a bare RuntimeError
    (lambda: nn.Linear(8, 4), lambda: nn.Linear(8, 5), r"stats\.g_sum\['weight'\] has shape \(4, 8\), but layer 'weight' is \(5, 8\)"),
    (lambda: nn.Linear(8, 4), lambda: nn.Sequential(nn.Linear(8, 4)), r"holds layer 'weight', which this connectome does not have"),
    (lambda: nn.Sequential(nn.Linear(8, 4)), lambda: nn.Linear(8, 4), r"holds layer '0\.weight', which this connectome does not have"),
])
def test_a_bare_modules_controller_state_is_checked_like_any_other(saved, loaded, match):
    torch.manual_seed(0)
    sd = _trained(saved(), 5, seed=1).state_dict()
    torch.manual_seed(0)
    ctrl = _trained(loaded(), 3, seed=2)
    before = ctrl.state_dict()
    with pytest.raises(ValueError, match=match + r".*another model"):
        ctrl.load_state_dict(sd)
    assert _same(ctrl.state_dict(), before)


def _break_counts(sd):
    sd["stats"]["counts"] = {n: "three" for n in sd["stats"]["counts"]}  # after the sums were copied in


@pytest.mark.parametrize("policy, estimator, breaks, match", [
    ("utility", None, lambda sd: sd["stats"]["g_sum"].update(weight="garbage"), r"entry stats .*GradientStats.*TypeError"),
    ("utility", None, _break_counts, r"entry stats .*GradientStats.*ValueError"),
    ("utility", None, lambda sd: sd.update(stats="garbage"), r"entry stats .*not a dict"),
    ("threshold", None, lambda sd: sd["policy"].update(restore_boundary="garbage"), r"entry policy .*restore_boundary must be a number.*got .garbage."),
    ("utility", "presence", lambda sd: sd["estimators"]["drop"].update(t={"weight": "two"}), r"entry estimators\['drop'\]"),
    ("utility", None, lambda sd: sd.update(nonfinite_windows="x"), r"malformed"),
    ("utility", None, lambda sd: sd.update(events=5), r"malformed.*'events' is a int"),
    # counters taken as given: -3 counted the steps from below zero, 5.7 was cut to 5
    ("utility", None, lambda sd: sd.update(step_count=-3), r"malformed \('step_count' is -3, not a whole number of at least 0\)"),
    ("utility", None, lambda sd: sd.update(step_count=5.7), r"malformed \('step_count' is 5.7, not a whole number"),
    ("utility", None, lambda sd: sd.update(step_count=True), r"malformed \('step_count' is True"),
    ("utility", None, lambda sd: sd.update(nonfinite_windows=float("nan")), r"malformed \('nonfinite_windows' is nan"),
    # a NaN first moment beside a finite second moment, which no run gathers: loaded, it failed the next update
    # inside the estimator, which the error then blamed
    ("utility", None, lambda sd: sd["stats"]["g_sum"]["weight"].fill_(float("nan")),
     r"entry stats .*layer 'weight' hold 32 NaN or inf entries whose second moments are finite"),
])
def test_a_malformed_controller_state_changes_nothing(policy, estimator, breaks, match):
    kw = {"estimator": estimator} if estimator else {}
    sd = copy.deepcopy(_trained(nn.Linear(8, 4), 6, seed=1, policy=policy, **kw).state_dict())
    breaks(sd)
    ctrl = _trained(nn.Linear(8, 4), 3, seed=2, policy=policy, **kw)
    before = ctrl.state_dict()
    assert not _same(before["stats"], sd["stats"])  # a load that went through the sums would show
    with pytest.raises(ValueError, match=match + r".*(nothing was changed|Controller\.state_dict\(\))"):
        ctrl.load_state_dict(sd)
    assert _same(ctrl.state_dict(), before)
    assert ctrl.step_count == 3


def test_saved_counters_load_as_whole_numbers_and_a_window_with_a_nan_gradient_loads():
    """A state's counters may come as floats or 0-d tensors of whole numbers; a window that met a NaN gradient
    (first and second moments NaN alike: the next update skips it) is a state a run saves and loads."""
    sd = copy.deepcopy(_trained(nn.Linear(8, 4), 5, seed=1).state_dict())  # mid-window: one batch in the sums
    sd["step_count"], sd["nonfinite_windows"] = 5.0, torch.tensor(1)
    sd["stats"]["g_sum"]["weight"][0, 0] = float("nan")
    sd["stats"]["g2_sum"]["weight"][0, 0] = float("nan")
    ctrl = _trained(nn.Linear(8, 4), 3, seed=2)
    ctrl.load_state_dict(sd)
    assert (ctrl.step_count, ctrl.nonfinite_windows) == (5, 1) and type(ctrl.step_count) is int
    assert not ctrl.stats.finite()


def test_an_estimators_own_tensor_under_a_layers_name_is_not_taken_for_the_layers():
    """A plugin estimator keeping its own mixing weights under the key "weight" on a bare module (whose
    one layer is named "weight") could not load its own controller's state: the tensor was taken for
    the layer's and refused for its shape. A tensor of another rank than the layer's is the estimator's."""
    from adaptive.utility import register_estimator
    from adaptive.utility.base import Estimator, _ESTIMATORS

    class Mix(Estimator):
        def __init__(self):
            self.weight = torch.tensor([0.7, 0.3])

        def removal_cost(self, ctx):
            return self.weight[0] * ctx.weight.detach().abs() + self.weight[1] * ctx.weight.detach().square()

        restoration_gain = removal_cost

        def state_dict(self):
            return {"weight": self.weight.clone()}

        def load_state_dict(self, sd):
            self.weight = sd["weight"].clone()

    register_estimator("mix_own_weight")(Mix)
    try:
        def build():
            torch.manual_seed(0)
            return adaptive.Controller(adaptive.Connectome(nn.Linear(8, 4)), None, policy="utility",
                                       estimator="mix_own_weight", density=0.5, update_every=10)
        sd = build().state_dict()
        sd["estimators"]["drop"]["weight"] = torch.tensor([0.1, 0.9])
        ctrl = build()
        ctrl.load_state_dict(sd)
        assert torch.equal(ctrl.drop_est.weight, torch.tensor([0.1, 0.9]))
    finally:
        _ESTIMATORS.pop("mix_own_weight", None)


class _WithEmptyLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.e, self.b = nn.Linear(20, 32), nn.Linear(20, 0), nn.Linear(32, 5)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + self.e(x).sum()


def test_a_state_saved_with_an_empty_layer_still_loads():
    """Before weights with no entries (nn.Linear(20, 0)) were left out of connectomes, a controller
    kept per-layer statistics of them; such a checkpoint's controller state was refused as holding
    a layer 'this connectome does not have', so the run could not be resumed."""
    torch.manual_seed(0)
    m = _WithEmptyLayer()
    conn = adaptive.Connectome(m)
    assert "e.weight" not in conn.masks
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    ctrl = adaptive.Controller(conn, opt, policy="utility", estimator="taylor", density=0.5, update_every=4)
    train(m, opt, 6)
    sd = ctrl.state_dict()
    for key in ("g_sum", "g2_sum"):
        sd["stats"][key]["e.weight"] = torch.zeros(0, 20)  # as the old connectome's layer of no synapses left it
    old = copy.deepcopy(sd)

    m2 = _WithEmptyLayer()
    conn2 = adaptive.Connectome(m2)
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.1)
    ctrl2 = adaptive.Controller(conn2, opt2, policy="utility", estimator="taylor", density=0.5, update_every=4)
    ctrl2.load_state_dict(sd)
    assert ctrl2.step_count == ctrl.step_count and sd["stats"]["g_sum"].keys() == old["stats"]["g_sum"].keys()
    assert torch.equal(ctrl2.stats.g_sum["a.weight"], ctrl.stats.g_sum["a.weight"])
    sd["stats"]["g_sum"]["e.weight"] = torch.zeros(3, 20)  # a layer with entries there is another model's
    with pytest.raises(ValueError, match="holds layer 'e.weight', which this connectome does not have"):
        ctrl2.load_state_dict(sd)


@pytest.mark.parametrize("policy, estimator", [("utility", "taylor"), ("threshold", "curvature"), ("rigl", None)])
def test_a_state_saved_under_a_ddp_models_names_still_loads(policy, estimator):
    """A connectome built on the DDP wrapper accelerator.prepare returns named its layers module.NAME
    before it took the model's own names, and so did its controller's state (the gradient window, an
    estimator's or policy's per-layer state); the connectome's state then loaded into a connectome of
    the model, but the controller's was refused as holding a layer 'this connectome does not have'."""
    def prefixed(v):
        if isinstance(v, dict):
            return {(f"module.{k}" if k in conn.masks else k): prefixed(x) for k, x in v.items()}
        return [prefixed(x) for x in v] if isinstance(v, list) else v

    m, conn = controller_net()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    ctrl = adaptive.Controller(conn, opt, policy=policy, estimator=estimator, density=0.5, update_every=4, end_step=40)
    train(m, opt, 6)
    sd = ctrl.state_dict()
    old = prefixed(sd)
    assert "module.0.weight" in str(old) and "'0.weight'" not in str(old)
    m2, conn2 = controller_net()
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.1)
    ctrl2 = adaptive.Controller(conn2, opt2, policy=policy, estimator=estimator, density=0.5, update_every=4, end_step=40)
    ctrl2.load_state_dict(old)
    assert _same(ctrl2.state_dict(), sd)


def test_a_ddp_named_state_of_a_model_with_its_own_module_submodule_loads_under_its_names():
    """Wrapper prefixes were taken off name by name, until a name was a layer of the connectome: a
    state saved under DDP names of a model with its own ``module`` submodule (module.module.fc,
    module.fc) had both become module.fc, and one whose connectome held only module.fc, loaded into a
    connectome of fc alone, had module.fc's statistics taken as fc's."""
    class OwnModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Sequential()
            self.module.fc = nn.Linear(20, 20)
            self.fc = nn.Linear(20, 20)  # module.fc.weight's shape: only the names tell them apart

        def forward(self, x):
            return self.fc(torch.relu(self.module.fc(x)))

    def prefixed(v):
        if isinstance(v, dict):
            return {(f"module.{k}" if k in ("module.fc.weight", "fc.weight") else k): prefixed(x) for k, x in v.items()}
        return [prefixed(x) for x in v] if isinstance(v, list) else v

    def run(steps, **kw):
        torch.manual_seed(0)
        m = OwnModule()
        conn = adaptive.Connectome(m, **kw)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        ctrl = adaptive.Controller(conn, opt, policy="utility", estimator="taylor", density=0.5, update_every=4,
                                   end_step=40)
        train(m, opt, steps)
        return ctrl

    sd = run(6).state_dict()
    ctrl = run(0)
    ctrl.load_state_dict(prefixed(sd))
    assert _same(ctrl.state_dict(), sd)
    inner = run(6, include=["module.*"]).state_dict()
    assert set(inner["stats"]["g_sum"]) == {"module.fc.weight"}
    with pytest.raises(ValueError, match="holds layer 'module.fc.weight'"):
        run(0, exclude=["module.*"]).load_state_dict(inner)


def test_a_state_of_the_other_mode_is_refused_before_anything_loads():
    """A mask_only run's connectome state_dict (its frozen originals with it) loaded into a train-mode
    connectome, or the reverse, and a mask_only controller's state (a window of gradients of frozen
    weights) loaded into a train-mode controller were taken silently (the controller's only when both
    named their estimator: it was refused for the mode's other default, naming drop_by)."""
    torch.manual_seed(0)
    make = lambda mode: adaptive.Connectome(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), mode=mode)
    conns = {mode: make(mode) for mode in ("train", "mask_only")}
    ctrls = {mode: adaptive.Controller(c, policy="utility", estimator="curvature", density=0.5, update_every=2)
             for mode, c in conns.items()}
    g = torch.Generator().manual_seed(1)
    for mode, c in conns.items():  # different masks and controller states, to see that nothing loads
        c.set_masks({n: torch.rand(m.shape, generator=g) < 0.5 for n, m in c.masks.items()})
        ctrls[mode].step_count = 7 if mode == "mask_only" else 3
    for saved, into in (("mask_only", "train"), ("train", "mask_only")):
        conn, ctrl = conns[into], ctrls[into]
        before = conn.mask_hash(), {n: o.clone() for n, o in conn.original.items()}, ctrl.step_count
        with pytest.raises(ValueError, match=rf"connectome state_dict was saved in mode='{saved}', and this connectome "
                                             rf"runs mode='{into}': build the Connectome with mode='{saved}'.*set_masks"):
            conn.load_state_dict(conns[saved].state_dict())
        with pytest.raises(ValueError, match=rf"controller state was saved in mode='{saved}', and this connectome runs "
                                             rf"mode='{into}': build the Connectome with mode='{saved}'"):
            ctrl.load_state_dict(ctrls[saved].state_dict())
        assert (conn.mask_hash(), conn.original.keys(), ctrl.step_count) == (before[0], before[1].keys(), before[2])
        assert all(torch.equal(conn.original[n], o) for n, o in before[1].items())
        conn.set_masks(conns[saved].state_dict()["masks"])  # the fix named: the masks carry over
        assert conn.mask_hash() == conns[saved].mask_hash()
    sd = ctrls["train"].state_dict()
    del sd["mode"]  # saved before the mode was recorded: taken as it is
    ctrls["train"].load_state_dict(sd)


def _searched(seed_steps=6, **kw):
    """A gmp controller with a line search on a held-out loss that every prune raises (1 - density):
    at tolerance 0 every prune is rolled back, at inf (train mode's default) each is kept."""
    m, conn = controller_net()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    ctrl = adaptive.Controller(conn, opt, policy="gmp", density=0.3, budget="uniform", update_every=2, end_step=12,
                               holdout_loss=lambda: 1.0 - conn.density(), **kw)
    train(m, opt, seed_steps)
    return ctrl, conn


def test_a_loaded_state_keeps_the_line_search_tolerance_it_ran_with():
    """The tolerance is saved with the state: a controller built without one goes on with the state's
    (a run saved at 0.0 keeps vetoing); a state saved before it was recorded, whose events hold a
    checked update, ran at 0.0, the default then (train mode's default is now inf); one that ran no
    line search leaves the controller its own; another tolerance given is refused, changing nothing."""
    ran, _ = _searched(line_search_tolerance=0.0)
    sd = ran.state_dict()
    assert sd["line_search_tolerance"] == 0.0 and any(e["line_search_fraction"] == 0.0 for e in sd["events"])
    resumed, conn = _searched(seed_steps=0)
    assert resumed.line_search_tolerance == float("inf")
    resumed.load_state_dict(sd)
    assert resumed.line_search_tolerance == 0.0
    old = {k: v for k, v in sd.items() if k != "line_search_tolerance"}  # saved before it was recorded
    resumed, conn = _searched(seed_steps=0)
    resumed.load_state_dict(old)
    assert resumed.line_search_tolerance == 0.0
    unchecked, _ = _searched(seed_steps=0, line_search_tolerance=0.5)
    plain = {**old, "events": [e for e in old["events"] if e["line_search_fraction"] is None]}
    unchecked.load_state_dict(plain)  # (no line search ran: nothing to keep)
    assert unchecked.line_search_tolerance == 0.5
    given, conn = _searched(seed_steps=0, line_search_tolerance=float("inf"))
    with pytest.raises(ValueError, match=r"saved by a line search with line_search_tolerance=0.0, and this controller "
                                         r"was built with line_search_tolerance=inf: build it with "
                                         r"line_search_tolerance=0.0 \(or leave it unset\)"):
        given.load_state_dict(sd)
    assert given.step_count == 0 and given.events == [] and given.line_search_tolerance == float("inf")
    with pytest.raises(ValueError, match="line_search_tolerance is malformed .*it must be >= 0, got -1"):
        _searched(seed_steps=0)[0].load_state_dict({**sd, "line_search_tolerance": -1})
    no_check = adaptive.Controller(controller_net()[1], None, policy="gmp", density=0.3, update_every=2, end_step=12)
    assert no_check.state_dict()["line_search_tolerance"] is None  # (no holdout_loss: none ran)



def _threshold_run(holdout_loss):
    """A threshold controller driven explicitly, one window observed: its next update() runs the line search."""
    m, conn = controller_net()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    ctrl = adaptive.Controller(conn, opt, policy="threshold", density=0.5, update_every=1000, end_step=5000, seed=0,
                               holdout_loss=holdout_loss)
    train(m, opt, 3)
    ctrl.detach()
    F.cross_entropy(m(torch.randn(8, 20)), torch.randint(0, 5, (8,))).backward()
    ctrl.observe()
    return m, conn, ctrl


@pytest.mark.parametrize("value, said", [
    (torch.ones(32), "returned a Tensor of shape (32,) (torch.float32): reduce it to the mean held-out loss (.mean(), "
                     "or the loss's reduction='mean')"),
    (None, "returned None: return the loss (a missing return statement?)"),
    ("0.5", "returned str '0.5': return a number, not text"),
    (True, "returned bool True: return a real number"),
    (torch.tensor([1 + 2j]), "returned a Tensor of shape (1,) (torch.complex64): return a real number"),
])
def test_a_holdout_loss_that_gives_no_number_is_refused_and_the_update_leaves_everything_as_it_was(value, said):
    """A per-example loss (reduction='none') failed with torch's "only one element tensors can be converted to
    Python scalars", None with float()'s TypeError, naming neither holdout_loss nor the fix, and "0.5" was taken;
    the masks were rolled back but threshold's prune boundary and cubic start had moved, though nothing was edited."""
    m, conn, ctrl = _threshold_run(lambda: value)
    before = conn.mask_hash(), copy.deepcopy(ctrl.state_dict()["policy"]), len(ctrl.events)
    with pytest.raises(ValueError, match="holdout_loss\\(\\) must return the mean held-out loss as a real number") as info:
        ctrl.update()
    assert said in str(info.value)
    assert (conn.mask_hash(), ctrl.state_dict()["policy"], len(ctrl.events)) == before


@pytest.mark.parametrize("value", [0.25, 1, np.float32(0.25), np.array(0.25), np.array([0.25]), torch.tensor(0.25),
                                   torch.tensor([[0.25]], dtype=torch.float64)])
def test_a_holdout_loss_of_one_number_in_any_form_is_taken(value):
    m, conn, ctrl = _threshold_run(lambda: value)
    assert ctrl.update()["holdout_loss"] == (1.0 if value == 1 else 0.25)  # (a constant loss: every edit kept)


def test_an_update_that_fails_after_planning_puts_the_policys_state_back():
    """Any failure after the policy planned (here the line search's second held-out score, an interrupt between)
    rolls the connectome back and the policy's state with it."""
    calls = []

    def holdout_loss():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 1.0

    m, conn, ctrl = _threshold_run(holdout_loss)
    before = conn.mask_hash(), copy.deepcopy(ctrl.state_dict()["policy"])
    with pytest.raises(KeyboardInterrupt):
        ctrl.update()
    assert len(calls) == 2 and (conn.mask_hash(), ctrl.state_dict()["policy"]) == before
    event = ctrl.update()  # the same window, planned again from the policy's same state
    assert event["pruned"] > 0 and ctrl.state_dict()["policy"] != before[1]
