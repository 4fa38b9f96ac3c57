"""Where a mask-only optimisation starts: the synapses a sparse network has already lost.

In mask_only mode the weights are frozen, so a synapse whose weight is exactly 0.0 (or -0.0) cannot
be told from an absent one: removing it changes nothing, and neither does restoring it. A network
pruned before holds its pruned synapses as such zeros: one trained with a
:class:`~adaptive.Connectome` and :class:`~adaptive.Controller` (a pruned weight is exactly 0.0,
invariant 1), a ``torch.nn.utils.prune`` mask made permanent, a ``pruned_state_dict.pt`` loaded into
a plain model. :func:`adaptive.optimize_connectome` therefore starts from them: an ensemble whose
every weight is 0.0 is absent from the start and is never restored (a restoration that changes
nothing would count as present a synapse that computes nothing, and let the optimisation remove a
real weight in its place). Targets count every prunable synapse, these included: a fraction is the
share removed at the end, so a target below what is already absent is refused.

A dense network (no weight exactly 0.0) starts with every synapse present, exactly as before.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import nn

from .connectome_optimizers import _MASKED_BY
from .counts import fraction_bound
from .distributed import is_distributed
from .metrics import fmt_unsaturated


@dataclass
class Start:
    """The starting point of a mask-only optimisation of a connectome's frozen weights.

    - ``masks``: per layer, one bool per ensemble: False where every weight of the ensemble is
      exactly 0.0 (absent from the start, never restored), True elsewhere;
    - ``absent``: synapses in those ensembles; ``total``: every prunable synapse;
    - ``zeros``: weights of exactly 0.0 in all (``zeros - absent`` sit in ensembles that hold
      nonzero weights too, and count as present: such an ensemble is removed or kept whole);
    - ``attached``: of the zeros, those pruned by a Connectome attached to an optimizer of the
      model (None: no such connectome);
    - ``earlier``: of the zeros, those pruned by the masks an earlier :func:`adaptive.optimize_connectome`
      on the same weights left on the model (its result's connectome holds their weights; None: none)."""

    masks: Dict[str, torch.Tensor]
    absent: int
    total: int
    zeros: int
    attached: Optional[int] = None
    earlier: Optional[int] = None

    @property
    def sparse(self) -> bool:
        """Whether any prunable weight is exactly 0.0 (the start differs from a dense network's)."""
        return self.zeros > 0


def zero_weights(weights: Dict[str, torch.Tensor]) -> int:
    """The entries of ``weights`` that are exactly 0.0 (or -0.0)."""
    return sum(w.numel() - int(torch.count_nonzero(w.detach())) for w in weights.values())


def sparse_start(conn) -> Start:
    """The :class:`Start` of ``conn``'s weights (its frozen originals in mask_only mode, else its
    current weights), measured at its ensemble granularities; computed only, nothing edited. One
    pass over each weight, on its device, with a bool per weight at most beside it (per ensemble a
    bool: whether any of its weights is nonzero)."""
    weights = conn.original or {n: p.detach() for n, p in conn.params.items()}
    masks, absent, zeros = {}, 0, 0
    for n, w in weights.items():
        g = conn.granularities[n]
        nonzero = w.detach() != 0  # (NaN is nonzero: a present weight)
        zeros += w.numel() - int(torch.count_nonzero(nonzero))
        keep = g.pool(nonzero, "max").to(torch.bool)  # an ensemble with a nonzero weight may be kept or restored
        del nonzero
        masks[n] = keep.to(conn.masks[n].device)
        absent += int(torch.count_nonzero(g.expand(~keep, w.shape)))  # (a view where the granularity allows)
    return Start(masks, absent, conn.num_synapses(), zeros, _attached_pruned(conn), _earlier_pruned(conn))


def check_start_agrees(start: Start, model: Optional[nn.Module] = None) -> None:
    """Under several processes, refuse (on every process alike) a start that differs between them: its
    weights do, and each process would resolve the targets (and their refusals) against its own count,
    one process raising while the others wait in their next collective. With ``model``, its state (every
    parameter and buffer, bit for bit) is compared too: a copy of the weights with other values but as
    many zeros (a stale file on one machine) chose masks from two networks, and held-out figures mixed
    them, without a word."""
    if not is_distributed():
        return
    import torch.distributed as dist

    from .connectome import _plain_module
    from .integrity import digest

    state = None if model is None else digest(_plain_module(model).state_dict())[:16]
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, (start.absent, start.zeros, state))
    if len(set(every)) > 1:
        if len({(a, z) for a, z, _ in every}) > 1:
            counts = ", ".join(f"process {i}: {z:,} weights of exactly 0.0, {a:,} synapses absent"
                               for i, (a, z, _) in enumerate(every))
            what = f"({counts} of {start.total:,})"
        else:
            what = ("(as many zeros, other values: the state of the model, its weights, biases and buffers bit for "
                    f"bit, has sha256 {', '.join(f'{d}... on process {i}' for i, (_, _, d) in enumerate(every))})")
        raise ValueError(f"the weights differ between processes {what}: every process must "
                         "optimise the same weights. Load the same weights on every process (the same --weights "
                         "file), or build the model alike and pass it through accelerator.prepare first, which "
                         "gives every process rank 0's weights")


