"""A folder of some of ImageNet's classes (Imagenette, Imagewoof: wnid folders) read with ImageNet's own labels
(dataset_kw wnids, a file of the 1000 wnids), so that a 1000-class network is scored as on ImageNet; tiny random
images and a made-up list of 1000 wnids."""
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _scripts import load_script
from _training import fresh_recipe_state

from adaptive.data import dataset_facts, get_datasets

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
# sorted, ImageNet-1k's first and last (read_wnids checks them) and 998 made up between
WNIDS = [f"n{i * 7 + 1440764:08d}" for i in range(999)] + ["n15075141"]
PICKED = (WNIDS[0], WNIDS[217], WNIDS[999])  # (ImageNet indices 0, 217, 999)
_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)


def _subset(root, classes=PICKED, n=(3, 1), mapping="LOC_synset_mapping.txt"):
    """``root/train/<wnid>/`` and ``root/val/<wnid>/`` of tiny random images, and (``mapping``) Kaggle's list of
    the 1000 wnids beside them."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, k in zip(("train", "val"), n):
        for wnid in classes:
            (root / split / wnid).mkdir(parents=True)
            for i in range(k):
                Image.fromarray(rng.integers(0, 256, (20, 22, 3), dtype=np.uint8)).save(root / split / wnid / f"{i}.JPEG")
    if mapping:
        (root / mapping).write_text("".join(f"{w} thing number {i}, a class\n" for i, w in enumerate(WNIDS)))
    return root


def test_wnid_folders_are_labelled_by_their_imagenet_index(tmp_path):
    """Both datasets, every split: labels are the places of the folders' wnids among the 1000 (0, 217, 999), not
    0..2, and the classes are the 1000; the facts (the model built before the data) say 1000 too. A plain list of
    wnids, one a line, reads the same as Kaggle's file; without wnids the folders are numbered 0..K-1 as before."""
    root = _subset(tmp_path / "imagenet")
    (tmp_path / "plain.txt").write_text("\n".join(WNIDS) + "\n")
    for name, data in (("imagenet", tmp_path), ("folder", root)):
        for wnids in (root / "LOC_synset_mapping.txt", tmp_path / "plain.txt"):
            ds = get_datasets(name, data_dir=data, holdout=1 / 3, image_size=16, resize=16, wnids=str(wnids))
            assert ds.num_classes == 1000 and ds.classes == WNIDS
            assert sorted(ds.train.targets.tolist()) == [0, 0, 217, 217, 999, 999]
            assert sorted(ds.holdout.targets.tolist()) == [0, 217, 999]
            assert ds.test.targets.tolist() == [0, 217, 999] and ds.test[1][1] == 217
            assert dataset_facts(name, data_dir=data, image_size=16, resize=16, wnids=str(wnids)) == (1000, (3, 16, 16))
        plain = get_datasets(name, data_dir=data, holdout=0.0, image_size=16, resize=16)
        assert plain.num_classes == 3 and plain.test.targets.tolist() == [0, 1, 2]


