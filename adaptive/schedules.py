"""Schedules: how the edit fraction and the target density move with the step.

Frozen dataclasses with one method, registered by name, so a configuration can say
``edit_decay="cosine"`` and an outside schedule plugs in without touching the controller.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional

from . import registry as _registry

_DECAYS: Dict[str, Callable[..., "Decay"]] = {}


def register_decay(name: str, replace: bool = False):
    """Class decorator: the edit decay answers to ``name`` (taken names are refused unless ``replace``).
    It decorates a :class:`Decay` subclass that defines ``__call__(step)`` (or another callable that
    builds one from ``start``, ``start_step`` and ``end_step``): else a TypeError, raised here."""
    _registry.check_name("edit decay", name)

    def deco(cls):
        if not callable(cls) or (isinstance(cls, type) and issubclass(cls, Decay) and cls.__call__ is Decay.__call__):
            raise TypeError(f"edit decay {name!r}: register_decay decorates a Decay subclass that defines "
                            f"__call__(step) -> fraction in [0, 1], got {getattr(cls, '__qualname__', repr(cls))}"
                            + (" (no __call__ of its own)" if callable(cls) else " (not callable)"))
        _registry.add(_DECAYS, "edit decay", name, cls, replace)
        return cls

    return deco


def get_decay(name: str, start: float, end_step: Optional[int], start_step: int = 0) -> "Decay":
    if not isinstance(name, str) or name not in _DECAYS:  # (a list is unhashable: a TypeError, not the name)
        raise ValueError(f"unknown edit decay {name!r}: use one of {sorted(_DECAYS)}")
    return _DECAYS[name](start=start, start_step=start_step, end_step=end_step)


@dataclass(frozen=True)
class Decay:
    """A value that starts at ``start`` at ``start_step`` and decays to 0 at ``end_step``."""

    start: float
    start_step: int = 0
    end_step: Optional[int] = None

    def progress(self, step: int) -> float:
        if self.end_step is None:
            return 0.0
        if self.end_step <= self.start_step:  # no span: the start value before it, the end value from it on
            return 1.0 if step >= self.end_step else 0.0
        span = self.end_step - self.start_step
        return min(1.0, max(0.0, (step - self.start_step) / span))

    def __call__(self, step: int) -> float:
        raise NotImplementedError


@register_decay("constant")
@dataclass(frozen=True)
class ConstantDecay(Decay):
    def __call__(self, step):
        if self.end_step is not None and step >= self.end_step:  # 0 at end_step, as every decay
            return 0.0
        return self.start


@register_decay("cosine")
@dataclass(frozen=True)
class CosineDecay(Decay):
    def __call__(self, step):
        return self.start * 0.5 * (1.0 + math.cos(math.pi * self.progress(step)))


@register_decay("linear")
@dataclass(frozen=True)
class LinearDecay(Decay):
    def __call__(self, step):
        return self.start * (1.0 - self.progress(step))


@dataclass(frozen=True)
class CubicDensity:
    """Zhu & Gupta (2017) gradual pruning: density falls from ``initial`` to ``final`` between
    ``start_step`` and ``end_step`` as s_t = s_f + (s_i - s_f)(1 - progress)^3 in sparsity terms."""

    initial: float
    final: float
    start_step: int
    end_step: int

    def __call__(self, step: int) -> float:
        if step >= self.end_step:  # first: with start_step == end_step the final value holds from there
            return self.final
        if step <= self.start_step:
            return self.initial
        p = (step - self.start_step) / max(1, self.end_step - self.start_step)
        s_i, s_f = 1.0 - self.initial, 1.0 - self.final
        return 1.0 - (s_f + (s_i - s_f) * (1.0 - p) ** 3)
