"""What the controller reports about its edits: the figures each event logs (the estimators'
expected loss change, the densities) and the warnings of the schedule's end (a layer emptied, a
target density missed), as :class:`ControllerReportsMixin`, which
:class:`~adaptive.controller.Controller` inherits.

Every figure and warning here is decided from masks, plans and events that all processes share,
so every process logs and warns alike, with no collective.
"""
from __future__ import annotations

import dataclasses
from typing import Dict

import torch

from .metrics import fmt_unsaturated
from .policies.base import EditPlan, defined, global_synapse_target
from .warn import warn_user


class ControllerReportsMixin:
    """The event fields and end-of-schedule warnings of :class:`~adaptive.controller.Controller`
    (it reads the controller's connectome, policy, estimators and schedule)."""

    def _estimates(self, plan: EditPlan, step: int) -> dict:
        """What an event logs as the estimators' expectations of ``plan`` (applied):
        - ``est_loss_change``: the immediate change of the training loss expected of the edit, in
          loss units: the prune costs, minus the gains of the synapses restored to a value (mask_only
          mode, grow_init='original'), minus what a train-mode growth at its init saves (nothing at
          grow_init='zero': a synapse at 0.0 changes no output; at other inits the grow estimator's
          gain evaluated at the values grown). None where a side has no such estimate (magnitude,
          presence, |g| scores), or where the sum has no value (+inf and -inf among the scores);
        - ``est_score_change``: where ``est_loss_change`` is None, the plan's summed prune scores
          minus its summed grow scores, in the estimators' own units;
        - ``est_growth_gain``: in train mode, the loss a loss model expects the grown synapses to
          save once they have trained (OBD's Newton step ``g^2/(2F)``): a promise of the growth, not a
          change the edit makes, so no part of ``est_loss_change``.
        A plan with no scores that sets ``est_loss_change`` itself (a policy of one's own) gives the
        policy's figure, which no estimator's units qualify and no side splits: it is logged as
        ``est_loss_change``, as it stands, whatever the mode and estimators (it was logged as a loss
        change, as a score or not at all by the estimators' units and the plan's sides), so the policy
        states there the edit's immediate loss change.
        The policies decide by the plan's scores; these figures only report them."""
        n_p, n_g = plan.counts()
        est, sums = plan.estimate(), plan.score_sums()
        if sums is None and plan.est_loss_change is not None:
            return dict(est_loss_change=float(plan.est_loss_change), est_score_change=None, est_growth_gain=None)
        grow_est = self.grow_est or self.drop_est
        restores = self.conn.mode == "mask_only" or self.grow_init == "original"
        prune_ok = not n_p or self.drop_est.loss_units(self.conn.mode)
        loss = None
        if prune_ok and (not n_g or (restores and grow_est.gain_loss_units(True))):
            loss = est  # both sides immediate: the plan's sum as it stands
        elif prune_ok and not restores and (sums is not None or not n_p):
            grown = (0.0 if self.grow_init == "zero" else
                     self._gain_at_init(plan, step) if grow_est.gain_loss_units(True) else None)
            if grown is not None:
                loss = (sums[0] if sums else 0.0) - grown
        growth = None
        if n_g and not restores and sums is not None and grow_est.gain_loss_units(False):
            growth = sums[1]
        # +inf and -inf summed (an estimator may give either) have no value: no figure rather than a NaN
        loss, est, growth = defined(loss), defined(est), defined(growth)
        return dict(est_loss_change=loss, est_score_change=None if loss is not None else est, est_growth_gain=growth)

    def _gain_at_init(self, plan: EditPlan, step: int) -> float:
        """The grow estimator's summed restoration gains of ``plan``'s grown ensembles (applied), each
        synapse's ``ctx.restore`` the value it was grown at: the loss decrease expected of growing
        there, before any training."""
        est, total = self.grow_est or self.drop_est, 0.0
        with torch.no_grad():
            for n, idx in plan.grow.items():
                if not idx.numel():
                    continue
                ctx = dataclasses.replace(self.context(n, step), restore=self.conn.params[n].detach())
                s = self.conn.granularities[n].pool(est.restoration_gain(ctx).float(), "sum").reshape(-1)
                total += float(s[idx.to(s.device)].double().sum())
        return total

    def _density_fields(self) -> dict:
        live = {n: int(torch.count_nonzero(m)) for n, m in self.conn.masks.items()}
        self._warn_emptied(live)
        total_live, total = sum(live.values()), self.conn.num_synapses()
        return dict(
            density=total_live / max(1, total),
            live=total_live,
            removed=total - total_live,
            # six decimals, more where six read as dense or empty and the layer is neither (one of 2.1 million
            # synapses pruned read 1.0)
            layer_density={n: float(fmt_unsaturated(live[n] / max(1, self.conn.masks[n].numel()), ".6f", (0.0, 1.0)))
                           for n in live},
        )

    def _warn_emptied(self, live: Dict[str, int]) -> None:
        """Warn (once per layer) when a layer has no live synapse left: the network is cut there,
        and whatever follows sees a constant (with neuron ensembles and a global budget, say)."""
        warned = self.__dict__.setdefault("_warned_empty", set())
        empty = [n for n, k in live.items() if k == 0 and n not in warned and n not in self.protected]
        if empty:
            warned.update(empty)
            # only remedies this controller takes: a layer budget where the global one is in use, floors where
            # it keeps them (a policy ranking globally refuses a layer budget, crawl a floor too)
            policy = self.policy
            floors = policy.keeps_floors if policy.keeps_floors is not None else not policy.ranks_globally
            # (uniform too: a floor is held in whole ensembles, above the layer's share where they are coarse)
            ways = ((["min_density=..."] if floors else [])
                    + (["a per-layer budget ('erk', 'uniform')"] if self.budget == "global" and not policy.ranks_globally
                       else [])
                    + ["protect=[...]"])
            warn_user(f"layer(s) {empty[:5]}{' ...' if len(empty) > 5 else ''} have no live synapse left: the "
                      f"network is cut there and what follows sees a constant. Keep some with {', '.join(ways)} "
                      "or a finer ensemble")

    def _last_update(self, step: int) -> bool:
        """Whether the update due at ``step`` is the schedule's last: the last due by ``end_step``, or
        any once the policy is done (a one-shot prune)."""
        return self.policy.finished or (self.end_step is not None and step + self.update_every > self.end_step)

    def _skipped(self, step: int) -> None:
        """An update skipped (no gradient, NaN or inf): at the schedule's last, the density it leaves
        is checked all the same (every process skips alike: the window's count and finiteness are
        reduced, the weights are the same)."""
        if self._last_update(step):
            self._warn_missed_target(step)
        return None

    def _warn_missed_target(self, step: int) -> None:
        """Warn once, at the schedule's last update, when the editable layers' live synapses miss
        the target density's count by more than one ensemble per layer (whole ensembles explain
        less: each policy meets it to within half of one): a line search that vetoed the late
        cuts leaves the network there for good, and the final density would be the only sign.
        Decided from masks and events every process shares (the line search decides from reduced
        losses), so all processes warn alike, with no collective."""
        crawl_goal = getattr(self.policy, "follows_density", True)  # (crawl: unless set_goal gave its own)
        if (self.density is None or self.conn.fixed_density is not None or not crawl_goal
                or self._warned_missed):
            return
        editable = self.editable()
        live = sum(int(torch.count_nonzero(self.conn.masks[n])) for n in editable)
        try:
            target = global_synapse_target(self, self.density)
        except ValueError as err:  # protected layers grown by hand past the target: a warning never raises
            self._warned_missed = True
            warn_user(f"the controller's schedule ended at step {step} with the network at density "
                      f"{self.conn.density():.4g}, not its target {self.density:g}: {err}")
            return
        if abs(live - target) <= sum(1.0 if self._sizes(n) is None else float(self._sizes(n).max()) for n in editable):
            return
        self._warned_missed = True
        fractions = [e["line_search_fraction"] for e in self.events
                     if e["kind"] == "update" and e.get("line_search_fraction") is not None]
        vetoed, halved = sum(f == 0.0 for f in fractions), sum(0.0 < f < 1.0 for f in fractions)
        if vetoed or halved:
            cause = (f"the line search (holdout_loss=) rolled back {vetoed} and halved {halved} of the "
                     f"{len(fractions)} updates it checked (an edit that raises the held-out loss by more than "
                     f"line_search_tolerance={self.line_search_tolerance:g} is halved or rolled back). Give the "
                     f"schedule room: a later end_step (now {self.end_step}) or more updates (a lower update_every, "
                     f"now {self.update_every}), a larger line_search_tolerance (the held-out loss rise an edit may "
                     f"cost), or more line_search_tries (now {self.line_search_tries}, the halvings an update may try)")
        else:
            cause = ("no line search cut an update: see the warnings above (no update before end_step, min_density "
                     "floors, hand edits, updates skipped for NaN or missing gradients)")
        warn_user(f"the controller's schedule ended at step {step} with the network at density "
                  f"{self.conn.density():.4g}, not its target {self.density:g} (the editable layers hold {live:,} live "
                  f"synapses where {target:,} were due): {cause}")
