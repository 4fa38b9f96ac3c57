"""Observing gradients under ``torch.amp.GradScaler`` for a controller driven explicitly
(``ctrl.observe(scaler=scaler)``).

After ``scaler.scale(loss).backward()`` the gradients carry the loss scale (65536 at first) until
``scaler.unscale_(opt)``, or ``scaler.step(opt)``, divides it out; a step whose scaled gradients hold
inf or NaN is one the scaler skips. Observed as they are, scaled gradients move the estimators whose
scores are not scale-invariant (OBD's and consistency's first-order term, -g*w, beside a curvature
term that grows with the square of the scale), and one non-finite batch leaves the
whole window out. Here: which layers' gradients still carry the scale, and whether a step's gradients
are finite (the scaler's own verdict, read once, as its step reads it).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .finite import finite_flags


def check_scaler(scaler) -> None:
    """Refuse what is no ``torch.amp.GradScaler`` (``torch.cuda.amp.GradScaler`` and Accelerate's
    ``accelerator.scaler`` are), naming what to pass."""
    if not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(f"observe(scaler=...) takes the torch.amp.GradScaler that scales the loss (accelerator.scaler "
                        f"under Accelerate), got {type(scaler).__name__}")


def split_scaled(conn, scaler, names: List[str]) -> Tuple[List[str], List[str], Optional[torch.Tensor]]:
    """``(unscaled, scaled, scale)``: the layers of ``names`` whose gradients the scaler already unscaled
    (held by an optimizer attached to ``conn`` that ``scaler.unscale_`` or ``scaler.step`` took since
    the last ``scaler.update()``), those that still carry its scale, and that scale (a float32 scalar:
    GradScaler divides by its reciprocal computed in float64, and so does the window). The scaler's
    per-optimizer stage is read without creating an entry for an optimizer it never saw."""
    from torch.amp.grad_scaler import OptState

    done = set()
    for ref in conn._optimizers:
        opt = ref()
        st = scaler._per_optimizer_states.get(id(opt)) if opt is not None else None
        if st is not None and st["stage"] is not OptState.READY:
            done |= {id(p) for g in opt.param_groups for p in g["params"]}
    unscaled = [n for n in names if id(conn.params[n]) in done]
    scaled = [n for n in names if id(conn.params[n]) not in done]
    if not scaled:
        return unscaled, scaled, None
    scale = scaler._get_scale_async()  # the scale tensor unscale_ divides by, read without a sync (get_scale syncs)
    return unscaled, scaled, scale if scale is not None else torch.tensor(scaler.get_scale(), dtype=torch.float32)


def finite_layers(conn, names: List[str], primary=None) -> Tuple[List[str], bool]:
    """``(kept, left_out)``: the layers of ``names`` whose step the scaler takes, and whether it skips any.
    GradScaler skips an optimizer's step where any gradient that optimizer holds is inf or NaN (a bias's, or
    another layer's, as well as the weight's), and steps the other optimizers; so each layer goes with the
    attached optimizer owning it (``primary`` first, then in the order attached, as
    :meth:`~adaptive.Connectome.stepping_layers` assigns it) and is kept where every gradient of that optimizer
    is finite, as the attached path observes only the steps taken. A layer no attached optimizer holds is
    judged by its own gradient. One fused max-norm pass and one sync in all (scaled or not: a scaled inf is an
    unscaled inf)."""
    opts = [o for o in (r() for r in conn._optimizers) if o is not None]
    order = ([primary] if primary is not None and any(o is primary for o in opts) else []) + \
        [o for o in opts if o is not primary]
    owner = {}
    for i in reversed(range(len(order))):  # the earliest in ``order`` holding a parameter owns it
        for g in order[i].param_groups:
            for p in g["params"]:
                owner[id(p)] = i
    key = {n: owner.get(id(conn.params[n]), n) for n in names}  # an optimizer's index, or the layer itself
    keys = list(dict.fromkeys(key.values()))
    checked = []
    for k in keys:
        ps = [p for g in order[k].param_groups for p in g["params"]] if isinstance(k, int) else [conn.params[k]]
        checked.append([p.grad for p in ps if p.grad is not None])
    grads = [g.to_dense() if g.layout != torch.strided else g for gs in checked for g in gs]
    if not grads:
        return list(names), False
    ok = finite_flags(grads)
    dev = ok.device
    flags, at = [], 0
    for gs in checked:  # each key's verdict, all read back at once
        flags.append(ok[at:at + len(gs)].all() if gs else torch.ones((), dtype=torch.bool, device=dev))
        at += len(gs)
    verdict = dict(zip(keys, torch.stack(flags).tolist()))
    kept = [n for n in names if verdict[key[n]]]
    return kept, len(kept) < len(names)
