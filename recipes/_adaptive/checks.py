"""Checks of the recipe's settings that read more than one option, or a registry: train-mode
settings given to mask_only, --line_search's shape without --line_search, a mask_only target,
registry names (policy, estimator, budget, dataset, model, ensemble), and which policies take a
utility estimator."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from adaptive.config import COMMAND_LINE, ConfigError, given_keys
from adaptive.registry import near_misses
from adaptive.training import STEP_GAMMA, STEP_MILESTONES

if TYPE_CHECKING:
    from .config import RunConfig


# options whose default changed, with the one before: a config.yaml recorded before records it (read back as
# given by that file), and a --resume of such a run that leaves the option out continues with it (_check_against).
# --line_search_tolerance defaulted to 0 (veto any held-out rise) until recipes/benchmarks/line_search_train.py
# found that it held gradual pruning short of its density: now inf (keep every update, only measure it)
_FORMER_DEFAULTS = {"line_search_tolerance": 0.0}

# train-mode settings mask_only has no use for: (key, the value that means "not set", what to do instead)
_TRAIN_ONLY = [
    ("policy", ("utility", "crawl"), "mask_only always runs the crawl policy of adaptive.optimize_connectome"),
    ("budget", ("erk",), "mask_only removes synapses network-wide against their measured value, with no layer budget"),
    ("min_density", (0.0,), "mask_only has no layer budget; keep a layer out of the connectome with --exclude"),
    ("protect", ([],), "keep a layer out of the connectome (and dense) with --exclude"),
    ("controller_kw", ({},), "pass optimize_connectome settings with --mask_only_kw (its edit fraction decays "
                             "over each target's stage, cosine, on its own: no edit_decay there; --mask_only_kw "
                             "approach=F shapes the stage)"),
    ("end_fraction", (0.75,), "mask_only schedules its edits per target (--mask_only_kw approach=...)"),
] + [(key, (default,), "mask_only trains no weight") for key, default in (
    ("optimizer", "sgd"), ("lr", 0.1), ("momentum", 0.9), ("weight_decay", 5e-4), ("lr_schedule", "cosine"),
    ("lr_milestones", list(STEP_MILESTONES)), ("lr_gamma", STEP_GAMMA), ("warmup_steps", 0), ("gradient_accumulation_steps", 1),
    ("max_grad_norm", None), ("label_smoothing", 0.0))] + [
    (key, unset, "mask_only line-searches its updates with --mask_only_kw verify_batches=N (held-out batches "
                 "that check each update, no rise of their loss accepted) and line_search_tries=K")
    # (the tolerance's former default too, which every config.yaml recorded before it changed holds)
    for key, unset in (("line_search", (0,)), ("line_search_tries", (3,)),
                       ("line_search_tolerance", (math.inf, _FORMER_DEFAULTS["line_search_tolerance"])))]


def _refuse_idle_line_search(cfg) -> None:
    """--line_search_tolerance or --line_search_tries set while --line_search is 0 (off) would be
    ignored: refused, naming where they came from. The former default (:data:`_FORMER_DEFAULTS`)
    that a file or code gives is not: every config.yaml recorded before the default changed holds it."""
    if cfg.line_search:
        return
    defaults = type(cfg).__dataclass_fields__  # (RunConfig's)
    given = given_keys() or {}

    def set_on_purpose(k):
        value = getattr(cfg, k)
        former = k in _FORMER_DEFAULTS and value == _FORMER_DEFAULTS[k] and given.get(k) != COMMAND_LINE
        return value != defaults[k].default and not former

    idle = [k for k in ("line_search_tolerance", "line_search_tries") if set_on_purpose(k)]
    if idle:
        where = sorted({given[k] for k in idle if given.get(k) not in (None, COMMAND_LINE)})
        shown = " and ".join(f"{k} {getattr(cfg, k)!r}" for k in idle)
        fix = (f"add {' '.join(f'--{k} {defaults[k].default!r}' for k in idle)}, their defaults ({', '.join(where)} "
               "gives them)" if where else f"drop {' and '.join('--' + k for k in idle)}")
        raise ConfigError(f"{shown} shape(s) only the held-out check of --line_search N, which is off (0): give "
                          f"--line_search N (held-out batches each check scores), or {fix}")


def _refuse_train_only(cfg) -> None:
    """A train-mode setting given to mask_only would be silently ignored: refuse it instead."""
    for key, unset, instead in _TRAIN_ONLY:
        if getattr(cfg, key) not in unset:
            raise ConfigError(f"mode mask_only does not use {key} (got {getattr(cfg, key)!r}): {instead}; "
                              f"drop --{key}")


def _check_target(target) -> None:
    """A mask_only target is 'best', a fraction in [0, 1) or a count >= 0 (checked against the model later)."""
    from adaptive.mask_only import parse_target

    try:
        parse_target(target)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check_names(cfg: "RunConfig") -> None:
    """Registry names (policy, estimator, budget, ensemble, dataset, model) checked before any work."""
    from adaptive.budgets import budget_names
    from adaptive.cli import with_notes_of
    from adaptive.data import available_datasets
    from adaptive.ensemble_rules import parse_rules
    from adaptive.models import available_models, check_model_kw
    from adaptive.policies.base import policy_names
    from adaptive.utility.base import configured_estimator, estimator_names

    def known(what, value, names):
        if value not in names:
            raise ConfigError(f"unknown {what} '{value}': use one of {', '.join(sorted(names))}, or load the file "
                              f"that registers it with --plugins{near_misses([str(value)], names)}")

    known("policy", cfg.policy, policy_names())
    if cfg.estimator is not None:
        known("estimator", cfg.estimator, estimator_names())
        try:  # a keyword its constructor does not take, named with the ones it does
            configured_estimator(cfg.estimator, cfg.estimator_kw)
        except ValueError as e:  # (a plugin estimator's constructor may add notes: they are kept)
            raise with_notes_of(ConfigError(str(e)), e) from None
    known("budget", cfg.budget, budget_names())
    known("dataset", cfg.dataset, available_datasets())
    if ":" not in cfg.model and cfg.model.lower() not in available_models():
        raise ConfigError(f"unknown model '{cfg.model}': use one of {', '.join(available_models())} (torchvision:NAME "
                          "is any torchvision classifier), or register your own in a file given with --plugins"
                          + near_misses([str(cfg.model).lower()], available_models()))
    check_model_kw(cfg.model, cfg.model_kw)
    try:
        parse_rules(cfg.ensemble)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"ensemble '{cfg.ensemble}': {e}") from None


def _estimator(cfg: RunConfig):
    """--estimator, built with --estimator_kw where that gives options (else the name)."""
    from adaptive.utility import configured_estimator

    return configured_estimator(cfg.estimator, cfg.estimator_kw)


def _uses_estimator(policy: str) -> bool:
    return bool(_estimator_slots(policy)[0])


def _estimator_slots(policy: str) -> tuple:
    """(whether ``policy`` takes a utility estimator, whether it needs one: magnitude and gmp take
    one optionally and order by magnitude without it); (None, None) for a policy not registered
    (a plugin's, its plugin not loaded), which :func:`_check_names` then names."""
    from adaptive.policies.base import _POLICIES

    pol = _POLICIES.get(policy)  # the class: its slots are class attributes, and building it may need options
    if pol is None:
        return None, None
    slots = [x for x in (pol.drop_by, pol.grow_by) if isinstance(x, str)]
    return any(x.startswith("estimator") for x in slots), any(x == "estimator" for x in slots)
