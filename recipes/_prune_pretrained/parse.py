"""The options of a run: :func:`parse_args` merges the defaults, the --config file and the command
line, loads --plugins and checks every value before anything is built or written."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from adaptive import run_folder
from adaptive.cli import check_parallelism, message_lines, quiet_at_start, start_up_warnings_once
from adaptive.cli_checks import LARGEST_COUNT, range_problem
from adaptive.config import (SEED_RANGE, ConfigError, _exponent_floats, check_keys, dotted_key_values,
                             merge_key_values, normalize_key, seed_in_range)
from adaptive.models import check_model_kw

from .checks import (_TEXT, _check_dataset_kw, _check_file_values, _check_names, _check_ranges, _read_as_recipes_read,
                     _resumed_plugins)
from .options import DEFAULTS, MODEL_SETS, _shown, build_parser, parse_remove


# what leaving out a count option does, offered with its refusal (the others have defaults)
_LEFT_OUT = dict(subset="for all", test_subset="for all")


def parse_args(argv=None) -> argparse.Namespace:
    """The settings of a run: the command line (``argv``, else ``sys.argv``) over its --config file
    over :data:`DEFAULTS`, checked before anything is built or written. Under a multi-process launch
    the warnings of reading them show once, on the first process of each machine (every process reads
    the same settings: :func:`adaptive.cli.start_up_warnings_once`), and so does ``-h`` (the others exit
    with status 0 printing nothing), as in recipes/adaptive.py."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if quiet_at_start() and ("-h" in argv or "--help" in argv):
        raise SystemExit(0)
    with start_up_warnings_once():
        return _parse_args(argv)


