"""The growth/prune controller: edits the connectome during training from measured utility.

Two ways to drive it:
- attached to an optimizer (``Controller(conn, optimizer, ...)``): its step hooks observe the dense
  gradients, mask them, re-mask the weights after the step and run due updates. With Accelerate's
  gradient accumulation the inner optimizer only steps on sync steps, so the controller observes
  the accumulated gradient once per real step, never a partial one.
- explicitly: ``ctrl.observe()`` after ``backward()`` and ``ctrl.step()`` once per step. This is
  the only way in ``mask_only`` mode, where no optimizer exists.

Every decision is computed from statistics reduced across processes and from randomness folded
from (seed, step, layer), so all processes reach the same masks without broadcasting them.

This module holds the orchestration (construction, wiring to the optimizer, observing, scoring,
running an update); applying an edit plan (its checks, masks, line search and event) is in
:mod:`adaptive.controller_edits`, the controller's saved state in :mod:`adaptive.controller_state`,
its event figures and end-of-schedule warnings in :mod:`adaptive.controller_reports`, the checks of
an estimator's scores in :mod:`adaptive.score_checks`.
"""
from __future__ import annotations

import copy
import inspect
import math
import os
import sys
import weakref
from typing import Callable, Dict, Iterable, List, Optional

import torch

from .budgets import budget_names, get_budget
from .counts import unit_fraction
from .atomic import write_text
from .connectome import Connectome, eager
from .connectome import EnsembleRuleError  # noqa: F401  (importable from here, as before)
from .controller_edits import ControllerEditsMixin, line_search_tolerance_problem
from .controller_reports import ControllerReportsMixin
from .controller_state import ControllerStateMixin
from .controller_state import _holds_tensors  # noqa: F401  (importable from here, as before)
from .amp_observe import check_scaler, finite_layers, split_scaled
from .counts import whole_number  # noqa: F401  (also importable from here, as before)
from .discovery import _as_patterns, aliases, container_hint
from .distributed import check_masks_agree, is_distributed, world_size
from .distributed import all_reduce_mean_  # noqa: F401  (importable from here, as before)
from .name_patterns import PatternSet
from .optim_state import _is_zero_redundancy, unwrap_optimizer
from .registry import is_flag, near_misses
from .policies.base import _POLICIES, EditPlan, get_policy, keep_plan, live_first, synapse_targets
from .policies.base import global_synapse_target  # noqa: F401  (importable from here, as before)
from .rollback import EditSnapshot  # noqa: F401  (importable from here, as before)
from .score_checks import _check_pooled, _check_scores, _check_shape, _owned, _ranks_nothing
from .score_checks import _describe, _nonfinite_weights  # noqa: F401  (importable from here, as before)
from .schedules import get_decay
from .utility import GradientStats, UtilityContext, get_estimator
from .utility.base import Estimator, estimator_label, scores_side
from .finite import finite_flags
from .utility.ties import ZERO_COST_ORDERS, order_zero_costs
from . import unattached
from .warn import warn_user

__all__ = ["Controller", "INITS", "GROW_INITS", "DEFAULT_ESTIMATOR", "DEFAULT_LINE_SEARCH_TOLERANCE",
           # importable from here, as before they moved out
           "EnsembleRuleError", "whole_number", "all_reduce_mean_", "global_synapse_target",
           "EditSnapshot"]
# private names other modules and tests import from here (not in __all__: a star import takes the
# public names only); named here, so that the import is used
_REEXPORTED = (_holds_tensors, _describe, _nonfinite_weights)

INITS = ("random", "magnitude", "estimator")
GROW_INITS = ("zero", "original", "random")
# The estimator of policies that take one when none is named: in train mode curvature (the
# consistency estimator's first-order removal term sends first the weights whose whole removal hurts
# most on a ViT: recipes/benchmarks/removal_orders_vit.py; curvature was also chosen on held-out
# data at every density of recipes/benchmarks/dst_mnist.py), in mask_only mode consistency.
EDIT_FRACTION = 0.3  # the share of the live ensembles an update edits at first, by default
DEFAULT_ESTIMATOR = {"train": "curvature", "mask_only": "consistency"}
# The held-out rise an update may cause under a line search: in mask_only mode none (the method
# vetoes every rise); in train mode any (measured, never vetoed): a prune costs loss at once and a
# growth at 0.0 saves nothing yet, so tolerance 0 vetoed most of gradual pruning's edits and a
# tolerance of a few standard errors of the held-out loss vetoed nothing (line_search_train.py)
DEFAULT_LINE_SEARCH_TOLERANCE = {"train": math.inf, "mask_only": 0.0}
# An edit decay's value this far past 0 or 1 is float error (a float32 1.0000001), taken as that end


