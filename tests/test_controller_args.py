"""Controller and optimize_connectome settings: a bad one is refused at the call, naming it, with the
connectome and the model as they were; a good one is not refused."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import adaptive

torch.set_num_threads(1)


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


BAD = {
    "line_search_tries=-1": (dict(line_search_tries=-1), "line_search_tries must be an integer >= 0"),
    "line_search_tries=1.5": (dict(line_search_tries=1.5), "line_search_tries must be an integer >= 0"),
    "batch_size=-64": (dict(batch_size=-64), "batch_size must be None or .* integer >= 1"),
    "verify='no'": (dict(verify="no"), r"verify must be None \(check wherever several processes run\), True or False, got 'no'"),
    "verify=1": (dict(verify=1), "verify must be None .*, got 1"),
    "batch_size=0": (dict(batch_size=0), "batch_size must be None or .* integer >= 1"),
    "batch_size=2.5": (dict(batch_size=2.5), "batch_size must be None or .* integer >= 1"),
    "grow_init=0.0": (dict(grow_init=0.0), "unknown grow_init 0.0: use 'zero', 'original', 'random' or a callable"),
    "seed=1.5": (dict(seed=1.5), r"seed must be an integer .*got 1.5: pass a whole number"),
    "seed=True": (dict(seed=True), r"seed must be an integer .*got True"),
    "crawl, margin=nan": (dict(policy="crawl", margin=math.nan), "margin must be a finite number"),
    "crawl, margin='0.1x'": (dict(policy="crawl", margin="0.1x"), "margin must be a number"),
    "crawl, margin=inf": (dict(policy="crawl", margin=math.inf), "margin must be a finite number"),
    "update_every=True": (dict(update_every=True), "update_every must be an integer >= 1, got True"),
    "update_every=2.5": (dict(update_every=2.5), "update_every must be an integer >= 1, got 2.5"),
    "window=True": (dict(window=True), "window must be None or an integer >= 1, got True"),
    "start_step=0.5": (dict(start_step=0.5), "start_step must be an integer >= 0"),
    "end_step=9.5": (dict(end_step=9.5), "end_step must be None or an integer step"),
    "threshold, budget=uniform": (dict(policy="threshold", budget="uniform"),
                                  "budget='uniform' would be ignored: leave budget out"),
    "init=estimator, curvature": (dict(policy="utility", estimator="curvature", budget="uniform", init="estimator"),
                                  "init='estimator' .* 'curvature'.* Use init='magnitude' or init='random'"),
    "init=estimator, taylor": (dict(policy="balanced", estimator="taylor", init="estimator"), "'taylor'"),
    "zero_cost_order='size'": (dict(zero_cost_order="size"),
                               r"unknown zero_cost_order 'size': use one of \('magnitude', 'index'\)"),
    "line_search_tolerance=nan": (dict(line_search_tolerance=math.nan),
                                  r"line_search_tolerance must be None \(the mode's default\) or a number.*got nan"),
    "line_search_tolerance='0.1'": (dict(line_search_tolerance="0.1"), "line_search_tolerance must be None"),
    # (it rolled back every update that did not lower the held-out loss by 0.1; -inf every update)
    "line_search_tolerance=-0.1": (dict(line_search_tolerance=-0.1),
                                   r"line_search_tolerance must be None \(the mode's default\) or a number >= 0.*it must "
                                   r"be >= 0, got -0.1: a negative tolerance would roll back every update that does not "
                                   r"lower the held-out loss by more than its size; give 0.0 to veto every rise"),
    "line_search_tolerance=-inf": (dict(line_search_tolerance=-math.inf), "it must be >= 0, got -inf"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_setting_is_refused_at_construction_and_changes_nothing(case):
    kw, match = BAD[case]
    m = net()
    conn = adaptive.Connectome(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    before = conn.mask_hash(), {k: v.clone() for k, v in m.state_dict().items()}
    kw = {"policy": "rigl", "density": 0.5, "update_every": 2, "end_step": 10, **kw}
    with pytest.raises(ValueError, match=match):
        adaptive.Controller(conn, opt, **kw)
    assert conn.mask_hash() == before[0]
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before[1].items())
    assert conn._observers == [] and conn.original == {}


@pytest.mark.parametrize("holdout", ["loader", "number"])
def test_a_holdout_loss_that_is_not_callable_is_refused_at_construction(holdout):
    # a DataLoader was taken, and the first update with a line search failed with "'DataLoader' object
    # is not callable", far from the mistake
    m = net()
    conn = adaptive.Connectome(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    loader = DataLoader(TensorDataset(torch.randn(8, 8), torch.randint(0, 3, (8,))), batch_size=4)
    bad = loader if holdout == "loader" else 0.5
    before = conn.mask_hash()
    with pytest.raises(TypeError, match=rf"holdout_loss must be None or a callable .* got {type(bad).__name__}: "
                                        r"wrap a loader in a function, e\.g\. holdout_loss=lambda: "):
        adaptive.Controller(conn, opt, policy="rigl", density=0.5, update_every=2, holdout_loss=bad)
    assert conn.mask_hash() == before and conn._optimizers == [] and conn._controllers == []
    assert not opt._optimizer_step_pre_hooks
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.5, update_every=2,
                               holdout_loss=lambda: adaptive.mask_only.evaluate(m, loader)[0])  # the fix it gives
    assert ctrl._holdout() == pytest.approx(adaptive.mask_only.evaluate(m, loader)[0])


@pytest.mark.parametrize("estimator", ["magnitude", "presence", "evidence", "gradient"])
def test_init_estimator_with_an_estimator_that_scores_without_gradients_is_kept(estimator):
    """They rank synapses before any gradient (magnitude, a magnitude prior, or a removal cost of |w|
    as gradient's): by value, not by index."""
    m = net()
    conn = adaptive.Connectome(m)
    w = m[0].weight.detach().abs().clone()
    adaptive.Controller(conn, policy="utility", estimator=estimator, density=0.5, budget="uniform", init="estimator")
    kept = conn.masks["0.weight"]
    assert float(w[kept].min()) >= float(w[~kept].max())  # the largest half kept, wherever they sit


def test_line_search_tries_zero_tries_the_whole_update_once():
    m = net()
    conn = adaptive.Connectome(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.5, update_every=2, end_step=10,
                               holdout_loss=lambda: float(F.cross_entropy(m(x), y)), line_search_tries=0, batch_size=32,
                               line_search_tolerance=0.0)
    for _ in range(2):
        F.cross_entropy(m(x), y).backward()
        opt.step()
        opt.zero_grad()
    assert ctrl.events[-1]["kind"] == "update" and ctrl.events[-1]["line_search_fraction"] in (0.0, 1.0)


def test_a_grow_init_callable_of_the_wrong_shape_is_blamed_not_the_policy_or_n_m():
    m = net()
    conn = adaptive.Connectome(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.5, update_every=2, end_step=10,
                               grow_init=lambda name, grown: torch.zeros(3))
    before = conn.mask_hash()
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    F.cross_entropy(m(x), y).backward()
    opt.step()
    opt.zero_grad()
    F.cross_entropy(m(x), y).backward()
    with pytest.raises(ValueError, match=r"grow_init callable must return a tensor shaped \((16, 8|3, 16)\) for '[02].weight'") as e:
        opt.step()
    assert "n:m" not in str(e.value) and "policy" not in str(e.value)
    assert conn.mask_hash() == before
    ctrl.detach()


def test_threshold_keeps_the_default_and_the_global_budget():
    """The threshold policy ranks all layers together: the budgets it would ignore are refused (BAD above),
    but the default (left out, or named) and 'global' are taken and kept."""
    for kw in ({}, dict(budget="erk"), dict(budget="global")):
        ctrl = adaptive.Controller(adaptive.Connectome(net()), policy="threshold", density=0.5, **kw)
        assert (ctrl.policy.name, ctrl.budget) == ("threshold", kw.get("budget", "erk"))


def loaders():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 8, generator=g), torch.randint(0, 3, (96,), generator=g)
    return (DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16),
            DataLoader(TensorDataset(x[64:], y[64:]), batch_size=16))


