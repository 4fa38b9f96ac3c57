"""Warnings attributed to the caller's code, not to a line of this package or of torch; and, on the
command line, shown as one ``warning: ...`` line (:func:`command_line_warnings`).

Python shows a warning once per (message, module, line) by default: one raised with a fixed
``stacklevel`` that lands on a library line when the call came through another library function is
shown once per session, however many times the user's code triggers it. Attributing it to the first
frame outside this package shows it at each line of the user's code that triggers it.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import warnings

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))


def _package_dir(name: str):
    """The folder of an installed package, found without importing it (None when absent)."""
    spec = importlib.util.find_spec(name)
    return os.path.dirname(os.path.abspath(spec.origin)) if spec is not None and spec.origin else None


# Frames of this package, of the graphs package beside it, of torch (an optimizer step calling the
# connectome's hooks, the decorators around its methods) and of Accelerate (its optimizer wrapper's
# step) are not the user's code.
_INTERNAL = tuple(d + os.sep for d in (_HERE, os.path.join(os.path.dirname(_HERE), "graphs"),
                                          os.path.dirname(os.path.abspath(torch.__file__)), _package_dir("accelerate"))
                  if d is not None)


def user_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside this package (and graphs, torch and Accelerate), counted
    from the caller of :func:`warn_user` (a stacklevel of 1 is the function calling
    ``warnings.warn``); the outermost frame when every frame is internal (``python -m graphs``)."""
    frame, level = sys._getframe(2), 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    return level


def warn_user(message: str, category: type = UserWarning) -> None:
    """``warnings.warn`` attributed to the first line of code outside this package."""
    warnings.warn(message, category, stacklevel=user_stacklevel() + 1)


def _one_line(message, category, filename, lineno, line=None) -> str:
    """A shown warning as ``warning: MESSAGE`` (another category than UserWarning named in brackets),
    without Python's ``FILE:LINE: UserWarning:`` prefix and the echoed source line."""
    kind = "" if category is UserWarning else f" ({category.__name__})"
    return f"warning{kind}: {message}\n"


@contextlib.contextmanager
def command_line_warnings():
    """Inside the block, a warning that is shown prints as one ``warning: MESSAGE`` line: the
    recipes and ``python -m graphs`` run under it, whose users act on the message, not on a line
    of this package. Only the printing changes: which warnings show (filters, ``-W``), and their
    capture (``catch_warnings(record=True)``, ``pytest.warns``) are as before, and the library's
    API warns as any Python library does. ``ADAPTIVE_TRACEBACK=1`` keeps Python's own format."""
    if os.environ.get("ADAPTIVE_TRACEBACK"):
        yield
        return
    before = warnings.formatwarning
    warnings.formatwarning = _one_line
    try:
        yield
    finally:
        warnings.formatwarning = before
