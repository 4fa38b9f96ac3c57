"""How the inputs given as ``example_input`` bind to a model's forward: its parameters in order (positional ones,
then keyword-only ones), the defaults of those not given, and the refusals of a tuple that gives too many or too
few inputs, or a dict that names them."""
from __future__ import annotations

import contextlib
import inspect
import io
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn


def _forward_params(model: nn.Module) -> list:
    """The parameters of ``model.forward`` (none where its signature cannot be read)."""
    try:
        return list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return []


def _forward_inputs(model: nn.Module) -> List[str]:
    """The names of the inputs ``model.forward`` needs (its parameters without a default: the positional
    ones, then the keyword-only ones, the order in which fx makes them the traced graph's placeholders);
    a MultiheadAttention's query alone, as a guessed input is traced as self-attention."""
    if isinstance(model, nn.MultiheadAttention):
        return ["query"]
    params = _forward_params(model)
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.default is p.empty]
    return positional + _keyword_inputs(model)


def _keyword_inputs(model: nn.Module) -> List[str]:
    """The keyword-only parameters of ``model.forward`` without a default (``forward(self, x, *, mask)``)."""
    return [p.name for p in _forward_params(model) if p.kind is p.KEYWORD_ONLY and p.default is p.empty]


def _call_with_inputs(model: nn.Module, args: Sequence[Any]):
    """``model(*args)`` with the inputs past its positional parameters given by name to its keyword-only
    ones, in order: an ``example_input=(x, mask)`` for ``forward(self, x, *, mask)`` runs the model as
    it runs its fx graph (whose placeholders are the positional parameters, then the keyword-only ones)."""
    params = _forward_params(model)
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return model(*args)
    npos = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    keyword = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    args = tuple(args)
    return model(*args[:npos], **dict(zip(keyword, args[npos:])))


def _trial_call_with_inputs(model: nn.Module, args: Sequence[Any]):
    """:func:`_call_with_inputs` on an input the model may not run on (a size a compact check tries): what it
    raises is the caller's to judge, and what it writes to stderr is written on only where the call returns. A
    ``torch.fx.GraphModule`` (a compact copy compacted again) prints the traceback of an error in its generated
    code to stderr before raising it, which was noise where the caller expects the error and carries on. Where the
    call fails, what was written before that traceback (a warning of the model's, shown once and never again) is
    written on all the same; only fx's traceback is dropped."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return _call_with_inputs(model, args)
    finally:
        sys.stderr.write(_without_fx_traceback(said.getvalue()))


# how torch.fx's GraphModule introduces the traceback it prints to stderr for an error in its generated code
_FX_TRACEBACK = ("Traceback (most recent call last):", "Call using an FX-traced Module")


def _without_fx_traceback(text: str) -> str:
    """``text`` up to the traceback a ``torch.fx.GraphModule`` printed (:func:`_trial_call_with_inputs`): the
    last thing it writes before raising, from the first traceback line ahead of its "Call using an FX-traced
    Module" line to the end; ``text`` itself where it holds none."""
    end = text.rfind(_FX_TRACEBACK[1])
    if end < 0:
        return text
    start = text.find(_FX_TRACEBACK[0])
    return text[:start] if 0 <= start < end else text


def _refuse_named_inputs(model: nn.Module, example_input) -> None:
    """Refuse an ``example_input`` dict that gives the forward's inputs by name (``{"x": x, "mask": m}``,
    or several inputs however named): graphs takes them as a tuple, in the forward's order."""
    if not isinstance(example_input, Mapping):
        return
    named = [p.name for p in _forward_params(model) if p.name in example_input]
    if named or len(_forward_inputs(model)) > 1:
        order = ", ".join(named or _forward_inputs(model))
        raise TypeError(f"example_input is a dict of {type(model).__name__}.forward's inputs: pass them as a tuple, in "
                        f"the order of its parameters, example_input=({order}) (keyword-only ones last: graphs passes "
                        "them by name)")


def _nested(x) -> bool:
    """A tuple or list given as one input (not a PackedSequence, which is a tuple too)."""
    return isinstance(x, (tuple, list)) and not isinstance(x, (nn.utils.rnn.PackedSequence, torch.Size))


