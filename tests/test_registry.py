"""A name names one thing in every registry: a clash is refused, replace=True overrides on purpose,
and running the same definition twice (a re-executed module or notebook cell) is quiet."""
import pytest

import adaptive
from adaptive import registry
from adaptive.budgets import _BUDGETS, get_budget, register_budget
from adaptive.data.base import _DATASETS, register_dataset
from adaptive.ensembles import _REGISTRY as _ENSEMBLES, register_granularity
from adaptive.models import _REGISTRY as _MODELS, register_model
from adaptive.policies import get_policy, register_policy
from adaptive.policies.base import _POLICIES
from adaptive.schedules import _DECAYS, register_decay
from adaptive.utility import Estimator, get_estimator, register_estimator
from adaptive.utility.base import _ESTIMATORS


def test_a_new_estimator_cannot_take_a_builtin_name_by_accident(monkeypatch):
    monkeypatch.setattr("adaptive.utility.base._ESTIMATORS", dict(_ESTIMATORS))
    builtin = type(get_estimator("magnitude"))

    class Mine(Estimator):
        def removal_cost(self, ctx):
            return ctx.weight.abs()

    with pytest.raises(ValueError, match=r"utility estimator 'magnitude' is already registered .*Magnitude.*replace=True"):
        register_estimator("magnitude")(Mine)
    assert type(get_estimator("magnitude")) is builtin and Mine.name != "magnitude"  # nothing changed
    register_estimator("magnitude", replace=True)(Mine)
    assert type(get_estimator("magnitude")) is Mine


def test_the_same_definition_registered_twice_is_quiet(monkeypatch):
    monkeypatch.setattr("adaptive.utility.base._ESTIMATORS", dict(_ESTIMATORS))
    for _ in range(2):  # as when a notebook cell runs again: a new class object, the same definition
        @register_estimator("twice")
        class Twice(Estimator):
            def removal_cost(self, ctx):
                return ctx.weight.abs()
    assert type(get_estimator("twice")) is Twice


def test_two_lambdas_under_one_name_clash_and_one_run_twice_is_quiet(monkeypatch):
    """Two lambdas of one module share the qualified name '<lambda>': the second replaced the first
    silently, as though it were the same definition run again."""
    monkeypatch.setattr("adaptive.budgets._BUDGETS", dict(_BUDGETS))
    first = lambda layers, density, protected=(), min_density=0.0: {n: density for n in layers}  # noqa: E731
    second = lambda layers, density, protected=(), min_density=0.0: {n: 1.0 for n in layers}  # noqa: E731
    register_budget("two_lambdas")(first)
    with pytest.raises(ValueError, match=r"'two_lambdas' is already registered \(.*<lambda> \(line \d+\)\); "
                                         r"register .*<lambda> \(line \d+\) under another name"):
        register_budget("two_lambdas")(second)
    assert get_budget("two_lambdas") is first
    for _ in range(2):  # one lambda made anew, as a notebook cell run again makes it
        register_budget("again")(lambda layers, density, protected=(), min_density=0.0: {})
    register_budget("two_lambdas", replace=True)(second)
    assert get_budget("two_lambdas") is second


@pytest.mark.parametrize("table, decorate, name", [
    (_POLICIES, lambda n: register_policy(n), "rigl"),
    (_BUDGETS, lambda n: register_budget(n), "erk"),
    (_ENSEMBLES, lambda n: register_granularity(n), next(iter(_ENSEMBLES))),
    (_DECAYS, lambda n: register_decay(n), next(iter(_DECAYS))),
    (_DATASETS, lambda n: register_dataset(n), "digits"),
    (_MODELS, lambda n: register_model(n), "lenet300"),
])
def test_every_registry_refuses_a_clash(table, decorate, name):
    before = dict(table)

    def other(*a, **k):
        return None

    with pytest.raises(ValueError, match="already registered"):
        decorate(name)(other)
    assert table == before


def test_names_must_be_strings():
    with pytest.raises(TypeError, match="non-empty string"):
        register_budget("")(lambda *a: None)


