"""How the controller applies an edit plan: the plan checked (refused before anything changes when
a policy got it wrong), its masks set with the grown synapses' initial values, and the line search
on held-out loss that keeps the plan, halves it or rolls it back (:class:`~adaptive.rollback.EditSnapshot`
saves what a try can change), then the event the update logs, with the synapses it pruned and grew
(counted by the sizes of their ensembles). As :class:`ControllerEditsMixin`, which
:class:`~adaptive.controller.Controller` inherits.

Every try is decided from agreed values (held-out losses averaged over the processes, plans made
from reduced statistics), so every process keeps, halves or rolls back alike.
"""
from __future__ import annotations

import math
import numbers
from typing import Dict, Optional

import numpy as np
import torch

from .connectome import EnsembleRuleError
from .counts import real_number
from .distributed import agreed_call, all_reduce_mean_
from .plan_checks import check_plan
from .policies.base import EditPlan, global_synapse_target, synapse_targets
from .rollback import EditSnapshot
from .warn import warn_user


def holdout_number(value) -> float:
    """``holdout_loss()``'s return ``value`` as a float: a real number (:func:`adaptive.counts.real_number`; a numpy
    array of one number too). Anything else is a ValueError naming the fix (it failed with torch's "only one element
    tensors can be converted" for a per-example loss, and took the text "0.5")."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":  # (numbers: read as the tensor of them)
        value = torch.from_numpy(value)
    if real_number(value):
        return float(value.item() if isinstance(value, torch.Tensor) else value)
    if isinstance(value, torch.Tensor):
        what = f"a {type(value).__name__} of shape {tuple(value.shape)} ({value.dtype})"
        fix = ("reduce it to the mean held-out loss (.mean(), or the loss's reduction='mean')" if value.numel() != 1
               else "return a real number")
    else:
        what = "None" if value is None else f"{type(value).__name__} {value!r}"
        fix = ("return the loss (a missing return statement?)" if value is None else
               "return a number, not text" if isinstance(value, str) else "return a real number")
    raise ValueError(f"holdout_loss() must return the mean held-out loss as a real number (a float, or a tensor of "
                     f"one element), and returned {what}: {fix}; the update is not made, and the connectome and "
                     "the policy stay as they were")


# The line search's tolerance before it was recorded in the controller's state and before it defaulted
# by mode: every state saved without it ran with this (in train mode too)
FORMER_LINE_SEARCH_TOLERANCE = 0.0


def line_search_tolerance_problem(value) -> Optional[str]:
    """What is wrong with ``value`` as a ``line_search_tolerance`` (None: nothing): it must be a
    number >= 0 (``math.inf`` keeps every update). NaN would keep an update only where the loss is
    NaN too; a negative tolerance would roll back every update that does not lower the held-out loss
    by more than its size (``-inf``: every update), which no line search means."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        return f"it must be a number, got {value!r}"
    if value < 0:
        return (f"it must be >= 0, got {value!r}: a negative tolerance would roll back every update that does not "
                "lower the held-out loss by more than its size; give 0.0 to veto every rise")
    return None


def _roll_back(before: EditSnapshot, error: BaseException) -> None:
    """Put back what ``before`` saved after ``error`` broke off a line search with a try set (the
    caller then raises ``error``), and say so on the error. A rollback that raises in turn (an edit
    listener's error, memory) is named on ``error``, which still goes on: it was not masked by it.

    What the snapshot covers is put back: masks, weights, optimizer state. Not what planning the
    update already did: the gradient window stays reduced, not reset (the next update reads it with
    the steps that follow), the policy's and estimators' own state stay advanced, and no event is
    logged. On several processes an error on one of them leaves the others waiting in the next
    collective (the held-out loss's all-reduce) until it times out; each rolls back as its error
    comes. Resume such a run from its last checkpoint."""
    try:
        changed = before.restore(notify=False)
    except BaseException as failed:  # named on ``error``, which the caller raises
        error.add_note(f"(the line search's rollback of the try set when this was raised failed too ({type(failed).__name__}: "
                       f"{failed}): the connectome may hold part of that try; load the last checkpoint)")
        return
    error.add_note("(the line search's try set when this was raised was rolled back: masks, weights and optimizer "
                   "state are as they were before this update; no event was logged)")
    try:
        if changed:
            before.conn._notify_edit_listeners(changed)
    except Exception as failed:  # (the rollback is whole: the listener's error is named, not raised)
        error.add_note(f"(an edit listener told of that rollback raised {type(failed).__name__}: {failed})")


