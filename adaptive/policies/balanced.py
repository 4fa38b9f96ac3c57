"""Balanced crawling: at fixed overall density, swap the cheapest-to-remove present ensembles
for the most useful absent ones, across all layers, but only pairs whose estimated restoration
gain exceeds the removal cost. Layer densities move freely; the connectome crawls through the loss
landscape."""
from __future__ import annotations

import math

from .base import concat, concat_sizes, global_synapse_target, per_synapse, register_policy
from .swap import SET, global_candidates, global_plan, grow_candidates, replaceable, spare_synapses


@register_policy("balanced")
class Balanced(SET):
    drop_by = grow_by = "estimator"
    needs_density = False
    supports_nm = True
    holds_layer_counts = False  # layer densities move freely; the network's count stays on the target

    def initialize(self, ctrl):
        if ctrl.density is None or ctrl.density >= ctrl.conn.density():
            return None
        return ctrl.initial_plan()

    def plan(self, ctrl, step, cost, gain, alive, frac):
        target = global_synapse_target(ctrl, ctrl.density) if ctrl.density is not None else None
        c, g, names, sizes, p_idx, g_idx = global_candidates(ctrl, cost, gain, alive, frac, room=math.inf)
        size = concat_sizes(ctrl, names, sizes)
        a = concat(alive)[0].to(c.device)
        cs, gs = per_synapse(c, size), per_synapse(g, size)  # the order global_candidates ranked in
        p_idx, n = self.worth(cs, gs, p_idx, g_idx)
        room = spare_synapses(size, a, target)
        if not replaceable(size, p_idx, room):  # more than the absent ones can replace: among those that can
            _, _, _, _, p_idx, g_idx = global_candidates(ctrl, cost, gain, alive, frac, room=room)
            p_idx, n = self.worth(cs, gs, p_idx, g_idx)
        if n:  # grow as many synapses as pruned (back to the target density when one is set)
            g_idx = grow_candidates(gs, a, size, p_idx, target, True)
        else:
            g_idx = g_idx[:0]
        plan = global_plan(c, g, names, sizes, p_idx, g_idx)
        plan.est_loss_change = float(c[p_idx].sum() - g[g_idx].sum()) if n else 0.0
        return plan

    @staticmethod
    def worth(cs, gs, p_idx, g_idx):
        """The pairs whose restoration gain exceeds the removal cost (per synapse): ascending costs
        against descending gains, a prefix of ``p_idx``, and its length."""
        n = min(p_idx.numel(), g_idx.numel())
        n = int(((gs[g_idx[:n]] - cs[p_idx[:n]]) > 0).sum())
        return p_idx[:n], n
