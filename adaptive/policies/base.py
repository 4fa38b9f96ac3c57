"""The policy interface, its registry, and the tensor helpers every policy shares.

A policy decides, at an update, which ensembles to prune and which to grow. It returns an
:class:`EditPlan`: per layer, flat ensemble indices to prune and to grow, each ordered best-first,
so that the controller can shrink a plan (line search) by keeping a prefix of every list. Scores
come from utility estimators (``drop_by`` for removal cost, ``grow_by`` for restoration gain).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Optional, Type

import torch

if TYPE_CHECKING:  # pragma: no cover
    from ..controller import Controller

_POLICIES: Dict[str, Type["Policy"]] = {}


def register_policy(name: str):
    def deco(cls):
        cls.name = name
        _POLICIES[name] = cls
        return cls

    return deco


def get_policy(name, **kw) -> "Policy":
    if isinstance(name, Policy):
        return name
    if name not in _POLICIES:
        raise ValueError(f"unknown policy {name!r}: use one of {sorted(_POLICIES)}")
    return _POLICIES[name](**kw)


def policy_names():
    return sorted(_POLICIES)


@dataclass
class EditPlan:
    """Flat ensemble indices per layer, best first. ``info`` goes into the event."""

    prune: Dict[str, torch.Tensor] = field(default_factory=dict)
    grow: Dict[str, torch.Tensor] = field(default_factory=dict)
    est_loss_change: Optional[float] = None
    boundaries: Optional[dict] = None
    prune_scores: Dict[str, torch.Tensor] = field(default_factory=dict)  # aligned with prune
    grow_scores: Dict[str, torch.Tensor] = field(default_factory=dict)  # aligned with grow
    tolerance: Optional[float] = None  # held-out loss rise the line search accepts (None: the controller's)

    def counts(self):
        return sum(int(v.numel()) for v in self.prune.values()), sum(int(v.numel()) for v in self.grow.values())

    def shrink(self, fraction: float) -> "EditPlan":
        """Keep the best ``fraction`` of every layer's prunes and grows."""

        def cut(d):
            return {n: v[: int(round(v.numel() * fraction))] for n, v in d.items()}

        est = None
        if self.prune_scores or self.grow_scores:
            ps, gs = cut(self.prune_scores), cut(self.grow_scores)
            est = float(sum(v.sum() for v in ps.values())) - float(sum(v.sum() for v in gs.values()))
        return EditPlan(
            prune=cut(self.prune), grow=cut(self.grow), est_loss_change=est if est is not None else self.est_loss_change,
            boundaries=self.boundaries, prune_scores=cut(self.prune_scores), grow_scores=cut(self.grow_scores),
            tolerance=None if self.tolerance is None else self.tolerance * fraction,
        )


class Policy:
    """Base class. ``sparse_at_start`` policies make the connectome sparse at construction."""

    name = "?"
    sparse_at_start = True
    drop_by = "magnitude"
    grow_by: Optional[str] = None  # None: the policy never grows
    needs_density = True
    supports_nm = False  # n:m granularities need policies whose scores share units

    def initialize(self, ctrl: "Controller") -> Optional[EditPlan]:
        """Plan applied at construction (default: sparsify to the target with ``ctrl.init``)."""
        if not self.sparse_at_start:
            return None
        return ctrl.initial_plan()

    def update(self, ctrl: "Controller", step: int) -> Optional[EditPlan]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass


# --------------------------------------------------------------------------- tensor helpers
def _smallest_k(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` smallest entries of flat ``x``, ascending, ties broken by index.

    Large ``k`` goes through ``kthvalue`` (linear-time selection) and sorts only the selected
    entries: a full top-k over tens of millions of synapses would dominate an update."""
    n = x.numel()
    if k >= n:
        return torch.argsort(x, stable=True)
    if k <= 2048:
        vals, idx = torch.topk(x, k, largest=False, sorted=True)
        # re-sort stably so equal scores keep index order on every process
        order = torch.argsort(vals, stable=True)
        return idx[order]
    v = torch.kthvalue(x.cpu() if x.is_cuda and n > 2**24 else x, k).values.to(x.device)
    less = (x < v).nonzero().squeeze(1)
    eq = (x == v).nonzero().squeeze(1)[: k - less.numel()]
    idx = torch.cat([less, eq])
    return idx[torch.argsort(x[idx], stable=True)]


def lowest(scores: torch.Tensor, eligible: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the ``k`` smallest eligible scores, smallest first."""
    flat, ok = scores.reshape(-1), eligible.reshape(-1)
    k = min(int(k), int(ok.sum()))
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=flat.device)
    masked = torch.where(ok, torch.nan_to_num(flat, nan=0.0), torch.full_like(flat, float("inf")))
    return _smallest_k(masked, k)


def highest(scores: torch.Tensor, eligible: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the ``k`` largest eligible scores, largest first."""
    flat, ok = scores.reshape(-1), eligible.reshape(-1)
    k = min(int(k), int(ok.sum()))
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=flat.device)
    masked = torch.where(ok, -torch.nan_to_num(flat, nan=0.0), torch.full_like(flat, float("inf")))
    return _smallest_k(masked, k)


def concat(d: Dict[str, torch.Tensor]):
    """Flatten per-layer tensors into one, remembering offsets for :func:`split`."""
    names = list(d)
    sizes = [d[n].numel() for n in names]
    flat = torch.cat([d[n].reshape(-1).float() if d[n].dtype != torch.bool else d[n].reshape(-1) for n in names])
    return flat, names, sizes


def split(indices: torch.Tensor, names, sizes, order_scores: Optional[torch.Tensor] = None):
    """Map flat global indices back to per-layer flat indices, keeping their order within a layer
    (one stable sort by layer, then ``torch.split``: no per-layer boolean passes)."""
    offsets = torch.tensor([0] + list(sizes), device=indices.device).cumsum(0)
    which = torch.bucketize(indices, offsets[1:], right=True)
    perm = torch.argsort(which, stable=True)
    counts = torch.bincount(which, minlength=len(names)).tolist()
    local = (indices - offsets[which])[perm]
    parts = torch.split(local, counts)
    out = {n: parts[i] for i, n in enumerate(names)}
    scores = {}
    if order_scores is not None:
        sparts = torch.split(order_scores[perm], counts)
        scores = {n: sparts[i] for i, n in enumerate(names)}
    return out, scores
