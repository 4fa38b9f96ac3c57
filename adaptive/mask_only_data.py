"""The loaders of a mask-only optimisation: checked before any work, their batches moved to the
model's device, the holdout shuffled for the line search, and their identity for a checkpoint's
fingerprint."""
from __future__ import annotations

import collections.abc
from typing import Optional

import torch
from torch import nn

from .distributed import is_distributed
from .metrics import to_device


def _data_identity(loader) -> list:
    """``[examples, batches, batch size]`` of a loader, each None where it cannot tell: part of a stage
    checkpoint's fingerprint, so that a run resumed on data of other sizes or batches is refused (other data of
    the same sizes is not told apart: no example is read for it; a resume is given the same loaders)."""
    def size(x):
        try:
            return len(x)
        except TypeError:
            return None

    dataset = getattr(loader, "dataset", None)
    return [size(dataset) if dataset is not None else None, size(loader), getattr(loader, "batch_size", None)]


def _data_content(loader) -> Optional[str]:
    """The content fingerprint of ``loader``'s dataset (:func:`adaptive.data.fingerprint.content_fingerprint`:
    its size, every label, what it stores of every example where that is cheap, a few examples' stored data; a
    TensorDataset's tensors whole), part of a stage checkpoint's fingerprint, so that a run resumed on other
    data of the same sizes (another copy, the same images in another order: another held-out part drawn,
    overlapping what the run learned from) is refused. None where the loader has no dataset or it cannot be
    fingerprinted (a plugin's whose parts are no data): the resume then compares sizes only, as before it was
    recorded."""
    from .data.fingerprint import content_fingerprint

    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        return None
    try:
        return content_fingerprint(dataset)
    except Exception:  # (TypeError from parts that are no data, or a dataset whose len or labels fail)
        return None


def _check_loader(loader, what: str) -> int:
    if loader is None:
        raise ValueError(f"{what} loader is missing: pass a DataLoader of {what} batches")
    try:
        n = len(loader)
    except TypeError:
        n = None
    hint = {"holdout": "hold out more of the train split (a larger holdout fraction or subset)",
            "train": "give it data (a larger subset, or a smaller holdout fraction)"}.get(what, "give it data")
    if n == 0:
        raise ValueError(f"{what} loader is empty: it yields no batches; {hint}")
    one_shot = ("holdout loader is a one-shot iterator (a generator, say), but every evaluation reads it whole (the "
                "dense network's check before any work, then every stage's end): pass something that iterates "
                "afresh each time (a DataLoader, a list of batches)")
    if what == "holdout" and isinstance(loader, collections.abc.Iterator):  # with a length too: seen without a read
        raise ValueError(one_shot)
    if what == "holdout" and is_distributed() and (why := _sharded(loader)):
        raise ValueError(f"holdout loader is sharded ({why}): every process must evaluate the whole holdout, or the "
                         "line search and the snapshots are chosen on figures over shards padded with repeated "
                         "examples; pass the holdout loader as it is, not through accelerator.prepare (prepare the "
                         "train loader only)")
    if n is None and what == "holdout":  # no length (an IterableDataset): look, before any work
        it = iter(loader)
        # a generator, or an object whose iter() hands out one and the same iterator: the first
        # evaluation would use it up, the next find it empty (a DataLoader makes a new one each time)
        if it is loader or (not isinstance(loader, torch.utils.data.DataLoader) and iter(loader) is it):
            raise ValueError(one_shot)
        if next(it, _NONE) is _NONE:
            raise ValueError(f"holdout loader is empty: it yields no batches; {hint}")
    return n or 0


_NONE = object()  # what a loader's first batch is when it yields none


def _sharded(loader) -> str:
    """Why ``loader`` gives each process a part of its data ("" where it does not say so): prepared by
    Accelerate (each process a shard, the last padded with repeated examples), or a DistributedSampler."""
    from accelerate.data_loader import DataLoaderStateMixin  # (its shard and its dispatcher loaders both)

    if isinstance(loader, DataLoaderStateMixin):
        return "prepared by Accelerate: accelerator.prepare gives each process a shard"
    if isinstance(getattr(loader, "sampler", None), torch.utils.data.distributed.DistributedSampler):
        return "its DistributedSampler gives each process a shard"
    return ""


