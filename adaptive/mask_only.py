"""Connectome optimisation of a pretrained network: weights frozen bit-exact, only the masks move.

``optimize_connectome(model, train_loader, holdout_loader, target=0.5)`` wraps the model in a
``mask_only`` :class:`~adaptive.Connectome`, puts it in evaluation mode (normalisation statistics
frozen) and drives a :class:`~adaptive.Controller` with the ``crawl`` policy:

- utility statistics (dense gradients of every synapse, present or absent) are gathered over a
  window of ``window`` training batches (one by default); an estimator turns them into removal
  costs and restoration gains (``presence`` by default: a value per synapse that starts at its
  layer-normalised magnitude and moves against the Adam-normalised presence derivative g * w0,
  so that it rises while restoring the synapse is consistently estimated to lower the loss);
- at each update the policy prunes what the schedule asks for (cheapest first) and swaps up to
  ``edit_fraction`` of the live ensembles where the estimated gain beats the cost;
- optionally (``verify_batches > 0``) the step is verified on a rotating set of held-out TRAIN
  batches (line search): halved while the held-out loss rises by more than the plan allows,
  rolled back if it still does;
- every target is a *stage*: reached at its first update (or along a linear schedule during the
  first ``approach`` of the stage), then crawled at (swaps, with the edit limit and the
  estimator's step decaying by a cosine) to improve further; a snapshot of the masks is kept at
  the end of each stage, evaluated on the holdout.

A sparse network (pruned before: its pruned synapses are weights of exactly 0.0) starts as it is:
an ensemble whose weights are all 0.0 is absent from the start and never restored (with the weights
frozen, restoring a 0.0 changes nothing), with a warning saying how many; see
:mod:`adaptive.mask_only_start`. Targets always count every prunable synapse, these included.

Targets are removal counts (int), fractions of the synapses (float in (0, 1)), or ``"best"``
(a ladder of removal fractions climbed one stage per rung, stopping when held-out accuracy stops
improving; the rung with the best held-out accuracy, or the dense network, is kept; by held-out loss
where there is no accuracy). Accuracy follows :mod:`adaptive.metrics`: counted for classification
shapes only (``accuracy_fn=`` to count it otherwise), None (never 0) elsewhere.
Only the loaders given are read: pass no test data here, the test split belongs to the final
report.

It runs where the model is (batches follow the model's device), on one process or many (each
with its shard of the train loader; statistics are averaged over processes before every
decision, so all reach the same masks), and with ``checkpoint=path`` it records itself after
every stage and resumes from there (:mod:`adaptive.mask_only_checkpoint`).
"""
from __future__ import annotations

import collections.abc
import math
import numbers
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import mask_only_checkpoint as ckpt
from .mask_only_start import check_start_agrees, refuse_below_start, sparse_start, start_note, zero_weights
from .connectome import Connectome, _plain_module, _plain_patterns
from .discovery import discover, state_dict_keys
from .exact_masking import INT_OF_WIDTH
from .global_rng import seeded_global_rng
from .distributed import all_reduce_mean_, check_masks_agree, is_distributed, rank, world_size
from .controller import Controller
from .counts import whole_number
from .data.cycle import LoaderCycle, rng_states, set_rng_states
from .ensemble_rules import parse_rules
from .modes import modes_kept
from .metrics import (AccuracyFn, batch_accuracy, batch_loss, batch_sums, call_model, check_output, default_accuracy,
                      example_count, takes_reduction, to_device)
from .utility import get_estimator
from .warn import warn_user

Target = Union[int, float, str]


@dataclass
class Snapshot:
    """The masks at one requested target, with the held-out numbers that chose them.

    - ``label``: the target as given ("0.2", "50000", "best"), its key in ``MaskOnlyResult.snapshots``;
    - ``removed``: synapses removed in these masks; ``masks``: one bool tensor per layer;
    - ``holdout_loss``, ``holdout_acc``: measured on the held-out part of the train split (never the
      test split); ``holdout_acc`` is None where accuracy cannot be counted (never 0);
    - ``step``: the optimisation step at which the snapshot was taken;
    - ``cpu_seconds``, ``wall_seconds``: process CPU time and wall time from the start of the
      optimisation to this snapshot;
    - ``selected_by``: for target "best", the criterion that chose it ("holdout_acc" or
      "holdout_loss"); None for a fixed target."""

    label: str
    removed: int
    masks: Dict[str, torch.Tensor]
    holdout_loss: float
    holdout_acc: Optional[float]  # None: no accuracy (see adaptive.metrics), never 0
    step: int
    cpu_seconds: float = 0.0  # process CPU time from the start of the optimisation to this snapshot
    wall_seconds: float = 0.0
    selected_by: Optional[str] = None  # target "best": "holdout_acc" or "holdout_loss", the criterion that chose it


@dataclass
class MaskOnlyResult:
    """What :func:`optimize_connectome` returns. ``history`` has one dict per update (training
    window loss/accuracy over every process's batches, measured with ``train_removed`` synapses
    removed, i.e. before the update; ``removed`` is the count after it; verification loss, edits)
    and per evaluation (held-out loss/accuracy); each names its ``target`` (the label);
    ``events`` are the controller's events; ``snapshots`` are keyed by target label. ``conn`` and
    ``controller`` are the connectome and the controller that ran (:meth:`use` loads a
    snapshot's masks into ``conn``); ``resumed_seconds`` is the wall time the
    earlier sessions of a resumed optimisation recorded in its checkpoint (0: none);
    ``start_removed`` counts the synapses absent from the start (a sparse network's ensembles whose
    weights are all exactly 0.0, :mod:`adaptive.mask_only_start`; 0 for a dense network)."""

    conn: Connectome
    controller: Controller
    snapshots: Dict[str, Snapshot] = field(default_factory=dict)
    history: List[dict] = field(default_factory=list)
    # wall seconds the earlier sessions of a resumed optimisation recorded in its checkpoint (0: none)
    resumed_seconds: float = 0.0
    # synapses absent from the start (a sparse network's weights of exactly 0.0; 0: a dense network)
    start_removed: int = 0

    @property
    def events(self) -> List[dict]:
        return self.controller.events

    def use(self, label: Union[str, float, int]) -> Snapshot:
        """Load the masks of snapshot ``label`` into the connectome (weights restored bit-exact);
        ``label`` is a key of ``snapshots`` or the target as given (0.5 for "0.5")."""
        key = label = _plain_number(label)
        if key not in self.snapshots and isinstance(label, (int, float)) and not isinstance(label, bool):
            key = next((k for k in (_label(label), repr(float(label))) if k in self.snapshots), label)
        if key not in self.snapshots:
            raise KeyError(f"no snapshot {label!r}: have {sorted(self.snapshots)}; pass one of those labels "
                           "(or the target as given to optimize_connectome)")
        snap = self.snapshots[key]
        self.conn.set_masks(snap.masks)
        return snap


def _label(t: Target) -> str:
    return t if isinstance(t, str) else (f"{t:g}" if isinstance(t, float) else str(int(t)))


def _plain_number(t):
    """A numpy or torch number as the Python int (a whole-number type) or float it holds; anything
    else (strings, bools, Python numbers, other objects) as it is."""
    if isinstance(t, (str, bool, int, float)):
        return t
    count = whole_number(t)
    if count is not None:
        return count
    return float(t) if _is_real(t) else t


