"""The --controller_kw and --mask_only_kw keys that the recipe sets itself from its own options
(refused there, naming the option), and how a run recorded before such a key was refused reads
it back: as the option that now sets it."""
from __future__ import annotations

from adaptive.config import ConfigError
from adaptive.counts import whole_number


# keys of --controller_kw (train mode) and --mask_only_kw that the recipe sets itself, and from what
_CONTROLLER_SETS = {
    "conn": "from --ensemble, --include and --exclude", "optimizer": "from --optimizer, --lr and --momentum",
    "policy": "from --policy", "density": "from --density", "budget": "from --budget",
    "update_every": "from --update_every", "end_step": "from --end_fraction (edits stop at that fraction of the steps)",
    "edit_fraction": "from --edit_fraction", "estimator": "from --estimator", "min_density": "from --min_density",
    "protect": "from --protect", "batch_size": "from --batch_size (times --gradient_accumulation_steps and the process count)", "seed": "from --seed",
    "verify": "to true (every update checks that all processes hold the same masks)",
    "holdout_loss": "from --line_search (held-out batches each update's check scores)",
    "line_search_tolerance": "from --line_search_tolerance", "line_search_tries": "from --line_search_tries",
}

_MASK_ONLY_SETS = {
    "model": "from --model and --weights", "train_loader": "from --dataset", "holdout_loader": "from --holdout",
    "target": "from --target (or --density)", "passes": "from --max_steps (training batches per target) or --epochs",
    "ensemble": "from --ensemble", "include": "from --include", "exclude": "from --exclude",
    "estimator": "from --estimator", "window": "from --update_every", "edit_fraction": "from --edit_fraction",
    "seed": "from --seed", "progress": "from --progress", "eval_every": "from --eval_every (in steps)",
    "checkpoint": "to the run folder's mask_only_checkpoint.pt, which --resume continues from (choose the "
                  "folder with --output_dir)",
    "callback": "to its own, which records config.yaml",
}

# --controller_kw keys that --line_search_tolerance and --line_search_tries now set: a run recorded with
# them before those options (where they did nothing, with no holdout_loss) resumes with them, as it ran
_LINE_SEARCH_KW = ("line_search_tolerance", "line_search_tries")

# keys an earlier recipe passed on through --mask_only_kw (the shipped ImageNet config's held edit_fraction
# and eval_every) that it now sets from its own options: a resumed run reads them as those options
_KW_OPTIONS = {"window": "update_every", "edit_fraction": "edit_fraction", "estimator": "estimator", "seed": "seed",
               "ensemble": "ensemble", "include": "include", "exclude": "exclude", "eval_every": "eval_every",
               "progress": "progress"}

# ... where an option says the same; where none does, the key stays in a resumed run's mask_only_kw and is
# passed on as the earlier recipe passed it (after the recipe's own values): passes that are no whole number
# (--max_steps counts batches, unknown until the data is loaded), eval_every 0 (held-out evaluations at stage
# ends only; the option's 0 is every epoch), and a window without an eval_every that differs from the run's
# update_every (the earlier recipe divided the default evaluation cadence by update_every, not by window)
_KW_KEPT = ("passes", "eval_every", "window")


def _fields_of(cfg) -> dict:
    return {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}


def _kw_as_options(settings: dict) -> dict:
    """The settings that change when the keys of ``settings['mask_only_kw']`` that the recipe now sets
    itself are read as its options (``mask_only_kw`` without them among them); {} when it holds none.
    The result runs as the recorded run did: its eval_every counted updates (optimize_connectome's
    unit), the option counts steps; passes=N ran N epochs whatever --max_steps said."""
    kw = dict(settings.get("mask_only_kw") or {})
    if not set(kw) & (set(_KW_OPTIONS) | {"passes"}):
        return {}
    out = {}
    if "passes" in kw and (whole_number(kw["passes"], floats=True) or 0) >= 1:
        out.update(epochs=whole_number(kw.pop("passes"), floats=True), max_steps=None)
    recorded_window = settings.get("update_every") or 1
    if "window" in kw and "eval_every" not in kw and kw["window"] != recorded_window:
        kw_window = kw.pop("window")  # kept (below): the default cadence was divided by update_every
    else:
        kw_window = None
    if kw.get("eval_every") == 0:
        kw_eval = kw.pop("eval_every")  # kept: evaluations at stage ends only
    else:
        kw_eval = None
    out.update({_KW_OPTIONS[k]: kw.pop(k) for k in list(kw) if k in _KW_OPTIONS})
    if "eval_every" in out:
        out["eval_every"] = out["eval_every"] * max(1, int(out.get("update_every", recorded_window)))
    kw.update({k: v for k, v in (("window", kw_window), ("eval_every", kw_eval)) if v is not None})
    if kw == (settings.get("mask_only_kw") or {}):
        return {}
    out["mask_only_kw"] = kw
    return out


def _cadence(settings: dict) -> dict:
    """What sets a mask_only run's held-out evaluations, read as the run runs it (a run recorded with
    --mask_only_kw keys the recipe now sets, :func:`_kw_as_options`): a resume that changes it would
    choose --target best's snapshot, and write its rows, at other steps."""
    s = {**settings, **_kw_as_options(settings)}
    kw = s.get("mask_only_kw") or {}
    return {"update_every": s.get("update_every"), "eval_every": s.get("eval_every"),
            **{f"mask_only_kw {k}": kw.get(k) for k in _KW_KEPT}}


def _train_mask_only_kw_error(kw) -> str:
    return (f"mask_only_kw ({kw!r}) applies to mode mask_only; train mode passes more Controller arguments with "
            "--controller_kw: drop --mask_only_kw or add --mode mask_only")


def _refuse_derived_keys(cfg) -> None:
    """A --controller_kw or --mask_only_kw key that the recipe sets itself, from one of its own
    options: it crashed (the Controller got the key twice) or silently replaced the recipe's value
    (passes=3 ran 3 passes while the opening line counted --max_steps' batches). A --mask_only_kw
    key optimize_connectome does not take is named with the ones it does (it was refused only after
    the run folder was made)."""
    if cfg.mode == "mask_only":  # (where --controller_kw is refused whole)
        option, given, sets = "mask_only_kw", dict(cfg.mask_only_kw), _MASK_ONLY_SETS
        if cfg.resume:  # what a resumed run recorded before the check, and no option says (_kw_as_options)
            given = {k: v for k, v in given.items() if k not in _KW_KEPT}
    else:
        option, given, sets = "controller_kw", cfg.controller_kw, _CONTROLLER_SETS
        if cfg.resume and not cfg.line_search:  # recorded before --line_search: inert then (no holdout_loss), and now
            given = {k: v for k, v in given.items() if k not in _LINE_SEARCH_KW}
    for key in sorted(set(given) & set(sets)):
        raise ConfigError(f"--{option} {key}: the recipe sets {key} itself, {sets[key]}; drop {key} from --{option}")
    if cfg.mode == "mask_only":
        import inspect

        from adaptive.mask_only import optimize_connectome

        takes = [k for k in inspect.signature(optimize_connectome).parameters
                 if k not in sets and not k.startswith("_")]  # (a private one is the recipes' own)
        for key in sorted(set(given) - set(takes)):
            raise ConfigError(f"--mask_only_kw {key}: optimize_connectome takes no argument {key!r}; --mask_only_kw "
                              f"sets {', '.join(takes)}")
