"""The order in which the knowledge-distribution diagnostic removes weights.

Scores come from the project's utility registry (:mod:`adaptive.utility`: ``magnitude``,
``taylor``, ``obd``, ... ``removal_cost``, low = remove first). Gradient statistics for the
estimators that need them are gathered here over a few batches of a held-out loader. If the
registry cannot be imported, :func:`_fallback_scores` computes magnitude, taylor (mean
``|g*w|`` over batches) and obd (diagonal Fisher) itself.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from ._common import default_loss, iterate_batches, model_device, training_mode


def _gradient_batches(conn, loader, batches, loss_fn, desc):
    """Yield after each batch's backward pass (``.grad`` of the connectome's weights is fresh)."""
    model = conn.model
    device = model_device(model)
    with training_mode(model, False):
        for x, y in iterate_batches(loader, batches, desc=desc):
            model.zero_grad(set_to_none=True)
            loss_fn(model(x.to(device)), y.to(device)).backward()
            yield x.shape[0]
    model.zero_grad(set_to_none=True)


def removal_scores(conn, loader=None, estimator: str = "magnitude", batches: Optional[int] = 20,
                   loss_fn: Callable = default_loss, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Score every synapse of ``conn`` (an :class:`adaptive.Connectome`) with ``estimator``'s
    removal cost; low = removed first. Gradients (model in eval mode) come from ``batches`` batches
    of ``loader`` when the estimator needs them."""
    try:
        from ..utility import GradientStats, UtilityContext, get_estimator
    except ImportError:  # the registry is optional for this diagnostic
        return _fallback_scores(conn, loader, estimator, batches, loss_fn)
    est = get_estimator(estimator)
    stats = GradientStats(conn, second_moment=getattr(est, "needs_second_moment", False))
    batch_size = None
    if getattr(est, "needs_gradients", False):
        if loader is None:
            raise ValueError(f"estimator {estimator!r} needs gradients: pass a loader of held-out training data")
        for bs in _gradient_batches(conn, loader, batches, loss_fn, desc=f"{estimator} statistics"):
            stats.observe()
            batch_size = bs
    scores = {}
    for i, (name, p) in enumerate(conn.params.items()):
        ctx = UtilityContext(
            name=name, weight=p.detach(), mask=conn.masks[name], restore=None, stats=stats,
            generator=torch.Generator().manual_seed(seed * 100003 + i), batch_size=batch_size,
        )
        scores[name] = est.removal_cost(ctx).detach().float().cpu()
    return scores


def _fallback_scores(conn, loader, estimator, batches, loss_fn) -> Dict[str, torch.Tensor]:
    """magnitude ``|w|``; taylor ``mean_b |g_b w|``; obd ``mean_b(g_b^2) w^2 / 2``."""
    if estimator not in ("magnitude", "taylor", "obd"):
        raise ValueError(f"unknown estimator {estimator!r} (adaptive.utility is unavailable): use magnitude, taylor or obd")
    w = {n: p.detach().float().cpu() for n, p in conn.params.items()}
    if estimator == "magnitude":
        return {n: t.abs() for n, t in w.items()}
    if loader is None:
        raise ValueError(f"estimator {estimator!r} needs gradients: pass a loader of held-out training data")
    acc = {n: torch.zeros_like(t) for n, t in w.items()}
    n = 0
    for _ in _gradient_batches(conn, loader, batches, loss_fn, desc=f"{estimator} statistics"):
        for name, p in conn.params.items():
            g = p.grad.detach().float().cpu()
            acc[name] += (g * w[name]).abs() if estimator == "taylor" else g * g
        n += 1
    if estimator == "taylor":
        return {k: v / n for k, v in acc.items()}
    return {k: 0.5 * (v / n) * w[k] ** 2 for k, v in acc.items()}


def global_order(scores: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Flat indices (into the concatenation of the flattened scores, in dict order) sorted from
    lowest to highest score; ties keep their position (stable sort), so the order is deterministic."""
    flat = torch.cat([s.reshape(-1).float() for s in scores.values()])
    flat = torch.nan_to_num(flat, nan=float("inf"))
    return torch.sort(flat, stable=True).indices
