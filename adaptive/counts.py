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
    removes all 248)."""
    from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

    def fits(f: Decimal) -> bool:
        removed = int(round(float(f) * total))
        return removed <= count if most else removed >= count

    edge = Decimal(count + (0 if share else 0.5 if most else -0.5)) / Decimal(total)
    step = Decimal(1).scaleb(edge.adjusted() - 5)  # a unit in the sixth significant figure
    f = edge.quantize(step, rounding=ROUND_FLOOR if most else ROUND_CEILING)
    while not fits(f):  # an edge that half-even rounding (or the float product) puts on the other side
        f += -step if most else step
    return f"{float(f):.6g}"
