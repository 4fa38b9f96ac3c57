"""Gradual magnitude pruning (Zhu & Gupta 2017): dense at start, cubic schedule to the target
density between start_step and end_step; removal order by magnitude or a named estimator."""
from __future__ import annotations

from ..schedules import CubicDensity
from .base import Policy, ensemble_size, keep_live, live_synapses, register_policy, synapse_targets
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
        # a layer is never pruned under its count at the final density: a layer budget's rounding is not monotone
        # in the density, and near its end the cubic schedule is almost flat, so a layer rounded down at one
        # update and up at the last ended a synapse under its final count, for good (gmp only prunes)
        final = synapse_targets(ctrl, ctrl.density)[0] if ctrl.conn.fixed_density is None else None
        plan = keep_live(ctrl, ctrl.scores("cost", step), alive, target, at_least=final)
        warn_if_short(self, ctrl, alive, plan, step)
        return plan


def warn_if_short(policy, ctrl, alive, plan, step):
    """gmp and magnitude only prune: where hand edits (Connectome.set_masks, before or during the run)
    left layers below what the final density asks of them, the network stays under its target. Say
    so, once per set of short layers, rather than leave a run at a fraction of its density in
    silence (under gmp, layers only under the schedule's present density catch up as it falls)."""
    if ctrl.conn.fixed_density is not None:  # n:m granularities keep n of every m, no count to miss
        return
    target = ctrl.density  # the schedule only falls: a layer under its final count stays under for good
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
        short = sorted(n for n in live if live[n] < per_layer[n] - slack[n])
        have, wanted = sum(live[n] for n in short), sum(per_layer[n] for n in short)
        who = f"layer{'s' if len(short) > 1 else ''} {', '.join(short)} hold{'' if len(short) > 1 else 's'}"
    else:
        have, wanted = sum(live.values()), total
        short = [] if have >= wanted - max(slack.values(), default=0) else ["network"]
        who = "the editable layers hold"
    warned = policy.__dict__.setdefault("_warned_short", set())
    if not short or tuple(short) in warned:
        return
    warned.add(tuple(short))
    warn_user(f"policy '{policy.name}' at step {step}: {who} {have:,} live synapses, under the {wanted:,} its target "
              f"density {target:.4g} asks of them, after hand edits (Connectome.set_masks) removed synapses; "
              f"{policy.name} only prunes, so they stay under: refill them "
              "by hand or use a policy that grows (set, rigl, utility)")
