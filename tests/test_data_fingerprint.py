"""Processes that each read their own copy of the data compare a content fingerprint of every split
(adaptive/data/fingerprint.py, recipes/_adaptive/builders.py ``_refuse_differing_splits``): copies of
the same size but other contents were not noticed, and each process trained on other examples."""
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _ports import run_two_ranks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from adaptive.data import LazyDataset, TensorImages, dataset_fingerprint, get_datasets  # noqa: E402
from adaptive.data.fingerprint import SPREAD, spread_positions  # noqa: E402


def _images(n=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(n) % 10


def test_spread_positions_take_the_first_the_last_and_evenly_between():
    assert spread_positions(0).numel() == 0
    assert spread_positions(5).tolist() == [0, 1, 2, 3, 4]  # fewer than SPREAD: every one
    p = spread_positions(1000)
    assert p.numel() == SPREAD and p[0] == 0 and p[-1] == 999 and bool((p.diff() > 0).all())


def test_a_copy_elsewhere_agrees_and_a_changed_example_or_label_does_not():
    x, y = _images()
    view = TensorImages(x, y, torch.arange(3, 90), mean=(0.5,), std=(0.2,))
    same = dataset_fingerprint(view)
    assert dataset_fingerprint(TensorImages(x.clone(), y.clone(), torch.arange(3, 90), mean=(0.5,), std=(0.2,))) == same
    hashed = int(view.indices[spread_positions(len(view))[5]])
    for changed in (lambda x, y: x[hashed].add_(1), lambda x, y: x[3].add_(1),  # an example hashed (the first)
                    lambda x, y: y.__setitem__(50, 3)):  # a label of an example not hashed: every label counts
        x2, y2 = x.clone(), y.clone()
        changed(x2, y2)
        assert dataset_fingerprint(TensorImages(x2, y2, torch.arange(3, 90), mean=(0.5,), std=(0.2,))) != same
    assert dataset_fingerprint(view.select(torch.arange(10))) != same  # another view of the same tensors


@pytest.mark.parametrize("indices", [torch.arange(3, 90), torch.tensor([0, 2, 3, 5, 8, 9, 11, 40, 41, 77, 98, 99])])
def test_a_one_pixel_change_in_an_example_not_sampled_is_caught(indices):
    """The fingerprint hashed every label but the pixels of SPREAD examples only: a copy whose pixels
    differed at another example (another version of the data, the same labels) passed for the same.
    An in-memory split's stored images are hashed whole now; the same data still agrees."""
    x, y = _images()
    view = TensorImages(x, y, indices)
    same = dataset_fingerprint(view)
    assert dataset_fingerprint(TensorImages(x.clone(), y.clone(), indices.clone())) == same
    sampled = set(indices[spread_positions(len(indices), 4)].tolist())
    unsampled = [int(i) for i in indices if int(i) not in sampled]
    for i in (unsampled[0], unsampled[len(unsampled) // 2], unsampled[-1]):
        x2 = x.clone()
        x2[i, 0, 3, 5] ^= 1
        assert dataset_fingerprint(TensorImages(x2, y, indices), examples=4) != dataset_fingerprint(view, examples=4)
    x2 = x.clone()
    x2[1, 0, 0, 0] ^= 1  # an example outside the view: not its data
    assert dataset_fingerprint(TensorImages(x2, y, indices)) == same


def test_an_in_memory_split_is_hashed_in_pieces_gathered_or_sliced_alike(monkeypatch):
    """A split of examples stored apart (a stratified draw) is gathered piece by piece into one reused
    buffer, one stored consecutively is sliced: both hash the same values, piece after piece."""
    import adaptive.data.tensors as T

    x, y = _images(50)
    picked = torch.tensor([1, 4, 5, 6, 9, 13, 20, 21, 22, 23, 30, 44, 49])
    monkeypatch.setattr(T, "FINGERPRINT_PIECE_BYTES", 3 * 64)  # 3 examples a piece
    scattered = dataset_fingerprint(TensorImages(x, y, picked))
    assert scattered == dataset_fingerprint(TensorImages(x[picked].clone(), y[picked].clone()))
    x2 = x.clone()
    x2[picked[7], 0, 7, 7] ^= 4  # in the third piece, one of the gathered ones
    assert dataset_fingerprint(TensorImages(x2, y, picked)) != scattered


def test_the_fingerprint_ignores_augmentation_and_leaves_the_random_generator_alone():
    """A train split augments with random crops from the global generator: the stored examples are
    hashed, so two processes whose generators stand apart agree, and hashing draws nothing."""
    x, y = _images()
    plain = dataset_fingerprint(TensorImages(x, y))
    augmented = TensorImages(x, y, augment=True)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    assert dataset_fingerprint(augmented) == plain
    assert torch.equal(torch.get_rng_state(), state)


def test_a_lazy_split_is_fingerprinted_as_what_it_builds():
    x, y = _images()
    lazy = LazyDataset(lambda: TensorImages(x, y))
    assert not lazy.materialized
    assert dataset_fingerprint(lazy) == dataset_fingerprint(TensorImages(x, y)) and lazy.materialized


def test_an_image_folder_is_fingerprinted_by_its_file_bytes_alone(tmp_path):
    """FolderView hashes the files of the examples it hashes (no decoding): the same files in another
    folder agree; one file rewritten differs."""
    pytest.importorskip("PIL")
    from PIL import Image

    for copy in ("a", "b"):
        for split in ("train", "val"):
            for c in range(2):
                (tmp_path / copy / split / f"c{c}").mkdir(parents=True)
                for i in range(4):
                    Image.new("RGB", (8, 8), (c * 100, i * 50, 7)).save(tmp_path / copy / split / f"c{c}" / f"{i}.png")
    prints = {}
    for copy in ("a", "b"):
        tr, held, te = get_datasets("folder", data_dir=tmp_path / copy, holdout=0.25, augment=True, image_size=8, resize=8)
        prints[copy] = [dataset_fingerprint(ds) for ds in (tr, held, te)]
    assert prints["a"] == prints["b"]
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "b" / "val" / "c1" / "3.png")  # the last test example
    tr, held, te = get_datasets("folder", data_dir=tmp_path / "b", holdout=0.25, image_size=8, resize=8)
    assert [dataset_fingerprint(ds) for ds in (tr, held, te)] == prints["a"][:2] + [dataset_fingerprint(te)]
    assert dataset_fingerprint(te) != prints["a"][2]


def test_an_image_folder_file_not_sampled_of_another_size_is_caught(tmp_path):
    """An image folder hashed the bytes of SPREAD files only: a copy where another file differed passed
    for the same. Every file's size is hashed now (a stat each), so a file rewritten at another size
    is caught wherever it is; the sampled files' bytes are hashed as before."""
    pytest.importorskip("PIL")
    from PIL import Image

    for copy in ("a", "b"):
        for c in range(2):
            (tmp_path / copy / "train" / f"c{c}").mkdir(parents=True)
            (tmp_path / copy / "val" / f"c{c}").mkdir(parents=True)
            for i in range(12):
                Image.new("RGB", (8, 8), (c * 100, i * 20, 7)).save(tmp_path / copy / "train" / f"c{c}" / f"{i}.png")
            Image.new("RGB", (8, 8), (c, 0, 0)).save(tmp_path / copy / "val" / f"c{c}" / "0.png")
    train = {copy: get_datasets("folder", data_dir=tmp_path / copy, holdout=0.25, image_size=8, resize=8).train
             for copy in ("a", "b")}
    assert dataset_fingerprint(train["a"], examples=2) == dataset_fingerprint(train["b"], examples=2)
    view = train["b"]
    sampled = set(view.indices[spread_positions(len(view), 2)].tolist())
    other = next(s for s in view.indices.tolist() if s not in sampled)
    path = Path(view.folder.samples[other][0])
    size = path.stat().st_size
    noisy = Image.frombytes("RGB", (8, 8), bytes(range(192)))  # (another image, which PNG stores at another size)
    noisy.save(path)
    assert path.stat().st_size != size
    again = get_datasets("folder", data_dir=tmp_path / "b", holdout=0.25, image_size=8, resize=8).train
    assert dataset_fingerprint(again, examples=2) != dataset_fingerprint(train["a"], examples=2)


def test_the_fingerprint_reads_only_the_examples_it_hashes():
    """Cheap: the stored data of SPREAD examples, and what covers every example without loading one
    (an in-memory split's stored tensor; the labels are in memory): no example is loaded."""
    x, y = _images(1000)
    seen = []

    class Counting(TensorImages):
        def fingerprint_parts(self, positions):
            seen.append(len(positions))
            return super().fingerprint_parts(positions)

        def __getitem__(self, i):
            raise AssertionError("an example was loaded")

    dataset_fingerprint(Counting(x, y))
    assert seen == [SPREAD]


def _mnist_copy(folder, x_train, x_test, y_train, y_test):
    (folder / "data" / "mnist").mkdir(parents=True)
    np.savez(folder / "data" / "mnist" / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def test_processes_that_read_data_of_the_same_size_but_other_contents_are_refused_alike(tmp_path):
    """Two processes, each reading its own copy of MNIST-like data of the same size (an absolute
    --data_dir, another folder on each): alike, they pass; where process 1's copy is another version
    (other pixels, the same labels), both refuse before training, naming each process's fingerprints,
    its folder and the fix; a test split that differs is refused only where the test split is
    compared (before the final report), and the check before training leaves it unread."""
    rng = np.random.default_rng(0)
    x_train, x_test = rng.integers(0, 256, (200, 28, 28), np.uint8), rng.integers(0, 256, (50, 28, 28), np.uint8)
    y_train, y_test = np.arange(200) % 10, np.arange(50) % 10
    for r in range(2):
        _mnist_copy(tmp_path / f"p{r}" / "alike", x_train, x_test, y_train, y_test)
        _mnist_copy(tmp_path / f"p{r}" / "train_differs", x_train if r == 0 else 255 - x_train, x_test, y_train, y_test)
        _mnist_copy(tmp_path / f"p{r}" / "test_differs", x_train, x_test if r == 0 else 255 - x_test, y_train, y_test)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    run_two_ranks(ROOT / "tests" / "scripts" / "two_process_split_contents.py", tmp_path, env)
    recs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert recs[0] == recs[1]  # every process raised the same error, or none
    rec = recs[0]
    assert rec["alike train+holdout"] is None and rec["alike test"] is None
    assert rec["test_differs train+holdout"] is None and rec["test_differs test"] is not None
    assert not any(rec[f"{case} test read"] for case in ("alike", "train_differs", "test_differs"))
    kind, message, alike = rec["train_differs train+holdout"]
    assert kind == "ValueError" and alike
    assert message.startswith("the processes found different contents of the mnist data (process 0 of 2: train "
                              "fingerprint "), message
    assert f" (--data_dir {tmp_path / 'p0' / 'train_differs' / 'data'}); process 1 of 2: train fingerprint " in message
    assert f" (--data_dir {tmp_path / 'p1' / 'train_differs' / 'data'})), so they would not run alike" in message
    assert "every process must read the same data" in message and "absolute --data_dir" in message, message
    kind, message, alike = rec["test_differs test"]
    assert kind == "ValueError" and alike, message
    assert re.search(r"\(process 0 of 2: test fingerprint [0-9a-f]{16} \(--data_dir [^)]*\); process 1 of 2: test "
                     r"fingerprint [0-9a-f]{16} \(--data_dir [^)]*\)\), so", message), message


def test_the_refusal_names_the_processes_that_differ_together_and_compares_values_only(monkeypatch):
    """refuse_differing named every process with its value: of 4 processes, where one differs, the
    reader compared four fingerprints by eye. Processes of the same value (and folder) are now named
    together; a folder that differs alone (the same data in other places) is no refusal."""
    import adaptive.distributed as D

    def gathered(found):
        monkeypatch.setattr(D, "is_distributed", lambda: True)
        monkeypatch.setattr(D.dist, "get_world_size", lambda: len(found))
        monkeypatch.setattr(D.dist, "all_gather_object", lambda every, mine: every.__setitem__(slice(None), found))

    gathered([("train fingerprint a", "/d"), ("train fingerprint b", "/e"), ("train fingerprint a", "/d"),
              ("train fingerprint a", "/f")])
    with pytest.raises(ValueError) as e:
        D.refuse_differing("(this process's, gathered)", "contents of the mnist data", fix="read the same data")
    assert str(e.value) == ("the processes found different contents of the mnist data (processes 0, 2 of 4: train "
                            "fingerprint a (/d); process 1 of 4: train fingerprint b (/e); process 3 of 4: train "
                            "fingerprint a (/f)), so they would not run alike: read the same data")
    assert D.raised_alike(e.value)
    gathered([("train fingerprint a", "/d"), ("train fingerprint a", "/e")])
    D.refuse_differing("(this process's, gathered)", "contents of the mnist data", fix="read the same data")


class _Parts(torch.utils.data.Dataset):
    """A plugin's dataset whose ``fingerprint_parts`` gives whatever ``parts`` says."""

    def __init__(self, parts):
        self.parts, self.targets = parts, torch.arange(4)

    def __len__(self):
        return 4

    def fingerprint_parts(self, positions):
        return self.parts()


def test_a_plugins_arrays_and_images_are_hashed_as_data_and_other_objects_are_refused():
    """A part was hashed as its text (repr) unless a tensor or bytes: a NumPy array of more than 1,000
    numbers by its summary (its corners: a change inside it went unnoticed), a PIL image by a memory
    address (another in every process: the same data refused). Arrays (a PIL image is one to NumPy) are
    hashed by their values; an object of no value to hash (a file's Path: it names the folder) is
    refused, naming the method and what to give."""
    pytest.importorskip("PIL")
    from PIL import Image

    big = np.zeros((40, 40), np.uint8)
    changed = big.copy()
    changed[20, 20] = 1
    assert dataset_fingerprint(_Parts(lambda: [big])) == dataset_fingerprint(_Parts(lambda: [big.copy()]))
    assert dataset_fingerprint(_Parts(lambda: [big])) != dataset_fingerprint(_Parts(lambda: [changed]))
    image = lambda v: Image.new("RGB", (8, 8), (v, 2, 3))  # noqa: E731  (a new object at each call)
    assert dataset_fingerprint(_Parts(lambda: [image(1)])) == dataset_fingerprint(_Parts(lambda: [image(1)]))
    assert dataset_fingerprint(_Parts(lambda: [image(1)])) != dataset_fingerprint(_Parts(lambda: [image(9)]))
    assert dataset_fingerprint(_Parts(lambda: [[big, 3], "a caption"])) != dataset_fingerprint(
        _Parts(lambda: [[changed, 3], "a caption"]))  # (nested lists, numbers and text are hashed too)
    for odd in (Path("/data/p0/img.png"), object()):
        with pytest.raises(TypeError, match=r"_Parts\.fingerprint_parts gave a part of type "
                                            rf"{type(odd).__name__}.*tensors, NumPy arrays or the bytes"):
            dataset_fingerprint(_Parts(lambda: [odd]))


def test_the_same_values_stored_in_another_byte_order_or_integer_type_of_labels_agree():
    """Two copies of the same data, one storing its labels as int32 (a NumPy file saved elsewhere) or its
    arrays big-endian: the values are the same, so the fingerprints are (they differed, and the
    processes were refused as having read other data)."""
    labels = np.arange(4)
    wide = _Parts(lambda: [np.arange(6, dtype="<i8").reshape(2, 3)])
    assert dataset_fingerprint(wide) == dataset_fingerprint(_Parts(lambda: [np.arange(6, dtype=">i8").reshape(2, 3)]))
    for stored in (labels.astype(np.int32), torch.from_numpy(labels).int(), labels.astype(np.uint8)):
        narrow = _Parts(wide.parts)
        narrow.targets = stored
        assert dataset_fingerprint(narrow) == dataset_fingerprint(wide)