@pytest.mark.parametrize("lines, match", [
    (WNIDS[:999], r"lists 999 wnids, not ImageNet's 1000"),
    (WNIDS[:999] + [WNIDS[5]], r"lists \['n01440799'\] more than once"),
    (WNIDS[1:] + ["n00000001"], r"is not in sorted order.*sort it"),
    (WNIDS[:3] + ["tench"] + WNIDS[4:], r"line 4: 'tench' is no ImageNet wnid"),
    # sorted, 1000, once each, but not ImageNet-1k's (accepted before: every class labelled by another list's place)
    ([f"n{i * 7 + 1440765:08d}" for i in range(1000)], r"lists 1000 wnids, sorted, but not ImageNet-1k's: its first and "
                                                       r"last are n01440765 and n01447758, ImageNet-1k's n01440764 "
                                                       r"\(tench\) and n15075141 \(toilet tissue\)"),
    (WNIDS[:999] + ["n15075142"], r"but not ImageNet-1k's: its first and last are n01440764 and n15075142"),
])
def test_a_wnid_list_that_is_not_imagenets_1000_is_refused_naming_the_fix(tmp_path, lines, match):
    root = _subset(tmp_path / "data", mapping=None)
    (tmp_path / "w.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=match + r".*--dataset-kw wnids=FILE.*LOC_synset_mapping.txt"):
        get_datasets("folder", data_dir=root, holdout=0.0, image_size=16, resize=16, wnids=str(tmp_path / "w.txt"))
    with pytest.raises(FileNotFoundError, match=r"no-such.txt: no such file; give --dataset-kw wnids=FILE"):
        get_datasets("folder", data_dir=root, holdout=0.0, image_size=16, resize=16, wnids=str(tmp_path / "no-such.txt"))


def test_a_class_folder_not_in_the_list_is_refused_by_name(tmp_path):
    root = _subset(tmp_path / "data", classes=(WNIDS[3], "n09999999", "cat"))
    with pytest.raises(ValueError, match=r"class folder\(s\) \['cat', 'n09999999'\] of .*train are no ImageNet wnids.*"
                                         r"rename each class folder as its wnid, or leave out dataset_kw wnids"):
        get_datasets("folder", data_dir=root, holdout=0.0, image_size=16, resize=16,
                     wnids=str(root / "LOC_synset_mapping.txt"))
    assert dataset_facts("folder", data_dir=root, image_size=16, resize=16,
                         wnids=str(root / "LOC_synset_mapping.txt")) is None  # (the builder names it)


def recipe():
    return load_script("recipes/prune_pretrained.py", "prune_pretrained_imagenet_subset")


def _weights(tmp_path):
    """A 1000-class SqueezeNet 1.1 (random weights: the run's labels, not its accuracy, are what is checked)."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "squeeze_1000.pt"
    torch.save(torchvision.models.squeezenet1_1().state_dict(), path)
    return path


def _doc_command():
    """The command docs/data.md shows for a 1000-class network on Imagenette, as argv."""
    text = (ROOT / "docs" / "data.md").read_text()
    block = re.search(r"```bash\n(python recipes/prune_pretrained.py[^`]*?wnids=[^`]*?)```", text, flags=re.S).group(1)
    return shlex.split(block.replace("\\\n", " "))[2:]


def _tiny(argv, tmp_path, weights, data, out):
    """``argv`` (the doc's command) with this test's files and a tiny run's settings."""
    swap = {"torchvision:mobilenet_v3_large": "torchvision:squeezenet1_1", "mobilenet_v3_large-5c1a4163.pth": str(weights),
            "imagenette2": str(data), "imagenette2/LOC_synset_mapping.txt": str(data / "LOC_synset_mapping.txt")}
    argv = [swap.get(a, a) for a in argv]
    argv = [f"wnids={swap[a[6:]]}" if a.startswith("wnids=") else a for a in argv]
    return argv + ["--dataset-kw", "{image_size: 32, resize: 32}", "--batch-size", "3", "--eval-batch-size", "3",
                   "--holdout", "0.34", "--eval-every", "2", "--train-eval-batches", "1", "--threads", "1",
                   "--output_dir", str(out)]


def test_the_docs_command_scores_a_1000_class_network_on_imagenet_labels(tmp_path, capsys, monkeypatch):
    """docs/data.md's command, tiny: the 1000-class weights load (they were refused: the data had 3 classes), every
    batch the run reads carries the ImageNet indices, the run says which list labelled them; without wnids=
    the list is found in the data's folder; with none there the refusal names the option and the file."""
    from recipes._prune_pretrained import run as pp_run

    data, weights = _subset(tmp_path / "imagenette2"), _weights(tmp_path)
    argv = _doc_command()
    assert "--dataset-kw" in argv and "wnids=imagenette2/LOC_synset_mapping.txt" in argv
    seen = []
    real = pp_run.get_dataloaders

    def spy(*a, **kw):
        dl = real(*a, **kw)
        seen.append((dl.num_classes, set(dl.train.dataset.targets.tolist()), dl.test.dataset.targets.tolist()))
        return dl

    monkeypatch.setattr(pp_run, "get_dataloaders", spy)
    summary = recipe().main(_tiny(argv, tmp_path, weights, data, tmp_path / "given"))
    assert seen[-1] == (1000, {0, 217, 999}, [0, 217, 999]) and summary["rows"]
    assert f"labels: each class folder by its index among ImageNet's 1000 wnids listed in {data / 'LOC_synset_mapping.txt'}" \
        in capsys.readouterr().out

    found = [a for a in _tiny(argv, tmp_path, weights, data, tmp_path / "found") if not a.startswith("wnids=")]
    found.remove("--dataset-kw")  # (the doc's wnids= alone)
    recipe().main(found)
    assert seen[-1] == (1000, {0, 217, 999}, [0, 217, 999])
    assert f"labels: each of the 3 class folders by its index among ImageNet's 1000 wnids listed in " \
           f"{data / 'LOC_synset_mapping.txt'} (found in the data's folders" in capsys.readouterr().out

    (data / "LOC_synset_mapping.txt").unlink()
    unweighted = found[:found.index("--weights")] + found[found.index("--weights") + 2:]
    for argv, why in ((found, rf"--weights {re.escape(str(weights))} holds a 1000-class classifier"),
                      (unweighted + ["--num-classes", "1000"], r"--num-classes 1000")):
        with pytest.raises(ValueError, match=rf"the 3 class folders of .*train are ImageNet wnids \(n01440764, "
                                             rf"n01442283, n15075141\) and the model has 1000 outputs \({why}\).*"
                                             r"give --dataset-kw wnids=FILE.*LOC_synset_mapping.txt"):
            recipe().main(argv[:argv.index("--output_dir")] + ["--output_dir", str(tmp_path / "none")]
                          + argv[argv.index("--output_dir") + 2:])
    assert not (tmp_path / "none").exists()
    # weights of the folders' 3 classes beside the --num-classes 1000 of a config: refused as before, no list asked
    import torchvision

    torch.save(torchvision.models.squeezenet1_1(num_classes=3).state_dict(), tmp_path / "three.pt")
    with pytest.raises(ValueError, match=r"--num-classes 1000 does not match the 3 classes of the folder data"):
        recipe().main([str(tmp_path / "three.pt") if a == str(weights) else a for a in found[:-2]]
                      + ["--output_dir", str(tmp_path / "none"), "--num-classes", "1000"])
    assert not (tmp_path / "none").exists()
    from adaptive.models.weights import WeightsMismatchError

    # a file that cannot be read, or another model's weights, beside that --num-classes: named as such (the class
    # counts' refusal came first, and its fix, --num-classes 3, only led to the file's own error)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "three.pt").read_bytes()[:4000])
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), tmp_path / "other.pt")
    for path, match in (("cut.pt", r"weights file .*cut\.pt' cannot be read"),
                        ("other.pt", r"weights file .*other\.pt' does not match model")):
        with pytest.raises(WeightsMismatchError, match=match):
            recipe().main([str(tmp_path / path) if a == str(weights) else a for a in found[:-2]]
                          + ["--output_dir", str(tmp_path / "none"), "--num-classes", "1000"])
        assert not (tmp_path / "none").exists()


