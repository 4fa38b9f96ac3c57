"""What the connectome's ensemble-mask cache saves in a controller update: torchvision resnet50
(about 25.5 million synapses) with block:4x4 and neuron ensembles, RigL at density 0.5.

Three ways to run the same updates, side by side in one process, the variants' order rotating every
round (same seed, same gradient, so the same edits: every run's final masks' hashes are checked equal):
- ``before``: no cache (``Connectome._ensemble_mask`` pools the layer's mask at every call, as
  ``ensemble_masks`` did) and every mask expanded from an ensemble mask checked again against its
  granularity's rule. Not the old code itself: it pooled every layer at each of the controller's
  three reads (3 x 54 = 162 poolings per update on resnet50); this controller reads every layer
  once and the edited ones again (once per side of the plan), so with the cache off it pools
  about as often (the table gives the count);
- ``cache``: pooled ensemble masks kept until the layer's mask changes; the expansion shortcuts
  below are off (``adaptive.connectome_edits.expands_exactly`` patched to say False);
- ``cache + exact expansion``: as shipped. For the built-in synapse/kernel/neuron/block
  granularities an expanded ensemble mask cannot break the rule, so it is not checked, and
  ``set_ensemble_masks`` stores the ensemble masks it was given, so the next update pools nothing.

    OMP_NUM_THREADS=1 python recipes/benchmarks/ensemble_mask_cache.py   # about two minutes on 2 cores
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import adaptive  # noqa: E402
from adaptive import connectome_edits  # noqa: E402
from adaptive.connectome_queries import ConnectomeQueriesMixin  # noqa: E402
from adaptive.cli import path_type  # noqa: E402
from adaptive.atomic import write_text  # noqa: E402
from recipes.benchmarks._reproduce import command, machine  # noqa: E402
from recipes.benchmarks._checks import check  # noqa: E402

VARIANTS = ["before", "cache", "cache + exact expansion"]


def _uncached(self, n):
    """``Connectome._ensemble_mask`` without its cache: what every call cost before."""
    m, g = self.masks[n], self.granularities[n]
    return m if tuple(g.ensemble_shape(m.shape)) == tuple(m.shape) else self._pool_ensemble_mask(g, m)


@contextlib.contextmanager
def variant(name, pools):
    """Run the code as ``name`` says, counting the ensemble-mask poolings in ``pools``."""
    patches = []
    if name != "cache + exact expansion":
        patches.append((connectome_edits, "expands_exactly", lambda g: False))
    if name == "before":
        patches.append((ConnectomeQueriesMixin, "_ensemble_mask", _uncached))
    pool = ConnectomeQueriesMixin._pool_ensemble_mask

    def counted(g, m):
        pools.append(1)
        return pool(g, m)

    patches.append((ConnectomeQueriesMixin, "_pool_ensemble_mask", staticmethod(counted)))
    saved = [(obj, attr, obj.__dict__[attr]) for obj, attr, _ in patches]
    try:
        for obj, attr, new in patches:
            setattr(obj, attr, new)
        yield
    finally:
        for obj, attr, old in saved:
            setattr(obj, attr, old)


def run(ensemble, name, updates, batch, size):
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pools = []
    with variant(name, pools):
        conn = adaptive.Connectome(model, ensemble=ensemble)
        ctrl = adaptive.Controller(conn, policy="rigl", density=0.5, budget="global", update_every=10**9,
                                   edit_fraction=0.1, edit_decay="constant", seed=0)
        conn.attach(opt)
        x, y = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
        F.cross_entropy(model(x), y).backward()
        times, per_update = [], []
        for _ in range(updates):
            ctrl.observe()  # the same gradient every time: every variant makes the same edits
            del pools[:]
            t = time.process_time()  # CPU seconds of this process: on a shared machine wall time swings with other jobs
            ctrl.update()
            times.append(time.process_time() - t)
            per_update.append(len(pools))
            check(ctrl.events[-1]["pruned"], "an update that edits nothing measures nothing")
        conn.detach()
    return times, per_update, conn.mask_hash()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=4, help="updates timed per run (median)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of every variant, interleaved (the order rotating)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=64, help="input side: the update's cost does not depend on it")
    ap.add_argument("--out", type=path_type(), default=os.path.join(os.path.dirname(__file__), "results", "ensemble_mask_cache.md"))
    args = ap.parse_args()
    # RigL under a global budget empties a few neuron layers of a random resnet50: the same in every variant
    warnings.filterwarnings("ignore", message=r"layer\(s\) .* have no live synapse left")
    rows = []
    for ensemble in ["block:4x4", "neuron"]:
        times = {v: [] for v in VARIANTS}
        pools, hashes = {}, {}
        for r in range(args.rounds):
            for v in VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]:  # the order rotates every round
                t, p, h = run(ensemble, v, args.updates, args.batch, args.size)
                times[v] += t
                pools[v] = statistics.median(p)
                hashes[f"{v}, round {r + 1}"] = h  # every run's: each round must reach the same masks
                print(f"{ensemble:10s} {v:24s} update {statistics.median(t):.3f} CPU s, poolings/update {pools[v]:.0f}", flush=True)
        if len(set(hashes.values())) != 1:
            raise SystemExit(f"{ensemble}: the runs reached different masks: {hashes}")
        med = {v: statistics.median(times[v]) for v in VARIANTS}
        rows.append((ensemble, med, pools))
    lines = ["| ensemble | " + " | ".join(f"update, {v} (CPU s)" for v in VARIANTS) + " | before / cache | before / shipped "
             "| ensemble-mask poolings per update (before / cache / shipped) |", "|---|" + "---:|" * (len(VARIANTS) + 3)]
    for ensemble, med, pools in rows:
        lines.append(f"| {ensemble} | " + " | ".join(f"{med[v]:.3f}" for v in VARIANTS)
                     + f" | {med['before'] / med['cache']:.2f}x | {med['before'] / med['cache + exact expansion']:.2f}x | "
                     + " / ".join(f"{pools[v]:.0f}" for v in VARIANTS) + " |")
    text = (
        f"# Ensemble-mask cache: controller update on torchvision resnet50, {torch.get_num_threads()} thread(s), "
        f"median of {args.updates * args.rounds} updates per cell (CPU time of the process)\n\n" + "\n".join(lines) + "\n\n"
        "RigL, global budget, density 0.5, 10% of live ensembles swapped per update, no line search; the same edits "
        "in every column (equal mask hashes). before: every read of a layer's ensemble mask pools it (the "
        "poolings per update are counted in the last column), and masks expanded from "
        "ensemble masks are checked again against the granularity's rule. cache: pooled "
        "ensemble masks kept until the layer's mask changes (set_masks, load_state_dict, an in-place edit or a "
        "new tensor). shipped: also no rule check of masks expanded from ensemble masks of the built-in "
        "synapse/kernel/neuron/block granularities (they cannot break it; n:m and plugin granularities are "
        "still checked), and the ensemble masks set_ensemble_masks was given are stored, so the next update "
        "pools nothing.\n\n"
        f"Machine: {machine()}.\n\n"
        f"Reproduce: `{command('ensemble_mask_cache.py', ROOT, threads=True, placed=('--out',))}`\n"
    )
    print(text)
    write_text(args.out, text)


if __name__ == "__main__":
    main()
