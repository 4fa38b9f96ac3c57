"""The run: :func:`training_function` sets up Accelerate and the run folder (a resume checked
against the run's settings), then trains in train mode (the loop, its evaluations, checkpoints
and progress) or hands over to mask_only."""
from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from adaptive.cli import progress_line, progress_lines, show_progress
from adaptive.data import check_dataset_kw, model_before_data
from adaptive.diagnostics.silent_units import SilentUnits
from adaptive.distributed import (RESUME_FIX, agreed_call, gather_mask_hashes, mark_raised_alike, peer_stopped,
                                  peer_stopped_error, refuse_differing, refuse_differing_masks,
                                  refuse_sharded_launch, warn_lone_launched_process)
from adaptive.integrity import CheckpointWriteError
from adaptive.metrics import fmt_unsaturated
from adaptive.training import (
    TrainState, evaluate, find_checkpoint, load_checkpoint, lr_schedule, metric_row, run_dir_of, save_checkpoint,
    train_one_epoch, write_metrics_csv,
)

from .accumulation import _env_accumulation, _refuse_other_accumulation
from .builders import (_holdout_check, _refuse_differing_splits, build_connectome, build_controller, build_model_for, build_optimizer,
                       get_dataloaders)
from .config import RunConfig
from .folder import CONFIG_COPY, _INTERRUPT, CheckpointError, _broadcast_str, _on_interrupt, _refuse_busy, _RunLock, _save_config, \
    _refuse_earlier_run, default_output_dir, main_writes
from .mask_only_run import _mask_only
from .notes import _batch_note, _density_note, _last_train_loss, _update_note, dying_relu_remedy
from .precision import _inert_fp16, _no_fp16_autocast, _refuse_inert_precision
from .report import RunResult, _end, _finish, _nonzero, _row_lr, _save_trained, _split_labels, _test_eval, \
    _test_split_size, _write_outputs
from .resume import _check_resumed_config, _mask_only_run_dir, _train_mode_mask_only_kw


def training_function(cfg: RunConfig, on_step: Optional[Callable[[TrainState], None]] = None) -> RunResult:
    from accelerate import Accelerator, DataLoaderConfiguration

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    refuse_sharded_launch("recipes/adaptive.py")  # FSDP: before Accelerate's own FSDP errors, before any write
    _env_accumulation()  # one Accelerate cannot read (a blank one too) is refused, naming it
    # without a GPU, cpu=True is what makes a multi-process launch a gloo (MULTI_CPU) run
    accelerator = Accelerator(cpu=cfg.cpu or not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision,
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed))
    warn_lone_launched_process(accelerator, "recipes/adaptive.py")  # accelerate launch --cpu --num_processes 2
    # Accelerate takes ACCELERATE_GRADIENT_ACCUMULATION_STEPS over the argument (parse_args reconciled the two
    # for a command line; a config built in code that disagrees is refused): what runs is what is recorded
    _refuse_other_accumulation(cfg, int(accelerator.gradient_accumulation_steps))
    from_launch = cfg.mixed_precision is None
    if from_launch:  # the precision accelerate launch (or its config) gave, else no: recorded and compared as it runs
        cfg.mixed_precision = str(accelerator.mixed_precision)
    resume_from = None
    output_dir = cfg.output_dir
    # what each process reads for itself (the folders --resume names, the run folder's files) is checked on
    # each, and the outcome agreed: one process's failure stops every process with one error (agreed_call)
    if cfg.resume:  # another run live in the folder: said before its checkpoints (being rewritten) are read
        agreed_call(lambda: _refuse_busy(accelerator, output_dir), some_alone=True)
    if cfg.resume and cfg.mode == "mask_only":
        output_dir = str(agreed_call(lambda: _mask_only_run_dir(cfg.resume, output_dir)))
    elif cfg.resume:
        resume_from = agreed_call(lambda: find_checkpoint(cfg.resume, output_dir))
        refuse_differing(resume_from.name, f"checkpoints for --resume {cfg.resume}")
        output_dir = output_dir or str(run_dir_of(resume_from))
    output_dir = Path(output_dir or _broadcast_str(accelerator, default_output_dir()))
    agreed_call(lambda: _refuse_busy(accelerator, output_dir), some_alone=True)  # (the folder --resume PATH named too)
    agreed_call(lambda: _check_run_folder(cfg, accelerator, output_dir, resume_from, from_launch))
    _INTERRUPT.update(output_dir=output_dir, resume_from=resume_from, checkpoint=resume_from,
                      overwrite=cfg.overwrite and not cfg.resume,
                      resume=bool(cfg.resume), wrote=False,
                      checkpoint_every=cfg.checkpoint_every if cfg.mode != "mask_only" else None, total_steps=None)
    lock = _RunLock(accelerator, output_dir)  # taken before the run's first write into the folder
    try:
        with _alike_warnings_once(accelerator):
            return _train(cfg, on_step, accelerator, resume_from, output_dir, lock)
    except BaseException as e:  # an error or Ctrl-C
        lock.release(refused=True)  # the folders this command made and wrote nothing into go
        if peer_stopped(e):  # another process failed first (its error is its own to report): one line here
            raise peer_stopped_error(_on_interrupt()) from e
        raise
    finally:
        lock.release()


