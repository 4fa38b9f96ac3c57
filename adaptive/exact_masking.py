"""Masking by the bits: a pruned position set to exactly +0.0 whatever it held, at the cost of a multiply.

The hot path masks gradients and weights by multiplying them with a cached 0/1 mask. In floating
point that is exact only for finite values: 0 * inf and 0 * NaN are NaN. After a divergence (a NaN
loss, an inf gradient, a NaN written into a weight) NaN would then sit at pruned positions, reach the
optimizer's moments there and, through the forward pass, every output of the next step.

Here the tensor's bits, viewed as integers of the same width, are multiplied by 0/1 integers: exact
for every value. A pruned position becomes all-zero bits (+0.0, never -0.0); a live one keeps its
bits, NaN and inf included (a divergence stays visible where a synapse exists). It reads and writes
the same bytes as the float multiply, at the same speed, also in one ``torch._foreach_mul_`` over
many tensors; ``torch.where`` and ``masked_fill_`` with a bool mask were far slower on a CPU. What
it adds is the integer view of each tensor, a small fixed Python cost per tensor; the whole step's
overhead is measured by ``recipes/benchmarks/overhead.py``.

There is no 128-bit integer for a complex128 tensor (a model cast to complex after its connectome
was built): its bits are its real and imaginary float64 halves as int64, laid out with the halves
first (``[2, *shape]``), so the same int64 mask of the tensor's shape (a float64 weight's) broadcasts
over both halves: a pruned position is 0+0j, a live one keeps both halves' bits. A complex64 value
is one 64-bit integer, as a float64 is.
"""
from __future__ import annotations

import torch

INT_OF_WIDTH = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # element width -> integer type


def mask_dtype(t: torch.Tensor) -> torch.dtype:
    """The integer type of ``t``'s element width (of each half of a complex128), in which a 0/1
    mask for ``t`` is kept."""
    return torch.int64 if t.dtype == torch.complex128 else INT_OF_WIDTH[t.element_size()]


def bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` viewed as integers of its width: the same memory and version counter, so an in-place
    multiply by a 0/1 mask (of :func:`mask_dtype`) masks ``t`` exactly and counts as a write to it.
    A complex128 ``t`` gives ``[2, *t.shape]`` int64 (its real and imaginary halves), which a mask of
    ``t``'s shape broadcasts over."""
    if t.dtype == torch.complex128:
        return torch.view_as_real(t).view(torch.int64).movedim(-1, 0)
    return t.view(INT_OF_WIDTH[t.element_size()])


def _lazy_view(t: torch.Tensor) -> bool:
    """A conjugate or negative view (``w.conj()``'s gradient): its memory holds the values un-conjugated,
    so it has no integer view; ``masked_fill`` writes +0.0 as the view reads it and leaves the rest as it is."""
    return t.is_conj() or t.is_neg()


def int_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The bool ``mask`` as 0/1 integers of ``like``'s width, on ``like``'s device and laid out as
    ``like`` is: a multiply with strides that differ (a channels_last weight, a contiguous mask)
    runs ~4x slower on a CPU."""
    if like.layout != torch.strided:
        return mask.to(device=like.device, dtype=mask_dtype(like))
    return torch.empty_like(like, dtype=mask_dtype(like)).copy_(mask)


def mask_(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Set ``t`` to exactly +0.0 where the 0/1 integer ``mask`` (``t``'s shape) is 0, in place; a
    sparse COO ``t`` (an embedding's sparse gradient) has each of its stored values masked. A ``t``
    that autograd records (a gradient built by ``backward(create_graph=True)``) is masked by
    ``masked_fill_``, which autograd sees: a write through the integer view would change its value
    behind the graph, and a derivative taken through it would be that of the unmasked gradient."""
    if (t.requires_grad and torch.is_grad_enabled()) or _lazy_view(t):
        return t.masked_fill_(mask == 0, 0.0)
    if t.is_sparse:
        bits(t._values()).mul_(mask[tuple(t._indices())])  # (uncoalesced entries each masked: their sum too)
    else:
        bits(t).mul_(mask)
    return t


def masked(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` that is exactly +0.0 where the 0/1 integer ``mask`` is 0 and ``t`` elsewhere
    (recorded by autograd where ``t`` is, as :func:`mask_` is)."""
    if (t.requires_grad and torch.is_grad_enabled()) or _lazy_view(t):
        return t.masked_fill(mask == 0, 0.0)
    if t.is_sparse:
        return mask_(t.clone(), mask)
    b = bits(t)
    # in b's type: a mask of a wider type (kept for a weight since cast narrower on its own, e.g.
    # model.fc.half()) would otherwise widen the product, and the view back would split each value
    out = (b * mask).to(b.dtype)
    if t.dtype == torch.complex128:  # the two halves back side by side, as complex numbers
        return torch.view_as_complex(out.movedim(0, -1).contiguous().view(torch.float64))
    return out.view(t.dtype)
