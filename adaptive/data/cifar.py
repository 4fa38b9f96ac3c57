"""CIFAR-10 from an ImageFolder directory (e.g. ../shared/data/cifar10-jpeg), torchvision's
pickled batches, or torchvision's downloader; held in memory as uint8 tensors."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..paths import DatasetNotFoundError, downloading, find_data, resolve_data_dir
from .base import Source, register_dataset
from .folder_cache import (_classes, cached_folder_tensor, check_splits_apart, folder_facts, scan_folder,
                           unicode_form_hint)
from .tensors import TensorImages

NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # what the pretrained ResNets use
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "none": None,
}
RELPATHS = ("cifar10-jpeg/train", "cifar10/train", "cifar10/cifar-10-batches-py", "cifar-10-batches-py")
# a --data-dir given as the ImageFolder copy itself (cifar10-jpeg, holding train/ and test/), as the docs' words
# "an ImageFolder such as cifar10-jpeg/{train,test}" invite: looked for only there, never in the default folders
OWN_FOLDER = ("train",)
HOW = "or pass download=True (--download) to fetch it with torchvision where there is internet"
# CIFAR-10's classes, as torchvision names and orders them (the ImageFolder copy's folder names)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _relpaths(data_dir) -> tuple:
    """The paths looked for under each data folder: under an explicit ``data_dir``, its own train/ too."""
    return RELPATHS + (OWN_FOLDER if _explicit(data_dir) else ())


def _explicit(data_dir) -> bool:
    return data_dir is not None and str(data_dir) != ""


def _find(data_dir) -> Path:
    """The CIFAR-10 copy ``data_dir`` (or the default folders) holds: :func:`find_data` over
    :func:`_relpaths`. An ImageFolder copy (``cifar10-jpeg/``, ``cifar10/`` or a ``data_dir`` read as the copy
    itself, its own train/) is taken only where train/ holds CIFAR-10's ten class folders: any folder with
    train/ and test/ (another dataset's ImageFolder tree, CIFAR-100's) would otherwise be read as CIFAR-10,
    silently, its labels numbered by its own folders."""
    found = find_data("cifar10", _relpaths(data_dir), data_dir, how=HOW)
    if found.name == "train":  # an ImageFolder copy, wherever it was found (cifar10-jpeg/, cifar10/, --data-dir itself)
        classes = _classes(found)
        if tuple(classes) != CLASSES:  # (found as DIR/cifar10-jpeg it was taken unchecked: a folder renamed, truck to
            # autotruck, renumbered the labels, and a pretrained resnet20 scored 19% on it; one left out read as 9 classes)
            own = _explicit(data_dir) and found == Path(data_dir).expanduser() / OWN_FOLDER[0]
            copy = data_dir if own else found.parent
            missing, other = [c for c in CLASSES if c not in classes], [c for c in classes if c not in CLASSES]
            empty = [c for c in other if not any(os.scandir(found / c))]  # (a stray folder: deleting it is the fix)
            raise ValueError(
                (f"--data-dir {data_dir}" if own else f"{copy} (found for cifar10)")
                + f" is not a CIFAR-10 copy: its train/ holds {len(classes)} class folder(s)"
                + (f", lacking {_some(missing)}" if missing else "") + (f", with {_some(other)}" if other else "")
                + (f" ({_some(empty)}: empty, delete {'it' if len(empty) == 1 else 'them'})" if empty else "")
                + f" (CIFAR-10's are {', '.join(CLASSES)}); another ImageFolder dataset (or a CIFAR-10 copy whose "
                f"folders are named otherwise) reads with --dataset folder --data-dir {copy} (docs/data.md)")
    return found


def _some(names) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _normalization(normalize):
    if normalize is None or isinstance(normalize, str):
        key = "none" if normalize is None else normalize.lower()
        if key not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {sorted(NORMALIZATIONS)} or a (mean, std) pair, got {normalize!r}")
        return NORMALIZATIONS[key] or (None, None)
    mean, std = normalize
    return tuple(mean), tuple(std)


def _torchvision_arrays(root: Path, train: bool, download: bool = False):
    import torchvision

    try:
        ds = torchvision.datasets.CIFAR10(str(root), train=train, download=download)
    except RuntimeError as e:  # torchvision's "Dataset not found or corrupted": neither the folder nor the file named
        if download or "corrupted" not in str(e):
            raise
        raise ValueError(_corrupt_batches_problem(root / "cifar-10-batches-py")) from None
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets), list(ds.classes)


def _corrupt_batches_problem(folder: Path) -> str:
    """What is wrong with torchvision's CIFAR-10 batches in ``folder`` where torchvision refuses them: the files
    missing or failing their MD5 checksum (cut short, altered), by name, and the fix."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    files = CIFAR10.train_list + CIFAR10.test_list + [(CIFAR10.meta["filename"], CIFAR10.meta["md5"])]
    bad = [f for f, md5 in files if not check_integrity(str(folder / f), md5)]
    return (f"{folder}: torchvision's CIFAR-10 batch file(s) {bad} are missing or fail their checksum (cut short or "
            "altered): replace the folder with a whole copy (or delete it and pass --download where there is internet)")


