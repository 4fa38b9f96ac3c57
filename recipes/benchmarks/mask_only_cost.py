"""Per-batch cost of mask-only optimisation, against the bare forward and backward it rides on.

For each model, side by side in one process, on the same synthetic batches:
- bare: forward and backward with only the conv/linear weights requiring gradients (the least any
  learned-mask method does per batch);
- edge-popup (``adaptive.baselines.edge_popup``): the same plus a global top-k and an Adam step on
  the scores every batch;
- ours (``adaptive.optimize_connectome`` with its defaults: presence estimator, an update every
  batch): the same plus gradient statistics, the estimator's update and the crawl's edit.
Reported: median seconds per batch and the ratio to bare. Timing does not depend on the weights, so
the models are randomly initialised (no download); MobileNetV3-Large is the network of
recipes/configs/imagenet_mobilenetv3_maskonly.yaml, at its 224 px input.

    python recipes/benchmarks/mask_only_cost.py [--batches 12] [--rounds 3] [--mobilenet-batch 16]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import adaptive  # noqa: E402
from adaptive.cli import path_type  # noqa: E402
from adaptive.atomic import write_text  # noqa: E402
from adaptive.baselines.edge_popup import edge_popup  # noqa: E402
from adaptive.models import build_model  # noqa: E402
from recipes.benchmarks._reproduce import command, machine  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _bare(model: nn.Module, batches) -> list:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    prunable = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for w in prunable:
        w.requires_grad_(True)
    times = []
    for x, y in batches:
        t0 = time.perf_counter()
        for w in prunable:
            w.grad = None
        F.cross_entropy(model(x), y).backward()
        times.append(time.perf_counter() - t0)
    for w in prunable:
        w.grad = None
    return times


class _Timed:
    """The batches as a loader that notes the time each one is handed out: the gaps between
    consecutive batches are a method's whole cost per batch, measured the same way for every method."""

    def __init__(self, batches):
        self.batches, self.times = batches, []

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            self.times.append(time.perf_counter())
            yield b

    def per_batch(self) -> list:
        """Gaps between consecutive batches, the first left out (its step pays one-off setup: ours'
        jump to the target, edge-popup's first top-k)."""
        return [b - a for a, b in zip(self.times, self.times[1:])][1:]


def _restore(conn) -> None:
    conn.set_masks({n: torch.ones_like(m) for n, m in conn.masks.items()})  # the original weights return


def _ours(model: nn.Module, batches, target, ensemble: str = "synapse") -> tuple:
    timed = _Timed(batches)
    res = adaptive.optimize_connectome(model, timed, batches[:1], target=target, passes=1.0, progress=False,
                                       ensemble=ensemble)
    walls = [r["wall_seconds"] for r in res.history if r["kind"] == "update"]
    _restore(res.conn)
    return walls[0], timed.per_batch()


def _edge_popup(model: nn.Module, batches, target) -> list:
    timed = _Timed(batches)
    conn, _ = edge_popup(model, timed, batches[:1], targets=[target], passes=1.0, progress=False)
    _restore(conn)
    return timed.per_batch()


def bench(name: str, model: nn.Module, shape, classes: int, n: int, target, rounds: int, ensemble: str = "synapse") -> dict:
    """``rounds`` rounds of bare, ours and edge-popup on the same batches, the order rotating from
    round to round so that a change of machine load hits every method alike; each ratio is taken
    within a round, and the median over rounds is reported with its range."""
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(*shape, generator=g), torch.randint(0, classes, (shape[0],), generator=g)) for _ in range(n)]
    synapses = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    _bare(model, batches[:2])  # warm-up: the first passes at a new shape pay one-off kernel setup
    methods = {
        "bare": lambda: {"per_batch": statistics.median(_bare(model, batches)[1:])},
        "ours": lambda: dict(zip(("first", "per_batch"), _ours_median(model, batches, target, ensemble))),
        "ep": lambda: {"per_batch": statistics.median(_edge_popup(model, batches, target))},
    }
    order = list(methods)
    per_round = []
    for r in range(rounds):
        got = {m: methods[m]() for m in order[r % 3:] + order[: r % 3]}
        per_round.append(got)
    med = {m: statistics.median(x[m]["per_batch"] for x in per_round) for m in methods}
    ratios = {m: sorted(x[m]["per_batch"] / x["bare"]["per_batch"] for x in per_round) for m in ("ours", "ep")}
    return {"model": name, "ensemble": ensemble, "synapses": synapses, "batch": shape[0], "size": shape[-1], "bare": med["bare"],
            "ours": med["ours"], "ours_ratio": statistics.median(ratios["ours"]), "ours_range": ratios["ours"],
            "ep": med["ep"], "ep_ratio": statistics.median(ratios["ep"]), "ep_range": ratios["ep"],
            "first": statistics.median(x["ours"]["first"] for x in per_round)}


