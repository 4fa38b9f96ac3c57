"""Run as ``python two_process_settings.py OUT RANK``, two at once (rank 0 and 1; started by
tests/test_two_process.py through tests/_ports.run_two_ranks): a gloo process group on the CPU with a
short timeout, then optimize_connectome once per case, each with settings that differ between the
processes (CASES: a setting only process 1's refuses, settings both accept but that differ), then one
run where they agree, in the same process group. Writes ``rank{N}.json`` into OUT: each case's error
(type and message) or outcome. A process left waiting in a collective would wait there for the group's
timeout (20 seconds here, 30 minutes by default) and record that instead."""
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _rank_record import record_cases


def _loader(n: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)),
                      batch_size=8)


# case: process `rank`'s keyword arguments (target and the settings)
CASES = {
    "target_refused_on_one": lambda rank: dict(target=0.5 if rank == 0 else []),
    "targets_differ_one_out_of_range": lambda rank: dict(target=0.5 if rank == 0 else 1.5),
    "ladder_refused_on_one": lambda rank: dict(target="best", ladder=[0.2, 0.4] if rank == 0 else [0.4, 0.2]),
    "window_refused_on_one": lambda rank: dict(target=0.5, window=4 if rank == 0 else 0),
    "targets_differ": lambda rank: dict(target=0.5 / (1 + rank)),
    "seed_and_passes_differ": lambda rank: dict(target=0.5, seed=rank, passes=1.0 + rank),
    "agree": lambda rank: dict(target=0.5),
}


def run(rank: int, folder: str) -> None:
    """Process ``rank`` of 2: every case in turn; writes ``rank<r>.json`` with what each raised or removed."""

    def attempt(settings):
        from adaptive.mask_only import optimize_connectome

        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        kw = {"passes": 1.0, "progress": False, **settings(rank)}
        r = optimize_connectome(model, _loader(16), _loader(16), kw.pop("target"), **kw)
        return {"removed": r.snapshots["0.5"].removed}

    record_cases(rank, folder, CASES, attempt)


if __name__ == "__main__":
    run(int(sys.argv[2]), sys.argv[1])
