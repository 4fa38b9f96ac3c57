"""What an estimator of your own returns is checked where it enters (adaptive/score_checks.py): the
shape it must have (one score per synapse, or per ensemble from ``ensemble_scores``) is refused
naming the estimator by its registered name, before any mask changes; scores that pass are the
controller's own, so a policy that writes into them cannot edit the connectome or keep a graph; an
estimator missing the side a policy reads is refused when the Controller is built."""
import pytest
import torch

import adaptive
from adaptive.policies.base import _POLICIES, Policy, register_policy
from adaptive.utility import Estimator, register_estimator
from adaptive.utility.base import _ESTIMATORS


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


@pytest.fixture
def own():
    """Registers under 'score_checks_*' names; takes them out again after the test."""
    yield
    for table in (_ESTIMATORS, _POLICIES):
        for k in [k for k in table if k.startswith("score_checks_")]:
            del table[k]


@pytest.mark.parametrize("scores, shape", [(lambda w: w.abs().reshape(-1), r"\(640,\)"),
                                           (lambda w: torch.rand(5), r"\(5,\)")])
def test_ensemble_scores_of_the_wrong_shape_are_refused_naming_the_estimator(own, scores, shape):
    """ensemble_scores went unchecked: a flat or short tensor failed deep in a policy with 'The size of
    tensor a (20) must match the size of tensor b (640)', naming neither the estimator nor the fix."""
    @register_estimator("score_checks_ensembles")
    class PerEnsemble(Estimator):
        def ensemble_scores(self, ctx, gran):
            return scores(ctx.weight)

    conn = adaptive.Connectome(_net(), ensemble="neuron")
    with pytest.raises(ValueError, match=rf"estimator 'score_checks_ensembles' \(PerEnsemble\)'s ensemble_scores "
                                         rf"\(removal cost\) for layer '0.weight' has shape {shape}, not the layer's "
                                         r"ensembles' \(32,\): it must return one score per ensemble"):
        adaptive.Controller(conn, policy="magnitude", estimator="score_checks_ensembles", density=0.5, update_every=1,
                            end_step=2, init="estimator")
    assert conn.density() == 1.0


def _writing_policy(own_name):
    """A policy that writes into the scores it reads (its own business: they are its copy), then edits nothing."""
    @register_policy(own_name)
    class Scribble(Policy):
        sparse_at_start = False
        needs_density = False
        drop_by = "estimator"

        def update(self, ctrl, step):
            for s in ctrl.scores("cost", step).values():
                s.fill_(7.0)
            return None

    return Scribble


@pytest.mark.parametrize("returns", ["weight", "w0", "ensemble weight"])
def test_scores_that_are_the_layers_own_tensors_are_copied_so_a_policy_cannot_write_into_the_connectome(own, returns):
    """An estimator returning ctx.weight (or ctx.w0, the frozen original in mask_only mode) handed the
    policy the connectome's own memory: a policy writing into its scores rewrote the weights."""
    @register_estimator("score_checks_alias")
    class Alias(Estimator):
        def removal_cost(self, ctx):
            return ctx.w0 if returns == "w0" else ctx.weight

        def ensemble_scores(self, ctx, gran):
            return ctx.weight

    if returns != "ensemble weight":
        del Alias.ensemble_scores
    _writing_policy("score_checks_scribble")
    model = _net()
    conn = adaptive.Connectome(model, mode="mask_only" if returns == "w0" else "train")
    ctrl = adaptive.Controller(conn, policy="score_checks_scribble", estimator="score_checks_alias", update_every=1)
    weights = {n: p.detach().clone() for n, p in conn.params.items()}
    originals = {n: t.clone() for n, t in conn.original.items()}
    ctrl.update()
    assert all(torch.equal(weights[n], p.detach()) for n, p in conn.params.items())
    assert all(torch.equal(originals[n], t) for n, t in conn.original.items())


