"""Run under `accelerate launch --multi_gpu --num_processes 2`: load_checkpoint through agreed_call,
as recipes/adaptive.py's --resume loads it, where process 1 cannot even stat its own copy's
random-state file (a PermissionError on its machine, not a missing file). Both processes must meet
in load_checkpoint's gather and raise one error alike. Writes one JSON file per rank into argv[1]."""
import datetime
import pathlib
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

from adaptive import distributed as D
from adaptive.training import load_checkpoint
from _rank_record import write_record_and_finish


def main(out_dir):
    # a short timeout: collectives paired wrongly end in an error within it, not in the test's timeout
    acc = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=30))])
    me = acc.process_index
    ckpt = pathlib.Path(out_dir) / f"copy{me}" / "step_3"  # each process's own copy
    ckpt.mkdir(parents=True)
    for i in range(2):
        torch.save({}, ckpt / f"random_states_{i}.pkl")
    if me == 1:
        is_file = pathlib.Path.is_file

        def unreadable(self):
            if self.name.startswith("random_states_"):
                raise PermissionError(13, "Permission denied", str(self))
            return is_file(self)

        pathlib.Path.is_file = unreadable
    try:
        D.agreed_call(lambda: load_checkpoint(acc, ckpt, verified=True))
        outcome = ["returned"]
    except Exception as e:  # noqa: BLE001 - recorded for the test
        outcome = [type(e).__name__, str(e), D.raised_alike(e)]
    write_record_and_finish(acc, out_dir, me, {"outcome": outcome})


if __name__ == "__main__":
    main(sys.argv[1])
