"""Controller: hand-computed policy cases, density invariants, determinism, bad configuration."""
import copy
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
from adaptive.budgets import get_budget
from adaptive.schedules import CubicDensity
from adaptive.utility import get_estimator

W = torch.tensor([[1.0, -5.0, 2.0, 0.1], [3.0, -0.2, 4.0, 0.5]])


def tiny(weight=W):
    m = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        m.weight.copy_(weight)
    return m


def set_grad(model, g):
    model.weight.grad = g.clone()


def test_magnitude_one_shot_hand_computed():
    m = tiny()
    conn = adaptive.Connectome(m)
    adaptive.Controller(conn, policy="magnitude", density=0.5, budget="uniform")
    expect = torch.tensor([[False, True, True, False], [True, False, True, False]])
    assert torch.equal(conn.masks["weight"], expect)
    assert torch.equal(m.weight, W * expect)


def test_global_budget_ranks_layers_together():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[10.0, 9.0], [8.0, 7.0]]))
        model[1].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 0.5]]))
    conn = adaptive.Connectome(model)
    adaptive.Controller(conn, policy="magnitude", density=0.5, budget="global")
    assert conn.masks["0.weight"].all() and not conn.masks["1.weight"].any()
    conn2 = adaptive.Connectome(model)
    model2 = model  # already pruned in place; rebuild from scratch for uniform
    with torch.no_grad():
        model2[0].weight.copy_(torch.tensor([[10.0, 9.0], [8.0, 7.0]]))
        model2[1].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 0.5]]))
    conn2 = adaptive.Connectome(model2)
    adaptive.Controller(conn2, policy="magnitude", density=0.5, budget="uniform")
    assert conn2.masks["0.weight"].sum() == 2 and conn2.masks["1.weight"].sum() == 2
    assert torch.equal(conn2.masks["1.weight"], torch.tensor([[False, True], [True, False]]))


def _sparse_ctrl(policy, **kw):
    m = tiny()
    conn = adaptive.Connectome(m)
    kw.setdefault("edit_fraction", 0.5)
    kw.setdefault("budget", "uniform")
    ctrl = adaptive.Controller(
        conn, policy=policy, density=0.5, init="magnitude", update_every=1,
        edit_decay="constant", seed=3, **kw,
    )
    return m, conn, ctrl


def test_set_drops_smallest_and_grows_among_absent():
    m, conn, ctrl = _sparse_ctrl("set")
    before = conn.masks["weight"].clone()  # keeps |w| in {5, 4, 3, 2}
    ctrl.step()
    after = conn.masks["weight"]
    dropped, grown = before & ~after, ~before & after
    # the two smallest live magnitudes are 2 (0,2) and 3 (1,0)
    assert torch.equal(dropped, torch.tensor([[False, False, True, False], [True, False, False, False]]))
    assert int(grown.sum()) == 2 and not (grown & before).any()
    assert int(after.sum()) == 4
    assert torch.all(m.weight[grown] == 0)  # grown at zero


def test_rigl_grows_largest_gradient():
    m, conn, ctrl = _sparse_ctrl("rigl")
    g = torch.tensor([[0.0, 0.0, 0.0, 9.0], [0.0, 1.0, 0.0, -7.0]])
    set_grad(m, g)
    ctrl.observe()
    ctrl.step()
    after = conn.masks["weight"]
    expect = torch.tensor([[False, True, False, True], [False, False, True, True]])
    assert torch.equal(after, expect)


def test_utility_taylor_hand_computed():
    m, conn, ctrl = _sparse_ctrl("utility", estimator="taylor")
    # live weights: -5 (0,1), 2 (0,2), 3 (1,0), 4 (1,2). cost = -g*w
    g = torch.tensor([[0.0, -1.0, 1.0, 0.0], [0.0, 3.0, 0.0, 0.0]])
    # costs: (0,1): -(-1)(-5) = -5 ; (0,2): -(1)(2) = -2 ; (1,0): 0 ; (1,2): 0
    # gains (train mode, g^2): (0,0) 0, (0,3) 0, (1,1) 9, (1,3) 0
    set_grad(m, g)
    ctrl.observe()
    ctrl.step()
    after = conn.masks["weight"]
    assert not after[0, 1] and not after[0, 2]  # the two cheapest removals
    assert after[1, 1]  # the largest gain
    assert int(after.sum()) == 4


def test_balanced_only_swaps_when_gain_exceeds_cost():
    torch.manual_seed(0)
    m = tiny()
    conn = adaptive.Connectome(m, mode="mask_only")
    ctrl = adaptive.Controller(conn, policy="balanced", density=0.5, budget="global", estimator="taylor",
                               update_every=1, edit_fraction=1.0, edit_decay="constant")
    before = conn.masks["weight"].clone()  # magnitude init keeps 5, 4, 3, 2
    # gradient: restoring (0,0) (w0 = 1) with g = -10 saves 10; the cheapest removal (0,2)=2 with g=0 costs 0
    g = torch.zeros(2, 4)
    g[0, 0] = -10.0
    g[1, 0] = 1.0  # removing w=3 with g=1 costs -3 -> removal is beneficial too
    set_grad(m, g)
    ctrl.observe()
    ev = ctrl.step()
    after = conn.masks["weight"]
    assert int(after.sum()) == int(before.sum())
    assert after[0, 0] and not after[1, 0]
    assert ev["pruned"] == ev["grown"] == 1  # (0,3) gain 0 < cost 0 of the next pair: no swap
    assert m.weight[0, 0] == 1.0  # restored bit-exact from the original


def test_density_constant_under_rewiring_policies():
    torch.manual_seed(0)
    X, Y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    for policy in ["set", "rigl", "utility", "balanced"]:
        model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
        conn = adaptive.Connectome(model, ensemble="kernel")
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        ctrl = adaptive.Controller(conn, opt, policy=policy, density=0.3, budget="erk", update_every=2,
                                   end_step=20, edit_fraction=0.5, seed=1)
        d0 = conn.num_live()
        per_layer = {n: int(v.sum()) for n, v in conn.masks.items()}
        for _ in range(20):
            F.cross_entropy(model(X), Y).backward()
            opt.step()
            opt.zero_grad()
            assert conn.num_live() == d0, policy
            if policy != "balanced":
                assert {n: int(v.sum()) for n, v in conn.masks.items()} == per_layer, policy
        assert sum(e["pruned"] for e in ctrl.events) > 0, policy


@pytest.mark.parametrize("estimator", [None, "magnitude", "taylor"])
def test_gmp_follows_cubic_schedule(estimator):
    """With a gradient-based estimator a pruned synapse's cost is not the lowest by itself (taylor's
    -g*w is 0 at w = 0, above a live synapse whose removal would lower the loss): gmp must rank
    absent ensembles last, or they take places in the kept count and the density falls below the
    schedule."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 50), nn.ReLU(), nn.Linear(50, 5))
    conn = adaptive.Connectome(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    kw = {} if estimator is None else dict(estimator=estimator)
    ctrl = adaptive.Controller(conn, opt, policy="gmp", density=0.1, budget="uniform", update_every=5,
                               start_step=0, end_step=50, **kw)
    assert conn.density() == 1.0
    sched = CubicDensity(1.0, 0.1, 0, 50)
    X, Y = torch.randn(32, 20), torch.randint(0, 5, (32,))
    for step in range(1, 51):
        F.cross_entropy(model(X), Y).backward()
        opt.step()
        opt.zero_grad()
        if step % 5 == 0:
            want = sched(step)
            assert abs(conn.density() - want) <= 2 / conn.num_synapses() + 1e-9, (step, conn.density(), want)
    assert abs(conn.density() - 0.1) < 1e-3 and ctrl.step_count == 50  # (the optimizer's hooks stepped it)


def test_erk_sums_exactly_and_respects_capacity():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3), nn.Flatten(), nn.Linear(32 * 4, 10), nn.Linear(10, 10))
    conn = adaptive.Connectome(model)
    total = conn.num_synapses()
    for d in [0.05, 0.1, 0.3, 0.77, 0.95]:
        counts = get_budget("erk")(conn.layers, d)
        assert sum(counts.values()) == round(d * total)
        assert all(0 <= counts[n] <= conn.layers[n].numel for n in counts)
    counts = get_budget("erk")(conn.layers, 0.3)
    assert counts["4.weight"] == conn.layers["4.weight"].numel  # small layer capped at dense
    counts = get_budget("erk")(conn.layers, 0.3, protected=["0.weight"], min_density=0.05)
    assert counts["0.weight"] == conn.layers["0.weight"].numel
    assert sum(counts.values()) == round(0.3 * total)
    for n in counts:
        assert counts[n] >= math.ceil(0.05 * conn.layers[n].numel)
    with pytest.raises(ValueError, match="too low for the protected"):
        get_budget("erk")(conn.layers, 0.01, protected=["1.weight"])


def test_regrown_weights_and_moments_are_zero():
    torch.manual_seed(0)
    X, Y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    for make in [lambda p: torch.optim.Adam(p, lr=1e-2), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3)]:
        model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
        opt = make(model.parameters())
        conn = adaptive.Connectome(model)
        ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.3, budget="uniform", update_every=3,
                                   end_step=30, edit_fraction=0.5)
        checked = 0
        for step in range(1, 31):
            before = {n: m.clone() for n, m in conn.masks.items()}
            F.cross_entropy(model(X), Y).backward()
            opt.step()
            opt.zero_grad()
            if step % 3 == 0:
                for n, p in conn.params.items():
                    grown = conn.masks[n] & ~before[n]
                    pruned = ~conn.masks[n]
                    if grown.any():
                        checked += 1
                        assert torch.all(p[grown] == 0)
                        for v in opt.state[p].values():
                            if torch.is_tensor(v) and v.shape == p.shape:
                                assert torch.all(v[grown] == 0) and torch.all(v[pruned] == 0)
        assert checked > 0 and ctrl.step_count == 30  # (the optimizer's hooks stepped it)


@pytest.mark.parametrize("policy", ["set", "rigl"])
def test_adafactor_under_a_growing_policy_keeps_pruned_weights_zero_and_warns_once_of_its_factored_state(policy):
    """Adafactor's second moments of a weight are factored (row_var, col_var: averages shared by a row's
    or a column's synapses), so they cannot be reset for a regrown synapse: they are left as they are,
    which errs nowhere and keeps every pruned weight exactly 0.0 after every step, and the first
    regrowth warns once (it grew silently, with its row's stale, decayed averages)."""
    torch.manual_seed(0)
    X, Y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3))
    opt = torch.optim.Adafactor(model.parameters(), lr=1e-2)
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, opt, policy=policy, density=0.3, budget="uniform", update_every=3,
                               end_step=30, edit_fraction=0.5, seed=0)
    grown = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 31):
            before = {n: m.clone() for n, m in conn.masks.items()}
            F.cross_entropy(model(X), Y).backward()
            opt.step()
            opt.zero_grad()
            for n, p in conn.params.items():
                grown += int((conn.masks[n] & ~before[n]).sum())
                assert torch.equal(p[~conn.masks[n]], torch.zeros_like(p[~conn.masks[n]]))
                assert torch.isfinite(p).all()
    told = [str(w.message) for w in caught if "cannot be reset for the synapses regrown" in str(w.message)]
    assert grown > 0 and ctrl.step_count == 30
    assert len(told) == 1, told  # once per optimizer, however many edits regrow
    assert told[0].startswith("Adafactor keeps state for 0.weight (32, 10) that is not one number per synapse "
                              "(row_var (32, 1), col_var (1, 10)")
    assert "row_var" in opt.state[model[0].weight] and "variance" not in opt.state[model[0].weight]


def test_an_optimizer_with_per_synapse_state_regrows_without_that_warning():
    """The warning is Adafactor's factored state's: Adam's moments are reset per synapse, silently."""
    caught = _set_run_warnings(lambda params: torch.optim.Adam(params, lr=1e-2), steps=10)
    assert not [w for w in caught if "cannot be reset" in str(w.message)]


def _set_run_warnings(make_optimizer, steps):
    """The warnings of ``steps`` steps of a small MLP under policy set (density 0.3, an update every 2 steps)
    with the optimizer ``make_optimizer(params)`` gives, checking after every step that each pruned weight is 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3))
    opt = make_optimizer(model.parameters())
    conn = adaptive.Connectome(model)
    adaptive.Controller(conn, opt, policy="set", density=0.3, budget="uniform", update_every=2, end_step=steps,
                        seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            F.cross_entropy(model(torch.randn(16, 10)), torch.randint(0, 3, (16,))).backward()
            opt.step()
            opt.zero_grad()
            for n, p in conn.params.items():
                assert not p[~conn.masks[n]].any()
    return caught


class _FlatMomentum(torch.optim.Optimizer):
    """Heavy-ball SGD keeping its momentum as a flat copy of each weight (one number per synapse, laid out
    otherwise than the weight): a legitimate layout the per-synapse reset cannot map to synapses."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    buf = self.state[p].setdefault("flat_momentum", torch.zeros(p.numel()))
                    buf.mul_(0.9).add_(p.grad.reshape(-1))
                    p.sub_(g["lr"] * buf.view_as(p))


def test_per_synapse_state_of_another_layout_is_warned_of_once_in_its_own_words():
    """State of one number per synapse but another shape (a flat copy of the weight) is left as it is on
    regrowth, as Adafactor's is, and warned of once; the warning said it was "not one number per synapse
    ... shared by several synapses" and spoke of Adafactor's rows and columns, which it is not."""
    caught = _set_run_warnings(lambda params: _FlatMomentum(params, lr=0.05), steps=12)
    told = [str(w.message) for w in caught if "cannot be reset for the synapses regrown" in str(w.message)]
    assert len(told) == 1, told
    assert told[0].startswith("_FlatMomentum keeps state for 0.weight (32, 10) of one number per synapse but not "
                              "shaped like the weight (flat_momentum (320,))"), told[0]
    assert "shared by several" not in told[0] and "Adafactor" not in told[0]


