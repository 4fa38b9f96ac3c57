"""Small helpers for the ``in_shape`` argument shared by the model families."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple


def as_shape(in_shape: Optional[Sequence[int]], default: Tuple[int, ...]) -> Tuple[int, ...]:
    """``in_shape`` as a tuple of positive ints, or ``default`` when None."""
    shape = tuple(int(s) for s in (default if in_shape is None else in_shape))
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"in_shape must be positive sizes like (C, H, W) or (features,), got {in_shape!r}")
    return shape


def image_shape(in_shape: Optional[Sequence[int]], default: Tuple[int, int, int], model: str) -> Tuple[int, int, int]:
    """``in_shape`` as ``(C, H, W)``; a clear error for vector shapes."""
    shape = as_shape(in_shape, default)
    if len(shape) != 3:
        raise ValueError(f"{model} needs image inputs in_shape=(C, H, W), got {shape}")
    return shape


def numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


def size_option(model: str, name: str, value, least: int = 1) -> int:
    """``value`` of a model's size option ``name`` (depth, width, heads, a patch side) as an int: a whole number
    of at least ``least`` (an int, a numpy or torch integer, or a float that holds one); anything else is a
    ValueError naming the model, the option and the value. ``int()`` cut depth=2.5 to 2 and took width=True as 1,
    silently, and a 0 failed inside torch (a ZeroDivisionError, a RuntimeError) or built a network of no blocks."""
    from ..counts import whole_number

    n = whole_number(value, floats=True)
    if n is None or n < least:
        raise ValueError(f"{model}: {name} must be a whole number >= {least}, got {value!r}")
    return n
