"""Loss and accuracy of a batch: the contract shared by mask-only optimisation
(:func:`adaptive.mask_only.evaluate`, the training window of
:func:`adaptive.mask_only.optimize_connectome`) and :func:`adaptive.diagnostics.knowledge_distribution`.

Accuracy is counted only where it means something. The default, :func:`default_accuracy`, counts it
for classification shapes: integer targets of the output's shape without its class axis 1
(``y.shape == out.shape[:1] + out.shape[2:]``), so ``(B, C)`` logits with ``(B,)`` labels count one
per example and a ``(B, C, T)`` tagger with ``(B, T)`` labels counts one per position; positions
labelled ``-100`` (``F.cross_entropy``'s ``ignore_index``) are not counted. Anything else (regression,
one-logit BCE, probability or smoothed targets, ``(B, T, C)`` outputs) has *no accuracy*: ``None``,
shown as n/a, never 0. Pass ``accuracy_fn=(out, y) -> (correct, count)`` (or ``None`` for a batch it
cannot score) to count it your way, or ``accuracy_fn=None`` to turn it off.

Loss is averaged over the same units: for classification shapes over the counted positions
(``loss_fn(out, y, reduction="sum")`` divided by them, or, for a ``loss_fn`` without a ``reduction``
argument, its mean times their number), otherwise over examples (the mean ``loss_fn(out, y)``
returns, weighted by the batch's examples, ``y.shape[0]``).
"""
from __future__ import annotations

import inspect
import numbers
import re
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from .label_checks import is_cross_entropy, refuse_mismatched_targets

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index: such positions are neither scored nor counted

AccuracyFn = Callable[[torch.Tensor, torch.Tensor], Optional[Tuple[float, int]]]


def is_class_target(out, y) -> bool:
    """Whether ``(out, y)`` have classification shapes: integer ``y`` with ``y.shape ==
    out.shape[:1] + out.shape[2:]`` (the class axis of ``out`` is 1) and at least two classes (a
    single logit with 0/1 labels is a binary score, whose argmax is always 0)."""
    return (torch.is_tensor(out) and torch.is_tensor(y) and out.dim() >= 2 and out.shape[1] >= 2
            and not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)
            and tuple(y.shape) == (out.shape[0],) + tuple(out.shape[2:]))


def _counted(y: torch.Tensor) -> Optional[torch.Tensor]:
    """The mask of counted positions, or None when every position counts (no ``-100`` label)."""
    ignored = y == IGNORE_INDEX
    return ~ignored if bool(ignored.any()) else None


def default_accuracy(out, y) -> Optional[Tuple[int, int]]:
    """``(correct, count)`` of ``out.argmax(1) == y`` for classification shapes (see
    :func:`is_class_target`; positions labelled -100 not counted), None for anything else."""
    if not is_class_target(out, y):
        return None
    hit = out.argmax(1) == y
    keep = _counted(y)
    if keep is None:
        return int(hit.sum()), int(y.numel())
    return int((hit & keep).sum()), int(keep.sum())


def example_count(y) -> int:
    """Examples in a batch of targets ``y``: its first dimension (1 for a 0-d tensor)."""
    if torch.is_tensor(y):
        return int(y.shape[0]) if y.dim() else 1
    return len(y)


def loss_weight(out, y) -> int:
    """The units a batch's mean loss stands for: counted positions for classification shapes
    (``y.numel()`` less the -100 labels), examples otherwise."""
    if is_class_target(out, y):
        keep = _counted(y)
        return int(y.numel()) if keep is None else int(keep.sum())
    return example_count(y)