def _to_device(batch, device):
    """``batch`` (an ``(inputs, targets)`` pair) with every tensor in it on ``device``, nested ones
    included (inputs given as a tuple, list or dict of tensors); a no-op for tensors already there
    (an Accelerate-prepared loader's batches)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        what = f"a dict with keys {sorted(batch)[:5]}" if isinstance(batch, dict) else (
            f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list)) else f"a {type(batch).__name__}")
        raise TypeError(f"mask-only loaders must yield (inputs, targets) pairs; this one yielded {what}. "
                        "Wrap the dataset (or give the DataLoader a collate_fn) so that each batch is (x, y)")
    if device is None:
        return batch
    return type(batch)(to_device(t, device) for t in batch)


def input_shapes(x) -> str:
    """The shape(s) of a batch's inputs as an error names them: ``(16, 3, 32, 32)`` for a tensor, each
    one's for a tuple, list or dict of them (nested too), the type's name for anything else."""
    if torch.is_tensor(x):
        return str(tuple(x.shape))
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k!r}: {input_shapes(v)}" for k, v in x.items()) + "}"
    if isinstance(x, (tuple, list)):
        return "[" + ", ".join(input_shapes(v) for v in x) + "]"
    return type(x).__name__


def example_shapes(x):
    """The shape(s) of one example of a batch's inputs ``x`` (each tensor's shape without its first axis, the
    batch's), comparable between batches of other sizes: nested as ``x`` is (tuples for tuples and lists, a
    dict's items), the type's name for anything else."""
    if torch.is_tensor(x):
        return tuple(x.shape[1:])
    if isinstance(x, dict):
        return tuple((k, example_shapes(v)) for k, v in x.items())
    if isinstance(x, (tuple, list)):
        return tuple(example_shapes(v) for v in x)
    return type(x).__name__


def _model_device(model: nn.Module) -> Optional[torch.device]:
    p = next(model.parameters(), None)
    return None if p is None else p.device


def refuse_repeated_verify_batches(verify_batches: int, batches: Optional[int]) -> None:
    """Refuse ``verify_batches`` above ``batches``, the batches of one pass of the line search's
    held-out loader (None: unknown, nothing refused): each line search would read some of them twice,
    which adds no evidence, and a huge count (``--verify-batches 10**18``) built a list that long
    before the first update, a hang. ValueError naming the count to give."""
    from .cli_checks import one_pass_problem  # (the recipes' --window and --verify-batches refusals, in one wording)

    problem = one_pass_problem("verify_batches", verify_batches, batches, "the held-out loader", "hold out more data",
                               reader="each line search", sep="=")
    if problem:
        raise ValueError(problem)


def verify_pass_length(holdout_loader, seed: int) -> Optional[int]:
    """The batches of one pass of the line search's held-out cycle (``holdout_loader`` shuffled as
    :func:`_shuffled` does, which may batch it otherwise: a batch sampler's loader is read one example
    at a time); None where it has no length. Reads no batch and draws no random number."""
    try:
        return len(_shuffled(holdout_loader, seed))
    except TypeError:
        return None


def _read_positions(loader):
    """The dataset positions ``loader`` (a DataLoader over a map-style dataset) reads, as far as its sampler says
    without drawing: ``None`` for every one (a sequential sampler, a shuffle), a list for a subset (a
    ``SubsetRandomSampler``'s indices, in a batch sampler or not), ``False`` where it cannot say (a weighted or
    replacing sampler, a ``DistributedSampler``'s shard, a batch sampler of one's own)."""
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler, SubsetRandomSampler

    batches = loader.batch_sampler
    sampler = batches.sampler if type(batches) is BatchSampler else None  # (a default one wraps loader.sampler)
    if isinstance(sampler, SubsetRandomSampler):
        return [int(i) for i in sampler.indices]
    if type(sampler) is SequentialSampler or (type(sampler) is RandomSampler and not sampler.replacement
                                              and sampler.num_samples == len(loader.dataset)):
        return None if getattr(sampler, "data_source", None) is loader.dataset else False
    return False


def _shuffled(loader, seed: int):
    """The held-out examples in a seeded random order, so that every verification set mixes
    classes (holdout loaders usually keep the dataset's order, often grouped by class): the examples its
    sampler reads (:func:`_read_positions`: a ``SubsetRandomSampler``'s part of the dataset, not the rest),
    batched by its batch size (one at a time for a batch sampler's). A loader whose examples its sampler
    alone knows (a weighted sampler, a sampler of one's own), or over an iterable dataset, is read as it is."""
    ds = getattr(loader, "dataset", None)
    if (ds is None or not hasattr(ds, "__len__") or not isinstance(loader, torch.utils.data.DataLoader)
            or isinstance(ds, torch.utils.data.IterableDataset)):
        return loader
    positions = _read_positions(loader)
    if positions is False:
        return loader
    if positions is not None:
        ds = torch.utils.data.Subset(ds, positions)
    g = torch.Generator().manual_seed(int(seed) + 7)
    return torch.utils.data.DataLoader(ds, batch_size=loader.batch_size or 1, shuffle=True, generator=g,
                                       collate_fn=loader.collate_fn, num_workers=0)
