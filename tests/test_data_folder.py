"""--dataset folder: any ImageFolder layout (train/ beside val/ or test/), checked against the
CIFAR-10 loader on the real cifar10-jpeg copy, and clear errors for the layouts it cannot read."""
import numpy as np
import pytest
import torch
from PIL import Image

import adaptive.paths as paths
from adaptive.data import DatasetNotFoundError, get_dataloaders

CIFAR = paths.SHARED_DATA / "cifar10-jpeg"


def _tree(root, splits, classes=("cat", "dog", "eel"), n=4, size=12):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")


@pytest.mark.skipif(not (CIFAR / "train").is_dir(), reason="needs ../shared/data/cifar10-jpeg (always present on CI)")
def test_folder_reads_cifar10_jpeg_exactly_as_the_cifar10_loader():
    kw = dict(batch_size=250, holdout=0.1, seed=0, eval_batch_size=250)
    f = get_dataloaders("folder", data_dir=str(CIFAR), image_size=32, resize=32, **kw)
    c = get_dataloaders("cifar10", data_dir=str(paths.SHARED_DATA), **kw)
    assert (len(f.train.dataset), len(f.holdout.dataset), len(f.test.dataset)) == (45000, 5000, 10000)
    assert f.num_classes == 10 and f.in_shape == (3, 32, 32)
    for a, b in ((f.test, c.test), (f.holdout, c.holdout)):  # same images, same order, same labels
        (xa, ya), (xb, yb) = next(iter(a)), next(iter(b))
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_folder_on_a_tiny_tree_and_its_test_split_choice(tmp_path):
    _tree(tmp_path, ("train", "test"))
    d = get_dataloaders("folder", data_dir=str(tmp_path), batch_size=4, holdout=0.25, image_size=8, resize=10)
    assert d.num_classes == 3 and d.in_shape == (3, 8, 8)
    assert len(d.test.dataset) == 12 and len(d.train.dataset) + len(d.holdout.dataset) == 12
    x, y = next(iter(d.train))
    assert x.shape == (4, 3, 8, 8) and y.max() < 3


def test_folder_errors_name_the_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="needs --data-dir"):
        get_dataloaders("folder", batch_size=4)
    with pytest.raises(DatasetNotFoundError, match="train not found"):
        get_dataloaders("folder", data_dir=str(tmp_path), batch_size=4)
    _tree(tmp_path / "a", ("train",))
    with pytest.raises(DatasetNotFoundError, match="no test split .*val, test"):
        get_dataloaders("folder", data_dir=str(tmp_path / "a"), batch_size=4)
    _tree(tmp_path / "b", ("train",))
    _tree(tmp_path / "b", ("val",), classes=("cat", "dog", "fox"))
    with pytest.raises(ValueError, match=r"different classes \(only in train: \['eel'\], only in val: \['fox'\]\)"):
        get_dataloaders("folder", data_dir=str(tmp_path / "b"), batch_size=4)
    with pytest.raises(DatasetNotFoundError, match="looked for holdout/"):
        get_dataloaders("folder", data_dir=str(tmp_path / "b"), batch_size=4, test_split="holdout")


def test_a_flat_val_or_train_folder_names_the_layout_and_how_to_get_it(tmp_path):
    """ImageNet's raw val/ holds its images directly: torchvision's bare "Couldn't find any class
    folder" said neither the layout expected nor how to get it."""
    rng = np.random.default_rng(0)
    for root in (tmp_path / "imagenet_data" / "imagenet", tmp_path / "folder_data"):
        _tree(root, ("train",), n=2, size=6)
        (root / "val").mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(root / "val" / f"ILSVRC2012_val_{i}.JPEG")
    for name, data in (("imagenet", tmp_path / "imagenet_data"), ("folder", tmp_path / "folder_data")):
        with pytest.raises(DatasetNotFoundError, match=r"val holds 3 file\(s\) directly and no class folders: val/ "
                                                       r"needs the ImageFolder layout val/CLASS/IMAGE.*valprep.sh.*"
                                                       r"move each image into the folder of its class") as e:
            get_dataloaders(name, data_dir=str(data), batch_size=2, image_size=6, resize=6)
        assert "Couldn't find" not in str(e.value)
    flat = tmp_path / "flat_train"
    _tree(flat, ("val",), n=1, size=6)
    (flat / "train").mkdir()
    Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(flat / "train" / "0.png")
    with pytest.raises(DatasetNotFoundError, match=r"train holds 1 file\(s\) directly and no class folders: train/ "
                                                   r"needs the ImageFolder layout train/CLASS/IMAGE"):
        get_dataloaders("folder", data_dir=str(flat), batch_size=2, image_size=6, resize=6)
    (flat / "train" / "0.png").unlink()
    (flat / "train" / "cat").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"Found no valid file for the classes cat.*train/CLASS/IMAGE.*"
                                                   r"add images to the folders named, or delete those folders"):
        get_dataloaders("folder", data_dir=str(flat), batch_size=2, image_size=6, resize=6)


