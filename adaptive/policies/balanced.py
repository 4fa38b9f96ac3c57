"""Balanced crawling: at fixed overall density, swap the cheapest-to-remove present ensembles
for the most useful absent ones, across all layers, but only pairs whose estimated restoration
gain exceeds the removal cost. Layer densities move freely; the connectome crawls through the loss
landscape."""
from __future__ import annotations

from .base import register_policy
from .swap import SET, global_candidates, global_plan


@register_policy("balanced")
class Balanced(SET):
    drop_by = grow_by = "estimator"
    needs_density = False
    supports_nm = True

    def initialize(self, ctrl):
        if ctrl.density is None or ctrl.density >= ctrl.conn.density():
            return None
        return ctrl.initial_plan()

    def plan(self, ctrl, step, cost, gain, alive, frac):
        c, g, names, sizes, p_idx, g_idx = global_candidates(cost, gain, alive, frac)
        n = min(p_idx.numel(), g_idx.numel())
        worth = (g[g_idx[:n]] - c[p_idx[:n]]) > 0  # ascending costs vs descending gains: a prefix
        n = int(worth.sum())
        plan = global_plan(c, g, names, sizes, p_idx[:n], g_idx[:n])
        plan.est_loss_change = float(c[p_idx[:n]].sum() - g[g_idx[:n]].sum()) if n else 0.0
        return plan
