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
