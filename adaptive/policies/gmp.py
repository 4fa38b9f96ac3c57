"""Gradual magnitude pruning (Zhu & Gupta 2017): dense at start, cubic schedule to the target
density between start_step and end_step; removal order by magnitude or a named estimator."""
from __future__ import annotations

import torch

from ..schedules import CubicDensity
from .base import Policy, keep_plan, register_policy
from ..warn import warn_user


@register_policy("gmp")
class GMP(Policy):
    sparse_at_start = False
    drop_by = "estimator?"

    def initialize(self, ctrl):
        if ctrl.end_step is None:
            raise ValueError("policy 'gmp' needs end_step: the step by which the target density is reached")
        # the target is reached at the last update that falls by end_step: an end_step between two
        # updates would otherwise leave the final density to an update that never comes
        last = ctrl.start_step + (ctrl.end_step - ctrl.start_step) // ctrl.update_every * ctrl.update_every
        if last < max(1, ctrl.start_step):
            warn_user(
                f"policy 'gmp': no update falls between start_step={ctrl.start_step} and end_step={ctrl.end_step} "
                f"with update_every={ctrl.update_every}, so the network stays dense; lower update_every or move "
                "end_step later")
            last = ctrl.end_step
        self.schedule = CubicDensity(1.0, ctrl.density, ctrl.start_step, last)
        return None

    def update(self, ctrl, step):
        target = self.schedule(step)
        alive = ctrl.alive()
        scores = {
            n: torch.where(alive[n].to(s.device), s, torch.full_like(s, float("-inf")))
            for n, s in ctrl.scores("cost", step).items()
        }
        return keep_plan(ctrl, scores, target)
