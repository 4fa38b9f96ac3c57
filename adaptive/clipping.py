"""Gradient-norm clipping measured on the gradients the optimizer uses.

A connectome weight's ``.grad`` is dense (absent synapses included) at the steps where an observer
reads it (growth scores need the gradient where no synapse is) and already masked at the others,
where :mod:`adaptive.grad_masking` masks it inside backward; either way the step masks it before
the optimizer uses it. ``torch.nn.utils.clip_grad_norm_`` on ``.grad`` would therefore measure a
larger norm at observation steps, and clip the same live gradient by another factor depending on
whether the controller happened to observe that step.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch

from .exact_masking import masked


@torch.no_grad()
def clip_gradients(parameters: Iterable[torch.nn.Parameter] | torch.Tensor, max_norm: float, conn=None, *, accelerator=None,
                   norm_type: float = 2.0, foreach: Optional[bool] = None) -> torch.Tensor:
    """Scale the gradients of ``parameters`` so that their total ``norm_type`` norm is at most
    ``max_norm``, as ``torch.nn.utils.clip_grad_norm_`` does, but with the norm taken over the
    gradients the optimizer will use: each weight of ``conn`` (a :class:`~adaptive.Connectome`)
    counts with its live gradient (``.grad`` with exact zeros where pruned: an inf or NaN there, in a
    dense gradient, does not reach the norm), every other parameter with its ``.grad``.
    The clip factor is then the same whether or not ``.grad`` still holds the dense gradient at
    pruned positions (an observation step), and every gradient, dense ones included, is scaled by
    it, so observers that run before the step see the clipped gradient.

    Call it after the last backward of a step and before ``optimizer.step()``: with gradient
    accumulation only where ``accelerator.sync_gradients`` (across processes the gradients are then
    averaged by DDP, so every process computes the same factor; given ``accelerator``, a call on a
    batch it accumulates without stepping is refused). ``accelerator`` (Accelerate's):
    its gradients are unscaled first (``accelerator.unscale_gradients()``), as
    ``accelerator.clip_grad_norm_`` does under fp16 mixed precision. ``foreach``: as torch's.
    ``parameters`` may be a single tensor, as for torch's.
    Returns the total norm before clipping (a 0-d tensor; non-finite if a gradient is)."""
    try:
        limit = float(max_norm)  # (a NumPy or 0-d tensor number too)
    except (TypeError, ValueError):
        limit = math.nan
    if not (math.isfinite(limit) and limit > 0):
        raise ValueError(f"clip_gradients: max_norm must be a finite number > 0, got {max_norm!r}")
    if accelerator is not None and getattr(accelerator, "gradient_accumulation_steps", 1) > 1 \
            and not accelerator.sync_gradients:
        k = accelerator.gradient_accumulation_steps
        raise RuntimeError(
            f"clip_gradients on a batch that Accelerate accumulates without an optimizer step (accelerator."
            f"sync_gradients is False; gradient_accumulation_steps {k}): .grad holds part of the group's gradient, "
            "and clipping it scales those batches by a factor of their partial norm (and, under fp16, unscales them "
            "before the rest are added still scaled); nothing was clipped. Clip once per step, on the whole group's "
            "gradient: `if accelerator.sync_gradients: clip_gradients(...)`")
    if isinstance(parameters, torch.Tensor):  # iterated, it would give its rows, none with a .grad: nothing clipped
        parameters = [parameters]
    params = [p for p in parameters if p.grad is not None]
    if accelerator is not None:
        accelerator.unscale_gradients()
    masks = {}
    if conn is not None:
        _, weights, imasks = conn._hot_lists()  # layers with pruned synapses; 0/1 masks on each weight's device
        masks = {id(p): f for p, f in zip(weights, imasks)}
    live = [masked(p.grad, masks[id(p)]) if id(p) in masks else p.grad for p in params]
    total = torch.nn.utils.get_total_norm(live, norm_type, foreach=foreach)
    torch.nn.utils.clip_grads_with_norm_(params, limit, total, foreach=foreach)
    return total


def clip_factor(total: torch.Tensor, max_norm: float) -> torch.Tensor:
    """The factor torch's clipping multiplies every gradient by, computed as it does (in the norm's
    dtype): ``min(1, max_norm / (total + 1e-6))``. Below 1 also for a norm a hair under ``max_norm``
    (within the 1e-6), and exactly 1 for one a hair above it where ``total + 1e-6`` rounds to
    ``total``; ``factor < 1`` is what "this step was clipped" means. ``max_norm`` is taken as a
    Python float, as torch takes it (a float64 0-d tensor would otherwise compute in float64)."""
    return torch.clamp(float(max_norm) / (total + 1e-6), max=1.0)
