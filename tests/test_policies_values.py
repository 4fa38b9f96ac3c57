"""Policies, budgets and schedules in value (a zero-span decay, a cubic schedule whose one update is its last, n:m and
unequal-size ensemble cuts, layer floors, crawl keeping one ensemble and its reported boundary, threshold's edit limit
and restore boundary, swap's half-ensemble room and global slack, balanced's empty estimate): each pins a result one
careless edit changed unnoticed."""
import math

import pytest
import torch
from torch import nn

import adaptive
from adaptive.policies.base import EditPlan
from adaptive.schedules import CubicDensity, get_decay

torch.set_num_threads(1)


# S1: Decay.progress's zero-span branch: the end value from end_step on (step >= end_step, not >)
@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_a_decay_with_no_span_is_at_its_end_value_from_end_step_on(decay):
    d = get_decay(decay, 0.3, end_step=5, start_step=5)
    assert d(4) == pytest.approx(0.3)
    assert d(5) == 0.0 and d(6) == 0.0


# S5: CubicDensity with start_step == end_step holds the final value from there (the end test comes first)
def test_cubic_density_with_no_span_is_final_at_its_step():
    assert CubicDensity(1.0, 0.3, 2, 2)(2) == 0.3
    assert CubicDensity(1.0, 0.3, 2, 2)(1) == 1.0


def test_gmp_whose_only_update_is_at_start_step_prunes_to_the_target_there():
    # start_step=2, end_step=4, update_every=5: the one update (step 2) is the schedule's last
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(10, 10, bias=False)))
    ctrl = adaptive.Controller(conn, None, policy="gmp", density=0.3, start_step=2, end_step=4, update_every=5)
    for _ in range(5):
        ctrl.step()
    assert conn.density() == pytest.approx(0.3)


# P2: a line search's cut of an n:m plan ranks the groups by their best edit (amin of positions), not their worst
def test_shrink_with_groups_keeps_the_groups_of_the_best_edits():
    gid = torch.tensor([0, 1, 1, 0])  # ensembles 0 and 3 in group 0, 1 and 2 in group 1
    plan = EditPlan(prune={"w": torch.tensor([0, 1, 2, 3])})  # best first: group 0 holds the best and the worst
    kept = plan.shrink(0.5, groups=lambda n: gid)
    assert kept.prune["w"].tolist() == [0, 3]


# P8: take_synapses with unequal ensembles leaves one that fits exactly half (as equal ones do)
def test_take_synapses_leaves_an_unequal_ensemble_exactly_half_over_the_budget():
    from adaptive.policies.base import take_synapses
    size = torch.tensor([2.0, 4.0])
    idx = torch.tensor([1, 0])
    assert take_synapses(idx, size, 5.0).tolist() == [1]  # 4 taken; the 2 would end 1 over, exactly half of it
    assert take_synapses(idx, size, 5.5).tolist() == [1, 0]
    assert take_synapses(torch.tensor([0, 1, 2]), 2.0, 5.0).tolist() == [0, 1]  # equal sizes: the same rule


# P13: a layer budget's count exactly half an ensemble over an odd number of whole ones, under the floor there,
# is raised to the floor in whole ensembles (ceil(x - 0.5), not Python's round-half-to-even)
def test_a_layer_budgets_count_at_one_and_a_half_neurons_still_holds_the_floor():
    torch.manual_seed(0)
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(10, 4, bias=False)), ensemble="neuron")
    # uniform at 0.375 gives the layer 15 synapses (1.5 neurons of 10); min_density 0.3 is a floor of 12
    adaptive.Controller(conn, None, policy="magnitude", density=0.375, budget="uniform", min_density=0.3)
    assert int(conn.masks["0.weight"].sum()) == 20  # two whole neurons hold the floor; one (10) was under it


def _crawl(alive, cost, gain, shape=None, ensemble="synapse"):
    conn = adaptive.Connectome(nn.Linear(shape[1] if shape else len(alive), shape[0] if shape else 1, bias=False),
                               ensemble=ensemble)
    conn.set_masks({"weight": torch.tensor(alive).reshape(conn.masks["weight"].shape)})
    ctrl = adaptive.Controller(conn, None, policy="crawl", estimator="magnitude", update_every=1)
    ctrl.policy.edit_fraction = 1.0
    scores = {"cost": {"weight": torch.tensor(cost, dtype=torch.float)},
              "gain": {"weight": torch.tensor(gain, dtype=torch.float)}}
    ctrl.scores = lambda side, step: scores[side]
    return ctrl


# C6: a goal of synapses kept keeps one ensemble, even where the nearest whole count is none (fp >= live, not >)
def test_crawl_to_a_goal_under_half_a_neuron_keeps_one_neuron():
    ctrl = _crawl([True] * 20, [[1.0], [2.0]], [[0.0], [0.0]], shape=(2, 10), ensemble="neuron")
    ctrl.policy.set_goal(4, 1)  # 4 synapses of two 10-synapse neurons: nearest is none, but one is kept
    plan = ctrl.policy.update(ctrl, 1)
    assert plan.prune["weight"].tolist() == [0]


