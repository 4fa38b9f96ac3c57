"""scikit-learn's bundled 8x8 digits: 1,797 images, 10 classes, needs no download at all.

Importing ``sklearn.datasets`` costs about a second of CPU (it imports scipy and every loader), more
than the rest of a small digits run's start: the arrays :func:`sklearn.datasets.load_digits` gives are
kept in ``<cache_dir>/digits.npz`` (``adaptive.paths.cache_dir()``) and read from there while
scikit-learn's bundled file and loader are the ones they were read by (see :func:`_digits_arrays`).
"""
from __future__ import annotations

import importlib.util
import os
import zipfile
import zlib
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from ..atomic import atomic_path
from ..paths import cache_dir
from .base import Source, register_dataset
from .split import stratified_split
from .tensors import TensorImages
from ..warn import warn_user

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed: the digits train/test split is part of the dataset's definition
CACHE_NAME = "digits.npz"


def _sklearn_source() -> Optional[str]:
    """What the cached arrays were read from, known without importing scikit-learn: the path, size
    and modification time of its bundled ``digits.csv.gz`` and of the module holding ``load_digits``
    (a new scikit-learn rewrites both). None where scikit-learn or those files are not found: then
    the cache is not used, and importing scikit-learn says what is wrong, as without a cache."""
    try:
        spec = importlib.util.find_spec("sklearn")  # a top-level package: found, not imported
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "datasets"
    parts = []
    for f in (root / "data" / "digits.csv.gz", root / "_base.py"):
        try:
            st = os.stat(f)
        except OSError:
            return None
        parts.append(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}")
    return "\n".join(parts)


def _checksum(images: np.ndarray, target: np.ndarray) -> int:
    return zlib.crc32(target.tobytes(), zlib.crc32(images.tobytes()))


def _read_cache(path: Path, source: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The cached ``(images, target)`` when ``path`` holds arrays read from ``source`` and they pass
    their checks (shapes, dtypes, checksum); else None (no file, another scikit-learn, a damaged file)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["source"]) != source:
                return None
            images, target, crc = z["images"], z["target"], int(z["crc32"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    n = len(target)
    if not (n > 0 and images.dtype == np.float64 and images.shape == (n, 8, 8) and target.dtype.kind == "i"
            and target.shape == (n,) and crc == _checksum(images, target)):
        return None
    return images, target


def _write_cache(path: Path, source: str, images: np.ndarray, target: np.ndarray) -> None:
    """Cache the arrays atomically; a cache folder that takes no file (read-only, full) only means
    the next run imports scikit-learn again."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, images=images, target=target, source=np.array(source),
                                crc32=np.array(_checksum(images, target), dtype=np.int64))
    except OSError:
        pass


def _digits_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """``load_digits()``'s ``images`` (float64, 1797 x 8 x 8, values 0..16) and ``target`` (int64),
    read from the cache where it holds what that call gives (scikit-learn is then not imported),
    else from scikit-learn, and cached."""
    source = _sklearn_source()
    path = cache_dir() / CACHE_NAME
    if source is not None:
        found = _read_cache(path, source)
        if found is not None:
            return found
    from sklearn.datasets import load_digits

    d = load_digits()
    if source is not None:
        _write_cache(path, source, d.images, d.target)
    return d.images, d.target


@register_dataset("digits", facts=lambda data_dir=None: (10, (1, 8, 8)))
def digits(data_dir=None, download=False, augment=False) -> Source:
    """Digits as ``(1, 8, 8)`` images scaled to [0, 1] then standardised with the train split's
    mean and std; a fixed stratified 80/20 train/test split. ``augment`` is ignored: no augmentation
    is defined for these 8x8 digits, and so is ``data_dir`` (with a warning): they ship with scikit-learn
    (read through the cache of :func:`_digits_arrays`)."""
    images, target = _digits_arrays()
    if augment:
        warn_user("the digits dataset has no augmentation: augment=True is not used")
    if data_dir is not None:
        warn_user(f"the digits dataset ships with scikit-learn: the data directory {str(data_dir)!r} is not used")
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(target, dtype=torch.long)
    tr, te = stratified_split(y, TEST_FRACTION, seed=SPLIT_SEED)
    x_tr, y_tr = x[tr], y[tr]
    mean, std = (float(x_tr.mean()),), (float(x_tr.std()),)

    def view(idx):
        return TensorImages(x_tr, y_tr, idx, mean, std)

    return Source(
        train_labels=y_tr, train_view=view, eval_view=view,
        test=lambda: TensorImages(x[te], y[te], None, mean, std),
        num_classes=10, in_shape=(1, 8, 8), classes=[str(i) for i in range(10)], test_size=len(te),
    )
