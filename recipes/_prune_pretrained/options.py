"""The recipe's command line: its defaults (:data:`DEFAULTS`), the model arguments it sets itself
(:data:`MODEL_SETS`), the parser (:func:`build_parser`, every option's help naming its default),
--remove's targets (:func:`parse_remove`) and --step's value (:func:`number_or_none`)."""
from __future__ import annotations

import argparse
from typing import List

from adaptive.cli import ArgumentParser
from adaptive.mask_only import parse_target
from adaptive.models import RECIPE_SETS

# the parser's description: the first line of recipes/prune_pretrained.py's docstring
DESCRIPTION = "Mask-only connectome optimisation of a pretrained classifier: remove weights, change none."


DEFAULTS = dict(model="resnet20", weights=None, dataset="cifar10", data_dir=None, remove=["best"],
                output_dir="runs/prune_pretrained", seed=0, passes=1.0, batch_size=128, eval_batch_size=500,
                holdout=0.1, subset=None, test_subset=None, ensemble="synapse", estimator="presence", step=None, window=1,
                edit_fraction=1.0, approach=0.0, margin=0.0, line_search_tries=2, ladder=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], patience=2,
                verify_batches=0, eval_every=100, train_eval_batches=10,
                threads=None, progress=None, num_classes=None, num_workers=0, cpu=False,
                mixed_precision="no", resume=False, overwrite=False, dataset_kw={}, plugins=[], download=False,
                model_kw={}, estimator_kw={})


# the model's arguments the recipe sets itself, and from what: never a --model-kw entry
MODEL_SETS = dict(RECIPE_SETS, num_classes="--num-classes (default: the dataset's class count)")


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