# C8: the event's prune boundary is the last (costliest) ensemble the plan prunes
def test_crawls_prune_boundary_is_the_cost_of_the_last_pruned():
    ctrl = _crawl([True, True, True, True], [[3.0, 1.0, 2.0, 4.0]], [[0.0] * 4])
    ctrl.policy.set_goal(1, 1)
    plan = ctrl.policy.update(ctrl, 1)
    assert plan.prune["weight"].tolist() == [1, 2, 0]
    assert plan.boundaries["prune"] == 3.0


# T3: the edit limit is at least one ensemble while the edit fraction is above 0 (max(1, round(frac * live)))
def test_threshold_edits_at_least_one_ensemble_under_a_tiny_edit_fraction():
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(10, 10, bias=False)))
    ctrl = adaptive.Controller(conn, None, policy="threshold", estimator="magnitude", update_every=1,
                               prune_boundary=100.0, adapt=False, edit_fraction=0.001, edit_decay="constant")
    assert [ctrl.step()["pruned"] for _ in range(2)] == [1, 1]


# T4: the restore boundary adapts to what was restored, never below 0
def test_thresholds_restore_boundary_stays_at_or_above_zero_after_restoring_negative_gains():
    conn = adaptive.Connectome(nn.Linear(4, 1, bias=False))
    conn.set_masks({"weight": torch.tensor([[True, False, False, False]])})
    ctrl = adaptive.Controller(conn, None, policy="threshold", estimator="magnitude", density=0.5, budget="global",
                               update_every=1)
    scores = {"cost": {"weight": torch.tensor([[1.0, 0.0, 0.0, 0.0]])},
              "gain": {"weight": torch.tensor([[0.0, -5.0, -1.0, -3.0]])}}
    ctrl.scores = lambda side, step: scores[side]
    plan = ctrl.policy.update(ctrl, 1)
    assert plan.grow["weight"].tolist() == [2]  # the shortfall restored, wherever the boundary is
    assert plan.boundaries["restore"] == 0.0 and ctrl.policy.restore_boundary == 0.0


# W5: under the global budget a hand edit is restored alone only past one ensemble per layer (the slack is a sum)
def _two_layer_set():
    torch.manual_seed(0)
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 4, bias=False)))
    ctrl = adaptive.Controller(conn, None, policy="set", density=0.5, budget="global", update_every=1)
    ctrl.step()
    return conn, ctrl


@pytest.mark.parametrize("removed,restores", [(2, False), (3, True)])
def test_global_swaps_restore_a_hand_edit_alone_only_past_one_ensemble_per_layer(removed, restores):
    conn, ctrl = _two_layer_set()
    m = {n: v.clone() for n, v in conn.masks.items()}
    flat = m["0.weight"].view(-1)
    flat[flat.nonzero().squeeze(1)[:removed]] = False
    conn.set_masks(m)
    plan = ctrl.policy.update(ctrl, 2)
    assert (plan.tolerance == math.inf) == restores
    assert (plan.counts() == (0, removed)) == restores



# L4: a balanced update that finds no swap worth making states an estimated change of 0.0 (not None)
def test_balanced_update_without_a_worthwhile_swap_estimates_no_change():
    conn = adaptive.Connectome(nn.Linear(4, 1, bias=False))
    conn.set_masks({"weight": torch.tensor([[True, True, False, False]])})
    ctrl = adaptive.Controller(conn, None, policy="balanced", estimator="magnitude", density=0.5,
                               budget="global", update_every=1, edit_fraction=1.0)
    scores = {"cost": {"weight": torch.tensor([[5.0, 6.0, 0.0, 0.0]])},
              "gain": {"weight": torch.tensor([[0.0, 0.0, 1.0, 2.0]])}}
    ctrl.scores = lambda side, step: scores[side]
    plan = ctrl.policy.update(ctrl, 1)
    assert plan.counts() == (0, 0)
    assert plan.est_loss_change == 0.0 and plan.estimate() == 0.0


# W3: a swap whose prune the absent ensembles replace to within half an ensemble (the largest) is made
def test_a_block_swap_replaceable_to_within_half_an_ensemble_is_made():
    conn = adaptive.Connectome(nn.Linear(5, 1, bias=False), ensemble="block:1x2")  # blocks of 2, 2 and 1 synapses
    conn.set_masks({"weight": torch.tensor([[True, True, True, True, False]])})
    ctrl = adaptive.Controller(conn, None, policy="utility", estimator="magnitude", density=0.8,
                               budget="uniform", update_every=1,
                               edit_fraction=0.5, edit_decay="constant")
    shape = ctrl.alive()["weight"].shape
    scores = {"cost": {"weight": torch.tensor([1.0, 2.0, 0.0]).view(shape)},
              "gain": {"weight": torch.tensor([0.0, 0.0, 5.0]).view(shape)}}
    ctrl.scores = lambda side, step: scores[side]
    plan = ctrl.policy.update(ctrl, 1)
    assert plan.prune["weight"].tolist() == [0] and plan.grow["weight"].tolist() == [2]