@pytest.mark.parametrize("kw,match", [
    (dict(verify_batches=1, line_search_tries=-1), "line_search_tries must be an integer >= 0"),
    (dict(verify_batches=1, line_search_tries=1.5), "line_search_tries must be an integer >= 0"),
    (dict(passes=math.inf), "passes must be a finite number > 0"),
    (dict(passes=math.nan), "passes must be a finite number > 0"),
    (dict(passes=0), "passes must be a finite number > 0"),
    # margin and seed went through unchecked: NaN made every swap fail its test, 1.5 ran as seed 1
    (dict(margin=math.nan), r"margin must be a finite number .*got nan"),
    (dict(margin=-math.inf), r"margin must be a finite number .*got -inf"),
    (dict(margin="0.1"), r"margin must be a finite number .*got '0.1'"),
    (dict(seed=1.5), r"seed must be an integer .*got 1.5: pass a whole number such as seed=0"),
    (dict(seed=True), r"seed must be an integer .*got True"),
    (dict(approach=math.nan), r"approach must be in \[0, 1\], got nan"),
    (dict(edit_fraction=math.inf), r"edit_fraction must be in \[0, 1\].*got inf"),
    (dict(edit_fraction=True), r"edit_fraction must be in \[0, 1\].*got True"),
    (dict(target="best", ladder=[0.2, math.nan]), r"ladder must be increasing removal fractions in \(0, 1\)"),
    (dict(window=True), "window must be an integer >= 1, got True"),
    (dict(patience=2.0), "patience must be an integer >= 1, got 2.0"),
])
def test_optimize_connectome_refuses_a_bad_setting_before_any_work(kw, match):
    m = net()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    train, holdout = loaders()
    with pytest.raises(ValueError, match=match):
        adaptive.optimize_connectome(m, train, holdout, **{"target": 0.3, "progress": False, **kw})
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert m.training