def _kaggle(root, classes=PICKED, val=(PICKED[2], PICKED[0], PICKED[1], PICKED[0])):
    """Kaggle's ImageNet download, tiny: ``ILSVRC/Data/CLS-LOC/train/<wnid>/`` beside a flat ``val/`` of
    ``ILSVRC2012_val_<n>.JPEG``, and ``LOC_val_solution.csv`` (each image's wnid first in its string) and
    ``LOC_synset_mapping.txt`` at the top. Returns the CLS-LOC folder."""
    from PIL import Image

    cls_loc = root / "ILSVRC" / "Data" / "CLS-LOC"
    _subset(cls_loc, classes=classes, n=(3, 0), mapping=None)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} thing number {i}\n" for i, w in enumerate(WNIDS)))
    for split in ("val",):
        for wnid in classes:
            (cls_loc / split / wnid).rmdir()
    rows = ["ImageId,PredictionString"]
    rng = np.random.default_rng(1)
    for n, wnid in enumerate(val, 1):
        Image.fromarray(rng.integers(0, 256, (20, 22, 3), dtype=np.uint8)).save(cls_loc / "val" / f"ILSVRC2012_val_{n:08d}.JPEG")
        rows.append(f"ILSVRC2012_val_{n:08d},{wnid} 10 12 200 220 {wnid} 1 2 30 40")
    rows.append(f"ILSVRC2012_val_{99:08d},{WNIDS[500]} 1 2 3 4")  # (an image of the whole val/ not copied here)
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return cls_loc


