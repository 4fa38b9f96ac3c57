"""Datasets by name, split into train / holdout / test.

``get_datasets("cifar10", holdout=0.1, seed=0)`` gives the train part, a stratified random
holdout drawn from the TRAIN split (for selecting masks, step sizes, snapshots), and the test
split, which is built lazily: it is not read until first used (``splits.test.materialized``).
``get_dataloaders`` wraps the same in DataLoaders. Data folders are found through
:mod:`adaptive.paths` (``--data-dir``, ``ADAPTIVE_DATA``, ``../shared/data``).
"""
from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import List, Mapping, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from ..paths import DatasetNotFoundError, resolve_data_dir
from ..warn import warn_user
from .base import (LazyDataset, Source, available_datasets, check_dataset_kw, dataset_facts, get_source_builder,
                   model_before_data, register_dataset)
from .fingerprint import dataset_fingerprint
from .split import holdout_counts, stratified_split, stratified_subset, subset_counts
from .tensors import TensorImages, random_crop_flip

# Importing the families registers them.
from . import cifar, digits, fake, imagenet, mnist  # noqa: E402,F401


@dataclass
class DatasetSplits:
    """Train, holdout (drawn from the train split) and lazily built test datasets, plus facts
    about the data. Unpacks as ``train, holdout, test = splits``."""

    train: Dataset
    holdout: Dataset
    test: LazyDataset
    num_classes: int
    in_shape: Tuple[int, ...]
    classes: List[str] = field(default_factory=list)
    name: str = ""

    def __iter__(self):
        return iter((self.train, self.holdout, self.test))


