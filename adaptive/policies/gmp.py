"""Gradual magnitude pruning (Zhu & Gupta 2017): dense at start, cubic schedule to the target
density between start_step and end_step; removal order by magnitude or a named estimator."""
from __future__ import annotations

import torch

from ..schedules import CubicDensity
from .base import Policy, keep_plan, register_policy


@register_policy("gmp")
class GMP(Policy):
    sparse_at_start = False
    drop_by = "estimator?"

    def initialize(self, ctrl):
        if ctrl.end_step is None:
            raise ValueError("policy 'gmp' needs end_step: the step by which the target density is reached")
        self.schedule = CubicDensity(1.0, ctrl.density, ctrl.start_step, ctrl.end_step)
        return None

    def update(self, ctrl, step):
        target = self.schedule(step)
        alive = ctrl.alive()
        scores = {
            n: torch.where(alive[n].to(s.device), s, torch.full_like(s, float("-inf")))
            for n, s in ctrl.scores("cost", step).items()
        }
        return keep_plan(ctrl, scores, target)
