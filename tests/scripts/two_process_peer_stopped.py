"""Run under `accelerate launch --multi_gpu --num_processes 2`: process 1 ends (status 0, so the launcher
lets process 0 run on) while process 0 waits in a barrier for it, as a process does whose peer failed
mid-run. Process 0 writes ``rank0.json`` into argv[1]: whether adaptive.distributed.peer_stopped knows
the collective's error, and the line peer_stopped_error makes of it."""
import json
import os
import sys

import torch.distributed as dist
from accelerate import Accelerator

from adaptive import distributed as D


def main(out_dir):
    acc = Accelerator(cpu=True)
    acc.wait_for_everyone()
    if acc.process_index == 1:
        sys.stdout.flush()
        os._exit(0)  # gone without a word, as a process that failed (its own error is its to write)
    try:
        dist.barrier()
        record = {"error": None}
    except Exception as e:  # noqa: BLE001 - the collective's error is what is checked
        record = {"error": type(e).__name__, "peer_stopped": D.peer_stopped(e),
                  "unrelated": D.peer_stopped(RuntimeError("CUDA out of memory")),
                  "message": str(D.peer_stopped_error("add --resume latest to continue"))}
    with open(os.path.join(out_dir, "rank0.json"), "w") as f:
        json.dump(record, f)
    sys.stdout.flush()
    os._exit(0)  # no teardown of a group whose other member is gone


if __name__ == "__main__":
    main(sys.argv[1])
