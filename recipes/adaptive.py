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
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Literal, Optional, Tuple, Union

if __name__ == "__main__":  # Ctrl-C while torch is still importing: one line, not a traceback
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _startup  # noqa: F401

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaptive import Connectome, Controller  # noqa: E402
from adaptive.cli import counted, mask_only_progress, progress_line, progress_lines, show_progress  # noqa: E402
from adaptive.counts import whole_number  # noqa: E402
from adaptive.config import (COMMAND_LINE, SEED_RANGE, ConfigError, given_keys, parse_config, save_config,  # noqa: E402
                             seed_in_range)
from adaptive.atomic import write_text  # noqa: E402
from adaptive import jsonio  # noqa: E402
from adaptive import mask_only_checkpoint as stage_checkpoint  # noqa: E402
from adaptive import run_folder  # noqa: E402
from adaptive.distributed import gather_mask_hashes  # noqa: E402
from adaptive.diagnostics.silent_units import SilentUnits  # noqa: E402
from adaptive.data import (check_dataset_kw, get_dataloaders as _get_dataloaders, model_before_data,  # noqa: E402
                           test_images, test_split_size)
from adaptive.models import build_model_kw  # noqa: E402
from adaptive.training import (  # noqa: E402
    CHECKPOINT_DIR, STEP_GAMMA, STEP_MILESTONES, TrainState, evaluate, find_checkpoint, list_checkpoints,
    load_checkpoint, lr_schedule, metric_row, run_dir_of, save_checkpoint, step_schedule_problem, train_one_epoch,
    write_metrics_csv,
)


def _help(text: str):
    return field(default=None, metadata={"help": text})


def _opt(default, text: str):
    return field(default=default, metadata={"help": text})


# what Accelerate reads over its gradient_accumulation_steps argument (accelerate launch sets it for DeepSpeed)
_ACCUM_ENV = "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"
# RunConfig.density's default: a mask_only --target overrides it where no one gave it, and where a
# --config file gives it (every config.yaml records a density, a --target run's this one)
_DEFAULT_DENSITY = 0.2


