"""ImageNet, and any image folder with train/ and val/ (or test/), with torchvision's standard transforms."""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch.utils.data import Dataset

from ..paths import DatasetNotFoundError, find_data
from .base import Source, register_dataset
from .folder_cache import check_samples, check_splits_apart, load_rgb, split_folder_problem, unicode_form_hint
from .imagenet_val import SOLUTION, FlatSplit, find_solution, flat_split, image_files
from .wnids import read_wnids, wnid_labels

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class FolderView(Dataset):
    """The samples ``indices`` of an ImageFolder, loaded and passed through ``transform``.

    A random transform draws from the global torch RNG until :meth:`set_epoch` is given a seed
    (``recipes/adaptive.py`` does so every epoch); from then on each sample's transform runs on
    the CPU RNG seeded from ``(seed, epoch, sample)`` (its state is restored after; no other
    generator is touched), so the crops depend neither on worker count nor on when a batch was
    fetched: a resumed run augments as the uninterrupted run did.
    """

    def __init__(self, folder, indices, transform):
        self.folder, self.transform = folder, transform
        self.indices = torch.arange(len(folder.samples)) if indices is None else torch.as_tensor(indices).long()
        self.epoch = 0
        self.seed: Optional[int] = None

    def set_epoch(self, epoch: int, seed: Optional[int] = None) -> None:
        """Record the epoch; with ``seed`` (once is enough), key the transform's randomness on
        ``(seed, epoch, sample)`` from now on (without one, Accelerate's own ``set_epoch`` calls
        change nothing)."""
        self.epoch = int(epoch)
        if seed is not None:
            self.seed = int(seed)

    def __len__(self):
        return int(self.indices.numel())

    @property
    def targets(self) -> torch.Tensor:
        return torch.as_tensor(self.folder.targets)[self.indices]

    def select(self, positions) -> "FolderView":
        """The view of this view's samples at ``positions``."""
        view = FolderView(self.folder, self.indices[torch.as_tensor(positions, dtype=torch.long)], self.transform)
        view.epoch, view.seed = self.epoch, self.seed
        return view

    def fingerprint_parts(self, positions) -> list:
        """The bytes of the image files of the samples at ``positions`` of this view, and their labels
        (the files as stored: no decoding, no transform): what
        :func:`adaptive.data.fingerprint.dataset_fingerprint` hashes."""
        from pathlib import Path

        src = self.indices[torch.as_tensor(positions, dtype=torch.long)].tolist()
        return [Path(self.folder.samples[s][0]).read_bytes() for s in src] + [torch.as_tensor(
            [self.folder.samples[s][1] for s in src], dtype=torch.long)]

    def fingerprint_all(self) -> list:
        """The size of every image file of this view, in order (a stat each, nothing read): what
        :func:`adaptive.data.fingerprint.dataset_fingerprint` hashes of every example (the bytes of
        a few spread over the view come from :meth:`fingerprint_parts`)."""
        samples = self.folder.samples
        return [torch.tensor([os.stat(samples[s][0]).st_size for s in self.indices.tolist()], dtype=torch.long)]

    def __getitem__(self, i):
        src = int(self.indices[i])
        path, label = self.folder.samples[src]
        image = load_rgb(path)  # (ImageFolder's loader, but a 16-bit grey image scaled, not clipped)
        if self.seed is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also reseed every CUDA (MPS, XPU)
            # generator, which fork_rng(devices=[]) does not restore
            torch.random.default_generator.manual_seed(
                (self.seed * 1_000_003 + self.epoch * 7919 + src * 104_729 + 11) % (2 ** 63))
            return self.transform(image), label


INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "nearest-exact", "lanczos", "box", "hamming")


