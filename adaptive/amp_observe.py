"""Observing gradients under ``torch.amp.GradScaler`` for a controller driven explicitly
(``ctrl.observe(scaler=scaler)``).

After ``scaler.scale(loss).backward()`` the gradients carry the loss scale (65536 at first) until
``scaler.unscale_(opt)``, or ``scaler.step(opt)``, divides it out; a step whose scaled gradients hold
inf or NaN is one the scaler skips. Observed as they are, scaled gradients move the estimators whose
scores are not scale-invariant (a damping term beside a variance), and one non-finite batch leaves the
whole window out. Here: which layers' gradients still carry the scale, and whether a step's gradients
are finite (the scaler's own verdict, read once, as its step reads it).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch


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
    return unscaled, scaled, (torch.tensor(scaler.get_scale(), dtype=torch.float32) if scaled else None)


def grads_finite(conn, names: List[str]) -> bool:
    """Whether the gradients of layers ``names`` hold only finite values (scaled or not: a scaled inf is
    an unscaled inf): one fused max-norm pass and one sync, as GradScaler's own check."""
    grads = [conn.params[n].grad for n in names if conn.params[n].grad is not None]
    if not grads:
        return True
    grads = [g.to_dense() if g.layout != torch.strided else g for g in grads]
    peaks = torch._foreach_norm(grads, float("inf"))
    return bool(torch.isfinite(torch.stack([p.float().to(peaks[0].device) for p in peaks])).all())