def batch_sums(accuracy_fn: Optional[AccuracyFn], out, y):
    """``(units, accuracy)`` of a training batch as :func:`loss_weight` and :func:`batch_accuracy`
    give them, with what they count on the host left on the device: for classification shapes the
    units are a 0-d tensor, and under :func:`default_accuracy` ``accuracy`` is ``(correct, count)``
    as 0-d tensors (or None). Their sums hold the same numbers; a training loop adds them each step
    and reads them on the host at its updates only (``bool(t.any())`` or ``int(t.sum())`` every
    step would stall a GPU). Another ``accuracy_fn`` is called and checked as
    :func:`batch_accuracy` does (its checks read its result on the host)."""
    cls = is_class_target(out, y)
    units = (y != IGNORE_INDEX).sum() if cls else example_count(y)
    if accuracy_fn is not default_accuracy:
        return units, batch_accuracy(accuracy_fn, out, y)
    if not cls:
        return units, None
    return units, (((out.argmax(1) == y) & (y != IGNORE_INDEX)).sum(), units)


def batch_accuracy(accuracy_fn: Optional[AccuracyFn], out, y) -> Optional[Tuple[float, int]]:
    """``accuracy_fn(out, y)`` checked: None (no accuracy) or ``(correct, count)`` with
    ``0 <= correct <= count``; a clear error for anything else."""
    if accuracy_fn is None:
        return None
    r = accuracy_fn(out, y)
    if r is None:
        return None
    try:
        correct, count = r
        correct = correct.item() if torch.is_tensor(correct) else correct
        count = count.item() if torch.is_tensor(count) else count
        ok = 0 <= correct <= count and float(count) == int(count)
    except (TypeError, ValueError, RuntimeError):
        ok = False
    if not ok:
        raise ValueError(f"accuracy_fn must return (correct, count) with 0 <= correct <= count (an integer), or None "
                         f"for no accuracy; {getattr(accuracy_fn, '__name__', accuracy_fn)!r} returned {r!r}")
    return correct, int(count)


def call_model(model, x, what: str = "this"):
    """``model(x)``: a batch's inputs go to the model as one argument, a tuple or list of them too. A model
    whose forward takes them as separate arguments (``forward(self, x, y)``) fails inside that call with
    a bare TypeError: it gets one naming the contract and the fix (:func:`refuse_unpacked`); one whose
    weights are of another floating-point type than the inputs (a float64 model, float32 data) fails
    with torch's RuntimeError: it gets a TypeError naming both types and the fix (:func:`refuse_mixed_dtypes`)."""
    try:
        return model(x)
    except TypeError as e:
        refuse_unpacked(model, x, what, e)
        raise
    except RuntimeError as e:
        refuse_mixed_dtypes(model, x, what, e)
        raise


# the method that converts a module or tensor to each floating-point type (model.float(), x.double())
_CASTS = {torch.float32: "float", torch.float64: "double", torch.float16: "half", torch.bfloat16: "bfloat16"}
# how torch's messages name each floating-point type ('Float and Double', 'Input type (float) and bias type
# (double)', 'torch.FloatTensor', 'torch.float64'), as whole words: 'float' is no part of 'BFloat16'
_NAMES = {torch.float32: ("float", "float32", "floattensor"), torch.float64: ("double", "float64", "doubletensor"),
          torch.float16: ("half", "float16", "halftensor"), torch.bfloat16: ("bfloat16", "bfloat16tensor")}
# ... and the other types (integers, booleans, complex numbers): a message naming one is about them
_OTHER_NAMES = ("long", "int", "short", "char", "byte", "bool", "int8", "int16", "int32", "int64", "uint8", "longtensor",
                "inttensor", "bytetensor", "booltensor", "complexfloat", "complexdouble", "complexhalf", "complex64",
                "complex128", "cfloat", "cdouble")


def _names(message: str, words) -> bool:
    """Whether torch's error ``message`` names a type by one of ``words``, as a whole word."""
    return any(re.search(rf"(?<![a-z0-9]){w}(?![a-z0-9])", message.lower()) for w in words)


def _about(message: str, i: torch.dtype, w: torch.dtype) -> bool:
    """Whether torch's error ``message`` is about floating-point types ``i`` and ``w`` alone: it names one
    of them or both ('Float and Double'; a norm's 'expect parameter to have scalar type of Float') and no
    other ('Long, Int; but got torch.FloatTensor', 'BFloat16 and Double' under autocast)."""
    others = [n for t, names in _NAMES.items() if t not in (i, w) for n in names] + list(_OTHER_NAMES)
    return (_names(message, _NAMES.get(i, ())) or _names(message, _NAMES.get(w, ()))) and not _names(message, others)