def _input_params(model: nn.Module) -> Optional[list]:
    """The parameters of ``model.forward`` in the order the inputs bind to them (:func:`_call_with_inputs`):
    the positional ones, then the keyword-only ones; None for a forward taking ``*args`` or ``**kwargs``
    (or without a signature), whose inputs bind as fx and Python bind them."""
    params = _forward_params(model)
    if not params or any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return None
    return ([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            + [p for p in params if p.kind is p.KEYWORD_ONLY])


def _unsupplied_defaults(model: nn.Module, nargs: int, given: Sequence[Any] = ()) -> Optional[Dict[str, Any]]:
    """The parameters of ``model.forward`` after the ``nargs`` inputs (positional ones, then keyword-only
    ones, as :func:`_call_with_inputs` binds them) that have defaults, with their defaults, and those of the
    inputs ``given`` as None: the run uses them, so fx traces with them (``mask=None``,
    ``return_features=False``: traced as proxies, an ``if`` on them stopped fx, or took the branch the run
    does not)."""
    params = _forward_params(model)
    bound = _input_params(model)
    if bound is None:  # *args takes the inputs past the positional parameters; keyword-only ones keep defaults
        bound = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        rest = bound[nargs:] + [p for p in params if p.kind is p.KEYWORD_ONLY]
    else:
        rest = bound[nargs:]
    none = {p.name: None for p, v in zip(bound, given) if v is None}
    # only values fx can specialise on (and check): a tuple, list or dict it flattens into placeholders
    # it cannot write out (a SyntaxError, so module order); a tensor, function or object stays a proxy
    fixed = {p.name: p.default for p in rest if p.default is None or type(p.default) in (bool, int, float, str)}
    return {**none, **fixed} or None


def _refuse_miscounted_inputs(model: nn.Module, given: Sequence[Any]) -> None:
    """Refuse an ``example_input`` that leaves out an input ``model.forward`` requires after it, or gives
    more inputs than it has parameters (the extra ones were silently dropped: graphs and compact's check
    ran the model without them): the inputs bind in order, keyword-only ones after the positional ones,
    so ``(x, mask)`` for ``forward(self, x, y=None, *, mask)`` is ``y=mask`` (a run of its fx graph said
    only "Expected positional argument for parameter mask"); None stands for an optional input left at
    its default."""
    params = _input_params(model)
    if not given or params is None:
        return
    if len(given) > len(params):
        order = ", ".join(_input_order(model) or [params[0].name]) + ("," if len(_input_order(model)) < 2 else "")
        raise TypeError(f"example_input gives {len(given)} inputs and {type(model).__name__}.forward takes "
                        f"{len(params)} ({', '.join(p.name for p in params)}): the inputs bind to its parameters in "
                        f"order (keyword-only ones last, passed by name), so pass example_input=({order}), None "
                        "for an optional input left at its "
                        "default; an input that is itself a tuple of tensors goes in a tuple of its own, ((x, y),)")
    missing = [p.name for p in params[len(given):] if p.default is p.empty]
    if missing:
        raise TypeError(f"example_input gives {len(given)} input(s) and {type(model).__name__}.forward also needs "
                        f"{', '.join(missing)}: the inputs bind to its parameters in order (keyword-only ones last, "
                        f"passed by name), so pass example_input=({', '.join(_input_order(model))}), None for an "
                        "optional input left at its default")


def _input_order(model: nn.Module) -> List[str]:
    """The tuple of inputs ``example_input`` gives ``model``: forward's parameters in the order inputs bind
    to them, up to the last one it requires, ``y or None`` for an optional one before it (``forward(self, x,
    y=None, *, mask)``: ``x, y or None, mask``); empty for a forward taking ``*args`` or ``**kwargs``."""
    params = _input_params(model) or []
    last = max((i for i, p in enumerate(params) if p.default is p.empty), default=-1)
    return [p.name if p.default is p.empty else f"{p.name} or None" for p in params[:last + 1]]


def _placeholder_values(model: nn.Module, holders: int, xs: Sequence[Any]) -> tuple:
    """The values to run ``model``'s fx graph (of ``holders`` placeholders) on for the inputs ``xs``: one per placeholder, the
    inputs bound to forward's parameters as :func:`_call_with_inputs` binds them (keyword-only ones after
    the positional ones) and the defaults of the rest, so that an ``(x, mask)`` for ``forward(self, x,
    y=None, *, mask)`` gives ``mask`` the mask, not ``y``. ``xs`` as they are where the placeholders are
    not forward's parameters one for one (``*args``), and up to the first required input ``xs`` lacks
    (the run then says which)."""
    params = _input_params(model)
    if params is None or holders != len(params) or len(xs) > len(params):
        return tuple(xs)
    values = list(xs)
    for p in params[len(xs):]:
        if p.default is p.empty:
            break
        values.append(p.default)
    return tuple(values)
