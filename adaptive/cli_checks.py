"""The one wording of the command lines' range checks of their data options (``--batch_size``,
``--eval_batch_size``, ``--subset``, ``--test_subset``, ``--holdout``, ...): recipes/adaptive.py,
recipes/diagnostics.py and recipes/prune_pretrained.py each keep their own ranges and call
:func:`range_problem`, so one option's refusal reads the same in every recipe. (The data layer's
own checks, :func:`adaptive.data.get_datasets` and the rest, name the Python keywords instead.)"""
from __future__ import annotations

import math
import sys
from typing import Optional

# the largest count an option with no upper end of its own takes: a batch size past it failed in
# itertools.islice ("Stop argument for islice() must be ... <= sys.maxsize"), a gradient accumulation
# past it in torch's division of the loss ("int too big to convert"), mid-run
LARGEST_COUNT = sys.maxsize


def _bounds(low, high, open_low: bool, open_high: bool, whole: bool) -> str:
    if high is None:
        return f"{'>' if open_low else '>='} {low}"
    if whole:
        return f"from {low} to {high:,}"
    return f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"


def range_problem(option: str, value, low, high=None, *, whole: bool = False, open_low: bool = False,
                  open_high: bool = False, what: str = "", example: Optional[str] = None,
                  left_out: str = "", most: Optional[int] = None) -> Optional[str]:
    """None where ``value`` lies in the range (or is None: the option left out), else the one message
    of the command lines' refusal.

    ``option`` is the option as the user gave it (``--holdout``, or ``c.yaml: holdout`` for a
    --config file's key); the range runs from ``low`` to ``high`` (None: no upper end), each end
    closed unless ``open_low`` / ``open_high``. ``whole``: a whole number (an integer, not a bool);
    else any finite number (an integer or a float: NaN and text are refused). ``what``: what the
    value means, said in parentheses; ``example``: the value the fix suggests (default: ``low``, or
    the whole number above an open ``low``, "or more"); ``left_out``: what leaving the option out
    does, offered as the other fix (``"for all"``); ``most``: a bound past which a range with no upper end
    of its own fails outside this project's code (:data:`LARGEST_COUNT`), refused with a message of its own
    (the range's own message, "integer >= 1", is kept for values under ``low``). The fix says ``give --option X`` on the command
    line and ``set it to X`` for a file's key::

        --holdout must be a fraction in [0, 1) (the part of TRAIN held out; 0: none), got 1.5: give --holdout 0.1 (say)
    """
    if value is None:
        return None
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if whole:
        number = number and isinstance(value, int)
    elif number:
        number = math.isfinite(value)
    if number and (value > low if open_low else value >= low) and (
            high is None or (value < high if open_high else value <= high)):
        if most is not None and value > most:  # (a range with no upper end of its own, past what Python or torch takes)
            return f"{option} must be at most {most:,}, got {value!r}"
        return None
    if whole:
        kind = "an integer"
    elif high is not None and 0 <= low and high <= 1:
        kind = "a fraction"
    else:
        kind = "a number"
    if example is None:
        example = f"{low + 1 if open_low else low}" + (" or more" if high is None else "")
    fix = f"give {option} {example}" if option.startswith("-") else f"set it to {example}"
    meaning = f" ({what})" if what else ""
    other = f" (or leave it out {left_out})" if left_out else ""
    return (f"{option} must be {kind} {_bounds(low, high, open_low, open_high, whole)}{meaning}, got {value!r}: "
            f"{fix}{other}")


def check_range(option: str, value, low, high=None, **kw) -> None:
    """:func:`range_problem`'s message as a ValueError (None passes: the option was left out)."""
    problem = range_problem(option, value, low, high, **kw)
    if problem:
        raise ValueError(problem)


def one_pass_problem(option: str, count: int, batches: Optional[int], part: str, more: str, *,
                     reader: str, sep: str = " ") -> Optional[str]:
    """None where ``count`` batches fit in one pass of a loader of ``batches`` batches (None or 0: its length
    unknown), else the command lines' refusal: ``reader`` (an update's window, each line search) would
    read some batches twice, which adds no evidence, and a huge count (``--window 10**18``) runs or
    builds a list for ever. It names ``option`` (spelt ``option + sep + count``), the count, the loader's
    ``part`` (what its batches are), the largest count that fits, and ``more`` (how to get more batches)."""
    if batches is None or batches < 1 or count <= batches:  # (an empty loader: its own refusal)
        return None
    return (f"{option}{sep}{count} is more than the {batches:,} batch{'es' if batches != 1 else ''} of {part}: "
            f"{reader} would read some of them twice, which adds no evidence; give {option}{sep}{batches} or fewer, "
            f"or {more}")


def examples_in(loader, word: str = "examples") -> str:
    """``"N examples, "`` (``word``) for a loader whose dataset has a length, else ``""``: the size a
    :func:`one_pass_problem` message names beside the batch size."""
    try:
        return f"{len(loader.dataset):,} {word}, "
    except (AttributeError, TypeError):
        return ""
