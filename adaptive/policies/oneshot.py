"""One-shot pruning to a density: by magnitude (the default) or by any named estimator."""
from __future__ import annotations

from ..warn import warn_user
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
            self._warn_no_update(ctrl)
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

    @staticmethod
    def _warn_no_update(ctrl):
        """A prune waiting for the first update where none falls by end_step stays dense, as gmp warns."""
        if ctrl.end_step is None:
            return
        last = ctrl.start_step + (ctrl.end_step - ctrl.start_step) // ctrl.update_every * ctrl.update_every
        if last < max(1, ctrl.start_step):
            warn_user(f"policy 'magnitude' with estimator {ctrl.estimator_name!r} prunes at the first update, when its "
                      f"gradient statistics exist, and no update falls between start_step={ctrl.start_step} and "
                      f"end_step={ctrl.end_step} with update_every={ctrl.update_every}, so the network stays dense; "
                      "lower update_every, move end_step later, or leave end_step out")

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
