"""The recipe's options: :class:`RunConfig` (typed defaults, each with its help; its checks run
on the merged settings of the --config files and the command line) and :func:`parse_args`."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Literal, Optional, Tuple, Union

from adaptive.cli import check_parallelism
from adaptive.cli_checks import LARGEST_COUNT, range_problem
from adaptive import run_folder
from adaptive.config import COMMAND_LINE, SEED_RANGE, ConfigError, given_keys, parse_config, seed_in_range
from adaptive.training import STEP_GAMMA, STEP_MILESTONES, step_schedule_problem

from .accumulation import _ACCUM_ENV, _accumulation_from_env
from .checks import (_FORMER_DEFAULTS, _check_names, _check_target, _estimator_slots, _refuse_idle_line_search,
                     _refuse_train_only)
from .derived_keys import _fields_of, _kw_as_options, _refuse_derived_keys, _train_mask_only_kw_error
from .folder import MASK_ONLY_CHECKPOINT
from .resume import _resume_path_exists


def _data_option(option: str, value, *range_, **kw) -> Tuple[bool, Optional[str]]:
    """A data option's entry in RunConfig's checks: (ok, the shared wording of its refusal)."""
    problem = range_problem(option, value, *range_, **kw)
    return problem is None, problem


def _help(text: str):
    return field(default=None, metadata={"help": text})


def _opt(default, text: str):
    return field(default=default, metadata={"help": text})


# RunConfig.density's default: a mask_only --target overrides it where no one gave it, and where a
# --config file gives it (every config.yaml records a density, a --target run's this one)
_DEFAULT_DENSITY = 0.2


@dataclass
class RunConfig:
    """Every option of the recipe, with its default (the no-argument run)."""

    # written into config.yaml beside the options for the reader, read back by nothing (_save_config)
    RECORDED_KEYS: ClassVar[Tuple[str, ...]] = ("estimator_resolved",)
    # set by __post_init__ while a --resume command line is parsed: the keys of _FORMER_DEFAULTS it left out
    _left_out: ClassVar[frozenset] = frozenset()

    # what runs
    plugins: List[str] = field(default_factory=list, metadata={"help": ".py files or module names imported first: "
                               "their register_* calls add models, datasets, estimators, policies, budgets or ensembles "
                               "that the options below can then name (adaptive.plugins)"})
    mode: Literal["train", "mask_only"] = field(default="train", metadata={"help": "train (dynamic sparse training) or mask_only (weights frozen, only the connectome moves)"})
    # data
    dataset: str = field(default="digits", metadata={"help": "digits, mnist, cifar10, imagenet, folder (any ImageFolder tree: --data-dir holds train/ and val/ or test/), fake"})
    data_dir: Optional[str] = _help("data folder (default: $ADAPTIVE_DATA or ../shared/data)")
    download: bool = _opt(False, "let torchvision download a dataset that is not found (needs internet)")
    dataset_kw: Dict[str, Any] = field(default_factory=dict, metadata={"help": "extra dataset arguments (e.g. shape for fake; wnids=FILE for imagenet and folder: a list of ImageNet's 1000 wnids, such as LOC_synset_mapping.txt, labelling class folders named by wnids with their ImageNet index, never looked for here)"})
    holdout: float = field(default=0.1, metadata={"help": "fraction of TRAIN held out for selection/evaluation"})
    subset: Optional[int] = _help("use only this many train examples (a stratified draw that includes the held-out part)")
    test_subset: Optional[int] = _help("evaluate on only this many test examples (a stratified draw with --seed: "
                                       "runs of other seeds score other test images; one of the split's size or "
                                       "more takes the whole split)")
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
    weights: Optional[str] = _help("pretrained weights file (loaded strictly; none: the model's random initial weights, which a mask_only run of a torchvision: model is warned of unless given so)")
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
    line_search_tolerance: float = _opt(math.inf, "--line_search: the held-out loss rise an update may cause and "
                                                  "still be kept, >= 0 (default inf: keep every update, only "
                                                  "measure it, logged as actual_loss_change in events.jsonl; "
                                                  "tolerance 0 held gradual pruning short of its density in "
                                                  "recipes/benchmarks/line_search_train.py; a policy may set its "
                                                  "own for an edit it must make, e.g. balanced restoring its count). "
                                                  "--resume without it continues a run recorded with 0, the "
                                                  "default before")
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
    eval_every: int = field(default=0, metadata={"help": "steps between holdout evaluations (0: every epoch; in "
                                                     "mask_only mode rounded down to whole --update_every windows)"})
    checkpoint_every: int = field(default=0, metadata={"help": "steps between checkpoints (0: none)"})
    keep_checkpoints: int = _opt(2, "checkpoints kept in the run folder (older ones are deleted; 0: all)")
    resume: Optional[str] = _help("latest (the newest checkpoint in --output_dir, which it then needs), a run folder or a "
                                  "checkpoint folder")
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
                source = (given_keys() or {}).get("estimator")
                # a --config file's estimator (a shipped config's, with --policy rigl to compare): the file stays
                drop = (f"{source} gives it: add --estimator none" if source not in (None, COMMAND_LINE) else
                        "drop --estimator (a config.yaml written before this check records the default estimator "
                        "for every policy: delete its estimator line, or add --estimator none)")
                raise ConfigError(
                    f"policy {self.policy!r} fixes its scores, so estimator {self.estimator!r} would be ignored: "
                    f"{drop}, or use a policy that takes one (utility, balanced, threshold, gmp, magnitude)")
        takes = _estimator_slots(self.policy)[0]  # (None: an unknown policy, which _check_names names)
        if self.estimator_kw and self.estimator is None and takes is not None:
            source = (given_keys() or {}).get("estimator_kw")
            # a --config file's mapping: the command line adds entries to it and cannot empty it
            drop = (f"{source} gives it: delete its estimator_kw (the command line cannot empty a file's mapping)"
                    if source not in (None, COMMAND_LINE) else "drop --estimator_kw")
            raise ConfigError(f"estimator_kw ({self.estimator_kw!r}) sets options of the utility estimator, and policy "
                              f"{self.policy!r} runs none here"
                              + (" (it ranks by weight magnitude unless one is named): name one with --estimator"
                                 if takes else f": {drop} (it takes no estimator)"))
        if self.update_every is None:
            self.update_every = 1 if self.mode == "mask_only" else 25
        if self.epochs is None:
            self.epochs = 1 if self.mode == "mask_only" else 20
        if self.edit_fraction is None:
            self.edit_fraction = 1.0 if self.mode == "mask_only" else 0.3
        given = given_keys()  # (None: a config built in code or loaded from a file, whose values all stay)
        # a resumed run recorded with such an option's former default continues with it where the command
        # line leaves the option out (_check_against): the keys it leaves out, read while it is parsed
        left_out = self.resume and given is not None
        self._left_out = frozenset(k for k in _FORMER_DEFAULTS if k not in given) if left_out else frozenset()
        if self.mode == "mask_only" and self.resume:  # a run recorded before the recipe set these keys itself
            typed = {k for k, src in (given or {}).items() if src == COMMAND_LINE}
            for key, value in _kw_as_options(_fields_of(self)).items():
                # an option typed now stays, so the resume check names it if it differs from the run's;
                # where --mask_only_kw is typed with it (the run's own command), the key won, as it did
                if key not in typed or "mask_only_kw" in typed:
                    setattr(self, key, value)
        from adaptive.data.wnids import absolute_wnids
        from adaptive.paths import absolute_if_exists, empty_path_problem, home_expanded

        # "" or " " (an unset variable) meant something else unsaid: resume a new run, weights none, data_dir the
        # default folder, output_dir runs/<date-time>; ~ as the shell would have (a --config file's, --key=~/x):
        # output_dir made a folder called ~ in the working directory, and weights and resume were 'does not exist'
        for key, fix in (("resume", "latest, a run folder or a checkpoint folder, or leave resume out (or null) to "
                                    "start a new run"),
                         ("weights", "a weights file, or leave weights out (or null) for the model's own initial weights"),
                         ("data_dir", "a data folder, or leave data_dir out (or null) for the default ($ADAPTIVE_DATA, "
                                      "else ../shared/data)"),
                         ("output_dir", "a folder, or leave output_dir out (or null) for the default runs/<date-time>")):
            problem = empty_path_problem(getattr(self, key), key, fix)
            if problem and self.resume and key in ("weights", "data_dir") and (given or {}).get(key) != COMMAND_LINE:
                setattr(self, key, None)  # a run's config.yaml recorded before '' was refused: as it ran (none, default)
                continue
            if problem:
                raise ConfigError(problem)
            setattr(self, key, home_expanded(getattr(self, key)))
        # config.yaml then reruns from any working directory
        self.weights, self.data_dir = absolute_if_exists(self.weights), absolute_if_exists(self.data_dir)
        try:
            self.dataset_kw = absolute_wnids(self.dataset_kw)  # (its wnids file, as the data folder)
        except ValueError as e:  # (wnids: 1e5, a number: no file name)
            raise ConfigError(str(e)) from None
        if self.mode == "mask_only" and self.weights is None and given is not None and "weights" not in given:
            from adaptive.models.tv import warn_random_weights

            # a torchvision network's masks searched on its random initial weights, said only by a note once the
            # data had loaded; --weights none (or weights: null in a --config file) asks for it: no warning then
            source = given.get("model")  # (named where it came from, as recipes/prune_pretrained.py names it)
            warn_random_weights(self.model, f"{source}: model" if source not in (None, COMMAND_LINE) else "--model")
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
            (self.density is None or 0.0 < self.density <= 1.0, f"density must be in (0, 1], got {self.density}"
             + (f" (a fraction of the synapses, not a percentage: {self.density:g}% is --density "
                f"{self.density / 100:g})" if self.density is not None and 1.0 < self.density <= 100.0 else "")),
            _data_option("--batch_size", self.batch_size, 1, whole=True, what="train examples per step and process",
                         example="32 (say)", most=LARGEST_COUNT),
            (self.gradient_accumulation_steps >= 1, f"gradient_accumulation_steps must be >= 1 (1: a step per batch), "
                                                    f"got {self.gradient_accumulation_steps}"),
            _data_option("--gradient_accumulation_steps", self.gradient_accumulation_steps, 1, whole=True,
                         example="1 (a step per batch)", most=LARGEST_COUNT),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr must be a finite number > 0, got {self.lr}"),
            (0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1) (SGD momentum; adamw: beta1), got {self.momentum}"),
            (0.0 <= self.weight_decay < math.inf, f"weight_decay must be a finite number >= 0, got {self.weight_decay}"),
            (seed_in_range(self.seed), f"seed must be in {SEED_RANGE}, got {self.seed}"),
            (self.update_every >= 1, f"update_every must be >= 1, got {self.update_every}"),
            (0.0 <= self.edit_fraction <= 1.0, f"edit_fraction must be in [0, 1], got {self.edit_fraction}"),
            (0.0 < self.end_fraction <= 1.0, f"end_fraction must be in (0, 1], got {self.end_fraction}"),
            # (the controller refused it only once the data had loaded)
            (0.0 <= self.min_density <= 1.0, f"min_density must be in [0, 1] (each layer's density floor; 0: none), "
                                             f"got {self.min_density}"),
            _data_option("--holdout", self.holdout, 0, 1, open_high=True, what="the part of TRAIN held out; 0: none",
                         example="0.1 (say)"),
            # (refused by the data layer only once the run folder and its lock were made)
            _data_option("--subset", self.subset, 1, whole=True, left_out="for all"),
            _data_option("--test_subset", self.test_subset, 1, whole=True, left_out="for all"),
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
            (self.num_workers >= 0, f"--num_workers must be >= 0 (0: load in the main process), got "
                                    f"{self.num_workers}: give --num_workers 0 or more"),
            _data_option("--eval_batch_size", self.eval_batch_size, 1, whole=True, left_out="for --batch_size",
                         most=LARGEST_COUNT),
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
        for option, value, least in (("--num_workers", self.num_workers, 0), ("--threads", self.threads, 1)):
            try:
                check_parallelism(option, value, least)
            except ValueError as e:
                raise ConfigError(str(e)) from None
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
                source = (given_keys() or {}).get("target")
                # a --config file's target (a mask_only run's config.yaml, rerun with --mode train): the file stays
                fix = (f"{source} gives it: add --target none" if source not in (None, COMMAND_LINE) else
                       "drop --target")
                raise ConfigError("target (synapses to remove) applies to mode mask_only; in train mode --density "
                                  f"sets the fraction of live synapses: {fix}, or give --mode mask_only")
            _check_target(self.target)
            sources = given_keys() or {}
            if self.density is not None and (self.density != _DEFAULT_DENSITY or sources.get("density") == COMMAND_LINE):
                named = " and ".join(_as_given(key, getattr(self, key), sources.get(key)) for key in ("target", "density"))
                raise ConfigError(f"{named} both say how much mask_only "
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
        if self._resumed_settings() is not None:  # every recorded plugin loaded again (one replacing a built-in)
            from adaptive.plugins import resume_without_plugins

            problem = resume_without_plugins(self._resumed_settings(), self.plugins, resume=f"--resume {self.resume}")
            if problem:
                raise ConfigError(problem)

    def _resumed_plugins(self, error=None) -> str:
        """What an error of a --resume run adds about the plugins the resumed run recorded
        (:func:`adaptive.plugins.resume_hint`); "" without --resume, or with --resume latest and no
        --output_dir."""
        from adaptive.plugins import resume_hint

        settings = self._resumed_settings()
        return resume_hint(settings, self.plugins, error, resume=f"--resume {self.resume}") if settings else ""

    def _resumed_settings(self) -> Optional[Path]:
        """The config.yaml of the run a --resume continues: its run folder's, or a checkpoint folder's copy
        (the settings it was made with); None without --resume, or with --resume latest and no --output_dir."""
        if not self.resume or (self.resume == "latest" and not self.output_dir):
            return None
        where = Path(self.output_dir if self.resume == "latest" else self.resume)
        where = where.parent if where.is_file() else where  # a mask_only run's checkpoint file
        return where / "config.yaml"


def _as_given(key: str, value, source) -> str:
    """``key`` and its value as the user gave it: ``--key value`` from the command line (or built directly),
    ``key: value (in FILE)`` from a --config file."""
    return f"--{key} {value}" if source in (None, COMMAND_LINE) else f"{key}: {value} (in {source})"


def mask_only_target(density: Optional[float]) -> Union[float, str]:
    """The mask_only target that ``--density`` means without a ``--target``: the fraction 1 - density
    to remove (density 1.0 removes nothing), or "best" for ``--density none`` (as ``--target best``:
    a ladder of removals, keeping the rung with the best held-out score, or the dense network)."""
    return "best" if density is None else 1.0 - density


def _target(cfg: "RunConfig") -> Union[int, float, str]:
    """What a mask_only run removes: --target, else what --density means."""
    return cfg.target if cfg.target is not None else mask_only_target(cfg.density)


def parse_args(argv=None) -> RunConfig:
    """The run's settings from ``argv`` (default: the command line). A bad one prints ``error: ...``
    and exits with status 2; under a multi-process launch, from the first process of each machine
    only (:func:`adaptive.cli.say_error`: every process parses the same command line and files), and
    so do ``-h`` (the others exit with status 0 printing nothing) and the warnings of reading the
    settings (a --plugins module's: :func:`adaptive.cli.start_up_warnings_once`)."""
    import sys

    from adaptive.cli import error_lines, quiet_at_start, say_error, start_up_warnings_once

    argv = list(sys.argv[1:] if argv is None else argv)
    if quiet_at_start() and ("-h" in argv or "--help" in argv):  # (parse_config's test for its help)
        raise SystemExit(0)
    try:
        with start_up_warnings_once():
            cfg = parse_config(RunConfig, argv, prog="recipes/adaptive.py")
            from adaptive.models.tv import warn_transform_mismatch

            # torchvision's own weights file fed images resized or cropped otherwise than it was evaluated with
            warn_transform_mismatch(cfg.weights, cfg.dataset, cfg.dataset_kw)
            return cfg
    except ConfigError as e:
        note = _other_recipes_config(argv) if str(e).startswith("unknown config key") else None
        if note:
            e.add_note(note)
        say_error(error_lines("recipes/adaptive.py", e), e, once=True)
        raise SystemExit(2) from None


def _config_files(argv) -> List[str]:
    """The --config files ``argv`` names (``--config FILE`` and ``--config=FILE``), in order."""
    files = [tok.partition("=")[2] for tok in argv if tok.startswith("--config=")]
    return files + [argv[i + 1] for i, tok in enumerate(argv[:-1]) if tok == "--config"]


def _other_recipes_config(argv) -> Optional[str]:
    """What an unknown-key error adds where a --config file in ``argv`` is recipes/prune_pretrained.py's
    (every key of it is one of that recipe's, and some are not this recipe's: num_classes, remove, passes,
    window, ...): run it with that recipe, or write it in this recipe's keys; where the file also holds keys
    of this recipe alone (policy, density, ...), it is no config of that recipe: the note only says which
    of its keys are that recipe's; None otherwise."""
    import dataclasses

    from adaptive.config import normalize_key, read_yaml
    from recipes._prune_pretrained.options import DEFAULTS

    own = {f.name for f in dataclasses.fields(RunConfig)} | set(RunConfig.RECORDED_KEYS)  # (estimator_resolved)
    for path in _config_files(argv):
        try:
            keys = {normalize_key(str(k)) for k in read_yaml(path)}
        except ConfigError:
            continue
        unknown = keys - own
        if unknown and unknown <= set(DEFAULTS) and not keys <= set(DEFAULTS):
            # (policy: rigl with a stray window: 5 was called a config of recipes/prune_pretrained.py, which
            # would refuse its policy in turn)
            return (f"{path}: {', '.join(sorted(unknown))}: key(s) of recipes/prune_pretrained.py, not of this recipe; "
                    f"the file is no config of that recipe ({', '.join(sorted(keys - set(DEFAULTS)))}: this recipe's "
                    "keys alone)")
        if unknown and keys <= set(DEFAULTS):
            return (f"{path} is a config of recipes/prune_pretrained.py ({', '.join(sorted(unknown))}: its keys, not "
                    f"this recipe's): run python recipes/prune_pretrained.py --config {path}, or write it in this "
                    "recipe's keys (mode: mask_only runs its job here: "
                    "recipes/configs/imagenet_mobilenetv3_maskonly_adaptive.yaml is the shipped example)")
    return None
