"""Whole numbers given as counts, sizes and seeds: one check for the whole package.

A small module of its own so that any module (models, diagnostics) can use it without importing
the controller and all it imports.
"""
from __future__ import annotations

import operator
from typing import Optional


def whole_number(x) -> Optional[int]:
    """``x`` as an int where it is a whole number (an int, a numpy or one-element torch integer), else
    None (a bool too: ``True`` is no count)."""
    if isinstance(x, bool):
        return None
    try:
        return operator.index(x)
    except TypeError:
        return None