def _labels(targets) -> List[str]:
    """Each target's name (the snapshot key, the recipe's subfolder): short, and distinct even for
    fractions that print alike at 6 figures (0.1000108, 0.10001085: then written in full)."""
    targets = [_plain_number(t) for t in targets]  # np.float32(0.25) is "0.25", not int()'s "0"
    labels = [_label(t) for t in targets]
    if len(set(labels)) < len(labels):
        labels = [repr(float(t)) if isinstance(t, float) else lab for t, lab in zip(targets, labels)]
    return labels


def parse_target(target: Target) -> Target:
    """``target`` checked without a model: "best", a fraction in [0, 1) (a string with a decimal
    point or an exponent, or a float: numpy and torch floats too) or a count >= 0 (an int: numpy and
    torch integers too; never a bool). Raises ValueError naming the fix."""
    target = _plain_number(target)  # np.int64(30) is the count 30, np.float32(0.25) the fraction 0.25
    if isinstance(target, str) and target != "best":
        try:
            target = float(target) if any(ch in target for ch in ".eE") else int(target)
        except ValueError:
            raise ValueError(f"target {target!r}: give a fraction in [0, 1) (0.2), a count of synapses (50000) "
                             "or 'best'") from None
    if isinstance(target, str):
        return target
    if isinstance(target, bool) or not isinstance(target, (int, float)):
        raise ValueError(f"target {target!r}: give a fraction in [0, 1) (0.2), a count of synapses (50000) or 'best'")
    if target != target or target in (float("inf"), float("-inf")):
        raise ValueError(f"target {target}: give a fraction in [0, 1) (0.2), a count of synapses (50000) or 'best'")
    if target < 0:
        raise ValueError(f"target {target} cannot be negative: give a fraction in [0, 1) or a count >= 0")
    if isinstance(target, float) and target >= 1.0:
        count = (f": for the count of {int(target)} synapses give it as a whole number ({int(target)}), with no "
                 "decimal point or exponent" if target.is_integer() and target > 1 else "")
        raise ValueError(f"target fraction {target} must be in [0, 1){count}")
    return target


def resolve_target(target: Target, total: int) -> Optional[int]:
    """Synapses to remove for ``target`` (None for "best"). Raises ValueError on a bad target."""
    target = parse_target(target)
    if target == "best":
        return None
    if isinstance(target, float):
        count = int(round(target * total))
        if count >= total:  # a fraction below 1 that rounds to every synapse, as the count would be
            raise ValueError(f"target fraction {target!r} removes round({target!r} x {total}) = {count} synapses, every "
                             f"one of the model's {total} prunable synapses: give a smaller fraction, or a count "
                             f"below {total}")
        return count
    if target >= total:  # as a fraction must be below 1: removing every synapse leaves no network
        raise ValueError(f"target of {target} synapses to remove {'is every one of' if target == total else 'is beyond'} "
                         f"the model's {total} prunable synapses: give a count below {total}")
    return int(target)


def _resolve_targets(targets: list, total: int, start=None) -> List[Tuple[str, Optional[int]]]:
    """``(label, synapses to remove)`` of each target against ``total`` synapses, fewest first ("best":
    None, on its own); a target beyond them, "best" among others, two removing the same count, or
    one removing fewer than are absent at ``start`` (a :class:`~adaptive.mask_only_start.Start`) is
    refused (ValueError)."""
    resolved = [(lab, resolve_target(t, total)) for t, lab in zip(targets, _labels(targets))]
    if start is not None:
        for label, r in resolved:
            if r is not None:
                refuse_below_start(label, r, start)
    if any(r is None for _, r in resolved) and len(resolved) > 1:
        raise ValueError("'best' cannot be combined with other targets: run it on its own")
    counts: Dict[int, str] = {}
    for label, r in resolved:
        if r is not None and r in counts:
            raise ValueError(f"targets {counts[r]} and {label} both remove {r:,} synapses: give each target once")
        counts.setdefault(r, label)
    return sorted(resolved, key=lambda lr: -1 if lr[1] is None else lr[1])


def check_targets(model: nn.Module, target: Union[Target, Sequence[Target]], include=None, exclude=None,
                  ensemble="synapse") -> None:
    """Refuse, with :func:`optimize_connectome`'s error and before any data is read, the ``target``
    (one or several) it would refuse on ``model`` with ``include``/``exclude``/``ensemble``: a count
    of every prunable synapse or more (or a fraction rounding to one), "best" among others, two
    targets removing the same count, one removing fewer synapses than a sparse model has already
    lost (ensembles whose weights are all exactly 0.0: :mod:`adaptive.mask_only_start`). Counts the
    synapses without building a connectome (but where some weight is exactly 0.0), of the module a
    wrapper runs (``torch.compile``, DistributedDataParallel), as the connectome does (its names carry no
    ``_orig_mod.`` or ``module.``)."""
    targets = list(target) if isinstance(target, (list, tuple)) else [target]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # discovery's warnings are the connectome's to give, once
        found = discover(_plain_module(model), _plain_patterns(model, include), _plain_patterns(model, exclude))
    start = None
    if zero_weights({n: p for n, (_, p) in found.items()}):  # a sparse model: what is already absent
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = sparse_start(Connectome(model, ensemble=ensemble, include=include, exclude=exclude))
    _resolve_targets(targets, sum(p.numel() for _, p in found.values()), start)


def count_synapses(model: nn.Module, include=None, exclude=None) -> int:
    """The prunable synapses a connectome of ``model`` with ``include``/``exclude`` would hold, counted
    without building one (of the module a wrapper runs, as the connectome does): what targets count. Quietly:
    discovery's warnings (a parametrized weight left dense, ...) are the connectome's to give, once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(p.numel() for _, p in discover(_plain_module(model), _plain_patterns(model, include), _plain_patterns(model, exclude)).values())


def _data_identity(loader) -> list:
    """``[examples, batches, batch size]`` of a loader, each None where it cannot tell: part of a stage
    checkpoint's fingerprint, so that a run resumed on other data or batches is refused."""
    def size(x):
        try:
            return len(x)
        except TypeError:
            return None

    dataset = getattr(loader, "dataset", None)
    return [size(dataset) if dataset is not None else None, size(loader), getattr(loader, "batch_size", None)]


def _check_loader(loader, what: str) -> int:
    if loader is None:
        raise ValueError(f"{what} loader is missing: pass a DataLoader of {what} batches")
    try:
        n = len(loader)
    except TypeError:
        n = None
    hint = {"holdout": "hold out more of the train split (a larger holdout fraction or subset)",
            "train": "give it data (a larger subset, or a smaller holdout fraction)"}.get(what, "give it data")
    if n == 0:
        raise ValueError(f"{what} loader is empty: it yields no batches; {hint}")
    one_shot = ("holdout loader is a one-shot iterator (a generator, say), but every evaluation reads it whole (the "
                "dense network's check before any work, then every stage's end): pass something that iterates "
                "afresh each time (a DataLoader, a list of batches)")
    if what == "holdout" and isinstance(loader, collections.abc.Iterator):  # with a length too: seen without a read
        raise ValueError(one_shot)
    if n is None and what == "holdout":  # no length (an IterableDataset): look, before any work
        it = iter(loader)
        # a generator, or an object whose iter() hands out one and the same iterator: the first
        # evaluation would use it up, the next find it empty (a DataLoader makes a new one each time)
        if it is loader or (not isinstance(loader, torch.utils.data.DataLoader) and iter(loader) is it):
            raise ValueError(one_shot)
        if next(it, _NONE) is _NONE:
            raise ValueError(f"holdout loader is empty: it yields no batches; {hint}")
    return n or 0