@dataclass
class RunConfig:
    """Every option of the recipe, with its default (the no-argument run)."""

    # written into config.yaml beside the options for the reader, read back by nothing (_save_config)
    RECORDED_KEYS: ClassVar[Tuple[str, ...]] = ("estimator_resolved",)

    # what runs
    plugins: List[str] = field(default_factory=list, metadata={"help": ".py files or module names imported first: "
                               "their register_* calls add models, datasets, estimators, policies, budgets or ensembles "
                               "that the options below can then name (adaptive.plugins)"})
    mode: Literal["train", "mask_only"] = field(default="train", metadata={"help": "train (dynamic sparse training) or mask_only (weights frozen, only the connectome moves)"})
    # data
    dataset: str = field(default="digits", metadata={"help": "digits, mnist, cifar10, imagenet, folder (any ImageFolder tree: --data-dir holds train/ and val/ or test/), fake"})
    data_dir: Optional[str] = _help("data folder (default: $ADAPTIVE_DATA or ../shared/data)")
    download: bool = _opt(False, "let torchvision download a dataset that is not found (needs internet)")
    dataset_kw: Dict[str, Any] = field(default_factory=dict, metadata={"help": "extra dataset arguments (e.g. shape for fake)"})
    holdout: float = field(default=0.1, metadata={"help": "fraction of TRAIN held out for selection/evaluation"})
    subset: Optional[int] = _help("use only this many train examples (a stratified draw that includes the held-out part)")
    test_subset: Optional[int] = _help("evaluate on only this many test examples (a stratified draw; one of the "
                                       "split's size or more takes the whole split)")
    augment: bool = _opt(False, "train-time augmentation (CIFAR: crop and flip; MNIST: shifts; ImageNet: random resized "
                                "crop and flip; digits: none, a warning says so)")
    batch_size: int = _opt(32, "train batch size per process")
    gradient_accumulation_steps: int = _opt(1, "batches accumulated into one optimizer step (Accelerate's "
                                            "accumulate), for an effective batch of this x batch-size x processes; "
                                            "every step count (max-steps, warmup-steps, update-every, log-every, "
                                            "eval-every, checkpoint-every) counts optimizer steps. Accelerate takes "
                                            f"{_ACCUM_ENV} from the environment first, where no one gave this option; "
                                            "config.yaml records the one that ran")
    eval_batch_size: Optional[int] = _help("batch size of the holdout and test evaluations (default: batch-size)")
    num_workers: int = _opt(0, "data loading worker processes per process")
    # model
    model: str = field(default="mlp", metadata={"help": "mlp, lenet300, lenet5, resnet20/32/44/56/110, densecat, vit_tiny, "
                                                         "torchvision:NAME, or a model a --plugins file registers"})
    model_kw: Dict[str, Any] = field(default_factory=dict, metadata={"help": "extra model arguments (e.g. hidden for mlp)"})
    weights: Optional[str] = _help("pretrained weights file (loaded strictly)")
    # connectome and controller
    ensemble: str = _opt("synapse", "what one mask entry switches: synapse, kernel, neuron, block:RxC, N:M; or per layer, "
                        "first match wins: '*fc*=neuron;synapse'")
    include: Optional[List[str]] = _help("shell-style name patterns: only matching weights join the connectome (default: every conv and linear weight)")
    exclude: Optional[List[str]] = _help("shell-style name patterns: matching weights stay out of the connectome")
    policy: str = field(default="utility", metadata={"help": "rigl, set, utility, balanced, gmp, threshold, magnitude, "
                                                             "crawl (adaptive.policies)"})
    estimator: Optional[str] = field(default=None, metadata={"help": "utility estimator: the scores of policies utility, balanced, threshold "
                                     "and crawl (default: curvature) and of mask_only mode (default: presence); gmp and magnitude take one "
                                     "only when it is named (without one they rank by weight magnitude); rigl and set take none (refused)"})
    estimator_kw: Dict[str, Any] = field(default_factory=dict, metadata={"help": "arguments of the estimator's "
                                         "constructor, e.g. damping=1e-6 for obd (KEY=VALUE, repeatable; YAML values)"})
    density: Optional[float] = field(default=_DEFAULT_DENSITY, metadata={"help": "target fraction of live synapses "
                                     "(mask_only: the same as --target 1-D, so 1.0 removes nothing, and none the same as "
                                     "--target best; give one of the two)"})
    budget: str = _opt("erk", "how the density is shared among layers (adaptive.budgets: global, uniform, erk, er)")
    update_every: Optional[int] = field(default=None, metadata={"help": "steps between connectome updates; default: 25 in train mode, 1 in mask_only mode"})
    edit_fraction: Optional[float] = field(default=None, metadata={"help": "fraction of live ensembles edited at an update, decaying "
                                          "towards the end of the edits; default: 0.3 in train mode, 1.0 in mask_only mode "
                                          "(fine-tuning a pretrained network with --weights, the utility policy kept the most "
                                          "accuracy at 0.03 of 0.3, 0.1 and 0.03: "
                                          "docs/training.md, gradual_pruning.py)"})
    end_fraction: float = field(default=0.75, metadata={"help": "edits stop at this fraction of training"})
    min_density: float = _opt(0.0, "per-layer density floor of the budget")
    protect: List[str] = field(default_factory=list, metadata={"help": "shell-style name patterns: matching layers are kept dense, never edited"})
    controller_kw: Dict[str, Any] = field(default_factory=dict, metadata={"help": "more Controller arguments"})
    line_search: int = _opt(0, "train mode: check every controller update on this many batches of the held-out part "
                               "(--eval_batch_size each, a fixed draw kept on the device for the run, scored in "
                               "eval mode under the run's mixed precision, the same at every check), undoing the "
                               "update, or halving it (up to --line_search_tries times), when the held-out loss "
                               "(plain cross-entropy, whatever --label_smoothing) rises by more than "
                               "--line_search_tolerance; events.jsonl then logs each update's measured "
                               "actual_loss_change. 0 (the default): no check. Each update then costs up to "
                               "tries + 2 forward passes over those batches. mask_only line-searches with "
                               "--mask_only_kw verify_batches=N")
    line_search_tolerance: float = _opt(0.0, "--line_search: the held-out loss rise an update may cause and still "
                                             "be kept, >= 0 (inf: keep every update, only measure it; a policy "
                                             "may set its own for an edit it must make, e.g. balanced restoring "
                                             "its count)")
    line_search_tries: int = _opt(3, "--line_search: halvings an update may try before it is undone (0: the whole "
                                     "update or nothing)")
    target: Optional[Union[int, float, str]] = _help("mask_only: synapses to remove (count, fraction or best); default 1 - density (best for "
                                                    "--density none)")
    mask_only_kw: Dict[str, Any] = field(default_factory=dict, metadata={"help": "more optimize_connectome arguments"})
    # optimisation
    optimizer: Literal["sgd", "adamw"] = _opt("sgd", "weight optimizer (train mode)")
    lr: float = _opt(0.1, "peak learning rate of the weights")
    momentum: float = _opt(0.9, "SGD momentum, in [0, 1) (adamw: beta1, the default 0.9 being AdamW's own)")
    weight_decay: float = _opt(5e-4, "weight decay")
    lr_schedule: Literal["cosine", "constant", "step"] = _opt("cosine", "learning-rate schedule after the warmup: "
                                                              "cosine (towards 0, reached just after the last step), constant, "
                                                              "or step (the rate times --lr_gamma at each of "
                                                              "--lr_milestones)")
    lr_milestones: List[float] = field(default_factory=lambda: list(STEP_MILESTONES), metadata={
        "help": "--lr_schedule step: where the rate drops, as increasing fractions of the run's steps in (0, 1), "
                "comma-separated (the drop comes at the optimizer step nearest fraction x steps, halves up)"})
    lr_gamma: float = _opt(STEP_GAMMA, "--lr_schedule step: the factor applied at each milestone, in (0, 1]")
    label_smoothing: float = _opt(0.0, "label smoothing of the training loss, in [0, 1) (torch's cross_entropy "
                                       "label_smoothing): the weights and the controller's utilities follow the "
                                       "smoothed loss; held-out and test losses stay plain cross-entropy, and train "
                                       "rows of metrics.csv report the smoothed loss they trained on")
    warmup_steps: int = _opt(0, "steps of linear learning-rate warmup (at most the run's steps)")
    max_grad_norm: Optional[float] = _help("clip each step's gradient to this total 2-norm, a finite number > 0, "
                                           "measured on the live (masked) gradients the optimizer uses, after the "
                                           "last accumulated batch (default: none, no clipping); train rows of "
                                           "metrics.csv then add grad_norm (the mean pre-clip norm) and clipped "
                                           "(the share of steps scaled down)")
    epochs: Optional[int] = _help("passes over the train part (default: 20 in train mode; 1 per target in mask_only "
                                  "mode, as recipes/prune_pretrained.py)")
    max_steps: Optional[int] = _help("stop after this many steps (overrides epochs; the schedules span it; in "
                                     "mask_only mode: training batches per target)")
    mixed_precision: Optional[Literal["no", "fp16", "bf16"]] = _help("default: what accelerate launch was given, else "
                                                                     "no (config.yaml records the one that ran); "
                                                                     "fp16 needs a GPU (on a CPU: bf16)")
    cpu: bool = _opt(False, "stay on the CPU even when a GPU is there")
    seed: int = _opt(0, "seed of the split, data order, initial weights and controller (the same on every process)")
    threads: Optional[int] = _help("torch threads per process")
    # logging and checkpoints
    output_dir: Optional[str] = _help("run folder (default runs/<date-time>)")
    log_every: int = _opt(20, "steps between log lines (train rows of metrics.csv; 0: none)")
    eval_every: int = field(default=0, metadata={"help": "steps between holdout evaluations (0: every epoch)"})
    checkpoint_every: int = field(default=0, metadata={"help": "steps between checkpoints (0: none)"})
    keep_checkpoints: int = _opt(2, "checkpoints kept in the run folder (older ones are deleted; 0: all)")
    resume: Optional[str] = _help("latest, a run folder or a checkpoint folder")
    overwrite: bool = _opt(False, "start afresh in an --output_dir that holds an earlier run, deleting that run's "
                                  "outputs and checkpoints (without it such a run is refused)")
    progress: Optional[bool] = _help("progress bars (data decoding, training, final test evaluation): true, false, or "
                                     "left out (the default): bars only when stderr is a terminal, none into pipes "
                                     "and log files; --progress alone means true, --no-progress false. The training "
                                     "bar's loss is the mean over the steps since it last changed (every 10 steps, "
                                     "the main process's batches), not the last batch's")
    figures: bool = _opt(True, "write loss_accuracy.png, density.png and edits.png (with --max_grad_norm and train "
                                 "rows, --log_every above 0, grad_norm.png too) at the end")

    def __post_init__(self):
        # mode-dependent defaults: mask_only uses what recipes/benchmarks/mask_only_ablations measured
        # best on pretrained CIFAR ResNets (the defaults of adaptive.optimize_connectome)
        from adaptive.cli import with_notes_of
        from adaptive.plugins import PluginError, load_plugins, resolved

        try:
            self.plugins = resolved(self.plugins)  # config.yaml then loads the same files from anywhere
            load_plugins(self.plugins)  # before any name is checked: a plugin's names count as built-in ones
        except PluginError as e:
            raise with_notes_of(ConfigError(f"{e}{self._resumed_plugins(e)}"), e) from None
        if self.mode == "mask_only":
            self.estimator = self.estimator or "presence"
        else:
            uses, required = _estimator_slots(self.policy)
            if self.estimator is None and required:
                self.estimator = "curvature"  # magnitude and gmp keep their magnitude order unless one is named
            elif self.estimator is not None and uses is False:  # (an unknown policy: _check_names names it)
                raise ConfigError(
                    f"policy {self.policy!r} fixes its scores, so estimator {self.estimator!r} would be ignored: drop "
                    "--estimator (a config.yaml written before this check records the default estimator for every "
                    "policy: delete its estimator line), or use a policy that takes one (utility, balanced, threshold, "
                    "gmp, magnitude)")
        takes = _estimator_slots(self.policy)[0]  # (None: an unknown policy, which _check_names names)
        if self.estimator_kw and self.estimator is None and takes is not None:
            raise ConfigError(f"estimator_kw ({self.estimator_kw!r}) sets options of the utility estimator, and policy "
                              f"{self.policy!r} runs none here"
                              + (" (it ranks by weight magnitude unless one is named): name one with --estimator"
                                 if takes else ": drop --estimator_kw (it takes no estimator)"))
        if self.update_every is None:
            self.update_every = 1 if self.mode == "mask_only" else 25
        if self.epochs is None:
            self.epochs = 1 if self.mode == "mask_only" else 20
        if self.edit_fraction is None:
            self.edit_fraction = 1.0 if self.mode == "mask_only" else 0.3
        if self.mode == "mask_only" and self.resume:  # a run recorded before the recipe set these keys itself
            typed = {k for k, src in (given_keys() or {}).items() if src == COMMAND_LINE}
            for key, value in _kw_as_options(_fields_of(self)).items():
                # an option typed now stays, so the resume check names it if it differs from the run's;
                # where --mask_only_kw is typed with it (the run's own command), the key won, as it did
                if key not in typed or "mask_only_kw" in typed:
                    setattr(self, key, value)
        from adaptive.paths import absolute_if_exists

        self.weights = absolute_if_exists(self.weights)  # config.yaml then reruns from any working directory
        self.data_dir = absolute_if_exists(self.data_dir)
        if self.output_dir is not None and not self.output_dir.strip():  # ("" ran into runs/<date-time> unsaid)
            raise ConfigError("output_dir is empty: give a folder, or leave output_dir out (or null) for the default "
                              "runs/<date-time>")
        if self.output_dir:  # so that --config RUN/config.yaml names this run folder from anywhere
            self.output_dir = os.path.abspath(self.output_dir)
            problem = run_folder.not_a_folder(self.output_dir)  # (it was refused only after the data had loaded)
            if problem:
                raise ConfigError(problem)
        # a --config file (a step run's config.yaml) that gives them is no option to drop: its values are reset
        files = sorted({src for k, src in (given_keys() or {}).items() if k in ("lr_milestones", "lr_gamma")
                        and src != COMMAND_LINE})
        step_problem = step_schedule_problem(self.lr_milestones, self.lr_gamma)
        checks = [
            (self.density is None or 0.0 < self.density <= 1.0, f"density must be in (0, 1], got {self.density}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.gradient_accumulation_steps >= 1, f"gradient_accumulation_steps must be >= 1 (1: a step per batch), "
                                                    f"got {self.gradient_accumulation_steps}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr must be a finite number > 0, got {self.lr}"),
            (0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1) (SGD momentum; adamw: beta1), got {self.momentum}"),
            (0.0 <= self.weight_decay < math.inf, f"weight_decay must be a finite number >= 0, got {self.weight_decay}"),
            (seed_in_range(self.seed), f"seed must be in {SEED_RANGE}, got {self.seed}"),
            (self.update_every >= 1, f"update_every must be >= 1, got {self.update_every}"),
            (0.0 <= self.edit_fraction <= 1.0, f"edit_fraction must be in [0, 1], got {self.edit_fraction}"),
            (0.0 < self.end_fraction <= 1.0, f"end_fraction must be in (0, 1], got {self.end_fraction}"),
            (0.0 <= self.holdout < 1.0, f"holdout must be in [0, 1), got {self.holdout}"),
            (self.mode != "mask_only" or self.holdout > 0,
             "mode mask_only chooses and scores its masks on the held-out part of TRAIN, and holdout 0 asks for none: "
             "give --holdout 0.1 (say)"),
            (self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}"),
            (self.eval_every >= 0, f"eval_every must be >= 0 (0: every epoch), got {self.eval_every}"),
            (self.log_every >= 0, f"log_every must be >= 0 (0: no train rows), got {self.log_every}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (step_problem is None, f"lr_{step_problem}"),
            # (mask_only trains no weight: _refuse_train_only names them there)
            (self.mode == "mask_only" or self.lr_schedule == "step"
             or (self.lr_milestones == list(STEP_MILESTONES) and self.lr_gamma == STEP_GAMMA),
             f"lr_milestones and lr_gamma shape only --lr_schedule step (this run's is {self.lr_schedule}): give "
             f"--lr_schedule step, or drop them" + (f" ({', '.join(map(str, files))} gives them: add --lr_milestones "
                                                    f"{','.join(map(str, STEP_MILESTONES))} --lr_gamma {STEP_GAMMA}, "
                                                    "their defaults)" if files else "")),
            (math.isfinite(self.label_smoothing) and 0.0 <= self.label_smoothing < 1.0,
             f"label_smoothing must be in [0, 1) (0: none), got {self.label_smoothing}"),
            (self.max_grad_norm is None or (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0),
             f"max_grad_norm must be a finite number > 0 (or none: no clipping), got {self.max_grad_norm}"),
            # (a resumed run continues as recorded: runs started before this check could hold such a warmup)
            (self.mode == "mask_only" or self.max_steps is None or self.warmup_steps <= self.max_steps or self.resume,
             f"warmup_steps ({self.warmup_steps}) exceeds the run's {self.max_steps} steps (--max_steps), so the "
             f"learning rate would never reach --lr: give --warmup_steps {self.max_steps} or fewer"),
            (self.keep_checkpoints >= 0, f"keep_checkpoints must be >= 0 (0: keep every one), got {self.keep_checkpoints}"),
            (self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}"),
            (self.eval_batch_size is None or self.eval_batch_size >= 1,
             f"eval_batch_size must be >= 1 (or left out: the batch size), got {self.eval_batch_size}"),
            (self.threads is None or self.threads >= 1, f"threads must be >= 1 (or left out), got {self.threads}"),
            (self.line_search >= 0, f"line_search must be >= 0 (held-out batches each update's check scores; 0: no "
                                    f"check), got {self.line_search}"),
            (self.line_search_tolerance >= 0,  # (NaN fails this too)
             f"line_search_tolerance must be a number >= 0 (the held-out loss rise an update may cause; inf: keep "
             f"every update, only measure it), got {self.line_search_tolerance}"),
            (self.line_search_tries >= 0, f"line_search_tries must be >= 0 (halvings an update may try before it is "
                                          f"undone; 0: the whole update or nothing), got {self.line_search_tries}"),
            (self.mode == "mask_only" or self.line_search == 0 or self.holdout > 0,
             f"--line_search {self.line_search} checks each update on the held-out part of TRAIN, and --holdout 0 "
             "holds none out: give --holdout 0.1 (say), or drop --line_search"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        _accumulation_from_env(self)
        if self.resume and self.overwrite:
            raise ConfigError(f"--resume {self.resume} continues the run in the folder and --overwrite deletes it to "
                              "start afresh: give one of them (drop --overwrite to continue the run)")
        if self.resume and self.resume != "latest" and not _resume_path_exists(self.resume, self.mode):  # (said: "no checkpoint in")
            where = "" if os.path.isabs(self.resume) else f" (relative paths start from {os.getcwd()})"
            raise ConfigError(f"--resume {self.resume} does not exist: give a run folder, a checkpoint folder "
                              f"(checkpoints/step_N) or a mask_only run's {MASK_ONLY_CHECKPOINT}, or latest with "
                              f"--output_dir RUN{where}")
        if self.target is not None:
            if self.mode != "mask_only":
                raise ConfigError("target (synapses to remove) applies to mode mask_only; in train mode --density "
                                  "sets the fraction of live synapses")
            _check_target(self.target)
            given = (given_keys() or {}).get("density")
            if self.density is not None and (self.density != _DEFAULT_DENSITY or given == COMMAND_LINE):
                raise ConfigError(f"--target {self.target} and --density {self.density} both say how much mask_only "
                                  f"removes (--target: synapses to remove; --density D means --target 1-D): give one "
                                  "of them (--target none or --density none drops one that a --config file gives)")
        _refuse_derived_keys(self)
        if self.mode == "mask_only" and self.checkpoint_every:
            raise ConfigError("mode mask_only checkpoints after every target on its own "
                              f"({MASK_ONLY_CHECKPOINT} in the run folder): drop --checkpoint_every")
        if self.mode == "mask_only":
            _refuse_train_only(self)
        else:
            if self.mask_only_kw and not self.resume:  # (a resumed run: checked against its record)
                raise ConfigError(_train_mask_only_kw_error(self.mask_only_kw))
            _refuse_idle_line_search(self)
        try:
            _check_names(self)
        except ConfigError as e:  # a name the run's plugin registered, resumed without it (the notes of a
            from adaptive.cli import with_notes_of  # plugin estimator's error kept)

            raise with_notes_of(ConfigError(f"{e}{self._resumed_plugins()}"), e) from None

    def _resumed_plugins(self, error=None) -> str:
        """What an error of a --resume run adds about the plugins the resumed run recorded
        (:func:`adaptive.plugins.resume_hint`); "" without --resume, or with --resume latest and no
        --output_dir."""
        from adaptive.plugins import resume_hint

        if not self.resume or (self.resume == "latest" and not self.output_dir):
            return ""
        where = Path(self.output_dir if self.resume == "latest" else self.resume)
        where = where.parent if where.is_file() else where  # a mask_only run's checkpoint file
        # a run folder's config.yaml, or a checkpoint folder's copy (the settings it was made with)
        return resume_hint(where / "config.yaml", self.plugins, error, resume=f"--resume {self.resume}")


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
    (key, (default,), "mask_only line-searches its updates with --mask_only_kw verify_batches=N (held-out batches "
                      "that check each update, no rise of their loss accepted) and line_search_tries=K")
    for key, default in (("line_search", 0), ("line_search_tolerance", 0.0), ("line_search_tries", 3))]


def _env_accumulation() -> Optional[int]:
    """``ACCELERATE_GRADIENT_ACCUMULATION_STEPS``, which Accelerate reads over the Accelerator's argument
    (``accelerate launch`` sets it for DeepSpeed): None where it is unset, refused where Accelerate's
    ``int()`` would fail on it (blank too) or it is below 1."""
    raw = os.environ.get(_ACCUM_ENV)
    if raw is None:
        return None
    k = int(raw.strip()) if raw.strip().isdigit() else None  # (as Accelerate's int(): no sign, no fraction)
    if k is None or k < 1:
        raise ConfigError(f"{_ACCUM_ENV}={raw!r} in the environment is no whole number >= 1, and Accelerate reads it "
                          f"as the gradient accumulation steps: unset it (--gradient_accumulation_steps sets them)")
    return k


def _accumulation_from_env(cfg) -> None:
    """While a command line (and ``--config`` file) is parsed: where the environment sets
    ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS``, the run takes it as --gradient_accumulation_steps when
    no one gave the option, and is refused where the option says otherwise, or where the mode
    accumulates nothing: either would run other than the option says. A config built in code or
    loaded from a file keeps its value (:func:`training_function` refuses it if Accelerate would run
    another)."""
    given_all = given_keys()
    if given_all is None:  # not parsing a command line: what the file or the code says stays
        return
    k = _env_accumulation()
    if k is None:
        return
    given = given_all.get("gradient_accumulation_steps")
    if cfg.mode == "mask_only":
        if k != 1:
            raise ConfigError(f"{_ACCUM_ENV}={k} in the environment asks Accelerate to accumulate gradients, which mode "
                              "mask_only never does (it trains no weight): unset it")
        return
    if given is not None and k != cfg.gradient_accumulation_steps:
        raise ConfigError(f"gradient_accumulation_steps {cfg.gradient_accumulation_steps} (from {given}) and {_ACCUM_ENV}"
                          f"={k} in the environment disagree, and Accelerate would run {k}: unset {_ACCUM_ENV}, or "
                          f"give --gradient_accumulation_steps {k}")
    cfg.gradient_accumulation_steps = k


def _refuse_other_accumulation(cfg, ran: int) -> None:
    """A config built in code (or loaded) whose gradient_accumulation_steps is not what Accelerate took
    from the environment: refused before anything runs, rather than run and recorded otherwise."""
    if ran != cfg.gradient_accumulation_steps:
        mode = " (mode mask_only accumulates nothing)" if cfg.mode == "mask_only" else ""
        raise ConfigError(f"gradient_accumulation_steps is {cfg.gradient_accumulation_steps}{mode}, but {_ACCUM_ENV}="
                          f"{ran} in the environment makes Accelerate run {ran}: unset {_ACCUM_ENV}"
                          + ("" if mode else f", or set gradient_accumulation_steps={ran}"))


def _refuse_idle_line_search(cfg) -> None:
    """--line_search_tolerance or --line_search_tries set while --line_search is 0 (off) would be
    ignored: refused, naming where they came from."""
    if cfg.line_search:
        return
    defaults = RunConfig.__dataclass_fields__
    idle = [k for k in ("line_search_tolerance", "line_search_tries") if getattr(cfg, k) != defaults[k].default]
    if idle:
        given = given_keys() or {}
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


def mask_only_target(density: Optional[float]) -> Union[float, str]:
    """The mask_only target that ``--density`` means without a ``--target``: the fraction 1 - density
    to remove (density 1.0 removes nothing), or "best" for ``--density none`` (as ``--target best``:
    a ladder of removals, keeping the rung with the best held-out score, or the dense network)."""
    return "best" if density is None else 1.0 - density


def _target(cfg: "RunConfig") -> Union[int, float, str]:
    """What a mask_only run removes: --target, else what --density means."""
    return cfg.target if cfg.target is not None else mask_only_target(cfg.density)


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
                              "that registers it with --plugins")

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
                          "is any torchvision classifier), or register your own in a file given with --plugins")
    check_model_kw(cfg.model, cfg.model_kw)
    try:
        parse_rules(cfg.ensemble)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"ensemble '{cfg.ensemble}': {e}") from None


