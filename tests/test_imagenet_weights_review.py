"""Review of the "any torchvision classifier, its weights file and an ImageNet folder" path of mask-only
optimisation: the weights files a user has (torchvision's reference training checkpoints, ...) and what
the errors say."""
import argparse
import re
from pathlib import Path

import pytest
import torch

from adaptive.models import WeightsMismatchError, build_model, load_weights
from adaptive.models.weights import read_state_dict

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def test_a_torchvision_reference_training_checkpoint_loads(tmp_path):
    """torchvision's references/classification/train.py saves {"model", "optimizer", "lr_scheduler", "epoch",
    "args": argparse.Namespace, "model_ema"}: tensors-only loading refused the Namespace, so the file could not
    be read at all (an UnpicklingError whose first line named no object and no fix)."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    ckpt = {"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 599,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 30).state_dict(),
            "args": argparse.Namespace(model="mobilenet_v3_large", lr=0.064, weights=None, lr_steps=[16, 22])}
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    sd = read_state_dict(tmp_path / "checkpoint.pth")
    assert set(sd) == {"0.weight", "0.bias"} and torch.equal(sd["0.weight"], net[0].weight.detach())
    other = load_weights(torch.nn.Sequential(torch.nn.Linear(4, 3)), tmp_path / "checkpoint.pth")
    assert torch.equal(other[0].bias, net[0].bias)


def test_a_pickled_model_is_refused_naming_its_class_and_the_fix(tmp_path):
    """A whole model saved with torch.save(model): its class is named, and how to save its state_dict."""
    torch.save(torch.nn.Linear(4, 3), tmp_path / "model.pth")
    with pytest.raises(WeightsMismatchError, match=r"holds Python objects besides tensors \(torch\.nn\.modules\.linear"
                                                   r"\.Linear.*torch\.save the state_dict it holds"):
        read_state_dict(tmp_path / "model.pth")


def test_a_weights_file_of_another_network_of_the_family_is_named(tmp_path):
    """MobileNetV3-Large's file given for MobileNetV3-Small (or resnet50's for resnet18): the error listed
    a hundred keys and said "check --model"; it names the network the file holds, and its classes."""
    import torchvision

    torch.save(torchvision.models.mobilenet_v3_large(num_classes=7).state_dict(), tmp_path / "large.pth")
    model = build_model("torchvision:mobilenet_v3_small", num_classes=7)
    with pytest.raises(WeightsMismatchError, match=r"holds the weights of torchvision:mobilenet_v3_large \(7 classes\): "
                                                   r"give that --model"):
        load_weights(model, tmp_path / "large.pth")
    torch.save(torchvision.models.mobilenet_v3_large(num_classes=1000).state_dict(), tmp_path / "large1000.pth")
    with pytest.raises(WeightsMismatchError, match=r"torchvision:mobilenet_v3_large \(1000 classes\)"):
        load_weights(model, tmp_path / "large1000.pth")
    # a file of another family: no network named, the keys say it
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "linear.pth")
    with pytest.raises(WeightsMismatchError, match=r"Check --model and num_classes against the file\.$"):
        load_weights(model, tmp_path / "linear.pth")


def test_a_torchvision_weights_name_for_weights_says_which_file_and_transform(tmp_path, monkeypatch):
    """--weights MobileNet_V3_Large_Weights.IMAGENET1K_V2 (or IMAGENET1K_V2 with --model torchvision:...), as
    torchvision's own API takes weights: it said only 'does not exist'; it names the file to get, where torch's
    download cache holds it, and the transform the weights were evaluated with."""
    from recipes.prune_pretrained import parse_args

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    enum = "MobileNet_V3_Large_Weights.IMAGENET1K_V2"
    for argv in (["--weights", enum], ["--model", "torchvision:mobilenet_v3_large", "--weights", "IMAGENET1K_V2"]):
        with pytest.raises(SystemExit, match=rf"names torchvision's weights {enum}, not a file.*mobilenet_v3_large-"
                                             r"5c1a4163\.pth.*--dataset-kw resize=232 --dataset-kw image_size=224"):
            parse_args(["--dataset", "imagenet", *argv])
    cached = tmp_path / "hub" / "checkpoints" / "mobilenet_v3_large-5c1a4163.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    with pytest.raises(SystemExit, match=rf"download cache holds it: --weights {cached}"):
        parse_args(["--dataset", "imagenet", "--weights", enum])
    with pytest.raises(FileNotFoundError, match=rf"names torchvision's weights {enum}"):
        read_state_dict(enum)
    with pytest.raises(SystemExit, match=r"resize=256 --dataset-kw image_size=224 --dataset-kw interpolation=bicubic"):
        parse_args(["--weights", "EfficientNet_B0_Weights.IMAGENET1K_V1"])  # (evaluated with bicubic resizing)
    with pytest.raises(SystemExit, match=r"--weights nofile\.pth does not exist"):  # a file name: as before
        parse_args(["--weights", "nofile.pth"])


def _tiny_imagenet(root, classes=("n01440764", "n01443537"), n=(2, 1), size=(50, 70)):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, k in zip(("train", "val"), n):
        for wnid in classes:
            folder = root / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for i in range(k):
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{wnid}_{i}.JPEG")


def test_the_evaluation_transform_can_match_bicubic_weights(tmp_path):
    """EfficientNet-B0's (Swin's, MaxViT's, ViT SWAG's) weights are evaluated with bicubic resizing: every image
    here was resized bilinearly (up to 0.58 off in normalised units on noise), with no way to ask otherwise.
    --dataset-kw interpolation=bicubic gives torchvision's own preset transform exactly; a name that is no
    interpolation is refused naming the choices."""
    import torchvision
    from PIL import Image

    from adaptive.data import get_datasets

    _tiny_imagenet(tmp_path)
    preset = torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1.transforms(crop_size=32, resize_size=40)
    for name in ("imagenet", "folder"):
        root = tmp_path if name == "imagenet" else tmp_path / "imagenet"
        ds = get_datasets(name, data_dir=root, holdout=0.0, image_size=32, resize=40, interpolation="bicubic")
        x, y = ds.test[0]
        with Image.open(sorted((tmp_path / "imagenet" / "val" / "n01440764").iterdir())[0]) as im:
            assert torch.equal(x, preset(im.convert("RGB"))) and y == 0
        with pytest.raises(ValueError, match=r"interpolation 'cubic' is not one of bilinear, bicubic"):
            get_datasets(name, data_dir=root, holdout=0.0, image_size=32, resize=40, interpolation="cubic")


def test_a_data_dir_that_is_the_imagenet_folder_itself_names_both_fixes(tmp_path):
    """--data-dir /data/ILSVRC/Data/CLS-LOC (Kaggle's), or the folder PyTorch's examples/imagenet takes: dataset
    'imagenet' reads DATA_DIR/imagenet/train, and said only 'not found; looked in ...'. It names the parent to give,
    and --dataset folder, which reads that folder as it is."""
    from adaptive.data import get_datasets
    from adaptive.paths import DatasetNotFoundError

    _tiny_imagenet(tmp_path)
    cls_loc = tmp_path / "CLS-LOC"
    (tmp_path / "imagenet").rename(cls_loc)
    with pytest.raises(DatasetNotFoundError, match=rf"--data-dir {cls_loc} holds train/ itself.*give --data-dir "
                                                   rf"{tmp_path} with {cls_loc} renamed \(or linked\) as "
                                                   rf"{tmp_path / 'imagenet'}, or read it as it is with --dataset "
                                                   rf"folder --data-dir {cls_loc} "):
        get_datasets("imagenet", data_dir=cls_loc, holdout=0.0, image_size=32, resize=40)
    assert len(get_datasets("folder", data_dir=cls_loc, holdout=0.0, image_size=32, resize=40).test) == 2
    with pytest.raises(DatasetNotFoundError, match=r"not found; looked in") as e:  # no train/ there: as before
        get_datasets("imagenet", data_dir=tmp_path / "CLS-LOC" / "train", holdout=0.0)
    assert "itself" not in str(e.value)


def test_a_checkpoint_holding_numpy_numbers_loads(tmp_path):
    """A best accuracy saved as np.float64 (or a np.dtype) beside the weights: plain numbers, refused by
    tensors-only loading as Python objects; an array of objects is still refused, naming what it holds."""
    import numpy as np

    net = torch.nn.Linear(4, 3)
    torch.save({"state_dict": net.state_dict(), "best_acc1": np.float64(71.5), "step": np.int64(3),
                "dtype": np.dtype("float32"), "flag": np.bool_(True)}, tmp_path / "best.pth")
    sd = read_state_dict(tmp_path / "best.pth")
    assert set(sd) == {"weight", "bias"} and torch.equal(sd["bias"], net.bias.detach())
    torch.save({"state_dict": net.state_dict(), "names": np.array(["a", None], dtype=object)}, tmp_path / "obj.pth")
    with pytest.raises(WeightsMismatchError, match=r"holds Python objects besides tensors \(.*_reconstruct"):
        read_state_dict(tmp_path / "obj.pth")


def test_torchvisions_own_weights_file_fed_other_images_than_it_was_evaluated_on_is_warned(tmp_path):
    """The ImageNet config (resize 232, IMAGENET1K_V2's) run with the V1 file (evaluated at resize 256), or an
    EfficientNet file without bicubic resizing: the accuracies were silently not the weights' own. torchvision's
    files are known by their names; the values that match are named."""
    import warnings

    from recipes.prune_pretrained import parse_args

    config = str(ROOT / "recipes" / "configs" / "imagenet_mobilenetv3_maskonly.yaml")
    for name in ("mobilenet_v3_large-5c1a4163.pth", "mobilenet_v3_large-8738ca79.pth",
                 "efficientnet_b0_rwightman-7f5810bc.pth", "mine.pth"):
        (tmp_path / name).write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the V2 file, as the config says: nothing to say
        for name in ("mobilenet_v3_large-5c1a4163.pth", "mine.pth"):  # (mine: not torchvision's, unknown)
            parse_args(["--config", config, "--num-workers", "0", "--weights", str(tmp_path / name)])
    with pytest.warns(UserWarning, match=r"MobileNet_V3_Large_Weights\.IMAGENET1K_V1, evaluated with resize 256, "
                                         r"image_size 224, interpolation bilinear, and the images here are given "
                                         r"resize 232: give --dataset-kw resize=256 "):
        parse_args(["--config", config, "--num-workers", "0", "--weights", str(tmp_path / "mobilenet_v3_large-8738ca79.pth")])
    with pytest.warns(UserWarning, match=r"given interpolation bilinear: give --dataset-kw interpolation=bicubic "):
        parse_args(["--model", "torchvision:efficientnet_b0", "--dataset", "imagenet",
                    "--weights", str(tmp_path / "efficientnet_b0_rwightman-7f5810bc.pth")])


def test_a_lightning_checkpoint_whose_keys_carry_the_modules_attribute_loads(tmp_path):
    """PyTorch Lightning saves {"state_dict": {"model.<key>": ...}} (the LightningModule's self.model): every key
    was unexpected and every one of the model's missing. One prefix on every key, the model's keys without it,
    is stripped; a prefix that leaves other keys is not (the mismatch is said as before)."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    net(torch.zeros(1, 3, 5, 5))
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}, "epoch": 3,
                "pytorch-lightning_version": "2.4.0"}, tmp_path / "last.ckpt")
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(36, 2))
    load_weights(other, tmp_path / "last.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), net.state_dict().values()))
    torch.save({f"teacher.backbone.{k}": v for k, v in net.state_dict().items()}, tmp_path / "deep.pth")
    load_weights(other, tmp_path / "deep.pth")
    sd = {f"model.{k}": v for k, v in net.state_dict().items() if not k.startswith("3.")}  # the head left out
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(WeightsMismatchError, match=r"missing keys \[0\.weight"):
        load_weights(other, tmp_path / "partial.pth")


@pytest.mark.parametrize("kw, match", [
    ({"resize": 30}, r"resize 30 is smaller than image_size 32: the center crop of 32x32 would pad every image with "
                     r"black borders; give a resize of at least 32"),
    ({"resize": [30, 40]}, r"resize \[30, 40\] is smaller than image_size 32"),
    ({"resize": "abc"}, r"resize must be a whole number of pixels >= 1 .* got 'abc': give --dataset-kw resize=256"),
    ({"resize": 0}, r"resize must be a whole number of pixels >= 1"),
    ({"resize": 36.5}, r"resize must be a whole number"),
    ({"image_size": 0}, r"image_size must be a whole number of pixels >= 1 .* got 0"),
])
def test_sizes_that_pad_or_are_no_sizes_are_refused_naming_the_option(tmp_path, kw, match):
    """resize below image_size padded every image with black borders unsaid (torchvision's CenterCrop pads); a
    string was read as a sequence of sizes, and 0 or 36.5 failed in torchvision with messages naming no option."""
    from adaptive.data import get_datasets

    _tiny_imagenet(tmp_path)
    with pytest.raises(ValueError, match=match):
        get_datasets("imagenet", data_dir=tmp_path, holdout=0.0, **{"image_size": 32, "resize": 36, **kw})
    assert len(get_datasets("folder", data_dir=tmp_path / "imagenet", holdout=0.0, image_size=32,
                            resize=[36, 40]).test) == 2  # a pair: resized to exactly that


def test_a_vit_file_of_another_image_size_names_the_size():
    """ViT's SWAG weights are made for 384x384 (vit_h_14's 518): loaded into a ViT of the default 224 the error
    named only the position embeddings' shapes; it names --model-kw image_size (read from the file's position
    embeddings and patch size), and a relative of that size. (Shapes only: built on the meta device.)"""
    import torchvision

    from adaptive.models.tv import fitting_relatives

    with torch.device("meta"):
        sd = torchvision.models.vit_b_16(num_classes=10, image_size=96).state_dict()
    assert fitting_relatives("vit_b_16", {"num_classes": 10}, sd) == \
        "torchvision:vit_b_16 with --model-kw image_size=96 (10 classes)"
    assert fitting_relatives("vit_b_16", {"num_classes": 3, "image_size": 96}, sd) == ""  # the same: no relative
    assert fitting_relatives("vit_b_32", {"num_classes": 3, "image_size": 96}, sd) == \
        "torchvision:vit_b_16 (10 classes)"


def test_sizes_torchvision_took_before_the_refusals_are_still_taken(tmp_path):
    """The size refusals refused what torchvision's transforms read and the datasets took before them: a resize of
    [S] (torchvision's Resize reads it as S, the shorter side) and an image_size of [H, W] (a crop of H x W) or [S].
    They give the tensors they gave (the int forms' where they mean the same), the facts say a pair's shape, a
    [H, W] crop is refused only where a resize certainly pads it, and torchvision's own file given resize [232] is
    not warned of as other than its 232."""
    import warnings

    from adaptive.data import dataset_facts, get_datasets
    from adaptive.models.tv import transform_mismatch

    _tiny_imagenet(tmp_path)
    root = tmp_path / "imagenet"
    x = get_datasets("folder", data_dir=root, holdout=0.0, image_size=32, resize=36).test[0][0]
    for kw in ({"image_size": 32, "resize": [36]}, {"image_size": [32], "resize": 36},
               {"image_size": [32, 32], "resize": (36,)}):
        assert torch.equal(get_datasets("folder", data_dir=root, holdout=0.0, **kw).test[0][0], x), kw
    assert get_datasets("imagenet", data_dir=tmp_path, holdout=0.0, image_size=[32, 24], resize=36).test[0][0].shape \
        == (3, 32, 24)
    assert dataset_facts("folder", data_dir=root, image_size=[32, 24], resize=36) == (2, (3, 32, 24))
    assert dataset_facts("folder", data_dir=root, image_size=[32], resize=[36]) == (2, (3, 32, 32))
    with pytest.raises(ValueError, match=r"resize \[36, 20\] is smaller than image_size \[32, 24\]: the center crop "
                                         r"of 32x24 would pad .* at least \[32, 24\]"):
        get_datasets("folder", data_dir=root, holdout=0.0, image_size=[32, 24], resize=[36, 20])
    with pytest.raises(ValueError, match=r"resize 20 is smaller than image_size \[32, 24\]"):
        get_datasets("folder", data_dir=root, holdout=0.0, image_size=[32, 24], resize=20)
    with pytest.raises(ValueError, match=r"image_size must be a whole number .* or a pair \[H, W\] of them, got "
                                         r"\[32, 24, 3\]"):
        get_datasets("folder", data_dir=root, holdout=0.0, image_size=[32, 24, 3], resize=36)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v2 = "mobilenet_v3_large-5c1a4163.pth"
        assert transform_mismatch(v2, {"resize": [232]}) == transform_mismatch(v2, {"resize": 232}) == ""
        assert transform_mismatch(v2, {"resize": 232, "image_size": [224, 224]}) == ""
        assert "given resize [232, 232]" in transform_mismatch(v2, {"resize": [232, 232]})  # (another transform)


def test_loading_a_numpy_checkpoint_keeps_what_the_process_allowed_already(tmp_path):
    """The NumPy classes a checkpoint needs are allowed for its load alone (torch.serialization.safe_globals), whose
    exit removed them from the process's own allow-list too where the user (or another library) had allowed them
    with torch.serialization.add_safe_globals (NumPy's dtype classes, as torch's documentation says to): their
    later torch.load of a NumPy checkpoint then failed. What was allowed stays allowed, and nothing is left
    allowed that was not."""
    import numpy as np

    torch.save({"state_dict": torch.nn.Linear(2, 2).state_dict(), "best": np.float64(1.5),
                "args": argparse.Namespace(lr=0.1)}, tmp_path / "best.pth")
    mine = [type(np.dtype("float32")), type(np.dtype("float64"))]
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals(mine)
    try:
        read_state_dict(tmp_path / "best.pth")
        assert set(torch.serialization.get_safe_globals()) == set(before) | set(mine)
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)
    read_state_dict(tmp_path / "best.pth")
    assert set(torch.serialization.get_safe_globals()) == set(before)  # (nothing left allowed)


