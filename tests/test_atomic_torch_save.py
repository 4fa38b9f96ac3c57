"""atomic_torch_save: torch.save made atomic, its bytes depending on the content alone. torch names
the archive inside a file after the path it is given; saved through a temporary file (random name),
the same content gave other bytes in every run (checkpoints, the folder cache, graphs' .pt files)."""
import errno
import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptive.atomic import atomic_torch_save

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _scripts import load_script  # noqa: E402
from _training import fresh_recipe_state, reset_accelerate  # noqa: E402

OBJ = {"w": torch.arange(12.0).reshape(3, 4), "masks": {"fc": torch.ones(3, dtype=torch.bool)}, "step": 7}


def archive_names(path):
    """The record names inside a torch.save file (its archive's folder first)."""
    return zipfile.ZipFile(path).namelist()


def test_two_saves_of_the_same_object_give_the_same_bytes(tmp_path):
    path = tmp_path / "x.pt"
    atomic_torch_save(OBJ, path)
    first = path.read_bytes()
    assert atomic_torch_save(OBJ, path) == path and path.read_bytes() == first
    assert {n.split("/")[0] for n in archive_names(path)} == {"archive"}  # not the temporary file's name
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
    back = torch.load(path, weights_only=True)
    assert torch.equal(back["w"], OBJ["w"]) and back["step"] == 7


def test_a_failed_save_keeps_the_old_file_and_names_the_final_path(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    atomic_torch_save(OBJ, path)
    before = path.read_bytes()

    def full(obj, f, *a, **k):
        f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="No space left on device") as e:
        atomic_torch_save({"other": 1}, path)
    assert e.value.filename == str(path)  # the file a reader knows, not the temporary one
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_a_stage_checkpoint_saved_twice_gives_the_same_bytes(tmp_path):
    """mask_only_checkpoint.pt, prune_pretrained's checkpoint.pt (save_stage)."""
    from adaptive.mask_only_checkpoint import save_stage

    path = tmp_path / "checkpoint.pt"
    save_stage(path, {"stage": 1, "masks": {"fc": torch.ones(4, dtype=torch.bool)}})
    first = path.read_bytes()
    save_stage(path, {"stage": 1, "masks": {"fc": torch.ones(4, dtype=torch.bool)}})
    assert path.read_bytes() == first


def test_the_folder_cache_written_twice_gives_the_same_bytes(tmp_path):
    from PIL import Image

    from adaptive.data import folder_cache
    from adaptive.data.folder_cache import cached_folder_tensor

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "img" / c).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / "img" / c / "0.png")
    blobs = []
    for _ in range(2):
        cached_folder_tensor(tmp_path / "img", "train", cache_dir=tmp_path / "cache", progress=False)
        cache = folder_cache.cache_file(tmp_path / "img", "train", tmp_path / "cache")
        blobs.append(cache.read_bytes())
        cache.unlink()
    assert blobs[0] == blobs[1]


def test_graphs_pt_files_saved_twice_give_the_same_bytes(tmp_path):
    """graphs' compact_model.pt and its torch_geometric export both go through graphs.cli._save."""
    from graphs.cli import _save

    out = tmp_path / "compact_model.pt"
    _save(torch.nn.Linear(3, 2).requires_grad_(False), str(out))
    first = out.read_bytes()
    _save(torch.load(out, weights_only=False), str(out))
    assert out.read_bytes() == first


_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)


def test_a_mask_only_run_twice_with_the_same_seed_writes_the_same_pt_bytes(tmp_path):
    """recipes/adaptive.py --mode mask_only: dense_state_dict.pt is the same file both times (it was
    written in place, and a failed write left half of it), and no .pt file's archive is named after a
    temporary file (mask_only_checkpoint.pt also records the run's seconds, so its bytes may differ)."""
    R = load_script("recipes/adaptive.py", "recipe_adaptive_atomic_save")
    from adaptive.models import build_model

    torch.manual_seed(123)
    torch.save(build_model("mlp", num_classes=10, in_shape=(64,)).state_dict(), tmp_path / "w.pt")
    run = tmp_path / "run"
    dense = []
    for i in range(2):
        if i:
            reset_accelerate()
            shutil.rmtree(run)
        R.main(["--output_dir", str(run), "--mode", "mask_only", "--target", "0.3", "--epochs", "1", "--seed", "3",
                "--update_every", "8", "--threads", "1", "--progress", "false", "--figures", "false",
                "--weights", str(tmp_path / "w.pt")])
        pts = sorted(Path(run).rglob("*.pt"))
        assert {p.name for p in pts} >= {"dense_state_dict.pt", "mask_only_checkpoint.pt"}
        assert all({n.split("/")[0] for n in archive_names(p)} == {"archive"} for p in pts), pts
        dense.append((run / "dense_state_dict.pt").read_bytes())
    assert dense[0] == dense[1]


def test_the_whole_file_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    """Without an fsync a power cut after the rename could leave an empty or cut-short checkpoint under
    the final name (the rename reaching the disk before the data): the temporary file, written in
    full, is synced before it is renamed."""
    from adaptive.atomic import temp_target

    path = tmp_path / "x.pt"
    synced, real = [], os.fsync

    def fsync(fd):
        synced.append((os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), os.fstat(fd).st_size, path.exists()))
        return real(fd)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to name the synced file")
    monkeypatch.setattr(os, "fsync", fsync)
    atomic_torch_save(OBJ, path)
    assert len(synced) == 2, synced  # the file, then its folder (the rename)
    name, size, renamed = synced[0]
    assert temp_target(name) == "x.pt" and size == path.stat().st_size and not renamed
    assert synced[1][0] == tmp_path.name and synced[1][2]


def test_an_interrupted_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Ctrl-C mid-write: the old file stays, the temporary one goes."""
    path = tmp_path / "x.pt"
    atomic_torch_save(OBJ, path)
    before = path.read_bytes()

    def interrupted(obj, f, *a, **k):
        f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"other": 1}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_the_saved_file_has_the_usual_permissions(tmp_path):
    """As torch.save(obj, path) gave: 0666 less the umask, not a private temporary file's 0600."""
    from adaptive.atomic import _UMASK  # (the process's umask, read when adaptive.atomic is imported)

    atomic_torch_save(OBJ, tmp_path / "x.pt")
    assert (tmp_path / "x.pt").stat().st_mode & 0o777 == 0o666 & ~_UMASK
