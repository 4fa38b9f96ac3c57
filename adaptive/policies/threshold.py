"""Threshold editing with adaptive boundaries.

Prune every present ensemble whose removal cost is below the prune boundary, restore every absent
one whose restoration gain is above the restore boundary. Ensembles of different sizes (``block:RxC``
edges, neurons of layers of different fan-in) are ranked by value per synapse (the budget's unit:
the cheapest per synapse pruned first, the most useful per synapse restored first), while the
boundaries compare each ensemble's whole (summed) cost or gain, and adapt to the whole values of
what was edited: a large ensemble can rank before a small one yet lie above the boundary the small
one is below. Boundaries adapt so that each update's
edits stay within limits: at most ``edit_fraction`` (decaying) of the live ensembles per side, and,
while a target density is set and not reached, a net removal pace that reaches it by ``end_step``
(or as fast as the limit allows without one; with ``end_step``, ``edit_fraction=0`` leaves the pace
alone, with no edit beyond it): ``pace="cubic"`` (the default) follows Zhu & Gupta's
schedule from the live count of the first update, removing most early and little at the end;
``pace="even"`` (the default until the cubic pace was measured better) spreads the excess evenly
over the updates left, so late updates remove a growing share of what is live
(recipes/benchmarks/threshold_pace.py and gradual_pruning.py measure both). The pace is saved with
the policy's state: a state saved before it was (an even run, unless the cubic schedule's start is
recorded) resumes at the pace it ran, and an explicit other pace is refused. The controller's line
search (``holdout_loss``) shrinks or rolls back an update that raises the held-out loss.

In train mode it warns when its estimator's removal costs are signed (``Estimator.signed_cost``:
taylor, obd, consistency): their first-order term ``-g*w`` is negative for many synapses, all below
the boundary. On lenet300/MNIST at 5% with the recipe's generic defaults (``recipes/adaptive.py
--model lenet300 --dataset mnist --policy threshold --estimator E --density 0.05 --epochs 3 --seed
S``, seeds 0 and 1) the runs ended at 11.24% and 11.24% held-out with taylor, 80.33% and 77.70% with
obd, 86.31% and 85.21% with consistency, and 96.60% and 96.88% with curvature.

Ranking all layers together, it can empty a layer (a layer collapse, which cuts the network);
``min_density`` keeps a floor in each layer: the ensembles holding it, the costliest to remove,
are never pruned. (It is no cure for every failing run: lenet300 at 5% on MNIST with the recipe's
generic defaults, batch 32 and lr 0.1, left fc1 at 0.33% and ended at 41% at seed 0 while zero costs
were ordered by position; with ``--min_density 0.01`` or ``0.02`` fc1 kept its floor and the run
still died, at chance. The cause was the order: every synapse it pruned had a removal cost of exactly
0, the inputs of units silent in the window, taken by position, whole units at a time; ordered by
magnitude (:mod:`adaptive.utility.ties`, the default) the run reached 97%.)
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .base import (EditPlan, Policy, check_whole_floors, concat, concat_sizes, estimated_change, floor_mask,
                   global_synapse_target, highest, last_editing_update, layer_floors, live_synapses, lowest,
                   max_count, per_synapse, register_policy, size_sum, split, take_synapses)
from ..utility.base import declares_signed_cost, estimator_label
from ..utility.ties import untied
from ..warn import warn_user
from ..registry import flag_option, number_option


PACES = ("even", "cubic")
DEFAULT_PACE = "cubic"


@register_policy("threshold")
class Threshold(Policy):
    drop_by = grow_by = "estimator"
    needs_density = False
    sparse_at_start = False
    ranks_globally = True
    keeps_floors = True  # each layer's floor is held out of the ranking (update)

    def __init__(self, prune_boundary: float = 0.0, restore_boundary: float = 0.0, adapt: bool = True,
                 pace: Optional[str] = None):
        if pace is not None and pace not in PACES:
            raise ValueError(f"policy 'threshold': unknown pace {pace!r}: use one of {PACES}")
        self.prune_boundary, self.restore_boundary = (
            number_option("policy 'threshold'", k, v, why="a cost or gain in the estimator's units, either sign")
            for k, v in (("prune_boundary", prune_boundary), ("restore_boundary", restore_boundary)))
        self.adapt = flag_option("policy 'threshold'", "adapt", adapt, why="the boundaries move to the costs and gains "
                                 "of what each update edited; False: they stay as given")
        self.pace_given = pace is not None  # unset: a loaded state's pace wins (a resumed run keeps its pace)
        self.pace = pace or DEFAULT_PACE
        self.start_live = None  # pace="cubic": the live synapses at the first update, where its schedule starts

    def initialize(self, ctrl):
        # the network starts as it is and only updates bring it to its density: with none before
        # end_step it stays as it is, which gmp warns of too
        if (ctrl.density is not None and ctrl.end_step is not None and last_editing_update(ctrl) < max(1, ctrl.start_step)
                and ctrl.conn.num_live() > round(ctrl.density * ctrl.conn.num_synapses())):
            warn_user(f"policy 'threshold': no update falls between start_step={ctrl.start_step} and end_step="
                      f"{ctrl.end_step} with update_every={ctrl.update_every} (an update at end_step edits nothing), "
                      f"so the network stays at density {ctrl.conn.density():.4g}, not {ctrl.density:g}; lower "
                      "update_every or move end_step later")
        if ctrl.density is not None and ctrl.conn.fixed_density is None and layer_floors(ctrl):
            self._check_whole_floors(ctrl)
        est = ctrl.drop_est
        if ctrl.conn.mode == "train" and declares_signed_cost(est):
            warn_user(f"policy 'threshold' with estimator {estimator_label(est)!r}: its removal costs "
                      "have a first-order term (-g*w), negative for many synapses, and threshold prunes every synapse "
                      "below its boundary (0 at the start), restoring others in their place beyond the pace; on "
                      "lenet300/MNIST at 5% this ended at 11% (taylor), 78-80% (obd) and 85-86% (consistency) held-out "
                      "where curvature, the default, reached 96.6-96.9%: use the curvature estimator (--estimator curvature)")
        return super().initialize(ctrl)

    @staticmethod
    def _check_whole_floors(ctrl):
        """Refuse a target the floors cannot make room for once held in whole ensembles
        (:func:`~adaptive.policies.base.check_whole_floors`): a layer's floor is never pruned."""
        check_whole_floors(ctrl, ctrl.density, global_synapse_target(ctrl, ctrl.density), "policy 'threshold': ")

    def _pace(self, ctrl, step, live, target):
        """Synapses to remove, net, at this update: the excess over the target, spread over the
        updates left before ``end_step`` (evenly, or along the cubic schedule); negative below the
        target (synapses to restore, net)."""
        need = live - target
        if need <= 0:  # at or below the target (an update past it): the shortfall is restored at once
            return need
        if ctrl.end_step is None:
            return need
        if self.pace == "cubic":
            if self.start_live is None:
                self.start_live = live
            # the last update before end_step reaches the target (the edit fraction is 0 at end_step,
            # so an update there edits nothing, as the even pace's count of updates left assumes)
            last = last_editing_update(ctrl)
            if step >= last or last <= ctrl.start_step:
                return need
            p = max(0.0, (step - ctrl.start_step) / (last - ctrl.start_step))
            wanted = target + max(0, self.start_live - target) * (1.0 - p) ** 3
            return max(0, math.ceil(live - wanted))  # ahead of the schedule: no net removal
        left = max(1, math.ceil((ctrl.end_step - step) / ctrl.update_every))
        return math.ceil(need / left)

    def update(self, ctrl, step):
        frac = ctrl.edit_fraction(step)
        # an edit fraction of 0 stops the edits beyond the pace, not the pace: before end_step the
        # density is still reached (edit_fraction=0 ran dense to the end, though the pace ignores the
        # edit limit); every decay is 0 from end_step on, where an update edits nothing
        if frac <= 0 and (ctrl.density is None or ctrl.end_step is None or step >= ctrl.end_step):
            return None
        alive = ctrl.alive()
        cost = ctrl.scores("cost", step)
        c, names, sizes = concat(cost)
        g, _, _ = concat(ctrl.scores("gain", step))
        a, _, _ = concat(alive)
        a = a.to(c.device)
        size = concat_sizes(ctrl, names, sizes)
        live = int(torch.count_nonzero(a))
        # min_density: the ensembles holding each layer's floor (its costliest to remove) are not pruned
        held = floor_mask(ctrl, cost, alive)
        prunable = a if held is None else a & ~held.to(a.device)
        limit = max(1, int(round(frac * live))) if frac > 0 else 0  # 0: the pace's edits only
        target_set = ctrl.density is not None
        # the pace is counted in synapses (ensembles can differ in size), the edit limit in ensembles
        pace = self._pace(ctrl, step, live_synapses(size, a), global_synapse_target(ctrl, ctrl.density)) if target_set else 0
        n_pace = max_count(size, pace, int(torch.count_nonzero(prunable)))  # enough ensembles to remove ``pace`` synapses
        if held is not None and not getattr(self, "_warned_floors", False):
            spare = live_synapses(size, prunable)
            if pace - spare > (size if isinstance(size, float) else float(size.max())) / 2:
                self._warned_floors = True
                warn_user(f"policy 'threshold': the min_density floors, held in whole ensembles, leave {spare:,.0f} "
                          f"synapses to prune where {pace:,.0f} are due at step {step}, so the network stays above "
                          f"density {ctrl.density:g}; raise the density or lower min_density or use smaller ensembles")
        if target_set and ctrl.end_step is None and n_pace > limit:
            n_pace = limit  # no deadline: as fast as the edit limit allows, and never past the target
            pace = min(pace, size_sum(size, lowest(per_synapse(c, size), prunable, n_pace)))
        # ensembles of different sizes compete by value per synapse (the budget's unit); the
        # boundaries apply to their whole (summed) values
        cs, gs = per_synapse(c, size), per_synapse(g, size)
        below = prunable & (c < self.prune_boundary)
        eligible = below.clone()
        eligible[lowest(cs, prunable, n_pace)] = True  # the pace's cheapest, wherever the boundary is
        p_idx = lowest(cs, eligible, min(int(torch.count_nonzero(eligible)), max(limit, n_pace)))
        if target_set:  # the pace's prefix first; beyond it only ensembles below the boundary, up to the limit
            # (max_count counts the pace's ensembles by the smallest size, so with mixed sizes the
            # pace's cheapest can hold more than the prefix, some of them not below the boundary)
            k_pace = take_synapses(p_idx, size, pace).numel()
            more = below.clone()
            more[p_idx[:k_pace]] = False
            p_idx = torch.cat([p_idx[:k_pace], lowest(cs, more, max(0, limit - k_pace))])
        above = ~a & (g > self.restore_boundary)
        # below the target: the best absent that make up the shortfall, wherever the boundary is (only
        # those: max_count's one more, taken too, was restored beyond the pace and the edit limit, the
        # boundary unchecked, in a pair with a prune below the prune boundary)
        short = (take_synapses(highest(gs, ~a, max_count(size, -pace, int(torch.count_nonzero(~a)))), size, -pace)
                 if target_set and pace < 0 else p_idx[:0])
        n_short = short.numel()
        above[short] = True
        r_idx = highest(gs, above, min(int(torch.count_nonzero(above)), max(limit, n_short)))
        if target_set:
            # net removal is exactly the pace (to within half an ensemble): restores only replace
            # prunes beyond it, and prunes beyond the pace that nothing replaces are dropped
            r_idx = take_synapses(r_idx, size, size_sum(size, p_idx) - pace)
            p_idx = take_synapses(p_idx, size, size_sum(size, r_idx) + pace)
        if self.adapt:
            if p_idx.numel():  # (zero costs, ordered by magnitude, leave it at 0: see adaptive.utility.ties)
                top = float(c[p_idx].max())
                self.prune_boundary = untied(top) if getattr(ctrl, "zero_cost_order", "index") == "magnitude" else top
            if r_idx.numel():
                self.restore_boundary = max(0.0, float(g[r_idx].min()))
        plan = EditPlan(boundaries={"prune": self.prune_boundary, "restore": self.restore_boundary})
        plan.prune, plan.prune_scores = split(p_idx, names, sizes, c[p_idx])
        plan.grow, plan.grow_scores = split(r_idx, names, sizes, g[r_idx])
        plan.est_loss_change = estimated_change(c[p_idx], g[r_idx])
        return plan

    def state_dict(self):
        return {"prune_boundary": self.prune_boundary, "restore_boundary": self.restore_boundary,
                "start_live": self.start_live, "pace": self.pace}

    @staticmethod
    def recorded_pace(sd) -> Optional[str]:
        """The pace a state was saved at: its ``pace``; before paces were saved, ``cubic`` where the
        cubic schedule's start is recorded, else None (an even run, or a cubic one before its first
        paced update: the two states are alike)."""
        if sd.get("pace") is not None:
            return sd["pace"]
        return "cubic" if sd.get("start_live") is not None else None

    def load_state_dict(self, sd):
        recorded = self.recorded_pace(sd)
        if recorded is not None and recorded not in PACES:
            raise ValueError(f"policy 'threshold': the state's pace {recorded!r} is none of {PACES}")
        if self.pace_given and recorded is not None and recorded != self.pace:
            raise ValueError(f"policy 'threshold': the state was saved at pace={recorded!r}, this policy was built with "
                             f"pace={self.pace!r}: build it with pace={recorded!r} (or leave pace unset) to continue "
                             "the run as it ran")
        pace = self.pace if self.pace_given else (recorded or "even")  # unrecorded, unset: the old default, even
        # checked all before any is set: a NaN boundary compares false with every cost (nothing pruned
        # beyond the pace, ever). An infinite one is taken: update() sets a boundary to the whole cost or
        # gain of what it edited, which is -inf or +inf where the estimator's scores are (score_checks
        # admits them), so a run that pruned a -inf cost saves prune_boundary=-inf and resumes with it
        prune_boundary, restore_boundary = (
            number_option("policy 'threshold': the state's", k, sd.get(k, getattr(self, k)), finite=False,
                          why="a saved state holds the boundary its last update set; load an unedited one")
            for k in ("prune_boundary", "restore_boundary"))
        start_live = sd.get("start_live", self.start_live)
        if start_live is not None:  # (a count of synapses: live_synapses gives it as a float)
            number_option("policy 'threshold': the state's", "start_live", start_live, low=0,
                                       why="the live synapses of the first paced update; load an unedited state")
        self.prune_boundary, self.restore_boundary, self.pace = prune_boundary, restore_boundary, pace
        self.start_live = start_live
