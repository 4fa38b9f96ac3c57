"""balanced with ensembles of several sizes, found by a review: its worth check paired prunes and grows by
position and per synapse, then grew as many synapses as pruned from the rest of the gain order, unchecked: a
9-synapse kernel costing 9.0 was swapped for nine weights gaining 8.2 in all, because the first of them gained
5.0 per synapse against the kernel's 1.0. Pairs count by synapses now: a swap is made where the grows that
replace the pruned synapses gain more than they cost."""
import warnings

import pytest
import torch
from torch import nn

import adaptive
from adaptive.utility import Estimator


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.l = nn.Conv2d(1, 2, 3), nn.Linear(2, 10)

    def forward(self, x):
        return self.l(self.c(x).mean((2, 3)))


class Scores(Estimator):
    """Per synapse: the conv's removal costs 1.0 (9.0 a kernel), the linear's 10; restoring the first absent
    linear weight gains 5.0, each other ``rest``."""

    def __init__(self, rest):
        super().__init__()
        self.rest = rest

    def removal_cost(self, ctx):
        return torch.full(ctx.weight.shape, 1.0 if ctx.name == "c.weight" else 10.0)

    def restoration_gain(self, ctx):
        g = torch.zeros(ctx.weight.shape)
        if ctx.name == "l.weight":
            absent = (~ctx.mask).reshape(-1).nonzero().squeeze(1)
            g.view(-1)[absent] = self.rest
            g.view(-1)[absent[0]] = 5.0
        return g


@pytest.mark.parametrize("rest,swapped", [(0.4, False), (0.6, True)])
def test_balanced_swaps_ensembles_of_several_sizes_only_where_the_grows_outgain_the_prunes(rest, swapped):
    torch.manual_seed(0)
    conn = adaptive.Connectome(Net(), ensemble="kernel")  # (a Linear's kernels are single weights)
    mask = conn.masks["l.weight"].clone()
    mask.view(-1)[10:] = False
    conn.set_masks({"l.weight": mask})
    live = conn.num_live()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctrl = adaptive.Controller(conn, None, policy="balanced", density=live / conn.num_synapses(), budget="global",
                                   update_every=1, end_step=10, edit_fraction=0.5, edit_decay="constant",
                                   estimator=Scores(rest))
        event = ctrl.step()
    if swapped:  # 9.0 pruned for 5.0 + 8 x 0.6 = 9.8 grown
        assert (event["pruned"], event["grown"]) == (9, 9) and event["est_score_change"] == pytest.approx(9.0 - 9.8)
    else:  # 9.0 for 8.2: the loss would rise
        assert (event["pruned"], event["grown"]) == (0, 0)
    assert conn.num_live() == live


@pytest.mark.parametrize("size", [1.0, "tensor"])
def test_balanced_swaps_no_pair_whose_gain_only_equals_its_cost(size):
    """A swap must gain: equal gain and cost (a synapse grown at 0.0 costs exactly 0 to remove; magnitude's gain in
    train mode is 0) swapped freshly grown synapses back out, resetting their optimizer state, for nothing. A
    mutation of `> 0` to `>= 0` passed every test."""
    from adaptive.policies.balanced import Balanced

    cs = torch.tensor([0.0, 0.0, 0.5, 1.0])
    gs = torch.tensor([0.0, 0.0, 0.5, 1.0])
    p_idx, g_idx = torch.tensor([0, 1, 2]), torch.tensor([3, 2, 1, 0])  # ascending costs, descending gains
    sizes = 1.0 if size == 1.0 else torch.ones(4)
    assert Balanced.worth(cs, torch.zeros(4), p_idx, torch.tensor([0, 1, 2]), sizes)[1] == 0  # 0 against 0
    assert Balanced.worth(cs, gs, p_idx, g_idx, sizes)[1] == 2  # 1.0 > 0 and 0.5 > 0 gain; then 0 against 0.5 does not
    same = torch.full((4,), 0.25)
    assert Balanced.worth(same, same, p_idx, g_idx, sizes)[1] == 0