_NONE = object()  # what a loader's first batch is when it yields none


def _to_device(batch, device):
    """``batch`` (an ``(inputs, targets)`` pair) with every tensor in it on ``device``, nested ones
    included (inputs given as a tuple, list or dict of tensors); a no-op for tensors already there
    (an Accelerate-prepared loader's batches)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        what = f"a dict with keys {sorted(batch)[:5]}" if isinstance(batch, dict) else (
            f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list)) else f"a {type(batch).__name__}")
        raise TypeError(f"mask-only loaders must yield (inputs, targets) pairs; this one yielded {what}. "
                        "Wrap the dataset (or give the DataLoader a collate_fn) so that each batch is (x, y)")
    if device is None:
        return batch
    return type(batch)(to_device(t, device) for t in batch)


def _precision(model: nn.Module) -> str:
    """The autocast dtype the optimisation runs under (the recipes' --mixed-precision), or the
    weights' dtype: a resume under another precision would choose other masks."""
    dev = _model_device(model)
    kind = dev.type if dev is not None else "cpu"
    if torch.is_autocast_enabled(kind):
        return f"autocast {str(torch.get_autocast_dtype(kind)).replace('torch.', '')}"
    p = next(model.parameters(), None)
    return str(p.dtype).replace("torch.", "") if p is not None else "float32"


def _model_device(model: nn.Module) -> Optional[torch.device]:
    p = next(model.parameters(), None)
    return None if p is None else p.device


def _is_real(x) -> bool:
    """Whether ``x`` is a real number: an int, a float, a numpy real scalar or a one-element real
    tensor (not a bool)."""
    if isinstance(x, torch.Tensor):
        return x.numel() == 1 and not x.dtype.is_complex and x.dtype != torch.bool
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _shuffled(loader, seed: int):
    """The held-out examples in a seeded random order, so that every verification set mixes
    classes (holdout loaders usually keep the dataset's order, often grouped by class)."""
    ds = getattr(loader, "dataset", None)
    if ds is None or not hasattr(ds, "__len__") or not isinstance(loader, torch.utils.data.DataLoader):
        return loader
    g = torch.Generator().manual_seed(int(seed) + 7)
    return torch.utils.data.DataLoader(ds, batch_size=loader.batch_size or 1, shuffle=True, generator=g,
                                       collate_fn=loader.collate_fn, num_workers=0)


def _logits(out, model: nn.Module) -> torch.Tensor:
    """``out`` when it is the logits tensor mask-only optimisation needs; a clear error otherwise."""
    return check_output(out, model, "mask-only optimisation")


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, loss_fn: Callable = F.cross_entropy, progress=None, *,
             accuracy_fn: Optional[AccuracyFn] = default_accuracy, reduction: Optional[bool] = None) -> tuple:
    """Mean loss and accuracy of ``model`` in evaluation mode (its mode is given back after) over
    ``batches`` of ``(x, y)``, moved to the model's device: ``(loss, acc, n)``, with the contract of
    :mod:`adaptive.metrics`: ``acc`` is None where there is no accuracy (by default anything but
    integer targets of the output's shape without its class axis 1), and ``n`` counts the units
    the loss is averaged over (positions for classification shapes, -100 labels left out; examples
    otherwise). ``accuracy_fn(out, y) -> (correct, count)`` (or None) counts accuracy your way,
    ``accuracy_fn=None`` turns it off. ``reduction``: whether ``loss_fn`` takes ``reduction="sum"``
    (None: checked on the first batch; without it the mean is weighted by the units). Every process
    of a multi-process run evaluates all of ``batches`` (pass an unsharded loader to get the same
    numbers everywhere). ``progress``: a bar (anything with ``update(n)``) advanced once per batch."""
    loss_sum, correct, n, counted = 0.0, 0, 0, 0
    device = _model_device(model)
    with modes_kept(model, train=False):
        for batch in batches:
            x, y = _to_device(batch, device)
            out = _logits(call_model(model, x, "mask-only optimisation"), model)
            if reduction is None:
                reduction = takes_reduction(loss_fn, out, y)
            s, k = batch_loss(loss_fn, out, y, reduction)
            loss_sum += s
            n += k
            acc = batch_accuracy(accuracy_fn, out, y)
            if acc is not None:
                correct += acc[0]
                counted += acc[1]
            if progress is not None:
                progress.update(1)
    if n == 0:
        raise ValueError("evaluate: no examples")
    return loss_sum / n, (correct / counted if counted else None), n


def stage_batches(passes: float, n_train: int, window: int) -> int:
    """The training batches one stage of :func:`optimize_connectome` reads: ``passes`` over a loader
    of ``n_train`` batches, rounded up to whole update windows of ``window`` batches (at least one),
    so a stage can read a few batches more than ``passes`` say."""
    return max(window, int(math.ceil(passes * n_train / window - 1e-9)) * window)


def listed_targets(target) -> list:
    """``target`` (one target, or a list or tuple of them) as a non-empty list."""
    targets = list(target) if isinstance(target, (list, tuple)) else [target]
    if not targets:
        raise ValueError("give at least one target")
    return targets


def checked_passes(passes) -> Union[int, float]:
    """``passes`` (passes over the train loader per stage) as a plain number, refused unless finite and > 0."""
    if isinstance(passes, torch.Tensor) and passes.numel() == 1 and not passes.dtype.is_complex:
        passes = passes.item()  # a one-element tensor: its number
    if isinstance(passes, bool) or not isinstance(passes, numbers.Real) or not (0 < passes < math.inf):
        raise ValueError(f"passes must be a finite number > 0 (passes over the train loader per stage; fractional "
                         f"allowed), got {passes!r}")
    return whole_number(passes) if whole_number(passes) is not None else float(passes)  # numpy scalars: plain


