"""Models, weights files and image folders at their edges: sizes LeNet-5 refused, damaged or
doubled weights, torchvision input shapes, CIFAR folders whose splits disagree, stale caches."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from adaptive.models import build_model
from adaptive.models.weights import WeightsMismatchError, read_state_dict

torch.set_num_threads(1)
SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                      "resnet-cifar10", "resnet20-12fca82f.th")


@pytest.mark.parametrize("side", [4, 8, 10, 11, 12, 28])
def test_lenet5_takes_every_input_of_at_least_4x4(side):
    net = build_model("lenet5", num_classes=3, in_shape=(1, side, side))
    assert net(torch.randn(2, 1, side, side)).shape == (2, 3)  # 10 and 11 were refused


def test_a_zip_weights_file_with_a_damaged_entry_is_refused(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"a": torch.arange(1000, dtype=torch.float32)}, path)
    raw = bytearray(path.read_bytes())
    i = raw.find(torch.arange(1000, dtype=torch.float32).numpy().tobytes()[400:408])
    raw[i] ^= 0xFF  # a flipped byte inside the tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightsMismatchError, match="damaged"):
        read_state_dict(str(path))


def test_a_file_named_with_its_hash_is_checked_against_it(tmp_path):
    src = SHARED
    if not os.path.isfile(src):
        pytest.skip("the shared resnet-cifar10 checkpoints are not here")
    assert len(read_state_dict(src)) > 0  # the good file passes its own check
    raw = bytearray(open(src, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "resnet20-12fca82f.th"
    bad.write_bytes(bytes(raw))
    with pytest.raises(WeightsMismatchError, match="named with the hash 12fca82f"):
        read_state_dict(str(bad))


def test_two_keys_that_are_one_parameter_once_unprefixed_are_refused(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"module.fc.weight": torch.zeros(2), "fc.weight": torch.ones(2)}, path)
    with pytest.raises(WeightsMismatchError, match="holds both"):
        read_state_dict(str(path))


def test_torchvision_models_name_an_input_shape_they_cannot_take():
    with pytest.raises(ValueError, match="torchvision:resnet18 does not take inputs of shape \\(1, 28, 28\\)"):
        build_model("torchvision:resnet18", num_classes=10, in_shape=(1, 28, 28))
    net = build_model("torchvision:googlenet", num_classes=5, in_shape=(3, 64, 64))
    assert isinstance(net.train()(torch.randn(2, 3, 64, 64)), torch.Tensor)  # no auxiliary outputs in training


@pytest.mark.parametrize("arch, shape, kw, needs", [
    ("resnet18", (1, 28, 28), {}, "3-channel images"),
    ("squeezenet1_0", (3, 8, 8), {}, "3-channel images of at least 21x21"),
    ("squeezenet1_0", (1, 8, 8), {}, "3-channel images of at least 21x21"),
    ("resnet18", (784,), {}, "3-channel images, shaped (3, H, W)"),
    ("vit_b_16", (3, 64, 64), {"image_size": 32}, "3-channel images of 32x32 exactly (the size it is built for)"),
    ("maxvit_t", (3, 32, 32), {}, "3-channel images of 224x224 exactly (the size it is built for)"),
])
def test_a_refused_input_shape_names_what_that_network_takes(arch, shape, kw, needs):
    """The refusal said "e.g. 3 channels; vit_b_16 needs 224x224" whatever the network: now its own
    channels, and its fixed size (ViT, MaxViT) or the smallest size it runs on."""
    with pytest.raises(ValueError) as e:
        build_model(f"torchvision:{arch}", num_classes=10, in_shape=shape, **kw)
    assert str(e.value).endswith(f"; use a dataset or image size it takes: {needs}")
    assert "vit_b_16 needs" not in str(e.value)
    if "at least" in needs:  # the smallest size it runs on: one pixel less is refused
        build_model(f"torchvision:{arch}", num_classes=10, in_shape=(3, 21, 21))
        with pytest.raises(ValueError, match="at least 21x21"):
            build_model(f"torchvision:{arch}", num_classes=10, in_shape=(3, 20, 20))


def test_the_search_for_the_size_a_refused_network_takes_stops_after_its_time(monkeypatch):
    """The smallest-size search runs the network up to ~17 times at up to 512x512: seconds a run for
    a large network on a CPU. It starts no run after _PROBE_SECONDS and names the bounds found so
    far (here each run takes 4 s on a fake clock and every size is refused: it stops at 64x64,
    not at 512x512 six runs later)."""
    from torch import nn

    from adaptive.models import tv

    clock = [0.0]

    class Refuses(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.sizes = []

        def forward(self, x):
            clock[0] += 4.0
            self.sizes.append(x.shape[-1])
            raise RuntimeError("Output size is too small")

    monkeypatch.setattr(tv, "_clock", lambda: clock[0])
    net = Refuses()
    with pytest.raises(ValueError) as e:
        tv._check_input(net, "refuses", (3, 8, 8))
    assert net.sizes == [8, 8, 16, 32, 64]
    assert str(e.value).endswith("use a dataset or image size it takes: 3-channel images larger than 64x64 (the "
                                 "search for the smallest stopped after 10 s)")


def _cifar_folder(root, skip_test_class=None, side=32, classes=10):
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"][:classes]
    for split in ("train", "test"):
        for i, c in enumerate(names):
            if split == "test" and c == skip_test_class:
                continue
            os.makedirs(root / "cifar10-jpeg" / split / c)
            for j in range(2):
                Image.fromarray(np.full((side, side, 3), 20 * i, np.uint8)).save(root / "cifar10-jpeg" / split / c / f"{j}.png")


def test_a_cifar_folder_whose_splits_disagree_is_refused(tmp_path):
    from adaptive.data import get_datasets

    _cifar_folder(tmp_path, skip_test_class="bird")  # test labels would shift by one class
    with pytest.raises(ValueError, match="test/ has the classes"):
        get_datasets("cifar10", data_dir=tmp_path, holdout=0.25, cache_dir=tmp_path / "cache")


def test_a_cifar_folder_reports_its_own_image_size_and_other_classes_are_refused(tmp_path):
    from adaptive.data import get_datasets

    _cifar_folder(tmp_path, side=16)
    s = get_datasets("cifar10", data_dir=tmp_path, holdout=0.5, cache_dir=tmp_path / "cache")
    assert (s.num_classes, s.in_shape) == (10, (3, 16, 16))  # it said (3, 32, 32)
    # three of the classes: read as a 3-class cifar10 once, refused now (another dataset reads with --dataset folder)
    _cifar_folder(tmp_path / "three", side=16, classes=3)
    with pytest.raises(ValueError, match=r"is not a CIFAR-10 copy: its train/ holds 3 class folder\(s\), lacking cat"):
        get_datasets("cifar10", data_dir=tmp_path / "three", holdout=0.5, cache_dir=tmp_path / "cache")


def test_the_folder_cache_notices_a_file_rewritten_at_the_same_size(tmp_path):
    from adaptive.data.folder_cache import cached_folder_tensor

    root = tmp_path / "root"
    for c in ("a", "b"):
        os.makedirs(root / c)
        for j in range(2):
            Image.fromarray(np.full((8, 8, 3), 10 * j, np.uint8)).save(root / c / f"{j}.bmp")
    cached_folder_tensor(root, "t", tmp_path / "cache")
    p = root / "a" / "0.bmp"
    st = os.stat(p)
    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(p)  # BMP: the same byte size
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert os.path.getsize(p) == st.st_size
    x, _, _ = cached_folder_tensor(root, "t", tmp_path / "cache")
    assert int(x[0].max()) == 255
    shutil.rmtree(tmp_path / "cache")


@pytest.mark.parametrize("arch,side,aux", [("googlenet", 32, ("aux1.", "aux2.")), ("inception_v3", 75, ("AuxLogits.",))])
def test_torchvision_aux_head_networks_load_their_own_weights_files(tmp_path, arch, side, aux):
    """torchvision's GoogLeNet and Inception-v3 weights files hold the auxiliary heads (torchvision
    builds them with aux_logits=True to load the file, then drops them) and were trained on inputs
    that transform_input rescales: such a file was refused ("unexpected keys aux1...") with no way
    to load it. It loads now, the heads skipped, and the network computes what torchvision's
    pretrained one computes (transform_input on); pruned weights load back into that network."""
    import torchvision

    torch.manual_seed(0)
    shipped = torchvision.models.get_model(arch, num_classes=3, aux_logits=True, transform_input=True,
                                           init_weights=False).eval()
    path = tmp_path / f"{arch}.pth"
    torch.save(shipped.state_dict(), path)
    assert any(k.startswith(aux) for k in shipped.state_dict())
    net = build_model(f"torchvision:{arch}", num_classes=3, in_shape=(3, side, side), weights=str(path)).eval()
    assert not any(k.startswith(aux) for k in net.state_dict())  # no head the forward never uses: no free removals
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        assert torch.equal(net(x), shipped(x))
    vanilla = torchvision.models.get_model(arch, num_classes=3, aux_logits=False, transform_input=True,
                                           init_weights=False)
    vanilla.load_state_dict(net.state_dict())  # (the form README names for pruned_state_dict.pt)
    torch.save({**shipped.state_dict(), "extra.weight": torch.zeros(1)}, path)  # anything else is still refused
    with pytest.raises(WeightsMismatchError, match=r"unexpected keys \[extra\.weight\]"):
        build_model(f"torchvision:{arch}", num_classes=3, in_shape=(3, side, side), weights=str(path))


def test_a_legacy_file_named_with_a_date_loads_with_a_warning(tmp_path):
    """A legacy-format file named ``net-20261207.pth`` (a date: digits are hex digits) was refused as damaged, its
    'hash' not its content's. A name of digits alone warns where it is not the hash, and the file loads; a name
    with a hex letter is still a hash and refused where it does not match."""
    sd = {"a": torch.arange(6, dtype=torch.float32)}
    for name in ("net-20261207.pth", "net-2026120a.pth"):
        torch.save(sd, tmp_path / name, _use_new_zipfile_serialization=False)
    with pytest.warns(UserWarning, match="if 20261207 is a hash, the file is damaged"):
        assert torch.equal(read_state_dict(str(tmp_path / "net-20261207.pth"))["a"], sd["a"])
    with pytest.raises(WeightsMismatchError, match="named with the hash 2026120a"):
        read_state_dict(str(tmp_path / "net-2026120a.pth"))
