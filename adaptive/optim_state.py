"""Optimizer-state repair: moments at pruned and regrown positions are reset, so momentum,
weight decay and Adam's averages can neither revive a pruned synapse nor push a regrown one with
stale history. Works for any optimizer whose per-parameter state holds tensors shaped like the
parameter (SGD momentum buffers, Adam/AdamW moments, RMSprop, Adagrad, ...): no isinstance chain."""
from __future__ import annotations

import torch


def unwrap_optimizer(optimizer):
    """The torch optimizer inside Accelerate's ``AcceleratedOptimizer`` (or the optimizer itself)."""
    inner = optimizer
    # AcceleratedOptimizer subclasses torch.optim.Optimizer but keeps the real one in .optimizer
    for _ in range(4):
        nxt = getattr(inner, "optimizer", None)
        if nxt is None or nxt is inner:
            break
        inner = nxt
    if not isinstance(inner, torch.optim.Optimizer):
        raise TypeError(f"expected a torch.optim.Optimizer (or a wrapper with .optimizer), got {type(optimizer).__name__}")
    return inner


@torch.no_grad()
def reset_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, where: torch.Tensor) -> None:
    """Zero every parameter-shaped state tensor of ``param`` at the positions ``where`` (bool)."""
    state = optimizer.state.get(param)
    if not state:
        return
    for key, v in state.items():
        if isinstance(v, torch.Tensor) and v.shape == param.shape and v.is_floating_point():
            v.masked_fill_(where.to(v.device), _fresh_value(optimizer, param, key))


def _fresh_value(optimizer, param, key) -> float:
    """The value a state entry starts at in a fresh optimizer: 0, except Adagrad's ``sum``
    (``initial_accumulator_value``) and Rprop's ``step_size`` (``lr``): a regrown synapse must step
    as a fresh one would."""
    fresh = {(torch.optim.Adagrad, "sum"): "initial_accumulator_value", (torch.optim.Rprop, "step_size"): "lr"}
    for (cls, k), group_key in fresh.items():
        if isinstance(optimizer, cls) and key == k:
            for g in optimizer.param_groups:
                if any(p is param for p in g["params"]):
                    return float(g.get(group_key, 0.0))
    return 0.0


@torch.no_grad()
def snapshot_state(optimizers, params) -> list:
    """Copies of the parameter-shaped state tensors of ``params`` in ``optimizers``, for
    :func:`restore_state` (a rolled-back edit must not cost the moments it reset)."""
    saved = []
    for opt in optimizers:
        if opt is None:
            continue
        for p in params:
            for key, v in (opt.state.get(p) or {}).items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.is_floating_point():
                    saved.append((opt, p, key, v.clone()))
    return saved


@torch.no_grad()
def restore_state(saved: list) -> None:
    for opt, p, key, v in saved:
        now = (opt.state.get(p) or {}).get(key)
        if isinstance(now, torch.Tensor) and now.shape == v.shape:
            now.copy_(v)


_ZERO_PRESERVING: set = set()


def register_zero_preserving(cls):
    """Declare that optimizer class ``cls`` is *zero-preserving*: its update at a position is exactly
    0.0 whenever that position's gradient, weight and every per-parameter state tensor are 0.0.

    The connectome masks gradients and weights before every step and keeps the state at pruned
    positions at 0.0, so after a step of such an optimizer the pruned weights are still exactly
    0.0 and the post-step re-masking (a pass over every prunable weight) is skipped. Any other
    optimizer (including subclasses of registered ones: the match is by exact type) is re-masked
    after each step. Registering a class that is not zero-preserving breaks invariant 1; prove a
    new entry with the 50-step test in tests/test_invariants.py. Usable as a class decorator."""
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise TypeError(f"register_zero_preserving expects a torch.optim.Optimizer subclass, got {cls!r}")
    _ZERO_PRESERVING.add(cls)
    return cls


def preserves_zeros(optimizer) -> bool:
    """Whether ``optimizer``'s exact type is registered as zero-preserving and its settings keep it so:
    with ``eps=0`` an adaptive optimizer's update at a pruned position is 0 / (sqrt(0) + 0) = NaN."""
    if type(optimizer) not in _ZERO_PRESERVING:
        return False
    return all(g.get("eps", 1.0) != 0 for g in optimizer.param_groups)


# Each keeps 0.0 where gradient, weight and state are 0.0, with or without momentum, dampening,
# nesterov, L2 or decoupled weight decay, amsgrad, centering (tests/test_invariants.py).
for _cls in (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
):
    register_zero_preserving(_cls)
