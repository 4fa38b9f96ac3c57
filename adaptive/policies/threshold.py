"""Threshold editing with adaptive boundaries.

Prune every present ensemble whose removal cost is below the prune boundary, restore every absent
one whose restoration gain is above the restore boundary. Boundaries adapt so that each update's
edits stay within limits: at most ``edit_fraction`` (decaying) of the live ensembles per side, and,
while a target density is set and not reached, a net removal pace that reaches it by ``end_step``
(or as fast as the limit allows without one). The controller's line search (``holdout_loss``)
shrinks or rolls back an update that raises the held-out loss.
"""
from __future__ import annotations

import math


from .base import EditPlan, Policy, concat, highest, lowest, register_policy, split


@register_policy("threshold")
class Threshold(Policy):
    drop_by = grow_by = "estimator"
    needs_density = False
    sparse_at_start = False

    def __init__(self, prune_boundary: float = 0.0, restore_boundary: float = 0.0, adapt: bool = True):
        self.prune_boundary = float(prune_boundary)
        self.restore_boundary = float(restore_boundary)
        self.adapt = adapt

    def _pace(self, ctrl, step, live):
        if ctrl.density is None:
            return 0
        target = ctrl.global_target(ctrl.density)
        need = max(0, live - target)
        if ctrl.end_step is None or need == 0:
            return need
        left = max(1, math.ceil((ctrl.end_step - step) / ctrl.update_every))
        return math.ceil(need / left)

    def update(self, ctrl, step):
        frac = ctrl.edit_fraction(step)
        if frac <= 0:
            return None
        alive = ctrl.alive()
        c, names, sizes = concat(ctrl.scores("cost", step))
        g, _, _ = concat(ctrl.scores("gain", step))
        a, _, _ = concat(alive)
        a = a.to(c.device)
        live = int(a.sum())
        limit = max(1, int(round(frac * live)))
        pace = self._pace(ctrl, step, live)
        target_set = ctrl.density is not None
        if target_set:
            pace = min(pace, live - ctrl.global_target(ctrl.density)) if live > ctrl.global_target(ctrl.density) else 0
        n_below = int((a & (c < self.prune_boundary)).sum())
        n_p = min(max(n_below, pace), max(limit, pace))
        p_idx = lowest(c, a, n_p)
        n_above = int((~a & (g > self.restore_boundary)).sum())
        n_r = min(n_above, limit)
        if target_set:
            # net removal is exactly the pace: restores only replace prunes beyond it
            n_r = min(n_r, max(0, p_idx.numel() - pace))
            p_idx = p_idx[: n_r + pace] if p_idx.numel() > n_r + pace else p_idx
        r_idx = highest(g, ~a, n_r)
        if self.adapt:
            if p_idx.numel():
                self.prune_boundary = float(c[p_idx[-1]])
            if r_idx.numel():
                self.restore_boundary = max(0.0, float(g[r_idx[-1]]))
        plan = EditPlan(boundaries={"prune": self.prune_boundary, "restore": self.restore_boundary})
        plan.prune, plan.prune_scores = split(p_idx, names, sizes, c[p_idx])
        plan.grow, plan.grow_scores = split(r_idx, names, sizes, g[r_idx])
        plan.est_loss_change = float(c[p_idx].sum() - g[r_idx].sum())
        return plan

    def state_dict(self):
        return {"prune_boundary": self.prune_boundary, "restore_boundary": self.restore_boundary}

    def load_state_dict(self, sd):
        self.prune_boundary = float(sd.get("prune_boundary", self.prune_boundary))
        self.restore_boundary = float(sd.get("restore_boundary", self.restore_boundary))
