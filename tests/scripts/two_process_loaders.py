"""Run as ``python two_process_loaders.py OUT RANK``, two at once (rank 0 and 1; started by
tests/test_mask_only.py through tests/_ports.run_two_ranks): a gloo process group on the CPU with a
short timeout, then optimize_connectome once per case, each with loaders that only process 1 gets
wrong (CASES): train shards of different lengths, an empty train loader, a train loader with no
length, an empty holdout, a sharded holdout; then one where both are right. Writes ``rank{N}.json`` into OUT: each
case's error (type and message) or outcome. A process left waiting in a collective would wait there
for the group's timeout (20 seconds here, 30 minutes by default) and record that instead."""
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _rank_record import record_cases


class _Unsized:
    """Batches with no ``len()`` (an iterable of its own, as a streamed dataset's)."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)


def _loader(n: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)),
                      batch_size=8)


def _sharded(n: int) -> DataLoader:
    """A holdout each process reads a shard of (a DistributedSampler: half each, the shorter padded)."""
    full = _loader(n)
    return DataLoader(full.dataset, batch_size=8, sampler=torch.utils.data.distributed.DistributedSampler(
        full.dataset, shuffle=False))


# case: (process 1's train loader, process 1's holdout); process 0 gets _loader(16) for both
CASES = {
    "uneven": lambda: (_loader(8), _loader(16)),
    "empty_train": lambda: (_loader(0), _loader(16)),
    "unsized_train": lambda: (_Unsized(_loader(16)), _loader(16)),
    "empty_holdout": lambda: (_loader(16), _loader(0)),
    "sharded_holdout": lambda: (_loader(16), _sharded(16)),
    "even": lambda: (_loader(16), _loader(16)),
}


def run(rank: int, folder: str) -> None:
    """Process ``rank`` of 2: every case in turn; writes ``rank<r>.json`` with what each raised or removed."""

    def attempt(loaders):
        from adaptive.mask_only import optimize_connectome

        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        train, holdout = loaders() if rank == 1 else (_loader(16), _loader(16))
        return {"removed": optimize_connectome(model, train, holdout, 0.5, passes=1.0, progress=False)
                .snapshots["0.5"].removed}

    record_cases(rank, folder, CASES, attempt)


if __name__ == "__main__":
    run(int(sys.argv[2]), sys.argv[1])
