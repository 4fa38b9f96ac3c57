"""Seeded stratified draws: holdout parts and subsets of a split, never by position."""
from __future__ import annotations

from typing import Callable, Tuple

import torch


def _draw(labels: torch.Tensor, seed: int,
          take: Callable[[torch.Tensor], torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(kept, drawn): ``drawn`` holds ``take(counts)[c]`` random examples of every class ``c``
    (``counts``: the examples per class, in class order)."""
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
    drawn_mask = rank < take(counts).repeat_interleave(counts)
    drawn = order[drawn_mask].sort().values
    kept = order[~drawn_mask].sort().values
    return kept, drawn


def stratified_split(labels: torch.Tensor, fraction: float, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split positions ``0..len(labels)-1`` into (kept, drawn) with ``drawn`` holding
    ``round(fraction * n_c)`` random examples of every class ``c``.

    Deterministic in ``(labels, fraction, seed)``: every process draws the same split. Both
    outputs are sorted LongTensors and together partition the positions.
    """
    if not 0.0 <= float(fraction) < 1.0:
        raise ValueError(f"fraction (the holdout fraction) must be in [0, 1), got {fraction}: give fraction=0.1 "
                         "(say), or 0 to hold none out")
    return _draw(labels, seed, lambda counts: holdout_counts(counts, fraction))


def holdout_counts(counts: torch.Tensor, fraction: float) -> torch.Tensor:
    """The examples :func:`stratified_split` holds out of classes of ``counts`` examples."""
    return torch.round(counts.double() * float(fraction)).long()


def subset_counts(counts: torch.Tensor, size: int) -> torch.Tensor:
    """The examples per class (of classes of ``counts`` examples) in a stratified subset of exactly
    ``size``: each class's share rounded, then the few examples the rounding gained or lost taken
    from, or given to, the classes rounded furthest (largest remainders; ties to the first class).
    Where the rounded shares already sum to ``size`` they are kept as they are. Where ``size`` is at
    least the classes that have examples, each of them gets one: a class rounded to none takes one from
    the largest share."""
    counts = torch.as_tensor(counts).long()
    share = counts.double() * float(size / int(counts.sum()))
    take = torch.round(share).long()
    short = int(size) - int(take.sum())
    if short:
        rest = share - take  # > 0: rounded down, < 0: rounded up
        fix = torch.argsort(-rest if short > 0 else rest, stable=True)[:abs(short)]
        take[fix] += 1 if short > 0 else -1
    # every class with examples gets one where the size allows (a rare class rounded to none vanished
    # from a subset its size check promised held one of each): taken from the largest share, one at a time
    if int(size) >= int((counts > 0).sum()):
        for c in torch.nonzero((counts > 0) & (take == 0)).flatten().tolist():
            take[int(torch.argmax(take))] -= 1
            take[c] = 1
    return take


def stratified_subset(labels: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Sorted positions of a random, class-stratified subset of exactly ``size`` examples (all of
    them when ``size`` is the split's size or more): :func:`subset_counts` of each class."""
    n = len(labels)
    if size is None or size >= n:
        return torch.arange(n)
    if size <= 0:
        raise ValueError(f"size (of the subset) must be a positive number of examples, got {size}: give size=1 or "
                         "more, or None for all of them")
    k = int(torch.unique(torch.as_tensor(labels)).numel())
    if size < k:
        raise ValueError(f"a stratified subset of {size} of {n} examples cannot hold one example of each of the "
                         f"{k} classes; give a subset of at least {k} (one per class)")
    # (the seed and per-class order as before subsets were exact: a draw whose rounded shares summed
    # to ``size`` is the same draw, and one that came out a few off gains or loses only those few)
    _, drawn = _draw(labels, seed + 1_000_003, lambda counts: subset_counts(counts, size))
    return drawn
