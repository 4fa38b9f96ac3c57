"""Data layer: data-dir resolution, stratified holdout, datasets, lazy test split, clear errors."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import adaptive.paths as paths
from adaptive.data import (DatasetNotFoundError, get_dataloaders, get_datasets, random_crop_flip,
                           stratified_split, stratified_subset)
from adaptive.data import folder_cache
from adaptive.data.cifar import CLASSES as CIFAR10_CLASSES

torch.set_num_threads(1)

SHARED_MNIST = paths.SHARED_DATA / "mnist" / "mnist.npz"


# ---------------------------------------------------------------- paths

def test_resolve_data_dir_order(tmp_path, monkeypatch):
    monkeypatch.delenv("ADAPTIVE_DATA", raising=False)
    monkeypatch.setattr(paths, "SHARED_DATA", tmp_path / "shared")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ADAPTIVE_CACHE", raising=False)
    assert paths.resolve_data_dir() == tmp_path / "home" / ".cache" / "adaptive" / "data"
    (tmp_path / "shared").mkdir()
    assert paths.resolve_data_dir() == tmp_path / "shared"
    monkeypatch.setenv("ADAPTIVE_DATA", str(tmp_path / "env"))
    assert paths.resolve_data_dir() == tmp_path / "env"
    assert paths.resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert paths.candidate_data_dirs() == [tmp_path / "env", tmp_path / "shared",
                                           tmp_path / "home" / ".cache" / "adaptive" / "data"]


def test_repo_relative_shared_dir():
    assert paths.SHARED_DATA == Path(paths.__file__).resolve().parent.parent.parent / "shared" / "data"


# ---------------------------------------------------------------- splits

def test_stratified_split_disjoint_stratified_seeded():
    labels = torch.arange(5).repeat_interleave(torch.tensor([100, 200, 50, 10, 40]))  # grouped by class
    kept, drawn = stratified_split(labels, 0.1, seed=3)
    assert set(kept.tolist()).isdisjoint(drawn.tolist())
    assert sorted(kept.tolist() + drawn.tolist()) == list(range(len(labels)))
    assert torch.bincount(labels[drawn], minlength=5).tolist() == [10, 20, 5, 1, 4]
    # Random within class, not the first examples of each class.
    assert not torch.equal(drawn[:10], torch.arange(10))
    again, _ = stratified_split(labels, 0.1, seed=3)
    other, _ = stratified_split(labels, 0.1, seed=4)
    assert torch.equal(kept, again) and not torch.equal(kept, other)
    with pytest.raises(ValueError, match=r"fraction \(the holdout fraction\) must be in \[0, 1\), got 1.0: give fraction=0.1"):
        stratified_split(labels, 1.0)
    sub = stratified_subset(labels, 40, seed=0)
    assert torch.bincount(labels[sub], minlength=5).tolist() == [10, 20, 5, 1, 4]


# ---------------------------------------------------------------- datasets

def test_digits_offline_and_lazy_test():
    s = get_datasets("digits", holdout=0.2, seed=1)
    train, held, test = s
    assert s.num_classes == 10 and s.in_shape == (1, 8, 8)
    assert not test.materialized
    assert len(train) + len(held) == 1438 and abs(len(held) - 0.2 * 1438) <= 10
    x, y = train[0]
    assert x.shape == (1, 8, 8) and isinstance(y, int)
    xs = torch.stack([train[i][0] for i in range(len(train))])
    assert abs(xs.mean().item()) < 0.05 and abs(xs.std().item() - 1) < 0.05
    assert set(train.indices.tolist()).isdisjoint(held.indices.tolist())
    assert len(test) == 359 and test.materialized
    # The digits train/test split is fixed, whatever the holdout seed.
    assert torch.equal(get_datasets("digits", seed=7).test.dataset.labels, test.dataset.labels)


def test_digits_says_a_data_dir_is_not_used(tmp_path):
    with pytest.warns(UserWarning, match="ships with scikit-learn.*not used"):
        s = get_datasets("digits", data_dir=tmp_path)
    assert s.num_classes == 10


def test_digits_are_read_from_their_cache_as_scikit_learn_gives_them(tmp_path, monkeypatch):
    """Importing sklearn.datasets costs a second: the digits arrays are cached, bit for bit what
    load_digits gives; a damaged or altered cache is not trusted, and one that cannot be written
    only costs the import again."""
    from sklearn.datasets import load_digits

    from adaptive.data import digits as D

    d = load_digits()
    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / D.CACHE_NAME

    def same(arrays):
        images, target = arrays
        return (images.dtype == d.images.dtype and target.dtype == d.target.dtype
                and np.array_equal(images, d.images) and np.array_equal(target, d.target))

    def without_sklearn():  # what is read while importing scikit-learn's loader fails
        with monkeypatch.context() as m:
            m.setitem(sys.modules, "sklearn.datasets", None)
            return D._digits_arrays()

    assert same(D._digits_arrays()) and cache.is_file()  # read by scikit-learn, cached
    assert same(without_sklearn())  # read from the cache
    good = cache.read_bytes()
    cache.write_bytes(good[: len(good) // 2])  # cut short
    with pytest.raises(ImportError):
        without_sklearn()
    assert same(D._digits_arrays()) and same(without_sklearn())  # rewritten
    with np.load(cache) as z:
        altered = {k: z[k] for k in z.files}
    altered["images"][0, 0, 0] += 1  # a value changed, the checksum not
    np.savez_compressed(cache, **altered)
    with pytest.raises(ImportError):
        without_sklearn()
    monkeypatch.setattr(D, "_sklearn_source", lambda: "another scikit-learn")
    with pytest.raises(ImportError):  # read by another scikit-learn's loader or file: not used
        without_sklearn()
    monkeypatch.undo()
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("ADAPTIVE_CACHE", str(tmp_path / "file" / "cache"))  # a folder that cannot be made
    assert same(D._digits_arrays()) and get_datasets("digits").num_classes == 10


def _write_npz(path, n_train=60, n_test=20):
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
             y_train=np.arange(n_train) % 10, x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
             y_test=np.arange(n_test) % 10)


def test_mnist_from_npz_file(tmp_path):
    (tmp_path / "mnist").mkdir()
    _write_npz(tmp_path / "mnist" / "mnist.npz")
    raw = np.load(tmp_path / "mnist" / "mnist.npz")
    s = get_datasets("mnist", data_dir=tmp_path, holdout=0.2, seed=0)
    assert len(s.train) == 50 and len(s.holdout) == 10  # round(0.2 * 6) = 1 of each class
    assert torch.bincount(s.holdout.targets, minlength=10).tolist() == [1] * 10
    i = int(s.train.indices[0])
    x, y = s.train[0]
    expect = (torch.from_numpy(raw["x_train"][i]).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(x[0], expect)
    assert y == raw["y_train"][i]
    assert not s.test.materialized and len(s.test) == 20


@pytest.mark.skipif(not SHARED_MNIST.is_file(), reason=f"shared MNIST absent at {SHARED_MNIST}")
def test_mnist_shared_npz():
    s = get_datasets("mnist", data_dir=paths.SHARED_DATA, holdout=0.1, seed=0)
    assert (len(s.train), len(s.holdout)) == (54_001, 5_999)
    counts = torch.bincount(s.holdout.targets, minlength=10)
    totals = torch.bincount(s.train.labels, minlength=10)  # the whole train split
    assert torch.equal(counts, torch.round(totals * 0.1).long())
    assert not s.test.materialized
    x, _ = s.test[0]
    assert x.shape == (1, 28, 28) and len(s.test) == 10_000


def test_missing_dataset_lists_every_path(tmp_path, monkeypatch):
    for name, rel in [("mnist", "mnist/mnist.npz"), ("cifar10", "cifar10-jpeg/train"), ("imagenet", "imagenet/train")]:
        with pytest.raises(DatasetNotFoundError) as e:
            get_datasets(name, data_dir=tmp_path)
        msg = str(e.value)
        assert "\n" not in msg and f"dataset {name!r} not found" in msg
        assert str(tmp_path / rel) in msg and "--data-dir (data_dir= in Python" in msg and "ADAPTIVE_DATA" in msg
    monkeypatch.setenv("ADAPTIVE_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(paths, "SHARED_DATA", tmp_path / "shared")
    with pytest.raises(DatasetNotFoundError) as e:
        get_datasets("mnist")
    msg = str(e.value)
    for d in paths.candidate_data_dirs():
        assert str(d / "mnist" / "mnist.npz") in msg
    assert "download=True" in msg


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'nope'; available: .*digits"):
        get_datasets("nope")


def _write_folder(root, n_per_class=6, classes=("cat", "dog", "emu")):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / c / f"{i:04d}.png")


def test_cifar10_folder_cache_holdout_and_lazy_test(tmp_path, monkeypatch):
    _write_folder(tmp_path / "data" / "cifar10-jpeg" / "train", classes=CIFAR10_CLASSES)
    _write_folder(tmp_path / "data" / "cifar10-jpeg" / "test", n_per_class=2, classes=CIFAR10_CLASSES)
    cache = tmp_path / "cache"
    s = get_datasets("cifar10", data_dir=tmp_path / "data", holdout=1 / 3, seed=0, cache_dir=cache,
                     normalize="none")
    assert s.classes == list(CIFAR10_CLASSES) and s.in_shape == (3, 32, 32)
    assert torch.bincount(s.holdout.targets).tolist() == [2] * 10  # class-grouped files, stratified draw
    assert set(s.train.indices.tolist()).isdisjoint(s.holdout.indices.tolist())
    assert folder_cache.cache_file(tmp_path / "data/cifar10-jpeg/train", "cifar10-jpeg-train", cache).is_file()
    assert not folder_cache.cache_file(tmp_path / "data/cifar10-jpeg/test", "cifar10-jpeg-test", cache).exists()
    # Pixels survive decoding exactly (PNG is lossless).
    from PIL import Image

    i = int(s.train.indices[0])
    cls, j = s.classes[i // 6], i % 6
    ref = torch.from_numpy(np.array(Image.open(tmp_path / "data/cifar10-jpeg/train" / cls / f"{j:04d}.png")))
    torch.testing.assert_close(s.train[0][0], ref.permute(2, 0, 1).float() / 255)
    # Second build reads the cache instead of decoding.
    decoded, real = [], folder_cache.decode_folder
    monkeypatch.setattr(folder_cache, "decode_folder", lambda root, **k: decoded.append(root.name) or real(root, **k))
    s2 = get_datasets("cifar10", data_dir=tmp_path / "data", cache_dir=cache)
    assert decoded == []
    assert len(s2.test) == 20 and decoded == ["test"]  # the test split is decoded when first used
    assert folder_cache.cache_file(tmp_path / "data/cifar10-jpeg/test", "cifar10-jpeg-test", cache).is_file()
    x, _ = s2.train[0]
    assert abs(x.mean().item()) < 2.5  # imagenet normalisation by default


def test_random_crop_flip_is_a_window_of_the_padded_image():
    torch.manual_seed(0)
    x = torch.randn(4, 2, 6, 6)
    out = random_crop_flip(x, pad=2)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(4):
        windows = [padded[b, :, i:i + 6, j:j + 6] for i in range(5) for j in range(5)]
        windows += [w.flip(-1) for w in windows]
        assert any(torch.equal(out[b], w) for w in windows)


def test_fake_and_dataloaders_seeded_and_test_untouched():
    kw = dict(shape=(3, 8, 8), num_classes=4, train_size=64, test_size=16, holdout=0.25, seed=5)
    a = get_dataloaders("fake", 8, **kw)
    b = get_dataloaders("fake", 8, **kw)
    assert a.num_classes == 4 and a.in_shape == (3, 8, 8)
    xa, ya = next(iter(a.train))
    xb, yb = next(iter(b.train))
    assert xa.shape == (8, 3, 8, 8) and torch.equal(xa, xb) and torch.equal(ya, yb)
    assert sum(len(y) for _, y in a.holdout) == 16
    assert not a.datasets.test.materialized
    assert sum(len(y) for _, y in a.test) == 16 and a.datasets.test.materialized
    capped = get_datasets("fake", test_subset=8, **kw).test
    assert len(capped) == 8 and torch.bincount(capped.targets, minlength=4).tolist() == [2, 2, 2, 2]


def test_imagenet_folder_mechanics(tmp_path):
    _write_folder(tmp_path / "imagenet" / "train", n_per_class=4, classes=("n01", "n02"))
    _write_folder(tmp_path / "imagenet" / "val", n_per_class=1, classes=("n01", "n02"))
    dl = get_dataloaders("imagenet", 4, data_dir=tmp_path, holdout=0.25, image_size=24, resize=28, augment=True)
    assert dl.num_classes == 2 and dl.in_shape == (3, 24, 24)
    assert torch.bincount(dl.datasets.holdout.targets).tolist() == [1, 1]
    x, y = next(iter(dl.train))
    assert x.shape == (4, 3, 24, 24) and set(y.tolist()) <= {0, 1}
    assert not dl.datasets.test.materialized
    assert [y.tolist() for _, y in dl.test] == [[0, 1]]


def test_imagenet_augmentation_keyed_on_seed_epoch_and_sample(tmp_path):
    _write_folder(tmp_path / "imagenet" / "train", n_per_class=4, classes=("n01", "n02"))
    _write_folder(tmp_path / "imagenet" / "val", n_per_class=1, classes=("n01", "n02"))
    train = get_datasets("imagenet", data_dir=tmp_path, holdout=0.25, image_size=12, resize=16, augment=True).train
    train.set_epoch(1, seed=3)
    a = [train[i][0] for i in range(len(train))]
    state = torch.random.get_rng_state()
    b = [train[i][0] for i in reversed(range(len(train)))][::-1]  # another order, other RNG use between
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left as it was
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    sub = train.select([2, 0])
    assert torch.equal(sub[0][0], a[2]) and torch.equal(sub[1][0], a[0])  # views keep the key
    train.set_epoch(2)
    c = [train[i][0] for i in range(len(train))]
    assert not all(torch.equal(p, q) for p, q in zip(a, c))  # another epoch, other crops
    unkeyed = get_datasets("imagenet", data_dir=tmp_path, holdout=0.25, image_size=12, resize=16, augment=True).train
    torch.manual_seed(0)
    d = [unkeyed[i][0] for i in range(len(unkeyed))]
    torch.manual_seed(1)
    assert not all(torch.equal(p, q) for p, q in zip(d, (unkeyed[i][0] for i in range(len(unkeyed)))))


def test_augmentation_keyed_on_seed_epoch_and_example():
    from adaptive.data import TensorImages

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g)
    ds = TensorImages(x, torch.arange(40) % 10, augment=True)
    ds.set_epoch(1, seed=7)
    a = ds.batch([3, 5, 9])[0]
    torch.rand(100)  # other consumers of the global RNG change nothing
    b = ds.batch([9, 3])[0]  # another batch composition: the same crop per example
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])
    ds.set_epoch(2)
    c = ds.batch(list(range(40)))[0]
    ds.set_epoch(1)
    d = ds.batch(list(range(40)))[0]
    assert torch.equal(d[[3, 5, 9]], a) and not torch.equal(c, d)  # epochs differ, seed kept
    rng = TensorImages(x, torch.arange(40) % 10, augment=True)
    rng.set_epoch(1)  # as Accelerate's loaders call it: no seed, the global RNG stays the source
    torch.manual_seed(0)
    e = rng.batch([3, 5, 9])[0]
    torch.manual_seed(1)
    assert not torch.equal(e, rng.batch([3, 5, 9])[0])
    plain = TensorImages(x, torch.arange(40) % 10, augment=False)
    assert not torch.equal(d, plain.batch(list(range(40)))[0])  # it does augment


def test_dataset_facts_are_what_the_data_says_known_before_it_is_read(tmp_path):
    """dataset_facts gives (classes, input shape) unread, for a recipe to build the model (and refuse
    a target beyond it) before the data loads; each family's facts agree with its built Source."""
    from adaptive.data import dataset_facts

    _write_folder(tmp_path / "imagenet" / "train", n_per_class=2, classes=("n01", "n02", "n03"))
    _write_folder(tmp_path / "imagenet" / "val", n_per_class=1, classes=("n01", "n02", "n03"))
    (tmp_path / "mnist").mkdir()
    _write_npz(tmp_path / "mnist" / "mnist.npz")
    for name, kw in (("fake", dict(shape=[2, 5], num_classes=3, train_size=30)), ("digits", {}),
                     ("mnist", dict(data_dir=tmp_path)), ("imagenet", dict(data_dir=tmp_path, image_size=12, resize=16)),
                     ("folder", dict(data_dir=tmp_path / "imagenet", image_size=12, resize=16))):
        s = get_datasets(name, holdout=0.3, **kw)
        assert dataset_facts(name, **kw) == (s.num_classes, s.in_shape), name
    assert dataset_facts("mnist", data_dir=tmp_path / "nowhere") == (10, (1, 28, 28))  # it reads nothing
    assert dataset_facts("imagenet", data_dir=tmp_path / "nowhere") is None  # no folder: its builder says so
    assert dataset_facts("fake", shape="x") is None  # a bad argument likewise
    assert dataset_facts("cifar10", data_dir=tmp_path) is None  # no CIFAR-10 there: its builder says so
    assert dataset_facts("cifar10", data_dir=tmp_path, download=True) == (10, (3, 32, 32))  # what it would fetch
    assert dataset_facts("mnist", data_dir=tmp_path / "nowhere", download=True) == (10, (1, 28, 28))  # facts without it


