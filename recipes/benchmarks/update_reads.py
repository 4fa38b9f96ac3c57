"""The reads a controller update makes over every synapse, old way and new, side by side in one process.

On torchvision resnet50's weights (25.5 million synapses; a random half live):
- choosing the 10% cheapest live (or most useful absent) ensembles of the whole network: the eligible scores
  gathered first (as the library did before stop 64), then today's ``_smallest_k`` (so the ratio is the
  gather's), against ``lowest``/``highest``, which bracket the k-th eligible value without a gather; ordered
  and unordered;
- whether each layer's weights hold NaN or inf: ``_foreach_norm(inf)`` (stop 63) against
  ``adaptive.finite.finite_flags`` (``torch.aminmax``);
- whether each layer's mask holds any True / only True: ``any()`` and ``all()`` against
  ``adaptive.mask_reads.any_set`` / ``all_set`` (counting);
- ordering a sparse start's edits (the live half's scores, ties by index): a stable float ``argsort`` (the
  library before stop 70) against ``_stable_argsort`` (int32 keys); counting a bool mask: ``sum()`` against
  ``count_nonzero``;
- the k-th smallest of ``--kth-size`` scores (k an eighth of them, a cut ``_smallest_k`` makes below 2**20
  entries), in descending and in shuffled order: ``torch.kthvalue`` (the library before stop 65), quadratic in
  the entries on a descending input, against ``_kth_smallest`` (``topk``).
Every pair's answers are checked equal (the same indices in the same order where ordered; the same set
where not). Interleaved rounds, best of ``--rounds``.

    OMP_NUM_THREADS=2 python recipes/benchmarks/update_reads.py
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from adaptive.atomic import write_text  # noqa: E402
from adaptive.cli import path_type  # noqa: E402
from adaptive.finite import finite_flags  # noqa: E402
from adaptive.mask_reads import all_set, any_set  # noqa: E402
from adaptive.policies.base import _kth_smallest, _smallest_k, _stable_argsort, highest, lowest  # noqa: E402
from recipes.benchmarks._reproduce import command, machine  # noqa: E402
from recipes.benchmarks._checks import check  # noqa: E402


def gathered(x, ok, k, ordered, negate=False):
    """The selection among eligible entries before stop 64: every eligible score gathered, then _smallest_k."""
    y = -x if negate else x
    idx = ok.nonzero().squeeze(1)
    return idx[_smallest_k(y[idx], min(k, idx.numel()), ordered)]


def inf_norm_flags(tensors):
    """finite_flags as stop 63 computed it: one fused inf norm."""
    peaks = torch._foreach_norm(list(tensors), float("inf"))
    return torch.isfinite(torch.stack([p.float() for p in peaks]))


def best(fns, rounds):
    """Best time of each of ``fns``, interleaved (the order rotating every round), and their last results."""
    t, out = [float("inf")] * len(fns), [None] * len(fns)
    for r in range(rounds):
        order = list(range(len(fns)))
        order = order[r % len(fns):] + order[:r % len(fns)]
        for i in order:
            t0 = time.perf_counter()
            out[i] = fns[i]()
            t[i] = min(t[i], time.perf_counter() - t0)
    return t, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per pair (best taken)")
    ap.add_argument("--fraction", type=float, default=0.1, help="share of the live ensembles chosen")
    ap.add_argument("--out", type=path_type(), default=os.path.join(os.path.dirname(__file__), "results", "update_reads.md"))
    ap.add_argument("--kth-size", type=int, default=1 << 18, help="scores whose k-th smallest is read (k: an eighth)")
    args = ap.parse_args()
    if args.kth_size < 8:
        ap.error(f"--kth-size must be at least 8, got {args.kth_size}")
    if args.rounds < 1:
        ap.error(f"--rounds must be a positive integer, got {args.rounds}")
    if not 0 < args.fraction < 1:
        ap.error(f"--fraction must lie strictly between 0 and 1, got {args.fraction}")
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    weights = [p.detach() for p in model.parameters() if p.dim() > 1]
    masks = [torch.rand(w.shape) < 0.5 for w in weights]
    for w, m in zip(weights, masks):
        w.mul_(m)  # absent synapses hold 0, as in a connectome
    n = sum(w.numel() for w in weights)
    scores = torch.cat([w.reshape(-1).abs() for w in weights])
    gains = torch.randn(n).abs()
    alive = torch.cat([m.reshape(-1) for m in masks])
    k = int(args.fraction * int(alive.sum()))
    rows = []
    for side, x, ok, fn, negate in (("prune (lowest, live)", scores, alive, lowest, False),
                                    ("grow (highest, absent)", gains, ~alive, highest, True)):
        for ordered in (True, False):
            (t_old, t_new), (r_old, r_new) = best([lambda: gathered(x, ok, k, ordered, negate),
                                                   lambda: fn(x, ok, k, ordered)], args.rounds)
            same = torch.equal(r_old, r_new) if ordered else torch.equal(r_old.sort().values, r_new.sort().values)
            check(same, (side, ordered))
            rows.append(f"| select {k:,} of {int(ok.sum()):,}: {side}, {'ordered' if ordered else 'unordered'} | "
                        f"{n:,} | {t_old * 1e3:.1f} | {t_new * 1e3:.1f} | {t_old / t_new:.1f}x | yes |")
    (t_old, t_new), (r_old, r_new) = best([lambda: inf_norm_flags(weights).tolist(),
                                           lambda: finite_flags(weights).tolist()], args.rounds)
    check(r_old == r_new, "the old and new reads answered differently")
    rows.append(f"| finite weights, {len(weights)} layers: _foreach_norm(inf) / finite_flags (aminmax) | {n:,} | "
                f"{t_old * 1e3:.1f} | {t_new * 1e3:.1f} | {t_old / t_new:.1f}x | yes |")
    for what, old, new in (("any", lambda m: bool(m.any()), any_set), ("all", lambda m: bool(m.all()), all_set)):
        (t_old, t_new), (r_old, r_new) = best([lambda: [old(m) for m in masks], lambda: [new(m) for m in masks]],
                                              args.rounds)
        check(r_old == r_new, "the old and new reads answered differently")
        rows.append(f"| masks, {len(masks)} layers: {what}() / {new.__name__} (counting) | {n:,} | {t_old * 1e3:.1f} | "
                    f"{t_new * 1e3:.1f} | {t_old / t_new:.1f}x | yes |")
    # the order of a plan's edits (keep_plan: a sparse start prunes about half of every synapse), ties by index
    live_scores = scores[alive]
    (t_old, t_new), (r_old, r_new) = best([lambda: torch.argsort(live_scores, stable=True),
                                           lambda: _stable_argsort(live_scores)], args.rounds)
    check(torch.equal(r_old, r_new), "the old and new reads answered differently")
    rows.append(f"| order {live_scores.numel():,} edits (keep_plan): argsort(stable) / _stable_argsort (int32 keys) | "
                f"{live_scores.numel():,} | {t_old * 1e3:.1f} | {t_new * 1e3:.1f} | {t_old / t_new:.1f}x | yes |")
    (t_old, t_new), (r_old, r_new) = best([lambda: int(alive.sum()), lambda: int(torch.count_nonzero(alive))],
                                          args.rounds)
    check(r_old == r_new, "the old and new reads answered differently")
    rows.append(f"| count the live of one bool mask: sum() / count_nonzero | {n:,} | {t_old * 1e3:.1f} | "
                f"{t_new * 1e3:.1f} | {t_old / t_new:.1f}x | yes |")
    m = args.kth_size
    desc = torch.linspace(1.0, 0.0, m)
    for order, x in (("descending", desc), ("shuffled", desc[torch.randperm(m, generator=torch.Generator().manual_seed(0))])):
        (t_old, t_new), (r_old, r_new) = best([lambda: torch.kthvalue(x, m // 8).values,
                                               lambda: _kth_smallest(x, m // 8)], args.rounds)
        check(torch.equal(r_old, r_new), "the old and new reads answered differently")
        rows.append(f"| k-th smallest (k = n/8), {order}: kthvalue / _kth_smallest (topk) | {m:,} | {t_old * 1e3:.1f} | "
                    f"{t_new * 1e3:.1f} | {t_old / t_new:.1f}x | yes |")
    hdr = ["| read | entries | old (ms) | new (ms) | old / new | same answers |", "|---|---:|---:|---:|---:|---|"]
    text = (f"# Reads of a controller update over every synapse: torchvision resnet50's weights, half live, "
            f"{torch.get_num_threads()} thread(s), best of {args.rounds} interleaved rounds\n\n" + "\n".join(hdr + rows) +
            "\n\nOld: the eligible scores gathered before choosing (as the library did before stop 64; the choice after "
            "the gather is today's), the fused inf norm "
            "for finiteness (stop 63), any()/all() of each mask, torch.kthvalue for a cut's k-th value (before stop "
            "65), a stable float argsort to order a plan's edits and a bool sum to count (before stop 70). New: what the "
            "library runs now (lowest/highest, finite_flags, any_set/all_set, _stable_argsort, count_nonzero, "
            "_kth_smallest). "
            "Each pair's answers checked equal (ordered: the same indices in the same order; unordered: the same "
            "set).\n\n"
            f"Machine: {machine()}.\n\n"
            f"Reproduce: `{command('update_reads.py', ROOT, threads=True, placed=('--out',))}`\n")
    print(text)
    write_text(args.out, text)


if __name__ == "__main__":
    main()
