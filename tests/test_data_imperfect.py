"""Data loading as a user with imperfect data meets it: stray folders, missing files, no internet.
Every test builds a tiny synthetic copy in tmp_path (never the shared data)."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

from adaptive.data import get_datasets



@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """Every test's caches (download locks, decoded images) in a folder of its own, beside its tmp_path: the
    download tests wrote their locks into the user's ~/.cache/adaptive (a test that sets ADAPTIVE_CACHE
    itself wins)."""
    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path_factory.mktemp("cache")))


def test_the_download_tests_leave_the_users_cache_alone(tmp_path):
    """A download of these tests took its lock in ~/.cache/adaptive, the user's cache folder."""
    import os

    import adaptive.paths as paths

    with paths.downloading("mnist", tmp_path / "data"):
        pass
    cache = paths.cache_dir()
    assert os.environ["ADAPTIVE_CACHE"] == str(cache) and cache != paths.Path.home() / ".cache" / "adaptive"
    assert str(cache).startswith(str(tmp_path.parent.parent)) and (cache / ".download-mnist.lock").is_file()


CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _images(folder, n=2, size=8):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _cifar_copy(root, classes=CIFAR_CLASSES):
    for split in ("train", "test"):
        for c in classes:
            _images(root / "cifar10-jpeg" / split / c)
    return root


def test_cifar_test_split_with_a_hidden_class_folder_is_refused_not_read_with_labels_shifted(tmp_path, monkeypatch):
    """A hidden folder with images in test/ only (a '.trash' say) is a class to the cache's scan, which
    sorts it first: every test label came out one above its class. The train/test comparison ignored
    hidden folders, so nothing was said; it is now refused before any training, naming the folder (as any
    hidden folder is, test_a_hidden_folder_in_train_is_refused_by_every_image_folder_loader)."""
    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    _images(_cifar_copy(tmp_path) / "cifar10-jpeg" / "test" / ".trash")
    with pytest.raises(ValueError, match=r"test holds the hidden folder\(s\) \['\.trash'\].*move them out of"):
        get_datasets("cifar10", data_dir=tmp_path, holdout=0)


@pytest.mark.parametrize("stray", ["zebra"])
def test_cifar_class_folder_without_images_is_named_with_its_path_and_the_fix(tmp_path, monkeypatch, stray):
    """torchvision's own error ('Found no valid file for the classes zebra') named neither the folder nor the fix. A
    folder that is none of CIFAR-10's classes is refused as such (wherever the copy is found), naming it empty; an
    empty class folder of the copy of another dataset (--dataset folder) is refused by name as before."""
    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    _cifar_copy(tmp_path)
    for split in ("train", "test"):
        (tmp_path / "cifar10-jpeg" / split / stray).mkdir()
    with pytest.raises(ValueError, match=rf"cifar10-jpeg \(found for cifar10\) is not a CIFAR-10 copy: its train/ holds 11 "
                                         rf"class folder\(s\), with {stray} \({stray}: empty, delete it\)"):
        get_datasets("cifar10", data_dir=tmp_path, holdout=0)
    with pytest.raises(FileNotFoundError, match=rf"cifar10-jpeg/train: Found no valid file for the classes {stray}\..*"
                                                r"add images to the folders named, or delete those folders"):
        get_datasets("folder", data_dir=tmp_path / "cifar10-jpeg", holdout=0)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_a_download_without_internet_names_data_dir_and_adaptive_data_and_waits_bounded(tmp_path, monkeypatch, name):
    """download=True on a machine without internet raised torchvision's bare URLError (cifar10) or
    'Error downloading train-images-idx3-ubyte.gz' (mnist), naming no way to give the data; and it
    waited on the network with no timeout (a firewall dropping packets hangs it)."""
    import socket
    import urllib.error
    import urllib.request

    import adaptive.paths as paths

    timeouts = []

    def offline(*args, **kw):
        timeouts.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.delenv("ADAPTIVE_DATA", raising=False)
    with pytest.raises(paths.DatasetNotFoundError, match=r"could not be downloaded.*Name or service not known.*"
                                                         r"--data-dir \(or the ADAPTIVE_DATA environment variable\)"):
        get_datasets(name, data_dir=tmp_path, download=True, holdout=0)
    assert timeouts and all(t == paths.DOWNLOAD_TIMEOUT_S for t in timeouts)
    assert socket.getdefaulttimeout() is None  # given back as it was


@pytest.mark.parametrize("error", [
    PermissionError(13, "Permission denied", "/data/mnist/MNIST/raw/train-images-idx3-ubyte.gz"),
    OSError(28, "No space left on device"),
    OSError(5, "Input/output error", "/data/mnist/MNIST/raw/train-images-idx3-ubyte"),
    RuntimeError("Unknown compression or archive type: '.zip'."),
])
def test_a_disk_or_read_error_during_a_download_is_not_called_a_lack_of_internet(tmp_path, error):
    """Every OSError and RuntimeError inside the download became "could not be downloaded ... without
    internet": a full disk, a folder it may not write, a read error after the download. They are raised with
    their own message now (one with no file named, ENOSPC on a write, names the folder)."""
    import adaptive.paths as paths

    with pytest.raises(type(error)) as caught, paths.downloading("mnist", tmp_path):
        raise error
    assert not isinstance(caught.value, paths.DatasetNotFoundError)
    said = str(caught.value)
    assert "internet" not in said and error.args[-1 if isinstance(error, RuntimeError) else 1] in said
    if isinstance(error, OSError) and error.filename is None:
        assert caught.value.errno == 28 and str(tmp_path) in said and "'mnist'" in said
    assert _socket_timeout_restored()


@pytest.mark.parametrize("error", [
    "urlerror", TimeoutError("timed out"), ConnectionResetError(104, "Connection reset by peer"),
    "httperror", RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://x/, got:\n..."),
])
def test_a_network_failure_during_a_download_still_names_data_dir(tmp_path, error):
    """The network failures keep the message that names --data-dir and ADAPTIVE_DATA."""
    import urllib.error

    import adaptive.paths as paths

    if error == "urlerror":
        error = urllib.error.URLError("[Errno -2] Name or service not known")
    elif error == "httperror":
        error = urllib.error.HTTPError("https://x/", 503, "Service Unavailable", None, None)
    with pytest.raises(paths.DatasetNotFoundError, match=r"could not be downloaded.*ADAPTIVE_DATA"):
        with paths.downloading("mnist", tmp_path):
            raise error
    assert _socket_timeout_restored()


