"""Data layer review: the holdout is a seeded stratified part of TRAIN that --subset respects, the
test split is read only for the final report (and nothing chosen depends on it), augmentation
touches the train part only, normalisation suits the pretrained CIFAR ResNets, and caches and
missing folders are handled honestly."""

import warnings

import numpy as np
import pytest
import torch

import adaptive.data as D
import adaptive.paths as paths
from adaptive.data import DatasetNotFoundError, folder_cache, get_datasets, stratified_split
from adaptive.data.folder_cache import cached_folder_tensor, scan_folder
from _scripts import load_script  # noqa: E402

torch.set_num_threads(1)

SHARED = paths.SHARED_DATA
MNIST = SHARED / "mnist" / "mnist.npz"
CIFAR = SHARED / "cifar10-jpeg"
RESNET20 = SHARED / "resnet-cifar10" / "resnet20-12fca82f.th"


def _labels(name):
    if name == "mnist":
        if not MNIST.is_file():
            pytest.skip(f"shared MNIST absent at {MNIST}")
        with np.load(MNIST) as f:
            return torch.from_numpy(f["y_train"]).long()
    if not (CIFAR / "train").is_dir():
        pytest.skip(f"shared cifar10-jpeg absent at {CIFAR}")
    return torch.tensor([c for _, c in scan_folder(CIFAR / "train")[1]])


# ---------------------------------------------------------------- 1. the holdout

@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_holdout_partitions_train_stratified_and_seeded(name):
    labels = _labels(name)
    n = len(labels)
    train, held = stratified_split(labels, 0.1, seed=0)
    assert set(train.tolist()).isdisjoint(held.tolist())
    assert torch.equal(torch.cat([train, held]).sort().values, torch.arange(n))  # covers TRAIN exactly
    full = torch.bincount(labels, minlength=10).double()
    assert (torch.bincount(labels[held], minlength=10) - 0.1 * full).abs().max() <= 0.5  # per-class rounding
    assert abs(len(held) - 0.1 * n) <= 5
    again, other = stratified_split(labels, 0.1, seed=0)[1], stratified_split(labels, 0.1, seed=1)[1]
    assert torch.equal(held, again)
    overlap = len(set(held.tolist()) & set(other.tolist())) / len(held)
    assert 0.05 < overlap < 0.15  # another seed: an independent draw (about 10% shared by chance)
    # never by position: cifar10-jpeg's files are grouped by class
    assert held.float().mean().item() == pytest.approx(n / 2, rel=0.05)


# ---------------------------------------------------------------- 2. the test split in the recipe

def _recipe():
    return load_script("recipes/adaptive.py", "recipe_adaptive_review")


def test_recipe_reads_test_split_only_for_the_report_and_chooses_nothing_by_it(tmp_path, monkeypatch):
    R = _recipe()
    real = D.get_datasets
    log = {"reads_during_training": 0, "training": True}

    def spying(*a, poison=False, **kw):
        s = real(*a, **kw)
        factory = s.test._factory

        def build():
            if log["training"]:
                log["reads_during_training"] += 1
            ds = factory()
            if poison:  # a garbage test split: every label wrong
                ds.labels = (ds.labels + 1) % 10
            return ds

        s.test._factory = build
        return s

    def on_step(state):
        assert log["training"]

    def run(out, poison):
        monkeypatch.setattr(D, "get_datasets", lambda *a, **kw: spying(*a, poison=poison, **kw))
        log["training"] = True
        orig_eval = R.evaluate

        def evaluate(acc, model, loader, *a, **k):
            if getattr(loader, "dataset", None) is not None and isinstance(loader.dataset, D.LazyDataset):
                log["training"] = False  # the final report
            return orig_eval(acc, model, loader, *a, **k)

        from recipes._adaptive import report, train

        for module in (train, report):  # the recipe's modules that call it: the loop's and the final report's
            monkeypatch.setattr(module, "evaluate", evaluate)
        res = R.main(["--output_dir", str(out), "--max_steps", "30", "--update_every", "10", "--eval_every", "10",
                      "--progress", "false", "--figures", "false", "--threads", "1"], on_step=on_step)
        return res

    a, b = run(tmp_path / "a", False), run(tmp_path / "b", True)
    assert log["reads_during_training"] == 0
    assert b.summary["test_accuracy"] < a.summary["test_accuracy"] - 0.2  # the poison reached the report
    for name, m in a.conn.masks.items():
        assert torch.equal(m, b.conn.masks[name])
    assert a.summary["holdout_accuracy"] == b.summary["holdout_accuracy"]


