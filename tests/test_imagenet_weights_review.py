"""Review of the "any torchvision classifier, its weights file and an ImageNet folder" path of mask-only
optimisation: the weights files a user has (torchvision's reference training checkpoints, ...) and what
the errors say."""
import argparse

import pytest
import torch

from adaptive.models import WeightsMismatchError, build_model, load_weights
from adaptive.models.weights import read_state_dict

torch.set_num_threads(1)


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
    with pytest.raises(SystemExit, match=r"--weights nofile\.pth does not exist"):  # a file name: as before
        parse_args(["--weights", "nofile.pth"])
