"""The decoded-image cache of an ImageFolder copy (adaptive.data.folder_cache): one file per folder,
never shared by two copies, adopted from its former name, built by one process at a time.
Every test builds a tiny synthetic copy in tmp_path (never the shared data)."""
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from adaptive.data import folder_cache


def _folder(root, seed, classes=("cat", "dog"), n=2):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _counting_decode(monkeypatch):
    decoded, real = [], folder_cache.decode_folder
    monkeypatch.setattr(folder_cache, "decode_folder", lambda root, **k: decoded.append(root) or real(root, **k))
    return decoded


def test_two_copies_in_folders_of_the_same_name_keep_their_own_cache_files(tmp_path, monkeypatch):
    """/a/cifar10-jpeg and /b/cifar10-jpeg shared one cache file (named by the folder's name): each load
    of the other copy decoded it afresh and overwrote the file (and one process could read it while
    another rewrote it). Each copy now has its own file, keyed on its resolved path."""
    a, b = _folder(tmp_path / "a" / "train", seed=1), _folder(tmp_path / "b" / "train", seed=2)
    decoded = _counting_decode(monkeypatch)
    xa, ya, _ = folder_cache.cached_folder_tensor(a, "train", tmp_path / "c")
    xb, _, _ = folder_cache.cached_folder_tensor(b, "train", tmp_path / "c")
    xa2, ya2, _ = folder_cache.cached_folder_tensor(a, "train", tmp_path / "c")
    xb2, _, _ = folder_cache.cached_folder_tensor(b, "train", tmp_path / "c")
    assert decoded == [a.resolve(), b.resolve()]  # each decoded once, then read from its own file
    assert torch.equal(xa, xa2) and torch.equal(ya, ya2) and torch.equal(xb, xb2) and not torch.equal(xa, xb)
    assert folder_cache.cache_file(a, "train", tmp_path / "c") != folder_cache.cache_file(b, "train", tmp_path / "c")
    # a link to a copy is that copy (its resolved path): it reads the same file
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert folder_cache.cache_file(tmp_path / "link" / "train", "train", tmp_path / "c") == \
        folder_cache.cache_file(a, "train", tmp_path / "c")


def test_a_cache_under_its_former_name_is_adopted_only_when_it_holds_this_folder(tmp_path, monkeypatch):
    """After the upgrade a cache file of the former name (``NAME.pt``) that holds exactly this folder's
    images is read, not decoded afresh; one made from other files (the copy changed since) is not trusted."""
    root = _folder(tmp_path / "copy" / "train", seed=3)
    cache = tmp_path / "c"
    x, y, _ = folder_cache.cached_folder_tensor(root, "copy-train", cache)
    new = folder_cache.cache_file(root, "copy-train", cache)
    new.rename(cache / "copy-train.pt")  # as the former version named it
    decoded = _counting_decode(monkeypatch)
    x2, y2, _ = folder_cache.cached_folder_tensor(root, "copy-train", cache)
    assert decoded == [] and torch.equal(x, x2) and torch.equal(y, y2) and new.is_file()
    assert (cache / "copy-train.pt").is_file()  # left for an older version that still reads it
    new.unlink()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "cat" / "0.png")  # the copy changed since
    x3, _, _ = folder_cache.cached_folder_tensor(root, "copy-train", cache)
    assert decoded == [root.resolve()] and not torch.equal(x3, x) and int(x3[0].sum()) == 0


def test_processes_building_one_cache_at_once_decode_it_once(tmp_path, monkeypatch):
    """The processes of one launch that loaded a copy not yet cached each decoded it (minutes each for
    CIFAR on a small machine) and each rewrote the file. They now take turns: the first decodes, the
    others wait for its file and read it."""
    root = _folder(tmp_path / "train", seed=4)
    decoded, real = [], folder_cache.decode_folder
    first_in, second_in, release = threading.Event(), threading.Event(), threading.Event()

    def decode(folder, **k):
        decoded.append(folder)
        (second_in if first_in.is_set() else first_in).set()
        if len(decoded) == 1:
            release.wait(10)
        return real(folder, **k)

    monkeypatch.setattr(folder_cache, "decode_folder", decode)
    results = []
    load = lambda: results.append(folder_cache.cached_folder_tensor(root, "train", tmp_path / "c"))  # noqa: E731
    threads = [threading.Thread(target=load)]
    threads[0].start()
    assert first_in.wait(10)
    threads.append(threading.Thread(target=load))
    threads[1].start()
    second_in.wait(0.5)  # without turns the second decodes meanwhile (with them it waits on the first)
    release.set()
    for t in threads:
        t.join(10)
    assert len(results) == 2 and decoded == [root.resolve()]
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("damage", ["cut", "other_folder"])
def test_a_cache_file_is_still_checked_before_it_is_read(tmp_path, monkeypatch, damage):
    """Keyed on the path, the cache is still checked (meta, tensors, checksum): a cut-short file, or one
    holding another folder's images under this folder's name, is rebuilt, never trusted."""
    root, other = _folder(tmp_path / "a" / "train", seed=5), _folder(tmp_path / "b" / "train", seed=6)
    x, _, _ = folder_cache.cached_folder_tensor(root, "t", tmp_path / "c")
    f = folder_cache.cache_file(root, "t", tmp_path / "c")
    if damage == "cut":
        f.write_bytes(f.read_bytes()[:100])
    else:
        folder_cache.cached_folder_tensor(other, "t", tmp_path / "c")
        folder_cache.cache_file(other, "t", tmp_path / "c").replace(f)
    decoded = _counting_decode(monkeypatch)
    x2, _, _ = folder_cache.cached_folder_tensor(root, "t", tmp_path / "c")
    assert decoded == [root.resolve()] and torch.equal(x, x2)


def test_a_cache_under_its_former_name_is_read_from_a_cache_folder_that_takes_no_new_file(tmp_path, monkeypatch):
    """A shared cache folder that may not be written (read-only, or full) holding a good cache under the
    former name was read by the former version; adopting it (a hard link, then a copy) raised the
    copy's PermissionError instead. The old file is read; nothing is filed, nothing decoded."""
    root = _folder(tmp_path / "copy" / "train", seed=7)
    cache = tmp_path / "c"
    x, y, _ = folder_cache.cached_folder_tensor(root, "copy-train", cache)
    folder_cache.cache_file(root, "copy-train", cache).rename(cache / "copy-train.pt")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(folder_cache.os, "link", refuse)
    monkeypatch.setattr(folder_cache, "atomic_torch_save", refuse)
    decoded = _counting_decode(monkeypatch)
    x2, y2, _ = folder_cache.cached_folder_tensor(root, "copy-train", cache)
    assert decoded == [] and torch.equal(x, x2) and torch.equal(y, y2)
    assert not folder_cache.cache_file(root, "copy-train", cache).exists()