def _named(layers: List[str]) -> tuple:
    """``(shown, argument)`` for an error about ``layers``: the first four names and how many more,
    and what to pass to protect=/exclude= (the list itself, or "[...] with their names" past four)."""
    shown = ", ".join(layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
    return shown, repr(layers) if len(layers) <= 4 else "[...] with their names"


def _prune_only_policies() -> List[str]:
    """The registered policies that take ``estimator=`` and never grow: those an estimator of removal
    costs alone can serve (gmp and magnitude among the built-in ones)."""
    return sorted(n for n, cls in _POLICIES.items()
                  if getattr(cls, "grow_by", None) is None and str(getattr(cls, "drop_by", "")).startswith("estimator"))


class Controller(ControllerEditsMixin, ControllerStateMixin, ControllerReportsMixin):
    """Edits ``conn`` at update steps from measured utility.

    Args:
        conn: the connectome to edit.
        optimizer: optional; when given, the controller drives itself from its step hooks.
        policy: "magnitude", "gmp", "set", "rigl", "utility", "balanced", "threshold" (registry).
        density: target fraction of live synapses over all prunable layers, in (0, 1].
        budget: "global", "uniform", "erk", "er": how the density is shared between layers. The
            policies that rank all layers together (threshold, crawl) apply none: they refuse any
            but the default and "global", as they refuse ``min_density``.
        update_every: steps between updates (>= 1).
        start_step / end_step: first update step / the step where edits stop (edit fraction reaches
            0; gmp reaches its density). Without ``end_step`` (None, the default) the edit fraction
            never decays and set/rigl/utility/balanced edit at every update to the end of training;
            threshold removes toward its density as fast as the edit limit allows (at most
            ``edit_fraction`` of the live ensembles an update: 30% of them at the first, by default,
            not all the way to its density at once) and edits at every update after; gmp refuses it.
        edit_fraction: fraction of live ensembles edited at an update, decaying (``edit_decay``:
            "cosine", "linear", "constant") to 0 at ``end_step``. gmp and magnitude prune to their
            density and read neither; crawl keeps a limit of its own (``get_policy("crawl",
            edit_fraction=...)``) and refuses a value other than the defaults, which it would ignore.
        estimator: utility estimator for the utility/balanced/threshold policies (default
            ``curvature`` in train mode, ``consistency`` in mask_only mode) and gmp's removal order
            (magnitude by default): a registry name, or an Estimator instance built with options
            (``get_estimator("obd", damping=1e-6)``).
        grow_init: "zero" (default in train mode), "original" (default in mask_only), "random", or
            a callable ``f(name, grown_mask) -> tensor`` (the weight's shape; a wrong one raises at
            the edit, before anything changes); anything else is refused at construction.
        min_density: per-layer floor of the budget (``min_density`` of each editable layer's synapses,
            rounded up to whole ensembles: a floor of 3 synapses in 40-synapse neurons keeps one
            neuron, raising that layer's count above its budget's share; a density the rounded-up
            floors cannot fit is refused at construction). protect: name patterns of layers kept as they are,
            never edited (a budget counts them at the synapses they hold): a list, or a string split
            at commas as include=/exclude= are (``protect="0,3"``); as there, a pattern matches a weight's
            name or its layer's, and a tied weight answers to every name that holds it.
        init: how a sparse policy sparsifies at construction: "random" (train default),
            "magnitude" (mask_only default; refused where the weights hold NaN or inf) or
            "estimator" (its removal costs; refused for an
            estimator that scores from gradients alone, such as curvature, obd or taylor: a new
            controller has observed none, so every score would be 0).
        window: observe gradients only during the last ``window`` steps before each update
            (None: every step since the last update).
        batch_size: the number of samples each observed gradient averages, which lets second-order
            estimators recover the per-sample Fisher: the per-process batch, times the number of
            processes when DDP averages gradients across them before the step (train mode). An
            integer >= 1, or None (the Fisher is then the batch gradients' second moment, about batch_size
            times too small: so are the curvature terms of obd, consistency and curvature, and the
            ``est_loss_change`` events report from them). A short batch (an epoch's last) counts as
            one observation like the others: the window averages batch-mean gradients.
        holdout_loss: optional callable returning the mean loss on held-out training data (a real number, or a
            tensor of one element: anything else is refused at the update, which then edits nothing); when given,
            each update is checked and shrunk (halved, up to ``line_search_tries`` times, an integer
            >= 0; 0: the whole update or nothing) or rolled back when it raises that loss by more
            than ``line_search_tolerance`` (or by more than the plan's own ``tolerance`` when its
            policy sets one), and its event logs the measured change (``actual_loss_change``).
            ``line_search_tolerance`` (a number >= 0, not NaN; ``math.inf``: keep every update, only
            measure it) defaults by the connectome's mode: 0.0 in mask_only mode, where an edit
            changes no weight and vetoing every rise is the method; ``math.inf`` in train mode, where
            a prune always costs some held-out loss at once and a synapse grown at 0.0 saves nothing
            yet, so a finite tolerance held gradual pruning short of its density and gained no
            accuracy (``recipes/benchmarks/line_search_train.py``: lenet300 on MNIST at density 0.1,
            tolerance 0 left threshold at 0.34-0.53 and gmp at 0.44-0.69; 3 standard errors of the
            held-out loss vetoed nothing). Pass a number to veto in train mode too: an explicit 0.0
            behaves as the default did before. The tolerance is saved with the controller's state: a
            controller built without one that loads a state goes on with the state's (a state saved
            before it was recorded ran with 0.0, in train mode too), and one built with another is
            refused. Across processes, give it on every
            process: each may score its own shard (a loader prepared by Accelerate); the controller
            averages the losses over the processes before every decision (equal-size shards give
            the mean over the whole held-out set; a NaN on one process makes the mean NaN, which
            rejects the try on every process; a loss already NaN or inf before an edit rolls back
            every update while it stays so, unless an edit makes an inf finite, which the first one rolled
            back warns of), and the events log that mean.
        verify: check at every update that all processes hold identical masks (a
            :class:`~adaptive.distributed.MaskMismatchError` otherwise, naming the step). None (the
            default): wherever a process group of several processes runs (DDP, ``accelerate
            launch``), as masks that part (a seed offset by the rank, a controller built on weights
            that differ by process) would otherwise part the weights silently.
        seed: an integer (numpy and torch integers too), folded with the step for all randomness.
        zero_cost_order: how removal costs of exactly 0 (synapses no gradient reached in the
            window) are ordered among themselves: "magnitude" (smaller weights first,
            :mod:`adaptive.utility.ties`) or "index" (by position, as before; ``recipes/benchmarks/
            zero_cost_ties.py`` compares the two). Unset: "magnitude", or the order a loaded state
            ran with ("index" for a state saved before the order was recorded).
        **policy_kwargs: passed to the policy (e.g. ``prune_boundary`` for threshold); an argument
            neither the Controller nor the policy takes is a ValueError naming the ones it does.

    A window whose gradients hold NaN or inf (a non-finite loss or gradient in any batch, on any
    process) is left out: its update is skipped, the first time with a warning, and counted in
    ``nonfinite_windows``; so is an update while an editable layer's weights hold NaN or inf.
    """

    nonfinite_windows = 0  # updates skipped for NaN or inf gradients or weights (see update)
    skipped_observations = 0  # observe(scaler=...) calls leaving layers out: the scaler skips their optimizer's step (not saved)
    _skipped_seen = 0  # skipped_observations at the last update that found a window empty, or partly so
    _warned_missed = False  # the missed-target warning was given (see _warn_missed_target): saved with the state

    @torch.inference_mode(False)  # its statistics and state are updated in place at every step: built under
    # torch.inference_mode() (a notebook cell), they were inference tensors, and the first update outside it failed
    def __init__(
        self,
        conn: Connectome,
        optimizer=None,
        policy: str = "rigl",
        density: Optional[float] = None,
        budget: str = "erk",
        update_every: int = 100,
        start_step: int = 0,
        end_step: Optional[int] = None,
        edit_fraction: float = EDIT_FRACTION,
        edit_decay: str = "cosine",
        estimator=None,
        grow_init=None,
        min_density: float = 0.0,
        protect: Iterable[str] | str = (),
        init: Optional[str] = None,
        window: Optional[int] = None,
        batch_size: Optional[int] = None,
        holdout_loss: Optional[Callable[[], float]] = None,
        line_search_tolerance: Optional[float] = None,
        line_search_tries: int = 3,
        verify: Optional[bool] = None,
        seed: int = 0,
        zero_cost_order: Optional[str] = None,
        **policy_kwargs,
    ):
        if not isinstance(conn, Connectome):
            raise TypeError(f"Controller needs an adaptive.Connectome, got {type(conn).__name__}")
        if isinstance(optimizer, str):
            raise TypeError(f"Controller's second argument is the optimizer (or None), got the string {optimizer!r}: "
                            f"pass the policy by name, policy={optimizer!r}")
        if whole_number(update_every) is None or update_every < 1:
            raise ValueError(f"update_every must be an integer >= 1, got {update_every!r}")
        update_every = whole_number(update_every)
        if whole_number(start_step, floats=True) is None or start_step < 0:
            raise ValueError(f"start_step must be an integer >= 0 (the first step edits may happen at), got "
                             f"{start_step!r}")
        start_step = whole_number(start_step, floats=True)
        if end_step is not None and whole_number(end_step, floats=True) is None:
            raise ValueError(f"end_step must be None or an integer step (no edits from it on), got {end_step!r}")
        end_step = None if end_step is None else whole_number(end_step, floats=True)
        if end_step is not None and end_step <= start_step:
            raise ValueError(f"end_step ({end_step}) must come after start_step ({start_step})")
        # fractions: a number (an int, a numpy number or a one-value tensor too, as a keep plan takes a density),
        # not text, a bool, None or NaN (min_density=None and '0.1' failed with a bare TypeError, True was 1.0)
        if unit_fraction(edit_fraction, slack=0.0) is None:
            raise ValueError(f"edit_fraction must be a number in [0, 1] (the share of live synapses an update may "
                             f"edit), got {edit_fraction!r}")
        edit_fraction = unit_fraction(edit_fraction, slack=0.0)
        if unit_fraction(min_density, slack=0.0) is None:
            raise ValueError(f"min_density must be a number in [0, 1] (the share of each layer's synapses kept at "
                             f"least; 0: no floor), got {min_density!r}")
        min_density = unit_fraction(min_density, slack=0.0)
        if density is not None and not unit_fraction(density, slack=0.0):  # (None or 0.0: outside (0, 1])
            raise ValueError(f"density must be None or a number in (0, 1] (the share of synapses kept), got "
                             f"{density!r}")
        density = None if density is None else unit_fraction(density, slack=0.0)
        if not isinstance(budget, str):
            raise TypeError(f"budget must be a layer budget's name, one of {budget_names()}, got "
                            f"{type(budget).__name__} {budget!r}")
        if window is not None and (whole_number(window) is None or window < 1):
            raise ValueError(f"window must be None or an integer >= 1, got {window!r}")
        window = None if window is None else whole_number(window)
        if init is not None and init not in INITS:
            raise ValueError(f"unknown init {init!r}: use one of {INITS}")
        if batch_size is not None and (whole_number(batch_size) is None or batch_size < 1):
            raise ValueError(f"batch_size must be None or the number of samples each observed gradient averages (an "
                             f"integer >= 1), got {batch_size!r}")
        batch_size = None if batch_size is None else whole_number(batch_size)
        if whole_number(line_search_tries) is None or line_search_tries < 0:
            raise ValueError(f"line_search_tries must be an integer >= 0 (the halvings an update may try before it is "
                             f"rolled back; 0: all or nothing), got {line_search_tries!r}")
        line_search_tries = whole_number(line_search_tries)
        if verify is not None and not is_flag(verify):  # ("no" is true: it switched the check on)
            raise ValueError(f"verify must be None (check wherever several processes run), True or False, got {verify!r}")
        verify = None if verify is None else bool(verify)
        problem = None if line_search_tolerance is None else line_search_tolerance_problem(line_search_tolerance)
        if problem:
            raise ValueError(f"line_search_tolerance must be None (the mode's default) or a number >= 0, the held-out "
                             f"loss rise an update may cause and still be kept (math.inf: keep every update, only "
                             f"measure it): {problem}")
        if whole_number(seed, floats=True) is None:
            raise ValueError(f"seed must be an integer (a Python, numpy or torch integer), got {seed!r}: pass a whole "
                             f"number such as seed=0")
        if zero_cost_order is not None and zero_cost_order not in ZERO_COST_ORDERS:
            raise ValueError(f"unknown zero_cost_order {zero_cost_order!r}: use one of {ZERO_COST_ORDERS}")
        if not (grow_init is None or callable(grow_init) or (isinstance(grow_init, str) and grow_init in GROW_INITS)):
            raise ValueError(f"unknown grow_init {grow_init!r}: use {', '.join(map(repr, GROW_INITS))} or a callable "
                             "f(name, grown_mask) -> tensor")
        if holdout_loss is not None and not callable(holdout_loss):
            raise TypeError(f"holdout_loss must be None or a callable taking no arguments that returns the loss on "
                            f"held-out data, got {type(holdout_loss).__name__}: wrap a loader in a function, e.g. "
                            "holdout_loss=lambda: adaptive.mask_only.evaluate(model, holdout_loader)[0]")
        try:
            self.policy = get_policy(policy, **policy_kwargs)
        except ValueError as e:  # a mistyped Controller option lands in policy_kwargs: name the one it meant
            own = [n for n in inspect.signature(Controller).parameters if n not in ("conn", "policy_kwargs")]
            hint = near_misses([k for k in policy_kwargs if repr(k) in str(e)], own, "the Controller's ")
            if not hint:
                raise
            raise ValueError(f"{e}{hint}") from None
        nm = conn.fixed_density
        if nm is not None and density is None:
            density = nm  # n:m fixes the density: it need not be given
        if nm is not None and abs(float(density) - nm) > 1e-9:
            raise ValueError(f"ensemble {conn.ensemble!r} fixes the density at {nm:g} (n of every m kept), so "
                             f"density={density!r} cannot be met: pass density={nm:g} or leave it out")
        if nm is not None and min_density > nm:  # (every layer keeps n of every m: a floor up to that holds by itself)
            raise ValueError(f"ensemble {conn.ensemble!r} keeps n of every m synapses, density {nm:g} in every layer, so "
                             f"min_density={min_density!r} cannot be held: lower it to {nm:g} or less, or leave it out")
        if density is None and self.policy.needs_density:
            raise ValueError(f"policy {self.policy.name!r} needs a target density in (0, 1]")
        total = conn.num_synapses()
        if density is not None and int(round(density * total)) == 0 and total > 0:
            raise ValueError(f"density {density!r} keeps round({density!r} x {total:,}) = 0 of the connectome's {total:,} "
                             f"synapses, a network with no connection: use a density of at least {1 / total:.3g} "
                             "(one synapse), in practice far more")
        self.budget_fn = get_budget(budget)
        self.budget = budget
        keeps_floors = self.policy.keeps_floors
        if keeps_floors is None:
            keeps_floors = not self.policy.ranks_globally
        if not keeps_floors and min_density > 0:
            raise ValueError(f"policy {self.policy.name!r} ranks the ensembles of all layers together and keeps no "
                             f"per-layer floor, so min_density={min_density} would be ignored: keep a layer with "
                             "protect=[...], or use a policy that keeps floors (threshold, or one that applies layer "
                             "budgets: utility, rigl, set, gmp, magnitude)")
        if self.policy.ranks_globally and budget not in ("erk", "global"):  # "erk": the default, unused here too
            raise ValueError(f"policy {self.policy.name!r} ranks the ensembles of all layers together (as the 'global' "
                             f"budget does), so budget={budget!r} would be ignored: leave budget out, or use a policy "
                             "that applies layer budgets (utility, rigl, set, gmp, magnitude)")
        own = getattr(self.policy, "own_edit_limit", None)
        ignored = ([f"edit_fraction={edit_fraction!r}"] if edit_fraction != EDIT_FRACTION else []) + (
            [f"edit_decay={edit_decay!r}"] if not (isinstance(edit_decay, str) and edit_decay in ("cosine", "constant")) else [])
        if own and ignored:
            fix = "leave " + ("them" if len(ignored) > 1 else "it") + " out"
            if self.policy.name == "crawl" and edit_fraction != EDIT_FRACTION:
                fix = f"pass policy=get_policy('crawl', edit_fraction={edit_fraction!r}) for crawl's own limit, or {fix}"
            raise ValueError(f"policy {self.policy.name!r} {own}, so {' and '.join(ignored)} would be ignored: {fix}")
        if nm is not None and not self.policy.supports_nm:
            raise ValueError(
                f"ensemble {conn.ensemble!r} fixes the density at {nm:g} per group; policy {self.policy.name!r} "
                "does not support n:m: use 'magnitude', 'utility' or 'balanced'"
            )
        self.conn = conn
        self._layer_index = {n: i for i, n in enumerate(conn.names)}
        self.density = float(density) if density is not None else None
        self.update_every = update_every
        self.start_step = start_step
        self.end_step = end_step
        self.edit = get_decay(edit_decay, edit_fraction, end_step, start_step)
        # an Estimator instance: its registry name, or its class's where it is not registered (estimator_label)
        self.estimator_name = estimator_label(estimator) if isinstance(estimator, Estimator) else estimator
        uses = [x for x in (self.policy.drop_by, self.policy.grow_by) if x is not None]
        if estimator is not None and not any(x.startswith("estimator") for x in uses):
            raise ValueError(
                f"policy {self.policy.name!r} fixes its scores ({', '.join(uses)}); estimator= applies to the "
                "utility, balanced, threshold, gmp and magnitude policies"
            )
        drop_by = self._resolve(self.policy.drop_by, estimator, conn.mode)
        self.drop_est = get_estimator(drop_by)
        grow_by = self._resolve(self.policy.grow_by, estimator, conn.mode) if self.policy.grow_by is not None else None
        # one instance for both sides when they are the same estimator: a stateful one (presence,
        # evidence) learns from each window once and its restoration gains read what it learned
        self.grow_est = None if grow_by is None else self.drop_est if grow_by == drop_by else get_estimator(grow_by)
        for est, method, does in ((self.drop_est, "removal_cost", "prunes"), (self.grow_est, "restoration_gain", "grows")):
            if est is not None and not scores_side(est, method):  # refused now, not with a bare NotImplementedError later
                raise TypeError(f"policy {self.policy.name!r} {does} by estimator {estimator_label(est)!r} "
                                f"({type(est).__name__}), which does not define {method}: write {method}(ctx) in "
                                "the estimator's class" + ("" if method == "removal_cost" else
                                f", or use a policy that only prunes ({', '.join(_prune_only_policies())}) for an "
                                "estimator of removal costs alone"))
        if grow_init is None:
            grow_init = "original" if conn.mode == "mask_only" else "zero"
        self.grow_init = grow_init
        if conn.mode == "train" and grow_init != "original" and getattr(self.grow_est, "scores_by_w0", False):
            label = estimator_label(self.grow_est)
            warn_user(
                f"estimator {label} values a synapse by its presence derivative g * w0, w0 its value when present, "
                f"which in train mode is 0.0 for an absent synapse (grow_init={grow_init!r}): an absent synapse's "
                "restoration gain learns nothing from the loss and stays the value it had when it was pruned (its "
                f"starting value where it was absent from the start), so growth goes by stale values. {label} is an "
                "estimator for mask_only mode; in train mode give grow_init='original' (--controller_kw "
                "grow_init=original in recipes/adaptive.py) to value absent synapses at their original weights (those "
                "of conn.keep_original(), else the weights the controller starts from), or grow by a train-mode "
                "estimator (curvature, obd, gradient)")
        self.min_density = min_density
        pats = _as_patterns(protect, "protect")  # a string is split at commas, as include=/exclude= are
        inside = conn._pattern_inside()  # a connectome built on a wrapper: module.fc and module.* as fc and *
        if inside is not None:
            pats = [inside(p) for p in pats]
        # a tied weight answers to every name it has (ModuleB.weight = moduleA.weight: protect="b"), as in
        # include/exclude and the ensemble rules
        held = aliases(conn.model)
        names = {n: (n, conn.layers[n].module_name, *held.get(id(conn.params[n]), ())) for n in conn.names}
        patterns = PatternSet(pats)  # exact names looked up, not fnmatch-ed against every layer
        hits = {n: patterns.hits(*(x for x in names[n] if x)) for n in conn.names}
        self.protected = [n for n in conn.names if hits[n]]
        used = set().union(*hits.values())
        unused = [p for p in pats if p not in used]
        if unused:
            raise ValueError(f"protect pattern(s) {unused} matched no layer of the connectome: known layers are "
                             f"{conn.names[:5]}{'...' if len(conn.names) > 5 else ''}"
                             + container_hint(unused, [*conn.names, *(conn.layers[n].module_name for n in conn.names)]))
        if conn.mode == "train" and self.policy.grow_by is not None:
            frozen = [n for n in conn.names if n not in self.protected and not conn.params[n].requires_grad]
            if frozen:
                shown, names = _named(frozen)
                start = ("0.0 (grow_init='zero'), counted live while it does nothing" if grow_init == "zero" else
                         f"its grow_init={grow_init!r} value" if isinstance(grow_init, str) else "its grow_init callable's value")
                raise ValueError(
                    f"{len(frozen)} layer(s) are frozen (requires_grad=False): {shown}. Synapses that policy "
                    f"{self.policy.name!r} grows there would never train: each would stay at {start}. "
                    f"Leave them out of the Connectome (exclude={names}), keep their connectome fixed "
                    f"(protect={names}), or unfreeze them (weight.requires_grad_(True))"
                )
        self.init = init or ("magnitude" if conn.mode == "mask_only" else "random")
        self.window = window
        self.batch_size = batch_size
        self.holdout_loss = holdout_loss
        # unset: the mode's default, or the tolerance a loaded state ran with (a resumed run keeps it)
        self._line_search_tolerance_given = line_search_tolerance is not None
        self.line_search_tolerance = (float(line_search_tolerance) if line_search_tolerance is not None else
                                      DEFAULT_LINE_SEARCH_TOLERANCE[conn.mode])
        self.line_search_tries = line_search_tries
        self.verify = verify
        self.seed = whole_number(seed, floats=True)
        # unset: "magnitude", or the order a loaded state ran with (a resumed run keeps its order)
        self._zero_cost_order_given = zero_cost_order is not None
        self.zero_cost_order = zero_cost_order or "magnitude"
        self.step_count = 0
        self.events: List[dict] = []
        needs_g = self.drop_est.needs_gradients or (self.grow_est is not None and self.grow_est.needs_gradients)
        needs_g2 = self.drop_est.needs_second_moment or (self.grow_est is not None and self.grow_est.needs_second_moment)
        self.stats = GradientStats(conn, second_moment=needs_g2) if needs_g else None
        span = min(window or update_every, update_every)
        # the batch gradients a window holds: in mask_only mode each process's count (GradientStats.n), so a
        # window of one step over two processes has the two batches a spread needs
        batches = span * (world_size() if conn.mode == "mask_only" else 1)
        fisher = sorted({estimator_label(e) for e in (self.drop_est, self.grow_est) if getattr(e, "needs_fisher", False)})
        if fisher and batches < 2:
            warn_user(
                f"estimator {', '.join(fisher)} recovers the per-sample Fisher from the spread of the batch gradients in "
                f"a window, which needs two or more batches; a window of {span} leaves the squared batch gradient, about "
                "batch_size times too small a curvature term. Use update_every (and window) >= 2")
        # a t-statistic of one batch has no spread to divide by: evidence then adds nothing, ever, and ranks by
        # its magnitude prior alone
        spread = sorted({estimator_label(e) for e in (self.drop_est, self.grow_est)
                         if getattr(e, "needs_spread", False) and not getattr(e, "needs_fisher", False)})
        if spread and batches < 2:
            warn_user(
                f"estimator {', '.join(spread)} learns from the t-statistic of the batch gradients in a window (their "
                f"mean against their batch-to-batch spread), which needs two or more batches; a window of {span} has no "
                "spread, so it learns nothing from the loss and its scores stay its prior (evidence: the weights' "
                "magnitude, as magnitude pruning ranks them). Use update_every (and window) >= 2: window=2 or more "
                "for adaptive.optimize_connectome, --window 2 for recipes/prune_pretrained.py, --update_every 2 for "
                "recipes/adaptive.py")
        if self.stats is not None:
            self.stats._ensure()  # allocate (and touch) the window now, not inside a training step
        self._hook = None
        self.optimizer = None
        # Driven explicitly or attached, the controller reads dense gradients: the connectome's
        # backward hooks stand aside for as long as it edits (every step, not only inside its
        # windows, so that a gradient clip sees the same kind of gradient at every step of that
        # phase). Attached, it also observes through this hook.
        # Everything is checked before the connectome is touched (a bad optimizer, a budget that
        # cannot be met): a failed construction leaves it as it was.
        if optimizer is not None:
            conn._check_optimizer(optimizer)
        # (driven explicitly, it reads the gradients of the optimizers the connectome is attached to as well)
        for opt in [optimizer] + [r() for r in conn._optimizers] + [r() for r in conn._wrappers]:
            if opt is not None:
                self._check_maximize(opt)
        if self.density is not None and conn.fixed_density is None:
            synapse_targets(self, self.density, strict=True)  # raises now, not at the first update, when it cannot be met
        kept = grow_init == "original" and not conn.original
        if kept:
            conn.keep_original()
        self.conn.add_observer(self._observe_hook, active=self._editing)
        self._init_used = False  # set by initial_plan: whether ``init`` decided anything
        try:
            plan = self.policy.initialize(self)
            if plan is not None:
                self._apply(plan, step=0, kind="init", line_search=False)
            if init is not None and not self._init_used:
                why = ("no density was given" if self.density is None else
                       f"policy {self.policy.name!r} starts from the connectome as it is and reaches its target "
                       "through its own updates" if not getattr(self.policy, "sparse_at_start", True) else
                       f"the connectome already holds no more than density {self.density}")
                warn_user(f"init={init!r} was not used: nothing was sparsified at construction ({why}); "
                          "drop init=, or give a policy that sparsifies at construction (rigl, set, ...)")
        except BaseException:
            self.conn._remove_observer(self._observe_hook)
            if kept:
                conn.original = {}
            raise
        conn._controllers.append(weakref.ref(self))
        if optimizer is not None:
            self.attach(optimizer)
        else:  # driven by hand: an optimizer stepping these weights while the connectome is attached to none is said
            unattached.watch_unattached(conn)

    def _check_maximize(self, optimizer) -> None:
        """Raise if ``optimizer`` maximizes (``maximize=True`` in a group that holds one of the
        connectome's weights) while an estimator of this controller reads the gradient's sign: the
        gradients it observes are then those of an objective to raise, not of a loss to lower, and its
        scores would be turned around. A group of other parameters may maximize (a min-max game of one loss)."""
        opt = unwrap_optimizer(optimizer)
        # (a ZeroRedundancyOptimizer's own groups: its local optimizer holds only this process's shard)
        groups = [g for o in dict.fromkeys((opt, optimizer)) for g in getattr(o, "param_groups", ()) if g.get("maximize")]
        if not groups:
            return
        mine = {id(p) for p in self.conn.params.values()}
        if not any(id(p) in mine for g in groups for p in g["params"]):
            return
        restores = self.conn.mode == "mask_only" or self.grow_init == "original"  # (as context() gives ctx.restore)
        signed = [e for e in dict.fromkeys((self.drop_est, self.grow_est))
                  if e is not None and e.reads_gradient_sign(restores)]
        if not signed:
            return
        names = ", ".join(repr(getattr(e, "name", None) or type(e).__name__) for e in signed)
        raise ValueError(
            f"{type(opt).__name__} has maximize=True: it climbs the gradient of its objective, but this controller's "
            f"estimator {names} scores synapses by the gradient of a loss to lower (its sign: -g*w, g*w0), so it "
            "would prune the synapses that raise the objective most and grow those that lower it. Minimize the "
            "negated objective instead (loss = -objective with maximize=False: the same steps), or an estimator "
            "that reads the gradient's size only (policy 'rigl' or 'set'; estimator 'curvature', the default, without "
            "grow_init='original')")

    def __getstate__(self) -> dict:
        """A copied controller (``copy.deepcopy``) is detached like its copied connectome: attach it
        to the copy's optimizer; it observes the copied connectome's gradients again."""
        state = self.__dict__.copy()
        state.update(_hook=None, optimizer=None)
        state.pop("_order_grads", None)  # gradients of the original's parameters
        # the hooks on the model's parameters cannot be copied (the copy's parameters are other tensors); what
        # they saw, by layer name, is: __setstate__ hooks the copy's parameters again, so that a copy taken
        # between noting a step and its update judges that update's gradients as the original does
        state.pop("_left_hooks", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "_left_names" in state:
            self._hook_unstepped_grads(self._left_names, self._left_grads)
        if self._observe_hook not in self.conn._observers:  # the connectome's copy dropped its observers
            self.conn.add_observer(self._observe_hook, active=self._editing)
        if not any(r() is self for r in self.conn._controllers):
            self.conn._controllers.append(weakref.ref(self))

    # ------------------------------------------------------------------ wiring
    @staticmethod
    def _resolve(which: str, estimator: Optional[str], mode: str) -> str:
        if which == "estimator":  # a utility estimator: the mode's default unless one is named
            return estimator or DEFAULT_ESTIMATOR[mode]
        if which == "estimator?":  # magnitude unless an estimator is named
            return estimator or "magnitude"
        return which

    def attach(self, optimizer) -> "Controller":
        """Step the controller after every step of ``optimizer`` (and attach the connectome to it).
        Attaching the same optimizer again does nothing; attaching another one moves the
        controller's step to it (the connectome keeps masking both). With several optimizers,
        attach the one stepped last: the controller updates right after that optimizer's step, and
        attached to one another optimizer steps after (in the same training step), it warns once, as
        that one's layers' windows are then one step behind.
        Another controller attached on the same connectome is detached, with a warning: one
        controller edits a connectome at a time. An optimizer with ``maximize=True`` in a group
        holding a connectome weight is refused where an estimator of this controller reads the
        gradient's sign (``reads_gradient_sign``); a ``ZeroRedundancyOptimizer``'s controller updates
        after its whole step, once every shard has been broadcast."""
        opt = unwrap_optimizer(optimizer)
        if opt is self.optimizer and self._hook is not None:
            return self
        self._check_maximize(optimizer)
        # (the wrapper given: Accelerate's skips the steps of an accumulated batch; the controllers this attach
        # replaces, detached below, are not asked whether they would refuse the optimizer)
        stopped = [c for c in (r() for r in self.conn._stopped) if c is not None and c is not self]
        self.conn.attach(optimizer, _by=self)
        for ref in list(self.conn._controllers):
            other = ref()
            if other is not None and other is not self and (other.optimizer is not None
                                                            or any(other is c for c in stopped)):
                warn_user(
                    f"this connectome was already edited by another Controller attached to an optimizer (policy "
                    f"{other.policy.name!r}; a cell run twice, or a second Controller on the same connectome): that one is "
                    "now detached, so that only this one edits the masks. Keep one Controller per connectome, or call "
                    "detach() on the old one first")
                other.detach()
                self.conn._remove_observer(other._observe_hook)  # replaced: it no longer needs dense gradients
        if self._observe_hook not in self.conn._observers:  # replaced earlier by another controller
            self.conn.add_observer(self._observe_hook, active=self._editing)
        if self._hook is not None:
            self._hook.remove()
        if _is_zero_redundancy(optimizer):
            # its local optimizer steps this process's shard alone, and the other shards' weights arrive after
            # that step, broadcast by the processes that own them: the update reads them all, after the whole step
            self._hook = optimizer.register_step_post_hook(lambda _zero, args, kwargs: self._after_step(opt, args, kwargs))
        else:
            self._hook = opt.register_step_post_hook(self._after_step)
        self.optimizer = opt
        self._renote_unstepped_grads()
        return self

    def detach(self) -> None:
        """Stop stepping the controller after the optimizer's steps: the masks stay as they are and
        the connectome keeps masking (``conn.detach()`` stops that too). ``attach`` resumes; so
        does driving it explicitly (``observe()`` after backward, ``step()`` after the step), for
        which the connectome keeps the gradients dense."""
        if self._hook is not None:
            self._hook.remove()
        self._hook = None
        self.optimizer = None
        self._drop_grad_hooks()

    @eager  # eager even inside a compiled opt.step, as the connectome's step hooks
    def _after_step(self, opt, args, kwargs) -> None:
        if not self.conn._step_skipped(opt):  # a GradScaler's skipped step (fused optimizer) is no step
            self._advance()
            self._note_order()

    def _observe_hook(self):
        if self.optimizer is not None:  # driven explicitly, ctrl.observe() is the caller's
            self._check_order()
            self._observe()

    def _note_order(self) -> None:
        """After a step of the controller's optimizer, where other attached optimizers hold layers
        it edits: note those layers' gradients (the tensor and its in-place version), so that
        :meth:`_check_order` can tell whether one of those optimizers steps them later in the same
        training step (no backward in between) instead of in the next one."""
        if self.__dict__.get("_warned_order") or self.stats is None or len(self.conn._optimizers) < 2:
            return
        mine = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        # weak references: a gradient freed by zero_grad() is not kept through the next backward
        self._order_grads = {n: (weakref.ref(g), g._version) for n, p in self.conn.params.items()
                             if id(p) not in mine and (g := p.grad) is not None}

    def _check_order(self) -> None:
        """Before an attached optimizer's step: warn (once) when it steps, after the controller's own
        optimizer in the same training step, layers whose gradients the controller observes at its
        steps; the controller's update then comes before those gradients are observed, and they go into
        the next window (each window of those layers one step behind). Cleared at the controller's own
        optimizer's next step."""
        noted = self.__dict__.pop("_order_grads", None)
        opt = self.conn.__dict__.get("_stepping")
        if not noted or opt is None or opt is self.optimizer:
            return
        names = self.conn.stepping_layers(primary=self.optimizer) or []
        same = [n for n in names if n in noted and (g := self.conn.params[n].grad) is not None
                and g is noted[n][0]() and g._version == noted[n][1]]
        if not same:
            self._order_grads = noted  # another optimizer may still follow in this training step
            return
        self._warned_order = True
        warn_user(
            f"this Controller is attached to {type(self.optimizer).__name__}, and {type(opt).__name__} steps "
            f"{', '.join(same[:3])}{' ...' if len(same) > 3 else ''} after it in the same training step: the "
            "controller steps and updates right after its own optimizer's step, so an update comes before those "
            "layers' gradients of that step are observed, and each of their windows is one step behind. Attach the "
            f"controller to the optimizer stepped last (ctrl.attach(that {type(opt).__name__}), which keeps the "
            "other attached), or step that one last")

    def _in_window(self) -> bool:
        """Whether the coming step is one of the last ``window`` steps before an update, the first
        update (at ``start_step``) included: its window holds the steps before ``start_step`` too."""
        if self.window is None:
            return True
        nxt = self.step_count + 1
        if nxt <= self.start_step - self.window:  # before the first update's window
            return False
        to_next = (self.update_every - (nxt - self.start_step) % self.update_every) % self.update_every
        return to_next < self.window

    def _editing(self) -> bool:
        """Whether the controller still gathers gradients for future edits."""
        return self.stats is not None and not self.finished

    def _observing(self) -> bool:
        """Whether :meth:`observe` reads the gradients at the coming step."""
        return self.stats is not None and self._in_window() and not self.finished

    def observe(self, scaler=None) -> None:
        """Add the current dense gradients to the utility window (call after ``backward``).
        Only for a controller driven explicitly: one attached to an optimizer observes in its
        step hook, so a call here is refused (it would add each gradient to the window twice).

        ``scaler``: the ``torch.amp.GradScaler`` that scaled the loss (``accelerator.scaler``), called
        before ``scaler.step(opt)``. Gradients of an optimizer it has not unscaled yet (no
        ``scaler.unscale_(opt)`` since the last ``scaler.update()``) still carry its scale, which is
        divided out as they are added; and the layers of an optimizer whose step the scaler skips (any
        gradient it holds, a bias's too, is inf or NaN) are not observed, the other optimizers' layers
        are, as the attached path observes only the steps taken (a call leaving any out is counted in
        :attr:`skipped_observations`, which is not saved with the state), where without ``scaler=`` the
        inf would leave the whole window out. Without it, scaled gradients enter the window as they are."""
        self._refuse_when_attached("observe", "observes the gradients itself at every optimizer.step()",
                                   "add each gradient to the utility window twice")
        self._refuse_mid_group("observe", "add the group's partial gradient to the utility window at each batch")
        if scaler is not None:
            check_scaler(scaler)
        self._observe(scaler if scaler is not None and scaler.is_enabled() else None)

    def _observe(self, scaler=None) -> None:
        if not self._observing():
            return
        names = self.conn.stepping_layers(primary=self.optimizer)
        self._refuse_frozen(self.conn.names if names is None else names)
        if scaler is None:
            self.stats.observe() if names is None else self.stats.observe(names)
            return
        names = list(self.conn.names if names is None else names)
        names, left_out = finite_layers(self.conn, names, self.optimizer)  # the scaler skips their steps
        if left_out:
            self.skipped_observations += 1
        if not names:
            return
        unscaled, scaled, scale = split_scaled(self.conn, scaler, names)
        for part, by in ((unscaled, None), (scaled, scale)):
            if part:
                self.stats.observe(part, scale=by)

    def _refuse_frozen(self, names) -> None:
        """Refuse, before the window takes anything, to observe layers whose weights are frozen
        (``requires_grad=False``): autograd computes no gradient for them, so every utility built
        from gradients would read 0 there and the policy would take their synapses as free to
        remove. A protected layer is never edited, so its gradient is not needed; nor is any once
        no edit can follow (:attr:`finished`: nothing is observed then, so a layer frozen for the
        fine-tuning after a one-shot prune or past end_step is not refused)."""
        frozen = [n for n in names if n not in self.protected and not self.conn.params[n].requires_grad]
        if not frozen:
            return
        shown, names = _named(frozen)
        est = self.drop_est if self.drop_est.needs_gradients else self.grow_est
        unfreeze = ("weight.requires_grad_(True) before the forward pass: in mask_only mode the weights never change "
                    "(their gradients are masked, the originals restored), as adaptive.mask_only.mask_learning(model, "
                    "conn) sets it up" if self.conn.mode == "mask_only" else
                    "weight.requires_grad_(True) (left out of the optimizer, it still does not train; clear its "
                    "gradient with model.zero_grad())")
        raise ValueError(
            f"{len(frozen)} layer(s) of the connectome are frozen (requires_grad=False): {shown}. Autograd computes "
            f"no gradient for them, so estimator {estimator_label(est)!r} would score every synapse there at 0 (free to remove, "
            f"nothing to gain by restoring) and this controller would edit them by that; nothing was observed. Keep "
            f"their connectome fixed (protect={names}), leave them out of the Connectome (exclude={names}), score by "
            f"magnitude (estimator='magnitude', or a policy that reads no gradient), or, to score them by the loss, "
            f"{unfreeze}")

    @property
    def finished(self) -> bool:
        """Whether no edit can follow: past ``end_step`` (no update is due after it), or the policy
        is done (the magnitude policy's one-shot prune). From then on gradients are neither observed
        nor kept dense: nothing would read them."""
        return (self.end_step is not None and self.step_count >= self.end_step) or self.policy.finished

    def due(self, step: int) -> bool:
        if step < max(1, self.start_step):
            return False
        if self.end_step is not None and step > self.end_step:
            return False
        return (step - self.start_step) % self.update_every == 0

    def step(self) -> Optional[dict]:
        """Advance one training step; run an update when one is due. Returns its event, if any.
        Only for a controller driven explicitly: one attached to an optimizer steps itself after
        each of its steps, so a call here is refused (it would count each training step twice)."""
        self._refuse_when_attached("step", "steps itself after every optimizer.step()", "count each training step twice")
        self._refuse_mid_group("step", "count each accumulated batch as a training step")
        if self.step_count == 0 or self.due(self.step_count + 1):
            self._warn_unmasked_weights()
        return self._advance()

    def _unstepped_layers(self) -> tuple:
        """(the connectome's live optimizers, the trainable layers the controller edits that none of them
        holds), or ``((), [])`` where :meth:`_warn_unstepped_layers` has nothing left to say."""
        opts = [r() for r in self.conn._optimizers]
        opts = [o for o in opts if o is not None]
        if (self.conn.mode != "train" or not opts or self.__dict__.get("_warned_unstepped")
                or (self.policy.grow_by is None and self.stats is None)):
            return (), []
        wrappers = [w for w in (r() for r in self.conn._wrappers) if w is not None]  # (a ZeroRedundancyOptimizer
        held = {id(p) for o in opts + wrappers for g in o.param_groups for p in g["params"]}  # holds every shard)
        return opts, [n for n in self.editable()
                      if id(self.conn.params[n]) not in held and self.conn.params[n].requires_grad]

    def _note_unstepped_grads(self) -> None:
        """Before the step an update follows: hook each layer no optimizer holds, so that the update knows
        whether that step's backward found its ``.grad`` cleared (None, or zeros: ``model.zero_grad()``
        either way) or added the step's gradient to an older one. Read before autograd adds to it: the
        ``.grad`` tensor alone tells neither ``zero_grad(set_to_none=False)`` (the same tensor, cleared)
        nor ``backward(create_graph=True)`` (a new tensor, the sum) apart."""
        self._drop_grad_hooks()
        _, left = self._unstepped_layers() if self.stats is not None else ((), [])
        self._hook_unstepped_grads(left, {})

    def _renote_unstepped_grads(self) -> None:
        """Where the next step is one an update follows and it is not noted (a controller resumed by
        :meth:`load_state_dict`, or attached again mid-run), note it now, as :meth:`_advance` did at the
        step before; the construction is left as it is (an update at the first step counts as unknown)."""
        if self.step_count > 0 and self.due(self.step_count + 1) and not self.__dict__.get("_left_names"):
            self._note_unstepped_grads()

    def _hook_unstepped_grads(self, left: List[str], seen: Dict[str, Optional[torch.Tensor]]) -> None:
        """Hook the weights of layers ``left`` to record in ``seen`` (by layer name) whether each ``.grad``
        held anything when the first backward came; a layer already in ``seen`` keeps what it holds."""
        def hook(n: str, p: torch.Tensor):
            ref = weakref.ref(p)

            def before_accumulating(grad):
                old = ref().grad if ref() is not None else None
                if n not in seen:  # the first backward after the noted step; no sync here
                    seen[n] = None if old is None else old.detach().ne(0).any()
            return before_accumulating

        self._left_grads, self._left_names = seen, list(left)
        self._left_hooks = [self.conn.params[n].register_hook(hook(n, self.conn.params[n])) for n in left]

    def _drop_grad_hooks(self) -> None:
        """Remove the hooks :meth:`_note_unstepped_grads` set, and forget what they saw."""
        for h in self.__dict__.pop("_left_hooks", ()):
            h.remove()
        self.__dict__.pop("_left_names", None)
        self.__dict__.pop("_left_grads", None)

    def _stale_grads(self, left: List[str]) -> bool:
        """Whether a layer of ``left`` added this step's gradient to an older one its ``.grad`` held
        (nothing cleared it since the step before this update). A layer no backward reached since:
        whether its ``.grad`` holds anything. Unknown (no step noted before, as at an update every step
        from the first) counts as stale."""
        seen = self.__dict__.get("_left_grads")
        self._drop_grad_hooks()
        if seen is None:
            return True
        for n in left:
            old = seen.get(n, self.conn.params[n].grad)
            if old is not None and bool(old.detach().ne(0).any()):
                return True
        return False

    def _warn_unstepped_layers(self) -> None:
        """Warn once, in train mode, of layers the controller edits whose weights none of the connectome's
        optimizers holds (left out of ``optimizer``, say to keep a layer fixed), where that misleads it:
        under a policy that grows, what it grows there never trains (it stays at 0.0); where it reads
        gradients and nothing clears their ``.grad`` between steps (that optimizer's ``zero_grad()`` does
        not; ``model.zero_grad()`` does), they add up over the steps, so it ranks them by a sum of stale
        gradients. Not of a layer frozen on purpose (``requires_grad=False``: growth there is refused at
        construction, gradients at observe, and a policy that neither grows nor reads gradients, gmp or
        magnitude by weight, prunes it as meant), nor of any under such a policy, nor of one whose
        gradients are cleared at every step under a policy that reads gradients but grows nothing."""
        opts, left = self._unstepped_layers()
        if not left:
            self._drop_grad_hooks()
            return
        grows = self.policy.grow_by is not None
        reads = self.stats is not None and self._stale_grads(left)
        if not (grows or reads):
            return
        self._warned_unstepped = True
        shown, names = _named(left)
        harm = " and ".join(
            ([f"synapses {self.policy.name!r} grows there never train"] if grows else []) +
            (["their gradients, which nothing clears between steps (that optimizer's zero_grad() does not touch "
              "them; model.zero_grad() would), add up over the steps and rank them by stale sums"] if reads else []))
        warn_user(f"{len(left)} layer(s) the controller edits are held by none of the optimizers this Connectome is "
                  f"attached to ({', '.join(type(o).__name__ for o in opts)}): {shown}. Their weights never train, so "
                  f"{harm}. Add them to the optimizer (build it from "
                  f"model.parameters()), attach the optimizer that steps them (conn.attach(optimizer)), or keep them "
                  f"as they are: protect={names} (never edited) or exclude={names} (left out of the Connectome)")

    @torch.no_grad()
    def _warn_unmasked_weights(self) -> None:
        """Warn once where, driven explicitly, pruned synapses are off 0.0 because nothing masks them: a
        Connectome attached to no optimizer leaves every optimizer step (momentum, Adam's moments, weight
        decay) free to move them, and the controller edits masks over what is a dense network. Checked at
        the first step and at each update (one pass over the layers with pruned synapses, read back at
        once), not where an optimizer is attached, nor in mask_only mode (every edit restores the weights
        from the originals, +0.0 where pruned, and no optimizer steps them).
        """
        if (self.__dict__.get("_warned_unmasked") or self.conn.mode != "train"
                or any(r() is not None for r in self.conn._optimizers)
                or self.conn.__dict__.get("_unattached_warned")):  # (said by the optimizer's step already)
            return
        # the connectome's 0/1 masks on each weight's device (a model moved after the masks were built: the
        # masks follow it there, as conn.apply() has them)
        names, params, imasks = self.conn._hot_lists()
        if not names:
            return
        counts = torch.stack([torch.count_nonzero(p.detach().ne(0) & f.eq(0)).to(params[0].device)
                              for p, f in zip(params, imasks)]).tolist()
        moved = {n: k for n, k in zip(names, counts) if k}
        if not moved:
            return
        self._warned_unmasked = True
        self.conn.__dict__["_unattached_warned"] = True  # (the optimizer step's own warning of it: not again)
        shown = ", ".join(f"{n} ({k:,})" for n, k in list(moved.items())[:3]) + (
            f" and {len(moved) - 3} more layer(s)" if len(moved) > 3 else "")
        warn_user(f"ctrl.step(): pruned synapses are not 0.0 in {shown}: this Connectome is attached to no optimizer, "
                  "so nothing keeps them at 0.0 and the optimizer's steps (momentum, Adam's moments, weight decay) "
                  "moved them: the network trains densely while the controller edits its masks. Attach the optimizer "
                  "before training: conn.attach(optimizer) (the controller is still driven by ctrl.observe() and "
                  "ctrl.step()), or Controller(conn, optimizer, ...), which then steps itself; with an update rule "
                  "of your own, call conn.apply() after each update")

    def _refuse_mid_group(self, call: str, would: str) -> None:
        """An explicit observe()/step() in train mode on a batch Accelerate accumulates without an
        optimizer step (its ``GradientState``: ``gradient_accumulation_steps`` > 1, ``sync_gradients``
        False) is refused: the step is the group's, its gradient whole only at the group's last batch.
        Checked only where the connectome was attached through an optimizer Accelerate prepared (which
        then skips the step): a plain optimizer steps at every batch, whatever a GradientState left by
        an earlier Accelerator says. Without Accelerate imported, or in mask_only mode (no optimizer, no
        accumulation), nothing is checked."""
        mod, opt_mod = sys.modules.get("accelerate.state"), sys.modules.get("accelerate.optimizer")
        if mod is None or opt_mod is None or self.conn.mode != "train" \
                or not getattr(mod.GradientState, "_shared_state", None):
            return
        inner = [o for o in (r() for r in self.conn._optimizers) if o is not None]
        if not any(isinstance(w, opt_mod.AcceleratedOptimizer) and any(unwrap_optimizer(w) is o for o in inner)
                   for w in (r() for r in getattr(self.conn, "_wrappers", ()))):
            return
        gs = mod.GradientState()
        k = int(gs.num_steps)
        if k <= 1 or gs.sync_gradients:
            return
        raise RuntimeError(
            f"ctrl.{call}() on a batch that Accelerate accumulates without an optimizer step (gradient_accumulation_steps "
            f"{k}, accelerator.sync_gradients False): the controller's step is the optimizer's, one per group of {k} "
            f"batches, and this call would {would}. Call ctrl.observe() and ctrl.step() only where "
            "accelerator.sync_gradients is True (after the group's last backward, and after its optimizer step), or "
            "attach the controller to the prepared optimizer (Controller(conn, optimizer, ...)), which steps only then")

    def _refuse_when_attached(self, call: str, does: str, twice: str) -> None:
        """An explicit observe()/step() on a controller its optimizer's hook already drives is refused."""
        if self.optimizer is not None:
            raise RuntimeError(
                f"this Controller is attached to an optimizer and {does}, so ctrl.{call}() would {twice}: drop the "
                f"ctrl.{call}() call, or call ctrl.detach() first to drive it explicitly (ctrl.observe() after "
                "backward, ctrl.step() after the optimizer step)")

    def _advance(self) -> Optional[dict]:
        self.step_count += 1
        event = self.update() if self.due(self.step_count) else None
        if self.due(self.step_count + 1):
            self._note_unstepped_grads()
        return event

    # ------------------------------------------------------------------ scoring
    def _generator(self, step: int, index: int) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + step * 7919 + index * 104_729 + 17) % (2**62))
        return g

    def context(self, name: str, step: int) -> UtilityContext:
        idx = self._layer_index[name]
        restore = None
        if self.conn.mode == "mask_only" or self.grow_init == "original":
            restore = self.conn.original.get(name)
        if restore is not None and self.conn.mode != "mask_only":
            # train mode: a present synapse is valued at its trained weight, not the one kept at construction
            # (presence and evidence, reading w0, pruned a weight trained from 0.007 to 3.5 first); once per layer
            # and update, where ctx.w0 is read several times (mask_only's present weights are their originals)
            w = self.conn.params[name].detach()
            restore = torch.where(self.conn.masks[name].to(w.device), w, restore.to(w.device))
        return UtilityContext(
            name=name,
            weight=self.conn.params[name].detach(),
            mask=self.conn.masks[name],
            restore=restore,
            stats=self.stats,
            generator=self._generator(step, idx),
            batch_size=self.batch_size,
        )

    def editable(self) -> List[str]:
        return [n for n in self.conn.names if n not in self.protected]

    def protected_live(self) -> Dict[str, int]:
        """Live synapses of each protected layer: what a budget counts them at (a protected layer
        emptied or pruned by hand holds no more, and the other layers share the rest of the target)."""
        return {n: int(torch.count_nonzero(self.conn.masks[n])) for n in self.protected}

    def scores(self, side: str, step: Optional[int] = None, names=None,
               zero_cost_order: Optional[str] = None) -> Dict[str, torch.Tensor]:
        """Per-ensemble scores: ``side="cost"`` (removal cost, from drop_by) or ``"gain"``
        (restoration gain, from grow_by), as the estimator sees them at ``step`` (default: the
        controller's current step), for the layers ``names`` (default: every editable layer).
        Removal costs of exactly 0 are ordered by ``zero_cost_order`` (default: the controller's)."""
        step = self.step_count if step is None else step
        zero_cost_order = zero_cost_order or self.zero_cost_order
        if zero_cost_order not in ZERO_COST_ORDERS:
            raise ValueError(f"unknown zero_cost_order {zero_cost_order!r}: use one of {ZERO_COST_ORDERS}")
        est = self.drop_est if side == "cost" else self.grow_est
        if est is None:
            raise ValueError(f"policy {self.policy.name!r} has no {side} estimator")
        out = {}
        with torch.no_grad():
            for n in names or self.editable():
                ctx = self.context(n, step)
                gran = self.conn.granularities[n]
                if hasattr(est, "ensemble_scores"):  # drawn per ensemble (random): no sum to pool
                    s = est.ensemble_scores(ctx, gran)
                    _check_shape(est, side, n, s, gran.ensemble_shape(ctx.weight.shape), "ensemble_scores")
                    _check_scores(est, side, n, s, "ensemble_scores", ctx)
                    out[n] = _owned(s, ctx, est, self.conn.masks)
                    continue
                s = est.removal_cost(ctx) if side == "cost" else est.restoration_gain(ctx)
                _check_shape(est, side, n, s, ctx.weight.shape)
                _check_scores(est, side, n, s, ctx=ctx)
                s = _owned(s, ctx, est, self.conn.masks)
                if side == "cost" and zero_cost_order == "magnitude":  # no gradient seen: smaller weights first
                    s = order_zero_costs(s, ctx.weight)
                out[n] = gran.pool(s, "sum")
                if out[n].shape != s.shape:  # ensembles of several synapses: a sum, which +inf and -inf spoil
                    _check_pooled(est, side, n, out[n], gran)
        return out

    def alive(self) -> Dict[str, torch.Tensor]:
        return {n: m for n, m in self.conn.ensemble_masks().items() if n not in self.protected}

    def keep_plan(self, keep_scores: Dict[str, torch.Tensor], density: float, allow_grow: bool = False,
                  network: bool = False, estimates: bool = False) -> EditPlan:
        """A plan keeping the highest-scoring ensembles (``keep_scores``: one score per ensemble of
        each layer) at ``density`` (a fraction of synapses, met to within half an ensemble) under the
        budget, or the top n of every m for n:m granularities; absent ensembles that score high
        enough are grown only with ``allow_grow`` (else the plan only prunes); ``network``: the
        network's count held too under a layer budget; ``estimates``: ``keep_scores`` are the
        estimators' own scores (:meth:`scores`), which the plan then carries for the event to report.
        See :func:`adaptive.policies.base.keep_plan`."""
        return keep_plan(self, keep_scores, density, allow_grow, network, estimates)

    def initial_plan(self) -> EditPlan:
        """Sparsify to the target density at construction, by ``self.init``; for a policy that holds
        the network's count rather than each layer's (``holds_layer_counts = False``: balanced), the
        network's count lands within half an ensemble of its target under a layer budget too."""
        self._init_used = True
        names = self.editable()
        if self.init == "random":
            # the random estimator's draw per ensemble: every size kept with the same chance
            draw = get_estimator("random")
            scores = {n: draw.ensemble_scores(self.context(n, 0), self.conn.granularities[n]).float()
                      .to(self.conn.masks[n].device) for n in names}
        elif self.init == "magnitude":
            # NaN has no place in an order (kept or pruned by where nan_to_num puts it): refused, as an
            # estimator's scores are (adaptive/score_checks.py), before anything is edited
            bad = {n: int((~torch.isfinite(self.conn.params[n])).sum()) for n in names}
            bad = {n: k for n, k in bad.items() if k}
            if bad:
                shown = ", ".join(f"{n!r} ({k:,})" for n, k in list(bad.items())[:3]) + (" ..." if len(bad) > 3 else "")
                raise ValueError(f"init='magnitude' ranks the ensembles by the magnitude of their weights, but the weights "
                                 f"of {len(bad)} layer(s) hold NaN or inf: {shown}, which rank nothing (a diverged run, or "
                                 "broken weights loaded); load finite weights, or use init='random'. Nothing was edited")
            scores = {n: self.conn.granularities[n].pool(self.conn.params[n].detach().abs().float(), "sum") for n in names}
        else:
            unseen = self.stats is None or self.stats.count == 0
            # the costliest to remove are kept. Before any gradient, read the costs unordered (one call:
            # an estimator may be stateful): all 0 would rank by magnitude alone, which init='magnitude'
            # is; costs that rank something are 0 only at weights of 0, which the order leaves at 0
            scores = self.scores("cost", 0, names, zero_cost_order="index" if unseen else None)
            if unseen and all(_ranks_nothing(s) for s in scores.values()):
                est = self.drop_est
                raise ValueError(
                    f"init='estimator' ranks the ensembles by estimator {estimator_label(est)!r}, "
                    "but every removal cost it gives before any gradient is observed is the same (a new controller "
                    "has seen none), so the ensembles kept would be chosen by magnitude alone. Use init='magnitude' or "
                    "init='random' (the estimator edits from the first update on), or an estimator whose removal "
                    "cost needs no gradient (magnitude, gradient, presence, evidence)")
        # A connectome that is sparse already (loaded, or edited by hand) keeps its live ensembles
        # first: the init's scores only order the live ones among themselves (and the absent ones,
        # which this plan never grows). Without this, a fresh draw of random scores kept ensembles
        # that were absent and pruned live ones, far below the target.
        # An absent ensemble is marked -inf, below every live one (policies.base.live_first: a live -inf is
        # lifted just above it), which keeps the order exactly. The lift this replaced, (max - min + 1) added to
        # the live scores, lost the order of small scores to float32 rounding beside a large one (ties, then by
        # index) and, with an estimator's +-inf (admitted as the largest or smallest score), made every live
        # score inf: kept by index.
        alive = self.alive()
        if scores and not all(bool(alive[n].all()) for n in scores):
            scores = live_first(scores, alive)
        density = self.density if self.density is not None else self.conn.density()
        return self.keep_plan(scores, density, network=not self.policy.holds_layer_counts)

    # ------------------------------------------------------------------ updating
    # (applying a plan, its line search and its event: ControllerEditsMixin, adaptive/controller_edits.py)
    @torch.inference_mode(False)  # state kept across updates must not become inference tensors
    def update(self) -> Optional[dict]:
        """Run one update now: reduce statistics, let the policy plan, apply, log an event. An update that
        fails (a plan refused, ``holdout_loss()`` raising or giving no number, an interrupt) leaves the connectome
        and the policy's state as they were; the estimators have read the window, as at any update (presence and
        evidence moved their values: an update retried on the same window reads it into them once more), and the
        window is kept for the next update."""
        step = self.step_count
        for opt in [r() for r in self.conn._optimizers] + [r() for r in self.conn._wrappers]:
            if opt is not None:  # (a group added with maximize=True since the attach: refused before any edit)
                self._check_maximize(opt)
        # a policy that is done observed nothing since (see finished), and plans nothing from the window
        if self.stats is not None and not self.policy.finished:
            self.stats.reduce()
            if self.stats.count == 0:
                # every gradient-based score would be 0 and ties go by index: such an edit is arbitrary
                how = ("call ctrl.observe() after each backward" if self.conn.mode == "mask_only" else
                       "attach the optimizer (Controller(conn, optimizer)) or call ctrl.observe() after each backward")
                if self.skipped_observations > self._skipped_seen:  # (observe(scaler=) left every layer out)
                    how = ("the GradScaler skipped the steps observed since it (inf or NaN gradients), and "
                           "observe(scaler=) leaves such steps out; the next update reads the steps it takes")
                self._skipped_seen = self.skipped_observations
                warn_user(f"step {step}: no gradient was observed since the last update, so the update is "
                              f"skipped; {how}")
                return self._skipped(step)
            unobserved = [n for n in self.editable() if self.stats.counts.get(n, 0) == 0]
            if unobserved:
                # their scores would be 0 and their ties go by index (growth at the first units): as for an empty
                # window, no edit; the observed layers' statistics stay for the next update
                self._skipped_seen = self.skipped_observations
                warn_user(f"step {step}: no gradient of {len(unobserved)} editable layer(s) ({', '.join(unobserved[:3])}"
                          f"{' ...' if len(unobserved) > 3 else ''}) was observed since the last update, while other "
                          "layers' were (their optimizer's steps skipped: by a GradScaler for inf or NaN gradients, "
                          "say), so the update is skipped; the next update reads them")
                return self._skipped(step)
            if not self.stats.finite():
                # NaN or inf would enter the estimators' state (presence, evidence keep it) and rank
                # as ties broken by index: the window is left out, as one with no gradient
                self.stats.reset()
                self.nonfinite_windows += 1
                if self.nonfinite_windows == 1:
                    check = "and the loss" if self.conn.mode == "mask_only" else "and the learning rate (a diverging run)"
                    if self.optimizer is None:  # driven explicitly: a GradScaler's skipped steps poison the window
                        check += ("; under torch.amp.GradScaler call ctrl.observe(scaler=scaler), which leaves out the "
                                  "steps the scaler skips and divides out its scale")
                    warn_user(f"step {step}: the gradients observed since the last update hold NaN or inf (a "
                                  "non-finite loss or gradient), so this window is left out and the update skipped; "
                                  f"check the data (NaN or inf in inputs or targets) {check}. Later such windows are "
                                  "counted in ctrl.nonfinite_windows, not warned again")  # update, its inference_mode wrapper, step, the caller
                return self._skipped(step)
        broken = self._nonfinite_layers(self.editable())
        if broken:
            # scores made from them (magnitude, gmp: estimators that read no gradient) would be NaN, which
            # ranks nothing: the update is skipped, as a window with non-finite gradients is
            self.nonfinite_windows += 1
            if self.stats is not None:  # (the gradients observed over those weights: left out, as a non-finite window)
                self.stats.reset()
            if self.nonfinite_windows == 1:
                warn_user(f"step {step}: the weights of {len(broken)} layer(s) ({', '.join(broken[:3])}"
                          f"{' ...' if len(broken) > 3 else ''}) hold NaN or inf (a diverging run), so the update is "
                          "skipped; check the data (NaN or inf in inputs or targets) and the learning rate. Later "
                          "such updates are counted in ctrl.nonfinite_windows, not warned again")
            return self._skipped(step)
        self._warn_unstepped_layers()
        policy_state = copy.deepcopy(self.policy.state_dict())  # (a few numbers: a boundary, a goal)
        try:
            plan = self.policy.update(self, step)
            event = self._apply(plan if plan is not None else EditPlan(), step=step)
        except BaseException as error:  # the plan refused, holdout_loss() or a grow_init failed, an interrupt
            # the connectome is rolled back (_apply): the policy's state goes back too, or a caller that goes on
            # (a notebook) had threshold's boundary or cubic start moved by an update that edited nothing
            try:
                self.policy.load_state_dict(policy_state)
            except Exception as restore_error:  # (a plugin policy's): said beside the error, which stays the one raised
                error.add_note(f"(the policy's state could not be put back as it was: {restore_error!r})")
            raise
        if self.stats is not None:
            self.stats.reset()
        if self._last_update(step):
            self._warn_missed_target(step)  # nothing later moves the density
        if self.verify or (self.verify is None and is_distributed()):
            event["mask_hash"] = check_masks_agree(self.conn, step)
        return event

    def _nonfinite_layers(self, names) -> List[str]:
        """The layers of ``names`` whose weights hold a NaN or inf, in one pass each and one read
        (:func:`adaptive.finite.finite_flags`) rather than a pass and a read per layer."""
        ok = finite_flags([self.conn.params[n] for n in names]).tolist() if names else []
        return [n for n, fine in zip(names, ok) if not fine]

    def edit_fraction(self, step: Optional[int] = None) -> float:
        """The fraction of the live ensembles an update at ``step`` edits: the edit decay's value, a
        number in [0, 1] (an int, a numpy number or a one-value tensor too; float error past either end,
        a float32 1.0000001, is taken as that end); any other value (a plugin decay's NaN, 1.5 or "0.3")
        is a ValueError naming the decay, raised before the update edits anything."""
        step = self.step_count if step is None else step
        value = self.edit(step)
        frac = unit_fraction(value)
        if frac is not None:
            return frac
        raise ValueError(f"edit decay {type(self.edit).__qualname__} gave {value!r} at step {step}: a decay returns "
                         f"the fraction of live ensembles an update edits, a number in [0, 1] (edit_fraction at "
                         f"start_step, decaying to 0 at end_step): fix the decay")

    # ------------------------------------------------------------------ persistence
    # (state_dict and load_state_dict: ControllerStateMixin, adaptive/controller_state.py)
    def write_events(self, path: str | os.PathLike) -> None:
        """Write every event as JSON lines, strict JSON (:mod:`adaptive.jsonio`: a NaN or infinite number is
        the string "NaN", "Infinity" or "-Infinity"; :func:`adaptive.jsonio.loads` reads them back)."""
        from . import jsonio

        write_text(path, jsonio.dumps_lines(self.events))