def test_a_flat_val_folder_is_labelled_by_kaggles_solution_file(tmp_path):
    """Kaggle's val/ (every image in one folder) was refused, pointing at valprep.sh: with LOC_val_solution.csv in
    it or up to four folders above it, each image is labelled by its wnid there, numbered as train/'s folders (0..K-1,
    or with wnids their ImageNet index); both datasets."""
    cls_loc = _kaggle(tmp_path / "kaggle")
    ds = get_datasets("folder", data_dir=cls_loc, holdout=0.0, image_size=16, resize=16)
    assert ds.test.targets.tolist() == [2, 0, 1, 0] and ds.test[2][1] == 1
    ds = get_datasets("folder", data_dir=cls_loc, holdout=0.0, image_size=16, resize=16,
                      wnids=str(tmp_path / "kaggle" / "LOC_synset_mapping.txt"))
    assert ds.num_classes == 1000 and ds.test.targets.tolist() == [999, 0, 217, 0]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "imagenet").symlink_to(cls_loc)  # (dataset imagenet reads DATA/imagenet/{train,val})
    assert get_datasets("imagenet", data_dir=tmp_path / "data", holdout=0.0, image_size=16,
                        resize=16).test.targets.tolist() == [2, 0, 1, 0]


def test_a_flat_val_the_solution_file_does_not_fit_is_refused_naming_the_fix(tmp_path):
    kw = dict(holdout=0.0, image_size=16, resize=16)
    cls_loc = _kaggle(tmp_path / "a", val=(PICKED[0], PICKED[1], PICKED[2], WNIDS[3]))  # a class train/ has not
    with pytest.raises(ValueError, match=r"only in val: \['n01440785'\].*the flat val/ is labelled by .*"
                                         r"LOC_val_solution.csv: move out of it the images of classes train/ has not"):
        get_datasets("folder", data_dir=cls_loc, **kw)
    cls_loc = _kaggle(tmp_path / "b")
    (cls_loc / "val" / "ILSVRC2012_val_00000001.JPEG").rename(cls_loc / "val" / "extra.JPEG")
    with pytest.raises(ValueError, match=r"1 image\(s\) of .*val are not listed in .*LOC_val_solution.csv "
                                         r"\(\['extra.JPEG'\]\).*move the others out"):
        get_datasets("folder", data_dir=cls_loc, **kw)
    (tmp_path / "b" / "LOC_val_solution.csv").write_text("id,label\nextra,n01440764\n")
    with pytest.raises(ValueError, match=r"no header ImageId,PredictionString.*valprep.sh"):
        get_datasets("folder", data_dir=cls_loc, **kw)
    (tmp_path / "b" / "LOC_val_solution.csv").unlink()  # none: the layout refused, naming both ways
    from adaptive.paths import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError, match=r"holds 4 file\(s\) directly.*put Kaggle's LOC_val_solution.csv in "
                                                   r"it or in a folder above it.*or run the usual valprep.sh"):
        get_datasets("folder", data_dir=cls_loc, **kw)