def _socket_timeout_restored():
    import socket

    return socket.getdefaulttimeout() is None


def _mnist_npz(path, **arrays):
    path.parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    full = dict(x_train=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), y_train=np.arange(20) % 10,
                x_test=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), y_test=np.arange(10))
    full.update(arrays)
    np.savez(path, **{k: v for k, v in full.items() if v is not None})


def test_mnist_npz_without_its_test_split_is_refused_before_training_naming_what_it_lacks(tmp_path):
    """It loaded, trained, and failed when the test split was read: KeyError 'x_test is not a file in the archive'."""
    _mnist_npz(tmp_path / "mnist" / "mnist.npz", x_test=None, y_test=None)
    with pytest.raises(ValueError, match=r"mnist\.npz lacks the arrays \['x_test', 'y_test'\].*replace it"):
        get_datasets("mnist", data_dir=tmp_path, holdout=0)


def test_mnist_npz_of_flat_images_is_refused_not_read_as_1x784_images(tmp_path):
    """Flat (N, 784) images came out as (1, 1, 784) examples of a dataset that says (1, 28, 28)."""
    _mnist_npz(tmp_path / "mnist" / "mnist.npz", x_train=np.zeros((20, 784), np.uint8))
    with pytest.raises(ValueError, match=r"train split needs images of shape \(N, 28, 28\).*got \(20, 784\)"):
        get_datasets("mnist", data_dir=tmp_path, holdout=0)


def _idx(array):
    return bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">i4").tobytes() + array.astype(np.uint8).tobytes()


def _mnist_raw(raw, splits=("train", "t10k"), gz=False):
    import gzip

    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in splits:
        n = 20 if prefix == "train" else 10
        for kind, a in (("images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28))), ("labels-idx1-ubyte", np.arange(n) % 10)):
            data = _idx(a)
            (raw / (f"{prefix}-{kind}" + ".gz" * gz)).write_bytes(gzip.compress(data) if gz else data)


def test_mnist_raw_folder_of_gzipped_idx_files_reads(tmp_path):
    """torchvision's raw folder holding only the .gz files (as published) said 'Dataset not found. You
    can use download=True to download it', naming no file."""
    _mnist_raw(tmp_path / "mnist" / "MNIST" / "raw", gz=True)
    s = get_datasets("mnist", data_dir=tmp_path, holdout=0)
    assert (len(s.train), len(s.test)) == (20, 10) and s.train[3][0].shape == (1, 28, 28) and s.train[3][1] == 3


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_mnist_raw_labels_above_9_are_refused_before_training(tmp_path, split):
    """As mnist.npz's: a raw label of 10 was taken (the test split's failed the run's report with a bare IndexError)."""
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    _mnist_raw(raw)
    n = 20 if split == "train" else 10
    (raw / f"{split}-labels-idx1-ubyte").write_bytes(_idx(np.arange(n) % 10 + 1))
    name = "train" if split == "train" else "test"
    with pytest.raises(ValueError, match=rf"MNIST/raw: its {name} labels run from 1 to 10; MNIST.s are the digits 0..9"):
        get_datasets("mnist", data_dir=tmp_path, holdout=0)


def test_mnist_raw_folder_without_the_test_files_names_them(tmp_path):
    _mnist_raw(tmp_path / "mnist" / "MNIST" / "raw", splits=("train",))
    with pytest.raises(FileNotFoundError, match=r"raw folder .* lacks t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"):
        get_datasets("mnist", data_dir=tmp_path, holdout=0)


@pytest.mark.parametrize("env", ["nowhere", "a_file"])
def test_adaptive_data_naming_no_folder_is_said_not_passed_over_silently(tmp_path, monkeypatch, env):
    """ADAPTIVE_DATA set to a typo'd folder or a file was skipped without a word: the data came from
    the next default folder, which the user may not know holds another copy."""
    import adaptive.paths as paths

    (tmp_path / "a_file").write_text("x")
    _mnist_npz(tmp_path / "shared" / "mnist" / "mnist.npz")
    monkeypatch.setattr(paths, "SHARED_DATA", tmp_path / "shared")
    monkeypatch.setattr(paths, "IN_CHECKOUT", True)
    monkeypatch.setenv("ADAPTIVE_DATA", str(tmp_path / env))
    with pytest.warns(UserWarning, match=rf"ADAPTIVE_DATA=.*{env} is (a file, not a folder|no such folder): dataset "
                                         r"'mnist' was read from .*shared instead"):
        assert len(get_datasets("mnist", holdout=0).train) == 20


@pytest.mark.parametrize("cut", ["truncated", "no_gzip"])
def test_mnist_raw_folder_with_a_cut_short_gz_file_is_refused_naming_it(tmp_path, cut):
    """A .gz idx file cut short (an interrupted download) or no gzip at all raised gzip's bare EOFError
    ('Compressed file ended before the end-of-stream marker was reached') or BadGzipFile, naming no file."""
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    _mnist_raw(raw, gz=True)
    bad = raw / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-50] if cut == "truncated" else b"not a gzip file at all")
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz cannot be unzipped .*replace it with a good copy"):
        get_datasets("mnist", data_dir=tmp_path, holdout=0)


