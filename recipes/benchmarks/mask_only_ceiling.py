"""What the mask-only benchmark's data can buy at most: the pretrained weights themselves fine-tuned.

    python recipes/benchmarks/mask_only_ceiling.py                 # resnet20
    python recipes/benchmarks/mask_only_ceiling.py --model resnet32

Masks can only zero weights. Fine-tuning every parameter of the same pretrained network on the same
train part (the one ``mask_only.py`` uses: cifar10-jpeg TRAIN minus a stratified held-out 10%, seed 0),
with the same batch size and normalisation statistics frozen (evaluation mode, as in mask-only), is
an unconstrained version of the same adaptation: a reference for how much any mask method could
lead another. SGD (momentum 0.9, cosine to 0) for each number of passes (1: one stage of the mask
benchmark; 3: what its staged schedule has spent by the 50% snapshot) and each step in ``--lrs``, every run
on the same batches in the same order; the step is chosen on the held-out part of TRAIN, and the test split is read only after every run,
for the dense row and the chosen runs. Writes recipes/benchmarks/results/mask_only_ceiling[_MODEL].md.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from adaptive.cli import data_dir_type  # noqa: E402
from adaptive.metrics import fmt_accuracy  # noqa: E402
from adaptive.atomic import write_text  # noqa: E402
from recipes.benchmarks._reproduce import command, machine  # noqa: E402
from recipes.benchmarks._checks import check  # noqa: E402
from adaptive.data import get_dataloaders  # noqa: E402
from adaptive.data.cycle import LoaderCycle  # noqa: E402
from adaptive.mask_only import evaluate  # noqa: E402
from adaptive.models import build_model  # noqa: E402
from adaptive.paths import resolve_data_dir  # noqa: E402

# the same networks and run options as mask_only.py beside it, by its path from ROOT (see threshold_pace.py)
from recipes.benchmarks.mask_only import WEIGHTS, add_run_options  # noqa: E402


def _floats(ap, name, text):
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        ap.error(f"--{name} must be comma-separated numbers, got {text!r}")
    if not vals or any(not v > 0 for v in vals):
        ap.error(f"--{name} must be positive numbers, got {text!r}")
    return vals


def fine_tune(model, loader, passes, lr, progress):
    """SGD on every parameter, momentum 0.9, cosine to 0, ``passes`` passes; BatchNorm kept in eval mode."""
    from tqdm.auto import tqdm

    steps = max(1, math.ceil(passes * len(loader) - 1e-9))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.eval()
    it = LoaderCycle(loader)
    for _ in tqdm(range(steps), desc=f"fine-tune {passes:g} pass(es), lr {lr:g}", disable=not progress, mininterval=2.0):
        x, y = next(it)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
    return model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet20", choices=sorted(WEIGHTS))
    ap.add_argument("--data-dir", type=data_dir_type, default=None)
    ap.add_argument("--passes", default="1,3", help="comma-separated numbers of passes over the train part")
    ap.add_argument("--lrs", default="0.003,0.01,0.03",
                    help="comma-separated SGD steps; the held-out part chooses one per passes")
    ap.add_argument("--batch-size", type=int, default=128)
    add_run_options(ap)
    args = ap.parse_args(argv)
    passes, lrs = _floats(ap, "passes", args.passes), _floats(ap, "lrs", args.lrs)
    if args.batch_size < 1 or args.threads < 1:
        ap.error("--batch-size and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    data_dir = resolve_data_dir(args.data_dir)
    dl = get_dataloaders("cifar10", batch_size=args.batch_size, eval_batch_size=500, data_dir=args.data_dir,
                         holdout=0.1, seed=args.seed, subset=args.subset,
                         option_names={"subset": "--subset", "holdout": None})  # (no option sets the holdout)
    t_start = time.time()
    runs = []  # (passes, lr, state_dict, held-out acc, cpu min)
    # every run reads the same batches in the same order (as mask_only.py's rows do): each fresh pass over the loader
    # drew the next shuffle, so the steps compared differed in their data order too
    order0 = dl.train.generator.get_state()
    for p in passes:
        for lr in lrs:
            torch.manual_seed(args.seed)
            dl.train.generator.set_state(order0)
            model = build_model(args.model, weights=str(data_dir / WEIGHTS[args.model]))
            c0 = time.process_time()
            fine_tune(model, dl.train, p, lr, not args.no_progress)
            cpu = (time.process_time() - c0) / 60
            h = evaluate(model, dl.holdout)[1]
            runs.append((p, lr, {k: v.clone() for k, v in model.state_dict().items()}, h, cpu))
            print(f"passes {p:g}, lr {lr:g}: held-out {fmt_accuracy(h)}% ({cpu:.1f} CPU min)", flush=True)
    # ---- final report: the test split is read from here on only, for the held-out's choices
    check(not dl.datasets.test.materialized, "the test split was read before the final report")
    model = build_model(args.model, weights=str(data_dir / WEIGHTS[args.model])).eval()
    _, dense_acc, _ = evaluate(model, dl.test)
    rows = [f"| dense (pretrained, unchanged) | - | - | {fmt_accuracy(evaluate(model, dl.holdout)[1])} | {fmt_accuracy(dense_acc)} | - |"]
    for p in passes:
        cands = [r for r in runs if r[0] == p]
        best = max(cands, key=lambda r: r[3])
        for q, lr, sd, h, cpu in cands:
            test = "not read"
            if lr == best[1]:
                model.load_state_dict(sd)
                test = f"**{fmt_accuracy(evaluate(model, dl.test)[1])}** (chosen)"
            rows.append(f"| every weight fine-tuned | {q:g} | {lr:g} | {fmt_accuracy(h)} | {test} | {cpu:.1f} |")
    wall = (time.time() - t_start) / 60
    cmd = command("mask_only_ceiling.py", ROOT, argv, dropped=("--data-dir",))
    text = (
        f"# What the mask-only benchmark's data can buy: {args.model} fine-tuned\n\n"
        "| run | passes | SGD step | held-out acc % | test acc % | CPU min |\n|---|---:|---:|---:|---:|---:|\n"
        + "\n".join(rows) + "\n\n"
        f"{args.model} on cifar10-jpeg; train part {len(dl.train.dataset)} images{' (subset)' if args.subset else ''}, "
        f"held-out {len(dl.holdout.dataset)} images drawn from TRAIN (stratified, seed {args.seed}; the same parts as "
        f"`mask_only.py`), batch {args.batch_size}, BatchNorm statistics frozen. The held-out part chose the step for "
        "each number of passes; the test split was read only after all runs, for the dense row and the chosen runs. The "
        "pretrained networks saw the lossless train images, so held-out accuracy is not unseen-data accuracy. "
        f"{wall:.1f} min wall. Machine: {machine()}.\n\nReproduce: `{cmd}`\n"
    )
    print(text)
    dest = Path(args.output) if args.output else ROOT / "recipes/benchmarks/results" / (
        "mask_only_ceiling.md" if args.model == "resnet20" else f"mask_only_ceiling_{args.model}.md")
    write_text(dest, text)


if __name__ == "__main__":
    main()