def check_interpolation(interpolation) -> str:
    """``interpolation`` where it is one of :data:`INTERPOLATIONS`, else a ValueError naming them and the fix."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}: give the one the "
                         "weights were evaluated with (their torchvision Weights' transforms() names it), e.g. "
                         "--dataset-kw interpolation=bicubic")
    return interpolation


def _sizes(value):
    """``value`` as torchvision's transforms read a size: a whole number of pixels >= 1 as itself, a list or
    tuple of one such as that number, of two as the pair ``(H, W)``; None for anything else."""
    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if whole(value):
        return value
    if isinstance(value, (list, tuple)) and len(value) in (1, 2) and all(whole(v) for v in value):
        return value[0] if len(value) == 1 else (value[0], value[1])
    return None


def crop_shape(image_size) -> tuple:
    """``(H, W)`` of the crop that ``image_size`` (a side, or ``[H, W]``, as :func:`check_sizes` accepts it) gives."""
    size = _sizes(image_size)
    return size if isinstance(size, tuple) else (size, size)


def check_sizes(image_size, resize) -> None:
    """Refuse (a ValueError naming the value and the fix) an ``image_size`` that is no whole number of pixels >= 1
    nor a pair ``[H, W]`` of them (a crop of H x W; ``[S]`` is ``S``, as torchvision reads it), a ``resize`` that
    is neither (``[H, W]``: resized to exactly that; ``[S]`` is ``S``), and a ``resize`` that makes the center crop
    pad every image with black borders (torchvision's CenterCrop pads what is smaller than the crop: a shorter
    side below both of the crop's, a pair below the crop's in either): torchvision's own messages named neither
    the option nor the fix, and a string was read as a sequence of sizes."""
    crop, size = _sizes(image_size), _sizes(resize)
    if crop is None:
        raise ValueError(f"dataset_kw image_size must be a whole number of pixels >= 1 (the side of the square crop the "
                         f"network reads) or a pair [H, W] of them, got {image_size!r}: give --dataset-kw "
                         "image_size=224 (say)")
    if size is None:
        raise ValueError(f"dataset_kw resize must be a whole number of pixels >= 1 (the shorter side is resized to it) "
                         f"or a pair [H, W] of them, got {resize!r}: give --dataset-kw resize=256 (say)")
    (h, w), shown = crop_shape(image_size), (crop if isinstance(crop, int) else f"{list(crop)}")
    pads = (size[0] < h or size[1] < w) if isinstance(size, tuple) else size < min(h, w)
    if pads:
        least = f"[{h}, {w}]" if isinstance(size, tuple) else max(h, w)
        raise ValueError(f"dataset_kw resize {resize!r} is smaller than image_size {shown}: the center crop of "
                         f"{h}x{w} would pad every image with black borders; give a resize of at "
                         f"least {least} (torchvision's weights were evaluated at resize 256 or 232, image_size "
                         "224: their Weights' transforms() says)")


def transforms(train: bool, image_size: int = 224, resize: int = 256, interpolation: str = "bilinear"):
    """torchvision's transforms for ImageNet-style classifiers: for evaluation resize (the shorter side to
    ``resize``), center crop ``image_size`` (torchvision's ``ImageClassification`` preset, which its weights
    name as their ``transforms``); for training a random resized crop of ``image_size`` and a flip; both
    normalised with ImageNet's mean and std. ``interpolation``: how images are resized, as the weights
    were evaluated (bilinear for most of torchvision's; bicubic for EfficientNet-B0..B7's, Swin's,
    MaxViT's and ViT's SWAG weights), one of :data:`INTERPOLATIONS`."""
    import torchvision.transforms as T

    mode = T.InterpolationMode(check_interpolation(interpolation))
    check_sizes(image_size, resize)
    norm = [T.ToTensor(), T.Normalize(MEAN, STD)]
    if train:
        return T.Compose([T.RandomResizedCrop(image_size, interpolation=mode), T.RandomHorizontalFlip()] + norm)
    return T.Compose([T.Resize(resize, interpolation=mode), T.CenterCrop(image_size)] + norm)


def _image_folder(split_dir):
    """torchvision's ImageFolder of ``split_dir``; a hidden folder in it refused, naming it (a ValueError,
    :func:`split_folder_problem`: ImageFolder reads it as a class), as is a link to no folder there (passed over:
    a class missing), an image in a hidden folder inside a
    class folder, a hidden image file or a folder of images reached twice through links (:func:`check_samples`:
    read as images of the class, or read twice); a :class:`DatasetNotFoundError` that names the
    layout expected, ``split/CLASS/IMAGE``, and how to get it when the folder is not in it (ImageNet's
    val/ comes flat, every image directly in val/)."""
    from pathlib import Path

    from torchvision.datasets import ImageFolder

    problem = split_folder_problem(split_dir) if Path(split_dir).is_dir() else None
    if problem:  # ImageFolder would read it as a class (CIFAR's folders refuse it alike)
        raise ValueError(problem)
    try:
        folder = ImageFolder(str(split_dir))
    except FileNotFoundError as e:
        raise DatasetNotFoundError(_layout_problem(Path(split_dir), e)) from None
    check_samples(split_dir, folder.samples)  # (ImageFolder reads them as images of their class, or twice)
    return folder


def _test_folder(test_dir, train_folder):
    """The test split ``test_dir``: an ImageFolder (:func:`_image_folder`), or where it holds its images directly,
    no class folder, and Kaggle's ``LOC_val_solution.csv`` is found in it or above it
    (:func:`adaptive.data.imagenet_val.find_solution`), those images labelled by that file, numbered by
    ``train_folder``'s classes (:func:`adaptive.data.imagenet_val.flat_split`)."""
    from pathlib import Path

    problem = split_folder_problem(test_dir) if Path(test_dir).is_dir() else None
    files = image_files(test_dir) if Path(test_dir).is_dir() and not problem else []
    solution = find_solution(test_dir) if files else None
    if solution is None:
        return _image_folder(test_dir)
    flat = flat_split(test_dir, files, solution, train_folder.class_to_idx)
    check_samples(test_dir, flat.samples)  # (a hidden image, a link to no file)
    return flat


