"""Our optimize_connectome variations on the DEV split (see README.md here): one JSON line per target."""
import sys, time, json, argparse
from pathlib import Path; sys.path.insert(0, str(Path(__file__).resolve().parent)); sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import torch
from harness import setup
from adaptive.cli import path_type
from adaptive.mask_only import evaluate, optimize_connectome
from adaptive.utility.evidence import Evidence
from adaptive.utility.presence import Presence
ap = argparse.ArgumentParser()
ap.add_argument("--passes", type=float, default=0.25)
ap.add_argument("--targets", default="0.2,0.5")
ap.add_argument("--step", type=float, default=0.003)
ap.add_argument("--window", type=int, default=4)
ap.add_argument("--edit", type=float, default=0.05)
ap.add_argument("--approach", type=float, default=0.5)
ap.add_argument("--verify", type=int, default=2)
ap.add_argument("--est", default="evidence")
ap.add_argument("--margin", type=float, default=0.0)
ap.add_argument("--lr", type=float, default=0.01)
ap.add_argument("--seed", type=int, default=0, help="data order and DEV/holdout draw (as ep.py --seed)")
ap.add_argument("--proxy", type=path_type(fix="a path, or leave --proxy out for the DEV split"), default=None, help="a proxy network from proxy.py pretrain (as in ep.py): dev_acc is then "
                "on the shifted B images it never saw, mem_acc on 5,000 seen ones")
ap.add_argument("--quality", type=int, default=20, help="with --proxy: the re-JPEG quality of the shift")
a = ap.parse_args()
mem = None
if a.proxy:
    if not 1 <= a.quality <= 95:
        ap.error(f"--quality must lie in 1..95, got {a.quality}")
    from proxy import proxy_loaders
    from adaptive.models import build_model
    torch.set_num_threads(2)
    tl, hl, dl, mem = proxy_loaders(a.proxy, a.quality, a.seed, 128)
    fresh = lambda: build_model("resnet20", weights=a.proxy)
else:
    tl, hl, dl, fresh = setup(seed=a.seed)
torch.manual_seed(a.seed)
model = fresh()
t0 = time.time()
ts = [float(x) for x in a.targets.split(",")]
res = optimize_connectome(model, tl, hl, ts, passes=a.passes, estimator=(Evidence(step=a.step) if a.est == 'evidence' else Presence(step=a.lr)), window=a.window,
                          edit_fraction=a.edit, approach=a.approach, verify_batches=a.verify, progress=False, margin=a.margin, seed=a.seed)
for t in ts:
    s = res.use(f"{t:g}")
    dv = evaluate(model, dl)
    more = {} if mem is None else {"mem_acc": round(100 * evaluate(model, mem)[1], 2)}
    print(json.dumps({"target": t, "dev_acc": round(100*dv[1],2), "dev_loss": round(dv[0],4), **more, "cpu_min": round(s.cpu_seconds/60,2), "wall": round((time.time()-t0)/60, 2), **vars(a)}))