def test_a_data_dir_given_as_dot_that_holds_train_names_its_real_parent(tmp_path, monkeypatch):
    """--data-dir . (or x/..) holding train/: the fix named --data-dir . itself (the parent of "." is ".") or the
    wrong folder (x, the parent of x/..), with "." renamed as "imagenet"; it names the folder's real parent."""
    from adaptive.data import get_datasets
    from adaptive.paths import DatasetNotFoundError

    _tiny_imagenet(tmp_path)
    here = tmp_path / "imagenet"
    monkeypatch.chdir(here)
    for given in (".", "train/.."):
        with pytest.raises(DatasetNotFoundError, match=rf"--data-dir {re.escape(given)} holds train/ itself.*give "
                                                       rf"--data-dir {tmp_path}, or read it as it is with --dataset "
                                                       rf"folder --data-dir {re.escape(given)} "):
            get_datasets("imagenet", data_dir=given, holdout=0.0, image_size=32, resize=40)
    (tmp_path / "imagenet").rename(tmp_path / "CLS-LOC")
    monkeypatch.chdir(tmp_path / "CLS-LOC")
    with pytest.raises(DatasetNotFoundError, match=rf"give --data-dir {tmp_path} with {tmp_path / 'CLS-LOC'} renamed "
                                                   rf"\(or linked\) as {tmp_path / 'imagenet'}, or"):
        get_datasets("imagenet", data_dir=".", holdout=0.0, image_size=32, resize=40)


def test_a_lightning_checkpoint_of_another_network_of_the_family_is_named(tmp_path):
    """A Lightning checkpoint ({"state_dict": {"model.<key>": ...}}) of MobileNetV3-Large given for -Small: the
    family hint read the keys with their prefix, which fit no network, and named none; it reads them as the
    loader does."""
    import torchvision

    sd = torchvision.models.mobilenet_v3_large(num_classes=7).state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 1}, tmp_path / "last.ckpt")
    model = build_model("torchvision:mobilenet_v3_small", num_classes=7)
    with pytest.raises(WeightsMismatchError, match=r"holds the weights of torchvision:mobilenet_v3_large \(7 classes\): "
                                                   r"give that --model") as caught:
        load_weights(model, tmp_path / "last.ckpt")
    assert caught.value.keys_differ and caught.value.fits == "torchvision:mobilenet_v3_large (7 classes)"
