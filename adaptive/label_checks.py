"""Whether a batch's targets fit the model's output for the loss, checked before the loss is called.

PyTorch's own errors for a mismatch come from deep inside the loss ("Target 63 is out of bounds", "0D or
1D target tensor expected, multi-target not supported"), on a GPU as a device-side assert that leaves
the CUDA context unusable, and some mismatches pass silently (``F.mse_loss`` of a ``(B, 1)`` output and
``(B,)`` targets broadcasts to ``(B, B)``). :func:`refuse_mismatched_targets` names the mismatch, what
the model gives against what the data holds, and the fix, for the losses whose contract it knows:
cross-entropy and negative log-likelihood (class indices ``0..C-1`` of the output's shape without its
class axis 1; for cross-entropy also class probabilities of the output's shape) and the element-wise losses (targets of the
output's shape). Any other loss is the caller's to check, a subclass whose ``forward`` is its own included.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

_CLASS_LOSSES = (F.cross_entropy, F.nll_loss)
_CLASS_MODULES = (nn.CrossEntropyLoss, nn.NLLLoss)
_ELEMENTWISE_LOSSES = (F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss, F.binary_cross_entropy,
                       F.binary_cross_entropy_with_logits)
_ELEMENTWISE_MODULES = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss, nn.BCELoss, nn.BCEWithLogitsLoss)


def _kind(loss_fn):
    """``(kind, ignore_index)``: "class" (cross-entropy, NLL), "elementwise" or None (a loss not known
    here), and the label a class loss ignores (-100 unless bound otherwise)."""
    ignore = -100
    while isinstance(loss_fn, functools.partial):  # F.cross_entropy with label_smoothing= bound, say
        ignore = loss_fn.keywords.get("ignore_index", ignore)
        loss_fn = loss_fn.func
    if loss_fn in _CLASS_LOSSES or _stock(loss_fn, _CLASS_MODULES):
        return "class", int(getattr(loss_fn, "ignore_index", ignore))
    if loss_fn in _ELEMENTWISE_LOSSES or _stock(loss_fn, _ELEMENTWISE_MODULES):
        return "elementwise", None
    return None, None


def _plain(loss_fn):
    """``loss_fn`` without its ``functools.partial`` wrappers."""
    while isinstance(loss_fn, functools.partial):
        loss_fn = loss_fn.func
    return loss_fn


def is_cross_entropy(loss_fn) -> bool:
    """Whether ``loss_fn`` is cross-entropy as torch defines it: ``F.cross_entropy`` (with arguments
    bound by ``functools.partial``) or an ``nn.CrossEntropyLoss`` with the stock ``forward`` (a
    subclass of its own ``forward`` has its own contract: :func:`_stock`)."""
    loss_fn = _plain(loss_fn)
    return loss_fn is F.cross_entropy or _stock(loss_fn, (nn.CrossEntropyLoss,))


def _is_nll(loss_fn) -> bool:
    """Whether ``loss_fn`` is negative log-likelihood (``F.nll_loss``, a stock ``nn.NLLLoss``)."""
    loss_fn = _plain(loss_fn)
    return loss_fn is F.nll_loss or _stock(loss_fn, (nn.NLLLoss,))


def _ignoring(loss_fn, label: int) -> str:
    """``loss_fn`` in the form it was given (a loss module or a function), written with ``label`` as
    the label it ignores: ``nn.CrossEntropyLoss(ignore_index=-1)``, ``functools.partial(F.nll_loss, ignore_index=-1)``."""
    plain = _plain(loss_fn)
    if isinstance(plain, nn.Module):
        return f"nn.{'NLLLoss' if _is_nll(plain) else 'CrossEntropyLoss'}(ignore_index={label})"
    return f"functools.partial(F.{'nll_loss' if _is_nll(plain) else 'cross_entropy'}, ignore_index={label})"


def _stock(loss_fn, modules) -> bool:
    """Whether ``loss_fn`` is one of the loss ``modules`` with its own ``forward``: a subclass that
    overrides it (squeezing ``(B, 1)`` labels, reshaping the output) has a contract of its own."""
    return isinstance(loss_fn, modules) and any(type(loss_fn).forward is m.forward for m in modules)


def refuse_mismatched_targets(out, y, loss_fn, what: str = "loss_fn") -> None:
    """ValueError naming the mismatch and its fix where targets ``y`` cannot be scored against output
    ``out`` by ``loss_fn`` (``what`` names it in the message): for cross-entropy and NLL, integer labels
    not of the output's shape without its class axis 1, of a type torch's losses refuse (int32: int64
    and uint8 only), or labels outside ``0..C-1`` for an output of C
    classes (the ignored label, -100 by default, aside); for cross-entropy, float targets not of the
    output's shape (class probabilities); for NLL, float targets at all; for the element-wise losses, targets not of the output's shape. Nothing for other
    losses, or where ``out`` or ``y`` is no tensor. Reads ``y`` on the host once (its largest and smallest label)."""
    ignore = _labels_to_range_check(out, y, loss_fn, what)
    if ignore is _NO_RANGE:
        return
    # the smallest and largest scored label in one read from the device (a boolean index would be a second)
    labels = y.reshape(-1).long()
    if labels.numel() == 0:
        return
    scored = labels != ignore if ignore is not None else torch.ones_like(labels, dtype=torch.bool)
    big = torch.iinfo(torch.int64)
    any_scored, low, high = (int(v) for v in torch.stack([
        scored.any().long(), torch.where(scored, labels, big.max).min(), torch.where(scored, labels, big.min).max()]).tolist())
    if not any_scored:
        return
    refuse_labels_outside(low, high, tuple(out.shape), loss_fn)


_NO_RANGE = object()  # what _labels_to_range_check returns where no label range is to be checked


def _labels_to_range_check(out, y, loss_fn, what: str):
    """The checks of :func:`refuse_mismatched_targets` that read nothing on the host (shapes and types),
    raising as it does; then the label a class loss ignores (None: none) where ``y``'s labels are class
    indices whose range is still to be checked, else :data:`_NO_RANGE`."""
    if not (torch.is_tensor(out) and torch.is_tensor(y)) or out.dim() == 0:
        return _NO_RANGE
    kind, ignore = _kind(loss_fn)
    shape_o, shape_y = tuple(out.shape), tuple(y.shape)
    if kind == "elementwise":
        if shape_y != shape_o:
            fix = (f"give targets of the output's shape (the same values: y.reshape{shape_o}, in the dataset or its "
                   "collate_fn)" if out.numel() == y.numel() else
                   f"give the model {_per_example(shape_y)} output(s) per example, the targets' "
                   f"{_per_example(shape_y)}, or targets of the output's shape")
            raise ValueError(
                f"{what} compares the model's output with targets of the same shape, but the output is {shape_o} and "
                f"the targets {shape_y} (torch would broadcast them, or fail): {fix}")
        return _NO_RANGE
    if kind != "class" or out.dim() < 2:
        return _NO_RANGE
    classes = shape_o[1]
    if y.is_floating_point() and _is_nll(loss_fn):  # NLL takes class indices only: no probabilities
        raise ValueError(
            f"{what} (negative log-likelihood) takes integer class indices, but the targets are {y.dtype} {shape_y}: "
            f"give integer class labels of shape {(shape_o[0],) + shape_o[2:]} (y.long() where they hold whole "
            f"numbers); for class probabilities of the output's shape use F.cross_entropy on logits, for a "
            f"regression its loss (loss_fn=F.mse_loss)")
    if y.is_floating_point():  # class probabilities (soft labels): the output's shape
        if shape_y != shape_o:
            raise ValueError(
                f"{what} takes floating-point targets as class probabilities of the output's shape, but the model "
                f"gives {shape_o} ({classes} classes on axis 1) and the targets are {shape_y}: for class labels give "
                f"integer class indices of shape {(shape_o[0],) + shape_o[2:]}; for a regression pass its loss "
                f"(loss_fn=F.mse_loss) and a model with {_per_example(shape_y)} outputs per example")
        return _NO_RANGE
    if y.is_complex() or y.dtype == torch.bool:
        return _NO_RANGE
    wanted = (shape_o[0],) + shape_o[2:]
    if shape_y != wanted:
        # a sequence model's (batch, time, classes) output with (batch, time) labels: torch's class losses want the
        # classes on axis 1, so such a model needs a loss that moves them there (a language model's usual layout)
        last = (" The targets are the output's shape without its last axis, as a sequence model's (batch, time, "
                "classes) output with (batch, time) labels has: pass loss_fn=lambda out, y: "
                "F.cross_entropy(out.flatten(0, -2), y.flatten()), which reads the classes on the last axis."
                if len(shape_o) > 2 and shape_y == shape_o[:-1] else "")
        raise ValueError(
            f"{what} takes one class index per example (per position), of shape {wanted} for the model's output "
            f"{shape_o} ({classes} classes on axis 1), but the targets are {shape_y}: give integer class labels of "
            f"that shape, or pass the loss these targets are for as loss_fn= (F.mse_loss for regression values, "
            f"F.binary_cross_entropy_with_logits for multi-label 0/1 targets, on float targets).{last}")
    if y.dtype not in (torch.int64, torch.uint8):  # torch's class losses take int64 (or uint8) indices only
        raise ValueError(
            f"{what} takes class indices as int64 (torch.long), but the targets are {str(y.dtype).replace('torch.', '')}"
            f" {shape_y} (torch refuses them deep inside the loss): give int64 labels, y.long() (in the dataset, a "
            f"target_transform or the DataLoader's collate_fn)")
    return ignore


def refuse_labels_outside(low: int, high: int, shape_o: tuple, loss_fn) -> None:
    """ValueError naming the labels outside ``0..C-1`` and the fix, where a batch's smallest and largest scored label
    (the ignored one aside), ``low`` and ``high``, do not fit an output of shape ``shape_o`` (C classes on axis 1)
    for the class loss ``loss_fn``; nothing where they fit."""
    classes, ignore = shape_o[1], _kind(loss_fn)[1]
    if high >= classes:
        raise ValueError(
            f"the model gives {classes} classes (output {shape_o}, class axis 1), but this batch's labels go up to {high}: labels "
            f"are class indices 0..{classes - 1}, so the data has at least {high + 1} classes. Give a model with a head "
            f"of the data's classes (num_classes={high + 1} or more, with weights trained on those classes; the "
            f"recipes' --num-classes), or data labelled 0..{classes - 1}")
    if low < 0:
        raise ValueError(
            f"the labels include {low}, but labels are class indices 0..{classes - 1} for the model's {classes} "
            f"classes (output {shape_o}); only {ignore} marks a position to ignore: relabel the data 0..{classes - 1}, "
            f"or bind the label you use for ignored positions ({_ignoring(loss_fn, low)})")


def refuse_batch_targets(out, y, loss_fn, where: str) -> None:
    """:func:`refuse_mismatched_targets` for one batch of a loop (``where``: which batch, named in a note),
    before ``loss_fn`` is called on it: a check of the first batch alone let a label beyond the head in a later
    batch (a loader ordered by class passes it) reach torch's loss, a bare "Target 12 is out of bounds" (on a
    GPU a device-side assert, which leaves the CUDA context unusable). Nothing for losses not known here; for
    a class loss it reads the batch's smallest and largest label on the host."""
    name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
    try:
        refuse_mismatched_targets(out, y, loss_fn, f"loss_fn {name}")
    except ValueError as e:
        e.add_note(f"adaptive: found in {where}")
        raise


