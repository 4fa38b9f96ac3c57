"""Run as ``python two_process_stage_checkpoint.py OUT RANK``, two at once (rank 0 and 1): a gloo
process group on the CPU with a short timeout, then optimize_connectome(checkpoint=) resumed from
checkpoints that only one process finds bad. Writes ``rank{N}.json`` into OUT: each case's error
(type and message) or outcome. A process that went on alone into a collective would wait there
for the group's timeout (seconds here, 30 minutes by default) and record that instead."""
import datetime
import json
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_mask_only import tiny  # noqa: E402
from test_mask_only_checkpoint import KW, Stop, ordered_loaders  # noqa: E402

from adaptive.mask_only import optimize_connectome  # noqa: E402

TARGETS = [0.2, 0.5]


def attempt(path):
    """One resume from ``path``: its outcome, or the error it raised."""
    try:
        r = optimize_connectome(tiny(), *ordered_loaders(), TARGETS, checkpoint=path, **KW)
    except Exception as e:  # noqa: BLE001 - what each process raised is the record
        return {"error": type(e).__name__, "message": str(e)}
    return {"resumed": [h["kind"] for h in r.history].count("resume"), "removed": r.snapshots["0.5"].removed}


def main(out, me):
    out = Path(out)
    dist.init_process_group("gloo", init_method=f"file://{out / 'store'}", rank=me, world_size=2,
                            timeout=datetime.timedelta(seconds=20))
    torch.set_num_threads(1)
    shared = out / "ck.pt"

    def stop(rec):
        if rec["kind"] == "update" and rec["stage"] == 1:
            raise Stop

    try:  # both processes record the first stage (the first process writes it), then stop in the second
        optimize_connectome(tiny(), *ordered_loaders(), TARGETS, checkpoint=shared, callback=stop, **KW)
    except Stop:
        pass
    dist.barrier()
    record = {}
    own = out / f"own{me}.pt"  # each process's own copy; the second's damaged
    shutil.copy(shared, own)
    if me == 1:
        own.write_bytes(own.read_bytes()[:-100])
    record["damaged_on_one"] = attempt(own)
    # the second process finds no file where the first finds the run's
    record["missing_on_one"] = attempt(shared if me == 0 else out / "none.pt")
    record["same"] = attempt(shared)
    (out / f"rank{me}.json").write_text(json.dumps(record))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _rank_record import leave_group

    leave_group(str(out), me)  # (ends the process: gloo's teardown can abort it, see leave_group)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