def test_lbfgs_history_holds_nothing_at_pruned_positions_after_an_edit():
    """L-BFGS keeps flat history vectors under its first parameter, which the per-parameter repair
    never reached: after each edit its direction and curvature pairs still held values at the
    newly pruned positions, and a run of set edits diverged to NaN within five steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 3))
    x, y = torch.randn(2, 4, 8, 8), torch.randint(0, 3, (2,), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=4)
    conn = adaptive.Connectome(model)
    adaptive.Controller(conn, opt, policy="set", density=0.5, budget="uniform", update_every=2, end_step=10, seed=0)
    params = opt._params
    edits = []
    conn.add_edit_listener(lambda ch: edits.append(1))

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    checked = 0
    for _ in range(10):
        before = len(edits)
        opt.step(closure)
        pruned = torch.cat([(~conn.masks[n]).reshape(-1) if n in conn.masks else torch.zeros(p.numel(), dtype=torch.bool)
                            for n, p in zip(dict(model.named_parameters()), params)])
        state = opt.state.get(params[0]) or {}
        flat = [state[k] for k in ("d", "prev_flat_grad") if k in state] + state.get("old_dirs", []) + state.get("old_stps", [])
        assert all(not v[pruned].any() for v in flat)
        checked += len(edits) > before
    assert checked >= 3
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert closure().item() < 1.0


def test_mask_only_restoration_bit_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    ref = {n: p.detach().clone() for n, p in model.named_parameters()}
    conn = adaptive.Connectome(model, mode="mask_only")
    ctrl = adaptive.Controller(conn, policy="utility", estimator="obd", density=0.4, budget="global",
                               update_every=1, edit_fraction=0.3, edit_decay="constant")
    X, Y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    grown_total = 0
    for _ in range(6):
        F.cross_entropy(model(X), Y).backward()
        ctrl.observe()
        model.zero_grad()
        ev = ctrl.step()
        grown_total += ev["grown"]
        for n, p in conn.params.items():
            m = conn.masks[n]
            assert torch.equal(p[m].view(torch.int32), ref[n][m].view(torch.int32))
            assert torch.all(p[~m] == 0)
    assert grown_total > 0


def test_determinism_two_runs_same_masks():
    def run():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        conn = adaptive.Connectome(model)
        adaptive.Controller(conn, opt, policy="set", density=0.3, update_every=2, end_step=20, seed=7)
        X, Y = torch.randn(64, 10), torch.randint(0, 3, (64,))
        hashes = []
        for step in range(20):
            F.cross_entropy(model(X), Y).backward()
            opt.step()
            opt.zero_grad()
            hashes.append(conn.mask_hash())
        return hashes

    assert run() == run()


def test_window_limits_observation():
    m, conn, ctrl = _sparse_ctrl("rigl", window=1)
    ctrl.update_every = 4
    observed = []
    for step in range(8):
        set_grad(m, torch.ones(2, 4))
        ctrl.observe()
        observed.append(ctrl.stats.count)
        ctrl.step()
    # only the step right before each update is observed
    assert observed == [0, 0, 0, 1, 0, 0, 0, 1]


@pytest.mark.parametrize("start_step, window, first", [(6, 3, 3), (6, 5, 5), (2, 3, 2)])
def test_the_first_updates_window_holds_the_steps_before_start_step(start_step, window, first):
    """window: the last ``window`` steps before each update, the first (at start_step) too. Steps
    before start_step were never observed, so that update read one gradient (its own step's) where
    window=None reads every step since the start."""
    m, conn, ctrl = _sparse_ctrl("rigl", window=window, start_step=start_step)
    ctrl.update_every = 4
    observed = {}
    for step in range(1, start_step + 9):
        set_grad(m, torch.ones(2, 4))
        ctrl.observe()
        if ctrl.due(step):
            observed[step] = ctrl.stats.count
        ctrl.step()
    assert observed == {start_step: first, start_step + 4: min(window, 4), start_step + 8: min(window, 4)}


def test_a_state_saved_inside_the_first_window_before_start_step_resumes_as_the_run_went_on():
    """The steps of the first update's window before start_step are in the saved state: resumed
    from a step between them, the first update reads the same window as the run never stopped.
    (A state saved there before they were observed resumes with the steps it has, fewer.)"""
    def run(ctrl, m, steps, seen):
        for step in steps:
            set_grad(m, torch.full((2, 4), float(step)))
            ctrl.observe()
            if ctrl.due(step):
                seen[step] = (ctrl.stats.count, ctrl.stats.g_sum["weight"].clone())
            ctrl.step()

    whole, resumed = {}, {}
    m, conn, ctrl = _sparse_ctrl("rigl", window=3, start_step=6)
    ctrl.update_every = 4
    run(ctrl, m, range(1, 11), whole)
    m, conn, ctrl = _sparse_ctrl("rigl", window=3, start_step=6)
    ctrl.update_every = 4
    run(ctrl, m, range(1, 5), resumed)
    saved = copy.deepcopy((conn.state_dict(), ctrl.state_dict()))
    m, conn, ctrl = _sparse_ctrl("rigl", window=3, start_step=6)
    ctrl.update_every = 4
    conn.load_state_dict(saved[0])
    ctrl.load_state_dict(saved[1])
    run(ctrl, m, range(5, 11), resumed)
    assert whole.keys() == resumed.keys() == {6, 10} and whole[6][0] == 3
    assert all(whole[s][0] == resumed[s][0] and torch.equal(whole[s][1], resumed[s][1]) for s in whole)


@pytest.mark.parametrize("end_step", [None, 3])
def test_a_one_shot_prune_by_an_estimator_stops_observing_once_done(end_step):
    """The magnitude policy with a gradient estimator prunes once, at its first update; it went on
    adding every later gradient to the window (and keeping pruned gradients dense for it), which no
    update read: without end_step each empty update reduced and reset it, past end_step it grew
    for the rest of the run. Once done, nothing is observed and the updates log empty events."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctrl = adaptive.Controller(adaptive.Connectome(model), opt, policy="magnitude", estimator="taylor", density=0.5,
                               update_every=3, end_step=end_step)
    conn = ctrl.conn

    def train(steps):
        for _ in range(steps):
            F.cross_entropy(model(x), y).backward()
            pruned = [p.grad[~conn.masks[n]] for n, p in conn.params.items()]
            opt.step()
            opt.zero_grad()
        return pruned

    train(2)
    assert ctrl.stats.count == 2 and not ctrl.finished  # the window before the prune is gathered
    train(1)
    assert ctrl.events[0]["pruned"] > 0 and ctrl.finished
    masks = {n: m.clone() for n, m in conn.masks.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an update with an empty window must not warn that nothing was observed
        pruned = train(5)
    assert ctrl.stats.count == 0 and ctrl.stats.state_dict()["count"] == 0
    assert all(float(g.abs().sum()) == 0 for g in pruned)  # masked in backward: no dense gradient kept for it
    assert all(torch.equal(conn.masks[n], m) for n, m in masks.items())
    assert [e["pruned"] for e in ctrl.events] == ([ctrl.events[0]["pruned"], 0] if end_step is None
                                                  else [ctrl.events[0]["pruned"]])


def test_a_policy_keeping_its_own_finished_flag_still_builds_and_stops_observing_by_it():
    """A plugin policy written before Policy.finished existed may keep a flag of that name itself;
    finished was a property without a setter, so ``self.finished = False`` in its __init__ raised
    AttributeError. The flag it sets is the one the controller reads."""
    from adaptive.policies import EditPlan, Policy

    class PruneOnceThenStop(Policy):
        drop_by = "estimator"

        def __init__(self):
            self.finished = False

        def update(self, ctrl, step):
            self.finished = True
            return EditPlan()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctrl = adaptive.Controller(adaptive.Connectome(model), opt, policy=PruneOnceThenStop(), estimator="taylor",
                               density=0.5, update_every=2)
    for step in range(1, 5):
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        assert ctrl.finished == (step >= 2) and ctrl.stats.count == (step if step < 2 else 0)


def test_events_serialise(tmp_path):
    m, conn, ctrl = _sparse_ctrl("set")
    ctrl.step()
    path = tmp_path / "events.jsonl"
    ctrl.write_events(path)
    import json

    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == len(ctrl.events) == 2  # init + one update
    for key in ["step", "pruned", "grown", "density", "layer_density", "boundaries", "est_loss_change", "est_score_change",
                "est_growth_gain", "actual_loss_change"]:
        assert key in lines[-1]


def test_line_search_rolls_back_harmful_update():
    torch.manual_seed(0)
    m = tiny()
    conn = adaptive.Connectome(m, mode="mask_only")
    X = torch.randn(16, 4)
    target = m(X).detach()
    calls = []

    def holdout():
        calls.append(1)
        return float(((m(X) - target) ** 2).mean())

    ctrl = adaptive.Controller(conn, policy="threshold", estimator="taylor", density=0.5, update_every=1,
                               edit_fraction=0.5, edit_decay="constant", holdout_loss=holdout, line_search_tries=2)
    set_grad(m, torch.zeros(2, 4))  # no gradient signal: every removal looks free but hurts
    ctrl.observe()
    ev = ctrl.step()
    assert ev["line_search_fraction"] == 0.0 and ev["pruned"] == 0
    assert conn.density() == 1.0 and torch.equal(m.weight, W)
    assert len(calls) >= 3


def test_state_dict_round_trip():
    m, conn, ctrl = _sparse_ctrl("rigl")
    set_grad(m, torch.ones(2, 4))
    ctrl.observe()
    ctrl.step()
    sd = ctrl.state_dict()
    m2, conn2, ctrl2 = _sparse_ctrl("rigl")
    ctrl2.load_state_dict(sd)
    assert ctrl2.step_count == ctrl.step_count and ctrl2.events == ctrl.events


@pytest.mark.parametrize("estimator", ["presence", "evidence"])
def test_stateful_estimator_survives_a_checkpoint(estimator, tmp_path):
    """A resumed run continues exactly as the uninterrupted one: the estimator's learned state
    travels in the controller's state_dict (without it, the continuation differs)."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 32, generator=gen)
    grads = [torch.randn(16, 32, generator=gen) for _ in range(12)]

    def build():
        m = tiny(weight)
        conn = adaptive.Connectome(m)
        est = get_estimator(estimator, step=0.3)  # large steps: the state matters within a few updates
        ctrl = adaptive.Controller(conn, policy="utility", estimator=est, density=0.5, init="magnitude",
                                   update_every=2, edit_fraction=0.3, edit_decay="constant", seed=3)
        return m, conn, ctrl

    def run(m, ctrl, conn, gs):
        out = []
        for g in gs:
            set_grad(m, g)
            ctrl.observe()
            ctrl.step()
            out.append(conn.masks["weight"].clone())
        return out

    m, conn, ctrl = build()
    run(m, ctrl, conn, grads[:6])
    torch.save({"model": m.state_dict(), "conn": conn.state_dict(), "ctrl": ctrl.state_dict()}, tmp_path / "ck.pt")
    straight = run(m, ctrl, conn, grads[6:])

    def resumed(with_estimator):
        ck = torch.load(tmp_path / "ck.pt", weights_only=False)
        m2, conn2, ctrl2 = build()
        m2.load_state_dict(ck["model"])
        conn2.load_state_dict(ck["conn"])
        if not with_estimator:
            ck["ctrl"].pop("estimators")
        ctrl2.load_state_dict(ck["ctrl"])
        return run(m2, ctrl2, conn2, grads[6:])

    assert all(torch.equal(a, b) for a, b in zip(resumed(True), straight))
    assert not all(torch.equal(a, b) for a, b in zip(resumed(False), straight))


@pytest.mark.parametrize("estimator", ["presence", "evidence", "taylor"])
def test_a_state_dict_is_a_copy_the_run_does_not_change(estimator):
    """state_dict() hands over copies (one per tensor, on the CPU): the masks, originals, statistics
    and estimator moments it holds stay as they were while the run goes on and edits, pruning and
    re-growing, the live tensors in place."""
    import copy

    gen = torch.Generator().manual_seed(0)
    m = tiny(torch.randn(16, 32, generator=gen))
    conn = adaptive.Connectome(m)
    conn.keep_original()
    est = get_estimator(estimator, **({} if estimator == "taylor" else {"step": 0.3}))
    ctrl = adaptive.Controller(conn, policy="utility", estimator=est, density=0.5, init="magnitude",
                               update_every=2, edit_fraction=0.3, edit_decay="constant", seed=3)

    def run(steps):
        for _ in range(steps):
            set_grad(m, torch.randn(16, 32, generator=gen))
            ctrl.observe()
            ctrl.step()

    run(4)
    states = {"conn": conn.state_dict(), "ctrl": ctrl.state_dict()}
    frozen = copy.deepcopy(states)
    before = conn.masks["weight"].clone()
    with torch.no_grad():
        conn.original["weight"].mul_(2.0)  # in place, as a caller might
        conn.masks["weight"].logical_not_()
        conn.masks["weight"].logical_not_()
    run(8)
    assert not torch.equal(conn.masks["weight"], before)  # the run did edit

    def tensors(x, path=""):
        if isinstance(x, torch.Tensor):
            yield path, x
        elif isinstance(x, dict):
            for k, v in x.items():
                yield from tensors(v, f"{path}/{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                yield from tensors(v, f"{path}/{i}")

    now, then = dict(tensors(states)), dict(tensors(frozen))
    assert now.keys() == then.keys() and any("masks" in k for k in now) and any("original" in k for k in now)
    assert any(k.startswith("/ctrl/stats/" if estimator == "taylor" else "/ctrl/estimators/") for k in now), list(now)
    changed = [k for k in now if not torch.equal(now[k], then[k])]
    assert not changed, f"state_dict entries changed by the run that followed: {changed}"


@pytest.mark.parametrize("saved, loading", [("presence", "taylor"), ("presence", "evidence"), ("evidence", "presence")])
def test_estimator_refuses_a_foreign_state(saved, loading):
    m, conn, ctrl = _sparse_ctrl("utility", estimator=saved)
    for _ in range(2):
        set_grad(m, torch.randn(2, 4))
        ctrl.observe()
        ctrl.step()
    sd = ctrl.state_dict()
    m2, conn2, ctrl2 = _sparse_ctrl("utility", estimator=loading)
    with pytest.raises(ValueError, match="another estimator"):
        ctrl2.load_state_dict(sd)
    assert ctrl2.step_count == 0 and ctrl2.drop_est.state_dict() in ({}, get_estimator(loading).state_dict())


@pytest.mark.parametrize("saved, loading, match", [
    (("utility", {}), ("rigl", {}), "policy='utility', and this one runs policy='rigl'"),
    (("set", {}), ("gmp", {"end_step": 10}), "policy='set', and this one runs policy='gmp'"),
    (("threshold", {"budget": "global"}), ("set", {}), "policy='threshold', and this one runs policy='set'"),
    (("utility", {"estimator": "taylor"}), ("utility", {"estimator": "magnitude"}),
     "another estimator, estimator='taylor' (its removal costs), and this one uses estimator='magnitude'"),
])
def test_a_controller_refuses_the_state_of_another_policy_or_estimator(saved, loading, match):
    """A controller took the state of one with another policy: each policy reads the entries it
    knows (with defaults for the rest), so a threshold controller went on from a SET run's state,
    with its own boundaries, and said nothing."""
    m, conn, ctrl = _sparse_ctrl(saved[0], **saved[1])
    for _ in range(2):
        set_grad(m, torch.randn(2, 4))
        ctrl.observe()
        ctrl.step()
    sd = ctrl.state_dict()
    m2, conn2, ctrl2 = _sparse_ctrl(loading[0], **loading[1])
    before = (ctrl2.policy.state_dict(), conn2.mask_hash())
    with pytest.raises(ValueError, match=re.escape(match)):
        ctrl2.load_state_dict(sd)
    assert ctrl2.step_count == 0 and (ctrl2.policy.state_dict(), conn2.mask_hash()) == before
    legacy = {k: v for k, v in sd.items() if k not in ("policy_name", "estimator_names")}
    if saved == loading:  # a state saved before the names were recorded is taken as it is
        ctrl2.load_state_dict(legacy)
        assert ctrl2.step_count == 2


def test_the_refusal_of_another_estimators_state_names_a_fix_that_works():
    """Loading a state saved with another estimator said "build it with drop_by='taylor'": the
    Controller takes no drop_by (a policy's attribute), so the fix it named was refused in turn.
    The controller the message asks for takes the state."""
    m, conn, ctrl = _sparse_ctrl("utility", estimator="taylor")
    for _ in range(2):
        set_grad(m, torch.randn(2, 4))
        ctrl.observe()
        ctrl.step()
    sd = ctrl.state_dict()
    m2, conn2, ctrl2 = _sparse_ctrl("utility", estimator="obd")
    with pytest.raises(ValueError, match="another estimator") as e:
        ctrl2.load_state_dict(sd)
    fix = re.search(r"build the controller with estimator='(\w+)'", str(e.value))
    assert fix, str(e.value)
    m3, conn3, ctrl3 = _sparse_ctrl("utility", estimator=fix.group(1))
    ctrl3.load_state_dict(sd)
    assert ctrl3.step_count == 2


class _MyTaylor(type(get_estimator("taylor"))):
    """A user's subclass of a registered estimator, not registered itself: it inherits 'taylor'."""


class _OwnEstimator(adaptive.utility.Estimator):
    """A user's own estimator, not registered: its name is the base class's '?'."""

    def removal_cost(self, ctx):
        return ctx.weight.detach().abs().float()

    def restoration_gain(self, ctx):
        return torch.zeros_like(ctx.weight, dtype=torch.float32)


def _stepped(estimator):
    m, conn, ctrl = _sparse_ctrl("utility", estimator=estimator)
    for _ in range(2):
        set_grad(m, torch.randn(2, 4))
        ctrl.observe()
        ctrl.step()
    return ctrl


@pytest.mark.parametrize("saved", [_MyTaylor, _OwnEstimator])
def test_a_state_saved_with_an_unregistered_estimator_object_is_known_by_its_class(saved):
    """A state saved by a controller given an estimator object of a class not registered recorded
    the name it answers to: a subclass of taylor recorded 'taylor', so a controller with the
    registered taylor took it silently, and the refusal elsewhere said "build the controller with
    estimator='taylor'" (another estimator); the user's own class recorded '?', which the refusal
    named as the fix (estimator='?', which the registry refuses). The state records the class; the
    refusal names it, and a controller built with an equal object of that class loads the state."""
    sd = _stepped(saved()).state_dict()
    definition = f"{saved.__module__}.{saved.__qualname__}"
    assert sd["estimator_classes"] == {"drop": definition}
    for loading in ["taylor", "magnitude"]:
        m2, conn2, ctrl2 = _sparse_ctrl("utility", estimator=loading)
        with pytest.raises(ValueError, match="another estimator") as e:
            ctrl2.load_state_dict(sd)
        assert f"build the controller with an instance of {definition} as estimator=" in str(e.value), str(e.value)
        assert "estimator='?'" not in str(e.value) and "with estimator='taylor'" not in str(e.value)
        assert ctrl2.step_count == 0
    m3, conn3, ctrl3 = _sparse_ctrl("utility", estimator=saved())
    ctrl3.load_state_dict(sd)
    assert ctrl3.step_count == 2


def test_a_registered_estimators_state_is_refused_by_an_unregistered_subclass_and_names_the_registered_one():
    """The other way round: a state saved with the registered taylor went into a controller given
    a subclass of it (which answers to 'taylor' too) silently. The refusal names estimator='taylor',
    which loads it."""
    sd = _stepped("taylor").state_dict()
    assert sd["estimator_classes"] == {"drop": None}
    m2, conn2, ctrl2 = _sparse_ctrl("utility", estimator=_MyTaylor())
    with pytest.raises(ValueError, match=r"another estimator, estimator='taylor' .*and this one uses "
                       r"estimator=_MyTaylor\(\.\.\.\) \(.*_MyTaylor, a class not registered\)") as e:
        ctrl2.load_state_dict(sd)
    fix = re.search(r"build the controller with estimator='(\w+)'", str(e.value))
    m3, conn3, ctrl3 = _sparse_ctrl("utility", estimator=fix.group(1))
    ctrl3.load_state_dict(sd)
    assert ctrl3.step_count == 2


def test_an_unregistered_estimator_class_a_script_defined_is_the_same_class_imported_from_it():
    """A class a script defines is ``__main__.MyEst`` while the script runs, and ``train.MyEst`` to
    another script that imports it from there (a resume script): the state the first saved was
    refused by the second as "another estimator" naming the same class twice (loaded before the
    classes were recorded). The same qualified name where one side ran as a script is the same
    class, either way round; another class is still refused."""
    sd = _stepped(_OwnEstimator()).state_dict()
    sd["estimator_classes"] = {"drop": "__main__._OwnEstimator"}  # as the script that defines it saved it
    m2, conn2, ctrl2 = _sparse_ctrl("utility", estimator=_OwnEstimator())
    ctrl2.load_state_dict(sd)
    assert ctrl2.step_count == 2
    scripted = type("_OwnEstimator", (_OwnEstimator,), {"__module__": "__main__"})  # the script's own view of it
    sd = _stepped(_OwnEstimator()).state_dict()
    m3, conn3, ctrl3 = _sparse_ctrl("utility", estimator=scripted())
    ctrl3.load_state_dict(sd)
    assert ctrl3.step_count == 2
    other = type("_Other", (_OwnEstimator,), {"__module__": "__main__"})
    m4, conn4, ctrl4 = _sparse_ctrl("utility", estimator=other())
    with pytest.raises(ValueError, match="another estimator"):
        ctrl4.load_state_dict(sd)
    assert ctrl4.step_count == 0


def test_a_registered_estimator_whose_definition_ran_again_is_still_the_registered_one():
    """A registered estimator's definition run again (a notebook cell, a module reloaded) replaces its
    registry entry with a new class object: a controller built before saved its estimator as "a class
    not registered", and a controller built with its name (the same estimator) refused that state,
    naming an instance of the old class as the fix. The same definition is the registered class."""
    from adaptive.utility.base import _ESTIMATORS, register_estimator

    def define():  # the cell that defines it
        @register_estimator("rerun_definition")
        class Rerun(_OwnEstimator):
            pass

    try:
        define()
        m, conn, ctrl = _sparse_ctrl("utility", estimator="rerun_definition")
        define()  # run again: the entry is a new class of the same definition
        for _ in range(2):
            set_grad(m, torch.randn(2, 4))
            ctrl.observe()
            ctrl.step()
        sd = ctrl.state_dict()
        assert sd["estimator_classes"] == {"drop": None}
        m2, conn2, ctrl2 = _sparse_ctrl("utility", estimator="rerun_definition")
        ctrl2.load_state_dict(sd)
        assert ctrl2.step_count == 2
    finally:
        _ESTIMATORS.pop("rerun_definition", None)


class _OwnGradientEstimator(_OwnEstimator):
    """A user's own estimator, not registered, that reads gradients and the Fisher of the window."""

    needs_gradients = True
    needs_fisher = True

    def removal_cost(self, ctx):
        return torch.zeros_like(ctx.weight, dtype=torch.float32)  # before any gradient: ranks nothing


@pytest.mark.parametrize("est, label", [(_OwnGradientEstimator, "_OwnGradientEstimator"), (_MyTaylor, "_MyTaylor"),
                                        ("taylor", "taylor")])
def test_an_unregistered_estimator_object_is_named_by_its_class_in_the_start_line_and_errors(est, label):
    """An estimator object of a class not registered answers to the base class's name, '?' (a subclass
    of a registered one: its parent's): the recipes' start line (``ctrl.estimator_name``), the
    construction warnings and errors named it "estimator '?'". They name its class; a registered one
    keeps its registry name."""
    def build(estimator, update_every=2, init="magnitude", policy="utility", **kw):
        m = tiny()
        return m, adaptive.Controller(adaptive.Connectome(m), policy=policy, estimator=estimator, density=0.5,
                                      init=init, update_every=update_every, **kw)

    m, ctrl = build(est() if isinstance(est, type) else est)
    assert ctrl.estimator_name == label
    if not isinstance(est, type) or not getattr(est, "needs_fisher", False):
        return
    with pytest.warns(UserWarning, match=f"estimator {label} recovers the per-sample Fisher"):
        build(est(), update_every=1)  # a window of one batch
    with pytest.raises(ValueError, match=f"init='estimator' ranks the ensembles by estimator '{label}'") as e:
        build(est(), init="estimator")
    assert "'?'" not in str(e.value)
    m, ctrl = build(est(), policy="gmp", init=None, end_step=10)
    m.weight.requires_grad_(False)
    with pytest.raises(ValueError, match=f"so estimator '{label}' would score every synapse there at 0"):
        ctrl.observe()


def test_a_state_saved_before_the_estimator_classes_were_recorded_loads_by_its_names():
    """States saved before ``estimator_classes`` was recorded compare the names alone (a subclass
    recorded its parent's name, so a resume with that subclass must still load); a '?' (a class
    not registered) is refused by a registered estimator without naming '?' as the fix."""
    for saved, loading in [(_MyTaylor, _MyTaylor), (_OwnEstimator, _OwnEstimator), ("taylor", _MyTaylor)]:
        sd = _stepped(saved() if isinstance(saved, type) else saved).state_dict()
        del sd["estimator_classes"]
        m2, conn2, ctrl2 = _sparse_ctrl("utility", estimator=loading())
        ctrl2.load_state_dict(sd)
        assert ctrl2.step_count == 2
    sd = _stepped(_OwnEstimator()).state_dict()
    del sd["estimator_classes"]
    m2, conn2, ctrl2 = _sparse_ctrl("utility", estimator="magnitude")
    with pytest.raises(ValueError, match="an estimator object of a class not registered .*build the controller "
                       "with the estimator object of the class it ran with") as e:
        ctrl2.load_state_dict(sd)
    assert "'?'" not in str(e.value)


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(density=0.0), ValueError, "density"),
        (dict(density=1.5), ValueError, "density"),
        (dict(density=0.05), ValueError, r"keeps round\(0.05 x 8\) = 0 of the connectome's 8 synapses.*at least 0.125"),
        (dict(density=0.5, policy="nope"), ValueError, "unknown policy"),
        (dict(density=0.5, budget="nope"), ValueError, "unknown layer budget"),
        (dict(density=0.5, end_step=5, start_step=10), ValueError, "end_step"),
        (dict(density=0.5, update_every=0), ValueError, "update_every"),
        (dict(density=0.5, estimator="nope", policy="utility"), ValueError, "unknown utility estimator"),
        (dict(density=0.5, estimator="obd", policy="set"), ValueError, "fixes its scores"),
        (dict(density=0.5, protect="nothing*"), ValueError, "matched no layer"),
        (dict(policy="rigl"), ValueError, "needs a target density"),
        (dict(density=0.5, policy="gmp"), ValueError, "needs end_step"),
    ],
)
def test_bad_configuration(kw, exc, match):
    m = tiny()
    conn = adaptive.Connectome(m)
    before = conn.masks["weight"].clone()
    kw.setdefault("policy", "rigl")
    with pytest.raises(exc, match=match):
        adaptive.Controller(conn, **kw)
    assert torch.equal(conn.masks["weight"], before) and torch.equal(m.weight, W)