def _same(a, b) -> bool:
    """Whether two states (nested dicts, tuples, tensors and numbers) hold the same values."""
    la, lb = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    return len(la) == len(lb) and all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(la, lb))


@pytest.mark.parametrize("estimator", ["evidence", "presence", "own"])
def test_a_policy_writing_into_its_scores_changes_neither_the_connectome_nor_the_estimators_state(own, estimator):
    """Evidence's removal_cost and restoration_gain returned the values it keeps (one tensor for both
    sides): a policy writing into its cost scores rewrote its gains and the state it carries to the
    next update. Scores sharing memory with the estimator's own state for the layer are copied."""
    @register_estimator("score_checks_stateful")
    class Stateful(Estimator):  # a tensor attribute and a dict of per-layer tensors, returned as they are
        def __init__(self):
            self.last, self.kept = None, {}

        def removal_cost(self, ctx):
            self.kept[ctx.name] = ctx.w0.abs()
            return self.kept[ctx.name]

        def restoration_gain(self, ctx):
            self.last = ctx.w0.abs() + 1
            return self.last.view(-1).view(ctx.w0.shape)  # a view: the same memory

    seen = {}

    @register_policy("score_checks_scribble_both")
    class ScribbleBoth(Policy):
        sparse_at_start = False
        needs_density = False
        drop_by = grow_by = "estimator"

        def update(self, ctrl, step):
            cost, gain = ctrl.scores("cost", step), ctrl.scores("gain", step)
            seen["state"] = ctrl.drop_est.state_dict() if estimator != "own" else (
                {n: t.clone() for n, t in ctrl.drop_est.kept.items()}, ctrl.drop_est.last.clone())
            seen["gain"] = {n: g.clone() for n, g in gain.items()}
            for s in cost.values():
                s.fill_(7.0)
            seen["gain after"] = {n: g.clone() for n, g in gain.items()}
            seen["state after"] = ctrl.drop_est.state_dict() if estimator != "own" else (
                dict(ctrl.drop_est.kept), ctrl.drop_est.last)
            for s in gain.values():
                s.fill_(-7.0)
            return None

    model = _net()
    conn = adaptive.Connectome(model, mode="mask_only")
    est = "score_checks_stateful" if estimator == "own" else estimator
    ctrl = adaptive.Controller(conn, policy="score_checks_scribble_both", estimator=est, update_every=1)
    weights = {n: p.detach().clone() for n, p in conn.params.items()}
    originals = {n: t.clone() for n, t in conn.original.items()}
    for _ in range(2):  # (evidence reads the spread of batch gradients)
        model.zero_grad()
        model(torch.randn(8, 20)).pow(2).mean().backward()
        ctrl.observe()
    ctrl.update()
    assert all(torch.equal(seen["gain"][n], g) for n, g in seen["gain after"].items())  # the cost's memory is its own
    state = ctrl.drop_est.state_dict() if estimator != "own" else (ctrl.drop_est.kept, ctrl.drop_est.last)
    assert _same(seen["state"], state) and _same(seen["state"], seen["state after"])
    assert all(torch.equal(weights[n], p.detach()) for n, p in conn.params.items())
    assert all(torch.equal(originals[n], t) for n, t in conn.original.items())