# ----------------------------------------------------------------------------- pieces

def get_dataloaders(cfg: RunConfig):
    """Train, holdout (a stratified part of TRAIN) and test loaders for ``cfg`` (not yet prepared)."""
    check_dataset_kw(cfg.dataset, cfg.dataset_kw)  # progress=, data_dir=: options of their own, named
    return _get_dataloaders(cfg.dataset, batch_size=cfg.batch_size, data_dir=cfg.data_dir, holdout=cfg.holdout,
                            seed=cfg.seed, download=cfg.download, subset=cfg.subset, test_subset=cfg.test_subset,
                            num_workers=cfg.num_workers, eval_batch_size=cfg.eval_batch_size, augment=cfg.augment,
                            progress=cfg.progress, holdout_required=cfg.mode == "mask_only",  # its choices read the held-out part
                            option_names={"subset": "--subset", "test_subset": "--test_subset", "holdout": "--holdout"},
                            **cfg.dataset_kw)


def build_model_for(cfg: RunConfig, num_classes: int, in_shape) -> torch.nn.Module:
    """``cfg``'s model (its --weights loaded) for data of ``num_classes`` classes and inputs
    ``in_shape``; in mask_only mode its target is checked against the model's synapses."""
    from adaptive.mask_only import check_targets

    model = build_model_kw(cfg.model, cfg.model_kw, num_classes=num_classes, in_shape=in_shape, weights=cfg.weights)
    if cfg.mode == "mask_only":
        check_targets(model, _target(cfg), include=cfg.include, exclude=cfg.exclude)
    return model


def build_optimizer(cfg: RunConfig, model):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.momentum > 0)
    # --momentum is beta1 (its default 0.9 is AdamW's own); beta2 stays AdamW's 0.999
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)


def build_connectome(cfg: RunConfig, model) -> Connectome:
    return Connectome(model, ensemble=cfg.ensemble, include=cfg.include, exclude=cfg.exclude,
                      mode="mask_only" if cfg.mode == "mask_only" else "train")


def build_controller(cfg: RunConfig, conn: Connectome, optimizer=None, total_steps: int = 1000,
                     num_processes: int = 1, holdout_loss: Optional[Callable[[], float]] = None) -> Controller:
    """The controller that ``cfg`` describes. Train mode: attached to ``optimizer``; edits stop at
    ``end_fraction`` of ``total_steps`` (optimizer steps); each gradient it observes averages
    batch_size x gradient_accumulation_steps x ``num_processes`` samples; with --line_search N,
    ``holdout_loss`` (a callable: the loss on N held-out batches, :class:`adaptive.holdout_check.HeldOutLoss`)
    checks each update, with --line_search_tolerance and --line_search_tries; it is required then,
    and refused otherwise (it would check nothing the config records). Mask-only mode: the crawl policy driven explicitly (this
    is the controller :func:`adaptive.optimize_connectome` builds, which takes no --controller_kw).
    A ``cfg`` changed after its checks (``cfg.controller_kw = ...``) is checked again here: a key
    the recipe sets itself, ``edit_decay`` in mask_only mode among them, is refused naming the option
    that sets it, as while parsing (it was Python's "got multiple values for keyword argument")."""
    if cfg.mode == "mask_only":
        _refuse_train_only(cfg)
    _refuse_derived_keys(cfg)
    if cfg.mode == "mask_only":
        return Controller(conn, policy="crawl", estimator=_estimator(cfg), update_every=cfg.update_every,
                          edit_decay="constant", seed=cfg.seed, verify=True)
    if (holdout_loss is None) != (not cfg.line_search):
        raise ValueError(f"build_controller: --line_search {cfg.line_search} " + (
            "needs holdout_loss= (the loss on that many held-out batches: adaptive.holdout_check.HeldOutLoss)"
            if holdout_loss is None else "is off, so holdout_loss= would check updates no config records: give "
                                         "cfg.line_search > 0, or leave holdout_loss out"))
    # (off, the Controller is built exactly as before the option: a run without it is unchanged)
    search = {} if holdout_loss is None else dict(holdout_loss=holdout_loss, line_search_tries=cfg.line_search_tries,
                                                  line_search_tolerance=cfg.line_search_tolerance)
    end_step = max(1, int(round(cfg.end_fraction * total_steps)))
    return Controller(conn, optimizer, policy=cfg.policy, density=cfg.density, budget=cfg.budget,
                      update_every=cfg.update_every, end_step=end_step, edit_fraction=cfg.edit_fraction,
                      estimator=_estimator(cfg) if _uses_estimator(cfg.policy) else None, min_density=cfg.min_density,
                      protect=cfg.protect, batch_size=cfg.batch_size * cfg.gradient_accumulation_steps * num_processes,
                      seed=cfg.seed, verify=True, **search, **cfg.controller_kw)


def _holdout_check(cfg: RunConfig, accelerator, model, loaders):
    """--line_search N: the held-out loss each update is checked on (N batches of the held-out part
    per process, :class:`adaptive.holdout_check.HeldOutLoss`) through the prepared ``model`` (its
    mixed precision); None when the option is off (0)."""
    if not cfg.line_search:
        return None
    from adaptive.holdout_check import HeldOutLoss

    check = HeldOutLoss(model, loaders.datasets.holdout, cfg.line_search, loaders.holdout.batch_size,
                        device=accelerator.device, seed=cfg.seed, rank=accelerator.process_index,
                        processes=accelerator.num_processes)
    if check.batches < cfg.line_search:
        accelerator.print(f"note: --line_search {cfg.line_search} asks for more held-out batches than the held-out part "
                          f"holds ({len(loaders.datasets.holdout)} examples, batches of {check.batch_size} for "
                          f"{accelerator.num_processes} process(es)): each check scores {check.batches} per process")
    return check


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


def default_output_dir() -> str:
    """``runs/<date>-<time>``; ``-2``, ``-3``, ... when an earlier run started in the same second."""
    base = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    path, k = base, 1
    while os.path.exists(path):
        k += 1
        path = f"{base}-{k}"
    return path


@dataclass
class RunResult:
    """What :func:`training_function` returns (for tests and notebooks)."""

    output_dir: Path
    model: Any
    conn: Connectome
    controller: Optional[Controller]
    state: TrainState
    summary: Dict[str, Any]
    files: Dict[str, Path]


# ----------------------------------------------------------------------------- the run

