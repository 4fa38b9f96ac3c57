"""Held-out evaluation in a mask-only optimisation: :func:`evaluate` (mean loss and accuracy over
batches, the contract of :mod:`adaptive.metrics`) and the figures every process agrees on."""
from __future__ import annotations

from typing import Callable, Iterable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .data.cycle import rng_states, set_rng_states
from .distributed import agreed_call, all_reduce_mean_
from .label_checks import refuse_mismatched_targets
from .mask_only_data import _NONE, _model_device, _to_device
from .metrics import (AccuracyFn, batch_accuracy, batch_loss, call_model, check_output, default_accuracy,
                      refuse_one_class, takes_reduction)
from .modes import modes_kept


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


@torch.no_grad()
def check_first_batch(model: nn.Module, loader, loss_fn: Callable) -> None:
    """Refuse, before any work, a ``model`` whose output does not fit the targets of ``loader``'s first
    batch for ``loss_fn`` (:func:`adaptive.label_checks.refuse_mismatched_targets`: a 10-class head on
    labels up to 99, a regression's targets under cross-entropy): one forward pass in evaluation mode
    (modes given back, no gradient, no normalisation statistic moved), and every random generator
    (the loader's own too) left where it was, so the run reads the batches it would have read. On
    several processes the refusal is agreed (:func:`adaptive.distributed.agreed_call`): each reads
    the same unsharded holdout, but a process with other files (or a loader sharded by mistake)
    would otherwise raise alone while the others wait in their next collective."""
    agreed_call(lambda: _check_first_batch(model, loader, loss_fn))


def _check_first_batch(model: nn.Module, loader, loss_fn: Callable) -> None:
    """:func:`check_first_batch` on this process alone."""
    states = rng_states(loader)
    try:
        batch = next(iter(loader), _NONE)
    finally:
        set_rng_states(states, loader)
    if batch is _NONE:
        return
    x, y = _to_device(batch, _model_device(model))
    with modes_kept(model, train=False):
        out = _logits(call_model(model, x, "mask-only optimisation"), model)
    name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
    refuse_one_class(out, f"loss_fn {name}", loss_fn)  # (as takes_reduction: the one-channel head named first)
    refuse_mismatched_targets(out, y, loss_fn, f"loss_fn {name}")


def _agreed(*values: float) -> List[float]:
    """``values`` averaged over processes (as they are on one process). Every process scores the
    same held-out batches, but kernels may differ in their last bits between devices: decisions
    taken on these numbers (line search, the rung to keep) must see one value everywhere."""
    t = torch.tensor(values, dtype=torch.float64)
    all_reduce_mean_([t])
    return t.tolist()
