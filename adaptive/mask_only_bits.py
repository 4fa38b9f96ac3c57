"""Bit-exact comparisons of weights: what a mask-only optimisation guarantees (no surviving weight
changes by a single bit) checked against the connectome's originals (:func:`changed_weights`) or
against the state_dict as loaded (:func:`loaded_state`, :func:`changed_from`), and what the load itself
changed of the weights file (:func:`load_changes`, :func:`changed_by_load`)."""
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


def load_changes(path, loaded: Mapping[str, torch.Tensor], model: nn.Module):
    """``(changed, names)``: per tensor of the weights file ``path``, a boolean tensor of the values the
    load changed in ``model`` (``loaded``: :func:`loaded_state` of it; only tensors with such values),
    each read as :func:`adaptive.models.load_weights` reads it and compared in the wider of the two
    dtypes: a float64 file's values cast to a float32 model's (lossless casts, float16 into float32,
    change none); ``names`` says which tensors, with both dtypes. :func:`changed_from` compares with
    the weights as loaded: where the load itself changed the file's values, a pruned state_dict
    differs from the file there too (:func:`changed_by_load`). ``({}, [])`` for no file (None). The file
    is read memory-mapped where its format allows (:func:`adaptive.models.weights.read_state_dict`)."""
    from .models.weights import as_model_keys, read_state_dict

    if not path:
        return {}, []
    # memory-mapped (a second read of a file the model holds already, beside ``loaded``: no copy of a large
    # model's whole file in memory, a float64 one twice the model's size)
    sd = as_model_keys(read_state_dict(path, mmap=True), loaded, tuple(getattr(model, "skipped_weight_prefixes", ())))
    changed, names = {}, []
    for k, v in sd.items():
        ref = loaded.get(k)
        if ref is None or not torch.is_tensor(v) or v.shape != ref.shape:  # (skipped, or refused by the load)
            continue
        wide = torch.promote_types(v.dtype, ref.dtype)
        c = ~_same_bits(v.detach().cpu().to(wide), ref.to(wide))
        if bool(c.any()):
            changed[k] = c
            names.append(f"{k}: {str(v.dtype).replace('torch.', '')} in the file, {str(ref.dtype).replace('torch.', '')} "
                         "in the model")
    return changed, names


def changed_by_load(state: Mapping[str, torch.Tensor], loaded: Mapping[str, torch.Tensor],
                    changed: Mapping[str, torch.Tensor]) -> int:
    """Entries of ``state`` (a pruned state_dict) that hold the value as loaded (``loaded``) where the
    load had changed the file's (``changed``, :func:`load_changes`): surviving values that differ from
    the file though the optimisation left them as loaded. A pruned one is 0.0, not as loaded, and is
    not counted; one the optimisation changed is :func:`changed_from`'s, so the two add up."""
    return sum(int((c & _same_bits(state[k].detach().cpu(), loaded[k])).sum()) for k, c in changed.items() if k in state)


def differ_words(differ: int, by_load: int, names, weights, what: str) -> str:
    """The 'surviving weights that differ from the original' line's count and its parenthesis:
    ``differ`` (:func:`changed_from`) plus ``by_load`` (:func:`changed_by_load`), and where the load
    changed values of the file ``weights`` (``names``, :func:`load_changes`), which and how. ``what``:
    the state compared ("pruned_state_dict.pt", "the model")."""
    if not names:
        return (f"{differ + by_load:,} (every tensor of {what}, biases and normalisation statistics too, compared bit "
                "for bit with the weights as loaded)")
    return (f"{differ + by_load:,} ({by_load:,} changed by the load itself, which cast values of --weights {weights} to "
            f"the model's dtypes ({'; '.join(names[:3])}{' ...' if len(names) > 3 else ''}), so {what} holds them as "
            f"loaded, not as in the file; {differ:,} by the optimisation: every tensor of {what} compared bit for bit "
            "with the weights as loaded)")