# warnings every process of a launch gives alike, of figures reduced across the processes (the controller's
# gradient statistics, the held-out figures), of weights DDP keeps equal, or of the settings and the data's
# sizes (the data loading's): process 0's alone are shown
_ALIKE_WARNINGS = (r"step \d+: the gradients observed since the last update hold NaN or inf",
                   r"step \d+: the weights of \d+ layer\(s\) .* hold NaN or inf",
                   r"\d+ window\(s\) of \d+ training batch\(es\) were left out for a NaN or inf",
                   r"held-out loss \S+, accuracy \S+ with [\d,]+ synapses removed",
                   # and of the settings, as every process reads them at start-up (the data's sizes are compared)
                   r"the digits dataset has no augmentation", r"the digits dataset ships with scikit-learn",
                   r"\S+ \S+ asks for more examples than the \w+ split of",
                   r"ADAPTIVE_DATA=.* is (a file, not a folder|no such folder): dataset ",
                   # and of the decoded images' cache folder, which the processes of a machine share
                   r"the cache folder .* takes no new file ",
                   # and the controller's, of its settings and of masks that agree across the processes, statistics
                   # reduced across them and held-out losses averaged over them (the line search's)
                   r"the controller's schedule ended at step \d+ with the network at density ",
                   r"layer\(s\) \[.*\] have no live synapse left: ",
                   r"step \d+: no gradient was observed since the last update",
                   r"step \d+: holdout_loss\(\) gave \S+ before the edit",
                   r"estimator .* recovers the per-sample Fisher from the spread of the batch gradients",
                   r"estimator .* learns from the t-statistic of the batch gradients in a window",
                   r"estimator .* values a synapse by its presence derivative g \* w0",
                   r"init=.* was not used: nothing was sparsified at construction",
                   r"density \S+ is out of reach: the protected layers ",
                   r"policy '(threshold|gmp)'(: | with estimator )", r"policy '\w+' at step \d+: ")


@contextlib.contextmanager
def _alike_warnings_once(accelerator):
    """Inside the block, the processes of a launch but the main one show none of the warnings they
    give alike (:data:`_ALIKE_WARNINGS`: NaN or inf in the reduced statistics, the data settings'), which each
    printed."""
    if accelerator.is_main_process:
        yield
        return
    with warnings.catch_warnings():
        for pattern in _ALIKE_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