@pytest.mark.parametrize("layout", ["own folder", "torchvision MNIST/raw"])
def test_adaptive_data_holding_the_data_in_a_layout_not_looked_for_is_said_not_passed_over(tmp_path, monkeypatch,
                                                                                           layout):
    """ADAPTIVE_DATA at a folder holding the data where it is not looked for (a CIFAR-10 copy itself, which
    --data-dir reads; torchvision's own MNIST/raw) was passed over without a word, the shared copy read
    instead: the same folder gave other data as --data-dir and as ADAPTIVE_DATA."""
    import adaptive.paths as paths

    name = "cifar10" if layout == "own folder" else "mnist"
    if name == "cifar10":
        for split in ("train", "test"):
            for c in CIFAR_CLASSES:
                _images(tmp_path / "mine" / split / c)
                _images(tmp_path / "shared" / "cifar10-jpeg" / split / c)
    else:
        _mnist_raw(tmp_path / "mine" / "MNIST" / "raw")
        _mnist_npz(tmp_path / "shared" / "mnist" / "mnist.npz")
    monkeypatch.setattr(paths, "SHARED_DATA", tmp_path / "shared")
    monkeypatch.setattr(paths, "IN_CHECKOUT", True)
    monkeypatch.setattr(paths, "_ENV_WARNED", set())
    monkeypatch.setenv("ADAPTIVE_DATA", str(tmp_path / "mine"))
    with pytest.warns(UserWarning, match=rf"ADAPTIVE_DATA=.*mine holds no dataset '{name}' where it is looked for "
                                         r"\(.*\): it was read from .*shared instead; lay it out so under ADAPTIVE_DATA, "
                                         r"or give its folder as --data-dir"):
        get_datasets(name, holdout=0)