def test_the_known_names_end_with_an_ellipsis_only_when_some_were_cut():
    """The unknown-protect error (and set_ensemble_masks' unknown-name one) always ended its list of
    known names with '...', also when it named every layer."""
    for n, suffix in ((2, ""), (5, ""), (6, "...")):
        conn = adaptive.Connectome(nn.Sequential(*[nn.Linear(4, 4) for _ in range(n)]))
        shown = str([f"{i}.weight" for i in range(min(n, 5))])
        with pytest.raises(ValueError) as e:
            adaptive.Controller(conn, policy="magnitude", density=0.5, protect="nope")
        assert str(e.value).endswith(f"known layers are {shown}{suffix}")
        with pytest.raises(KeyError) as e:
            conn.set_ensemble_masks({"nope": torch.ones(4, 4, dtype=torch.bool)})
        assert f"prunable weights, which are {shown}{suffix} (all in conn.names)" in e.value.args[0]


def test_protect_given_as_one_string_is_split_at_commas_as_include_and_exclude_are():
    """protect="0,2" was one pattern '0,2', refused as matching no layer, where exclude="0,2" names
    two layers."""
    conn = adaptive.Connectome(nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)]))
    ctrl = adaptive.Controller(conn, policy="magnitude", density=0.5, protect="0, 2")
    assert ctrl.protected == ["0.weight", "2.weight"]
    assert ctrl.editable() == ["1.weight", "3.weight"]
    with pytest.raises(ValueError, match=r"protect pattern\(s\) \['nope'\] matched no layer"):
        adaptive.Controller(conn, policy="magnitude", density=0.5, protect="0,nope")
    with pytest.raises(TypeError, match="protect patterns must be strings, got 0"):
        adaptive.Controller(conn, policy="magnitude", density=0.5, protect=[0])


