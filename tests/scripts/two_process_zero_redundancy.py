"""Run as ranks 0 and 1 (tests/_ports.two_rank_records): a RigL controller on a connectome attached to a
ZeroRedundancyOptimizer over Adam, whose local optimizer on each rank holds only that rank's shard of the
parameters. Case "reattach": the same, with conn.detach() and conn.attach(opt) half-way (the controller the
detach stopped attached again by the connectome). Records per rank: the warnings given, whether every pruned
weight was +0.0 after every step, the moments left at pruned positions of the rank's own shard, the masks'
hash and the controller's events."""
import sys
import warnings

from _rank_record import record_cases


def attempt(reattach):
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.distributed.optim import ZeroRedundancyOptimizer

    import adaptive

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.Adam, lr=0.01)
    conn = adaptive.Connectome(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.5, budget="uniform", update_every=2,
                                   end_step=8, seed=0)
        zero = True
        g = torch.Generator().manual_seed(3)  # the same batches on both ranks (no DDP here)
        for s in range(8):
            if reattach and s == 4:
                conn.detach()
                conn.attach(opt)
            x, y = torch.randn(6, 6, generator=g), torch.randint(0, 4, (6,), generator=g)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            zero &= all(bool((p.detach()[~conn.masks[n]].view(torch.int32) == 0).all()) for n, p in conn.params.items())
    local = opt.optim.state
    stale = sum(int(st["exp_avg"][~conn.masks[n]].ne(0).sum()) for n, p in conn.params.items()
                for q, st in local.items() if q is p)
    return {"warnings": [str(w.message)[:300] for w in caught], "zero": zero, "stale": stale,
            "held": sorted(n for n, p in conn.params.items() if p in local), "hash": conn.mask_hash(),
            "events": len(ctrl.events)}


if __name__ == "__main__":
    folder, rank = sys.argv[1], int(sys.argv[2])
    record_cases(rank, folder, {"zero": False, "reattach": True}, attempt, timeout_s=60, message_chars=2000)
