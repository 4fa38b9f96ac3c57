"""Bit-exact comparisons of weights: what a mask-only optimisation guarantees (no surviving weight
changes by a single bit) checked against the connectome's originals (:func:`changed_weights`) or
against the state_dict as loaded (:func:`loaded_state`, :func:`changed_from`)."""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch
from torch import nn

from .connectome import Connectome
from .discovery import state_dict_keys
from .exact_masking import INT_OF_WIDTH


def changed_weights(conn: Connectome) -> int:
    """Surviving synapses whose bits differ from the original weight's (must be 0 in mask_only)."""
    if not conn.original:
        raise ValueError("changed_weights needs a mask_only connectome (it compares against .original)")
    n = 0
    for name, p in conn.params.items():
        same = _same_bits(p.detach(), conn.original[name].to(p.device, p.dtype))
        n += int((conn.masks[name].to(p.device) & ~same).sum())
    return n


def loaded_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """A copy of ``model.state_dict()`` on the CPU, taken before a connectome is attached: the
    reference :func:`changed_from` compares a pruned state_dict with."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per entry, whether ``a`` and ``b`` hold the same bits as they read (a NaN is its own, -0.0 is
    not +0.0); a complex entry compares its real and imaginary parts' bits (complex128 has no
    16-byte integer view), a conjugate or negative view as it reads."""
    if a.dtype != b.dtype:
        return a == b
    bits = [_bits(t) for t in (a, b)]
    if bits[0] is None:
        return a == b
    same = bits[0] == bits[1]
    return same.all(-1) if a.is_complex() else same


def _bits(t: torch.Tensor) -> Optional[torch.Tensor]:
    """``t``'s entries as integers of their size (a complex one as two: real, imaginary), or None."""
    t = t.resolve_conj().resolve_neg()
    if t.is_complex():
        t = torch.view_as_real(t)
    bits = INT_OF_WIDTH.get(t.element_size())
    return None if bits is None else t.view(bits)


def changed_from(state: Dict[str, torch.Tensor], reference: Dict[str, torch.Tensor], conn: Connectome) -> int:
    """Entries of ``state`` (a pruned state_dict, :meth:`Connectome.dense_state_dict`) whose bits
    differ from ``reference`` (:func:`loaded_state`: the weights as loaded), pruned synapses set to
    +0.0 aside: surviving weights, biases, normalisation statistics, every tensor. Unlike
    :func:`changed_weights` it does not trust the connectome's own copy of the weights
    (``conn.original``); a key or shape that does not match counts every entry of that tensor."""
    for what, d in (("state", state), ("reference", reference)):
        if not isinstance(d, Mapping):
            raise TypeError(f"changed_from: {what} must be a state_dict (a mapping of names to tensors), got "
                            f"{type(d).__name__}: pass conn.dense_state_dict() and loaded_state(model)")
    keys = state_dict_keys(conn.model)
    pruned = {k: ~conn.masks[n].cpu() for n, p in conn.params.items() for k in keys.get(id(p), [n])}
    n = 0
    for k in set(state) | set(reference):
        a, ref = state.get(k), reference.get(k)
        if a is None or ref is None or a.shape != ref.shape or a.dtype != ref.dtype:
            n += max(0 if a is None else a.numel(), 0 if ref is None else ref.numel())
            continue
        a = a.detach().cpu()
        same = _same_bits(a, ref)
        if k in pruned:
            same |= pruned[k] & _same_bits(a, torch.zeros_like(a))
        n += int((~same).sum())
    return n
