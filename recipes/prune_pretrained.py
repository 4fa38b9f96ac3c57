"""Mask-only connectome optimisation of a pretrained classifier: remove weights, change none.

    python recipes/prune_pretrained.py --model resnet20 \
        --weights ../shared/data/resnet-cifar10/resnet20-12fca82f.th --dataset cifar10 \
        --remove 0.2 0.5 --output_dir runs/r20

On several GPUs (the training batches split over processes, every process holding the same masks):

    accelerate launch --multi_gpu --num_processes 4 recipes/prune_pretrained.py \
        --config recipes/configs/imagenet_mobilenetv3_maskonly.yaml --weights ... --data-dir ...

The weights stay bit-exact and the model stays in evaluation mode (normalisation statistics
frozen); only the connectome changes (see :func:`adaptive.optimize_connectome`). Selection uses the
training split only (a held-out part of it verifies every step and scores the snapshots); the test
split is read once, for the final report, after every decision is made.

Writes into ``--output_dir`` (one subfolder ``remove_<target>`` per target when there are several):
``pruned_state_dict.pt`` (a plain state_dict of CPU tensors with zeros where pruned: ``torch.load(path,
weights_only=True)`` and ``load_state_dict`` into a vanilla model, on any machine), ``connectome.safetensors``;
and at the top: ``results.md`` (the table), ``curves.png`` (loss and accuracy against the number of
removed weights, and the prune/restore boundaries over time), ``history.jsonl``, ``events.jsonl``,
``summary.json`` (the rows, and every process's mask hash per snapshot), ``config.yaml`` (the resolved
options, which ``python -m graphs export OUTPUT_DIR/remove_<target>`` reads; written as the run starts,
and a ``--resume`` with other settings is refused against it), ``checkpoint.pt`` (the run after each
finished target or ladder rung: ``--resume`` continues from it after a crash).

One run per folder (:mod:`adaptive.run_folder`): a run without ``--resume`` into a folder that holds
an earlier run's outputs or checkpoint is refused before anything is written; ``--overwrite``
deletes that run's own files (and nothing else) once the new run's settings are accepted. A lock
on the folder refuses a second run into it while one runs.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import json
import time
from pathlib import Path
from typing import List, Optional

if __name__ == "__main__":  # Ctrl-C while torch is still importing: one line, not a traceback
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _startup  # noqa: F401

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaptive.data import get_dataloaders, is_test_draw, model_before_data, test_images  # noqa: E402
from adaptive import mask_only_checkpoint as stage_checkpoint  # noqa: E402
from adaptive import jsonio  # noqa: E402
from adaptive import run_folder  # noqa: E402
from adaptive.atomic import atomic_path  # noqa: E402
from adaptive.cli import ArgumentParser, mask_only_progress, message_lines, progress_lines, show_progress  # noqa: E402
from adaptive.config import (SEED_RANGE, ConfigError, check_keys, dotted_key_values, merge_key_values,  # noqa: E402
                             normalize_key, seed_in_range)
from adaptive.distributed import gather_mask_hashes  # noqa: E402
from adaptive.metrics import fmt_accuracy  # noqa: E402
from adaptive.mask_only import (check_targets, changed_from, count_synapses, evaluate, loaded_state, optimize_connectome,  # noqa: E402
                                parse_target, resolve_target)
from adaptive.models import RECIPE_SETS, build_model_kw, check_model_kw  # noqa: E402
from adaptive.plots import SPLIT_COLOR, boundary_scale, legend_below, run_title, step_points, tight_artists  # noqa: E402
from adaptive.training import evaluate as evaluate_sharded  # noqa: E402

DEFAULTS = dict(model="resnet20", weights=None, dataset="cifar10", data_dir=None, remove=["best"],
                output_dir="runs/prune_pretrained", seed=0, passes=1.0, batch_size=128, eval_batch_size=500,
                holdout=0.1, subset=None, test_subset=None, ensemble="synapse", estimator="presence", step=None, window=1,
                edit_fraction=1.0, approach=0.0, ladder=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], patience=2,
                verify_batches=0, eval_every=100, train_eval_batches=10,
                threads=None, progress=None, num_classes=None, num_workers=0, cpu=False,
                mixed_precision="no", resume=False, overwrite=False, dataset_kw={}, plugins=[], download=False,
                model_kw={}, estimator_kw={})

# the model's arguments the recipe sets itself, and from what: never a --model-kw entry
MODEL_SETS = dict(RECIPE_SETS, num_classes="--num-classes (default: the dataset's class count)")

CHECKPOINT = "checkpoint.pt"  # OUTPUT_DIR/checkpoint.pt: the run after each finished target or ladder rung
# what a run writes into its folder (the checkpoint first: an --overwrite stopped half-way leaves
# nothing to resume; config.yaml last), and into each target's folder remove_<target> when there
# are several targets (at the top with one)
RUN_FILES = (CHECKPOINT, CHECKPOINT + ".earlier", "results.md", "summary.json", "history.jsonl", "events.jsonl",
             "curves.png", "pruned_state_dict.pt", "connectome.safetensors", "config.yaml")
TARGET_FILES = ("pruned_state_dict.pt", "connectome.safetensors")


# what a refused --resume says to do: the checkpoint is always OUTPUT_DIR/checkpoint.pt
RESUME_FIX = ("To continue it, give that run's settings again with --resume; to start afresh, run without --resume "
              "and with --overwrite (which deletes that run's files), or give another --output_dir")
AFRESH = "start afresh with --overwrite (which deletes that run's files) and no --resume, or give another --output_dir"


def parse_remove(values: List[str]):
    out = []
    for v in values:
        if (v == "best" and out) or "best" in out:
            raise ValueError(f"--remove {' '.join(values)}: 'best' cannot be combined with other targets: run it on its own")
        if v == "best":
            out.append("best")
            continue
        try:
            t = parse_target(v)
        except ValueError as e:
            raise ValueError(f"--remove {v}: {e}") from None
        if any(type(o) is type(t) and o == t for o in out):
            raise ValueError(f"--remove {v}: the target is given twice; give each target once")
        out.append(t)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)  # --remov is not --remove
    p.add_argument("--config", help="YAML file of defaults (keys are the options below, with dashes or underscores)")
    p.add_argument("--plugins", nargs="+", action="extend", help=".py files or module names imported first: their "
                   "register_* calls add models, datasets or estimators that the other options can then name "
                   "(adaptive.plugins; repeatable, the values adding up)")
    p.add_argument("--model", help="model name (adaptive.models registry, or torchvision:NAME)")
    p.add_argument("--model-kw", "--model_kw", dest="model_kw", action="append", metavar="KEY=VALUE",
                   help="an argument of the model's builder, e.g. hidden=[64] for mlp, qkv=separate for vit_tiny or "
                        "transform_input=false for torchvision:googlenet, or several as a YAML mapping "
                        "'{depth: 4, width: 64}' (repeatable, later ones winning per key, over the --config file's; "
                        "also --model-kw.KEY VALUE; YAML values); the run's weights file must fit the model they build")
    p.add_argument("--weights", help="pretrained weights file (loaded strictly; none: random initial weights, a supermask search)")
    p.add_argument("--dataset", help="dataset name (adaptive.data registry)")
    p.add_argument("--data-dir", "--data_dir", dest="data_dir", help="data folder (default: ADAPTIVE_DATA or ../shared/data)")
    p.add_argument("--download", action="store_true", default=None,
                   help="let torchvision download a dataset that is not found (needs internet; not ImageNet)")
    p.add_argument("--remove", nargs="+", action="extend",
                   help="targets: fractions (0.2), counts (50000) or 'best'; several allowed (repeatable, the values "
                        "adding up); 0 writes the dense network's files, scored with no pass over the data (the other "
                        "targets run as without it)")
    p.add_argument("--output_dir", "--output-dir", dest="output_dir",
                   help="run folder: pruned_state_dict.pt, connectome, table, figure, config.yaml (one subfolder "
                        "per target when there are several)")
    p.add_argument("--seed", type=int, help="seed of the train/held-out split, the data order and the controller")
    p.add_argument("--passes", type=float, help="passes over the train part per target (per rung for 'best'; none "
                                                 "for a target of 0)")
    p.add_argument("--ladder", nargs="*", type=float, action="extend",
                   help="for --remove best: removal fractions climbed in order (repeatable, the values adding "
                        "up); none given: threshold mode")
    p.add_argument("--patience", type=int, help="for --remove best: rungs without a better held-out accuracy "
                                                  "before the climb stops")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, help="train batch size")
    p.add_argument("--eval-batch-size", dest="eval_batch_size", type=int,
                   help="batch size of the held-out and test evaluations")
    p.add_argument("--holdout", type=float, help="fraction of the TRAIN split held out for selection")
    p.add_argument("--dataset-kw", "--dataset_kw", dest="dataset_kw", action="append", metavar="KEY=VALUE",
                   help="an argument of the dataset builder, e.g. resize=232 for imagenet, or several as a YAML mapping "
                        "'{resize: 232, image_size: 224}' (repeatable, later ones winning per key, over the "
                        "--config file's; YAML values)")
    p.add_argument("--subset", type=int,
                   help="use only this many train images (quick runs; a stratified draw that includes the held-out part)")
    p.add_argument("--test-subset", "--test_subset", dest="test_subset", type=int,
                   help="report on only this many test images (quick runs; a stratified draw, the same for every row; "
                        "at least one per class; one of the split's size or more takes the whole split)")
    p.add_argument("--ensemble", help="synapse, kernel, neuron, block:RxC; or per layer, first match wins: '*fc*=neuron;synapse'")
    p.add_argument("--estimator", help="utility estimator (presence, evidence, consistency, obd, taylor, ...)")
    p.add_argument("--estimator-kw", "--estimator_kw", dest="estimator_kw", action="append", metavar="KEY=VALUE",
                   help="an argument of the estimator's constructor, e.g. damping=1e-6 for obd, or several as a YAML "
                        "mapping (repeatable, later ones winning per key, over the --config file's; also "
                        "--estimator-kw.KEY VALUE; YAML values); the presence and evidence step is --step")
    p.add_argument("--step", type=number_or_none,
                   help="step of the presence or evidence estimator (none: the estimator's own, also over a "
                        "--config file's step)")
    p.add_argument("--window", type=int, help="training batches per update")
    p.add_argument("--edit-fraction", dest="edit_fraction", type=float,
                   help="most swaps per update, as a fraction of the live ensembles (decays over a stage)")
    p.add_argument("--approach", type=float, help="fraction of each stage spent reaching its target")
    p.add_argument("--verify-batches", dest="verify_batches", type=int, help="held-out batches per line search (0: no line search)")
    p.add_argument("--eval-every", dest="eval_every", type=int, help="updates between held-out evaluations")
    p.add_argument("--train-eval-batches", dest="train_eval_batches", type=int,
                   help="batches' worth of train-part images (a fixed sample) behind the table's train loss and accuracy")
    p.add_argument("--num-classes", dest="num_classes", type=int,
                   help="classes of the model's output (default: the dataset's)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    p.add_argument("--num-workers", "--num_workers", dest="num_workers", type=int,
                   help="data loading worker processes per process (ImageNet JPEGs want several)")
    p.add_argument("--cpu", action="store_true", default=None, help="stay on the CPU even when a GPU is there")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the run recorded in OUTPUT_DIR/checkpoint.pt after its last finished target "
                        "(or ladder rung); without it, a folder that holds an earlier run is refused")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="start afresh in an --output_dir that holds an earlier run, deleting that run's own files "
                        "(checkpoint, outputs, remove_* results, graph exports; no other file) once this run's "
                        "settings are accepted (by default such a run is refused)")
    p.add_argument("--mixed-precision", "--mixed_precision", dest="mixed_precision", choices=["no", "bf16"],
                   help="bf16: forward and backward passes under bf16 autocast (weights stay float32 and "
                        "bit-exact; the presence statistics are float32)")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="progress bars (data decoding, optimisation, final report) even when stderr is not a "
                        "terminal (default: bars only when stderr is a terminal, none into pipes and log files)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bars, even on a terminal (default: bars only when stderr is a terminal)")
    for action in p._actions:  # every option's help names the default a run without it gets
        if action.help and DEFAULTS.get(action.dest) is not None and action.dest not in ("progress", "resume", "cpu",
                                                                                            "download", "overwrite"):
            action.help += f" (default: {_shown(DEFAULTS[action.dest])})"
    return p


def number_or_none(text: str):
    """--step: a number, or none (unset: the estimator's own step, over a --config file's step too)."""
    return "none" if text.strip().lower() == "none" else float(text)


def _shown(value) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


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
            refuse(f"{origin(key)} {cfg[key]}: unknown {key}: use one of {', '.join(sorted(names))}{hint}")

    plugin = " (or register your own in a file given with --plugins)"
    if ":" not in cfg["model"] and cfg["model"].lower() not in available_models():
        refuse(f"{origin('model')} {cfg['model']}: unknown model: use one of {', '.join(available_models())} "
                         f"(torchvision:NAME is any torchvision classifier){plugin}")
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
            hint = (f": write true or false unquoted (YAML reads a quoted {value!r} as text, which counts as true)"
                    if isinstance(value, str) else "")
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
        if action.type is int and any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise SystemExit(f"{path}: {key} must be an integer, got {value!r}")
        if action.type in (float, number_or_none) and any(
                isinstance(v, bool) or not isinstance(v, (int, float)) for v in values if v != "none"):
            raise SystemExit(f"{path}: {key} must be a number, got {value!r}")


# what each text option of a --config file names (its value must be text, as on the command line)
_TEXT = dict(model="a model name", weights="a file path", dataset="a dataset name", data_dir="a folder path",
             output_dir="a folder path", ensemble="an ensemble rule, e.g. synapse", estimator="an estimator name",
             mixed_precision="no or bf16", remove="targets: fractions, counts or best, e.g. [0.2, 0.5]",
             plugins="a list of .py files or module names")


RANGED = ("step", "passes", "holdout", "approach", "edit_fraction", "patience", "window", "ladder")


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
    if not (number("holdout") and 0 < cfg["holdout"] < 1):
        raise SystemExit(f"{origin('holdout')} must be a fraction in (0, 1) (the part of the TRAIN split held out "
                         f"for selection), got {cfg['holdout']!r}")
    for key in ("approach", "edit_fraction"):
        if not (number(key) and 0 <= cfg[key] <= 1):
            raise SystemExit(f"{origin(key)} must be a number in [0, 1], got {cfg[key]!r}")
    for key, least in (("patience", 1), ("window", 1)):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise SystemExit(f"{origin(key)} must be an integer >= {least}, got {v!r}")
    ladder = cfg["ladder"] if isinstance(cfg["ladder"], list) else [cfg["ladder"]]
    if any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1 for f in ladder) \
            or any(b <= a for a, b in zip(ladder, ladder[1:])):
        raise SystemExit(f"{origin('ladder')} must be increasing removal fractions in (0, 1), got "
                         f"{' '.join(map(str, ladder))}")
    cfg["ladder"] = [float(f) for f in ladder]


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(dotted_key_values(sys.argv[1:] if argv is None else argv,
                                                   ("model_kw", "dataset_kw", "estimator_kw")))
    cfg = dict(DEFAULTS)
    loaded = {}
    if args.config:
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
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            raise SystemExit(f"{args.config}: unknown key(s) {unknown}; known: {sorted(DEFAULTS)}")
        # a key with no value (`batch_size:`) is unset: the default, as where the key is left out (it crashed
        # obscurely: "'<' not supported between 'NoneType' and 'int'"); an empty output_dir is refused below
        loaded = {k: v for k, v in loaded.items() if v is not None or k == "output_dir"}
        if loaded.get("mixed_precision") is False:  # YAML reads a bare `no` as false
            loaded["mixed_precision"] = "no"
        _check_file_values(args.config, loaded, parser)
        cfg.update(loaded)
    for k, v in vars(args).items():
        if k not in ("config", "dataset_kw", "model_kw", "estimator_kw") and v is not None:
            cfg[k] = v
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
    from adaptive.paths import absolute_if_exists
    from adaptive.plugins import PluginError, load_plugins, resolved

    plugins = cfg["plugins"] if isinstance(cfg["plugins"], list) else [cfg["plugins"]]
    plugins = [p.strip() for item in plugins for p in str(item).split(",") if p.strip()]  # "a.py,b.py" as in recipes/adaptive.py
    cfg["plugins"] = resolved(plugins)  # absolute: config.yaml reruns from any working directory
    if isinstance(cfg["weights"], str) and not cfg["weights"].strip():
        cfg["weights"] = None  # --weights "" (or weights: '' in a config): none, as build_model has always read it
    cfg["weights"], cfg["data_dir"] = absolute_if_exists(cfg["weights"]), absolute_if_exists(cfg["data_dir"])
    if cfg["output_dir"] is None or (isinstance(cfg["output_dir"], str) and not cfg["output_dir"].strip()):
        where = f"{args.config}: output_dir" if args.output_dir is None else "--output_dir"  # ("": the working directory)
        raise SystemExit(f"{where} is empty: give the run folder (default: {DEFAULTS['output_dir']}, where "
                         "output_dir is left out)")
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
    try:  # a keyword the model does not take, or one the recipe sets: named before anything runs
        check_model_kw(cfg["model"], cfg["model_kw"], origin("model_kw"), sets=MODEL_SETS)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    _check_dataset_kw(cfg["dataset"], cfg["dataset_kw"])
    if cfg["weights"] is not None and not os.path.isfile(cfg["weights"]):  # (it failed once the data had loaded)
        what = ("is a folder: pass the weights file inside it" if os.path.isdir(cfg["weights"]) else
                "does not exist: pass the path of a saved state_dict (this project never downloads weights)")
        raise SystemExit(f"{origin('weights')} {cfg['weights']} {what}")
    for key, least in (("batch_size", 1), ("eval_batch_size", 1), ("train_eval_batches", 1), ("verify_batches", 0),
                       ("eval_every", 0), ("subset", 1), ("test_subset", 1), ("threads", 1), ("num_workers", 0)):
        v = cfg.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < least):
            raise SystemExit(f"--{key.replace('_', '-')} must be an integer >= {least}, got {v!r}")
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
    if cfg["resume"] and cfg["overwrite"]:
        raise SystemExit("--resume continues the run in --output_dir and --overwrite deletes it: give one of them")
    return argparse.Namespace(**cfg)


def _target_folders(out: Path) -> List[Path]:
    """The per-target folders (remove_<target>) in ``out`` that hold a result of the recipe's; never
    a symbolic link (it may lead anywhere: --overwrite must not delete through it)."""
    return sorted(d for d in out.glob("remove_*")
                  if d.is_dir() and not d.is_symlink() and run_folder.existing(d, TARGET_FILES))


def _earlier_run(out: Path) -> List[str]:
    """The files and result folders of an earlier run in ``out`` (empty: none)."""
    return run_folder.existing(out, RUN_FILES) + [f"{d.name}/" for d in _target_folders(out)]


def _doomed(out: Path) -> List[Path]:
    """What --overwrite deletes in ``out``: the run's files, and the graph exports and progress
    figures derived from them, at the top and in its result folders."""
    names = RUN_FILES + run_folder.DERIVED_FILES
    return [out / n for n in names] + [d / n for d in _target_folders(out) for n in TARGET_FILES + run_folder.DERIVED_FILES]


# what only a recipes/adaptive.py run leaves in its folder: --overwrite here would delete half of it
OTHER_RECIPE_FILES = ("checkpoints", "metrics.csv", "dense_state_dict.pt", "mask_only_checkpoint.pt")


def _refuse_earlier_run(args, out: Path) -> None:
    """A run without --resume into a folder that holds an earlier run would leave that run's files
    (its other targets' folders above all) beside the new ones, where they read as this run's:
    refused unless --overwrite; a folder of a recipes/adaptive.py run is refused even then."""
    run_folder.refuse_other_recipe(out, OTHER_RECIPE_FILES, "recipes/adaptive.py")
    run_folder.refuse_result_folder(out, RUN_FILES, "recipes/prune_pretrained.py")
    resumable = run_folder.existing(out, (CHECKPOINT, CHECKPOINT + ".earlier"))
    run_folder.refuse_earlier_run(out, _earlier_run(out), overwrite=args.overwrite, weights=args.weights,
                                  doomed=_doomed(out),
                                  resume_hint="continue it with the same command and --resume, " if resumable else "")


def _delete_run(out: Path, keep=()) -> None:
    """--overwrite: the earlier run's files (the checkpoint first, config.yaml last; none of
    ``keep``) and result folders go; a result folder that holds a file of someone else's keeps it,
    and stays."""
    if not _earlier_run(out) and not run_folder.existing(out, [n for n in RUN_FILES[:2] if n not in keep]):
        return  # no earlier run: the graph exports and figures here are not one's, whoever made them
    checkpoints = [n for n in RUN_FILES[:2] if n not in keep]
    run_folder.delete_files(out, checkpoints)
    for d in _target_folders(out):
        run_folder.delete_files(d, TARGET_FILES + run_folder.DERIVED_FILES, trees=run_folder.DERIVED_DIRS)
        if not any(d.iterdir()):
            d.rmdir()
    run_folder.delete_files(out, run_folder.DERIVED_FILES + RUN_FILES[2:], trees=run_folder.DERIVED_DIRS)


def _plot(history, snapshots_rows, events, path, title: str = "", holdout_images: Optional[int] = None):
    """``curves.png``: loss and accuracy against removed weights, the removed count and swaps per
    update against step, and the edit boundaries; ``title`` (the model and dataset) heads it, and
    the held-out line's legend gives ``holdout_images``, the held-out part's size, where known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import EngFormatter, MaxNLocator

    ups = [h for h in history if h["kind"] == "update"]
    evs = [h for h in history if h["kind"] == "eval"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    # the network the run started from: dense, or a sparse start's row (its absent synapses removed already)
    dense = [r for r in snapshots_rows if (r.get("target") in ("dense", "start") or r.get("removed") == 0)
             and r.get("holdout_acc") is not None]
    held_out = "part of TRAIN" + (f", {holdout_images:,} images" if holdout_images is not None else "")
    for ax, key, name in ((axes[0, 0], "loss", "loss"), (axes[0, 1], "acc", "accuracy")):
        if ups:  # (a run whose every target is 0 has none: no empty legend entry)
            ax.plot([h.get("train_removed", h["removed"]) for h in ups], [h[f"train_{key}"] for h in ups], ".", ms=3,
                    alpha=0.5, color=SPLIT_COLOR["train"], label="train (update windows)")
        ends = sorted(_stage_ends(evs))
        held = {evs[i]["removed"]: evs[i][f"holdout_{key}"] for i in ends}
        if dense and dense[0]["removed"] not in held:  # the starting network's score starts the line
            held[dense[0]["removed"]] = dense[0][f"holdout_{key}"]
        during = [(h["removed"], h[f"holdout_{key}"]) for i, h in enumerate(evs) if i not in ends]
        if during:  # evaluations before a stage had settled: right after a jump the network is still adapting
            ax.plot(*zip(*during), "o", ms=3, mfc="none", color=SPLIT_COLOR["holdout"], alpha=0.8, zorder=3,
                    label="held-out, during a stage")
        ax.plot(sorted(held), [held[r] for r in sorted(held)], "o-", ms=4, color=SPLIT_COLOR["holdout"], zorder=3,
                label=f"held-out ({held_out}), end of each stage")  # over the test squares at the same counts
        rows = [r for r in snapshots_rows if r.get(f"test_{key}") is not None]
        ax.plot([r["removed"] for r in rows], [r[f"test_{key}"] for r in rows], "s", ms=7,
                color=SPLIT_COLOR["test"], label="test (final report)")
        ax.set_xlabel("removed weights")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a count: no "500 m" ticks between 0 and 3
        ax.xaxis.set_major_formatter(EngFormatter())
        counts = {x for line in ax.get_lines() for x in line.get_xdata()}
        if len(counts) == 1:  # one count (every target 0): a tick there, not "-40 m" ticks around it
            ax.set_xticks(list(counts))
        ax.set_ylabel(name)
        ax.set_title(f"{name} against removed weights", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes[1, 0]
    # a step function: the count jumps at an update and holds until the next; from step 0 at the count
    # the first update's window ran with (the starting network), on to the last logged step
    last = max((h["step"] for h in history if isinstance(h.get("step"), (int, float))), default=None)
    if ups:
        xs, ys = step_points([h["step"] for h in ups], [h["removed"] for h in ups],
                             start=ups[0].get("train_removed"), last_step=last)
        ax.plot(xs, ys, color="k", label="removed weights", drawstyle="steps-post")
        ax.yaxis.set_major_formatter(EngFormatter())
    else:  # every target 0: the dense network, scored with no stage run (both lower panels share this step axis)
        at = ("a target of 0 is the dense network" if not any(r.get("target") == "start" for r in snapshots_rows)
              else "a target at a sparse start is the network as loaded")
        ax.text(0.5, 0.5, f"no updates ran ({at}, with no stage run)", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_xticks([0])
        ax.set_yticks([])
    ax.set_xlabel("training batch")
    ax.set_ylabel("removed weights")
    ax.set_title("the connectome crawling: removed weights, and synapses swapped per update", fontsize=10)
    ax.grid(alpha=0.3)
    swaps = [(e["step"], min(e.get("pruned") or 0, e.get("grown") or 0)) for e in events if e.get("kind") == "update"]
    swaps = [(t, n) for t, n in swaps if n > 0]
    handles, labels = ax.get_legend_handles_labels()
    if swaps:  # at a fixed count the connectome still moves: as many pruned as restored
        twin = ax.twinx()
        twin.plot(*zip(*swaps), "o", ms=3, color="tab:purple", alpha=0.7, label="swapped per update (right axis)")
        twin.set_yscale("log")
        twin.set_ylabel("synapses swapped per update", color="tab:purple")
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if handles:  # both axes' entries in one legend under the panel: inside, the twin axis's dots fell on it
        legend_below(ax, handles, labels, ncol=2)
    ax = axes[1, 1]
    pb = [(e["step"], e["boundaries"]["prune"]) for e in events if e.get("boundaries") and e["boundaries"].get("prune") is not None]
    rb = [(e["step"], e["boundaries"]["restore"]) for e in events if e.get("boundaries") and e["boundaries"].get("restore") is not None]
    if rb:  # drawn first and larger: at a goal the two boundaries meet, and the prune one stays visible on top
        ax.plot(*zip(*rb), ".", ms=4, color="tab:green", label="restore boundary (restoration gain of the last restored)")
    if pb:
        ax.plot(*zip(*pb), ".", ms=1.5, color="tab:red", label="prune boundary (removal cost of the last pruned)")
    if rb or pb:
        boundary_scale(ax, [v for _, v in rb + pb])
        legend_below(ax, ncol=1)  # inside, it covered the boundaries at the top of the panel
    else:
        ax.text(0.5, 0.5, "no edits logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])  # (0 to 1 was no boundary's scale)
    ax.set_xlabel("training batch")
    ax.set_ylabel("edit boundary (estimator value)")
    ax.set_title("edit boundaries over time", fontsize=10)
    ax.grid(alpha=0.3)
    axes[1, 1].sharex(axes[1, 0])
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        # "tight": the canvas grows to hold the legend under a panel
        fig.savefig(tmp, dpi=120, bbox_inches="tight", bbox_extra_artists=tight_artists(fig))
    plt.close(fig)


def _train_sample(dl, args):
    """``train_eval_batches`` batches' worth of train-part images drawn once (seeded), in a fixed
    order: every row of the table is scored on the same images. (Iterating the shuffled train loader
    anew for each row drew other images each time.)"""
    from torch.utils.data import DataLoader, Subset

    ds = dl.train.dataset
    n = min(args.train_eval_batches * args.batch_size, len(ds))
    pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed))[:n].sort().values
    return DataLoader(Subset(ds, pick.tolist()), batch_size=args.eval_batch_size, shuffle=False,
                      num_workers=args.num_workers)


def _stage_ends(evs) -> set:
    """Indices of the last evaluation of each stage (``evs`` in time order): where a stage settled
    before the next one moved on (records without a stage are grouped by removal count)."""
    last = {}
    for i, h in enumerate(evs):
        last[("stage", h["stage"]) if "stage" in h else ("removed", h["removed"])] = i
    return set(last.values())


def _table(rows) -> str:
    head = ("| target | removed | removed % | train loss | train acc % | held-out loss | held-out acc % | test loss | test acc % |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
    body = "".join(
        f"| {r['target']} | {r['removed']} | {100 * r['fraction']:.1f} | {r['train_loss']:.4f} | {fmt_accuracy(r['train_acc'])} | "
        f"{r['holdout_loss']:.4f} | {fmt_accuracy(r['holdout_acc'])} | {r['test_loss']:.4f} | {fmt_accuracy(r['test_acc'])} |\n"
        for r in rows)
    return head + body


def _estimator(args):
    """The estimator by name, or an instance built with ``--estimator-kw`` and, for the estimators
    that take one, ``--step``."""
    from adaptive.utility import configured_estimator

    if args.step is not None and args.estimator not in ("presence", "evidence"):
        raise ValueError(f"--step applies to the presence and evidence estimators, not {args.estimator!r}")
    step = {} if args.step is None else {"step": args.step}
    return configured_estimator(args.estimator, {**args.estimator_kw, **step}, option="--estimator-kw")


def _accelerator(args):
    """One process per device under ``accelerate launch``; a plain run uses the GPU when there is
    one (``--cpu`` to stay on the CPU)."""
    from accelerate import Accelerator

    return Accelerator(cpu=bool(args.cpu) or not torch.cuda.is_available(), mixed_precision=args.mixed_precision)


def _check_num_classes(args, num_classes: int) -> None:
    """--num-classes must be the data's: labels are its class indices 0..K-1, which a model of another
    class count scores wrongly (a 1000-class run on a 2-class folder reported 0% everywhere)."""
    if args.num_classes and num_classes and args.num_classes != num_classes:
        raise ValueError(f"--num-classes {args.num_classes} does not match the {num_classes} classes of the "
                         f"{args.dataset} data: give --num-classes {num_classes} (and weights of that many classes), or "
                         "data with the model's classes")


def _build(args, num_classes: int, in_shape) -> torch.nn.Module:
    """The model for data of ``num_classes`` classes (unless --num-classes says, which must be the
    data's) and inputs ``in_shape``, its --remove counts checked against its synapses."""
    _check_num_classes(args, num_classes)
    model = build_model_kw(args.model, args.model_kw, "--model-kw", num_classes=args.num_classes or num_classes,
                           in_shape=in_shape, weights=args.weights)
    check_targets(model, args.remove, ensemble=args.ensemble)
    return model


def main(argv=None, test_loader_hook=None) -> dict:
    """Run the recipe; returns a summary (rows, paths). ``test_loader_hook(loader)`` may wrap the
    test loader (tests use it to prove the test split is read only for the final report).

    Runs on the GPU when there is one; ``accelerate launch --num_processes N`` splits the training
    batches over N processes (the controller averages its statistics, so every process holds the
    same masks; each scores the whole holdout), the test split is split for the final report, and
    only the main process writes."""
    args = parse_args(argv)
    out = Path(args.output_dir)
    checked = None  # what the check of the checkpoint read: the run's load takes it (one read of the file)
    if not args.resume:  # before anything is built or written
        _refuse_earlier_run(args, out)
    else:  # before any data is read: a run continues with the settings it was started with
        if not (out / CHECKPOINT).is_file() and not (out / (CHECKPOINT + ".earlier")).is_file():
            # the command it names must run: not into another recipe's run or a result folder, and
            # with --overwrite where an earlier run is (a run killed before its first target leaves config.yaml)
            run_folder.refuse_other_recipe(out, OTHER_RECIPE_FILES, "recipes/adaptive.py")
            run_folder.refuse_result_folder(out, RUN_FILES, "recipes/prune_pretrained.py")
            earlier = _earlier_run(out)
            start = (f"it holds an earlier run ({', '.join(earlier[:3])}{' ...' if len(earlier) > 3 else ''}) with no "
                     f"target recorded to continue from (stopped before its first one, say): {AFRESH}" if earlier
                     else "run without --resume to start")
            raise FileNotFoundError(f"--resume: no {CHECKPOINT} in {out} to continue; {start}")
        _check_resumed_settings(args, out)
        ckpt = out / CHECKPOINT if (out / CHECKPOINT).is_file() else out / (CHECKPOINT + ".earlier")
        try:  # a damaged one was refused only once the data had loaded (its settings are compared then)
            checked = stage_checkpoint.check_readable(ckpt)
        except stage_checkpoint.CheckpointMismatchError as e:
            raise e.with_fix(RESUME_FIX, afresh=AFRESH) from None
    try:
        return _run(args, out, checked, test_loader_hook)
    finally:  # a run stopped before its load (data refused, say) holds no checkpoint state after it
        if checked is not None:
            checked.drop()


def _run(args, out: Path, checked, test_loader_hook) -> dict:
    """The command once its options and --resume's checkpoint are checked: data, model, then the
    run in its locked folder. ``checked``: what the check read of the checkpoint, for its load."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # the model (its weights loaded) before the data where the dataset knows its classes and input
    # shape unread: a weights file that does not fit, or a count beyond the model's synapses, is
    # refused before minutes of data loading (an ImageNet folder scan, CIFAR-10's JPEG decoding)
    model_for = model_before_data(args.dataset, lambda k, shape: _build(args, k, shape), data_dir=args.data_dir,
                                  download=args.download, **args.dataset_kw)
    dl = get_dataloaders(args.dataset, batch_size=args.batch_size, data_dir=args.data_dir, holdout=args.holdout,
                         download=args.download,
                         seed=args.seed, subset=args.subset, test_subset=args.test_subset, eval_batch_size=args.eval_batch_size,
                         num_workers=args.num_workers, progress=args.progress, holdout_required=True,
                         option_names={"subset": "--subset", "test_subset": "--test-subset", "holdout": "--holdout"}, **args.dataset_kw)
    test_loader = test_loader_hook(dl.test) if test_loader_hook else dl.test  # wrapping reads nothing
    model = model_for(dl.num_classes, dl.in_shape)
    accelerator = _accelerator(args)
    model = model.to(accelerator.device)  # no DDP wrapper: no weight trains, the controller reduces its statistics
    train_dl = accelerator.prepare(dl.train)
    accelerator.print(f"{args.model}: mask-only on {accelerator.device}, {accelerator.num_processes} process(es), "
                      f"{len(train_dl)} train batches of {args.batch_size} per process and pass")
    if args.weights is None:
        accelerator.print("note: no --weights given, so the masks are learned on the network's random initial "
                          "weights (a supermask search), not on a pretrained network; pass --weights FILE for that")
    lock = run_folder.RunLock(accelerator, out)  # taken before the run's first write into the folder
    lock.acquire(None if args.resume else lambda: _refuse_earlier_run(args, out))
    try:
        return _prune(args, dl, test_loader, model, train_dl, accelerator, out, checked)
    except BaseException:  # refused (a count beyond the model's synapses, say) before writing: it leaves no folder
        lock.release(refused=True)
        raise
    finally:
        lock.release()


def _prune(args, dl, test_loader, model, train_dl, accelerator, out: Path, checked=None) -> dict:
    """The run, once it holds its folder: optimisation, then the final report and the outputs.
    ``checked``: what --resume's check read of the checkpoint (the optimisation's load takes it)."""
    main_proc = accelerator.is_main_process
    ckpt_path = out / CHECKPOINT
    # without --resume an earlier checkpoint is here only with --overwrite: set aside, so that a run
    # refused by optimize_connectome (its settings checked first) leaves the earlier run whole
    stage_checkpoint.begin(ckpt_path, args.resume)
    # (an earlier --overwrite run killed before its settings were accepted left the checkpoint set aside)
    replacing = args.overwrite and bool(_earlier_run(out))
    if replacing:
        accelerator.print(f"--overwrite: the earlier run in {out} is deleted once this run's settings are accepted "
                          f"(at its first update or held-out evaluation); until then it is kept whole, its "
                          f"{CHECKPOINT} too")
    accelerator.wait_for_everyone()
    deleted = []
    # config.yaml records the settings before the first stage checkpoint, so that a --resume after a
    # crash is checked against them (_check_resumed_settings); a run that records no stage takes it back
    wrote_config = []

    def write_config():
        if main_proc:
            _write_config(args, dl, out)
            wrote_config.append(True)

    def delete_earlier_run(_record=None):  # --overwrite: settings accepted, the earlier run goes (once)
        if args.overwrite and not deleted:
            deleted.append(True)
            _STARTED["replaced_earlier"] = True  # from here on, checkpoint.pt is this run's (Ctrl-C says so)
            if main_proc:
                _delete_run(out, keep=(CHECKPOINT,))  # checkpoint.pt, if there, is this run's (set aside above)
                write_config()

    if not args.overwrite and (not args.resume or (out / "config.yaml").is_file()):
        write_config()  # (an --overwrite run's goes once the earlier run's config.yaml has gone, above)
    show = (mask_only_progress(count_synapses(model), lambda line: accelerator.print(line, flush=True))
            if progress_lines(args.progress, main_proc) else None)

    def on_record(record):
        delete_earlier_run(record)
        if show is not None:  # no bar: one plain line per held-out evaluation
            show(record)

    extra = {"callback": on_record} if args.overwrite or show is not None else {}
    loaded = loaded_state(model)  # the weights as loaded, before the connectome: what the report checks against
    t0 = time.time()
    try:
        with accelerator.autocast():  # --mixed-precision bf16: forward passes in bf16, weights and masks untouched
            result = optimize_connectome(
                model, train_dl, dl.holdout, args.remove, passes=args.passes, ensemble=args.ensemble,
                estimator=_estimator(args), window=args.window, edit_fraction=args.edit_fraction,
                approach=args.approach, verify_batches=args.verify_batches, eval_every=args.eval_every, seed=args.seed,
                progress=show_progress(args.progress) and accelerator.is_local_main_process, ladder=args.ladder,
                patience=args.patience, checkpoint=ckpt_path, _checked=checked, **extra)
    except stage_checkpoint.CheckpointMismatchError as e:  # the recipe's checkpoint path is OUTPUT_DIR/checkpoint.pt
        raise e.with_fix(RESUME_FIX, afresh=AFRESH) from None
    except Exception as e:  # (a Ctrl-C says so in _on_interrupt)
        if replacing and not deleted:  # stopped before the settings were accepted: --overwrite deleted nothing
            e.add_note(_kept_earlier_note(out))
        raise
    finally:  # --overwrite: the earlier run's checkpoint survives a run refused before its first update
        stage_checkpoint.settle(ckpt_path)
        if wrote_config and not args.resume and not ckpt_path.is_file():  # stopped before its first stage:
            (out / "config.yaml").unlink(missing_ok=True)  # nothing to resume, nothing left behind
    delete_earlier_run()
    # the optimisation's wall time over every session of a resumed run (its snapshots carry it on)
    minutes = max([(time.time() - t0) / 60] + [s.wall_seconds / 60 for s in result.snapshots.values()])
    conn = result.conn
    total = conn.num_synapses()

    # ---- final report: the only place the test split is read (built and split over processes only now)
    test_dl = accelerator.prepare(test_loader)

    train_sample = _train_sample(dl, args)

    from tqdm.auto import tqdm

    rows, hashes = [], {}
    # one bar over every evaluation of the report: the dense network's train sample, held-out part
    # and test split, then each snapshot's train sample and test split
    report_bar = tqdm(total=(1 + len(result.snapshots)) * (len(train_sample) + len(test_dl)) + len(dl.holdout),
                      desc="final report", unit="batch", mininterval=1.0, leave=False,
                      disable=not (show_progress(args.progress) and accelerator.is_local_main_process))

    def train_eval():  # the same images for every row and on every process
        return evaluate(model, train_sample, progress=report_bar)

    with torch.no_grad(), accelerator.autocast():
        conn.set_masks({n: torch.ones_like(m) for n, m in conn.masks.items()})
        tl, ta, _ = train_eval()
        hl, ha, _ = evaluate(model, dl.holdout, progress=report_bar)
        sl, sa, n_test = evaluate_sharded(accelerator, model, test_dl, progress=report_bar)
        # a sparse start (weights of exactly 0.0, absent from the start): its row is the network as loaded
        start = result.start_removed
        rows.append(dict(target="start" if start else "dense", removed=start, fraction=start / total, train_loss=tl,
                         train_acc=ta, holdout_loss=hl, holdout_acc=ha, test_loss=sl, test_acc=sa))
        several = len(result.snapshots) > 1
        for label, snap in result.snapshots.items():
            result.use(label)
            pruned_sd = conn.dense_state_dict(device="cpu")  # the file loads on a machine without a GPU
            differ = changed_from(pruned_sd, loaded, conn)  # every tensor, against the copy taken at load
            hashes[label] = gather_mask_hashes(accelerator, conn)
            if len(set(hashes[label])) != 1:  # before anything is written
                raise RuntimeError(f"[{label}] the processes hold different masks (hashes {hashes[label]}): "
                                   "a bug; every process must run the same command with the same seed")
            folder = out / f"remove_{label}" if several else out
            if main_proc:
                folder.mkdir(parents=True, exist_ok=True)
                with atomic_path(folder / "pruned_state_dict.pt") as tmp:  # never a truncated file
                    torch.save(pruned_sd, tmp)
                conn.save(folder / "connectome.safetensors")
            tl, ta, _ = train_eval()
            sl, sa, _ = evaluate_sharded(accelerator, model, test_dl, progress=report_bar)
            accelerator.print(f"[{label}] surviving weights that differ from the original: {differ} "
                              "(every tensor of pruned_state_dict.pt, biases and normalisation statistics too, "
                              "compared bit for bit with the weights as loaded)")
            rows.append(dict(target=label, removed=snap.removed, fraction=snap.removed / total, train_loss=tl,
                             train_acc=ta, holdout_loss=snap.holdout_loss, holdout_acc=snap.holdout_acc,
                             test_loss=sl, test_acc=sa, changed=differ, folder=str(folder)))
    report_bar.close()
    table = _table(rows)
    note = (f"\n{args.model} on {args.dataset}, {total} prunable synapses, {minutes:.1f} min of optimisation "
            f"on {accelerator.num_processes} process(es) ({accelerator.device.type}, mixed precision "
            f"{args.mixed_precision}"
            + ("; every figure here was measured under bf16 autocast, so a float32 evaluation of "
               "pruned_state_dict.pt differs in the last digits" if args.mixed_precision == "bf16" else "")
            + ").\n"
            f"Splits: train = a fixed random sample of {len(train_sample.dataset)} images of the train part (the same for "
            f"every row); held-out = a stratified part of the TRAIN split ({len(dl.holdout.dataset):,} images; "
            f"{_holdout_use(args, total, result.start_removed)}); test = "
            + _test_split_words(args, dl.test, n_test)  # (the data's loader: a test_loader_hook's wrapper may hide it)
            + ", read only for this report.\n")
    accelerator.print(table + note)
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "results.md") as tmp:
            tmp.write_text("# prune_pretrained\n\n" + table + note)
        with atomic_path(out / "history.jsonl") as tmp, open(tmp, "w") as f:
            for h in result.history:
                f.write(json.dumps(h, default=float) + "\n")
        result.controller.write_events(out / "events.jsonl")
        _plot(result.history, rows, result.events, out / "curves.png",
              title=run_title(args.model, args.dataset, out, what="prune_pretrained: "),
              holdout_images=len(dl.holdout.dataset))
        summary = dict(rows=rows, minutes=minutes, processes=accelerator.num_processes,
                       device=accelerator.device.type, mask_hash_per_process=hashes)
        with atomic_path(out / "summary.json") as tmp:
            tmp.write_text(jsonio.dumps(summary, indent=1))
        _write_config(args, dl, out)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"rows": rows, "output_dir": str(out), "result": result, "minutes": minutes,
            "mask_hash_per_process": hashes}


def _holdout_use(args, total: int, start: int = 0) -> str:
    """What the held-out part decided in this run of ``total`` prunable synapses, for the Splits note
    (it said 'line search and snapshot choice' also where it decided nothing, only scored the masks;
    for --remove best on a ladder it left out that the held-out scores also stop the climb; and it said
    'line search of every update' where every target was 0, which runs no update). ``start``: the
    synapses a sparse start had already lost (a target of that many, as 0 on a dense one, runs no update)."""
    best = "best" in args.remove
    # a target at the start (0, or a sparse start's count) has no stage ("best": None)
    updates = any(resolve_target(t, total) != start for t in args.remove)
    climb = (f"when the climb stops ({args.patience} rung{'s' if args.patience != 1 else ''} without a better "
             "held-out score, --patience)")
    uses = (["the line search of every update"] if args.verify_batches and updates else []) + (
        ["the choice of the best snapshot"] if best else []) + ([climb] if best and args.ladder else [])
    if uses:
        return "used for " + ", ".join(uses[:-1]) + (" and " if len(uses) > 1 else "") + uses[-1]
    if not updates:
        return ("scored only: a target of 0 is the dense network, with no update to verify" if not start else
                f"scored only: a target of {start:,} removed is the network as loaded (its weights of exactly 0.0 "
                "absent from the start), with no update to verify")
    return "scored only: fixed targets with no line search (--verify-batches 0) choose nothing by it"


def _test_split_words(args, test_loader, n_test: int) -> str:
    """What results.md says the test rows were: the whole test split, or --test-subset's draw from it
    (a --test-subset of the split's size or more takes the whole split, and says so).
    ``test_loader``: the data's own test loader, whose ``.dataset`` is the draw."""
    if args.test_subset is None:
        return f"the whole test split ({n_test:,} images)"
    if is_test_draw(test_loader.dataset, n_test):
        return f"a stratified draw from the test split ({test_images(test_loader.dataset, n_test, '--test-subset')})"
    return f"the whole test split ({n_test:,} images: --test-subset {args.test_subset:,} is not smaller)"


def _settings(args) -> dict:
    """The resolved options as config.yaml records them."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}


def _write_config(args, dl, out: Path) -> None:
    """config.yaml: the resolved options, every key one that --config takes (so the file reruns the
    job), and what `python -m graphs` reads to rebuild the model."""
    import yaml

    resolved = _settings(args)
    resolved["num_classes"] = args.num_classes or dl.num_classes
    resolved["resume"] = False  # a rerun from this file is a new run (a resumed one says --resume again)
    resolved["overwrite"] = False  # and never deletes a run it was not told to
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(resolved, sort_keys=True))


# what a --resume may give otherwise than the run recorded: where things are and how the run shows
# and spends its resources, none of what it computes (as recipes/adaptive.py's, _RESUME_MAY_CHANGE in
# recipes/_adaptive/resume.py)
RESUME_MAY_CHANGE = {"resume", "overwrite", "output_dir", "data_dir", "download", "plugins", "progress", "threads",
                     "num_workers"}


def _check_resumed_settings(args, out: Path) -> None:
    """Refuse, before any data is read, to resume the run in ``out`` with settings other than the
    ones its config.yaml records (other data through --dataset-kw, another --eval-every: the stage
    checkpoint's fingerprint knows the data only by its counts, and not the evaluation cadence)."""
    from adaptive.paths import absolute_if_exists
    from adaptive.utility.base import comparable_estimator_kw

    path = out / "config.yaml"
    saved = run_folder.read_settings(path, f"put the run's config.yaml back, or {AFRESH}")
    if saved is None:
        return  # a run recorded before config.yaml was written at its start: its checkpoint is still checked
    if "weights" in saved:
        saved["weights"] = absolute_if_exists(saved["weights"])
    saved.setdefault("model_kw", {})  # a run recorded before --model-kw was built without one
    saved.setdefault("estimator_kw", {})  # ... and one before --estimator-kw with the estimator's defaults
    now = _settings(args)
    comparable_estimator_kw(saved, now)  # the estimator's defaults spelt out on one side are the other's
    free = RESUME_MAY_CHANGE | ({"num_classes"} if now.get("num_classes") is None else set())  # (the data's)
    if "best" not in args.remove:  # unused by fixed targets (a config.yaml recorded before a file's were refused)
        free |= {"ladder", "patience"}
    diff = run_folder.changed_settings(run_folder.normalised_settings(saved), run_folder.normalised_settings(now),
                                       free)
    if diff:
        raise run_folder.RunFolderError(
            f"--resume: {path} records other settings ({'; '.join(diff)}): resume with the run's settings "
            f"(--config {path} --resume gives them all), or {AFRESH}")


def _kept_earlier_note(out: Path) -> str:
    """What an --overwrite run that stopped before its settings were accepted says of the earlier run."""
    resumable = run_folder.existing(out, (CHECKPOINT, CHECKPOINT + ".earlier"))
    return (f"--overwrite: this run stopped before its settings were accepted, so the earlier run in {out} is "
            f"untouched{f' (its {CHECKPOINT} put back)' if resumable else ''}: run the command again, with what "
            "stopped it mended, to replace it" + (", or continue it with --resume in place of --overwrite"
                                                   if resumable else ""))


_STARTED = {"replaced_earlier": False}  # an --overwrite run that deleted the earlier run (its settings accepted)


PROG = "recipes/prune_pretrained.py"


def _cli_main():
    """:func:`main` from the command line: an option refused while parsing (a SystemExit with its
    message) is one ``error:`` line and status 2, as every other refusal (it was status 1, unprefixed)."""
    try:
        return main()
    except SystemExit as e:
        if not isinstance(e.code, str):
            raise
        msg = e.code if e.code.startswith(f"{PROG}: error:") else f"{PROG}: error: {e.code}"
        print(msg, file=sys.stderr)
        raise SystemExit(2) from None


def _on_interrupt(argv=None) -> str:
    """How an interrupted run continues: from its checkpoint, once it finished a target or rung."""
    try:
        args = parse_args(argv)
    except SystemExit:
        return ""
    out = Path(args.output_dir)
    if args.overwrite and not _STARTED["replaced_earlier"]:
        return f"the earlier run in {out} is untouched; run the same command again to start afresh"
    if (out / CHECKPOINT).is_file():
        how = "--resume in place of --overwrite" if args.overwrite else "--resume"
        return f"the same command with {how} continues after the last finished target ({out / CHECKPOINT})"
    return ("it had not finished a target, so there is nothing to continue: run the same command again "
            "(with --overwrite if the folder holds its outputs)")


if __name__ == "__main__":
    from adaptive.cli import run_cli

    from adaptive.distributed import exit_launched_process

    run_cli(_cli_main, PROG, on_interrupt=_on_interrupt, errors=(run_folder.RunFolderError,))
    exit_launched_process()  # every rank has written what it must: skip gloo's teardown