def test_nm_policy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    conn = adaptive.Connectome(model, ensemble="2:4", mode="mask_only")
    X, Y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    ctrl = adaptive.Controller(conn, policy="utility", estimator="obd", density=0.5, update_every=1,
                               edit_decay="constant")
    assert conn.granularity.violation(conn.masks["0.weight"]) is None
    F.cross_entropy(model(X), Y).backward()
    ctrl.observe()
    ctrl.step()
    for n, m in conn.masks.items():
        assert conn.granularity.violation(m) is None
    with pytest.raises(ValueError, match="n:m"):
        adaptive.Controller(adaptive.Connectome(nn.Linear(8, 4), ensemble="2:4"), policy="set", density=0.5)


def test_accelerate_gradient_accumulation_observes_only_real_steps():
    from accelerate import Accelerator

    torch.manual_seed(0)
    acc = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    conn = adaptive.Connectome(acc.unwrap_model(model))
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.5, update_every=2, end_step=50)
    X, Y = torch.randn(8, 10), torch.randint(0, 3, (8,))
    for _ in range(8):  # 8 micro-batches = 4 real optimizer steps
        with acc.accumulate(model):
            acc.backward(F.cross_entropy(model(X), Y))
            opt.step()
            opt.zero_grad()
    assert ctrl.step_count == 4
    assert [e["step"] for e in ctrl.events if e["kind"] == "update"] == [2, 4]
    for n, p in conn.params.items():
        assert torch.all(p[~conn.masks[n]] == 0)


def test_an_explicit_observe_or_step_on_an_accumulated_batch_without_a_step_is_refused():
    """Driven by hand under Accelerate's gradient accumulation, ctrl.observe()/ctrl.step() on a batch
    that ends no group would add partial gradients to the window and count batches as steps (other
    masks than the larger batch's, silently): refused, leaving the controller as it was. Called where
    accelerator.sync_gradients, it edits as one batch of twice the size does."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 10, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(8)]
    hashes = []
    try:
        for k in (1, 2):
            AcceleratorState._reset_state(True)
            GradientState._reset_state()
            torch.manual_seed(0)
            acc = Accelerator(cpu=True, gradient_accumulation_steps=k)
            model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
            model, opt = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
            conn = adaptive.Connectome(acc.unwrap_model(model))
            conn.attach(opt)
            ctrl = adaptive.Controller(conn, policy="utility", estimator="taylor", density=0.5, update_every=2)
            batches = data if k == 2 else [(torch.cat([a for a, _ in data[i:i + 2]]), torch.cat([b for _, b in data[i:i + 2]]))
                                           for i in range(0, 8, 2)]
            for x, y in batches:
                with acc.accumulate(model):
                    acc.backward(F.cross_entropy(model(x), y))
                    if not acc.sync_gradients:
                        with pytest.raises(RuntimeError, match=r"ctrl.observe\(\) on a batch that Accelerate accumulates "
                                                               r"without an optimizer step .*only where accelerator.sync_gradients"):
                            ctrl.observe()
                        with pytest.raises(RuntimeError, match=r"ctrl.step\(\) .*count each accumulated batch as a "
                                                               r"training step"):
                            ctrl.step()
                    else:
                        ctrl.observe()
                    opt.step()
                    if acc.sync_gradients:
                        ctrl.step()
                    opt.zero_grad()
            assert ctrl.step_count == 4 and [e["step"] for e in ctrl.events if e["kind"] == "update"] == [2, 4]
            hashes.append(conn.mask_hash())
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert hashes[0] == hashes[1]


def test_a_gradient_state_left_mid_group_by_an_earlier_accelerator_refuses_no_plain_loop():
    """Accelerate's GradientState is one per process: a K=2 loop stopped mid-group (an exception, a
    KeyboardInterrupt) leaves it saying gradient_accumulation_steps 2, sync_gradients False after its
    Accelerator is gone. A later loop with a plain optimizer, which steps at every batch, drives its
    controller by hand as it must: nothing refuses it (it did, naming accumulation it does not use), and
    it edits as the same loop in a fresh process does. Attached through the prepared optimizer of a
    live K=2 Accelerator (here by Controller(conn, prepared) then ctrl.detach()), a mid-group call is
    still refused."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    def plain_loop():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        conn = adaptive.Connectome(model)
        conn.attach(opt)
        ctrl = adaptive.Controller(conn, policy="utility", estimator="taylor", density=0.5, update_every=2)
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            F.cross_entropy(model(torch.randn(8, 10, generator=g)), torch.randint(0, 3, (8,), generator=g)).backward()
            ctrl.observe()
            opt.step()
            ctrl.step()
            opt.zero_grad()
        assert ctrl.step_count == 4 and [e["step"] for e in ctrl.events if e["kind"] == "update"] == [2, 4]
        return conn.mask_hash()

    try:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        fresh = plain_loop()
        acc = Accelerator(cpu=True, gradient_accumulation_steps=2)
        model = nn.Linear(4, 3)
        model, opt = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        conn = adaptive.Connectome(acc.unwrap_model(model))
        # attached as the docs say (built with the prepared optimizer, then detached: the connectome stays on it)
        ctrl = adaptive.Controller(conn, opt, policy="utility", estimator="taylor", density=0.5, update_every=2)
        ctrl.detach()
        with pytest.raises(KeyboardInterrupt):
            with acc.accumulate(model):  # the group's first batch, then stopped
                acc.backward(model(torch.randn(2, 4)).sum())
                with pytest.raises(RuntimeError, match=r"ctrl.observe\(\) on a batch that Accelerate accumulates"):
                    ctrl.observe()
                raise KeyboardInterrupt
        conn.detach()
        del acc, model, opt, conn, ctrl
        AcceleratorState._reset_state(True)
        gs = GradientState()
        assert gs.num_steps == 2 and not gs.sync_gradients  # the state the loop left
        assert plain_loop() == fresh
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


