"""The check of :func:`graphs.compact`: the compact copy against the masked model on the example, a second
input, a batch of twice its size and inputs of other sizes; :class:`CompactionMismatchError` where they differ.
Its default tolerances follow the dtype the model computes in (:func:`_tolerances`)."""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import nn

# the default tolerances of a float32 / float64 model: atol scaled by outputs below 1, rtol
FLOAT_TOLERANCE = 1e-4
# a bfloat16 / float16 model's default: this many of its dtype's roundings (torch.finfo(dtype).eps) of each output's
# largest magnitude, or the square root of its number of Linear/Conv layers where that is more (the roundings
# add up layer by layer): a few times what correct compactions of small MLPs, CNNs and a ResNet-18 differ by, and far
# below what a doubled weight or a dropped bias changes; a wrong or misplaced unit can change the outputs by no more
# than the dtype's rounding (in bfloat16, one among a small CNN's twenty-odd often does): check such a model as a
# float64 copy
HALF_ROUNDINGS = 4.0

class CompactionMismatchError(RuntimeError):
    """The compact model's outputs differ from the masked model's beyond the check's tolerances."""


def _axis(t: torch.Tensor, batch: int) -> int:
    """The batch axis of input ``t`` given ``batch`` (compact's ``batch_axis``): axis 0 of a 1-D input (one value
    per sample), else ``batch``."""
    return batch if t.dim() >= 2 else 0


def _resized(x, axes: str, grow, g: torch.Generator, batch: int = 0):
    """``x`` (a tensor or a tuple / list of them) with random contents of another size, and where it says so
    (" on an input of shape ..."); None when no tensor changes. ``axes`` "map" grows the axes past the channels
    (2 on) of float tensors of rank 3 or more (images, volumes, signals), as the wider probe does; "tokens" grows
    axis 1 of float ``[N, T, C]`` and integer ``[N, T, ...]`` tensors (a sequence's length; ids are drawn from the
    example's), axis 0 of ``[T, N, C]`` and ``[T, N, ...]`` ones where ``batch`` is 1. ``grow(sizes)``: the new
    sizes. Drawn from ``g`` on the CPU, then moved to each tensor's device."""
    steps = 1 - batch  # the axis of a sequence's positions

    def one(t):
        if not isinstance(t, torch.Tensor):
            return t
        if axes == "map" and t.is_floating_point() and t.dim() >= 3:
            return torch.randn(*t.shape[:2], *grow(t.shape[2:]), generator=g, dtype=torch.float64).to(t.device, t.dtype)
        if axes == "tokens" and (t.dim() == 3 if t.is_floating_point() else t.dim() >= 2 and t.shape[steps] > 0):
            shape = list(t.shape)
            shape[steps] = grow(t.shape[steps:steps + 1])[0]
            if t.is_floating_point():
                return torch.randn(shape, generator=g, dtype=torch.float64).to(t.device, t.dtype)
            return t.index_select(steps, torch.randint(t.shape[steps], (shape[steps],), generator=g).to(t.device))
        return t

    xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    out = tuple(one(t) for t in xs)
    changed = [(a.shape, b.shape) for a, b in zip(xs, out) if isinstance(a, torch.Tensor) and a.shape != b.shape]
    if not changed:
        return None
    was, now = changed[0]
    return (type(x)(out) if isinstance(x, (tuple, list)) else out[0],
            f" on an input of shape {tuple(now)} (the example's is {tuple(was)})")


def _other_sizes(ref, x, g: torch.Generator, batch: int = 0) -> list:
    """Inputs of other sizes than the example's that the masked model runs on, as ``(input, its outputs or None,
    where)``: twice the example's size on the axes past the channels (the wider probe's) and an odd, non-square
    one (one more, two more, ...), or else twice and one more tokens. None (an empty list) for a model that fixes
    its input's size (a Linear after a flatten, positions embedded up to the example's length): compact's check
    is then at the example's size only. ``batch``: the inputs' batch axis (:func:`_resized`)."""
    from .forward_inputs import _trial_call_with_inputs

    for axes in ("map", "tokens"):
        wide = _resized(x, axes, lambda s: [2 * n for n in s], g, batch)
        if wide is None:
            continue
        args = tuple(wide[0]) if isinstance(wide[0], (tuple, list)) else (wide[0],)
        try:
            ra = _trial_call_with_inputs(ref, args)
        except Exception:  # noqa: BLE001 - the model takes no input of that size
            continue
        odd = _resized(x, axes, lambda s: [n + 1 + i for i, n in enumerate(s)], g, batch)
        return [(wide[0], ra, wide[1]), (odd[0], None, odd[1])]
    return []