class ControllerEditsMixin:
    """Applying edit plans for :class:`~adaptive.controller.Controller` (it reads the controller's
    connectome, policy, protected layers, density, grow init and line-search settings)."""

    def _masks_from_plan(self, plan: EditPlan) -> Dict[str, torch.Tensor]:
        new = {}
        for n in [n for n in self.conn.names if n in plan.prune or n in plan.grow]:  # the layers' order, not a set's:
            # (a set of names iterates in an order that differs between processes and runs, and so did a
            # grow_init callable's calls, the optimizer-state warnings and the edit listeners' dicts)
            now = self.conn._ensemble_mask(n)  # shared with the connectome's cache: copied before the edit
            m = now.clone().reshape(-1)
            if n in plan.prune and plan.prune[n].numel():
                m[plan.prune[n].to(m.device)] = False
            if n in plan.grow and plan.grow[n].numel():
                m[plan.grow[n].to(m.device)] = True
            new[n] = m.view(now.shape)
        return new

    def _grow_init_fn(self):
        if self.grow_init == "random":
            def f(name, grown):
                p, layer = self.conn.params[name], self.conn.layers[name]
                fan_in = max(1, layer.numel // layer.out_units)  # one output unit's synapses (a transposed conv's too)
                g = self._generator(self.step_count, 10_000 + self._layer_index[name])
                return torch.randn(p.shape, generator=g) * (0.01 / fan_in**0.5)

            return f
        return self.grow_init

    def _set_plan_masks(self, plan: EditPlan) -> None:
        """Apply ``plan``'s masks, validated: an edit that breaks a granularity's rule (n:m, or a
        plugin granularity's ``violation``) is refused before anything changes, so every connectome
        the controller writes loads again. Other errors (a grow_init callable's bad tensor) keep
        their own message."""
        masks = self._masks_from_plan(plan)
        try:
            self.conn.set_ensemble_masks(masks, grow_init=self._grow_init_fn(), validate=True)
        except EnsembleRuleError as e:
            raise ValueError(f"policy {self.policy.name!r}'s edit breaks a rule of the connectome's ensembles ({e}); "
                             "use a policy that keeps that rule (for n:m: magnitude, utility or balanced) or another "
                             "ensemble") from None

    def _check_plan(self, plan) -> None:
        """Refuse, before anything changes, a plan a policy (a plugin's, say) got wrong: unknown layers,
        indices that are not flat integer ensemble indices in range, an ensemble both pruned and grown,
        or scores not aligned with the indices (:func:`adaptive.plan_checks.check_plan`)."""
        check_plan(self, plan)

    def _apply(self, plan: EditPlan, step: int, kind: str = "update", line_search: bool = True) -> dict:
        self._check_plan(plan)
        n_prune, n_grow = plan.counts()
        use_ls = bool(line_search and self.holdout_loss is not None and (n_prune or n_grow))
        # what the plan can change, saved only where a rollback may need it (every try is a part of the plan)
        before = EditSnapshot(self.conn, plan) if use_ls else None
        name = self.policy.name  # an instance of a class never registered: '?', so its class instead
        event = {"step": step, "kind": kind, "policy": name if name != "?" else type(self.policy).__name__}
        loss_before = loss_after = None
        fraction = 1.0
        if use_ls:
            loss_before = self._holdout()
        # a policy may allow a plan a loss rise of its own (e.g. the estimated cost of pruning it must do); a part of
        # it (EditPlan.shrink) is allowed that part of it, read at each try
        current = plan
        try:
            for attempt in range(self.line_search_tries + 1 if use_ls else 1):
                if current.counts() != (0, 0):
                    self._set_plan_masks(current)
                if not use_ls:
                    break
                loss_after = self._holdout()
                tolerance = self.line_search_tolerance if current.tolerance is None else current.tolerance
                if tolerance == float("inf") or loss_after - loss_before <= tolerance:  # inf: a required edit, NaN or not
                    break
                before.restore()
                loss_after = loss_before
                if attempt == self.line_search_tries or plan.atomic:
                    fraction, current = 0.0, EditPlan()
                    break
                fraction, current = self._shrink(plan, fraction * 0.5)
                if current.counts() == (0, 0):  # rounding left nothing to try: the update is rolled back
                    fraction = 0.0
                    break
        except BaseException as error:  # holdout_loss, a grow_init or an edit listener raised (an interrupt too)
            if before is not None:
                _roll_back(before, error)
            raise
        if use_ls and fraction == 0.0 and not math.isfinite(loss_before):
            # (only where the update was in fact rolled back: from +inf, an edit that makes the loss finite is kept)
            self._warn_nonfinite_holdout(step, loss_before)
        pruned_syn, grown_syn = self._synapse_counts(current)
        event.update(
            pruned=pruned_syn,
            grown=grown_syn,
            pruned_ensembles=current.counts()[0],
            grown_ensembles=current.counts()[1],
            **self._density_fields(),
            boundaries=plan.boundaries,
            **self._estimates(current, step),
            actual_loss_change=(loss_after - loss_before) if use_ls else None,
            holdout_loss=loss_after,
            line_search_fraction=fraction if use_ls else None,
        )
        self.events.append(event)
        return event

    def _warn_nonfinite_holdout(self, step: int, loss: float) -> None:
        """Warn, once per controller, that the held-out loss before an edit that was rolled back is NaN or inf:
        no rise can be measured from it (NaN compares false), so the line search rolls the update back, as it
        will every one while the loss stays so (from +inf, only an edit that makes it finite is kept). The connectome's weights are finite here (an update skips where
        they are not): the held-out data, the loss function or another parameter is at fault. Without
        this, a run whose held-out set holds one corrupt example rolled back every update in silence
        until the schedule's end."""
        if getattr(self, "_warned_nonfinite_holdout", False):
            return
        self._warned_nonfinite_holdout = True
        warn_user(f"step {step}: holdout_loss() gave {loss} before the edit, so the line search cannot measure the "
                  "edit's effect (a NaN compares false with every tolerance) and rolls this update back, as it will "
                  "every update while the held-out loss stays so: check the held-out data for NaN or inf (a corrupt "
                  "example), the loss function and the model's parameters outside the connectome (biases, norms), or "
                  "build the controller without holdout_loss= (or with line_search_tolerance=math.inf, which keeps "
                  "every update)")

    def _holdout(self) -> float:
        """``holdout_loss()`` averaged over processes (as it is on one process): each process may
        score its own shard, and every process must accept, halve or roll back alike. All processes
        call this equally often, since the tries depend only on agreed values (these means, plans
        made from reduced statistics). An error ``holdout_loss()`` raises on some processes only (a
        shard only one reads) is raised by every process alike (:func:`adaptive.distributed.agreed_call`),
        naming the processes it came from, so that each rolls its edit back instead of the others waiting
        in this mean until the process group's timeout."""
        def score() -> torch.Tensor:
            with torch.no_grad():
                return torch.tensor([holdout_number(self.holdout_loss())], dtype=torch.float64)

        loss = agreed_call(score, passed_why="each process scores holdout_loss() on its own (its own shard, say)")
        all_reduce_mean_([loss])
        return float(loss)

    def _shrink(self, plan: EditPlan, fraction: float):
        """``(fraction, plan cut to its best fraction)`` for a line search. Prunes and grows are cut
        by count, so where a swap plan that holds the density on its target mixes ensembles of
        different sizes (a 15-synapse block pruned, the 4-synapse ones that replaced it cut) the cut
        could leave the target for good: such a cut is halved further (to nothing at worst) until it
        lands within half an ensemble of the target: the network's for the global budget (and the
        policies that rank all layers together or hold only the network's count), each layer's for a
        layer budget. A plan still on its
        way to the target (or one that only prunes or only grows) is cut as it is: the next update
        goes on from there. Where every ensemble holds as many synapses, cuts are as they always were."""
        groups = lambda n: self.conn.granularities[n].constraint_groups(self.conn.layers[n].shape)  # noqa: E731
        current = plan.shrink(fraction, groups=groups)
        if self.density is None or 0 in plan.counts():
            return fraction, current
        editable = self.editable()
        sizes = {n: self._sizes(n) for n in editable}
        extent = {n: (1.0, 1.0) if v is None else (float(v.min()), float(v.max())) for n, v in sizes.items()}
        if len({x for e in extent.values() for x in e}) == 1:
            return fraction, current  # one ensemble size: a cut is off by whole ensembles at most, as ever
        per_layer = (synapse_targets(self, self.density)[0]
                     if self.policy.holds_layer_counts and not self.policy.ranks_globally else None)
        if per_layer is None:  # one count over the network
            regions = {"*": (editable, global_synapse_target(self, self.density), max(e[1] for e in extent.values()) / 2)}
        else:
            regions = {n: ([n], per_layer[n], extent[n][1] / 2) for n in editable
                       if (n in plan.prune or n in plan.grow) and n in per_layer}
        live = {n: int(torch.count_nonzero(self.conn.masks[n])) for n in editable}

        def off(p, names, target):  # how far the plan ``p`` would leave the layers ``names`` from ``target``
            pruned, grown = self._synapse_counts(p, set(names), sizes)
            return abs(sum(live[n] for n in names) - pruned + grown - target)

        held = [(names, target, half) for names, target, half in regions.values() if off(plan, names, target) <= half]
        while current.counts() != (0, 0) and any(off(current, names, target) > half for names, target, half in held):
            fraction *= 0.5
            current = plan.shrink(fraction, groups=groups)
        return fraction, current

    def ensemble_sizes(self, name: str) -> Optional[torch.Tensor]:
        """Synapses in each of layer ``name``'s ensembles (a flat tensor, in the order of its ensemble
        mask); None where each ensemble holds one synapse."""
        if name not in self.conn.layers:
            raise KeyError(f"no layer {name!r} in the connectome: its layers are {list(self.conn.layers)[:8]}"
                           f"{' ...' if len(self.conn.layers) > 8 else ''}")
        sizes = self._sizes(name)
        return None if sizes is None else sizes.clone()

    def _sizes(self, name: str) -> Optional[torch.Tensor]:
        """:meth:`ensemble_sizes`, shared (read it, never edit it): a layer's shape and granularity
        never change, so its sizes are pooled once (a pooling of the whole weight, which every
        update repeated for every layer of its plan)."""
        cache = self.__dict__.setdefault("_size_cache", {})
        g, shape = self.conn.granularities[name], self.conn.layers[name].shape
        key = (name, tuple(shape))
        held = cache.get(key)
        if held is None or held[0] is not g:  # by identity: a plugin's dataclass granularity may not hash
            held = cache[key] = (g, None if tuple(g.ensemble_shape(shape)) == tuple(shape)
                                 else g.ensemble_sizes(shape).reshape(-1).round())
        return held[1]

    def _synapse_counts(self, plan: EditPlan, names=None, sizes=None):
        """Synapses pruned and grown by a plan (ensembles can hold several), in the layers ``names``
        (all: None); ``sizes``: :meth:`ensemble_sizes` of those layers, where already at hand."""
        counts = []
        for side in (plan.prune, plan.grow):
            total = 0
            for n, idx in side.items():
                if names is not None and n not in names:
                    continue
                size = sizes[n] if sizes is not None else self._sizes(n)
                total += int(idx.numel()) if size is None else int(size[idx.cpu()].long().sum())
            counts.append(total)
        return tuple(counts)
