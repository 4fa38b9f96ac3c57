"""The end every two-process script shares: each rank writes its record as ``rank{N}.json`` into the
folder the test reads, then all ranks meet and the processes end (:func:`leave_group`)."""
import json
import os


def write_record_and_finish(acc, out_dir: str, rank: int, record: dict) -> None:
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    leave_group(out_dir, rank, acc.num_processes)  # (ends the process: gloo's teardown can abort it, see leave_group)


def record_cases(rank: int, folder: str, cases: dict, attempt, timeout_s: int = 20, message_chars=None,
                 stop_unless=None) -> None:
    """The loop every plain two-rank case script shares: one thread, a gloo group of two over a file
    store in ``folder`` with a short timeout (a process left waiting in a collective fails the test
    instead of hanging it), then ``attempt(case_value)`` for each case in turn after ``torch.manual_seed(0)``,
    recording what it returned or the error it raised (type and message, cut to ``message_chars``);
    ``stop_unless``: an error type name past which the group is broken, so later cases would only time
    out. Writes ``rank{N}.json`` into ``folder`` and leaves (:func:`leave_group`: the process ends there)."""
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
    leave_group(folder, rank)


def leave_group(folder: str, rank: int, world: int = 2, timeout_s: float = 60.0) -> None:
    """End a plain rank script once every rank has written its record: each marks itself done with a file in
    ``folder`` and waits (on files, not on gloo) for the others, then the process exits at once, without tearing
    the gloo group down: PyTorch's teardown can abort a process whose work is done and written
    (``GLOO_TEARDOWN_ABORT`` in tests/_ports.py), which failed tests after retries on a loaded machine. With every
    rank done, no collective is pending. A rank whose peer never finishes exits 1 after ``timeout_s``.
    ``folder`` is the run's own (each test's; :func:`run_two_ranks` puts it back as it was before a second try):
    an earlier run's markers there would be taken as this one's."""
    import sys
    import time

    open(os.path.join(folder, f"done{rank}"), "w").close()
    deadline = time.monotonic() + timeout_s
    while not all(os.path.exists(os.path.join(folder, f"done{r}")) for r in range(world)):
        if time.monotonic() > deadline:
            print(f"rank {rank}: the other ranks did not finish within {timeout_s:g} s", flush=True)
            os._exit(1)
        time.sleep(0.05)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
