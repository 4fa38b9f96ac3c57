"""Run as ``python two_process_labels.py OUT RANK WHERE``, two at once (rank 0 and 1; started by
tests/test_label_checks.py through tests/_ports.run_two_ranks): a gloo process group on the CPU with a
short timeout, then optimize_connectome where only process 1's data holds a label beyond the model's
head, in its first training batch (WHERE=train), in its second (WHERE=later: checked on the device, refused at
the window's update) or in its held-out batch (WHERE=holdout); or whose second training batch holds labels of the
wrong shape (WHERE=later_shape: (8, 1)) or type (WHERE=later_dtype: int32), refused on the host at once. Writes
``rank{N}.json`` into OUT with what the process raised."""
import datetime
import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def _loader(bad: bool, at: int = 0):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    if bad:
        y[at] = 7  # the head gives 3 classes
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _later_batch(bad: bool, change):
    """The two batches of ``_loader(False)`` (a list: any loader with a length), the second's labels ``change``d
    where ``bad``."""
    batches = list(_loader(False))
    if bad:
        x, y = batches[1]
        batches[1] = (x, change(y))
    return batches


def run(rank: int, folder: str, where: str) -> None:
    """Process ``rank`` of 2: the bad label (on process 1 only) in the train loader's first or second batch or the
    holdout (``where``); writes ``rank<r>.json`` with the error's type and message."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    from adaptive.mask_only import optimize_connectome

    # a short timeout: a process left waiting in a collective fails the test instead of hanging it
    dist.init_process_group("gloo", store=dist.FileStore(os.path.join(folder, "store"), 2), rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=20))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    bad = rank == 1
    train, holdout = {"train": (_loader(bad), _loader(False)), "later": (_loader(bad, at=8), _loader(False)),
                      "holdout": (_loader(False), _loader(bad)),
                      "later_shape": (_later_batch(bad, lambda y: y[:, None]), _loader(False)),
                      "later_dtype": (_later_batch(bad, lambda y: y.int()), _loader(False))}[where]
    record = {"error": None}
    try:
        optimize_connectome(model, train, holdout, 0.5, passes=1.0, progress=False)
    except Exception as e:  # noqa: BLE001 - what each process raised is the test's to judge
        record = {"error": type(e).__name__, "message": str(e), "notes": list(getattr(e, "__notes__", []))}
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _rank_record import leave_group

    leave_group(folder, rank)  # (ends the process: gloo's teardown can abort it, see leave_group)


if __name__ == "__main__":
    run(int(sys.argv[2]), sys.argv[1], sys.argv[3])
