"""Operations whose cost grows with the number of synapses, measured against a training step.

For the selections and diagnostics that touch every synapse once per call, times one training step
(forward, backward, SGD-momentum step) of the same model and, side by side in one process, the
operation as it is now and as it was before it was made linear (the old code, kept here as a
reference): each as a ratio to the training step, and old / new. Every pair computes the same result,
checked here bit for bit.

- full order: ``policies.base._smallest_k`` asked for every entry (a crawl jump of mask-only
  optimisation, a policy ordering every live synapse), over one score per synapse; before: a stable
  float ``argsort``, now: the int32 keys (``_stable_argsort``);
- removal order: ``diagnostics.global_order`` of the knowledge-distribution diagnostic (magnitude
  scores); before: a stable float ``sort``;
- curve masks: the flat keep masks of every point of a knowledge curve (its default counts for
  ``--points``); before: ``order[:k]`` removed from scratch at each point, now: only the weights
  since the last point (the library's ``diagnostics.knowledge._point_masks``, which the diagnostic
  runs); every point's mask is checked equal once, outside the timings.

Times are medians of ``--rounds`` interleaved rounds (step, then each pair, old first in even rounds
and new first in odd ones).

    OMP_NUM_THREADS=1 python recipes/benchmarks/scale.py [--model resnet50] [--batch 2] [--size 64]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import adaptive  # noqa: E402
from adaptive.cli import path_type  # noqa: E402
from adaptive.atomic import write_text  # noqa: E402
from adaptive.diagnostics import global_order  # noqa: E402
from adaptive.diagnostics.knowledge import _point_masks, default_counts  # noqa: E402
from adaptive.policies.base import _smallest_k  # noqa: E402
from recipes.benchmarks._reproduce import command, machine  # noqa: E402

TINY = "tiny"  # a small conv net, for a quick check of the script


def build(name: str) -> nn.Module:
    """A torchvision model by name (random weights, no download), or the tiny conv net."""
    if name == TINY:
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))
    import torchvision

    return getattr(torchvision.models, name)()


def old_full_order(x: torch.Tensor) -> torch.Tensor:
    """The full order as it was computed before: a stable sort of the floats."""
    return torch.argsort(torch.nan_to_num(x, nan=float("inf")), stable=True)


def old_global_order(scores) -> torch.Tensor:
    """diagnostics.global_order before it sorted int32 keys."""
    flat = torch.nan_to_num(torch.cat([s.reshape(-1).float() for s in scores.values()]), nan=float("inf"))
    return torch.sort(flat, stable=True).indices


def old_point_masks(live: torch.Tensor, order: torch.Tensor, counts):
    """The knowledge curve's flat masks before, point by point: ``order[:k]`` removed from scratch."""
    for k in counts:
        flat = live.clone()
        flat[order[:k]] = False
        yield k, flat


def last(points) -> torch.Tensor:
    """The last point's mask of a point-mask generator, run through every point."""
    for _, flat in points:
        pass
    return flat


def same_points(live: torch.Tensor, order: torch.Tensor, counts) -> None:
    """Check, point by point, that knowledge_distribution's masks (``_point_masks``) are the old ones."""
    for (k, old), (k2, new) in zip(old_point_masks(live, order, counts), _point_masks(live, order, counts), strict=True):
        if k != k2 or not torch.equal(old, new):
            raise AssertionError(f"curve masks: the new mask at {k} removed differs from the old one")


def timed(fn):
    """(seconds, result) of one call."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def interleaved(step, pairs, rounds: int):
    """``rounds`` rounds of: the training step, then every pair of ``pairs`` (name: (old, new)), old
    first in even rounds and new first in odd ones, so that neither side always runs on the caches
    and freed memory the other left; each pair's results checked equal. The step's seconds, and per
    pair (old seconds, new seconds), in round order."""
    step_t, times = [], {k: ([], []) for k in pairs}
    for r in range(rounds):
        step_t.append(timed(step)[0])
        for k, (old, new) in pairs.items():
            if r % 2 == 0:
                t_old, r_old = timed(old)
                t_new, r_new = timed(new)
            else:
                t_new, r_new = timed(new)
                t_old, r_old = timed(old)
            if not torch.equal(r_old, r_new):
                raise AssertionError(f"{k}: the new result differs from the old one")
            times[k][0].append(t_old)
            times[k][1].append(t_new)
    return step_t, times


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50", help=f"a torchvision model name or {TINY!r}")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=64, help="input height and width (vit_b_16 needs 224)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--points", type=int, default=40, help="the knowledge curve's points (its default counts)")
    ap.add_argument("--out", type=path_type(), default=os.path.join(os.path.dirname(__file__), "results", "scale.md"))
    args = ap.parse_args(argv)
    for k in ("batch", "size", "rounds", "points"):
        if getattr(args, k) < 1:
            ap.error(f"--{k} must be a positive integer, got {getattr(args, k)}")
    return args


def main(argv=None):
    """Measure, print the table and write it to ``--out``."""
    args = parse(argv)
    torch.manual_seed(0)
    model = build(args.model)
    conn = adaptive.Connectome(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    conn.attach(opt)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))

    def step():
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=False)

    step()  # warm-up
    scores = {n: p.detach().abs() for n, p in conn.params.items()}
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    n = flat.numel()
    live = torch.ones(n, dtype=torch.bool)
    counts = sorted(set([0] + default_counts(n, args.points)))
    order = global_order(scores)
    pairs = {
        "full order (crawl jump, every live synapse)": (lambda: old_full_order(flat), lambda: _smallest_k(flat, n)),
        "removal order (knowledge diagnostic)": (lambda: old_global_order(scores), lambda: global_order(scores)),
        f"curve masks ({len(counts)} points)": (lambda: last(old_point_masks(live, order, counts)),
                                                lambda: last(_point_masks(live, order, counts))),
    }
    same_points(live, order, counts)  # every point, once, outside the timings (the rounds compare the last)
    step_t, times = interleaved(step, pairs, args.rounds)
    s = statistics.median(step_t)
    lines = ["| operation | before (s) | now (s) | before / step | now / step | before / now |", "|---|---:|---:|---:|---:|---:|"]
    for k, (o, w) in times.items():
        o, w = statistics.median(o), statistics.median(w)
        lines.append(f"| {k} | {o:.3f} | {w:.3f} | {o / s:.2f} | {w / s:.2f} | {o / w:.1f} |")
    text = (
        f"# Operations over every synapse: {args.model}, {n:,} synapses, against a training step\n\n"
        f"Training step (forward, backward, SGD momentum, connectome attached), batch {args.batch} x "
        f"{args.size}x{args.size}: {s:.3f} s, median of {args.rounds} interleaved rounds.\n\n" + "\n".join(lines) +
        "\n\nbefore: the code as it was (kept in the script as a reference), now: the library's; each pair's results are "
        "checked equal bit for bit. Ratios taken in one process; other jobs on a shared machine slow every timing.\n\n"
        f"Machine: {machine()}.\n\n"
        f"Reproduce: `{command('scale.py', ROOT, argv, threads=True, placed=('--out',))}`\n"
    )
    print(text)
    write_text(args.out, text)
    return times


if __name__ == "__main__":
    main()
