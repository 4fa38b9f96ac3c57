"""Target "best" on the DEV split (see README.md here): the ladder climb against threshold mode.

    python recipes/benchmarks/mask_only_ablations/best.py [--passes 0.25] [--threshold-mode]

One JSON line: the removal kept, its DEV accuracy and held-out accuracy, the dense network's DEV and
held-out accuracy (the same splits, for comparison), and every held-out score on the way (removed,
held-out acc %), the dense network first.
"""
import argparse, json, sys, time
from pathlib import Path; sys.path.insert(0, str(Path(__file__).resolve().parent)); sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import torch
from harness import setup
from adaptive.mask_only import evaluate, optimize_connectome

ap = argparse.ArgumentParser()
ap.add_argument("--passes", type=float, default=0.25, help="passes per rung (per stage)")
ap.add_argument("--threshold-mode", action="store_true", help="empty ladder: the former threshold editing")
ap.add_argument("--eval-every", type=int, default=20, help="held-out evaluations in threshold mode")
a = ap.parse_args()
tl, hl, dl, fresh = setup()
torch.manual_seed(0)
model = fresh()
dense_dev, dense_held = evaluate(model, dl)[1], evaluate(model, hl)[1]
t0 = time.time()
kw = dict(ladder=(), eval_every=a.eval_every) if a.threshold_mode else {}
res = optimize_connectome(model, tl, hl, "best", passes=a.passes, progress=False, **kw)
s = res.use("best")
dv = evaluate(model, dl)
ev = [(r["removed"], round(r["holdout_acc"] * 100, 2)) for r in res.history if r["kind"] == "eval"]
print(json.dumps({"mode": "threshold" if a.threshold_mode else "ladder", "removed": s.removed,
                  "fraction": round(s.removed / res.conn.num_synapses(), 3), "dev_acc": round(100 * dv[1], 2),
                  "holdout_acc": round(100 * s.holdout_acc, 2), "dense_dev_acc": round(100 * dense_dev, 2),
                  "dense_holdout_acc": round(100 * dense_held, 2), "wall_min": round((time.time() - t0) / 60, 2),
                  "holdout_path": ev}))