def whole_number(text: str) -> int:
    """An integer option's value, read as recipes/adaptive.py reads its command line (and both recipes their
    --config files): 64, 1e3 (1000) or 6.4e1 (64); 2.5 or 1e-3 refused. argparse's own int refused 1e3, which
    recipes/adaptive.py takes, so one command line meant something in one recipe and nothing in the other."""
    from adaptive.config import ConfigError, _Cli, _coerce

    try:
        return _coerce(_Cli(text), int, "")
    except ConfigError:
        raise argparse.ArgumentTypeError(f"expects a whole number (e.g. 64 or 1e3), got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=DESCRIPTION, allow_abbrev=False)  # --remov is not --remove
    p.add_argument("--config", action="append", help="YAML file of defaults (keys are the options below, with dashes "
                   "or underscores; one file)")
    p.add_argument("--plugins", nargs="+", action="extend", help=".py files or module names imported first: their "
                   "register_* calls add models, datasets, estimators or ensembles that the other options can then name "
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
    p.add_argument("--seed", type=whole_number, help="seed of the train/held-out split, the data order and the controller")
    p.add_argument("--passes", type=float, help="passes over the train part per target (per rung for 'best'; none "
                                                 "for a target of 0)")
    p.add_argument("--ladder", nargs="*", type=float, action="extend",
                   help="for --remove best: removal fractions climbed in order (repeatable, the values adding "
                        "up); none given: threshold mode")
    p.add_argument("--patience", type=whole_number, help="for --remove best: rungs without a better held-out accuracy "
                                                  "before the climb stops")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=whole_number, help="train batch size")
    p.add_argument("--eval-batch-size", dest="eval_batch_size", type=whole_number,
                   help="batch size of the held-out and test evaluations")
    p.add_argument("--holdout", type=float, help="fraction of the TRAIN split held out for selection")
    p.add_argument("--dataset-kw", "--dataset_kw", dest="dataset_kw", action="append", metavar="KEY=VALUE",
                   help="an argument of the dataset builder, e.g. resize=232 for imagenet, or several as a YAML mapping "
                        "'{resize: 232, image_size: 224}' (repeatable, later ones winning per key, over the "
                        "--config file's; YAML values); wnids=FILE (imagenet, folder): a list of ImageNet's 1000 "
                        "wnids, such as LOC_synset_mapping.txt, labelling class folders named by wnids with their "
                        "ImageNet index for a 1000-class network (looked for in the data's folders where not given)")
    p.add_argument("--subset", type=whole_number,
                   help="use only this many train images (quick runs; a stratified draw that includes the held-out part)")
    p.add_argument("--test-subset", "--test_subset", dest="test_subset", type=whole_number,
                   help="report on only this many test images (quick runs; a stratified draw with --seed, the same for every row; "
                        "runs of other seeds score other test images; at least one per class; one of the split's size "
                        "or more takes the whole split)")
    p.add_argument("--ensemble", help="synapse, kernel, neuron, block:RxC; or per layer, first match wins: '*fc*=neuron;synapse'")
    p.add_argument("--estimator", help="utility estimator (presence, evidence, consistency, obd, taylor, ...)")
    p.add_argument("--estimator-kw", "--estimator_kw", dest="estimator_kw", action="append", metavar="KEY=VALUE",
                   help="an argument of the estimator's constructor, e.g. damping=1e-6 for obd, or several as a YAML "
                        "mapping (repeatable, later ones winning per key, over the --config file's; also "
                        "--estimator-kw.KEY VALUE; YAML values); the presence and evidence step is --step")
    p.add_argument("--step", type=number_or_none,
                   help="step of the presence or evidence estimator (none: the estimator's own, also over a "
                        "--config file's step)")
    p.add_argument("--window", type=whole_number, help="training batches per update (at most the batches of one pass of the "
                                                 "train part: more is refused)")
    p.add_argument("--edit-fraction", dest="edit_fraction", type=float,
                   help="most swaps per update, as a fraction of the live ensembles (decays over a stage)")
    p.add_argument("--approach", type=float, help="fraction of each stage spent reaching its target")
    p.add_argument("--margin", type=float,
                   help="estimated improvement a swap must promise before it is made, in the estimator's units "
                        "(presence: value units; 0: any improvement); with --remove best and --ladder given no "
                        "values (threshold mode), the threshold: values below -margin are pruned, above +margin restored")
    p.add_argument("--verify-batches", dest="verify_batches", type=whole_number, help="held-out batches per line search (0: no line search)")
    p.add_argument("--line-search-tries", "--line_search_tries", dest="line_search_tries", type=whole_number,
                   help="halvings of a verified update tried before it is rolled back (0: the whole update or nothing); "
                        "used with --verify-batches in threshold mode (--remove best, --ladder with no values): at a "
                        "size target an update is kept or rolled back whole")
    p.add_argument("--eval-every", dest="eval_every", type=whole_number, help="updates between held-out evaluations")
    p.add_argument("--train-eval-batches", dest="train_eval_batches", type=whole_number,
                   help="batches' worth of train-part images (a fixed sample) behind the table's train loss and accuracy")
    p.add_argument("--num-classes", dest="num_classes", type=whole_number,
                   help="classes of the model's output (default: the dataset's)")
    p.add_argument("--threads", type=whole_number, help="torch threads (default: torch's own)")
    p.add_argument("--num-workers", "--num_workers", dest="num_workers", type=whole_number,
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
                        "bit-exact; the presence statistics are float32) (default: the launch's, accelerate launch "
                        "--mixed_precision, else no)")
    for flag, what in (("download", "no download"), ("cpu", "the GPU where there is one"),
                       ("resume", "a new run"), ("overwrite", "an earlier run in the folder is refused")):
        # a --config file's `cpu: true` (a --cpu run's config.yaml records it) could not be said no to here
        p.add_argument(f"--no-{flag}", f"--no_{flag}", dest=flag, action="store_false", default=None,
                       help=f"say no to --{flag} where a --config file says yes (the default: {what})")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="progress bars (data decoding, optimisation, final report) even when stderr is not a "
                        "terminal (default: bars only when stderr is a terminal, none into pipes and log files)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bars, even on a terminal (default: bars only when stderr is a terminal)")
    for action in p._actions:  # every option's help names the default a run without it gets
        if action.help and DEFAULTS.get(action.dest) is not None and action.dest not in ("progress", "resume", "cpu",
                                                                                            "download", "overwrite",
                                                                                            "mixed_precision"):
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
