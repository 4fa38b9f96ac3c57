"""Run under `accelerate launch --multi_gpu --num_processes 2`: the process-group helpers of
adaptive.distributed, each with a value both ranks can check. Writes one JSON file per rank into argv[1]."""
import sys

import torch
from accelerate import Accelerator
from torch import nn

import adaptive
from adaptive import distributed as D
from _rank_record import write_record_and_finish


def main(out_dir):
    acc = Accelerator(cpu=True)
    me = acc.process_index
    record = {"index": me, "rank": D.rank(), "world": D.world_size()}

    a, b = torch.tensor([1.0, 2.0]) * (me + 1), torch.tensor([[10.0]], dtype=torch.float64) * (me + 1)
    D.all_reduce_mean_([a, b, None])
    record["mean"] = [a.tolist(), b.tolist(), str(a.dtype), str(b.dtype)]

    # reduced in buckets of 3 entries (tensors split across them): the same as in one bucket
    g = torch.Generator().manual_seed(me)
    make = lambda: [torch.randn(4, 5, generator=g).t(), torch.randn(7, generator=g).double(), torch.tensor(0.5 + me)]
    one = make()
    g.manual_seed(me)
    small = make()
    D.all_reduce_mean_(one, bucket_elements=10**9)
    D.all_reduce_mean_(small, bucket_elements=3)
    record["buckets_agree"] = all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(one, small))
    record["bucket_mean"] = one[2].item()

    # a check that fails on rank 1 only must stop both
    record["problem"] = D.agreed_problem("a file only rank 1 reads is missing" if me == 1 else None)
    record["no_problem"] = D.agreed_problem(None)

    # a check that raises on rank 1 only: both raise one error of its type, naming the process, marked alike
    def missing_on_rank_1():
        if me == 1:
            raise FileNotFoundError("no checkpoint in ./run")
        return "found"

    def outcome(check, **kw):
        try:
            return ["returned", D.agreed_call(check, **kw)]
        except Exception as e:  # noqa: BLE001 - recorded for the test
            return [type(e).__name__, str(e), D.raised_alike(e)]

    def fails_alike():
        raise ValueError("lr must be > 0")

    record["agreed_one"] = outcome(missing_on_rank_1)
    # the main process checks more alone (hashes): its failure is everyone's as it is; rank 1's alone is named
    damaged = lambda: ValueError("checkpoint ./run/step_2 is damaged: random_states_1.pkl is missing")
    for who in (0, 1):
        e = D.agreed_error(damaged() if me == who else None, some_alone=True)
        record[f"alone_{who}"] = [type(e).__name__, str(e), D.raised_alike(e)]
    # the same through agreed_call: a write only the main process makes fails there (its error as it is, everywhere)
    def write_fails_on_rank_0():
        if me == 0:
            raise PermissionError("cannot write ./run/config.yaml")
        return "nothing to write"

    record["alone_call"] = outcome(write_fails_on_rank_0, some_alone=True)
    record["agreed_all"] = outcome(fails_alike)
    record["agreed_none"] = outcome(lambda: me)
    try:
        D.refuse_differing(f"step_{me}", "checkpoints")
        record["differing"] = None
    except ValueError as e:
        record["differing"] = [str(e), D.raised_alike(e)]

    torch.manual_seed(0)
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)))
    conn.set_masks({n: torch.rand(m.shape) < 0.5 for n, m in conn.masks.items()})  # the same on both ranks
    record["agree"] = D.check_masks_agree(conn, step=1) == conn.mask_hash()
    if me == 1:
        conn.set_masks({n: ~m for n, m in conn.masks.items()})
    try:
        D.check_masks_agree(conn, step=2)
        record["mismatch"] = None
    except D.MaskMismatchError as e:
        record["mismatch"] = str(e)
        record["mismatch_alike"] = D.raised_alike(e)
    # the recipes' check of the hashes they gather for summary.json (at the run's end, after a resume): one
    # layer parted on rank 1 is named
    conn.set_masks({n: ~m if me == 1 and n == "0.weight" else m for n, m in conn.masks.items()})  # (0.weight back)
    hashes = D.gather_mask_hashes(acc, conn)
    try:
        D.refuse_differing_masks(hashes, conn, 40, ", the run's end")
        record["end_mismatch"] = None
    except D.MaskMismatchError as e:
        record["end_mismatch"] = [str(e), D.raised_alike(e), [h[:12] for h in hashes]]
    D.refuse_differing_masks([hashes[0]] * 2, conn, 40)  # the same hashes: nothing (and no gather)

    write_record_and_finish(acc, out_dir, me, record)


if __name__ == "__main__":
    main(sys.argv[1])
    D.exit_launched_process()
