"""Removal costs of exactly 0 (no gradient reached the synapse in the window) rank by magnitude,
smallest first, not by position; zero_cost_order="index" keeps the old order."""
import pytest
import torch
from torch import nn

import adaptive
from adaptive.utility.ties import TIE, order_zero_costs

torch.set_num_threads(1)


def test_order_zero_costs_orders_only_exact_zeros():
    cost = torch.tensor([0.0, -0.0, 1e-3, -2e-3, 0.0, 5.0])
    w = torch.tensor([3.0, -1.0, 0.5, 0.25, 0.0, -2.0])
    out = order_zero_costs(cost, w)
    assert out[[2, 3, 5]].tolist() == cost[[2, 3, 5]].tolist()  # measured costs untouched
    assert out[0].item() == pytest.approx(3.0 * TIE) and out[1].item() == pytest.approx(1.0 * TIE)
    assert out[4].item() == 0.0  # a weight of 0 stays at 0
    # order: the negative cost, then the zero weight, the smaller then the larger zero-cost weight, then the rest
    assert torch.argsort(out).tolist() == [3, 4, 1, 0, 2, 5]
    none_zero = torch.tensor([1.0, 2.0])
    assert order_zero_costs(none_zero, torch.ones(2)) is none_zero


# the weights of inputs 3-5 (no gradient): the four smallest sit neither first nor last by position
SILENT_W = torch.tensor([[0.9, 0.15, 0.8], [0.25, 0.7, 1.0], [0.6, 0.1, 0.5], [1.1, 0.2, 1.2]])
SMALLEST = torch.zeros(4, 6, dtype=torch.bool)
SMALLEST[[0, 1, 2, 3], [4, 3, 4, 4]] = True  # 0.15, 0.25, 0.1, 0.2


def _window_with_silent_inputs(order, policy="gmp", **kw):
    """A Linear(6, 4) whose inputs 3, 4 and 5 are always 0: their 12 synapses see no gradient, so the
    curvature estimator costs them exactly 0. One window of 4 batches, then the update that prunes 4."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    with torch.no_grad():
        lin.weight[:, :3] = 1.0
        lin.weight[:, 3:] = SILENT_W * torch.tensor([1.0, -1.0, 1.0])  # the sign plays no part
    conn = adaptive.Connectome(lin)
    ctrl = adaptive.Controller(conn, None, policy=policy, density=1 - 4 / 24, estimator="curvature", update_every=4,
                               end_step=5, batch_size=8, zero_cost_order=order, **kw)
    x = torch.cat([torch.randn(8, 3), torch.zeros(8, 3)], 1)
    for step in range(4):
        lin.zero_grad()
        lin(x).pow(2).sum().backward()
        ctrl.observe()
        if step == 3:
            before = next(iter(ctrl.scores("cost").values()))
        ctrl.step()
    return conn, before


@pytest.mark.parametrize("policy", ["gmp", "threshold"])  # dense at start: the window decides all 4
def test_zero_cost_synapses_are_pruned_smallest_weight_first(policy):
    kw = {} if policy == "gmp" else dict(edit_fraction=1.0)
    conn, cost = _window_with_silent_inputs("magnitude", policy, **kw)
    assert bool((cost[:, 3:] > 0).all()) and float(cost[:, 3:].max()) < 1e-29  # ordered, below any measured cost
    assert torch.equal(cost[:, 3:] / TIE, SILENT_W)  # normal floats: every digit of the weight
    assert bool((cost[:, :3] > 1e-3).all())  # measured costs as they were
    pruned = ~next(iter(conn.masks.values()))
    assert torch.equal(pruned, SMALLEST), (policy, pruned)


@pytest.mark.parametrize("policy", ["gmp", "threshold"])
def test_index_order_keeps_the_old_choice_by_position(policy):
    conn, cost = _window_with_silent_inputs("index", policy, **({} if policy == "gmp" else dict(edit_fraction=1.0)))
    assert bool((cost[:, 3:] == 0).all())
    pruned = ~next(iter(conn.masks.values()))
    assert int(pruned.sum()) == 4 and bool(pruned[:, 3:].all(1).any())  # a whole row's zero-cost inputs, by position


def test_init_estimator_with_no_window_is_still_refused():
    """Costs all 0 before any gradient would rank by magnitude alone: init='estimator' stays refused."""
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    conn = adaptive.Connectome(m)
    with pytest.raises(ValueError, match="chosen by magnitude alone. Use init='magnitude'"):
        adaptive.Controller(conn, None, policy="utility", estimator="curvature", density=0.5, budget="uniform",
                            init="estimator")


def _flushed(fn):
    """``fn()`` with subnormal floats flushed to zero (the test skipped where the CPU cannot)."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    try:
        return fn()
    finally:
        torch.set_flush_denormal(False)


