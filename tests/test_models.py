"""Model zoo: shapes, fx-traceability, strict weights loading, DenseCat depth bookkeeping."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.fx

from adaptive.models import DenseCat, WeightsMismatchError, build_model, load_weights, register_model

torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATA = Path(os.environ.get("ADAPTIVE_DATA", SHARED))
R20 = DATA / "resnet-cifar10" / "resnet20-12fca82f.th"
CIFAR_TEST = DATA / "cifar10-jpeg" / "test"

CASES = [
    ("mlp", (1, 28, 28), {"hidden": (32, 16)}),
    ("mlp", (64,), {"hidden": "20,10"}),
    ("lenet300", (1, 28, 28), {}),
    ("lenet5", (1, 28, 28), {}),
    ("lenet5", (1, 8, 8), {}),
    ("lenet5", (3, 32, 32), {}),
    ("resnet20", (3, 32, 32), {}),
    ("resnet32", (3, 32, 32), {}),
    ("resnet44", (3, 32, 32), {}),
    ("resnet56", (3, 32, 32), {}),
    ("densecat", (64,), {"depth": 3, "width": 8}),
    ("densecat", (3, 16, 16), {"depth": 3, "width": 4, "kind": "cnn", "batchnorm": True}),
    ("torchvision:resnet18", (3, 32, 32), {}),
    ("torchvision:mobilenet_v3_small", (3, 32, 32), {}),
    ("vit_tiny", (3, 32, 32), {"depth": 2, "width": 16, "heads": 2, "mlp": 32}),
    ("vit_tiny", (1, 28, 28), {"depth": 1, "width": 8, "heads": 2, "mlp": 16, "patch": 7}),
]


@pytest.mark.parametrize("name,shape,kw", CASES, ids=[f"{c[0]}-{'x'.join(map(str, c[1]))}" for c in CASES])
def test_build_shape_and_fx_trace(name, shape, kw):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_shape=shape, **kw).eval()
    x = torch.randn(3, *shape)
    y = model(x)
    assert y.shape == (3, 7)
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(x), y)


def test_lenet300_is_300_100():
    m = build_model("lenet300", in_shape=(1, 28, 28))
    assert [tuple(p.shape) for n, p in m.named_parameters() if n.endswith("weight")] == [(300, 784), (100, 300), (10, 100)]


def test_resnet20_parameter_count_and_names():
    m = build_model("resnet20")
    assert sum(p.numel() for p in m.parameters()) == 269_722
    names = dict(m.named_modules())
    for n in ("conv1", "bn1", "layer1.0.conv1", "layer1.0.bn2", "layer3.2.conv2", "linear"):
        assert n in names


def test_unknown_model_and_torchvision_name_errors():
    with pytest.raises(ValueError, match=r"unknown model 'nope'; available"):
        build_model("nope")
    with pytest.raises(ValueError, match=r"unknown model 'LeNet3000'; did you mean 'lenet300' for 'lenet3000'\?; avail"):
        build_model("LeNet3000")
    with pytest.raises(ValueError, match="torchvision has no classifier 'nope'"):
        build_model("torchvision:nope")
    with pytest.raises(ValueError, match="unknown model family"):
        build_model("foo:bar")


@pytest.mark.parametrize("bad", [0, -1, 2.5, 3.0, True, "10", None])
def test_num_classes_that_is_not_a_whole_number_of_outputs_is_refused(bad):
    """num_classes=0 built a 0-output model and 2.5 was cut to 2, silently."""
    with pytest.raises(ValueError, match=rf"num_classes must be a whole number of outputs, at least 1, got {bad!r}"):
        build_model("mlp", num_classes=bad, in_shape=(8,))


@pytest.mark.parametrize("bad", [300.7, [300, 100.5], True, [True, 100], "3.5", None])
def test_hidden_sizes_that_are_not_whole_numbers_are_refused(bad):
    """hidden=300.7 built a 300-unit layer and hidden=True a 1-unit one, silently."""
    with pytest.raises(ValueError, match="hidden sizes must be whole numbers"):
        build_model("mlp", num_classes=3, in_shape=(8,), hidden=bad)


def test_hidden_sizes_as_text_numbers_and_numpy_ints_build():
    widths = lambda m: [l.out_features for l in m.modules() if isinstance(l, torch.nn.Linear)]  # noqa: E731
    assert widths(build_model("mlp", num_classes=3, in_shape=(8,), hidden=" 30, 10")) == [30, 10, 3]
    assert widths(build_model("mlp", num_classes=3, in_shape=(8,), hidden=np.int64(7))) == [7, 3]
    assert widths(build_model("mlp", num_classes=3, in_shape=(8,), hidden=[np.int32(5), 4])) == [5, 4, 3]


def test_num_classes_of_one_and_integer_tensors_build():
    assert build_model("mlp", num_classes=1, in_shape=(8,))(torch.randn(2, 8)).shape == (2, 1)  # a regression head
    assert build_model("lenet5", num_classes=torch.tensor(3))(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    assert build_model("mlp", num_classes=np.int64(3), in_shape=(8,))(torch.randn(2, 8)).shape == (2, 3)


def test_register_model_extends_registry():
    @register_model("tiny_test_net")
    def tiny(num_classes=10, in_shape=None):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, num_classes))

    assert build_model("tiny_test_net", num_classes=3)(torch.randn(2, 4)).shape == (2, 3)
    register_model("tiny_test_net")(tiny)  # the same definition again (a re-run cell): quiet

    def other(num_classes=10, in_shape=None):
        return tiny(num_classes, in_shape)

    with pytest.raises(ValueError, match="model 'tiny_test_net' is already registered"):
        register_model("tiny_test_net")(other)


def test_load_weights_wrappers_prefix_and_mismatch(tmp_path):
    src = build_model("torchvision:resnet18", num_classes=5)
    sd = {"module." + k: v for k, v in src.state_dict().items()}
    path = tmp_path / "w.pt"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    dst = build_model("torchvision:resnet18", num_classes=5, weights=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    # Wrong class count: named shape mismatch, and the model is left untouched.
    other = build_model("torchvision:resnet18", num_classes=4)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(WeightsMismatchError, match=r"fc\.weight: file \(5, 512\) vs model \(4, 512\)"):
        load_weights(other, path)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    with pytest.raises(WeightsMismatchError, match=r"missing keys \[layer1\.2\.conv1\.weight"):
        load_weights(build_model("torchvision:resnet34", num_classes=5), path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model("lenet5", weights=str(tmp_path / "absent.pt"))


@pytest.mark.parametrize("spoil, match", [
    # each passed the name and shape checks, and load_state_dict raised (or dropped values) after copying the keys before it
    (lambda t: torch.empty(t.shape, device="meta"), r"'fc3\.bias' as a meta tensor, which has a shape but no values"),
    (lambda t: t.to_sparse(), r"'fc3\.bias' as a torch\.sparse_coo tensor.*\.to_dense\(\)"),
    (lambda t: (t + 1j).to(torch.cfloat), r"'fc3\.bias' as torch\.complex64, and the model's is torch\.float32: the imaginary"),
    (lambda t: t > 0, r"'fc3\.bias' as torch\.bool, and the model's is torch\.float32"),
])
def test_load_weights_refuses_a_tensor_the_model_cannot_take_before_copying_any(tmp_path, spoil, match):
    torch.manual_seed(0)
    model, src = build_model("mlp", num_classes=3, in_shape=(8,)), build_model("mlp", num_classes=3, in_shape=(8,))
    sd = dict(src.state_dict())
    assert list(sd)[-1] == "fc3.bias"  # the last one: every other key would be copied before it
    sd["fc3.bias"] = spoil(sd["fc3.bias"])
    torch.save(sd, tmp_path / "w.pt")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsMismatchError, match=match):
        load_weights(model, tmp_path / "w.pt")
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # a half-precision file still loads into a float32 model, as before
    half = {k: v.half() for k, v in src.state_dict().items()}
    torch.save(half, tmp_path / "half.pt")
    load_weights(model, tmp_path / "half.pt")
    assert all(torch.equal(model.state_dict()[k], v.float()) for k, v in half.items())


def test_load_weights_safetensors(tmp_path):
    from safetensors.torch import save_file

    src = build_model("lenet5")
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    dst = build_model("lenet5", weights=str(tmp_path / "w.safetensors"))
    assert torch.equal(dst.fc3.weight, src.fc3.weight)


def test_densecat_input_depths_constructed():
    m = DenseCat((5,), num_classes=3, depth=3, width=2)
    assert m.layers[0].in_features == 5 and m.layers[2].in_features == 9
    assert m.classifier.in_features == 11
    assert m.input_depths("layers.0").tolist() == [0] * 5
    assert m.input_depths("layers.2.weight").tolist() == [0] * 5 + [1, 1, 2, 2]
    assert m.input_depths("classifier").tolist() == [0] * 5 + [1, 1, 2, 2, 3, 3]
    cnn = DenseCat((3, 8, 8), num_classes=4, depth=2, width=5, kind="cnn")
    assert cnn.layers[1].in_channels == 8
    assert cnn.input_depths("layers.1").tolist() == [0] * 3 + [1] * 5
    assert cnn.input_depths("classifier").tolist() == [0] * 3 + [1] * 5 + [2] * 5
    with pytest.raises(KeyError, match="no prunable layer 'layers.7'"):
        m.input_depths("layers.7")


def test_densecat_depths_match_real_signal_flow():
    """Zeroing the classifier columns labelled depth 3 cuts the last layer (layers.2) off exactly."""
    torch.manual_seed(0)
    m = DenseCat((4,), num_classes=2, depth=3, width=3).eval()
    x = torch.randn(6, 4)
    depths = m.input_depths("classifier")
    with torch.no_grad():
        ref = m(x)
        m.classifier.weight[:, depths == 3] = 0
        out_a = m(x)
        m.layers[2].bias += 10.0
        out_b = m(x)
    assert not torch.equal(ref, out_a)
    torch.testing.assert_close(out_a, out_b)  # layers.2 feeds only the depth-3 columns


@pytest.mark.skipif(not R20.is_file() or not CIFAR_TEST.is_dir(),
                    reason=f"shared data absent ({R20} / {CIFAR_TEST}); set ADAPTIVE_DATA")
def test_resnet20_checkpoint_strict_and_accurate():
    from PIL import Image

    model = build_model("resnet20", weights=str(R20)).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    classes = sorted(p.name for p in CIFAR_TEST.iterdir())
    xs, ys = [], []
    for label, c in enumerate(classes):  # first 26 files of each class folder: 260 images
        for f in sorted((CIFAR_TEST / c).iterdir())[:26]:
            img = torch.frombuffer(bytearray(Image.open(f).convert("RGB").tobytes()), dtype=torch.uint8)
            xs.append(img.view(32, 32, 3).permute(2, 0, 1).float().div(255))
            ys.append(label)
    x = (torch.stack(xs)[:256] - mean) / std
    y = torch.tensor(ys)[:256]
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.70, acc


def test_unreadable_weights_files_are_named_not_tracebacks(tmp_path):
    from adaptive.models.weights import WeightsMismatchError, read_state_dict

    good = tmp_path / "good.pt"
    torch.save(torch.nn.Linear(20, 20).state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a tensor file at all")
    for p in (truncated, empty, garbage):
        with pytest.raises(WeightsMismatchError, match="cannot be read.*copy it again"):
            read_state_dict(p)
    with pytest.raises(FileNotFoundError, match="is a folder"):
        read_state_dict(tmp_path)
    assert set(read_state_dict(good)) == {"weight", "bias"}


def test_vit_tiny_is_a_connectome_of_every_weight_matrix_and_checks_its_arguments():
    import adaptive

    model = build_model("vit_tiny", num_classes=10, in_shape=(1, 28, 28), depth=2, width=16, heads=2, mlp=32, patch=7)
    conn = adaptive.Connectome(model)
    assert set(conn.names) == {n for n, p in model.named_parameters() if p.dim() >= 2 and "weight" in n}
    assert any(n.endswith("self_attention.in_proj_weight") for n in conn.names)
    assert model.heads.head.weight.abs().sum() > 0  # not torchvision's zero head: gradients flow from the start
    with pytest.raises(ValueError, match="multiple of patch"):
        build_model("vit_tiny", in_shape=(3, 32, 32), patch=5)
    with pytest.raises(ValueError, match="multiple of heads"):
        build_model("vit_tiny", in_shape=(3, 32, 32), width=10, heads=4)


def test_module_versions_survive_a_pruned_state_dict_and_a_weights_file(tmp_path):
    """torchvision's MNASNet refuses a state_dict without its modules' versions (``_metadata``):
    dense_state_dict() and read_state_dict rebuilt plain dicts, so its pruned weights did not load into
    a vanilla model and an ordinary weights file (here saved under DataParallel's prefix) was refused."""
    import torchvision

    import adaptive

    torch.manual_seed(0)
    model = torchvision.models.mnasnet0_5(num_classes=10).eval()
    conn = adaptive.Connectome(model)
    conn.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in conn.masks.items()})
    torch.save(conn.dense_state_dict(), tmp_path / "pruned.pt")
    vanilla = torchvision.models.mnasnet0_5(num_classes=10).eval()
    vanilla.load_state_dict(torch.load(tmp_path / "pruned.pt", weights_only=True), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(vanilla(x), model(x))
    wrapped = torch.nn.DataParallel(torchvision.models.mnasnet0_5(num_classes=10))
    torch.save(wrapped.state_dict(), tmp_path / "plain.pt")
    fresh = load_weights(torchvision.models.mnasnet0_5(num_classes=10), str(tmp_path / "plain.pt"))
    # (DataParallel moves its module to the first GPU where there is one)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(fresh.state_dict().values(), wrapped.module.state_dict().values()))


def test_a_versioned_file_without_num_batches_tracked_and_nested_wrapper_prefixes_load(tmp_path):
    """Keeping the modules' versions made BatchNorm refuse a file without num_batches_tracked (PyTorch
    fills it only for unversioned files), half-loading the model; and torch.compile(DataParallel(m))
    keys (_orig_mod.module.) were stripped once, so the file was refused."""
    def net():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))

    torch.manual_seed(0)
    src = net()
    src[1].running_mean.fill_(5.0)
    sd = src.state_dict()
    del sd["1.num_batches_tracked"]  # an old checkpoint; the dict keeps its _metadata
    torch.save(sd, tmp_path / "old.pt")
    model = load_weights(net(), str(tmp_path / "old.pt"))
    assert torch.equal(model[1].running_mean, torch.full((4,), 5.0)) and int(model[1].num_batches_tracked) == 0
    # a state_dict read already (graphs' command line reads the file once): loaded the same, not changed
    from adaptive.models.weights import read_state_dict

    read = read_state_dict(str(tmp_path / "old.pt"))
    keys = list(read)
    model = load_weights(net(), str(tmp_path / "gone.pt"), state_dict=read)  # the path only names the file
    assert torch.equal(model[1].running_mean, torch.full((4,), 5.0)) and list(read) == keys
    assert read._metadata == sd._metadata
    nested = {f"_orig_mod.module.{k}": v for k, v in src.state_dict().items()}
    torch.save(nested, tmp_path / "nested.pt")
    model = load_weights(net(), str(tmp_path / "nested.pt"))
    assert torch.equal(model[0].weight, src[0].weight)


def test_a_connectome_file_given_as_weights_is_named_as_one(tmp_path):
    """--weights run/connectome.safetensors said only "does not match model ... Check --model and num_classes",
    though no --model would fit: it is a connectome file (masks), not weights."""
    import adaptive

    model = build_model("lenet300")
    adaptive.Connectome(model).save(tmp_path / "connectome.safetensors")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsMismatchError, match=r"it is a connectome file, Connectome.save's masks and not a "
                                                   r"network's weights: give the weights file beside it"):
        load_weights(model, str(tmp_path / "connectome.safetensors"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    from safetensors.torch import save_file  # another safetensors file that does not fit: no such words

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsMismatchError) as e:
        load_weights(model, str(tmp_path / "other.safetensors"))
    assert "connectome file" not in str(e.value)
