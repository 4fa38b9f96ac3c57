"""Run under `accelerate launch --multi_gpu --num_processes 2`: a RigL controller on a connectome attached to
a ZeroRedundancyOptimizer over Adam (each process holding one shard of its state), saved with save_checkpoint
at step 3 of 6, then, after step 6, loaded back with load_checkpoint and run to step 6 again. Writes per rank into argv[1]:
save_checkpoint's error (type, message) if it raised, else whether the resumed run ended with the uninterrupted
run's masks and weights, and the number of state entries in the checkpoint's optimizer file; then
save_checkpoint's refusal of a ZeroRedundancyOptimizer over a group of one process, and the checkpoints left."""
import datetime
import sys

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer

import adaptive
from adaptive.training import load_checkpoint, save_checkpoint
from _rank_record import write_record_and_finish


def build(acc):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.Adam, lr=0.01)
    conn = adaptive.Connectome(model)
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.5, budget="uniform", update_every=2, end_step=6,
                               seed=0)
    model, opt = acc.prepare(model, opt, device_placement=[True, False])  # (its state_dict() would raise)
    acc.register_for_checkpointing(conn, ctrl)
    return model, opt, conn


def steps(model, opt, conn, first, last):
    for s in range(first, last):
        g = torch.Generator().manual_seed(s)  # the same batches on both ranks (no DDP here)
        x, y = torch.randn(6, 6, generator=g), torch.randint(0, 4, (6,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def main(out_dir):
    acc = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=30))])
    model, opt, conn = build(acc)
    steps(model, opt, conn, 0, 3)
    record = {}
    try:
        ck = save_checkpoint(acc, f"{out_dir}/run", 3)
    except Exception as e:  # noqa: BLE001 - recorded for the test
        record["error"] = [type(e).__name__, str(e)[:1500]]
        write_record_and_finish(acc, out_dir, acc.process_index, record)
        return
    steps(model, opt, conn, 3, 6)
    want = {k: v.clone() for k, v in model.state_dict().items()}, conn.mask_hash()
    saved = torch.load(ck / "optimizer.bin", weights_only=False)
    record["saved_entries"] = len(saved["state"])
    record["params"] = sum(len(g["params"]) for g in saved["param_groups"])
    opt.optimizer.optim.state.clear()  # (nothing of the run after step 3 may survive the load)
    load_checkpoint(acc, ck)  # into the same objects (a second prepare would register a second model)
    steps(model, opt, conn, 3, 6)
    record["same_masks"] = conn.mask_hash() == want[1]
    record["same_weights"] = all(torch.equal(v, want[0][k]) for k, v in model.state_dict().items())
    # a second ZeroRedundancyOptimizer, each process's over a group of itself alone: refused before writing
    groups = [torch.distributed.new_group([r]) for r in range(2)]
    other = nn.Linear(2, 2)
    alone = ZeroRedundancyOptimizer(other.parameters(), optimizer_class=torch.optim.SGD, lr=0.1,
                                    process_group=groups[acc.process_index])
    acc.prepare(other, alone, device_placement=[True, False])
    try:
        save_checkpoint(acc, f"{out_dir}/run", 9)
        record["subgroup"] = "returned"
    except RuntimeError as e:
        record["subgroup"] = str(e)
    acc.wait_for_everyone()
    record["left"] = sorted(p.name for p in (ck.parent).iterdir())
    write_record_and_finish(acc, out_dir, acc.process_index, record)


if __name__ == "__main__":
    main(sys.argv[1])
