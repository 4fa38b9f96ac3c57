"""Seeded stratified draws: holdout parts and subsets of a split, never by position."""
from __future__ import annotations

from typing import Tuple

import torch


def stratified_split(labels: torch.Tensor, fraction: float, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split positions ``0..len(labels)-1`` into (kept, drawn) with ``drawn`` holding
    ``round(fraction * n_c)`` random examples of every class ``c``.

    Deterministic in ``(labels, fraction, seed)``: every process draws the same split. Both
    outputs are sorted LongTensors and together partition the positions.
    """
    if not 0.0 <= float(fraction) < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    labels = torch.as_tensor(labels).long().flatten()
    n = labels.numel()
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    # Random order within each class: stable sort of the shuffled labels groups classes while
    # keeping the random order, so "first k of each class" is a random draw of k.
    order = perm[torch.argsort(labels[perm], stable=True)]
    sorted_labels = labels[order]
    classes, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts.repeat_interleave(counts)
    take = torch.round(counts.double() * float(fraction)).long()
    drawn_mask = rank < take.repeat_interleave(counts)
    drawn = order[drawn_mask].sort().values
    kept = order[~drawn_mask].sort().values
    return kept, drawn


def stratified_subset(labels: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Sorted positions of a random, class-stratified subset of about ``size`` examples."""
    n = len(labels)
    if size is None or size >= n:
        return torch.arange(n)
    if size <= 0:
        raise ValueError(f"subset size must be positive, got {size}")
    _, drawn = stratified_split(labels, size / n, seed=seed + 1_000_003)
    if drawn.numel() == 0:
        k = int(torch.unique(torch.as_tensor(labels)).numel())
        raise ValueError(f"a stratified subset of {size} of {n} examples draws none: every one of the {k} classes "
                         f"rounds to 0 examples; give a subset of at least {k} (one per class)")
    return drawn