def refuse_mixed_dtypes(model, x, what: str, cause: BaseException) -> None:
    """A TypeError when ``model(x)`` failed with ``cause`` (torch's RuntimeError about their types and no
    other, :func:`_about`: 'mat1 and mat2 must have the same dtype, but got Float and Double') where the
    floating-point inputs ``x`` (a tensor, or a tuple, list or dict of them) are all of one type and the
    model's floating-point weights all of another, on the inputs' device: the error names both and the fix. Otherwise nothing (torch's
    error stands): a model that converts its inputs itself and fails for another reason ('Expected dtype
    int64 for index': float inputs used as indices, as an embedding's ids or a loss's labels), or one whose
    inputs are on another device too (the type alone is not the fix)."""
    message = str(cause)
    given = x.values() if isinstance(x, dict) else x if isinstance(x, (tuple, list)) else (x,)
    given = [t for t in given if isinstance(t, torch.Tensor) and t.is_floating_point()]
    params = [p for p in model.parameters() if p.is_floating_point()]
    inputs, weights = {t.dtype for t in given}, {p.dtype for p in params}
    if len(inputs) != 1 or len(weights) != 1 or inputs == weights:
        return
    (i,), (w,) = inputs, weights
    if ("type" not in message.lower() or not _about(message, i, w)
            or {t.device for t in given} != {p.device for p in params}):
        return  # torch's error is about something else (too): it stands
    fixes = [f"model.{_CASTS[i]}()" if i in _CASTS else f"model.to({i})",
             f"x.{_CASTS[w]}()" if w in _CASTS else f"x.to({w})"]
    raise TypeError(f"{what}: the model's weights are {w} but the batch's inputs are {i}, and the model does not "
                    f"convert them (torch: {message.splitlines()[0]}): give both one type, the model the inputs' "
                    f"({fixes[0]}) or the inputs the model's ({fixes[1]} in the data), before the call") from cause


def refuse_unpacked(model, x, what: str, cause: Optional[BaseException] = None) -> None:
    """A TypeError when the inputs ``x``, a tuple or list, fit ``model.forward`` only as separate arguments.
    Under a forward pre-hook, which may unpack them (then ``model(x)`` works), only when ``cause``, the
    TypeError ``model(x)`` raised, shows that the call into that forward failed (:func:`_failed_binding`)."""
    if not isinstance(x, (tuple, list)):
        return
    inner, hooked = _forward_owner(model)
    if hooked and (cause is None or not _failed_binding(cause, inner.forward)):
        return
    if _binds_unpacked(inner.forward, x):
        raise TypeError(
            f"{what} passes a batch's inputs to the model as one argument, model(inputs); {type(inner).__name__}."
            f"forward takes them as {len(x)} separate arguments: wrap it in a module whose forward takes them as "
            "one, for example `def forward(self, inputs): return self.net(*inputs)`"
        ) from cause


def _forward_owner(model):
    """``(module, hooked)``: the module whose forward ``model(x)`` runs on ``x``, the wrapped model under
    ``nn.DataParallel``, DistributedDataParallel and ``torch.compile`` (whose own forwards take ``*args``),
    and whether a forward pre-hook (``with_kwargs`` too) on the way may rewrite the arguments (unpack
    them), so that no signature tells what that forward gets."""
    from torch import nn

    hooked = False
    while True:
        hooked = hooked or bool(getattr(model, "_forward_pre_hooks", None))
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if inner is None and isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model, hooked
        model = inner


