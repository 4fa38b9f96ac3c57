"""Decode an ImageFolder of small same-sized images once into a uint8 tensor, cached on disk.

Decoding CIFAR's 50,000 JPEGs takes minutes on a small machine; the cached tensor loads in well
under a second. The cache lives outside the repository (``adaptive.paths.cache_dir()``), one file
per folder (named by a hash of its resolved path), is written atomically, built by one process at a
time (a valid one is read without waiting), and is rebuilt, never trusted, when the folder's path,
classes or files (names, sizes, times) changed or the file fails its checks (unreadable, wrong
tensors, checksum). A cache folder that takes no new file costs a warning, not the data.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..atomic import atomic_torch_save, temp_name
from ..paths import cache_dir as default_cache_dir


def scan_folder(root: Path) -> Tuple[List[str], List[Tuple[str, int]]]:
    """Classes (sorted folder names) and ``(path, class index)`` samples, as ImageFolder does."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    classes = _classes(root)
    try:
        samples = make_dataset(str(root), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS)
    except FileNotFoundError:  # torchvision's says neither the folder nor the fix
        raise FileNotFoundError(_empty_classes_problem(root, classes)) from None
    check_samples(root, samples)
    return classes, samples


def _empty_classes_problem(root: Path, classes: List[str]) -> str:
    """What is wrong with ``root`` where some of its ``classes`` folders hold no image, and the fix."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    empty = [c for c in classes if not any(f.lower().endswith(IMG_EXTENSIONS)
                                           for _, _, files in os.walk(root / c, followlinks=True) for f in files)]
    return (f"{root}: the class folder(s) {empty[:5]} hold no image (extensions {', '.join(IMG_EXTENSIONS)}); every "
            "sub-folder is a class (as in torchvision's ImageFolder): add images to those folders, "
            "or delete them (from the other split alike: both need the same class folders)")


def unreadable_image(path, error: OSError) -> ValueError:
    """The error for an image file of a class folder that cannot be decoded (a truncated copy, a file
    that is no image under an image's name: PIL's OSErrors, which carry no errno), naming the file and
    the fix. An operating-system error (with an errno: a file deleted since the folder was scanned, no
    permission to read it) is no fault of the image's: callers raise it as it is."""
    return ValueError(f"{path} cannot be read as an image ({type(error).__name__}: {error}): every file with an "
                      "image extension in a class folder is read; replace it with a readable copy, or delete it")


# Pillow's modes of 16-bit grey pixels (a 16-bit greyscale PNG opens as "I;16"; a TIFF as "I;16B" say)
_GREY16 = ("I;16", "I;16L", "I;16B", "I;16N")
# formats whose 16-bit grey Pillow opens as mode I, values within 0..65535: a 16-bit PGM (maxval above 255, its
# values scaled by Pillow to 0..65535), a PNG in older Pillow
_GREY16_AS_I = ("PNG", "PPM")