def test_a_snapshot_is_found_by_the_target_as_given():
    train, holdout = loaders()
    res = adaptive.optimize_connectome(net(), train, holdout, target=[0.5, 100], progress=False)
    assert res.use(0.5) is res.snapshots["0.5"] and res.use(100) is res.snapshots["100"]
    assert res.use("0.5") is res.snapshots["0.5"]
    assert torch.equal(res.conn.masks["0.weight"], res.snapshots["0.5"].masks["0.weight"])
    with pytest.raises(KeyError, match=r"no snapshot 0.7: have \['0.5', '100'\]; pass one of those labels"):
        res.use(0.7)


def test_numpy_and_torch_whole_numbers_are_counts_too():
    """np.int64(64) and torch.tensor(64) worked as counts before the checks; the checks refused them."""
    import numpy as np

    m = net()
    conn = adaptive.Connectome(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.5, update_every=np.int64(2), end_step=np.int32(10),
                               start_step=torch.tensor(1), window=np.int16(2),
                               batch_size=np.int64(64), line_search_tries=torch.tensor(3))
    got = (ctrl.batch_size, ctrl.line_search_tries, ctrl.update_every, ctrl.end_step, ctrl.start_step, ctrl.window)
    assert got == (64, 3, 2, 10, 1, 2)
    assert all(type(v) is int for v in got)
    train, holdout = loaders()
    res = adaptive.optimize_connectome(net(), train, holdout, target=0.3, progress=False, passes=np.float32(0.5),
                                       verify_batches=1, line_search_tries=np.int64(2))
    assert res.conn.num_live() < res.conn.num_synapses()


def test_one_whole_number_check_for_counts_everywhere():
    """build_model and knowledge_distribution had checks of their own (operator.index, numbers.Integral,
    which refused torch.tensor(3)); the controller's whole_number is now the one they all use."""
    import numpy as np

    from adaptive.counts import whole_number
    from adaptive.controller import whole_number as from_controller

    assert from_controller is whole_number
    assert [whole_number(x) for x in (3, np.int64(3), torch.tensor(3), np.uint8(3))] == [3, 3, 3, 3]
    assert [whole_number(x) for x in (True, False, 3.0, 2.5, torch.tensor(3.0), "3", None)] == [None] * 7


