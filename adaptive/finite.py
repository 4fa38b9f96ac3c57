"""Whether each of many tensors holds only finite values, in one fused pass and one host read.

``torch._foreach_norm(tensors, inf)`` gives each tensor's largest ``|x|`` in one kernel per device:
NaN and inf propagate into it and it cannot overflow, so it is finite exactly where the tensor is.
Used by the controller's checks of the gradient window, the weights and a GradScaler's gradients."""
from __future__ import annotations

from typing import Sequence

import torch


def finite_flags(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """A bool tensor, one entry per tensor of ``tensors`` (in order): True where it holds no NaN or inf.
    An empty tensor is finite (``_foreach_norm`` refuses the inf norm of one); the flags lie on the first
    non-empty tensor's device (the CPU when there is none), read back with one copy per other device."""
    live = [i for i, t in enumerate(tensors) if t.numel()]
    dev = tensors[live[0]].device if live else torch.device("cpu")
    flags = torch.ones(len(tensors), dtype=torch.bool, device=dev)
    if live:
        with torch.no_grad():
            peaks = torch._foreach_norm([tensors[i].detach() for i in live], float("inf"))
            flags[torch.tensor(live, device=dev)] = torch.isfinite(torch.stack([p.float().to(dev) for p in peaks]))
    return flags


def holds_nan(t: torch.Tensor) -> bool:
    """Whether float tensor ``t`` holds a NaN: its sum first (one read, no bool copy written), which is
    NaN wherever ``t`` holds one (and where it holds +inf and -inf both, or sums to both), and only then
    ``isnan().any()``, which tells those apart. One host read where the sum is not NaN."""
    with torch.no_grad():
        return bool(torch.isnan(t.sum())) and bool(torch.isnan(t).any())