def test_scores_that_require_grad_are_detached(own):
    """An estimator computing its scores under torch.enable_grad (a Hessian-vector product, say), or
    returning a parameter of its own, handed the policy a tensor in a graph: a policy writing into it
    failed with 'a leaf Variable that requires grad is being used in an in-place operation'."""
    @register_estimator("score_checks_grad")
    class WithGrad(Estimator):
        def __init__(self):
            self.scale = torch.nn.Parameter(torch.tensor(2.0))

        def removal_cost(self, ctx):
            with torch.enable_grad():
                return ctx.weight.abs() * self.scale

    _writing_policy("score_checks_scribble")
    conn = adaptive.Connectome(_net())
    ctrl = adaptive.Controller(conn, policy="score_checks_scribble", estimator="score_checks_grad", update_every=1)
    scores = ctrl.scores("cost")
    assert not any(s.requires_grad for s in scores.values())
    assert torch.equal(scores["0.weight"], conn.params["0.weight"].detach().abs() * 2)
    ctrl.update()  # the policy writes into them: no error
    assert ctrl.drop_est.scale.grad is None


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16, torch.float64, torch.bool])
def test_real_scores_of_any_dtype_are_ranked_as_float32(own, dtype):
    """Integers, half and double precision and booleans are real numbers with an order: taken, as float32."""
    @register_estimator("score_checks_dtype")
    class Typed(Estimator):
        def removal_cost(self, ctx):
            return (ctx.weight.abs() * 1000).to(dtype)

    conn = adaptive.Connectome(_net())
    ctrl = adaptive.Controller(conn, policy="magnitude", estimator="score_checks_dtype", density=0.5, update_every=1,
                               end_step=1, budget="uniform")
    assert all(s.dtype == torch.float32 for s in ctrl.scores("cost").values())
    ctrl.update()
    assert abs(conn.density() - 0.5) < 0.01


def test_an_estimator_without_the_side_a_policy_reads_is_refused_when_the_controller_is_built(own):
    """An estimator of removal costs alone under a policy that grows failed at its first update with a
    bare NotImplementedError (after the init had sparsified the connectome)."""
    @register_estimator("score_checks_costs_only")
    class CostsOnly(Estimator):
        def removal_cost(self, ctx):
            return ctx.weight.abs()

    conn = adaptive.Connectome(_net())
    with pytest.raises(TypeError, match=r"policy 'utility' grows by estimator 'score_checks_costs_only' \(CostsOnly\), "
                                        r"which does not define restoration_gain: write restoration_gain\(ctx\)"):
        adaptive.Controller(conn, policy="utility", estimator="score_checks_costs_only", density=0.5, update_every=1)
    assert conn.density() == 1.0
    adaptive.Controller(conn, policy="gmp", estimator="score_checks_costs_only", density=0.5, update_every=1,
                        end_step=2)  # a policy that only prunes takes it


def test_the_refusal_of_an_estimator_without_restoration_gain_names_registered_prune_only_policies(own):
    """The message advised 'gmp, magnitude, oneshot': no policy is registered as 'oneshot' (the one-shot
    policy answers to 'magnitude'), so following it failed with an unknown-policy error."""
    @register_estimator("score_checks_costs_alone")
    class CostsAlone(Estimator):
        def removal_cost(self, ctx):
            return ctx.weight.abs()

    with pytest.raises(TypeError) as e:
        adaptive.Controller(adaptive.Connectome(_net()), policy="utility", estimator="score_checks_costs_alone",
                            density=0.5, update_every=1)
    named = str(e.value).split("only prunes (")[1].split(")")[0].split(", ")
    assert named == ["gmp", "magnitude"]
    for policy in named:  # each one named takes the estimator
        adaptive.Controller(adaptive.Connectome(_net()), policy=policy, estimator="score_checks_costs_alone",
                            density=0.5, update_every=1, end_step=2)


def test_the_refusal_of_an_estimator_without_removal_cost_does_not_advise_a_prune_only_policy(own):
    """A policy that only prunes reads removal_cost too, so it cannot serve an estimator of growth gains alone."""
    @register_estimator("score_checks_gains_alone")
    class GainsAlone(Estimator):
        def restoration_gain(self, ctx):
            return ctx.weight.abs()

    with pytest.raises(TypeError, match=r"prunes by estimator 'score_checks_gains_alone' \(GainsAlone\), which does "
                                        r"not define removal_cost: write removal_cost\(ctx\) in the estimator's class$"):
        adaptive.Controller(adaptive.Connectome(_net()), policy="utility", estimator="score_checks_gains_alone",
                            density=0.5, update_every=1)