def _ours_median(model, batches, target, ensemble):
    first, per_batch = _ours(model, batches, target, ensemble)
    return first, statistics.median(per_batch)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=12, help="batches per method and model (default 12)")
    ap.add_argument("--mobilenet-batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the three methods, order rotating (default 3)")
    ap.add_argument("--output", type=path_type(), default=os.path.join(HERE, "results", "mask_only_cost.md"))
    args = ap.parse_args(argv)
    if args.batches < 3:
        raise SystemExit("mask_only_cost.py: error: --batches must be >= 3 (medians skip the first batch)")
    if args.rounds < 1:
        raise SystemExit("mask_only_cost.py: error: --rounds must be >= 1")
    torch.manual_seed(0)
    rows = [
        bench("resnet20 (CIFAR)", build_model("resnet20"), (128, 3, 32, 32), 10, args.batches, 0.5, args.rounds),
        bench("mobilenet_v3_large (ImageNet)", torchvision.models.mobilenet_v3_large(),
              (args.mobilenet_batch, 3, 224, 224), 1000, args.batches, 1_030_000, args.rounds),
        # small inputs (docs/data.md's image_size=32 for a small-image folder): the controller's share is larger
        # where the forward is cheap; and ensembles of several sizes (kernels of 9 or 25 synapses beside the
        # 1x1 convolutions' and the Linear layers' single ones)
        bench("mobilenet_v3_large, small inputs", torchvision.models.mobilenet_v3_large(),
              (args.mobilenet_batch, 3, 32, 32), 1000, args.batches, 1_030_000, args.rounds),
        bench("mobilenet_v3_large, small inputs", torchvision.models.mobilenet_v3_large(),
              (args.mobilenet_batch, 3, 32, 32), 1000, args.batches, 1_030_000, args.rounds, ensemble="kernel"),
    ]
    lines = ["| model | ensembles (ours) | synapses | batch | bare fwd+bwd (s/batch) | ours (s/batch) | ours / bare (range) | "
             "edge-popup (s/batch) | edge-popup / bare (range) | ours' first batch, update included (s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def rng(xs):
        return f"{xs[0]:.2f}-{xs[-1]:.2f}"
    for r in rows:
        lines.append(f"| {r['model']} | {r['ensemble']} | {r['synapses']:,} | {r['batch']} x {r['size']}px | {r['bare']:.3f} | "
                     f"{r['ours']:.3f} | {r['ours_ratio']:.2f} ({rng(r['ours_range'])}) | {r['ep']:.3f} | "
                     f"{r['ep_ratio']:.2f} ({rng(r['ep_range'])}) | {r['first']:.2f} |")
    text = (
        f"# Mask-only cost per batch ({torch.get_num_threads()} threads, {platform.machine()}, "
        f"{args.batches} batches per method, {args.rounds} rounds)\n\n" + "\n".join(lines) + "\n\n"
        "Each round runs bare, ours and edge-popup on the same batches, the order rotating from round to round; "
        "a ratio is taken within a round (so a change of machine load hits both of its terms), and the table "
        "gives the median over rounds with the range. Within a round, each method's cost per batch is the "
        "median over batches: bare, of forward and backward; ours and edge-popup, of the time between consecutive "
        "batches handed out by the loader, everything included (ours: forward, backward, statistics, estimator, "
        "crawl edit, event; edge-popup: top-k, forward, backward, Adam step on the scores). The first gap of each "
        "is left out: ours' first update jumps to the target (a full sort; its own column times that whole first batch, its forward and backward included, from the start of the optimisation), edge-popup's first "
        "step pays its setup. ResNet-20 removes 50%; MobileNetV3-Large removes 1.03 million synapses (the count of "
        "the founding MobileNetV3 result; the ImageNet config's first target is 1,000,000), at 224 px and at 32 px, per "
        "weight and (ours) in kernel ensembles, which removes whole kernels to within one of the count; edge-popup, per "
        "weight in every row, is the reference of the row's inputs. Synthetic inputs, random weights: the cost does not depend on them.\n\n"
        f"Machine: {machine()}.\n\n"
        f"Reproduce: `{command('mask_only_cost.py', ROOT, argv, threads=True)}`\n"
    )
    print(text)
    write_text(args.output, text)


if __name__ == "__main__":
    main()
