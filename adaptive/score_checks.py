"""The checks an estimator's scores pass before a policy ranks them: a tensor of real numbers shaped
as asked (one score per synapse, or per ensemble from ``ensemble_scores``), no NaN (a NaN has no
place in an order; one inherited from broken weights is named as such), and ensemble sums that
pooled to no NaN (+inf and -inf in one ensemble). Each refusal is a ValueError naming the estimator
(by its registered name), its method and the layer, raised before the connectome changes. Scores
that pass are made the controller's own (:func:`_owned`): detached from autograd, and copied where
they share memory with the layer's weight, mask or original values, or with the estimator's own state
for the layer, so that a policy ranking them (which may write into them) never edits the connectome or
the estimator through them.

The controller calls them from :meth:`Controller.scores <adaptive.controller.Controller.scores>`;
``adaptive.controller`` re-exports them under the same names.
"""
from __future__ import annotations

from typing import Container, Optional

import torch

from .finite import holds_nan


def _ranks_nothing(scores: torch.Tensor) -> bool:
    """Whether ``scores`` order nothing: their finite values all equal, or none finite (NaN and inf
    rank as ties, broken by index)."""
    f = scores[torch.isfinite(scores)]
    return f.numel() == 0 or bool((f == f[0]).all())


def _nonfinite_weights(ctx) -> int:
    """Entries of the layer's weights (and of the originals a restore reads) that are NaN or inf."""
    return sum(int((~torch.isfinite(t)).sum()) for t in (ctx.weight, ctx.restore)
               if isinstance(t, torch.Tensor) and t.is_floating_point())


def _describe(est, side: str, method: Optional[str] = None):
    """(who, what) an error about an estimator's scores names: the estimator, and its method and side."""
    method = method or ("removal_cost" if side == "cost" else "restoration_gain")
    return (f"estimator {getattr(est, 'name', None) or type(est).__name__!r} ({type(est).__name__})",
            f"{method} ({'removal cost' if side == 'cost' else 'growth gain'})")


def _check_shape(est, side: str, name: str, s, want, method: Optional[str] = None) -> None:
    """Refuse scores that are not a tensor of shape ``want`` (the weight's, or the ensembles' for
    ``ensemble_scores``), naming what came back."""
    who, what = _describe(est, side, method)
    if isinstance(s, torch.Tensor) and tuple(s.shape) == tuple(want):
        return
    per = "ensemble" if method == "ensemble_scores" else "synapse"
    got = f"has shape {tuple(s.shape)}, not" if isinstance(s, torch.Tensor) else \
        f"returned a {type(s).__name__}, not a torch.Tensor shaped like"
    whose = "the layer's ensembles'" if per == "ensemble" else "the weight's"
    raise ValueError(f"{who}'s {what} for layer {name!r} {got} {whose} {tuple(want)}: it must return one score per "
                     f"{per}; the controller refuses it and leaves the connectome as it was")


def _owned(s: torch.Tensor, ctx, est=None, layers: Container[str] = ()) -> torch.Tensor:
    """``s`` (checked scores) as float32 the controller may hand to a policy: detached (an estimator
    that computed them under ``torch.enable_grad``, or returned a parameter of its own), and a copy
    where they share memory with the layer's weight, mask or original values (``return ctx.weight``:
    a policy writing into its scores would write into the connectome) or with the estimator ``est``'s
    own state for the layer (:func:`_state_of`: ``Evidence`` hands back the values it keeps, which a
    policy writing into its scores would rewrite). Scores of memory of their own are not copied. ``layers``:
    the connectome's layer names (:func:`_state_of` passes over the other layers' entries by them)."""
    s = s.detach().float()
    held = {_storage(t) for t in (ctx.weight, ctx.mask, ctx.restore, *_state_of(est, ctx.name, layers))
            if isinstance(t, torch.Tensor) and t.device == s.device}
    held.discard(None)
    return s.clone() if _storage(s) in held else s


def _storage(t: torch.Tensor):
    """Where ``t``'s memory starts (its storage's address), or None for a tensor with no storage of its own
    to share (a sparse one an estimator keeps: asking failed every update with 'Cannot access storage')."""
    if t.layout != torch.strided:
        return None
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # (a nested tensor, a tensor subclass without storage)
        return None


