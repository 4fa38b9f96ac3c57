"""Layer budgets: how a target density is shared between layers.

A budget is a plain function ``(layers, density, protected, min_density) -> {name: live synapses}``
returning integer live-synapse counts that add up exactly to ``round(density * total)``, with no
layer above its size. ``protected``: the layers kept as they are, as ``{name: live synapses}`` (the
controller passes what each holds) or as names alone (counted dense); a protected layer's count is
what it holds, and the other layers share the rest (a density they cannot make up even when full,
or one under what the protected layers and floors alone need, is a ValueError naming the range the
network can reach). ``global`` returns None: the controller then ranks all layers together.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, Mapping, Optional

from . import registry as _registry
from .counts import unit_fraction, whole_number
from .discovery import SynapseLayer

BudgetFn = Callable[..., Optional[Dict[str, int]]]
_BUDGETS: Dict[str, BudgetFn] = {}


def register_budget(name: str, replace: bool = False):
    """Function decorator: the budget answers to ``name`` (taken names are refused unless ``replace``)."""
    _registry.check_name("layer budget", name)

    def deco(fn):
        if not callable(fn):
            raise TypeError(f"layer budget {name!r}: register_budget decorates a function fn(layers, density, "
                            f"protected=(), min_density=0.0), got {type(fn).__name__} {fn!r}")
        _registry.add(_BUDGETS, "layer budget", name, fn, replace)
        return fn

    return deco


def get_budget(name: str) -> BudgetFn:
    """The layer budget function registered as ``name`` (see :func:`budget_names`): ``fn(layers,
    density, protected=(), min_density=0.0)`` gives each layer's synapse count, or None for a global
    ranking. An unknown name is a ValueError listing them."""
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


def _clipped_share(a: Dict[str, float], lo: Dict[str, int], hi: Dict[str, int], total: int) -> Dict[str, float]:
    """``clip(eps * a[n], lo[n], hi[n])`` for the one scale ``eps`` at which they add up to ``total``
    (the sum only grows with ``eps``, so bisection finds it; the sum at the returned scale is at
    most ``total``, never above). A layer whose share reaches its size is full and the others
    share the rest; one below its floor gets the floor."""
    def share(eps):
        return {n: min(hi[n], max(lo[n], eps * a[n])) for n in a}

    if not a:
        return {}
    lo_eps, hi_eps = 0.0, max(hi[n] / a[n] for n in a if a[n] > 0)
    if sum(share(hi_eps).values()) <= total:
        return share(hi_eps)
    for _ in range(200):
        mid = 0.5 * (lo_eps + hi_eps)
        if sum(share(mid).values()) <= total:
            lo_eps = mid
        else:
            hi_eps = mid
        if hi_eps - lo_eps <= 1e-15 * hi_eps:
            break
    return share(lo_eps)


def _allocate(layers: Dict[str, SynapseLayer], density: float, weights: Dict[str, float],
              protected: Iterable[str] | Mapping[str, int], min_density: float) -> Dict[str, int]:
    """Live counts proportional to ``weights`` (per-synapse density factors) with exact total,
    capacity capping (a layer that would exceed 100% is made dense and the rest rescaled) and a
    per-layer floor of ``min_density`` (a layer held at its floor leaves the rest to the others;
    solved for one scale at once, so a layer made full is released again when floors lower the
    scale). A protected layer keeps what it holds (``protected[name]`` for a mapping, else its size)."""
    sizes = {n: l.numel for n, l in layers.items()}
    density, min_density, fixed = _checked_inputs(sizes, density, protected, min_density)
    total = sum(sizes.values())
    target = int(round(density * total))
    floor = {n: floor_synapses(min_density, sizes[n]) for n in sizes}
    need = sum(fixed.values()) + sum(floor[n] for n in sizes if n not in fixed)
    if need > target:
        raise too_low_error(density, fixed, min_density, need, target, total)
    most = sum(fixed.values()) + sum(sizes[n] for n in sizes if n not in fixed)
    if most < target:
        raise too_high_error(density, fixed, most, total)
    free = [n for n in sizes if n not in fixed]
    remaining = target - sum(fixed.values())
    a = {n: weights[n] * sizes[n] for n in free}
    if not any(v > 0 for v in a.values()):
        a = {n: float(sizes[n]) for n in free}  # no preference: the same density everywhere
    raw = _clipped_share(a, {n: floor[n] for n in free}, {n: sizes[n] for n in free}, remaining)
    counts = dict(fixed)
    counts.update(_largest_remainder(raw, target - sum(fixed.values()), {n: sizes[n] for n in free}))
    return {n: counts[n] for n in layers}


def _checked_inputs(sizes: Dict[str, int], density, protected, min_density):
    """A budget's arguments checked before anything is shared (a budget is public: ``get_budget(name)(...)``):
    ``density`` and ``min_density`` as floats in [0, 1], ``protected`` as ``{name: live synapses}`` of
    layers among ``sizes`` (one name as a string is that layer, as ``Controller(protect=...)`` takes it; a
    name alone counts dense). A wrong one is a ValueError or TypeError naming it and the fix (a string was
    taken letter by letter and a mistyped name dropped, both protecting nothing; a count above its layer's
    size broke the budget's contract; NaN or a negative density failed inside the arithmetic)."""
    d, md = unit_fraction(density, slack=0.0), unit_fraction(min_density, slack=0.0)
    if d is None:
        raise ValueError(f"density must be a number in [0, 1] (the share of the layers' synapses kept), got {density!r}")
    if md is None:
        raise ValueError(f"min_density must be a number in [0, 1] (the share of each layer's synapses kept at least; "
                         f"0: no floor), got {min_density!r}")
    if isinstance(protected, str):
        protected = [protected]
    if isinstance(protected, Mapping):
        held = dict(protected)
    else:
        try:
            held = {n: None for n in protected}
        except TypeError:
            raise TypeError(f"protected must be layer names or {{name: live synapses}}, got {type(protected).__name__} "
                            f"{protected!r}") from None
    unknown = [n for n in held if n not in sizes]
    if unknown:
        raise ValueError(f"protected names {unknown[:5]} that are not among the layers {sorted(sizes)[:8]}"
                         f"{' ...' if len(sizes) > 8 else ''}: give the layers' names as the connectome names them "
                         "(conn.names, 'fc1.weight')")
    fixed = {}
    for n, k in held.items():
        count = sizes[n] if k is None else whole_number(k)
        if count is None or not 0 <= count <= sizes[n]:
            raise ValueError(f"protected layer {n!r} holds {k!r} live synapses: a count is a whole number from 0 to "
                             f"the layer's {sizes[n]:,} synapses")
        fixed[n] = count
    return d, md, fixed


def floor_synapses(min_density: float, size: int) -> int:
    """The live synapses a ``min_density`` floor keeps in a layer of ``size`` synapses: at least
    ``min_density`` of them, ``min_density * size`` rounded up, where a product that float arithmetic
    puts a hair above a whole number counts as that number (``0.07 * 100`` is ``7.000000000000001``:
    the floor is 7 synapses, not 8, so a uniform density of 0.07 holds a min_density of 0.07). The
    tolerance is float error's own size: a wider one (1e-12 of the product) left a large layer a
    synapse under its floor (0.9999 of 199,999,999 synapses is 199,979,999.0001: 199,980,000 kept)."""
    x = min_density * size
    # the product is within 2^-52 (2.2e-16) of it of min_density's decimal value times size (one rounding
    # of the product, one of min_density): 1e-15 of it is above that and below any real fraction's part
    return int(math.ceil(x - 1e-15 * x))


def too_low_error(density: float, fixed: Mapping[str, int], min_density: float, need: int, target: int,
                  total: Optional[int] = None, least_need: Optional[int] = None) -> ValueError:
    """The error for a density under what the protected layers (``fixed``: {name: live synapses})
    and the ``min_density`` floors of the others alone need (``need`` of ``target`` live synapses;
    ``total``: the synapses a density is a fraction of, to name the lowest density that holds them;
    ``least_need``: the live synapses that lowest density must hold where more than ``need``, as
    floors held in whole ensembles need, :func:`adaptive.policies.base.least_floor_synapses`)."""
    held = sum(fixed.values())
    what = [f"the protected layers {sorted(fixed)} (holding {held:,} live synapses)" if fixed else "",
            f"min_density {min_density}" if min_density > 0 else ""]
    raise_to = "raise the density"
    if total:
        least = rounded_up_text(max(need, least_need or 0) / total)
        raise_to = f"raise the density to {least} or more" if float(least) <= 1 else ""
    fix = [raise_to, "protect fewer layers" if fixed else "", "lower min_density" if min_density > 0 else ""]
    return ValueError(f"density {density} is too low for {' and '.join(filter(None, what))}: "
                      f"{'they' if fixed else 'the floors'} alone need {need:,} of {target:,} live synapses; "
                      + " or ".join(filter(None, fix)))


def too_high_error(density: float, fixed: Mapping[str, int], most: int, total: int) -> ValueError:
    """The error for a density the network cannot reach: the protected layers (``fixed``) hold
    fewer synapses than their share (emptied or pruned by hand) and the others, full, leave the
    network at ``most`` of its ``total`` synapses."""
    held = sum(fixed.values())
    if most == 0:
        lower = "no density in (0, 1] is reachable: refill"
    else:
        lower = f"lower the density to {reachable_text(most / total)} or less, or refill"
    return ValueError(
        f"density {density} is out of reach: the protected layers {sorted(fixed)} hold {held:,} live synapses "
        f"and the other layers at most {most - held:,} (all of theirs), {most:,} of the {int(round(density * total)):,} "
        f"asked for (density {most / total:.4g}); {lower} the protected layers (Connectome.set_masks) or leave them "
        "out of protect=[...]")


def rounded_up_text(density: float) -> str:
    """``density`` rounded up to four significant digits, so that a density it names holds at least
    ``density`` of the synapses."""
    scale = 10 ** (3 - math.floor(math.log10(density)))
    return f"{math.ceil(round(density * scale, 6)) / scale:.4g}"


def reachable_text(density: float) -> str:
    """``density`` rounded down to four significant digits, so that a density it names is reachable
    (0.923 for 0.92308, 2.105e-05 for 2.1053e-05, 0.57 for 57 / 100, whose float product with 10^4
    falls a hair under 5700)."""
    if density <= 0:
        return "0"
    scale = 10 ** (3 - math.floor(math.log10(density)))
    return f"{math.floor(round(density * scale, 6)) / scale:.4g}"


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
    w = {n: sum(l.out_in_shape) / l.numel for n, l in layers.items()}  # (out, in/groups, *kernel), transposed too
    return _allocate(layers, density, w, protected, min_density)


@register_budget("er")
def er_budget(layers, density, protected=(), min_density=0.0):
    """Erdős–Rényi (Mocanu et al. 2018): density proportional to (fan_in + fan_out)/(fan_in * fan_out)."""
    w = {n: (l.out_in_shape[0] + l.out_in_shape[1]) / (l.out_in_shape[0] * l.out_in_shape[1]) for n, l in layers.items()}
    return _allocate(layers, density, w, protected, min_density)