@pytest.mark.parametrize("kind", ["randn", "ties", "skew", "nan"])
def test_large_selection_is_exact(kind):
    """The sampled bracket used for tens of millions of synapses selects exactly what a full
    stable sort would (ties by index; NaN never selected)."""
    from adaptive.policies.base import _smallest_k

    torch.manual_seed(0)
    n = 1_500_000
    x = torch.randn(n)
    if kind == "ties":
        x = torch.randint(0, 50, (n,)).float()
    if kind == "skew":
        x = torch.cat([torch.zeros(n // 2), torch.randn(n - n // 2)])
    if kind == "nan":
        x[::7] = float("nan")
    for k in [3000, 100_000, 700_000]:
        got = _smallest_k(x, k)
        ref = torch.argsort(torch.nan_to_num(x, nan=float("inf")), stable=True)[:k]
        assert torch.equal(got, ref), (kind, k)
        unordered = _smallest_k(x, k, ordered=False)
        assert torch.equal(unordered.sort().values, ref.sort().values), (kind, k)


@pytest.mark.parametrize("estimator", ["presence", "evidence"])
def test_loaded_estimator_state_follows_the_weights_device(estimator):
    """A state_dict holds CPU tensors; loaded into a run whose weights live on another device (a GPU;
    the meta device here) the state moves there at first use instead of failing on mixed devices."""
    from adaptive.utility.base import UtilityContext
    from adaptive.utility.stats import GradientStats

    w = torch.randn(4, 6)
    est = get_estimator(estimator)
    ctx = UtilityContext("w", w, torch.ones(4, 6, dtype=torch.bool), None, None, torch.Generator())
    est.restoration_gain(ctx)
    sd = est.state_dict()
    assert all(t.device.type == "cpu" for part in sd.values() if isinstance(part, dict) for t in part.values())
    loaded = get_estimator(estimator)
    loaded.load_state_dict(sd)
    wm = w.to("meta")
    meta_ctx = UtilityContext("w", wm, torch.ones(4, 6, dtype=torch.bool, device="meta"), None,
                              GradientStats.__new__(GradientStats), torch.Generator())
    meta_ctx.stats.counts, meta_ctx.stats.replicas = {}, {}  # no window yet: the values are read, not moved
    assert loaded.restoration_gain(meta_ctx).device.type == "meta"
    assert loaded.removal_cost(meta_ctx).device.type == "meta"


@pytest.mark.parametrize("estimator, loss_model", [("taylor", True), ("obd", True), ("presence", False),
                                                   ("magnitude", False)])
def test_estimated_loss_change_is_reported_only_in_loss_units(estimator, loss_model):
    """A plan's summed values are an estimated loss change only for loss models (Taylor, OBD);
    presence values or magnitudes are reported as est_score_change, never as a loss change."""
    torch.manual_seed(0)
    m = tiny()
    conn = adaptive.Connectome(m, mode="mask_only")
    ctrl = adaptive.Controller(conn, policy="threshold", estimator=estimator, density=0.5, update_every=1,
                               edit_fraction=0.5, edit_decay="constant")
    set_grad(m, torch.randn(2, 4))
    ctrl.observe()
    ev = ctrl.step()
    assert ev["pruned"] > 0
    if loss_model:
        assert isinstance(ev["est_loss_change"], float) and ev["est_score_change"] is None
    else:
        assert ev["est_loss_change"] is None and isinstance(ev["est_score_change"], float)


class _OwnFigure(adaptive.policies.base.Policy):
    """A policy of one's own that states its plan's loss change itself, with no scores."""
    name = "own_figure_test"
    sparse_at_start = True

    def __init__(self, prune, grow, estimator):
        self.sides = prune, grow
        if estimator:  # ranks by the Controller's estimator= (a loss model or not)
            self.drop_by = self.grow_by = "estimator"
        else:
            self.grow_by = "gradient"

    def update(self, ctrl, step):
        alive = ctrl.conn.masks["weight"].reshape(-1)
        plan = adaptive.policies.base.EditPlan(est_loss_change=0.123)
        if self.sides[0]:
            plan.prune = {"weight": alive.nonzero().squeeze(1)[:2]}
        if self.sides[1]:
            plan.grow = {"weight": (~alive).nonzero().squeeze(1)[:2]}
        return plan


@pytest.mark.filterwarnings("ignore:estimator obd recovers")
@pytest.mark.parametrize("mode", ["train", "mask_only"])
@pytest.mark.parametrize("estimator", ["obd", "magnitude", None])
@pytest.mark.parametrize("prune, grow", [(True, True), (False, True), (True, False)])
def test_a_policys_own_loss_change_is_logged_as_it_stands(mode, estimator, prune, grow):
    """A plan that sets est_loss_change with no scores gives the policy's own figure: it was logged as
    est_loss_change, as est_score_change ("the estimators' own units") or not at all (a train-mode
    growth replaced it by the controller's 0.0), by the Controller's estimator and the plan's sides;
    it is logged as the loss change it states, whatever they are."""
    torch.manual_seed(0)
    m = tiny()
    ctrl = adaptive.Controller(adaptive.Connectome(m, mode=mode), policy=_OwnFigure(prune, grow, estimator),
                               estimator=estimator, density=0.5, update_every=1)
    set_grad(m, torch.randn(2, 4))
    ctrl.observe()
    ev = ctrl.step()
    assert (ev["pruned"] > 0) == prune and (ev["grown"] > 0) == grow
    assert (ev["est_loss_change"], ev["est_score_change"], ev["est_growth_gain"]) == (0.123, None, None)


def test_a_line_search_cut_of_a_plan_without_scores_logs_no_figure_for_the_part_kept():
    """The policy's own figure is of its whole plan: a part kept by a line search has none (the
    whole plan's figure was logged for half the edit)."""
    plan = adaptive.policies.base.EditPlan(prune={"w": torch.arange(4)}, grow={"w": torch.arange(4, 8)},
                                           est_loss_change=0.5)
    assert plan.shrink(1.0).est_loss_change == 0.5
    assert plan.shrink(0.5).est_loss_change is None
    scored = adaptive.policies.base.EditPlan(prune={"w": torch.arange(2)}, prune_scores={"w": torch.tensor([1.0, 2.0])},
                                             est_loss_change=3.0)
    assert scored.shrink(0.5).est_loss_change == 1.0  # scores: the part's own sum, as before


def _plans(ctrl):
    """The plans ``ctrl``'s policy returns from now on, as it returns them."""
    plans, update = [], ctrl.policy.update

    def kept(c, step):
        plans.append(update(c, step))
        return plans[-1]

    ctrl.policy.update = kept
    return plans


@pytest.mark.parametrize("estimator", ["obd", "curvature", "taylor"])
def test_a_train_mode_growth_at_zero_adds_nothing_to_the_estimated_loss_change(estimator):
    """A synapse grown at 0.0 changes no output: the edit's estimated loss change is its prune costs
    alone. The train-mode gain of a loss model, the Newton step g^2/(2F) a grown synapse saves once
    trained, was subtracted as if the edit saved it (-168 nats at a step whose loss was 2.3 on
    lenet300/MNIST); it is est_growth_gain now. Taylor's prune costs are a loss change in train mode
    too (its g^2 gain is not, so it has no growth gain)."""
    torch.manual_seed(0)
    m = tiny()
    ctrl = adaptive.Controller(adaptive.Connectome(m), policy="utility", estimator=estimator, density=0.5,
                               budget="global", update_every=2, edit_fraction=0.5, edit_decay="constant", batch_size=4)
    plans = _plans(ctrl)
    for _ in range(2):
        set_grad(m, torch.randn(2, 4))
        ctrl.observe()
        ev = ctrl.step()
    prune, grow = plans[-1].score_sums()
    assert ev["pruned"] == ev["grown"] == 2 and grow > 0
    assert ev["est_loss_change"] == pytest.approx(prune, rel=1e-6, abs=1e-12)
    assert ev["est_score_change"] is None
    assert ev["est_growth_gain"] == (None if estimator == "taylor" else pytest.approx(grow))


@pytest.mark.parametrize("grow_init", ["constant", "original"])
def test_a_train_mode_growth_at_a_value_counts_what_that_value_does(grow_init):
    """Grown at a value (a grow_init callable, or restored to the original weight), a synapse changes
    the loss at the edit: Taylor expects g*w of it, which the estimated loss change includes."""
    torch.manual_seed(0)
    m = tiny()
    init = (lambda name, grown: torch.full((2, 4), 0.5)) if grow_init == "constant" else "original"
    ctrl = adaptive.Controller(adaptive.Connectome(m), policy="utility", estimator="taylor", density=0.5,
                               budget="global", update_every=1, edit_fraction=0.5, edit_decay="constant",
                               grow_init=init)
    plans, before, g = _plans(ctrl), ctrl.conn.masks["weight"].clone(), torch.randn(2, 4)
    set_grad(m, g)
    ctrl.observe()
    ev = ctrl.step()
    grown = ctrl.conn.masks["weight"] & ~before
    assert ev["grown"] == int(grown.sum()) == 2
    value = torch.full((2, 4), 0.5) if grow_init == "constant" else W
    prune, _ = plans[-1].score_sums()
    assert ev["est_loss_change"] == pytest.approx(prune + float((g * value)[grown].sum()), rel=1e-5)
    assert ev["est_growth_gain"] is None  # nothing promised beyond the edit: Taylor's g^2 is no loss


@pytest.mark.parametrize("grow_init", ["constant", "random"])
def test_obd_growth_at_a_value_counts_its_second_order_term_and_promises_the_newton_step(grow_init):
    """OBD's growth at a non-zero value (a constant grow_init callable, or 'random'): the edit's estimated
    loss change is its prune costs plus g*v + F*v^2/2 of each grown synapse at its value v, and what the
    growth promises once trained (est_growth_gain) is the Newton step g^2/(2F); g and F computed here by
    hand from the window's two batch gradients (the mean, and mean^2 + B * their unbiased variance)."""
    torch.manual_seed(0)
    m = tiny()
    init = (lambda name, grown: torch.full((2, 4), 0.5)) if grow_init == "constant" else "random"
    ctrl = adaptive.Controller(adaptive.Connectome(m), policy="utility", estimator="obd", density=0.5, budget="global",
                               update_every=2, edit_fraction=0.5, edit_decay="constant", batch_size=4, grow_init=init)
    plans, before, w = _plans(ctrl), ctrl.conn.masks["weight"].clone(), m.weight.detach().clone()
    grads = [torch.randn(2, 4), torch.randn(2, 4)]
    for g_batch in grads:
        set_grad(m, g_batch)
        ctrl.observe()
        ev = ctrl.step()
    after = ctrl.conn.masks["weight"]
    grown, pruned = after & ~before, before & ~after
    assert ev["grown"] == int(grown.sum()) == 2 and ev["pruned"] == int(pruned.sum()) == 2
    v = m.weight.detach()[grown].double()
    assert bool((v != 0).all()) and (grow_init == "random" or bool((v == 0.5).all()))
    stack = torch.stack(grads).double()
    g = stack.mean(0)
    f = g * g + 4 * stack.var(0, unbiased=True)
    prune = float((-g * w + 0.5 * f * w * w)[pruned].sum())
    assert plans[-1].score_sums()[0] == pytest.approx(prune, rel=1e-6)
    second = float((0.5 * f[grown] * v * v).sum())
    at_value = float((g[grown] * v).sum()) + second
    if grow_init == "constant":  # at 0.5 the second-order term is a good part of the figure (random inits are small)
        assert second > 0.2 * abs(prune + at_value)
    assert ev["est_loss_change"] == pytest.approx(prune + at_value, rel=1e-6, abs=1e-9)
    assert ev["est_growth_gain"] == pytest.approx(float((g * g / (2 * (f + 1e-12)))[grown].sum()), rel=1e-6)


def test_a_misspelt_policy_argument_names_what_the_policy_takes():
    import adaptive
    from torch import nn

    conn = adaptive.Connectome(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match=r"\['prune_boundar'\] for policy 'threshold'.*takes \['adapt', 'pace', 'prune_boundary'"):
        adaptive.Controller(conn, None, policy="threshold", density=0.5, update_every=5, end_step=50, prune_boundar=0.1)
    with pytest.raises(ValueError, match=r"\['bogus'\] for policy 'utility'.*takes none"):
        adaptive.Controller(conn, None, policy="utility", density=0.5, update_every=5, end_step=50, bogus=1)
    assert all(bool(m.all()) for m in conn.masks.values())
    adaptive.Controller(conn, None, policy="threshold", density=0.5, update_every=5, end_step=50, prune_boundary=0.1)


@pytest.mark.parametrize("policy", ["rigl", "set", "utility"])
def test_a_controller_built_on_a_sparse_connectome_keeps_its_live_synapses(tmp_path, policy):
    """Continuing through the API (Connectome.load, then a new Controller) must not re-draw the
    mask: the live ensembles are kept first (a fresh random draw pruned the density 0.3 to 0.13)."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    conn = adaptive.Connectome(m)
    adaptive.Controller(conn, None, policy=policy, density=0.3, seed=0)
    conn.save(tmp_path / "c.safetensors")
    before = {n: k.clone() for n, k in conn.masks.items()}
    conn2 = adaptive.Connectome.load(tmp_path / "c.safetensors", m)
    adaptive.Controller(conn2, None, policy=policy, density=0.3, seed=1)
    assert conn2.density() == pytest.approx(0.3, abs=2e-3)
    assert all(torch.equal(conn2.masks[n], before[n]) for n in before)
    # above the target: only live synapses are pruned, and the survivors were live before
    conn3 = adaptive.Connectome.load(tmp_path / "c.safetensors", m)
    adaptive.Controller(conn3, None, policy=policy, density=0.2, seed=2)
    assert conn3.density() == pytest.approx(0.2, abs=2e-3)
    assert all(bool((conn3.masks[n] <= before[n]).all()) for n in before)


def test_the_init_of_a_sparse_connectome_ranks_its_live_ensembles_by_value_per_synapse_and_admits_infinities():
    """A connectome sparse already is sparsified by the init's scores among its live ensembles. They were
    lifted above the absent ones by adding (max - min + 1) to their summed scores: divided by each ensemble's
    size for the per-synapse ranking, the lift gave a 9-synapse kernel a ninth of a single weight's, and
    init='magnitude' under the global budget emptied the conv layer (0 of 13 live kernels kept, the largest
    kernel per synapse among those let go); an estimator's +inf (admitted as the largest score) made the lift
    inf, every live score inf, and the ensembles kept were the first live ones by index. Now absent ones are
    marked -inf and the live order is the scores' own."""
    from adaptive.utility import Estimator, register_estimator
    from adaptive.utility.base import _ESTIMATORS

    def sparse(ensemble):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(96, 20), nn.ReLU(), nn.Linear(20, 5))
        conn = adaptive.Connectome(m, ensemble=ensemble)
        g = torch.Generator().manual_seed(3)
        conn.set_ensemble_masks({n: torch.rand(v.shape, generator=g) < 0.6 for n, v in conn.ensemble_masks().items()})
        return conn, {n: v.clone() for n, v in conn.ensemble_masks().items()}

    conn, live = sparse("0=kernel;synapse")
    per = {n: conn.granularities[n].pool(conn.params[n].detach().abs().float(), "sum") / (9.0 if n == "0.weight" else 1.0)
           for n in conn.names}
    adaptive.Controller(conn, policy="rigl", density=0.2, budget="global", init="magnitude")
    kept = conn.ensemble_masks()
    assert int(kept["0.weight"].sum()) > 0 and all(bool((kept[n] <= live[n]).all()) for n in live)
    lowest_kept = min(float(per[n][kept[n]].min()) for n in per if kept[n].any())
    highest_gone = max(float(per[n][live[n] & ~kept[n]].max()) for n in per if (live[n] & ~kept[n]).any())
    assert lowest_kept >= highest_gone

    @register_estimator("test_init_one_inf")
    class OneInf(Estimator):
        def removal_cost(self, ctx):  # |w|, with one synapse infinitely costly to remove
            s = ctx.weight.detach().abs().float().clone()
            s.view(-1)[0] = float("inf")
            return s

        def restoration_gain(self, ctx):
            return ctx.weight.detach().abs().float()

    try:
        conn, live = sparse("synapse")
        adaptive.Controller(conn, policy="utility", estimator="magnitude", density=0.2, budget="uniform", init="magnitude")
        want = {n: int(m.sum()) for n, m in conn.masks.items()}  # the budget's counts, kept by finite scores
        conn, live = sparse("synapse")
        w = conn.params["0.weight"].detach().abs().reshape(-1)
        adaptive.Controller(conn, policy="utility", estimator="test_init_one_inf", density=0.2, budget="uniform",
                            init="estimator")
        kept = conn.masks["0.weight"].reshape(-1)
        lv = live["0.weight"].reshape(-1)
        assert {n: int(m.sum()) for n, m in conn.masks.items()} == want and bool(kept[0])  # the infinite one stays
        ranked = torch.where(lv, w, torch.tensor(-1.0))
        ranked[0] = float("inf")
        top = torch.topk(ranked, int(kept.sum())).indices
        assert torch.equal(kept.nonzero().squeeze(1), top.sort().values)  # by cost, not the first live by index
    finally:
        _ESTIMATORS.pop("test_init_one_inf", None)


def test_the_init_of_a_sparse_connectome_keeps_a_live_ensemble_of_cost_minus_inf_above_the_absent_ones():
    """An estimator's removal cost of -inf (admitted as the smallest score) on a live ensemble was clamped to the
    lowest finite float, which is where the selection puts the absent ensembles' -inf too: tied with them, by index,
    an absent one ahead of it took its place among the kept, so it was pruned and the connectome fell below the
    target (built at its own density: one synapse pruned under the global budget, none due). Now it ranks above
    every absent one and below every other live one."""
    from adaptive.utility import Estimator, register_estimator
    from adaptive.utility.base import _ESTIMATORS

    @register_estimator("test_init_last_minus_inf")
    class LastMinusInf(Estimator):
        def removal_cost(self, ctx):  # |w|, the last synapse of each layer free (-inf) to remove
            s = ctx.weight.detach().abs().float().clone()
            s.view(-1)[-1] = float("-inf")
            return s

        def restoration_gain(self, ctx):
            return ctx.weight.detach().abs().float()

    try:
        for budget, pruned in (("global", 0), ("uniform", 1)):  # uniform: layer 2 (full) loses its -inf synapse
            torch.manual_seed(0)
            conn = adaptive.Connectome(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)))
            masks = {n: torch.ones_like(v) for n, v in conn.ensemble_masks().items()}
            masks["0.weight"].view(-1)[:5] = False  # absent ones ahead of the -inf live synapse at the end
            conn.set_ensemble_masks(masks)
            before = {n: v.clone() for n, v in conn.masks.items()}
            adaptive.Controller(conn, policy="utility", estimator="test_init_last_minus_inf", budget=budget,
                                init="estimator", density=conn.density())
            assert bool(conn.masks["0.weight"].view(-1)[-1]), budget  # layer 0 keeps all it holds
            assert sum(int((before[n] & ~conn.masks[n]).sum()) for n in before) == pruned, budget
            assert all(bool((conn.masks[n] <= before[n]).all()) for n in before)
    finally:
        _ESTIMATORS.pop("test_init_last_minus_inf", None)


def test_n_m_ensembles_fix_the_density():
    m = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with pytest.raises(ValueError, match="fixes the density at 0.5.*pass density=0.5 or leave it out"):
        adaptive.Controller(adaptive.Connectome(m, ensemble="2:4"), None, policy="magnitude", density=0.3)
    conn = adaptive.Connectome(m, ensemble="2:4")
    adaptive.Controller(conn, None, policy="magnitude")  # the density comes from 2:4
    assert conn.density() == pytest.approx(0.5)


def test_curvature_estimator_ranks_removal_by_fisher_times_w_squared_only():
    """Its removal cost has no first-order term (a weight the loss wants smaller is not cheap to
    remove); its gain is the consistency estimator's."""
    from adaptive.utility.base import UtilityContext
    from adaptive.utility.stats import GradientStats

    torch.manual_seed(0)
    m = nn.Linear(6, 4)
    conn = adaptive.Connectome(m)
    stats = GradientStats(conn)
    for _ in range(3):
        m.zero_grad()
        m(torch.randn(8, 6)).square().sum().backward()
        stats.observe()
    ctx = UtilityContext("weight", m.weight.detach(), conn.masks["weight"], None, stats, torch.Generator(), batch_size=8)
    curv, cons = get_estimator("curvature"), get_estimator("consistency")
    w = m.weight.detach()
    fisher = stats.fisher("weight", 8)
    assert torch.allclose(curv.removal_cost(ctx), 0.5 * fisher * w * w)
    assert not torch.allclose(cons.removal_cost(ctx), curv.removal_cost(ctx))  # consistency has -g*w too
    assert torch.equal(curv.restoration_gain(ctx), cons.restoration_gain(ctx))
    ctrl = adaptive.Controller(conn, policy="utility", estimator="curvature", density=0.5, end_step=10)
    assert ctrl.drop_est.name == "curvature"


def test_default_estimator_is_curvature_in_train_mode_and_consistency_in_mask_only():
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    ctrl = adaptive.Controller(adaptive.Connectome(m), policy="utility", density=0.5, end_step=10)
    assert (ctrl.drop_est.name, ctrl.grow_est.name) == ("curvature", "curvature")
    ctrl = adaptive.Controller(adaptive.Connectome(m, mode="mask_only"), policy="balanced", density=0.5, end_step=10)
    assert ctrl.drop_est.name == "consistency"
    ctrl = adaptive.Controller(adaptive.Connectome(m), policy="utility", estimator="consistency", density=0.5, end_step=10)
    assert ctrl.drop_est.name == "consistency"