def test_kaggles_download_as_it_comes_runs_a_1000_class_network(tmp_path, capsys, monkeypatch):
    """--dataset folder --data-dir ILSVRC/Data/CLS-LOC of a (tiny) Kaggle download, 1000-class weights, no
    dataset_kw: LOC_synset_mapping.txt three folders above train/ labels the folders, LOC_val_solution.csv the
    flat val/, and the final report reads val/ with ImageNet's indices."""
    from recipes._prune_pretrained import run as pp_run

    cls_loc, weights, seen = _kaggle(tmp_path / "kaggle"), _weights(tmp_path), []
    real = pp_run.get_dataloaders

    def spy(*a, **kw):
        dl = real(*a, **kw)
        seen.append((dl.num_classes, dl.test.dataset.targets.tolist()))
        return dl

    monkeypatch.setattr(pp_run, "get_dataloaders", spy)
    argv = [a for a in _tiny(_doc_command(), tmp_path, weights, cls_loc, tmp_path / "run") if not a.startswith("wnids=")]
    argv.remove("--dataset-kw")
    summary = recipe().main(argv)
    assert seen == [(1000, [999, 0, 217, 0])] and summary["rows"]
    assert f"listed in {tmp_path / 'kaggle' / 'LOC_synset_mapping.txt'} (found in" in capsys.readouterr().out
    (tmp_path / "data").mkdir()  # dataset imagenet, DATA/imagenet a link to CLS-LOC: both files found through it
    (tmp_path / "data" / "imagenet").symlink_to(cls_loc)
    at = argv.index("folder")
    argv[at:at + 3] = ["imagenet", "--data-dir", str(tmp_path / "data")]
    recipe().main(argv[:-1] + [str(tmp_path / "run2")])
    assert seen[-1] == (1000, [999, 0, 217, 0])


def test_a_test_subset_needs_one_image_of_each_class_folder_not_of_each_of_the_1000(tmp_path):
    """With wnids the data has 1000 classes but its test split holds only the folders' K: a test_subset of K took
    the refusal 'cannot hold one test example of each of the 1000 classes' (give at least 1000)."""
    root = _subset(tmp_path / "data", n=(3, 2))
    kw = dict(holdout=0.0, image_size=16, resize=16, wnids=str(root / "LOC_synset_mapping.txt"))
    ds = get_datasets("folder", data_dir=root, test_subset=3, **kw)
    assert ds.num_classes == 1000 and ds.test.targets.tolist() == [0, 217, 999]
    with pytest.raises(ValueError, match=r"test_subset 2 cannot hold one test example of each of the 3 classes of "
                                         r"folder: give a test_subset of at least 3"):
        get_datasets("folder", data_dir=root, test_subset=2, **kw)


def test_an_image_size_pair_gives_the_in_shape_of_its_crop(tmp_path):
    """image_size [H, W] crops H x W, as the facts said, but the data said in_shape (3, [H, W], [H, W]), which no
    model builder takes (nor the check that the model built before the data fits it)."""
    root = _subset(tmp_path / "data")
    ds = get_datasets("folder", data_dir=root, holdout=0.0, image_size=[16, 12], resize=20)
    assert ds.in_shape == (3, 16, 12) == tuple(ds.test[0][0].shape)
    assert dataset_facts("folder", data_dir=root, image_size=[16, 12], resize=20) == (3, ds.in_shape)


