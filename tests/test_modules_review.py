"""Audit of unusual training setups: each test failed before its fix."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive


def _net():
    return nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 4))


def _three_steps_keep_pruned_zero(model, opt, conn):
    """Three training steps, every pruned weight exactly 0.0 after each."""
    for _ in range(3):
        F.cross_entropy(model(torch.randn(16, 10)), torch.randint(0, 4, (16,))).backward()
        opt.step()
        opt.zero_grad()
        for n, p in conn.params.items():
            assert torch.equal(p[~conn.masks[n]], torch.zeros_like(p[~conn.masks[n]]))


@pytest.mark.parametrize("make", [lambda ps: torch.optim.Adam(ps, lr=1e-2, eps=0.0),
                                  lambda ps: torch.optim.RMSprop(ps, lr=1e-3, eps=0.0)])
def test_eps_zero_keeps_pruned_weights_exactly_zero_and_warns(make):
    """0/(sqrt(0)+0) at a pruned position is NaN: the step was trusted to keep zeros, and the
    fallback re-mask multiplied, leaving NaN * 0 = NaN in a pruned weight."""
    torch.manual_seed(0)
    model = _net()
    opt = make(model.parameters())
    conn = adaptive.Connectome(model)
    conn.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in conn.masks.items()})
    with pytest.warns(UserWarning, match="eps=0"):
        conn.attach(opt)
    _three_steps_keep_pruned_zero(model, opt, conn)


def test_two_optimizers_enter_each_step_once_with_the_true_gradient():
    torch.manual_seed(0)
    model = _net()
    conn = adaptive.Connectome(model)
    oa = torch.optim.SGD(model[0].parameters(), lr=0.0)  # lr 0: the same gradient every step
    ob = torch.optim.SGD(model[2].parameters(), lr=0.0)
    ctrl = adaptive.Controller(conn, oa, policy="utility", density=0.3, update_every=10, end_step=50)
    conn.attach(ob)
    x, y = torch.randn(16, 10), torch.randint(0, 4, (16,))
    F.cross_entropy(model(x), y).backward()
    true = {n: p.grad.clone() for n, p in conn.params.items()}
    model.zero_grad()
    with pytest.warns(UserWarning, match="stepped last"):  # ctrl attached to oa, stepped before ob
        for _ in range(3):
            F.cross_entropy(model(x), y).backward()
            oa.step()
            oa.zero_grad()
            ob.step()
            ob.zero_grad()
    assert ctrl.stats.count == 3
    for n in conn.names:
        assert ctrl.stats.n(n) == 3
        # dense at pruned positions too: oa's step leaves ob's gradients for ob's observers
        torch.testing.assert_close(ctrl.stats.mean(n), true[n], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("policy", ["rigl", "utility"])
def test_a_sparse_gradient_from_a_tied_embedding_is_observed(policy):
    torch.manual_seed(0)
    emb = nn.Embedding(50, 16, sparse=True)
    dec = nn.Linear(16, 50, bias=False)
    dec.weight = emb.weight
    model = nn.ModuleDict(dict(emb=emb, mid=nn.Linear(16, 16), dec=dec))
    conn = adaptive.Connectome(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctrl = adaptive.Controller(conn, opt, policy=policy, density=0.3, update_every=5, end_step=20)
    for s in range(12):
        x = torch.randint(0, 50, (8, 5))
        if s % 2:  # only the embedding path: .grad of the tied weight is sparse
            model.mid(model.emb(x)).pow(2).mean().backward()
        else:
            F.cross_entropy(model.dec(model.mid(model.emb(x))).reshape(-1, 50), x.reshape(-1)).backward()
        opt.step()
        opt.zero_grad()
    assert len([e for e in ctrl.events if e["kind"] != "init"]) == 2
    for n, p in conn.params.items():
        assert not bool(p[~conn.masks[n]].any())


def test_a_stateful_estimator_serves_both_sides_from_one_instance():
    """Presence learns from each window; built as two instances, its restoration gains never moved."""
    torch.manual_seed(0)
    model = _net()
    conn = adaptive.Connectome(model, mode="mask_only")
    g = torch.Generator().manual_seed(3)
    conn.set_masks({n: torch.rand(m.shape, generator=g) < 0.6 for n, m in conn.masks.items()})
    ctrl = adaptive.Controller(conn, policy="threshold", estimator="presence", update_every=1, batch_size=64)
    assert ctrl.grow_est is ctrl.drop_est
    n = conn.names[1]
    init = ctrl.grow_est._init_value(ctrl.context(n, 0))
    x, y = torch.randn(64, 10), torch.randint(0, 4, (64,))
    for _ in range(10):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        ctrl.observe()
        ctrl.step()
    absent = ~conn.masks[n]
    gain = ctrl.grow_est.restoration_gain(ctrl.context(n, ctrl.step_count))
    assert absent.any() and not torch.allclose(gain[absent], init[absent])


def test_the_recipe_gives_the_controller_the_global_batch_under_ddp():
    from _scripts import load_script

    R = load_script("recipes/adaptive.py", "recipe_adaptive_ddp")
    cfg = R.RunConfig(model="mlp", batch_size=32)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    conn = adaptive.Connectome(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert R.build_controller(cfg, conn, opt, 100, num_processes=2).batch_size == 64


def test_an_update_with_an_empty_window_is_skipped_with_a_warning():
    torch.manual_seed(0)
    model = _net()
    conn = adaptive.Connectome(model, mode="mask_only")
    ctrl = adaptive.Controller(conn, policy="threshold", estimator="obd", density=0.3, update_every=2)
    before = {n: m.clone() for n, m in conn.masks.items()}
    with pytest.warns(UserWarning, match="no gradient was observed"):
        assert ctrl.update() is None
    assert all(torch.equal(before[n], conn.masks[n]) for n in conn.names)


def test_a_one_batch_window_for_a_fisher_estimator_warns():
    model = _net()
    conn = adaptive.Connectome(model, mode="mask_only")
    with pytest.warns(UserWarning, match="two or more batches"):
        adaptive.Controller(conn, policy="threshold", estimator="consistency", density=0.5, update_every=1)


def test_a_plugin_policys_malformed_plan_is_named_before_anything_changes():
    from adaptive.policies.base import EditPlan, Policy, register_policy

    @register_policy("bad_plan_for_test", replace=True)
    class Bad(Policy):
        sparse_at_start = False
        needs_density = False

        def update(self, ctrl, step):
            return EditPlan(prune={"0.weight": torch.tensor([0, 10_000])})

    from adaptive.policies.base import _POLICIES

    try:
        model = _net()
        conn = adaptive.Connectome(model)
        ctrl = adaptive.Controller(conn, policy="bad_plan_for_test", update_every=1)
        before = {n: m.clone() for n, m in conn.masks.items()}
        with pytest.raises(ValueError, match="bad_plan_for_test.*outside"):
            ctrl.update()
        assert all(torch.equal(before[n], conn.masks[n]) for n in conn.names)
    finally:
        _POLICIES.pop("bad_plan_for_test", None)  # other tests list every policy


def test_a_controller_moved_to_a_new_optimizer_observes_through_it():
    """With the old optimizer still alive and holding every parameter, the new one owned none: every
    later window was empty and every update was skipped."""
    torch.manual_seed(0)
    model = _net()
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, sgd, policy="rigl", density=0.3, update_every=5, end_step=60, seed=1)
    x, y = torch.randn(16, 10), torch.randint(0, 4, (16,))
    for _ in range(10):
        F.cross_entropy(model(x), y).backward()
        sgd.step()
        sgd.zero_grad()
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctrl.attach(adam)  # sgd is still referenced
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no gradient was observed"
        for _ in range(20):
            F.cross_entropy(model(x), y).backward()
            adam.step()
            adam.zero_grad()
    assert [e["step"] for e in ctrl.events if e["step"] > 10] == [15, 20, 25, 30]


@pytest.mark.parametrize("mode", ["mask_only", "train"])
def test_crawl_given_a_density_reaches_it_by_end_step(mode):
    """Controller(policy='crawl', density=0.4) ignored the density and crawled at 0.96."""
    torch.manual_seed(0)
    model = _net()
    conn = adaptive.Connectome(model, mode=mode)
    opt = torch.optim.SGD(model.parameters(), lr=0.01) if mode == "train" else None
    ctrl = adaptive.Controller(conn, opt, policy="crawl", density=0.4, update_every=3, end_step=18)
    for _ in range(20):
        x, y = torch.randn(16, 10), torch.randint(0, 4, (16,))
        F.cross_entropy(model(x), y).backward()
        if opt is None:
            ctrl.observe()
            ctrl.step()
        else:
            opt.step()
        model.zero_grad()
    assert conn.density() == pytest.approx(0.4, abs=1e-3)


def _plan_policy(name, plan_fn):
    from adaptive.policies.base import Policy, register_policy

    @register_policy(name, replace=True)
    class P(Policy):
        sparse_at_start = False
        needs_density = False
        supports_nm = True

        def update(self, ctrl, step):
            return plan_fn(ctrl)

    return P


@pytest.mark.parametrize("case, match", [
    ("duplicate", "more than once"), ("dead prune", "already absent"), ("live grow", "already present"),
    ("protected", "protect= keeps"), ("orphan scores", "that its grow list does not"),
    ("list scores", r"prune_scores\['0.weight'\] is a list, expected a 1-d real tensor"), ("breaks 2:4", "breaks a rule"),
])
def test_inconsistent_plans_are_refused_before_anything_changes(case, match):
    """Counts were logged for edits that never happened, a protected layer was edited, and an n:m
    rule was broken silently (the connectome then failed to load again)."""
    from adaptive.policies.base import EditPlan, _POLICIES

    def plan(ctrl):
        live = ctrl.conn.masks["0.weight"].reshape(-1).nonzero().squeeze(1)
        dead = (~ctrl.conn.masks["0.weight"]).reshape(-1).nonzero().squeeze(1)
        return {
            "duplicate": EditPlan(prune={"0.weight": live[[0, 0]]}),
            "dead prune": EditPlan(prune={"0.weight": dead[:2]}),
            "live grow": EditPlan(grow={"0.weight": live[:2]}),
            "protected": EditPlan(prune={"2.weight": torch.tensor([0])}),
            "orphan scores": EditPlan(prune={"0.weight": live[:1]}, grow_scores={"0.weight": torch.ones(1)}),
            "list scores": EditPlan(prune={"0.weight": live[:1]}, prune_scores={"0.weight": [1.0]}),
            "breaks 2:4": EditPlan(grow={"0.weight": dead[:10]}),
        }[case]

    _plan_policy("plan_for_test", plan)
    try:
        model = _net()
        conn = adaptive.Connectome(model, ensemble="2:4" if case == "breaks 2:4" else "synapse")
        conn.set_masks({n: conn.granularity_of(n).select(torch.rand(m.shape)) if case == "breaks 2:4"
                        else torch.rand(m.shape) < 0.5 for n, m in conn.masks.items()})
        ctrl = adaptive.Controller(conn, policy="plan_for_test", update_every=1, protect=["2.weight"])
        before = {n: m.clone() for n, m in conn.masks.items()}
        with pytest.raises(ValueError, match=match):
            ctrl.update()
        assert all(torch.equal(before[n], conn.masks[n]) for n in conn.names) and not ctrl.events
    finally:
        _POLICIES.pop("plan_for_test", None)


def test_a_shrunk_plan_keeps_atomic():
    from adaptive.policies.base import EditPlan

    p = EditPlan(prune={"a": torch.tensor([0, 1, 2, 3])}, atomic=True)
    assert p.shrink(0.5).atomic and p.shrink(0.5, groups=lambda n: torch.arange(4)).atomic


@pytest.mark.parametrize("make", [torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adagrad])
def test_an_eps_that_is_zero_in_float16_keeps_pruned_weights_exactly_zero_and_warns(make):
    """The default eps=1e-8 rounds to 0 in float16, so the step writes 0/0 = NaN at pruned positions;
    only eps == 0 itself was known to need the re-mask after the step."""
    from adaptive.optim_state import preserves_zeros

    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        torch.manual_seed(0)
        model = _net().to(dtype)
        opt = make(model.parameters(), lr=1e-3)
        conn = adaptive.Connectome(model)
        conn.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in conn.masks.items()})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            conn.attach(opt)
        said = [str(w.message) for w in caught if "eps=" in str(w.message)]
        assert preserves_zeros(opt) == (dtype != torch.float16)  # bfloat16 and float32 keep the fast path
        if dtype == torch.float16:
            assert len(said) == 1 and f"eps={opt.defaults['eps']:g}, which is 0 in float16" in said[0]  # 1e-8, 1e-10
            assert "eps=1e-4" in said[0]
        else:
            assert not said
        (100 * model(torch.randn(16, 10, dtype=dtype)).float().pow(2).mean()).backward()
        opt.step()
        for n, p in conn.params.items():
            assert torch.equal(p[~conn.masks[n]], torch.zeros_like(p[~conn.masks[n]]))


def test_an_optimizer_whose_eps_is_not_one_number_attaches():
    """Adafactor's eps is a pair, (None, 1e-3): the float16 eps check crashed attach with a TypeError."""
    m = nn.Linear(8, 4)
    conn = adaptive.Connectome(m)
    conn.set_masks({n: torch.rand(k.shape) < 0.5 for n, k in conn.masks.items()})
    opt = torch.optim.Adafactor(m.parameters(), lr=0.01)
    conn.attach(opt)
    m(torch.randn(2, 8)).sum().backward()
    opt.step()
    assert torch.all(m.weight[~conn.masks["weight"]] == 0)


