"""ImageNet's validation images as they come, flat (every image directly in ``val/``), labelled by Kaggle's
``LOC_val_solution.csv`` (``ImageId,PredictionString``; the first word of the string is the image's wnid), so that
``val/`` need not be sorted into class folders (PyTorch's ``valprep.sh``) first."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import List, Optional, Sequence

from .wnids import is_wnid

SOLUTION = "LOC_val_solution.csv"
LEVELS_UP = 4  # Kaggle's: ILSVRC/Data/CLS-LOC/val, with LOC_val_solution.csv four folders above


class FlatSplit:
    """A flat split folder as torchvision's ImageFolder exposes one: ``samples`` (``(path, class index)``, sorted
    by path), ``targets``, ``classes`` (the wnids its images are labelled with, sorted) and ``class_to_idx`` (the
    train split's, by which the images are numbered)."""

    def __init__(self, samples, classes, class_to_idx):
        self.samples, self.imgs = samples, samples
        self.targets = [t for _, t in samples]
        self.classes, self.class_to_idx = classes, class_to_idx


def image_files(split_dir) -> List[str]:
    """The image files (torchvision's extensions) directly in ``split_dir``, sorted; empty where it holds a folder
    (then it is in ImageFolder's layout, or in none)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    with os.scandir(split_dir) as listing:
        entries = [(e.is_dir(), e.path, e.name) for e in listing]
    if any(is_dir for is_dir, _, name in entries if not name.startswith(".")):
        return []
    return sorted(path for is_dir, path, name in entries if not is_dir and name.lower().endswith(IMG_EXTENSIONS))


def find_solution(split_dir) -> Optional[Path]:
    """``LOC_val_solution.csv`` in ``split_dir`` or in one of the :data:`LEVELS_UP` folders above it (as given,
    then, where it is reached through a link, above the folder it leads to), or None."""
    for here in dict.fromkeys((Path(os.path.abspath(split_dir)), Path(os.path.realpath(split_dir)))):
        for folder in [here, *list(here.parents)[:LEVELS_UP]]:
            if (folder / SOLUTION).is_file():
                return folder / SOLUTION
    return None


def read_solution(path) -> dict:
    """``{image id: wnid}`` of Kaggle's ``LOC_val_solution.csv`` at ``path``; a file that is not one (another
    header, a row whose string starts with no wnid) is refused naming the file, the row and the fix."""
    labels = {}
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:  # (Excel's BOM)
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise ValueError(f"{path}: no header ImageId,PredictionString (found {header}), so not Kaggle's "
                             f"{SOLUTION}: put that file there, or sort val/ into class folders (valprep.sh)")
        for n, row in enumerate(rows, 2):
            if not row:
                continue
            words = row[1].split() if len(row) > 1 else []
            if not words or not is_wnid(words[0]):
                raise ValueError(f"{path}, line {n}: {row[:2]} holds no wnid first in its PredictionString, as Kaggle's "
                                 f"{SOLUTION} does: put that file there, or sort val/ into class folders (valprep.sh)")
            labels[row[0].strip()] = words[0]
    return labels


def flat_split(split_dir, files: Sequence[str], solution, class_to_idx: dict) -> FlatSplit:
    """The images ``files`` of the flat ``split_dir`` labelled by ``solution`` (:func:`read_solution`'s file), their
    classes numbered by ``class_to_idx`` (the train split's). An image the file does not list is refused by name;
    images of classes that train/ has not are left to the caller's check of both splits' classes."""
    labels = read_solution(solution)
    stems = [os.path.splitext(os.path.basename(p))[0] for p in files]
    missing = [os.path.basename(p) for p, s in zip(files, stems) if s not in labels]
    if missing:
        raise ValueError(f"{len(missing)} image(s) of {split_dir} are not listed in {solution} ({missing[:3]}): a "
                         f"flat val/ is labelled by that file, so it must list every image there; move the others out")
    wnids = [labels[s] for s in stems]
    classes = sorted(set(wnids))
    samples = [(p, class_to_idx.get(w, -1)) for p, w in zip(files, wnids)]
    return FlatSplit(samples, classes, class_to_idx)
