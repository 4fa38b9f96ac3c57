"""Strict JSON for the files other tools read (summary.json and the like).

Python's ``json.dumps`` writes a failed fit's NaN or an infinite loss as the bare tokens ``NaN`` and
``Infinity``, which are not JSON: JavaScript's ``JSON.parse``, Go, Rust's serde and
``json.loads(..., parse_constant=...)`` refuse the whole file. :func:`dumps` writes them as ``null``
(a value that does not exist), and numbers of other types (tensors, NumPy scalars) as plain floats.
"""
from __future__ import annotations

import json
import math
from typing import Any, Optional


def finite(obj: Any) -> Any:
    """``obj`` with every float that is NaN or infinite replaced by None, through dicts, lists and
    tuples; a 0-d tensor or NumPy scalar becomes its Python number first."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # torch / NumPy scalar
        return finite(obj.item())
    return obj


def dumps(obj: Any, indent: Optional[int] = None) -> str:
    """Strict JSON text of ``obj`` (see the module docstring); other objects through ``float``."""
    return json.dumps(finite(obj), indent=indent, allow_nan=False, default=lambda o: finite(float(o)))