def _state_of(est, name: str, layers: Container[str] = ()) -> list:
    """The tensors ``est`` keeps that scores of layer ``name`` may share memory with: its tensor attributes
    and, in each of its dict attributes, the entry for ``name`` wherever it sits among nested dicts
    (layer-first, ``self.stats[name]``, as ``Evidence``'s and ``Presence``'s, or stat-first,
    ``self.stats["mean"][name]``, of any order, down to :data:`_DEPTH` levels), with that entry's tensors
    where it is a dict, tuple or list of them (``{"mean": m, "var": v}`` per layer). Only keys are looked
    up: a dict holding ``name`` is not searched further, and no tensor of another layer is collected (a
    list attribute is not read: a history of many tensors, say); nothing is copied. A dict keyed by layers
    (its first key one of ``layers``) that holds no entry for ``name`` is not looked through either: its
    entries are the other layers' (a layer no gradient reached yet has no entry in ``Presence``'s moments,
    and looking through every other layer's made each call linear in the layers, each update quadratic)."""
    out = []
    for v in getattr(est, "__dict__", {}).values():
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, dict):
            _entries_for(v, name, out, _DEPTH, layers)
    return out


_DEPTH = 4  # the nesting _state_of looks through (self.ema["fast"]["mean"][name] is 3): bounds a cycle's walk


def _entries_for(d: dict, name: str, out: list, depth: int, layers: Container[str] = ()) -> None:
    """Append to ``out`` the tensors of ``d``'s entry for ``name`` (:func:`_tensors_in`), or, where ``d`` holds
    no such key and is not keyed by ``layers`` (its first key is not a layer's), those of the dicts among its
    values, ``depth`` levels down at most."""
    if name in d:
        _tensors_in(d[name], out, depth)
    elif depth > 0 and not (d and next(iter(d)) in layers):
        for v in d.values():
            if isinstance(v, dict):
                _entries_for(v, name, out, depth - 1, layers)


def _tensors_in(v, out: list, depth: int) -> None:
    """Append to ``out`` the tensors of one layer's entry ``v``: itself, or those of the dicts, tuples and
    lists it holds, ``depth`` levels down at most."""
    if isinstance(v, torch.Tensor):
        out.append(v)
    elif depth > 0 and isinstance(v, (dict, tuple, list)):
        for x in (v.values() if isinstance(v, dict) else v):
            _tensors_in(x, out, depth - 1)


def _check_pooled(est, side: str, name: str, pooled: torch.Tensor, gran) -> None:
    """Refuse ensemble scores that pooled to NaN: +inf and -inf in one ensemble have no sum."""
    if bool(torch.isnan(pooled).any()):
        who, what = _describe(est, side)
        raise ValueError(f"{who}'s {what} for layer {name!r} sums to NaN in {int(torch.isnan(pooled).sum())} of "
                         f"{pooled.numel()} ensembles ({gran.spec}): each holds both +inf and -inf, which have no "
                         "sum; the controller refuses it and leaves the connectome as it was. Give an ensemble's "
                         "synapses infinities of one sign, or finite scores")



def _check_scores(est, side: str, name: str, s, method: Optional[str] = None, ctx=None) -> None:
    """Refuse an estimator's scores that rank nothing meaningfully: complex values, or NaN (which
    the policies cannot agree on: a swap sorts it last, a keep plan first). +-inf is taken (the
    largest and smallest scores: never or always chosen first). One read of the sum per layer
    (:func:`adaptive.finite.holds_nan`)."""
    who, what = _describe(est, side, method)
    if not isinstance(s, torch.Tensor):
        raise ValueError(f"{who}'s {what} for layer {name!r} is a {type(s).__name__}, not a tensor: "
                         "it must return a real tensor of scores")
    if s.is_meta:  # no values to rank: isnan().any() would fail on .item() with no word of the estimator
        raise ValueError(f"{who}'s {what} for layer {name!r} is on the meta device, which holds no values: "
                         "compute the scores from the layer's tensors (ctx.weight, ctx.stats), on their device "
                         "(e.g. torch.zeros_like(ctx.weight), not torch.zeros(shape, device='meta'))")
    if s.is_complex():
        raise ValueError(f"{who}'s {what} for layer {name!r} is complex ({s.dtype}): scores must be real "
                         "numbers; return a real tensor (e.g. .abs() or .real of it)")
    if s.is_floating_point() and holds_nan(s):
        bad = int(torch.isnan(s).sum())
        broken = _nonfinite_weights(ctx) if ctx is not None else 0
        if broken:  # the scores inherit it: the estimator is not at fault
            raise ValueError(f"{who}'s {what} for layer {name!r} holds {bad} NaN of {s.numel()} entries because "
                             f"the layer's weights hold {broken} NaN or inf values: the run diverged (lower the "
                             "learning rate, or check the data for NaN or inf) or the weights loaded were broken; "
                             "the controller refuses to edit from them and leaves the connectome as it was")
        raise ValueError(f"{who}'s {what} for layer {name!r} holds {bad} NaN of {s.numel()} entries: a NaN "
                         "score has no place in an order (the policies would prune it first or never), so "
                         "the controller refuses it and leaves the connectome as it was; make the estimator return "
                         "finite values (e.g. torch.nan_to_num(score, nan=0.0), or a guarded division such as "
                         "a / b.clamp_min(eps)); +-inf is allowed (ranks as the largest/smallest score)")
