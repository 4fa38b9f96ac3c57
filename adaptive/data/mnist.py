"""MNIST from ``mnist.npz`` (x_train, y_train, x_test, y_test), or torchvision's raw folder of idx
files (gzipped or not), held in memory as uint8. Both splits are checked when the data is found, so
a copy that lacks the test split, or whose test arrays are flat or cut short, says so before training,
not after (the test split's shapes and sizes read from its headers, its arrays not read)."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from ..paths import DatasetNotFoundError, downloading, find_data, resolve_data_dir
from .base import Source, register_dataset
from .tensors import TensorImages

MEAN, STD = (0.1307,), (0.3081,)
RELPATHS = ("mnist/mnist.npz", "mnist.npz", "mnist/MNIST/raw")
HOW = "or pass download=True (--download) to fetch it with torchvision where there is internet"
KEYS = ("x_train", "y_train", "x_test", "y_test")
RAW = {"train": "train", "test": "t10k"}  # the raw idx files' prefixes
KINDS = ("images-idx3-ubyte", "labels-idx1-ubyte")


def _raw_file(raw: Path, split: str, kind: str):
    """The idx file of ``split`` and ``kind`` in torchvision's raw folder, as it is or gzipped; None if neither."""
    name = f"{RAW[split]}-{kind}"
    return next((p for p in (raw / name, raw / f"{name}.gz") if p.is_file()), None)


def _check(path: Path) -> None:
    """Refuse, naming the file and the fix, a copy that lacks a split or is no npz archive."""
    if path.name == "raw":
        missing = [f"{RAW[s]}-{k}" for s in RAW for k in KINDS if _raw_file(path, s, k) is None]
        if missing:
            raise DatasetNotFoundError(
                f"MNIST's raw folder {path} lacks {', '.join(missing)} (each may be gzipped, .gz): copy them there, "
                "or give the data as mnist.npz (docs/data.md)")
        return
    try:
        with np.load(path, allow_pickle=False) as f:
            files = list(f.files)
    except Exception as e:  # not a zip, truncated, a pickle: what np.load says names no fix
        raise ValueError(f"{path} cannot be read as MNIST's npz archive ({type(e).__name__}: {e}): replace it with "
                         f"a good copy holding {', '.join(KEYS)}") from None
    missing = [k for k in KEYS if k not in files]
    if missing:
        raise ValueError(f"{path} lacks the arrays {missing} (it holds {files}): mnist.npz needs {', '.join(KEYS)} "
                         "(both splits); replace it with a whole copy")