def test_a_relative_wnids_file_is_recorded_absolute_so_config_yaml_reruns_anywhere(tmp_path, monkeypatch):
    """Both recipes record the data folder and the weights absolute (config.yaml reruns from any working directory);
    dataset_kw wnids, as docs/data.md gives it (relative), was recorded as typed, so a rerun elsewhere lost it."""
    (tmp_path / "w.txt").write_text("\n".join(WNIDS) + "\n")
    monkeypatch.chdir(tmp_path)
    ns = recipe().parse_args(["--model", "resnet20", "--dataset", "folder", "--data-dir", ".", "--dataset-kw",
                              "wnids=w.txt", "--output_dir", str(tmp_path / "out")])
    assert ns.dataset_kw["wnids"] == str(tmp_path / "w.txt")
    adaptive_recipe = load_script("recipes/adaptive.py", "adaptive_imagenet_subset")
    cfg = adaptive_recipe.RunConfig(dataset="folder", dataset_kw={"wnids": "w.txt", "image_size": 16})
    assert cfg.dataset_kw == {"wnids": str(tmp_path / "w.txt"), "image_size": 16}
    # a file that is not there stays as typed: building the data names it
    assert recipe().parse_args(["--dataset", "folder", "--dataset-kw", "wnids=none.txt", "--output_dir",
                                str(tmp_path / "out")]).dataset_kw["wnids"] == "none.txt"


def test_a_byte_order_mark_is_no_part_of_the_first_word(tmp_path):
    """A list or a LOC_val_solution.csv saved by a Windows editor or Excel starts with a BOM: its first wnid was
    'no ImageNet wnid', its header not ImageId."""
    from adaptive.data.imagenet_val import read_solution
    from adaptive.data.wnids import read_wnids

    (tmp_path / "w.txt").write_text("\n".join(WNIDS) + "\n", encoding="utf-8-sig")
    assert read_wnids(tmp_path / "w.txt") == WNIDS
    (tmp_path / "s.csv").write_text("ImageId,PredictionString\r\nILSVRC2012_val_00000001,n01751748 1 2 3 4 \r\n",
                                    encoding="utf-8-sig")
    assert read_solution(tmp_path / "s.csv") == {"ILSVRC2012_val_00000001": "n01751748"}


def test_weights_of_the_folders_own_classes_beside_wnids_are_refused_naming_wnids(tmp_path):
    """docs/data.md's command with weights fine-tuned on the folders' own 3 classes: the data has 1000 classes by
    wnids=, which the refusal ('the folder data has 1000 classes') did not say, nor that leaving it out is the fix."""
    import torchvision

    from adaptive.models.weights import WeightsMismatchError

    data = _subset(tmp_path / "imagenette2")
    torch.save(torchvision.models.squeezenet1_1(num_classes=3).state_dict(), tmp_path / "three.pt")
    argv = _tiny(_doc_command(), tmp_path, tmp_path / "three.pt", data, tmp_path / "out")
    with pytest.raises(WeightsMismatchError, match=r"holds a 3-class classifier .* folder data has 1000 classes \(by "
                                                   r"--dataset-kw wnids=.*LOC_synset_mapping.txt, each class folder "
                                                   r"labelled by its index among ImageNet's 1000 wnids: leave it out"):
        recipe().main(argv)
    assert not (tmp_path / "out").exists()


def yaml_load(path):
    return yaml.safe_load(Path(path).read_text())


def _found_argv(tmp_path, weights, data, out):
    """docs/data.md's command, tiny, without its wnids= (the list found in the data's folders)."""
    argv = [a for a in _tiny(_doc_command(), tmp_path, weights, data, out) if not a.startswith("wnids=")]
    argv.remove("--dataset-kw")  # (the doc's wnids= alone)
    return argv