def _failed_binding(error: BaseException, forward) -> bool:
    """Whether ``error`` was raised calling ``forward`` (its arguments did not bind), not by a hook or inside
    it: torch's module call is the innermost frame of its traceback, ``forward``'s code runs in none, and
    the error is Python's binding error naming ``forward`` ("Net.forward() missing 1 required positional
    argument"), not one a hook with the wrong signature got there (a forward hook's ``<lambda>() takes 2
    positional arguments``, raised after forward had run on the arguments a pre-hook unpacked)."""
    import traceback

    function = inspect.unwrap(getattr(forward, "__func__", forward))
    code = getattr(function, "__code__", None)
    last = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code is code:
            return False
        last = frame
    path = last.f_code.co_filename.replace("\\", "/") if last is not None else ""
    return (code is not None and path.endswith("torch/nn/modules/module.py")
            and str(error).startswith(f"{function.__qualname__}("))


def _binds_unpacked(forward, x) -> bool:
    """Whether ``forward`` accepts the items of ``x`` as its arguments but not ``x`` as one."""
    try:
        sig = inspect.signature(forward)
    except (TypeError, ValueError):
        return False
    try:
        sig.bind(x)
        return False
    except TypeError:
        pass
    try:
        sig.bind(*x)
        return True
    except TypeError:
        return False


def check_output(out, model, what: str = "this") -> torch.Tensor:
    """``out`` when it is the tensor of logits (or predictions) ``what`` needs; a clear TypeError otherwise
    (a dict, a tuple, an object with ``.logits``)."""
    if not torch.is_tensor(out):
        raise TypeError(
            f"{what} needs a model that returns a tensor (the logits, class axis 1); {type(model).__name__} returned "
            f"a {type(out).__name__}: wrap it in a module whose forward returns that tensor "
            "(for example `lambda x: model(x).logits` as an nn.Module, or `model(x)[0]`)"
        )
    return out


def refuse_one_class(out, what: str = "F.cross_entropy", loss_fn=F.cross_entropy) -> None:
    """Refuse cross-entropy over an output with one channel on its class axis 1 (an autoencoder's or a
    generator's image, a single regression value): log-softmax over one class is 0, so the loss is 0
    for every input and every gradient is 0, and whatever is measured from it is silently nothing.
    Cross-entropy is :func:`adaptive.label_checks.is_cross_entropy`'s: a subclass of
    ``nn.CrossEntropyLoss`` with a ``forward`` of its own (over a reshaped output, say) is not refused."""
    if (is_cross_entropy(loss_fn) and torch.is_tensor(out) and out.dim() >= 2 and out.shape[1] == 1
            and out.is_floating_point()):
        raise ValueError(
            f"{what} over an output with one channel on its class axis 1 (output {_shape(out)}) is 0 for "
            "every input, and so is every gradient: cross-entropy needs at least 2 classes. Pass the loss "
            "of your task as loss_fn=: F.mse_loss for a regression, an autoencoder or a generator, "
            "F.binary_cross_entropy_with_logits for one logit")


def takes_reduction(loss_fn: Callable, out, y) -> bool:
    """Check ``loss_fn`` on one batch before any work: the targets must fit the output
    (:func:`adaptive.label_checks.refuse_mismatched_targets`) and ``loss_fn(out, y)`` must give a scalar loss.
    Returns whether its ``reduction="sum"`` can be used: it takes that argument, gives a scalar, and
    that sum is the mean times the batch's units (:func:`loss_weight`). A loss without the argument,
    or one whose mean is not over those units (class weights: ``F.cross_entropy(weight=...)`` divides
    by the summed weights), is used as mean x units, as in the training window."""
    name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
    refuse_one_class(out, f"loss_fn {name}", loss_fn)
    refuse_mismatched_targets(out, y, loss_fn, f"loss_fn {name}")
    try:
        mean = loss_fn(out, y)
    except Exception as e:
        e.add_note(f"adaptive: loss_fn {name}(output, targets) failed on the first batch (output "
                   f"{_shape(out)}, targets {_shape(y)}), checked before any work")
        raise
    if not torch.is_tensor(mean) or mean.numel() != 1:
        raise ValueError(f"loss_fn {name}(output, targets) must return a scalar loss tensor (the mean over the batch); "
                         f"it returned {_shape(mean)} on the first batch")
    try:
        params = inspect.signature(loss_fn).parameters.values()
        declared = any(p.name == "reduction" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):  # a builtin without a signature: try it
        declared = True
    if not declared:
        return False
    try:
        total = loss_fn(out, y, reduction="sum")
    except TypeError as e:
        if "reduction" in str(e):
            return False
        raise
    if not torch.is_tensor(total) or total.numel() != 1:
        raise ValueError(f"loss_fn {name}(output, targets, reduction='sum') must return a scalar loss tensor; it "
                         f"returned {_shape(total)} on the first batch")
    if is_class_target(out, y):  # the sum must be the mean over the units the accuracy counts
        units = loss_weight(out, y)
        mean_f, total_f = float(mean.detach().double()), float(total.detach().double())
        if abs(total_f - mean_f * units) > 1e-4 * max(abs(total_f), 1e-8) + 1e-6:
            return False
    return True


