"""Checks of the options before anything is built or written: a --dataset-kw the dataset does not
take, the registry names (model, dataset, estimator, ensemble), a --config file's values against the
parser's choices, types and flags, and the options' ranges; and what a --resume run's error adds
about the plugins its config.yaml records."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from adaptive.cli import message_lines
from adaptive.cli_checks import range_problem
from adaptive.registry import near_misses

from .options import number_or_none, whole_number


def _check_dataset_kw(dataset: str, kw: dict) -> None:
    """Refuse, before anything runs, a dataset argument that the dataset's builder does not take."""
    from adaptive.data import available_datasets, check_dataset_kw

    if dataset not in available_datasets():
        return  # an unknown dataset is reported by the data layer, with the known names
    if "augment" in kw:  # the data layer's message points at recipes/adaptive.py's --augment
        raise SystemExit("dataset_kw ['augment']: this recipe has no augmentation: the masks are chosen on the "
                         "training images as they are (the weights never train); drop augment")
    try:
        check_dataset_kw(dataset, kw)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def _resumed_plugins(cfg: dict):
    """``hint(error=None)``: what a --resume run's error adds about the plugins its config.yaml records
    (:func:`adaptive.plugins.resume_hint`); "" without --resume."""
    from adaptive.plugins import resume_hint

    settings = Path(cfg.get("output_dir") or ".") / "config.yaml"
    return lambda error=None: resume_hint(settings, cfg["plugins"], error) if cfg.get("resume") else ""


def _check_names(cfg: dict, origin, resumed=lambda: "") -> None:
    """The registry names (model, dataset, ensemble, estimator) checked before any data is read or
    anything written, as recipes/adaptive.py checks them (they failed after the data had loaded and
    the model had been built). ``resumed()``: what a --resume run's error adds about the plugins its
    config.yaml records, after the error's line (before the notes of a plugin estimator's error)."""
    from adaptive.data import available_datasets
    from adaptive.ensemble_rules import parse_rules
    from adaptive.models import available_models
    from adaptive.utility.base import configured_estimator, estimator_names

    def refuse(message):
        raise SystemExit(f"{message}{resumed()}")

    def known(key, names, hint=""):
        if cfg[key] not in names:
            refuse(f"{origin(key)} {cfg[key]}: unknown {key}: use one of {', '.join(sorted(names))}{hint}"
                   + near_misses([str(cfg[key])], names))

    plugin = " (or register your own in a file given with --plugins)"
    if ":" not in cfg["model"] and cfg["model"].lower() not in available_models():
        refuse(f"{origin('model')} {cfg['model']}: unknown model: use one of {', '.join(available_models())} "
                         f"(torchvision:NAME is any torchvision classifier){plugin}"
               + near_misses([str(cfg["model"]).lower()], available_models()))
    known("dataset", available_datasets(), plugin)
    known("estimator", estimator_names(), plugin)
    if "step" in cfg["estimator_kw"]:  # one way to give it: --step (and step: in a --config file)
        refuse(f"{origin('estimator_kw')} step: the recipe sets the estimator's step from --step: give "
                         f"--step {cfg['estimator_kw']['step']} instead")
    try:  # a keyword its constructor does not take, named with the ones it does
        configured_estimator(cfg["estimator"], cfg["estimator_kw"], option=origin("estimator_kw"))
    except ValueError as e:  # (a plugin estimator's constructor may add notes: they follow the line)
        raise SystemExit(message_lines(e, resumed())) from None
    try:
        rules = parse_rules(cfg["ensemble"])
    except (ValueError, KeyError, TypeError) as e:
        refuse(f"{origin('ensemble')} {cfg['ensemble']}: {e}")
    if any(hasattr(g, "density") for _, g in rules):  # optimize_connectome's refusal, before the data loads
        refuse(f"{origin('ensemble')} {cfg['ensemble']}: n:m fixes the density in every group, so no "
                         "removal target can be reached by removing and restoring synapses: use 'synapse', 'kernel', "
                         "'neuron' or 'block:RxC'")


def _read_as_recipes_read(loaded: dict, parser: argparse.ArgumentParser) -> dict:
    """A --config file's values read as recipes/adaptive.py's --config reads them (:func:`adaptive.config._coerce`,
    the same code), so that one file means the same in both recipes: a whole number written as a float (``seed:
    1e3``, which YAML reads as text and :func:`adaptive.config._exponent_floats` as 1000.0; ``window: 4.0``) is the
    integer for an integer option (it was refused as 'got 1000.0'; 2.5 is still refused), a number quoted
    (``batch_size: '64'``, ``holdout: '0.25'``) is the number, and a flag's quoted word true, yes, on or 1 (false,
    no, off or 0) is the flag's true (false): a quoted ``overwrite: 'false'`` is false (it was refused; before that
    it counted as true). Anything else is left for :func:`_check_file_values` to refuse."""
    from adaptive.config import ConfigError, _coerce

    def read(v, tp, key):
        if tp is float and not isinstance(v, str):  # (a number as written: 2 stays 2, as before)
            return v
        try:
            return _coerce(v, tp, key)
        except ConfigError:
            return v

    actions = {a.dest: a for a in parser._actions}
    out = dict(loaded)
    for key, value in loaded.items():
        action = actions.get(key)
        if action is None:
            continue
        tp = int if action.type is whole_number else action.type  # (the command line's whole numbers: int)
        if tp in (int, float):
            out[key] = ([read(v, tp, key) for v in value] if isinstance(value, list) else read(value, tp, key))
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) and isinstance(value, str):
            out[key] = read(value, bool, key)
    return out


