"""Data splits, fingerprints, augmentation and model architectures in value: each test guards against one
careless edit no other test noticed (the comment names it)."""
import torch
from torch.utils.data import TensorDataset

from adaptive.data.fingerprint import content_fingerprint, dataset_fingerprint
from adaptive.data.tensors import TensorImages, random_crop_flip


def test_content_fingerprint_of_a_tensor_dataset_covers_its_labels():  # F4
    x = torch.arange(24.).view(4, 6)
    assert content_fingerprint(TensorDataset(x, torch.tensor([0, 1, 0, 1]))) != \
        content_fingerprint(TensorDataset(x, torch.tensor([1, 1, 0, 1])))


def test_content_fingerprint_tells_tensors_of_the_same_bytes_but_another_shape_apart():  # F3
    x, y = torch.arange(24.), torch.tensor([0, 1, 0, 1])
    assert content_fingerprint(TensorDataset(x.view(4, 6), y)) != content_fingerprint(TensorDataset(x.view(4, 2, 3), y))


class _Parts(torch.utils.data.Dataset):
    """A dataset whose only content hash is fingerprint_parts: the positions asked for."""

    def __len__(self):
        return 100

    def fingerprint_parts(self, positions):
        return [torch.as_tensor(positions)]


def test_dataset_fingerprint_hashes_as_many_examples_as_asked():  # F5
    ds = _Parts()
    assert dataset_fingerprint(ds, examples=3) != dataset_fingerprint(ds, examples=16)
    assert dataset_fingerprint(ds, examples=3) == dataset_fingerprint(ds, examples=3)


def test_fingerprint_of_a_view_follows_its_order_of_examples():  # T6
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (100, 1, 2, 2), generator=g, dtype=torch.uint8)
    y = torch.zeros(100, dtype=torch.long)  # one class: swapping two examples keeps the labels
    order = torch.arange(100)
    swapped = order.clone()
    swapped[[2, 3]] = swapped[[3, 2]]  # positions 2 and 3 are not among the 16 spread examples of 100
    a, b = TensorImages(x, y, order), TensorImages(x, y, swapped)
    assert not torch.equal(a.batch([2])[0], b.batch([2])[0])
    assert dataset_fingerprint(a) != dataset_fingerprint(b)


def test_random_crop_reaches_every_offset_from_the_global_generator():  # T1
    torch.manual_seed(0)
    x = torch.arange(1., 17.).view(1, 1, 4, 4).repeat(300, 1, 1, 1)
    out = random_crop_flip(x, pad=1, flip=False)
    corner = set(out[:, 0, 0, 0].tolist())  # the top-left pixel tells the offset (oy, ox) in 0..2
    assert corner == {0.0, 1.0, 2.0, 5.0, 6.0}  # 0: padding (oy or ox 0); 6.0 only at oy=ox=2


def test_select_of_a_view_selects_among_that_views_examples():  # T5
    x = torch.arange(10.).view(10, 1)
    y = torch.arange(10)
    view = TensorImages(x, y, torch.tensor([5, 6, 7, 8]))
    sub = view.select([0, 2])
    assert sub.indices.tolist() == [5, 7]
    assert sub.targets.tolist() == [5, 7]


def test_fake_data_seed_changes_the_data():  # K2
    from adaptive.data.fake import fake

    a = fake(shape=(4,), train_size=8, test_size=4, data_seed=0)
    b = fake(shape=(4,), train_size=8, test_size=4, data_seed=1)
    c = fake(shape=(4,), train_size=8, test_size=4, data_seed=0)
    xa, xb, xc = (s.eval_view(torch.arange(8)).batch(list(range(8)))[0] for s in (a, b, c))
    assert torch.equal(xa, xc) and not torch.equal(xa, xb)


def test_digits_train_split_is_standardised_by_its_own_mean_and_std_and_test_size_is_its_size():  # D1, D2
    from adaptive.data.digits import digits

    src = digits()
    n = len(src.train_labels)
    x, _ = src.eval_view(torch.arange(n)).batch(list(range(n)))
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-5
    assert src.test_size == len(src.test()) == 359


def _mnist_npz(path, n=20):
    import numpy as np

    g = np.random.default_rng(0)
    np.savez(path, x_train=g.integers(0, 256, (n, 28, 28), dtype=np.uint8), y_train=np.arange(n) % 10,
             x_test=g.integers(0, 256, (10, 28, 28), dtype=np.uint8), y_test=np.arange(10))


def test_mnist_test_split_is_normalised_as_the_train_split(tmp_path):  # N1
    import numpy as np

    from adaptive.data.mnist import MEAN, STD, mnist

    _mnist_npz(tmp_path / "mnist.npz")
    src = mnist(data_dir=tmp_path)
    xt, yt = src.test().batch(list(range(10)))
    raw = torch.from_numpy(np.load(tmp_path / "mnist.npz")["x_test"]).float().div(255).unsqueeze(1)
    assert torch.allclose(xt, (raw - MEAN[0]) / STD[0], atol=1e-6)
    x, _ = src.eval_view(torch.arange(20)).batch(list(range(20)))
    raw_train = torch.from_numpy(np.load(tmp_path / "mnist.npz")["x_train"]).float().div(255).unsqueeze(1)
    assert torch.allclose(x, (raw_train - MEAN[0]) / STD[0], atol=1e-6)


def test_mnist_augments_the_train_part_by_shifts_only_and_never_the_holdout(tmp_path):  # N2, N3
    from adaptive.data.mnist import mnist

    _mnist_npz(tmp_path / "mnist.npz")
    src = mnist(data_dir=tmp_path, augment=True)
    train, held = src.train_view(torch.arange(20)), src.eval_view(torch.arange(20))
    assert train.augment and train.pad == 2 and train.flip is False  # digits are no mirror images
    assert not held.augment
    torch.manual_seed(0)
    a = held.batch(list(range(20)))[0]
    b = held.batch(list(range(20)))[0]
    assert torch.equal(a, b)