@seeded_global_rng.by_argument("seed")
def optimize_connectome(
    model: nn.Module,
    train_loader,
    holdout_loader,
    target: Union[Target, Sequence[Target]] = "best",
    *,
    passes: float = 1.0,
    ensemble: str = "synapse",
    include=None,
    exclude=None,
    estimator="presence",
    window: int = 1,
    edit_fraction: float = 1.0,
    approach: float = 0.0,
    margin: float = 0.0,
    ladder: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    patience: int = 2,
    verify_batches: int = 0,
    line_search_tries: int = 2,
    eval_every: int = 0,
    loss_fn: Callable = F.cross_entropy,
    accuracy_fn: Optional[AccuracyFn] = default_accuracy,
    seed: int = 0,
    progress: Optional[bool] = True,
    callback: Optional[Callable[[dict], None]] = None,
    checkpoint: Optional[Union[str, "os.PathLike"]] = None,
    _checked: Optional[ckpt.Checked] = None,
) -> MaskOnlyResult:
    """Optimise the connectome of pretrained ``model`` with its weights frozen bit-exact.

    Args:
        target: one target or several (removal count, fraction in [0, 1), or "best"; 0 keeps the
            dense network as a snapshot, scored on the holdout, with no stage of its own: it reads no
            training batch, and the other targets run exactly as without it); several are visited in
            increasing order of removal, one stage each, with a snapshot per target. Counts and
            fractions are of every prunable synapse, the removed total at the end. On a sparse
            network (ensembles whose weights are all exactly 0.0: absent from the start, never
            restored, warned of) they include those already absent: 0.6 of a network half of whose
            synapses are absent removes a tenth more; a target below the absent count is refused,
            one equal to it keeps the start as its snapshot (as 0 does for a dense network), and
            "best" climbs the ladder's rungs above it, the start its first candidate.
        passes: passes over ``train_loader`` per stage (a finite number > 0, fractional allowed).
        ensemble / include / exclude: the connectome's granularity and layer selection.
        estimator: utility estimator (registry name or instance) for removal costs and restoration
            gains; "presence" (default) learns a value per synapse batch by batch from the
            normalised presence derivative g * w0, starting at its layer-normalised magnitude;
            "evidence" uses windowed t-statistics instead.
        window: training batches whose statistics feed one update (1: every batch).
        edit_fraction: most swaps per update, as a fraction of the live ensembles (decays to 0
            over each stage, cosine; estimators with a step, like presence, decay with it).
        approach: fraction of each stage spent reaching its target, then crawling at it (0: the
            first update of the stage jumps to the target).
        margin: estimated improvement a swap (or, in threshold mode, an edit) must promise, in
            the estimator's units (presence: value units; threshold mode prunes values below -margin);
            a finite number.
        ladder: for target "best", the removal fractions tried in increasing order, one stage of
            ``passes`` each, the masks carried from rung to rung; the dense network is scored first.
            Empty: threshold mode instead (edit wherever the estimator promises an improvement of
            more than ``margin``, no size goal, the best held-out evaluation kept).
        patience: for target "best", rungs without a better held-out score before the climb stops.
        verify_batches: held-out batches (rotating) that verify each update by line search
            (0, the default: none; measured on CIFAR ResNets, per-update verification with
            per-batch updates cost 5x the time and lost accuracy, see
            recipes/benchmarks/mask_only_ablations).
        line_search_tries: halvings a verified update may try before it is rolled back (an integer
            >= 0; 0: the whole update or nothing); used with ``verify_batches`` > 0.
        eval_every: evaluate the whole holdout every this many updates (0: only at stage ends).
        loss_fn: ``loss_fn(output, targets)`` -> the mean loss of a batch (default ``F.cross_entropy``);
            checked on the first training batch, before any backward pass. Held-out losses use
            ``loss_fn(..., reduction="sum")`` for classification shapes when it takes that argument
            and its sum is the mean times the counted positions; otherwise (no such argument, class
            weights) the mean times the units, as the training window (see :mod:`adaptive.metrics`).
        accuracy_fn: ``(output, targets) -> (correct, count)`` or None for a batch it cannot score
            (default :func:`adaptive.metrics.default_accuracy`: argmax over axis 1 for integer targets
            of the output's shape without that axis, one count per example or position; no accuracy
            for anything else), or None for no accuracy at all. Where there is none, ``holdout_acc``
            and ``train_acc`` are None (never 0) and target "best" chooses by held-out loss.
        seed: an integer (numpy and torch integers too), folded with the step for every random choice
            and ordering the held-out batches. The call also runs with torch's, CUDA's, Python's and
            NumPy's global generators seeded from it (as ``torch.manual_seed(seed)`` would) and puts
            the caller's back afterwards: a loader without a ``generator`` of its own (a plain
            ``DataLoader(..., shuffle=True)``, which draws each pass's order and worker seeds from
            torch's) reads the same batches at every call with this seed, whatever the caller drew
            before, and the caller's generators are where they were (random transforms and dropout
            draw from the seeded ones too; so do a loader's worker processes, from seeds drawn as each
            pass starts, except a ``persistent_workers`` loader's, which keep the seeds of the pass
            that started them). A loader with a ``generator`` of its own shuffles by it,
            untouched: its order follows that generator's state, which advances as its passes draw.
        callback: called with every history record.
        progress: a tqdm bar over the run's batches (drawn by the first process of each machine
            only); None: only when stderr is a terminal.
        checkpoint: a file that records the run after every stage (see
            :mod:`adaptive.mask_only_checkpoint`). If it exists when the run starts, the run resumes
            after its last completed stage (masks, estimator state, snapshots, history); a file
            from a run with other targets, settings, weights, ``loss_fn`` or ``accuracy_fn`` (by
            module and name; a loss module or ``functools.partial`` also by its plain settings) is
            refused before anything changes, and so is a path that cannot be written (a file where
            its folder should be, a folder that takes no new file) unless it holds every stage.
            The loaders' positions are recorded too: the stages after a resume read the batches
            an uninterrupted run would have read (pass the same loaders).
        _checked: (for recipes) what :func:`adaptive.mask_only_checkpoint.check_readable` returned
            for ``checkpoint`` when it checked the file before loading its data: its state is
            taken instead of reading the file again, while the file is the one it read.

    Devices and processes: the optimisation runs where ``model`` is (move it to a GPU first);
    batches are moved to its device. Under Accelerate with several processes, give each process
    its shard of the train loader (``accelerator.prepare``) and the whole, unsharded holdout: the
    controller averages its gradient statistics over processes before every decision, so all
    processes reach the same masks (``recipes/prune_pretrained.py`` does this).

    Guarantees: no surviving weight changes by a single bit; each numeric target is met exactly
    (to the ensemble) at its snapshot; only ``train_loader`` and ``holdout_loader`` are read; if
    the run is interrupted (an error in a loader or the loss, Ctrl-C), the model gets its original
    weights back before the exception propagates.
    Raises ValueError before any work on a bad target, an empty loader or a bad setting (a
    ``loss_fn``, ``accuracy_fn`` or ``callback`` that cannot be called included). A holdout loader
    with no ``len()`` is asked for its first batch to see that it has one; a one-shot iterator (a
    generator, with a length or without) as holdout is refused, since every evaluation reads the
    holdout whole and every run reads it at least twice.

    A window with a NaN or inf loss or gradient (a corrupt example, a diverging model) is left out
    whole: it reaches neither the estimator nor the masks, and the stage draws another window in its
    place; the first is warned of and the total is summed up in a warning at the end. A whole pass of
    them in a row raises ValueError (the model gets its original weights back), and so does a held-out
    loss of NaN or inf in the line search (``verify_batches > 0``), which no decision could be taken on.
    The dense network is scored on the holdout before any synapse is removed: a held-out loss (or
    accuracy) of NaN or inf there raises ValueError, the model untouched. Masks whose held-out figures
    are NaN or inf later are never chosen as "best" (warned of; a fixed target's snapshot keeps them).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    targets = listed_targets(target)
    passes = checked_passes(passes)
    if whole_number(window) is None or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    window = whole_number(window)
    if not _is_real(approach) or not 0.0 <= approach <= 1.0:  # NaN fails the range too
        raise ValueError(f"approach must be in [0, 1], got {approach!r}")
    if not _is_real(edit_fraction) or not 0.0 <= edit_fraction <= 1.0:
        raise ValueError(f"edit_fraction must be in [0, 1] (the most swaps per update, as a fraction of the live "
                         f"ensembles), got {edit_fraction!r}")
    if not _is_real(margin) or not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number (the estimated improvement a swap must promise, in the "
                         f"estimator's units; 0: any improvement), got {margin!r}")
    # numpy scalars and one-element tensors as plain floats: the run rounds them (a tensor has no
    # __round__) and the checkpoint's fingerprint compares them with the plain number of a resume
    approach, edit_fraction, margin = float(approach), float(edit_fraction), float(margin)
    if whole_number(seed, floats=True) is None:
        raise ValueError(f"seed must be an integer (a Python, numpy or torch integer), got {seed!r}: pass a whole "
                         f"number such as seed=0")
    seed = whole_number(seed, floats=True)
    bad_ladder = (f"ladder must be a list of increasing removal fractions in (0, 1) such as [0.1, 0.2, 0.3] "
                  f"(or [] for threshold editing), got {ladder!r}")
    if ladder is None or isinstance(ladder, (str, bytes)) or not isinstance(ladder, Iterable):
        raise ValueError(bad_ladder)
    try:
        ladder = [float(f) for f in ladder]
    except (TypeError, ValueError):
        raise ValueError(bad_ladder) from None
    if any(not 0.0 < f < 1.0 for f in ladder) or any(b <= a for a, b in zip(ladder, ladder[1:])):
        raise ValueError(f"ladder must be increasing removal fractions in (0, 1), got {ladder}")
    if whole_number(patience) is None or patience < 1:
        raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
    patience = whole_number(patience)
    if whole_number(verify_batches) is None or verify_batches < 0:
        raise ValueError(f"verify_batches must be an integer >= 0 (0: no line search), got {verify_batches!r}")
    verify_batches = whole_number(verify_batches)
    if whole_number(line_search_tries) is None or line_search_tries < 0:
        raise ValueError(f"line_search_tries must be an integer >= 0 (the halvings a verified update may try before "
                         f"it is rolled back; 0: all or nothing), got {line_search_tries!r}")
    line_search_tries = whole_number(line_search_tries)
    if whole_number(eval_every) is None or eval_every < 0:
        raise ValueError(f"eval_every must be an integer >= 0 (updates between held-out evaluations; 0: at stage "
                         f"ends only), got {eval_every!r}")
    eval_every = whole_number(eval_every)
    for what, fn, none_ok in (("loss_fn", loss_fn, False), ("accuracy_fn", accuracy_fn, True),
                              ("callback", callback, True)):
        if not (callable(fn) or (none_ok and fn is None)):
            raise ValueError(f"{what} must be a callable{' or None' if none_ok else ''}, got {fn!r}"
                             + (" (a loss: F.cross_entropy or nn.CrossEntropyLoss())" if what == "loss_fn" else ""))
    n_train = _check_loader(train_loader, "train")
    _check_loader(holdout_loader, "holdout")
    if n_train == 0:
        raise ValueError("the train loader needs a length (len(loader)) to schedule passes")

    nm = next((g.density for _, g in parse_rules(ensemble) if hasattr(g, "density")), None)
    if nm is not None:
        raise ValueError(
            f"ensemble {ensemble!r} fixes the density at {nm:g} in every group, so no removal target can be "
            "reached by removing and restoring synapses: use 'synapse', 'kernel', 'neuron' or 'block:RxC'"
        )
    conn = Connectome(model, ensemble=ensemble, include=include, exclude=exclude, mode="mask_only")
    total = conn.num_synapses()
    at_start = sparse_start(conn)  # a sparse network's zeros: absent from the start, never restored
    check_start_agrees(at_start)  # (several processes: one count for every process's refusals)
    resolved = _resolve_targets(targets, total, at_start)
    climb = resolved[0][1] is None and bool(ladder)  # "best" by climbing the ladder
    if climb and at_start.absent:  # a sparse start: the rungs above it, the start the first candidate (on a dense
        # network every rung climbs, as before: one that rounds to 0 removed keeps its stage)
        rungs = [f for f in ladder if resolve_target(f, total) > at_start.absent]
        if not rungs:
            raise ValueError(f"target 'best': every rung of the ladder {ladder} removes no more than the {at_start.absent:,} "
                             f"of {total:,} synapses ({at_start.absent / total:.1%}) already absent (weights exactly 0.0), "
                             "so there is nothing to climb: give a ladder with fractions above "
                             f"{at_start.absent / total:.6g}")
        ladder = rungs
    if climb:
        resolved = [("best", resolve_target(f, total)) for f in ladder]
    if at_start.sparse and rank() == 0:  # once, not once per process
        warn_user(start_note(at_start, conn.ensemble))
    steps_per_stage = stage_batches(passes, n_train, window)
    saved = None
    if checkpoint is not None:
        fp = ckpt.fingerprint(targets=[list(r) for r in resolved], synapses=total, steps_per_stage=steps_per_stage,
                              ensemble=ensemble, include=include, exclude=exclude,
                              estimator=get_estimator(estimator) if isinstance(estimator, str) else estimator,
                              window=window, edit_fraction=edit_fraction, approach=approach, margin=margin,
                              ladder=ladder if climb else [], patience=patience if climb else None,
                              verify_batches=verify_batches, line_search_tries=line_search_tries, seed=seed,
                              eval_every=eval_every,  # when the held-out evaluations (and "best"'s choice) fall
                              loss_fn=ckpt.callable_identity(loss_fn), accuracy_fn=ckpt.callable_identity(accuracy_fn),
                              weights=ckpt.weights_digest(conn.original), precision=_precision(model),
                              train_data=_data_identity(train_loader), holdout_data=_data_identity(holdout_loader))
        saved = ckpt.load_stage(checkpoint, fp, conn.original, checked=_checked)  # a foreign file fails here, before anything changes
        finished = saved is not None and (saved["stage"] + 1 >= len(resolved)
                                          or (climb and saved["since_best"] >= patience))
        if not finished:  # a path no stage could be recorded in (a finished run's file is only read)
            ckpt.check_writable(checkpoint)
    max_ens = max(int(conn.granularities[n].pool(torch.ones(conn.layers[n].shape), "sum").max()) for n in conn.names)

    device = _model_device(model)  # batches follow the model: move it to a GPU first to run there
    holdout_iter = LoaderCycle(_shuffled(holdout_loader, seed))
    verify_set: List = []

    scoring = {"reduction": None}  # whether loss_fn takes reduction="sum": checked before the first backward pass

    def verify_loss() -> float:
        loss = _agreed(evaluate(model, verify_set, loss_fn, accuracy_fn=None, reduction=scoring["reduction"])[0])[0]
        if not math.isfinite(loss):  # every line-search decision would compare NaN: none could be judged
            raise ValueError(f"the held-out loss of the line search is {loss} on {len(verify_set)} held-out batch(es): "
                             "the held-out data (or the model on it) gives non-finite losses; check that data for "
                             "NaN or inf, or pass verify_batches=0 to edit without a line search")
        return loss

    ctrl = Controller(
        conn, policy="crawl", estimator=estimator, update_every=window, edit_decay="constant",
        holdout_loss=verify_loss if verify_batches > 0 else None, line_search_tries=line_search_tries,
        seed=seed, margin=margin,
    )
    policy = ctrl.policy
    if at_start.absent:
        policy.restorable = at_start.masks  # a zero restored would change nothing: never restored
    result = MaskOnlyResult(conn=conn, controller=ctrl, start_removed=at_start.absent)
    # each estimator instance once (one instance often serves both sides)
    estimators = list({id(e): e for e in (ctrl.drop_est, ctrl.grow_est) if e is not None}.values())
    train_iter = LoaderCycle(train_loader)

    t_cpu, t_wall = time.process_time(), time.time()
    if saved is not None:  # the clocks go on from where the recorded run stopped
        t_cpu -= saved["cpu_seconds"]
        t_wall -= saved["wall_seconds"]
        result.resumed_seconds = float(saved["wall_seconds"])

    def record(rec):
        rec["cpu_seconds"], rec["wall_seconds"] = time.process_time() - t_cpu, time.time() - t_wall
        result.history.append(rec)
        if callback is not None:
            callback(rec)

    def holdout_figures():
        loss, acc, _ = evaluate(model, holdout_loader, loss_fn, accuracy_fn=accuracy_fn, reduction=scoring["reduction"])
        if acc is None:  # no accuracy (adaptive.metrics): None, never 0
            return _agreed(loss)[0], None
        return tuple(_agreed(loss, acc))

    def full_holdout(step, stage, target, figures=None):
        if is_distributed():  # every evaluation (each stage end, every eval_every updates) checks agreement
            check_masks_agree(conn, step)
        loss, acc = figures or holdout_figures()
        rec = {"kind": "eval", "step": step, "stage": stage, "target": target, "removed": total - conn.num_live(),
               "holdout_loss": loss, "holdout_acc": acc}
        record(rec)
        if not _finite(acc, loss):  # the dense network's were finite (checked first): these masks broke it
            warn_user(f"held-out loss {loss}, accuracy {acc} with {rec['removed']} synapses removed (step {step}): "
                      "the network gives non-finite held-out figures with these masks, so they are never chosen as "
                      "the best (a fixed target's snapshot keeps them, with these figures)")
        return rec

    # the targets whose snapshots the checkpoint file holds (updated once each save_stage has returned):
    # what the note of an interrupted run says is kept, and where
    recorded: List[str] = list(saved["snapshots"]) if saved is not None else []
    # a climb's rungs the checkpoint records as climbed: its one snapshot ("best") is the best of them
    climbed: List[float] = list(ladder[:saved["stage"] + 1]) if climb and saved is not None else []
    with mask_learning(model, conn, kept_note=lambda: _kept_note(checkpoint, recorded, climbed if climb else None)):
        from tqdm.auto import tqdm

        from .cli import show_progress

        step = 0
        since_best = 0
        first_stage = 0
        left_out = 0  # windows left out in a row for NaN or inf gradients (see below)
        unused_verify = None  # the held-out batches drawn for a window that was left out
        if saved is None and at_start.absent:
            conn.set_ensemble_masks(at_start.masks)  # (inside the frame: an error gives the weights back)
        if saved is not None:
            conn.set_masks(saved["masks"])
            ctrl.load_state_dict(saved["controller"])
            result.history[:] = saved["history"]
            result.snapshots.update({k: Snapshot(**v) for k, v in saved["snapshots"].items()})
            step, since_best, first_stage = saved["step"], saved["since_best"], saved["stage"] + 1
            if "data" in saved:  # the loaders stand where the recorded run left them
                train_iter.load_state_dict(saved["data"]["train"])
                holdout_iter.load_state_dict(saved["data"]["holdout"])
            if climb and since_best >= patience:
                first_stage = len(resolved)  # the recorded climb had already stopped
            record({"kind": "resume", "step": step, "stage": first_stage, "removed": total - conn.num_live(),
                    "checkpoint": str(checkpoint)})
        dense = None
        if saved is None:  # the dense network first: held-out figures no choice could be made on stop the run here
            # a fixed target's is an extra pass: it leaves every random state (and the holdout loader's
            # generators) as it found it, so the train loader reads the batches it read without it
            states = rng_states(holdout_loader) if resolved[0][0] != "best" else None
            dense = holdout_figures()
            if states is not None:
                set_rng_states(states, holdout_loader)
            _refuse_nonfinite_dense(*dense)
        # a fixed target of 0 is the dense network (of a sparse start's absent count, the start): a snapshot of
        # it, scored by the held-out evaluation already made, with no stage (a pass over the train loader that
        # could only give it back); the other targets' stages run as without it. (A rung of the ladder that
        # rounds to 0 removed keeps its stage: the climb goes on.)
        passing = [r for r in resolved[first_stage:] if climb or r[1] != at_start.absent]
        bar = tqdm(total=steps_per_stage * len(passing), desc="mask-only", unit="batch",
                   disable=not show_progress(progress), mininterval=2.0)
        if resolved[0][0] == "best" and saved is None:  # the dense network is the first candidate: removing nothing may be best
            e = full_holdout(0, -1, "best", dense)
            result.snapshots["best"] = Snapshot("best", e["removed"], {n: m.clone() for n, m in conn.masks.items()},
                                                e["holdout_loss"], e["holdout_acc"], 0, e["cpu_seconds"],
                                                e["wall_seconds"], _criterion(e["holdout_acc"]))
        for stage, (label, removed_goal) in enumerate(resolved):
            if stage < first_stage:
                continue
            if removed_goal == at_start.absent and not climb:  # (the first stage, of a run not resumed: `dense` was scored above)
                e = full_holdout(step, stage, label, dense)
                result.snapshots[label] = Snapshot(label, e["removed"], {n: m.clone() for n, m in conn.masks.items()},
                                                   e["holdout_loss"], e["holdout_acc"], step, e["cpu_seconds"],
                                                   e["wall_seconds"])
                if checkpoint is not None:
                    ckpt.save_stage(checkpoint, _stage_state(fp, stage, step, since_best, conn, ctrl, result, e,
                                                              {"train": train_iter.state_dict(), "holdout": holdout_iter.state_dict()}))
                    recorded[:] = list(result.snapshots)
                continue
            start = step
            deadline = start + max(window, int(round(approach * steps_per_stage)) // window * window)
            prot = sum(ctrl.protected_live().values())
            if removed_goal is None:
                policy.set_goal(None)
            else:
                live_goal_syn = total - removed_goal
                policy.set_goal(live_goal_syn - prot, deadline)
            for est in estimators:
                if hasattr(est, "begin_stage"):
                    est.begin_stage()  # a new goal: the estimator restarts its moving moments
            # "best" without a ladder (threshold editing): the dense network, scored first, competes too
            best = result.snapshots.get("best") if removed_goal is None and not climb else None
            # the counts start as the integer 0: summed with 0-d int64 tensors they stay exact int64 ones (from
            # 0.0 they would be float32, whose integers end at 2**24 positions)
            win_loss, win_correct, win_n, win_counted, win_examples = _EMPTY_WINDOW
            while step - start < steps_per_stage:
                x, y = _to_device(next(train_iter), device)
                for p in conn.params.values():
                    p.grad = None
                out = _logits(call_model(model, x, "mask-only optimisation"), model)
                if scoring["reduction"] is None:  # the loss checked on this batch before any backward pass
                    with torch.no_grad():
                        scoring["reduction"] = takes_reduction(loss_fn, out.detach(), y)
                loss = loss_fn(out, y)
                loss.backward()
                ctrl.observe()
                if ctrl.batch_size is None:
                    ctrl.batch_size = int(y.shape[0])
                # positions for classification shapes, else examples (as evaluate); the sums stay on the
                # device (as float64, the host's Python floats) and are read at the window's update
                units, acc = batch_sums(accuracy_fn, out.detach(), y)
                win_loss += loss.detach().double() * units
                win_n += units
                win_examples += example_count(y)
                if acc is not None:
                    win_correct += acc[0]
                    win_counted += acc[1]
                step += 1
                if ctrl.due(ctrl.step_count + 1):
                    t = (step - start) / steps_per_stage  # cosine decay of the edit limit over the stage
                    decay = 0.5 * (1 + math.cos(math.pi * t))
                    policy.edit_fraction = edit_fraction * decay
                    for est in estimators:
                        if hasattr(est, "step_scale"):
                            est.step_scale = decay  # estimators with a step follow the same decay
                    if step - start == steps_per_stage and removed_goal is not None:
                        policy.edit_fraction = 0.0  # the stage's last update settles exactly on the goal
                        policy.set_goal(total - removed_goal - prot, step)
                    verify_set[:] = unused_verify or [_to_device(next(holdout_iter), device) for _ in range(verify_batches)]
                    unused_verify = None
                # the connectome the window's batches ran through (read where the update comes)
                window_removed = total - conn.num_live() if ctrl.due(ctrl.step_count + 1) else None
                skipped = ctrl.nonfinite_windows
                ev = ctrl.step()
                bar.update(1)
                if ctrl.nonfinite_windows > skipped:
                    # a NaN or inf loss or gradient in the window (on any process): the controller left
                    # it out, and so does the stage's schedule, which draws another window in its place
                    step -= window
                    ctrl.step_count -= window
                    bar.total += window
                    win_loss, win_correct, win_n, win_counted, win_examples = _EMPTY_WINDOW
                    unused_verify = list(verify_set)  # the window in its place checks its steps on these
                    left_out += 1
                    if left_out * window >= n_train:
                        raise ValueError(
                            f"every training batch of a whole pass ({left_out * window} in a row) had a NaN or inf "
                            "loss or gradient, so the connectome cannot be scored: check the data (NaN or inf in "
                            "inputs or targets), the model's output on it and the loss")
                    continue
                if ev is None:
                    continue
                left_out = 0
                procs = 1
                win_loss, win_correct, win_n, win_counted = _on_host(win_loss, win_correct, win_n, win_counted)
                if is_distributed():  # the window over every process's batches, not this process's shard
                    win_loss, win_correct, win_n, win_counted, win_examples = _agreed(
                        win_loss, win_correct, win_n, win_counted, win_examples)
                    procs = world_size()
                rec = {"kind": "update", "step": step, "stage": stage, "target": label,
                       "removed": total - conn.num_live(), "pruned": ev["pruned"], "restored": ev["grown"],
                       "train_removed": window_removed, "train_examples": int(round(win_examples * procs)),
                       "train_loss": win_loss / win_n, "train_acc": win_correct / win_counted if win_counted else None,
                       "verify_loss": ev.get("holdout_loss"), "est_loss_change": ev.get("est_loss_change"),
                       "est_score_change": ev.get("est_score_change"),
                       "actual_loss_change": ev.get("actual_loss_change"),
                       "line_search_fraction": ev.get("line_search_fraction")}
                record(rec)
                win_loss, win_correct, win_n, win_counted, win_examples = _EMPTY_WINDOW
                bar.set_postfix(removed=rec["removed"], loss=f"{rec['train_loss']:.3f}")
                n_upd = (step - start) // window
                if eval_every and n_upd % eval_every == 0 and step - start < steps_per_stage:
                    e = full_holdout(step, stage, label)
                    if removed_goal is None and _better(e["holdout_acc"], e["holdout_loss"], best):
                        best = Snapshot(label, e["removed"], {n: m.clone() for n, m in conn.masks.items()},
                                        e["holdout_loss"], e["holdout_acc"], step, selected_by=_criterion(e["holdout_acc"]))
            for p in conn.params.values():
                p.grad = None
            e = full_holdout(step, stage, label)
            snap = Snapshot(label, e["removed"], {n: m.clone() for n, m in conn.masks.items()},
                            e["holdout_loss"], e["holdout_acc"], step,
                            selected_by=_criterion(e["holdout_acc"]) if removed_goal is None or climb else None)
            if best is not None and not _better(snap.holdout_acc, snap.holdout_loss, best):
                snap = best  # a tie is no gain: the earlier candidate stays, as on a ladder
                conn.set_masks(snap.masks)
            if removed_goal is not None and snap.removed != removed_goal and abs(snap.removed - removed_goal) >= max_ens:
                raise RuntimeError(f"stage {label!r} ended at {snap.removed} removed, not {removed_goal}: a scheduling bug")
            snap.cpu_seconds, snap.wall_seconds = e["cpu_seconds"], e["wall_seconds"]
            if not climb:
                result.snapshots[label] = snap
            elif _better(snap.holdout_acc, snap.holdout_loss, result.snapshots["best"]):
                result.snapshots["best"], since_best = snap, 0
            else:
                since_best += 1
            if checkpoint is not None:
                ckpt.save_stage(checkpoint, _stage_state(fp, stage, step, since_best, conn, ctrl, result, e,
                                                          {"train": train_iter.state_dict(), "holdout": holdout_iter.state_dict()}))
                recorded[:] = list(result.snapshots)
                climbed[:] = list(ladder[:stage + 1]) if climb else []
            if climb and since_best >= patience:
                break
        if climb:
            conn.set_masks(result.snapshots["best"].masks)
        bar.close()
    if ctrl.nonfinite_windows:
        warn_user(f"{ctrl.nonfinite_windows} window(s) of {window} training batch(es) were left out for a NaN or "
                      "inf loss or gradient (none of it reached the estimator or the masks); check the data (NaN or "
                      "inf in inputs or targets) and the loss")
    return result


def _criterion(acc: Optional[float]) -> str:
    """What target "best" chooses by: held-out accuracy where there is one, else held-out loss."""
    return "holdout_loss" if acc is None else "holdout_acc"


def _finite(acc: Optional[float], loss: float) -> bool:
    """Whether held-out figures are ones a choice can be made on: no NaN or inf (NaN compares false)."""
    return math.isfinite(loss) and (acc is None or math.isfinite(acc))


def _refuse_nonfinite_dense(loss: float, acc: Optional[float]) -> None:
    """The dense network's held-out figures, checked before any synapse is removed."""
    if not _finite(acc, loss):
        raise ValueError(f"the dense network's held-out loss is {loss} (accuracy {acc}) before any synapse was removed, "
                         "so no held-out choice could be made (NaN compares false): check the held-out data for NaN or "
                         "inf, and the model on it (weights that hold NaN or inf, an output that overflows) and the "
                         "loss function; nothing was changed")


