"""Held-out evaluation in a mask-only optimisation: :func:`evaluate` (mean loss and accuracy over
batches, the contract of :mod:`adaptive.metrics`) and the figures every process agrees on."""
from __future__ import annotations

from typing import Callable, Iterable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .data.cycle import rng_states, set_rng_states
from .distributed import agreed_call, all_reduce_mean_
from .global_rng import kept_global_rng
from .label_checks import refuse_batch_targets, refuse_mismatched_targets
from .mask_only_data import _NONE, _model_device, _to_device, input_shapes
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
    loss_sum, correct, n, counted, batches_read = 0.0, 0, 0, 0, 0
    device = _model_device(model)
    with modes_kept(model, train=False):
        for batch in batches:
            x, y = _to_device(batch, device)
            out = _logits(call_model(model, x, "mask-only optimisation"), model)
            if reduction is None:
                reduction = takes_reduction(loss_fn, out, y)
            else:  # every batch's labels, before the loss (takes_reduction checked the first's)
                refuse_batch_targets(out, y, loss_fn, f"batch {batches_read + 1} of the evaluated loader")
            batches_read += 1
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
        raise ValueError("evaluate: no examples to score in the evaluated batches (the loader yields no batch, or every "
                         "label is the ignored one, -100): give the holdout loader (or the evaluated one) batches with "
                         "labels to score")
    return loss_sum / n, (correct / counted if counted else None), n


@torch.no_grad()
def check_first_batch(model: nn.Module, loader, loss_fn: Callable, who: str = "mask-only optimisation") -> None:
    """Refuse, before any work, a ``model`` whose output does not fit the targets of ``loader``'s first
    batch for ``loss_fn`` (:func:`adaptive.label_checks.refuse_mismatched_targets`: a 10-class head on
    labels up to 99, a regression's targets under cross-entropy): one forward pass in evaluation mode
    (modes given back, no gradient, no normalisation statistic moved), and every random generator
    (the loader's own too) left where it was, so the run reads the batches it would have read; then
    ``loss_fn`` on that batch must give a loss the run can use (:func:`refuse_unusable_loss`). On
    several processes the refusal is agreed (:func:`adaptive.distributed.agreed_call`): each reads
    the same unsharded holdout, but a process with other files (or a loader sharded by mistake)
    would otherwise raise alone while the others wait in their next collective. ``who`` names the caller in
    the refusals (``"edge-popup"`` for :func:`adaptive.baselines.edge_popup`)."""
    agreed_call(lambda: _check_first_batch(model, loader, loss_fn, who))


def _check_first_batch(model: nn.Module, loader, loss_fn: Callable, who: str = "mask-only optimisation") -> None:
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
        try:
            out = _logits(call_model(model, x, who), model)
        except RuntimeError as e:  # (a bare one from deep inside: 'mat1 and mat2 shapes cannot be multiplied')
            if not isinstance(e, torch.OutOfMemoryError):
                e.add_note(f"adaptive: the model failed on the first held-out batch (inputs {input_shapes(x)}), checked "
                           "before any work; nothing was changed. Where the model takes inputs of another shape (image "
                           "size, channels, features), give the holdout loader such inputs, as the train loader's")
            raise
    name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
    refuse_one_class(out, f"loss_fn {name}", loss_fn)  # (as takes_reduction: the one-channel head named first)
    refuse_mismatched_targets(out, y, loss_fn, f"loss_fn {name}")
    refuse_unusable_loss(loss_fn, out, y, name)  # any loss, one the label check knows or not


def refuse_unusable_loss(loss_fn: Callable, out: torch.Tensor, y, name: str) -> None:
    """Refuse, naming what it returned and the fix, a ``loss_fn`` (called ``name``) whose value on output
    ``out`` and targets ``y`` (the first held-out batch) the optimisation cannot use: anything but a real
    floating-point tensor of one element, or one not connected to the output (its gradient scores every
    mask: a loss computed from ``output.detach()``, under ``torch.no_grad()``, through ``.item()`` or
    NumPy). Checked for any loss (a lambda, a function, a loss module with a ``forward`` of its own),
    on a copy of ``out`` that requires grad (the model's own weights may not), in one call: no
    backward pass, nothing of the model read or changed, every global random generator put back. A
    value of NaN or inf is left to the dense network's held-out evaluation, which refuses it (on the
    whole holdout) before any synapse is removed."""
    if not out.is_floating_point():  # (no gradient to follow: the model's own output type is checked elsewhere)
        return
    try:
        # every global generator put back: a loss that draws (random negatives, a dropout of its own) would
        # otherwise start the run from other states than it did before this check, and choose other masks
        with torch.enable_grad(), kept_global_rng():
            # a non-leaf copy, so that a loss working in place on its input (out.clamp_()) runs as in training
            value = loss_fn(out.detach().requires_grad_(True).clone(), y)
    except Exception as e:
        e.add_note(f"adaptive: loss_fn {name}(output, targets) failed on the first held-out batch (output "
                   f"{tuple(out.shape)}, targets {_shape_of(y)}), checked before any work; nothing was changed")
        raise
    fix = None
    if not torch.is_tensor(value) or value.numel() != 1:
        what = (f"a tensor of shape {tuple(value.shape)}" if torch.is_tensor(value) else
                f"a {type(value).__name__} ({value!r})" if isinstance(value, (int, float)) else f"a {type(value).__name__}")
        fix = ("return the batch's mean loss as a tensor, F.cross_entropy(output, targets) say (not loss.item(), a "
               "number, nor a tuple or dict of terms: add them up)" if not torch.is_tensor(value) else
               "reduce it to the batch's mean (.mean(), or the loss's reduction='mean')")
    elif not value.is_floating_point():
        what = f"a {str(value.dtype).replace('torch.', '')} tensor ({value.detach().cpu()!r})"
        fix = ("return a real floating-point loss (for a complex output, its real loss: .abs() or .real of the terms "
               "before the mean)" if value.is_complex() else
               "return a floating-point loss computed from the output (a count of errors has no gradient: use a "
               "differentiable loss such as F.cross_entropy)")
    elif not value.requires_grad:
        what = f"a tensor that is not connected to the model's output ({value.detach().cpu()!r}: it does not require grad)"
        fix = ("compute it from the output with torch operations, without output.detach(), torch.no_grad(), "
               "loss.item() or NumPy: its gradient through the output scores every synapse")
    if fix is not None:
        raise ValueError(f"loss_fn {name}(output, targets) must return a scalar loss tensor (the mean over the batch), "
                         f"real and connected to the model's output; on the first held-out batch (output "
                         f"{tuple(out.shape)}, targets {_shape_of(y)}) it returned {what}: {fix}. Nothing was changed")


def _shape_of(v) -> str:
    return str(tuple(v.shape)) if torch.is_tensor(v) else type(v).__name__


def _agreed(*values: float) -> List[float]:
    """``values`` averaged over processes (as they are on one process). Every process scores the
    same held-out batches, but kernels may differ in their last bits between devices: decisions
    taken on these numbers (line search, the rung to keep) must see one value everywhere."""
    t = torch.tensor(values, dtype=torch.float64)
    all_reduce_mean_([t])
    return t.tolist()
