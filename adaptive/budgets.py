"""Layer budgets: how a target density is shared between layers.

A budget is a plain function ``(layers, density, protected, min_density) -> {name: live synapses}``
returning integer live-synapse counts that add up exactly to ``round(density * total)``, with no
layer above its size. ``global`` returns None: the controller then ranks all layers together.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, Optional

from . import registry as _registry
from .discovery import SynapseLayer

BudgetFn = Callable[..., Optional[Dict[str, int]]]
_BUDGETS: Dict[str, BudgetFn] = {}


def register_budget(name: str, replace: bool = False):
    """Function decorator: the budget answers to ``name`` (taken names are refused unless ``replace``)."""
    def deco(fn):
        _registry.add(_BUDGETS, "layer budget", name, fn, replace)
        return fn

    return deco


def get_budget(name: str) -> BudgetFn:
    if name not in _BUDGETS:
        raise ValueError(f"unknown layer budget {name!r}: use one of {sorted(_BUDGETS)}")
    return _BUDGETS[name]


def budget_names():
    return sorted(_BUDGETS)


def _largest_remainder(raw: Dict[str, float], total: int, caps: Dict[str, int]) -> Dict[str, int]:
    """Round non-negative reals to integers summing to ``total`` without exceeding ``caps``."""
    out = {n: min(caps[n], int(math.floor(v))) for n, v in raw.items()}
    short = total - sum(out.values())
    order = sorted(raw, key=lambda n: (-(raw[n] - math.floor(raw[n])), n))
    while short > 0:
        moved = False
        for n in order:
            if short == 0:
                break
            if out[n] < caps[n]:
                out[n] += 1
                short -= 1
                moved = True
        if not moved:
            break
    return out


def _allocate(layers: Dict[str, SynapseLayer], density: float, weights: Dict[str, float],
              protected: Iterable[str], min_density: float) -> Dict[str, int]:
    """Live counts proportional to ``weights`` (per-synapse density factors) with exact total,
    capacity capping (a layer that would exceed 100% is made dense and the rest rescaled) and a
    per-layer floor of ``min_density``."""
    sizes = {n: l.numel for n, l in layers.items()}
    total = sum(sizes.values())
    target = int(round(density * total))
    fixed: Dict[str, int] = {n: sizes[n] for n in protected if n in sizes}
    floor = {n: int(math.ceil(min_density * sizes[n])) for n in sizes}
    if sum(fixed.values()) + sum(floor[n] for n in sizes if n not in fixed) > target:
        raise ValueError(
            f"density {density} is too low for the protected layers {sorted(fixed)} and min_density {min_density}: "
            f"they alone need {sum(fixed.values()) + sum(floor[n] for n in sizes if n not in fixed):,} of "
            f"{target:,} live synapses; raise the density or protect fewer layers"
        )
    free = [n for n in sizes if n not in fixed]
    while True:
        remaining = target - sum(fixed.values())
        denom = sum(weights[n] * sizes[n] for n in free)
        if denom <= 0:
            raw = {n: remaining * sizes[n] / max(1, sum(sizes[m] for m in free)) for n in free}
        else:
            eps = remaining / denom
            raw = {n: eps * weights[n] * sizes[n] for n in free}
        over = [n for n in free if raw[n] >= sizes[n]]
        under = [n for n in free if raw[n] < floor[n]]
        if over:
            for n in over:
                fixed[n] = sizes[n]
            free = [n for n in free if n not in over]
            continue
        if under:
            for n in under:
                fixed[n] = floor[n]
            free = [n for n in free if n not in under]
            continue
        break
    counts = dict(fixed)
    counts.update(_largest_remainder(raw, target - sum(fixed.values()), {n: sizes[n] for n in free}))
    return {n: counts[n] for n in layers}


@register_budget("global")
def global_budget(layers, density, protected=(), min_density=0.0):
    """No per-layer allocation: the controller ranks ensembles of all layers together."""
    return None


@register_budget("uniform")
def uniform_budget(layers, density, protected=(), min_density=0.0):
    """Every unprotected layer gets the same density (exact total)."""
    return _allocate(layers, density, {n: 1.0 for n in layers}, protected, min_density)


@register_budget("erk")
def erk_budget(layers, density, protected=(), min_density=0.0):
    """Erdős–Rényi-Kernel (Evci et al. 2020): density proportional to
    (sum of the weight's dimensions) / (product of its dimensions)."""
    w = {n: sum(l.shape) / l.numel for n, l in layers.items()}
    return _allocate(layers, density, w, protected, min_density)


@register_budget("er")
def er_budget(layers, density, protected=(), min_density=0.0):
    """Erdős–Rényi (Mocanu et al. 2018): density proportional to (fan_in + fan_out)/(fan_in * fan_out)."""
    w = {n: (l.shape[0] + l.shape[1]) / (l.shape[0] * l.shape[1]) for n, l in layers.items()}
    return _allocate(layers, density, w, protected, min_density)
