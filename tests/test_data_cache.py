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


@pytest.mark.parametrize("in_the_way", ["file_as_folder", "file_as_parent"])
def test_a_cache_folder_that_takes_no_file_is_found_before_decoding_and_the_images_still_load(
        tmp_path, monkeypatch, in_the_way):
    """A file where the cache folder (or a folder above it) should be let the images decode (minutes for
    CIFAR), then the save raised an OS error naming the path but not the fix. The folder is now tried
    before decoding: the images load uncached, with one warning naming the folder and ADAPTIVE_CACHE."""
    root = _folder(tmp_path / "copy" / "train", seed=8)
    (tmp_path / "blocker").write_text("not a folder")
    cache = tmp_path / "blocker" if in_the_way == "file_as_folder" else tmp_path / "blocker" / "sub"
    monkeypatch.setenv("ADAPTIVE_CACHE", str(cache))
    decoded = _counting_decode(monkeypatch)
    saved = []
    monkeypatch.setattr(folder_cache, "atomic_torch_save", lambda obj, path: saved.append(path))
    with pytest.warns(UserWarning) as caught:
        x, y, classes = folder_cache.cached_folder_tensor(root, "copy-train")
        x2, _, _ = folder_cache.cached_folder_tensor(root, "copy-test")  # the other split: no second warning
    assert decoded == [root.resolve()] * 2 and saved == [] and torch.equal(x, x2)
    assert x.shape == (4, 3, 8, 8) and classes == ["cat", "dog"] and y.tolist() == [0, 0, 1, 1]
    said = [str(w.message) for w in caught if "cache folder" in str(w.message)]
    assert len(said) == 1 and str(cache) in said[0] and "ADAPTIVE_CACHE" in said[0]
    assert (tmp_path / "blocker").read_text() == "not a folder"
    with pytest.warns(UserWarning, match="give cache_dir= a folder"):  # given in Python: that is the fix named
        folder_cache.cached_folder_tensor(root, "copy-train", tmp_path / "blocker" / "other")


def test_a_read_only_cache_folder_is_found_before_decoding_and_the_images_still_load(tmp_path, monkeypatch):
    """A read-only cache folder (a shared one) with no cache yet: decoded, then the save's PermissionError.
    Now: decoded once, used uncached, one warning naming the folder and the fix; nothing written there."""
    root = _folder(tmp_path / "copy" / "train", seed=9)
    cache = tmp_path / "ro"
    cache.mkdir()

    def refuse(*args, **kwargs):  # (a chmod does not stop root, who runs some test machines)
        raise PermissionError(13, "Permission denied", str(cache))

    monkeypatch.setattr(folder_cache.tempfile, "mkstemp", refuse)
    monkeypatch.setattr(folder_cache, "atomic_torch_save", refuse)
    decoded = _counting_decode(monkeypatch)
    with pytest.warns(UserWarning, match=f"the cache folder {cache} takes no new file .*PermissionError"):
        x, _, _ = folder_cache.cached_folder_tensor(root, "copy-train", cache)
    assert decoded == [root.resolve()] and x.shape == (4, 3, 8, 8) and list(cache.iterdir()) == []


def test_a_valid_cache_is_read_while_another_process_holds_the_build_lock(tmp_path):
    """Every process of a launch took the build lock before reading even a valid cache, so they read it one
    after another (each waiting on the others' reads). A valid cache is now read without the lock; the lock is
    held here by a child process (flock locks are per open file: another process's lock blocks this one)."""
    import subprocess
    import sys

    pytest.importorskip("fcntl")
    root = _folder(tmp_path / "train", seed=10)
    x, y, _ = folder_cache.cached_folder_tensor(root, "train", tmp_path / "c")
    cache = folder_cache.cache_file(root, "train", tmp_path / "c")
    lock = cache.parent / f".{cache.name}.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('held', flush=True); sys.stdin.read()", str(lock)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        results = []
        reader = threading.Thread(target=lambda: results.append(folder_cache.cached_folder_tensor(
            root, "train", tmp_path / "c")), daemon=True)
        reader.start()
        reader.join(10)
        assert results, "a valid cache waited on the build lock"
        assert torch.equal(results[0][0], x) and torch.equal(results[0][1], y)
    finally:
        holder.stdin.close()
        holder.wait(10)


