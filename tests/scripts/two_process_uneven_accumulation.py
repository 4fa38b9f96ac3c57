"""Run under `accelerate launch --multi_gpu --num_processes 2`: train_one_epoch with gradient_accumulation_steps 2
and sync_with_dataloader=False over a loader prepared with even_batches=False, whose 5 examples in batches of 1
give process 0 three batches and process 1 two: first with max_steps=1, which takes one group of 2 from each
(not refused), then whole, where process 0's epoch would end inside a group of 2 (which that setting refuses)
and process 1's not; then under sync_with_dataloader=True, where the loader's end closes each process's last
group: 7 examples (process 0: four batches, process 1: three) make two steps on each (not refused), 5 examples
(three batches, two) two steps and one (refused); then evaluate over a loader Accelerate evens out, to show the processes still meet in step.
Writes one JSON file per rank into argv[1]: each case's error (type and message) or outcome. A process left
waiting in a collective waits there for the group's timeout (20 seconds here) and records a bare gloo error."""
import datetime
import sys

import torch
from accelerate import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs
from accelerate.utils import GradientAccumulationPlugin
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from adaptive.training import TrainState, evaluate, train_one_epoch
from _rank_record import write_record_and_finish


def main(out_dir):
    record = {}
    timeout = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=20))
    acc = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(even_batches=False), kwargs_handlers=[timeout],
                      gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=2, sync_with_dataloader=False))
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(5, 4, generator=g), torch.randint(0, 3, (5,), generator=g))
    model, opt, loader = acc.prepare(model, opt, DataLoader(data, batch_size=1))
    for case, max_steps in (("max_steps", 1), ("whole", None)):
        try:
            state = TrainState()
            train_one_epoch(acc, model, opt, loader, state, log_every=1, max_steps=max_steps)
            record[case] = {"steps": state.step}
        except Exception as e:  # noqa: BLE001 - what each process raised is the test's to judge
            record[case] = {"error": type(e).__name__, "message": str(e)}
    acc.gradient_state.plugin_kwargs["sync_with_dataloader"] = True
    for case, examples in (("closed_by_the_end", 7), ("closed_uneven", 5)):
        try:
            state = TrainState()
            g = torch.Generator().manual_seed(0)
            more = TensorDataset(torch.randn(examples, 4, generator=g), torch.randint(0, 3, (examples,), generator=g))
            train_one_epoch(acc, model, opt, acc.prepare(DataLoader(more, batch_size=1)), state, log_every=1)
            record[case] = {"steps": state.step}
        except Exception as e:  # noqa: BLE001
            record[case] = {"error": type(e).__name__, "message": str(e)}
    acc.dataloader_config.even_batches = True
    try:
        record["evaluate"] = {"examples": evaluate(acc, model, acc.prepare(DataLoader(data, batch_size=2)))[2]}
    except Exception as e:  # noqa: BLE001
        record["evaluate"] = {"error": type(e).__name__, "message": str(e)[:300]}
    write_record_and_finish(acc, out_dir, acc.process_index, record)


if __name__ == "__main__":
    from adaptive.distributed import exit_launched_process

    main(sys.argv[1])
    exit_launched_process()