def test_the_helpers_split_out_of_the_controller_module_answer_there_as_before(monkeypatch):
    """The score checks (adaptive/score_checks.py) and the state's helpers (adaptive/controller_state.py)
    left adaptive/controller.py: importable from it as before, and a monkeypatch of its ``_check_scores``
    still reaches the controller's scores."""
    import adaptive.controller as controller
    from adaptive import controller_state, score_checks

    for name in ("_ranks_nothing", "_nonfinite_weights", "_describe", "_check_pooled", "_check_scores"):
        assert getattr(controller, name) is getattr(score_checks, name)
    assert controller._holds_tensors is controller_state._holds_tensors
    ctrl = adaptive.Controller(adaptive.Connectome(nn.Linear(4, 3)), policy="utility", estimator="magnitude",
                               density=0.5)
    assert {"state_dict", "load_state_dict", "_estimates", "_warn_missed_target"} <= set(dir(ctrl))

    def refuse(*args, **kwargs):
        raise RuntimeError("patched")
    monkeypatch.setattr(controller, "_check_scores", refuse)
    with pytest.raises(RuntimeError, match="patched"):
        ctrl.scores("cost")


def test_the_edit_code_split_out_of_the_controller_module_answers_there_as_before():
    """Applying a plan (adaptive/controller_edits.py) left adaptive/controller.py: the names it used are
    importable from there as before, and the controller's methods are the mixin's."""
    import adaptive.controller as controller
    from adaptive import connectome, controller_edits, distributed, rollback
    from adaptive.policies import base

    assert controller.EditSnapshot is rollback.EditSnapshot
    assert controller.EnsembleRuleError is connectome.EnsembleRuleError
    assert controller.all_reduce_mean_ is distributed.all_reduce_mean_
    assert controller.global_synapse_target is base.global_synapse_target
    for name in ("_apply", "_holdout", "_shrink", "_check_plan", "_set_plan_masks", "ensemble_sizes", "_synapse_counts"):
        assert getattr(controller.Controller, name) is getattr(controller_edits.ControllerEditsMixin, name)


def test_numpy_and_torch_bools_are_no_counts():
    """operator.index took torch.tensor(True) as the count 1, though the docstring says a bool is none."""
    import numpy as np

    from adaptive.counts import whole_number

    for x in (torch.tensor(True), torch.tensor([False]), np.True_, np.bool_(False), np.array(True)):
        assert whole_number(x) is None and whole_number(x, floats=True) is None, repr(x)
    assert whole_number(torch.tensor([3])) == 3 and whole_number(np.array(3)) == 3


def test_numpy_and_torch_integers_are_seeds_and_counts_of_optimize_connectome():
    """seed, window, patience, verify_batches and eval_every take any whole number (not a bool), and a
    numpy or torch seed runs as the int it holds."""
    import numpy as np

    conn = adaptive.Connectome(net())
    assert adaptive.Controller(conn, policy="rigl", density=0.5, seed=torch.tensor(3)).seed == 3
    train, holdout = loaders()
    runs = [adaptive.optimize_connectome(net(), train, holdout, target="best", ladder=[0.2, 0.4], progress=False,
                                         seed=s, window=w, patience=p, verify_batches=v, eval_every=e)
            for s, w, p, v, e in [(3, 2, 1, 1, 2), (np.int64(3), np.int32(2), torch.tensor(1), np.int8(1), torch.tensor(2))]]
    assert runs[0].conn.mask_hash() == runs[1].conn.mask_hash()
    assert runs[0].controller.seed == runs[1].controller.seed == 3 and type(runs[1].controller.seed) is int


def test_init_estimator_takes_a_plugin_whose_removal_cost_needs_no_gradient():
    """A gradient-based plugin with a magnitude prior on its removal side ranks by value before any
    gradient: it was refused for needing gradients at all."""
    from adaptive.utility import Estimator

    class Prior(Estimator):
        name = "prior-test"
        needs_gradients = True

        def removal_cost(self, ctx):
            return ctx.weight.detach().abs()

        def restoration_gain(self, ctx):
            return ctx.stats.mean(ctx.name).abs()

    m = net()
    conn = adaptive.Connectome(m)
    w = m[0].weight.detach().abs().clone()
    adaptive.Controller(conn, policy="utility", estimator=Prior(), density=0.5, budget="uniform", init="estimator")
    kept = conn.masks["0.weight"]
    assert float(w[kept].min()) >= float(w[~kept].max())