# ---------------------------------------------------------------- 3. augmentation and normalisation

@pytest.mark.parametrize("name", ["mnist", "fake", "cifar10"])
def test_augment_train_part_only_and_real(name):
    if name == "mnist" and not MNIST.is_file():
        pytest.skip(f"shared MNIST absent at {MNIST}")
    if name == "cifar10" and not (CIFAR / "train").is_dir():  # (its held-out view augmented passed every test)
        pytest.skip(f"shared cifar10-jpeg absent at {CIFAR}")
    s = get_datasets(name, holdout=0.2, seed=0, augment=True)
    assert s.train.augment and not s.holdout.augment and not s.test.dataset.augment
    idx = list(range(16))
    torch.manual_seed(0)
    x1, _ = s.train.batch(idx)
    x2, _ = s.train.batch(idx)
    assert not torch.equal(x1, x2)  # it augments (mnist ignored augment=True before)
    h1, h2 = s.holdout.batch(idx), s.holdout.batch(idx)
    assert torch.equal(h1[0], h2[0])
    if name == "mnist":  # digits are not mirror images: shifts only
        assert (s.train.pad, s.train.flip) == (2, False)


@pytest.mark.skipif(not (RESNET20.is_file() and (CIFAR / "test").is_dir()), reason=f"shared resnet20 or cifar10-jpeg absent under {SHARED}")
def test_cifar10_default_normalisation_is_what_the_pretrained_resnets_expect(tmp_path):
    from adaptive.data.cifar import NORMALIZATIONS
    from adaptive.models import build_model

    assert NORMALIZATIONS["imagenet"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # ../shared/data/README.md
    s = get_datasets("cifar10", holdout=0.1, test_subset=1000, seed=0)
    x, y = s.test.dataset.batch(range(1000))
    raw = s.test.dataset.images[s.test.dataset.indices].float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATIONS["imagenet"])
    torch.testing.assert_close(x, (raw - mean) / std)
    model = build_model("resnet20", num_classes=10, in_shape=(3, 32, 32), weights=str(RESNET20)).eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    # 81.03% on all 10,000 (checked by hand through prune_pretrained: 81.03%, loss 0.8788)
    assert 0.77 < acc < 0.85


@pytest.mark.skipif(not (CIFAR / "train").is_dir(), reason=f"shared cifar10-jpeg absent at {CIFAR}")
def test_the_cifar_normalisation_is_the_cifar10_train_images_statistics():
    """normalize="cifar" is the per-channel mean and std of CIFAR-10's train images (measured here on the shared
    JPEG copy: the mean to 0.001, the std, which the JPEG round trip lowers a little, to 0.003); the two swapped
    passed every test."""
    from adaptive.data.cifar import NORMALIZATIONS

    x = get_datasets("cifar10", holdout=0.1, seed=0).train.images.float().div_(255)
    mean, std = NORMALIZATIONS["cifar"]
    torch.testing.assert_close(x.mean((0, 2, 3)), torch.tensor(mean), atol=1e-3, rtol=0)
    torch.testing.assert_close(x.std((0, 2, 3)), torch.tensor(std), atol=3e-3, rtol=0)


# ---------------------------------------------------------------- 4. discovery and caches