def _better(acc: Optional[float], loss: float, than: Optional[Snapshot]) -> bool:
    """Whether a held-out evaluation (``acc``, ``loss``) beats snapshot ``than`` for target "best":
    by a strictly higher accuracy where there is one (an accuracy tie is no gain: classification
    chooses exactly as it always has), by a strictly lower loss where there is none (regression,
    probability targets; see :mod:`adaptive.metrics`). Non-finite figures never beat anything, and
    finite ones beat no snapshot (None) and a non-finite one."""
    if not _finite(acc, loss):
        return False
    if than is None or not _finite(than.holdout_acc, than.holdout_loss):
        return True
    if acc is not None and than.holdout_acc is not None:
        return acc > than.holdout_acc
    return loss < than.holdout_loss


_EMPTY_WINDOW = (0.0, 0, 0, 0, 0)  # optimize_connectome's loss sum, correct, units, counted, examples


def _on_host(*values) -> List[float]:
    """``values`` (numbers, or 0-d tensors on one device) as Python floats, the tensors read in one
    transfer."""
    tensors = [v for v in values if torch.is_tensor(v)]
    read = iter(torch.stack([t.double() for t in tensors]).tolist() if tensors else ())
    return [next(read) if torch.is_tensor(v) else float(v) for v in values]


