"""Selection cost: the k smallest (or largest) scores of a layer, before and after the fast paths.

Side by side in one process, interleaved (the order rotating every round) and repeated (the best of
``--repeats``):
- ``_smallest_k`` (what ``lowest``/``highest`` run per layer at every update) against the old
  implementation (a full stable float argsort up to 2**20 entries, a topk or a sampled bracket
  above) and against that full stable argsort, for layer sizes and fractions k/n, ordered (a line
  search needs the order) and unordered (a plan without one);
- ``keep_plan``'s top-k mask (the initial sparse plan, every gmp/magnitude update) at 4M entries;
- a whole Controller: construction (the initial keep plan, erk and global budgets) and one rigl
  update (under the global budget, a selection among the live or the absent ensembles), on an MLP (8 x 1024x1024, 8.4M synapses) and a ViT-S-sized torchvision ViT (21M).
Every new result is checked against the old one (same indices, same order; same masks).

    python recipes/benchmarks/selection.py            # about 2 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import adaptive  # noqa: E402
from adaptive.cli import path_type  # noqa: E402
from adaptive.atomic import write_text  # noqa: E402
from adaptive.policies import base  # noqa: E402
from recipes.benchmarks._reproduce import command, machine  # noqa: E402
from recipes.benchmarks._checks import check  # noqa: E402

INF = float("inf")


def full_sort(x, k, ordered=True):
    """The reference: one stable sort of every entry."""
    return torch.argsort(torch.nan_to_num(x, nan=INF), stable=True)[:k]


def old_smallest_k(x, k, ordered=True):
    """``_smallest_k`` before the fast paths (verbatim)."""
    n = x.numel()
    if k >= n or n <= 1 << 20:
        return torch.argsort(torch.nan_to_num(x, nan=INF), stable=True)[:k]
    if k <= 2048:
        vals, idx = torch.topk(torch.nan_to_num(x, nan=INF), k, largest=False, sorted=True)
        order = torch.argsort(idx, stable=True)
        idx, vals = idx[order], vals[order]
        return idx[torch.argsort(vals, stable=True)]
    if not bool(torch.isfinite(x).all()):
        x = torch.nan_to_num(x, nan=INF)
    stride = max(1, n >> 18)
    sample = x[::stride]
    m = sample.numel()
    q, slack = k / n, 6.0 / m**0.5
    lo_r, hi_r = max(1, int((q - slack) * m)), min(m, int((q + slack) * m) + 1)
    sv = torch.sort(sample).values
    lo, hi = sv[lo_r - 1], sv[hi_r - 1]
    below = (x < lo).nonzero().squeeze(1)
    band = ((x >= lo) & (x <= hi)).nonzero().squeeze(1)
    need = k - below.numel()
    if need < 0 or need > band.numel():
        v = torch.kthvalue(x, k).values
        below = (x < v).nonzero().squeeze(1)
        band = (x == v).nonzero().squeeze(1)
        need = k - below.numel()
    band = band[torch.argsort(x[band], stable=True)[:need]]
    if not ordered:
        return torch.cat([below, band])
    return torch.cat([below[torch.argsort(x[below], stable=True)], band])


def old_keep_top(scores, size, budget):
    """keep_plan's top() before the fast path: an ordered top-k, then take_synapses's prefix."""
    flat = scores.reshape(-1)
    order = base.highest(flat, torch.ones_like(flat, dtype=torch.bool), base.max_count(size, budget, flat.numel()))
    k = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    k[base.take_synapses(order, size, budget)] = True
    return k


def old_eligible_smallest_k(flat, ok, k, ordered, negate=False):
    """``_eligible_smallest_k`` before the bracket that needs no gather (verbatim, with ``negate`` done first,
    as ``highest`` did): every eligible entry gathered, then ``_smallest_k`` of them."""
    if negate:
        flat = -flat
    count = int(torch.count_nonzero(ok))
    k = min(int(k), count)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=flat.device)
    if count == flat.numel():
        return base._smallest_k(flat, k, ordered)
    idx = ok.nonzero().squeeze(1)
    return idx[base._smallest_k(flat[idx], k, ordered)]


NEW = {"_smallest_k": base._smallest_k, "_keep_top": base._keep_top, "_eligible_smallest_k": base._eligible_smallest_k}
OLD = {"_smallest_k": old_smallest_k, "_keep_top": old_keep_top, "_eligible_smallest_k": old_eligible_smallest_k}


def use(impl):
    for name, fn in impl.items():
        setattr(base, name, fn)


def best(fns, repeats):
    """Best time of each of ``fns`` (called interleaved, ``repeats`` rounds, the order rotating every round so
    that none always runs on the caches and freed memory of another) and their last results."""
    t = [float("inf")] * len(fns)
    out = [None] * len(fns)
    for r in range(repeats):
        for i in [(r + j) % len(fns) for j in range(len(fns))]:
            f = fns[i]
            t0 = time.perf_counter()
            out[i] = f()
            t[i] = min(t[i], time.perf_counter() - t0)
    return t, out


def selection_rows(repeats):
    rows = []
    g = torch.Generator().manual_seed(0)
    # 65k: a small conv; 295k / 590k: a ViT-S MLP matrix at half density (live or dead half) / whole;
    # 1M: the old full-sort limit; 4M: the sampled bracket
    for n in [65_536, 294_912, 589_824, 1 << 20, 1 << 22]:
        x = torch.randn(n, generator=g)
        for frac in [0.01, 0.15, 0.5]:
            k = int(frac * n)
            for ordered in (True, False):
                fns = [lambda: full_sort(x, k), lambda: old_smallest_k(x, k, ordered),
                       lambda: NEW["_smallest_k"](x, k, ordered)]
                (tf, to, tn), (rf, ro, rn) = best(fns, repeats)
                same = torch.equal(rn, ro) if ordered else torch.equal(rn.sort().values, ro.sort().values)
                check(same and torch.equal(rf.sort().values, rn.sort().values), (n, k, ordered))
                rows.append(f"| _smallest_k | {n:,} | {frac:g} | {'yes' if ordered else 'no'} | {tf * 1e3:.1f} | "
                            f"{to * 1e3:.1f} | {tn * 1e3:.1f} | {to / tn:.1f}x | yes |")
    n = 1 << 22
    x = torch.randn(n, generator=g)
    for frac in [0.1, 0.5]:
        def old():
            use(OLD)
            try:
                return old_keep_top(x, 1.0, frac * n)
            finally:
                use(NEW)
        (to, tn), (ro, rn) = best([old, lambda: NEW["_keep_top"](x, 1.0, frac * n)], repeats)
        check(torch.equal(ro, rn), "the old and new selections answered differently")
        rows.append(f"| keep_plan top (mask) | {n:,} | {frac:g} | mask | - | {to * 1e3:.1f} | {tn * 1e3:.1f} | "
                    f"{to / tn:.1f}x | yes |")
    return rows


def mlp():
    return nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(1024, 1024), nn.ReLU())]), torch.randn(16, 1024)


def vit():
    import torchvision
    m = torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=12, num_heads=6,
                                             hidden_dim=384, mlp_dim=1536, num_classes=100)
    return m, torch.randn(2, 3, 32, 32)


def controller_case(build, budget, impl):
    """Construction time (initial keep plan), one rigl update's time, and the masks after both."""
    use(impl)
    try:
        torch.manual_seed(0)
        model, x = build()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        t0 = time.perf_counter()
        conn = adaptive.Connectome(model)
        ctrl = adaptive.Controller(conn, opt, policy="rigl", density=0.5, budget=budget, update_every=10**6,
                                   end_step=10**7, seed=0)
        t_init = time.perf_counter() - t0
        init_masks = {n: m.clone() for n, m in conn.masks.items()}
        model(x).sum().backward()
        opt.step()
        opt.zero_grad()
        t0 = time.perf_counter()
        ctrl.update()
        t_upd = time.perf_counter() - t0
        return t_init, t_upd, init_masks, {n: m.clone() for n, m in conn.masks.items()}, conn.num_synapses()
    finally:
        use(NEW)