def _attached_pruned(conn) -> Optional[int]:
    """The synapses of ``conn``'s weights that a Connectome attached to an optimizer holds pruned
    (None: no such connectome masks them)."""
    pruned, seen = 0, False
    for p in conn.params.values():
        entry = _MASKED_BY.get(id(p))
        other = entry[1]() if entry is not None and entry[0]() is p else None
        if other is None or other is conn or not (other._optimizers or other._masker.handles):
            continue
        name = next((k for k, q in other.params.items() if q is p), None)
        if name is not None:
            seen = True
            pruned += int(torch.count_nonzero(~other.masks[name]))
    return pruned if seen else None


# per weight (by id), the connectome of the last optimize_connectome that ran on it and left its masks on the model:
# (weak reference to the weight, weak reference to that connectome), kept only while both live
_LEFT_BY: Dict[int, tuple] = {}


def record_result(conn) -> None:
    """Record that ``conn`` (a finished optimisation's mask_only connectome) leaves its masks on its model's weights,
    so that a later optimisation of the same weights can say where their zeros came from and how to give them back
    (:attr:`Start.earlier`). Weak references only: the record goes with the connectome or the weights."""
    for key in [k for k, (p, c) in _LEFT_BY.items() if p() is None or c() is None]:
        del _LEFT_BY[key]
    for p in conn.params.values():
        _LEFT_BY[id(p)] = (weakref.ref(p), weakref.ref(conn))


def _earlier_pruned(conn) -> Optional[int]:
    """The weights of ``conn`` that are 0.0 because an earlier optimisation's connectome (:func:`record_result`)
    holds them pruned (None: none): not those that were 0.0 in the weights it was given. A weight whose live values are no longer the ones that connectome froze
    (other weights loaded since, a sparse state_dict of another run, training; live weights zeroed by hand
    aside) counts for none: giving that connectome's weights back would mix its frozen values into the
    weights loaded since."""
    pruned = 0
    for p in conn.params.values():
        entry = _LEFT_BY.get(id(p))
        other = entry[1]() if entry is not None and entry[0]() is p else None
        if other is None or other is conn:
            continue
        name = next((k for k, q in other.params.items() if q is p), None)
        if name is None or name not in other.original:
            continue
        kept, w = other.masks[name].to(p.device), p.detach()
        # its live weights replaced since (one zeroed by hand is still that call's weight, less one)
        if bool((kept & (w != 0) & (w != other.original[name].to(p.device))).any()):
            continue
        # a weight that was 0.0 in the weights that connectome froze was not pruned by it (the model came with it):
        # giving that connectome's weights back cannot restore it
        pruned += int(torch.count_nonzero(~kept & (w == 0) & (other.original[name].to(p.device) != 0)))
    return pruned or None


# how to give back the weights an earlier optimisation left pruned on the model
_GIVE_BACK = ("to start from the weights that earlier call was given, give them back first: "
              "result.conn.set_masks({n: torch.ones_like(m) for n, m in result.conn.masks.items()}) on its result (on "
              "each such result, the latest first)")


def refuse_below_start(label: str, removed: int, start: Start) -> None:
    """Refuse target ``label`` (removing ``removed`` synapses in all) when it removes fewer than are
    absent at ``start``: mask-only optimisation cannot give them back (their weights are unknown)."""
    if removed >= start.absent:
        return
    raise ValueError(
        f"target {label} removes {removed:,} of the model's {start.total:,} prunable synapses, but {start.absent:,} "
        f"({fmt_unsaturated(100 * start.absent / start.total, '.1f')}%) are already absent: their weights are exactly 0.0{_by_attached(start)}, "
        "and mask-only optimisation keeps weights frozen, so it cannot restore them. Targets count every prunable "
        f"synapse (a fraction is the share removed at the end): give a target of at least {start.absent} "
        f"synapses (a fraction of at least {fraction_bound(start.absent, start.total, most=False, share=True)}), or load the dense weights first"
        + (f" ({_GIVE_BACK})" if start.earlier else ""))


def _by_attached(start: Start) -> str:
    by = ([f"{start.attached:,} of them pruned by the Connectome attached to the model's optimizer"] if start.attached
          else []) + ([f"{start.earlier:,} of them pruned by an earlier optimize_connectome on this model, whose "
                       "result's masks stay on the model's weights"] if start.earlier else [])
    return f" ({'; '.join(by)})" if by else ""


def start_note(start: Start, ensemble: str) -> str:
    """What :func:`adaptive.optimize_connectome` warns of when it starts from a sparse network:
    how many synapses are already absent, and what the targets then count."""
    note = (f"optimize_connectome starts from a sparse network: {start.absent:,} of its {start.total:,} prunable "
            f"synapses ({fmt_unsaturated(100 * start.absent / start.total, '.1f')}%) have weights of exactly 0.0{_by_attached(start)}. With the "
            "weights frozen such a synapse cannot be told from an absent one, so they count as removed already and are "
            f"never restored; targets count all {start.total:,} synapses (a fraction is the share removed at the end, "
            "so a fraction of 0.6 removes 0.6 of them in all), and target 'best' climbs only the ladder's rungs above "
            "the start.")
    partly = start.zeros - start.absent
    if partly:
        note += (f" {partly:,} more weights of exactly 0.0 sit in '{ensemble}' ensembles that hold nonzero weights "
                 "too: they count as present (an ensemble is removed or kept whole).")
    if start.earlier:
        note += f" To start from the weights that earlier call was given instead, {_GIVE_BACK.split(', ', 1)[1]}."
    if start.attached is not None:
        note += (" The attached Connectome is left as it is (its masks do not follow the result's): to train on with "
                 "a snapshot's masks, conn.set_masks(result.use(label).masks).")
    return note
