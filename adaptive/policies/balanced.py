"""Balanced crawling: at fixed overall density, swap the cheapest-to-remove present ensembles
for the most useful absent ones, across all layers, but only pairs whose estimated restoration
gain exceeds the removal cost. Layer densities move freely; the connectome crawls through the loss
landscape. The network's live count stays within half an ensemble of the target, swap or no swap:
an update that finds it farther off restores it alone, and a line search does not veto that."""
from __future__ import annotations

import math

import torch

from .base import (EXACT, concat, concat_sizes, estimated_change, floor_mask, global_synapse_target, hold_count,
                   live_synapses, per_synapse, register_policy, warn_if_never_rewires)
from .swap import SET, global_candidates, global_plan, grow_candidates, replaceable, spare_synapses


@register_policy("balanced")
class Balanced(SET):
    drop_by = grow_by = "estimator"
    needs_density = False
    supports_nm = True
    holds_layer_counts = False  # layer densities move freely; the network's count stays on the target

    def initialize(self, ctrl):
        warn_if_never_rewires(self, ctrl)
        if ctrl.density is None or ctrl.density >= ctrl.conn.density():
            return None
        return ctrl.initial_plan()

    def plan(self, ctrl, step, cost, gain, alive, frac):
        target = global_synapse_target(ctrl, ctrl.density) if ctrl.density is not None else None
        c, g, names, sizes, p_idx, g_idx = global_candidates(ctrl, cost, gain, alive, frac, room=math.inf)
        size = concat_sizes(ctrl, names, sizes)
        a = concat(alive)[0].to(c.device)
        cs, gs = per_synapse(c, size), per_synapse(g, size)  # the order global_candidates ranked in
        if target is not None:
            # a count already off its target (a layer budget's construction, a line search's cut)
            # is restored first, alone, and no held-out loss vetoes it: swaps resume next update
            none = p_idx[:0]
            p_fix, g_fix = self.hold(ctrl, cost, alive, cs, gs, a, size, target, none, none)
            if p_fix.numel() or g_fix.numel():
                plan = global_plan(c, g, names, sizes, p_fix, g_fix)
                plan.est_loss_change = estimated_change(c[p_fix], g[g_fix])
                plan.tolerance = math.inf
                return plan
        p_idx, n = self.worth(cs, gs, p_idx, g_idx, size)
        room = spare_synapses(size, a, target)
        if not replaceable(size, p_idx, room):  # more than the absent ones can replace: among those that can
            _, _, _, _, p_idx, g_idx = global_candidates(ctrl, cost, gain, alive, frac, room=room)
            p_idx, n = self.worth(cs, gs, p_idx, g_idx, size)
        if n:  # grow as many synapses as pruned (back to the target density when one is set); the
            # candidates ranked for the longer p_idx hold the answer where ensembles are equal and the count on target
            g_idx = grow_candidates(gs, a, size, p_idx, target, True, ranked=g_idx)
        else:
            g_idx = g_idx[:0]
        if target is not None:
            p_idx, g_idx = self.hold(ctrl, cost, alive, cs, gs, a, size, target, p_idx, g_idx)
        plan = global_plan(c, g, names, sizes, p_idx, g_idx)
        plan.est_loss_change = estimated_change(c[p_idx], g[g_idx]) if p_idx.numel() or g_idx.numel() else 0.0
        return plan

    @staticmethod
    def hold(ctrl, cost, alive, cs, gs, a, size, target, p_idx, g_idx):
        """``p_idx`` and ``g_idx`` with the edits that bring the network's count back to ``target``
        where the swaps leave it more than half an ensemble off (:func:`hold_count`): the best absent
        ensembles grown, or the cheapest live ones above each layer's floor pruned, none that the
        swaps already edit. Swaps grow only while one is worth making, and a count can start off its
        target: a layer budget rounds each layer to whole ensembles at construction, and an emptied
        layer's ensembles may have no gain at all."""
        after = a.clone()
        after[p_idx], after[g_idx] = False, True
        largest = size if isinstance(size, float) else float(size.max())
        live_after = live_synapses(size, after)
        if abs(target - live_after) <= largest / 2:  # on target (hold_count's own test): no value per
            return p_idx, g_idx  # synapse of every ensemble, no floor mask to build
        can_prune = a & after
        if live_after > target:  # pruning may be needed: each layer's floor stays
            held = floor_mask(ctrl, cost, alive)
            can_prune = can_prune if held is None else can_prune & ~held.to(a.device)
        grow, prune = hold_count(torch.where(a, cs, gs), after, size, target, ~(a | after), can_prune)
        if grow.numel():
            g_idx = torch.cat([g_idx, grow])
        if prune.numel():
            p_idx = torch.cat([p_idx, prune])
        return p_idx, g_idx

    @staticmethod
    def worth(cs, gs, p_idx, g_idx, size=1.0):
        """The pairs whose restoration gain exceeds the removal cost (per synapse): ascending costs
        against descending gains, a prefix of ``p_idx``, and its length. Ensembles of several sizes
        (``size`` a tensor) pair by synapses, not by position: the prefix whose removal the grows that
        replace its synapses (as :func:`~adaptive.policies.base.take_synapses` takes them from ``g_idx``)
        outgain by the most, where any does (a 9-synapse kernel costing 9.0 is not swapped for nine
        weights gaining 8.2 in all because the first of them gains 5.0)."""
        if isinstance(size, float):
            n = min(p_idx.numel(), g_idx.numel())
            n = int(((gs[g_idx[:n]] - cs[p_idx[:n]]) > 0).sum())
            return p_idx[:n], n
        if p_idx.numel() == 0 or g_idx.numel() == 0:
            return p_idx[:0], 0
        sz = size.to(p_idx.device)
        ps, qs = sz[p_idx].to(EXACT), sz[g_idx].to(EXACT)
        cost = (cs[p_idx].to(EXACT) * ps).cumsum(0)
        gained = torch.cat([cost.new_zeros(1), (gs[g_idx].to(EXACT) * qs).cumsum(0)])
        taken = torch.searchsorted(qs.cumsum(0) - qs / 2, ps.cumsum(0))  # grows take_synapses takes per prefix
        net = gained[taken] - cost
        best = int(torch.argmax(net))  # (the first of equal ones: the fewest edits)
        n = best + 1 if float(net[best]) > 0 else 0
        return p_idx[:n], n