def test_an_image_that_cannot_be_read_is_named_with_the_fix(tmp_path):
    """A truncated JPEG or a file that is no image, under an image's name in a class folder, stopped
    a run (mid-stage, after the data had loaded) with PIL's traceback, which named no fix."""
    from adaptive.data.folder_cache import decode_folder

    _tree(tmp_path, ("train", "val"), n=2, size=6)
    (tmp_path / "train" / "dog" / "1.png").write_bytes(b"not an image")
    d = get_dataloaders("folder", data_dir=str(tmp_path), batch_size=6, holdout=0.5, image_size=6, resize=6)
    fix = r"train/dog/1.png cannot be read as an image \(UnidentifiedImageError.*replace it with a readable copy, or delete it"
    with pytest.raises(ValueError, match=fix):
        [None for _ in d.train] + [None for _ in d.holdout]
    with pytest.raises(ValueError, match=fix):  # the cached decoding of the cifar10 loader
        decode_folder(tmp_path / "train", progress=False)


def test_an_image_gone_since_the_folder_was_scanned_keeps_the_operating_system_s_error(tmp_path, monkeypatch):
    """Only a decoding error is the image's fault: a file deleted mid-run (or one without read
    permission) was reported as 'cannot be read as an image ... replace it with a readable copy, or
    delete it', hiding the FileNotFoundError."""
    from PIL import Image as PILImage
    from adaptive.data.folder_cache import decode_folder

    _tree(tmp_path, ("train", "val"), n=2, size=6)
    d = get_dataloaders("folder", data_dir=str(tmp_path), batch_size=6, holdout=0.5, image_size=6, resize=6)
    (tmp_path / "train" / "dog" / "1.png").unlink()
    with pytest.raises(FileNotFoundError, match="dog/1.png"):
        [None for _ in d.train] + [None for _ in d.holdout]
    gone = FileNotFoundError(2, "No such file or directory", "train/cat/0.png")
    monkeypatch.setattr(PILImage, "open", lambda *a, **k: (_ for _ in ()).throw(gone))
    with pytest.raises(FileNotFoundError) as e:  # the cached decoding of the cifar10 loader
        decode_folder(tmp_path / "train", progress=False)
    assert e.value is gone


def test_adaptive_recipe_trains_on_a_folder(tmp_path):
    from _scripts import load_script

    _tree(tmp_path / "data", ("train", "val"), n=8)
    R = load_script("recipes/adaptive.py", "recipe_adaptive_folder")
    res = R.main(["--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--dataset_kw.image_size", "8",
                  "--dataset_kw.resize", "8", "--holdout", "0.25", "--batch-size", "6", "--max_steps", "6",
                  "--update_every", "3", "--threads", "1", "--progress", "false", "--figures", "false",
                  "--output_dir", str(tmp_path / "run")])
    assert res.summary["test_examples"] == 24 and res.summary["density"] == pytest.approx(0.2, abs=1e-3)


def test_an_argument_the_dataset_does_not_take_is_named_with_a_suggestion(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"dataset_kw \['imagesize'\]: not an argument of dataset 'folder'.*"
                                         r"did you mean 'image_size'"):
        get_dataloaders("folder", data_dir=str(tmp_path), batch_size=4, imagesize=32)
    from _scripts import load_script

    D = load_script("recipes/diagnostics.py", "diagnostics_folder")
    _tree(tmp_path / "data", ("train", "val"), n=8)
    D.main(["collinearity", "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--dataset-kw", "image_size=8",
            "--dataset-kw", "resize=8", "--model", "mlp", "--train_steps", "2", "--batches", "2",
            "--grad_batch_size", "4", "--batch_size", "8", "--output_dir", str(tmp_path / "out")])
    assert (tmp_path / "out" / "collinearity_layers.csv").is_file()


def test_a_dataset_argument_not_written_key_value_is_refused(tmp_path):
    from _scripts import load_script

    D = load_script("recipes/diagnostics.py", "diagnostics_kv")
    with pytest.raises(SystemExit, match="--dataset-kw 'image_size': write KEY=VALUE"):
        D.main(["collinearity", "--dataset-kw", "image_size", "--output_dir", str(tmp_path)])


def test_diagnostics_dataset_arguments_merge_as_in_recipes_adaptive():
    """A YAML mapping and KEY=VALUE entries of --dataset-kw merge, later ones winning per key."""
    from _scripts import load_script

    D = load_script("recipes/diagnostics.py", "diagnostics_kv_merge")
    args = D.build_parser().parse_args(["collinearity", "--dataset-kw", "{image_size: 8, resize: 9}",
                                        "--dataset-kw", "resize=10"])
    assert D._dataset_kw(args) == {"image_size": 8, "resize": 10}