def training_function(cfg: RunConfig, on_step: Optional[Callable[[TrainState], None]] = None) -> RunResult:
    from accelerate import Accelerator, DataLoaderConfiguration

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _env_accumulation()  # one Accelerate cannot read (a blank one too) is refused, naming it
    # without a GPU, cpu=True is what makes a multi-process launch a gloo (MULTI_CPU) run
    accelerator = Accelerator(cpu=cfg.cpu or not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision,
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed))
    # Accelerate takes ACCELERATE_GRADIENT_ACCUMULATION_STEPS over the argument (parse_args reconciled the two
    # for a command line; a config built in code that disagrees is refused): what runs is what is recorded
    _refuse_other_accumulation(cfg, int(accelerator.gradient_accumulation_steps))
    from_launch = cfg.mixed_precision is None
    if from_launch:  # the precision accelerate launch (or its config) gave, else no: recorded and compared as it runs
        cfg.mixed_precision = str(accelerator.mixed_precision)
    resume_from = None
    output_dir = cfg.output_dir
    if cfg.resume and cfg.mode == "mask_only":
        output_dir = str(_mask_only_run_dir(cfg.resume, output_dir))
    elif cfg.resume:
        resume_from = find_checkpoint(cfg.resume, output_dir)
        output_dir = output_dir or str(run_dir_of(resume_from))
    output_dir = Path(output_dir or _broadcast_str(accelerator, default_output_dir()))
    if cfg.resume:
        recorded = _check_resumed_config(cfg, output_dir, resume_from, no_fp16=_no_fp16_autocast(accelerator))
        if cfg.mode != "mask_only":
            _train_mode_mask_only_kw(cfg, recorded, accelerator)
    if cfg.resume and not from_launch and cfg.mixed_precision == "fp16" and _inert_fp16(accelerator):  # (recorded so)
        # it keeps recording fp16, as the run did, so that its own command continues it again later
        accelerator.print(f"note: the run records --mixed_precision fp16, which the {accelerator.device.type.upper()} "
                          "cannot run (Accelerate ran it in float32): it continues as it ran, as --mixed_precision no")
    else:
        _refuse_inert_precision(accelerator, from_launch)  # a new run, or fp16 from accelerate launch: refused
    if not cfg.resume:
        _refuse_earlier_run(cfg, output_dir)
    _INTERRUPT.update(output_dir=output_dir, resume_from=resume_from, overwrite=cfg.overwrite and not cfg.resume,
                      resume=bool(cfg.resume), wrote=False)
    lock = _RunLock(accelerator, output_dir)  # taken before the run's first write into the folder
    try:
        return _train(cfg, on_step, accelerator, resume_from, output_dir, lock)
    except BaseException:  # an error or Ctrl-C
        lock.release(refused=True)  # the folders this command made and wrote nothing into go
        raise
    finally:
        lock.release()


def _train_mode_mask_only_kw(cfg: RunConfig, recorded: List[dict], accelerator) -> None:
    """A train-mode run recorded with --mask_only_kw before it was refused there (read by nothing):
    resumed with or without it, it keeps the recorded one (so its own command resumes it again),
    with a note. A resumed run that recorded none is refused one, as a new run is."""
    kw = next((r["mask_only_kw"] for r in recorded if r.get("mask_only_kw")), None)
    if kw:
        accelerator.print(f"note: the run records --mask_only_kw {kw!r}, which train mode never read (runs started "
                          "before it was refused there): the run continues without it, as it ran")
        cfg.mask_only_kw = kw
    elif cfg.mask_only_kw:
        raise ConfigError(_train_mask_only_kw_error(cfg.mask_only_kw))


def _refuse_inert_precision(accelerator, from_launch: bool) -> None:
    """Accelerate turns fp16 off on a CPU without a word (no autocast, no scaler: a float32 run),
    while the run would record and announce fp16: refused, before anything is written."""
    if _inert_fp16(accelerator):
        given = ("mixed precision fp16 (from accelerate launch or its config)" if from_launch else
                 "--mixed_precision fp16")
        raise ValueError(f"{given} cannot run on the {accelerator.device.type.upper()} (Accelerate runs fp16 "
                         "autocast only on an accelerator such as a GPU, and would silently run float32 here): use "
                         "--mixed_precision bf16 (the CPU's mixed precision) or --mixed_precision no")


def _inert_fp16(accelerator) -> bool:
    """fp16 set but no fp16 autocast (Accelerate's native_amp off: a CPU); DeepSpeed and
    Megatron-LM run their own precision, not Accelerate's autocast."""
    return accelerator.mixed_precision == "fp16" and not accelerator.native_amp and _no_fp16_autocast(accelerator)


def _no_fp16_autocast(accelerator) -> bool:
    """Whether Accelerate would run fp16 here as float32 (no autocast, no scaler): on a CPU, outside
    DeepSpeed and Megatron-LM (which run their own precision)."""
    from accelerate.utils import DistributedType

    return (accelerator.device.type == "cpu"
            and accelerator.distributed_type not in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM))


def _refuse_earlier_run(cfg: RunConfig, output_dir: Path) -> None:
    """A fresh run into a folder that holds an earlier run would write beside it, leave that run's
    other files there, and a later --resume would splice the two runs: refused unless --overwrite."""
    other = run_folder.existing(output_dir, ("checkpoint.pt", "results.md", "history.jsonl", "curves.png")) + sorted(
        d.name + "/" for d in output_dir.glob("remove_*") if d.is_dir())
    if other:  # a recipes/prune_pretrained.py run: --overwrite knows only this recipe's files
        raise CheckpointError(f"{output_dir} holds a run of recipes/prune_pretrained.py ({', '.join(other[:4])}): "
                              "give this run another --output_dir (--overwrite deletes only this recipe's own runs)")
    run_folder.refuse_result_folder(output_dir, ("checkpoint.pt", "results.md", "history.jsonl", "summary.json"),
                                    "recipes/prune_pretrained.py", error=CheckpointError)
    resumable = list_checkpoints(output_dir / CHECKPOINT_DIR) or _mask_only_resumable(output_dir)
    run_folder.refuse_earlier_run(
        output_dir, _earlier_run(output_dir), overwrite=cfg.overwrite, weights=cfg.weights,
        doomed=[output_dir / n for n in _RUN_FILES + _DERIVED_FILES],
        resume_hint=f"continue it with --resume latest --output_dir {output_dir}, " if resumable else "",
        error=CheckpointError)


def _earlier_run(output_dir: Path) -> List[str]:
    """The files and checkpoints of an earlier run in ``output_dir`` (empty: none)."""
    found = run_folder.existing(output_dir, _RUN_FILES)
    cks = list_checkpoints(output_dir / CHECKPOINT_DIR)
    return [f"{CHECKPOINT_DIR}/{c.name}" for c in cks[::-1]] + found


def _delete_run(output_dir: Path) -> None:
    """--overwrite: the earlier run's outputs, checkpoints and what the project's tools derived from
    them (graph exports and reports, a compacted model, the progress figure) go; no other file."""
    import shutil

    # what could be resumed goes first and config.yaml last: an --overwrite killed half-way leaves
    # no checkpoint without the settings it was made with (a later --resume would take new ones)
    if not _earlier_run(output_dir) and not (output_dir / (MASK_ONLY_CHECKPOINT + ".earlier")).exists():
        return  # no earlier run: the graph exports and figures here are not one's, whoever made them
    ck = output_dir / CHECKPOINT_DIR
    for c in list_checkpoints(ck) + list(ck.glob(".tmp-step_*")):
        shutil.rmtree(c)
    first = (MASK_ONLY_CHECKPOINT, MASK_ONLY_CHECKPOINT + ".earlier")
    rest = [n for n in _RUN_FILES + _DERIVED_FILES if n not in first and n != "config.yaml"]
    run_folder.delete_files(output_dir, [*first, *rest, "config.yaml"], trees=_DERIVED_DIRS)


class _RunLock(run_folder.RunLock):
    """The run folder's lock (:class:`adaptive.run_folder.RunLock`); a fresh run checks again, once
    it holds the lock, that no earlier run is there."""

    def __init__(self, accelerator, output_dir: Path):
        super().__init__(accelerator, output_dir, error=CheckpointError)

    def acquire(self, cfg: RunConfig) -> None:
        super().acquire(None if cfg.resume else (lambda: _refuse_earlier_run(cfg, self.path.parent)))

    def sweep(self) -> None:
        """Also the checkpoint folder a run stopped while saving left (``checkpoints/.tmp-step_N``),
        now rather than at the run's next save (save_checkpoint sweeps them too)."""
        import shutil

        super().sweep()
        for stale in (self.path.parent / CHECKPOINT_DIR).glob(".tmp-step_*"):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)


