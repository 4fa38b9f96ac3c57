"""Custom architectures and extension points held to the same invariants: non-finite values at
pruned positions, plugin name clashes, budget and estimator contracts, copied controllers."""
import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
from adaptive.ensembles import NeuronGranularity, _REGISTRY, register_granularity

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("make", [lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: torch.optim.Adamax(ps, lr=0.1)])  # zero-preserving or not
def test_an_inf_loaded_at_a_pruned_position_is_imposed_as_exactly_zero(make):
    m = _net()
    conn = adaptive.Connectome(m)
    mask = conn.masks["0.weight"].clone()
    mask[0, 0] = False
    conn.set_masks({"0.weight": mask})
    opt = make(m.parameters())
    conn.attach(opt)
    sd = m.state_dict()
    sd["0.weight"][0, 0] = float("inf")
    m.load_state_dict(sd)
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # an outside write is re-imposed before the step: 0, not 0 * inf = NaN
    assert float(m[0].weight[0, 0]) == 0.0 and bool(torch.isfinite(m(torch.randn(4, 6))).all())
    with torch.no_grad():
        m[0].weight.data[0, 0] = float("nan")  # behind the version counter: apply() is the documented call
    conn.apply()
    assert float(m[0].weight[0, 0]) == 0.0


def test_two_plugin_files_of_the_same_name_cannot_replace_each_others_names(tmp_path):
    from adaptive.plugins import PluginError, load_plugin

    body = ("import torch\nfrom adaptive.models import register_model\n"
            "@register_model('review_same_stem_net')\ndef net(num_classes=10, in_shape=(4,)):\n"
            "    return torch.nn.Linear(4, num_classes, bias={})\n")
    for d, bias in (("a", True), ("b", False)):  # two different networks under one name
        (tmp_path / d).mkdir()
        (tmp_path / d / "ext.py").write_text(body.format(bias))
    load_plugin(str(tmp_path / "a" / "ext.py"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "ext.py").write_text(body.format(True))
    load_plugin(str(tmp_path / "c" / "ext.py"))  # a copy of the same file loads again
    with pytest.raises(PluginError, match="already registered"):
        load_plugin(str(tmp_path / "b" / "ext.py"))


def test_a_budget_that_breaks_its_contract_is_named():
    from adaptive.budgets import _BUDGETS, register_budget

    @register_budget("review_wrong_sum", replace=True)
    def wrong_sum(layers, density, protected=(), min_density=0.0):
        return {n: 1 for n in layers}

    try:
        with pytest.raises(ValueError, match="layer budget 'review_wrong_sum' broke its contract.*add up to 2"):
            adaptive.Controller(adaptive.Connectome(_net()), None, policy="magnitude", density=0.5,
                                budget="review_wrong_sum")
    finally:
        _BUDGETS.pop("review_wrong_sum", None)


def test_an_estimator_score_of_the_wrong_shape_is_named():
    from adaptive.utility.base import _ESTIMATORS, Estimator, register_estimator

    @register_estimator("review_transposed", replace=True)
    class Transposed(Estimator):
        def removal_cost(self, ctx):
            return ctx.weight.detach().abs().t()

    try:
        with pytest.raises(ValueError, match="'review_transposed' \\(Transposed\\)'s removal_cost \\(removal cost\\) for layer '0.weight' has shape \\(6, 8\\)"):
            adaptive.Controller(adaptive.Connectome(_net()), None, policy="magnitude", density=0.5,
                                estimator="review_transposed")
    finally:
        _ESTIMATORS.pop("review_transposed", None)


def test_granularity_patterns_are_lower_case_and_listed_in_errors():
    import re

    class Rows(NeuronGranularity):
        spec = "rows"

    with pytest.raises(ValueError, match="capital letters.*register 'reviewrows:(.+)'"):
        register_granularity(r"ReviewRows:(\d+)")  # specs are matched lower-cased: it could never match
    register_granularity(r"reviewrows:(\d+)", replace=True)(lambda s: Rows() if re.fullmatch(r"reviewrows:(\d+)", s) else None)
    try:
        assert adaptive.Connectome(nn.Linear(3, 3), ensemble="ReviewRows:2").granularity_of("weight").spec == "rows"
        with pytest.raises(ValueError, match="registered pattern"):
            adaptive.Connectome(nn.Linear(3, 3), ensemble="nothing-like-it")
    finally:
        _REGISTRY.pop(r"reviewrows:(\d+)", None)


def test_a_copied_controller_observes_the_copys_gradients():
    m = _net()
    conn = adaptive.Connectome(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.5, update_every=5, end_step=50)
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    m2, c2, k2 = copy.deepcopy((m, conn, ctrl))
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.1)
    k2.attach(opt2)
    for _ in range(3):
        F.cross_entropy(m2(x), y).backward()
        opt2.step()
        opt2.zero_grad()
    assert k2.stats.count == 3 and k2.step_count == 3 and ctrl.step_count == 0


