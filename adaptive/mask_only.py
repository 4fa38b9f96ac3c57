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

This module holds :func:`optimize_connectome`, which checks its settings
(:mod:`adaptive.mask_only_settings`), plans the run (:mod:`adaptive.mask_only_plan`) and runs its
stages (:mod:`adaptive.mask_only_stages`, batch by batch: :mod:`adaptive.mask_only_batches`); the rest
is in modules of one concept each, their names importable from here as before:
:mod:`adaptive.mask_only_targets` (parsing, naming and resolving targets), :mod:`adaptive.mask_only_result`
(:class:`MaskOnlyResult`, :class:`Snapshot`), :mod:`adaptive.mask_only_data` (the loaders),
:mod:`adaptive.mask_only_eval` (:func:`evaluate`), :mod:`adaptive.mask_only_best` (what target "best"
chooses), :mod:`adaptive.mask_only_window` (the training window's sums), :mod:`adaptive.mask_only_learning`
(:func:`mask_learning`, :func:`restore_original`) and :mod:`adaptive.mask_only_bits` (bit-exact comparisons:
:func:`changed_weights`, :func:`changed_from`).
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import mask_only_checkpoint as ckpt
from .global_rng import seeded_global_rng
from .mask_only_plan import plan_run
from .mask_only_settings import check_settings
from .mask_only_stages import StageRun
from .metrics import AccuracyFn, default_accuracy
# the names importable from here before the split, where they live now
from .mask_only_best import _better, _criterion, _finite, _refuse_nonfinite_dense  # noqa: F401
from .mask_only_bits import _bits, _same_bits, changed_from, changed_weights, loaded_state  # noqa: F401
from .mask_only_data import (_NONE, _check_loader, _data_identity, _model_device, _shuffled,  # noqa: F401
                             _to_device)
from .mask_only_eval import _agreed, _logits, check_first_batch, evaluate  # noqa: F401
from .mask_only_learning import _kept_note, mask_learning, refuse_grads_not_given_back, restore_original  # noqa: F401
from .mask_only_result import MaskOnlyResult, Snapshot  # noqa: F401
from .mask_only_settings import _precision, checked_passes, stage_batches  # noqa: F401
from .mask_only_stages import _stage_state  # noqa: F401
from .mask_only_targets import (Target, _is_real, _label, _labels, _plain_number, _resolve_targets,  # noqa: F401
                                check_targets, count_synapses, listed_targets, parse_target, resolve_target)
from .mask_only_window import _EMPTY_WINDOW, _on_host  # noqa: F401

__all__ = ["optimize_connectome", "MaskOnlyResult", "Target",
           # the names importable from here before the split (imported above)
           "changed_from", "changed_weights", "loaded_state",
           "evaluate", "mask_learning", "restore_original", "Snapshot",
           "checked_passes", "stage_batches", "check_targets", "count_synapses",
           "listed_targets", "parse_target", "resolve_target"]
# private names other modules and tests import from here (not in __all__: a star import takes the
# public names only); named here, so that the import is used
_REEXPORTED = (_better, _criterion, _finite, _refuse_nonfinite_dense, _bits, _same_bits, _NONE, _check_loader,
               _data_identity, _model_device, _shuffled, _to_device, _agreed, _logits, _kept_note, _precision,
               _stage_state, _is_real, _label, _labels, _plain_number, _resolve_targets, _EMPTY_WINDOW, _on_host)


@seeded_global_rng.by_argument("seed")
@torch.inference_mode(False)  # it learns masks from gradients, whatever the caller's mode: a call under
@torch.enable_grad()  # torch.no_grad() (a notebook cell) failed on the first backward
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
            "evidence" uses windowed t-statistics instead (a ``window`` of two or more batches: one
            batch has no spread, and evidence then learns nothing, warned of).
        window: training batches whose statistics feed one update (1: every batch), at most the batches of
            one pass of ``train_loader`` (more is refused before a batch is read: a window would read some
            twice; a run resumed from its ``checkpoint`` goes on with the window it recorded).
        edit_fraction: most swaps per update, as a fraction of the live ensembles (rounded to a whole
            number; decays to 0 over each stage, cosine; estimators with a step, like presence, decay with it).
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
            (0, the default: none; on ResNet-20, per-update verification with per-batch updates
            took 4.81 minutes against 1.09 and lost accuracy at 50% removed, 86.96% against 90.44%
            on DEV: recipes/benchmarks/results/mask_only_ablations.md).
        line_search_tries: halvings a verified update may try before it is rolled back (an integer
            >= 0; 0: the whole update or nothing); used with ``verify_batches`` > 0, and only by the
            updates of target "best" with ``ladder=()`` (no size goal): an update that moves toward a
            target's size is never vetoed, and swaps at it are kept or rolled back whole (a halved
            swap would change the count), so there it has no effect.
        eval_every: evaluate the whole holdout every this many updates (0: only at stage ends).
        loss_fn: ``loss_fn(output, targets)`` -> the mean loss of a batch (default ``F.cross_entropy``);
            checked on the first held-out batch before any work (whatever the loss: a real scalar tensor
            connected to the output) and on the first training batch, before any backward pass. Held-out losses use
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
        callback: called with every history record. Under several processes each calls its own, and an
            error one process's callback (or its train loader) raises mid-run is that process's alone: the
            others wait in their next collective until it exits (under ``accelerate launch``, about a second;
            a process that catches the error and lives on holds them until the process group's timeout).
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
    processes reach the same masks (``recipes/prune_pretrained.py`` does this). Every process's train
    loader must have the same length (the steps of each stage, each a collective): lengths that differ
    are refused on every process before any work, naming each one's (even the shards: a
    ``DistributedSampler``, ``accelerator.prepare``), and a loader refused on some processes only
    (empty, no length) is refused by every process alike.

    Guarantees: no surviving weight changes by a single bit; each numeric target is met exactly
    (to the ensemble) at its snapshot; only ``train_loader`` and ``holdout_loader`` are read; if
    the run is interrupted (an error in a loader or the loss, Ctrl-C), the model gets its original
    weights back before the exception propagates. It computes gradients whatever the caller's mode: a call
    under ``torch.no_grad()`` or ``torch.inference_mode()`` runs alike (batches made outside inference mode).
    Raises ValueError before any work on a bad target (a positive one too small to remove one
    ensemble included: a fraction of 1e-9 would give back the dense network), an empty loader or a bad setting (a
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
    s = check_settings(model, train_loader, holdout_loader, target, passes=passes, ensemble=ensemble,
                       include=include, exclude=exclude, estimator=estimator, window=window,
                       edit_fraction=edit_fraction, approach=approach, margin=margin, ladder=ladder, patience=patience,
                       verify_batches=verify_batches, line_search_tries=line_search_tries, eval_every=eval_every,
                       loss_fn=loss_fn, accuracy_fn=accuracy_fn, seed=seed, progress=progress, callback=callback,
                       checkpoint=checkpoint)
    refuse_grads_not_given_back(model)  # (before the first batch's forward, which such a parameter may fail)
    check_first_batch(model, holdout_loader, s.loss_fn)  # a head that does not fit the labels: before any edit
    plan = plan_run(model, s, train_loader, holdout_loader, _checked)
    return StageRun(model, train_loader, holdout_loader, s, plan).run()
