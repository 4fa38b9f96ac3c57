"""The end every two-process script shares: each rank writes its record as ``rank{N}.json`` into the
folder the test reads, then all ranks meet and close the process group."""
import json
import os


def write_record_and_finish(acc, out_dir: str, rank: int, record: dict) -> None:
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    acc.wait_for_everyone()
    acc.end_training()


def record_cases(rank: int, folder: str, cases: dict, attempt, timeout_s: int = 20, message_chars=None,
                 stop_unless=None) -> None:
    """The loop every plain two-rank case script shares: one thread, a gloo group of two over a file
    store in ``folder`` with a short timeout (a process left waiting in a collective fails the test
    instead of hanging it), then ``attempt(case_value)`` for each case in turn after ``torch.manual_seed(0)``,
    recording what it returned or the error it raised (type and message, cut to ``message_chars``);
    ``stop_unless``: an error type name past which the group is broken, so later cases would only time
    out. Writes ``rank{N}.json`` into ``folder`` and closes the group."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(os.path.join(folder, "store"), 2), rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=timeout_s))
    record = {}
    for case, value in cases.items():
        torch.manual_seed(0)
        try:
            record[case] = attempt(value)
        except Exception as e:  # noqa: BLE001 - what each process raised is the test's to judge
            record[case] = {"error": type(e).__name__, "message": str(e)[:message_chars]}
            if stop_unless is not None and type(e).__name__ != stop_unless:
                break
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    dist.destroy_process_group()