def _set_up(cfg: RunConfig, accelerator, model, optimizer, train_dl, loaders) -> tuple:
    """What the training loop runs with, once ``model``, ``optimizer`` and ``train_dl`` are
    prepared: ``(steps_per_epoch, total_steps, epochs, lr_scheduler, conn, ctrl, state)``, the
    connectome, controller, train state and schedule registered for checkpointing. Its refusals (an
    empty train loader, --warmup_steps beyond the run, a controller setting) are every process's
    alike; its other failures (its own device's memory) may be one process's. No collective: call it
    through :func:`adaptive.distributed.agreed_call`."""
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
    epochs = -(-total_steps // steps_per_epoch)  # whole-number ceiling: exact past 2**53 steps
    lr_scheduler = lr_schedule(optimizer, total_steps, cfg.warmup_steps, cfg.lr_schedule, cfg.lr_milestones,
                               cfg.lr_gamma)
    conn = build_connectome(cfg, accelerator.unwrap_model(model))
    # DDP averages gradients over every process's batch before the controller sees them
    ctrl = build_controller(cfg, conn, optimizer, total_steps, num_processes=accelerator.num_processes,
                            holdout_loss=_holdout_check(cfg, accelerator, model, loaders))
    state = TrainState(processes=accelerator.num_processes, steps_per_epoch=steps_per_epoch, accumulation=accum,
                       # (CPU threads sum a CPU run's numbers: a GPU run's are not theirs to warn of)
                       threads=torch.get_num_threads() if accelerator.device.type == "cpu" else None,
                       data_of=functools.partial(_data_fingerprint, loaders))
    state.silent_units = SilentUnits.from_connectome(conn)  # reads each step's gradients; no hook on the model
    # The registration order is part of the checkpoint format: custom_checkpoint_0..3.
    accelerator.register_for_checkpointing(conn, ctrl, state, lr_scheduler)
    return steps_per_epoch, total_steps, epochs, lr_scheduler, conn, ctrl, state


def _load_state_has_no_collective(accelerator) -> bool:
    """Whether Accelerate's ``load_state`` reads each process's files with no collective call, as it
    does for a DDP run (the recipe's): under FSDP, DeepSpeed or Megatron-LM it loads through the
    process group, where a process that failed before another's collective would leave it waiting."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED,
                                                DistributedType.MEGATRON_LM)


def _data_fingerprint(loaders) -> Optional[str]:
    """The content of the splits a run trains and selects on (:func:`adaptive.data.dataset_fingerprint`),
    recorded in its checkpoints (taken at the first one, or at a resume): a resume reading other data (another
    --data_dir of the same sizes) is refused. None, with a warning, where a dataset cannot be fingerprinted
    (a plugin's whose labels or parts are no tensors): the resume then checks its sizes only, as before."""
    from adaptive.data import dataset_fingerprint
    from adaptive.warn import warn_user

    splits = {name: getattr(loaders.datasets, name, None) for name in ("train", "holdout")}
    try:
        return ", ".join(f"{name} {dataset_fingerprint(ds)}" for name, ds in splits.items() if ds is not None)
    except Exception as e:  # (a new failure point for a single-process run otherwise)
        warn_user(f"the data's content fingerprint could not be taken ({type(e).__name__}: {e}): a --resume of this "
                  "run checks that it reads data of the same sizes, not the same data")
        return None


def _check_what_ran(accelerator, resume_from: Path, state: TrainState, threads: int, data: Optional[str],
                    threads_given: bool) -> None:
    """After the load: refuse a resume whose data differs from what the run read (recorded in the
    checkpoint: another --data_dir of the same sizes trained it on other examples in silence), and warn
    of another CPU thread count where --threads was not given (the option's own change is warned of while
    parsing; the count that ran was not recorded, so a resume under another OMP_NUM_THREADS or machine lost
    bit-exactness without a word). The state then records what runs now."""
    from adaptive.warn import warn_user

    if state.data is not None and data is not None and state.data != data:
        raise CheckpointError(
            f"--resume: {resume_from} was written by a run that read other data ({state.data}) than this resume "
            f"reads ({data}): the same steps would train on other examples. Give the --data_dir of the data the run "
            "read (a copy of it anywhere is the same data), or start a new run")
    if state.threads is not None and state.threads != threads and accelerator.device.type == "cpu" and not threads_given:
        warn_user(f"--resume: the run ran on {state.threads} CPU thread(s), this resume on {threads}: it continues, but "
                  "another thread count sums in another order, so the masks, weights and metrics may differ from an "
                  f"uninterrupted run's in their last bits (and then more): give --threads {state.threads} (or "
                  f"OMP_NUM_THREADS={state.threads}) for a bit-exact continuation")
    state.threads, state.data = threads, data


def _resume(accelerator, resume_from: Path, state: TrainState, accum: int, steps_per_epoch: int,
            threads_given: bool = False) -> None:
    """Load the checkpoint ``resume_from`` (verified by :func:`recipes._adaptive.resume._check_resumed_config`)
    into the registered objects, and refuse one whose train state another accumulation, process count
    or epoch length made. Each process reads its own copy of the files, so a failure may be one
    process's: call it through :func:`adaptive.distributed.agreed_call` where
    :func:`_load_state_has_no_collective`. Its one collective, ``load_checkpoint``'s gather of each
    process's random-state file check, comes first and is reached by every process (every error before
    it, a stat or read of that file, is caught and gathered there), so the agreement's gather follows it
    on every process."""
    from adaptive.integrity import CheckpointRefusedError

    threads, data = state.threads, state.data_fingerprint()  # (what runs now: the load replaces them with what ran)
    try:
        load_checkpoint(accelerator, resume_from, verified=True)  # verified by _check_resumed_config
    except CheckpointRefusedError:  # (adaptive.integrity's)
        raise  # names the file and the run's other checkpoints
    except Exception as e:  # a truncated or foreign file: name the folder, and the cause on one line (torch's
        from adaptive.checkpoint_files import one_line  # load errors give it on their second)

        others = sorted(p.name for p in resume_from.parent.glob("step_*") if p.is_dir() and p.name < resume_from.name)
        earlier = (f"--resume {resume_from.parent / others[-1]}" + (f"; the others: {', '.join(others[:-1])}"
                                                                    if len(others) > 1 else "")
                   if others else f"none is left in {resume_from.parent}")
        raise CheckpointError(
            f"checkpoint {resume_from} cannot be read ({type(e).__name__}: {one_line(e)}); "
            f"resume from an earlier one ({earlier}) or run without --resume") from e
    _check_what_ran(accelerator, resume_from, state, threads, data, threads_given)
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


def _save_config_copy(accelerator, cfg: RunConfig, output_dir: Path) -> Optional[dict]:
    """Write the run's config.yaml (:func:`recipes._adaptive.folder._save_config`: every process
    calls it, the main process writes) and return what every checkpoint carries of it,
    ``{CONFIG_COPY: bytes}`` (None but on the main process, which writes them)."""
    content = _save_config(accelerator, cfg, output_dir)
    return {CONFIG_COPY: content} if accelerator.is_main_process else None


def _check_run_folder(cfg: RunConfig, accelerator, output_dir: Path, resume_from, from_launch: bool) -> None:
    """The checks of the run folder before the run takes it: a resume's recorded settings (and its
    checkpoint, verified by every process together first), the precision, an earlier run there.
    Under several processes each reads its own view of the folder: call it through
    :func:`adaptive.distributed.agreed_call` (its one collective comes first, on every process)."""
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


def _model_and_data(cfg: RunConfig):
    """The model (its weights loaded) and the data loaders. The model before the data where the
    dataset knows its classes and input shape unread: weights that do not fit, or a mask_only target
    beyond the model's synapses, are refused before minutes of data loading (as
    recipes/prune_pretrained.py does); a --dataset_kw key an option sets (data_dir=, ...) is named
    first, not a clash of keywords in the facts' call. No collective: each process reads its own
    files (:func:`adaptive.distributed.agreed_call` agrees on the outcome)."""
    check_dataset_kw(cfg.dataset, cfg.dataset_kw)
    model_for = model_before_data(cfg.dataset, lambda k, shape: build_model_for(cfg, k, shape), data_dir=cfg.data_dir,
                                  download=cfg.download, **cfg.dataset_kw)
    loaders = get_dataloaders(cfg)
    return model_for(loaders.num_classes, loaders.in_shape), loaders


def _train(cfg: RunConfig, on_step, accelerator, resume_from, output_dir: Path, lock: "_RunLock") -> RunResult:
    from accelerate.utils import set_seed

    set_seed(cfg.seed)

    model, loaders = agreed_call(lambda: _model_and_data(cfg))  # a file one process misses stops them all
    if cfg.mode == "mask_only":
        return _mask_only(cfg, accelerator, model, loaders, output_dir, lock)

    optimizer = agreed_call(lambda: build_optimizer(cfg, model))  # (a setting every process refuses alike)
    # DDP's wrapper makes collectives of its own (it checks the shapes and broadcasts process 0's weights):
    # not agreed; every step after it up to the first training step is (_set_up, _resume, _save_config)
    model, optimizer, train_dl, holdout_dl, test_dl = accelerator.prepare(
        model, optimizer, loaders.train, loaders.holdout, loaders.test)
    # each process loaded its own copy of the data: one of another size would run other steps (the test split,
    # unread until the report, is compared there)
    _refuse_differing_splits(cfg, loaders, train=train_dl, holdout=holdout_dl)
    accum = cfg.gradient_accumulation_steps
    steps_per_epoch, total_steps, epochs, lr_scheduler, conn, ctrl, state = agreed_call(
        lambda: _set_up(cfg, accelerator, model, optimizer, train_dl, loaders))
    if resume_from is not None:
        if _load_state_has_no_collective(accelerator):  # a copy of the checkpoint only one process fails to read
            agreed_call(lambda: _resume(accelerator, resume_from, state, accum, steps_per_epoch, cfg.threads is not None))
        else:  # (FSDP, DeepSpeed: Accelerate's load_state gathers: a failure on one process cannot be agreed after it)
            _resume(accelerator, resume_from, state, accum, steps_per_epoch, cfg.threads is not None)
        # each process loaded its own copy of the checkpoint (the main process alone hashed its files): masks that
        # differ would otherwise run on unchecked until the next update, or to the run's end where none is left
        # (named as every process names it: the checkpoint's name, compared above, and --resume; its folder may be
        # each process's own, and the error must read alike on every process: process 0 alone writes it)
        refuse_differing_masks(gather_mask_hashes(accelerator, conn), conn, state.step,
                               f", right after resuming from checkpoint {resume_from.name} (--resume {cfg.resume})",
                               fix=RESUME_FIX)
        accelerator.print(f"resumed from {resume_from} at step {state.step}")
    resumed_at = state.step
    _INTERRUPT["total_steps"] = total_steps  # (Ctrl-C's note: whether a checkpoint was due at all)
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
    # only now: a refused command leaves an earlier run's config alone; every checkpoint carries the settings
    # it was made with (checked by a later --resume). The main process writes and reads it alone: its failure
    # (a full disk) stops every process with its own error
    ckpt_files = _save_config_copy(accelerator, cfg, output_dir)

    accelerator.print(
        f"{cfg.model} on {cfg.dataset}: {conn.num_synapses():,} synapses, density {fmt_unsaturated(conn.density(), '.3f', (0.0, 1.0))}, policy "
        f"{cfg.policy}{'/' + ctrl.estimator_name if ctrl.estimator_name else ''}, {accelerator.num_processes} process(es), "
        f"{total_steps} steps{f' of {accum} accumulated batches' if accum > 1 else ''} -> {output_dir}")
    progress, lines = None, progress_lines(cfg.progress, accelerator.is_main_process)
    if show_progress(cfg.progress) and accelerator.is_local_main_process:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True,
                        mininterval=1.0)

    def write_metrics():  # (every process: at an evaluation or a checkpoint, never per step)
        main_writes(accelerator, f"metrics.csv into {output_dir}",
                    lambda: write_metrics_csv(state.metrics, output_dir / "metrics.csv"))

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
                                    holdout_accuracy=holdout, density=conn.density(), seconds=elapsed()),
                      flush=True)
        if cfg.checkpoint_every and s.step % cfg.checkpoint_every == 0 and s.step < total_steps:
            s.seconds = elapsed()  # the run's time so far, carried on by a resume from this checkpoint
            try:
                saved = save_checkpoint(accelerator, output_dir, s.step, cfg.keep_checkpoints, state=s, files=ckpt_files)
            except CheckpointWriteError as e:  # raised by every process alike (save_checkpoint agrees them): one line
                raise mark_raised_alike(e)
            _INTERRUPT["checkpoint"] = saved  # (what Ctrl-C's message resumes: the later ones of an abandoned attempt went)
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
    try:  # the bar closed however the loop ends (an error, a refusal, Ctrl-C): one left open garbled the
        # terminal and the error's message
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
    finally:
        if progress is not None:
            progress.close()
    # masks that parted after the last update's check (or a run with no update left) stop here, before any output
    hashes = gather_mask_hashes(accelerator, conn)
    refuse_differing_masks(hashes, conn, state.step, ", the run's end")

    last = state.metrics[-1] if state.metrics else {}
    # the holdout score of the final network: reused only if it was taken at the last step
    holdout_acc = last["accuracy"] if last.get("split") == "holdout" and last.get("step") == state.step else eval_holdout()
    _save_trained(accelerator, output_dir, conn)  # kept should the test split fail, read for the first time now
    _refuse_differing_splits(cfg, loaders, test=test_dl)  # read now, for the report: its evaluation's batches must match
    test_loss, test_acc, n_test = _test_eval(cfg, accelerator, model, test_dl)
    metric_row(state, "test", test_loss, test_acc, conn, _row_lr(state, optimizer))
    files = _write_outputs(accelerator, cfg, output_dir, state.metrics, ctrl.events,
                           _split_labels(loaders, n_test, "train (mean over the batches trained since the last point"
                                         + (f"; loss with label smoothing {cfg.label_smoothing:g})" if cfg.label_smoothing
                                            else ")"), cfg.test_subset))
    seconds = time.time() - t0 if recorded is None else elapsed()
    summary = dict(test_accuracy=test_acc, test_loss=test_loss, test_examples=n_test,
                   test_split_examples=_test_split_size(loaders, n_test, cfg.test_subset), holdout_accuracy=holdout_acc,
                   density=conn.density(), synapses=conn.num_synapses(), live=conn.num_live(), nonzero=_nonzero(conn),
                   steps=state.step, updates=sum(1 for e in ctrl.events if e.get("kind") == "update"), seconds=seconds,
                   processes=accelerator.num_processes, mask_hash_per_process=hashes)
    summary.update(target_density=cfg.density, density_note=_density_note(cfg, summary, total_steps, ctrl),
                   update_note=_update_note(cfg, summary, total_steps, ctrl),
                   batch_note=_batch_note(cfg, len(loaders.datasets.train), accelerator.num_processes),
                   seconds_note=None if recorded is not None else (
                       f"seconds ({seconds:.0f}) covers only this session, from step {resumed_at} on: the checkpoint "
                       f"it resumed from ({resume_from}) was written before checkpoints recorded the run's time"))
    _finish(accelerator, output_dir, summary, files)
    _end(accelerator)
    return RunResult(output_dir, model, conn, ctrl, state, summary, files)