def _train(cfg: RunConfig, on_step, accelerator, resume_from, output_dir: Path, lock: "_RunLock") -> RunResult:
    from accelerate.utils import set_seed

    main = accelerator.is_main_process
    set_seed(cfg.seed)

    # the model (its weights loaded) before the data where the dataset knows its classes and input
    # shape unread: weights that do not fit, or a mask_only target beyond the model's synapses, are
    # refused before minutes of data loading (as recipes/prune_pretrained.py does); a --dataset_kw key an
    # option sets (data_dir=, ...) is named first, not a clash of keywords in the facts' call
    check_dataset_kw(cfg.dataset, cfg.dataset_kw)
    model_for = model_before_data(cfg.dataset, lambda k, shape: build_model_for(cfg, k, shape), data_dir=cfg.data_dir,
                                  download=cfg.download, **cfg.dataset_kw)
    loaders = get_dataloaders(cfg)
    model = model_for(loaders.num_classes, loaders.in_shape)
    if cfg.mode == "mask_only":
        return _mask_only(cfg, accelerator, model, loaders, output_dir, lock)

    optimizer = build_optimizer(cfg, model)
    model, optimizer, train_dl, holdout_dl, test_dl = accelerator.prepare(
        model, optimizer, loaders.train, loaders.holdout, loaders.test)
    accum = cfg.gradient_accumulation_steps
    if len(train_dl) == 0:
        raise ValueError(f"the train loader is empty ({len(loaders.datasets.train)} examples): lower --batch_size or --holdout")
    # a step is an optimizer step, of `accum` batches; Accelerate also steps at the end of the loader
    steps_per_epoch = math.ceil(len(train_dl) / accum)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    if cfg.warmup_steps > total_steps and cfg.resume:  # recorded before the check below: it continues as it ran
        accelerator.print(f"warning: warmup_steps ({cfg.warmup_steps}) exceeds the run's {total_steps} steps, so the "
                          "learning rate never reaches --lr; the resumed run was started so and continues so")
    elif cfg.warmup_steps > total_steps:  # (--max_steps was checked while parsing)
        per_epoch = (f"{steps_per_epoch} steps of {accum} batches (--gradient_accumulation_steps)" if accum > 1 else
                     f"{steps_per_epoch} batches")
        raise ValueError(f"warmup_steps ({cfg.warmup_steps}) exceeds the run's {total_steps} steps (--epochs "
                         f"{cfg.epochs} x {per_epoch}), so the learning rate would never reach --lr: "
                         f"give --warmup_steps {total_steps} or fewer")
    epochs = math.ceil(total_steps / steps_per_epoch)
    lr_scheduler = lr_schedule(optimizer, total_steps, cfg.warmup_steps, cfg.lr_schedule, cfg.lr_milestones,
                               cfg.lr_gamma)
    conn = build_connectome(cfg, accelerator.unwrap_model(model))
    # DDP averages gradients over every process's batch before the controller sees them
    ctrl = build_controller(cfg, conn, optimizer, total_steps, num_processes=accelerator.num_processes,
                            holdout_loss=_holdout_check(cfg, accelerator, model, loaders))
    state = TrainState(processes=accelerator.num_processes, steps_per_epoch=steps_per_epoch, accumulation=accum)
    state.silent_units = SilentUnits.from_connectome(conn)  # reads each step's gradients; no hook on the model
    # The registration order is part of the checkpoint format: custom_checkpoint_0..3.
    accelerator.register_for_checkpointing(conn, ctrl, state, lr_scheduler)
    if resume_from is not None:
        from adaptive.integrity import CheckpointRefusedError

        try:
            load_checkpoint(accelerator, resume_from, verified=True)  # verified by _check_resumed_config
        except CheckpointRefusedError:  # (adaptive.integrity's)
            raise  # names the file and the run's other checkpoints
        except Exception as e:  # a truncated or foreign file: name the folder, not a deserializer's internals
            raise CheckpointError(
                f"checkpoint {resume_from} cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                f"resume from an earlier one (--resume {resume_from.parent}/step_N) or run without --resume") from e
        if state.accumulation != accum:  # (a checkpoint without the run's config.yaml: checked only here)
            raise CheckpointError(
                f"--resume: {resume_from} was written by a run that accumulated {state.accumulation} batch(es) per "
                f"optimizer step; this one accumulates {accum}, so the same step would read other batches and average "
                f"another number of them. Resume with --gradient_accumulation_steps {state.accumulation}, or start a "
                "new run")
        if (state.processes, state.steps_per_epoch) != (accelerator.num_processes, steps_per_epoch):
            raise CheckpointError(
                f"--resume: {resume_from} was written by a run of {state.processes} process(es) with {state.steps_per_epoch} "
                f"steps per epoch; this one has {accelerator.num_processes} with {steps_per_epoch}, so the same step would "
                f"read other data and another global batch. Resume with `accelerate launch --num_processes "
                f"{state.processes} ...` (and the run's data settings), or start a new run")
        accelerator.print(f"resumed from {resume_from} at step {state.step}")
    resumed_at = state.step
    k = cfg.checkpoint_every
    left = total_steps - state.step - 1  # the largest interval that still ends at a step before the last
    if k and (state.step // k + 1) * k >= total_steps and left >= 1:  # (the last step writes the outputs, not a
        fix = f": give --checkpoint_every {left} or fewer for one"   # checkpoint: a run of 1 step left writes none)
        if state.step:
            accelerator.print(f"warning: --checkpoint_every {k} writes no further checkpoint in the {left + 1} steps "
                              f"left of {total_steps} (resumed at step {state.step}), so a stopped run resumes from "
                              f"step {state.step} again{fix}")
        else:
            accelerator.print(f"warning: --checkpoint_every {k} is not shorter than the run's {total_steps} steps, so "
                              f"no checkpoint will be written before the end and a stopped run cannot be resumed{fix}")
    lock.acquire(cfg)
    _save_config(accelerator, cfg, output_dir)  # only now: a refused command leaves an earlier run's config alone
    # every checkpoint carries the settings it was made with (checked by a later --resume)
    ckpt_files = {CONFIG_COPY: (output_dir / "config.yaml").read_bytes()} if main else None

    accelerator.print(
        f"{cfg.model} on {cfg.dataset}: {conn.num_synapses():,} synapses, density {conn.density():.3f}, policy "
        f"{cfg.policy}{'/' + ctrl.estimator_name if ctrl.estimator_name else ''}, {accelerator.num_processes} process(es), "
        f"{total_steps} steps{f' of {accum} accumulated batches' if accum > 1 else ''} -> {output_dir}")
    progress, lines = None, progress_lines(cfg.progress, accelerator.is_main_process)
    if show_progress(cfg.progress) and accelerator.is_local_main_process:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True,
                        mininterval=1.0)

    def write_metrics():
        if main:
            write_metrics_csv(state.metrics, output_dir / "metrics.csv")

    warned_silent = set()
    remedy = dying_relu_remedy(cfg)

    def warn_silent() -> None:
        """Warn, once per layer, about a layer most of whose units no gradient reached over the last
        train row's steps."""
        for l in SilentUnits.alarming(state.silent_layers or []):
            if l.name not in warned_silent:
                warned_silent.add(l.name)
                accelerator.print(
                    f"warning: {l.name}: {l.silent} of {l.units} units received no gradient over steps "
                    f"{state.step - cfg.log_every + 1}-{state.step}, so the network trains without them: ReLUs that "
                    f"no longer fire on any input ({remedy}), or "
                    f"units whose outgoing synapses are all pruned (python -m graphs report RUN_DIR counts those); "
                    f"metrics.csv's silent_units column follows the share")
        state.silent_layers = None

    def eval_holdout():
        if len(loaders.datasets.holdout) == 0:
            return None
        loss, acc, _ = evaluate(accelerator, model, holdout_dl)
        metric_row(state, "holdout", loss, acc, conn, _row_lr(state, optimizer))
        write_metrics()
        return acc

    def step_hook(s: TrainState):
        warn_silent()
        # the holdout row of a step comes before its checkpoint, so a resumed run has it too
        if (s.step % cfg.eval_every == 0) if cfg.eval_every else (s.step % steps_per_epoch == 0):
            holdout = eval_holdout()
            if lines:  # no bar: one plain line per evaluation, so a piped or logged run is not silent
                print(progress_line(step=f"{s.step}/{total_steps}", epoch=f"{s.epoch + 1}/{epochs}",
                                    train_loss=_last_train_loss(state.metrics, s.step),
                                    holdout_accuracy=holdout, density=f"{conn.density():.4f}", seconds=elapsed()),
                      flush=True)
        if cfg.checkpoint_every and s.step % cfg.checkpoint_every == 0 and s.step < total_steps:
            s.seconds = elapsed()  # the run's time so far, carried on by a resume from this checkpoint
            save_checkpoint(accelerator, output_dir, s.step, cfg.keep_checkpoints, state=s, files=ckpt_files)
            write_metrics()
        if on_step is not None:
            on_step(s)

    t0, recorded = time.time(), state.seconds  # recorded: the earlier sessions' (None: not known)

    def elapsed() -> Optional[float]:
        return None if recorded is None else recorded + time.time() - t0

    # the loss the weights train on (label smoothing); held-out and test losses stay plain cross-entropy
    train_loss = (functools.partial(F.cross_entropy, label_smoothing=cfg.label_smoothing) if cfg.label_smoothing
                  else F.cross_entropy)
    start_epoch, skip = divmod(state.step, steps_per_epoch)
    for epoch in range(start_epoch, epochs):
        state.epoch = epoch
        train_dl.set_epoch(epoch)
        if hasattr(train_dl.dataset, "set_epoch"):  # augmentation keyed on (seed, epoch, example): exact resume
            train_dl.dataset.set_epoch(epoch, seed=cfg.seed)
        loader = train_dl
        if epoch == start_epoch and skip:  # the batches of the steps already taken (whole groups: no epoch's last)
            loader = accelerator.skip_first_batches(train_dl, skip * accum)
            loader.set_epoch(epoch)
        train_one_epoch(accelerator, model, optimizer, loader, state, lr_scheduler=lr_scheduler, conn=conn,
                        max_steps=total_steps, log_every=cfg.log_every, on_step=step_hook, progress=progress,
                        max_grad_norm=cfg.max_grad_norm, loss_fn=train_loss)
        if state.step >= total_steps:
            break
    if progress is not None:
        progress.close()

    last = state.metrics[-1] if state.metrics else {}
    # the holdout score of the final network: reused only if it was taken at the last step
    holdout_acc = last["accuracy"] if last.get("split") == "holdout" and last.get("step") == state.step else eval_holdout()
    test_loss, test_acc, n_test = _test_eval(cfg, accelerator, model, test_dl)
    metric_row(state, "test", test_loss, test_acc, conn, _row_lr(state, optimizer))
    files = _write_outputs(accelerator, cfg, output_dir, state.metrics, ctrl.events, conn,
                           _split_labels(loaders, n_test, "train (mean over the batches trained since the last point"
                                         + (f"; loss with label smoothing {cfg.label_smoothing:g})" if cfg.label_smoothing
                                            else ")"), cfg.test_subset))
    seconds = time.time() - t0 if recorded is None else elapsed()
    summary = dict(test_accuracy=test_acc, test_loss=test_loss, test_examples=n_test,
                   test_split_examples=_test_split_size(loaders, n_test, cfg.test_subset), holdout_accuracy=holdout_acc,
                   density=conn.density(), synapses=conn.num_synapses(), live=conn.num_live(), nonzero=_nonzero(conn),
                   steps=state.step, updates=sum(1 for e in ctrl.events if e.get("kind") == "update"), seconds=seconds,
                   processes=accelerator.num_processes, mask_hash_per_process=gather_mask_hashes(accelerator, conn))
    summary.update(target_density=cfg.density, density_note=_density_note(cfg, summary, total_steps, ctrl),
                   update_note=_update_note(cfg, summary, total_steps, ctrl),
                   seconds_note=None if recorded is not None else (
                       f"seconds ({seconds:.0f}) covers only this session, from step {resumed_at} on: the checkpoint "
                       f"it resumed from ({resume_from}) was written before checkpoints recorded the run's time"))
    _finish(accelerator, output_dir, summary, files)
    _end(accelerator)
    return RunResult(output_dir, model, conn, ctrl, state, summary, files)



# options that may differ between a run and its resumption: where and how it is shown, not what it computes
MASK_ONLY_CHECKPOINT = "mask_only_checkpoint.pt"
CONFIG_COPY = "config.yaml"  # each checkpoint folder's copy of the run's config.yaml (the settings it was made with)
_INTERRUPT: Dict[str, Any] = {}  # the run folder, once known: what Ctrl-C's message can point to


def _on_interrupt() -> str:
    """How an interrupted run continues: from the checkpoint it left, if it left one."""
    out = _INTERRUPT.get("output_dir")
    if out is None:
        return ""
    if not _INTERRUPT.get("wrote"):  # (config.yaml is its first write; --overwrite deletes only then)
        if _INTERRUPT.get("overwrite") and _earlier_run(Path(out)):
            return (f"the run wrote nothing, and the earlier run in {out} is kept as it was; the same command (with "
                    "--overwrite) starts afresh")
        if not _INTERRUPT.get("resume"):
            return "the run wrote nothing (its lock and any folder it made are gone again); the same command starts it afresh"
    cks = list_checkpoints(Path(out) / CHECKPOINT_DIR)
    if cks or _mask_only_resumable(Path(out)):
        what = cks[-1].name if cks else f"{MASK_ONLY_CHECKPOINT} (the last finished target)"
        same = "the same command without --overwrite" if _INTERRUPT.get("overwrite") else "the same command"
        return f"add --resume latest --output_dir {out} to {same} to continue from {what}"
    if _INTERRUPT.get("resume_from") is not None:
        return (f"the run wrote no checkpoint of its own; the same command continues from {_INTERRUPT['resume_from']} "
                "again")
    return ("the run wrote no checkpoint, so it cannot be continued; rerun it with --overwrite (or into another "
            "--output_dir), and --checkpoint_every N makes a train-mode run resumable")


_RESUME_MAY_CHANGE = {"resume", "output_dir", "data_dir", "plugins", "progress", "figures", "threads", "num_workers",
                      "log_every", "keep_checkpoints", "checkpoint_every", "overwrite"}
# what a run writes into its folder: an --overwrite run deletes these (and nothing else) first
_RUN_FILES = ("config.yaml", "metrics.csv", "events.jsonl", "connectome.safetensors", "dense_state_dict.pt",
              "summary.json", "loss_accuracy.png", "density.png", "edits.png", "grad_norm.png", MASK_ONLY_CHECKPOINT)
# what `python -m graphs` and `recipes/diagnostics.py progress` write into a run folder by default
_DERIVED_DIRS = run_folder.DERIVED_DIRS
_DERIVED_FILES = run_folder.DERIVED_FILES + (MASK_ONLY_CHECKPOINT + ".earlier",)
# mask_only: what the stage checkpoint's own fingerprint compares (and names) when it is loaded
_MASK_ONLY_FINGERPRINTED = {"target", "density", "epochs", "estimator", "update_every", "ensemble", "include",
                            "exclude", "seed", "mask_only_kw", "edit_fraction"}


def _save_config(accelerator, cfg: RunConfig, output_dir: Path) -> None:
    """config.yaml, written once the settings have been accepted (data, model, controller built);
    with --overwrite, the earlier run's files go only now, so a refused command leaves them."""
    _INTERRUPT["wrote"] = True  # (every process: what Ctrl-C's message says of the earlier run)
    if accelerator.is_main_process:
        if cfg.overwrite and not cfg.resume:
            # (a mask-only run has not recorded a stage yet: its earlier run's checkpoint, set aside
            # to be put back if this run stops early, goes too, so an interrupted run leaves no mix)
            _delete_run(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        # --config FILE reruns the job afresh, and never deletes a run it was not told to
        save_config(cfg, output_dir / "config.yaml", resume=None, overwrite=False, extra=_resolved_estimator(cfg))


def _resolved_estimator(cfg: RunConfig) -> dict:
    """config.yaml's ``estimator_resolved``: the estimator that ran and every argument it was built
    with, its constructor's defaults included (--estimator_kw over them), so a reader knows exactly
    what ran; {} (no key) where the run's policy ranks without one. Read back by nothing: --estimator
    and --estimator_kw set it, and a resume compares those."""
    from adaptive.utility.base import estimator_arguments

    if cfg.estimator is None:
        return {}
    arguments = estimator_arguments(cfg.estimator, dict(cfg.estimator_kw))
    return {"estimator_resolved": {"name": cfg.estimator, "arguments": {k: _yaml_value(v) for k, v in arguments.items()}}}


def _yaml_value(value):
    """``value`` where YAML writes it (after :func:`adaptive.config.to_dict`'s conversions: a tuple as
    a list), else as text, a function or class by its dotted name, anything else by its ``repr``: a
    plugin estimator's constructor default (a dtype, a function) is recorded for the reader, never a
    crash of the run that writes config.yaml."""
    import yaml

    from adaptive.config import to_dict

    try:
        yaml.safe_dump(to_dict({"v": value}))
    except yaml.YAMLError:
        name = getattr(value, "__qualname__", None)  # a function or class by its name, not by its address
        module = getattr(value, "__module__", None)
        return repr(value) if not isinstance(name, str) else f"{module}.{name}" if isinstance(module, str) else name
    return value


class CheckpointError(RuntimeError):
    """A checkpoint that cannot continue this run (unreadable, or written with other settings)."""


def _check_resumed_config(cfg: RunConfig, output_dir: Path, resume_from: Optional[Path] = None,
                          no_fp16: bool = False) -> List[dict]:
    """Refuse, before any work, to resume a run with settings other than the ones it was made with:
    the copy of config.yaml inside the checkpoint (checked against the checkpoint's manifest first),
    else the run folder's config.yaml; and than the ones of the folder it writes into, when that is
    another run's. The checkpoint's controller, schedule and weights would silently override them.
    ``no_fp16``: this device runs fp16 as float32, so a recorded fp16 reads as what ran, 'no'.
    Returns the settings recorded (as compared), checkpoint's first."""
    folders = [Path(output_dir)]
    recorded = []
    if resume_from is not None:
        from adaptive.distributed import agreed_problem, rank, world_size
        from adaptive.integrity import CheckpointRefusedError
        from adaptive.training import verify_checkpoint

        # a damaged checkpoint (or config copy), or one of another process count, is refused here,
        # naming the file, by every process together; the main process alone hashes the files
        problem = None
        try:
            verify_checkpoint(resume_from, rank(), warn=rank() == 0, num_processes=world_size(), hash_files=rank() == 0)
        except CheckpointRefusedError as e:
            problem = (type(e), str(e))  # damage stays a CheckpointDamagedError on every process
        problem = agreed_problem(problem)
        if problem:
            raise problem[0](problem[1])
        run = run_dir_of(resume_from)
        own = Path(resume_from) / CONFIG_COPY
        if own.is_file():  # the settings the checkpoint was made with, whatever its run folder holds now
            recorded.append(_check_against(cfg, own, run_dir=run, resume=resume_from, no_fp16=no_fp16))
            folders = [f for f in folders if f.resolve() != run.resolve()]
        elif run.resolve() != Path(output_dir).resolve():
            folders.append(run)
    for folder in folders:
        recorded.append(_check_against(cfg, folder / "config.yaml", no_fp16=no_fp16))
    return [r for r in recorded if r is not None]


def _check_against(cfg: RunConfig, path: Path, run_dir: Optional[Path] = None, resume: Optional[Path] = None,
                   no_fp16: bool = False) -> Optional[dict]:
    """Compare the settings of ``cfg`` with the ones recorded in ``path`` (a run folder's config.yaml,
    or a checkpoint's copy of it: then ``run_dir`` is the checkpoint's run and ``resume`` the checkpoint).
    Runs recorded before the recipe refused them compare as they ran: fp16 where ``no_fp16`` (this
    device ran it as float32) as 'no', a mask_only_kw key the recipe now sets as its option, and a
    train-mode mask_only_kw (read by nothing) not at all. Returns the settings recorded (None: no file)."""
    from adaptive.config import to_dict
    from adaptive.utility.base import comparable_estimator_kw

    fix = ("put the run's config.yaml back, or run without --resume into another --output_dir to start afresh"
           if resume is None else f"delete {resume} and resume from an earlier checkpoint, or start afresh")
    saved = run_folder.read_settings(path, fix, error=CheckpointError)
    if saved is None:
        return None  # a run folder without its config (copied checkpoints): nothing to compare
    if saved.get("mode") == "mask_only":
        saved.update(_kw_as_options(saved))
    now = to_dict(cfg)
    if "mixed_precision" in saved and saved["mixed_precision"] is None:  # recorded before the precision that ran was
        saved["mixed_precision"] = _unrecorded_precision(path, run_dir or path.parent, now["mixed_precision"])
    if no_fp16 and saved.get("mixed_precision") == "fp16":  # it ran float32: fp16 or no continue it
        saved["mixed_precision"] = "no"
        now["mixed_precision"] = "no" if now.get("mixed_precision") == "fp16" else now.get("mixed_precision")
    saved.setdefault("gradient_accumulation_steps", 1)  # recorded before the option: one batch per step
    saved.setdefault("max_grad_norm", None)  # recorded before the option: no clipping
    saved.setdefault("label_smoothing", 0.0)  # recorded before the option: none
    saved.setdefault("estimator_kw", {})  # recorded before the option: the estimator's defaults
    saved.setdefault("lr_milestones", list(STEP_MILESTONES))  # recorded before the step schedule: unused
    saved.setdefault("lr_gamma", STEP_GAMMA)
    for key in ("line_search", "line_search_tolerance", "line_search_tries"):  # recorded before the options: no check
        saved.setdefault(key, RunConfig.__dataclass_fields__[key].default)
    saved = run_folder.normalised_settings(saved)
    now = run_folder.normalised_settings(now)
    comparable_estimator_kw(saved, now)  # the estimator's defaults spelt out on one side are the other's
    from adaptive.paths import absolute_if_exists

    if "weights" in saved:  # runs recorded before paths were stored absolute
        saved["weights"] = absolute_if_exists(saved["weights"])
    free = _RESUME_MAY_CHANGE | (_MASK_ONLY_FINGERPRINTED if cfg.mode == "mask_only" else {"mask_only_kw"})
    if cfg.mode != "mask_only" and not _uses_estimator(cfg.policy):
        free = free | {"estimator"}  # runs recorded before the recipe dropped it for such policies name one
    elif cfg.mode != "mask_only" and cfg.estimator is None and saved.get("estimator") == "curvature":
        # a magnitude/gmp run recorded when curvature was every policy's default ran with it: it
        # continues with it
        cfg.estimator = "curvature"
        now["estimator"] = "curvature"
    diff = run_folder.changed_settings(saved, now, free)
    if cfg.mode == "mask_only":  # the held-out cadence, which the stage checkpoint does not compare, as each runs it
        run, this = _cadence(saved), _cadence(now)
        diff += [f"{k}: run {run[k]!r}, now {this[k]!r}" for k in run if run[k] != this[k] and f"{k}: run" not in
                 " ".join(diff)]
    if diff:
        run_dir = run_dir or path.parent
        mp = give = ""
        if any(d.startswith("mixed_precision: run") for d in diff):  # what accelerate launch gave, or the option
            mp = (f" (mixed_precision is the precision each ran: relaunch with accelerate launch --mixed_precision "
                  f"{saved['mixed_precision']}, or give --mixed_precision {saved['mixed_precision']})")
            give = f" --mixed_precision {saved['mixed_precision']}"  # a file recorded before it was (null) lacks it
        if any(d.startswith("gradient_accumulation_steps: run") for d in diff):  # a file recorded before it lacks it
            k = saved["gradient_accumulation_steps"]
            mp += (f" (gradient_accumulation_steps is what Accelerate ran: give --gradient_accumulation_steps {k}"
                   + (f" and unset {_ACCUM_ENV}" if os.environ.get(_ACCUM_ENV) else "") + ")")
            give += f" --gradient_accumulation_steps {k}"
        raise CheckpointError(f"--resume: {path} records other settings ({'; '.join(diff)}){mp}; resume with the "
                              f"run's settings (--config {path}{give} --output_dir {run_dir} --resume "
                              f"{resume or 'latest'} gives them all), or run without --resume into another "
                              "--output_dir to start afresh")
    return saved


def _stage_precision_fix(problem: str) -> str:
    """For a stage checkpoint that ran under another precision: the option that gives it (a config.yaml
    recorded before the recipe recorded the precision accelerate launch gave holds none)."""
    import re

    m = re.search(r"precision: checkpoint '([^']*)'", problem)
    ran = m and {"autocast bfloat16": "bf16", "autocast float16": "fp16", "float32": "no"}.get(m.group(1))
    if not ran:  # none, or weights of another dtype: no option of the recipe gives that
        return ""
    return (f"; the precision it ran, {m.group(1)!r}, is --mixed_precision {ran}, or accelerate launch "
            f"--mixed_precision {ran}")


def _unrecorded_precision(path: Path, run_dir: Path, now: str) -> str:
    """The precision a run ran that recorded ``mixed_precision: null`` (before the recipe recorded the one
    accelerate launch gave it): its summary.json's, when it has one; else unknown, and it continues
    under this launch's, as such runs always did, with a note."""
    from adaptive.distributed import rank

    try:
        ran = json.loads((run_dir / "summary.json").read_text()).get("mixed_precision")
    except (OSError, ValueError, AttributeError):
        ran = None
    if isinstance(ran, str) and ran:
        return ran
    if rank() == 0:
        print(f"note: {path} records no mixed precision (runs before the recipe recorded the one accelerate launch "
              f"gave), and no summary.json says which ran: the run continues under {now}, this launch's; if it "
              "ran another, relaunch with accelerate launch --mixed_precision X or give --mixed_precision X",
              flush=True)
    return now


def _mask_only_resumable(run: Path) -> bool:
    """Whether ``run`` holds a mask_only checkpoint --resume continues: its own, or one an --overwrite
    run killed before its first target left set aside (``.earlier``; stage_checkpoint.begin puts it back)."""
    return (run / MASK_ONLY_CHECKPOINT).is_file() or (run / (MASK_ONLY_CHECKPOINT + ".earlier")).is_file()


def _resume_path_exists(resume: str, mode: str) -> bool:
    """Whether --resume names something there: a folder or file, or, in mask_only mode, a run's
    checkpoint file whose run folder is there (its checkpoint may be the '.earlier' copy an
    --overwrite run killed before its first target left aside, which _mask_only_run_dir takes)."""
    p = Path(resume)
    return p.exists() or (mode == "mask_only" and p.name == MASK_ONLY_CHECKPOINT and p.parent.is_dir())


def _mask_only_run_dir(resume: str, output_dir) -> Path:
    """The run folder whose mask-only stage checkpoint ``--resume`` names (``latest``: --output_dir)."""
    if resume == "latest":
        if output_dir is None:
            raise FileNotFoundError("--resume latest needs --output_dir (the run folder to continue)")
        run = Path(output_dir)
    else:
        run = Path(resume)
        run = run.parent if run.name == MASK_ONLY_CHECKPOINT else run
        if output_dir is not None and Path(output_dir).resolve() != run.resolve():
            raise FileNotFoundError(f"--resume {resume} continues the mask-only run in {run}, where it writes; "
                                    f"drop --output_dir {output_dir} (or give --output_dir {run})")
    if not _mask_only_resumable(run):
        earlier = _earlier_run(run) if run.is_dir() else []
        start = (f"it holds an earlier run ({', '.join(earlier[:3])}{' ...' if len(earlier) > 3 else ''}) with no "
                 "target recorded to continue from (stopped before its first one, say): start afresh there with "
                 "--overwrite instead of --resume, or give another --output_dir" if earlier else
                 "run without --resume to start")
        raise FileNotFoundError(f"--resume: no {MASK_ONLY_CHECKPOINT} in {run} (a mask_only run writes one after "
                                f"every target); {start}")
    return run


def _mask_only(cfg, accelerator, model, loaders, output_dir, lock) -> RunResult:
    """Mask-only connectome optimisation: the weights stay bit-exact, only the masks move. The run
    is recorded after every target in ``mask_only_checkpoint.pt``; ``--resume`` continues it."""
    from adaptive.mask_only import count_synapses, loaded_state, optimize_connectome, resolve_target, stage_batches

    ckpt = output_dir / MASK_ONLY_CHECKPOINT  # --resume was resolved to this run folder already
    if cfg.weights is None:
        accelerator.print("note: no --weights given, so the masks are learned on the network's random initial "
                          "weights (a supermask search), not on a pretrained network; pass --weights FILE for that")
    lock.acquire(cfg)
    if stage_checkpoint.begin(ckpt, bool(cfg.resume)):  # (without --resume, only with --overwrite)
        accelerator.print(f"--overwrite: the earlier run in {output_dir} is deleted once this run's settings are "
                          f"accepted (at its first update); until then its {MASK_ONLY_CHECKPOINT} is kept")
    # an earlier run's checkpoint (set aside by begin) survives a run refused or stopped before its
    # first target, from here on: the setup below can fail or be interrupted too
    try:
        accelerator.wait_for_everyone()

        # no DDP wrapper: no weight is trained; the controller reduces its statistics across processes
        model = model.to(accelerator.device)
        train_dl, test_dl = accelerator.prepare(loaders.train, loaders.test)
        # every process verifies edits on the same (whole, unsharded) held-out batches, so all make the
        # same decisions; optimize_connectome moves batches to the model's device
        holdout_dl = loaders.holdout
        target = _target(cfg)
        if len(train_dl) == 0:
            raise ValueError(f"the train loader is empty ({len(loaders.datasets.train)} examples): lower --batch_size or --holdout")
        # --max_steps counts training batches per target (each process's), else --epochs passes
        passes = cfg.max_steps / len(train_dl) if cfg.max_steps else float(cfg.epochs)
        passes = cfg.mask_only_kw.get("passes", passes)  # (kept by a resumed run recorded before the check)
        synapses = count_synapses(model, cfg.include, cfg.exclude)  # (quietly: the connectome warns, below)
        kw = dict(passes=passes, ensemble=cfg.ensemble, include=cfg.include, exclude=cfg.exclude,
                  estimator=_estimator(cfg), window=cfg.update_every, edit_fraction=cfg.edit_fraction, seed=cfg.seed,
                  progress=show_progress(cfg.progress) and accelerator.is_local_main_process, checkpoint=ckpt)
        # held-out evaluations as in train mode: every --eval_every steps, else every epoch (in updates)
        window = max(1, int(cfg.update_every or 1))
        kw["eval_every"] = max(1, (cfg.eval_every or len(train_dl)) // window)
        kw.update(cfg.mask_only_kw)  # (none of the keys above but the ones a resumed run kept: see _KW_KEPT)
        # the batches each target reads: whole update windows, so maybe a few more than --max_steps or --epochs say
        per_target = stage_batches(kw["passes"], len(train_dl), kw["window"])
        # the window's source: a resumed run's recorded --mask_only_kw window overrides --update_every
        source = "--mask_only_kw window" if "window" in cfg.mask_only_kw else "--update_every"
        whole = ("a whole batch" if kw["window"] == 1
                 else f"whole update windows of {kw['window']} ({source})")
        rounded = f", rounded up to {whole}" if per_target > kw["passes"] * len(train_dl) + 1e-9 else ""
        # a target of 0 is the dense network, with no stage of its own (check_targets accepted the target above)
        reads = ("the dense network, scored on the held-out part with no training batch read"
                 if resolve_target(target, synapses) == 0 else
                 f"{per_target:,} batches per target ({kw['passes']:.3g} pass(es) of {len(train_dl)} batches{rounded})")
        accelerator.print(f"{cfg.model} on {cfg.dataset} (mask_only): {synapses:,} synapses (of "
                          f"{sum(p.numel() for p in model.parameters()):,} parameters), target {target}, {reads}, "
                          f"estimator {cfg.estimator} -> {output_dir}")
        saved = []

        def save_config_once(record):  # the first record comes after optimize_connectome has checked its settings
            if not saved:
                _save_config(accelerator, cfg, output_dir)
                saved.append(True)

        show = (mask_only_progress(synapses, lambda line: print(line, flush=True))
                if progress_lines(cfg.progress, accelerator.is_main_process) else None)

        def on_record(record):
            save_config_once(record)
            if show is not None:
                show(record)

        kw["callback"] = on_record
        loaded = loaded_state(model)  # the weights as loaded, before the connectome: the final check's reference
        t0 = time.time()
        try:
            with accelerator.autocast():  # --mixed_precision: the passes run under autocast, weights stay exact
                result = optimize_connectome(model, train_dl, holdout_dl, target, **kw)
        except stage_checkpoint.CheckpointMismatchError as e:  # the checkpoint path here is RUN/mask_only_checkpoint.pt
            raise e.with_fix(f"To continue it, give the run's settings with --resume (--config {output_dir / 'config.yaml'} "
                             f"holds them{_stage_precision_fix(e.problem)}); to start afresh, give another --output_dir (or --overwrite to replace that "
                             "run)", afresh="start afresh in another --output_dir, or with --overwrite (which deletes that "
                             "run)") from None
    finally:
        stage_checkpoint.settle(ckpt)
    save_config_once(None)  # a resumed run with every target done records nothing
    conn = result.conn
    synapses = conn.num_synapses()
    live_share = lambda removed: (synapses - removed) / synapses  # noqa: E731  (as conn.density(): summary.json's)
    per_pass = max(1, len(train_dl))
    epoch_of = lambda step: max(0, step - 1) // per_pass  # noqa: E731  (the pass over TRAIN a step's batch came from)
    state = TrainState(step=result.controller.step_count, epoch=epoch_of(result.controller.step_count))
    for h in result.history:
        st = TrainState(step=h["step"], epoch=epoch_of(h["step"]))
        if h["kind"] == "update":
            metric_row(st, "train", h["train_loss"], h["train_acc"])
        elif h["kind"] == "eval":
            metric_row(st, "holdout", h["holdout_loss"], h["holdout_acc"])
        else:
            continue
        removed = h.get("train_removed", h["removed"]) if h["kind"] == "update" else h["removed"]
        st.metrics[-1].update(density=live_share(removed), removed=removed)  # what the row measured
        state.metrics += st.metrics
    with accelerator.autocast():
        test_loss, test_acc, n_test = _test_eval(cfg, accelerator, model, test_dl)
    metric_row(state, "test", test_loss, test_acc, conn)
    from adaptive.mask_only import changed_from

    accelerator.print(f"surviving weights that differ from the original: {changed_from(conn.dense_state_dict(), loaded, conn)} "
                      "(every tensor of the model, biases and normalisation statistics too, compared bit for bit "
                      "with the weights as loaded)")
    # for 'best' the figures star the masks the model now holds (the chosen rung, or the dense network):
    # the lines end at the last rung tried
    best = result.snapshots.get("best")
    kept = None if best is None else dict(step=best.step, density=live_share(best.removed),
                                          holdout_loss=best.holdout_loss, holdout_acc=best.holdout_acc)
    labels = _split_labels(loaders, n_test, "train (each update window's batches)", cfg.test_subset)
    files = _write_outputs(accelerator, cfg, output_dir, state.metrics, result.events, conn, labels, kept)
    # the held-out score of the masks the model now holds (for 'best', the chosen rung, not the last one tried)
    snaps = result.snapshots
    final = snaps.get("best") or (list(snaps.values())[-1] if snaps else None)
    summary = dict(test_accuracy=test_acc, test_loss=test_loss, test_examples=n_test,
                   test_split_examples=_test_split_size(loaders, n_test, cfg.test_subset),
                   holdout_accuracy=final.holdout_acc if final is not None else None, density=conn.density(),
                   synapses=conn.num_synapses(), live=conn.num_live(), nonzero=_nonzero(conn), steps=state.step,
                   updates=sum(1 for e in result.events if e.get("kind") == "update"),
                   seconds=result.resumed_seconds + time.time() - t0,  # a resumed run's earlier sessions too
                   processes=accelerator.num_processes, mask_hash_per_process=gather_mask_hashes(accelerator, conn))
    _finish(accelerator, output_dir, summary, files)
    _end(accelerator)
    return RunResult(output_dir, model, conn, result.controller, state, summary, files)


def _test_eval(cfg, accelerator, model, test_dl):
    """The final evaluation on the test split, with a bar as --progress says."""
    from tqdm.auto import tqdm

    with tqdm(total=None, desc="test", unit="batch", leave=False, mininterval=1.0,  # evaluate sets the total
              disable=not (show_progress(cfg.progress) and accelerator.is_local_main_process)) as bar:
        return evaluate(accelerator, model, test_dl, progress=bar)


def _test_split_size(loaders, n_test: int, test_subset: Optional[int]) -> int:
    """summary.json's test_split_examples: the whole test split's size, more than the ``n_test``
    scored where --test_subset drew fewer."""
    return test_split_size(loaders.datasets.test if test_subset is not None else None, n_test)


def _split_labels(loaders, n_test: int, train: str, test_subset: Optional[int] = None) -> Dict[str, str]:
    """What fed each split's line in loss_accuracy.png: the held-out part is drawn from TRAIN, and
    the test line says how many test images it scored (of how many, when --test_subset drew fewer)."""
    n_holdout = len(loaders.datasets.holdout)
    test = test_images(loaders.datasets.test if test_subset is not None else None, n_test)
    return {"train": train, "holdout": f"held-out ({n_holdout:,} images of TRAIN)", "test": f"test ({test})"}


def _write_outputs(accelerator, cfg, output_dir: Path, rows, events, conn,
                   labels: Optional[Dict[str, str]] = None, kept: Optional[dict] = None) -> Dict[str, Path]:
    files = {"config": output_dir / "config.yaml", "metrics": output_dir / "metrics.csv",
             "events": output_dir / "events.jsonl", "connectome": output_dir / "connectome.safetensors",
             "dense_state_dict": output_dir / "dense_state_dict.pt"}
    if accelerator.is_main_process:
        write_metrics_csv(rows, files["metrics"])
        write_text(files["events"], "".join(json.dumps(e, default=float) + "\n" for e in events))
        conn.save(files["connectome"], with_original=conn.mode == "mask_only")
        torch.save(conn.dense_state_dict(device="cpu"), files["dense_state_dict"])  # loads on any machine
        if cfg.figures:
            from adaptive.plots import plot_run, run_title

            title = run_title(cfg.model, cfg.dataset, output_dir, what=f"{cfg.mode}: " if cfg.mode != "train" else "")
            files.update(plot_run(rows, events, output_dir, labels, kept, title=title,
                                  max_grad_norm=cfg.max_grad_norm))
    accelerator.wait_for_everyone()
    return files


def _end(accelerator) -> None:
    """Leave the process group together: a rank that tears down its group while another is still
    writing can take the rendezvous store with it and abort the other at exit."""
    accelerator.wait_for_everyone()
    accelerator.end_training()


def _density_note(cfg, summary, total_steps, ctrl) -> Optional[str]:
    """A line for the summary when the run ended more than one point of density away from the
    requested one, else None: ensembles too coarse to come closer, or a gradual policy given too few
    steps to finish its schedule."""
    got, want = summary["density"], cfg.density
    if want is None or abs(got - want) <= 0.01:  # --density none: the policy's own boundaries set it
        return None
    largest = _whole_ensembles(ctrl, want)
    if largest is not None:
        return (f"the run ended at density {got:.4f}, not the requested {want:g}: its {cfg.ensemble!r} ensembles "
                f"(up to {largest:,} synapses each) are kept or pruned whole, and {got:.4f} is as near as whole "
                "ensembles come (within half an ensemble of the budget's target); a finer --ensemble lands nearer")
    vetoed = [e for e in ctrl.events if e.get("kind") == "update" and e.get("line_search_fraction") is not None
              and e["line_search_fraction"] < 1.0]
    if vetoed:  # the held-out check held the edits back, not the schedule
        undone = sum(1 for e in vetoed if e["line_search_fraction"] == 0.0)
        return (f"the run ended at density {got:.4f}, not the requested {want:g}: the held-out check (--line_search "
                f"{cfg.line_search}) undid {undone} and shrank {len(vetoed) - undone} of {summary['updates']} update(s), "
                f"whose held-out loss rose by more than --line_search_tolerance {cfg.line_search_tolerance:g} "
                "(events.jsonl: line_search_fraction, actual_loss_change); raise the tolerance to let the density "
                "follow its schedule")
    end_step = max(1, int(round(cfg.end_fraction * total_steps)))
    return (f"the run ended at density {got:.4f}, not the requested {want:g}: policy {cfg.policy!r} made "
            f"{summary['updates']} update(s), one every {cfg.update_every} steps until step {end_step} of {total_steps} "
            f"(end_fraction {cfg.end_fraction:g}); give it more steps (--epochs, --max_steps) or a smaller --update_every")


def _whole_ensembles(ctrl, density: float) -> Optional[int]:
    """The largest ensemble's synapses when the live count is within half an ensemble of its target
    for ``density`` (each layer's under a layer budget whose counts the policy holds, else the
    network's): as near as whole ensembles come. None where ensembles hold one synapse or the count
    is farther off."""
    from adaptive.policies.base import synapse_targets

    names = ctrl.editable()
    largest = {n: 1 if (s := ctrl.ensemble_sizes(n)) is None else int(s.max()) for n in names}
    if not names or max(largest.values()) <= 1:
        return None
    try:
        per_layer, network = synapse_targets(ctrl, density)
    except ValueError:  # the density is below what protected layers and floors need: no target to meet
        return None
    live = {n: int(torch.count_nonzero(ctrl.conn.masks[n])) for n in names}
    if per_layer is not None and ctrl.policy.holds_layer_counts and not ctrl.policy.ranks_globally:
        near = all(abs(live[n] - per_layer[n]) <= largest[n] / 2 for n in names)
    else:
        target = network if network is not None else sum(per_layer.values())
        near = abs(sum(live.values()) - target) <= max(largest.values()) / 2
    return max(largest.values()) if near else None


def _update_note(cfg, summary, total_steps, ctrl) -> Optional[str]:
    """A line for the summary when an adaptive policy never got to edit the connectome: its update
    windows held NaN or inf gradients or weights, or the run was too short for its schedule."""
    skipped = ctrl.nonfinite_windows
    if skipped and summary["updates"]:
        return (f"{skipped} update window(s) held NaN or inf gradients or weights and were skipped ({summary['updates']} "
                "update(s) ran); the training diverged at times (see the losses in metrics.csv): lower --lr, or "
                "add --warmup_steps")
    if summary["updates"] or cfg.policy == "magnitude":  # one-shot magnitude prunes at the start
        return None
    if skipped:
        return (f"no controller update ran: the gradients or weights of all {skipped} update window(s) held NaN or inf, so "
                "each update was skipped and the connectome kept its initial masks; the training diverged (see "
                "the losses in metrics.csv): lower --lr, or add --warmup_steps")
    end_step = max(1, int(round(cfg.end_fraction * total_steps)))
    return (f"no controller update ran: policy {cfg.policy!r} edits every {cfg.update_every} steps until step "
            f"{end_step} of {total_steps} (end_fraction {cfg.end_fraction:g}), so the connectome kept its initial "
            "masks; give it more steps (--epochs, --max_steps) or a smaller --update_every")


def dying_relu_remedy(cfg) -> str:
    """What the silent-units warning suggests against ReLUs that die: clipping the gradient where the
    run does not clip (recipes/benchmarks/lenet5_stability.py: LeNet-5 at lr 0.1 collapsed to chance in
    5 of 24 runs, 3 settings x 8 seeds, with --max_grad_norm 1 in none, and with a warmup in 4 others),
    else a tighter clip or a lower rate."""
    if cfg.max_grad_norm is None:
        return ("clipping the gradient, --max_grad_norm 1, kept all 24 LeNet-5 runs on MNIST alive where lr 0.1 "
                "alone lost 5: docs/training.md, recipes/benchmarks/lenet5_stability.py; a lower --lr helps too")
    return f"a smaller --max_grad_norm than {cfg.max_grad_norm:g} or a lower --lr usually keeps them alive"


def _last_train_loss(rows: List[dict], step: int) -> Union[float, str, None]:
    """A progress line's train loss: the last train row's, with the steps it covers where it closed
    before ``step`` (an evaluation between rows: an epoch's end, --eval_every off --log_every's
    grid), so that it does not pass for the loss up to the step the line names. None: no row yet."""
    train = [r for r in rows if r.get("split") == "train"]
    if not train:
        return None
    loss, end = train[-1].get("loss"), train[-1]["step"]
    if end == step or not isinstance(loss, (int, float)):
        return loss
    start = train[-2]["step"] + 1 if len(train) > 1 else 1
    return f"{loss:.4g} (steps {start}-{end})"


def _row_lr(state, optimizer) -> float:
    """A held-out or test row's ``lr``: the last trained step's, or the first step's before any."""
    return state.lr if state.lr is not None else float(optimizer.param_groups[0]["lr"])


def _nonzero(conn) -> int:
    """Live synapses whose weight is not exactly 0.0 (a pruned one is 0.0, or NaN after a run
    diverged, and is not counted): fewer than the live ones where a live synapse holds 0.0
    (regrown at zero and not yet moved, or reading an input that is always 0)."""
    return sum(int(torch.count_nonzero(p.detach()[conn.masks[n].to(p.device)])) for n, p in conn.params.items())


def _finish(accelerator, output_dir, summary, files):
    # every forward pass of the run, the held-out and test evaluations included, ran at this precision:
    # what Accelerate's autocast ran, not the setting (fp16 on a CPU runs none: refused by training_function)
    summary["mixed_precision"] = mp = "no" if _inert_fp16(accelerator) else str(accelerator.mixed_precision)
    if accelerator.is_main_process:
        write_text(output_dir / "summary.json", jsonio.dumps(summary, indent=1))
        files["summary"] = output_dir / "summary.json"
        ho = summary.get("holdout_accuracy")
        zero_live = summary["live"] - summary["nonzero"]
        n_test = summary["test_examples"]
        whole = summary.get("test_split_examples", n_test)
        test = f"a stratified draw of {whole:,}: --test_subset" if whole > n_test else "the whole test split"
        print(
            f"\ndone in {summary['seconds']:.0f}s: test accuracy {100 * summary['test_accuracy']:.2f}% on "
            f"{n_test:,} test images ({test}; held-out part of TRAIN {'n/a' if ho is None else f'{100 * ho:.2f}%'}), "
            f"density {summary['density']:.4f} ({summary['live']:,} of {summary['synapses']:,} synapses live"
            + (f", {zero_live:,} of them holding exactly 0.0" if zero_live else "")
            + f"), {counted(summary['updates'], 'controller update')}"
            + (f"; every figure measured under {mp} autocast (--mixed_precision), so a float32 evaluation of "
               "dense_state_dict.pt differs in the last digits" if mp != "no" else "") + "\n"
            f"outputs in {output_dir}/: " + ", ".join(sorted(p.name for p in files.values())),
            flush=True,
        )
        for key in ("density_note", "update_note", "seconds_note"):
            if summary.get(key):
                print(f"note: {summary[key]}", flush=True)


_broadcast_str = run_folder.broadcast_str  # the main process's value on every process


def parse_args(argv=None) -> RunConfig:
    return parse_config(RunConfig, argv, prog="recipes/adaptive.py", exit_on_error=True)


def main(argv=None, on_step=None) -> RunResult:
    """Parse the command line and run. Problems a user can fix (a bad option, missing data, a
    missing checkpoint or weights file that does not fit) end with one ``error:`` line, status 2."""
    from adaptive.cli import run_cli
    from adaptive.warn import command_line_warnings

    with command_line_warnings():  # parsing imports --plugins, whose warnings print as run_cli prints the run's
        cfg = parse_args(argv)
    return run_cli(lambda: training_function(cfg, on_step=on_step), "recipes/adaptive.py",
                   on_interrupt=_on_interrupt,
                   errors=(CheckpointError,))


if __name__ == "__main__":
    from adaptive.distributed import exit_launched_process

    main()
    exit_launched_process()  # every rank has written what it must: skip gloo's teardown