def guarded_batch_targets(out, y, loss_fn, where: str):
    """``(targets, found)`` for one batch of a loop that must read nothing on the host per batch (a GPU would wait on
    every read), before ``loss_fn`` is called on it: the checks of :func:`refuse_mismatched_targets` that read nothing
    (shapes, types) raise here, ``where`` (which batch) in a note. Class indices' range is checked on the device
    instead: ``found`` is a 1-d int64 tensor on ``y``'s device, ``[outside, low, high]`` (whether any scored label lies
    outside ``0..C-1``, the smallest and largest scored label), for the loop to read with its other sums and refuse with
    :func:`refuse_labels_outside` before it acts on the batch; ``targets`` is ``y`` with those labels replaced by the
    ignored one (0 for uint8 labels, which cannot hold it), so that torch's loss, called on them, neither fails nor, on
    a GPU, stops at a device-side assert (which leaves the CUDA context unusable). The other labels are ``y``'s, so
    the loss of a batch whose labels fit is the same. ``(y, None)`` where no range is to be checked."""
    name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
    try:
        ignore = _labels_to_range_check(out, y, loss_fn, f"loss_fn {name}")
    except ValueError as e:
        e.add_note(f"adaptive: found in {where}")
        raise
    if ignore is _NO_RANGE or y.numel() == 0:
        return y, None
    labels = y.long()
    scored = labels != ignore if ignore is not None else torch.ones_like(labels, dtype=torch.bool)
    outside = scored & ((labels < 0) | (labels >= out.shape[1]))
    big = torch.iinfo(torch.int64)
    found = torch.stack([outside.any().long(), torch.where(scored, labels, big.max).min(),
                         torch.where(scored, labels, big.min).max()])
    fill = ignore if ignore is not None and y.dtype == torch.int64 else 0
    return torch.where(outside, fill, y), found


def _per_example(shape) -> int:
    """The values per example of a tensor of ``shape`` (its first axis the examples)."""
    n = 1
    for d in shape[1:]:
        n *= d
    return n
