"""Zero removal costs, ordered by magnitude.

An estimator that scores from gradients (curvature, OBD, Taylor, consistency, ...) gives a synapse
that no gradient reached during the window, a unit that did not fire on any of its examples, a
removal cost of exactly 0. Ranked as equals, such synapses were taken by position: a policy that
needed more of them than it had room for removed whole rows of the first silent units of the first
layer. With the magnitude of the weight as the order among them (the smaller weight goes first, as
magnitude pruning would take it), the threshold policy's runs from scratch ended higher on held-out
data at most seeds, and lenet300 at 5% on MNIST with the recipe's generic defaults no longer
collapsed at seed 0 (41% -> 97%); it is no cure for every collapse: lenet5 collapsed at another seed
with either order. ``recipes/benchmarks/zero_cost_ties.py`` measures both (results/zero_cost_ties.md).

The order is given by a value far below any measured cost: an exact 0 becomes ``|w|`` times the
least normal float32 (1.2e-38), so a zero-cost synapse stays above every negative cost and below
every positive one larger than ``|w| * 1.2e-38`` (a weight of 10: 1.2e-37), and the loss change a
plan reports moves by as little. Only the removal side is ordered: a restoration gain of 0 ranks
an absent synapse, whose weight is 0, with nothing to order it by.
"""
from __future__ import annotations

import torch

ZERO_COST_ORDERS = ("magnitude", "index")  # Controller(zero_cost_order=...): "index" is the order before
TIE = torch.finfo(torch.float32).tiny  # 1.18e-38: the scale of the order given to exact zeros


def order_zero_costs(cost: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``cost`` (float32, the weight's shape) with each exact 0 replaced by ``|weight| * TIE``:
    zero-cost synapses rank among themselves by magnitude, smallest first. A weight of 0 (a synapse
    grown at zero) keeps the cost 0."""
    zero = cost == 0
    if not bool(zero.any()):
        return cost
    return torch.where(zero, weight.detach().abs().to(cost.dtype) * TIE, cost)