def test_a_list_found_in_the_data_folders_is_recorded_in_config_yaml(tmp_path):
    """A list found automatically labelled the run but was not recorded: config.yaml's dataset_kw had no wnids, so a
    rerun from it depended on finding the list again (another list, or none, where the data had moved). Now the path
    used is recorded; a --resume with the original command (which finds it again) is accepted, also against a
    config.yaml written before (no wnids there), and one with another list is still refused."""
    from recipes._prune_pretrained import resume as pp_resume

    data, weights = _subset(tmp_path / "imagenette2"), _weights(tmp_path)
    out = tmp_path / "run"
    argv = _found_argv(tmp_path, weights, data, out)
    recipe().main(argv)
    recorded = yaml_load(out / "config.yaml")
    listed = str(data / "LOC_synset_mapping.txt")
    assert recorded["dataset_kw"]["wnids"] == listed
    assert recipe().parse_args(["--config", str(out / "config.yaml")]).dataset_kw["wnids"] == listed

    args = recipe().parse_args(argv + ["--resume"])
    args.dataset_kw = {**args.dataset_kw, "wnids": listed}  # (as main's _imagenet_index finds it)
    pp_resume._check_resumed_settings(args, out, found_wnids=listed)
    older = {**recorded, "dataset_kw": {k: v for k, v in recorded["dataset_kw"].items() if k != "wnids"}}
    (out / "config.yaml").write_text(yaml.safe_dump(older))
    pp_resume._check_resumed_settings(args, out, found_wnids=listed)  # (found then too, unrecorded)
    (out / "config.yaml").write_text(yaml.safe_dump(recorded))
    # another list (one wnid other, still sorted: read_wnids takes it), which gives that class another place
    (tmp_path / "other.txt").write_text("\n".join(WNIDS[:500] + [f"n{int(WNIDS[500][1:]) + 1:08d}"] + WNIDS[501:]) + "\n")
    args.dataset_kw["wnids"] = str(tmp_path / "other.txt")
    with pytest.raises(Exception, match=r"records other settings \(dataset_kw"):
        pp_resume._check_resumed_settings(args, out, found_wnids=None)


def test_a_resume_with_the_data_moved_reads_the_list_found_in_its_new_place(tmp_path, capsys):
    """--data_dir may change on --resume (the data moved), but the list of wnids found in the data's folders was
    recorded at its old place: the same command with the new --data_dir was refused as other settings
    (dataset_kw), and so was the fix its error led to (--dataset-kw wnids= naming the list in its new place). The
    same list in another place is the same setting, the data moved or copied; config.yaml then records the new
    place. A list of other wnids is still refused."""
    import shutil

    data, weights = _subset(tmp_path / "imagenette2"), _weights(tmp_path)
    out = tmp_path / "run"
    argv = _found_argv(tmp_path, weights, data, out)
    recipe().main(argv)
    shutil.copytree(data, tmp_path / "copied")  # (both lists there: compared by what they list)
    shutil.move(str(data), str(tmp_path / "moved"))
    for place in ("moved", "copied"):
        again = [str(tmp_path / place) if a == str(data) else a for a in argv]
        for given in ([], ["--dataset-kw", f"wnids={tmp_path / place / 'LOC_synset_mapping.txt'}"]):
            recipe().main(again + given + ["--resume"])
            assert yaml_load(out / "config.yaml")["dataset_kw"]["wnids"] == str(tmp_path / place / "LOC_synset_mapping.txt")
    listed = (tmp_path / "moved" / "LOC_synset_mapping.txt").read_text().splitlines()
    (tmp_path / "moved" / "LOC_synset_mapping.txt").write_text("\n".join(listed[:500] + ["n01444265 other"]
                                                                        + listed[501:]) + "\n")
    capsys.readouterr()
    with pytest.raises(Exception, match=r"records other settings \(dataset_kw"):
        recipe().main([str(tmp_path / "moved") if a == str(data) else a for a in argv] + ["--resume"])


