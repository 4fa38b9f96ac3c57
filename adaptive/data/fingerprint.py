"""A cheap fingerprint of a dataset's contents, for processes to compare that they read the same data.

Processes that each load their own copy of a dataset (a folder on each machine, a relative data
folder read from each process's working directory) can load data of the same size but other
contents (another version of it): they would train on different examples, and their masks
diverge. :func:`dataset_fingerprint` hashes the labels of every example, what covers every example
cheaply (an in-memory dataset's whole stored data; an image folder's file sizes, a stat each) and a
fixed few examples spread over the split, as they are stored (before any normalisation or random
transform: augmentation does not change it). It decodes no example and draws no random number.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable

import numpy as np
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


class _Unhashable(TypeError):
    """A part :func:`_update` cannot hash as data (its message names the part's type)."""


def _update(h, part: Any) -> None:
    """Feed one part to ``h``: a tensor, or an array (a NumPy array, a PIL image: what NumPy reads as
    an array of numbers), as its dtype, shape and bytes; bytes as they are; a number, text or None as
    its text; a list or tuple item by item. Anything else is refused (:class:`_Unhashable`, the caller
    names the method): its text (``repr``) may hold a memory address or a folder, another in each process
    that read the same data, and a NumPy array's text is a summary of its corners only."""
    if isinstance(part, torch.Tensor):
        t = part.detach().to("cpu").contiguous()
        h.update(f"{t.dtype} {tuple(t.shape)}|".encode())
        if t.numel():  # (its buffer as it is: no copy of a whole split's bytes)
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(part, (bytes, bytearray, memoryview)):
        data = bytes(part)
        h.update(f"bytes {len(data)}|".encode())
        h.update(data)
    elif part is None or isinstance(part, (bool, int, float, str)):
        h.update(f"{part!r}|".encode())
    elif isinstance(part, (list, tuple)):
        h.update(f"{type(part).__name__} {len(part)}|".encode())
        for item in part:
            _update(h, item)
    elif hasattr(part, "__array__") or hasattr(part, "__array_interface__"):
        a = np.asarray(part)
        a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))  # (one byte order: the values)
        if a.dtype.hasobject:
            raise _Unhashable(f"a part of type {type(part).__name__} holding Python objects")
        h.update(f"array {a.dtype.str} {a.shape}|".encode())
        h.update(a.reshape(-1).view(np.uint8) if a.size else b"")
    else:
        raise _Unhashable(f"a part of type {type(part).__name__}")


def _hash_parts(h, parts: Iterable[Any], ds, method: str) -> None:
    """Feed each of ``parts`` (from ``ds``'s ``method``) to ``h``; one that is no data is refused naming it."""
    for part in parts:
        try:
            _update(h, part)
        except _Unhashable as e:
            raise TypeError(f"{type(ds).__name__}.{method} gave {e}, which dataset_fingerprint cannot hash as data: give "
                            "tensors, NumPy arrays or the bytes of the examples' files (Path.read_bytes()), not file "
                            "names or other objects (their text can differ between processes that read the same "
                            "data)") from None


def dataset_fingerprint(dataset, examples: int = SPREAD) -> str:
    """A short hex digest of ``dataset``'s contents: its size, the labels of every example
    (``targets``, where it has them), what its ``fingerprint_all()`` gives of every example where it
    has that method (cheap to read: an in-memory dataset's stored data whole, an image folder's file
    sizes), and the stored data of ``examples`` examples spread over it (:func:`spread_positions`), as
    its ``fingerprint_parts(positions)`` gives them (the tensors or file bytes behind those examples,
    before any random transform). Both give tensors, NumPy arrays, bytes, numbers, text, lists of
    them; any other object, a file name say, is refused with a TypeError, as its text can differ
    between processes that read the same data. A dataset with neither method is fingerprinted by its
    size and labels alone. A lazily built split (the test split) is built.
    Equal data, wherever it is stored, gives equal fingerprints; two copies that differ in any label,
    at one of the examples hashed, or anywhere ``fingerprint_all`` covers (any pixel of an in-memory
    dataset, any file's size) give different ones. Cheap: it decodes no example and draws no random
    number."""
    from .base import LazyDataset

    ds = dataset
    while isinstance(ds, LazyDataset):
        ds = ds.dataset
    n = len(ds)
    h = hashlib.sha256(f"{n} examples|".encode())
    targets = getattr(ds, "targets", None)
    if targets is not None:  # (class indices: int64 whatever integer type a copy stores them as)
        labels = torch.as_tensor(targets)
        _update(h, labels if labels.is_floating_point() or labels.is_complex() else labels.long())
    fingerprint_all = getattr(ds, "fingerprint_all", None)
    if callable(fingerprint_all):
        h.update(b"all|")
        _hash_parts(h, fingerprint_all(), ds, "fingerprint_all")
    fingerprint_parts = getattr(ds, "fingerprint_parts", None)
    if callable(fingerprint_parts):
        h.update(b"spread|")
        _hash_parts(h, fingerprint_parts(spread_positions(n, examples)), ds, "fingerprint_parts")
    return h.hexdigest()[:16]


def content_fingerprint(dataset) -> str:
    """:func:`dataset_fingerprint` of ``dataset``, and of a plain ``TensorDataset`` (no labels attribute,
    no method that gives its examples' data, so its size alone) its tensors whole: in memory already,
    cheap to hash. What a mask-only stage checkpoint records of each loader's data
    (:func:`adaptive.mask_only_data._data_content`). Kept apart from :func:`dataset_fingerprint`, whose
    digests train-mode checkpoints already hold."""
    from torch.utils.data import TensorDataset

    if type(dataset) is TensorDataset:
        h = hashlib.sha256(b"TensorDataset|")
        _hash_parts(h, dataset.tensors, dataset, "tensors")
        return h.hexdigest()[:16]
    return dataset_fingerprint(dataset)
