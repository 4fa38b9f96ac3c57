"""The checks a policy's :class:`~adaptive.policies.base.EditPlan` passes before the controller
applies it: every layer it names is an editable layer of the connectome; every index list is a 1-d
integer tensor of flat ensemble indices in range, each ensemble once; the prunes name live ensembles,
the grows absent ones, and no ensemble is both pruned and grown; the aligned scores have one real,
non-NaN value per index; ``tolerance`` and ``est_loss_change`` are numbers. Each refusal is a
ValueError (a TypeError for a plan that is no EditPlan) naming the policy, what it returned and what
was expected, raised before any mask changes.

A policy of your own is the usual source of such a plan (no built-in one makes them); the controller
calls :func:`check_plan` from :meth:`~adaptive.controller_edits.ControllerEditsMixin._apply`.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch

from .plan_batch import plan_looks_valid
from .policies.base import EditPlan

_SHOWN = 5  # entries a message lists


def _listed(t: torch.Tensor) -> str:
    """Up to :data:`_SHOWN` entries of flat ``t`` as a list, with how many more there are."""
    t = t.reshape(-1)
    more = t.numel() - _SHOWN
    return f"{t[:_SHOWN].tolist()}" + (f" (and {more} more)" if more > 0 else "")


def _what(x) -> str:
    """What a policy put where a tensor was expected, for a message: a tensor's dtype, shape and device."""
    if not isinstance(x, torch.Tensor):
        return f"a {type(x).__name__}" if x is not None else "None"
    return f"a tensor of dtype {str(x.dtype).replace('torch.', '')} and shape {tuple(x.shape)}" + (
        f" on {x.device}" if x.device.type != "cpu" else "")


def _index_problem(idx, size: int) -> str | None:
    """Why ``idx`` is not a list of flat indices into ``size`` ensembles (None: it is one)."""
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32) or idx.dim() != 1 or idx.is_meta:
        hint = ""
        if isinstance(idx, torch.Tensor) and idx.dtype == torch.bool:
            hint = (f" (a boolean mask{'' if idx.numel() == size else f' of {idx.numel()} entries'}: give the "
                    "indices of its True entries, mask.reshape(-1).nonzero().squeeze(1))")
        elif isinstance(idx, torch.Tensor) and idx.is_floating_point():
            hint = " (float indices: compute them with integer operations, e.g. torch.argsort, or .long() them)"
        elif isinstance(idx, torch.Tensor) and idx.is_meta:
            hint = " (the meta device holds no values: build the indices on the masks' device)"
        return f"is {_what(idx)}{hint}, expected a 1-d int64 (or int32) tensor of flat ensemble indices"
    if not idx.numel():
        return None
    flat = idx.long()  # an int32 tensor compared with a size past 2**31 - 1 would wrap it
    out = (flat < 0) | (flat >= size)
    if bool(out.any()):
        return (f"holds {int(out.sum())} indices outside [0, {size}) (the layer's ensembles): "
                f"{_listed(idx[out])}")
    s = flat.sort().values  # no scratch as large as the layer: sorted, each index beside its repeats
    again = s[1:] == s[:-1]
    if bool(again.any()):
        twice = torch.unique_consecutive(s[1:][again])
        return f"lists {twice.numel()} ensemble(s) more than once: {_listed(twice)}; list each ensemble once"
    return None


def _scores_problem(scores, idx: torch.Tensor) -> str | None:
    """Why ``scores`` do not align with the indices ``idx`` (None: they do)."""
    if not isinstance(scores, torch.Tensor) or scores.is_meta or scores.is_complex() or scores.dim() != 1:
        return f"is {_what(scores)}, expected a 1-d real tensor with one score per index"
    if scores.numel() != idx.numel():
        return f"has {scores.numel()} values for {idx.numel()} indices, expected one per index"
    if scores.is_floating_point() and bool(torch.isnan(scores).any()):
        return f"holds {int(torch.isnan(scores).sum())} NaN, which no estimate can sum: give finite scores (or +-inf)"
    return None