def test_densecat_cnn_with_batchnorm_has_no_conv_biases_and_pools_by_the_mean():  # M2, M3
    import torch.nn.functional as F

    from adaptive.models import build_model

    net = build_model("densecat", num_classes=3, in_shape=(2, 5, 5), depth=2, width=4, kind="cnn", batchnorm=True)
    assert all(layer.bias is None for layer in net.layers)
    # conv weights 4*2*9 + 4*6*9, two batch norms 2*4 each, classifier (2+8)*3 + 3
    assert sum(p.numel() for p in net.parameters()) == 72 + 216 + 16 + 33
    net.eval()
    x = torch.randn(2, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    feats = [x]
    for layer, norm in zip(net.layers, net.norms):
        feats.append(F.relu(norm(layer(torch.cat(feats, 1)))))
    want = net.classifier(torch.cat(feats, 1).mean((2, 3)))
    assert torch.allclose(net(x), want, atol=1e-6)


def _folder(root, same=False):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                arr = first if same else rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")


def test_keyed_folder_augmentation_differs_between_samples(tmp_path):  # I2
    from torchvision.datasets import ImageFolder

    from adaptive.data.imagenet import FolderView, transforms

    _folder(tmp_path, same=True)  # every image the same: only the key of each sample tells their crops apart
    view = FolderView(ImageFolder(str(tmp_path / "train")), None, transforms(True, 12, 14))
    view.set_epoch(1, seed=3)
    assert not torch.equal(view[0][0], view[1][0])
    assert torch.equal(view[0][0], view[0][0])


def test_a_folder_views_fingerprint_covers_its_own_files_only(tmp_path):  # I3
    import numpy as np
    from PIL import Image
    from torchvision.datasets import ImageFolder

    from adaptive.data.imagenet import FolderView, transforms

    _folder(tmp_path)
    tf = transforms(False, 8, 8)
    view = FolderView(ImageFolder(str(tmp_path / "train")), torch.tensor([0, 1]), tf)
    assert len(view.fingerprint_all()[0]) == 2
    before = dataset_fingerprint(view)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "train" / "b" / "2.png")  # not in the view
    assert dataset_fingerprint(FolderView(ImageFolder(str(tmp_path / "train")), torch.tensor([0, 1]), tf)) == before


def test_a_folder_holdout_is_not_augmented(tmp_path):  # I6
    from adaptive.data.imagenet import folder

    _folder(tmp_path)
    src = folder(data_dir=tmp_path, augment=True, image_size=8, resize=8)
    held = src.eval_view(torch.arange(2))
    torch.manual_seed(0)
    a = held[0][0]
    torch.manual_seed(1)
    assert torch.equal(held[0][0], a)
    assert a.shape == (3, 8, 8)


def test_the_evaluation_transform_resizes_to_resize_then_crops_the_centre():  # I7
    import numpy as np
    from PIL import Image

    from adaptive.data.imagenet import MEAN, STD, transforms

    arr = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = transforms(False, image_size=4, resize=8)(Image.fromarray(arr))
    centre = torch.from_numpy(arr[2:6, 2:6]).permute(2, 0, 1).float() / 255
    want = (centre - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(out, want, atol=1e-5)


def test_lenet5_shapes_and_forward():  # M6, M7
    import torch.nn.functional as F

    from adaptive.models import build_model

    for side, feats in ((28, 400), (12, 16), (8, 64)):
        assert build_model("lenet5", num_classes=10, in_shape=(1, side, side)).fc1.in_features == feats
    net = build_model("lenet5", num_classes=10, in_shape=(1, 28, 28))
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    h = F.max_pool2d(F.relu(net.conv1(x)), 2)
    h = F.max_pool2d(F.relu(net.conv2(h)), 2).flatten(1)
    want = net.fc3(F.relu(net.fc2(F.relu(net.fc1(h)))))
    assert torch.allclose(net(x), want, atol=1e-6)


def test_mlp_default_sizes_and_bias_option():  # M8, M9
    from adaptive.models import build_model

    net = build_model("mlp", num_classes=10, in_shape=(1, 28, 28))
    assert [net.fc1.out_features, net.fc2.out_features, net.fc3.out_features] == [256, 128, 10]
    assert sum(p.numel() for p in net.parameters()) == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    plain = build_model("mlp", num_classes=3, in_shape=(4,), hidden=(5,), bias=False)
    assert plain.fc1.bias is None and plain.fc2.bias is None
    assert sum(p.numel() for p in plain.parameters()) == 4 * 5 + 5 * 3


def test_cifar_resnet_option_a_shortcut_and_block_forward():  # M10, M11
    import torch.nn.functional as F

    from adaptive.models.resnet_cifar import BasicBlock, PadShortcut

    x = torch.randn(2, 16, 6, 6, generator=torch.Generator().manual_seed(0))
    out = PadShortcut(32)(x)
    assert out.shape == (2, 32, 3, 3)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2]) and not out[:, :8].any() and not out[:, 24:].any()
    block = BasicBlock(16, 32, stride=2).eval()
    with torch.no_grad():
        for bn in (block.bn1, block.bn2):  # a shift, so that a ReLU in the wrong place shows
            bn.bias.fill_(-0.3)
        h = F.relu(block.bn1(block.conv1(x)))
        want = F.relu(block.bn2(block.conv2(h)) + out)
        assert torch.allclose(block(x), want, atol=1e-6)