def _shape(v) -> str:
    return f"a tensor of shape {tuple(v.shape)}" if torch.is_tensor(v) else f"a {type(v).__name__}"


def batch_loss(loss_fn: Callable, out, y, reduction: bool) -> Tuple[float, int]:
    """``(loss summed over the batch's units, units)``: with ``reduction="sum"`` over the counted positions
    for classification shapes when ``loss_fn`` takes it, else the mean ``loss_fn`` returns times
    :func:`loss_weight`. A batch with no unit to score (every label the ignored one, -100) adds nothing:
    ``(0.0, 0)``, where its mean loss, NaN, times 0 would have made the whole sum NaN."""
    n = loss_weight(out, y)
    if n == 0:
        return 0.0, 0
    if reduction and is_class_target(out, y):
        return float(loss_fn(out, y, reduction="sum")), n
    return float(loss_fn(out, y)) * n, n


def to_device(obj, device):
    """``obj`` with every tensor in it (nested tuples, lists, dicts) moved to ``device``; a no-op for
    ``device`` None and for tensors already there."""
    if device is None:
        return obj
    from torch.utils._pytree import tree_map

    return tree_map(lambda t: t.to(device, non_blocking=True) if torch.is_tensor(t) else t, obj)


def fmt_unsaturated(value: float, spec: str, bounds=(0.0, 100.0)) -> str:
    """``format(value, spec)``, with the decimals (``f``) or significant digits (``g``) it needs where
    that text would read as one of ``bounds`` (0 or 100 for a percentage; 0 or 1 for a fraction) and
    ``value`` is not exactly it: 99.996% is "99.996", not "100.00" (every one), and a drop of 0.002
    points "0.002", not "0.00" (none). Anything else (NaN, inf, a value off the bounds, a spec of
    another kind) is ``format(value, spec)`` as it is; None is "n/a". A NumPy number is one too (an
    np.float32 accuracy of 0.99999 is "99.999", not "100.00"); one too close to a bound for 18 decimals
    (a loss of 1e-30) is written in ``e`` notation ("1.0e-30"), not as eighteen zeros that read as 0."""
    if value is None:
        return "n/a"
    text = format(value, spec)
    parts = re.fullmatch(r"(.*\.)(\d+)([fg])", spec)
    if parts is None or isinstance(value, bool) or not isinstance(value, numbers.Real) or value in bounds:
        return text
    head, digits, kind = parts.groups()
    for more in range(int(digits) + 1, 20):
        try:
            if float(text) not in bounds:
                return text
        except ValueError:  # (a spec that writes more than a number: ',' groups, say)
            return text
        if more == 19:  # (eighteen decimals still read as the bound: the exponent says how far it is)
            return format(value, f"{head.rstrip('.')}.1e")
        text = format(value, f"{head}{more}{kind}")
    return text


def fmt_accuracy(acc: Optional[float], scale: float = 100.0, spec: str = ".2f") -> str:
    """An accuracy for display: n/a when there is none. One short of all or none keeps the digits
    that say so (:func:`fmt_unsaturated`): 49,999 of 50,000 is "99.998", never "100.00"."""
    return "n/a" if acc is None else fmt_unsaturated(scale * acc, spec, (0.0, scale))