def _no_decoding(monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("an image was decoded")

    from adaptive.data import cifar

    monkeypatch.setattr(folder_cache, "decode_folder", refuse)
    monkeypatch.setattr(cifar, "cached_folder_tensor", refuse)


def test_cifar10_facts_from_folder_names_and_one_image_header(tmp_path, monkeypatch):
    """CIFAR-10's facts, nothing decoded: an ImageFolder copy's class folders and the size of the image
    its decoding sizes the tensor by (no transform resizes it: 10x12 images are a (3, 10, 12) input);
    torchvision's batches are 10 classes of (3, 32, 32). A layout its builder refuses has none."""
    from PIL import Image

    from adaptive.data import dataset_facts

    rng = np.random.default_rng(0)
    base = tmp_path / "cifar10-jpeg"
    for split, classes in (("train", CIFAR10_CLASSES), ("test", CIFAR10_CLASSES)):
        for c in classes:
            (base / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(base / split / c / f"{i}.png")
    with monkeypatch.context() as m:
        _no_decoding(m)
        facts = dataset_facts("cifar10", data_dir=tmp_path, normalize="cifar")
        assert dataset_facts("cifar10", data_dir=tmp_path, normalize="bogus") is None  # the builder refuses it
    s = get_datasets("cifar10", data_dir=tmp_path, holdout=1 / 3, cache_dir=tmp_path / "cache")
    assert facts == (s.num_classes, s.in_shape) == (10, (3, 10, 12))
    (base / "test" / "truck").rename(base / "test" / "fox")  # refused by the builder: no facts either
    assert dataset_facts("cifar10", data_dir=tmp_path) is None
    (base / "test").rename(tmp_path / "elsewhere")
    assert dataset_facts("cifar10", data_dir=tmp_path) is None

    import torchvision

    batches = tmp_path / "tv" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    cifar = torchvision.datasets.CIFAR10
    for name in [f for f, _ in cifar.train_list + cifar.test_list] + [cifar.meta["filename"]]:
        (batches / name).write_bytes(b"")
    assert dataset_facts("cifar10", data_dir=tmp_path / "tv") == (10, (3, 32, 32))  # torchvision's own shape
    (batches / "test_batch").unlink()
    assert dataset_facts("cifar10", data_dir=tmp_path / "tv") is None


@pytest.mark.skipif(not (paths.SHARED_DATA / "cifar10-jpeg" / "test").is_dir(),
                    reason=f"shared cifar10-jpeg absent at {paths.SHARED_DATA / 'cifar10-jpeg'}")
def test_cifar10_facts_are_the_shared_copys_source(monkeypatch):
    from adaptive.data import dataset_facts

    with monkeypatch.context() as m:
        _no_decoding(m)
        facts = dataset_facts("cifar10", data_dir=paths.SHARED_DATA)
    s = get_datasets("cifar10", data_dir=paths.SHARED_DATA)
    assert facts == (s.num_classes, s.in_shape) == (10, (3, 32, 32))


def test_dataset_facts_belong_to_the_name_a_builder_is_registered_under(monkeypatch):
    """The facts were kept on the builder function: an alias of a built-in (registered without facts)
    took the built-in's away, a plugin's alias with other facts gave them to the built-in too, and a
    bound method (which takes no attributes) could no longer be registered at all."""
    from adaptive import registry
    from adaptive.data import base, dataset_facts
    from adaptive.data.digits import digits

    monkeypatch.setattr(base, "_DATASETS", dict(base._DATASETS))
    monkeypatch.setattr(base, "_FACTS", dict(getattr(base, "_FACTS", {})), raising=False)
    base.register_dataset("digits_alias")(digits)
    base.register_dataset("digits_wrong", facts=lambda data_dir=None: (3, (1, 4, 4)))(digits)
    assert dataset_facts("digits") == (10, (1, 8, 8))
    assert dataset_facts("digits_alias") is None and dataset_facts("digits_wrong") == (3, (1, 4, 4))

    class Maker:
        def build(self, data_dir=None, download=False, augment=False):
            return digits(data_dir, download, augment)

    base.register_dataset("from_method", facts=lambda data_dir=None: (10, (1, 8, 8)))(Maker().build)
    assert get_datasets("from_method").num_classes == 10 and dataset_facts("from_method") == (10, (1, 8, 8))
    with pytest.raises(RuntimeError), registry.all_or_nothing():  # a plugin that fails halfway: its facts go too
        base.register_dataset("digits", replace=True, facts=lambda data_dir=None: (2, (5,)))(digits)
        raise RuntimeError("the plugin's import failed")
    assert dataset_facts("digits") == (10, (1, 8, 8))


def test_model_before_data_builds_once_from_facts_and_again_only_where_the_data_says_otherwise(monkeypatch):
    """The recipes' shared start: the model is built from the facts before the data, kept once the data
    agrees, built again for the data's classes and shape where a plugin's facts were wrong, and built
    only once the data has loaded where there are none."""
    from adaptive.data import base, model_before_data
    from adaptive.data.digits import digits

    monkeypatch.setattr(base, "_DATASETS", dict(base._DATASETS))
    monkeypatch.setattr(base, "_FACTS", dict(base._FACTS))
    base.register_dataset("digits_wrong", facts=lambda data_dir=None: (3, (1, 4, 4)))(digits)
    base.register_dataset("digits_none")(digits)
    for name, before, after in (("digits", [(10, (1, 8, 8))], [(10, (1, 8, 8))]),
                                ("digits_wrong", [(3, (1, 4, 4))], [(3, (1, 4, 4)), (10, (1, 8, 8))]),
                                ("digits_none", [], [(10, (1, 8, 8))])):
        built = []
        model_for = model_before_data(name, lambda k, shape: built.append((k, shape)) or object())
        assert built == before, name
        s = get_datasets(name)
        model = model_for(s.num_classes, s.in_shape)
        assert built == after, name
        if name == "digits":  # facts known and right: the one model, whatever sequence gives the shape
            assert model_for(10, [1, 8, 8]) is model and len(built) == 1


class _Uninspectable:
    """Facts whose signature cannot be inspected (as a C builtin's, or a partial of one)."""

    @property
    def __signature__(self):
        raise ValueError("no signature found")

    def __call__(self, data_dir=None, **kw):
        return 3, (4,)


@pytest.mark.parametrize("facts", [_Uninspectable(), max])
def test_facts_whose_signature_cannot_be_inspected_are_unknown_not_a_crash(facts):
    """dataset_facts inspected the facts' signature (for a ``download`` parameter) outside its guard:
    a callable inspect cannot read crashed the recipe; the facts are unknown now, and the model is
    built once the data has loaded."""
    from adaptive.data import dataset_facts, get_source_builder, model_before_data, register_dataset
    from adaptive.data.base import _DATASETS, _FACTS

    register_dataset("uninspectable_facts_for_test", facts=facts)(
        lambda data_dir=None, download=False, augment=False: get_source_builder("fake")(
            data_dir=data_dir, download=download, augment=augment, shape=[4], num_classes=3, train_size=8))
    try:
        assert dataset_facts("uninspectable_facts_for_test", download=True) is None
        built = []
        for_data = model_before_data("uninspectable_facts_for_test", lambda n, s: built.append((n, s)) or len(built),
                                     download=True)
        assert built == []
        s = get_datasets("uninspectable_facts_for_test", holdout=0.25)
        assert for_data(s.num_classes, s.in_shape) == 1 and built == [(3, (4,))]
    finally:
        _DATASETS.pop("uninspectable_facts_for_test", None)
        _FACTS.pop("uninspectable_facts_for_test", None)


def _cache_files(folder):
    """The cache files in ``folder``, each name less its path key (``cifar10-jpeg-train-<key>.pt``): lock files left out."""
    return sorted(p.name.rsplit("-", 1)[0] for p in folder.iterdir() if not p.name.startswith("."))


def test_cifar10_data_dir_may_be_the_image_folder_copy_itself(tmp_path):
    """--data-dir given as the ImageFolder copy that holds train/ and test/ (the docs' 'an ImageFolder such
    as cifar10-jpeg/{train,test}') reads it, into the same cache as its parent folder would."""
    _write_folder(tmp_path / "data" / "cifar10-jpeg" / "train", n_per_class=3, classes=CIFAR10_CLASSES)
    _write_folder(tmp_path / "data" / "cifar10-jpeg" / "test", n_per_class=1, classes=CIFAR10_CLASSES)
    own = get_datasets("cifar10", data_dir=tmp_path / "data" / "cifar10-jpeg", holdout=1 / 3, cache_dir=tmp_path / "c")
    parent = get_datasets("cifar10", data_dir=tmp_path / "data", holdout=1 / 3, cache_dir=tmp_path / "c")
    assert own.classes == parent.classes == list(CIFAR10_CLASSES) and len(own.test) == 10
    assert torch.equal(own.train.indices, parent.train.indices) and torch.equal(own.train[0][0], parent.train[0][0])
    assert _cache_files(tmp_path / "c") == ["cifar10-jpeg-test", "cifar10-jpeg-train"]


def test_a_data_dir_one_level_off_names_the_folder_that_holds_the_dataset(tmp_path):
    """A --data-dir given as another dataset's folder (the MNIST folder for cifar10), or as the copy's own
    train/, is refused naming the --data-dir that holds the dataset."""
    _write_folder(tmp_path / "data" / "cifar10-jpeg" / "train", n_per_class=1)
    _write_folder(tmp_path / "data" / "cifar10-jpeg" / "test", n_per_class=1)
    (tmp_path / "data" / "mnist").mkdir()
    for wrong, right in ((tmp_path / "data" / "mnist", tmp_path / "data"),
                         (tmp_path / "data" / "cifar10-jpeg" / "train", tmp_path / "data" / "cifar10-jpeg")):
        with pytest.raises(DatasetNotFoundError, match=f"--data-dir {right} holds it"):
            get_datasets("cifar10", data_dir=wrong, cache_dir=tmp_path / "c")
    with pytest.raises(DatasetNotFoundError) as e:  # nothing near: no suggestion
        get_datasets("cifar10", data_dir=tmp_path / "elsewhere" / "x" / "y" / "z", cache_dir=tmp_path / "c")
    assert "holds it" not in str(e.value)


def test_a_data_dir_with_another_datasets_train_and_test_is_not_read_as_cifar10(tmp_path):
    """--data-dir as the copy itself reads any folder's train/ and test/: one of another dataset (three
    classes, CIFAR-100's hundred) or a CIFAR-10 copy lacking a class was read as CIFAR-10, silently. It is
    refused naming the classes and --dataset folder; the copy under a cifar10-jpeg/ folder reads as before."""
    _write_folder(tmp_path / "other" / "train", n_per_class=1)
    _write_folder(tmp_path / "other" / "test", n_per_class=1)
    with pytest.raises(ValueError, match=r"--data-dir \S+other is not a CIFAR-10 copy: its train/ holds 3 class "
                                         r"folder\(s\), lacking airplane, .* with emu .*--dataset folder"):
        get_datasets("cifar10", data_dir=tmp_path / "other", cache_dir=tmp_path / "c")
    nine = CIFAR10_CLASSES[:-1]
    _write_folder(tmp_path / "nine" / "train", n_per_class=1, classes=nine)
    _write_folder(tmp_path / "nine" / "test", n_per_class=1, classes=nine)
    with pytest.raises(ValueError, match="holds 9 class folder\\(s\\), lacking truck \\("):
        get_datasets("cifar10", data_dir=tmp_path / "nine", cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()  # nothing decoded or cached


def test_cifar10_data_dir_given_as_dot_inside_the_copy_caches_under_its_name(tmp_path, monkeypatch):
    """get_datasets("cifar10", data_dir=".") run inside the copy: its cache files are named after the
    folder (cifar10-jpeg-train-<key>.pt), not "-train-<key>.pt"."""
    _write_folder(tmp_path / "cifar10-jpeg" / "train", n_per_class=3, classes=CIFAR10_CLASSES)
    _write_folder(tmp_path / "cifar10-jpeg" / "test", n_per_class=1, classes=CIFAR10_CLASSES)
    monkeypatch.chdir(tmp_path / "cifar10-jpeg")
    s = get_datasets("cifar10", data_dir=".", holdout=1 / 3, cache_dir=tmp_path / "c")
    assert len(s.test) == 10
    assert _cache_files(tmp_path / "c") == ["cifar10-jpeg-test", "cifar10-jpeg-train"]


@pytest.mark.parametrize("where", ["data_dir", "ADAPTIVE_DATA"])
def test_a_cifar10_copy_found_under_its_folder_name_with_other_classes_is_refused_too(tmp_path, monkeypatch, where):
    """The class folders were checked only where --data-dir was the copy itself: found as DIR/cifar10-jpeg (the
    documented layout, through --data-dir DIR or ADAPTIVE_DATA=DIR), a copy with truck renamed autotruck was read
    as CIFAR-10 with its labels renumbered by its folders (a pretrained resnet20: 19% where the copy gives 80%),
    and one without airplane as 9 classes."""
    renamed = tuple(sorted(c if c != "truck" else "autotruck" for c in CIFAR10_CLASSES))
    for split in ("train", "test"):
        _write_folder(tmp_path / "data" / "cifar10-jpeg" / split, n_per_class=1, classes=renamed)
    kw = {"data_dir": tmp_path / "data"} if where == "data_dir" else {}
    if where == "ADAPTIVE_DATA":
        monkeypatch.setenv("ADAPTIVE_DATA", str(tmp_path / "data"))
    with pytest.raises(ValueError, match=r"\S+cifar10-jpeg \(found for cifar10\) is not a CIFAR-10 copy: its train/ "
                                         r"holds 10 class folder\(s\), lacking truck, with autotruck .*--dataset folder "
                                         r"--data-dir \S+cifar10-jpeg"):
        get_datasets("cifar10", cache_dir=tmp_path / "c", **kw)
    assert not (tmp_path / "c").exists()  # nothing decoded or cached


def test_the_test_split_pickles_as_the_dataset_it_builds_for_spawned_loader_workers():
    """A DataLoader worker started by spawn or forkserver pickles its dataset: the test split's lazy factory, a
    closure, could not be pickled, and a run with --num_workers failed at its report, after training."""
    import pickle

    splits = get_datasets("digits", holdout=0.1, seed=0, test_subset=50)
    assert not splits.test.materialized
    back = pickle.loads(pickle.dumps(splits.test))
    assert len(back) == len(splits.test) == 50
    assert all(torch.equal(back[i][0], splits.test[i][0]) and back[i][1] == splits.test[i][1] for i in range(50))


@pytest.mark.parametrize("fault, problem", [
    ("test_labels_1_to_10", r"its test labels run from 1 to 10; MNIST's are the digits 0\.\.9"),
    ("negative_train_label", r"its train labels run from -1 to 9"),
    ("float_labels", r"its train labels are float64; MNIST's are integers 0\.\.9"),
    ("bool_labels", r"its train labels are bool"),
    ("float_images", r"its array x_train holds float32 images; MNIST's are uint8 \(0\.\.255\)"),
    ("int16_test_images", r"its array x_test holds int16 images"),
])
def test_mnist_npz_labels_and_images_of_other_values_are_refused_before_training(tmp_path, fault, problem):
    """Only shapes were checked: labels of 1..10 in the test split failed the run's report with torch's bare
    IndexError, float labels were cut to whole numbers, bool ones made two classes, float images of 0..255 were
    used unscaled (normalised pixels up to 827)."""
    rng = np.random.default_rng(0)
    a = dict(x_train=rng.integers(0, 256, (60, 28, 28), dtype=np.uint8), y_train=np.arange(60) % 10,
             x_test=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), y_test=np.arange(20) % 10)
    if fault == "test_labels_1_to_10":
        a["y_test"] = a["y_test"] + 1
    elif fault == "negative_train_label":
        a["y_train"][0] = -1
    elif fault == "float_labels":
        a["y_train"] = a["y_train"].astype(np.float64)
    elif fault == "bool_labels":
        a["y_train"] = a["y_train"] % 2 == 0
    elif fault == "float_images":
        a["x_train"] = a["x_train"].astype(np.float32)
    else:
        a["x_test"] = a["x_test"].astype(np.int16)
    (tmp_path / "mnist").mkdir()
    np.savez(tmp_path / "mnist" / "mnist.npz", **a)
    with pytest.raises(ValueError, match=r"mnist\.npz: " + problem):
        get_datasets("mnist", data_dir=tmp_path, holdout=0.2, seed=0)


def test_fake_data_of_vectors_says_it_does_not_augment():
    """--dataset fake --dataset_kw shape=[64] --augment true was accepted and recorded as augmenting,
    and trained bit for bit as without it, without a word (digits says so in the same case)."""
    from adaptive.data import get_source_builder

    with pytest.warns(UserWarning, match=r"augments images only \(shape \(C, H, W\)\), not shape \(64,\): "
                                         "augment=True is not used"):
        get_source_builder("fake")(augment=True, shape=(64,))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_source_builder("fake")(augment=True, shape=(1, 8, 8))  # images augment: no warning
        get_source_builder("fake")(augment=False, shape=(64,))
