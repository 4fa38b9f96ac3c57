"""The order in which the knowledge-distribution diagnostic removes weights.

Scores come from the project's utility registry (:mod:`adaptive.utility`: ``magnitude``,
``taylor``, ``obd``, ... ``removal_cost``, low = remove first). Gradient statistics for the
estimators that need them are gathered here over a few batches of a held-out loader. The registry
is the only definition of each estimator (no private copy here), so an order named ``taylor`` is
the controller's ``taylor``: the signed first-order loss change ``-mean(g) * w``.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from ..global_rng import kept_global_rng
from ..metrics import call_model, example_count, to_device
from ..warn import warn_user
from ._common import batch_loss, default_loss, iterate_batches, kept_grads, measured_gradients, model_device, scalers_suspended
from ..modes import modes_kept
from ..policies.base import _stable_argsort


def _gradient_batches(conn, loader, batches, loss_fn, desc):
    """Yield after each batch's backward pass (``.grad`` of the connectome's weights is fresh).
    Every weight of the connectome gets its gradient, a frozen one (``requires_grad=False``) too:
    it requires grad while the batches run and gets its flag back afterwards. Every ``.grad`` of the
    model is given back as it was (it was left None, a caller's pending gradients lost)."""
    model = conn.model
    device = model_device(model)
    with kept_grads(model), measured_gradients(conn.params.values(), "removal_scores"), modes_kept(model, False), \
            scalers_suspended(model):  # scores read the model's own gradients
        for b, (x, y) in enumerate(iterate_batches(loader, batches, desc=desc), 1):
            model.zero_grad(set_to_none=True)
            batch_loss(loss_fn, call_model(model, to_device(x, device), "removal_scores"), to_device(y, device),
                       f"removal_scores' batch {b}").backward()
            yield example_count(y)  # the batch's examples (x may be a tuple of inputs)


@kept_global_rng()
@torch.inference_mode(False)  # its tensors (sums, gradients) must be normal ones, whatever the caller's mode
def removal_scores(conn, loader=None, estimator="magnitude", batches: Optional[int] = 20,
                   loss_fn: Callable = default_loss, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Score every synapse of ``conn`` (an :class:`adaptive.Connectome`) with ``estimator``'s
    removal cost (a registry name, or an estimator instance built with options); low = removed first. Gradients (model in eval mode) come from ``batches`` batches
    of ``loader`` when the estimator needs them, for every weight of ``conn``: a frozen layer's
    (``requires_grad=False``) included, so it is scored on its real gradient, not on none.
    ``loss_fn(output, targets)``: the loss whose gradients are observed (default cross-entropy);
    ``seed``: seeds the estimator's random draws (the "random" estimator's order), one generator
    per layer; the global random generators are left as it found them (:mod:`adaptive.global_rng`)."""
    from ..utility import GradientStats, UtilityContext, get_estimator

    est = get_estimator(estimator)
    estimator = estimator if isinstance(estimator, str) else repr(est)  # what the messages name
    stats = GradientStats(conn, second_moment=getattr(est, "needs_second_moment", False))
    batch_size = None
    if getattr(est, "needs_gradients", False):
        if loader is None:
            raise ValueError(f"estimator {estimator!r} needs gradients: pass a loader of held-out training data")
        read = 0
        reached = dict.fromkeys(conn.params, False)
        for bs in _gradient_batches(conn, loader, batches, loss_fn, desc=f"{estimator} statistics"):
            stats.observe()
            read += 1
            batch_size = max(bs, batch_size or 0)  # the loader's batch size, not a short last batch's
            for name, p in conn.params.items():
                reached[name] = reached[name] or p.grad is not None
        if read < (batches or 2):  # the loader ran out first (a held-out part smaller than asked for)
            _warn_short_order(estimator, read, batches)
        _warn_unreached(estimator, [n for n, r in reached.items() if not r], conn)
    scores = {}
    for i, (name, p) in enumerate(conn.params.items()):
        ctx = UtilityContext(
            name=name, weight=p.detach(), mask=conn.masks[name], restore=None, stats=stats,
            generator=torch.Generator().manual_seed(seed * 100003 + i), batch_size=batch_size,
        )
        scores[name] = est.removal_cost(ctx).detach().float().cpu()
    return scores


def _warn_short_order(estimator: str, read: int, batches: Optional[int]) -> None:
    """Say that the order's statistics rest on ``read`` batches, fewer than the ``batches`` asked
    (None: one pass, which is short only when it is a single batch)."""
    what = "a single batch" if read == 1 else f"{read} batches"
    single = (" (a second moment is that batch's squared gradient alone, a mean no mean of several)"
              if read == 1 else "")
    warn_user(f"the {estimator} removal order read {what}{f' of the {batches} asked' if batches else ''}: the loader "
              f"holds no more, so its statistics rest on {read} batch{'es' if read > 1 else ''}{single}; give more "
              "held-out data or a smaller batch size, or ask for no more batches than the loader holds "
              "(order_batches, --order_batches)")


def _warn_unreached(estimator: str, unreached, conn) -> None:
    """Say which layers no gradient reached in any batch of the order (a head the forward does not use, one
    run under torch.no_grad()): their weights are scored on no gradient, and removing them cannot change the
    loss, yet they count among the weights removed and in the fractions."""
    if not unreached:
        return
    count = sum(conn.params[n].numel() for n in unreached)
    warn_user(f"the {estimator} removal order: no gradient reached {', '.join(unreached[:6])}"
              f"{' ...' if len(unreached) > 6 else ''} in any batch ({count} weights: the forward does not use them, "
              "or runs them under torch.no_grad() or detaches their output), so they are scored on no gradient and "
              "removing them cannot change the loss, yet they count among the weights removed and in the fractions; "
              "exclude= them (knowledge_distribution) to measure the layers the loss reads")


def global_order(scores: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Flat indices (into the concatenation of the flattened scores, in dict order) sorted from
    lowest to highest score; ties keep their position (stable sort), so the order is deterministic."""
    flat = torch.cat([s.reshape(-1).float() for s in scores.values()])
    flat = torch.nan_to_num(flat, nan=float("inf"))
    # the policies' int32 keys in the float order: the same stable argsort, faster than a stable
    # float sort
    return _stable_argsort(flat)