def _parse_args(argv) -> argparse.Namespace:
    """:func:`parse_args`, its warnings shown on every process."""
    parser = build_parser()
    args = parser.parse_args(dotted_key_values(sys.argv[1:] if argv is None else argv,
                                                   ("model_kw", "dataset_kw", "estimator_kw")))
    if len(args.config or []) > 1:  # (argparse kept the last one alone, dropping the others' settings unsaid)
        raise SystemExit(f"recipes/prune_pretrained.py: error: --config given {len(args.config)} times "
                         f"({', '.join(args.config)}): it reads one file; merge them into one, or give the other "
                         "settings as options on the command line (they override the file's)")
    args.config = (args.config or [None])[0]
    cfg = dict(DEFAULTS)
    loaded, file_keys = {}, set()
    if args.config is not None:  # (--config '' was read as no file: refused by read_yaml)
        from adaptive.config import read_yaml

        try:
            loaded = read_yaml(args.config, option="--config")
        except ConfigError as e:
            raise SystemExit(f"recipes/prune_pretrained.py: error: {e}") from None
        # `eval-batch-size:` is `eval_batch_size:`, as in recipes/adaptive.py's --config file; both in one file,
        # or `--epochs:` (a command-line option pasted in: the dashes are the command line's), refused as there
        try:
            check_keys(loaded, source=f"in {args.config}")
        except ConfigError as e:
            raise SystemExit(f"recipes/prune_pretrained.py: error: {e}") from None
        loaded = {normalize_key(str(k)): v for k, v in loaded.items()}
        file_keys = set(loaded)  # (before the keys given no value are dropped: weights: null asks for none)
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            raise SystemExit(f"{args.config}: unknown key(s) {unknown}; known: {sorted(DEFAULTS)}"
                             + _unknown_keys_hint(args.config, unknown, set(loaded)))
        # a key with no value (`batch_size:`) is unset: the default, as where the key is left out (it crashed
        # obscurely: "'<' not supported between 'NoneType' and 'int'"); an empty output_dir is refused below
        loaded = {k: v for k, v in loaded.items() if v is not None or k == "output_dir"}
        # YAML 1.1 reads 1e-2 (no decimal point) as text: the number it was written as, as recipes/adaptive.py's
        # --config and the command line read it (`step: 1e-2` was 'must be a number > 0, got '1e-2''); a text
        # option's value stays as written (remove: [1e6] is refused by its own check, naming the count 1000000)
        loaded = {k: v if k in _TEXT else _exponent_floats(v) for k, v in loaded.items()}
        if loaded.get("mixed_precision") is False:  # YAML reads a bare `no` as false
            loaded["mixed_precision"] = "no"
        loaded = _read_as_recipes_read(loaded, parser)  # seed: 1e3 is 1000, overwrite: 'false' false, as there
        _check_file_values(args.config, loaded, parser)
        cfg.update(loaded)
    for k, v in vars(args).items():
        if k not in ("config", "dataset_kw", "model_kw", "estimator_kw") and v is not None:
            cfg[k] = v
    if args.mixed_precision is None and "mixed_precision" not in loaded:  # neither option nor file: the launch's
        cfg["mixed_precision"] = _launch_precision()  # (the default "no" passed to Accelerator dropped it silently)
    for key, what, example in (("dataset_kw", "dataset", "{resize: 232}"), ("model_kw", "model", "{hidden: [64]}"),
                               ("estimator_kw", "estimator", "{damping: 1.0e-6}")):
        if not isinstance(cfg.get(key) or {}, dict):
            raise SystemExit(f"{args.config}: {key} must be a mapping of the {what} builder's arguments, "
                             f"e.g. {example}, got {cfg[key]!r}")
    try:  # the file's mapping updated entry by entry, as recipes/adaptive.py's --dataset_kw and --model_kw
        cfg["dataset_kw"] = merge_key_values(args.dataset_kw or [], base=cfg.get("dataset_kw"))
        cfg["model_kw"] = merge_key_values(args.model_kw or [], "--model-kw", base=cfg.get("model_kw"),
                                           examples=("hidden=[64]", "{depth: 4, width: 64}"))
        cfg["estimator_kw"] = merge_key_values(args.estimator_kw or [], "--estimator-kw", base=cfg.get("estimator_kw"),
                                               examples=("damping=1e-6", "{damping: 1.0e-6}"))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    from adaptive.data.wnids import absolute_wnids
    from adaptive.paths import absolute_if_exists, empty_path_problem, home_expanded
    from adaptive.plugins import PluginError, load_plugins, resolved

    plugins = cfg["plugins"] if isinstance(cfg["plugins"], list) else [cfg["plugins"]]
    plugins = [p.strip() for item in plugins for p in str(item).split(",") if p.strip()]  # "a.py,b.py" as in recipes/adaptive.py
    cfg["plugins"] = resolved(plugins)  # absolute: config.yaml reruns from any working directory
    if isinstance(cfg["weights"], str) and cfg["weights"].strip().lower() in ("", "none", "null"):
        # --weights "" (or weights: '' in a config): none, as build_model has always read it; --weights none, as
        # --help says and recipes/adaptive.py reads it (it was 'does not exist')
        cfg["weights"] = None
    if cfg["output_dir"] is None:  # (a config's output_dir: null; "": the working directory, refused below)
        cfg["output_dir"] = ""
    for key, fix in (("data_dir", "a data folder, or leave it out for the default ($ADAPTIVE_DATA, else ../shared/data)"),
                     ("output_dir", f"the run folder (default: {DEFAULTS['output_dir']}, where output_dir is left out)")):
        where = f"{args.config}: {key}" if getattr(args, key) is None else f"--{key}"
        problem = empty_path_problem(cfg[key], where, fix)
        if problem:
            raise SystemExit(problem)
    # ~ as the shell would have (a --config file's, --weights=~/x; ~ made a folder called ~), before any other reading
    cfg["weights"], cfg["data_dir"], cfg["output_dir"] = (home_expanded(cfg[k]) for k in ("weights", "data_dir", "output_dir"))
    cfg["weights"], cfg["data_dir"] = absolute_if_exists(cfg["weights"]), absolute_if_exists(cfg["data_dir"])
    try:
        cfg["dataset_kw"] = absolute_wnids(cfg["dataset_kw"])  # (its wnids file, as the data folder: config.yaml reruns)
    except ValueError as e:  # (wnids: 1e5, a number: no file name)
        raise SystemExit(str(e)) from None
    if cfg.get("output_dir"):  # config.yaml names this run folder from any working directory
        cfg["output_dir"] = os.path.abspath(cfg["output_dir"])
        problem = run_folder.not_a_folder(cfg["output_dir"])  # (it was refused only after the data had loaded)
        if problem:
            raise SystemExit(problem)
    resumed_plugins = _resumed_plugins(cfg)
    try:
        load_plugins(cfg["plugins"])  # before any name is used: a plugin's names count as built-in ones
    except PluginError as e:
        raise SystemExit(message_lines(e, resumed_plugins(e))) from None
    on_command_line = {k for k, v in vars(args).items() if v is not None}

    def origin(key):  # where the value came from: the error names what to change
        return f"{args.config}: {key}" if key in loaded and key not in on_command_line else f"--{key.replace('_', '-')}"

    _check_names(cfg, origin, resumed_plugins)  # (a name the run's plugin registered, resumed without it: said)
    if cfg.get("resume"):  # every recorded plugin loaded again (one replacing a built-in resumed as the built-in)
        from adaptive.plugins import resume_without_plugins

        problem = resume_without_plugins(Path(cfg.get("output_dir") or ".") / "config.yaml", cfg["plugins"])
        if problem:
            raise SystemExit(problem)
    try:  # a keyword the model does not take, or one the recipe sets: named before anything runs
        check_model_kw(cfg["model"], cfg["model_kw"], origin("model_kw"), sets=MODEL_SETS)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    _check_dataset_kw(cfg["dataset"], cfg["dataset_kw"])
    if cfg["weights"] is not None and not os.path.isfile(cfg["weights"]):  # (it failed once the data had loaded)
        from adaptive.models.tv import weights_name_hint

        named = "" if os.path.exists(cfg["weights"]) else weights_name_hint(cfg["weights"], cfg["model"])
        what = ("is a folder: pass the weights file inside it" if os.path.isdir(cfg["weights"]) else
                "does not exist: pass the path of a saved state_dict (this project never downloads weights)")
        raise SystemExit(f"{origin('weights')} {named}" if named else f"{origin('weights')} {cfg['weights']} {what}")
    from adaptive.models.tv import warn_random_weights, warn_transform_mismatch

    warn_transform_mismatch(cfg["weights"], cfg["dataset"], cfg["dataset_kw"])  # torchvision's own file, by its name
    if cfg["weights"] is None and args.weights is None and "weights" not in file_keys:
        # a torchvision network's masks searched on its random initial weights, said only by a note once the
        # data had loaded (minutes of an ImageNet folder scan); --weights none (or weights: null) asks for it
        warn_random_weights(cfg["model"], origin("model"))
    for key, least in (("batch_size", 1), ("eval_batch_size", 1), ("train_eval_batches", 1), ("verify_batches", 0),
                       ("eval_every", 0), ("subset", 1), ("test_subset", 1), ("threads", 1), ("num_workers", 0)):
        problem = range_problem(origin(key), cfg.get(key), least, whole=True,  # (--key, or the file's key)
                                left_out=_LEFT_OUT.get(key, ""),  # (threads and workers: a tighter bound below)
                                most=None if key in ("threads", "num_workers") else LARGEST_COUNT)
        if problem:
            raise SystemExit(problem)
    n = cfg.get("num_classes")  # (0 was read as left out, the data's; -1 refused once the data had loaded)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise SystemExit(f"{origin('num_classes')} must be an integer >= 1 (the classes of the model's output), got "
                         f"{n!r}: leave it out for the dataset's class count")
    for key, least in (("num_workers", 0), ("threads", 1)):
        try:
            check_parallelism(origin(key), cfg.get(key), least)
        except ValueError as e:
            raise SystemExit(str(e)) from None
    if not seed_in_range(cfg["seed"]):  # as recipes/adaptive.py's (torch.manual_seed overflowed past 2**64)
        raise SystemExit(f"{origin('seed')} must be in {SEED_RANGE}, got {cfg['seed']!r}")
    if cfg["step"] == "none":  # --step none (or step: none in the file): the estimator's own step
        cfg["step"] = None
    _check_ranges(cfg, origin)
    if cfg["step"] is not None and cfg["estimator"] not in ("presence", "evidence"):
        where = (f"{args.config} sets step: {cfg['step']}" if origin("step") != "--step" else f"--step {cfg['step']}")
        raise SystemExit(f"{where}, which applies to the presence and evidence estimators, not {cfg['estimator']!r}: "
                         "give --step none (the estimator's own)")
    removes = cfg["remove"] if isinstance(cfg["remove"], list) else [cfg["remove"]]
    if not removes:  # (a --config file's remove: []; --remove takes one value at least) it failed after the data loaded
        raise SystemExit(f"{origin('remove')} is empty: give at least one target: fractions (0.2), counts (50000) or best")
    cfg["remove"] = parse_remove([str(r) for r in removes])
    if "best" not in cfg["remove"]:
        given = [k for k in ("ladder", "patience") if k in on_command_line]
        targets = ' '.join(map(str, cfg['remove']))
        if given:
            raise SystemExit(f"--{given[0]} applies to --remove best (the climb's rungs), not to the fixed targets "
                             f"{targets}: drop it, or give --remove best")
        # a --config file's too, unless it holds the default: every config.yaml a run writes records
        # ladder and patience, a fixed-target run's the defaults (it reruns); another value went unused
        given = [k for k in ("ladder", "patience") if k in loaded and cfg[k] != DEFAULTS[k]]
        if given:
            raise SystemExit(f"{args.config}: {given[0]} {_shown(cfg[given[0]])} applies to --remove best (the "
                             f"climb's rungs), not to the fixed targets {targets}: drop {given[0]} from "
                             f"{args.config}, or give --remove best")
    threshold = "best" in cfg["remove"] and not cfg["ladder"] and cfg["verify_batches"] > 0
    given = ("line_search_tries" in on_command_line or ("line_search_tries" in loaded and cfg["line_search_tries"]
                                                       != DEFAULTS["line_search_tries"]))
    if given and not threshold:  # (an update toward a size target is kept or rolled back whole: it went unused)
        why = ("with --verify-batches 0 there is no line search" if "best" in cfg["remove"] and not cfg["ladder"] else
               "at a size target an update is kept or rolled back whole")
        raise SystemExit(f"{origin('line_search_tries')} {cfg['line_search_tries']} applies to a line search in threshold "
                         f"mode (--remove best, --ladder with no values, --verify-batches N): {why}; drop it, or run "
                         "threshold mode with a line search")
    if cfg["resume"] and cfg["overwrite"]:
        raise SystemExit("--resume continues the run in --output_dir and --overwrite deletes it: give one of them")
    return argparse.Namespace(**cfg)


