"""Balanced crawling: at fixed overall density, swap the cheapest-to-remove present ensembles
for the most useful absent ones, across all layers, but only pairs whose estimated restoration
gain exceeds the removal cost. Layer densities move freely; the connectome crawls through the loss
landscape."""
from __future__ import annotations

import torch

from .base import EditPlan, Policy, concat, highest, lowest, register_policy, split
from .swap import nm_plan


@register_policy("balanced")
class Balanced(Policy):
    drop_by = grow_by = "estimator"
    needs_density = False
    supports_nm = True

    def initialize(self, ctrl):
        if ctrl.density is None or ctrl.density >= ctrl.conn.density():
            return None
        return ctrl.initial_plan()

    def update(self, ctrl, step):
        frac = ctrl.edit_fraction(step)
        if frac <= 0:
            return None
        alive = ctrl.alive()
        cost, gain = ctrl.scores("cost", step), ctrl.scores("gain", step)
        if hasattr(ctrl.conn.granularity, "density"):
            return nm_plan(ctrl, step, cost, gain, alive)
        c, names, sizes = concat(cost)
        g, _, _ = concat(gain)
        a, _, _ = concat(alive)
        a = a.to(c.device)
        k = int(round(frac * int(torch.count_nonzero(a))))
        p_idx = lowest(c, a, k)
        g_idx = highest(g, ~a, p_idx.numel())
        n = min(p_idx.numel(), g_idx.numel())
        worth = (g[g_idx[:n]] - c[p_idx[:n]]) > 0  # ascending costs vs descending gains: a prefix
        n = int(worth.sum())
        p_idx, g_idx = p_idx[:n], g_idx[:n]
        plan = EditPlan()
        plan.prune, plan.prune_scores = split(p_idx, names, sizes, c[p_idx])
        plan.grow, plan.grow_scores = split(g_idx, names, sizes, g[g_idx])
        plan.est_loss_change = float(c[p_idx].sum() - g[g_idx].sum()) if n else 0.0
        return plan
