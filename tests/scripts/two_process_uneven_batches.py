"""Run under `accelerate launch --multi_gpu --num_processes 2`: train_one_epoch and evaluate over loaders
prepared with even_batches=False, whose 5 examples in batches of 2 give process 0 two batches and process 1
one; then both again over loaders Accelerate evens out (its default); then evaluate over each process's own
batches, of other sizes (process 0: 2 and 1 examples, process 1: 2 and 2) and counts (process 0: 2, 2 and 1;
process 1: 2). Writes one JSON file per rank into argv[1]: each case's error (type and message) or outcome.
A process left waiting in a collective waits there for the group's timeout (20 seconds here, 30 minutes by
default) and records a bare gloo error instead (one whose gather aborts takes the launch down)."""
import datetime
import sys

import torch
from accelerate import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import adaptive
from adaptive.training import TrainState, evaluate, train_one_epoch
from _rank_record import write_record_and_finish


def main(out_dir):
    record = {}
    timeout = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=20))
    acc = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(even_batches=False), kwargs_handlers=[timeout])
    for even in (False, True):
        acc.dataloader_config.even_batches = even
        for case in ("train", "evaluate"):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            g = torch.Generator().manual_seed(0)
            loader = DataLoader(TensorDataset(torch.randn(5, 4, generator=g), torch.randint(0, 3, (5,), generator=g)),
                                batch_size=2)
            model, opt, loader = acc.prepare(model, opt, loader)
            conn = adaptive.Connectome(acc.unwrap_model(model))
            adaptive.Controller(conn, opt, policy="rigl", density=0.5, update_every=1, seed=0)
            try:
                if case == "train":
                    train_one_epoch(acc, model, opt, loader, TrainState(), conn=conn, log_every=1)
                    outcome = {"mask_hash": conn.mask_hash()}
                else:
                    loss, _, examples = evaluate(acc, model, loader)
                    outcome = {"examples": examples, "loss": round(loss, 12)}
            except Exception as e:  # noqa: BLE001 - what each process raised is the test's to judge
                outcome = {"error": type(e).__name__, "message": str(e)}
            record[f"{case}_{'even' if even else 'uneven'}"] = outcome
    for case, sizes in (("own_sizes", [[2, 1], [2, 2]]), ("own_counts", [[2, 2, 1], [2]])):
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        g = torch.Generator().manual_seed(1)
        every = [[(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in own] for own in sizes]
        loss, _, examples = evaluate(acc, model, every[acc.process_index])
        whole = [b for own in every for b in own]
        expected = sum(float(torch.nn.functional.cross_entropy(model(x), y, reduction="sum")) for x, y in whole)
        record[case] = {"examples": examples, "loss_matches": abs(loss - expected / examples) < 1e-6}
    write_record_and_finish(acc, out_dir, acc.process_index, record)


if __name__ == "__main__":
    from adaptive.distributed import exit_launched_process

    main(sys.argv[1])
    exit_launched_process()