def controller_rows(repeats):
    rows = []
    for name, build in [("MLP 8x1024^2", mlp), ("ViT-S/4 (12x384)", vit)]:
        for budget in ["erk", "global"]:
            ti, tu = {"old": [], "new": []}, {"old": [], "new": []}
            res = {}
            for r in range(repeats):
                for label, impl in [("old", OLD), ("new", NEW)][::1 if r % 2 == 0 else -1]:  # alternating
                    a, b, im, um, syn = controller_case(build, budget, impl)
                    ti[label].append(a)
                    tu[label].append(b)
                    res[label] = (im, um)
            same = all(torch.equal(res["old"][i][n], res["new"][i][n]) for i in (0, 1) for n in res["old"][0])
            check(same, (name, budget))
            for what, t in [("construct (initial keep plan)", ti), ("rigl update", tu)]:
                o, nw = min(t["old"]), min(t["new"])
                rows.append(f"| {name}, {budget}: {what} | {syn:,} | 0.5 | - | - | {o:.3f} s | {nw:.3f} s | "
                            f"{o / nw:.1f}x | {'yes' if same else 'NO'} |")
            print(rows[-2] + "\n" + rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="rounds per selection case (best taken)")
    ap.add_argument("--controller-repeats", type=int, default=2)
    ap.add_argument("--out", type=path_type(), default=os.path.join(os.path.dirname(__file__), "results", "selection.md"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    t0 = time.time()
    hdr = ["| case | entries | k / n | ordered | full stable sort (ms) | old (ms) | new (ms) | old / new | identical |",
           "|---|---|---|---|---|---|---|---|---|"]
    rows = selection_rows(args.repeats)
    print("\n".join(hdr + rows), flush=True)
    crows = controller_rows(args.controller_repeats)
    text = (f"# Selection cost: old vs new `_smallest_k` / keep-plan masks, {torch.get_num_threads()} thread(s), "
            f"torch {torch.__version__}, best of {args.repeats} (controller: {args.controller_repeats})\n\n"
            + "\n".join(hdr + rows + crows) + "\n\n"
            "Old: a full stable float argsort up to 2**20 entries (a layer of up to ~2M weights at half density), "
            "topk or a sampled bracket above; an ordered top-k for every keep-plan mask; the eligible entries of a "
            "selection among some (a global budget's live or absent ensembles) gathered first. New: int32 sort keys "
            "in the float order (radix-sorted on CPU), a cut at the k-th value (topk) with only the k selected sorted when "
            "k <= n/8, unordered keep masks for equal-size ensembles, and past 2**16 entries (more than 2,048 selected) a selection among "
            "eligible ones bracketed without gathering them. Every result was checked identical "
            "(indices and order; masks after construction and after the update). Controller rows: rigl at density "
            f"0.5, one update after one SGD step. {(time.time() - t0) / 60:.1f} min.\n\n"
            f"Machine: {machine()}.\n\n"
            f"Reproduce: `{command('selection.py', ROOT, threads=True, placed=('--out',))}`\n")
    print(text)
    write_text(args.out, text)


if __name__ == "__main__":
    main()
