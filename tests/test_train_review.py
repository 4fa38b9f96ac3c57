"""Train mode: every policy reaches the requested density in *synapses* when ensembles differ in size
(conv kernels next to Linear "kernels", neurons of different fan-in, the smaller edge blocks of
block:RxC), and pruned weights stay exactly 0.0 through SGD, Adam and AdamW while it rewires."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
from adaptive.policies.base import ensemble_size, keep_plan, take_synapses

torch.set_num_threads(1)


def _net():
    # conv kernels of 9 synapses next to Linear rows; 10x30 and 6x9 do not tile into 4x4 blocks
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 10, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(10 * 4 * 4, 30), nn.ReLU(), nn.Linear(30, 10))


def _batches(n=30):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def _largest_ensemble(conn):
    return max(float(conn.granularity.ensemble_sizes(l.shape).max()) for l in conn.layers.values())


def _run(policy, ensemble, budget, make_opt, steps=30, **kw):
    model = _net()
    opt = make_opt(model.parameters())
    conn = adaptive.Connectome(model, ensemble=ensemble)
    ctrl = adaptive.Controller(conn, opt, policy=policy, density=0.2, budget=budget, update_every=4, end_step=24,
                               edit_fraction=0.4, seed=0, **kw)
    for x, y in _batches(steps):
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        for n, p in conn.params.items():
            assert (p[~conn.masks[n]] == 0).all(), f"pruned weight of {n} revived at step {ctrl.step_count}"
            for k, v in opt.state[p].items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    assert (v[~conn.masks[n]] == 0).all(), f"optimizer state {k!r} of a pruned weight of {n}"
    return conn, ctrl


SGD = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-3, nesterov=True)  # noqa: E731
ADAM = lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=5e-3)  # noqa: E731
ADAMW = lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1)  # noqa: E731


@pytest.mark.parametrize("policy,ensemble,budget,make_opt", [
    ("magnitude", "kernel", "global", SGD),  # was 2.4x the target: kernels of 9 counted like single weights
    ("gmp", "neuron", "global", ADAMW),
    ("set", "kernel", "global", ADAM),  # swaps drifted: one conv kernel pruned, one Linear weight grown
    ("rigl", "neuron", "global", SGD),
    ("utility", "block:4x4", "global", ADAMW),
    ("rigl", "block:4x4", "erk", ADAM),  # edge blocks are smaller than the layer's mean block
    ("balanced", "kernel", "global", SGD),
    ("threshold", "neuron", "erk", ADAMW),
    ("threshold", "kernel", "global", SGD),
])
def test_density_is_reached_in_synapses_when_ensembles_differ_in_size(policy, ensemble, budget, make_opt):
    conn, ctrl = _run(policy, ensemble, budget, make_opt)
    target = 0.2 * conn.num_synapses()
    assert abs(conn.num_live() - target) <= _largest_ensemble(conn), (conn.num_live(), target)
    if policy not in ("balanced", "threshold") and budget != "global":  # layer densities follow the budget
        counts = ctrl.budget_fn(conn.layers, 0.2)
        for n, m in conn.masks.items():
            assert abs(int(m.sum()) - counts[n]) <= float(conn.granularity.ensemble_sizes(m.shape).max()), n


def test_rewiring_keeps_the_density_at_every_update_not_only_at_the_end():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    conn = adaptive.Connectome(model, ensemble="kernel")
    ctrl = adaptive.Controller(conn, opt, policy="set", density=0.2, budget="global", update_every=2,
                               end_step=28, edit_fraction=0.5, seed=0)
    target = 0.2 * conn.num_synapses()
    for x, y in _batches(28):
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    updates = [e for e in ctrl.events if e["kind"] == "update" and e["pruned"]]
    assert len(updates) >= 5
    assert all(abs(e["live"] - target) <= 9 for e in updates), [e["live"] for e in updates]


def test_take_synapses_is_nearest_to_the_budget():
    idx = torch.arange(5)
    sizes = torch.tensor([9.0, 1.0, 9.0, 4.0, 1.0])
    assert take_synapses(idx, sizes, 10).tolist() == [0, 1]
    assert take_synapses(idx, sizes, 15).tolist() == [0, 1, 2]  # 19 is nearer to 15 than 10 is
    assert take_synapses(idx, sizes, 14).tolist() == [0, 1]
    assert take_synapses(idx, sizes, 0).numel() == 0
    assert take_synapses(idx, 25.0, 60).tolist() == [0, 1]
    assert take_synapses(idx, 1.0, 3).tolist() == [0, 1, 2]


def test_keep_plan_counts_edge_blocks_by_their_synapses():
    model = nn.Sequential(nn.Linear(30, 10))  # block:4x4 -> 3x8 blocks, of 16, 8 (edge rows) and 8/4 (edge columns)
    conn = adaptive.Connectome(model, ensemble="block:4x4")
    ctrl = adaptive.Controller(conn, policy="magnitude", density=1.0, budget="uniform")
    size = ensemble_size(conn.granularity, conn.layers["0.weight"].shape)
    assert isinstance(size, torch.Tensor) and size.tolist().count(16.0) == 14
    scores = {"0.weight": -conn.granularity.ensemble_sizes(torch.Size((10, 30)))}  # small edge blocks first
    plan = keep_plan(ctrl, scores, 0.5)
    conn.set_ensemble_masks(ctrl._masks_from_plan(plan))
    assert abs(conn.num_live() - 150) <= 8  # was 12 blocks of 24 = half the *blocks*, 104 synapses