def test_a_cache_save_that_fails_after_decoding_costs_a_warning_not_the_images(tmp_path, monkeypatch):
    """A disk that fills while the cache is saved (the folder took the up-front probe's empty file) raised
    the save's OSError, losing the images decoded for minutes. They are now returned, with the warning."""
    import errno

    root = _folder(tmp_path / "copy" / "train", seed=11)

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(folder_cache, "atomic_torch_save", full)
    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "c"))
    with pytest.warns(UserWarning, match="No space left on device.*ADAPTIVE_CACHE"):
        x, y, _ = folder_cache.cached_folder_tensor(root, "copy-train")
    assert x.shape == (4, 3, 8, 8) and y.tolist() == [0, 0, 1, 1]


def test_processes_waiting_on_a_build_whose_save_failed_decode_at_once_not_one_after_another(tmp_path, monkeypatch):
    """A save that failed after decoding (a full disk) left no cache: each process of the launch waiting on the
    build lock then took it in turn and decoded under it (minutes each for CIFAR), the others waiting again.
    A process that waited and finds no valid cache now decodes without the lock: the others decode meanwhile."""
    import errno

    root = _folder(tmp_path / "train", seed=12)
    real = folder_cache.decode_folder
    entered = [threading.Event() for _ in range(3)]
    release_first = threading.Event()
    decoded, overlapped = [], []

    def decode(folder, **k):
        n = len(decoded)
        decoded.append(folder)
        entered[n].set()
        if n == 0:
            release_first.wait(10)
        elif n == 1:  # the second decoder waits (at most 10 s) for the third to be decoding too
            overlapped.append(entered[2].wait(10))
        return real(folder, **k)

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(folder_cache, "decode_folder", decode)
    monkeypatch.setattr(folder_cache, "atomic_torch_save", full)
    monkeypatch.setattr(folder_cache, "_UNCACHED_WARNED", set())
    results = []
    load = lambda: results.append(folder_cache.cached_folder_tensor(root, "train", tmp_path / "c"))  # noqa: E731
    threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    with pytest.warns(UserWarning, match="No space left on device"):
        threads[0].start()
        assert entered[0].wait(10)
        threads[1].start()
        threads[2].start()
        entered[1].wait(0.5)  # (with turns, neither decodes while the first holds the lock)
        assert not entered[1].is_set()
        release_first.set()
        for t in threads:
            t.join(30)
    assert len(results) == 3 and len(decoded) == 3
    assert overlapped == [True], "the third process waited for the second's decoding"
    assert all(torch.equal(r[0], results[0][0]) for r in results)
    cache = folder_cache.cache_file(root, "train", tmp_path / "c")
    assert [p.name for p in cache.parent.iterdir()] == [f".{cache.name}.lock"]  # no cache, no partial file left


def test_the_write_probe_that_cannot_be_removed_does_not_stop_the_load(tmp_path, monkeypatch):
    """The probe file of the cache folder's up-front check was removed unguarded: a folder that takes files but
    lets none go (append-only) raised the removal's error out of the load. The load goes on (here, to the cache)."""
    root = _folder(tmp_path / "copy" / "train", seed=13)
    real_unlink = folder_cache.os.unlink

    def refuse(path, *a, **k):
        if ".write-probe-" in str(path):
            raise PermissionError(1, "Operation not permitted", str(path))
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(folder_cache.os, "unlink", refuse)
    x, y, _ = folder_cache.cached_folder_tensor(root, "copy-train", tmp_path / "c")
    assert x.shape == (4, 3, 8, 8) and folder_cache.cache_file(root, "copy-train", tmp_path / "c").is_file()


def test_a_file_rewritten_at_the_same_size_with_its_time_kept_is_read_anew(tmp_path):
    """A file replaced at the same size with its modification time kept (cp -p, rsync -a, touch -r; an
    uncompressed BMP keeps its size) was served from the cache as it was: the change time, which no one
    can set back, is in the fingerprint too."""
    import os

    root = tmp_path / "train"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 10 * i, dtype=np.uint8)).save(root / c / f"{i}.bmp")
    x, _, _ = folder_cache.cached_folder_tensor(root, "train", tmp_path / "c")
    p = root / "cat" / "1.bmp"
    st = os.stat(p)
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(p).st_size == st.st_size and os.stat(p).st_mtime_ns == st.st_mtime_ns
    y, _, _ = folder_cache.cached_folder_tensor(root, "train", tmp_path / "c")
    assert not torch.equal(x, y) and int(y.max()) == 200