def test_an_estimator_instance_given_its_methods_as_attributes_is_taken_as_before():
    """The side check read the class alone, so an Estimator instance given removal_cost and
    restoration_gain on itself (which the controller calls, and did before the check) was refused."""
    est = Estimator()
    est.removal_cost = lambda ctx: ctx.weight.abs()
    est.restoration_gain = lambda ctx: ctx.weight.abs()
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctrl = adaptive.Controller(adaptive.Connectome(model), opt, policy="utility", estimator=est, density=0.5,
                               update_every=1, end_step=3)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.randn(4, 20)), torch.randint(0, 10, (4,))).backward()
        opt.step()
    assert [e for e in ctrl.events if e["kind"] == "update"]


def test_an_estimator_keeping_a_sparse_tensor_or_nested_per_layer_state_gets_its_scores_checked_and_owned(own):
    """The check for scores sharing the estimator's memory asked every tensor attribute for its storage: one
    holding a sparse tensor failed every update ('Cannot access storage of SparseTensorImpl'). And per-layer
    state kept as a dict per layer ({name: {"mean": ...}}) was not looked into: scores returned from it
    were handed to the policy as they were, and a policy writing into them rewrote the estimator's state.
    Attributes on the meta device, numbers and strings are passed over."""
    @register_estimator("score_checks_nested")
    class Nested(Estimator):
        def __init__(self):
            self.adjacency = torch.eye(3).to_sparse()
            self.shape_only = torch.empty(3, 3, device="meta")
            self.label, self.count, self.stats = "nested", 3, {}

        def removal_cost(self, ctx):
            self.stats[ctx.name] = {"mean": ctx.w0.abs(), "seen": 1}
            return self.stats[ctx.name]["mean"]

    _writing_policy("score_checks_scribble")
    model = _net()
    conn = adaptive.Connectome(model, mode="mask_only")
    ctrl = adaptive.Controller(conn, policy="score_checks_scribble", estimator="score_checks_nested", update_every=1)
    ctrl.update()
    assert all(torch.equal(ctrl.drop_est.stats[n]["mean"], t.abs()) for n, t in conn.original.items())


@pytest.mark.parametrize("layout", ["stat-first", "deeper", "layer-first nested"])
def test_scores_that_are_estimator_state_kept_stat_first_are_copied(own, layout):
    """Only the layer's entry of a dict attribute (``self.kept[name]``) was looked at: state kept stat-first,
    ``self.stats["mean"][name]`` (or deeper), went unchecked, so an estimator returning it handed a policy its
    own state, which the policy's writes then rewrote. The entry for the layer is found at any nesting now."""
    @register_estimator("score_checks_stat_first")
    class StatFirst(Estimator):
        def __init__(self):
            self.stats = {}

        def removal_cost(self, ctx):
            kept = ctx.weight.detach().abs() + 1
            if layout == "stat-first":
                self.stats.setdefault("mean", {})[ctx.name] = kept
            elif layout == "deeper":
                self.stats.setdefault("ema", {}).setdefault("fast", {})[ctx.name] = kept
            else:
                self.stats[ctx.name] = {"moments": {"mean": kept}}
            return kept

    _writing_policy("score_checks_scribble_state")
    conn = adaptive.Connectome(_net())
    ctrl = adaptive.Controller(conn, policy="score_checks_scribble_state", estimator="score_checks_stat_first",
                               update_every=1)
    ctrl.update()  # the policy fills the scores with 7.0
    kept = torch.utils._pytree.tree_leaves(ctrl.drop_est.stats)
    assert len(kept) == 2 and all(bool((t >= 1).all()) and not bool((t == 7.0).all()) for t in kept)


class _Watched(dict):
    """A dict that notes each time all its values are read (what looking through it for a layer does)."""

    def __init__(self, d, looked):
        super().__init__(d)
        self.looked = looked

    def values(self):
        self.looked.append(len(self))
        return super().values()