def _folder(root, n=3, classes=("a", "b")):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_cifar_without_test_folder_is_refused_up_front(tmp_path):
    from adaptive.data.cifar import CLASSES

    _folder(tmp_path / "cifar10-jpeg" / "train", n=1, classes=CLASSES)
    with pytest.raises(DatasetNotFoundError, match=r"cifar10 test split not found: expected .*cifar10-jpeg/test"):
        get_datasets("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "cache")  # was: only at the final report


def test_imagenet_without_val_folder_is_refused_up_front(tmp_path):
    _folder(tmp_path / "imagenet" / "train")
    with pytest.raises(DatasetNotFoundError, match=r"imagenet validation split not found: expected .*imagenet/val"):
        get_datasets("imagenet", data_dir=tmp_path)


@pytest.mark.parametrize("damage", ["flipped_byte", "truncated", "foreign", "wrong_tensors", "changed_file"])
def test_damaged_or_stale_cache_is_rebuilt_not_trusted(tmp_path, damage):
    root, cache_dir = tmp_path / "train", tmp_path / "cache"
    _folder(root)
    images, labels, _ = cached_folder_tensor(root, "x", cache_dir)
    cache = folder_cache.cache_file(root, "x", cache_dir)
    data = bytearray(cache.read_bytes())
    if damage == "flipped_byte":  # inside the images' storage: torch.load does not notice
        blob = torch.load(cache, weights_only=True)
        pos = bytes(data).find(blob["images"].numpy().tobytes()[:64])
        assert pos > 0
        data[pos + 10] ^= 0xFF
        cache.write_bytes(bytes(data))
        assert not torch.equal(torch.load(cache, weights_only=True)["images"], images)
    elif damage == "truncated":
        cache.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "foreign":
        torch.save(torch.zeros(3), cache)
    elif damage == "wrong_tensors":
        blob = torch.load(cache, weights_only=True)
        blob["images"] = blob["images"][:2]
        torch.save(blob, cache)
    else:  # same names, same count, other pixels (and another size)
        from PIL import Image

        Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(root / "a" / "0.png", optimize=True)
    again, labels2, _ = cached_folder_tensor(root, "x", cache_dir)
    truth, truth_labels, _ = folder_cache.decode_folder(root)
    assert torch.equal(again, truth) and torch.equal(labels2, truth_labels)
    # and the rebuilt cache is now trusted as is
    blob = torch.load(cache, weights_only=True)
    assert torch.equal(blob["images"], truth)


def test_discovery_order_explicit_env_shared(tmp_path, monkeypatch):
    for d in ("explicit", "env", "shared"):
        (tmp_path / d / "mnist").mkdir(parents=True)
        np.savez(tmp_path / d / "mnist" / "mnist.npz", x_train=np.zeros((20, 28, 28), np.uint8),
                 y_train=np.arange(20) % 10, x_test=np.zeros((10, 28, 28), np.uint8), y_test=np.arange(10))
    monkeypatch.setattr(paths, "SHARED_DATA", tmp_path / "shared")
    monkeypatch.setenv("ADAPTIVE_DATA", str(tmp_path / "env"))
    found = lambda dd=None: paths.find_data("mnist", ("mnist/mnist.npz",), dd)  # noqa: E731
    assert found(tmp_path / "explicit") == tmp_path / "explicit" / "mnist" / "mnist.npz"
    assert found() == tmp_path / "env" / "mnist" / "mnist.npz"
    monkeypatch.delenv("ADAPTIVE_DATA")
    assert found() == tmp_path / "shared" / "mnist" / "mnist.npz"
    with pytest.raises(DatasetNotFoundError, match="looked in: .*nowhere/mnist/mnist.npz"):
        found(tmp_path / "nowhere")  # an explicit folder is the only place looked


def test_subset_too_small_to_stratify_is_refused_with_the_minimum():
    labels = torch.arange(10).repeat(50)  # 500 examples, 10 classes
    with pytest.raises(ValueError, match="at least 10 \\(one per class\\)"):
        D.stratified_subset(labels, 5)
    assert len(D.stratified_subset(labels, 10)) == 10


def test_a_subset_draws_exactly_the_examples_asked_for():
    """--subset N said "this many" and drew about N (digits: 600 gave 601, 1000 gave 1002, 15 gave 16)."""
    for n, holdout in ((600, 0.1), (1000, 0.1), (15, 0.0)):
        s = get_datasets("digits", holdout=holdout, subset=n)
        assert len(s.train) + len(s.holdout) == n
    labels = torch.tensor([0] * 7 + [1] * 50 + [2] * 123 + [3] * 3)  # unequal classes
    counts = torch.bincount(labels).double()
    for n in range(4, len(labels)):
        drawn = D.stratified_subset(labels, n, seed=3)
        assert len(drawn) == n and len(set(drawn.tolist())) == n
        share = counts * n / len(labels)  # every class within one example of its share, but that each
        got = torch.bincount(labels[drawn], minlength=4)  # class holds one: a class rounded to none takes one
        starved = int((share < 0.5).sum())                # from the largest share (at most one per such class)
        assert (got >= 1).all()
        assert ((got - share).abs() < 1)[[0, 1, 3]].all()
        assert (got[2] - share[2]).abs() < 1 + starved
    assert len(D.stratified_subset(torch.arange(10).repeat(100), 10)) == 10  # one of each class
    with pytest.raises(ValueError, match="at least 10 \\(one per class\\)"):
        D.stratified_subset(torch.arange(10).repeat(100), 7)  # drew 10 before, one per class


def test_a_subset_larger_than_its_split_uses_all_of_it_and_says_so():
    """subset=10,000 of the 1,438 digits train examples silently used all 1,438 while the docs said "exactly"."""
    with pytest.warns(UserWarning, match=r"subset=10000 asks for more examples than the train split of digits "
                                         r"holds \(1,438\): all 1,438 are used"):
        s = get_datasets("digits", holdout=0.1, subset=10_000)
    assert len(s.train) + len(s.holdout) == 1438
    with pytest.warns(UserWarning, match=r"test_subset=999999 asks for more .* test split of digits"):
        n = len(get_datasets("digits", holdout=0.1, test_subset=999_999).test)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the whole split asked for exactly: no warning
        assert len(get_datasets("digits", holdout=0.1, subset=1438, test_subset=n).test) == n


def test_the_short_split_warning_suggests_a_value_as_it_is_typed():
    """It said 'give subset=1,438' and 'give --subset 1,438': neither Python nor a command line takes
    1,438 as typed. The sizes it only reports keep their separators."""
    for names, given in ((None, "subset={}"), ({"subset": "--subset"}, "--subset {}")):
        with pytest.warns(UserWarning) as caught:
            get_datasets("digits", holdout=0.1, subset=10_000, option_names=names)
        assert str(caught[0].message) == (f"{given.format(10000)} asks for more examples than the train split of "
                                          f"digits holds (1,438): all 1,438 are used; give {given.format(1438)} "
                                          "(or leave it out) to say so")


def test_a_subset_whose_shares_round_to_its_size_draws_what_it_drew_before():
    """Published figures used draws that already came out exact (MNIST 12,000, cifar10 TEST 1,000 and
    2,000): the draw is the one made before subsets were exact (the seed's holdout-style split)."""
    cases = [(torch.arange(10).repeat_interleave(1000), (1000, 2000))]
    if (SHARED / "mnist" / "mnist.npz").is_file():
        cases.append((torch.as_tensor(np.load(SHARED / "mnist" / "mnist.npz")["y_train"]).long(), (12000,)))
    for labels, sizes in cases:
        for size in sizes:
            for seed in (0, 1):
                before = stratified_split(labels, size / len(labels), seed=seed + 1_000_003)[1]
                assert len(before) == size and torch.equal(D.stratified_subset(labels, size, seed), before)


def test_a_subset_too_small_for_any_holdout_is_refused_with_the_minimum():
    """digits --subset 15 at holdout 0.1 ran with an empty held-out part (nothing to select on)."""
    with pytest.raises(ValueError, match="held-out part of digits is empty.*give a subset of at least 51"):
        get_datasets("digits", holdout=0.1, subset=15)
    assert len(get_datasets("digits", holdout=0.1, subset=51).holdout) == 1
    assert len(get_datasets("digits", holdout=0.0, subset=15).holdout) == 0  # holdout 0 asks for none


def test_holdout_that_leaves_no_train_part_is_refused():
    # a subset of 10 digits is one example per class; holdout 0.9 draws round(0.9) = 1 of each
    # class, so every example is held out and nothing is left to train on
    with pytest.raises(ValueError, match="train part of digits is empty"):
        get_datasets("digits", holdout=0.9, subset=10)


@pytest.mark.parametrize("holdout", ["0.1", b"0.1", True])
def test_a_holdout_that_is_no_number_is_refused_naming_it(holdout):
    """holdout="0.1" (text, as a hand-written config may give it) passed the check, then failed after the data was
    read with a bare "'>' not supported between instances of 'str' and 'int'"."""
    with pytest.raises(ValueError, match=r"holdout must be a fraction in \[0, 1\).*give holdout=0.1"):
        get_datasets("digits", holdout=holdout)
