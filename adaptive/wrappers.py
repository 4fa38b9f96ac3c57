"""The model wrappers a connectome looks through: ``torch.compile``'s (``_orig_mod``),
DistributedDataParallel's and DataParallel's (``module``, what ``accelerator.prepare`` returns),
nested in any order. A wrapper holds the same parameters under prefixed names; the connectome, its
files and the diagnostics use the plain module's names, so these helpers find the module inside,
take a wrapper's prefix off saved names and layer patterns, and keep step hooks out of compiled
graphs (:func:`eager`).
"""
from __future__ import annotations

import fnmatch
import functools
import sys
from typing import Callable, Iterable, Mapping, Optional

import torch
from torch import nn

from .discovery import _as_patterns
from .name_patterns import literal


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

    known = set(names)

    def matches(p):
        exact = literal(p)  # an exact name (Connectome.load's, one per layer) looked up, not matched against each
        return exact in known if exact is not None else any(fnmatch.fnmatchcase(n, p) for n in names)

    def plain_one(p):
        if not isinstance(p, str):
            return p  # (refused by the option's own check)
        q = p
        while not matches(q) and q.startswith(_WRAPPER_PREFIXES):
            q = q.split(".", 1)[1]
        return q if matches(q) else p
    return plain_one


def sharded_model_problem(model: nn.Module) -> Optional[str]:
    """What to say where ``model``'s weights are sharded across processes: FSDP1's
    ``FullyShardedDataParallel`` (flat parameters), FSDP2's ``fully_shard`` or any DTensor parameter (tensor
    parallelism too); None otherwise. A connectome masks, scores and edits whole weights, so it cannot be
    built on shards (FSDP1's flattened shards, of another shape on each process, would be taken for weights;
    a DTensor cannot take a whole mask). Reads only the modules already imported (nothing is sharded by a
    module never imported)."""
    if not isinstance(model, nn.Module):  # (refused as no module where it is read)
        return None
    fsdp = sys.modules.get("torch.distributed.fsdp")
    dtensor = sys.modules.get("torch.distributed.tensor")
    how = None
    if fsdp is not None:
        kinds = ((getattr(fsdp, "FullyShardedDataParallel", ()), "FSDP (FullyShardedDataParallel: flat parameters)"),
                 (getattr(fsdp, "FSDPModule", ()), "FSDP2 (fully_shard: DTensor shards)"))
        how = next((said for m in model.modules() for kind, said in kinds if isinstance(m, kind)), None)
    if how is None and dtensor is not None:
        held = [n for n, p in model.named_parameters() if isinstance(p, dtensor.DTensor)]
        if held:
            how = f"DTensor parameters ({', '.join(held[:3])}{', ...' if len(held) > 3 else ''}: FSDP2 or tensor parallel)"
    if how is None:
        return None
    return (f"the model is sharded across processes by {how}, while a Connectome masks, scores and edits whole "
            "weights: build it on the unsharded model and run data parallel instead, every process holding the "
            "whole model (torch's DistributedDataParallel, an Accelerator without an fsdp_plugin, accelerate launch "
            "--multi_gpu)")
