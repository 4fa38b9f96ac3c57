"""The layer checks of :func:`~adaptive.plan_checks.check_plan` for every layer at once.

Checked layer by layer, each layer's indices cost several host reads (are any out of range, is one
listed twice, is one both pruned and grown, is one already absent or present, are its scores NaN):
about four device syncs per layer, a fifth of a controller update on a 1,000-layer MLP. Here each
of those questions is asked of every layer's indices concatenated (offset so that no two layers'
ensembles share a number), and the answers are read in one host read per device. Only a plan this
finds anything wrong with (or cannot batch: a tensor subclass, a layer's prunes and grows on two
devices) goes through the layer-by-layer checks, which name the first problem as they always did.
Repeats are found by marking the indices in a flag per ensemble, or by sorting them where the flags
would take more than 4 times the memory of the sort: the memory this takes grows with the number of
edited ensembles (64 bytes each at most), never beyond that with the size of the layers edited.
"""
from __future__ import annotations

from typing import Dict, List

import torch

_INDEX_DTYPES = (torch.int64, torch.int32)


def _plain(t) -> bool:
    """A dense torch.Tensor holding values (no subclass, sparse layout or meta tensor)."""
    return type(t) is torch.Tensor and t.layout == torch.strided and not t.is_meta


class _Group:
    """The edits whose indices lie on one device: per side, (layer, indices, its ensembles, offset)."""

    def __init__(self):
        self.offset: Dict[str, int] = {}
        self.total = 0
        self.sides: Dict[str, list] = {"prune": [], "grow": []}

    def add(self, side: str, n: str, idx: torch.Tensor, size: int) -> None:
        if n not in self.offset:
            self.offset[n] = self.total
            self.total += size
        self.sides[side].append((n, idx, size, self.offset[n]))


FLAGS_PER_KEY = 64  # the most ensembles per edited one for which repeats are found by flags, not a sort


def _repeats(keys: torch.Tensor, total: int) -> torch.Tensor:
    """0-d bool: whether any value of ``keys`` (each in [0, ``total``)) occurs twice. Where a flag per
    ensemble (1 byte each) takes at most 4 times the memory of sorting the keys (16 bytes each: values
    and indices), the keys are marked in one and counted (several times faster than the sort an
    update's millions of edits would take: an update of 10% of the live half of resnet50's 25.5
    million synapses marks 25 MB of flags where its sort held 20 MB); else sorted, then each compared
    with the next (a few edits of a large network)."""
    if keys.numel() < 2:
        return torch.zeros((), dtype=torch.bool, device=keys.device)
    if total <= FLAGS_PER_KEY * keys.numel():
        seen = torch.zeros(total, dtype=torch.bool, device=keys.device)
        seen[keys] = True
        return torch.count_nonzero(seen) != keys.numel()
    s = keys.sort().values
    return (s[1:] == s[:-1]).any()


def _flags(conn, dev: torch.device, group: _Group, out: Dict[torch.device, List[torch.Tensor]]) -> None:
    """Append to ``out`` (device -> 0-d bool tensors, True: a problem) the index checks of ``group``,
    layer by layer on the device (no host read): out of range by each layer's least and largest index;
    repeats by marking each layer's indices in its slice of a flag per ensemble of the group, or, where
    the flags would outgrow a sort's memory by more than 4 times, by sorting the offset indices
    (:func:`_repeats`); live and absent ensembles read with ``take``. No array as long as the edits is
    made beyond one layer's clamped copy of its indices (concatenated, with a size and an offset per edit,
    they took some 46 bytes per edited ensemble: 1.1 GB more at a sparse start of a 33.6M-synapse MLP)."""
    for side, want in (("prune", True), ("grow", False)):
        entries = group.sides[side]
        if not entries:
            continue
        k = sum(idx.numel() for _, idx, _, _ in entries)
        flags = out.setdefault(dev, [])
        by_flags = k >= 2 and group.total <= FLAGS_PER_KEY * k
        seen = torch.zeros(group.total, dtype=torch.bool, device=dev) if by_flags else None
        keys = []
        for n, idx, size, offset in entries:  # (every entry holds an index: empty ones are not added)
            wide = idx.long()  # (int32 indices into a layer past 2**31 ensembles: compared and clamped in int64)
            lo, hi = torch.aminmax(wide)
            flags.append((lo < 0) | (hi >= size))  # out of range
            inside = wide.clamp(0, size - 1)  # safe to index with (out of range is flagged); a copy
            if seen is not None:
                seen[offset:offset + size][inside] = True
            elif k >= 2:
                keys.append(inside + offset)
            ens = conn._ensemble_mask(n)  # read only: prunes of absent ensembles, grows of live ones
            got = ens.take(inside if ens.device == dev else inside.to(ens.device))
            out.setdefault(ens.device, []).append((got != want).any())
        if seen is not None:  # an ensemble listed twice (one number each)
            flags.append(torch.count_nonzero(seen) != k)
        elif keys:
            flags.append(_repeats(torch.cat(keys), group.total))
    # (an ensemble both pruned and grown needs no sort of both sides together: it is live, so its grow is flagged
    # above, or absent, so its prune is)


def plan_looks_valid(conn, plan, protected) -> bool:
    """Whether ``plan`` (an EditPlan whose four fields are dicts) passes every layer check of
    :func:`~adaptive.plan_checks.check_plan` on ``conn`` with layers ``protected`` left as they are:
    True only where the layer-by-layer checks would raise nothing; False where they may (then they
    run, and name the problem). One host read per device the plan's tensors lie on."""
    protected = set(protected)
    groups: Dict[torch.device, _Group] = {}
    where: Dict[str, torch.device] = {}  # the device of each edited layer's indices
    scores_on: Dict[torch.device, list] = {}
    for side in ("prune", "grow"):
        edits, scores = getattr(plan, side), getattr(plan, side + "_scores")
        if any(n not in edits for n in scores):
            return False
        for n, idx in edits.items():
            if n not in conn.masks or not (_plain(idx) and idx.dtype in _INDEX_DTYPES and idx.dim() == 1):
                return False
            if n in scores:
                s = scores[n]
                if not (_plain(s) and not s.is_complex() and s.dim() == 1 and s.numel() == idx.numel()):
                    return False
                if s.is_floating_point() and s.numel():
                    scores_on.setdefault(s.device, []).append(s)
            if not idx.numel():
                continue
            size = conn.granularities[n].num_ensembles(conn.layers[n].shape)
            if n in protected or size == 0 or where.setdefault(n, idx.device) != idx.device:
                return False
            group = groups.get(idx.device) or groups.setdefault(idx.device, _Group())
            group.add(side, n, idx, size)
    out: Dict[torch.device, List[torch.Tensor]] = {}
    for d, got in scores_on.items():
        out.setdefault(d, []).append(torch.isnan(torch.cat(got)).any())
    for dev, group in groups.items():
        _flags(conn, dev, group, out)
    return not any(bool(torch.stack(flags).any()) for flags in out.values())
