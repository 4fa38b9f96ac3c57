"""Run under `accelerate launch --multi_gpu --num_processes 2`: a BandGradientScaler on the DDP model
`prepare` returns, each rank training on its own data. Writes, per rank into argv[1], the scales after
every step and the rank's own unscaled gradients of the scaled layer (to recompute the scales from)."""
import sys

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from adaptive import distributed as D
from adaptive.diagnostics import BandGradientScaler
from adaptive.diagnostics._common import scalers_suspended
from _rank_record import write_record_and_finish

DEPTHS = [0, 0, 1, 1, 2, 2]
MOMENTUM = 0.5


def main(out_dir):
    acc = Accelerator(cpu=True)
    me = acc.process_index
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model, opt = acc.prepare(model, opt)
    scaler = BandGradientScaler(model, layers=["module.0"], depths={"0": torch.tensor(DEPTHS)}, momentum=MOMENTUM)
    local = acc.unwrap_model(model)
    g = torch.Generator().manual_seed(10 + me)  # another batch on every rank, bands of other sizes
    size = torch.tensor([1.0, 1.0, 10.0, 10.0, 100.0, 100.0]) * (1 + me)
    record = {"world": D.world_size(), "scales": [], "raw": [], "grad": None}
    for _ in range(3):
        x, y = torch.randn(8, 6, generator=g) * size, torch.randint(0, 3, (8,), generator=g)
        with scalers_suspended(model):  # this rank's own gradient, as the hook receives it (unscaled, unreduced)
            raw, = torch.autograd.grad(F.cross_entropy(local(x), y), local[0].weight)
        opt.zero_grad()
        acc.backward(F.cross_entropy(model(x), y))
        record["grad"] = local[0].weight.grad.tolist()  # reduced: the average of the ranks' scaled gradients
        opt.step()
        record["raw"].append(raw.tolist())
        record["scales"].append(scaler.scales()["0"])
    record["weights"] = [p.detach().tolist() for p in local.parameters()]
    write_record_and_finish(acc, out_dir, me, record)


if __name__ == "__main__":
    main(sys.argv[1])
    D.exit_launched_process()