def _env_typo_and_shared_copy(tmp_path, monkeypatch):
    import adaptive.paths as paths

    monkeypatch.setattr(paths, "SHARED_DATA", tmp_path / "shared")
    monkeypatch.setattr(paths, "IN_CHECKOUT", True)
    monkeypatch.setenv("ADAPTIVE_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))


def test_adaptive_data_naming_no_folder_is_not_warned_of_where_data_dir_is_given(tmp_path, monkeypatch):
    """--data-dir is the only folder read: a stray ADAPTIVE_DATA was said to have been passed over
    ('... was read from DATA_DIR instead'), though the data came from where the user asked."""
    import warnings

    _env_typo_and_shared_copy(tmp_path, monkeypatch)
    _mnist_npz(tmp_path / "mine" / "mnist" / "mnist.npz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(get_datasets("mnist", data_dir=tmp_path / "mine", holdout=0).train) == 20
    assert not [w for w in caught if "ADAPTIVE_DATA" in str(w.message)]


def test_adaptive_data_naming_no_folder_is_warned_of_once_though_the_facts_and_the_builder_look(tmp_path, monkeypatch):
    """The recipes ask a dataset's facts before building it, and both look for the data: the warning
    was printed twice (cifar10), under any warnings filter that shows it at all."""
    import warnings

    from adaptive.data import dataset_facts

    _env_typo_and_shared_copy(tmp_path, monkeypatch)
    for split in ("train", "test"):
        for c in CIFAR_CLASSES:
            _images(tmp_path / "shared" / "cifar10-jpeg" / split / c)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset_facts("cifar10")
        get_datasets("cifar10", holdout=0)
    assert [str(w.message).split(":")[0] for w in caught if "ADAPTIVE_DATA" in str(w.message)] == [
        f"ADAPTIVE_DATA={tmp_path / 'nowhere'} is no such folder"]


@pytest.mark.parametrize("name", ["cifar10", "imagenet", "folder"])
def test_a_hidden_folder_in_train_is_refused_by_every_image_folder_loader(tmp_path, monkeypatch, name):
    """A hidden folder with images in train/ and the test split alike (a '.Trash-1000', a synced '.cache')
    was read as a class by torchvision's ImageFolder (imagenet, folder) and by CIFAR's cache: one class more,
    sorted first, every label shifted by one, nothing said. Every ImageFolder loader now refuses it, naming it."""
    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    if name == "cifar10":
        root, splits, kw = _cifar_copy(tmp_path) / "cifar10-jpeg", ("train", "test"), {}
    else:
        root, splits = (tmp_path / "imagenet" if name == "imagenet" else tmp_path), ("train", "val")
        for split in splits:
            for c in ("cat", "dog"):
                _images(root / split / c)
        kw = {"image_size": 8, "resize": 8}
    for split in splits:
        _images(root / split / ".hid")
    with pytest.raises(ValueError, match=rf"{re.escape(str(root / 'train'))} holds the hidden folder\(s\) \['\.hid'\], "
                                         r"which would be read as classes.*move them out of .*rename its folder"):
        get_datasets(name, data_dir=tmp_path, holdout=0, **kw)
    from adaptive.data import dataset_facts

    assert dataset_facts(name, data_dir=tmp_path, **kw) is None  # unknown: the builder names the folder


@pytest.mark.parametrize("fault", ["flat", "labels_short", "cut_short_raw", "flat_raw_gz"])
def test_mnist_test_split_that_is_flat_or_cut_short_is_refused_before_training(tmp_path, monkeypatch, fault):
    """Only the test split's presence was checked up front: a flat x_test, labels fewer than images, or a
    cut-short idx file loaded, trained, and failed when the test split was first read, after training. Its
    shapes and sizes are now checked from the headers when the data is found, naming the file."""
    import adaptive.data.mnist as M

    if fault in ("flat", "labels_short"):
        bad = tmp_path / "mnist" / "mnist.npz"
        _mnist_npz(bad, **({"x_test": np.zeros((10, 784), np.uint8)} if fault == "flat" else {"y_test": np.arange(9)}))
        said = r"mnist\.npz: MNIST's test split needs images of shape \(N, 28, 28\) and N labels, got " + (
            r"\(10, 784\) and \(10,\)" if fault == "flat" else r"\(10, 28, 28\) and \(9,\)")
    else:
        raw = tmp_path / "mnist" / "MNIST" / "raw"
        _mnist_raw(raw, gz=fault.endswith("gz"))
        if fault == "cut_short_raw":
            bad = raw / "t10k-images-idx3-ubyte"
            bad.write_bytes(bad.read_bytes()[:-28])
            said = r"t10k-images-idx3-ubyte is not a whole idx file.*replace it"
        else:
            import gzip

            bad = raw / "t10k-images-idx3-ubyte.gz"
            bad.write_bytes(gzip.compress(_idx(np.zeros((10, 784), np.uint8))))
            said = r"raw: MNIST's test split needs images of shape \(N, 28, 28\).*got \(10, 784\)"
    monkeypatch.setattr(M, "_arrays", lambda path, split: pytest.fail("a split read before the checks"))
    with pytest.raises(ValueError, match=said):
        get_datasets("mnist", data_dir=tmp_path, holdout=0)


def test_mnist_npz_whose_test_array_is_cut_short_inside_the_archive_is_refused_by_name(tmp_path):
    """An x_test member whose .npy holds fewer bytes than its header's shape (an archive written by a tool
    cut short) is refused from its header and size, before training."""
    import zipfile

    path = tmp_path / "mnist" / "mnist.npz"
    _mnist_npz(path)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["x_test.npy"] = members["x_test.npy"][:-100]
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(ValueError, match=r"mnist\.npz: its array x_test of shape \(10, 28, 28\) does not hold 7840 "
                                         r"values of uint8 \(cut short, or padded\)"):
        get_datasets("mnist", data_dir=tmp_path, holdout=0)


@pytest.mark.parametrize("fault", ["objects", "no_npy_member"])
def test_mnist_npz_test_array_that_numpy_cannot_give_as_numbers_is_refused_before_training_by_name(tmp_path, fault):
    """The up-front header check passed an object-dtype y_test (not unpickled: ValueError 'Object arrays cannot
    be loaded' after training, naming no file) and a y_test member that is no .npy array (numpy's 'the magic
    string is not correct', naming no file). Both are refused by name when the data is found."""
    import zipfile

    path = tmp_path / "mnist" / "mnist.npz"
    if fault == "objects":
        _mnist_npz(path, y_test=np.arange(10).astype(object))
        said = r"mnist\.npz: its array y_test holds object values, not numbers.*replace it"
    else:
        _mnist_npz(path)
        with zipfile.ZipFile(path) as z:
            members = {n: z.read(n) for n in z.namelist()}
        members["y_test.npy"] = b"not an array" * 10
        with zipfile.ZipFile(path, "w") as z:
            for n, data in members.items():
                z.writestr(n, data)
        said = r"mnist\.npz: its member y_test\.npy is no \.npy array.*replace it"
    with pytest.raises(ValueError, match=said):
        get_datasets("mnist", data_dir=tmp_path, holdout=0)


@pytest.mark.parametrize("layout", ["big_endian", "members_without_npy"])
def test_mnist_npz_that_numpy_reads_is_read_whole(tmp_path, layout):
    """Arrays numpy's np.load reads are read: big-endian labels (torch.from_numpy refused them when the test
    split was read, after training), and members named without '.npy' (a zip made by hand: the header check
    looked only for 'x_test.npy', a KeyError naming no file)."""
    import io
    import zipfile

    path = tmp_path / "mnist" / "mnist.npz"
    _mnist_npz(path, y_train=(np.arange(20) % 10).astype(">i8"), y_test=np.arange(10).astype(">i8"))
    if layout == "members_without_npy":
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        with zipfile.ZipFile(path, "w") as z:
            for k, v in arrays.items():
                buf = io.BytesIO()
                np.save(buf, v)
                z.writestr(k, buf.getvalue())
    test = get_datasets("mnist", data_dir=tmp_path, holdout=0).test
    assert sorted(int(test[i][1]) for i in range(len(test))) == list(range(10))


@pytest.mark.parametrize("name, made", [("mnist", "mnist/MNIST/raw"), ("cifar10", "cifar10")])
def test_a_failed_download_takes_away_only_the_empty_folders_it_made(tmp_path, monkeypatch, name, made):
    """A --download that failed (no internet) left the folders torchvision made for it (data/, mnist/MNIST/raw/),
    empty. They go now; a folder that was there before (empty or not) and every file stay."""
    import urllib.error
    import urllib.request

    import adaptive.paths as paths

    def offline(*args, **kw):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    fresh = tmp_path / "fresh" / "data"  # nothing of it there before
    with pytest.raises(paths.DatasetNotFoundError, match="could not be downloaded"):
        get_datasets(name, data_dir=fresh, download=True, holdout=0)
    assert not (tmp_path / "fresh").exists()
    mine = tmp_path / "mine"  # the user's: a folder, an empty folder inside, a file, and the dataset's folder
    (mine / "empty").mkdir(parents=True)
    (mine / made.split("/")[0]).mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(paths.DatasetNotFoundError, match="could not be downloaded"):
        get_datasets(name, data_dir=mine, download=True, holdout=0)
    assert sorted(p.relative_to(mine).as_posix() for p in mine.rglob("*")) == sorted(
        ["empty", made.split("/")[0], "notes.txt"])
    assert (mine / "notes.txt").read_text() == "keep"


def test_a_failed_download_keeps_a_folder_it_made_that_holds_a_file(tmp_path):
    """Only empty folders go: one where the download (or anyone) wrote a file stays, with the file."""
    import adaptive.paths as paths

    root = tmp_path / "data" / "mnist"
    with pytest.raises(RuntimeError, match="boom"):
        with paths.downloading("mnist", root):
            (root / "MNIST" / "raw").mkdir(parents=True)
            (root / "MNIST" / "empty").mkdir()
            (root / "MNIST" / "raw" / "part.gz").write_bytes(b"x")
            raise RuntimeError("boom")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "data", "data/mnist", "data/mnist/MNIST", "data/mnist/MNIST/raw", "data/mnist/MNIST/raw/part.gz"]


def _image_tree(tmp_path, name):
    """A tiny copy for the image-folder loader ``name``: (its split folder root, its splits, its dataset_kw)."""
    if name == "cifar10":
        return _cifar_copy(tmp_path) / "cifar10-jpeg", ("train", "test"), {}
    root = tmp_path / "imagenet" if name == "imagenet" else tmp_path
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            _images(root / split / c)
    return root, ("train", "val"), {"image_size": 8, "resize": 8}


@pytest.mark.parametrize("name", ["cifar10", "imagenet", "folder"])
@pytest.mark.parametrize("where", [".thumbnails/x", "sub/.cache/x", "._x"])
def test_a_hidden_image_inside_a_class_folder_is_refused_by_every_image_folder_loader(tmp_path, monkeypatch, name, where):
    """A hidden folder directly in a split was refused, but one inside a class folder (train/cat/.thumbnails/)
    was walked into as torchvision's ImageFolder walks: its files read as images of that class (thumbnails
    trained on, unsaid), and a macOS '._x.png' file (no image) failed only when decoded, mid-epoch for
    imagenet. Every image-folder loader now refuses such images before any work, naming them."""
    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    root, splits, kw = _image_tree(tmp_path, name)
    cls = sorted(p.name for p in (root / splits[0]).iterdir())[1]
    stray = root / splits[0] / cls / f"{where}.png"
    stray.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(stray)
    with pytest.raises(ValueError, match=rf"{re.escape(str(root / splits[0]))}: 1 image file\(s\) lie in hidden folders "
                                         rf"inside class folders, or are hidden files \({re.escape(cls + '/' + where)}"
                                         r"\.png\).*move them out of the class folders"):
        get_datasets(name, data_dir=tmp_path, holdout=0, **kw)
    (root / splits[0] / cls / ".ipynb_checkpoints").mkdir()  # a hidden folder without an image changes nothing
    (root / splits[0] / cls / ".ipynb_checkpoints" / "a.ipynb").write_text("{}")
    stray.unlink()
    assert len(get_datasets(name, data_dir=tmp_path, holdout=0, **kw).train) == 2 * (10 if name == "cifar10" else 2)


def test_two_processes_downloading_into_one_folder_take_turns(tmp_path, monkeypatch):
    """The processes of one launch each download a missing dataset into the same folder. They did so at
    once: one whose download failed took away the empty folders made since it began, among them the one
    the other had just made for its files (whose writes then failed), and both wrote the same files. They
    take turns now (a lock in the cache folder): the second begins once the first is done, and its failure
    takes away nothing the first made. (Threads stand in for the processes: the lock is on an open file, so
    two opens of it exclude each other within one process too.)"""
    import threading

    import adaptive.paths as paths

    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data" / "mnist"
    began, made, failed, seen = threading.Event(), threading.Event(), threading.Event(), {}

    def failing():  # begins first; fails once the other made its folder (or after a second: it waits its turn)
        try:
            with paths.downloading("mnist", root):
                began.set()
                made.wait(1.0)
                raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")
        except paths.DatasetNotFoundError:
            failed.set()

    def succeeding():
        began.wait(5.0)
        with paths.downloading("mnist", root):
            (root / "MNIST" / "raw").mkdir(parents=True)
            made.set()
            failed.wait(1.0)  # the other's failure, where it runs meanwhile
            seen["raw there"] = (root / "MNIST" / "raw").is_dir()
            if seen["raw there"]:
                (root / "MNIST" / "raw" / "train.gz").write_bytes(b"x")

    threads = [threading.Thread(target=failing), threading.Thread(target=succeeding)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert failed.is_set() and seen == {"raw there": True}
    assert (root / "MNIST" / "raw" / "train.gz").read_bytes() == b"x"


def _png16(path, values, colour_type):
    """A 16-bit PNG of ``values`` (H, W[, C]) uint16, written by hand (Pillow writes no 16-bit RGB PNG):
    colour type 0 grey, 4 grey and alpha, 2 RGB."""
    import struct
    import zlib

    rows = values.reshape(values.shape[0], -1).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in rows)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", values.shape[1], values.shape[0],
                                                                         16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("name", ["cifar10", "imagenet", "folder"])
def test_a_16_bit_greyscale_png_is_scaled_to_8_bits_not_clipped_white(tmp_path, monkeypatch, name):
    """Pillow opens a 16-bit greyscale PNG as mode I;16, and convert('RGB') (torchvision's ImageFolder
    loader, CIFAR's cache alike) clipped its values at 255: every pixel above 255 of 65535 came out white,
    the image nearly blank, nothing said (pytorch/vision#2218). It is scaled now, by its high byte, as
    Pillow reads a 16-bit RGB or grey-and-alpha PNG: the three give the same 8-bit image."""
    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    root, splits, kw = _image_tree(tmp_path, name)
    for f in (root / splits[0]).rglob("*.png"):
        f.unlink()
    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1040 + 7).astype(np.uint16)  # 7 .. 65527
    classes = sorted(p.name for p in (root / splits[0]).iterdir())
    for c in classes:
        _png16(root / splits[0] / c / "grey.png", ramp, 0)
        _png16(root / splits[0] / c / "rgb.png", np.stack([ramp] * 3, -1), 2)
    ds = get_datasets(name, data_dir=tmp_path, holdout=0, normalize="none", **kw) if name == "cifar10" else \
        get_datasets(name, data_dir=tmp_path, holdout=0, **kw)
    grey, rgb = ds.train[0][0], ds.train[1][0]
    assert torch.equal(grey, rgb)
    if name == "cifar10":  # (unnormalised: the bytes themselves)
        assert torch.equal(grey, torch.from_numpy((ramp >> 8).astype(np.uint8)).float().div(255).expand(3, 8, 8))