def test_init_estimator_refuses_removal_costs_that_are_all_nan_before_any_gradient():
    """A signal-to-noise cost |E g| / sqrt(E g^2) is 0/0 before any gradient: NaN everywhere, which
    ranks as ties broken by index; it was accepted once constant scores alone were refused. (NaN
    scores are now refused wherever they come, naming the estimator and the count.)"""
    from adaptive.utility import Estimator

    class SNR(Estimator):
        name = "snr-test"
        needs_gradients = True

        def removal_cost(self, ctx):
            return torch.full_like(ctx.weight, float("nan"))

        def restoration_gain(self, ctx):
            return ctx.stats.mean(ctx.name).abs()

    m = net()
    conn = adaptive.Connectome(m)
    before = conn.mask_hash()
    with pytest.raises(ValueError, match="estimator 'snr-test'.*removal cost.*'0.weight' holds 128 NaN of 128"):
        adaptive.Controller(conn, policy="utility", estimator=SNR(), density=0.5, budget="uniform", init="estimator")
    assert conn.mask_hash() == before


def test_optimize_connectome_takes_passes_as_a_one_element_tensor():
    train, holdout = loaders()
    res = adaptive.optimize_connectome(net(), train, holdout, target=0.3, progress=False, passes=torch.tensor(1))
    assert res.conn.num_live() < res.conn.num_synapses()


def test_a_non_finite_held_out_loss_stops_the_line_search_with_the_model_restored():
    """Held-out data of NaN: every decision compared NaN; once required edits went through on NaN, the
    run finished silently with a NaN held-out loss (and 'best' chose to remove nothing). The dense
    network's held-out loss is now checked before any edit, so that refusal comes first."""
    m = net()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 8, generator=g), torch.randint(0, 3, (96,), generator=g)
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16)
    holdout = DataLoader(TensorDataset(torch.full((32, 8), float("nan")), y[64:]), batch_size=16)
    with pytest.raises(ValueError, match="the dense network's held-out loss is nan .* before any synapse was removed"):
        adaptive.optimize_connectome(m, train, holdout, target=0.3, progress=False, verify_batches=1)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


class _NanOncePruned(nn.Module):
    """A network whose output turns NaN once any weight of its first layer is 0.0 (pruned): the dense
    network passes the check before any edit, the first edited one does not."""

    def __init__(self):
        super().__init__()
        self.body = net()

    def forward(self, x):
        out = self.body(x)
        return out * float("nan") if bool((self.body[0].weight == 0).any()) else out


def test_a_held_out_loss_that_turns_nan_after_an_edit_stops_the_line_search_with_the_model_restored():
    m = _NanOncePruned()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    train, holdout = loaders()
    with pytest.raises(ValueError, match="the held-out loss of the line search is nan .* check that data for NaN"):
        adaptive.optimize_connectome(m, train, holdout, target=0.3, progress=False, verify_batches=1)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_steps_and_seeds_take_floats_that_hold_whole_numbers_as_they_always_did():
    """end_step=0.75 * total_steps (750.0), start_step=0.0 and seed=1.0 ran before the shared
    whole-number check; they still do, as plain ints, while 2.5 is refused, never cut to 2."""
    m = net()
    ctrl = adaptive.Controller(adaptive.Connectome(m), torch.optim.SGD(m.parameters(), lr=0.1), policy="rigl",
                               density=0.5, update_every=2, end_step=0.75 * 1000, start_step=0.0, seed=1.0)
    got = (ctrl.end_step, ctrl.start_step, ctrl.seed)
    assert got == (750, 0, 1) and all(type(v) is int for v in got)
    train, holdout = loaders()
    a = adaptive.optimize_connectome(net(), train, holdout, target=0.3, progress=False, passes=0.5, seed=2.0)
    b = adaptive.optimize_connectome(net(), train, holdout, target=0.3, progress=False, passes=0.5, seed=2)
    assert all(torch.equal(a.conn.masks[n], b.conn.masks[n]) for n in a.conn.masks)
    for kw in (dict(end_step=750.5), dict(seed=1.5), dict(start_step=float("inf"))):
        with pytest.raises(ValueError, match="must be"):
            adaptive.Controller(adaptive.Connectome(net()), None, policy="rigl", density=0.5, **kw)