def test_registered_estimator_policy_and_budget_work_by_name(monkeypatch):
    import torch

    from adaptive.policies.oneshot import OneShot

    monkeypatch.setattr("adaptive.utility.base._ESTIMATORS", dict(_ESTIMATORS))
    monkeypatch.setattr("adaptive.policies.base._POLICIES", dict(_POLICIES))
    monkeypatch.setattr("adaptive.budgets._BUDGETS", dict(_BUDGETS))

    @register_estimator("largest_first")
    class LargestFirst(Estimator):  # removal cost -|w|: the largest weights go first
        def removal_cost(self, ctx):
            return -ctx.weight.detach().abs().float()

        def restoration_gain(self, ctx):
            return -ctx.w0.abs()

    @register_policy("my_one_shot")
    class MyOneShot(OneShot):
        pass

    @register_budget("my_uniform")
    def my_uniform(layers, density, protected=(), min_density=0.0):
        return get_budget("uniform")(layers, density, protected, min_density)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    before = {n: p.detach().abs().clone() for n, p in model.named_parameters() if n.endswith("weight")}
    conn = adaptive.Connectome(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    adaptive.Controller(conn, opt, policy="my_one_shot", estimator="largest_first", density=0.5,
                        budget="my_uniform", update_every=1, end_step=1)
    assert get_policy("magnitude").name == "magnitude"  # the built-in keeps its name
    for n, w in before.items():
        m = conn.masks[n]
        assert int(m.sum()) == m.numel() // 2  # the uniform budget: half of every layer
        assert float(w[~m].min()) >= float(w[m].max())  # the largest half went


@pytest.mark.parametrize("name, kind", [("my est", ValueError), ("a=b", ValueError), ("x;y", ValueError),
                                        ("a,b", ValueError), (" snip", ValueError), ("", TypeError), (3, TypeError)])
@pytest.mark.parametrize("register", [register_estimator, register_policy, register_budget, register_decay])
def test_a_name_no_command_line_could_give_back_is_refused_when_registering(monkeypatch, register, name, kind):
    """'my est' (two words on a command line) or 'a=b' (a KEY=VALUE option) was registered, then could
    never be chosen by --estimator, --controller_kw or a config string."""
    for table in ("adaptive.utility.base._ESTIMATORS", "adaptive.policies.base._POLICIES",
                  "adaptive.budgets._BUDGETS", "adaptive.schedules._DECAYS"):
        monkeypatch.setattr(table, {})
    with pytest.raises(kind, match=r"name|non-empty string"):
        register(name)
    if kind is ValueError:
        with pytest.raises(ValueError, match=rf"name {name!r} holds .* which a command line or config string cannot "
                                             r"give back .*: register it as '[^' =;,]+', say"):
            register(name)


def test_a_class_that_cannot_serve_is_refused_when_registering(monkeypatch):
    """A class without the method the controller calls (or no subclass of the base it reads) was
    registered silently, and failed at the first update with a bare NotImplementedError or AttributeError."""
    from adaptive.policies.base import Policy
    from adaptive.schedules import Decay

    monkeypatch.setattr("adaptive.utility.base._ESTIMATORS", dict(_ESTIMATORS))
    monkeypatch.setattr("adaptive.policies.base._POLICIES", dict(_POLICIES))
    monkeypatch.setattr("adaptive.budgets._BUDGETS", dict(_BUDGETS))
    monkeypatch.setattr("adaptive.schedules._DECAYS", dict(_DECAYS))

    class Empty(Estimator):
        pass

    class NoUpdate(Policy):
        pass

    class Duck:
        def removal_cost(self, ctx):
            return ctx.weight.abs()

    class NoCall(Decay):
        pass

    with pytest.raises(TypeError, match=r"utility estimator 'empty' \(.*Empty\) does not define any of removal_cost, "
                                        r"restoration_gain, ensemble_scores, which Estimator only declares"):
        register_estimator("empty")(Empty)
    with pytest.raises(TypeError, match=r"policy 'no_update' \(.*NoUpdate\) does not define update, which Policy only "
                                        r"declares: write it in the class"):
        register_policy("no_update")(NoUpdate)
    with pytest.raises(TypeError, match=r"utility estimator 'duck': the decorator registers a subclass of "
                                        r"adaptive.utility.base.Estimator, got class Duck .*: derive it from Estimator"):
        register_estimator("duck")(Duck)
    with pytest.raises(TypeError, match=r"layer budget 'three': register_budget decorates a function"):
        register_budget("three")(3)
    with pytest.raises(TypeError, match=r"edit decay 'no_call': register_decay decorates a Decay subclass that "
                                        r"defines __call__\(step\).*NoCall \(no __call__ of its own\)"):
        register_decay("no_call")(NoCall)
    assert not {"empty", "duck"} & set(_registered_estimators()) and "no_update" not in _registered_policies()


def _registered_estimators():
    import adaptive.utility.base as b
    return b._ESTIMATORS


def _registered_policies():
    import adaptive.policies.base as b
    return b._POLICIES


def test_a_failed_block_undoes_a_name_registered_twice_in_it():
    """Undone newest first: a name registered, then replaced, inside a failed block is gone after it."""
    table = {}

    def one():
        pass

    def two():
        pass

    with pytest.raises(RuntimeError):
        with registry.all_or_nothing():
            registry.add(table, "thing", "x", one)
            registry.add(table, "thing", "x", two, replace=True)
            raise RuntimeError("plugin failed")
    assert "x" not in table


def test_a_failed_outer_block_undoes_what_a_finished_inner_block_registered():
    """A plugin that loads another plugin and then fails leaves neither's names registered."""
    table = {}

    def inner():
        pass

    with pytest.raises(RuntimeError):
        with registry.all_or_nothing():
            with registry.all_or_nothing():
                registry.add(table, "thing", "inner", inner)
            assert "inner" in table
            raise RuntimeError("outer plugin failed")
    assert table == {}