def _agreed(*values: float) -> List[float]:
    """``values`` averaged over processes (as they are on one process). Every process scores the
    same held-out batches, but kernels may differ in their last bits between devices: decisions
    taken on these numbers (line search, the rung to keep) must see one value everywhere."""
    t = torch.tensor(values, dtype=torch.float64)
    all_reduce_mean_([t])
    return t.tolist()


def _stage_state(fp, stage, step, since_best, conn, ctrl, result, last_eval, data) -> dict:
    """What :func:`adaptive.mask_only_checkpoint.save_stage` records after ``stage``."""
    return {"fingerprint": fp, "stage": stage, "step": step, "since_best": since_best,
            "masks": {n: m.cpu() for n, m in conn.masks.items()}, "controller": ctrl.state_dict(),
            "snapshots": {k: {**vars(sn), "masks": {n: m.cpu() for n, m in sn.masks.items()}}
                          for k, sn in result.snapshots.items()},
            "history": list(result.history), "data": data, "cpu_seconds": last_eval["cpu_seconds"],
            "wall_seconds": last_eval["wall_seconds"]}


def _kept_note(checkpoint, recorded: Sequence[str], climbed: Optional[Sequence[float]] = None) -> str:
    """What an interrupted :func:`optimize_connectome` kept: the snapshots its ``checkpoint`` file
    holds (``recorded``: their targets) and how to continue from them, or that none was kept.
    ``climbed``: for target "best" climbing the ladder, the rungs the checkpoint records (its one
    snapshot is the best of them so far, not a finished target's)."""
    if checkpoint is None or not recorded:
        return "no snapshot was kept"
    if climbed is not None:
        return (f"the best snapshot of the ladder's rung(s) climbed before it (removing {', '.join(f'{f:g}' for f in climbed)}) "
                f"is kept in the checkpoint {checkpoint}: run it again with that checkpoint (a recipe's --resume) to "
                "continue the climb from there")
    return (f"the snapshot(s) of the target(s) finished before it ({', '.join(map(str, recorded))}) are kept in the "
            f"checkpoint {checkpoint}: run it again with that checkpoint (a recipe's --resume) to continue from them")


