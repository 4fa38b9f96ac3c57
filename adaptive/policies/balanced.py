"""Balanced crawling: at fixed overall density, swap the cheapest-to-remove present ensembles
for the most useful absent ones, across all layers, but only pairs whose estimated restoration
gain exceeds the removal cost. Layer densities move freely; the connectome crawls through the loss
landscape."""
from __future__ import annotations

from .base import concat, concat_sizes, global_synapse_target, per_synapse, register_policy
from .swap import SET, global_candidates, global_plan, grow_candidates


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
        c, g, names, sizes, p_idx, g_idx = global_candidates(ctrl, cost, gain, alive, frac)
        size = concat_sizes(ctrl, names, sizes)
        cs, gs = per_synapse(c, size), per_synapse(g, size)  # the order global_candidates ranked in
        n = min(p_idx.numel(), g_idx.numel())
        worth = (gs[g_idx[:n]] - cs[p_idx[:n]]) > 0  # ascending costs vs descending gains: a prefix
        n = int(worth.sum())
        p_idx = p_idx[:n]
        if n:  # grow as many synapses as pruned (back to the target density when one is set)
            a, _, _ = concat(alive)
            target = global_synapse_target(ctrl, ctrl.density) if ctrl.density is not None else None
            g_idx = grow_candidates(gs, a.to(c.device), size, p_idx, target, True)
        else:
            g_idx = g_idx[:0]
        plan = global_plan(c, g, names, sizes, p_idx, g_idx)
        plan.est_loss_change = float(c[p_idx].sum() - g[g_idx].sum()) if n else 0.0
        return plan