def _read_idx(path: Path) -> torch.Tensor:
    """An idx file of unsigned bytes (MNIST's format), gzipped or not, as a uint8 tensor."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:  # truncated, or no gzip: gzip's own names no file
            raise ValueError(f"{path} cannot be unzipped ({type(e).__name__}: {e}): it is cut short or no gzip file; "
                             "replace it with a good copy (or with the unzipped idx file, without .gz)") from None
    nd = data[3] if len(data) >= 4 else 0
    dims = tuple(int(d) for d in np.frombuffer(data, ">i4", nd, 4)) if len(data) >= 4 + 4 * nd else ()
    if data[:3] != b"\0\0\x08" or not dims or len(data) != 4 + 4 * nd + int(np.prod(dims)):
        raise ValueError(f"{path} is not a whole idx file of unsigned bytes (MNIST's raw format): replace it with "
                         "a good copy")
    return torch.from_numpy(np.frombuffer(data, np.uint8, offset=4 + 4 * nd).reshape(dims).copy())


def _check_shapes(path, split, x_shape, y_shape) -> None:
    """Refuse, naming the file and the fix, ``split``'s arrays where they are not images ``(N, 28, 28)``
    and ``N`` labels."""
    x_shape, y_shape = tuple(int(d) for d in x_shape), tuple(int(d) for d in y_shape)
    if len(x_shape) != 3 or x_shape[1:] != (28, 28) or len(y_shape) != 1 or y_shape[0] != x_shape[0]:
        raise ValueError(f"{path}: MNIST's {split} split needs images of shape (N, 28, 28) and N labels, got "
                         f"{x_shape} and {y_shape}: replace it with a good copy")


def _npz_shape(path: Path, zf, key: str) -> tuple:
    """The shape and dtype of array ``key`` of the npz ``path`` (``zf``: its open zip) from the .npy header alone,
    checked against the member's size (an array cut short is refused, naming the file). The member is
    the one ``np.load`` reads as ``key`` (``key`` itself, else ``key.npy``); one that is no .npy array, or
    holds no numbers (Python objects, which are not unpickled; strings), is refused, naming the file."""
    member = key if key in zf.namelist() else f"{key}.npy"
    try:
        with zf.open(member) as fp:
            version = np.lib.format.read_magic(fp)
            shape, _, dtype = (np.lib.format.read_array_header_1_0(fp) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(fp))
            header = fp.tell()
    except ValueError as e:  # numpy's names no file
        raise ValueError(f"{path}: its member {member} is no .npy array ({e}): replace it with a good copy") from None
    if dtype.kind not in "biuf":
        raise ValueError(f"{path}: its array {key} holds {dtype} values, not numbers (MNIST's are uint8 images and "
                         "integer labels; Python objects are not unpickled): replace it with a good copy")
    if zf.getinfo(member).file_size != header + int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"{path}: its array {key} of shape {shape} does not hold {int(np.prod(shape))} values of "
                         f"{dtype} (cut short, or padded): replace it with a whole copy")
    return shape, dtype


def _idx_shape(path: Path) -> tuple:
    """The shape of the idx file ``path``, from its header and size alone where it is not gzipped (a
    gzipped one is read whole: its size says nothing; MNIST's test files unzip to 8 MB)."""
    if path.suffix == ".gz":
        return tuple(_read_idx(path).shape)
    with open(path, "rb") as f:
        head = f.read(4)
        nd = head[3] if len(head) == 4 else 0
        dims = f.read(4 * nd)
    shape = tuple(int(d) for d in np.frombuffer(dims, ">i4")) if len(dims) == 4 * nd else ()
    if head[:3] != b"\0\0\x08" or not shape or path.stat().st_size != 4 + 4 * nd + int(np.prod(shape)):
        raise ValueError(f"{path} is not a whole idx file of unsigned bytes (MNIST's raw format): replace it with "
                         "a good copy")
    return shape


def _check_split(path: Path, split: str) -> None:
    """Check ``split``'s arrays as cheaply as they can be: their shapes and sizes from the headers (a
    gzipped raw file is unzipped), the images' dtype, and the labels (read: 10,000 or 60,000 numbers);
    a flat or cut-short copy, images other than uint8 and labels outside 0..9 are refused, naming the file."""
    if path.name == "raw":
        x_shape, y_shape = (_idx_shape(_raw_file(path, split, k)) for k in KINDS)
        _check_shapes(path, split, x_shape, y_shape)
        _check_labels(path, split, _read_idx(_raw_file(path, split, KINDS[1])).numpy())
        return
    with np.load(path, allow_pickle=False) as f:
        (x_shape, x_type), (y_shape, _) = (_npz_shape(path, f.zip, f"{k}_{split}") for k in "xy")
        _check_shapes(path, split, x_shape, y_shape)
        # (the images are not read: their dtype is the header's; float 0..255 was used unscaled, pixels normalised to 827)
        if x_type != np.uint8:
            raise ValueError(f"{path}: its array x_{split} holds {x_type} images; MNIST's are uint8 (0..255), which "
                             "are scaled to 0..1 and normalised: replace it with a good copy (or convert the images to "
                             "uint8 0..255)")
        _check_labels(path, split, f[f"y_{split}"])


def _check_labels(path: Path, split: str, y: np.ndarray) -> None:
    """Refuse labels that are not integers 0..9 (floats were cut to whole numbers, bools made two classes, a 10
    failed the run's last step, its report, with torch's bare IndexError)."""
    if y.dtype.kind not in "iu":
        raise ValueError(f"{path}: its {split} labels are {y.dtype}; MNIST's are integers 0..9: replace it with a "
                         "good copy")
    if y.size and (int(y.min()) < 0 or int(y.max()) > 9):
        raise ValueError(f"{path}: its {split} labels run from {int(y.min())} to {int(y.max())}; MNIST's are the "
                         "digits 0..9: replace it with a good copy")


def _arrays(path, split):
    """(images ``(N, 28, 28)``, labels ``(N,)`` int64) of ``split``; other shapes are refused, naming the file."""
    if path.name == "raw":  # torchvision's own layout (its train split is read here first: labels checked here)
        x, y = (_read_idx(_raw_file(path, split, k)) for k in KINDS)
        _check_labels(path, split, y.numpy())
    else:
        with np.load(path, allow_pickle=False) as f:
            # (in this machine's byte order: torch takes no other)
            x, y = (torch.from_numpy(a.astype(a.dtype.newbyteorder("="), copy=False))
                    for a in (f[f"x_{split}"], f[f"y_{split}"]))
    _check_shapes(path, split, x.shape, y.shape)
    return x, y.long()


@register_dataset("mnist", facts=lambda data_dir=None: (10, (1, 28, 28)))
def mnist(data_dir=None, download=False, augment=False) -> Source:
    """MNIST ``(1, 28, 28)``, normalised with mean/std 0.1307/0.3081; ``augment``: random shifts of
    up to 2 pixels (no flips) on the train part only. Reads the npz of the data
    folder; with ``download=True`` and no local copy, torchvision downloads it to the data dir."""
    try:
        path = find_data("mnist", RELPATHS, data_dir, how=HOW)
    except DatasetNotFoundError:
        if not download:
            raise
        import torchvision

        root = resolve_data_dir(data_dir) / "mnist"
        with downloading("mnist", root):
            torchvision.datasets.MNIST(str(root), train=True, download=True)
            torchvision.datasets.MNIST(str(root), train=False, download=True)
        path = root / "MNIST" / "raw"
    _check(path)
    # the test split is read after training: its faults said now, before any work (the train split's too where
    # it is an npz: numpy's error for a cut-short array names no file; raw ones are read, and named, right away)
    for split in ("test",) if path.name == "raw" else ("train", "test"):
        _check_split(path, split)
    x, y = _arrays(path, "train")
    x = x.unsqueeze(1)

    def view(idx, augment=False):  # digits are not mirror images: shifts only
        return TensorImages(x, y, idx, MEAN, STD, augment=augment, pad=2, flip=False)

    def test():
        xt, yt = _arrays(path, "test")
        return TensorImages(xt.unsqueeze(1), yt, None, MEAN, STD)

    return Source(train_labels=y, train_view=lambda idx: view(idx, augment), eval_view=view, test=test, num_classes=10,
                  in_shape=(1, 28, 28), classes=[str(i) for i in range(10)])