@pytest.mark.parametrize("progress, bar", [(None, False), (False, False), (True, True)])
def test_cifar10_decoding_bar_follows_the_progress_setting(tmp_path, capsys, progress, bar):
    """The decoding bar always printed, even with --no-progress and stderr in a file; now it follows
    the setting, and by default (None) draws only on a terminal (capsys is not one)."""
    from adaptive.data import get_datasets

    from adaptive.data.cifar import CLASSES

    base = tmp_path / "cifar10-jpeg"
    _tree(base, ("train", "test"), classes=CLASSES, n=1, size=8)  # (CIFAR-10's class folders, as cifar10 reads only)
    splits = get_datasets("cifar10", data_dir=tmp_path, holdout=0.0, cache_dir=tmp_path / "cache", progress=progress)
    len(splits.test)  # the test split is decoded (and cached) now
    err = capsys.readouterr().err
    assert ("decoding cifar10-jpeg-train" in err and "decoding cifar10-jpeg-test" in err) is bar, err
    if not bar:
        assert err == ""


def test_progress_is_an_option_not_a_dataset_argument(tmp_path):
    from adaptive.data import check_dataset_kw

    with pytest.raises(ValueError, match=r"dataset_kw \['progress'\]: set by an option of its own \(--progress\)"):
        check_dataset_kw("cifar10", {"progress": False})


def test_show_progress_defaults_to_a_bar_only_on_a_terminal(monkeypatch):
    import sys

    from adaptive.cli import show_progress

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert show_progress(None) and show_progress(True) and not show_progress(False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not show_progress(None) and show_progress(True)
    monkeypatch.setenv("LOCAL_RANK", "1")  # one bar per machine under accelerate launch
    assert not show_progress(True)


def test_an_empty_class_folder_is_named_before_a_class_count_it_inflates(tmp_path):
    """A class folder with no image (a partial copy) is counted by its name alone, so the facts said one
    class more than ImageFolder finds, and prune_pretrained's --num-classes check then told the user to
    give that count (and weights of that many classes) instead of naming the empty folder. Now the facts
    are unknown, and the recipe reaches the data's own error, which names the folder."""
    import importlib.util

    from adaptive.data import dataset_facts

    _tree(tmp_path, ("train", "val"), n=1, size=8)
    assert dataset_facts("folder", data_dir=str(tmp_path))[0] == 3
    (tmp_path / "train" / "fox" / "sub").mkdir(parents=True)  # a folder inside counts as ImageFolder reads it
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "fox" / "sub" / "0.JPG")
    (tmp_path / "val" / "fox").mkdir()
    assert dataset_facts("folder", data_dir=str(tmp_path))[0] == 4
    (tmp_path / "train" / "gnu").mkdir()
    (tmp_path / "train" / "gnu" / "notes.txt").write_text("not an image")
    assert dataset_facts("folder", data_dir=str(tmp_path)) is None
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "recipes" / "prune_pretrained.py"
    spec = importlib.util.spec_from_file_location("pp_empty_class", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(DatasetNotFoundError, match=r"Found no valid file for the classes gnu"):
        mod.main(["--model", "mlp", "--dataset", "folder", "--data-dir", str(tmp_path), "--num-classes", "4",
                  "--dataset-kw", "image_size=8", "--dataset-kw", "resize=8", "--remove", "0.2",
                  "--output_dir", str(tmp_path / "out"), "--threads", "1", "--no-progress"])
    assert not (tmp_path / "out").exists()


def test_a_class_folder_whose_links_loop_is_looked_through_once(tmp_path, monkeypatch):
    """The empty-folder check followed links with no record of where it had been: a class folder holding
    two links back to itself and no image was walked along every path of links (2^40 of them before the
    kernel's link limit), a hang; now each real folder is looked in once. An entry that cannot be read
    no longer hides the rest of its folder."""
    import os

    from adaptive.data.imagenet import _holds_an_image

    loop = tmp_path / "train" / "gnu"
    loop.mkdir(parents=True)
    (loop / "a").symlink_to(loop, target_is_directory=True)
    (loop / "b").symlink_to(loop, target_is_directory=True)
    scans = []
    real_scandir = os.scandir

    def counted(path):
        scans.append(path)
        if len(scans) > 100:
            raise AssertionError("the check walks the link loop round and round")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counted)
    assert not _holds_an_image(str(loop)) and len(scans) == 1
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(loop / "0.png")
    scans.clear()
    assert _holds_an_image(str(loop))