def test_order_survives_flush_to_zero_and_tells_close_weights_apart():
    """The ordered values are normal floats: a process that flushes subnormals to zero keeps the
    order (subnormal values became 0 again, the order by position), and weights 5e-8 apart differ."""
    w = torch.tensor([0.9, 0.1, 0.5, 1e-3, 1e-3 + 5e-8, 2e-7, 2.5e-7])
    expected = [5, 6, 3, 4, 1, 2, 0]
    assert torch.argsort(order_zero_costs(torch.zeros(7), w), stable=True).tolist() == expected
    out = _flushed(lambda: order_zero_costs(torch.zeros(7), w))
    assert bool((out > 0).all()) and torch.argsort(out, stable=True).tolist() == expected


def test_nonfinite_weight_keeps_cost_zero():
    """A NaN weight must not turn a cost of 0 into NaN after the controller checked the scores."""
    out = order_zero_costs(torch.zeros(3), torch.tensor([float("nan"), float("inf"), 0.5]))
    assert out[:2].tolist() == [0.0, 0.0] and out[2].item() == 0.5 * TIE


def _ctrl(**kw):
    return adaptive.Controller(adaptive.Connectome(nn.Linear(6, 4)), None, policy="gmp", density=0.5,
                               estimator="curvature", update_every=4, end_step=20, batch_size=8, **kw)


def test_resumed_run_keeps_its_zero_cost_order():
    """The order is in the state: unset, a resumed run goes on with it (a state saved before it was
    recorded ran by index); given and different, it is refused before anything loads."""
    sd = _ctrl(zero_cost_order="index").state_dict()
    assert sd["zero_cost_order"] == "index"
    resumed = _ctrl()
    resumed.load_state_dict(sd)
    assert resumed.zero_cost_order == "index"
    with pytest.raises(ValueError, match="saved with zero_cost_order='index'.*built with zero_cost_order='magnitude'"):
        _ctrl(zero_cost_order="magnitude").load_state_dict(sd)
    old = {k: v for k, v in _ctrl().state_dict().items() if k != "zero_cost_order"}
    for kw, order in (({}, "index"), (dict(zero_cost_order="magnitude"), "magnitude")):
        c = _ctrl(**kw)
        c.load_state_dict(old)
        assert c.zero_cost_order == order


def _two_windows(order):
    """Threshold at density 0.5, even pace, edit fraction 1: window 1 leaves inputs 3-5 silent (zero
    cost), window 2 inputs 0-2. Returns the events of the two updates and the boundary after the first."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    with torch.no_grad():
        lin.weight[:, :3] = 0.05 * torch.arange(1, 13, dtype=torch.float32).view(4, 3)
        lin.weight[:, 3:] = 1.0 + 0.1 * torch.arange(12, dtype=torch.float32).view(4, 3)
    conn = adaptive.Connectome(lin)
    ctrl = adaptive.Controller(conn, None, policy="threshold", density=0.5, estimator="curvature", update_every=4,
                               end_step=20, batch_size=8, edit_fraction=1.0, pace="even", zero_cost_order=order)
    g = torch.Generator().manual_seed(1)
    boundary = None
    for step in range(8):
        x = torch.randn(8, 6, generator=g)
        x[:, 3:] = 0 if step < 4 else x[:, 3:]
        x[:, :3] = 0 if step >= 4 else x[:, :3]
        lin.zero_grad()
        lin(x).pow(2).sum().backward()
        ctrl.observe()
        ctrl.step()
        if step == 3:
            boundary = ctrl.policy.prune_boundary
    return [(e["pruned"], e["grown"]) for e in ctrl.events if e.get("kind") == "update"], boundary


def test_pruning_zero_costs_leaves_thresholds_boundary_at_zero():
    """The boundary adapted to a tie value (1e-38 and up) made every smaller zero-cost weight fall
    below it at the next update: pruned past the pace, with swaps (4 pruned, 1 grown, where the
    order by index pruned 3 and grew none)."""
    by_index, b_index = _two_windows("index")
    by_magnitude, b_magnitude = _two_windows("magnitude")
    assert b_index == b_magnitude == 0.0
    assert [p for p, _ in by_magnitude] == [p for p, _ in by_index] and all(g == 0 for _, g in by_magnitude)


def test_index_order_adapts_the_boundary_as_before_even_to_tiny_measured_costs():
    """zero_cost_order='index' is the old behaviour throughout: a measured cost below the tie values'
    ceiling (here about 1e-31: a weight of 1e-16) still sets threshold's boundary."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.weight[0, 0] = 1e-16
    costs = {}
    for order in ("index", "magnitude"):
        conn = adaptive.Connectome(lin)
        ctrl = adaptive.Controller(conn, None, policy="threshold", density=7 / 8, estimator="curvature", update_every=2,
                                   end_step=4, batch_size=4, edit_fraction=1.0, zero_cost_order=order)
        g = torch.Generator().manual_seed(0)
        for _ in range(2):
            lin.zero_grad()
            lin(torch.randn(4, 4, generator=g)).pow(2).sum().backward()
            ctrl.observe()
            ctrl.step()
        assert not bool(conn.masks[next(iter(conn.masks))][0, 0])  # the tiny weight went first
        costs[order] = ctrl.policy.prune_boundary
        with torch.no_grad():
            lin.weight[0, 0] = 1e-16
    assert 0 < costs["index"] < adaptive.utility.ties.CEILING and costs["magnitude"] == 0.0


