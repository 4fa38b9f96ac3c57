"""The connectome: for every prunable weight a boolean mask, its ensemble granularity and unit
bookkeeping; in ``mask_only`` mode also the frozen original weights. It is the single source of
truth for which synapses exist.

Execution is masked-dense: a pruned synapse is an exact 0.0 inside the ordinary dense parameter,
so PyTorch's own kernels run the forward and backward passes and gradients stay dense (growth
scores need them). :meth:`Connectome.attach` hooks an optimizer so that gradients are masked just
before its step and weights are re-masked right after it; optimizer moments are reset wherever a
mask changes. While no observer needs dense gradients, each gradient is masked as soon as backward
has accumulated it (a per-parameter hook, while it is still in cache), and the step only checks
that nothing wrote to it since. Parameters keep their identity and no hook is placed on the model's
modules (parameter hooks are neither deep-copied nor pickled), so optimizers, DDP, checkpoints,
``deepcopy`` and ``pickle`` keep working.
"""
from __future__ import annotations

import fnmatch
import functools
import glob
import hashlib
import json
import os
import sys
import weakref
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Mapping, Optional

import torch
from torch import nn

from . import bitpack, ensemble_rules
from .atomic import atomic_path
from .discovery import (PRUNABLE_LIST, SynapseLayer, _as_patterns, aliases, discover, holds_synapses, prunable_names,
                        shared_weight_warning, state_dict_keys)
from .ensembles import Granularity, check_granularity, expands_exactly, for_layer, unwrapped
from .exact_masking import bits, int_mask, mask_, mask_dtype
from .grad_masking import BackwardMasker
from .optim_state import preserves_zeros, reset_state, unwrap_optimizer, zero_eps_warning
from .warn import warn_user

MODES = ("train", "mask_only")
FORMAT = "adaptive.connectome/1"


def _plain_module(model: nn.Module) -> nn.Module:
    """The module a wrapper runs: ``torch.compile``'s (``_orig_mod``), DistributedDataParallel's or
    DataParallel's (``module``, what ``accelerator.prepare`` returns), nested in any order. A wrapper
    holds the same parameters under prefixed names; a connectome uses the module's own, so that its
    files, state_dict and dense_state_dict() are the same whether it was built before or after the
    model was wrapped and load into the plain model, and masks what the wrapped forward reads."""
    while True:
        inner = _wrapped(model)
        if inner is None:
            return model
        model = inner


_PARALLEL = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def _wrapped(model: nn.Module) -> Optional[nn.Module]:
    """The module directly inside a ``torch.compile``, DistributedDataParallel or DataParallel
    wrapper; None for any other module."""
    frames = sys.modules.get("torch._dynamo.eval_frame")  # not imported yet: nothing was compiled
    compiled = getattr(frames, "OptimizedModule", None)
    if compiled is not None and isinstance(model, compiled):
        return model._orig_mod
    return model.module if isinstance(model, _PARALLEL) else None


def _local_module(model: nn.Module) -> nn.Module:
    """``model``, or where a DistributedDataParallel or DataParallel wrapper is among its wrappers
    (``accelerator.prepare``'s, compiled or not), the plain module inside: what runs a forward in this
    process alone. A DDP forward is a collective (it broadcasts buffers, and readies the gradient
    reduction), so a forward of one process alone, one that measures rather than trains, must not
    go through it."""
    inner = model
    while inner is not None:
        if isinstance(inner, _PARALLEL):
            return _plain_module(model)
        inner = _wrapped(inner)
    return model


def eager(fn: Callable) -> Callable:
    """``fn``, kept out of any graph even when compiled code calls it (``torch.compile(opt.step)``
    runs the step hooks), as ``torch.compiler.disable`` keeps it, but without importing
    ``torch._dynamo`` (over a second) at our import: while nothing has imported it nothing can be
    compiling, and ``fn`` runs as it is."""
    disabled = torch._disable_dynamo(fn)  # torch's own lazy disable (dynamo imported at its first call)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        return disabled(*args, **kwargs)

    return run


_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile's; DistributedDataParallel's and DataParallel's

# Which connectome masks each weight through an optimizer: id(weight) -> (weakref to the weight,
# weakref to the connectome). One connectome masks a weight at a time; a second one attached to the
# same weights takes over (a notebook cell run twice builds a second Connectome on the same model,
# and the first stays alive through its optimizer hooks even when nothing else refers to it).
_MASKED_BY: Dict[int, tuple] = {}


def _plain_names(d: Optional[Mapping], known, names=None) -> Optional[dict]:
    """``d`` with keys saved from a wrapper (``_orig_mod.NAME`` of ``torch.compile``, ``module.NAME`` of
    DistributedDataParallel or DataParallel: by code that named layers as the wrapper does, or by a
    connectome built on one before it took the plain module's names) renamed to the plain module's
    ``NAME``: see :func:`_wrapper_prefix` (of ``names``, by default ``d``'s keys)."""
    return None if d is None else _stripped(d, _wrapper_prefix(d if names is None else names, known))


def _stripped(d: Mapping, prefix: str) -> dict:
    """``d`` with ``prefix`` taken off the keys that start with it."""
    return {k[len(prefix):] if prefix and isinstance(k, str) and k.startswith(prefix) else k: v for k, v in d.items()}


def _wrapper_prefix(names, known) -> str:
    """The wrappers' prefix (``module.``, ``_orig_mod.module.``, ...) that ``names``, saved under a
    wrapper, carry before the names ``known`` has: the one whose removal from every name carrying it
    gives the most names ``known`` has, more than as given, and no two names alike; "" when none does
    (names as given). One prefix for all: a wrapper names every layer alike, so a model whose own
    submodule is called ``module`` keeps ``module.fc`` (its own) apart from a wrapper's ``module.fc``
    (its ``fc``)."""
    names = [n for n in names if isinstance(n, str)]
    candidates = set()
    for n in names:
        head = ""
        while n not in known and n.startswith(_WRAPPER_PREFIXES):
            first, n = n.split(".", 1)
            head += first + "."
            candidates.add(head)
    best, most = "", sum(n in known for n in names)
    for prefix in sorted(candidates, key=len):
        renamed = [n[len(prefix):] if n.startswith(prefix) else n for n in names]
        hits = sum(n in known for n in renamed)
        if hits > most and len(set(renamed)) == len(set(names)):
            best, most = prefix, hits
    return best


def _plain_patterns(model: nn.Module, patterns: Optional[Iterable[str] | str]) -> Optional[Iterable[str] | str]:
    """``include``/``exclude`` patterns as the module a wrapper of ``model`` runs names its layers: on a
    DDP, DataParallel or ``torch.compile`` wrapper, a pattern written as the wrapper names them
    (``module.*``, ``module.fc``, ``_orig_mod.module.fc``) that matches none of the module inside's
    layer and weight names is taken without the wrappers' prefix (``*``, ``fc``), as a layer given as
    ``module.NAME`` is taken as ``NAME``; a pattern matching one of them as given (a model's own
    submodule called ``module``), and every pattern of a plain model, is kept as given."""
    plain = _plain_module(model)
    if plain is model or patterns is None:
        return patterns
    return [_pattern_inside(plain)(p) for p in _as_patterns(patterns)]


def _pattern_inside(plain: nn.Module) -> Callable[[str], str]:
    """The rule of :func:`_plain_patterns` for one pattern (``plain``: the module a wrapper runs), for
    every option that takes layer patterns (``protect=``, ensemble rules) on a wrapped model."""
    # every name of a module or weight held under several, as discover matches a pattern against each
    names = ([n for n, _ in plain.named_modules(remove_duplicate=False)]
             + [n for n, _ in plain.named_parameters(remove_duplicate=False)])

    def matches(p):
        return any(fnmatch.fnmatchcase(n, p) for n in names)

    def plain_one(p):
        if not isinstance(p, str):
            return p  # (refused by the option's own check)
        q = p
        while not matches(q) and q.startswith(_WRAPPER_PREFIXES):
            q = q.split(".", 1)[1]
        return q if matches(q) else p
    return plain_one


def _empty_saved(saved_sizes: Mapping[str, int], params: Mapping) -> set:
    """Names of saved layers of no elements whose weight holds no entries in the model either
    (``nn.Linear(4, 0)``): connectomes saved before such weights were left out of them list these
    layers of no synapses; a load skips them, as the connectome it builds has no such layer."""
    return {n for n, size in saved_sizes.items() if size == 0 and n in params and params[n].numel() == 0}


class EnsembleRuleError(ValueError):
    """A mask breaks a rule of its layer's granularity (n of every m kept, or a plugin
    granularity's ``violation``)."""


def _forget_autocast_copies() -> None:
    """Drop autocast's cached low-precision copies of the weights. Inside one ``torch.autocast``
    region every forward pass reuses the first copy of a weight, so after a mask edit in that region
    (mask-only optimisation under bf16, an evaluation after ``result.use``) the network would still
    run with the weights as they were."""
    torch.clear_autocast_cache()


