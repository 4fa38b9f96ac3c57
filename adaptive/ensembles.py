"""Ensemble granularities: which synapses are measured and edited together.

A granularity maps a weight tensor of shape ``(out, in_per_group, *kernel)`` to a tensor of
*ensemble* scores (``pool``) and an ensemble mask back to a synapse mask (``expand``). Both are
pure tensor code. A transposed convolution's weight, stored ``(in, out/groups, *kernel)``, is seen
in that layout through :class:`TransposedLayout` (see :func:`for_layer`), so every granularity, a
plugin's included, finds a unit's synapses where it expects them. New granularities register themselves with :func:`register_granularity` and are
built from a spec string by :func:`get_granularity` ("synapse", "kernel", "neuron", "block:4x4",
"2:4").
"""
from __future__ import annotations

import math
import re
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat

from . import registry as _registry
from .discovery import from_out_in, to_out_in, transposed_shape

_REDUCTIONS = ("sum", "mean", "max", "min")
_REGISTRY: Dict[str, Callable[[str], "Granularity"]] = {}


def register_granularity(pattern: str, replace: bool = False):
    """Register a factory for spec strings matching the regular expression ``pattern`` (a taken
    pattern is refused unless ``replace``). Specs are lower-cased before matching and handed to the
    factory so: a pattern with capital letters is refused."""

    if isinstance(pattern, str) and re.sub(r"\\.", "", pattern) != re.sub(r"\\.", "", pattern).lower():
        raise ValueError(f"ensemble pattern {pattern!r} has capital letters, but specs are matched lower-cased (and "
                         f"handed to the factory so): register {pattern.lower()!r}")

    def deco(factory):
        _registry.add(_REGISTRY, "ensemble pattern", pattern, factory, replace)
        return factory

    return deco


def unregister_granularity(pattern: str) -> None:
    """Take a pattern registered with :func:`register_granularity` out again (a notebook cell
    edited to register an overlapping pattern, whose specs the old one matches too). The built-in
    patterns stay (one overridden with ``replace=True`` gets its built-in factory back)."""
    _registry.remove(_REGISTRY, "ensemble pattern", pattern, _BUILTINS)


def get_granularity(spec) -> "Granularity":
    """Build a granularity from its spec string (or return it unchanged if already built)."""
    if isinstance(spec, Granularity):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"ensemble must be a spec string such as 'synapse' or 'block:4x4', got {type(spec).__name__}")
    s = spec.strip().lower()
    hits = [p for p in _REGISTRY if re.fullmatch(p, s)]
    if len(hits) > 1:  # (else the first registered would take it, and a plugin's pattern silently lose)
        own = [p for p in hits if _REGISTRY[p] is not _BUILTINS.get(p)]
        raise ValueError(f"ensemble spec {spec!r} matches more than one registered pattern, {hits} "
                         f"({', '.join(_registry._origin(_REGISTRY[p]) for p in hits)}): register the plugin's "
                         "pattern so that it matches none of the others' specs"
                         + "".join(f"; adaptive.unregister_granularity({p!r}) takes {p!r} out" for p in own))
    if hits:
        g = _REGISTRY[hits[0]](s)
        if not isinstance(g, Granularity):
            raise TypeError(f"the factory registered for ensemble pattern {hits[0]!r} "
                            f"({_registry._origin(_REGISTRY[hits[0]])}) returned {type(g).__name__} for spec {s!r}, "
                            "not a Granularity: return an instance of an adaptive.ensembles.Granularity subclass")
        return g
    extra = [p for p in _REGISTRY if p not in _BUILTIN_PATTERNS]
    raise ValueError(
        f"unknown ensemble spec {spec!r}: use 'synapse', 'kernel', 'neuron', 'block:RxC' (e.g. 'block:4x4') "
        f"or 'n:m' with n <= m (e.g. '2:4')" + (f", or a spec matching a registered pattern {extra}" if extra else "")
        + "; a plugin's granularity is known once its file is loaded (--plugins, adaptive.plugins.load_plugin)"
    )


def _check_reduce(how: str) -> None:
    if how not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {how!r}: use one of {_REDUCTIONS}")


