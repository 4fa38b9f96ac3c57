"""Model zoo: a registry of model families built by name.

``build_model("resnet20", num_classes=10, in_shape=(3, 32, 32), weights=path)`` builds any
registered family and optionally loads a weights file strictly. A new family registers itself
with ``@register_model("name")``; names of the form ``torchvision:NAME`` build any torchvision
classifier. Every model here is ``torch.fx.symbolic_trace``-able.
"""
from __future__ import annotations

import difflib
import inspect
import re
from typing import Callable, Dict, Optional, Sequence

from torch import nn

from .. import registry as _registry
from ..config import ConfigError
from ..counts import whole_number
from .weights import WeightsMismatchError, load_weights, read_state_dict

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}
_PREFIX_BUILDERS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, prefix: bool = False, replace: bool = False):
    """Register ``fn(num_classes, in_shape, **kw) -> nn.Module`` under ``name``.

    With ``prefix=True`` the builder serves every name ``"<name>:<rest>"`` and receives
    ``rest`` as its first argument (this is how ``torchvision:NAME`` works). A taken name is refused
    unless ``replace``.
    """

    def deco(fn):
        key = name.lower() if isinstance(name, str) and not prefix else name  # build_model lowercases plain names
        _registry.add(_PREFIX_BUILDERS if prefix else _REGISTRY, "model", key, fn, replace)
        return fn

    return deco


def available_models() -> list:
    """Names accepted by :func:`build_model` (prefix families shown as ``prefix:NAME``)."""
    return sorted(_REGISTRY) + [f"{p}:NAME" for p in sorted(_PREFIX_BUILDERS)]