def load_rgb(path):
    """The image file ``path`` as an 8-bit RGB PIL image, as torchvision's ImageFolder loads it
    (``convert("RGB")``: greyscale, palette, CMYK alike), except a 16-bit greyscale image, whose values
    are scaled to 8 bits (the high byte, as Pillow reads a 16-bit RGB or grey-and-alpha PNG) where
    ``convert`` clips them at 255 (every pixel above 255 of 65535 white: pytorch/vision#2218); a 32-bit
    integer or floating-point image (a TIFF), with no one scale to 8 bits, is refused naming the file,
    not clipped (a 16-bit greyscale PGM, which Pillow opens as 32-bit mode I, is no such image: it is scaled
    as a 16-bit PNG is). A file that cannot be decoded is a ValueError naming it (:func:`unreadable_image`); an
    operating-system error (no such file, no permission) is raised as it is."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode in _GREY16 or (im.mode == "I" and im.format in _GREY16_AS_I):
                grey = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
                return Image.fromarray(grey).convert("RGB")
            if im.mode in ("I", "F"):
                raise ValueError(f"{path} is a {'32-bit integer' if im.mode == 'I' else 'floating-point'} image (Pillow "
                                 f"mode {im.mode}), with no one scale to 8 bits: every image is read as 8-bit RGB; "
                                 "save it as 8-bit (or 16-bit PNG), or delete it")
            return im.convert("RGB")
    except OSError as e:  # PIL's UnidentifiedImageError and truncated data are OSErrors without an errno
        if e.errno is not None:  # the file gone, no permission: the operating system's error says it
            raise
        raise unreadable_image(path, e) from e


def hidden_folders_problem(root) -> Optional[str]:
    """Why ``root`` (a split's folder, ``train/`` say) cannot be read as classes where it holds a hidden
    folder (a name starting with '.': ``.ipynb_checkpoints``, ``.Trash-1000``), naming it and the fix;
    None where it holds none. torchvision's ImageFolder would read such a folder as a class, sorted
    before the others: every label shifted by one, one class more (or its images' absence refused
    under a class name nobody chose)."""
    hidden = sorted(e.name for e in os.scandir(root) if e.name.startswith(".") and e.is_dir())
    if not hidden:
        return None
    return (f"{root} holds the hidden folder(s) {hidden[:5]}{' and more' if len(hidden) > 5 else ''}, which would be "
            "read as classes (as torchvision's ImageFolder reads them), shifting every label: move them out of "
            f"{root}, or, for a class, rename its folder without the leading '.'")


def hidden_images_problem(root, samples) -> Optional[str]:
    """Why the ``(path, class)`` ``samples`` of the split folder ``root`` (as torchvision's ``make_dataset``
    lists them) cannot be read as they are where an image lies in a hidden folder inside a class folder
    (``train/cat/.thumbnails/x.jpg``, ``train/cat/.ipynb_checkpoints/x.png``) or is a hidden file itself
    (macOS's ``train/cat/._x.jpg``), naming a few and the fix; None where none is. torchvision's ImageFolder
    walks into hidden folders and reads every file with an image extension as an image of that class:
    thumbnails and stray copies trained on (or tested on) unsaid, and a macOS ``._`` file, no image at all,
    failing only when it is decoded (mid-epoch for an ImageNet folder). Hidden folders without an image
    change nothing and are not named. A string test per path: no stat, cheap for ImageNet's 1.3M."""
    prefix = len(os.path.join(os.path.expanduser(str(root)), ""))
    marker = os.sep + "."
    hidden = [path[prefix:] for path, _ in samples if marker in path[prefix:]]
    if not hidden:
        return None
    return (f"{root}: {len(hidden)} image file(s) lie in hidden folders inside class folders, or are hidden files "
            f"({', '.join(hidden[:3])}{' and more' if len(hidden) > 3 else ''}), which would be read as images "
            "of their class (as torchvision's ImageFolder reads them): move them out of the class folders (or, for "
            "images of the class, out of the hidden folder, or rename them without the leading '.')")


def repeated_folders_problem(root, samples) -> Optional[str]:
    """Why the ``samples`` of the split folder ``root`` cannot be read as they are where one folder of images is
    reached by two paths through folder links (torchvision's ``make_dataset`` follows them): a link to a folder
    above it (``train/cat/loop -> ..``: walked again and again, until the system's limit on links in a path, some
    40 times), or a class's folder linked into another class; its images would be read as many times, under
    each class it is reached from. Naming the folder, its paths and the fix; None where no folder is reached
    twice. A realpath per folder holding images (ImageNet's 1,000), no stat per file."""
    folders = dict.fromkeys(path.rpartition(os.sep)[0] for path, _ in samples)
    by_real: dict = {}
    for folder in folders:
        by_real.setdefault(os.path.realpath(folder), []).append(folder)
    repeated = [(real, paths) for real, paths in by_real.items() if len(paths) > 1]
    if not repeated:
        return None
    real, paths = repeated[0]
    prefix = len(os.path.join(os.path.expanduser(str(root)), ""))
    shown = ", ".join(p[prefix:] for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return (f"{root}: the folder of images {real} is reached by {len(paths)} paths through folder links ({shown}"
            f"{f'; {len(repeated) - 1} more folder(s) alike' if len(repeated) > 1 else ''}), so its images would be "
            "read once for each (as torchvision's ImageFolder, which follows links, reads them), under the class of "
            "each: remove the link that leads back to a folder above it or into another class's folder")


def broken_image_links_problem(root, samples) -> Optional[str]:
    """Why the ``samples`` of the split folder ``root`` cannot be read where an image file is a link to no file
    (``train/cat/0.jpg -> /mnt/pool/0.jpg``, a disk not mounted, a pool moved since it was linked), naming a few
    and the fix; None where none is. torchvision's ``make_dataset`` lists such a link as an image, so it failed only
    when decoded: mid-epoch, or for a test split only once training was over, with a bare FileNotFoundError. One
    listing of each folder holding images (entry types from the listing, no stat per file), a stat per link."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    broken = []
    for folder in dict.fromkeys(path.rpartition(os.sep)[0] for path, _ in samples):
        with os.scandir(folder) as entries:
            broken += [e.path for e in entries if e.is_symlink() and e.name.lower().endswith(IMG_EXTENSIONS)
                       and not e.name.startswith(".") and not os.path.exists(e.path)]
    if not broken:
        return None
    prefix = len(os.path.join(os.path.expanduser(str(root)), ""))
    shown = ", ".join(f"{path[prefix:]} -> {os.readlink(path)!r}" for path in broken[:3])
    return (f"{root}: {len(broken)} image file(s) are links to no file ({shown}{' and more' if len(broken) > 3 else ''}"
            "), which would fail only when read (mid-epoch, or after training for a test split): mount or restore "
            "what they link to, or delete the links")


def check_samples(root, samples) -> None:
    """Refuse (a ValueError naming them and the fix) the ``(path, class)`` ``samples`` that torchvision's
    ``make_dataset`` lists for the split folder ``root`` where they hold a hidden image
    (:func:`hidden_images_problem`), a folder of images reached twice through links
    (:func:`repeated_folders_problem`) or a link to no file (:func:`broken_image_links_problem`)."""
    problem = (hidden_images_problem(root, samples) or repeated_folders_problem(root, samples)
               or broken_image_links_problem(root, samples))
    if problem:
        raise ValueError(problem)


def _real_folders(samples) -> dict:
    """Each folder holding images of ``samples`` (as walked, through links) -> its resolved path (a realpath per
    folder, none per file)."""
    return {folder: os.path.realpath(folder) for folder in dict.fromkeys(path.rpartition(os.sep)[0] for path, _ in samples)}


def _linked_images(folders) -> List[str]:
    """The image files of ``folders`` (as walked) that are links themselves: one listing of each folder, the
    entries' types as the listing gives them (no stat per file where the file system says, as Linux's do)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    linked = []
    for folder in folders:
        with os.scandir(folder) as entries:
            linked += [e.path for e in entries if e.is_symlink() and e.name.lower().endswith(IMG_EXTENSIONS)]
    return linked


def _resolve_file_link(path: str, real_folder) -> str:
    """The file a link ``path`` (in a folder resolving to ``real_folder``) leads to: a readlink, a realpath of the
    folder it names (``real_folder``'s cache: ImageNet's images linked one by one lead into 1,000 folders), an lstat
    where the target is a link again; os.path.realpath would lstat every part of every path."""
    folder = os.path.dirname(path)
    for _ in range(40):  # (the system's own limit on links in a path)
        head, name = os.path.split(os.readlink(path))
        if name in ("", ".", ".."):  # a link to a folder under an image's name: as the system resolves it
            return os.path.realpath(path)
        path = os.path.join(real_folder(os.path.join(folder, head)), name)
        if not os.path.islink(path):
            return path
        folder = os.path.dirname(path)
    return os.path.realpath(path)


def shared_images_problem(train_root, train_samples, test_root, test_samples) -> Optional[str]:
    """Why a test split (its folder ``test_root``, its ``(path, class)`` ``test_samples`` as torchvision's
    ``make_dataset`` lists them) cannot be read beside the train split where the two read the same images through
    links: a class folder of each linked to one outside folder (``train/cat -> /data/cats``, ``val/cat ->
    /data/cats``), one linked into the other split, or image files linked one by one from both. Test accuracy would
    be measured on training images. Naming the class folders (or files) shared, first few, and the fix; None where
    the splits share none. The folders compare by their realpaths (a few thousand for ImageNet); files only where
    either split holds file links: one listing of each folder to find them (no stat per file), a readlink each."""
    real_train, real_test = _real_folders(train_samples), _real_folders(test_samples)
    test_of = {}
    for folder, real in real_test.items():
        test_of.setdefault(real, folder)
    shared = [(folder, test_of[real]) for folder, real in real_train.items() if real in test_of]
    what = "class folder(s)"
    if not shared:
        linked_train, linked_test = _linked_images(real_train), _linked_images(real_test)
        if not (linked_train or linked_test):
            return None
        cache: dict = {}

        def real_folder(folder):
            if folder not in cache:
                cache[folder] = os.path.realpath(folder)
            return cache[folder]

        def real_files(samples, real_folders, linked):
            linked = {path: _resolve_file_link(path, real_folder) for path in linked}
            found = {}
            for path, _ in samples:
                folder, _, name = path.rpartition(os.sep)
                found.setdefault(linked.get(path) or os.path.join(real_folders[folder], name), path)
            return found

        in_test = real_files(test_samples, real_test, linked_test)
        shared = [(path, in_test[real]) for real, path in real_files(train_samples, real_train, linked_train).items()
                  if real in in_test]
        if not shared:
            return None
        what = "image file(s)"
    cut_train = len(os.path.join(os.path.expanduser(str(train_root)), ""))
    cut_test = len(os.path.join(os.path.expanduser(str(test_root)), ""))
    shown = "; ".join(f"{a[cut_train:]} and {b[cut_test:]} are {os.path.realpath(a)}" for a, b in shared[:3])
    more = f"; and {len(shared) - 3} more" if len(shared) > 3 else ""
    return (f"{train_root} and {test_root} share {len(shared)} {what} through links ({shown}{more}): test accuracy "
            "would be measured on training images: give the test split images of its own (kept apart from the train "
            "split's), or remove the links that lead both splits to the same images")


def check_splits_apart(train_root, train_samples, test_root, test_samples) -> None:
    """Refuse (a ValueError, :func:`shared_images_problem`) a test split that reads images of the train split."""
    problem = shared_images_problem(train_root, train_samples, test_root, test_samples)
    if problem:
        raise ValueError(problem)


def broken_links_problem(root) -> Optional[str]:
    """Why ``root`` (a split's folder) cannot be read as classes where it holds a link to a folder that is not
    there (a class kept on a disk that is not mounted, a folder moved since it was linked), naming it and the
    fix; None where it holds none. torchvision's ImageFolder passes such a link over unsaid: a class missing,
    every label after it shifted by one (in both splits alike, so no comparison of their classes tells). A hidden
    link is no class (were it a folder, it would be refused as hidden) and is passed over as ImageFolder passes it:
    Emacs's lock of a file being edited (``.#notes.txt``) is such a link, to no file by design."""
    broken = sorted(e.name for e in os.scandir(root)
                    if e.is_symlink() and not e.name.startswith(".") and not os.path.exists(e.path))
    if not broken:
        return None
    return (f"{root} holds the link(s) {broken[:5]}{' and more' if len(broken) > 5 else ''} to no folder (to "
            f"{os.readlink(os.path.join(root, broken[0]))!r}, not found), which torchvision's ImageFolder would pass "
            "over, a class missing and the labels after it shifted: mount or restore what they link to, or delete the "
            "links")


def split_folder_problem(root) -> Optional[str]:
    """Why the split folder ``root`` cannot be read as classes (:func:`hidden_folders_problem`,
    :func:`broken_links_problem`), or None."""
    return hidden_folders_problem(root) or broken_links_problem(root)


def unicode_form_hint(only_train, only_test) -> str:
    """A hint for class folders found in one split only whose names differ from the other split's only in their
    Unicode form (``café`` composed in one, ``cafe`` and a combining accent in the other: copied from macOS,
    which decomposes names, or from two archives): the names print alike, so the refusal says why they differ
    and the fix. "" where no name is so."""
    import unicodedata

    nfc = {unicodedata.normalize("NFC", c): c for c in only_train}
    pairs = [(nfc[unicodedata.normalize("NFC", c)], c) for c in sorted(only_test) if unicodedata.normalize("NFC", c) in nfc]
    if not pairs:
        return ""
    shown = ", ".join(f"{ascii(a)} in train, {ascii(b)} in the other" for a, b in pairs[:3])
    return (f"; {shown}: the names differ only in their Unicode form (composed "
            "NFC in one, decomposed NFD in the other, as macOS writes them): rename the folders of one split to the "
            "other's form (convmv -r --nfc --notest FOLDER, say)")


def _classes(root: Path) -> List[str]:
    """The class folders of ``root``, sorted as ImageFolder sorts them; a hidden folder is refused
    (:func:`hidden_folders_problem`), never read as a class, as is a link to no folder
    (:func:`broken_links_problem`), never passed over."""
    problem = split_folder_problem(root)
    if problem:
        raise ValueError(problem)
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"{root} has no class sub-folders (expected ImageFolder layout root/<class>/*.jpg)")
    return classes


def _height_width(path) -> Tuple[int, int]:
    """An image's size from its header (PIL decodes no pixel until asked)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size[1], im.size[0]


def folder_facts(root: Path) -> Tuple[List[str], Tuple[int, int, int]]:
    """The classes and the ``(3, H, W)`` image shape that :func:`decode_folder` gives ``root``, known
    without decoding: the class folders' names and the header of the image it sizes the tensor by
    (the first class's first file: only that class's files are listed)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    classes = _classes(root)
    samples = make_dataset(str(root), {classes[0]: 0}, extensions=IMG_EXTENSIONS)
    check_samples(root, samples)  # (the builder names them; the facts are unknown meanwhile)
    return classes, (3, *_height_width(samples[0][0]))


def decode_folder(root: Path, desc: str = "decoding", progress: Optional[bool] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """All images of ``root`` as ``(N, C, H, W)`` uint8 RGB, labels ``(N,)`` and class names.
    ``progress``: a bar (True), none (False), or a bar only when stderr is a terminal (None). Each image is
    read by :func:`load_rgb`."""
    from tqdm.auto import tqdm

    from ..cli import show_progress

    classes, samples = scan_folder(root)
    h, w = _height_width(samples[0][0])
    images = torch.empty((len(samples), 3, h, w), dtype=torch.uint8)
    for i, (path, _) in enumerate(tqdm(samples, desc=desc, unit="img", mininterval=1.0,
                                           disable=not show_progress(progress))):
        arr = np.array(load_rgb(path))  # a writable copy
        if arr.shape[:2] != (h, w):
            raise ValueError(f"{path} is {arr.shape[1]}x{arr.shape[0]}, not {w}x{h} as {samples[0][0]} is: the images of "
                             "this folder are decoded unresized, all at the first one's size; resize them to one size, "
                             "or read the folder with --dataset folder, which resizes and crops each image "
                             f"(--dataset-kw image_size={min(h, w)} --dataset-kw resize={min(h, w)}; docs/data.md)")
        images[i] = torch.from_numpy(arr).permute(2, 0, 1)
    labels = torch.tensor([c for _, c in samples], dtype=torch.long)
    return images, labels, classes


def _fingerprint(root: Path, samples) -> str:
    """A digest of every file's relative path, size, modification and change times and class: a folder
    whose files were replaced, re-encoded or relabelled gets another one (a stat per file, no decoding;
    the times catch a file rewritten at the same size, as an uncompressed BMP or PPM is, the change time
    one copied with its modification time kept, ``cp -p`` or ``rsync -a``, which no one can set back)."""
    h = hashlib.sha256()
    for path, c in samples:
        st = os.stat(path)
        # (os.fsencode: a file name that is no UTF-8, read by Python as surrogates, is hashed as its bytes)
        h.update(os.fsencode(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{c}\n"))
    return h.hexdigest()


def _checksum(images: torch.Tensor, labels: torch.Tensor) -> int:
    """CRC-32 of the tensors' bytes (about 20 ms for CIFAR's train split)."""
    crc = zlib.crc32(memoryview(images.contiguous().numpy()).cast("B"))
    return zlib.crc32(memoryview(labels.contiguous().numpy()).cast("B"), crc)


def _read_cache(cache: Path, meta: dict, labels: torch.Tensor) -> Tuple[Optional[tuple], str]:
    """``((images, labels), "")`` when ``cache`` holds exactly this folder's decoded images, else
    ``(None, why not)``. Nothing in the file is trusted unchecked: a truncated or foreign file,
    another folder's meta, tensors of the wrong type or size, labels other than the folder's,
    or bytes that fail the checksum (torch.load does not notice a flipped byte) all say no."""
    if not cache.is_file():
        return None, "no cache yet"
    try:
        blob = torch.load(cache, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, ...
        return None, f"unreadable ({type(e).__name__})"
    if not isinstance(blob, dict) or blob.get("meta") != meta:
        return None, "made from other files"
    images, cached_labels = blob.get("images"), blob.get("labels")
    if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4
            and images.shape[0] == meta["count"] and isinstance(cached_labels, torch.Tensor)
            and torch.equal(cached_labels, labels)):
        return None, "wrong tensors inside"
    if blob.get("crc32") != _checksum(images, cached_labels):
        return None, "checksum mismatch (corrupt)"
    return (images, cached_labels), ""


def cache_file(root: Path, cache_name: str, cache_dir: Optional[Path] = None) -> Path:
    """Where :func:`cached_folder_tensor` caches ``root``: ``<cache_dir>/<cache_name>-<key>.pt``, the key
    a short hash of ``root``'s resolved path, so that two copies in folders of the same name
    (``/a/cifar10-jpeg``, ``/b/cifar10-jpeg``) never share, nor take turns rewriting, one file."""
    key = hashlib.sha256(os.fsencode(str(Path(root).resolve()))).hexdigest()[:12]  # (a name that is no UTF-8: its bytes)
    return default_cache_dir(cache_dir) / f"{cache_name}-{key}.pt"


@contextmanager
def _building(cache: Path):
    """Held while ``cache`` is checked again and (re)built, once it was found missing or stale: the
    processes of one launch that load the same folder at once take turns (the first decodes, the others
    then read its file) instead of each decoding it; a valid cache is read without it. Yields whether this
    process waited on another that held it (then that one built, or failed to build, first). Where no lock
    can be taken (no fcntl, a cache folder not writable) it holds none and yields False."""
    try:
        import fcntl

        cache.parent.mkdir(parents=True, exist_ok=True)
        fd = open(cache.parent / f".{cache.name}.lock", "a")
    except (ImportError, OSError):
        fd = None
    if fd is None:  # (yielded outside the except: an error while building is not chained to the lock's)
        yield False
        return
    with fd:
        waited = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another process builds it: wait for it
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: each process builds its own, as before
            pass
        yield waited  # (closing the file releases the lock)


def _adopt_legacy(legacy: Path, cache: Path, meta: dict, labels: torch.Tensor) -> Optional[tuple]:
    """The tensors of ``legacy`` (the cache's name before it was keyed on the folder's path) where
    that file holds exactly this folder's images (checked as any cache is), then filed under
    ``cache`` as well (a hard link, else a copy; the old file stays for older versions): no decoding
    anew after an upgrade. None where it holds anything else. A cache folder that takes no new file (a
    shared, read-only one) files nothing: the old file is read, as the former version read it."""
    found, _ = _read_cache(legacy, meta, labels)
    if found is None:
        return None
    tmp = cache.parent / temp_name(cache.name, os.getpid(), secrets.token_hex(4))
    try:
        os.link(legacy, tmp)
        os.replace(tmp, cache)
    except OSError:  # no hard links there: a copy
        try:
            tmp.unlink(missing_ok=True)
            atomic_torch_save({"meta": meta, "images": found[0], "labels": found[1],
                               "crc32": _checksum(found[0], found[1])}, cache)
        except OSError:  # no new file there either (read-only, full): the old one serves, read again next time
            pass
    return found


def cached_folder_tensor(root: Path, cache_name: str, cache_dir: Optional[Path] = None,
                         progress: Optional[bool] = None):
    """``decode_folder(root)``, read from its cache file (:func:`cache_file`: ``cache_name`` and a key
    of ``root``'s path) when that file holds exactly this folder's images (checked, see
    :func:`_read_cache`); otherwise decoded afresh (with a progress bar as ``progress`` says, see
    :func:`decode_folder`) and the cache rewritten atomically. A valid cache is read without waiting
    on anyone (the processes of one launch read it at once); processes building the same cache at
    once take turns (:func:`_building`): one decodes, the others read what it wrote (where it wrote no valid
    one, its save failed say, those waiting decode at once, each for itself, not one after another). A cache folder
    that takes no new file (read-only, a file in its place) is found before decoding: the images are
    decoded and used uncached, with one warning naming the folder and the fix (:func:`_warn_uncached`);
    a save that fails after decoding (a disk filled meanwhile) costs the same warning, not the images."""
    root = Path(root).resolve()
    cache = cache_file(root, cache_name, cache_dir)
    classes, samples = scan_folder(root)
    meta = {"root": str(root), "count": len(samples), "classes": classes, "files": _fingerprint(root, samples)}
    labels = torch.tensor([c for _, c in samples], dtype=torch.long)
    found, why = _read_cache_or_legacy(cache, cache_name, meta, labels)
    if found is not None:  # (a cache is replaced atomically: a reader never sees half of one)
        return found[0], found[1], classes
    refused = _unwritable(cache.parent)
    if refused is not None:
        _warn_uncached(cache.parent, refused, explicit=cache_dir is not None)
        return decode_folder(root, desc=f"decoding {cache_name} ({why}; not cached)", progress=progress)
    with _building(cache) as waited:
        found, why = _read_cache_or_legacy(cache, cache_name, meta, labels)  # (built meanwhile by another)
        if found is not None:
            return found[0], found[1], classes
        if not waited:
            return _decode_and_save(root, cache, cache_name, meta, why, cache_dir is not None, progress)
    # the process ahead left no valid cache (its save failed on a full disk, it stopped, or the folder changed
    # since): decoded here without the lock, so the processes still waiting do not decode one after another
    return _decode_and_save(root, cache, cache_name, meta, why, cache_dir is not None, progress)


def _decode_and_save(root: Path, cache: Path, cache_name: str, meta: dict, why: str, explicit: bool,
                     progress: Optional[bool]) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """:func:`decode_folder` of ``root``, then saved to ``cache`` atomically (never half-written; a failed
    save leaves no partial file); a save that fails (a disk that filled meanwhile) costs a warning
    (:func:`_warn_uncached`, ``explicit``: the folder was given as ``cache_dir=``), not the images."""
    images, labels, classes = decode_folder(root, desc=f"decoding {cache_name} ({why}; caching to {cache})",
                                           progress=progress)
    try:  # readable by others (the cache is meant to be shared), never half-written
        atomic_torch_save({"meta": meta, "images": images, "labels": labels,
                           "crc32": _checksum(images, labels)}, cache)
    except OSError as e:  # a disk that filled meanwhile: the decoded images still serve
        _warn_uncached(cache.parent, e, explicit=explicit)
    return images, labels, classes


def _read_cache_or_legacy(cache: Path, cache_name: str, meta: dict, labels: torch.Tensor
                          ) -> Tuple[Optional[tuple], str]:
    """:func:`_read_cache` of ``cache``, else, where there is none yet, the cache under its former name
    (:func:`_adopt_legacy`)."""
    found, why = _read_cache(cache, meta, labels)
    if found is None and why == "no cache yet":
        found = _adopt_legacy(cache.parent / f"{cache_name}.pt", cache, meta, labels)
    return found, why


def _unwritable(folder: Path) -> Optional[OSError]:
    """The error that keeps a new file out of ``folder`` (made where missing): read-only, a file where it
    or a parent folder should be, a full disk; None where a file can be made there (one is, then removed)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)  # (a name of its own: O_EXCL, random)
    except OSError as e:
        return e
    try:
        os.close(fd)
    finally:
        try:
            os.unlink(probe)
        except OSError:  # (a folder that lets no file go, append-only: the empty probe stays, the load goes on)
            pass
    return None


# cache folders already warned of as taking no new file: once a process (a copy's train and test splits alike)
_UNCACHED_WARNED: set = set()


def _warn_uncached(folder: Path, error: OSError, explicit: bool) -> None:
    """Warn (once a process for ``folder``) that decoded images could not be cached in ``folder``
    (``error`` says why), so each load decodes them again, naming the fix: ``cache_dir=`` where the
    folder was given (``explicit``), else the ``ADAPTIVE_CACHE`` environment variable."""
    from ..warn import warn_user

    if str(folder) in _UNCACHED_WARNED:
        return
    _UNCACHED_WARNED.add(str(folder))
    fix = ("give cache_dir= a folder this process may write" if explicit else
           "point the ADAPTIVE_CACHE environment variable at a folder this process may write")
    warn_user(f"the cache folder {folder} takes no new file ({type(error).__name__}: {error.strerror or error}): "
              f"the decoded images are used without being cached, and are decoded again at each load; {fix}")
