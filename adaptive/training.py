"""Training-loop pieces that recipes share (torchvision-references style seams).

- :class:`TrainState`: the loop's own progress (step, epoch, metric rows), checkpointed with the run;
- :func:`train_one_epoch`: one pass over a prepared train loader, resumable mid-epoch, optionally
  clipping the gradient norm (:func:`adaptive.clipping.clip_gradients`);
- :func:`lr_schedule`: warm-up, then a cosine, constant or step learning-rate schedule;
- :func:`evaluate`: loss and accuracy over a prepared loader, gathered across processes;
- :func:`save_checkpoint` / :func:`find_checkpoint` / :func:`load_checkpoint`: Accelerate's
  ``save_state``/``load_state`` made atomic (written to a temporary folder, then renamed, so a run
  killed while saving leaves the previous checkpoint intact) and resumable by ``latest``;
- :func:`write_metrics_csv`: the metric rows as CSV.

Everything here works the same on one process and on many: collective calls (reductions, gathers,
barriers) are made by every process at the same points; only the main process writes files.
"""
from __future__ import annotations

import csv
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .atomic import atomic_path, sync_folder, sync_tree
from .modes import modes_kept
from .clipping import clip_factor, clip_gradients
from .metrics import fmt_unsaturated

CHECKPOINT_DIR = "checkpoints"
_CKPT_RE = re.compile(r"^step_(\d+)$")
METRIC_FIELDS = ("step", "epoch", "split", "loss", "accuracy", "density", "removed", "lr")
# written after METRIC_FIELDS only when a row carries them (train rows of a run that clips gradients)
CLIP_FIELDS = ("grad_norm", "clipped")
# train rows of a run that watches silent units (TrainState.silent_units: adaptive.diagnostics.SilentUnits):
# the share of its layers' units that no gradient reached over the row's steps
SILENT_FIELDS = ("silent_units",)
OPTIONAL_FIELDS = CLIP_FIELDS + SILENT_FIELDS
# TrainState.window: loss sum, correct count, examples; with clipping, the sum of the steps' finite
# pre-clip gradient norms, the steps clipped and the steps counted
_WINDOW = 6


@dataclass
class TrainState:
    """The loop's position and history; registered for checkpointing so a resumed run continues
    its step count, epoch and metrics file where the interrupted one stopped."""

    step: int = 0
    epoch: int = 0
    metrics: List[dict] = field(default_factory=list)
    # This process's loss sum, correct count and examples since the last train metric row (then the
    # gradient-norm sums of a clipping run: _WINDOW). It lives
    # here, not in one epoch's loop, so a logging interval that spans an epoch boundary or a
    # checkpoint and resume averages all of its steps.
    # (the ``window`` property: reading it brings in device_window's pending sums)
    _window: List[float] = field(default_factory=lambda: [0.0] * _WINDOW)
    # while train_one_epoch runs, the window's sums go on in a float64 tensor on the accelerator's
    # device (reading a step's loss on the host would stall a GPU every step); sync_window() brings
    # them into ``window`` at each row, checkpoint and epoch's end, in the same order of additions,
    # and wherever else ``window`` is read (an on_step hook's read is never a stale copy). The
    # tensor stays, zeroed in place at each row: made again from the host's list, it would be a copy
    # to the device, which waits for the device's queue to drain as a read does
    device_window: Optional[torch.Tensor] = field(default=None, compare=False, repr=False)
    _pending: bool = field(default=False, init=False, compare=False, repr=False)  # device_window is ahead
    saved_window: Optional[List[float]] = None  # the sum over processes, set by save_checkpoint while it saves
    # the run's shape, checked on resume: another process count reads other data at the same step
    processes: int = 1
    steps_per_epoch: int = 0
    # batches accumulated into one optimizer step (Accelerate's gradient_accumulation_steps): a step
    # of a run resumed with another would read other batches and average another number of them
    accumulation: int = 1
    # the learning rate the last trained step used (a scheduler has already moved the optimizer's
    # on to the next step's): what a metric row's ``lr`` reports
    lr: Optional[float] = None
    # wall seconds of the run up to this state, over every session of a resumed run (set by the
    # recipe before each checkpoint); None: resumed from a checkpoint that did not record it
    seconds: Optional[float] = 0.0
    # a SilentUnits watching the run's layers (adaptive.diagnostics): its interval so far is saved with
    # the state (summed over processes: saved_silent, set by save_checkpoint), so a resumed run's
    # silent_units column is the uninterrupted run's
    silent_units: Optional[Any] = field(default=None, compare=False, repr=False)
    saved_silent: Optional[List[float]] = None
    silent_layers: Optional[list] = None  # the last train row's LayerSilence list (until the recipe reads it)
    # what ran, checked on resume (None: not recorded, an older checkpoint's or a loop's own): the CPU
    # threads (another count sums in another order) and the content of the data the run read
    # (:func:`adaptive.data.dataset_fingerprint` of its splits: another --data_dir holding other data)
    threads: Optional[int] = None
    data: Optional[str] = None
    # what gives ``data`` where it is None, called at the first checkpoint or resume that needs it (the fingerprint
    # reads every label, and an image folder's file sizes: no cost to a run that never checkpoints)
    data_of: Optional[Callable[[], Optional[str]]] = field(default=None, compare=False, repr=False)

    def data_fingerprint(self) -> Optional[str]:
        """``data``, taken by ``data_of`` the first time it is asked for."""
        if self.data is None and self.data_of is not None:
            self.data, self.data_of = self.data_of(), None
        return self.data

    def state_dict(self) -> dict:
        """The window is saved summed over all processes (only the main process's copy is written)."""
        window = self.saved_window if self.saved_window is not None else self.sync_window()
        return {"step": self.step, "epoch": self.epoch, "metrics": [dict(r) for r in self.metrics],
                "window": [float(v) for v in window], "processes": self.processes,
                "steps_per_epoch": self.steps_per_epoch, "gradient_accumulation_steps": self.accumulation,
                "lr": self.lr, "seconds": self.seconds, "threads": self.threads, "data": self.data_fingerprint(),
                **self._silent_state()}

    @property
    def window(self) -> List[float]:
        """This process's window sums (``_WINDOW``), as :meth:`sync_window` gives them."""
        return self.sync_window()

    @window.setter
    def window(self, values: List[float]) -> None:
        self._window, self.device_window, self._pending = list(values), None, False

    def sync_window(self) -> List[float]:
        """The window with the sums train_one_epoch keeps on the device brought in (a host-device
        synchronisation where any are pending)."""
        if self._pending:
            self._window, self._pending = self.device_window.tolist(), False
        return self._window

    def _reset_window(self) -> None:
        """An empty window (after a row), the device's zeroed where it is (no copy to the device)."""
        self._window, self._pending = [0.0] * _WINDOW, False
        if self.device_window is not None:
            self.device_window.zero_()

    def _on_device(self, device: torch.device) -> torch.Tensor:
        """The window as a float64 tensor on ``device``, where the loop adds each step's sums (made
        from the host's list only where there is none there yet holding sums: a resume's first step)."""
        if self.device_window is None or self.device_window.device != device:
            w = self.sync_window()
            self.device_window = (torch.tensor(w, dtype=torch.float64, device=device) if any(w) else
                                  torch.zeros(_WINDOW, dtype=torch.float64, device=device))
        self._pending = True
        return self.device_window

    def _silent_state(self) -> dict:
        if self.silent_units is None:
            return {}
        v = self.saved_silent if self.saved_silent is not None else self.silent_units.vector().tolist()
        return {"silent": [float(x) for x in v]}

    def load_state_dict(self, sd: dict) -> None:
        """Each process takes an equal share of the saved window, so the next row's sum over
        processes is the saved total whatever the number of processes now. Checked whole first
        (:meth:`check_state_dict`): a malformed state changes nothing."""
        values, silent = self._loaded(sd)
        for k, v in values.items():
            setattr(self, k, v)
        if self.silent_units is not None:  # (every process takes the whole: only where it is zero counts)
            if silent is not None:
                self.silent_units.load_vector(silent)
            else:  # older checkpoints: the interval restarts here
                self.silent_units.reset()

    def check_state_dict(self, sd: dict) -> None:
        """Raise what :meth:`load_state_dict` refuses ``sd`` for, changing nothing:
        :func:`~adaptive.training.load_checkpoint` asks before any of a checkpoint's files loads (the
        load set the step and epoch before a malformed entry after them raised)."""
        self._loaded(sd)

    def _loaded(self, sd: dict):
        """``(attributes, silent vector or None)`` that ``sd`` loads as, every entry converted and checked."""
        try:
            values = {"step": int(sd["step"]), "epoch": int(sd["epoch"]),
                      "metrics": [dict(r) for r in sd.get("metrics", [])],
                      "processes": int(sd.get("processes", self.processes)),  # older checkpoints: taken as this run's
                      "steps_per_epoch": int(sd.get("steps_per_epoch", self.steps_per_epoch)),
                      "accumulation": int(sd.get("gradient_accumulation_steps", 1)),  # older: none accumulated
                      "lr": sd.get("lr", self.lr)}
            seconds = sd.get("seconds")  # older checkpoints: None, the earlier sessions' time is unknown
            values["threads"] = None if sd.get("threads") is None else int(sd["threads"])  # older: not recorded
            values["data"] = None if sd.get("data") is None else str(sd["data"])
            values["seconds"] = None if seconds is None else float(seconds)
            n = _world_size()
            window = [float(v) / n for v in sd.get("window", ())]
            values["window"] = window + [0.0] * (_WINDOW - len(window))  # older checkpoints: loss and accuracy only
            silent = None
            if self.silent_units is not None and "silent" in sd:
                silent = self.silent_units.check_vector(torch.tensor(sd["silent"], dtype=torch.float32))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not a TrainState state this run can load ({type(e).__name__}: {e}): pass the dict "
                             "TrainState.state_dict() returned, unchanged, from a run of this model") from e
        return values, silent