def test_an_eps_given_as_a_zero_tensor_keeps_pruned_weights_exactly_zero_and_warns():
    """eps=torch.tensor(0.) is 0 as well: the step divides 0 by 0 at pruned positions, so it must be re-masked."""
    torch.manual_seed(0)
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, eps=torch.tensor(0.0))
    conn = adaptive.Connectome(model)
    conn.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in conn.masks.items()})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conn.attach(opt)
    _three_steps_keep_pruned_zero(model, opt, conn)
    assert any("eps=0" in str(w.message) for w in caught)


@pytest.mark.parametrize("order", [1, -1])
def test_the_zero_eps_warning_names_the_dtypes_in_the_parameters_order(order):
    """A group whose eps is 0 in several dtypes is listed, and warned about, in its parameters' order, not
    a set's: a set of dtypes iterates by their hashes (addresses), which differ between processes, so the
    warning named another dtype on each (4 dtypes, in both orders: one of them is not the set's)."""
    from adaptive.optim_state import zero_eps, zero_eps_warning

    dtypes = [torch.float16, torch.bfloat16, torch.float32, torch.float64][::order]
    params = [nn.Parameter(torch.zeros(2, dtype=d)) for d in dtypes]
    assert zero_eps(torch.optim.Adam(params, eps=0.0)) == [(0.0, d) for d in dtypes]
    tiny = [d for d in dtypes if d in (torch.float16, torch.bfloat16)]  # 1e-42 is 0 in both
    said = zero_eps_warning(torch.optim.Adam([p for p in params if p.dtype in tiny], eps=1e-42))
    assert f"eps=1e-42, which is 0 in {str(tiny[0]).replace('torch.', '')}:" in said
