"""Run as ``python two_process_holdout_error.py OUT RANK``, two at once (rank 0 and 1; started by
tests/test_two_process.py through tests/_ports.two_rank_records): a gloo process group on the CPU with a short
timeout, then a controller whose line search's ``holdout_loss()`` raises on process 1 alone (CASES: at the
score before the edit, at the score after it), then one where it raises nowhere. Writes ``rank{N}.json`` into
OUT: each case's error (type and message) and whether the masks are those before the update, or the update's
outcome. A process left waiting in the line search's mean would wait there for the group's timeout (20 seconds
here, 30 minutes by default) and record a bare gloo error instead."""
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import adaptive
from _rank_record import record_cases

CASES = {"before_the_edit": 0, "after_the_edit": 1, "nowhere": None}


def run(rank: int, folder: str) -> None:
    def attempt(failing_call):
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        conn = adaptive.Connectome(model)
        calls = []

        def holdout_loss():
            calls.append(None)
            if dist.get_rank() == 1 and len(calls) - 1 == failing_call:
                raise FileNotFoundError("process 1's held-out shard is gone")
            return 1.0

        ctrl = adaptive.Controller(conn, policy="rigl", density=0.5, update_every=2, holdout_loss=holdout_loss,
                                   line_search_tolerance=1.0)
        start = conn.mask_hash()
        g = torch.Generator().manual_seed(rank)
        try:
            for _ in range(2):
                model.zero_grad()
                F.cross_entropy(model(torch.randn(16, 8, generator=g)), torch.randint(0, 4, (16,), generator=g)).backward()
                ctrl.observe()
                ctrl.step()
        except Exception as e:  # noqa: BLE001 - what each process raised is the test's to judge
            return {"error": type(e).__name__, "message": str(e), "masks_as_before": conn.mask_hash() == start}
        return {"updates": sum(e["kind"] == "update" for e in ctrl.events), "mask_hash": conn.mask_hash(), "masks_as_before": conn.mask_hash() == start}

    record_cases(rank, folder, CASES, attempt)


if __name__ == "__main__":
    run(int(sys.argv[2]), sys.argv[1])