def _layout_problem(split_dir, error: Exception) -> str:
    split = split_dir.name
    layout = (f"{split}/ needs the ImageFolder layout {split}/CLASS/IMAGE "
              + ("(one folder per class)" if split == "train" else "(the class folders of train/)"))
    entries = [e for e in split_dir.iterdir() if not e.name.startswith(".")] if split_dir.is_dir() else []
    if any(e.is_dir() for e in entries):  # class folders there, but some hold no image torchvision reads
        return (f"{split_dir}: {error}; {layout}, and every class folder needs at least one image with one of "
                "those extensions: add images to the folders named, or delete those folders from train/ and the "
                "test split alike (both need the same class folders)")
    files = sum(e.is_file() for e in entries)
    found = f"holds {files} file(s) directly and no class folders" if files else "holds no class folders"
    how = ("move each image into the folder of its class" if split == "train" else
           f"for ImageNet's flat val/, put Kaggle's {SOLUTION} in it or in a folder above it (it is read from there, "
           "labelling each image), or run the usual valprep.sh (from PyTorch's examples/imagenet), which moves "
           "each image into its wnid folder; otherwise move each image into the folder of its class, named as "
           "in train/")
    return f"{split_dir} {found}: {layout}; {how}"


def _folder_source(train_dir, test_dir, augment: bool, image_size: int, resize: int,
                   interpolation: str = "bilinear", wnids=None) -> Source:
    """Train (with its holdout) from the ImageFolder ``train_dir``, test from ``test_dir`` (refused where it is
    the same folder, or reads any of train's images through links, :func:`check_splits_apart`: test accuracy
    measured on the training images). ``wnids``: a file of ImageNet's 1000 wnids (:func:`read_wnids`), by which
    each class folder, named as its wnid, is labelled with its ImageNet index (1000 classes), not 0..K-1."""
    index = read_wnids(wnids) if wnids is not None else None  # (a bad file refused before the folders' scan)
    if os.path.realpath(test_dir) == os.path.realpath(train_dir):  # (test_split=train, a val/ linked to train/)
        raise ValueError(f"the test split {test_dir} is the train split {train_dir} (the same folder): the test split "
                         "must hold other images (for dataset 'folder', name another with --dataset-kw test_split=NAME)")
    folder = _image_folder(train_dir)
    test_folder = _test_folder(test_dir, folder)  # scanned now: a mismatch is said before any work
    only_train = sorted(set(folder.classes) - set(test_folder.classes))
    only_test = sorted(set(test_folder.classes) - set(folder.classes))
    if isinstance(test_folder, FlatSplit) and only_train and not only_test:
        # a flat val/ is labelled through train/'s own class indices (flat_split), so a class it has no image of
        # shifts no label: taken, and said (its test figures then cover the other classes only)
        from ..warn import warn_user

        warn_user(f"the flat {test_dir.name}/ holds no image of {len(only_train)} of the {len(folder.classes)} classes "
                  f"of {train_dir} ({', '.join(only_train[:5])}{' ...' if len(only_train) > 5 else ''}): its test "
                  "figures cover the other classes only (the labels still agree: each image is labelled by train/'s "
                  "index of its wnid)")
    elif test_folder.classes != folder.classes:
        flat = (f" (the flat {test_dir.name}/ is labelled by {find_solution(test_dir)}: move out of it the images of "
                "classes train/ has not, and give train/ the classes of its images)") if isinstance(test_folder, FlatSplit) else ""
        raise ValueError(f"{train_dir} and {test_dir} hold different classes (only in train: {only_train[:5]}, only in "
                         f"{test_dir.name}: {only_test[:5]}): both need the same class folders, so that labels agree"
                         + flat + unicode_form_hint(only_train, only_test))
    check_splits_apart(train_dir, folder.samples, test_dir, test_folder.samples)  # (links to the same images)
    classes = folder.classes
    if index is not None:
        lut = wnid_labels(folder.classes, index, wnids, train_dir)
        _relabel(folder, lut)
        _relabel(test_folder, lut)
        classes = index
    eval_tf = transforms(False, image_size, resize, interpolation)
    train_tf = transforms(True, image_size, resize, interpolation) if augment else eval_tf
    return Source(
        train_labels=torch.as_tensor(folder.targets),
        train_view=lambda idx: FolderView(folder, idx, train_tf),
        eval_view=lambda idx: FolderView(folder, idx, eval_tf),
        test=lambda: FolderView(test_folder, None, eval_tf),
        num_classes=len(classes), in_shape=(3, *crop_shape(image_size)), classes=list(classes),
        test_classes=len(folder.classes) if index is not None else None,  # (K folders of the 1000)
    )


