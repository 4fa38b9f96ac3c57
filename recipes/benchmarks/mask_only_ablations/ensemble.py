"""Would distilling several learned masks into one help? An upper bound first: the accuracy of the
ensemble (mean softmax) of masks saved by ``ep.py --proxy ... --save-masks FILE``, on the proxy's
unseen B images, against each mask alone, and how many mask positions two runs disagree on.

    python recipes/benchmarks/mask_only_ablations/ensemble.py --proxy PROXY.pt MASKS_SEED0.pt MASKS_SEED1.pt ...
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent)); sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import torch

from adaptive import Connectome
from adaptive.cli import path_type
from adaptive.models import build_model
from proxy import proxy_loaders

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--proxy", type=path_type(), required=True, help="the proxy network from proxy.py pretrain")
ap.add_argument("--quality", type=int, default=20, help="the re-JPEG quality of the shift")
ap.add_argument("masks", type=path_type(), nargs="+", help="files written by ep.py --save-masks (at least two)")
a = ap.parse_args()
if not 1 <= a.quality <= 95:
    ap.error(f"--quality must lie in 1..95, got {a.quality}")
if len(a.masks) < 2:
    ap.error("an ensemble needs at least two mask files")
torch.set_num_threads(2)
_, _, unseen, _ = proxy_loaders(a.proxy, a.quality, 0, 500)
model = build_model("resnet20", weights=a.proxy).eval()
conn = Connectome(model, mode="mask_only")
saved = [torch.load(f, weights_only=True) for f in a.masks]
common = sorted(set.intersection(*(set(s) for s in saved)))
if not common:
    sys.exit("the mask files share no target")


@torch.no_grad()
def probs():
    ps, ys = [], []
    for x, y in unseen:
        ps.append(torch.softmax(model(x), 1)); ys.append(y)
    return torch.cat(ps), torch.cat(ys)


print("| removed | each mask alone, unseen B % | ensemble of all, unseen B % | positions where masks 1 and 2 differ |")
print("|---:|---|---:|---:|")
for t in common:
    ps = []
    for s in saved:
        conn.set_masks(s[t]); p, y = probs(); ps.append(p)
    alone = ", ".join(f"{100 * (p.argmax(1) == y).float().mean().item():.2f}" for p in ps)
    ens = 100 * (torch.stack(ps).mean(0).argmax(1) == y).float().mean().item()
    differ = sum(int((saved[0][t][n] != saved[1][t][n]).sum()) for n in saved[0][t])
    print(f"| {100 * t:g}% | {alone} | {ens:.2f} | {differ:,} of {conn.num_synapses():,} |")
