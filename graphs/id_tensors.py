"""Helpers on *id tensors* (see :mod:`graphs.trace`): per-channel ids broadcast over a shape, whether ids vary
along one axis only, and a tensor shrunk along the axes its ids do not vary on."""
from __future__ import annotations

from typing import Sequence

import torch


def _expand(ids: torch.Tensor, shape: Sequence[int], axis: int) -> torch.Tensor:
    """Broadcast per-channel ids along every other dimension of ``shape`` (a view, no copy)."""
    nd = len(shape)
    axis = axis % nd
    view = [1] * nd
    view[axis] = ids.numel()
    return ids.to(torch.float64).view(view).expand(tuple(shape))


def _uniform_except(t: torch.Tensor, axis: int) -> bool:
    for d in range(t.dim()):
        if d == axis % t.dim() or t.shape[d] == 1 or t.stride(d) == 0:
            continue
        if not bool((t == t.narrow(d, 0, 1)).all()):
            return False
    return True


def _squeeze_uniform(t: torch.Tensor) -> torch.Tensor:
    """Shrink every dimension along which ``t`` is constant to size 1 (keeps broadcastability)."""
    for d in range(t.dim()):
        if t.shape[d] > 1 and (t.stride(d) == 0 or bool((t == t.narrow(d, 0, 1)).all())):
            t = t.narrow(d, 0, 1)
    return t