def get_datasets(name: str, data_dir=None, holdout: float = 0.1, seed: int = 0, download: bool = False,
                 subset: Optional[int] = None, test_subset: Optional[int] = None, augment: bool = False,
                 progress: Optional[bool] = None, holdout_required: bool = False,
                 option_names: Optional[Mapping[str, str]] = None, **kw) -> DatasetSplits:
    """Build dataset ``name`` (see :func:`available_datasets`) from ``data_dir`` (default: the
    ``ADAPTIVE_DATA`` environment variable, else ``../shared/data`` beside the repository, else
    ``~/.cache/adaptive/data``; see :func:`adaptive.paths.resolve_data_dir`).

    - ``holdout``: fraction of the train split held out, stratified by class and drawn at random
      with ``seed`` (never by position); disjoint from ``train``; 0 gives an empty holdout, and a
      positive one that holds out no example (``round(holdout x its examples)`` is 0 for every
      class) is refused, naming the smallest that holds one out.
    - ``subset``: use only a stratified random draw of exactly ``subset`` examples of the train
      split (before the holdout is drawn from them; one with an empty holdout is refused); a
      ``subset`` of the split's size or more uses all of it, with a warning when it is more;
      ``test_subset`` likewise caps the test split (a fixed draw, so every run with the same seed
      reports on the same test examples).
    - ``augment``: training augmentation on the train part only (holdout and test never).
    - ``download``: allow torchvision's downloader when the data is not on disk.
    - ``progress``: progress bars of long preparation (decoding CIFAR-10's JPEGs into the cache):
      True, False, or None (only when stderr is a terminal); given to families that take it.
    - ``holdout_required``: the caller cannot do without a held-out part (its selection reads it),
      so the error for a subset too small to hold out an example does not suggest ``holdout=0``.
    - ``option_names``: how the errors and warnings name ``subset``, ``test_subset`` and ``holdout``:
      a command line's options (``{"test_subset": "--test-subset"}``, given as ``--test-subset 5``);
      by default these keywords (given as ``test_subset=5``). ``{"holdout": None}``: the caller fixes
      the holdout (no option sets it), so no error suggests changing it.
    Extra keyword arguments go to the family (e.g. ``normalize=`` for cifar10, ``shape=`` for fake).
    Raises :class:`DatasetNotFoundError` with every path tried when the data is missing.
    """
    check_dataset_kw(name, kw)
    named = {k: (option_names or {}).get(k, k) for k in ("subset", "test_subset", "holdout")}
    for what, v in (("subset", subset), ("test_subset", test_subset)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            none = "left out" if named[what].startswith("-") else "None"
            raise ValueError(f"{named[what]} must be a positive number of examples (or {none} for all), got {v!r}: "
                             f"give {_spelt(named[what], 1)} or more")
    if not _fraction_below_one(holdout):
        # (stratified_split's own refusal, once the data had loaded, named its own keyword: fraction)
        fix = f": give {_spelt(named['holdout'], 0.1)} (say)" if named["holdout"] else ""
        raise ValueError(f"{named['holdout'] or 'the holdout'} must be a fraction in [0, 1) (the part of the train "
                         f"split held out; 0: none), got {holdout!r}{fix}")
    builder = get_source_builder(name)
    if "progress" in inspect.signature(builder).parameters:
        kw["progress"] = progress
    src: Source = builder(data_dir=data_dir, download=download, augment=augment, **kw)
    labels = src.train_labels
    in_test = src.test_classes or src.num_classes  # (a class subset labelled by ImageNet's index: its K of 1000)
    if (test_subset is not None and test_subset < in_test  # (the test split is read only once trained)
            and (src.test_size is None or test_subset < src.test_size)):  # (a test_subset of the whole split takes it all)
        least = in_test if src.test_size is None else min(in_test, src.test_size)
        whole = (f" (the test split holds only {src.test_size} examples, fewer than the classes: {least} takes it all)"
                 if least < in_test else "")
        raise ValueError(f"{named['test_subset']} {test_subset} cannot hold one test example of each of the "
                         f"{in_test} classes of {name}: give a {named['test_subset']} of at least {least}{whole} "
                         "(or leave it out)")
    _warn_short(name, "train", subset, len(labels), named["subset"])
    present = int(torch.unique(torch.as_tensor(labels)).numel()) if subset is not None and subset < len(labels) else 0
    if subset is not None and subset < present:  # (stratified_subset's own refusal names no option)
        raise ValueError(f"{named['subset']} {subset} cannot hold one train example of each of the {present} classes "
                         f"of {name}: give a {named['subset']} of at least {present} (or leave it out)")
    pool = stratified_subset(labels, subset, seed) if subset is not None else torch.arange(len(labels))
    kept, drawn = stratified_split(labels[pool], holdout, seed)
    train, held = pool[kept], pool[drawn]
    if subset is not None and holdout > 0 and held.numel() == 0:
        raise ValueError(f"the held-out part of {name} is empty: the {len(pool)} train examples of "
                         f"{_spelt(named['subset'], subset)} with {_spelt(named['holdout'], holdout)} hold out "
                         f"round({holdout} x its examples of a class) = 0 of every class; "
                         + _subset_for_holdout(labels, subset, holdout, holdout_required, named["subset"],
                                               named["holdout"]))
    if subset is None and holdout > 0 and held.numel() == 0:
        largest = int(torch.unique(torch.as_tensor(labels), return_counts=True)[1].max())
        none = "" if holdout_required else f" (or {_spelt(named['holdout'], 0)} for no held-out part at all)"
        fix = (f"give {_spelt(named['holdout'], _least_holdout(largest))} or more{none}" if named["holdout"]
               else f"it takes a holdout of at least {_least_holdout(largest)}, which this caller does not give")
        raise ValueError(f"the held-out part of {name} is empty: {_spelt(named['holdout'], holdout)} holds out "
                         f"round({holdout} x its examples of a class) = 0 of every class of its {len(pool):,} train "
                         f"examples (the largest class has {largest:,}); {fix}")
    if train.numel() == 0:
        raise ValueError(f"the train part of {name} is empty: {len(pool)} train examples"
                         f"{' (' + _spelt(named['subset'], subset) + ')' if subset else ''} with "
                         f"{_spelt(named['holdout'], holdout)} leave none to train on; give "
                         + " or ".join([f"a larger {named['subset']}"] * bool(subset)
                                       + [f"a smaller {named['holdout']}"] * bool(named["holdout"])))

    def build_test():
        ds = src.test()
        if test_subset is not None:
            _warn_short(name, "test", test_subset, len(ds), named["test_subset"])
            drawn = ds.select(stratified_subset(torch.as_tensor(ds.targets), test_subset, seed))
            drawn.whole_split_size = len(ds)  # what a report says the draw was taken from
            return drawn
        return ds

    return DatasetSplits(train=src.train_view(train), holdout=src.eval_view(held),
                         test=LazyDataset(build_test, name=f"{name} test"), num_classes=src.num_classes,
                         in_shape=tuple(src.in_shape), classes=list(src.classes), name=name)


def test_images(test_dataset, scored: int, option: str = "--test_subset") -> str:
    """What a report says of the test images it scored: ``"359 images"``, or for a ``test_subset``
    draw (``option`` names it as the command line spells it) ``"1,000 of 10,000 images, drawn by --test_subset"``."""
    if not is_test_draw(test_dataset, scored):
        return f"{scored:,} images"
    return f"{scored:,} of {_whole_split_size(test_dataset):,} images, drawn by {option}"


def is_test_draw(test_dataset, scored: int) -> bool:
    """Whether the ``scored`` test images are a ``test_subset`` draw of fewer than the whole test
    split (False for the whole split, also when a ``test_subset`` of its size or more took it all)."""
    whole = _whole_split_size(test_dataset)
    return whole is not None and scored < whole


def test_split_size(test_dataset, scored: int) -> int:
    """The size of the whole test split behind ``scored`` test images: the split a ``test_subset``
    draw was taken from, else ``scored`` (the whole split was scored)."""
    return _whole_split_size(test_dataset) or scored


def _whole_split_size(test_dataset) -> Optional[int]:
    """The size of the split a ``test_subset`` draw was taken from; None when it is no draw."""
    ds, whole = test_dataset, None
    while ds is not None and whole is None:  # the draw, under a loader's or a lazy split's wrapper
        whole = getattr(ds, "whole_split_size", None)
        ds = getattr(ds, "dataset", None)
    return whole


def _fraction_below_one(value) -> bool:
    """Whether ``value`` is a number in [0, 1) (NaN is not; True and False, and text such as "0.1", are no
    fractions: the split compares it as a number)."""
    try:
        return not isinstance(value, (bool, str, bytes)) and 0.0 <= float(value) < 1.0
    except (TypeError, ValueError):
        return False


def _spelt(option: Optional[str], value) -> str:
    """``option`` given ``value`` as its caller writes it: ``--option VALUE`` on a command line,
    ``option=VALUE`` in a call; a holdout the caller fixes (``option`` None) as ``its holdout of VALUE``."""
    if option is None:
        return f"its holdout of {value}"
    return f"{option} {value}" if option.startswith("-") else f"{option}={value}"


def _warn_short(name: str, split: str, asked: Optional[int], size: int, option: str) -> None:
    """Warn that ``option`` (a keyword, or a command line's ``--option``) asks for more than the split
    holds. The option is spelt with plain digits (``--subset 1438``, ``subset=1438``), as it can be
    typed; only the sizes it reports take thousands separators."""
    if asked is not None and asked > size:
        warn_user(f"{_spelt(option, asked)} asks for more examples than the {split} split of {name} holds ({size:,}): "
                  f"all {size:,} are used; give {_spelt(option, size)} (or leave it out) to say so")


def _least_holdout(largest: int) -> float:
    """The smallest holdout of two significant digits that holds out an example of a class of
    ``largest`` examples (just above ``0.5 / largest``: :func:`holdout_counts` rounds half to even)."""
    exponent = math.floor(math.log10(0.5 / largest)) - 1
    lead = math.ceil(0.5 / largest / 10.0 ** exponent)  # 10..100
    while int(holdout_counts(torch.tensor([largest]), float(f"{lead}e{exponent}"))) == 0:
        lead += 1
    return float(f"{lead}e{exponent}")  # (a decimal as typed: 0.0035, not 0.0035000000000000005)


def _subset_for_holdout(labels: torch.Tensor, subset: int, holdout: float, required: bool = False,
                        option: str = "subset", holdout_option: Optional[str] = "holdout") -> str:
    """How to get a non-empty held-out part: the smallest subset above ``subset`` that gives one
    (``option`` and ``holdout_option`` name the two as the caller spells them), or a larger holdout;
    unless ``required``, also that a holdout of 0 asks for no held-out part. A ``holdout_option``
    of None is a holdout the caller fixes: only a subset is suggested.

    Whether a size gives one is not monotone in the size (the largest-remainder rounding of
    :func:`subset_counts` can take an example from a class as the size grows), so the answer is
    not a plain bisection; but each class's count at a size lies between the floor and the ceiling
    of its exact share, both monotone in the size. A bisection finds the first size whose ceilings
    could give a held-out example; from there sizes are tried in turn, and the first size whose
    floors do give one ends the search, so at most about ``len(labels) / largest class`` (no more
    than the number of classes) sizes are tried: the answer of trying every size, found quickly."""
    counts = torch.unique(torch.as_tensor(labels), return_counts=True)[1]
    n = len(labels)

    def could(size):  # some class, at the ceiling of its share, holds out an example
        share = counts.double() * float(size / int(counts.sum()))
        return bool((holdout_counts(torch.ceil(share), holdout) > 0).any())

    def gives(size):
        return bool((holdout_counts(subset_counts(counts, size), holdout) > 0).any())

    if holdout_option is None:
        none, larger, only = "", "", f"no {option} gives one at {_spelt(None, holdout)}"
    else:
        none = "" if required else f" (or {_spelt(holdout_option, 0)} for no held-out part at all)"
        larger = f" or a larger {holdout_option}"
        only = f"give a larger {holdout_option}{none}"
    lo, hi = subset + 1, n
    if lo > n or not could(n):
        return only
    while lo < hi:  # the first size that could give one (could() is monotone in the size)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if could(mid) else (mid + 1, hi)
    for size in range(lo, n + 1):
        if gives(size):
            return f"give a {option} of at least {size}{larger}{none}"
    return only


@dataclass
class DataLoaders:
    """Train (shuffled, seeded), holdout and test DataLoaders, plus the data's facts."""

    train: DataLoader
    holdout: DataLoader
    test: DataLoader
    num_classes: int
    in_shape: Tuple[int, ...]
    classes: List[str]
    datasets: DatasetSplits

    def __iter__(self):
        return iter((self.train, self.holdout, self.test))


def get_dataloaders(name: str, batch_size: int = 128, data_dir=None, holdout: float = 0.1, seed: int = 0,
                    download: bool = False, subset: Optional[int] = None, num_workers: int = 0,
                    eval_batch_size: Optional[int] = None, drop_last: bool = False, augment: bool = False,
                    test_subset: Optional[int] = None, progress: Optional[bool] = None, **kw) -> DataLoaders:
    """DataLoaders over :func:`get_datasets`. The train loader shuffles with a generator seeded by
    ``seed``; holdout and test are in order with ``eval_batch_size`` (default: ``batch_size``).
    Every loader seeds its passes (a DataLoader draws one seed per pass, for its workers) from a
    generator of its own, so reading one draws nothing from torch's global generator (evaluating
    does not change what the training code draws next), except an augmented train split's crops and
    flips, which come from it until the dataset's ``set_epoch(epoch, seed=...)`` keys them. Creating
    the test loader does not read the test split.

    ``data_dir``, ``holdout``, ``seed``, ``download``, ``subset``, ``test_subset``, ``augment``,
    ``progress`` and extra keywords (``holdout_required``, ``option_names``, the family's) go to
    :func:`get_datasets` (see there). ``num_workers``:
    loader worker processes (0: load in the main process); the holdout and test loaders keep
    theirs between passes, the train loader's start afresh every pass so that a resumed run
    draws the augmentation of the uninterrupted one. ``drop_last``: drop the train split's last
    batch when it is smaller than ``batch_size``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1 (examples per train batch), got {batch_size!r}: "
                         "give batch_size=1 or more (128, the default, say)")
    splits = get_datasets(name, data_dir=data_dir, holdout=holdout, seed=seed, download=download,
                          subset=subset, test_subset=test_subset, augment=augment, progress=progress, **kw)
    eval_bs = eval_batch_size or batch_size
    common = dict(num_workers=num_workers, persistent_workers=num_workers > 0)
    g = torch.Generator().manual_seed(int(seed))
    return DataLoaders(
        # the train loader's workers start afresh each epoch (not persistent): their random seeds then
        # come from the loader's generator at every epoch, which a resumed run restores; persistent
        # workers kept drawing from the seeds of the epoch they started in, and a resumed run's
        # augmentation differed from the uninterrupted run's
        train=DataLoader(splits.train, batch_size=batch_size, shuffle=True, generator=g, drop_last=drop_last,
                         num_workers=num_workers),
        holdout=DataLoader(splits.holdout, batch_size=eval_bs, shuffle=False,
                           generator=torch.Generator().manual_seed(int(seed)), **common),
        test=DataLoader(splits.test, batch_size=eval_bs, shuffle=False,
                        generator=torch.Generator().manual_seed(int(seed)), **common),
        num_classes=splits.num_classes, in_shape=splits.in_shape, classes=splits.classes, datasets=splits,
    )


__all__ = [
    "get_datasets", "get_dataloaders", "DatasetSplits", "DataLoaders", "DatasetNotFoundError",
    "register_dataset", "available_datasets", "check_dataset_kw", "dataset_facts", "model_before_data", "test_images",
    "is_test_draw", "test_split_size", "dataset_fingerprint",
    "Source", "LazyDataset", "TensorImages",
    "stratified_split", "stratified_subset", "random_crop_flip", "resolve_data_dir",
]

# the families' modules, imported to register them (named here so a linter sees them used; out of
# __all__, so a star import binds no module)
_REGISTERED = (cifar, digits, fake, imagenet, mnist)
