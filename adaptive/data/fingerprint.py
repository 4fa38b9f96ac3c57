"""A cheap fingerprint of a dataset's contents, for processes to compare that they read the same data.

Processes that each load their own copy of a dataset (a folder on each machine, a relative data
folder read from each process's working directory) can load data of the same size but other
contents (another version of it): they would train on different examples, and their masks
diverge. :func:`dataset_fingerprint` hashes a fixed few examples, spread over the split, as they
are stored (before any normalisation or random transform: augmentation does not change it), and
the labels of every example, which are in memory already: it reads no more than those few examples.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable

import torch

SPREAD = 16  # examples hashed per split: the first, the last and the rest evenly between them


def spread_positions(n: int, k: int = SPREAD) -> torch.Tensor:
    """``min(k, n)`` positions spread evenly over ``0 .. n-1``, the first and the last among them
    (sorted, a LongTensor; empty for ``n`` of 0)."""
    if n <= 0 or k <= 0:
        return torch.zeros(0, dtype=torch.long)
    if k == 1:
        return torch.zeros(1, dtype=torch.long)
    return torch.linspace(0, n - 1, min(k, n), dtype=torch.float64).round().long().unique()


def _update(h, part: Any) -> None:
    """Feed one part (a tensor: its dtype, shape and bytes; bytes; anything else as its text) to ``h``."""
    if isinstance(part, torch.Tensor):
        t = part.detach().to("cpu").contiguous()
        h.update(f"{t.dtype} {tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(part, (bytes, bytearray)):
        h.update(f"bytes {len(part)}|".encode())
        h.update(part)
    else:
        h.update(f"{part!r}|".encode())


def dataset_fingerprint(dataset, examples: int = SPREAD) -> str:
    """A short hex digest of ``dataset``'s contents: its size, the labels of every example
    (``targets``, where it has them) and the stored data of ``examples`` examples spread over it
    (:func:`spread_positions`), as its ``fingerprint_parts(positions)`` gives them (the tensors or
    file bytes behind those examples, before any random transform; a dataset without that method is
    fingerprinted by its size and labels alone). A lazily built split (the test split) is built.
    Equal data, wherever it is stored, gives equal fingerprints; two copies that differ at one of the
    examples hashed, or in any label, give different ones. Cheap: it reads only those examples."""
    from .base import LazyDataset

    ds = dataset
    while isinstance(ds, LazyDataset):
        ds = ds.dataset
    n = len(ds)
    h = hashlib.sha256(f"{n} examples|".encode())
    targets = getattr(ds, "targets", None)
    if targets is not None:
        _update(h, torch.as_tensor(targets))
    fingerprint_parts = getattr(ds, "fingerprint_parts", None)
    if callable(fingerprint_parts):
        parts: Iterable[Any] = fingerprint_parts(spread_positions(n, examples))
        for part in parts:
            _update(h, part)
    return h.hexdigest()[:16]
