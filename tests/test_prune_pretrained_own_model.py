"""recipes/prune_pretrained.py as a new user runs it: their own torchvision classifier (weights saved
from a model of theirs) on an ImageFolder of their own (train/ and val/ class folders)."""
import zipfile

import numpy as np
import pytest
import torch
from _scripts import load_script
from _training import fresh_recipe_state

from adaptive.mask_only_targets import parse_target
from adaptive.models import WeightsMismatchError

torch.set_num_threads(1)
_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)


def recipe():
    return load_script("recipes/prune_pretrained.py", "prune_pretrained_own_model")


@pytest.fixture
def folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("cat", "dog"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (26, 28, 3), dtype=np.uint8)).save(tmp_path / "data" / split / c / f"{i}.jpg")
    return tmp_path / "data"


def _weights(tmp_path, num_classes):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / f"squeeze_{num_classes}.pt"
    torch.save(torchvision.models.squeezenet1_1(num_classes=num_classes).state_dict(), path)
    return path


def _argv(folder, weights, out, *more):
    return ["--model", "torchvision:squeezenet1_1", "--weights", str(weights), "--dataset", "folder", "--data-dir",
            str(folder), "--dataset-kw", "{image_size: 24, resize: 24}", "--batch-size", "4", "--eval-every", "2",
            "--threads", "1", "--output_dir", str(out), *more]


def test_weights_of_another_class_count_name_both_counts_and_the_fix(tmp_path, folder):
    """A torchvision model saved with its default 1000 classes, on a 2-class folder: the error said
    only 'shape mismatches ... Check --model and num_classes', an option this recipe does not have."""
    out = tmp_path / "run"
    with pytest.raises(WeightsMismatchError, match=r"holds a 5-class classifier \(classifier.1.bias: file \(5,\), "
                       r"model \(2,\).*the folder data has 2 classes.*model built with num_classes=2"):
        recipe().main(_argv(folder, _weights(tmp_path, 5), out, "--remove", "0.2"))
    assert not out.exists()


def test_a_fraction_of_1_or_more_names_what_to_give():
    with pytest.raises(ValueError, match=r"target fraction 1.5 must be in \[0, 1\): give a fraction below 1 \(0.5 "
                       r"removes half the prunable synapses\) or a whole count of synapses"):
        parse_target("1.5")


def test_pruned_weights_load_into_the_vanilla_model_and_hold_what_the_run_printed(tmp_path, folder, capsys):
    """Every number printed is recounted from the files; two runs write the same bytes (the archive
    inside pruned_state_dict.pt was named after the run's temporary file, so each run's bytes differed)."""
    import torchvision

    weights = _weights(tmp_path, 2)
    summaries = [recipe().main(_argv(folder, weights, tmp_path / run, "--remove", "0.25")) for run in ("a", "b")]
    printed = capsys.readouterr().out
    files = [(tmp_path / run / "pruned_state_dict.pt").read_bytes() for run in ("a", "b")]
    assert files[0] == files[1]
    assert all(not n.startswith(".") and ".tmp" not in n
               for n in zipfile.ZipFile(tmp_path / "a" / "pruned_state_dict.pt").namelist())
    original = torch.load(weights, weights_only=True)
    pruned = torch.load(tmp_path / "a" / "pruned_state_dict.pt", weights_only=True)
    model = torchvision.models.squeezenet1_1(num_classes=2)
    model.load_state_dict(pruned, strict=True)
    row = summaries[0]["rows"][1]
    weight_keys = [n + ".weight" for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert sum(int(((pruned[k] == 0) & (original[k] != 0)).sum()) for k in weight_keys) == row["removed"]
    assert sum(int(((pruned[k] != original[k]) & (pruned[k] != 0)).sum()) for k in pruned) == row["changed"] == 0
    assert f"| 0.25 | {row['removed']:,} |" in printed
    from torchvision.datasets import ImageFolder
    import torchvision.transforms as T

    val = ImageFolder(str(folder / "val"), T.Compose([T.Resize(24), T.CenterCrop(24), T.ToTensor(),
                                                      T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]))
    x, y = torch.stack([val[i][0] for i in range(len(val))]), torch.tensor(val.targets)
    with torch.no_grad():
        acc = (model.eval()(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(row["test_acc"])


def test_a_googlenet_file_with_its_auxiliary_heads_for_another_class_count_is_named_as_such(tmp_path, folder):
    """torchvision's GoogLeNet saves its auxiliary heads (which the model here is built without, and
    which loading skips): the class-count check counted those keys as unexpected and gave the generic
    'Check --model and num_classes' error, an option this recipe lacks."""
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "googlenet_5.pt"
    torch.save(torchvision.models.googlenet(num_classes=5, init_weights=False).state_dict(), weights)
    out = tmp_path / "run"
    argv = _argv(folder, weights, out, "--remove", "0.2")
    argv[argv.index("torchvision:squeezenet1_1")] = "torchvision:googlenet"
    with pytest.raises(WeightsMismatchError, match=r"holds a 5-class classifier \(fc.bias: file \(5,\), model \(2,\), "
                       r"fc.weight: file \(5, 1024\), model \(2, 1024\)\), and the folder data has 2 classes"):
        recipe().main(argv)
    assert not out.exists()


def test_a_classifier_reading_other_features_is_not_called_a_class_count_mismatch(tmp_path):
    """Where the classifier's inputs differ too (weights of images of another size), weights of the
    data's class count would not fit either: the file's own mismatches are named, not '5-class'."""
    from recipes._prune_pretrained.builders import _file_class_count

    def net(classes, features):
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Flatten(), torch.nn.Linear(features, classes))

    torch.save(net(5, 8).state_dict(), tmp_path / "w.pt")
    assert _file_class_count(net(2, 4), tmp_path / "w.pt", 2) is None
    torch.save(net(5, 4).state_dict(), tmp_path / "w.pt")
    assert _file_class_count(net(2, 4), tmp_path / "w.pt", 2) == (5, "2.bias: file (5,), model (2,), 2.weight: file "
                                                                       "(5, 4), model (2, 4)")