def test_a_layer_no_gradient_reached_does_not_look_through_every_other_layers_state():
    """Presence keeps its moments per layer ({name: tensor}); a layer the window saw no gradient of has none.
    Looking for its entry read every other layer's entry of each such dict: linear in the layers per call,
    quadratic per update (0.44 s of a 4,000-layer MLP's 0.96 s of removal costs). A dict keyed by layers is
    not looked through now, and the scores are the same."""
    def controller():
        torch.manual_seed(0)
        model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(12)])
        conn = adaptive.Connectome(model)
        ctrl = adaptive.Controller(conn, policy="utility", estimator="presence", density=0.5, update_every=100)
        for _ in range(2):
            model(torch.randn(2, 4)).sum().backward()
            ctrl.stats.observe(names=list(conn.params)[::2])  # the odd layers: no gradient in the window
            model.zero_grad()
        ctrl.scores("cost")  # the moments of the even layers made
        return ctrl

    plain, watched = controller(), controller()
    est, looked = watched.drop_est, []
    est.m, est.v, est.t = (_Watched(getattr(est, k), looked) for k in ("m", "v", "t"))
    names = list(plain.conn.params)
    assert set(est.m) == set(names[::2])
    want, got = plain.scores("cost"), watched.scores("cost")
    assert looked == []
    assert want.keys() == got.keys() and all(torch.equal(want[n], got[n]) for n in names)


class _Fixed(Estimator):
    """Scores given per synapse (a Linear(6, 1) layer's six), whatever the step."""

    def __init__(self, cost, gain):
        self.cost, self.gain = cost, gain

    def removal_cost(self, ctx):
        return torch.tensor(self.cost).reshape(ctx.weight.shape)

    def restoration_gain(self, ctx):
        return torch.tensor(self.gain).reshape(ctx.weight.shape)


_INF = float("inf")


@pytest.mark.parametrize("policy, cost, gain, live, density, kept", [
    # the pace prunes -inf, 1, 2 and one +inf: the plan's cost sums +inf and -inf
    ("threshold", [-_INF, -_INF, _INF, _INF, 1.0, 2.0], [0.0] * 6, [1] * 6, 1 / 6, [0, 0, 0, 1, 0, 0]),
    # a swap prunes a +inf cost for a +inf gain: +inf - +inf
    ("utility", [_INF] * 6, [0.0, 0.0, 0.0, 0.0, _INF, _INF], [1, 1, 1, 1, 0, 0], 4 / 6, [0, 0, 1, 1, 1, 1]),
])
def test_infinite_scores_of_both_signs_in_one_plan_give_no_estimate_rather_than_nan(policy, cost, gain, live,
                                                                                      density, kept):
    """An estimator may give +inf and -inf (they rank as the largest and smallest scores), but a plan
    whose edits hold both summed them to NaN: threshold's est_loss_change was refused by the plan checks
    as a bad EditPlan of the policy ('its est_loss_change is nan'), failing the update, and a swap's event
    logged est_score_change NaN. The edit goes through, ranked by the scores, and logs no estimate."""
    model = torch.nn.Linear(6, 1, bias=False)
    conn = adaptive.Connectome(model)
    conn.set_masks({"weight": torch.tensor(live, dtype=torch.bool).reshape(1, 6)})
    ctrl = adaptive.Controller(conn, None, policy=policy, density=density, update_every=1, budget="global",
                               edit_fraction=1.0, edit_decay="constant", estimator=_Fixed(cost, gain))
    model(torch.randn(3, 6)).sum().backward()
    ctrl.observe()
    event = ctrl.update()
    assert conn.masks["weight"].reshape(-1).int().tolist() == kept
    assert event["est_loss_change"] is None and event["est_score_change"] is None
    assert event["est_growth_gain"] is None or event["est_growth_gain"] == _INF