def _scale(t: torch.Tensor) -> float:
    """The largest magnitude in output ``t`` (0 for an empty one), NaNs left out: what the check's differences are
    measured against."""
    if t.numel() == 0:
        return 0.0
    if t.dtype == torch.bool:
        return 1.0
    m = t.abs()
    return float(torch.where(m.isnan(), torch.zeros_like(m), m).max())


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest ``|a - b|`` of two outputs of one shape (0 for empty ones), where they differ: a NaN of both at one
    place (an attention query every mask hides, in the masked model and the copy alike) or the same infinity agree, a
    NaN of one alone is a NaN difference; integer and bool outputs are compared as float64 (torch refuses to subtract
    bool tensors, and a uint8 difference wraps: 0 - 1 is 255)."""
    if a.numel() == 0:
        return 0.0
    if not (a.is_floating_point() or a.is_complex()):
        a, b = a.double(), b.double()
    d = (a - b).abs()
    same = (a == b) | (a.isnan() & b.isnan())
    return float(torch.where(same, torch.zeros_like(d), d).max())


class Tolerances(NamedTuple):
    """The check's tolerances: ``atol`` and ``rtol`` as :func:`_close` takes them, ``relative`` where ``atol`` is
    a fraction of each output's largest magnitude at any size (a half dtype's default), ``said``: them in words."""
    atol: float
    rtol: float
    relative: bool
    said: str


# the dtypes a model computes in, coarsest first (a float8 tensor is stored, not computed in)
COMPUTE_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def _coarsest_dtype(ref: nn.Module, x) -> Optional[torch.dtype]:
    """The dtype of ``COMPUTE_DTYPES`` with the largest rounding among ``ref``'s parameters; a model with none
    in them: among its buffers, else its inputs ``x`` (None where none is in any): the one the model computes in,
    whatever dtype its outputs are cast to. Parameters first: a float32 model holding a float16 buffer computes
    in float32 (taking the buffer's dtype loosened its check 39-fold)."""
    xs = x if isinstance(x, (tuple, list)) else (x,)
    for ts in (ref.parameters(), ref.buffers(), (t for t in xs if isinstance(t, torch.Tensor))):
        dtypes = {t.dtype for t in ts}
        if any(d in dtypes for d in COMPUTE_DTYPES):
            return next(d for d in COMPUTE_DTYPES if d in dtypes)
    return None


def _tolerances(ref: nn.Module, x, atol: Optional[float], rtol: Optional[float]) -> Tolerances:
    """The check's tolerances: ``atol`` and ``rtol`` as given; where None, the dtype's defaults. A model computing
    in float32 or float64: 1e-4 each (``FLOAT_TOLERANCE``; atol scaled by outputs below 1, :func:`_close`). One in
    bfloat16 or float16, whose rounding (eps 2^-7, 2^-10) a compact copy's different sums and folded biases
    legitimately show: ``atol`` = ``HALF_ROUNDINGS`` (or the square root of its number of Linear/Conv layers where
    that is more) times the dtype's eps, of each output's largest magnitude, and ``rtol`` 0."""
    dtype = _coarsest_dtype(ref, x)
    half = dtype in (torch.bfloat16, torch.float16)
    if half and atol is None:
        from . import ops

        layers = sum(isinstance(m, ops.WEIGHTED_MODULES + ops.TRANSPOSED_MODULES) for m in ref.modules())
        roundings = max(HALF_ROUNDINGS, math.sqrt(layers))
        atol, relative = roundings * torch.finfo(dtype).eps, True
        words = (f"atol {atol:.3g} ({roundings:.3g} {str(dtype)[6:]} roundings) x each output's largest magnitude")
    else:
        atol, relative = FLOAT_TOLERANCE if atol is None else atol, False
        words = f"atol {atol:.3g} (x each output's largest magnitude where below 1)"
    rtol = (0.0 if half else FLOAT_TOLERANCE) if rtol is None else rtol
    return Tolerances(atol, rtol, relative, f"{words}, rtol {rtol:.3g}")


def _named_leaves(out, name: str = "") -> list:
    """The tensors of a model output as ``(name, tensor)``: a tensor, or (nested) dicts, lists and tuples of them,
    each named by its place (``[1]``, ``['aux']``, ``[0][2]``; ``""`` for a lone tensor)."""
    if isinstance(out, torch.Tensor):
        return [(name, out)]
    if isinstance(out, dict):
        return [leaf for k, o in out.items() for leaf in _named_leaves(o, f"{name}[{k!r}]")]
    if isinstance(out, (list, tuple)):
        return [leaf for i, o in enumerate(out) for leaf in _named_leaves(o, f"{name}[{i}]")]
    return []


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float, relative: bool = False) -> bool:
    """Whether output ``b`` matches the masked model's ``a``: ``torch.allclose`` with ``atol`` for outputs of
    magnitude 1 or more, and ``atol`` times their largest magnitude below that (``relative``: at any magnitude,
    a half dtype's default, whose rounding grows with the outputs). A fixed ``atol`` of 1e-4 passed
    anything on outputs of 1e-10 (a fresh-initialised deep net's), a compact copy whose outputs were all wrong
    included; large outputs keep the plain ``atol`` (float32 rounding there is larger, not smaller), and so do
    outputs that are exactly zero everywhere (there is no magnitude to scale by: an exact match is not asked)."""
    scale = _scale(a)
    return torch.allclose(a, b, atol=atol * ((scale if relative else min(1.0, scale)) if scale > 0 else 1.0), rtol=rtol,
                          equal_nan=True)  # a NaN of both at one place: the copy computes what the model does