def test_a_layer_left_without_live_synapses_is_warned_about_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # the global magnitude order takes all of the last layer first
    conn = adaptive.Connectome(model, ensemble="neuron")
    with pytest.warns(UserWarning, match=r"\['2.weight'\] have no live synapse left: the network is cut there"):
        ctrl = adaptive.Controller(conn, policy="magnitude", density=0.5, budget="global")
    assert not conn.masks["2.weight"].any()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctrl._density_fields()  # the same empty layer: no second warning
    conn2 = adaptive.Connectome(nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)), ensemble="neuron")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adaptive.Controller(conn2, policy="magnitude", density=0.5, budget="erk")  # every layer keeps some


def _scaled_run(opt_kw, scaler_on, inf_at=None, steps=4, estimator="obd"):
    """A tiny run under a GradScaler (lr 0: only the controller's statistics and edits differ)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.0, **opt_kw)
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, opt, policy="utility", estimator=estimator, density=0.5, budget="uniform",
                               update_every=4, end_step=100, seed=0, batch_size=32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=scaler_on)
    g = torch.Generator().manual_seed(1)
    for s in range(steps):
        x, y = torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
        scaler.scale(F.cross_entropy(model(x), y)).backward()
        if inf_at == s:
            model[0].weight.grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    return conn, ctrl


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fused_optimizer_under_grad_scaler_observes_unscaled_gradients_and_skips_inf_steps():
    # A GradScaler does not unscale for a fused optimizer: it hands it grad_scale and found_inf and
    # the kernel unscales (or skips) after the step hooks. The statistics must still be of unscaled
    # gradients, and a skipped step must count as no step, as it does for any other optimizer.
    ref_conn, ref = _scaled_run({}, False, steps=3)
    conn, ctrl = _scaled_run({"fused": True}, True, steps=3)
    assert ctrl.stats.counts == ref.stats.counts
    for n in ref.stats.g_sum:
        torch.testing.assert_close(ctrl.stats.g_sum[n], ref.stats.g_sum[n])
        torch.testing.assert_close(ctrl.stats.g2_sum[n], ref.stats.g2_sum[n])
    ref_conn, ref = _scaled_run({}, False)
    conn, ctrl = _scaled_run({"fused": True}, True)
    assert [e["step"] for e in ctrl.events] == [e["step"] for e in ref.events] == [0, 4]
    assert all(torch.equal(conn.masks[n], ref_conn.masks[n]) for n in conn.masks)
    assert ctrl.events[-1]["est_loss_change"] == pytest.approx(ref.events[-1]["est_loss_change"], rel=1e-4)
    for fused in (False, True):  # an inf at step 1: skipped whole, like the non-fused scaler's skip
        conn, ctrl = _scaled_run({"fused": fused}, True, inf_at=1)
        assert ctrl.step_count == 3 and ctrl.stats.n("0.weight") == 3 and len(ctrl.events) == 1
        assert all(bool(torch.isfinite(s).all()) for s in ctrl.stats.g_sum.values())


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_step_hooks_run_eagerly_inside_a_compiled_optimizer_step(backend):
    # torch.compile(opt.step), PyTorch's compiled-optimizer recipe: dynamo traced the step hooks into
    # its graph, where inductor let the first observation of a window read the masked gradient. The
    # hooks run outside the graph: observers see dense gradients, eagerly, at every step.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.3, budget="uniform", update_every=50,
                               end_step=100, seed=0)
    compiling = []
    conn.add_observer(lambda: compiling.append(torch.compiler.is_compiling()))
    step = torch.compile(lambda: opt.step(), backend=backend)
    g, dense, prev = torch.Generator().manual_seed(1), [], None
    for _ in range(3):
        x, y = torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
        F.cross_entropy(model(x), y).backward()
        want = model[0].weight.grad.clone()
        step()
        opt.zero_grad()
        got = ctrl.stats.g_sum["0.weight"] - (0 if prev is None else prev)
        prev = ctrl.stats.g_sum["0.weight"].clone()
        dense.append(torch.allclose(got, want, atol=1e-6))
        assert all(bool((p[~conn.masks[n]] == 0).all()) for n, p in conn.params.items())
    torch._dynamo.reset()
    assert compiling == [False] * 3 and dense == [True] * 3 and ctrl.step_count == 3


def test_a_compiled_model_trains_to_the_masks_of_the_eager_one_with_no_recompile_per_edit():
    # torch.compile(model) (aot_eager: parameters lifted into graph inputs, as inductor lifts them): the
    # compiled forward reads the weights each call, so the controller's edits take effect at once, with
    # no recompilation per edit; pruned weights stay 0.0 and the masks are the eager run's.
    from torch._dynamo.utils import counters

    def run(compiled):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        conn = adaptive.Connectome(model)
        ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.3, update_every=2, edit_fraction=0.3,
                                   end_step=8, seed=0)
        fwd = torch.compile(model, backend="aot_eager") if compiled else model
        g = torch.Generator().manual_seed(1)
        for _ in range(8):
            x, y = torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
            F.cross_entropy(fwd(x), y).backward()
            opt.step()
            opt.zero_grad()
            assert all(bool((p[~conn.masks[n]] == 0).all()) for n, p in conn.params.items())
            with torch.no_grad():  # evaluation: the latest masks and weights, not stale ones
                assert torch.allclose(fwd(x), model(x), atol=1e-6)
        assert [e["step"] for e in ctrl.events if e["kind"] == "update"] == [2, 4, 6, 8]
        return conn

    torch._dynamo.reset()
    counters.clear()
    eager, compiled = run(False), run(True)
    # one graph for training and one for no_grad evaluation, whatever the 4 edits did (as docs/python_api.md says)
    assert counters["frames"]["ok"] == 2 and not counters["recompiles"]
    torch._dynamo.reset()
    assert all(torch.equal(eager.masks[n], compiled.masks[n]) for n in eager.masks)


def test_mask_only_update_inside_inference_mode_matches_one_outside():
    # ctrl.step() under torch.inference_mode() (an evaluate-then-edit helper): the update raised and
    # left pruned weights live and survivors changed; it now edits as it does outside.
    def run(inference):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
        orig = {n: p.detach().clone() for n, p in model.named_parameters()}
        conn = adaptive.Connectome(model, mode="mask_only")
        ctrl = adaptive.Controller(conn, policy="utility", density=0.5, budget="uniform", update_every=2, end_step=10)
        g = torch.Generator().manual_seed(1)
        for _ in range(6):
            F.cross_entropy(model(torch.randn(16, 8, generator=g)), torch.randint(0, 4, (16,), generator=g)).backward()
            ctrl.observe()
            model.zero_grad()
            with torch.inference_mode(inference):
                ctrl.step()
        assert all(bool((p[~conn.masks[n]] == 0).all()) for n, p in conn.params.items())
        assert all(torch.equal(p[conn.masks[n]], orig[n][conn.masks[n]]) for n, p in conn.params.items())
        return conn, ctrl

    ref_conn, ref = run(False)
    conn, ctrl = run(True)
    assert len(ctrl.events) == len(ref.events) == 4
    assert all(torch.equal(conn.masks[n], ref_conn.masks[n]) for n in conn.masks)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_found_inf_written_in_place_is_read_anew_at_every_step():
    """A loop that keeps one found_inf tensor (and one grad_scale) for a fused optimizer and writes it
    in place: the answer was cached by the tensor's identity, so after one overflow every later step
    counted as skipped: no controller step, no masking, and the optimizer revived pruned synapses."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.Adam(m.parameters(), 1e-2, fused=True)
    conn = adaptive.Connectome(m)
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.5, update_every=2, end_step=100)
    scale, found = torch.tensor(1024.0), torch.zeros(())
    opt.grad_scale, opt.found_inf = scale, found
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    for s in range(6):
        (F.cross_entropy(m(x), y) * scale).backward()
        found.fill_(1.0 if s == 0 else 0.0)  # the first step overflows
        opt.step()
        opt.zero_grad()
    assert ctrl.step_count == 5
    assert all(int((p.detach()[~conn.masks[n]] != 0).sum()) == 0 for n, p in conn.params.items())


@pytest.mark.parametrize("mode,policy,estimator", [("mask_only", "crawl", "consistency"), ("mask_only", "crawl", "presence"),
                                                   ("mask_only", "crawl", "evidence"), ("train", "rigl", None),
                                                   ("train", "utility", None)])
def test_a_window_with_nan_gradients_is_left_out_with_one_warning(mode, policy, estimator):
    """A NaN loss once made every gradient NaN: presence kept NaN in its state for good, and the
    update ranked NaN scores as ties, pruning layer 0's first indices. Now such a window edits
    nothing and reaches no estimator's state; the first is warned of, the others counted."""
    import warnings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    conn = adaptive.Connectome(model, mode=mode)
    ctrl = adaptive.Controller(conn, policy=policy, estimator=estimator, density=0.5, update_every=2,
                               edit_fraction=0.3, end_step=40)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))

    def window(poison):
        for _ in range(2):
            model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            (loss * float("nan") if poison else loss).backward()
            ctrl.observe()
            ev = ctrl.step()
            poison = False  # one NaN batch spoils its window
        return ev

    assert window(False) is not None
    masks = {n: m.clone() for n, m in conn.masks.items()}
    with pytest.warns(UserWarning, match="NaN or inf.*left out.*check the data"):
        assert window(True) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # counted, not warned again
        assert window(True) is None
    assert ctrl.nonfinite_windows == 2 and ctrl.state_dict()["nonfinite_windows"] == 2
    assert all(torch.equal(masks[n], m) for n, m in conn.masks.items())
    state = [t for d in ctrl.state_dict()["estimators"].values() for v in d.values() if isinstance(v, dict)
             for t in v.values() if isinstance(t, torch.Tensor)]
    assert all(bool(torch.isfinite(t).all()) for t in state)
    assert window(False) is not None  # a finite window updates again


# --------------------------------------------------------------- GradientStats, by hand
def _two_layers():
    from adaptive.utility.stats import GradientStats

    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    conn = adaptive.Connectome(net)
    return net, conn, GradientStats(conn)


def _grads(net, a, b):
    """Set layer 0's gradient to ``a`` and layer 1's to ``b`` everywhere (None: no gradient)."""
    for m, v in zip(net, (a, b)):
        m.weight.grad = None if v is None else torch.full((2, 2), float(v))


def test_stats_a_layer_without_gradient_at_a_windows_first_batch_starts_from_zero():
    net, conn, stats = _two_layers()
    _grads(net, 100.0, 1.0)
    stats.observe()
    stats.reset()
    _grads(net, None, 1.0)  # layer 0 takes no part in this batch: it adds zeros
    stats.observe()
    _grads(net, 1.0, 1.0)
    stats.observe()
    assert torch.equal(stats.mean("0.weight"), torch.full((2, 2), 0.5))


def test_stats_a_batch_where_a_layer_had_no_gradient_counts_as_zeros():
    net, conn, stats = _two_layers()
    _grads(net, None, 1.0)
    stats.observe()
    _grads(net, 1.0, 1.0)
    stats.observe()
    assert stats.n("0.weight") == 2
    assert torch.equal(stats.mean("0.weight"), torch.full((2, 2), 0.5))


def test_stats_second_moment_of_a_windows_first_batch_is_the_square():
    net, conn, stats = _two_layers()
    _grads(net, -3.0, 2.0)
    stats.observe()
    assert torch.equal(stats.sq_mean("0.weight"), torch.full((2, 2), 9.0))
    assert torch.equal(stats.sq_mean("1.weight"), torch.full((2, 2), 4.0))


def _window_of_1_and_3():
    net, conn, stats = _two_layers()
    for v in (1.0, 3.0):  # mean 2, mean square 5, biased variance 1, unbiased 2
        _grads(net, v, v)
        stats.observe()
    return stats


def test_stats_batch_variance_is_unbiased():
    assert torch.equal(_window_of_1_and_3().batch_variance("0.weight"), torch.full((2, 2), 2.0))


def test_stats_fisher_recovers_the_per_sample_second_moment_from_the_batch_size():
    stats = _window_of_1_and_3()
    assert torch.equal(stats.fisher("0.weight", batch_size=8), torch.full((2, 2), 20.0))  # 2^2 + 8 * 2
    assert torch.equal(stats.fisher("0.weight"), torch.full((2, 2), 5.0))


def test_stats_a_window_with_nan_in_one_layer_is_not_finite():
    net, conn, stats = _two_layers()
    _grads(net, float("nan"), 1.0)
    stats.observe()
    assert not stats.finite()


@pytest.mark.parametrize("second_moment", [True, False])
@pytest.mark.parametrize("window", [(1.0, 3.0), (float("nan"),), (float("inf"),), (-float("inf"),),
                                    (float("inf"), -float("inf")), (3e38, 3e38), (-3e38, -3e38, 1.0)])
def test_stats_finite_reads_the_sums_it_needs_and_answers_for_both(window, second_moment):
    """With second moments finite() reads only their sums: the window is finite exactly when every sum of
    gradients and of their squares is, also where the gradients' own sum alone breaks (inf + -inf is NaN,
    3e38 + 3e38 is past the largest float)."""
    from adaptive.utility.stats import GradientStats

    net, conn, _ = _two_layers()
    stats = GradientStats(conn, second_moment=second_moment)
    for v in window:
        _grads(net, 1.0, v)
        stats.observe()
    sums = list(stats.g_sum.values()) + (list(stats.g2_sum.values()) if second_moment else [])
    want = all(bool(torch.isfinite(t).all()) for t in sums)
    assert want == (window == (1.0, 3.0))  # the window as built: only the first is finite
    assert stats.finite() == want


def _reloaded(stats):
    from adaptive.utility.stats import GradientStats

    again = GradientStats(stats.conn)
    again.load_state_dict(stats.state_dict())
    return again