@pytest.mark.parametrize("policy, kw, why", [
    ("gmp", dict(density=0.5, end_step=10, update_every=2), "policy 'gmp' starts from the connectome as it is"),
    ("threshold", dict(), "no density was given"),
    ("balanced", dict(density=1.0), "already holds no more than density 1.0"),
])
def test_an_init_the_policy_never_uses_is_named(policy, kw, why):
    """init='magnitude' with a policy that does not sparsify at construction (gmp prunes from the
    dense network by its schedule) was accepted and silently unused."""
    conn = adaptive.Connectome(net())
    with pytest.warns(UserWarning, match=rf"init='magnitude' was not used: .*{why}"):
        adaptive.Controller(conn, policy=policy, init="magnitude", **kw)
    assert conn.density() == 1.0


def test_an_init_that_sparsifies_raises_no_warning():
    import warnings

    conn = adaptive.Connectome(net())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adaptive.Controller(conn, policy="rigl", density=0.5, update_every=2, end_step=10, init="magnitude")
    assert conn.density() == pytest.approx(0.5, abs=0.02)


def test_ensemble_sizes_names_the_synapses_of_each_ensemble():
    conn = adaptive.Connectome(net(), ensemble="neuron")
    ctrl = adaptive.Controller(conn, policy="rigl", density=0.5, end_step=10)
    sizes = ctrl.ensemble_sizes("0.weight")
    assert sizes is not None and int(sizes.sum()) == 8 * 16 and len(sizes) == conn.ensemble_masks()["0.weight"].numel()
    assert adaptive.Controller(adaptive.Connectome(net()), policy="rigl", density=0.5,
                               end_step=10).ensemble_sizes("0.weight") is None  # one synapse each
    with pytest.raises(KeyError, match=r"no layer 'fc' in the connectome: its layers are \['0.weight', '2.weight'\]"):
        ctrl.ensemble_sizes("fc")


def _gradual(mode_kw):
    """gmp from dense to density 0.2 over 4 updates, on a held-out loss that every prune raises (1 -
    density): the rise a prune costs at once in train mode. The final density."""
    m = net()
    conn = adaptive.Connectome(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    ctrl = adaptive.Controller(conn, opt, policy="gmp", density=0.2, budget="uniform", update_every=2, end_step=8,
                               holdout_loss=lambda: 1.0 - conn.density(), **mode_kw)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for _ in range(8):
        F.cross_entropy(m(x), y).backward()
        opt.step()
        opt.zero_grad()
    return ctrl, conn.density()


def test_in_train_mode_the_line_search_measures_by_default_and_gradual_pruning_reaches_its_density():
    """Train mode's default tolerance is inf: every update is kept and its measured change logged, so
    the schedule reaches its density; an explicit 0.0 vetoes every prune as before (and warns)."""
    ctrl, density = _gradual({})
    assert ctrl.line_search_tolerance == math.inf and abs(density - 0.2) < 0.01
    checked = [e for e in ctrl.events if e["kind"] == "update" and e["line_search_fraction"] is not None]
    assert checked and all(e["line_search_fraction"] == 1.0 and e["actual_loss_change"] > 0 for e in checked)
    with pytest.warns(UserWarning, match="the controller's schedule ended .* line_search_tolerance=0 "):
        ctrl, density = _gradual({"line_search_tolerance": 0.0})
    assert ctrl.line_search_tolerance == 0.0 and density == 1.0


def test_in_mask_only_mode_the_line_search_tolerance_stays_0_unless_given():
    m = net()
    conn = adaptive.Connectome(m, mode="mask_only")
    assert adaptive.Controller(conn, policy="crawl", holdout_loss=lambda: 0.0).line_search_tolerance == 0.0
    m = net()
    conn = adaptive.Connectome(m, mode="mask_only")
    given = adaptive.Controller(conn, policy="crawl", holdout_loss=lambda: 0.0, line_search_tolerance=0.5)
    assert given.line_search_tolerance == 0.5