@torch.no_grad()
def _verify(ref: nn.Module, gm: nn.Module, x, atol: Optional[float], rtol: Optional[float], batch: int = 0) -> dict:
    """Compare ``gm`` with the masked ``ref`` on the example, a second random input, a batch of twice its
    size (along axis ``batch`` of the inputs of two axes or more) and, where ``ref`` runs on them, inputs of other
    sizes (:func:`_other_sizes`): a view or a split sized for the example's map or length may be wrong on another
    (:func:`_close` judges each output tensor, at the tolerances :func:`_tolerances` makes of ``atol`` and ``rtol``,
    None: the dtype's defaults). The largest difference, ``max_abs_diff``, and the largest relative to its output's
    largest magnitude, ``max_rel_diff`` (0 where they agree exactly), with the tolerances used, ``atol``, ``rtol``
    and ``tolerance`` (in words); raises :class:`CompactionMismatchError` on a mismatch, naming the output tensor
    that differs where there are several and the input's shape where it is not the example's."""
    from .forward_inputs import _call_with_inputs, _trial_call_with_inputs

    tol = _tolerances(ref, x, atol, rtol)
    # the inputs are drawn from a generator of the check's own, on the CPU: the same inputs at every
    # call and on every device, and nothing drawn from the global generators
    g = torch.Generator().manual_seed(0)

    def other(t):  # a second input: random floats, or the ids (tokens) shuffled
        if not isinstance(t, torch.Tensor):
            return t
        if t.is_floating_point():
            return torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype)
        return t.flatten()[torch.randperm(t.numel(), generator=g).to(t.device)].view_as(t)

    x2 = type(x)(other(t) for t in x) if isinstance(x, (tuple, list)) else other(x)
    xs = [(x, None, False, ""), (x2, None, False, "")]
    ts = [t for t in (x2 if isinstance(x2, (tuple, list)) else (x2,)) if isinstance(t, torch.Tensor)]
    sizes = [t.shape[_axis(t, batch)] if t.dim() >= 1 else None for t in ts]
    if ts and None not in sizes and len(set(sizes)) == 1:  # and a batch of another size
        def double(t):
            return torch.cat([t, other(t)], _axis(t, batch)) if isinstance(t, torch.Tensor) else t
        xs.append((type(x2)(double(t) for t in x2) if isinstance(x2, (tuple, list)) else double(x2), None, True, ""))
    xs += [(xi, ra, True, where) for xi, ra, where in _other_sizes(ref, x, g, batch)]
    worst = worst_rel = 0.0
    from adaptive.data.cycle import rng_states, set_rng_states

    for xi, ra, optional, where in xs:
        args = tuple(xi) if isinstance(xi, (tuple, list)) else (xi,)  # several inputs: one argument each
        # the two calls draw alike: a model that draws in its forward (noise added in eval mode) saw other draws in
        # the copy's call, run after the masked model's on the advancing generators, and failed the check
        drawn = rng_states()
        if ra is None:
            try:  # the model takes a keyword-only input by name; gm, as fx wrote it, in its place
                ra = (_trial_call_with_inputs if optional else _call_with_inputs)(ref, args)  # a tensor, or a dict / tuple
            except Exception:  # noqa: BLE001 - the model fixes its batch size (or this odd size): nothing to compare
                if not optional:
                    raise
                continue
        set_rng_states(drawn)
        try:
            rb = _call_with_inputs(gm, args)  # its keyword-only inputs by name, as the model's
        except Exception as e:  # noqa: BLE001 - the masked model runs on this input: so must the compact one
            if not where:
                raise
            raise CompactionMismatchError(
                f"compaction broke the model{where}, where the masked model runs: {type(e).__name__}: {e}; if it "
                "persists, please report this model. Pass verify=False to get the model anyway.") from e
        # (name, masked, compact) per output tensor: each is judged, and described, at its own scale
        outs = [(n, a, b) for (n, a), (_, b) in zip(_named_leaves(ra), _named_leaves(rb))]
        if any(a.shape != b.shape for _, a, b in outs):
            raise CompactionMismatchError(
                f"compaction changed the outputs' shapes{where}: {[tuple(a.shape) for _, a, _ in outs]} became "
                f"{[tuple(b.shape) for _, _, b in outs]}; if it persists, please report this model. Pass verify=False "
                "to get the model anyway.")
        diffs = [_diff(a, b) for _, a, b in outs]
        worst = max(worst, *diffs, 0.0)
        scales = [_scale(a) for _, a, _ in outs]
        worst_rel = max(worst_rel, *(d / s for d, s in zip(diffs, scales) if d and s > 0), 0.0)
        failed = [i for i, (_, a, b) in enumerate(outs) if not _close(a, b, tol.atol, tol.rtol, tol.relative)]
        if failed:  # the output that differs most for its size (an all-zero one's difference: the most)
            i = max(failed, key=lambda j: diffs[j] / scales[j] if scales[j] > 0 else math.inf)
            raise CompactionMismatchError(_mismatch(outs[i], len(outs), diffs[i], tol, _coarsest_dtype(ref, x), where))
    return {"max_abs_diff": worst, "max_rel_diff": worst_rel, "atol": tol.atol, "rtol": tol.rtol,
            "tolerance": tol.said}