def _world_size() -> int:
    d = torch.distributed
    return d.get_world_size() if d.is_available() and d.is_initialized() else 1


def lr_schedule(optimizer, total_steps: int, warmup: int = 0, kind: str = "cosine",
                milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1):  # (STEP_MILESTONES, STEP_GAMMA)
    """A LambdaLR, stepped once per optimizer step whatever the process count: linear warm-up for
    ``warmup`` steps, then ``kind``:

    - ``"cosine"``: cosine from the peak to 0 at ``total_steps``;
    - ``"constant"``: flat;
    - ``"step"``: the rate is multiplied by ``gamma`` at each of ``milestones``, fractions of
      ``total_steps`` in (0, 1): from the optimizer step nearest ``m * total_steps`` (counted from 0,
      halves up) on, as in the classic CIFAR ResNet recipe (0.1, divided by 10 at half and three
      quarters of the run). A milestone inside the warm-up scales the ramp.
    """
    if kind not in ("cosine", "constant", "step"):
        raise ValueError(f"unknown learning-rate schedule {kind!r}: cosine, constant or step")
    total = max(1, int(total_steps))
    problem = step_schedule_problem(milestones, gamma) if kind == "step" else None
    if problem:
        raise ValueError(problem)
    # the nearest step, halves up, of the fraction as written: in floats 0.29 x 50 is 14.499999999999998,
    # which would round down
    at = [math.floor(Fraction(str(m)) * total + Fraction(1, 2)) for m in milestones]

    def factor(s: int) -> float:
        ramp = (s + 1) / warmup if warmup and s < warmup else 1.0
        if kind == "step":
            return ramp * gamma ** sum(s >= a for a in at)
        if ramp < 1.0 or kind == "constant":
            return ramp
        t = min(max(s - warmup, 0), total - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


cosine_schedule = lr_schedule  # (its name before the step schedule)


STEP_MILESTONES = (0.5, 0.75)  # the step schedule's defaults: the rate /10 at half and three quarters of the run
STEP_GAMMA = 0.1


def step_schedule_problem(milestones: Sequence[float], gamma: float) -> Optional[str]:
    """What is wrong with a step schedule's ``milestones`` and ``gamma`` (None: nothing)."""
    ms = list(milestones)
    if not ms or not all(0.0 < m < 1.0 for m in ms) or ms != sorted(set(ms)):
        return f"milestones must be increasing fractions of the run in (0, 1), such as 0.5,0.75, got {ms}"
    if not (math.isfinite(gamma) and 0.0 < gamma <= 1.0):
        return f"gamma must be in (0, 1] (the factor applied at each milestone), got {gamma}"
    return None


def _connectome_fields(conn) -> dict:
    if conn is None:
        return {"density": 1.0, "removed": 0}
    total = conn.num_synapses()
    live = conn.num_live()
    return {"density": live / max(1, total), "removed": total - live}


def metric_row(state: TrainState, split: str, loss: float, accuracy: float, conn=None, lr=None,
               fields: Optional[dict] = None) -> dict:
    """Append a metrics row at ``state.step``. Its ``density`` and ``removed`` are ``conn``'s now, or
    ``fields`` (``_connectome_fields`` taken earlier: the connectome the row's numbers were measured at).
    A ``loss`` of None (a mask-only training window whose every label was the ignored one) stays None."""
    fields = _connectome_fields(conn) if fields is None else fields
    row = {"step": state.step, "epoch": state.epoch, "split": split, "loss": None if loss is None else float(loss),
           "accuracy": None if accuracy is None else float(accuracy), **fields, "lr": lr}
    state.metrics.append(row)
    return row


@torch.no_grad()
def evaluate(accelerator, model, loader, loss_fn: Callable = F.cross_entropy, progress=None) -> tuple:
    """``(mean loss, accuracy, examples)`` of ``model`` over ``loader`` (prepared by Accelerate, or any
    iterable of batches, which are moved to the accelerator's device), every process evaluating its
    shard. Over a loader Accelerate prepared with even batches (its default) each batch's predictions
    are gathered with ``gather_for_metrics``, which drops the duplicates that even out the last batch
    across processes; over any other (prepared with ``even_batches=False``, or each process's own
    batches, of any sizes and counts: none hold duplicates) each process sums its own and the sums are
    added across processes once, at the end. Each module's own mode is restored.
    ``progress``: a progress bar (anything with ``update(n)``, e.g. tqdm) advanced once per batch;
    a tqdm bar made with ``total=None`` gets the loader's length here, when the evaluation starts (a
    lazily built test split is then read by the evaluation, not before)."""
    from accelerate.data_loader import DataLoaderStateMixin
    from accelerate.utils import send_to_device

    # batches Accelerate evened out across the processes (the same sizes on each, the last padded with
    # duplicates) are gathered one by one; others may differ in size and count between the processes,
    # which a gather of each batch cannot take (gloo aborts on tensors of other sizes, or waits)
    gathered = isinstance(loader, DataLoaderStateMixin) and getattr(getattr(loader, "batch_sampler", None),
                                                                    "even_batches", True)
    loss_sum, correct, n = 0.0, 0, 0
    if progress is not None and getattr(progress, "total", 0) is None:
        progress.total = len(loader)
        progress.refresh()
    with modes_kept(model, train=False):
        for x, y in loader:
            # a prepared loader's batches are there already; any other iterable's are moved
            x, y = send_to_device((x, y), accelerator.device)
            out = model(x)
            # (at least float32: bf16 logits are widened; float64 ones kept, not rounded through float32)
            losses = loss_fn(out if out.dtype == torch.float64 else out.float(), y, reduction="none")
            preds = out.argmax(1)
            if gathered:
                losses, preds, y = accelerator.gather_for_metrics((losses, preds, y))
            loss_sum += float(losses.double().sum())
            correct += int((preds == y).sum())
            n += int(y.numel())
            if progress is not None:
                progress.update(1)
    if not gathered and accelerator.num_processes > 1:
        sums = accelerator.reduce(torch.tensor([loss_sum, correct, n], dtype=torch.float64, device=accelerator.device),
                                  reduction="sum").tolist()
        loss_sum, correct, n = sums[0], int(sums[1]), int(sums[2])
    if n == 0:
        raise ValueError("evaluate: the loader yielded no examples")
    return loss_sum / n, correct / n, n


def _batches_taken(accelerator, loader, k: int, steps_left: Optional[int] = None) -> Optional[int]:
    """The batches this epoch takes from ``loader`` (None for a loader of no length): all of them, or
    with ``steps_left`` (``max_steps`` less the steps taken) no more than that many whole groups of
    ``k`` need, less the ones Accelerate has counted in the open group."""
    try:
        n = len(loader)
    except TypeError:
        return None
    if steps_left is not None:
        counted = int(getattr(accelerator, "step", 0) or 0)
        n = min(n, max(0, steps_left * k - counted % k))
    return n


def _ends_mid_group(accelerator, loader, k: int, steps_left: Optional[int] = None) -> bool:
    """Whether the batches this epoch takes from ``loader``, after the ones Accelerate has counted in
    the open group, end inside a group of ``k`` (a loader of no length: taken as they may). With
    ``steps_left`` (``max_steps`` less the steps taken) the epoch stops after that many whole groups
    if the loader holds more batches: at a group's end."""
    n = _batches_taken(accelerator, loader, k, steps_left)
    if n is None:
        return True
    counted = int(getattr(accelerator, "step", 0) or 0)
    return (counted + n) % k != 0


_EVEN_BATCHES = ("give every process as many batches: accelerator.prepare(loader) with even_batches=True (Accelerate's "
                 "default, DataLoaderConfiguration(even_batches=True)), which evens the shards out by repeating a few "
                 "examples, or a DistributedSampler, which pads them (drop_last=True trims them)")


def _steps_taken(accelerator, n: int, k: int) -> int:
    """The optimizer steps ``n`` batches make under ``gradient_accumulation_steps``
    ``k`` with ``sync_with_dataloader`` (Accelerate's default), where the loader's last batch closes its
    group, full or not: after the ones Accelerate has counted in the open group, each ``k`` batches make
    one, and a rest makes one more."""
    counted = int(getattr(accelerator, "step", 0) or 0) % k
    return (counted + n) // k + (1 if n and (counted + n) % k else 0)


def _refuse_uneven_batches(n: Optional[int], role: str, why: str, steps: Optional[Callable[[int], int]] = None) -> None:
    """Raise a ValueError on every process alike where the processes would take different numbers of
    batches ``n`` (None: a loader of no length, taken as it comes) from their ``role`` loader; one
    gather, nothing on one process. ``why``: what meets the other processes at each batch. ``steps``
    (under gradient accumulation whose groups the loader's end closes): the steps of ``n`` batches
    (:func:`_steps_taken`), compared instead, the batches shown beside them: only a step meets the
    other processes, and processes whose last groups are of other sizes take as many."""
    from .distributed import refuse_differing

    said = "batches of no count (a loader of no length)" if n is None else f"{n} batch{'es' if n != 1 else ''}"
    unit = "batches" if steps is None else "steps"
    value, detail = said, None
    if steps is not None and n is not None:
        value, detail = f"{steps(n)} step{'s' if steps(n) != 1 else ''}", said
    refuse_differing(value, f"numbers of {unit} to take from the {role} loader", detail=detail,
                     fix=f"{why}, and a process with fewer {unit} would leave the others waiting in a collective "
                         f"until the process group's timeout; {_EVEN_BATCHES}")


def train_one_epoch(accelerator, model, optimizer, loader, state: TrainState, *, lr_scheduler=None,
                    conn=None, loss_fn: Callable = F.cross_entropy, max_steps: Optional[int] = None,
                    log_every: int = 50, on_step: Optional[Callable[[TrainState], None]] = None,
                    progress=None, max_grad_norm: Optional[float] = None) -> Dict[str, float]:
    """One pass over ``loader`` (already positioned: pass ``accelerator.skip_first_batches`` to
    resume mid-epoch). Each batch runs inside ``accelerator.accumulate(model)``: forward,
    ``accelerator.backward`` (which divides the loss by the accelerator's
    ``gradient_accumulation_steps``, K), optimizer step and ``zero_grad``, which Accelerate's
    optimizer wrapper carries out only at the last batch of each group of K (and at the loader's
    end, where the last group may hold fewer: an Accelerator whose ``sync_with_dataloader=False`` would
    end the epoch mid-group is refused). One such group is one step: the attached controller
    observes, masks and edits inside the real optimizer step only, on the accumulated gradient; then
    the scheduler steps and ``state.step += 1``. With K > 1 the optimizer must be one prepared by
    ``accelerator``, which knows when to step, and so must the loader, which tells it where an epoch
    ends. ``lr_scheduler.step()`` is called once per step: a plain scheduler (:func:`lr_schedule`, as the
    recipe passes it) counts optimizer steps, as ``state.step`` and the controller do; one prepared by
    ``accelerator`` steps as Accelerate steps it, ``num_processes`` times per call unless the batches
    are split (its convention for a schedule sized in the loader's global batches).

    Every ``log_every`` steps a ``train`` metric row is appended with the loss and accuracy
    averaged over the interval's examples (every batch of every group) and over all processes, and
    the ``density``/``removed`` of the connectome the row's last step ran at: taken before that
    step's optimizer step, whose controller update the row's numbers never saw (a window that spans
    an earlier update mixes both densities and reports the later one). ``on_step(state)`` runs after
    each step (checkpointing, tests), so a checkpoint always falls between groups. Stops early at
    ``max_steps``. Returns the epoch's mean loss/accuracy over the processed batches on this process.
    Processes that would take different numbers of batches (loaders prepared with ``even_batches=False``)
    are refused by every process alike, before a batch is read: each step meets the other processes (under
    gradient accumulation whose groups the loader's end closes, Accelerate's default, the steps are compared:
    processes whose last groups differ in size may take as many).

    ``max_grad_norm``: clip each step's gradient to this total 2-norm
    (:func:`~adaptive.clipping.clip_gradients`: measured on the live gradients ``conn`` leaves the
    optimizer, unscaled first under fp16), after the group's last backward and before the optimizer
    step and its observers. Its train rows then also carry ``grad_norm``, the mean pre-clip norm
    over the row's steps, and ``clipped``, the share of those steps it scaled down (torch's factor
    ``min(1, max_norm / (norm + 1e-6))`` below 1: :func:`~adaptive.clipping.clip_factor`; steps whose
    norm is not finite, which a GradScaler skips, count in neither; None if all were).

    ``progress``: a bar (tqdm) advanced once per step; every 10th step its ``loss`` shows the mean
    loss of this process's batches since it last showed one (up to 10 steps; fewer at an epoch's
    start), and ``density`` the connectome's. That mean is of the loss as the train rows log it:
    ``loss_fn``'s value for each batch (not divided by the accumulation steps, every micro-batch once),
    weighted by its examples, summed in float64 on the device and read on the host only when shown;
    a batch's NaN or inf loss shows as the mean's until the bar's next loss.

    ``state.silent_units`` (an :class:`adaptive.diagnostics.SilentUnits` on the model's layers, or
    None): it observes each step's gradients before the optimizer step (a step the optimizer then
    skips, which a GradScaler does when they hold inf or NaN, is taken back); train rows then carry
    ``silent_units``, the share of its units no gradient reached over the row's steps, and
    ``state.silent_layers`` holds the row's per-layer counts.
    """
    # every process must take as many batches: each step meets the others (DDP's gradient all-reduce, the
    # controller's reduced statistics, the rows' reductions); a process with fewer waited in its next one.
    # First, before the refusals below that read this process's own batches (an epoch ending inside a group
    # under sync_with_dataloader=False): one process raising there skipped this gather that the others made
    # (under accumulation whose groups the loader's end closes, the steps are compared: other batch counts
    # may make as many, the last group shorter on some processes)
    k = accelerator.gradient_accumulation_steps
    taken = _batches_taken(accelerator, loader, k, None if max_steps is None else max_steps - state.step)
    closes = k > 1 and getattr(accelerator.gradient_state, "sync_with_dataloader", True)
    _refuse_uneven_batches(taken, "train", "train_one_epoch steps every process together (DDP's gradient all-reduce, "
                           "the controller's reduced statistics, the logged rows' sums)",
                           steps=(lambda n: _steps_taken(accelerator, n, k)) if closes else None)
    if accelerator.gradient_accumulation_steps > 1:
        from accelerate.data_loader import DataLoaderStateMixin
        from accelerate.optimizer import AcceleratedOptimizer

        k = accelerator.gradient_accumulation_steps
        if not isinstance(optimizer, AcceleratedOptimizer):
            raise TypeError(f"train_one_epoch with gradient_accumulation_steps {k} needs the optimizer that "
                            "accelerator.prepare returned (it steps only at the last batch of each group); this one "
                            "would step at every batch: pass the prepared one")
        if not isinstance(loader, DataLoaderStateMixin):
            raise TypeError(f"train_one_epoch with gradient_accumulation_steps {k} needs a loader that accelerator."
                            f"prepare returned (or accelerator.skip_first_batches of one), which tells Accelerate where "
                            f"it ends; over this {type(loader).__name__} an epoch whose batches are no multiple of {k} "
                            "would leave its last batches' gradient for the next epoch's first step: pass the prepared "
                            "loader")
        if not getattr(accelerator.gradient_state, "sync_with_dataloader", True) and _ends_mid_group(
                accelerator, loader, k, None if max_steps is None else max_steps - state.step):
            raise ValueError(f"train_one_epoch with gradient_accumulation_steps {k} steps at the loader's end too, but this "
                             "accelerator's GradientAccumulationPlugin has sync_with_dataloader=False, and this epoch's "
                             f"batches end inside a group of {k}: its last batches' gradient would stay in .grad for the "
                             "next epoch's first step (and epochs would take different numbers of steps). Build the "
                             "Accelerator with sync_with_dataloader=True (Accelerate's default: "
                             "gradient_accumulation_steps=K alone)")
    model.train()
    # the epoch's loss and correct sums stay on the device (as the window's) until it ends: no step
    # between two rows reads a value on the host, so none stalls a GPU
    ep, ep_n = torch.zeros(2, dtype=torch.float64, device=accelerator.device), 0
    # the bar's loss: summed loss and examples of this process's batches since the bar last showed one
    bar = torch.zeros(2, dtype=torch.float64, device=accelerator.device) if progress is not None else None
    for x, y in loader:
        if max_steps is not None and state.step >= max_steps:
            break
        with accelerator.accumulate(model):
            stepping = accelerator.sync_gradients  # this batch ends a group: the optimizer steps
            # the connectome this step runs at, for the row it closes: the step's update comes after
            at = (_connectome_fields(conn) if stepping and log_every and (state.step + 1) % log_every == 0
                  else None)
            out = model(x)
            loss = loss_fn(out, y)
            accelerator.backward(loss)
            if stepping:
                state.lr = float(optimizer.param_groups[0]["lr"])  # this step's (the scheduler moves it on below)
                if max_grad_norm is not None:
                    total = clip_gradients(model.parameters(), max_grad_norm, conn, accelerator=accelerator)
                    clipped = clip_factor(total, max_grad_norm) < 1
                if state.silent_units is not None:  # the gradients this step uses (averaged over processes)
                    state.silent_units.observe()
            optimizer.step()
            if stepping and state.silent_units is not None and getattr(optimizer, "step_was_skipped", False):
                state.silent_units.discard_last()  # a GradScaler skipped it: its inf/NaN gradients taught nothing
            optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # float64 sums on the device, as the host's Python floats added them
            b = int(y.numel())
            lsum = loss.detach().double().to(ep.device) * b  # (a float64 loss as it is: exact for the others too)
            corr = (out.detach().argmax(1) == y).sum().to(ep.device)
            w = state._on_device(ep.device)
            w[0] += lsum
            w[1] += corr
            w[2] += b
            ep[0] += lsum
            ep[1] += corr
            ep_n += b
            if bar is not None:
                bar[0] += lsum
                bar[1] += b
            if stepping and max_grad_norm is not None:  # a non-finite norm (a skipped step) counts in none
                finite = torch.isfinite(total).to(ep.device)
                w[3] += torch.where(finite, total.double().to(ep.device), 0.0)
                w[4] += finite & clipped.to(ep.device)
                w[5] += finite
        if not stepping:
            continue
        if lr_scheduler is not None:
            lr_scheduler.step()
        state.step += 1
        if log_every and state.step % log_every == 0:
            win = torch.tensor(state.sync_window(), dtype=torch.float64, device=accelerator.device)
            tot = accelerator.reduce(win, reduction="sum").cpu()
            row = metric_row(state, "train", tot[0] / tot[2], tot[1] / tot[2], lr=state.lr, fields=at)
            if max_grad_norm is not None:  # (every process holds the same norms: the sums keep their ratios)
                counted = float(tot[5])
                row.update(grad_norm=float(tot[3]) / counted if counted else None,
                           clipped=float(tot[4]) / counted if counted else None)
            if state.silent_units is not None:  # (a collective call, as the reduce above)
                state.silent_layers = state.silent_units.layers(accelerator)
                state.silent_units.reset()
                row["silent_units"] = state.silent_units.share(state.silent_layers)
            state._reset_window()
        if progress is not None:
            progress.update(1)
            if state.step % 10 == 0:  # (the bar's only read of the losses on the host: every 10th step)
                # the mean over the batches since the bar's last loss (up to 10 steps), not the last
                # batch's, which jumps from batch to batch
                bar_loss, bar_n = bar.tolist()
                bar.zero_()
                post = {"loss": f"{bar_loss / max(bar_n, 1):.3f}"}
                if conn is not None:
                    post["density"] = fmt_unsaturated(conn.density(), ".3f", (0.0, 1.0))
                progress.set_postfix(post, refresh=False)
        if on_step is not None:
            on_step(state)
    state.sync_window()
    ep_loss, ep_correct = ep.tolist()
    return {"loss": ep_loss / max(ep_n, 1), "accuracy": ep_correct / max(ep_n, 1)}


class DeviceLoader:
    """A loader whose batches are moved to ``device``, unsharded: every process sees every batch.
    For data that all processes must judge identically (mask_only's held-out verification)."""

    def __init__(self, loader, device):
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield tuple(t.to(self.device, non_blocking=True) if torch.is_tensor(t) else t for t in batch)


# ----------------------------------------------------------------------------- checkpoints

def checkpoint_root(output_dir) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def _step_of(checkpoint: Path) -> int:
    return int(_CKPT_RE.match(checkpoint.name).group(1))


def list_checkpoints(root) -> List[Path]:
    """Complete checkpoints under ``root`` (``step_N`` folders; temporary ones are not), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def _intact_before(root: Path, step: int) -> Optional[Path]:
    """The newest complete checkpoint under ``root`` before ``step`` (None: none): what a run whose
    checkpoint at ``step`` failed continues from (one at ``step`` or later, if any, belongs to a
    timeline a resume from an earlier checkpoint abandoned, or is the one that failed)."""
    intact = [p for p in list_checkpoints(root) if _step_of(p) < step]
    return intact[-1] if intact else None


def _continue_from(root: Path, step: int) -> str:
    """What a failed checkpoint's message says is left: the checkpoint the run continues from."""
    intact = _intact_before(root, step)
    return f"{intact} is intact" if intact is not None else "the run has no earlier checkpoint"


def resume_option(root: Path, output_dir, checkpoint: Path) -> str:
    """The option that resumes ``checkpoint`` of the run in ``output_dir`` (its checkpoints under
    ``root``): ``--resume latest --output_dir RUN`` where it is the newest there, else ``--resume``
    naming it (a later one, of the attempt a resume from an earlier checkpoint abandoned, is there,
    and ``latest`` would take that). The paths are compared resolved: ``--resume run/checkpoints/step_N
    --output_dir run`` names the newest one relative to where the recipe made the run folder absolute."""
    found = list_checkpoints(root)
    newest = bool(found) and found[-1].resolve() == Path(checkpoint).resolve()
    return f"--resume latest --output_dir {output_dir}" if newest else f"--resume {checkpoint}"


def _continue_how(root: Path, output_dir, step: int) -> str:
    """How a run whose checkpoint at ``step`` failed continues: from the intact checkpoint
    (:func:`_intact_before`), by :func:`resume_option`; "run again" where there is none."""
    intact = _intact_before(root, step)
    return "run again" if intact is None else f"resume with {resume_option(root, output_dir, intact)}"


def _refuse_mid_group(accelerator, step: int) -> None:
    """Refuse a checkpoint inside a group of accumulated batches (Accelerate's batch counter, the same
    on every process, is no multiple of its gradient_accumulation_steps): the group's partial gradient
    lives in ``.grad``, which no checkpoint holds, so a resume would step on the group's later batches
    alone, silently otherwise than the uninterrupted run."""
    k = int(getattr(accelerator, "gradient_accumulation_steps", 1) or 1)
    taken = int(getattr(accelerator, "step", 0) or 0) % k if k > 1 else 0
    if taken:
        raise RuntimeError(
            f"save_checkpoint(step={step}) inside a group of {k} accumulated batches ({taken} of {k} taken, "
            "accelerator.sync_gradients False): their summed gradient is in .grad, which no checkpoint holds, so a "
            "run resumed from it would step on the group's other batches alone; nothing was written. Save after the "
            "group's optimizer step (where accelerator.sync_gradients is True inside accelerator.accumulate, as "
            "train_one_epoch's on_step does)")


def _zero_redundancy_optimizers(accelerator, step: int) -> list:
    """The registered optimizers that are torch's ``ZeroRedundancyOptimizer`` (each process holds one shard
    of its state; its ``state_dict()`` raises unless ``consolidate_state_dict`` gathered the shards first,
    on every process). One over a process group other than the run's every process is refused before
    anything is written: the gather would be paired with processes outside it."""
    from .optim_state import _is_zero_redundancy

    found = []
    for opt in accelerator._optimizers:
        inner = getattr(opt, "optimizer", opt)
        if not _is_zero_redundancy(inner):
            continue
        if inner.world_size != accelerator.num_processes:  # (the size of its process group)
            raise RuntimeError(
                f"save_checkpoint(step={step}): a ZeroRedundancyOptimizer over a process group of {inner.world_size} "
                f"of the run's {accelerator.num_processes} processes cannot be gathered by save_checkpoint; nothing "
                "was written. Build it over every process (the default process group), or save its state yourself "
                "(consolidate_state_dict(to=...) on every process of its group, then torch.save(opt.state_dict()))")
        found.append(inner)
    return found


class _consolidated:
    """Within it, each ``ZeroRedundancyOptimizer`` of ``zero`` has its shards gathered (a collective, on
    every process: consolidate_state_dict) onto the processes that write (the main process; with
    ``save_on_each_node`` every process), so the checkpoint holds its whole state, as of now (not an earlier
    consolidation's); the other processes' ``state_dict()``, whose result Accelerate does not write, returns
    nothing meanwhile. The gathered copies are dropped after it (memory)."""

    def __init__(self, accelerator, zero):
        self.acc, self.zero = accelerator, zero

    def __enter__(self):
        every = bool(getattr(self.acc.project_configuration, "save_on_each_node", False))
        for opt in self.zero:
            for to in (range(opt.world_size) if every else [0]):
                opt.consolidate_state_dict(to=to)
            if not every and opt.rank != 0:
                opt.state_dict = dict  # (an instance attribute, removed on exit)
        return self

    def __exit__(self, *exc):
        for opt in self.zero:
            opt.__dict__.pop("state_dict", None)
            opt._all_state_dicts = []
        return False


_NOT_THE_DISK = "\x00state: "  # (marks a failure of save_checkpoint that is no failed write, across processes)


def save_checkpoint(accelerator, output_dir, step: int, keep: Optional[int] = 2, state: Optional[TrainState] = None,
                    files: Optional[Dict[str, bytes]] = None) -> Path:
    """Save the accelerator's state (model, optimizer, RNG states and the objects registered for
    checkpointing) as ``<output_dir>/checkpoints/step_<step>``, atomically: everything is written
    into ``.tmp-step_<step>`` first and renamed only when complete, so a run killed while saving
    leaves the previous checkpoint loadable. ``files`` (name: content) are written into it too
    (the recipe's copy of the run's config.yaml). A ``MANIFEST.json`` with the size and sha256 of
    every file is written last, before the rename; :func:`load_checkpoint` verifies it. So is
    ``pruned_weights.json``: which train-mode connectomes held exactly 0 at every pruned weight
    (:mod:`adaptive.checkpoint_weights`), the ones :func:`load_checkpoint` reads against the model file.
    Every file and folder of it is flushed to disk (fsync) before the rename, and the checkpoints' folder
    after it: after a power cut or a crash of the machine the newest checkpoint is whole, never one of
    empty or cut-short files whose manifest refuses it while the older ones are gone.
    Keeps the newest ``keep`` checkpoints (None: all).
    Every process must call it (each saves its own RNG state). A ``ZeroRedundancyOptimizer`` (each process
    holding a shard of its state) has its shards gathered onto the writing process first, on every process,
    so the checkpoint holds its whole state as of now (:class:`_consolidated`); one over a process group of
    fewer processes than the run's is refused before anything is written. With several processes, ``state``'s
    partial logging window is summed over them before it is saved, since only the main process's
    copy is written (each process takes an equal share back on load).

    A write that fails (a full disk, a file-size limit, an I/O error) removes the partial folder
    and raises :class:`~adaptive.integrity.CheckpointWriteError` naming the reason, the checkpoint
    that is still intact and how to resume from it; so does a rename into place that fails (the main
    process's alone, agreed with the others in place of a final barrier: every process raises it).

    Under gradient accumulation (``gradient_accumulation_steps`` K > 1) it saves only between groups,
    after a group's optimizer step: called mid-group, where ``.grad`` holds the sum of the group's
    first batches, which no checkpoint holds (while Accelerate's saved batch counter resumes mid-group),
    it refuses before writing anything, as a resume would step on that group's later batches alone."""
    from .checkpoint_weights import write_record, zero_where_pruned
    from .distributed import agreed_call
    from .integrity import CheckpointWriteError, is_write_failure, write_errors, write_failure, write_manifest

    _refuse_mid_group(accelerator, step)
    zero = _zero_redundancy_optimizers(accelerator, step)
    root = checkpoint_root(output_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}"
    failed = ""
    if accelerator.is_main_process:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            failed = write_failure(e)
        for stale in root.glob(".tmp-step_*"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    if state is not None and accelerator.num_processes > 1:
        win = torch.tensor(state.sync_window(), dtype=torch.float64, device=accelerator.device)
        tot = accelerator.reduce(win, reduction="sum").cpu()
        state.saved_window = tot.tolist()
        if state.silent_units is not None:
            v = state.silent_units.vector(accelerator.device)
            state.saved_silent = accelerator.reduce(v, reduction="sum").cpu().tolist()
    # which train-mode connectomes hold exactly 0 at every pruned weight now (the main process's model is the
    # one saved): load_checkpoint reads only those against the model file
    pruned_zero = zero_where_pruned(accelerator) if accelerator.is_main_process else []
    with _consolidated(accelerator, zero):  # (on every process, whether or not the main one's mkdir failed)
        if not failed:
            try:
                accelerator.save_state(str(tmp))
            except write_errors() as e:
                failed = write_failure(e)
                if not is_write_failure(e):  # (an object's state_dict() raised, not the disk: its fix is no disk space)
                    failed = _NOT_THE_DISK + failed
            finally:
                if state is not None:
                    state.saved_window = state.saved_silent = None
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1:  # every process raises together, not only the one whose write failed
        from accelerate.utils import gather_object

        failed = next((f for f in gather_object([failed]) if f), "")
    if accelerator.is_main_process and not failed:
        try:
            for name, content in (files or {}).items():
                (tmp / name).write_bytes(content)
            write_record(tmp, pruned_zero)
            write_manifest(tmp)
            sync_tree(tmp)  # every process's files on disk whole before the rename (the older ones go after it)
        except write_errors() as e:
            failed = write_failure(e)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        failed = broadcast_object_list([failed])[0]
    if failed:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if failed.startswith(_NOT_THE_DISK):
            raise CheckpointWriteError(
                f"saving checkpoint {final} failed while its state was made, not written "
                f"({failed[len(_NOT_THE_DISK):]}): the error came from what is saved (a state_dict() of the model, "
                "an optimizer, a scheduler or a registered object), not from the disk; the partial write was removed, "
                "and " + _continue_from(root, step) + ": fix the cause of that error and "
                + _continue_how(root, output_dir, step))
        raise CheckpointWriteError(f"writing checkpoint {final} failed ({failed}); the partial write was removed, and "
                                   + _continue_from(root, step) + ": free disk space (or raise the "
                                   "file-size limit) and " + _continue_how(root, output_dir, step))

    def put_in_place():
        """The main process's alone: the checkpoint takes its name, the older ones go."""
        if not accelerator.is_main_process:
            return
        try:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except OSError as e:  # (no permission to rename in the folder, a file there held open)
            shutil.rmtree(tmp, ignore_errors=True)
            where = f": {e.filename}" if e.filename and Path(e.filename) != tmp else ""  # (a file of the old one)
            raise CheckpointWriteError(
                f"putting checkpoint {final} in place failed ({write_failure(e)}{where}); its files were removed, and "
                + _continue_from(root, step) + f": make {root} writable (or free disk space) and "
                + _continue_how(root, output_dir, step)) from e
        sync_folder(root)  # the rename on disk before any older checkpoint is removed
        for later in list_checkpoints(root):  # a run resumed from an earlier checkpoint: later ones
            if _step_of(later) > step:        # belong to the abandoned timeline (--resume latest would splice)
                shutil.rmtree(later, ignore_errors=True)
        if keep:  # the one just saved and the keep - 1 newest before it
            older = [p for p in list_checkpoints(root) if p != final]
            for old in older[:max(0, len(older) - (keep - 1))]:
                shutil.rmtree(old, ignore_errors=True)

    # in place of a barrier: a failure of the main process's part stops every process with its error
    # (the others would have gone on into their next collective and died of the closed connection)
    agreed_call(put_in_place, some_alone=True)
    return final


def find_checkpoint(resume: str, output_dir=None) -> Path:
    """The checkpoint folder that ``--resume`` names: ``latest`` (newest complete checkpoint of
    ``output_dir``), a run folder (its newest), or a checkpoint folder itself. Raises
    FileNotFoundError saying where it looked."""
    if resume == "latest":
        if output_dir is None:
            raise FileNotFoundError("--resume latest needs --output_dir (the run folder whose checkpoints to resume)")
        where = checkpoint_root(output_dir)
    else:
        p = Path(resume)
        if (p / "model.safetensors").is_file() or (p / "pytorch_model.bin").is_file():
            return p
        where = p / CHECKPOINT_DIR if (p / CHECKPOINT_DIR).is_dir() else p
    found = list_checkpoints(where)
    if not found:
        raise FileNotFoundError(
            f"no complete checkpoint found in {where} (looked for step_N folders; .tmp-* ones are unfinished). "
            "Pass --resume DIR with a run folder or a checkpoint folder; a run stopped before its first checkpoint "
            "(or run without --checkpoint_every) cannot be resumed: start it afresh (drop --resume, add --overwrite)."
        )
    return found[-1]


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/step_N`` -> ``<run>``)."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINT_DIR else checkpoint.parent


def verify_checkpoint(path, process_index: int = 0, warn: bool = True, num_processes: Optional[int] = None,
                      hash_files: bool = True) -> None:
    """Check a checkpoint folder before a resume: against its ``MANIFEST.json`` (every file present,
    sizes and sha256 as written; ``hash_files=False`` skips that, for the processes of a run whose
    main process checks it), that it was written by ``num_processes`` processes (one random-state file
    each), and that this process's random states are there. Raises
    :class:`~adaptive.integrity.CheckpointDamagedError` naming the file and what to do instead (the
    other checkpoints of the run), or :class:`~adaptive.integrity.CheckpointRefusedError` for another
    process count. A checkpoint written before manifests were loads unverified, with a one-line
    warning (``warn``); files added to a checkpoint after it was written are never read, and named
    in a warning."""
    import re
    import sys

    from .integrity import MANIFEST, CheckpointDamagedError, CheckpointRefusedError, check_manifest, manifest_files, \
        unlisted_files

    path = Path(path)
    has_manifest = (path / MANIFEST).is_file()
    if hash_files:
        problem = check_manifest(path) or ""
        if not has_manifest and (path / "config.yaml").is_file():  # written by code that writes manifests
            problem = f"its {MANIFEST} is missing"
        if problem:
            raise CheckpointDamagedError(_damaged(path, problem))
    names = (manifest_files(path) if has_manifest else None) or [p.name for p in path.iterdir() if p.is_file()]
    written = sum(1 for n in names if re.fullmatch(r"random_states_\d+\.pkl", n))
    if num_processes is not None and written and written != num_processes:
        raise CheckpointRefusedError(
            f"checkpoint {path} was written by a run of {written} process(es) (one random-state file each); this run "
            f"has {num_processes}, so the same step would read other data and another global batch. Resume with "
            f"`accelerate launch --num_processes {written} ...` (and the run's data settings), or start a new run")
    rng = path / f"random_states_{process_index}.pkl"
    if not rng.is_file():
        raise CheckpointDamagedError(_damaged(path, f"{rng.name} is missing"))
    if warn and hash_files:
        extra = unlisted_files(path)
        if extra:
            print(f"warning: checkpoint {path} holds file(s) it was not written with ({', '.join(extra[:3])}"
                  f"{' ...' if len(extra) > 3 else ''}); they are not read", file=sys.stderr)
        if not has_manifest:
            print(f"warning: checkpoint {path} has no {MANIFEST} (written by an older version), so its files "
                  "cannot be verified", file=sys.stderr)


def _damaged(path: Path, problem: str) -> str:
    """One line: which checkpoint is damaged, how, and which others of the run to resume from."""
    every = list_checkpoints(path.parent) if path.parent.is_dir() else []
    others = [p for p in every if p.resolve() != path.resolve()]
    if others:
        newest = bool(every) and every[-1].resolve() == path.resolve()
        fix = (f"resume from another checkpoint of the run (--resume {others[-1]}; it has "
               f"{', '.join(p.name for p in others)})"
               + (f", or delete {path} so that --resume latest takes {others[-1].name}" if newest else ""))
    else:
        fix = ("the run has no other checkpoint: start afresh, in another --output_dir or with --overwrite (which "
               "deletes that run)")
    return f"checkpoint {path} is damaged: {problem}; {fix}"


def load_checkpoint(accelerator, path, optimizer=None, verified: bool = False) -> None:
    """``accelerator.load_state(path)``, after :func:`verify_checkpoint` (unless ``verified``:
    the caller has just done so). Registered objects load after the optimizer (Accelerate's
    order); the connectome's restore keeps the loaded moments wherever a synapse is present, so
    the resumed run continues bit-exactly. ``optimizer`` is accepted for older callers and unused.
    This process's random states must be there and readable: Accelerate skips an unreadable file
    with a log line, and the run would go on with other augmentation and dropout draws. Under several
    processes every one refuses together (one gather), whatever the failure of its checks: one that
    cannot stat or list its copy of the files raises an OSError naming it on every process; another
    error of one process's checks is raised on every process as its class, naming that process, its
    type and text. Read from the files before anything loads, in that same gather, so a refusal leaves
    the model, optimizer, connectome and controller as they were: a file that load_state would stop at
    (a model file of other keys or shapes, any file it reads cut short or unreadable, another number of
    registered-object files, a connectome or controller state its registered object's ``check_state_dict``
    refuses: another granularity, another policy; :mod:`adaptive.checkpoint_files`) is a ValueError, or a
    CheckpointDamagedError where it cannot be read; an optimizer state that does not fit the optimizer's
    parameters (another model's, :mod:`adaptive.checkpoint_optimizer`) is a ValueError, a model file holding non-zero weights
    where a train-mode connectome prunes that held 0 there when the checkpoint was saved (another run's
    model file, beside these masks: :mod:`adaptive.checkpoint_weights`) a CheckpointRefusedError. (Under
    FSDP, DeepSpeed or Megatron-LM the optimizer state is checked after the load: their files are their own;
    so is that of an optimizer with ``load_state_dict`` pre-hooks, which load what they make of the file.)
    Each refusal names the checkpoint, the file and, under several processes, the process that found it.
    A scheduler's refusal of a readable file of another kind, a sampler or stateful dataloader file of
    another kind, a controller part's (an estimator's, its policy's) refusal of its entry and a TrainState
    entry it cannot take are found before anything loads too. What remains (:mod:`adaptive.checkpoint_files`):
    the refusal of a registered object with no ``check_state_dict`` of what its file holds, a scheduler
    that cannot be copied, a stateful dataloader's own refusal of a dict, and an error of a load pre-hook's
    come from inside the load, after the model and optimizer loaded."""
    from .checkpoint_files import checkpoint_files_problem, one_line
    from .checkpoint_optimizer import optimizer_state_problem, reads_optimizer_files, saved_optimizer_problem
    from .checkpoint_weights import nonzero_pruned_weights
    from .distributed import _SAME_FILES_PASSED, _processes, _rebuilt
    from .integrity import CheckpointDamagedError, CheckpointRefusedError

    path = Path(path)
    me, n = accelerator.process_index, accelerator.num_processes
    by = f" (found by process {me} of {n})" if n > 1 else ""  # each process reads its own copy of the files
    rng = path / f"random_states_{me}.pkl"
    bad = None  # (the error's class, its message): damage stays CheckpointDamagedError on every process
    try:
        if not verified:
            verify_checkpoint(path, me, warn=accelerator.is_main_process, num_processes=n,
                              hash_files=accelerator.is_main_process)
        elif not rng.is_file():
            bad = (CheckpointDamagedError, _damaged(path, f"{rng.name} is missing{by}"))
        if not bad:
            try:
                torch.load(rng, weights_only=False)
            except Exception as e:
                bad = (CheckpointDamagedError, _damaged(path, f"{rng.name} cannot be read ({type(e).__name__}){by}"))
        if not bad:  # every file load_state reads, as it reads it (it stops at the first that fails, the ones
            found = checkpoint_files_problem(accelerator, path)  # before it loaded: a half-loaded run)
            if found:
                damaged, problem = found
                bad = ((CheckpointDamagedError, _damaged(path, problem + by)) if damaged else
                       (ValueError, f"checkpoint {path}{by}: {problem}"))
        if not bad and reads_optimizer_files(accelerator):  # (torch loads moments of other shapes silently; the
            problem = saved_optimizer_problem(accelerator, path)  # first step then failed deep inside it)
            bad = (ValueError, f"checkpoint {path}{by}: {problem}") if problem else None
        if not bad:  # a model file of another run beside these masks (the connectome's load would zero the evidence)
            problem = nonzero_pruned_weights(accelerator, path)
            bad = (CheckpointRefusedError, _damaged(path, problem + by)) if problem else None
    except CheckpointRefusedError as e:
        bad = (type(e), str(e))
    except Exception as e:  # every process still meets in the gather below, not only the others while this one
        if n == 1:          # stops: one refusal for all, of this error's class, its cause named
            raise
        cause = f"{type(e).__name__}: {one_line(e)}"
        bad = ((OSError, f"process {me} of {n} cannot read checkpoint {path} ({cause}): every process must be able "
                         "to read its copy of it") if isinstance(e, OSError) else
               ((type(e).__module__, type(e).__qualname__),
                f"process {me} of {n} failed checking checkpoint {path} before loading it ({cause})"))
    if n > 1:  # every process refuses together, not only the one with the bad file
        from accelerate.utils import gather_object

        every = gather_object([bad])
        bad = next((b for b in every if b), None)
        passed = [r for r, b in enumerate(every) if not b]
        if bad and passed:  # (the others' copies are fine: a copy of the checkpoint differs)
            bad = (bad[0], f"{bad[1]}; {_processes(passed, n)} found no such problem: {_SAME_FILES_PASSED}")
    if bad:
        raise (_rebuilt(*bad[0], bad[1]) if isinstance(bad[0], tuple) else bad[0](bad[1]))
    accelerator.load_state(str(path))
    problem = optimizer_state_problem(accelerator, adapted_only=reads_optimizer_files(accelerator))
    if problem:  # (another layout, or an optimizer whose load pre-hooks adapt the file: as loaded)
        raise ValueError(f"checkpoint {path}{by}: {problem}")


# ----------------------------------------------------------------------------- files

def write_metrics_csv(rows: List[dict], path) -> None:
    """Write metric rows (the fields of :data:`METRIC_FIELDS`, then those of :data:`OPTIONAL_FIELDS`
    where a row carries them) as CSV, atomically."""
    fields = list(METRIC_FIELDS) + [k for k in OPTIONAL_FIELDS if any(k in r for r in rows)]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})


_FLOAT_FIELDS = ("loss", "accuracy", "density", "lr") + OPTIONAL_FIELDS


def read_metrics_csv(path) -> List[dict]:
    """Rows of a metrics CSV with numbers parsed (empty cells become None)."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                if k == "split":
                    row[k] = v
                elif v == "":
                    row[k] = None
                else:
                    row[k] = float(v) if any(c in v for c in ".eE") or k in _FLOAT_FIELDS else int(v)
            out.append(row)
    return out