def test_a_32_bit_or_float_image_is_refused_naming_it_not_clipped(tmp_path):
    """A 32-bit integer or floating-point image (a TIFF) has no one scale to 8 bits: convert('RGB') clipped it
    (a float image in [0, 1] came out black, unsaid); it is refused, naming the file."""
    root, splits, kw = _image_tree(tmp_path, "folder")
    path = root / splits[0] / "dog" / "f.tif"
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(path)
    train = get_datasets("folder", data_dir=tmp_path, holdout=0, **kw).train
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} is a floating-point image \(Pillow mode F\), with no "
                                         r"one scale to 8 bits.*save it as 8-bit"):
        [train[i] for i in range(len(train))]


@pytest.mark.parametrize("name", ["cifar10", "imagenet", "folder"])
@pytest.mark.parametrize("link", ["loop", "up", "other_class"])
def test_a_folder_of_images_reached_twice_through_links_is_refused_by_every_image_folder_loader(tmp_path, monkeypatch,
                                                                                               name, link):
    """torchvision's ImageFolder follows folder links: a link in a class folder to itself ('loop -> .') or to
    the split ('up -> ..') was walked some 40 times, until the system's limit on links in a path, and every
    image under it read that often (the link up: every class's images read 40 times more, as the class holding
    the link), a link to another class's folder read its images under both classes, nothing said. Every
    image-folder loader now refuses a folder of images reached by two paths, naming it."""
    import os

    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    root, splits, kw = _image_tree(tmp_path, name)
    first, second = sorted(p.name for p in (root / splits[0]).iterdir())[:2]
    here = root / splits[0] / second
    os.symlink({"loop": ".", "up": "..", "other_class": f"../{first}"}[link], here / link)
    real = {"loop": here, "up": root / splits[0] / first, "other_class": root / splits[0] / first}[link]
    with pytest.raises(ValueError, match=rf"{re.escape(str(root / splits[0]))}: the folder of images "
                                         rf"{re.escape(str(real))} is reached by \d+ paths through folder links.*read "
                                         r"once for each.*remove the link"):
        get_datasets(name, data_dir=tmp_path, holdout=0, **kw)