def _mismatch(out, n: int, diff: float, tol: Tolerances, dtype: Optional[torch.dtype], where: str = "") -> str:
    """Why the check failed on output tensor ``out`` (``(name, masked, compact)``, one of ``n``): its difference
    next to its scale and the tolerances, with a hint to check in float64 when the difference is the size of
    rounding at that scale in the dtype the model computes in, ``dtype``, or the output's own where coarser. Judged
    per output: a wrong small output beside large logits is no rounding of the logits."""
    name, a, _ = out
    scale = _scale(a)
    low = [d for d in (dtype, a.dtype) if d is not None and d.is_floating_point and d != torch.float64]
    # a relative difference a bug rarely stays below, or a few of the dtype's own roundings where they are coarser
    # (bfloat16, eps 2^-7: its rounding alone is some 5e-3 of the outputs, against an atol their magnitude scales down)
    coarse = max((4 * torch.finfo(d).eps for d in low), default=0.0)
    rounding = bool(low) and diff <= max(1e-3, coarse) * scale
    low.sort(key=lambda d: -torch.finfo(d).eps)  # the coarsest first: the one the hint names
    hint = (f"; relative to outputs this large the difference looks like {str(low[0])[6:]} rounding: compact a float64 "
            "copy (model.double(), example_input.double()) to check, or pass larger atol/rtol" if rounding else "")
    if tol.relative:
        bound = f"atol {tol.atol:.3g} x {scale:.3g} (the output's largest magnitude)"
    else:
        bound = f"atol {tol.atol}" + (f" (atol x {scale:.3g}: outputs below 1 scale it down)" if scale < 1 else "")
    which = f"the outputs{where}" if n == 1 else f"output {name} of the {n} output tensors{where}"
    return (f"compaction changed {which} (max abs diff {diff:.3g} > {bound} + rtol {tol.rtol} x "
            f"|output|, with outputs up to {scale:.3g} in magnitude){hint}; if it persists, please report this model. "
            "Pass verify=False to get the model anyway.")