@contextmanager
def mask_learning(model: nn.Module, conn: Connectome, kept_note: Optional[Callable[[], str]] = None):
    """The frame of every mask-learning loop over a frozen ``model`` (this module's and the
    edge-popup baseline's): evaluation mode (normalisation statistics frozen), gradients only for
    the connectome's weights. An exception inside gives the model its original weights back
    (:func:`restore_original`); every exit, a refusal included, gives back each parameter's
    ``requires_grad`` and ``.grad`` as the caller had them (None stays None; a gradient comes back
    as the same tensor, untouched: the loop's gradients are its own, so a call in the middle of
    training loses no accumulated gradient) and each module's own mode (a submodule the caller put
    in eval mode stays so). A ``.grad`` PyTorch would not take back (its parameter's dtype, device or
    shape changed since) is refused on entry, before anything changed. ``kept_note``: what the restore's note
    says was kept (:func:`restore_original`)."""
    kept = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    for name, p in model.named_parameters():  # what the exit could not give back is refused before anything changed
        try:
            p.grad = p.grad  # PyTorch checks a gradient against its parameter when it is set
        except RuntimeError as e:
            raise ValueError(f"{name}'s .grad no longer fits the parameter (its dtype, device or shape changed after "
                             f"the gradient was set: {e}), so mask learning could not give it back; set {name}.grad "
                             "to None, or to a gradient like the parameter, first") from None
    with modes_kept(model, train=False):
        for p in model.parameters():
            p.grad = None  # set aside, so that no backward inside accumulates into the caller's
            p.requires_grad_(False)
        for p in conn.params.values():
            p.requires_grad_(True)
        try:
            yield
        except BaseException as exc:
            restore_original(conn, exc, kept_note)
            raise
        finally:
            for p, requires_grad, grad in kept:
                p.requires_grad_(requires_grad)
                p.grad = grad