def _relabel(folder, lut: torch.Tensor) -> None:
    """Give each sample of the ImageFolder ``folder`` the label ``lut[its class index]`` (samples, imgs, targets)."""
    targets = lut[torch.as_tensor(folder.targets, dtype=torch.long)].tolist()
    folder.samples = [(path, t) for (path, _), t in zip(folder.samples, targets)]
    folder.imgs, folder.targets = folder.samples, targets


def _folder_facts(train_dir, image_size, interpolation="bilinear", resize=256, wnids=None) -> tuple:
    """(classes, in_shape) of an ImageFolder source from the names of its class folders (the
    classes ImageFolder finds; the transforms crop every image to ``image_size``). A class folder
    without an image makes the facts unknown (DatasetNotFoundError), so that building the dataset
    names that folder, not a class count that the empty folder inflates. An ``interpolation`` that is
    none, or sizes :func:`check_sizes` refuses, make them unknown as well (the builder names it). With ``wnids``
    (a file of ImageNet's wnids), the classes are its 1000, where every class folder is listed there."""
    from torchvision.datasets.folder import find_classes

    check_interpolation(interpolation)
    check_sizes(image_size, resize)
    problem = split_folder_problem(train_dir) if os.path.isdir(train_dir) else None
    if problem:
        raise ValueError(problem)
    classes = find_classes(str(train_dir))[0]
    empty = [c for c in classes if not _holds_an_image(os.path.join(str(train_dir), c))]
    if empty:
        raise DatasetNotFoundError(f"{train_dir}: no image in the class folder(s) {empty[:5]}")
    if wnids is not None:
        index = read_wnids(wnids)
        wnid_labels(classes, index, wnids, train_dir)  # (a folder not listed: refused, facts unknown)
        return len(index), (3, *crop_shape(image_size))
    return len(classes), (3, *crop_shape(image_size))