def _check_file_values(path: str, loaded: dict, parser: argparse.ArgumentParser) -> None:
    """A --config file's values checked as the command line checks them: its choices, its types and its
    flags (``cfg.update`` alone let ``mixed_precision: fp16`` run float32 under an fp16 label, and a
    quoted ``overwrite: 'false'`` count as true, deleting the earlier run)."""
    actions = {a.dest: a for a in parser._actions}
    for key, value in loaded.items():
        action = actions.get(key)
        if action is None or value is None or key in RANGED:  # RANGED: _check_ranges names the range too
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) and not isinstance(value, bool):
            hint = (": write true or false (a quoted word other than true, yes, on, 1, false, no, off or 0 is text, "
                    "no yes/no)" if isinstance(value, str) else "")
            raise SystemExit(f"{path}: {key} must be true or false, got {value!r}{hint}")
        if action.choices is not None and value not in action.choices:
            raise SystemExit(f"{path}: {key} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
        values = value if isinstance(value, list) and action.nargs in ("*", "+") else [value]
        if key in _TEXT and action.nargs is None and not isinstance(value, str):  # a name or a path
            raise SystemExit(f"{path}: {key} must be text ({_TEXT[key]}), got {value!r}"
                             + (f": quote it ({key}: '{value}')" if isinstance(value, (int, float)) else ""))
        if key in _TEXT and action.nargs in ("*", "+") and any(
                not isinstance(v, (str, int, float)) or isinstance(v, bool) for v in values):
            raise SystemExit(f"{path}: {key} must be {_TEXT[key]}, got {value!r}")
        if action.type in (int, whole_number) and any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise SystemExit(f"{path}: {key} must be an integer, got {value!r}")
        if action.type in (float, number_or_none) and any(
                isinstance(v, bool) or not isinstance(v, (int, float)) for v in values if v != "none"):
            raise SystemExit(f"{path}: {key} must be a number, got {value!r}")


# what each text option of a --config file names (its value must be text, as on the command line)
_TEXT = dict(model="a model name", weights="a file path", dataset="a dataset name", data_dir="a folder path",
             output_dir="a folder path", ensemble="an ensemble rule, e.g. synapse", estimator="an estimator name",
             mixed_precision="no or bf16", remove="targets: fractions, counts or best, e.g. [0.2, 0.5]",
             plugins="a list of .py files or module names")


RANGED = ("step", "passes", "holdout", "approach", "edit_fraction", "patience", "window", "ladder", "margin",
          "line_search_tries")


def _check_ranges(cfg: dict, origin) -> None:
    """The options checked before anything is built or written (a run refused later left its folder
    behind); ``origin(key)`` names where a value came from (--key, or the --config file's key)."""
    def number(key):
        v = cfg[key]
        return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)

    if cfg["step"] is not None and not (number("step") and cfg["step"] > 0):
        raise SystemExit(f"{origin('step')} must be a number > 0 (or none: the estimator's own), got {cfg['step']!r}")
    if not (number("passes") and cfg["passes"] > 0):
        raise SystemExit(f"{origin('passes')} must be a number > 0 (passes over the train part per target; "
                         f"fractional allowed), got {cfg['passes']!r}")
    # (open at 0 too, unlike the other recipes': the masks are chosen on the held-out part)
    problem = range_problem(origin("holdout"), cfg["holdout"], 0, 1, open_low=True, open_high=True,
                            what="the part of the TRAIN split held out for selection", example="0.1 (say)")
    if problem:
        raise SystemExit(problem)
    for key in ("approach", "edit_fraction"):
        if not (number(key) and 0 <= cfg[key] <= 1):
            raise SystemExit(f"{origin(key)} must be a number in [0, 1], got {cfg[key]!r}")
    if not number("margin"):
        raise SystemExit(f"{origin('margin')} must be a finite number (the estimated improvement a swap must promise, "
                         f"in the estimator's units; 0: any improvement), got {cfg['margin']!r}")
    for key, least in (("patience", 1), ("window", 1), ("line_search_tries", 0)):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise SystemExit(f"{origin(key)} must be an integer >= {least}, got {v!r}")
    ladder = cfg["ladder"] if isinstance(cfg["ladder"], list) else [cfg["ladder"]]
    if any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1 for f in ladder) \
            or any(b <= a for a, b in zip(ladder, ladder[1:])):
        raise SystemExit(f"{origin('ladder')} must be increasing removal fractions in (0, 1), got "
                         f"{' '.join(map(str, ladder))}")
    cfg["ladder"] = [float(f) for f in ladder]
