"""The checks a benchmark's printed claims rest on ("same answers: yes", "the test split was read only for this
table", "0 changed weights"): a plain ``assert`` vanishes under ``python -O``, and the claim would then be printed
unchecked. :func:`check` runs whatever the interpreter's flags."""
from __future__ import annotations


class CheckFailed(AssertionError):
    """A benchmark's own check failed: what it would have printed is not true of this run."""


def check(ok, what) -> None:
    """Raise :class:`CheckFailed` with ``what`` (any object, shown as ``str``) unless ``ok`` is true."""
    if not ok:
        raise CheckFailed(what)