def test_cifar_copy_with_a_file_name_that_is_no_utf8_is_cached_and_read(tmp_path, monkeypatch):
    """A file name that is no UTF-8 (Latin-1 'café.png' from an old archive), which Python reads with surrogates,
    stopped the CIFAR cache with a bare UnicodeEncodeError while it hashed the names (torchvision's ImageFolder
    reads it). It is hashed as its bytes now: the copy is decoded, cached and read back from the cache."""
    import os

    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    root, splits, kw = _image_tree(tmp_path, "cifar10")
    cls = root / splits[0] / CIFAR_CLASSES[1]
    os.rename(cls / "0.png", os.fsencode(cls) + b"/caf\xe9.png")
    first = get_datasets("cifar10", data_dir=tmp_path, holdout=0).train
    again = get_datasets("cifar10", data_dir=tmp_path, holdout=0).train  # (from the cache)
    assert len(first) == len(again) == 20
    assert all(torch.equal(first[i][0], again[i][0]) for i in range(20))
    assert list((tmp_path / "cache").glob("cifar10-jpeg-train-*.pt"))


@pytest.mark.parametrize("name", ["cifar10", "imagenet", "folder"])
def test_a_class_folder_linked_to_no_folder_is_refused_not_passed_over(tmp_path, monkeypatch, name):
    """A class folder that is a link to a folder no longer there (a disk not mounted) was passed over by
    torchvision's ImageFolder and CIFAR's cache alike, in both splits: one class fewer, every label after it
    shifted, nothing said. Every image-folder loader now refuses it, naming the link and what it links to."""
    import os

    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    root, splits, kw = _image_tree(tmp_path, name)
    for split in splits:
        os.symlink(tmp_path / "unmounted" / "aardvark", root / split / "aardvark")
    with pytest.raises(ValueError, match=rf"{re.escape(str(root / splits[0]))} holds the link\(s\) \['aardvark'\] to no "
                                         r"folder .*mount or restore what they link to, or delete the links"):
        get_datasets(name, data_dir=tmp_path, holdout=0, **kw)


def test_cifar_copy_with_an_image_of_another_size_names_both_files_and_the_folder_dataset(tmp_path, monkeypatch):
    """An image of another size in a CIFAR copy was refused as 'this cache needs same-sized images', naming
    neither the image it was compared with nor a way to read such a folder."""
    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    root, splits, _ = _image_tree(tmp_path, "cifar10")
    odd = root / splits[0] / CIFAR_CLASSES[3] / "big.png"
    Image.fromarray(np.zeros((12, 10, 3), dtype=np.uint8)).save(odd)
    with pytest.raises(ValueError, match=rf"{re.escape(str(odd))} is 10x12, not 8x8 as .*airplane/0\.png is: .*resize "
                                         r"them to one size, or read the folder with --dataset folder.*image_size=8"):
        get_datasets("cifar10", data_dir=tmp_path, holdout=0)


def test_cifar_batches_that_fail_their_checksum_are_named_with_the_folder_and_the_fix(tmp_path):
    """torchvision's pickled CIFAR-10 batches with one cut short were refused by torchvision as 'Dataset not
    found or corrupted. You can use download=True to download it', naming neither the folder nor the file (and
    --download does nothing where the folder is found). The refusal names both now, and the fix."""
    import torchvision

    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    cifar = torchvision.datasets.CIFAR10
    for f, _ in cifar.train_list + cifar.test_list + [(cifar.meta["filename"], None)]:
        (folder / f).write_bytes(b"cut short")
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder))}: torchvision's CIFAR-10 batch file\(s\) "
                                         r"\['data_batch_1', .*'test_batch', 'batches.meta'\] are missing or fail their "
                                         r"checksum .*replace the folder with a whole copy"):
        get_datasets("cifar10", data_dir=tmp_path, holdout=0)


def test_class_folders_named_alike_in_another_unicode_form_are_said_to_differ_in_form(tmp_path):
    """A class named 'café' composed (NFC) in train/ and decomposed (NFD, as macOS writes names) in val/ was
    refused as 'only in train: ['café'], only in val: ['café']': two names that print alike. The refusal now
    says they differ in their Unicode form, and the fix."""
    import unicodedata

    for split, form in (("train", "NFC"), ("val", "NFD")):
        for c in ("café", "dog"):
            _images(tmp_path / split / unicodedata.normalize(form, c))
    with pytest.raises(ValueError, match=r"hold different classes .*; 'caf\\xe9' in train, 'cafe\\u0301' in the other: "
                                         r"the names differ only in their Unicode form .*rename the folders of one split to the other's form"):
        get_datasets("folder", data_dir=tmp_path, holdout=0, image_size=8, resize=8)


@pytest.mark.parametrize("name, how", [("folder", "test_split=train"), ("folder", "linked"), ("imagenet", "linked"),
                                       ("cifar10", "linked")])
def test_a_test_split_that_is_the_train_split_is_refused(tmp_path, monkeypatch, name, how):
    """--dataset-kw test_split=train, or a test split that is a link to train/, measured test accuracy on the
    training images, unsaid. It is refused now, by every image-folder loader."""
    import os
    import shutil

    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    root, splits, kw = _image_tree(tmp_path, name)
    if how == "test_split=train":
        kw["test_split"] = "train"
    else:
        shutil.rmtree(root / splits[1])
        os.symlink("train", root / splits[1])
    with pytest.raises(ValueError, match=r"the test split .* is the train split .*\(the same folder\)" if name != "cifar10"
                       else r"test/ is train/ \(a link to the same folder\)"):
        get_datasets(name, data_dir=tmp_path, holdout=0, **kw)


