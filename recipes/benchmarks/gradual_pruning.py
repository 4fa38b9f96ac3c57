"""Pruning a pretrained network while it fine-tunes: which removal order keeps the most accuracy.

    python recipes/benchmarks/gradual_pruning.py                       # resnet20, 90% removed, 3 epochs
    python recipes/benchmarks/gradual_pruning.py --density 0.05 --epochs 5

Every row is one run of ``recipes/adaptive.py`` in train mode on the same pretrained CIFAR ResNet
(../shared/data/resnet-cifar10), the same cifar10-jpeg data (a stratified 10% of TRAIN held out, seed
0), the same fine-tuning (SGD, Nesterov momentum 0.9, weight decay 5e-4, ``--lr`` cosine to 0, batch
128, crop and flip) and the same number of epochs. Rows differ only in how the connectome is pruned
to ``--density`` of its conv and linear weights (all layers ranked together: the ``global`` budget):

- dense: no pruning, the fine-tuning alone (what pruning costs is measured against it);
- one-shot magnitude: the global magnitude mask at step 0 (``--policy magnitude``), which the run
  checks to be the one ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured`` builds,
  then fine-tuning of what remains: the outside reference, prune then fine-tune;
- gmp: Zhu & Gupta's gradual magnitude pruning (cubic schedule until 75% of the run; the paper prunes
  every layer to the same sparsity, here all layers are ranked together as in the other rows);
- gmp/curvature: the same schedule, removal order by the curvature estimator's cost (OBD's F w^2/2);
- threshold/curvature: prune and restore boundaries on measured cost and gain, paced to the density
  by 75% of the run, evenly (``pace=even``, the policy's default when these tables were measured)
  or along gmp's cubic schedule (``pace=cubic``, its default since; threshold_pace.py);
- utility/curvature: the one-shot magnitude mask, then prune/regrow swaps by measured utility (an
  edit fraction of 0.3 decaying to 0 at 75% of the run; rows with 0.1 and 0.03, added later, are
  not in the default list: ``--rows``).

No setting was chosen on these results: the rows use the recipe's defaults (an update every 25
steps, edits until 75% of the run) and a fine-tuning rate of a tenth of the networks' training rate.
The test split is read only for each run's final report. Writes
recipes/benchmarks/results/gradual_pruning[_MODEL][_seedN].md, a figure (docs/figures/gradual_pruning_MODEL[_seedN].png:
density, train loss and held-out accuracy against the step, one line per row), and keeps each run's
folder under ``--runs``.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from adaptive.cli import data_dir_type, path_type  # noqa: E402
from adaptive.metrics import fmt_accuracy  # noqa: E402
from adaptive.atomic import write_text  # noqa: E402
from adaptive import jsonio  # noqa: E402
from adaptive.paths import resolve_data_dir  # noqa: E402

# the shared helpers beside this file, by their path from ROOT (a namespace package), so a process that
# imports this file need not put this folder on sys.path
from recipes.benchmarks._reproduce import shown_args  # noqa: E402

WEIGHTS = {"resnet20": "resnet-cifar10/resnet20-12fca82f.th", "resnet32": "resnet-cifar10/resnet32-d509ac18.th"}
ROWS = {  # name: the recipe options that make the row (on top of the shared ones)
    "dense": ["--policy", "magnitude", "--density", "1.0"],
    "one-shot magnitude": ["--policy", "magnitude"],
    "gmp": ["--policy", "gmp"],
    "gmp/curvature": ["--policy", "gmp", "--estimator", "curvature"],
    # (the even pace was threshold's default when the tables were measured; the row keeps it)
    "threshold/curvature": ["--policy", "threshold", "--estimator", "curvature", "--controller_kw", "pace=even"],
    "threshold/curvature (cubic pace)": ["--policy", "threshold", "--estimator", "curvature", "--controller_kw",
                                        "pace=cubic"],
    "utility/curvature": ["--policy", "utility", "--estimator", "curvature", "--controller_kw", "init=magnitude"],
    # (added after the row above swapped too much: a smaller edit fraction, chosen on held-out accuracy)
    "utility/curvature (edit fraction 0.1)": ["--policy", "utility", "--estimator", "curvature", "--controller_kw",
                                              "init=magnitude", "--edit_fraction", "0.1"],
    "utility/curvature (edit fraction 0.03)": ["--policy", "utility", "--estimator", "curvature", "--controller_kw",
                                               "init=magnitude", "--edit_fraction", "0.03"],
}

# the rows of results/gradual_pruning.md and _seed1.md, which their Reproduce line gives; the cubic-pace and
# edit-fraction rows ran apart (--rows NAME ...; results/gradual_pruning_cubic_seed*.md), the cubic one having been
# taken into the default rows by a filter that named the edit-fraction rows alone (the stated command gave 7 rows)
DEFAULT_ROWS = [r for r in ROWS if "edit fraction" not in r and "cubic pace" not in r]


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_row(name: str, common, out: Path, quiet: bool) -> dict:
    """One recipe run; its summary.json plus the CPU and wall time it took."""
    cmd = [sys.executable, str(ROOT / "recipes" / "adaptive.py"), *common, *ROWS[name], "--output_dir", str(out)]
    t0, c0 = time.time(), _child_cpu()
    done = subprocess.run(cmd, capture_output=quiet, text=True)
    if done.returncode != 0:
        raise SystemExit(f"row {name!r} failed (exit {done.returncode}): {' '.join(cmd)}\n{(done.stderr or '')[-3000:]}")
    summary = jsonio.loads((out / "summary.json").read_text())
    summary.update(cpu_min=(_child_cpu() - c0) / 60, wall_min=(time.time() - t0) / 60)
    return summary


def torch_mask_difference(run: Path, weights: Path, model_name: str, density: float) -> int:
    """Entries where the run's connectome differs from torch.nn.utils.prune.global_unstructured's L1
    mask of the same pretrained weights at the same amount (one-shot magnitude never edits later)."""
    import torch.nn.utils.prune as prune

    from adaptive import Connectome
    from adaptive.models import build_model

    masks = Connectome.load(run / "connectome.safetensors", build_model(model_name, weights=str(weights))).masks
    model = build_model(model_name, weights=str(weights))  # (Connectome.load zeroes its model's pruned weights)
    mods = dict(model.named_modules())
    params = [(mods[n.rsplit(".", 1)[0]], "weight") for n in masks]
    total = sum(m.weight.numel() for m, _ in params)
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured,
                              amount=total - round(density * total))
    return sum(int((m.weight_mask.bool() != masks[n].reshape(m.weight_mask.shape).bool()).sum())
               for (m, _), n in zip(params, masks))


def plot_rows(runs: Path, names, path: Path, title: str) -> Path:
    """Density, train loss and held-out accuracy against the step, one line per row, from each
    run's metrics.csv: when each removal order prunes, what it costs the training loss, and what
    the network keeps on held-out data."""
    from adaptive.plots import _pyplot, _save, closed_on_error, density_before, legend_below, step_points
    from adaptive.training import read_metrics_csv

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    with closed_on_error(fig):
        for i, name in enumerate(names):
            rows = read_metrics_csv(run_folder(runs, name) / "metrics.csv")
            train = [r for r in rows if r["split"] == "train"]
            held = [r for r in rows if r["split"] == "holdout"]
            # (rows that share a density curve, gmp and gmp/curvature, one-shot and utility, differ in dash)
            ls = ("-", "--", "-", "--", ":", "-.")[i % 6]
            # broken lines over solid ones: one-shot magnitude's dashed density (0.1 from step 0) lay under
            # utility/curvature's solid one, drawn later on the same points, and did not show at all
            style = dict(label=name, ls=ls, lw=1.6, zorder=2 if ls == "-" else 3)
            events = [jsonio.loads(ln) for ln in (run_folder(runs, name) / "events.jsonl").read_text().splitlines() if ln]
            events = [e for e in events if "density" in e]
            last = max([r["step"] for r in rows], default=0)
            if events:  # each event's density holds until the next; before the first, the density it started from
                xs, ys = step_points([e["step"] for e in events], [e["density"] for e in events],
                                     density_before(events[0]), last)
            else:
                xs, ys = [0, last], [1.0, 1.0]  # no event: nothing pruned
            axes[0].plot(xs, ys, drawstyle="steps-post", **style)
            axes[1].plot([r["step"] for r in train], [r["loss"] for r in train], **style)
            axes[2].plot([r["step"] for r in held], [100 * r["accuracy"] for r in held], marker="o", ms=4, **style)
        for ax, label in zip(axes, ("density (live / all conv and linear weights)", "train loss (mean of 20 steps)",
                                    "held-out accuracy % (end of each epoch)")):
            ax.set_xlabel("training step")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0].set_ylim(0, 1.05)
        axes[1].set_yscale("log")
        legend_below(axes[1], ncol=3)
        fig.suptitle(title)
        return _save(fig, plt, path)


def run_folder(runs: Path, name: str) -> Path:
    return runs / re.sub(r"[^\w.-]+", "_", name).strip("_")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet20", choices=sorted(WEIGHTS))
    ap.add_argument("--data-dir", type=data_dir_type, default=None, help="data folder (default: $ADAPTIVE_DATA or ../shared/data)")
    ap.add_argument("--density", type=float, default=0.1, help="fraction of conv and linear weights kept")
    ap.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of every row")
    ap.add_argument("--lr", type=float, default=0.01, help="peak SGD rate of the fine-tuning (cosine to 0)")
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma-separated rows, of: {', '.join(ROWS)} "
                                                                  f"(default: {', '.join(DEFAULT_ROWS)})")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split, data order and controller")
    ap.add_argument("--subset", type=int, default=None, help="train images (quick runs; the table says so)")
    ap.add_argument("--test-subset", type=int, default=None, help="test images (quick runs; the table says so)")
    ap.add_argument("--runs", type=path_type(), default=None, help="folder for the runs' own folders (default: a temporary one)")
    ap.add_argument("--output", type=path_type(), default=None, help="the table's file (default: recipes/benchmarks/results/...)")
    ap.add_argument("--figure", type=path_type(), default=None, help="the figure's file (default: docs/figures/gradual_pruning_MODEL.png, "
                                                   "or beside --output)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        ap.error(f"--rows: unknown {unknown or 'none given'}; choose from {', '.join(ROWS)}")
    if len(set(rows)) < len(rows):
        ap.error(f"--rows names a row more than once ({args.rows}): each row runs once")
    if not 0 <= args.seed <= 2**32 - 1:
        ap.error(f"--seed must be in [0, 2**32 - 1], got {args.seed}")
    if not 0.0 < args.density < 1.0:
        ap.error(f"--density must be in (0, 1), got {args.density}")
    if args.epochs < 1 or not args.lr > 0 or args.lr == float("inf"):
        ap.error(f"--epochs must be >= 1 and --lr a finite number > 0, got {args.epochs} and {args.lr}")
    for name in ("subset", "test_subset"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1 (or left out: all), got {getattr(args, name)}")
    data = resolve_data_dir(args.data_dir)
    weights = data / WEIGHTS[args.model]
    if not (data / "cifar10-jpeg").is_dir() or not weights.is_file():
        ap.error(f"needs {data / 'cifar10-jpeg'} and {weights} (give --data-dir)")
    import tempfile

    runs = Path(args.runs) if args.runs else Path(tempfile.mkdtemp(prefix="gradual_pruning_"))
    common = ["--model", args.model, "--weights", str(weights), "--dataset", "cifar10", "--data-dir", str(data),
              "--density", str(args.density), "--budget", "global", "--epochs", str(args.epochs), "--lr", str(args.lr),
              "--batch_size", "128", "--eval_batch_size", "500", "--augment", "--seed", str(args.seed),
              "--figures", "false", "--overwrite", "--progress", "false" if args.no_progress else "true"]
    if args.subset:
        common += ["--subset", str(args.subset)]
    if args.test_subset:
        common += ["--test-subset", str(args.test_subset)]
    start = time.time()
    load0 = os.getloadavg()[0]
    results = {}
    for name in rows:
        print(f"[{time.time() - start:6.0f}s] {name} ...", flush=True)
        # a row's options come after the shared ones: the dense row's --density 1.0 wins
        results[name] = run_row(name, common, run_folder(runs, name), args.no_progress)
        r = results[name]
        print(f"  test {fmt_accuracy(r['test_accuracy'])}%, held-out {fmt_accuracy(r['holdout_accuracy'])}%, density "
              f"{r['density']:.4f}, {r['wall_min']:.1f} min", flush=True)
    check = None
    if "one-shot magnitude" in results:
        check = torch_mask_difference(run_folder(runs, "one-shot magnitude"), weights, args.model, args.density)
    lines = [f"# Pruning pretrained {args.model} while fine-tuning: {100 * (1 - args.density):g}% of weights removed", "",
             "| row | live weights | density | test acc % | test loss | held-out acc % | CPU min | wall min |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['live']:,} | {r['density']:.4f} | {fmt_accuracy(r['test_accuracy'])} | "
                     f"{r['test_loss']:.4f} | {fmt_accuracy(r['holdout_accuracy'])} | {r['cpu_min']:.1f} | {r['wall_min']:.1f} |")
    any_r = next(iter(results.values()))
    lines += ["", f"{args.model} ({any_r['synapses']:,} conv and linear weights) from "
              f"{WEIGHTS[args.model]}, on cifar10-jpeg: {args.epochs} epoch(s) of fine-tuning per row over "
              f"{'a ' + str(args.subset) + '-image subset of ' if args.subset else ''}TRAIN minus a stratified 10% held "
              f"out (seed {args.seed}), SGD lr {args.lr:g} cosine to 0, Nesterov momentum 0.9, weight decay 5e-4, "
              "batch 128, crop and flip, BatchNorm in training mode; global budget; an update every 25 steps, edits "
              "until 75% of the run. Held-out accuracy: the final network on the held-out part of TRAIN (which the "
              "pretrained network saw, as lossless images). Test: "
              f"{any_r['test_examples']:,} cifar10-jpeg TEST images, read only for this table. CPU min: the run "
              "process's CPU time (all threads), data decoding and model building included."]
    if check is not None:
        lines += ["", f"The one-shot magnitude row's mask against torch.nn.utils.prune.global_unstructured "
                      f"(L1Unstructured, the same amount) on the same pretrained weights: {check} entries differ."]
    lines += ["", f"Whole benchmark: {(time.time() - start) / 60:.1f} min wall on {os.cpu_count()} cores; 1-minute load "
                  f"average {load0:.1f} at the start and {os.getloadavg()[0]:.1f} at the end.", "",
              f"Reproduce: `python recipes/benchmarks/gradual_pruning.py{shown_args(argv, ROOT, dropped=('--runs',))}`"]
    seed = f"_seed{args.seed}" if args.seed else ""
    out = Path(args.output) if args.output else (
        ROOT / "recipes" / "benchmarks" / "results" /
        f"gradual_pruning{'' if args.model == 'resnet20' else '_' + args.model}{seed}.md")
    figure = Path(args.figure) if args.figure else (out.with_suffix(".png") if args.output else
                                                     ROOT / "docs" / "figures" / f"gradual_pruning_{args.model}{seed}.png")
    plot_rows(runs, list(results), figure, f"pretrained {args.model} on cifar10-jpeg, pruned to density "
                                           f"{args.density:g} while fine-tuning {args.epochs} epoch(s), seed {args.seed}")
    lines[-1:-1] = [f"Figure: {figure.relative_to(ROOT) if figure.is_relative_to(ROOT) else figure} (density, train "
                    "loss and held-out accuracy against the step, one line per row).", ""]
    write_text(out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {out}")
    return results, check


if __name__ == "__main__":
    main()