def _holds_an_image(folder: str) -> bool:
    """Whether ``folder`` (or a folder inside it, links followed as ImageFolder follows them) holds a
    file with one of ImageFolder's image extensions; it stops at the first one found, and looks in
    each real folder once (links that loop back are not followed round)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    folders, seen = [folder], set()
    while folders:  # (os.walk would list each whole folder first: ImageNet's hold 1,300 images)
        here = folders.pop()
        real = os.path.realpath(here)
        if real in seen:  # a link back to a folder already looked in (a loop): nothing new there
            continue
        seen.add(real)
        try:
            with os.scandir(here) as entries:
                for e in entries:
                    try:
                        is_dir = e.is_dir()
                    except OSError:  # this entry unreadable: the others may still hold an image
                        continue
                    if is_dir:
                        folders.append(e.path)
                    elif e.name.lower().endswith(IMG_EXTENSIONS):
                        return True
        except OSError:  # unreadable, as os.walk skips it: ImageFolder's own scan reports what it finds
            continue
    return False


def _imagenet_train(data_dir):
    """ImageNet's train folder, with val/ beside it. A ``data_dir`` that holds train/ itself (the folder
    PyTorch's examples/imagenet takes, Kaggle's ILSVRC/Data/CLS-LOC) is refused naming the two ways to read it."""
    from pathlib import Path

    try:
        train_dir = find_data("imagenet", ("imagenet/train", "ILSVRC2012/train"), data_dir,
                              how="laid out as imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG "
                                  "(ImageNet has no automatic download)")
    except DatasetNotFoundError as e:
        given = Path(data_dir).expanduser() if data_dir is not None and str(data_dir) != "" else None
        if given is None or not (given / "train").is_dir():
            raise
        full = Path(os.path.abspath(given))  # (its parent and name: "." and "x/.." name none themselves)
        raise DatasetNotFoundError(
            f"--data-dir {given} holds train/ itself, where dataset 'imagenet' reads DATA_DIR/imagenet/train: give "
            f"--data-dir {full.parent}" + ("" if full.name in ("imagenet", "ILSVRC2012") else
                                           f" with {full} renamed (or linked) as {full.parent / 'imagenet'}")
            + f", or read it as it is with --dataset folder --data-dir {given} (the same transforms and split; "
            f"dataset_kw alike). ({e})") from None
    if not (train_dir.parent / "val").is_dir():  # said now, not after a whole run when the report needs it
        raise DatasetNotFoundError(f"imagenet validation split not found: expected {train_dir.parent / 'val'} next to "
                                   f"{train_dir} (laid out as val/<wnid>/*.JPEG)")
    return train_dir


@register_dataset("imagenet", facts=lambda data_dir=None, image_size=224, resize=256, interpolation="bilinear",
                  wnids=None: _folder_facts(_imagenet_train(data_dir), image_size, interpolation, resize, wnids))
def imagenet(data_dir=None, download=False, augment=False, image_size=224, resize=256,
             interpolation="bilinear", wnids=None) -> Source:
    """ImageFolder ``<data>/imagenet/train`` and ``<data>/imagenet/val``. The train part uses
    RandomResizedCrop + flip when ``augment``, else the evaluation transform (resize 256, center
    crop 224, bilinear: ``interpolation`` as :func:`transforms` takes it), which holdout and val always
    use. ImageNet cannot be downloaded automatically. ``wnids``: a file of ImageNet's 1000 wnids
    (:mod:`adaptive.data.wnids`), by which the class folders are labelled with their ImageNet index (a folder of
    some of the classes, as Imagenette's, scored by a 1000-class network). A flat ``val/`` (every image directly
    in it, as Kaggle's ``ILSVRC/Data/CLS-LOC/val/``) is read with Kaggle's ``LOC_val_solution.csv`` found in it or
    in one of the four folders above it (:mod:`adaptive.data.imagenet_val`), each image labelled by its wnid;
    without that file it is refused, naming the file and PyTorch's ``valprep.sh``."""
    check_interpolation(interpolation)  # (before the folders' scan: ImageNet's takes a while)
    check_sizes(image_size, resize)
    train_dir = _imagenet_train(data_dir)
    return _folder_source(train_dir, train_dir.parent / "val", augment, image_size, resize, interpolation, wnids)


def _folder_train(data_dir):
    """The train/ folder of dataset 'folder' (or the DatasetNotFoundError saying what is missing)."""
    from pathlib import Path

    if data_dir is None:
        raise DatasetNotFoundError("dataset 'folder' needs --data-dir: the folder that holds train/<class>/... and "
                                   "val/<class>/... (or test/<class>/...)")
    root = Path(data_dir).expanduser()
    if not (root / "train").is_dir():
        raise DatasetNotFoundError(f"dataset 'folder': {root / 'train'} not found; --data-dir must hold train/<class>/* "
                                   "and val/<class>/* (or test/<class>/*)")
    return root / "train"


@register_dataset("folder", facts=lambda data_dir=None, image_size=224, resize=256, test_split=None,
                  interpolation="bilinear", wnids=None: _folder_facts(_folder_train(data_dir), image_size,
                                                                      interpolation, resize, wnids))
def folder(data_dir=None, download=False, augment=False, image_size=224, resize=256, test_split=None,
           interpolation="bilinear", wnids=None) -> Source:
    """Any image classification dataset in ImageFolder layout: ``data_dir/train/<class>/*`` and a
    test split beside it, ``data_dir/<test_split>/<class>/*`` (default: ``val``, else ``test``).
    Images are resized to ``resize`` (``interpolation``: bilinear, or as :func:`transforms` takes it),
    center-cropped to ``image_size`` and normalised with the
    ImageNet mean and std (torchvision's pretrained classifiers and the CIFAR ResNets here expect
    that); ``augment`` uses RandomResizedCrop + flip for the train part. The holdout is drawn from
    train, as for every dataset. ``wnids``, and a flat test split with ``LOC_val_solution.csv``: as
    :func:`imagenet` takes them."""
    check_interpolation(interpolation)  # (before the folders' scan)
    check_sizes(image_size, resize)
    root = _folder_train(data_dir).parent
    splits = [test_split] if test_split else ["val", "test"]
    found = [root / s for s in splits if (root / s).is_dir()]
    if not found:
        raise DatasetNotFoundError(f"dataset 'folder': no test split in {root} (looked for {', '.join(splits)}/); "
                                   "add one, or name it with --dataset-kw test_split=NAME")
    return _folder_source(root / "train", found[0], augment, image_size, resize, interpolation, wnids)