def test_a_list_found_automatically_is_refused_in_words_for_a_list_nobody_gave(tmp_path):
    """A class folder not in a list found in the data's folders was refused with "leave out dataset_kw wnids", which
    the user never gave: the refusal now names the list as found, and the fixes that work (rename the folder, name
    ImageNet's list with --dataset-kw wnids=FILE, mend the file, or weights of the folders' own classes). A found list
    that is not ImageNet-1k's is refused the same way, before any folder is taken."""
    data, weights = _subset(tmp_path / "imagenette2", classes=PICKED + ("n09999999",)), _weights(tmp_path)
    listed = data / "LOC_synset_mapping.txt"
    argv = _found_argv(tmp_path, weights, data, tmp_path / "none")
    found = (rf"{re.escape(str(listed))}, the list of ImageNet's wnids found in the data's folders \(used as the model "
             r"has 1000 outputs\),")
    with pytest.raises(ValueError) as e:
        recipe().main(argv)
    assert re.search(r"the class folder\(s\) \['n09999999'\] of .*train are not among its wnids, so " + found
                     + r" gives them no ImageNet index: rename each class folder as its wnid, or give --dataset-kw "
                     r"wnids=FILE naming ImageNet's list \(it is then not looked for\), or remove or mend .*; or give "
                     r"weights of the folders' 4 classes", str(e.value)), str(e.value)
    assert "leave out dataset_kw wnids" not in str(e.value)
    (data / "train" / "n09999999").rename(data / "n09999999")
    (data / "val" / "n09999999").rename(data / "val_n09999999")
    listed.write_text("".join(f"{w} thing\n" for w in WNIDS[:999] + ["n15075142"]))
    with pytest.raises(ValueError, match=found + r" lists 1000 wnids, sorted, but not ImageNet-1k's.*give --dataset-kw "
                                         r"wnids=FILE naming ImageNet's list"):
        recipe().main(argv)
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("text, shown", [("{wnids: 1e5}", "100000.0"), ("{wnids: 12345}", "12345")])
def test_a_wnids_file_named_by_a_bare_number_is_refused_naming_the_fix(tmp_path, text, shown, monkeypatch):
    """wnids: 1e5 (YAML, and --dataset-kw wnids=1e5, read it as the number 100000.0) was looked for as the file
    '100000.0': 'no such file', naming a file nobody gave. Both recipes and the Python API refuse a number, naming the
    fix (the name with its folder, ./1e5, reads as text), which reads the file."""
    from adaptive.config import ConfigError, parse_config

    adaptive_recipe = load_script("recipes/adaptive.py", "adaptive_imagenet_subset_number")
    msg = rf"dataset_kw wnids must name a file, got the number {re.escape(shown)} .*wnids=\./1e5"
    f = tmp_path / "c.yaml"
    f.write_text(f"dataset: folder\ndataset_kw: {text}\n")
    with pytest.raises(SystemExit, match=msg):
        recipe().parse_args(["--config", str(f)])
    with pytest.raises(SystemExit, match=msg):
        recipe().parse_args(["--dataset", "folder", "--dataset-kw", "wnids=" + text[8:-1]])
    with pytest.raises(ConfigError, match=msg):
        parse_config(adaptive_recipe.RunConfig, ["--config", str(f)])
    with pytest.raises(ValueError, match=msg):
        get_datasets("folder", data_dir=_subset(tmp_path / "d", mapping=None), holdout=0.0, wnids=float(shown) if "." in shown else int(shown))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "1e5").write_text("\n".join(WNIDS) + "\n")
    f.write_text("dataset: folder\ndataset_kw: {wnids: ./1e5}\n")
    assert recipe().parse_args(["--config", str(f)]).dataset_kw["wnids"] == str(tmp_path / "1e5")
    assert parse_config(adaptive_recipe.RunConfig, ["--config", str(f)]).dataset_kw["wnids"] == str(tmp_path / "1e5")


def test_a_flat_val_without_images_of_a_train_class_is_taken_with_a_warning(tmp_path):
    """Kaggle's flat val/ with no image of one of train/'s classes was refused, telling the user to move images
    of classes train/ has not out of it (there were none): its images are labelled through train/'s own
    indices, so no label shifts. Taken, with a warning that its test figures cover the other classes."""
    cls_loc = _kaggle(tmp_path / "kaggle", val=(PICKED[2], PICKED[1], PICKED[1]))
    with pytest.warns(UserWarning, match=rf"the flat val/ holds no image of 1 of the 3 classes of .*train "
                                         rf"\({PICKED[0]}\): its test figures cover the other classes only"):
        ds = get_datasets("folder", data_dir=cls_loc, holdout=0.0, image_size=16, resize=16)
    assert ds.test.targets.tolist() == [2, 1, 1]  # train/'s indices: PICKED[0] is 0, and no image has it