class Connectome:
    """Any ``nn.Module`` as a masked connectome of synapse ensembles.

    Args:
        model: the network. Its Linear, Conv1d/2d/3d and ConvTranspose1d/2d/3d weights are the synapses. A
            ``torch.compile``, DistributedDataParallel or DataParallel wrapper (``accelerator.prepare``'s
            model) is taken as the module it wraps (same parameters, its names).
        ensemble: granularity spec: "synapse", "kernel", "neuron", "block:RxC" or "n:m"; or rules
            giving layers different ones, first match wins: ``{"*mlp*": "neuron", "*": "synapse"}``
            or ``"*mlp*=neuron;synapse"`` (see :mod:`adaptive.ensemble_rules`).
        include / exclude: shell-style name patterns selecting prunable layers: a list, or a string
            split at commas as on the command line (``exclude="0,2"``). On a wrapper, patterns written as
            it names layers (``module.fc``, ``module.*``) select the module inside's (``fc``, ``*``), here,
            in the ``ensemble`` rules and in a :class:`~adaptive.Controller`'s ``protect=`` alike.
        mode: "train" (weights learn, pruned weights held at 0.0) or "mask_only" (weights frozen
            at their current values, which are kept so a restored synapse returns bit-identical).
    """

    @torch.inference_mode(False)  # built inside torch.inference_mode(), its masks must still track edits
    def __init__(
        self,
        model: nn.Module,
        ensemble: str | Granularity | Mapping = "synapse",
        include: Optional[Iterable[str] | str] = None,
        exclude: Optional[Iterable[str] | str] = None,
        mode: str = "train",
    ):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: use 'train' or 'mask_only'")
        include, exclude = _plain_patterns(model, include), _plain_patterns(model, exclude)  # module.* of a wrapper
        wrapped, model = model, _plain_module(model)
        # built on a wrapper: the patterns given later (ensemble rules, a Controller's protect=) may name
        # layers as it does (module.fc, module.*), taken as the module inside names them
        self._built_wrapped = wrapped is not model  # (a bool: a connectome pickles and deep-copies)
        found = discover(model, include, exclude)
        shared = shared_weight_warning(model, found)
        if shared:
            warn_user(shared)
        meta = [n for n, (_, p) in found.items() if p.is_meta]
        if meta:
            raise ValueError(
                f"{len(meta)} weight(s) are on the 'meta' device and hold no values ({', '.join(meta[:3])}"
                f"{', ...' if len(meta) > 3 else ''}): materialise the model first, e.g. model.to_empty(device='cpu') "
                "and then load or initialise its weights, and build the Connectome on it"
            )
        self.model = model
        self.mode = mode
        self.layers: Dict[str, SynapseLayer] = {n: l for n, (l, _) in found.items()}
        self.params: Dict[str, nn.Parameter] = {n: p for n, (_, p) in found.items()}
        self.masks: Dict[str, torch.Tensor] = {
            n: torch.ones(p.shape, dtype=torch.bool, device=p.device) for n, p in self.params.items()
        }
        self._dense: Dict[str, bool] = {n: True for n in self.params}
        # The masks as last set (a private copy, 1 byte per synapse): what an edit is measured
        # against, even when the caller changed a tensor of ``self.masks`` in place before set_masks.
        self._last_set: Dict[str, torch.Tensor] = {n: m.clone() for n, m in self.masks.items()}
        self._set_tensor: Dict[str, torch.Tensor] = dict(self.masks)
        self._set_version: Dict[str, int] = {n: m._version for n, m in self.masks.items()}
        self.granularities: Dict[str, Granularity]
        held = aliases(model)  # a tied weight answers to every name it has, as in include/exclude
        self.granularities, self._ensemble = ensemble_rules.resolve(
            ensemble, list(self.params), {n: held.get(id(p), ()) + (n, n.rpartition(".")[0]) for n, p in self.params.items()},
            rename=self._pattern_inside())
        # a transposed convolution's granularity sees its weight laid out (out, in/groups, *kernel)
        self.granularities = {n: for_layer(g, self.layers[n]) for n, g in self.granularities.items()}
        checked = set()  # a plugin granularity's pool and expand agree (once per granularity and shape)
        for n, g in self.granularities.items():
            key = (id(g), tuple(self.masks[n].shape))  # by identity: a plugin's dataclass may not hash
            if key not in checked:
                check_granularity(g, n, self.masks[n].shape, self.masks[n].device)
                checked.add(key)
        # Hot-path cache: the non-dense layers' parameters and their masks as 0/1 integers of the
        # parameter's width on its device, multiplied into the bits of weights and gradients
        # (adaptive.exact_masking): exact even over inf and NaN, the kernel as fast as a float multiply
        # (faster than one by a bool mask; each integer view costs a little Python), and torch._foreach_mul_ does all layers in one call.
        self._hot: Optional[tuple] = None
        # Ensemble masks as last pooled (see _ensemble_mask): name -> (weakref to the mask pooled,
        # its version, its address, the granularity, the ensemble mask).
        self._ens_cache: Dict[str, tuple] = {}
        self.original: Dict[str, torch.Tensor] = {}
        if mode == "mask_only":
            self.original = {n: p.detach().clone() for n, p in self.params.items()}
        self._optimizers: List[weakref.ref] = []
        self._handles: list = []
        self._observers: List[Callable[[], None]] = []
        self._controllers: List[weakref.ref] = []  # controllers built on this connectome (Controller adds itself)
        self._stopped: List[weakref.ref] = []  # the controllers the last detach() stopped: attach() restarts them
        # For each observer: None (reads dense gradients at every step) or a predicate saying
        # whether it reads them at the coming step.
        self._observer_active: List[Optional[Callable[[], bool]]] = []
        # Gradients masked inside backward (adaptive.grad_masking), re-armed whenever _gen moves:
        # at every step, mask edit, observer change and attach/detach.
        self._masker = BackwardMasker(self)
        self._gen = self._static_gen = 0
        self._mask_in_backward = True
        self._edit_listeners: List[Callable[[Dict[str, torch.Tensor]], None]] = []
        self._repair_pending: "weakref.WeakSet" = weakref.WeakSet()  # optimizers loaded since their last step

    def _pattern_inside(self) -> Optional[Callable[[str], str]]:
        """For a connectome built on a wrapper, the rule taking a pattern written as the wrapper names
        layers (``module.fc``) as the module inside names them (``fc``): :func:`_plain_patterns`."""
        return _pattern_inside(self.model) if self._built_wrapped else None

    # ------------------------------------------------------------------ introspection
    @property
    def names(self) -> List[str]:
        return list(self.params)

    @property
    def ensemble(self) -> str:
        """The granularity spec, or the rules string when layers use different granularities."""
        return self._ensemble

    @property
    def granularity(self) -> Granularity:
        """The granularity shared by every layer: one object that applies to every layer's weight.
        There is none when layers use different granularities, nor when a transposed convolution's
        granularity sees its weight laid out ``(out, in/groups, *kernel)`` (under any granularity but
        ``synapse``): applied to its stored ``(in, out/groups, *kernel)`` weight, a convolution's
        granularity would pool the wrong synapses, silently where in == out. Both raise, naming
        :meth:`granularity_of`, which gives each layer's own; :attr:`ensemble` gives the spec."""
        if self._mixed():
            raise AttributeError(f"this connectome's layers use different granularities ({self.ensemble!r}): "
                                 "use conn.granularity_of(name) or conn.granularities[name]")
        laid_out = [n for n, g in self.granularities.items() if g is not unwrapped(g)]
        if laid_out:
            raise AttributeError(
                f"no one granularity applies to every layer of this connectome: the transposed convolution(s) "
                f"{laid_out[:5]}{'...' if len(laid_out) > 5 else ''} store their weight (in, out/groups, *kernel), and "
                f"their '{self.ensemble}' ensembles are found in the layout (out, in/groups, *kernel): use "
                "conn.granularity_of(name), each layer's own (conn.ensemble gives the spec)")
        return next(iter(self.granularities.values()))

    def granularity_of(self, name: str) -> Granularity:
        """The ensemble granularity of layer ``name``."""
        if name not in self.granularities:
            hint = f"did you mean {name + '.weight'!r}? " if f"{name}.weight" in self.granularities else ""
            raise KeyError(f"granularity_of: {name!r} is not a prunable weight of this connectome: {hint}give a "
                           f"parameter name, one of {self.names[:5]}{'...' if len(self.names) > 5 else ''} "
                           "(all in conn.names)")
        return self.granularities[name]

    @property
    def fixed_density(self) -> Optional[float]:
        """n/m when the layers use an n:m granularity (which fixes their density), else None."""
        return next((g.density for g in self.granularities.values() if hasattr(g, "density")), None)

    def num_synapses(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    def num_live(self) -> int:
        return int(sum(int(torch.count_nonzero(m)) for m in self.masks.values()))

    def density(self) -> float:
        """Fraction of synapses alive over all prunable layers."""
        return self.num_live() / max(1, self.num_synapses())

    def layer_density(self) -> Dict[str, float]:
        return {n: int(torch.count_nonzero(m)) / max(1, m.numel()) for n, m in self.masks.items()}

    def ensemble_masks(self) -> Dict[str, torch.Tensor]:
        """Masks at ensemble level (an ensemble is alive when any of its synapses is): copies, free
        to edit and pass back."""
        return {n: self._ensemble_mask(n).clone() for n in self.masks}

    def ensemble_mask(self, name: str) -> torch.Tensor:
        """Layer ``name``'s mask at ensemble level (see :meth:`ensemble_masks`): a copy."""
        return self._ensemble_mask(name).clone()

    def _ensemble_mask(self, n: str) -> torch.Tensor:
        """Layer ``n``'s ensemble mask, shared with a cache (or the mask itself where each ensemble
        is one synapse): read it, never edit it. Pooling every layer of resnet50 takes a tenth of a
        second and a controller update reads the masks several times, so the pooled mask is kept
        while the layer's mask is the same tensor, with the same version (an in-place edit bumps it),
        at the same address; set_ensemble_masks stores the ensemble masks it was given."""
        m, g = self.masks[n], self.granularities[n]
        if tuple(g.ensemble_shape(m.shape)) == tuple(m.shape):
            return m
        if m.is_inference():  # tracks no version: an in-place edit could not be told
            return self._pool_ensemble_mask(g, m)
        hit = self._ens_cache.get(n)
        if hit is not None and hit[0]() is m and hit[1] == m._version and hit[2] == m.data_ptr() and hit[3] is g:
            return hit[4]
        e = self._pool_ensemble_mask(g, m)
        self._ens_cache[n] = (weakref.ref(m), m._version, m.data_ptr(), g, e)
        return e

    @staticmethod
    def _pool_ensemble_mask(g: Granularity, m: torch.Tensor) -> torch.Tensor:
        return g.pool(m.float(), "max") > 0

    def mask_hash(self) -> str:
        """SHA-256 of all masks (bit-packed, in layer order): equal on every process that agrees."""
        h = hashlib.sha256()
        for n, m in self.masks.items():
            h.update(n.encode())
            h.update(bitpack.pack(m).numpy().tobytes())
        return h.hexdigest()

    def summary(self) -> str:
        """A per-layer table: name, shape, synapses, live, density, ensemble. The shape is the weight's as
        stored: a transposed convolution's is ``(in, out/groups, *kernel)``, marked "(transposed)"."""
        self._check_params()
        rows = [("layer", "shape", "synapses", "live", "density", "ensemble")]
        for n, l in self.layers.items():
            m = self.masks[n]
            live = int(m.sum())
            shape = "x".join(map(str, l.shape)) + (" (transposed)" if l.transposed else "")
            rows.append((n, shape, f"{m.numel():,}", f"{live:,}", f"{live / m.numel():.2%}", self.granularities[n].spec))
        total, live = self.num_synapses(), self.num_live()
        rows.append(("total", "", f"{total:,}", f"{live:,}", f"{live / max(total, 1):.2%}", f"mode={self.mode}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) if j < 2 or j == 5 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
            if i == 0 or i == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Connectome({type(self.model).__name__}, layers={len(self.layers)}, synapses={self.num_synapses():,}, "
            f"density={self.density():.4f}, ensemble={self.ensemble!r}, mode={self.mode!r})"
        )

    # ------------------------------------------------------------------ editing
    def _validate(self, masks: Mapping[str, torch.Tensor], rules_kept=()) -> Dict[str, torch.Tensor]:
        """Checked private copies of ``masks``; ``rules_kept``: layers whose masks are known to keep
        their granularity's rule (expanded from ensemble masks, see ``expands_exactly``)."""
        if not isinstance(masks, Mapping):
            raise TypeError(f"set_masks expects a dict of parameter name -> bool tensor, got {type(masks).__name__}")
        unknown = [k for k in masks if k not in self.masks]
        if unknown:
            raise KeyError(
                f"unknown parameter name(s) {unknown[:5]}{'...' if len(unknown) > 5 else ''}: "
                f"known prunable weights are {self.names[:5]}{'...' if len(self.names) > 5 else ''}"
            )
        clean = {}
        for k, m in masks.items():
            if not isinstance(m, torch.Tensor):
                raise TypeError(f"mask for {k!r} must be a torch.Tensor, got {type(m).__name__}")
            _refuse_sparse(m, f"mask for {k!r}")
            if m.dtype != torch.bool:
                raise TypeError(f"mask for {k!r} must have dtype torch.bool, got {m.dtype}; use mask.bool() or mask > 0")
            if m.is_meta:
                raise ValueError(f"mask for {k!r} is on the 'meta' device and holds no values: build it on a real device")
            if tuple(m.shape) != tuple(self.masks[k].shape):
                layer = self.layers[k]
                laid_out = layer.transposed and tuple(m.shape) == layer.out_in_shape
                raise ValueError(
                    f"mask for {k!r} has shape {tuple(m.shape)} but the weight has shape {tuple(self.masks[k].shape)}"
                    + (f": {k!r} is a transposed convolution, whose weight is stored (in, out/groups, *kernel), and "
                       f"this mask is laid out (out, in/groups, *kernel); pass conn.layers[{k!r}].stored(mask)"
                       if laid_out else ""))
            why = None if k in rules_kept else self.granularities[k].violation(m)
            if why:
                fix = (f"keep the top n of every m with conn.granularity_of({k!r}).select(scores)"
                       if hasattr(self.granularities[k], "density") else
                       "build it at ensemble level and use set_ensemble_masks()")
                raise EnsembleRuleError(f"mask for {k!r}: {why}; {fix}")
            clean[k] = m.detach().to(self.params[k].device, copy=True)
        return clean

    # Mask edits run outside inference mode, also when called inside one (an evaluate-then-edit helper
    # under torch.inference_mode()): masks made there would be inference tensors, which track no
    # version counter, so they could not be told from edited ones, nor edited in place later.
    @torch.inference_mode(False)
    @torch.no_grad()
    def set_masks(
        self, masks: Mapping[str, torch.Tensor], grow_init: str | Callable = "zero", validate: bool = True
    ) -> Dict[str, torch.Tensor]:
        """Replace the masks of the given layers (others untouched). Validated first, then applied to
        every layer at once: on any error nothing changes (but for an error an edit listener raises,
        which comes once the edit is applied whole).

        Pruned weights become 0.0; grown synapses start at zero in train mode (``grow_init="zero"``,
        or "original"/a callable ``f(name, grown_mask) -> tensor``), at their original value in
        mask_only mode. Optimizer moments of attached optimizers are reset where a mask changed.
        A mask is shaped like the weight as stored: a transposed convolution's ``(in, out/groups,
        *kernel)``; one laid out ``(out, in/groups, *kernel)`` goes in as ``conn.layers[name].stored(mask)``
        (refused otherwise, except where in == out/groups, whose two layouts share a shape).
        Returns ``{name: changed bool tensor}``. ``validate=False`` skips the checks (and the copy)
        for callers such as the controller that build masks from this connectome's own.
        """
        return self._set(self._validate(masks) if validate else self._unvalidated(masks), grow_init)

    def _unvalidated(self, masks: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {k: (m.clone() if m.is_inference() else m).to(self.params[k].device) for k, m in masks.items()}

    @torch.inference_mode(False)
    @torch.no_grad()
    def _set(self, clean: Mapping[str, torch.Tensor], grow_init: str | Callable = "zero",
             restore: bool = False, notify: bool = True, pooled: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """set_masks on validated masks. ``restore``: the masks come with the weights and optimizer
        state they were saved with (a checkpoint), so optimizer state is reset only where a synapse
        is absent (it is zero there in the checkpoint too), never where one is present. ``notify``:
        tell the edit listeners (False: the caller does, once its own changes are done). ``pooled``:
        private copies of the ensemble masks of layers in ``clean`` (what their pooling gives),
        stored in the ensemble-mask cache."""
        _check_grow_init(grow_init, self.mode, bool(self.original))
        self._check_params()
        # Plan every edit first (a grow_init callable may raise): nothing changes until all succeed.
        plan = []
        for k, new in clean.items():
            old = self._previous(k, new.device)
            ch = old ^ new
            now = self.masks[k].to(new.device)
            touched = self._touched(k) and not torch.equal(now, old)
            if touched:
                # edited in place since it was set, and an apply() may have imposed the edit: every
                # position where the mask as set, the edited one and the new one disagree counts as
                # changed (its optimizer state is reset), one switched off either way counts as absent
                # (grown back from its current value), and the layer's weights are imposed again below
                ch = ch | (now ^ new)
                old = old & now
            if not bool(ch.any()):
                continue
            grown = new & ~old
            init = None
            if self.mode == "train" and grow_init != "zero" and bool(grown.any()):
                init = self._grown_values(k, new, grown, grow_init)
            plan.append((k, new, ch, init, new._version))
        changed = {}
        for k, new, ch, init, version in plan:
            self.masks[k] = new
            self._last_set[k] = new.clone()
            self._set_tensor[k], self._set_version[k] = new, version
            if pooled is not None and k in pooled:  # before the listeners, who may edit the mask again
                self._ens_cache[k] = (weakref.ref(new), new._version, new.data_ptr(), self.granularities[k], pooled[k])
            self._dense[k] = bool(new.all())
            self._hot = None
            self._edited()
            if bool(ch.any()):
                changed[k] = ch
            p = self.params[k]
            if self.mode == "mask_only":
                p.copy_(torch.where(new, self.original[k].to(p.device), torch.zeros((), dtype=p.dtype, device=p.device)))
                continue
            if init is not None:
                p.copy_(init)
            else:
                p.masked_fill_(~new, 0.0)
        if changed:
            _forget_autocast_copies()
            self._reset_optimizer_state({k: ch & ~self.masks[k] for k, ch in changed.items()} if restore else changed)
            if notify:
                self._notify_edit_listeners(changed)
        return changed

    def _notify_edit_listeners(self, changed: Dict[str, torch.Tensor]) -> None:
        """Tell every edit listener of a finished edit; one that raises does not keep the others
        from hearing of it, and its error is raised afterwards, saying the edit itself was applied."""
        failed = None
        for fn in self._edit_listeners:
            try:
                fn(changed)
            except Exception as e:  # re-raised below, once every listener has heard of the edit
                failed = failed or e
        if failed is not None:
            failed.add_note("(raised by a Connectome edit listener: the mask edit itself was applied whole -- masks, "
                            "weights and optimizer state -- and every other listener was told of it)")
            raise failed

    def edited_in_place(self, name: str) -> bool:
        """Whether layer ``name``'s mask was replaced or written in place since it was last set and
        now differs from the mask as set: the next set of that layer then counts those differences
        as changed too and re-imposes its weights, so it can change synapses its edit does not name."""
        m = self.masks[name]  # compared by value: a write behind the version counter (.data) too
        return not torch.equal(m, self._previous(name, m.device))

    def _touched(self, k: str) -> bool:
        """Was ``self.masks[k]`` replaced or written in place since it was last set?"""
        m, last = self.masks[k], self._last_set.get(k)
        return last is None or m is not self._set_tensor.get(k) or m._version != self._set_version.get(k)

    def _previous(self, k: str, device) -> torch.Tensor:
        """Layer ``k``'s mask as last set (``self.masks[k]`` unless someone edited it in place)."""
        last = self._last_set.get(k)
        if last is None:  # a connectome pickled before this copy existed
            last = self._last_set[k] = self.masks[k].clone()
        if last.device != device:
            last = self._last_set[k] = last.to(device)
        return last

    @torch.inference_mode(False)
    @torch.no_grad()
    def set_ensemble_masks(self, masks: Mapping[str, torch.Tensor], grow_init: str | Callable = "zero",
                           validate: bool = True) -> Dict[str, torch.Tensor]:
        """Like :meth:`set_masks` but with one bool per ensemble (shape ``granularity.ensemble_shape``);
        ``grow_init`` and ``validate`` as there. An ensemble mask of a granularity that
        ``expands_exactly`` expands to a valid mask, so only the other granularities' rules (n:m,
        plugins) are checked."""
        if not isinstance(masks, Mapping):
            raise TypeError(f"set_ensemble_masks expects a dict of parameter name -> bool tensor, got {type(masks).__name__}")
        expanded = {}
        for k, m in masks.items():
            if k not in self.masks:
                raise KeyError(f"unknown parameter name {k!r}: set_ensemble_masks takes the names of this connectome's "
                               f"prunable weights, which are {self.names[:5]}{'...' if len(self.names) > 5 else ''} "
                               "(all in conn.names)")
            g = self.granularities[k]
            es = g.ensemble_shape(self.masks[k].shape)
            if not isinstance(m, torch.Tensor):
                raise TypeError(f"ensemble mask for {k!r} ('{g.spec}' ensembles) must be a torch.bool tensor, got "
                                f"{type(m).__name__}; use torch.as_tensor(mask, dtype=torch.bool)")
            _refuse_sparse(m, f"ensemble mask for {k!r}")
            if m.dtype != torch.bool:
                raise TypeError(f"ensemble mask for {k!r} ('{g.spec}' ensembles) must be a torch.bool tensor, got "
                                f"{m.dtype}; use mask.bool() or mask > 0")
            if tuple(m.shape) != tuple(es):
                raise ValueError(f"ensemble mask for {k!r} has shape {tuple(m.shape)}, expected {tuple(es)} for '{g.spec}' "
                                 f"(one bool per ensemble): start from conn.ensemble_mask({k!r}), or give a mask shaped "
                                 f"like the weight {tuple(self.masks[k].shape)} to set_masks()")
            expanded[k] = g.expand(m, self.masks[k].shape).contiguous()
        exact = {k for k in expanded if expands_exactly(self.granularities[k]) and expanded[k].numel()}
        clean = self._validate(expanded, rules_kept=exact) if validate else self._unvalidated(expanded)
        pooled = {k: masks[k].detach().to(clean[k].device, memory_format=torch.contiguous_format, copy=True)
                  for k in exact if masks[k].shape != expanded[k].shape}  # (the others are their own ensemble mask)
        return self._set(clean, grow_init, pooled=pooled)

    def _grown_values(self, name, new, grown, how) -> torch.Tensor:
        """The weight of layer ``name`` under its ``new`` mask: current values where kept, 0.0 where
        pruned, and grown synapses set by ``how`` ("original" or ``f(name, grown_mask) -> tensor``)."""
        p = self.params[name]
        kept = p.detach().masked_fill(~new.to(p.device), 0.0)
        if how == "original":
            src = self.original[name].to(p.device, p.dtype)
        else:
            src = how(name, grown)
            if not isinstance(src, torch.Tensor) or tuple(src.shape) != tuple(p.shape):
                raise ValueError(f"grow_init callable must return a tensor shaped {tuple(p.shape)} for {name!r}")
            src = src.to(p.device, p.dtype)
        return torch.where(grown.to(p.device), src, kept)

    def keep_original(self) -> None:
        """Store a copy of the current weights so that train-mode growth can restore them."""
        self.original = {n: p.detach().clone() for n, p in self.params.items()}

    def _hot_lists(self) -> tuple:
        """``(names, params, masks)`` of the layers that have pruned synapses, each mask as 0/1
        integers of its parameter's width on its device (:mod:`adaptive.exact_masking`). Rebuilt
        after a mask edit or a move of the model (``model.to(...)`` keeps parameter identity and
        moves every parameter, so checking the first one per call is enough; a partial move is
        caught by :meth:`_foreach_mask`)."""
        hot = self._hot
        if hot is not None and (not hot[1] or (hot[1][0].device == hot[2][0].device
                                               and mask_dtype(hot[1][0]) == hot[2][0].dtype)):
            return hot
        names = [n for n in self.params if not self._dense[n]]
        params = [self.params[n] for n in names]
        imasks = []
        for n, p in zip(names, params):
            m = self.masks[n]
            if m.device != p.device:
                self.masks[n] = m = m.to(p.device)
            imasks.append(int_mask(m, p))
        self._hot = (names, params, imasks)
        return self._hot

    @torch.no_grad()
    def _foreach_mask(self, grads: bool, weights: bool) -> None:
        """Set the gradients and/or weights of every layer with pruned synapses to exactly +0.0 at
        its pruned positions, whatever they held (inf and NaN included), and leave every other bit
        as it was: one ``torch._foreach_mul_`` of their bits by the 0/1 masks
        (:mod:`adaptive.exact_masking`). A layer's gradient and weight sit side by side in the
        list, so its mask is read from memory once for both."""
        for attempt in range(2):
            _, params, imasks = self._hot_lists()
            ts, ms, sparse = [], [], []
            for p, f in zip(params, imasks):
                g = p.grad
                if grads and g is not None:
                    if g.is_sparse or g.is_conj() or g.is_neg():  # (an embedding's sparse gradient: its stored values
                        sparse.append((g, f))                    # masked; w.conj()'s gradient, a conjugate view)
                    else:
                        ts.append(bits(g))
                        ms.append(f)
                if weights:
                    ts.append(bits(p))
                    ms.append(f)
            try:
                if ts:
                    torch._foreach_mul_(ts, ms)
                for g, f in sparse:
                    mask_(g, f)
                return
            except RuntimeError:
                if attempt:
                    raise
                self._hot = None  # some layer moved device on its own: rebuild the cache once

    @torch.inference_mode(False)
    @torch.no_grad()
    def apply(self) -> None:
        """Impose the masks on the weights (and the originals in mask_only mode). Call it after
        writing to weights or masks behind autograd's version counter (``p.data.copy_(...)``,
        ``conn.masks[n].data[...] = False``, a NumPy view): the step re-masks weights only when that
        counter shows a write, and the pooled ensemble masks are kept until it shows one (this call
        drops them)."""
        self._ens_cache.clear()
        self._check_params()
        self._follow_in_place_edits()
        if self.mode == "mask_only":
            self._apply()
        else:
            self._foreach_mask(grads=False, weights=True)  # exactly 0.0, even over a written inf or NaN
            _forget_autocast_copies()  # as _apply does: a forward in the same autocast region reads the masked weights

    @torch.no_grad()
    def _follow_in_place_edits(self) -> None:
        """Catch up with masks written in place (by value, so a write behind the version counter
        counts too): which layers have pruned synapses is read anew (a layer pruned only in place
        was still taken as dense and skipped) and the hot-path masks, copies of the masks as they
        were, are rebuilt; attached optimizers' moments are reset where such a write pruned."""
        pruned = {}
        for n, m in self.masks.items():
            self._dense[n] = bool(m.all())
            last = self._previous(n, m.device)
            if not torch.equal(m, last):
                pruned[n] = last & ~m
        self._hot = None
        self._edited()
        self._reset_optimizer_state(pruned)

    def _check_params(self) -> None:
        """Raise if the model no longer holds the parameters this connectome masks."""
        stale = []
        for n, p in self.params.items():
            try:
                now = self.model.get_parameter(n)
            except AttributeError:
                now = None
            if now is not p:
                stale.append(n)
        if stale:
            self._holders = None
            raise RuntimeError(
                f"the model's parameter(s) {stale[:3]}{' ...' if len(stale) > 3 else ''} are no longer the ones this "
                "Connectome masks: they were replaced (load_state_dict(..., assign=True), "
                "torch.__future__.set_overwrite_module_params_on_conversion(True), a module swapped in) or a "
                "parametrization now computes them. Build a new Connectome on the model as it is now and carry the "
                "masks over: new.set_masks(old.masks); to go on pruning a parametrized layer, remove its "
                "parametrization first: torch.nn.utils.parametrize.remove_parametrizations(module, 'weight')")
        if self.__dict__.get("_holders") is None:  # for the per-step check, which a get_parameter walk would slow
            holders, links = [], {}
            for n, l in self.layers.items():
                holders.append((self.model.get_submodule(l.module_name), n[len(l.module_name) + 1:] if l.module_name else n,
                                self.params[n]))
                parent, path = self.model, l.module_name.split(".") if l.module_name else []
                for name in path:  # every module on the way down, where one swapped in would take over
                    child = parent._modules[name]
                    links[(id(parent), name)] = (parent, name, child)
                    parent = child
            self._holders, self._links = holders, list(links.values())

    def _check_params_quickly(self) -> None:
        """:meth:`_check_params` at every optimizer step: each module on the way to a weight is still
        where it was (a module swapped in replaces it) and still holds its parameter object (a
        parametrization or an ``assign=True`` load replaces it there); a full check names the stale
        ones, and runs every time until one passes."""
        holders = self.__dict__.get("_holders")
        if (holders is None or any(m._parameters.get(a) is not p for m, a, p in holders)
                or any(m._modules.get(a) is not c for m, a, c in self._links)):
            self._check_params()

    @torch.no_grad()
    def _apply(self) -> None:
        if self.mode == "mask_only":
            # every weight restored from its original, bit for bit where kept and +0.0 where pruned:
            # the original's bits times the 0/1 integer mask, written into the weight in one pass
            # (17x faster on a CPU than torch.where with the bool mask)
            imasks = dict(zip(*self._hot_lists()[::2]))  # layers with pruned synapses
            for n, p in self.params.items():
                o = self.original[n]
                if o.device != p.device:
                    self.original[n] = o = o.to(p.device)
                if o.dtype != p.dtype:  # the model was cast since (model.half()): its weights follow
                    o = o.to(p.dtype)
                m = imasks.get(n)
                if m is None:
                    p.copy_(o)
                else:
                    torch.mul(bits(o), m if m.device == p.device else m.to(p.device), out=bits(p))
            _forget_autocast_copies()
            return
        self._foreach_mask(grads=False, weights=True)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Set the gradients at pruned positions to exactly +0.0, even over inf or NaN (called just
        before an optimizer step)."""
        self._foreach_mask(grads=True, weights=False)

    # ------------------------------------------------------------------ optimizers
    def attach(self, optimizer) -> "Connectome":
        """Hook ``optimizer`` (a torch optimizer or Accelerate's wrapper) so that pruned weights stay
        exactly 0.0 through every step: observers see dense gradients, then gradients are masked
        and weights re-masked (one pass), the step runs, and the weights are re-masked again unless
        the optimizer is registered as zero-preserving (SGD, Adam, AdamW, ...: see
        :func:`adaptive.optim_state.register_zero_preserving`). Moments at pruned positions are
        reset now and at every later mask change."""
        opt = self._check_optimizer(optimizer)
        if any(r() is opt for r in self._optimizers):
            return self
        self._take_over()
        why = zero_eps_warning(opt)
        if why:
            warn_user(why)
        self._optimizers.append(weakref.ref(opt))
        self._handles.append(opt.register_step_pre_hook(self._pre_step))
        self._handles.append(opt.register_step_post_hook(self._post_step))
        # An optimizer state loaded later (a resume, a dense run's state) is repaired before its
        # next step (moments zeroed where a synapse is absent then), so no moment at a pruned
        # position can move its weight.
        self._handles.append(opt.register_load_state_dict_post_hook(self._after_optimizer_load))
        if not self._masker.handles:
            self._masker.register(self.params)  # removed by detach() through self._masker
        self._edited()
        self.apply()
        self._reset_optimizer_state({n: ~m for n, m in self.masks.items() if not self._dense[n]}, only=[opt])
        stopped, self._stopped = self._stopped, []
        for ctrl in (r() for r in stopped):  # the controllers detach() stopped go on with this optimizer
            if ctrl is not None and ctrl.optimizer is None and ctrl.conn is self:
                ctrl.attach(opt)
        return self

    def _check_optimizer(self, optimizer) -> torch.optim.Optimizer:
        """The torch optimizer inside ``optimizer``; raises unless it can be attached."""
        opt = unwrap_optimizer(optimizer)
        self._check_params()
        self._check_not_partly_masked()
        ids = {id(p) for g in opt.param_groups for p in g["params"]}
        if not any(id(p) in ids for p in self.params.values()):
            raise ValueError("the optimizer holds none of this connectome's weights: build it from model.parameters()")
        return opt

    def detach(self) -> None:
        """Remove every optimizer hook: training goes on plain (the masks stay as they are, and the
        optimizer may move weights at pruned positions again). A controller attached to an
        optimizer through this connectome is detached too (it cannot edit what is not masked);
        the next ``attach(optimizer)`` (of this connectome or of the controller) attaches both again."""
        self._stopped = []
        for ref in list(self._controllers):
            ctrl = ref()
            if ctrl is not None and ctrl.optimizer is not None:
                ctrl.detach()
                self._stopped.append(ref)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._masker.remove()
        self._optimizers.clear()
        for key in [k for k, (_, c) in _MASKED_BY.items() if c() is self]:
            del _MASKED_BY[key]
        self._edited()

    def _masking_others(self) -> Dict[int, tuple]:
        """The other connectomes that mask one of these weights (attached to an optimizer, or with
        backward hooks left from one that is gone), each with the name of one shared weight."""
        for key in [k for k, (p, c) in _MASKED_BY.items() if p() is None or c() is None]:
            del _MASKED_BY[key]
        others = {}
        for n, p in self.params.items():
            entry = _MASKED_BY.get(id(p))
            other = entry[1]() if entry is not None and entry[0]() is p else None
            if other is not None and other is not self and (other._optimizers or other._masker.handles):
                others.setdefault(id(other), (other, n))
        return others

    def _check_not_partly_masked(self) -> None:
        """Raise if another attached connectome masks some of these weights and others besides:
        detaching it would leave those others unmasked while it still counts them pruned."""
        mine = {id(p) for p in self.params.values()}
        for other, n in self._masking_others().values():
            extra = [m for m, p in other.params.items() if id(p) not in mine]
            if extra:
                raise ValueError(
                    f"{n} is already masked by another Connectome attached to an optimizer, which also masks "
                    f"{', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''} that this one does not: attaching this one "
                    "would leave those unmasked. Call detach() on the other one first, or build this one over the same "
                    "layers (or over disjoint ones)")

    def _take_over(self) -> None:
        """Detach any other connectome that masks these weights (with a warning naming it), and
        record this one as their connectome."""
        for other, n in self._masking_others().values():
            ctrl = [c for c in (r() for r in other._controllers) if c is not None and c.optimizer is not None]
            warn_user(
                f"{n}{' and the other weights' if len(other.params) > 1 else ''} of another Connectome"
                f"{' stepped by a Controller' if ctrl else ''} were masked by it through an optimizer (a cell run twice, "
                "or a second Connectome on the same model): that one is now detached, so that only this one masks and "
                "edits these weights. Keep one Connectome per model, or call detach() on the old one first")
            other.detach()
            other._stopped = []  # taken over: a later attach of the old one does not restart its controllers
        for p in self.params.values():
            _MASKED_BY[id(p)] = (weakref.ref(p), weakref.ref(self))

    @property
    def mask_in_backward(self) -> bool:
        """Mask each gradient inside backward as soon as it is accumulated, at steps where no
        observer reads dense gradients (default True: cheaper on small networks). Set False to keep
        ``.grad`` dense until the optimizer step: to read it yourself without an observer, to clip
        by the dense gradient norm at every step (:func:`adaptive.clip_gradients` clips by the live
        gradients' norm, the same with or without these hooks), or when your code writes gradients behind
        autograd's version counter (``.grad.data``, NumPy views), which the step's check cannot see."""
        return self._mask_in_backward

    @mask_in_backward.setter
    def mask_in_backward(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"mask_in_backward must be True or False, got {value!r}")
        self._mask_in_backward = value
        self._edited()

    def _edited(self) -> None:
        """Something that decides how gradients are masked changed: re-arm the backward hooks."""
        self._gen += 1
        self._static_gen += 1
        self._masker.done.clear()

    def _next_step(self) -> None:
        """A step ended: the backward hooks re-check the observers, and forget the last gradients."""
        self._gen += 1
        self._masker.done.clear()

    def add_observer(self, fn: Callable[[], None], active: Optional[Callable[[], bool]] = None) -> None:
        """Call ``fn()`` before each attached optimizer step, while gradients are still dense.

        ``active``, if given, says (before the step's backward pass ends) whether ``fn`` will read
        the gradients at the coming step; at steps where no observer is active the gradients are
        masked inside backward, which is cheaper. Without it ``fn`` is taken to read every step."""
        if not callable(fn):
            raise TypeError(f"add_observer needs a callable fn() run before each step, got {type(fn).__name__}")
        if active is not None and not callable(active):
            raise TypeError(f"add_observer's active must be None or a callable returning a bool, got {type(active).__name__}")
        self._observers.append(fn)
        self._observer_active.append(active)
        self._edited()

    def _remove_observer(self, fn: Callable[[], None]) -> None:
        for i, f in enumerate(self._observers):
            if f == fn:
                del self._observers[i], self._observer_active[i]
                self._edited()
                return

    def add_edit_listener(self, fn: Callable[[Dict[str, torch.Tensor]], None]) -> None:
        """Call ``fn(changed)`` after every mask edit, once masks, weights and optimizer state are all
        updated (``changed``: ``{name: bool tensor}`` of the positions that changed). An exception a
        listener raises reaches the caller of the edit, which stays applied."""
        if not callable(fn):
            raise TypeError(f"add_edit_listener needs a callable fn(changed) run after each mask edit, got {type(fn).__name__}")
        self._edit_listeners.append(fn)

    def _wants_dense_gradients(self) -> bool:
        return any(a is None or a() for a in self._observer_active)

    def _step_skipped(self, opt) -> bool:
        """Whether a GradScaler skips this step of ``opt`` inside the optimizer (a fused one, given
        ``found_inf``, skips in its kernel when the scaled gradients hold inf or NaN). Any other
        optimizer's skipped step is never called, so its hooks never run; these hooks then do
        nothing either (no observation, no masking, no step counted). Reading ``found_inf`` waits
        for the device, so it is read only where a scaler set it, once per step."""
        found = opt.__dict__.get("found_inf")  # an instance attribute; a dict read is the cheapest miss
        if found is None:
            return False
        seen = self.__dict__.get("_found_inf")
        # torch's GradScaler sets a new tensor at every step; a loop that keeps one tensor and
        # writes it in place moves its version counter instead: either way the answer is read anew
        if seen is None or seen[0] is not found or seen[1] != found._version:
            seen = self._found_inf = (found, found._version, bool(found))
        return seen[2]

    @property
    def grad_scale(self) -> Optional[torch.Tensor]:
        """While observers run before the step of a fused optimizer under a GradScaler: the scale the
        gradients still carry (the fused kernel unscales them itself, after the observers), which an
        observer divides out. None otherwise: other optimizers' gradients are unscaled before it."""
        return self.__dict__.get("_grad_scale")

    # The step hooks run eagerly even inside a compiled ``opt.step`` (``torch.compile(opt.step)``):
    # traced into its graph, inductor let the first observation of a window read the gradient the
    # same hook masks right after, and the hooks' Python bookkeeping is no graph's business.
    @eager
    def _pre_step(self, opt, args, kwargs):
        # ``args`` is the step's positional arguments, the optimizer itself first
        self._check_params_quickly()  # refused before the step: a replaced weight would train dense
        if self._step_skipped(opt):
            return
        self._repair_loaded_state(opt)
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is not None:
            return self._wrap_closure(closure, args, kwargs)
        self._prepare_step(opt)

    def _wrap_closure(self, closure, args, kwargs):
        """``opt.step(closure)``: the closure computes the gradients inside the step, after this
        hook. Weights are re-masked now; the wrapped closure lets observers see its dense
        gradients (first call) and masks them before the optimizer uses them (every call)."""
        if self.mode == "train":
            self._foreach_mask(grads=False, weights=True)
        calls = [0]

        @eager
        def masked_closure():
            loss = closure()  # the optimizer calls this under enable_grad
            calls[0] += 1
            if calls[0] == 1:
                self._run_observers(args[0])
            self.mask_gradients()
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": masked_closure}
        return (args[0], masked_closure, *args[2:]), kwargs

    def _run_observers(self, opt=None) -> None:
        self._stepping = opt
        self._grad_scale = opt.__dict__.get("grad_scale") if opt is not None else None
        try:
            for fn in self._observers:
                fn()
        finally:
            self._stepping = self._grad_scale = None

    def stepping_layers(self, primary=None) -> Optional[List[str]]:
        """While observers run before an optimizer's step: the layers whose gradients that step
        uses, when several optimizers are attached, so that each layer is observed once per
        training step, at the step of the optimizer that owns it. A layer is owned by ``primary``
        (the optimizer the caller steps with) when it holds it, else by the first attached
        optimizer that does; layers no attached optimizer holds go with ``primary`` (or the first).
        None otherwise: every layer."""
        opt = self.__dict__.get("_stepping")
        opts = [o for o in (r() for r in self._optimizers) if o is not None]
        if opt is None or len(opts) < 2:
            return None
        first = primary if primary is not None and any(o is primary for o in opts) else opts[0]
        order = [first] + [o for o in opts if o is not first]
        owner = {}
        for o in reversed(order):  # the earliest in ``order`` holding a parameter owns it
            for g in o.param_groups:
                for p in g["params"]:
                    owner[id(p)] = o
        return [n for n, p in self.params.items() if owner.get(id(p), first) is opt]

    def _prepare_step(self, opt) -> None:
        self._run_observers(opt)
        if self.mode == "mask_only":
            self.mask_gradients()  # the weights are restored from the originals after the step
        elif preserves_zeros(opt) and self._weights_untouched():
            # Nothing wrote to the weights since they were last known masked (their version
            # counters have not moved), so only the gradients need masking, unless the backward
            # hooks already did it and nothing wrote to the gradients since.
            hot = self._hot
            if hot is None or not self._masker.all_masked(hot[0], hot[1]):
                self.mask_gradients()
        else:
            # an optimizer that is not zero-preserving (it is re-masked after the step too), or a
            # weight written outside the optimizer since the last step (an init, a load, an EMA
            # swap; exactly 0.0 again even over a loaded inf or NaN): gradients and weights in one pass
            self._foreach_mask(grads=True, weights=True)

    @eager
    def _post_step(self, opt, args, kwargs):
        # A zero-preserving optimizer (optim_state.register_zero_preserving) cannot move a weight
        # whose gradient, value and state are all 0.0, so re-masking after its step is skipped.
        if self._step_skipped(opt):
            return
        if self.mode == "mask_only":
            self._apply()
        elif not preserves_zeros(opt):
            self._foreach_mask(grads=False, weights=True)  # exactly 0.0 even where such a step left NaN (0/0)
        self._next_step()
        self._record_versions()

    def _record_versions(self) -> None:
        """Remember the in-place version counters of the weights while they are known masked."""
        hot = self._hot
        self._versions = (hot, [p._version for p in hot[1]]) if hot is not None else None

    def _weights_untouched(self) -> bool:
        v = getattr(self, "_versions", None)
        hot = self._hot
        return v is not None and hot is not None and v[0] is hot and [p._version for p in hot[1]] == v[1]

    def _after_optimizer_load(self, opt) -> None:
        # Repaired at its next step, not now: a checkpoint's connectome is often loaded after its
        # optimizer (Accelerate's order), and the moments of synapses present in the checkpoint but
        # absent from the masks at this moment must survive until those masks are restored.
        self._repair_pending.add(opt)

    def _repair_loaded_state(self, opt) -> None:
        if opt in self._repair_pending:
            self._repair_pending.discard(opt)
            self._reset_optimizer_state({n: ~m for n, m in self.masks.items() if not self._dense[n]}, only=[opt])

    def _reset_optimizer_state(self, positions: Dict[str, torch.Tensor], only=None) -> None:
        opts = only if only is not None else [r() for r in self._optimizers]
        for opt in opts:
            if opt is None:
                continue
            for n, where in positions.items():
                reset_state(opt, self.params[n], where)

    def __getstate__(self) -> dict:
        """A pickled or deep-copied connectome is detached: optimizer hooks, observers and edit
        listeners belong to the original (re-attach them on the copy); caches are rebuilt."""
        state = self.__dict__.copy()
        state.update(_optimizers=[], _handles=[], _observers=[], _observer_active=[], _edit_listeners=[], _controllers=[], _stopped=[], _hot=None, _ens_cache={},
                     _versions=None, _found_inf=None, _holders=None, _links=None)
        state.pop("_repair_pending", None)
        state.pop("_masker", None)
        return state

    def __setstate__(self, state: dict) -> None:
        state = {"_observer_active": [None] * len(state.get("_observers", [])), "_gen": 0, "_static_gen": 0, "_mask_in_backward": True,
                 "_last_set": {}, "_set_tensor": {}, "_set_version": {}, "_ens_cache": {}, "_controllers": [], "_stopped": [], "_built_wrapped": False, **state, "_repair_pending": weakref.WeakSet()}
        self.__dict__.update(state)
        self._masker = BackwardMasker(self)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """Everything needed to rebuild the connectome on the same model (Accelerate checkpointing)."""
        sd = {
            "format": FORMAT,
            "ensemble": self.ensemble,
            "mode": self.mode,
            "masks": {n: m.detach().to("cpu", copy=True) for n, m in self.masks.items()},
        }
        if self._mixed():
            sd["ensembles"] = self.ensemble_specs()  # the rules string alone would do; this checks it
        if self.original:
            sd["original"] = {n: o.detach().to("cpu", copy=True) for n, o in self.original.items()}
        return sd

    @torch.inference_mode(False)
    def load_state_dict(self, sd: Mapping) -> None:
        """Restore masks (and originals) saved by :meth:`state_dict`; validated before anything changes.
        Optimizer state is reset only where a synapse is absent, so the optimizer may be loaded
        before or after the connectome."""
        if not isinstance(sd, Mapping) or "masks" not in sd:
            raise ValueError("not a connectome state_dict: it has no 'masks' entry")
        _check_state_entries(sd)
        check_same_mode(sd.get("mode"), self.mode, "connectome state_dict",
                        f"to carry only its masks over into a {self.mode} run, pass them to conn.set_masks(sd['masks'])")
        model_params = dict(self.model.named_parameters(remove_duplicate=False))
        saved = [n for k in ("masks", "original", "ensembles") if isinstance(sd.get(k), Mapping) for n in sd[k]]
        sd = {**sd, **{k: _plain_names(sd.get(k), model_params, saved) for k in ("masks", "original", "ensembles")}}
        empty = _empty_saved({n: m.numel() for n, m in sd["masks"].items() if n not in self.masks
                              and isinstance(m, torch.Tensor)}, model_params)
        if empty:
            sd.update({k: {n: v for n, v in sd[k].items() if n not in empty} if sd[k] is not None else None
                       for k in ("masks", "original", "ensembles")})
        missing = [n for n in self.masks if n not in sd["masks"]]
        extra = [n for n in sd["masks"] if n not in self.masks]
        if missing or extra:  # said before the granularities are compared: those of these layers differ too
            raise KeyError(self._other_layers(missing, extra, model_params))
        if "ensemble" in sd:
            self._check_same_ensembles(sd["ensemble"], sd.get("ensembles"), "state_dict")
        original = sd.get("original") or {}
        for n, o in original.items():
            if n not in self.params:
                raise KeyError(f"state_dict has original weights for unknown parameter {n!r}")
            if tuple(o.shape) != tuple(self.params[n].shape):
                raise ValueError(f"original weight for {n!r} has shape {tuple(o.shape)}, the model has {tuple(self.params[n].shape)}")
        lacking = [n for n in self.params if n not in original]
        if original and lacking:
            raise KeyError(f"state_dict has original weights for some layers but not for {lacking[:5]}"
                           f"{'...' if len(lacking) > 5 else ''}: save it with every layer's original "
                           "(Connectome.state_dict() does), or leave 'original' out to keep this connectome's")
        clean = self._validate(sd["masks"])
        if original:
            self.original = {n: original[n].to(self.params[n].device, self.params[n].dtype).clone() for n in self.params}
        # a restore, not an edit: an optimizer loaded from the same checkpoint (Accelerate loads it
        # first) keeps its moments where a synapse is present
        changed = self._set(clean, restore=True, notify=False)
        self.apply()
        if changed:  # listeners hear of the load once it is whole
            self._notify_edit_listeners(changed)

    def _other_layers(self, missing: List[str], extra: List[str], model_params: Mapping) -> str:
        """Why a state saved over other layers is refused (``missing``: our layers it has no mask for;
        ``extra``: layers it has masks for that we lack), and how to load it."""
        def few(names):
            return f"{names[:5]}{'...' if len(names) > 5 else ''}"

        said = [f"no mask for {few(missing)}"] if missing else []
        if extra:
            absent = [n for n in extra if n not in model_params]
            said.append(f"masks for {few(extra)}, " + (f"of which the model has no {few(absent)}" if absent else
                        "which this connectome leaves out (the model has them; include=/exclude= did not select them)"))
        carry = ("conn.set_masks({n: m for n, m in sd['masks'].items() if n in conn.masks})" if extra
                 else "conn.set_masks(sd['masks'])")
        def newer(test):  # the module names of the missing layers that only a recent version prunes
            return list(dict.fromkeys(self.layers[n].module_name for n in missing if test(n)))

        up = newer(lambda n: self.layers[n].transposed)
        cells = newer(lambda n: isinstance(self.model.get_submodule(self.layers[n].module_name), nn.RNNCellBase))
        late = [(what, names) for what, names in (("transposed convolutions", up), ("recurrent cells", cells)) if names]
        return (f"state_dict has {' and '.join(said)}: it was saved from a connectome over other layers (another "
                "include=/exclude=, or another model), and nothing was loaded; build this Connectome over the layers "
                f"it was saved with, on the model it was saved from, or carry over the masks of the layers both have "
                f"with {carry} (the other layers keep theirs)" + "".join(
                    f". A state saved before {what} were synapses has no mask for them: to resume it, build the "
                    f"Connectome with exclude={names[:5]} (they stay dense, as then)" for what, names in late))

    def _mixed(self) -> bool:
        return len({g.spec for g in self.granularities.values()}) > 1

    def ensemble_specs(self) -> Dict[str, str]:
        """Every layer's granularity spec."""
        return {n: g.spec for n, g in self.granularities.items()}

    def _check_same_ensembles(self, ensemble, per_layer, what: str) -> None:
        mine = self.ensemble_specs()
        if per_layer is None:  # saved before per-layer granularities: one spec for every layer
            try:
                per_layer = {n: g.spec for n, g in ensemble_rules.resolve(ensemble, list(self.masks))[0].items()}
            except (TypeError, ValueError):
                per_layer = None
        if per_layer != mine:
            diff = [n for n in mine if (per_layer or {}).get(n) != mine[n]]
            if per_layer and not diff:  # the layers were compared before: these have no mask in it
                unmasked = [n for n in per_layer if n not in mine]
                raise ValueError(f"{what} gives granularities for {unmasked[:5]}, layers it holds no mask for: it is "
                                 "malformed; save it again with Connectome.state_dict() or Connectome.save()")
            raise ValueError(f"{what} was saved with ensemble {ensemble!r}, this connectome uses {self.ensemble!r}"
                             f"{f' (they differ on {diff[:3]})' if diff and per_layer else ''}: build the Connectome "
                             f"with ensemble={ensemble!r}")

    def save(self, path: str | os.PathLike, with_original: bool = False) -> None:
        """Write the connectome to a safetensors file, masks bit-packed (1 bit per synapse).

        The write is atomic (temporary file, then rename). ``path`` is a file named ``*.safetensors``:
        another extension (``x.pt``, which ``torch.load`` could not read) and an existing folder are
        refused, before anything is written. ``with_original`` also stores the
        original weights of a mask_only connectome; without it, :meth:`load` takes them from the
        model it is given, which must then hold the unpruned weights.
        """
        from safetensors.torch import save_file

        if os.path.isdir(path):  # as load refuses one: a run folder holds its connectome.safetensors
            raise ValueError(f"{path} is a folder, not a connectome file: give a file path, e.g. "
                             f"{os.path.join(path, 'connectome.safetensors')}")
        stem, ext = os.path.splitext(os.fspath(path))
        if ext.lower() != ".safetensors":
            raise ValueError(f"{os.fspath(path)} {f'has the extension {ext!r}' if ext else 'has no extension'}, but "
                             f"Connectome.save writes a safetensors file (masks bit-packed), which torch.load cannot "
                             f"read: name it "
                             f"{stem + '.safetensors'!r} (Connectome.load reads it back); for a torch.save checkpoint, "
                             "torch.save(conn.state_dict(), path) instead")
        self._check_params()
        tensors = {f"mask/{n}": bitpack.pack(m) for n, m in self.masks.items()}
        if with_original:
            if not self.original:
                raise ValueError("with_original=True needs original weights (mode='mask_only' or keep_original())")
            tensors.update({f"original/{n}": o.detach().cpu().contiguous() for n, o in self.original.items()})
        meta = {
            "format": FORMAT,
            "ensemble": self.ensemble,
            "mode": self.mode,
            "layers": json.dumps({n: list(l.shape) for n, l in self.layers.items()}),
            # the model's prunable layers left out (exclude=): load warns about any other layer it leaves dense
            "outside": json.dumps([n for n in prunable_names(self.model) if n not in self.masks]),
        }
        if self._mixed():
            meta["ensembles"] = json.dumps(self.ensemble_specs())
        from .integrity import tensors_digest

        meta["sha256"] = tensors_digest(tensors, meta)  # load verifies it: a damaged file is refused
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    @torch.inference_mode(False)  # built inside torch.inference_mode(), its masks must still track edits
    def load(cls, path: str | os.PathLike, model: nn.Module, mode: Optional[str] = None) -> "Connectome":
        """Rebuild a connectome saved by :meth:`save` on ``model`` (a wrapper: as one built on it, its
        patterns, a Controller's ``protect=``, may name layers as the wrapper does). Raises a clear error
        naming the parameter if the model's layers or shapes differ from the saved ones."""
        from safetensors import SafetensorError, safe_open

        if os.path.isdir(path):
            raise ValueError(f"{path} is a folder, not a connectome file: give the connectome.safetensors in it")
        try:
            opened = safe_open(os.fspath(path), framework="pt")
        except SafetensorError as e:
            raise ValueError(f"{path} is not a readable connectome file ({e}); give the connectome.safetensors "
                             "a run or Connectome.save wrote") from None
        with opened as f:
            meta = f.metadata() or {}
            if "sha256" in meta:  # files saved before checksums were load unverified
                from .integrity import tensors_digest

                try:
                    every = {k: f.get_tensor(k) for k in f.keys()}
                except SafetensorError as e:
                    raise ValueError(f"{path} is damaged: its tensors cannot be read ({e}); use an intact copy, or "
                                     "rerun what wrote it") from None
                rest = {k: v for k, v in meta.items() if k != "sha256"}
                if tensors_digest(every, rest) != meta["sha256"]:
                    raise ValueError(f"{path} is damaged: its content does not match the sha256 stored in it when it "
                                     "was saved; use an intact copy, or rerun what wrote it")
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not an adaptive connectome file (format {meta.get('format')!r})")
            keys = set(f.keys())
            try:
                shapes = {n: tuple(int(d) for d in s) for n, s in json.loads(meta["layers"]).items()}
                for k in ("mode", "ensemble"):
                    meta[k]
                if "ensembles" in meta and not isinstance(json.loads(meta["ensembles"]), dict):
                    raise TypeError("'ensembles' is not a mapping of layer names to granularities")
            except (KeyError, ValueError, TypeError, AttributeError) as e:
                raise ValueError(f"{path}: the connectome file's metadata is missing or malformed ({type(e).__name__}: "
                                 f"{e}); the file is corrupt or was not written by Connectome.save") from None
            unlisted = sorted(k[len("mask/"):] for k in keys if k.startswith("mask/") and k[len("mask/"):] not in shapes)
            missing = sorted(n for n in shapes if f"mask/{n}" not in keys)
            if unlisted or missing:
                raise ValueError(f"{path}: the connectome file's layer list does not match its masks (masks not listed: "
                                 f"{unlisted[:5]}, listed without a mask: {missing[:5]}); the file is corrupt")
            packed = {n: f.get_tensor(f"mask/{n}") for n in shapes}
            original = {n: f.get_tensor(f"original/{n}") for n in shapes if f"original/{n}" in keys}
        wrapped, model = model, _plain_module(model)
        params = dict(model.named_parameters(remove_duplicate=False))  # a tied weight under every name
        saved = list(shapes)  # every layer: one wrapper prefix taken off all of them (see _wrapper_prefix)
        shapes, packed, original = (_plain_names(d, params, saved) for d in (shapes, packed, original))
        # per-layer granularities as a compiled model's layers were once named (checked to be a dict above)
        per_layer = json.loads(meta["ensembles"]) if "ensembles" in meta else None
        if per_layer is not None:
            meta["ensembles"] = json.dumps(_plain_names(per_layer, params, saved + list(per_layer)))
        absent = [n for n in shapes if n not in params]
        if absent:
            ours = prunable_names(model)
            raise KeyError(f"{path} has masks for {absent[:5]}{'...' if len(absent) > 5 else ''}, which the model does "
                           f"not have (its prunable weights: {ours[:5]}{'...' if len(ours) > 5 else ''}): it was saved "
                           "from another model, and nothing was loaded; load it into the model it was saved from, or "
                           "one whose layers match")
        for n, s in shapes.items():
            mname, _, attr = n.rpartition(".")
            module = model.get_submodule(mname)
            if not holds_synapses(module, attr):
                raise ValueError(
                    f"the saved connectome has synapses in {n!r}, but in this model {mname or 'the model'!r} is of type "
                    f"{type(module).__name__}, whose {attr!r} holds no synapses (a Connectome prunes the weights of "
                    f"{PRUNABLE_LIST}): load the file into a model of the "
                    "architecture it was saved from, or build a new Connectome on this model")
            if tuple(params[n].shape) != s:
                raise ValueError(f"shape mismatch for {n!r}: saved {s}, model has {tuple(params[n].shape)}")
        empty = _empty_saved({n: torch.Size(v).numel() for n, v in shapes.items()}, params)
        if empty:
            shapes, packed, original = ({n: v for n, v in d.items() if n not in empty} for d in (shapes, packed, original))
            if per_layer is not None:
                meta["ensembles"] = json.dumps({n: v for n, v in json.loads(meta["ensembles"]).items() if n not in empty})
        mode = mode or meta["mode"]
        if mode == "mask_only" and not original:
            original = None  # taken from the model below
        # exact names: a ModuleDict key may hold a pattern character ('fc[1]' as a pattern matches 'fc1')
        modules = [glob.escape(n[: -len(".weight")] if n.endswith(".weight") else n) for n in shapes]
        conn = cls(model, ensemble=meta["ensemble"], include=modules, mode=mode)
        # loaded into a wrapper: a Controller's protect= reads module.fc as fc, as on one built on it
        conn._built_wrapped = wrapped is not model
        # the layers first: a file of another model is told so, not that its granularities differ
        extra = [n for n in conn.masks if n not in shapes]
        if extra:
            saved = list(shapes)
            raise KeyError(f"the model has prunable layer(s) {extra[:5]}{'...' if len(extra) > 5 else ''} that {path} "
                           f"has no mask for (its layers: {saved[:5]}{'...' if len(saved) > 5 else ''}): it was saved "
                           "from another model, and nothing was loaded; load it into the model it was saved from, or "
                           "one whose layers match")
        if "ensembles" in meta:
            conn._check_same_ensembles(meta["ensemble"], json.loads(meta["ensembles"]), str(path))
        _warn_left_dense(model, conn, meta.get("outside"), path)
        if original:
            for n, o in original.items():
                conn.original[n] = o.to(conn.params[n].device, conn.params[n].dtype)
        masks = {n: bitpack.unpack(packed[n], shapes[n]) for n in shapes}
        conn.set_masks(masks)
        conn.apply()
        return conn

    def resident_bytes(self) -> int:
        """Bytes the connectome holds besides the model: masks, hot-path caches and originals."""
        total = sum(m.numel() * m.element_size() for m in self.masks.values())
        total += sum(m.numel() * m.element_size() for m in self._last_set.values())  # the masks as last set
        total += sum(o.numel() * o.element_size() for o in self.original.values())
        if self._hot is not None:
            total += sum(f.numel() * f.element_size() for f in self._hot[2])
        total += sum(e[4].numel() for e in self._ens_cache.values())  # pooled ensemble masks, a byte per ensemble
        return total

    def dense_state_dict(self, device=None) -> Dict[str, torch.Tensor]:
        """An ordinary ``model.state_dict()`` (same keys) with zeros where pruned: it loads into a
        vanilla model with no project code. ``device``: where its tensors go (None: where the model's
        are); ``"cpu"`` for a file that loads on any machine, as the recipes write it (a file of CUDA
        tensors needs ``map_location`` on a machine without a GPU)."""
        self._check_params()
        src = self.model.state_dict()
        sd = OrderedDict((k, v.detach().to(device=device, copy=True)) for k, v in src.items())
        if hasattr(src, "_metadata"):  # the modules' versions, which some loaders need (torchvision's MNASNet)
            sd._metadata = src._metadata
        keys = state_dict_keys(self.model)
        for n, p in self.params.items():
            m = self.masks[n]
            for k in keys.get(id(p), [n]):
                if k in sd:
                    sd[k] = torch.where(m.to(sd[k].device), sd[k], torch.zeros((), dtype=sd[k].dtype))
        return sd


def _check_state_entries(sd: Mapping) -> None:
    """Refuse a connectome state_dict whose entries are not of the kinds :meth:`Connectome.state_dict`
    writes (a dict where one is due, tensors in 'original'), before anything reads them further."""
    fix = "pass what Connectome.state_dict() returned (or a checkpoint's copy of it)"
    if "ensemble" in sd and not isinstance(sd["ensemble"], str):
        raise TypeError(f"the connectome state_dict's 'ensemble' must be a granularity spec string such as 'synapse', "
                        f"got {type(sd['ensemble']).__name__}: {fix}")
    for key, what in (("masks", "bool tensor"), ("original", "tensor"), ("ensembles", "granularity spec")):
        entry = sd.get(key)
        if not isinstance(entry, Mapping) and (key == "masks" or entry is not None):
            raise TypeError(f"the connectome state_dict's {key!r} must be a dict of parameter name -> {what}, got "
                            f"{type(entry).__name__}: {fix}")
    for n, o in (sd.get("original") or {}).items():
        if not isinstance(o, torch.Tensor):
            raise TypeError(f"the connectome state_dict's original weight for {n!r} must be a torch.Tensor, got "
                            f"{type(o).__name__}: {fix}")


def _warn_left_dense(model: nn.Module, conn: "Connectome", outside: Optional[str], path) -> None:
    """Warn, naming them, about the prunable layers of ``model`` that the connectome loaded from
    ``path`` leaves dense: layers the file has no mask for, other than those its connectome had left
    out on purpose (``outside``, the JSON list save records; a file saved before it was recorded
    cannot tell them apart, and says so)."""
    try:
        known = set(json.loads(outside)) if outside is not None else set()
    except (ValueError, TypeError):  # unreadable: every layer without a mask is named
        known = set()
    extra = [n for n in prunable_names(model) if n not in conn.masks and n not in known]
    if not extra:
        return
    why = ("" if outside is not None else "; this file, saved before a connectome recorded the layers it left out, "
           "cannot tell whether exclude= left them out when it was saved")
    warn_user(f"{len(extra)} prunable layer(s) of this model have no mask in {path} and stay dense, outside the "
              f"connectome (no controller edits them): {', '.join(extra[:4])}{', ...' if len(extra) > 4 else ''}"
              f"{why}. Load the file into the model it was saved from; to prune them too, build adaptive.Connectome("
              "model) and pass it the loaded connectome's masks with conn.set_masks(loaded.masks)")


def check_same_mode(saved, mine: str, what: str, carry: str) -> None:
    """Refuse a ``what`` (a connectome or controller state) saved in the other mode, before anything
    loads: a mask_only state holds the frozen original weights (and statistics of frozen weights), a
    train one none of the originals, so either taken into the other mode would go on silently as a
    run it never was. ``carry`` says what carries over instead. (A state saved before the mode was
    recorded is taken as it is.)"""
    if saved is None or saved == mine:
        return
    raise ValueError(
        f"this {what} was saved in mode={saved!r}, and this connectome runs mode={mine!r}: build the Connectome "
        f"with mode={saved!r} to resume that run; {carry}")


def _refuse_sparse(m: torch.Tensor, what: str) -> None:
    """Refuse a sparse mask (COO, CSR, ...): masks are dense bool tensors, one entry per synapse."""
    if m.layout != torch.strided:
        raise TypeError(f"{what} is a sparse tensor ({m.layout}): masks are dense bool tensors with one entry per "
                        "synapse (or ensemble); pass mask.to_dense()")


def _check_grow_init(how, mode: str, has_original: bool) -> None:
    """Validate ``grow_init`` before any mask is edited (set_masks is all or nothing)."""
    if callable(how):
        return
    if how == "zero":
        return
    if how == "original":
        if not has_original:
            raise ValueError("grow_init='original' needs the original weights (mode='mask_only' or keep_original())")
        return
    raise ValueError(f"unknown grow_init {how!r}: use 'zero', 'original' or a callable f(name, grown_mask) -> tensor")