def test_cifar_copy_whose_test_images_are_of_another_size_is_refused_before_training(tmp_path, monkeypatch):
    """A CIFAR copy whose test/ images are of another size than train/'s (a test split re-exported at 28x28) was
    built: each split is decoded at its own first image's size, and the test split, first read after training,
    gave a network that pools adaptively images of another size, unsaid. It is refused before any training."""
    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cifar10-jpeg"
    for split, size in (("train", 8), ("test", 10)):
        for c in CIFAR_CLASSES:
            _images(root / split / c, size=size)
    with pytest.raises(ValueError, match=r"the images of test/ are 10x10, those of train/ 8x8 .*both splits need images "
                                         r"of one size"):
        get_datasets("cifar10", data_dir=tmp_path, holdout=0)
    from adaptive.data import dataset_facts

    assert dataset_facts("cifar10", data_dir=tmp_path) is None


@pytest.mark.parametrize("name", ["cifar10", "folder"])
def test_a_16_bit_greyscale_pgm_is_scaled_like_a_16_bit_png_not_refused_as_32_bit(tmp_path, monkeypatch, name):
    """Pillow opens a 16-bit greyscale PGM (``.pgm``, an extension ImageFolder reads; maxval above 255) as
    mode I, which the refusal of 32-bit integer images took for one: a legitimate 16-bit image refused as
    '32-bit'. It is scaled by its high byte, as the same values in a 16-bit PNG are."""
    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    root, splits, kw = _image_tree(tmp_path, name)
    for f in (root / splits[0]).rglob("*.png"):
        f.unlink()
    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1040 + 7).astype(np.uint16)  # 7 .. 65527
    for c in sorted(p.name for p in (root / splits[0]).iterdir()):
        (root / splits[0] / c / "a.pgm").write_bytes(b"P5 8 8 65535\n" + ramp.astype(">u2").tobytes())
        _png16(root / splits[0] / c / "b.png", ramp, 0)
    extra = {"normalize": "none"} if name == "cifar10" else {}
    train = get_datasets(name, data_dir=tmp_path, holdout=0, **kw, **extra).train
    pgm, png = train[0][0], train[1][0]
    assert torch.equal(pgm, png)
    if name == "cifar10":  # (unnormalised: the bytes themselves)
        assert torch.equal(pgm, torch.from_numpy((ramp >> 8).astype(np.uint8)).float().div(255).expand(3, 8, 8))


def test_download_lock_files_stay_one_a_dataset_and_leave_the_downloads_error_unchained(tmp_path, monkeypatch):
    """The download lock was a file named by the dataset and a hash of the folder downloaded into: one more
    file left in the cache folder for every folder ever downloaded into (a test suite's tmp folders left
    hundreds in ~/.cache/adaptive). It is one file a dataset. And where no lock file could be made, the
    download's own error was raised inside the handler of the lock's, so its traceback read 'During handling
    of the above exception (... .lock)' of a lock nobody needed; it now carries no such context."""
    import adaptive.paths as paths

    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    for i in range(3):
        with paths._download_lock("mnist", tmp_path / f"data{i}" / "mnist"):
            pass
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".download-mnist.lock"]
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "file" / "cache"))  # (no folder can be made under a file)
    with pytest.raises(KeyError) as e:
        with paths._download_lock("mnist", tmp_path / "data"):
            raise KeyError("the download's own error")
    assert e.value.__context__ is None


def test_a_hidden_link_to_nothing_in_a_split_folder_is_passed_over_not_refused(tmp_path, monkeypatch):
    """A link to no file in a split folder was refused as a class folder linked to a folder not there, hidden
    ones too: Emacs's lock of a file being edited there (``.#notes.txt``, a link to no file by design) stopped
    every loader. A hidden link is no class (ImageFolder passes it over; as a folder it would be refused as
    hidden): it is passed over; a visible one is still refused."""
    import os

    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    root, splits, kw = _image_tree(tmp_path, "folder")
    os.symlink("root@host.1234:1700000000", root / splits[0] / ".#notes.txt")
    assert len(get_datasets("folder", data_dir=tmp_path, holdout=0, **kw).train) == 4
    os.symlink(tmp_path / "gone", root / splits[0] / "bird")
    with pytest.raises(ValueError, match=r"holds the link\(s\) \['bird'\] to no folder"):
        get_datasets("folder", data_dir=tmp_path, holdout=0, **kw)


def test_an_error_while_building_a_cache_that_no_lock_guards_carries_no_lock_error(tmp_path):
    """Where the cache's lock file could not be made (a cache folder that takes no file), an error while the
    cache was built was raised inside the handler of the lock's error, its traceback led by 'During handling
    of the above exception' (the lock's, which changed nothing); it now carries no such context."""
    from adaptive.data.folder_cache import _building

    (tmp_path / "file").write_text("")
    with pytest.raises(KeyError) as e:
        with _building(tmp_path / "file" / "cache" / "x.pt") as waited:
            assert waited is False
            raise KeyError("the build's own error")
    assert e.value.__context__ is None


def _link_tree(root, splits, how):
    """Lead both splits of ``root`` to the same images through links, as ``how`` says: the class folder 'cat'
    of each linked to one outside folder, the test split's linked into train's, or the image files of each
    linked one by one to one outside pool (or the test split's to train's files). Returns what the refusal
    names."""
    import os
    import shutil

    train, test = root / splits[0] / "cat", root / splits[1] / "cat"
    outside = root.parent / "outside" / "cats"
    if how == "outside_folder":
        _images(outside)
        for folder in (train, test):
            shutil.rmtree(folder)
            os.symlink(outside, folder)
        return "class folder", "cat and cat", outside
    if how == "into_train":
        shutil.rmtree(test)
        os.symlink(os.path.join("..", splits[0], "cat"), test)
        return "class folder", "cat and cat", train
    if how == "sub_folder_into_train":  # only a folder inside one class folder shared
        os.symlink(os.path.join("..", "..", splits[0], "cat"), test / "more")
        return "class folder", "cat and cat/more", train
    pool = outside if how == "files" else train  # the image files, one by one: test's to train's, or both to a pool
    _images(pool)
    for folder in (train, test) if how == "files" else (test,):
        for f in folder.iterdir():
            f.unlink()
        for f in sorted(pool.iterdir()):
            os.symlink(f, folder / f.name)
    return "image file", "cat/0.png and cat/0.png", pool / "0.png"


