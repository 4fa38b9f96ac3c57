"""Train a network while the controller adapts its connectome.

    accelerate launch recipes/adaptive.py                       # digits, small MLP, < 2 min on 2 CPUs
    python recipes/adaptive.py                                   # the same, one process
    accelerate launch recipes/adaptive.py --config recipes/configs/mnist_lenet300_utility.yaml --epochs 5
    accelerate launch --multi_gpu --num_processes 2 recipes/adaptive.py --max_steps 200
    python recipes/adaptive.py --output_dir runs/a --checkpoint_every 100
    python recipes/adaptive.py --output_dir runs/a --resume latest

Options: the fields of :class:`RunConfig` (``--help`` lists them), from ``--config FILE.yaml``
files and ``--key value`` overrides; unknown keys and wrong types are rejected. Writes into the
run folder (``--output_dir``, default ``runs/<date-time>``): ``config.yaml`` (resolved),
``metrics.csv``, ``events.jsonl`` (controller updates), ``connectome.safetensors``,
``dense_state_dict.pt`` (a plain state_dict with zeros where pruned), figures
(``loss_accuracy.png``, ``density.png``, ``edits.png``) and ``checkpoints/step_N``.

``mode: mask_only`` freezes a pretrained model's weights and optimises only its connectome
(:func:`adaptive.optimize_connectome`); ``density`` (or ``target``) sets how much it removes.

This file is the entry point; the recipe's parts live in ``recipes/_adaptive/``, one concept a
module: ``config`` (:class:`RunConfig`, :func:`parse_args`) with its checks (``checks``,
``derived_keys``, ``accumulation``), ``builders`` (data, model, optimizer, connectome,
controller), ``folder`` (the run folder, its lock, config.yaml), ``resume``, ``precision``,
``train`` (:func:`training_function`, the train-mode loop), ``mask_only_run``, ``report`` (the
outputs, summary.json, :class:`RunResult`) and ``notes``. Their names are importable from here.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":  # Ctrl-C while torch is still importing: one line, not a traceback
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    __import__("_startup")  # for its effect: installs the quiet start-up Ctrl-C handler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# the recipe's parts, importable from here as before the split (tests, notebooks: R.RunConfig, R.main, ...)
from adaptive import mask_only_checkpoint as stage_checkpoint  # noqa: E402
from adaptive import run_folder  # noqa: E402
from adaptive.cli import show_progress  # noqa: E402
from adaptive.config import ConfigError  # noqa: E402
from adaptive.training import evaluate, train_one_epoch  # noqa: E402
from recipes._adaptive.builders import (build_connectome, build_controller, build_model_for,  # noqa: E402
                                        build_optimizer, get_dataloaders)
from recipes._adaptive.checks import _estimator, _estimator_slots  # noqa: E402
from recipes._adaptive.config import RunConfig, mask_only_target, parse_args  # noqa: E402
from recipes._adaptive.folder import (CONFIG_COPY, MASK_ONLY_CHECKPOINT, _INTERRUPT, CheckpointError,  # noqa: E402
                                      RunWriteError, _on_interrupt, _RunLock, default_output_dir)
from recipes._adaptive.notes import _last_train_loss, _update_note, dying_relu_remedy  # noqa: E402
from recipes._adaptive.report import RunResult, _split_labels  # noqa: E402
from recipes._adaptive.resume import _check_resumed_config  # noqa: E402
from recipes._adaptive.train import training_function  # noqa: E402

__all__ = ["RunConfig", "RunResult", "parse_args", "main", "training_function", "get_dataloaders", "build_model_for",
           "build_optimizer", "build_connectome", "build_controller", "default_output_dir", "mask_only_target",
           "dying_relu_remedy", "CheckpointError", "RunWriteError", "ConfigError", "MASK_ONLY_CHECKPOINT", "CONFIG_COPY",
           # what the tests reach for
           "stage_checkpoint", "run_folder", "show_progress", "evaluate", "train_one_epoch"]
# private names other modules and tests import from here (not in __all__: a star import takes the
# public names only); named here, so that the import is used
_REEXPORTED = (_estimator, _estimator_slots, _RunLock, _last_train_loss, _update_note, _split_labels,
               _check_resumed_config)


def main(argv=None, on_step=None) -> RunResult:
    """Parse the command line and run. Problems a user can fix (a bad option, missing data, a
    missing checkpoint or weights file that does not fit) end with one ``error:`` line, status 2."""
    from adaptive.cli import run_cli
    from adaptive.distributed import MaskMismatchError, PeerStoppedError
    from adaptive.warn import command_line_warnings

    _INTERRUPT.clear()  # an earlier main() in this process (a notebook) recorded its folder: Ctrl-C's note is this run's
    with command_line_warnings():  # parsing imports --plugins, whose warnings print as run_cli prints the run's
        cfg = parse_args(argv)
    return run_cli(lambda: training_function(cfg, on_step=on_step), "recipes/adaptive.py",
                   on_interrupt=_on_interrupt,
                   errors=(CheckpointError, RunWriteError, PeerStoppedError, MaskMismatchError), once=True)


if __name__ == "__main__":
    from adaptive.distributed import exit_launched_process

    main()
    exit_launched_process()  # every rank has written what it must: skip gloo's teardown
