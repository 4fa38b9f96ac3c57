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
    for v in state.values():
        if isinstance(v, torch.Tensor) and v.shape == param.shape and v.is_floating_point():
            v.masked_fill_(where.to(v.device), 0)


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
    """Whether ``optimizer``'s exact type is registered as zero-preserving."""
    return type(optimizer) in _ZERO_PRESERVING


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