def restore_original(conn: Connectome, exc: Optional[BaseException] = None,
                     kept: Optional[Callable[[], str]] = None) -> None:
    """Give a mask_only connectome's model all its original weights back (every synapse present):
    what an interrupted optimisation (an error, Ctrl-C) does before the exception propagates, so
    that the caller's model is never left half-pruned. ``exc`` gets a note saying so, and what was
    kept: ``kept()`` (the snapshots a checkpoint holds), else that no snapshot was kept."""
    conn.set_masks({n: torch.ones_like(m) for n, m in conn.masks.items()})
    if exc is not None:
        exc.add_note("adaptive: the mask-only optimisation was interrupted; the model's original weights "
                     f"(every synapse present) were restored, and {kept() if kept else 'no snapshot was kept'}")


def changed_weights(conn: Connectome) -> int:
    """Surviving synapses whose bits differ from the original weight's (must be 0 in mask_only)."""
    if not conn.original:
        raise ValueError("changed_weights needs a mask_only connectome (it compares against .original)")
    n = 0
    for name, p in conn.params.items():
        same = _same_bits(p.detach(), conn.original[name].to(p.device, p.dtype))
        n += int((conn.masks[name].to(p.device) & ~same).sum())
    return n


def loaded_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """A copy of ``model.state_dict()`` on the CPU, taken before a connectome is attached: the
    reference :func:`changed_from` compares a pruned state_dict with."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per entry, whether ``a`` and ``b`` hold the same bits as they read (a NaN is its own, -0.0 is
    not +0.0); a complex entry compares its real and imaginary parts' bits (complex128 has no
    16-byte integer view), a conjugate or negative view as it reads."""
    if a.dtype != b.dtype:
        return a == b
    bits = [_bits(t) for t in (a, b)]
    if bits[0] is None:
        return a == b
    same = bits[0] == bits[1]
    return same.all(-1) if a.is_complex() else same


def _bits(t: torch.Tensor) -> Optional[torch.Tensor]:
    """``t``'s entries as integers of their size (a complex one as two: real, imaginary), or None."""
    t = t.resolve_conj().resolve_neg()
    if t.is_complex():
        t = torch.view_as_real(t)
    bits = INT_OF_WIDTH.get(t.element_size())
    return None if bits is None else t.view(bits)


def changed_from(state: Dict[str, torch.Tensor], reference: Dict[str, torch.Tensor], conn: Connectome) -> int:
    """Entries of ``state`` (a pruned state_dict, :meth:`Connectome.dense_state_dict`) whose bits
    differ from ``reference`` (:func:`loaded_state`: the weights as loaded), pruned synapses set to
    +0.0 aside: surviving weights, biases, normalisation statistics, every tensor. Unlike
    :func:`changed_weights` it does not trust the connectome's own copy of the weights
    (``conn.original``); a key or shape that does not match counts every entry of that tensor."""
    for what, d in (("state", state), ("reference", reference)):
        if not isinstance(d, Mapping):
            raise TypeError(f"changed_from: {what} must be a state_dict (a mapping of names to tensors), got "
                            f"{type(d).__name__}: pass conn.dense_state_dict() and loaded_state(model)")
    keys = state_dict_keys(conn.model)
    pruned = {k: ~conn.masks[n].cpu() for n, p in conn.params.items() for k in keys.get(id(p), [n])}
    n = 0
    for k in set(state) | set(reference):
        a, ref = state.get(k), reference.get(k)
        if a is None or ref is None or a.shape != ref.shape or a.dtype != ref.dtype:
            n += max(0 if a is None else a.numel(), 0 if ref is None else ref.numel())
            continue
        a = a.detach().cpu()
        same = _same_bits(a, ref)
        if k in pruned:
            same |= pruned[k] & _same_bits(a, torch.zeros_like(a))
        n += int((~same).sum())
    return n