def check_plan(ctrl, plan) -> None:
    """Refuse, before anything changes, a plan the controller ``ctrl``'s policy got wrong (see the
    module's docstring for what is checked); return nothing for a plan it can apply as it is."""
    policy = ctrl.policy
    who = f"policy {getattr(policy, 'name', '?')!r} ({type(policy).__name__}) returned a bad EditPlan"
    if not isinstance(plan, EditPlan):
        raise TypeError(f"{who}: {type(plan).__name__}, not an EditPlan (or None)")
    for field in ("prune", "grow", "prune_scores", "grow_scores"):
        if not isinstance(getattr(plan, field), Mapping):
            raise ValueError(f"{who}: its {field} is {_what(getattr(plan, field))}, expected a dict of layer "
                             f"name -> {'indices' if field in ('prune', 'grow') else 'scores'} (a tensor)")
    if not plan_looks_valid(ctrl.conn, plan, ctrl.protected):  # a few tensor ops and one host read
        _check_layers(who, ctrl, plan)  # layer by layer: raises at the first problem, named
    for key, value in (("tolerance", plan.tolerance), ("est_loss_change", plan.est_loss_change)):
        ok = value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool)
                               and not math.isnan(value) and (key != "tolerance" or value >= 0))
        if not ok:
            want = "None or a number >= 0 (math.inf: the line search keeps the plan whatever the loss)" \
                if key == "tolerance" else "None or a number (the plan's estimated loss change)"
            raise ValueError(f"{who}: its {key} is {value!r}, expected {want}")


def _check_layers(who: str, ctrl, plan) -> None:
    """The layer checks of :func:`check_plan`, layer by layer: raise a ValueError for the first problem
    (in the order prune, grow, both, live or absent), naming it."""
    conn = ctrl.conn
    sizes = {}
    for side in ("prune", "grow"):
        edits, scores = getattr(plan, side), getattr(plan, side + "_scores")
        orphans = sorted(map(str, (n for n in scores if n not in edits)))
        if orphans:
            raise ValueError(f"{who}: {side}_scores names layer(s) {orphans[:3]} that its {side} list does not")
        for n, idx in edits.items():
            if n not in conn.masks:
                raise ValueError(f"{who}: {side} names layer {n!r}, which is not in the connectome (its layers: "
                                 f"{list(conn.masks)[:5]}{' ...' if len(conn.masks) > 5 else ''})")
            size = sizes.setdefault(n, conn.granularities[n].num_ensembles(conn.layers[n].shape))
            problem = _index_problem(idx, size)
            if problem is not None:
                raise ValueError(f"{who}: {side}[{n!r}] {problem}")
            problem = _scores_problem(scores[n], idx) if n in scores else None
            if problem is not None:
                raise ValueError(f"{who}: {side}_scores[{n!r}] {problem}")
            if idx.numel() and n in ctrl.protected:
                raise ValueError(f"{who}: it edits layer {n!r}, which protect= keeps as it is")
    for n in sorted(set(plan.prune) & set(plan.grow)):
        both = plan.prune[n][torch.isin(plan.prune[n], plan.grow[n].to(plan.prune[n].device))]
        if both.numel():
            raise ValueError(f"{who}: it both prunes and grows {both.numel()} ensemble(s) of layer {n!r}: "
                             f"{_listed(both)}; an update edits an ensemble one way, so list each in prune or in "
                             "grow (not both), or leave it out")
    for side, want, fault in (("prune", True, "already absent"), ("grow", False, "already present")):
        for n, idx in getattr(plan, side).items():
            if not idx.numel():
                continue
            ens = conn._ensemble_mask(n)  # read only
            wrong = idx[(ens.reshape(-1)[idx.to(ens.device)] != want).to(idx.device)]
            if wrong.numel():
                raise ValueError(f"{who}: {side}[{n!r}] holds {wrong.numel()} ensemble(s) that are {fault}: "
                                 f"{_listed(wrong)}; {side} only {'live' if want else 'absent'} ensembles "
                                 f"(ctrl.alive()[{n!r}] says which are live)")
