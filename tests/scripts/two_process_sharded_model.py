"""Run as ranks 0 and 1 (tests/_ports.two_rank_records): a Connectome built on a model FSDP shards (FSDP2's
fully_shard, whose weights are DTensor shards; FSDP1's FullyShardedDataParallel, flat parameters, with and
without use_orig_params), and one built before fully_shard and attached after. Records per rank and case the
error raised (type and message), or "built" where none was."""
import sys

from _rank_record import record_cases


def attempt(case):
    import torch
    from torch import nn
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

    import adaptive

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    if case == "fully_shard":
        fully_shard(model)
        adaptive.Connectome(model)
    elif case == "fsdp1":
        adaptive.Connectome(FullyShardedDataParallel(model, device_id=torch.device("cpu")))
    elif case == "fsdp1_orig_params":  # (the flat shards, each process's own shape, were taken for whole weights)
        adaptive.Connectome(FullyShardedDataParallel(model, device_id=torch.device("cpu"), use_orig_params=True))
    else:  # built whole, then sharded (as accelerator.prepare does under FSDP) and attached
        conn = adaptive.Connectome(model)
        fully_shard(model)
        conn.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    return "built"


if __name__ == "__main__":
    record_cases(int(sys.argv[2]), sys.argv[1],
                 {c: c for c in ("fully_shard", "fsdp1", "fsdp1_orig_params", "sharded_after")}, attempt)