def _test_folder(found: Path) -> Path:
    """The test/ folder beside an ImageFolder copy's train/ (said now, not after a whole run when the
    report needs it)."""
    if not (found.parent / "test").is_dir():
        raise DatasetNotFoundError(f"cifar10 test split not found: expected {found.parent / 'test'} next to {found}; "
                                   f"an ImageFolder copy of CIFAR-10 needs both train/ and test/")
    if os.path.realpath(found.parent / "test") == os.path.realpath(found):  # (test accuracy on the training images)
        raise ValueError(f"cifar10 at {found.parent}: test/ is train/ (a link to the same folder): the test split must "
                         "hold CIFAR-10's test images")
    return found.parent / "test"


def _check_test_classes(test_dir: Path, classes) -> None:
    """Labels are class indices: a test/ with other class folders would shift them silently. The
    folders are listed as the cache lists them (:func:`_classes`: a hidden folder is refused)."""
    test_classes = _classes(test_dir)
    if test_classes != list(classes):
        only_test = [c for c in test_classes if c not in classes]
        only_train = [c for c in classes if c not in test_classes]
        raise ValueError(f"cifar10 at {test_dir.parent}: test/ has the classes {test_classes}, train/ has "
                         f"{list(classes)} (only in test/: {only_test}, only in train/: {only_train}); both splits "
                         "need the same class folders: move or delete the folders named"
                         + unicode_form_hint(only_train, only_test))


def _check_test_shape(test_dir: Path, train_dir: Path, in_shape) -> None:
    """The test split's images are decoded at the size of its first image (read from its header now, nothing
    decoded): one other than the train split's ``in_shape`` is refused now, not met when the test split is
    first used after training (a network that pools adaptively would test on images of another size, unsaid)."""
    test_shape = folder_facts(test_dir)[1]
    if tuple(test_shape) != tuple(in_shape):
        raise ValueError(f"cifar10 at {test_dir.parent}: the images of test/ are {test_shape[2]}x{test_shape[1]}, those "
                         f"of train/ {in_shape[2]}x{in_shape[1]} (as {train_dir.name}/'s first image is): both splits "
                         "need images of one size; resize one split's, or read the copy with --dataset folder, which "
                         "resizes (docs/data.md)")


def _facts(data_dir=None, normalize="imagenet", cache_dir=None, download=False):
    """What :func:`cifar10` will say, nothing decoded: torchvision's batches are 10 classes of
    ``(3, 32, 32)`` (what ``download`` fetches where no copy is found); an ImageFolder copy has its
    class folders and the size of the image its decoding sizes every image by (read from that
    file's header; no transform resizes)."""
    import torchvision

    _normalization(normalize)  # a bad one: the builder's error, once it runs
    try:
        found = _find(data_dir)
    except DatasetNotFoundError:
        if download:  # the builder will download torchvision's batches
            return 10, (3, 32, 32)
        raise
    if found.name == "cifar-10-batches-py":
        cifar = torchvision.datasets.CIFAR10
        missing = [f for f, _ in cifar.train_list + cifar.test_list + [(cifar.meta["filename"], None)]
                   if not (found / f).is_file()]
        if missing:  # (torchvision refuses such a folder; its checksums are left to it)
            raise DatasetNotFoundError(f"{found} lacks {missing}")
        return 10, (3, 32, 32)
    test_dir = _test_folder(found)
    classes, in_shape = folder_facts(found)
    _check_test_classes(test_dir, classes)
    _check_test_shape(test_dir, found, in_shape)
    return len(classes), in_shape


@register_dataset("cifar10", facts=_facts)
def cifar10(data_dir=None, download=False, augment=False, normalize="imagenet", cache_dir=None,
            progress=None) -> Source:
    """CIFAR-10 ``(3, 32, 32)``. ``augment`` adds random crop (pad 4) and horizontal flip to the
    train part only. ``normalize``: "imagenet" (default), "cifar", "none" or ``(mean, std)``.
    JPEG folders are decoded once and cached under ``cache_dir`` (default ~/.cache/adaptive), with a
    progress bar as ``progress`` says (None: only when stderr is a terminal)."""
    mean, std = _normalization(normalize)
    try:
        found = _find(data_dir)
    except DatasetNotFoundError:
        if not download:
            raise
        found = resolve_data_dir(data_dir) / "cifar10" / "cifar-10-batches-py"
        with downloading("cifar10", found.parent):
            _torchvision_arrays(found.parent, train=True, download=True)
    if found.name == "cifar-10-batches-py":
        x, y, classes = _torchvision_arrays(found.parent, train=True)

        def load_test():
            return _torchvision_arrays(found.parent, train=False)[:2]
    else:
        base = Path(os.path.abspath(found.parent))  # (--data-dir . inside the copy: its name, not "")
        test_dir = _test_folder(found)
        # before any decoding: a test/ that reads train/'s images through links measures accuracy on them
        check_splits_apart(found, scan_folder(found)[1], test_dir, scan_folder(test_dir)[1])
        x, y, classes = cached_folder_tensor(found, f"{base.name}-train", cache_dir, progress=progress)
        _check_test_classes(test_dir, classes)
        _check_test_shape(test_dir, found, tuple(x.shape[1:]))

        def load_test():
            return cached_folder_tensor(test_dir, f"{base.name}-test", cache_dir, progress=progress)[:2]

    def test():
        xt, yt = load_test()
        return TensorImages(xt, yt, None, mean, std)

    return Source(
        train_labels=y,
        train_view=lambda idx: TensorImages(x, y, idx, mean, std, augment=augment),
        eval_view=lambda idx: TensorImages(x, y, idx, mean, std),
        test=test, num_classes=len(classes), in_shape=tuple(int(d) for d in x.shape[1:]), classes=classes,  # from the data
    )