@pytest.mark.parametrize("policy", ["magnitude", "gmp"])
@pytest.mark.parametrize("budget", ["global", "uniform"])
def test_a_live_ensemble_with_a_removal_cost_of_minus_inf_is_not_passed_over_for_an_absent_one(policy, budget):
    """gmp and magnitude marked absent ensembles -inf to keep only live ones, but a live one whose
    cost is -inf tied with them, by index: an absent one ahead of it was kept in its place and the
    live one pruned, the network left below its density (as the construction's init once was)."""
    model = torch.nn.Linear(6, 1, bias=False)
    conn = adaptive.Connectome(model)
    conn.set_masks({"weight": torch.tensor([0, 1, 1, 1, 1, 1], dtype=torch.bool).reshape(1, 6)})
    ctrl = adaptive.Controller(conn, None, policy=policy, density=5 / 6, update_every=1, end_step=1, budget=budget,
                               estimator=_Fixed([5.0, -_INF, 1.0, 2.0, 3.0, 4.0], [0.0] * 6))
    model(torch.randn(3, 6)).sum().backward()
    ctrl.observe()
    ctrl.step()
    assert conn.masks["weight"].reshape(-1).int().tolist() == [0, 1, 1, 1, 1, 1]


def test_a_prune_of_a_minus_inf_cost_reports_it_as_such():
    """The live -inf is ranked at the float above the lowest finite one; the event's figures read the
    estimator's own costs (the prune is planned at construction: the estimator needs no gradient)."""
    model = torch.nn.Linear(6, 1, bias=False)
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, None, policy="magnitude", density=4 / 6, update_every=1, budget="global",
                               estimator=_Fixed([5.0, -_INF, 1.0, 2.0, 3.0, -_INF], [0.0] * 6))
    (event,) = ctrl.events
    assert conn.masks["weight"].reshape(-1).int().tolist() == [1, 0, 1, 1, 1, 0]
    assert event["est_score_change"] == -_INF


class _InfInFirstLayer(Estimator):
    """Removal costs of +inf for every synapse of the first layer, magnitudes elsewhere."""

    def removal_cost(self, ctx):
        w = ctx.weight.abs().float()
        return torch.full_like(w, _INF) if ctx.name.startswith("0.") else w

    def restoration_gain(self, ctx):
        return torch.zeros(ctx.weight.shape)


@pytest.mark.parametrize("policy", ["magnitude", "gmp"])
def test_min_density_holds_each_layers_floor_beside_another_layers_plus_inf_costs(policy):
    """Under the global budget a keep plan marks each layer's floor +inf, to keep it first; the
    selection read an estimator's +inf as their equal, by index, so the first layer's +inf synapses
    took the second layer's floor and emptied it, min_density=0.1 notwithstanding."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.Linear(5, 2))
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, None, policy=policy, density=0.1, min_density=0.1, update_every=1, end_step=1,
                               budget="global", estimator=_InfInFirstLayer())
    model(torch.randn(3, 2)).sum().backward()
    ctrl.observe()
    ctrl.step()
    assert {n: int(m.sum()) for n, m in conn.masks.items()} == {"0.weight": 1, "1.weight": 1}


def test_balanced_swaps_a_pair_only_where_its_gain_exceeds_its_cost_infinities_included():
    """balanced's worth ranks +-inf as the largest and smallest values: +inf gain against a finite or
    -inf cost is worth a swap, a pair of equal infinities (gain - cost has no value) is not, and the pairs
    worth making stay a prefix of the costs ascending against the gains descending."""
    from adaptive.policies.balanced import Balanced

    def n_worth(costs, gains):
        cs, gs = torch.tensor(costs), torch.tensor(gains)
        return Balanced.worth(cs, gs, torch.arange(len(costs)), torch.arange(len(gains)))[1]

    assert n_worth([-_INF, 1.0, _INF], [_INF, 2.0, 0.5]) == 2
    assert n_worth([_INF, _INF], [_INF, _INF]) == 0
    assert n_worth([-_INF, -_INF], [3.0, -_INF]) == 1
    assert n_worth([1.0, _INF], [_INF, _INF]) == 1