def build_model(
    name: str,
    num_classes: int = 10,
    in_shape: Optional[Sequence[int]] = None,
    weights: Optional[str] = None,
    **kw,
) -> nn.Module:
    """Build model ``name`` for ``num_classes`` outputs and inputs shaped ``in_shape``.

    ``in_shape`` is ``(C, H, W)`` for images or ``(features,)`` for vectors, without the batch
    dimension; ``None`` takes the family's default. ``num_classes`` is a whole number >= 1 (1: a
    single output, as a regression or binary head has). ``weights`` is a file path loaded with
    :func:`load_weights` (strict; never downloads). Extra keyword arguments go to the family.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    num_classes = _as_num_classes(num_classes)
    in_shape = _as_in_shape(in_shape)
    if ":" in name:
        prefix, rest = name.split(":", 1)
        if prefix not in _PREFIX_BUILDERS:
            raise ValueError(f"unknown model family {prefix!r} in {name!r}; available: {available_models()}")
        builder, args = _PREFIX_BUILDERS[prefix], (rest,)
    else:
        key = name.lower()
        if key not in _REGISTRY:
            raise ValueError(f"unknown model {name!r}{_registry.near_misses([key], _REGISTRY)}; available: {available_models()}")
        builder, args = _REGISTRY[key], ()
    accepted, takes_more = _keywords(builder, skip=len(args))
    _check_named_part(name, kw, builder, len(args))
    _check_keywords(name, kw, accepted, takes_more)
    try:
        model = builder(*args, num_classes=num_classes, in_shape=in_shape, **kw)
    except TypeError as e:  # a keyword the family passes on (**kw) and its target does not take
        bad = _UNEXPECTED.search(str(e))
        if not bad or bad.group(1) not in kw or bad.group(1) in accepted:  # the builder's own bug: its traceback
            raise
        raise ValueError(_unknown_keyword(name, bad.group(1), accepted, takes_more, str(e))) from None
    if not isinstance(model, nn.Module):
        raise TypeError(f"model {name!r}: its builder {_registry._origin(builder)} returned "
                        f"{type(model).__module__}.{type(model).__qualname__} ({_short(model)}), not a torch.nn.Module; "
                        "a registered model builder must return the model (an nn.Module instance)")
    if weights:
        load_weights(model, weights)
    return model


def model_keywords(name: str) -> Optional[tuple]:
    """``(keywords, takes_more)`` of model ``name``'s builder: the keywords it takes besides
    num_classes and in_shape (and the argument a ``prefix:NAME`` name fills), sorted, and whether it
    also takes ``**kw`` that it passes on; None where the name is not registered. For an error that
    names what a model can be built with."""
    prefix, filled = (name.split(":", 1)[0], 1) if ":" in name else (None, 0)
    builder = _PREFIX_BUILDERS.get(prefix) if filled else _REGISTRY.get(name.lower())
    if builder is None:
        return None
    accepted, takes_more = _keywords(builder, skip=filled)
    return sorted(accepted), takes_more


# build_model's arguments that a recipe sets itself, and from what: never an entry of its --model_kw
RECIPE_SETS = {"num_classes": "the dataset's class count", "in_shape": "the dataset's input shape",
               "weights": "--weights FILE"}


def check_model_kw(name: str, kw: dict, option: str = "--model_kw", sets: Optional[Dict[str, str]] = None) -> None:
    """Refuse, before anything is built or read, an entry of a recipe's ``option`` (``--model_kw``)
    for model ``name``: one the recipe sets itself (``sets``: each such argument and what sets it,
    default :data:`RECIPE_SETS`), the argument the model's name fills (``torchvision:NAME``'s arch),
    or one its builder does not take (a builder that passes keywords on is checked when it builds).
    A ConfigError naming ``option`` and the fix otherwise; an unknown model name is left to the
    caller, which names the known ones."""
    sets = RECIPE_SETS if sets is None else sets
    for key in sorted(set(kw) & set(sets)):
        raise ConfigError(f"{option} {key}: the recipe sets {key} from {sets[key]}; drop it from {option}")
    prefix, filled = (name.split(":", 1)[0], 1) if ":" in name else (None, 0)
    builder = _PREFIX_BUILDERS.get(prefix) if filled else _REGISTRY.get(name.lower())
    if builder is None:
        return
    accepted, takes_more = _keywords(builder, skip=filled)
    try:
        _check_named_part(name, kw, builder, filled)
        _check_keywords(name, kw, accepted, takes_more)
    except ValueError as e:
        raise ConfigError(f"{option} {_entries(kw)}: {e}") from None


def build_model_kw(name: str, kw: dict, option: str = "--model_kw", num_classes: int = 10,
                   in_shape: Optional[Sequence[int]] = None, weights: Optional[str] = None) -> nn.Module:
    """:func:`build_model` for a recipe: ``kw`` is its ``option`` (``--model_kw``), so that a value the
    model refuses (``hidden=abc``) is a ConfigError that names the option and the entries given; a
    weights file that does not fit the model keeps its own error."""
    try:
        model = build_model(name, num_classes=num_classes, in_shape=in_shape, **kw)
    except (ValueError, TypeError) as e:
        if not kw:
            raise
        raise ConfigError(f"{option} {_entries(kw)}: {e}") from e
    if weights:
        load_weights(model, weights)
    return model


def _entries(kw: dict) -> str:
    """``kw`` as its command line gives it: ``KEY=VALUE KEY=VALUE``."""
    return " ".join(f"{k}={v}" for k, v in kw.items())


def _short(obj) -> str:
    """``repr(obj)`` cut to a line's worth, for an error message."""
    r = repr(obj)
    return r if len(r) <= 80 else r[:77] + "..."


_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")
_SET_BY_BUILD_MODEL = ("num_classes", "in_shape")  # build_model's own arguments, not model keywords


def _as_num_classes(num_classes) -> int:
    """``num_classes`` as an int >= 1; a ValueError naming it otherwise (2.5 is not cut to 2)."""
    n = whole_number(num_classes)
    if n is None or n < 1:
        raise ValueError(f"num_classes must be a whole number of outputs, at least 1, got {num_classes!r}")
    return n