def test_recipe_estimator_slots_read_the_policy_class():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _scripts import load_script
    from adaptive.policies.base import _POLICIES, Policy, register_policy

    @register_policy("review_argshot", replace=True)
    class ArgShot(Policy):
        drop_by = "estimator?"

        def __init__(self, frac):  # an option the policy cannot be built without
            self.frac = frac

        def update(self, ctrl, step):
            return None

    try:
        R = load_script("recipes/adaptive.py", "recipe_adaptive_slots")
        assert R._estimator_slots("review_argshot") == (True, False)
    finally:
        _POLICIES.pop("review_argshot", None)


def test_graphs_reads_the_input_shape_of_a_dataset_it_has_no_table_entry_for():
    from graphs.cli import _dataset_in_shape

    assert _dataset_in_shape({"dataset": "fake", "dataset_kw": {"shape": [2, 5, 5]}}) == (2, 5, 5)
    assert _dataset_in_shape({"dataset": "no_such_dataset"}) is None  # the model's own default then


def test_a_closure_step_after_loading_inf_at_a_pruned_position_stays_finite():
    m = _net()
    conn = adaptive.Connectome(m)
    mask = conn.masks["0.weight"].clone()
    mask[0, 0] = False
    conn.set_masks({"0.weight": mask})
    opt = torch.optim.LBFGS(m.parameters(), lr=0.1, max_iter=2)
    conn.attach(opt)
    sd = m.state_dict()
    sd["0.weight"][0, 0] = float("inf")
    m.load_state_dict(sd)
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        return loss

    opt.step(closure)  # weights re-imposed exactly before the closure's forward
    assert float(m[0].weight[0, 0]) == 0.0 and all(bool(torch.isfinite(p).all()) for p in m.parameters())


def test_a_figure_path_without_a_suffix_is_written_as_png(tmp_path):
    from adaptive.plots import plot_density

    events = [{"step": 0, "density": 1.0, "layer_density": {"a": 1.0}}, {"step": 10, "density": 0.5, "layer_density": {"a": 0.5}}]
    out = plot_density(events, tmp_path / "density")  # atomic writes must not take the temp name's suffix as the format
    assert out == tmp_path / "density.png" and [p.name for p in tmp_path.iterdir()] == ["density.png"]


@pytest.mark.parametrize("package", ["adaptive.utility", "adaptive.policies", "adaptive.models", "adaptive.data"])
def test_a_registry_star_import_exports_no_plugin_modules(package):
    """The registries import their plugin modules only to register them: listing those modules in
    ``__all__`` (to quiet pyflakes) made ``from adaptive.utility import *`` bind ``random``,
    ``magnitude`` and the rest in the importer's namespace, the stdlib ``random`` replaced by the
    estimator's module. A star import gives the package's API, no module."""
    import random
    import types

    ns = {"random": random}
    exec(f"from {package} import *", ns)
    modules = sorted(k for k, v in ns.items() if isinstance(v, types.ModuleType))
    assert modules == ["random"] and ns["random"] is random, modules


_SPLIT = ["adaptive.controller", "adaptive.connectome", "adaptive.mask_only", "graphs.trace", "graphs.compact",
          "recipes.adaptive", "recipes.prune_pretrained"]


@pytest.mark.parametrize("module", _SPLIT)
def test_a_split_modules_star_import_binds_no_private_name(module):
    """The modules split into smaller ones re-export private helpers that other modules and tests
    import from them by name; listing those in ``__all__`` (to quiet pyflakes) made ``from X import *``
    bind ``_better``, ``_run`` and the rest in the importer's namespace. They stay importable by name."""
    import importlib

    ns = {}
    exec(f"from {module} import *", ns)
    assert not sorted(k for k in ns if k.startswith("_") and k != "__builtins__")
    mod = importlib.import_module(module)
    kept = getattr(mod, "_REEXPORTED", ())
    assert all(getattr(mod, f.__name__, None) is f for f in kept if hasattr(f, "__name__") and callable(f))


def test_no_module_lists_a_private_name_in_all():
    """Every ``__all__`` of the library, the graphs and the recipes names public names only."""
    import ast

    root = Path(__file__).resolve().parents[1]
    found = {}
    for path in [p for d in ("adaptive", "graphs", "recipes") for p in (root / d).rglob("*.py")]:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                private = [n for n in ast.literal_eval(node.value) if n.startswith("_")]
                if private:
                    found[str(path.relative_to(root))] = private
    assert not found, found
