"""The pieces every dataset family shares: the :class:`Source` a family returns, the registry,
and :class:`LazyDataset` (the test split is built only when first used)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.utils.data import Dataset

from .. import registry as _registry


@dataclass
class Source:
    """What a dataset family provides to :func:`adaptive.data.get_datasets`.

    ``train_labels`` are the labels of the whole train split (used to draw stratified holdout
    and subsets). ``train_view(idx)`` / ``eval_view(idx)`` give the examples of the train split
    at ``idx`` with training transforms (augmentation) or evaluation transforms. ``test()``
    builds the test split; it is called only when the test split is first used (``test_size``, when
    a family knows it without building the split, lets a ``test_subset`` check run before that). The datasets
    returned expose ``targets`` (a LongTensor) and ``select(positions)`` (a sub-view); a dataset
    with ``fingerprint_parts(positions)`` (the stored tensors or file bytes of those examples, before
    any random transform) has those examples in its content fingerprint, which processes compare
    (:func:`adaptive.data.fingerprint.dataset_fingerprint`; without it, its size and labels alone), and
    one with ``fingerprint_all()`` what that gives of every example (cheap to read: stored tensors
    held in memory, file sizes).
    """

    train_labels: torch.Tensor
    train_view: Callable[[torch.Tensor], Dataset]
    eval_view: Callable[[torch.Tensor], Dataset]
    test: Callable[[], Dataset]
    num_classes: int
    in_shape: Tuple[int, ...]
    classes: List[str] = field(default_factory=list)
    test_size: Optional[int] = None  # the test split's size, where known without building it (None: not known)
    # the classes the test split holds, where fewer than num_classes (None: all of them): a folder of some of
    # ImageNet's classes labelled by their ImageNet index (dataset_kw wnids) holds K of its 1000
    test_classes: Optional[int] = None


_DATASETS: Dict[str, Callable[..., Source]] = {}
_FACTS: Dict[str, Optional[Callable[..., Tuple[int, Tuple[int, ...]]]]] = {}  # by name: a builder registered
# under two names (an alias) has each name's facts, and a bound method (no attributes) can be a builder


def register_dataset(name: str, replace: bool = False, facts: Optional[Callable[..., Tuple[int, Tuple[int, ...]]]] = None):
    """Register ``fn(data_dir, download, augment, **kw) -> Source`` under ``name`` (a taken name is
    refused unless ``replace``). A builder with a ``progress`` parameter gets the caller's progress
    setting (True, False, or None: bars only when stderr is a terminal) for its long work.

    ``facts(data_dir=None, **kw) -> (num_classes, in_shape)``, for a family that knows them for
    certain from its arguments (and at most a look at folder names and one file's header), without
    decoding an example: what the builder's :class:`Source` will say. It lets a caller build the model, and refuse what
    does not fit it, before the data is read (:func:`dataset_facts`). Facts with a ``download``
    parameter are told whether the builder may download data that is not on disk (then they say
    what the download will give, so that a command refused for its model is refused before it)."""

    def deco(fn):
        _registry.add(_DATASETS, "dataset", name, fn, replace)
        _registry.add(_FACTS, "dataset facts", name, facts, replace=True)  # (undone with it by all_or_nothing)
        return fn

    return deco


def dataset_facts(name: str, data_dir=None, download: bool = False, **kw) -> Optional[Tuple[int, Tuple[int, ...]]]:
    """``(num_classes, in_shape)`` of dataset ``name`` built with ``data_dir``, ``download`` and
    ``kw``, known without reading (or downloading) its data; None where the family does not say (no
    ``facts`` registered) or cannot tell (its folder is not found, an argument is bad: building it
    reports that; facts whose signature cannot be inspected)."""
    import inspect

    get_source_builder(name)  # an unknown name: the error naming the datasets there are
    facts = _FACTS.get(name)
    if facts is None:
        return None
    from ..paths import DatasetNotFoundError

    try:  # (a signature inspect cannot read, a builtin's: ValueError or TypeError, facts unknown)
        if download and "download" in inspect.signature(facts).parameters:
            kw["download"] = True
        num_classes, in_shape = facts(data_dir=data_dir, **kw)
    except (DatasetNotFoundError, FileNotFoundError, ValueError, TypeError):
        return None
    return int(num_classes), tuple(int(d) for d in in_shape)


def model_before_data(name: str, build: Callable[[int, Tuple[int, ...]], Any], data_dir=None,
                      download: bool = False, **kw) -> Callable[[int, Tuple[int, ...]], Any]:
    """Call ``build(num_classes, in_shape)`` now, where dataset ``name`` knows them unread
    (:func:`dataset_facts`; with ``download``, also where the data is yet to be downloaded), so
    that what does not fit the model (a weights file, a count of its synapses; ``build`` refuses
    it) is refused before minutes of data loading or a download. Returns
    ``for_data(num_classes, in_shape)``, to call once the data has loaded: that model, or one built
    then where the data's classes and shape are not the facts (none known, or a plugin's wrong)."""
    facts = dataset_facts(name, data_dir=data_dir, download=download, **kw)
    early = build(*facts) if facts else None

    def for_data(num_classes: int, in_shape: Tuple[int, ...]):
        if early is not None and facts == (int(num_classes), tuple(int(d) for d in in_shape)):
            return early
        return build(num_classes, in_shape)

    return for_data


def check_dataset_kw(name: str, kw: dict) -> None:
    """Refuse, before any data is read, an argument that dataset ``name``'s builder does not take
    (``data_dir``, ``download``, ``augment`` and ``progress`` have options of their own)."""
    import difflib
    import inspect

    params = inspect.signature(get_source_builder(name)).parameters
    fixed = {"data_dir", "download", "augment", "progress"}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    own = sorted(k for k in kw if k in fixed)
    if own:
        raise ValueError(f"dataset_kw {own}: set by an option of its own (--{own[0].replace('_', '-')}), not a "
                         "dataset argument")
    unknown = sorted(k for k in kw if k not in params and not takes_any)
    if unknown:
        known = sorted(k for k in params if k not in fixed and params[k].kind is not inspect.Parameter.VAR_KEYWORD)
        close = difflib.get_close_matches(unknown[0], known, n=1)
        raise ValueError(f"dataset_kw {unknown}: not an argument of dataset {name!r}; it takes {known}"
                         + (f" (did you mean {close[0]!r}?)" if close else ""))


def get_source_builder(name: str) -> Callable[..., Source]:
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(_DATASETS)}")
    return _DATASETS[name]


def available_datasets() -> list:
    return sorted(_DATASETS)


class LazyDataset(Dataset):
    """A dataset built by ``factory()`` on first ``len``/indexing, not before.

    ``materialized`` tells whether it has been touched, so callers (and tests) can prove that,
    say, the test split was not read during model selection.
    """

    def __init__(self, factory: Callable[[], Dataset], name: str = "test"):
        self._factory = factory
        self._dataset: Optional[Dataset] = None
        self.name = name

    @property
    def materialized(self) -> bool:
        return self._dataset is not None

    def __getstate__(self):
        """Pickled as the dataset it builds, without its factory (a closure, which pickle cannot take): a
        DataLoader worker started by "spawn" or "forkserver" (macOS's and Windows' default; Linux's from
        Python 3.14) pickles its dataset, and the test loader failed there at the run's last step, its report."""
        state = dict(self.__dict__)
        state["_dataset"], state["_factory"] = self.dataset, None
        return state

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            self._dataset = self._factory()
        return self._dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i]

    def __getitems__(self, idx):
        ds = self.dataset
        if hasattr(ds, "__getitems__"):
            return ds.__getitems__(idx)
        return [ds[i] for i in idx]

    @property
    def targets(self) -> torch.Tensor:
        return self.dataset.targets