def _as_in_shape(in_shape) -> Optional[tuple]:
    """``in_shape`` as a tuple of ints (None stays None); a ValueError naming it otherwise."""
    if in_shape is None:
        return None
    try:
        if isinstance(in_shape, str):  # "3,32,32", as a command line or a YAML file may give it
            parts = [d.strip() for d in in_shape.strip().strip("()[]").split(",")]
            if parts and parts[-1] == "":  # "(784,)"
                parts.pop()
            if not parts:
                raise ValueError(in_shape)
            sizes = tuple(int(d) for d in parts)  # "1 28 28" or "3,,32": a ValueError, not a wrong number
        else:
            sizes = tuple(whole_number(s, floats=True) for s in in_shape)  # 8.7 is no size, never cut to 8
        if not sizes or any(d is None or d < 1 for d in sizes):
            raise ValueError(in_shape)
        return sizes
    except (TypeError, ValueError):
        raise ValueError(f"in_shape must be the input's sizes without the batch, like (3, 32, 32) or (784,), got "
                         f"{in_shape!r}") from None


def _keywords(builder, skip: int = 0):
    """``(names, takes_more)``: the keywords ``builder`` names (after ``skip`` positional arguments,
    without build_model's own), and whether it also takes ``**kw`` (passed on, unknown here)."""
    try:
        params = list(inspect.signature(builder).parameters.values())[skip:]
    except (TypeError, ValueError):  # no signature to read: accept anything, the builder decides
        return [], True
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
             and p.name not in _SET_BY_BUILD_MODEL]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def _unknown_keyword(name: str, key: str, accepted, takes_more: bool, detail: str = "") -> str:
    close = difflib.get_close_matches(key, accepted, n=1)
    msg = f"model {name!r} takes no keyword {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if accepted:
        msg += f"; it takes {sorted(accepted)}" + (" and passes others on" if takes_more else "")
    elif not takes_more:
        msg += "; it takes no keywords (num_classes and in_shape come from the data)"
    return msg + (f" ({detail})" if detail else "")


def _check_named_part(name: str, kw: dict, builder, filled: int) -> None:
    """Refuse a keyword that names an argument the model's name fills: a ``prefix:REST`` family
    receives REST as its first argument (``torchvision:resnet18`` gives ``arch='resnet18'``)."""
    if not filled:
        return
    try:
        params = list(inspect.signature(builder).parameters.values())[:filled]
    except (TypeError, ValueError):
        return
    prefix, rest = name.split(":", 1)
    for p in params:
        if p.name in kw:
            raise ValueError(f"model {name!r} takes no keyword {p.name!r}: the part of the name after '{prefix}:' "
                             f"is its {p.name} ({rest!r} here); drop the keyword and name the model "
                             f"{prefix}:{kw[p.name]} instead")


def _check_keywords(name: str, kw: dict, accepted, takes_more: bool) -> None:
    """Refuse, before building, a keyword ``name``'s builder does not take (when it takes no ``**kw``)."""
    for key in kw:
        if key in _SET_BY_BUILD_MODEL:
            continue  # build_model's own arguments are never in **kw
        if key not in accepted and not takes_more:
            raise ValueError(_unknown_keyword(name, key, accepted, takes_more))


# Importing the families registers them.
from . import densecat, lenet, mlp, resnet_cifar, tv, vit  # noqa: E402,F401
from .densecat import DenseCat  # noqa: E402
from .lenet import LeNet5  # noqa: E402
from .mlp import MLP  # noqa: E402
from .resnet_cifar import BasicBlock, CifarResNet  # noqa: E402
from .vit import separate_qkv  # noqa: E402

__all__ = [
    "build_model", "build_model_kw", "check_model_kw", "model_keywords", "register_model", "available_models", "load_weights",
    "read_state_dict", "WeightsMismatchError", "MLP", "LeNet5", "CifarResNet", "BasicBlock", "DenseCat", "separate_qkv",
]

# the families' modules, imported to register them (named here so a linter sees them used; out of
# __all__, so a star import binds no module)
_REGISTERED = (densecat, lenet, mlp, resnet_cifar, tv, vit)
