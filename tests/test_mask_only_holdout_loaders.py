"""The line search's held-out batches read what the holdout loader reads, found by a review: its shuffle
rebuilt a loader over the whole dataset, so a holdout given as a sampler's part of a dataset (the rest the
training examples) fed the line search training examples, and a holdout over an iterable dataset with a
length failed every run."""
import torch
from torch import nn
from torch.utils.data import (BatchSampler, DataLoader, Dataset, IterableDataset, SubsetRandomSampler, TensorDataset,
                              WeightedRandomSampler)

import adaptive
from adaptive.mask_only_data import _shuffled, verify_pass_length

torch.manual_seed(0)
X = torch.randn(200, 8)
Y = (X[:, 0] > 0).long()


class Recorded(Dataset):
    """The 200 examples, recording which positions were read."""

    def __init__(self):
        self.seen = set()

    def __len__(self):
        return len(X)

    def __getitem__(self, i):
        self.seen.add(int(i))
        return X[i], Y[i]


def _model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def _train():
    return DataLoader(TensorDataset(X[:150], Y[:150]), batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(0))


def test_a_holdout_given_as_a_samplers_part_of_the_dataset_feeds_the_line_search_that_part_alone():
    held = list(range(150, 200))
    for make in (lambda ds: DataLoader(ds, batch_size=10, sampler=SubsetRandomSampler(held)),
                 lambda ds: DataLoader(ds, batch_sampler=BatchSampler(SubsetRandomSampler(held), 10, False))):
        ds = Recorded()
        hold = make(ds)
        assert verify_pass_length(hold, 0) in (5, 50)  # 10 a batch, or one at a time for a batch sampler's
        adaptive.optimize_connectome(_model(), _train(), hold, target=0.3, verify_batches=2, window=3, progress=False)
        assert ds.seen and ds.seen <= set(held), sorted(ds.seen - set(held))[:5]
    assert sorted(i for x, _ in _shuffled(DataLoader(Recorded(), batch_size=7, sampler=SubsetRandomSampler(held)), 3)
                  for i in (X[:, None] == x[None]).all(-1).nonzero()[:, 0].tolist()) == held  # each once, in a pass


def test_a_holdout_whose_examples_its_sampler_alone_knows_is_read_as_it_is():
    ds = Recorded()
    hold = DataLoader(ds, batch_size=10, sampler=WeightedRandomSampler([0.0] * 150 + [1.0] * 50, 50,
                                                                        generator=torch.Generator().manual_seed(2)))
    assert _shuffled(hold, 0) is hold and verify_pass_length(hold, 0) == 5
    adaptive.optimize_connectome(_model(), _train(), hold, target=0.3, verify_batches=2, window=3, progress=False)
    assert ds.seen and min(ds.seen) >= 150


def test_a_holdout_over_an_iterable_dataset_with_a_length_runs():
    class Iterable(IterableDataset):
        def __len__(self):
            return 50

        def __iter__(self):
            return iter(zip(X[150:], Y[150:]))

    hold = DataLoader(Iterable(), batch_size=10)
    for verify in (0, 2):
        result = adaptive.optimize_connectome(_model(), _train(), hold, target=0.3, verify_batches=verify, window=3,
                                              progress=False)
        assert result.snapshots


def test_the_verification_draw_follows_the_seed():
    """The line search's rotating held-out batches are drawn in an order of the run's seed: a fixed seed gave every
    run the same order."""
    dl = DataLoader(TensorDataset(torch.arange(10.)), batch_size=10)
    first = lambda seed: next(iter(_shuffled(dl, seed)))[0]  # noqa: E731
    assert torch.equal(first(0), first(0)) and not torch.equal(first(0), first(1))
