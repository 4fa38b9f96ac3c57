"""Bit-packing of boolean masks: 1 bit per synapse on disk."""
from __future__ import annotations

import math

import torch

_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor (any shape) into a flat uint8 tensor, most significant bit first."""
    if mask.dtype != torch.bool:
        raise TypeError(f"pack expects a bool tensor, got {mask.dtype}")
    flat = mask.detach().reshape(-1).cpu()
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    bits = flat.view(-1, 8).to(torch.uint8)
    return (bits * _WEIGHTS).sum(dim=1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of :func:`pack`: a bool tensor of ``shape``."""
    n = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != (n + 7) // 8:
        raise ValueError(
            f"packed mask is a {packed.dim()}-d {packed.dtype} tensor of {packed.numel()} elements, expected a flat "
            f"uint8 tensor of {(n + 7) // 8} bytes for shape {tuple(shape)}"
        )
    bits = ((packed.unsqueeze(1) & _WEIGHTS.to(packed.device)) != 0).reshape(-1)
    if bool(bits[n:].any()):  # pack writes zeros past the last synapse: anything else is corruption
        raise ValueError(f"packed mask for shape {tuple(shape)} has bits set past its last synapse: the data is corrupt")
    return bits[:n].reshape(shape)