def _unknown_keys_hint(path: str, unknown, keys) -> str:
    """What the refusal of a --config file's ``unknown`` keys (of all its ``keys``) adds: that the file is
    recipes/adaptive.py's where every one of its keys is that recipe's (mode, target, epochs, mask_only_kw: a
    mask-only yaml of that recipe, say), else the known key a misspelt one is closest to, and which unknown
    keys are recipes/adaptive.py's; "" where nothing fits."""
    import dataclasses
    import difflib

    from recipes._adaptive.config import RunConfig

    # (with the keys its config.yaml records beside its settings: a mask-only run's estimator_resolved)
    theirs = {f.name for f in dataclasses.fields(RunConfig)} | set(RunConfig.RECORDED_KEYS)
    if set(keys) <= theirs:  # (every key: step: 0.01 with a stray epochs: 3 is no config of that recipe)
        return (f": {path} is a config of recipes/adaptive.py ({', '.join(unknown)}: its keys, not this recipe's): "
                f"run python recipes/adaptive.py --config {path}, or write it in this recipe's keys "
                "(recipes/configs/imagenet_mobilenetv3_maskonly.yaml is the shipped example)")
    close = [f"'{c[0]}' for '{k}'" for k in unknown for c in [difflib.get_close_matches(k, list(DEFAULTS), n=1)] if c]
    others = [k for k in unknown if k in theirs]
    return ((f" (did you mean {', '.join(close)}?)" if close else "")
            + (f" ({', '.join(others)}: key(s) of recipes/adaptive.py, not of this recipe)" if others else ""))


def _launch_precision() -> str:
    """The mixed precision ``accelerate launch --mixed_precision`` (or its config file) gave this process, read
    as Accelerate reads it (``no`` where none): the run's where neither ``--mixed_precision`` nor the --config
    file sets one. fp16, which this recipe does not run, is refused naming the fix."""
    from accelerate.utils import parse_choice_from_env

    given = parse_choice_from_env("ACCELERATE_MIXED_PRECISION", "no").lower()
    if given not in ("no", "bf16"):
        raise SystemExit(f"mixed precision {given} (from accelerate launch or its config) is not one "
                         "recipes/prune_pretrained.py runs: launch with --mixed_precision bf16 or no, or give the "
                         "recipe's own --mixed_precision bf16 or no (after recipes/prune_pretrained.py)")
    return given
