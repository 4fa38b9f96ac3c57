"""Model zoo: a registry of model families built by name.

``build_model("resnet20", num_classes=10, in_shape=(3, 32, 32), weights=path)`` builds any
registered family and optionally loads a weights file strictly. A new family registers itself
with ``@register_model("name")``; names of the form ``torchvision:NAME`` build any torchvision
classifier. Every model here is ``torch.fx.symbolic_trace``-able.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

from torch import nn

from .. import registry as _registry
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
    dimension; ``None`` takes the family's default. ``weights`` is a file path loaded with
    :func:`load_weights` (strict; never downloads). Extra keyword arguments go to the family.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    in_shape = tuple(int(s) for s in in_shape) if in_shape is not None else None
    if ":" in name:
        prefix, rest = name.split(":", 1)
        if prefix not in _PREFIX_BUILDERS:
            raise ValueError(f"unknown model family {prefix!r} in {name!r}; available: {available_models()}")
        model = _PREFIX_BUILDERS[prefix](rest, num_classes=num_classes, in_shape=in_shape, **kw)
    else:
        key = name.lower()
        if key not in _REGISTRY:
            raise ValueError(f"unknown model {name!r}; available: {available_models()}")
        model = _REGISTRY[key](num_classes=num_classes, in_shape=in_shape, **kw)
    if weights:
        load_weights(model, weights)
    return model


# Importing the families registers them.
from . import densecat, lenet, mlp, resnet_cifar, tv, vit  # noqa: E402,F401
from .densecat import DenseCat  # noqa: E402
from .lenet import LeNet5  # noqa: E402
from .mlp import MLP  # noqa: E402
from .resnet_cifar import BasicBlock, CifarResNet  # noqa: E402
from .vit import separate_qkv  # noqa: E402

__all__ = [
    "build_model", "register_model", "available_models", "load_weights", "read_state_dict",
    "WeightsMismatchError", "MLP", "LeNet5", "CifarResNet", "BasicBlock", "DenseCat", "separate_qkv",
]
