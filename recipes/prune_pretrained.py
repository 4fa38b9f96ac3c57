"""Mask-only connectome optimisation of a pretrained classifier: remove weights, change none.

    python recipes/prune_pretrained.py --model resnet20 \
        --weights ../shared/data/resnet-cifar10/resnet20-12fca82f.th --dataset cifar10 \
        --remove 0.2 0.5 --output_dir runs/r20

On several GPUs (the training batches split over processes, every process holding the same masks):

    accelerate launch --multi_gpu --num_processes 4 recipes/prune_pretrained.py \
        --config recipes/configs/imagenet_mobilenetv3_maskonly.yaml --weights ... --data-dir ...

The weights stay bit-exact and the model stays in evaluation mode (normalisation statistics
frozen); only the connectome changes (see :func:`adaptive.optimize_connectome`). Selection uses the
training split only (a held-out part of it scores the snapshots, and with --verify-batches N checks every
update); the test split is read once, for the final report, after every decision is made (before the run
its files are only checked for faults: its folders, its first image's size, MNIST's labels).

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

This file is the entry point; the recipe's parts live in ``recipes/_prune_pretrained/``, one concept a
module: ``options`` (:data:`DEFAULTS`, :func:`build_parser`, :func:`parse_remove`), ``checks`` (the
options' checks before anything runs), ``parse`` (:func:`parse_args`), ``folder`` (the run folder,
config.yaml, what Ctrl-C says), ``resume`` (:func:`_check_resumed_settings`), ``builders`` (model,
estimator, Accelerator), ``run`` (:func:`main`, the optimisation, the final report and the outputs),
``plot`` (curves.png) and ``report`` (results.md's words). Every name the script held before the
split is importable from here, the same object.
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
    __import__("_startup")  # for its effect: installs the quiet start-up Ctrl-C handler

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

# the recipe's parts, importable from here as before the split (tests, notebooks: P.main, P.parse_args, ...);
# a test that patches a name the run calls (optimize_connectome, get_dataloaders) patches recipes._prune_pretrained.run
from recipes._prune_pretrained.builders import (_accelerator, _build, _check_num_classes, _estimator,  # noqa: E402
                                                _train_sample)
from recipes._prune_pretrained.checks import (RANGED, _TEXT, _check_dataset_kw, _check_file_values,  # noqa: E402
                                              _check_names, _check_ranges, _resumed_plugins)
from recipes._prune_pretrained.folder import (AFRESH, CHECKPOINT, OTHER_RECIPE_FILES, RESUME_FIX,  # noqa: E402
                                              RUN_FILES, TARGET_FILES, _STARTED, _delete_run, _doomed,
                                              _earlier_run, _kept_earlier_note, _on_interrupt, _refuse_earlier_run,
                                              _settings, _target_folders, _write_config)
from recipes._prune_pretrained.options import (DEFAULTS, MODEL_SETS, _shown, build_parser,  # noqa: E402
                                               number_or_none, parse_remove)
from recipes._prune_pretrained.parse import parse_args  # noqa: E402
from recipes._prune_pretrained.plot import _plot, _stage_ends  # noqa: E402
from recipes._prune_pretrained.report import _holdout_use, _table, _test_split_words  # noqa: E402
from recipes._prune_pretrained.resume import RESUME_MAY_CHANGE, _check_resumed_settings  # noqa: E402
from recipes._prune_pretrained.run import _prune, _run, main  # noqa: E402

__all__ = [
    "main", "parse_args", "build_parser", "parse_remove", "number_or_none", "DEFAULTS", "MODEL_SETS", "CHECKPOINT",
    "RUN_FILES", "TARGET_FILES", "OTHER_RECIPE_FILES", "RESUME_FIX", "AFRESH", "RESUME_MAY_CHANGE", "RANGED", "PROG",
    "command",
    # what the script imported before the split, still its names (tests patch the run's in recipes._prune_pretrained.run)
    "argparse", "math", "json", "time", "List", "Optional", "torch", "get_dataloaders", "is_test_draw",
    "model_before_data", "test_images", "stage_checkpoint", "jsonio", "run_folder", "atomic_path", "ArgumentParser",
    "mask_only_progress", "message_lines", "progress_lines", "show_progress", "SEED_RANGE", "ConfigError",
    "check_keys", "dotted_key_values", "merge_key_values", "normalize_key", "seed_in_range", "gather_mask_hashes",
    "fmt_accuracy", "check_targets", "changed_from", "count_synapses", "evaluate", "loaded_state",
    "optimize_connectome", "parse_target", "resolve_target", "RECIPE_SETS", "build_model_kw", "check_model_kw",
    "SPLIT_COLOR", "boundary_scale", "legend_below", "run_title", "step_points", "tight_artists", "evaluate_sharded"]
# private names other modules and tests import from here (not in __all__: a star import takes the
# public names only); named here, so that the import is used
_REEXPORTED = (_accelerator, _build, _check_num_classes, _estimator, _train_sample, _TEXT, _check_dataset_kw,
               _check_file_values, _check_names, _check_ranges, _resumed_plugins, _STARTED, _delete_run, _doomed,
               _earlier_run, _kept_earlier_note, _refuse_earlier_run, _settings, _target_folders, _write_config, _shown,
               _plot, _stage_ends, _holdout_use, _table, _test_split_words, _check_resumed_settings, _prune, _run)


PROG = "recipes/prune_pretrained.py"


def command(argv=None) -> dict:
    """:func:`main` as the command line runs it: a problem the user can fix ends with one ``error:``
    line and status 2, Ctrl-C with one line (:func:`adaptive.cli.run_cli`); under a multi-process
    launch an error every process finds alike (a refused option: each reads the same command line,
    files and data) and a Ctrl-C to the whole launch are written by one process, not by each."""
    from adaptive.cli import run_cli

    return run_cli(lambda: main(argv), PROG,  # (an option refused while parsing: SystemExit with its message, status 2)
                   on_interrupt=_on_interrupt, errors=(run_folder.RunFolderError,), once=True)


if __name__ == "__main__":
    from adaptive.distributed import exit_launched_process

    command()
    exit_launched_process()  # every rank has written what it must: skip gloo's teardown
