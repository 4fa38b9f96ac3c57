"""Whether each of many tensors holds only finite values, in one pass over each and one host read.

``torch.aminmax`` gives a tensor's least and largest values in one pass: NaN propagates into both and
they cannot overflow, so both are finite exactly where the tensor is (``_foreach_norm(tensors, inf)``,
the fused form of the same question, took several times as long on a CPU: 40 ms against 11 ms over
resnet50's weights at 2 threads, ``recipes/benchmarks/update_reads.py``). Used by the controller's
checks of the gradient window, the weights and a GradScaler's gradients.
"""
from __future__ import annotations

from typing import Sequence

import torch


def finite_flags(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """A bool tensor, one entry per tensor of ``tensors`` (in order): True where it holds no NaN or inf.
    Each tensor's least and largest values are read in its own dtype (a float64 value past float32's range is
    finite); an empty tensor is finite (``aminmax`` refuses one), a complex one where its real and imaginary
    parts are. The flags lie on the first non-empty tensor's device (the CPU when there is none), read back
    with one copy per other device."""
    live = [i for i, t in enumerate(tensors) if t.numel()]
    dev = tensors[live[0]].device if live else torch.device("cpu")
    flags = torch.ones(len(tensors), dtype=torch.bool, device=dev)
    if live:
        with torch.no_grad():
            ends = [torch.isfinite(torch.stack(torch.aminmax(_real(tensors[i].detach()).reshape(-1)))).all().to(dev)
                    for i in live]
            flags[torch.tensor(live, device=dev)] = torch.stack(ends)
    return flags


def _real(t: torch.Tensor) -> torch.Tensor:
    """A complex tensor's real and imaginary parts as one real view (finite exactly where both are;
    ``aminmax`` takes no complex tensor), any other tensor as it is."""
    return torch.view_as_real(t) if t.is_complex() else t


def holds_nan(t: torch.Tensor) -> bool:
    """Whether float tensor ``t`` holds a NaN: its sum first (one read, no bool copy written), which is
    NaN wherever ``t`` holds one (and where it holds +inf and -inf both, or sums to both), and only then
    ``isnan().any()``, which tells those apart. One host read where the sum is not NaN."""
    with torch.no_grad():
        return bool(torch.isnan(t.sum())) and bool(torch.isnan(t).any())
