"""Whole numbers given as counts, sizes and seeds: one check for the whole package.

A small module of its own so that any module (models, diagnostics) can use it without importing
the controller and all it imports.
"""
from __future__ import annotations

import math
import numbers
import operator
from typing import Optional


def whole_number(x, floats: bool = False) -> Optional[int]:
    """``x`` as an int where it is a whole number (an int, a numpy or one-element torch integer), else
    None (a bool too, numpy and torch ones included: ``True`` is no count). ``floats=True`` also
    takes a float that holds a whole number (``750.0``, from ``0.75 * total_steps``) for the
    arguments that always took one (steps and seeds); ``2.5`` stays None, never cut to 2."""
    if isinstance(x, bool) or str(getattr(x, "dtype", "")) in ("bool", "torch.bool"):
        return None  # a numpy bool or a bool tensor too (operator.index took torch.tensor(True) as 1)
    try:
        return operator.index(x)
    except TypeError:
        pass
    if floats and isinstance(x, numbers.Real) and math.isfinite(x) and float(x).is_integer():
        return int(x)
    return None


def fraction_bound(count: int, total: int, most: bool, share: bool = False) -> str:
    """A fraction of ``total`` synapses at 6 significant figures that a message may promise: with
    ``most``, the largest whose ``round(f * total)`` (the count a fraction resolves to) is at most
    ``count``; else the smallest at which it is at least ``count`` (``share``: the share
    ``count / total`` itself, rounded up, where that reads better than the exact edge). Rounded away
    from the edge and checked with that very rounding, so the printed figure itself is on the side it
    names (``.6g`` of the exact edge may round across it: 247.5 / 248 prints as 0.997984, which
    removes all 248). A least fraction is given with more figures where 6 name none that keeps a
    synapse (1,999,999 of 2,000,000 rounds up to 1, a count, which removes every synapse as a fraction)."""
    for digits in range(6, 18):
        text = _fraction_bound(count, total, most, share, digits)
        if most or count >= total or int(round(float(text) * total)) < total:
            return text
    return text


def _fraction_bound(count: int, total: int, most: bool, share: bool, digits: int) -> str:
    """:func:`fraction_bound` at ``digits`` significant figures."""
    from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

    def fits(f: Decimal) -> bool:
        removed = int(round(float(f) * total))
        return removed <= count if most else removed >= count

    def unit(f: Decimal) -> Decimal:  # a unit in the last figure of f's decade
        return Decimal(1).scaleb(f.adjusted() - digits + 1)

    edge = Decimal(count + (0 if share else 0.5 if most else -0.5)) / Decimal(total)
    f = edge.quantize(unit(edge), rounding=ROUND_FLOOR if most else ROUND_CEILING)
    while not fits(f):  # an edge that half-even rounding (or the float product) puts on the other side
        # the next figure away from the edge, in the decade it lies in (below 0.1 comes 0.0999999, not 0.099999)
        f = f - unit(f - unit(f) / 10) if most else f + unit(f)
    return f"{float(f):.{digits}g}"


def real_number(x) -> bool:
    """Whether ``x`` is a real number: an int, a float, a numpy real scalar or a one-element real torch tensor
    (never a bool, a numpy or a torch one included; no complex)."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.numel() == 1 and not x.dtype.is_complex and x.dtype != torch.bool
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


UNIT_SLACK = 1e-6  # float error past 0 or 1 (a schedule's float32 1.0000001) is taken as that end


def unit_fraction(x, slack: float = UNIT_SLACK) -> Optional[float]:
    """``x`` as a float in [0, 1] where it is a number there (an int, a numpy number or a one-value
    tensor too; float error within ``slack`` past either end is taken as that end), else None (text, a
    bool, NaN, a tensor of several values, anything further out): the callers name what gave it."""
    if isinstance(x, (str, bytes, bool)):
        return None
    try:
        value = float(x.detach() if callable(getattr(x, "detach", None)) else x)
    except (TypeError, ValueError, RuntimeError):  # (a tensor of several values: RuntimeError)
        return None
    if -slack <= value <= 1.0 + slack:
        return min(1.0, max(0.0, value))
    return None
