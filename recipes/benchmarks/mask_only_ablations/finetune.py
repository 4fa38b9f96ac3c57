"""A ceiling for mask learning on the proxy: fine-tune the proxy's weights themselves (every
parameter, normalisation statistics frozen as in mask-only) on the same shifted A images, same
passes and batch size, and report accuracy on the unseen shifted B images. Masks can only zero
weights, so this unconstrained adaptation bounds what any mask method could gain from the data.
The step is chosen on B itself, which makes the ceiling optimistic (a ceiling should be).
One JSON line per step size.

    python recipes/benchmarks/mask_only_ablations/finetune.py --proxy PROXY.pt --passes 1 --lrs 0.001,0.003,0.01
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent)); sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import torch
import torch.nn.functional as F

from adaptive.data.cycle import LoaderCycle
from adaptive.mask_only import evaluate
from adaptive.cli import path_type
from adaptive.models import build_model
from proxy import proxy_loaders

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--proxy", type=path_type(), required=True, help="the proxy network from proxy.py pretrain")
ap.add_argument("--quality", type=int, default=20, help="the re-JPEG quality of the shift")
ap.add_argument("--passes", type=float, default=1.0, help="passes over the shifted A train part")
ap.add_argument("--lrs", default="0.001,0.003,0.01", help="SGD steps (momentum 0.9, cosine to 0), comma-separated")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--save", type=path_type(fix="a path, or leave --save out to save nothing"), default=None, help="write the fine-tuned state_dict of the last step size here (a teacher for ep.py --teacher)")
a = ap.parse_args()
lrs = [float(v) for v in a.lrs.split(",")]
if not 1 <= a.quality <= 95:
    ap.error(f"--quality must lie in 1..95, got {a.quality}")
if a.passes <= 0 or any(v <= 0 for v in lrs):
    ap.error("--passes and every --lrs value must be > 0")
torch.set_num_threads(2)
tl, _, unseen, mem = proxy_loaders(a.proxy, a.quality, a.seed, 128)
steps = max(1, math.ceil(a.passes * len(tl)))
for lr in lrs:
    torch.manual_seed(a.seed)
    model = build_model("resnet20", weights=a.proxy).eval()  # eval: BatchNorm statistics frozen
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    it, t0 = LoaderCycle(tl), time.time()
    for _ in range(steps):
        x, y = next(it)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step(); sched.step()
    print(json.dumps({"lr": lr, "passes": a.passes, "unseen_acc": round(100 * evaluate(model, unseen)[1], 2),
                      "mem_acc": round(100 * evaluate(model, mem)[1], 2), "min": round((time.time() - t0) / 60, 2)}), flush=True)
if a.save:
    torch.save(model.state_dict(), a.save)
