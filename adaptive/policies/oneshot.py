"""One-shot pruning to a density: by magnitude (the default) or by any named estimator."""
from __future__ import annotations

from .base import Policy, keep_plan, register_policy
from .gmp import warn_if_short


@register_policy("magnitude")
class OneShot(Policy):
    """Prune once to ``density`` keeping the ensembles costliest to remove; never grows. With a
    gradient-based estimator the prune waits for the first update, when statistics exist."""

    drop_by = "estimator?"
    supports_nm = True

    def __init__(self):
        self.done = False

    def initialize(self, ctrl):
        if ctrl.drop_est.needs_gradients:
            return None
        plan = keep_plan(ctrl, ctrl.scores("cost", 0), ctrl.density)
        self.done = True  # only once planned: scores refused (NaN) leave the prune to come
        warn_if_short(self, ctrl, ctrl.alive(), plan, 0)
        return plan

    def update(self, ctrl, step):
        if self.done:
            return None
        plan = keep_plan(ctrl, ctrl.scores("cost", step), ctrl.density)
        self.done = True
        warn_if_short(self, ctrl, ctrl.alive(), plan, step)
        return plan

    def state_dict(self):
        return {"done": self.done}

    def load_state_dict(self, sd):
        self.done = bool(sd.get("done", self.done))
