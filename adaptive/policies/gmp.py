"""Gradual magnitude pruning (Zhu & Gupta 2017): dense at start, cubic schedule to the target
density between start_step and end_step; removal order by magnitude or a named estimator."""
from __future__ import annotations

import torch

from ..schedules import CubicDensity
from .base import Policy, ensemble_size, keep_plan, live_synapses, register_policy, synapse_targets
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
        plan = keep_plan(ctrl, scores, target)
        self._warn_if_short(ctrl, alive, plan, target, step)
        return plan

    def _warn_if_short(self, ctrl, alive, plan, target, step):
        """gmp only prunes: where a hand edit (Connectome.set_masks) left layers below what the
        schedule asks of them, the network stays under its target. Say so, once per set of short layers, rather
        than leave a run at a fraction of its density in silence."""
        if ctrl.conn.fixed_density is not None:  # n:m granularities keep n of every m, no count to miss
            return
        per_layer, total = synapse_targets(ctrl, target)
        live, slack = {}, {}
        for n in ctrl.editable():
            kept = alive[n].reshape(-1).clone()
            if n in plan.prune:
                kept[plan.prune[n].to(kept.device)] = False
            size = ensemble_size(ctrl.conn.granularities[n], ctrl.conn.layers[n].shape)
            live[n] = int(round(float(live_synapses(size, kept))))
            slack[n] = size if isinstance(size, float) else float(size.max())
        if per_layer is not None:
            short = {n: per_layer[n] - live[n] for n in live if live[n] < per_layer[n] - slack[n]}
            wanted = sum(per_layer.values())
        else:
            wanted = total
            short = {} if sum(live.values()) >= wanted - max(slack.values(), default=0) else dict(network=1)
        have = sum(live.values())
        warned = self.__dict__.setdefault("_warned_short", set())
        key = tuple(sorted(short))
        if not short or key in warned:
            return
        warned.add(key)
        where = "" if per_layer is None else f" (short: {', '.join(sorted(short))})"
        warn_user(f"policy 'gmp' at step {step}: the editable layers hold {have:,} live synapses, under the "
                  f"{wanted:,} its schedule asks for at density {target:.4g}{where}, after a hand edit "
                  "(Connectome.set_masks) emptied synapses; gmp only prunes, so they stay under: refill them "
                  "by hand or use a policy that grows (set, rigl, utility)")

