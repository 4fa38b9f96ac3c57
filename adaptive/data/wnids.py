"""ImageNet's class index: the 1000 wnids (``n01440764``, ...) in sorted order, read from a file the user has.

A folder of some of ImageNet's classes (Imagenette, Imagewoof: ten ``train/<wnid>/`` folders) is numbered
0..K-1 by torchvision's ImageFolder; a network trained on ImageNet numbers them by their place among all 1000
wnids. ``dataset_kw wnids=FILE`` (datasets ``imagenet`` and ``folder``) labels each class folder by that place, so
that labels, loss and accuracy are those of the 1000-class network. torchvision ships no wnid list: the file is
``LOC_synset_mapping.txt`` of Kaggle's ImageNet download (``n01440764 tench, Tinca tinca`` a line), the devkit's
or Caffe's ``synsets.txt`` / ``synset_words.txt``, or any list of ImageNet-1k's 1000 wnids, one a line (the first
word of a line is read), sorted: :func:`read_wnids` checks the count, the order and ImageNet-1k's first and last.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import List, Optional, Sequence

import torch

WNID = re.compile(r"n\d{8}")
NUM_WNIDS = 1000  # ImageNet-1k's, which torchvision's classifiers output
# ImageNet-1k's first and last wnids in sorted order (indices 0 and 999: tench, toilet tissue): a sorted list of 1000
# other wnids (another subset of WordNet, ImageNet-21k's first 1000) would label every class wrongly, unsaid
FIRST_WNID, LAST_WNID = "n01440764", "n15075141"
MAPPING_FILES = ("LOC_synset_mapping.txt", "synset_words.txt", "synsets.txt")
HOW = ("give --dataset-kw wnids=FILE (in a --config file: dataset_kw: {wnids: FILE}), FILE being LOC_synset_mapping.txt "
       "of Kaggle's ImageNet download or a list of ImageNet's 1000 wnids one a line, sorted")


def is_wnid(name: str) -> bool:
    """Whether ``name`` is an ImageNet wnid: ``n`` and eight digits."""
    return WNID.fullmatch(name) is not None


def all_wnids(classes: Sequence[str]) -> bool:
    """Whether every one of ``classes`` (at least one) is a wnid."""
    return bool(classes) and all(is_wnid(c) for c in classes)


def name_problem(value) -> Optional[str]:
    """Why ``value`` (a ``wnids`` as given) names no file, or None: a number (YAML, and ``--dataset-kw
    wnids=...``, read a name such as ``12345`` or ``1e5`` as one, which no longer spells the name: ``1e5`` is
    100000.0) or anything else that is no text or path."""
    if isinstance(value, (str, os.PathLike)):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (f"dataset_kw wnids must name a file, got the number {value!r} (YAML, and --dataset-kw wnids=..., read a "
                "name such as 12345 or 1e5 as a number, 1e5 as 100000.0): give the file with its folder, e.g. "
                "wnids=./1e5 (wnids: ./1e5 in a --config file), which reads as text")
    return f"dataset_kw wnids must name a file, got {value!r}: {HOW}"


def read_wnids(path, name: Optional[str] = None, how: str = HOW) -> List[str]:
    """The wnids of the file ``path``, in its order: the first word of each non-blank line. Refused (a ValueError
    naming the file, the line and the fix): a ``path`` that is a number (:func:`name_problem`), a file that is
    not there, a line whose first word is no wnid, a wnid listed twice, a list of other than 1000 wnids, a list
    not sorted (the index of torchvision's weights is the sorted order; a list in another order would give every
    class another network's label), a sorted list of 1000 wnids that is not ImageNet-1k's (its first and last
    are not :data:`FIRST_WNID` and :data:`LAST_WNID`). ``name``: how the errors name the file (default
    ``dataset_kw wnids PATH``); ``how``: the fix they offer."""
    problem = name_problem(path)
    if problem:
        raise ValueError(problem)
    path = Path(os.path.expanduser(str(path)))
    name = name or f"dataset_kw wnids {path}"
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file; {how}")
    words = []
    with open(path, encoding="utf-8-sig", errors="replace") as f:  # (a BOM, as Notepad writes, is no word)
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if not is_wnid(parts[0]):
                raise ValueError(f"{name}, line {n}: {parts[0][:40]!r} is no ImageNet wnid (n and eight "
                                 f"digits, e.g. n01440764): {how}")
            words.append(parts[0])
    twice = [w for w, k in Counter(words).items() if k > 1]
    if twice:
        raise ValueError(f"{name} lists {twice[:3]} more than once: each of ImageNet's 1000 wnids "
                         f"must be listed once; {how}")
    if len(words) != NUM_WNIDS:
        raise ValueError(f"{name} lists {len(words)} wnids, not ImageNet's {NUM_WNIDS} (the outputs of "
                         f"a 1000-class network): {how}")
    if words != sorted(words):
        raise ValueError(f"{name} is not in sorted order (the order of ImageNet's class index, which "
                         f"the weights' outputs follow): sort it (sort FILE > SORTED); {how}")
    if (words[0], words[-1]) != (FIRST_WNID, LAST_WNID):
        raise ValueError(f"{name} lists 1000 wnids, sorted, but not ImageNet-1k's: its first and last are {words[0]} and "
                         f"{words[-1]}, ImageNet-1k's {FIRST_WNID} (tench) and {LAST_WNID} (toilet tissue), so its places "
                         f"are not the classes the weights output; {how}")
    return words


LEVELS_UP = 3  # Kaggle's: ILSVRC/Data/CLS-LOC (which holds train/), LOC_synset_mapping.txt three folders above


def find_wnid_file(data_folder) -> Optional[Path]:
    """The first of :data:`MAPPING_FILES` found in ``data_folder`` (the folder holding train/) or in one of the
    :data:`LEVELS_UP` folders above it (as given, then, where it is reached through a link, above the folder it
    leads to), or None."""
    for here in dict.fromkeys((Path(os.path.abspath(data_folder)), Path(os.path.realpath(data_folder)))):
        for folder in [here, *list(here.parents)[:LEVELS_UP]]:
            for name in MAPPING_FILES:
                if (folder / name).is_file():
                    return folder / name
    return None


def absolute_wnids(dataset_kw):
    """``dataset_kw`` (a copy) with its ``wnids`` file, where given as a path, read with a leading ``~`` as the home
    folder and, where it names a file, made absolute: a recipe's config.yaml records its data folder and weights
    absolute, so that it reruns from any working directory; a relative wnids there was read from the rerun's.
    Anything else (no wnids, no mapping) is returned as it is; a wnids that is a number (``wnids: 1e5``), which
    names no file, is refused (a ValueError, :func:`name_problem`)."""
    from ..paths import absolute_if_exists, home_expanded

    if not isinstance(dataset_kw, dict) or dataset_kw.get("wnids") is None:
        return dataset_kw
    problem = name_problem(dataset_kw["wnids"])
    if problem:
        raise ValueError(problem)
    if not isinstance(dataset_kw["wnids"], str):
        return dataset_kw
    return {**dataset_kw, "wnids": absolute_if_exists(home_expanded(dataset_kw["wnids"]))}


GIVEN_FIX = "leave out dataset_kw wnids to number the folders 0..K-1 (for weights of K classes)"


def wnid_labels(classes: Sequence[str], wnids: Sequence[str], path, split_dir, name: Optional[str] = None,
                fix: str = GIVEN_FIX) -> torch.Tensor:
    """The ImageNet index of each of ``classes`` (the class folders of ``split_dir``): their places in ``wnids``
    (read from ``path``). A class folder whose name is not in the list is refused, naming it and the fix:
    renaming the folder, or ``fix`` (default: leaving out the dataset_kw wnids given; a list found
    automatically offers its own). ``name``: how the error names the list (default ``dataset_kw wnids PATH``)."""
    index = {w: i for i, w in enumerate(wnids)}
    missing = [c for c in classes if c not in index]
    if missing:
        kind = ("are not among its wnids" if all_wnids(missing) else "are no ImageNet wnids (n and eight digits)")
        raise ValueError(f"the class folder(s) {missing[:5]} of {split_dir} {kind}, so {name or f'dataset_kw wnids {path}'} "
                         f"gives them no ImageNet index: rename each class folder as its wnid, or {fix}")
    return torch.tensor([index[c] for c in classes], dtype=torch.long)
