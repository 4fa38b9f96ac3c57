"""Run under `accelerate launch --multi_gpu --num_processes 2`: save_checkpoint where the main process's
part after its last broadcast (renaming the finished folder into place) fails on it alone ("rename"),
and where process 1's write fails while a later checkpoint of a timeline a resume abandoned is there
("write_with_later"). Writes one JSON file per rank into argv[1]: each case's error (type, message,
whether raised alike) or "returned", and (process 0) the checkpoints left after each."""
import datetime
import errno
import os
import pathlib
import shutil
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs

from adaptive import distributed as D
from adaptive.training import list_checkpoints, save_checkpoint
from _rank_record import write_record_and_finish


def attempt(acc, run, step):
    """save_checkpoint's outcome on this process."""
    try:
        save_checkpoint(acc, run, step)
        return ["returned"]
    except Exception as e:  # noqa: BLE001 - recorded for the test
        return [type(e).__name__, str(e), D.raised_alike(e)]


def left(run):
    """The checkpoint folders under the run's checkpoints/, temporary ones included."""
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def main(out_dir):
    # a short timeout: collectives paired wrongly end in an error within it, not in the test's timeout
    acc = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=30))])
    me = acc.process_index
    acc.prepare(torch.nn.Linear(2, 2))
    run = pathlib.Path(out_dir) / "run"
    save_checkpoint(acc, run, 5)
    record = {}

    real_replace = os.replace

    def no_rename(src, dst, *args, **kwargs):
        if str(dst).endswith("step_00000010"):
            raise PermissionError(errno.EACCES, "Permission denied", str(src), None, str(dst))
        return real_replace(src, dst, *args, **kwargs)

    if me == 0:  # the main process alone renames
        os.replace = no_rename
    record["rename"] = attempt(acc, run, 10)
    os.replace = real_replace
    record["rename_left"] = left(run)

    if me == 0:  # a later checkpoint, of a timeline that a resume from step_5 abandoned
        shutil.copytree(run / "checkpoints" / "step_00000005", run / "checkpoints" / "step_00000020")
    acc.wait_for_everyone()
    if me == 1:
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")
        acc.save_state = full
    record["write_with_later"] = attempt(acc, run, 10)
    acc.wait_for_everyone()
    record["write_left"] = left(run)
    record["checkpoints"] = [p.name for p in list_checkpoints(run / "checkpoints")]
    write_record_and_finish(acc, out_dir, me, record)


if __name__ == "__main__":
    main(sys.argv[1])