def test_stats_state_dict_round_trip_keeps_the_second_moments():
    net, conn, stats = _two_layers()
    for v in (1.0, 3.0):
        _grads(net, v, -v)
        stats.observe()
    again = _reloaded(stats)
    for n in conn.params:
        assert torch.equal(again.sq_mean(n), torch.full((2, 2), 5.0))


def test_stats_state_dict_round_trip_keeps_each_layers_own_count():
    net, conn, stats = _two_layers()
    _grads(net, 1.0, 2.0)
    stats.observe(["0.weight"])  # one optimizer's step: layer 1 is not observed here
    _grads(net, 3.0, 2.0)
    stats.observe()
    again = _reloaded(stats)
    assert (again.n("0.weight"), again.n("1.weight")) == (2, 1)
    assert torch.equal(again.mean("1.weight"), torch.full((2, 2), 2.0))


# --------------------------------------------------------------- schedules and budgets, by hand
def test_gmp_density_follows_the_cubic_at_the_midpoint():
    # sparsity 0 -> 0.9 over 100 steps; at step 50: 0.9 + (0 - 0.9) * 0.5^3 = 0.7875, density 0.2125
    assert CubicDensity(1.0, 0.1, 0, 100)(50) == pytest.approx(0.2125)
    assert CubicDensity(1.0, 0.1, 0, 100)(25) == pytest.approx(1.0 - 0.9 * (1.0 - 0.75 ** 3))


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_an_edit_decay_holds_its_start_value_before_its_start_step(name):
    from adaptive.schedules import get_decay

    decay = get_decay(name, 0.3, end_step=100, start_step=50)
    assert decay(10) == pytest.approx(0.3)
    assert decay(50) == pytest.approx(0.3)
    assert decay(100) == pytest.approx(0.0)


def _layers(*modules):
    return adaptive.Connectome(nn.Sequential(*modules)).layers


def test_erk_counts_the_kernel_dimensions_of_a_conv():
    layers = _layers(nn.Conv2d(3, 16, 5), nn.Conv2d(16, 32, 3), nn.Linear(32, 10))
    # live counts proportional to the sum of each weight's dimensions: 29, 54, 42; at 30% of 6128
    # (1838) the linear layer would need 589 > 320, so it is full and the convs share 1518 as 29:54
    assert get_budget("erk")(layers, 0.3) == {"0.weight": 530, "1.weight": 988, "2.weight": 320}


def test_er_gives_mirror_image_layers_the_same_count():
    layers = _layers(nn.Linear(10, 30), nn.Linear(30, 10), nn.Linear(5, 5))
    counts = get_budget("er")(layers, 0.5)  # (10 + 30) / (10 * 30) for both
    assert sum(counts.values()) == round(0.5 * 625)
    assert abs(counts["0.weight"] - counts["1.weight"]) <= 1


def test_the_min_density_floor_is_rounded_up():
    layers = _layers(nn.Linear(127, 79), nn.Linear(30, 30), nn.Linear(30, 30))
    assert get_budget("erk")(layers, 0.18)["0.weight"] < 0.15 * 10033  # ERK alone puts it below the floor
    counts = get_budget("erk")(layers, 0.18, min_density=0.15)
    assert counts["0.weight"] == 1505  # ceil(0.15 * 10033 = 1504.95): at least 15%
    assert sum(counts.values()) == round(0.18 * 11833)


def test_a_min_density_floor_of_a_whole_number_of_synapses_is_that_number():
    """0.07 * 100 is 7.000000000000001 in floats: the floor was rounded up to 8 synapses, so a uniform
    density of 0.07 could not hold a min_density of 0.07 (refused: "raise the density to 0.08")."""
    layers = _layers(nn.Linear(10, 10), nn.Linear(10, 10))
    assert get_budget("uniform")(layers, 0.07, min_density=0.07) == {"0.weight": 7, "1.weight": 7}
    assert get_budget("erk")(layers, 0.07, min_density=0.07) == {"0.weight": 7, "1.weight": 7}
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10)))
    ctrl = adaptive.Controller(conn, policy="magnitude", budget="global", density=0.07, min_density=0.07)
    from adaptive.policies.base import layer_floors

    assert layer_floors(ctrl) == {"0.weight": 7, "2.weight": 7}  # the global budget's floors alike


def test_a_min_density_floor_is_never_under_min_density_in_a_large_layer():
    """The floor's tolerance for float error was 1e-12 of the product: in a layer of 199,999,999
    synapses, 0.9999 of them (199,979,999.0001) was given a floor of 199,979,999, under min_density."""
    from fractions import Fraction

    from adaptive.budgets import floor_synapses

    for md, size in ((0.9999, 199_999_999), (0.999999, 1_999_999), (0.07, 100), (0.57, 100), (0.0001, 12_345_678_901)):
        assert floor_synapses(md, size) == math.ceil(Fraction(str(md)) * size), (md, size)


def test_the_rounding_remainder_goes_to_the_largest_fractions():
    layers = _layers(nn.Linear(37, 9), nn.Linear(29, 23))  # 333 and 667 synapses
    # 3% of each: 9.99 and 20.01, 30 in all: the spare synapse goes to the 9.99
    assert get_budget("uniform")(layers, 0.03) == {"0.weight": 10, "1.weight": 20}


@pytest.mark.parametrize("budget, advice", [
    ("global", "min_density=..., a per-layer budget ('erk', 'uniform'), protect=[...] or a finer ensemble"),
    ("uniform", "min_density=..., protect=[...] or a finer ensemble"),
    ("erk", "min_density=..., protect=[...] or a finer ensemble"),
])
def test_an_emptied_layer_is_warned_about_with_only_the_remedies_this_controller_takes(budget, advice):
    """The warning told a run under the 'uniform' budget that emptied a 2-neuron layer (neurons of 16,
    density 0.1) to keep some with 'a per-layer budget ('erk', 'uniform')': the one in use. It
    suggests a layer budget only under the global one. It left min_density out under 'uniform' (as if a
    floor were at most each layer's uniform share), yet a floor is held in whole ensembles: min_density
    0.05 keeps one neuron of the layer, which each remedy it names is checked to do."""
    def build(**kw):
        torch.manual_seed(0)
        conn = adaptive.Connectome(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)), ensemble="neuron")
        return conn, adaptive.Controller(conn, policy="magnitude", **{"density": 0.1, "budget": budget, **kw})

    with pytest.warns(UserWarning, match=r"\['2.weight'\] have no live synapse left") as rec:
        conn, _ = build()
    assert not conn.masks["2.weight"].any()
    msg = next(str(w.message) for w in rec if "no live synapse left" in str(w.message))
    assert msg.endswith("Keep some with " + advice)
    # the two remedies that keep a layer whatever its share (a layer budget shares by size: this one's share
    # is under half a neuron under either); the protected layer's 32 synapses are more than density 0.1
    # holds of 160: protect=[...] at 0.25
    remedies = {"min_density=...": {"min_density": 0.05}, "protect=[...]": {"protect": ["2.weight"], "density": 0.25}}
    for name, kw in remedies.items():
        if name in advice:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*(out of reach|too low)")
                conn, _ = build(**kw)
            assert conn.masks["2.weight"].any(), name


def test_a_crawl_state_loaded_into_a_controller_with_another_end_step_goes_on_with_its_own():
    """README invariant 5: a controller state takes the density and schedule of the controller it
    loads into. A crawl controller following its density read the goal from the new controller but
    kept the deadline of the saved one (its end_step), so it pruned at the old pace."""
    def crawl(end_step):
        m = tiny(torch.arange(1.0, 33.0).reshape(4, 8))
        conn = adaptive.Connectome(m)
        return m, adaptive.Controller(conn, policy="crawl", density=0.25, init="magnitude", update_every=1,
                                      end_step=end_step, seed=3, estimator="magnitude")
    m, ctrl = crawl(4)
    ctrl.step()
    m2, ctrl2 = crawl(100)
    ctrl2.conn.load_state_dict(ctrl.conn.state_dict())
    ctrl2.load_state_dict(ctrl.state_dict())
    live, step = ctrl2.conn.num_live(), ctrl2.step_count
    ctrl2.step()
    # down to the goal (8 of 32 synapses) evenly over the updates left until this controller's
    # end_step, 100: one a step, where the saved deadline, step 4, had it take six at once
    assert live - ctrl2.conn.num_live() == math.ceil((live - 8) / (100 - step)) == 1


def test_an_explicitly_driven_controller_warns_when_nothing_keeps_pruned_weights_at_zero():
    """Driven explicitly (ctrl.observe(), ctrl.step()) over a Connectome attached to no optimizer, Adam's
    first step moved every pruned synapse off 0.0 and the controller went on editing the masks of what
    trained as a dense network, without a word. One warning, naming the layer and conn.attach (the optimizer's
    step gives it, or ctrl.step(), whichever comes first); with the connectome attached nothing is said and the
    pruned weights stay at 0.0."""
    for attach in (False, True):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        conn = adaptive.Connectome(m)
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        if attach:
            conn.attach(opt)
        ctrl = adaptive.Controller(conn, policy="rigl", density=0.5, update_every=2, end_step=6)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            for _ in range(5):  # the last step no update (which re-masks)
                m(torch.randn(4, 8)).logsumexp(1).mean().backward()
                ctrl.observe()
                opt.step()
                ctrl.step()
                opt.zero_grad()
        said = [str(x.message) for x in w if "attached to no optimizer" in str(x.message)]
        moved = sum(int(((p != 0) & ~conn.masks[n]).sum()) for n, p in conn.params.items())
        if attach:
            assert not said and moved == 0
        else:
            assert moved > 0 and len(said) == 1 and "0.weight" in said[0] and "conn.attach(optimizer)" in said[0]


