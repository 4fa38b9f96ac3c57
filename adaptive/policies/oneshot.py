"""One-shot pruning to a density: by magnitude (the default) or by any named estimator."""
from __future__ import annotations

from .base import Policy, keep_live, register_policy
from .gmp import warn_if_short


@register_policy("magnitude")
class OneShot(Policy):
    """Prune once to ``density`` keeping the ensembles costliest to remove; never grows. With a
    gradient-based estimator the prune waits for the first update, when statistics exist."""

    drop_by = "estimator?"
    supports_nm = True

    def __init__(self):
        self.done = False

    @property
    def finished(self) -> bool:
        return self.done  # pruned once: nothing later edits

    def initialize(self, ctrl):
        if ctrl.drop_est.needs_gradients:
            return None
        plan = self._plan(ctrl, 0)
        self.done = True  # only once planned: scores refused (NaN) leave the prune to come
        return plan

    def update(self, ctrl, step):
        if self.done:
            return None
        plan = self._plan(ctrl, step)
        self.done = True
        return plan

    def _plan(self, ctrl, step):
        # an absent ensemble is never kept in place of a present one: a removal cost an estimator gives it
        # (0 where w = 0, above a signed cost's negative ones) counted it in its layer's budget, and a
        # present one was pruned in its place, so a sparse network ended below its density
        alive = ctrl.alive()
        plan = keep_live(ctrl, ctrl.scores("cost", step), alive, ctrl.density)
        warn_if_short(self, ctrl, alive, plan, step)
        return plan

    def state_dict(self):
        return {"done": self.done}

    def load_state_dict(self, sd):
        self.done = bool(sd.get("done", self.done))