@pytest.mark.parametrize("name", ["cifar10", "imagenet", "folder"])
@pytest.mark.parametrize("how", ["outside_folder", "into_train", "sub_folder_into_train", "files", "files_into_train"])
def test_a_test_split_that_reads_train_images_through_links_is_refused(tmp_path, monkeypatch, name, how):
    """A test split whose class folder is linked to the same outside folder as train's (train/cat -> /data/cats,
    val/cat -> /data/cats), or into train/, or whose image files are linked one by one to train's images, was
    read: test accuracy measured on training images, unsaid (only a test split that is the train split's folder
    itself was refused). Every image-folder loader now refuses it before any training, naming the class folders
    (or files) shared and the fix."""
    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "data"
    root, splits, kw = _image_tree(base, name)
    what, shown, real = _link_tree(root, splits, how)
    with pytest.raises(ValueError, match=rf"{re.escape(str(root / splits[0]))} and {re.escape(str(root / splits[1]))} "
                                         rf"share {1 if what == 'class folder' else 2} {what}\(s\) through links "
                                         rf"\({re.escape(shown)} are "
                                         rf"{re.escape(str(real.resolve()))}(; [^)]*)?\): test accuracy would be measured on "
                                         r"training images: give the test split images of its own"):
        get_datasets(name, data_dir=base, holdout=0, **kw)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("*.pt"))  # refused before decoding


@pytest.mark.parametrize("name", ["cifar10", "imagenet", "folder"])
def test_splits_linked_to_folders_of_their_own_still_load(tmp_path, monkeypatch, name):
    """Links that lead each split to images of its own are no leak and still load: the splits themselves linked to
    folders elsewhere, a class folder of each linked to an outside folder of its own, image files linked one by
    one, each split's to other files."""
    import os
    import shutil

    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    elsewhere = tmp_path / "elsewhere"
    root, splits, kw = _image_tree(elsewhere, name)
    for split in splits:
        _images(tmp_path / "outside" / split / "cat")
        shutil.rmtree(root / split / "cat")
        os.symlink(tmp_path / "outside" / split / "cat", root / split / "cat")
        pool = tmp_path / "pool" / split
        _images(pool, n=3)
        for f in sorted(pool.iterdir()):
            os.symlink(f, root / split / "dog" / f"linked_{f.name}")
    base = tmp_path / "data"
    target = base / ("imagenet" if name == "imagenet" else "cifar10-jpeg" if name == "cifar10" else "")
    target.mkdir(parents=True, exist_ok=True)
    for split in splits:
        os.symlink(root / split, target / split)
    train, _, test = get_datasets(name, data_dir=base, holdout=0, **kw)
    per_split = (10 if name == "cifar10" else 2) * 2 + 3
    assert len(train) == per_split and len(test) == per_split


def test_image_links_through_linked_folders_and_chains_of_links_are_followed_to_train_images(tmp_path):
    """A test image linked to train's through a link to train's folder (val/cat/0.png -> ../../alias/0.png, alias ->
    train/cat), or through a chain of links (val/cat/1.png -> ../../hop/1.png -> ../train/cat/1.png), is found: each
    link is followed to the file it leads to, as the system follows it."""
    import os

    root, splits, kw = _image_tree(tmp_path, "folder")
    os.symlink("train/cat", root / "alias")
    (root / "hop").mkdir()
    os.symlink("../train/cat/1.png", root / "hop" / "1.png")
    for f in (root / "val" / "cat").iterdir():
        f.unlink()
    os.symlink("../../alias/0.png", root / "val" / "cat" / "0.png")
    os.symlink("../../hop/1.png", root / "val" / "cat" / "1.png")
    with pytest.raises(ValueError, match=rf"share 2 image file\(s\) through links \(cat/0\.png and cat/0\.png are "
                                         rf"{re.escape(str((root / 'train' / 'cat' / '0.png').resolve()))}; cat/1\.png "
                                         rf"and cat/1\.png are {re.escape(str((root / 'train' / 'cat' / '1.png').resolve()))}\)"):
        get_datasets("folder", data_dir=tmp_path, holdout=0, **kw)


@pytest.mark.parametrize("name", ["cifar10", "imagenet", "folder"])
@pytest.mark.parametrize("split", [0, 1])
def test_an_image_file_linked_to_no_file_is_refused_before_training(tmp_path, monkeypatch, name, split):
    """An image file that is a link to no file (test/cat/9.png -> a pool not mounted) was listed as an image by
    torchvision's make_dataset and loaded unsaid: it failed only when decoded, with a bare FileNotFoundError,
    mid-epoch for imagenet/folder, and for a test split (cifar10's is decoded when first evaluated) only once
    training was over. Every image-folder loader now refuses it at load, naming the link, where it leads, and
    the fix; a hidden link (an editor's lock) is left to the hidden-image check, a working link loads."""
    import os

    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    root, splits, kw = _image_tree(tmp_path, name)
    link = root / splits[split] / "cat" / "9.png"
    os.symlink(os.path.join("..", "..", "nowhere", "9.png"), link)
    with pytest.raises(ValueError, match=rf"{re.escape(str(root / splits[split]))}: 1 image file\(s\) are links to "
                                         r"no file \(cat/9\.png -> '\.\./\.\./nowhere/9\.png'\).*mount or restore what "
                                         r"they link to, or delete the links"):
        get_datasets(name, data_dir=tmp_path, holdout=0, **kw)
    link.unlink()
    os.symlink("0.png", link)  # a working link loads
    train, _, test = get_datasets(name, data_dir=tmp_path, holdout=0, **kw)
    assert len((train, test)[split]) == 2 * (10 if name == "cifar10" else 2) + 1