def _optimizer_warnings(m, opt, steps: int = 6):
    """Train ``m`` (input width 8) ``steps`` steps with ``opt``; the messages of the warnings that name
    layers held by none of the optimizers."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(steps):
            m(torch.randn(4, 8)).logsumexp(1).mean().backward()
            opt.step()
            opt.zero_grad()
    return [str(x.message) for x in w if "held by none of the optimizers" in str(x.message)]


def test_a_layer_left_out_of_the_optimizer_is_warned_of_at_the_first_update():
    """A layer the attached optimizer does not hold (built from the head's parameters alone) never trains,
    and its .grad, which that optimizer's zero_grad() never clears, added up over the steps: RigL grew
    there by stale sums, silently. The first update warns once, naming the layer and protect=/exclude=;
    an optimizer over every weight is not warned of."""
    for everything in (False, True):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        conn = adaptive.Connectome(m)
        opt = torch.optim.SGD(m.parameters() if everything else m[2].parameters(), lr=0.1)
        ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.5, update_every=2, end_step=8)
        said = _optimizer_warnings(m, opt)
        assert len(ctrl.events) == 4  # the init and 3 updates
        if everything:
            assert not said
        else:
            assert len(said) == 1 and "0.weight" in said[0] and "2.weight" not in said[0] and "protect=['0.weight']" in said[0]


@pytest.mark.parametrize("frozen", [True, False])
def test_a_layer_left_out_of_the_optimizer_is_not_warned_of_where_nothing_misleads_the_controller(frozen):
    """Gradual magnitude pruning of a backbone kept fixed (frozen, or left out of the head's optimizer)
    while the head trains: gmp grows nothing and, by magnitude, reads no gradient, so neither harm the
    warning names (grown synapses that never train, stale gradient sums) can happen; it said both at the
    first update. Only where one can (gmp by taylor: stale sums) is it said, naming that harm alone."""
    for estimator in (None, "taylor"):
        if frozen and estimator:
            continue  # (a frozen layer scored by gradients is refused at observe: another test)
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        m[0].weight.requires_grad_(not frozen)
        conn = adaptive.Connectome(m)
        opt = torch.optim.SGD(m[2].parameters(), lr=0.1, momentum=0.9)
        ctrl = adaptive.Controller(conn, opt, policy="gmp", estimator=estimator, density=0.5, update_every=2,
                                   end_step=6)
        said = _optimizer_warnings(m, opt)
        assert len(ctrl.events) == 3 and conn.density() < 1  # gmp pruned the fixed layer
        if estimator is None:
            assert not said, said
        else:
            assert len(said) == 1 and "0.weight" in said[0] and "stale sums" in said[0] and "grows" not in said[0]


@pytest.mark.parametrize("policy", ["gmp", "rigl"])
def test_a_layer_left_out_of_the_optimizer_whose_gradients_model_zero_grad_clears_sums_nothing_stale(policy):
    """A backbone left out of the head's optimizer, but the loop clears every gradient with
    model.zero_grad(): each step's .grad is fresh, so gmp by taylor reads no stale sum and the warning
    (it said "stale sums" at the first update) is not given; RigL's growth there still never trains, so
    that alone is said."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    conn = adaptive.Connectome(m)
    opt = torch.optim.SGD(m[2].parameters(), lr=0.1)
    kw = {"estimator": "taylor"} if policy == "gmp" else {}
    ctrl = adaptive.Controller(conn, opt, policy=policy, density=0.5, update_every=2, end_step=6, **kw)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(6):
            m.zero_grad()
            m(torch.randn(4, 8)).logsumexp(1).mean().backward()
            opt.step()
    said = [str(x.message) for x in w if "held by none of the optimizers" in str(x.message)]
    assert len(ctrl.events) == (3 if policy == "gmp" else 4)  # (rigl: the init and 3 updates)
    if policy == "gmp":
        assert not said, said
    else:
        assert len(said) == 1 and "never train" in said[0] and "stale sums" not in said[0]


@pytest.mark.parametrize("loop", ["zero_grad_in_place", "create_graph", "head_zero_grad"])
def test_whether_a_left_out_layers_gradients_add_up_is_read_before_backward_adds(loop):
    """Whether the gradients of a layer no optimizer holds add up is judged by what its ``.grad`` held
    when the step's backward came, not by whether the tensor is the same: model.zero_grad(set_to_none=False)
    clears the same tensor (nothing stale: no warning, it said "stale sums"), backward(create_graph=True)
    adds out of place, a new tensor holding the sum (stale: warned, it was silent)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    conn = adaptive.Connectome(m)
    opt = torch.optim.SGD(m[2].parameters(), lr=0.1)
    ctrl = adaptive.Controller(conn, opt, policy="gmp", density=0.5, update_every=2, end_step=6, estimator="taylor")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(6):
            if loop == "zero_grad_in_place":
                m.zero_grad(set_to_none=False)
            else:
                opt.zero_grad()
            m(torch.randn(4, 8)).logsumexp(1).mean().backward(create_graph=loop == "create_graph")
            opt.step()
    said = [str(x.message) for x in w if "held by none of the optimizers" in str(x.message)]
    assert len(ctrl.events) == 3
    if loop == "zero_grad_in_place":
        assert not said, said
    else:
        assert len(said) == 1 and "0.weight" in said[0] and "stale sums" in said[0]
    assert not [h for p in m.parameters() for h in (p._backward_hooks or {}).values()]  # the hooks went


def _left_out_build():
    """A backbone left out of the head's optimizer; gmp by taylor updating every 2 steps, ending at step 8."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    conn = adaptive.Connectome(m)
    opt = torch.optim.SGD(m[2].parameters(), lr=0.1)
    return m, conn, opt, adaptive.Controller(conn, opt, policy="gmp", estimator="taylor", density=0.5,
                                             update_every=2, end_step=8)


def _left_out_train(m, opt, xs):
    """One step per batch of ``xs``, gradients cleared by model.zero_grad() (nothing stale): the warnings given."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for x in xs:
            m.zero_grad()
            m(x).logsumexp(1).mean().backward()
            opt.step()
    return [str(x.message) for x in w]


def _left_out_run(how: str):
    """:func:`_left_out_build`'s setup taken over after 3 steps (the next step's backward noted, not yet run)
    by a copy (``how``: deepcopy, pickle, or a resume from state_dicts): the warnings each run gives over the next
    4 steps (updates at 4 and 6, step 7 observed), and the two connectomes and controllers at the end."""
    import pickle

    build, train = _left_out_build, _left_out_train
    m, conn, opt, ctrl = build()
    xs = [torch.randn(4, 8) for _ in range(7)]
    train(m, opt, xs[:3])
    if how == "state_dict":
        saved = copy.deepcopy([o.state_dict() for o in (m, conn, opt, ctrl)])
        m2, conn2, opt2, ctrl2 = build()
        for o, sd in zip((m2, conn2, opt2, ctrl2), saved):
            o.load_state_dict(sd)
    else:
        both = (m, conn, opt, ctrl)
        m2, conn2, opt2, ctrl2 = copy.deepcopy(both) if how == "deepcopy" else pickle.loads(pickle.dumps(both))
        ctrl2.attach(opt2)
    return train(m, opt, xs[3:]), train(m2, opt2, xs[3:]), (conn, ctrl), (conn2, ctrl2)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "state_dict"])
def test_a_controller_copied_or_resumed_before_an_update_judges_its_gradients_as_the_original_does(how):
    """The step before an update hooks the left-out layers' weights to read what their .grad held before
    backward; a copy (deepcopy, pickle) dropped those hooks and what they saw, and a resume never set them, so
    the copy's next update counted its fresh gradients as stale and warned of "stale sums" where the original
    run is silent. The copy goes on as the original: the same warnings (none), masks, events and sums."""
    said, said2, (conn, ctrl), (conn2, ctrl2) = _left_out_run(how)
    assert said == said2 == []
    assert len(ctrl.events) == len(ctrl2.events) == 3 and ctrl.step_count == ctrl2.step_count == 7
    assert all(torch.equal(conn.masks[n], conn2.masks[n]) for n in conn.masks)
    assert ctrl.stats.counts == ctrl2.stats.counts == {"0.weight": 1, "2.weight": 1}  # mid-window
    assert all(torch.equal(ctrl.stats.g_sum[n], ctrl2.stats.g_sum[n]) for n in conn.masks)
    assert [e.get("density") for e in ctrl.events] == [e.get("density") for e in ctrl2.events]


@pytest.mark.parametrize("how", ["detach_attach", "rollback"])
def test_a_controller_detached_and_attached_or_rolled_back_before_an_update_judges_its_gradients_afresh(how):
    """Between the step an update follows and that update, ``detach()`` drops the gradient hooks: ``attach()``
    sets them again (without it the update knew nothing and warned of "stale sums"). A ``load_state_dict``
    rolling back to that step after a backward without ``zero_grad`` had been seen forgets what was seen (it
    belongs to the step rolled back from) and notes afresh, so the rerun, which clears its gradients, is silent."""
    build, train = _left_out_build, _left_out_train
    xs = [torch.randn(4, 8) for _ in range(5)]
    m, conn, opt, ctrl = build()
    assert train(m, opt, xs[:3]) == []
    if how == "detach_attach":
        ctrl.detach()
        ctrl.attach(opt)
    else:
        saved = copy.deepcopy([o.state_dict() for o in (m, conn, opt, ctrl)])
        m(xs[3]).logsumexp(1).mean().backward()  # no zero_grad: step 3's gradient is still there, seen as stale
        for o, sd in zip((m, conn, opt, ctrl), saved):
            o.load_state_dict(sd)
    assert len([h for p in m.parameters() for h in (p._backward_hooks or {}).values()]) == 1  # one, on 0.weight
    assert train(m, opt, xs[3:]) == []
    assert len(ctrl.events) == 2 and ctrl.step_count == 5


def test_a_grow_init_callable_is_called_in_the_layers_order_on_every_run():
    """The edit's layers were a set of names, iterated in an order that differs between runs and between the
    processes of a launch (string hashing is seeded per process): a grow_init callable drawing from a shared
    generator then gave each process other weights. It is now called in the connectome's layer order."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(6, 6) for _ in range(12)])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    conn = adaptive.Connectome(model)
    calls = []

    def grow_init(name, grown):
        calls.append(name)
        return torch.zeros_like(conn.params[name])

    adaptive.Controller(conn, opt, policy="set", density=0.5, budget="uniform", update_every=1, end_step=4,
                        grow_init=grow_init, seed=0)
    model(torch.randn(4, 6)).square().mean().backward()
    opt.step()  # the one update: every layer swaps some synapses
    assert calls == conn.names, calls


@pytest.mark.parametrize("frac, pruned, boundary", [(0.25, 4, -7.0), (0.01, 1, -10.0)])
def test_threshold_without_a_target_prunes_its_limit_below_the_boundary_and_adapts_it_to_the_costliest(frac, pruned,
                                                                                                       boundary):
    """No density: threshold prunes the cheapest live synapses below its prune boundary, at most
    ``edit_fraction`` of the live ones but at least one (an edit fraction that rounds to no synapse
    still edits), and adapts the boundary to the costliest it pruned. Costs -10 .. 5 by hand: ten
    below 0; a limit of round(0.25 x 16) = 4 prunes -10 .. -7, one of round(0.01 x 16) = 0 prunes -10."""
    from adaptive.utility import Estimator, register_estimator
    from adaptive.utility.base import _ESTIMATORS

    @register_estimator("test_costs_by_position")
    class CostsByPosition(Estimator):
        def removal_cost(self, ctx):
            return torch.arange(ctx.mask.numel(), dtype=torch.float32).reshape(ctx.mask.shape) - 10.0

        def restoration_gain(self, ctx):  # nothing is worth restoring
            return torch.full(ctx.mask.shape, -1.0)

    try:
        conn = adaptive.Connectome(nn.Linear(4, 4, bias=False))
        ctrl = adaptive.Controller(conn, None, policy="threshold", estimator="test_costs_by_position", density=None,
                                   update_every=1, edit_fraction=frac, edit_decay="constant")
        ev = ctrl.step()
        assert (ev["pruned"], ev["grown"], conn.num_live()) == (pruned, 0, 16 - pruned)
        assert not bool(conn.masks["weight"].reshape(-1)[:pruned].any()) and bool(conn.masks["weight"].reshape(-1)[pruned:].all())
        assert ctrl.policy.prune_boundary == boundary
    finally:
        _ESTIMATORS.pop("test_costs_by_position", None)


def test_threshold_restore_boundary_never_adapts_below_zero_after_restoring_a_shortfall_at_a_loss():
    """Below its target, threshold restores the shortfall wherever the restore boundary is, so it can
    restore synapses whose gain is negative (restoring them costs loss). Its boundary then adapts to
    the smallest gain restored but not below 0: a negative boundary would let later updates restore
    synapses that cost loss beyond the pace, in pairs with prunes."""
    from adaptive.utility import Estimator, register_estimator
    from adaptive.utility.base import _ESTIMATORS

    @register_estimator("test_negative_gains")
    class NegativeGains(Estimator):
        def removal_cost(self, ctx):
            return ctx.weight.detach().abs().float()

        def restoration_gain(self, ctx):  # every restoration costs loss
            return -0.1 - ctx.mask.logical_not().float() * torch.arange(ctx.mask.numel()).reshape(ctx.mask.shape)

    try:
        torch.manual_seed(0)
        m = nn.Linear(4, 4, bias=False)
        conn = adaptive.Connectome(m)
        conn.set_masks({"weight": torch.arange(16).reshape(4, 4) < 4})  # 4 of 16 live, the target is 8
        ctrl = adaptive.Controller(conn, None, policy="threshold", estimator="test_negative_gains", density=0.5,
                                   update_every=1, edit_fraction=0.5, edit_decay="constant")
        ev = ctrl.step()
        assert ev["grown"] == 4 and conn.num_live() == 8  # the shortfall, restored at a loss
        assert ctrl.policy.restore_boundary == 0.0
    finally:
        _ESTIMATORS.pop("test_negative_gains", None)


def test_the_docstrings_end_step_none_for_threshold_is_what_it_does():
    """Controller's docstring said that without end_step threshold 'prunes to its density at its first update'; it
    removes at most edit_fraction of the live ensembles an update (0.3 by default: density 0.7 after the first, the
    target 0.2 reached at the fifth) and edits at every update after. The docstring now says so."""
    doc = " ".join(adaptive.Controller.__doc__.split())
    assert "threshold prunes to its density at its first update" not in doc
    assert "threshold removes toward its density as fast as the edit limit allows (at most ``edit_fraction``" in doc
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.warns(UserWarning, match="a window of 1"):  # (curvature's, on one batch an update: not measured here)
        ctrl = adaptive.Controller(adaptive.Connectome(model), opt, policy="threshold", density=0.2, update_every=1)
    assert ctrl.end_step is None and ctrl.edit_fraction(0) == 0.3
    densities, edits = [], []
    for _ in range(8):
        before = {n: m.clone() for n, m in ctrl.conn.masks.items()}
        F.cross_entropy(model(torch.randn(16, 20)), torch.randint(0, 5, (16,))).backward()
        opt.step()
        opt.zero_grad()
        densities.append(ctrl.conn.density())
        edits.append(sum(int((before[n] != m).sum()) for n, m in ctrl.conn.masks.items()))
    assert densities[0] == pytest.approx(0.7, abs=1e-3) and densities[3] > 0.2 + 1e-3  # not at once
    assert all(d == pytest.approx(0.2, abs=1e-3) for d in densities[4:]) and all(e > 0 for e in edits[4:])


@pytest.mark.parametrize("how", ["torch.load", "deepcopy"])
def test_a_connectome_restored_by_torch_load_warns_when_stepped_unattached(how):
    """torch.save of {model, optimizer, connectome, controller} and torch.load of it: the restored connectome
    and controller are attached to nothing (hooks are not saved), so the restored optimizer trained densely,
    pruned weights moved off 0.0 while density() said 0.3, and the controller never updated, without a word.
    The first step of an optimizer over its weights warns, naming ctrl.attach; attached again, it masks."""
    import io

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    conn = adaptive.Connectome(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.3, update_every=3, edit_fraction=0.3, seed=0)

    def train(m, o, n):
        for _ in range(n):
            F.cross_entropy(m(torch.randn(8, 10)), torch.randint(0, 4, (8,))).backward()
            o.step()
            o.zero_grad()

    train(model, opt, 4)
    objects = {"model": model, "opt": opt, "conn": conn, "ctrl": ctrl}
    if how == "torch.load":
        buf = io.BytesIO()
        torch.save(objects, buf)
        buf.seek(0)
        d = torch.load(buf, weights_only=False)
    else:
        d = copy.deepcopy(objects)
    m2, o2, c2, k2 = d["model"], d["opt"], d["conn"], d["ctrl"]
    with pytest.warns(UserWarning, match=r"an optimizer \(SGD\) steps the weights 0\.weight, 2\.weight of a Connectome "
                                         r"restored by torch\.load, pickle or copy\.deepcopy.*ctrl\.attach\(optimizer\)"):
        train(m2, o2, 1)
    k2.attach(o2)
    c2.apply()  # (the unattached step moved pruned weights: put back, as the docs say for any such write)
    events = len(k2.events)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(m2, o2, 6)
        train(model, opt, 2)  # the original stays attached: no warning either
    assert len(k2.events) > events
    assert all(not bool(p.detach()[~c2.masks[n]].any()) for n, p in c2.params.items())
    c2.detach()  # detached on purpose once attached again (to train densely): no word, as for the original
    conn.detach()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(m2, torch.optim.SGD(m2.parameters(), lr=0.05), 1)  # (a new optimizer: none warned of yet)
        train(model, torch.optim.SGD(model.parameters(), lr=0.05), 1)


def test_a_compiled_training_step_gives_no_lru_cache_warning_and_keeps_pruned_weights_zero():
    """torch.compile of a whole training step (forward, backward, the attached optimizer's step) runs the
    connectome's step hooks under Dynamo, which warned of every call to an lru_cache-wrapped function (the
    eps check of optim_state); a plain dict cache gives none."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    conn = adaptive.Connectome(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.3, update_every=3, edit_fraction=0.3, seed=0)

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    compiled = torch.compile(step, backend="eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            compiled(torch.randn(8, 10), torch.randint(0, 4, (8,)))
    assert not [str(w.message) for w in caught if "lru_cache" in str(w.message)]
    assert len(ctrl.events) >= 2 and all(not bool(p.detach()[~conn.masks[n]].any()) for n, p in conn.params.items())
