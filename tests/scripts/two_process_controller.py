"""Run under `accelerate launch --multi_gpu --num_processes 2`: every rank sees different data (and
scores its own held-out loss); masks must agree at every update. Writes one JSON file per rank into argv[1]."""
import sys
import warnings

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

import adaptive
from adaptive.diagnostics import collinearity
from adaptive.distributed import MaskMismatchError
from _rank_record import write_record_and_finish


def main(out_dir):
    acc = Accelerator(cpu=True)
    rank = acc.process_index
    record = {"world": acc.num_processes, "train": [], "mask_only": [], "grad_differs": None, "line_search": None, "mismatch": None,
              "missed_target": None}

    # (a) train mode, DDP through Accelerate, RigL driven by the optimizer hooks
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, opt = acc.prepare(model, opt)
    conn = adaptive.Connectome(acc.unwrap_model(model))
    ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.3, update_every=3, end_step=24, seed=5, verify=True)
    def train_24_steps(model, opt, conn, ctrl, g):
        """24 steps on data drawn from ``g`` (different on every rank); the mask hash after each update."""
        hashes = []
        for step in range(24):
            x, y = torch.randn(16, 12, generator=g), torch.randint(0, 4, (16,), generator=g)
            acc.backward(F.cross_entropy(model(x), y))
            opt.step()
            opt.zero_grad()
            if ctrl.events and ctrl.events[-1]["step"] == step + 1:
                hashes.append(conn.mask_hash())
        return hashes

    g = torch.Generator().manual_seed(100 + rank)  # different data on every rank; the later parts go on drawing from it
    record["train"] = train_24_steps(model, opt, conn, ctrl, g)

    # (a) again, with the connectome and controller built before `prepare`, on the raw optimizer
    torch.manual_seed(0)
    early = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 4))
    early_opt = torch.optim.SGD(early.parameters(), lr=0.1, momentum=0.9)
    early_conn = adaptive.Connectome(early)
    early_ctrl = adaptive.Controller(early_conn, early_opt, policy="rigl", density=0.3, update_every=3, end_step=24,
                                     seed=5, verify=True)
    early, early_opt = acc.prepare(early, early_opt)
    record["built_before_prepare"] = train_24_steps(early, early_opt, early_conn, early_ctrl,
                                                    torch.Generator().manual_seed(100 + rank))
    record["same_weights"] = all(torch.equal(p, q) for p, q in zip(model.parameters(), early.parameters()))

    # the DDP wrapper `prepare` returned is taken as the model it wraps: by a connectome (same layer
    # names as one built on the model, so their files and state_dicts are interchangeable) and by the
    # diagnostics, which accept the model's own connectome for it
    record["wrapped_names"] = adaptive.Connectome(model).names == conn.names == ["0.weight", "2.weight"]
    batches = [(torch.randn(16, 12, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(2)]
    col = collinearity(model, batches, conn=conn)
    record["wrapped_collinearity"] = [list(col.cosine), col.measured == conn.num_live() < conn.num_synapses()]

    # (b) mask_only, no DDP: raw gradients differ by rank, decisions come from reduced statistics
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 4))
    conn2 = adaptive.Connectome(net, mode="mask_only")
    ctrl2 = adaptive.Controller(conn2, policy="balanced", estimator="obd", density=0.5, update_every=2,
                                edit_fraction=0.2, edit_decay="constant", seed=5, verify=True)
    for step in range(10):
        x, y = torch.randn(16, 12, generator=g), torch.randint(0, 4, (16,), generator=g)
        F.cross_entropy(net(x), y).backward()
        if step == 0:
            gathered = acc.gather(net[0].weight.grad.reshape(1, -1))
            record["grad_differs"] = bool(not torch.equal(gathered[0], gathered[-1]))
        ctrl2.observe()
        net.zero_grad()
        ev = ctrl2.step()
        if ev is not None:
            record["mask_only"].append([conn2.mask_hash(), ev["pruned"], ev["grown"]])

    # (c) a line search whose held-out loss differs by rank (each scores its own shard): alone, rank 0
    # would keep the whole update (0.9 < 1.2) and rank 1 half of it (a NaN, then 0.8 <= 0.8); on the
    # means (1.0 before; NaN, 1.05, 0.9 after) both reject twice and keep a quarter
    torch.manual_seed(2)
    net3 = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 4))
    opt3 = torch.optim.SGD(net3.parameters(), lr=0.1)
    own = [[1.2, 0.9, 1.3, 0.7], [0.8, float("nan"), 0.8, 1.1]][rank]
    calls = []

    def holdout_loss():
        calls.append(own[len(calls)])
        return calls[-1]

    conn3 = adaptive.Connectome(net3)
    ctrl3 = adaptive.Controller(conn3, opt3, policy="rigl", density=0.3, update_every=4, end_step=40, seed=5,
                                holdout_loss=holdout_loss, line_search_tolerance=0.0, verify=True)
    g3 = torch.Generator().manual_seed(7)  # the same batches on both ranks: only the held-out losses differ
    for step in range(4):
        x, y = torch.randn(16, 12, generator=g3), torch.randint(0, 4, (16,), generator=g3)
        F.cross_entropy(net3(x), y).backward()
        opt3.step()
        opt3.zero_grad()
    ev = ctrl3.events[-1]
    record["line_search"] = {k: ev.get(k) for k in ("step", "line_search_fraction", "holdout_loss", "actual_loss_change",
                                                     "pruned", "grown", "mask_hash")}
    record["line_search"]["calls"] = len(calls)

    # (d) a seed offset by the rank, verify left unset: the first update's masks part, and every process says so
    torch.manual_seed(3)
    net4 = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 4))
    opt4 = torch.optim.SGD(net4.parameters(), lr=0.1)
    ctrl4 = adaptive.Controller(adaptive.Connectome(net4), opt4, policy="set", density=0.3, update_every=2, seed=rank)
    try:
        for step in range(2):
            F.cross_entropy(net4(torch.randn(16, 12, generator=g3)), torch.randint(0, 4, (16,), generator=g3)).backward()
            opt4.step()
            opt4.zero_grad()
    except MaskMismatchError as e:
        record["mismatch"] = [ctrl4.step_count, str(e)]
    # (e) a schedule that misses its target under a line search: rank 0's own held-out losses fall (alone it
    # would keep every cut and reach the target), rank 1's rise fast; on their mean every cut is rolled back,
    # so both ranks end at density 1 and warn alike at the last due update (step 4), whose window holds no
    # gradient (skipped after the collective that counts it): no process waits on another
    torch.manual_seed(4)
    net5 = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 4))
    conn5 = adaptive.Connectome(net5)
    tries = []

    def diverging_holdout_loss():
        tries.append(len(tries))
        return 1.0 - 0.01 * tries[-1] if rank == 0 else 1.0 + tries[-1]

    ctrl5 = adaptive.Controller(conn5, policy="threshold", density=0.3, update_every=2, end_step=4, seed=5,
                                holdout_loss=diverging_holdout_loss, line_search_tries=1, line_search_tolerance=0.0,
                                verify=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(6):
            if step < 2:
                F.cross_entropy(net5(torch.randn(16, 12, generator=g)), torch.randint(0, 4, (16,), generator=g)).backward()
                ctrl5.observe()
                net5.zero_grad()
            ctrl5.step()
    record["missed_target"] = {"warnings": [str(w.message) for w in caught if "schedule ended" in str(w.message)],
                               "density": conn5.density(), "tries": len(tries), "mask_hash": conn5.mask_hash(),
                               "fractions": [e.get("line_search_fraction") for e in ctrl5.events if e["kind"] == "update"]}
    write_record_and_finish(acc, out_dir, rank, record)


if __name__ == "__main__":
    from adaptive.distributed import exit_launched_process

    main(sys.argv[1])
    exit_launched_process()