@pytest.mark.parametrize("estimator, warns", [("taylor", True), ("obd", True), ("consistency", True),
                                              ("curvature", False), ("magnitude", False)])
def test_threshold_warns_of_signed_removal_costs_in_train_mode(estimator, warns):
    """threshold with a first-order estimator churns (lenet300 at 5%: taylor ended at chance)."""
    import warnings

    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adaptive.Controller(adaptive.Connectome(m), None, policy="threshold", estimator=estimator, density=0.5,
                            end_step=100)
    hits = [w for w in caught if "first-order term" in str(w.message)]
    assert len(hits) == int(warns), [str(w.message) for w in caught]
    if warns:
        assert f"estimator {estimator!r}" in str(hits[0].message) and "--estimator curvature" in str(hits[0].message)


def test_threshold_signed_cost_warning_follows_the_removal_cost_it_runs():
    """signed_cost speaks of the removal cost of the class that declared it: a plugin deriving from
    OBD with a removal cost that is never negative is not warned of (it was); one that restates the
    flag is, and so is a subclass that keeps OBD's cost; mask_only mode never is."""
    import warnings

    from adaptive.utility.obd import OBD
    from adaptive.utility.taylor import Taylor

    class NonNegative(OBD):  # OBD's curvature term alone
        def removal_cost(self, ctx):
            w = ctx.weight.detach().float()
            return 0.5 * ctx.stats.fisher(ctx.name, ctx.batch_size) * w * w

    class Restated(NonNegative):
        signed_cost = True

        def removal_cost(self, ctx):
            return -super().removal_cost(ctx)

    class GainOnly(Taylor):  # Taylor's removal cost, another gain
        def restoration_gain(self, ctx):
            return super().restoration_gain(ctx).abs()

    def warned(est, mode="train"):
        m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            adaptive.Controller(adaptive.Connectome(m, mode=mode), None, policy="threshold", estimator=est,
                                density=0.5, end_step=100)
        return sum("first-order term" in str(w.message) for w in caught)

    assert warned(NonNegative()) == 0
    assert warned(Restated()) == 1
    assert warned(GainOnly()) == 1
    assert warned(OBD()) == 1
    assert warned("obd", mode="mask_only") == 0


def test_tiny_live_weights_never_keep_a_zero_cost_even_flushed():
    """Every zero cost beside a finite nonzero weight becomes at least the smallest normal float32 (FLOOR * TIE),
    so a live weight of 1e-30 never ranks as an absent synapse's exact 0, flushed to zero or not (the clamp to FLOOR
    could go unnoticed: its removal kept the order of larger weights)."""
    w = torch.tensor([1e-30, 1e-12, 1e-9, 1e-3])
    tiny = torch.finfo(torch.float32).tiny
    out = order_zero_costs(torch.zeros(4), w)
    assert bool((out >= tiny).all()) and out[:3].tolist() == [out[0].item()] * 3 and out[3] > out[0]
    assert torch.equal(_flushed(lambda: order_zero_costs(torch.zeros(4), w)), out)
