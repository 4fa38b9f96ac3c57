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