class Granularity:
    """Base class. Subclasses define ``ensemble_shape``, ``pool`` and ``expand``."""

    spec: str = "?"

    def ensemble_shape(self, shape: torch.Size) -> tuple:
        raise NotImplementedError

    def num_ensembles(self, shape: torch.Size) -> int:
        return math.prod(self.ensemble_shape(shape))

    def ensemble_sizes(self, shape: torch.Size, device=None) -> torch.Tensor:
        """Number of synapses in each ensemble (ensemble-shaped, float)."""
        return self.pool(torch.ones(shape, device=device), "sum")

    def pool(self, scores: torch.Tensor, how: str = "sum") -> torch.Tensor:
        """Reduce synapse-shaped ``scores`` to one value per ensemble."""
        raise NotImplementedError

    def expand(self, values: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Broadcast one value per ensemble back to a synapse-shaped tensor."""
        raise NotImplementedError

    def violation(self, mask: torch.Tensor) -> str | None:
        """Why ``mask`` is not a valid mask for this granularity, or None when it is."""
        m = mask.float()
        if not torch.equal(self.pool(m, "max"), self.pool(m, "min")):
            return f"mask is not constant over each '{self.spec}' ensemble"
        return None

    def constraint_groups(self, shape: torch.Size) -> torch.Tensor | None:
        """For a granularity whose masks obey a constraint within groups of ensembles (n:m), the
        group of each ensemble (flat, long); None when any set of ensembles is a valid mask. An edit
        restricted to whole groups of a valid edit stays valid, so a line search shrinks by groups."""
        return None

    def select(self, scores: torch.Tensor, k: int) -> torch.Tensor:
        """Boolean ensemble mask keeping the ``k`` highest-scoring ensembles, ties broken by the lower
        index (a stable sort, so every process and device agrees; topk gives no such guarantee)."""
        flat = scores.reshape(-1)
        k = max(0, min(int(k), flat.numel()))
        keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        if k:
            keep[torch.argsort(flat, descending=True, stable=True)[:k]] = True
        return keep.view(scores.shape)

    def __repr__(self) -> str:
        return f"Granularity({self.spec!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Granularity) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)


class SynapseGranularity(Granularity):
    """Every scalar weight is its own ensemble."""

    spec = "synapse"

    def ensemble_shape(self, shape):
        return tuple(shape)

    def pool(self, scores, how="sum"):
        _check_reduce(how)
        return scores

    def expand(self, values, shape):
        return values.reshape(shape)

    def violation(self, mask):
        return None


class KernelGranularity(Granularity):
    """The kh x kw (x kd) weights joining one input channel to one output channel.

    For a Linear layer a kernel is a single weight, so this equals ``synapse`` there.
    """

    spec = "kernel"

    def ensemble_shape(self, shape):
        return tuple(shape[:2])

    def pool(self, scores, how="sum"):
        _check_reduce(how)
        if scores.dim() <= 2:
            return scores
        if scores.numel() == 0:
            return _no_entries(self, scores)
        return reduce(scores, "o i ... -> o i", how)

    def expand(self, values, shape):
        if len(shape) <= 2:
            return values.reshape(shape)
        return values.reshape(*values.shape, *([1] * (len(shape) - 2))).expand(shape)


class NeuronGranularity(Granularity):
    """All incoming weights of one output unit (a row of a Linear, a filter of a conv)."""

    spec = "neuron"

    def ensemble_shape(self, shape):
        return (shape[0],)

    def pool(self, scores, how="sum"):
        _check_reduce(how)
        if scores.numel() == 0:
            return _no_entries(self, scores)
        return reduce(scores, "o ... -> o", how)

    def expand(self, values, shape):
        return values.reshape(shape[0], *([1] * (len(shape) - 1))).expand(shape)


def _matrix(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``(out, everything else)``; a weight with no entries too (``reshape(0, -1)`` is ambiguous)."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def _no_entries(g: "Granularity", scores: torch.Tensor) -> torch.Tensor:
    """Pooled scores of a weight with no entries (nn.Linear(4, 0)): 0 for each ensemble, which
    holds no synapse (PyTorch's max over an empty dimension raises, and its mean is NaN)."""
    return scores.new_zeros(g.ensemble_shape(scores.shape))


def _pad2d(x: torch.Tensor, rows: int, cols: int, value: float) -> torch.Tensor:
    pr = (-x.shape[0]) % rows
    pc = (-x.shape[1]) % cols
    if pr or pc:
        x = F.pad(x, (0, pc, 0, pr), value=value)
    return x


class BlockGranularity(Granularity):
    """R x C tiles of the weight viewed as a matrix ``(out, in_per_group * prod(kernel))``.

    Edge tiles that overhang the matrix are smaller; pooling counts only real synapses.
    """

    def __init__(self, rows: int, cols: int):
        if rows < 1 or cols < 1:
            raise ValueError(f"block sizes must be >= 1, got {rows}x{cols}")
        self.rows, self.cols = rows, cols
        self.spec = f"block:{rows}x{cols}"

    def ensemble_shape(self, shape):
        rest = math.prod(shape[1:])
        return (math.ceil(shape[0] / self.rows), math.ceil(rest / self.cols))

    def pool(self, scores, how="sum"):
        _check_reduce(how)
        if scores.numel() == 0:
            return _no_entries(self, scores)
        m = _matrix(scores)
        if how == "mean":
            return self.pool(scores, "sum") / self.ensemble_sizes(scores.shape, scores.device)
        fill = {"sum": 0.0, "max": -math.inf, "min": math.inf}[how]
        m = _pad2d(m.float() if not m.is_floating_point() else m, self.rows, self.cols, fill)
        return reduce(m, "(a r) (b c) -> a b", how, r=self.rows, c=self.cols)

    def expand(self, values, shape):
        rest = math.prod(shape[1:])
        full = repeat(values, "a b -> (a r) (b c)", r=self.rows, c=self.cols)
        return full[: shape[0], :rest].reshape(shape)


class NMGranularity(SynapseGranularity):
    """N:M sparsity: at most ``n`` live synapses in every group of ``m`` consecutive weights along
    the flattened input dimension. Ensembles are single synapses (shape, pool and expand are the
    synapse granularity's); the structure is a constraint on selection (``select`` keeps the top
    ``n`` of each group)."""

    def __init__(self, n: int, m: int):
        if m < 1 or n < 1:
            raise ValueError(f"n:m needs n >= 1 and m >= 1, got {n}:{m}")
        if n > m:
            raise ValueError(f"n:m needs n <= m (n kept in every m), got {n}:{m}")
        self.n, self.m = n, m
        self.spec = f"{n}:{m}"

    def _groups(self, x: torch.Tensor, fill) -> torch.Tensor:
        m = _pad2d(_matrix(x), 1, self.m, fill)
        return rearrange(m, "o (g m) -> o g m", m=self.m)

    def violation(self, mask):
        if bool(mask.all()):
            return None  # a dense (not yet pruned) layer is always valid
        counts = self._groups(mask.to(torch.int32), 0).sum(-1)
        if bool((counts > self.n).any()):
            return f"mask has more than {self.n} live synapses in some group of {self.m} ('{self.spec}')"
        return None

    @property
    def density(self) -> float:
        return self.n / self.m

    def constraint_groups(self, shape):
        rest = math.prod(shape[1:])
        i = torch.arange(math.prod(shape))
        return (i // rest) * -(-rest // self.m) + (i % rest) // self.m

    def select(self, scores, k=None):
        """Keep the top ``n`` of every group of ``m`` (a shorter last group keeps at most ``n``: all of it
        when it holds ``n`` or fewer); ``k`` is ignored (the density is n/m). Ties go to the lower index;
        padding sorts after every real score (a stable sort), so a group never keeps padding in place of
        a real synapse, and the padding itself is cut off with the columns it fills."""
        g = self._groups(scores.float(), -math.inf)
        idx = torch.argsort(g, dim=-1, descending=True, stable=True)[..., : self.n]
        keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)
        keep = rearrange(keep, "o g m -> o (g m)")[:, : math.prod(scores.shape[1:])]  # padding cut off
        return keep.reshape(scores.shape)


class TransposedLayout(Granularity):
    """Granularity ``inner`` applied to a transposed convolution's weight (``nn.ConvTranspose*``,
    stored ``(in, out/groups, *kernel)``, here of shape ``shape``) as it applies to a convolution's:
    every weight-shaped tensor is laid out ``(out, in/groups, *kernel)`` before ``inner`` sees it and
    back after, so a neuron is one output channel's incoming synapses, a kernel one (input, output)
    channel pair, blocks and n:m groups run along the input axis. Ensemble-shaped tensors (scores,
    ensemble masks) are ``inner``'s of that layout, except where ``inner``'s ensembles are single
    synapses (n:m, an elementwise plugin): they stay in the stored layout, element for element with
    the weight and its mask. The spec is ``inner``'s, so checkpoints and rules see the same
    granularity; other attributes (an n:m's ``density``) are ``inner``'s."""

    def __init__(self, inner: Granularity, groups: int, shape):
        self.inner, self.groups, self.spec = inner, int(groups), inner.spec
        self.out_in_shape = transposed_shape(tuple(shape), self.groups)
        self.per_synapse = tuple(inner.ensemble_shape(self.out_in_shape)) == self.out_in_shape

    def __getattr__(self, name):
        if name.startswith("__") or name == "inner":  # copy and pickle probe before __init__ ran
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _shape(self, shape) -> tuple:
        if transposed_shape(tuple(shape), self.groups) != self.out_in_shape:
            raise ValueError(f"{self!r} is for a weight of shape {transposed_shape(self.out_in_shape, self.groups)}, "
                             f"got {tuple(shape)}")
        return self.out_in_shape

    def _out_in(self, t: torch.Tensor) -> torch.Tensor:
        return to_out_in(t, self.groups)

    def _stored(self, t: torch.Tensor) -> torch.Tensor:
        return from_out_in(t, self.groups)

    def ensemble_shape(self, shape):
        es = self.inner.ensemble_shape(self._shape(shape))
        return tuple(shape) if self.per_synapse else es

    def pool(self, scores, how="sum"):
        e = self.inner.pool(self._out_in(scores), how)
        return self._stored(e) if self.per_synapse else e

    def expand(self, values, shape):
        out_in = self._shape(shape)
        return self._stored(self.inner.expand(self._out_in(values) if self.per_synapse else values, out_in))

    def violation(self, mask):
        return self.inner.violation(self._out_in(mask))

    def constraint_groups(self, shape):
        g = self.inner.constraint_groups(self._shape(shape))
        if g is None or not self.per_synapse:  # groups of inner's ensembles, which are ours
            return g
        return self._stored(g.view(self.out_in_shape)).reshape(-1)

    def select(self, scores, k=None):
        if self.per_synapse:
            return self._stored(self.inner.select(self._out_in(scores), k))
        return self.inner.select(scores, k)

    def __repr__(self) -> str:
        return f"TransposedLayout({self.inner!r}, groups={self.groups})"


def for_layer(g: Granularity, layer) -> Granularity:
    """The granularity ``g`` as it applies to ``layer`` (a :class:`~adaptive.discovery.SynapseLayer`):
    ``g`` itself, or for a transposed convolution :class:`TransposedLayout` around it. The synapse
    granularity needs none: each ensemble is one weight, in whatever layout."""
    if not layer.transposed or type(g) is SynapseGranularity:
        return g
    return TransposedLayout(g, layer.groups, layer.shape)


def unwrapped(g: Granularity) -> Granularity:
    """The granularity a :class:`TransposedLayout` applies (``g`` itself for any other)."""
    return g.inner if isinstance(g, TransposedLayout) else g


def expands_exactly(g: Granularity) -> bool:
    """Is every ensemble mask of ``g``, expanded, a valid synapse mask that pools ("max") back to
    itself? True for the built-in synapse, kernel, neuron and block granularities: expand copies each
    ensemble's value to all its synapses, every ensemble holds at least one (edge blocks are smaller,
    never empty), and no other rule applies. False for n:m (a density rule within groups) and for
    any other class, a subclass of these included: its ``violation`` may add a rule. A
    :class:`TransposedLayout` only permutes the weights, so it expands exactly where its ``inner`` does."""
    return type(unwrapped(g)) in (SynapseGranularity, KernelGranularity, NeuronGranularity, BlockGranularity)


_BUILTIN_TYPES = (SynapseGranularity, KernelGranularity, NeuronGranularity, BlockGranularity, NMGranularity)


def check_granularity(g: Granularity, name: str, shape, device=None, builtin: bool = False) -> None:
    """Refuse a granularity that is not self-consistent on layer ``name`` (weight ``shape``):
    ``pool`` must return ``ensemble_shape``, ``expand`` the weight's shape, an ensemble mask
    must come back from ``pool(expand(x).float(), "max") > 0`` (how the connectome reads its masks)
    for a random bool ``x`` and its complement, and the ensembles must tile the weight: every synapse
    is in one ensemble (``expand`` of ``x`` or of ``~x`` sets it; ``pool`` of ones, the ensembles'
    sizes by which budgets count, adds up to the weight's synapses). A ValueError names the granularity, the layer and
    what was wrong. The built-in granularities hold by construction (tests check them with
    ``builtin=True``) and are skipped; a plugin's costs a few pool/expand calls per layer shape."""
    if type(unwrapped(g)) in _BUILTIN_TYPES and not builtin:
        return
    shape = tuple(shape)
    who = f"ensemble granularity {g.spec!r} ({type(g).__qualname__})"
    where = f"on layer {name!r} (weight shape {shape})"

    def refuse(what: str, cause: Exception | None = None):
        why = f": {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}" if cause else ""
        raise ValueError(f"{who} is not self-consistent {where}: {what}{why}. A granularity's pool() reduces a "
                         "weight-shaped tensor to ensemble_shape(shape), expand() broadcasts ensemble values back "
                         "to the weight's shape, pooling ('max') an expanded ensemble mask gives it back, and every "
                         "synapse is in exactly one ensemble: fix the plugin's granularity") from cause

    try:
        es = tuple(int(d) for d in g.ensemble_shape(shape))
    except Exception as e:  # noqa: BLE001 - a plugin's own bug, named
        refuse("ensemble_shape() failed", e)
    try:
        pooled = g.pool(torch.ones(shape, device=device), "sum")
    except Exception as e:  # noqa: BLE001
        refuse("pool() failed on a weight-shaped tensor", e)
    if not isinstance(pooled, torch.Tensor) or tuple(pooled.shape) != es:
        refuse(f"pool() returns {tuple(pooled.shape) if isinstance(pooled, torch.Tensor) else type(pooled).__name__}, "
               f"but ensemble_shape() says {es}")
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(es, generator=gen) < 0.5).to(device)
    covered = torch.zeros(shape, dtype=torch.bool, device=device)
    for m in (x, ~x):
        try:
            full = g.expand(m, shape)
        except Exception as e:  # noqa: BLE001
            refuse(f"expand() failed on an ensemble mask of shape {es}", e)
        if not isinstance(full, torch.Tensor) or tuple(full.shape) != shape:
            refuse(f"expand() of an ensemble mask of shape {es} returns "
                   f"{tuple(full.shape) if isinstance(full, torch.Tensor) else type(full).__name__}, not the weight's shape")
        try:
            back = g.pool(full.float(), "max") > 0
        except Exception as e:  # noqa: BLE001
            refuse("pool(expand(mask), 'max') failed", e)
        if tuple(back.shape) != es or not torch.equal(back, m):
            bad = int((back != m).sum()) if tuple(back.shape) == es else "all"
            refuse(f"pool(expand(mask), 'max') does not give a random ensemble mask back ({bad} of {m.numel()} "
                   "ensembles differ): pool and expand disagree on which synapses form an ensemble")
        covered |= full.to(device=covered.device, dtype=torch.bool)
    if not bool(covered.all()):
        refuse(f"{int((~covered).sum())} of {covered.numel()} synapses are in no ensemble (expand() of an all-True "
               "ensemble mask leaves them False), so they could never be live: the ensembles must tile the weight")
    counted, total = float(pooled.double().sum()), math.prod(shape)
    # (pool sums float32 ones: an ensemble past 2**24 synapses, a whole layer's, counts them to float error)
    if not math.isclose(counted, total, rel_tol=1e-5, abs_tol=0.5):
        refuse(f"the ensembles' sizes, pool() of a weight of ones ('sum'), add up to {counted:.10g} synapses, not the "
               f"weight's {total}: every synapse must be in exactly one ensemble")


register_granularity(r"synapse|unstructured")(lambda s: SynapseGranularity())
register_granularity(r"kernel")(lambda s: KernelGranularity())
register_granularity(r"neuron|channel|filter")(lambda s: NeuronGranularity())


@register_granularity(r"block:(\d+)x(\d+)")
def _block(s):
    r, c = re.fullmatch(r"block:(\d+)x(\d+)", s).groups()
    return BlockGranularity(int(r), int(c))


@register_granularity(r"(\d+):(\d+)")
def _nm(s):
    n, m = re.fullmatch(r"(\d+):(\d+)", s).groups()
    return NMGranularity(int(n), int(m))


_BUILTINS = dict(_REGISTRY)  # the package's own: unregister_granularity leaves them
_BUILTIN_PATTERNS = frozenset(_REGISTRY)  # the rest came from plugins: error messages list them
