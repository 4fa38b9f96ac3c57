"""Zero removal costs, ordered by magnitude.

An estimator that scores from gradients (curvature, OBD, Taylor, consistency, ...) gives a synapse
that no gradient reached during the window, a unit that did not fire on any of its examples, a
removal cost of exactly 0. Ranked as equals, such synapses were taken by position: a policy that
needed more of them than it had room for removed whole rows of the first silent units of the first
layer. With the magnitude of the weight as the order among them (the smaller weight goes first, as
magnitude pruning would take it), the threshold policy's runs from scratch on lenet300 at 5% on MNIST
with the recipe's generic defaults ended higher on held-out data at all 8 seeds, and seed 0 no longer
collapsed (41% -> 97%); on lenet5 it was neither better nor worse, and no cure for its collapses (2
of 16 runs by index, 3 of 16 by magnitude); where no window holds a zero cost the runs are the same.
``recipes/benchmarks/zero_cost_ties.py`` measures both (results/zero_cost_ties.md).

The order is given by a value far below any cost worth measuring: an exact 0 becomes ``|w|`` times
2**-100 (7.9e-31), with ``|w|`` taken at least 2**-26 (1.5e-8), so the value is a normal float32
that keeps all 24 bits of the weight's order. (Not a subnormal such as ``|w|`` times the least
normal float32: that keeps |w| only to steps of 1.2e-7, and a process with flush-to-zero on,
``torch.set_flush_denormal(True)`` or a library built with -ffast-math, makes it 0 again, the
order by position.) A zero-cost synapse stays above every negative cost and below every positive
one larger than ``|w| * 7.9e-31``, and the loss change a plan reports moves by as little. A weight
of 0, NaN or inf keeps the cost 0 (a NaN would slip past the controller's check of the estimator's
scores). Only the removal side is ordered: a restoration gain of 0 ranks an absent synapse, whose
weight is 0, with nothing to order it by.
"""
from __future__ import annotations

import torch

from ..mask_reads import any_set

ZERO_COST_ORDERS = ("magnitude", "index")  # Controller(zero_cost_order=...): "index" is the order before
TIE = 2.0 ** -100  # 7.9e-31: the scale of the order given to exact zeros
FLOOR = 2.0 ** -26  # the least |w| told apart: |w| * TIE stays a normal float32 (>= 2**-126)
CEILING = TIE * 2.0 ** 20  # 8.3e-25: the most a tie value reaches (weights up to 2**20, about 1e6)


def untied(value: float) -> float:
    """A cost as measured: a value in (0, CEILING), where tie values lie, reads 0. A policy that
    adapts a boundary to the costs it pruned (threshold) adapts it to this, so that pruning zero-cost
    synapses leaves its boundary at 0, as it did before they were ordered, and does not make every
    smaller zero-cost weight fall below the boundary at later updates."""
    return 0.0 if 0.0 < value < CEILING else value


def order_zero_costs(cost: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``cost`` (float32, the weight's shape) with each exact 0 replaced by
    ``max(|weight|, FLOOR) * TIE``: zero-cost synapses rank among themselves by magnitude, smallest
    first. A weight of 0 (a synapse grown at zero), NaN or inf keeps the cost 0."""
    zero = cost == 0
    if not any_set(zero):
        return cost
    w = weight.detach()
    # only a zero cost beside a weight other than 0 changes: an absent synapse (weight 0), most of the zeros of a
    # sparse layer, keeps it, so a layer with no other zero cost is returned as it came, with no pass over |w|
    tie = zero & (w != 0).to(cost.device)
    if not any_set(tie):
        return cost
    a = w.abs().to(device=cost.device, dtype=cost.dtype)
    key = torch.where(torch.isfinite(a), a.clamp_min(FLOOR) * TIE, torch.zeros_like(a))  # (NaN, inf: cost 0)
    return torch.where(tie, key, cost)
