"""Gradual pruning from scratch with the ``threshold`` policy: its even pace against its cubic pace.

    python recipes/benchmarks/threshold_pace.py                      # 4 settings x 3 seeds x 2 paces
    python recipes/benchmarks/threshold_pace.py --settings "lenet300/mnist 5%" --seeds 0,1

``threshold`` prunes (and restores) by measured cost and gain, and its net removal is paced to the
target density by ``end_step``: ``pace="even"`` spreads the excess evenly over the updates left (the
same count at every update, so a growing share of what is live), ``pace="cubic"`` follows Zhu &
Gupta's schedule from the first update's live count (most early, little at the end). This benchmark
trains each setting from scratch once per pace and seed, every run a ``recipes/adaptive.py`` job that
differs only in ``--controller_kw pace=...``; the settings are the shipped MNIST config
(``recipes/configs/mnist_lenet300_utility.yaml``: batch 100, SGD 0.1 cosine, an update every 100
steps, edits until 75% of the run, ERK budget, curvature estimator) with ``--policy threshold`` and
fewer epochs, on lenet300 and lenet5, and the recipe's own default job (an MLP on scikit-learn's
digits). The comparison is read on the held-out part of TRAIN (the recipe's stratified 10%); the
test split is read only for each run's final report. Pretrained networks pruned while they fine-tune
are measured by ``gradual_pruning.py``. Writes recipes/benchmarks/results/threshold_pace.md and the
figure docs/figures/threshold_pace.png (held-out accuracy per seed, both paces, each setting).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from adaptive.cli import path_type  # noqa: E402
from adaptive.metrics import fmt_accuracy  # noqa: E402

# the shared helpers beside this file, by their path from ROOT (a namespace package), so a process that
# imports this file need not put this folder on sys.path
from recipes.benchmarks._paired_runs import (  # noqa: E402
    add_recipe_run_options, figure_path, mean_sd as _mean_sd, name_list, paired_plot, recipe_run, recipe_run_options,
    rel as _rel, table_path, write_table)
from recipes.benchmarks._reproduce import shown_args  # noqa: E402

PACES = ("even", "cubic")
_MNIST = ["--config", str(ROOT / "recipes" / "configs" / "mnist_lenet300_utility.yaml"), "--policy", "threshold"]
SETTINGS = {  # name: the recipe options (before --seed and the pace), and the epochs unless --epochs says
    "lenet300/mnist 5%": ([*_MNIST, "--density", "0.05"], 3),
    "lenet300/mnist 2%": ([*_MNIST, "--density", "0.02"], 3),
    "lenet5/mnist 5%": ([*_MNIST, "--model", "lenet5", "--density", "0.05"], 3),
    "mlp/digits 20%": (["--policy", "threshold"], 20),  # the recipe's default job (20% density, ERK, curvature, 20 epochs)
}
NEEDS_DATA = {"lenet300/mnist 5%", "lenet300/mnist 2%", "lenet5/mnist 5%"}


def run_one(setting: str, pace: str, seed: int, args, out: Path) -> dict:
    """One recipe run; its summary.json plus the wall time it took."""
    options, epochs = SETTINGS[setting]
    opts = [*options, "--seed", str(seed), "--controller_kw", f"pace={pace}", "--threads", str(args.threads)]
    opts += ["--max_steps", str(args.max_steps)] if args.max_steps else ["--epochs", str(args.epochs or epochs)]
    if setting in NEEDS_DATA:
        opts += ["--data-dir", str(args.data)]
    if args.subset:
        opts += ["--subset", str(args.subset)]
    return recipe_run(opts, out, f"{setting}, pace {pace}, seed {seed}")


def _folder(runs: Path, setting: str, pace: str, seed: int) -> Path:
    safe = re.sub(r"[^\w.-]+", "_", setting).strip("_")
    return runs / f"{safe}_{pace}_seed{seed}"


def plot(results, seeds, path: Path) -> Path:
    """Held-out accuracy of every run: one panel per setting, a line per seed joining its two paces
    (the same split, data order and initial weights), and each pace's mean."""
    return paired_plot(results, PACES, seeds, path, [f"pace={p}" for p in PACES],
                       f"threshold policy, gradual pruning from scratch, seeds {', '.join(map(str, seeds))}: "
                       "a line joins a seed's two runs")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)  # (the Reproduce line)
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of: {', '.join(SETTINGS).replace('%', '%%')}")
    add_recipe_run_options(ap, "threshold_pace", "0,1,2", None, "epochs of every run (the schedules span them; default: "
                                                        "3 on MNIST, 20 on digits)")
    ap.add_argument("--figure", type=path_type(), default=None, help="the figure (default: docs/figures/threshold_pace.png, or beside "
                                                   "--output)")
    ap.add_argument("--no-progress", action="store_true", help="no per-run lines")
    args = ap.parse_args(argv)
    settings = name_list(args.settings, SETTINGS, "--settings", ap, sep=",")
    seeds = recipe_run_options(args, ap)
    if any(s in NEEDS_DATA for s in settings) and not (args.data / "mnist" / "mnist.npz").is_file():
        ap.error(f"the MNIST settings need {args.data / 'mnist' / 'mnist.npz'} (give --data-dir)")
    import tempfile

    runs = Path(args.runs) if args.runs else Path(tempfile.mkdtemp(prefix="threshold_pace_"))
    start, load0 = time.time(), os.getloadavg()[0]
    results = {s: {p: {} for p in PACES} for s in settings}
    for setting in settings:
        for seed in seeds:
            for pace in PACES:
                r = run_one(setting, pace, seed, args, _folder(runs, setting, pace, seed))
                results[setting][pace][seed] = r
                if not args.no_progress:
                    print(f"[{(time.time() - start) / 60:5.1f} min] {setting}, pace={pace}, seed {seed}: held-out "
                          f"{fmt_accuracy(r['holdout_accuracy'])}%, test {fmt_accuracy(r['test_accuracy'])}%, density "
                          f"{r['density']:.4f}", flush=True)
    budget = (f"{args.max_steps} steps" if args.max_steps else f"{args.epochs} epoch(s)" if args.epochs else
              "3 epochs on MNIST, 20 on digits")
    lines = [f"# threshold policy: even against cubic pace, gradual pruning from scratch ({budget} per run)", "",
             "| setting | pace | held-out acc % (mean ± sd) | test acc % (mean ± sd) | held-out per seed | final density | "
             "test examples | wall min per run |", "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    diffs = []
    for setting in settings:
        for pace in PACES:
            rs = [results[setting][pace][s] for s in seeds]
            per_seed = ", ".join(f"{fmt_accuracy(r['holdout_accuracy'])}" for r in rs)
            lines.append(f"| {setting} | {pace} | {_mean_sd([r['holdout_accuracy'] for r in rs])} | "
                         f"{_mean_sd([r['test_accuracy'] for r in rs])} | "
                         f"{per_seed} | "
                         f"{statistics.mean(r['density'] for r in rs):.4f} | "
                         f"{rs[0]['test_examples']:,} | "
                         f"{statistics.mean(r['wall_min'] for r in rs):.1f} |")
        d = [100 * (results[setting]["cubic"][s]["holdout_accuracy"] - results[setting]["even"][s]["holdout_accuracy"])
             for s in seeds]
        diffs.append((setting, d))
    lines += ["", "Cubic minus even, held-out accuracy points, per seed (the same seed: the same split, data order "
                  "and initial weights):", ""]
    lines += [f"- {setting}: {', '.join(f'{x:+.2f}' for x in d)} (mean {statistics.mean(d):+.2f}; cubic ahead "
              f"on {sum(x > 0 for x in d)} of {len(d)})" for setting, d in diffs]
    lines += ["", "Every run: `recipes/adaptive.py` in train mode, `--policy threshold --controller_kw pace=PACE`, "
                  f"{budget}{', a ' + str(args.subset) + '-example subset of TRAIN' if args.subset else ''}; MNIST "
                  "settings: the options of recipes/configs/mnist_lenet300_utility.yaml (batch 100, SGD lr 0.1 "
                  "cosine, weight decay 5e-4, an update every 100 steps, edits until 75% of the run, ERK budget, "
                  "curvature estimator) with the density and model named; mlp/digits: the recipe's defaults. "
                  "Held-out: the final network on the recipe's stratified 10% of TRAIN (seeded), the numbers the "
                  "comparison is read on. Test: the setting's TEST split, read only for this table.",
              "", f"Figure: {_rel(figure_path(args, 'threshold_pace'))}.", "",
              f"Whole benchmark: {(time.time() - start) / 60:.1f} min wall on {os.cpu_count()} cores; 1-minute load "
              f"average {load0:.1f} at the start and {os.getloadavg()[0]:.1f} at the end.", "",
              f"Reproduce: `python recipes/benchmarks/threshold_pace.py{shown_args(argv, ROOT, dropped=('--runs', '--data-dir'))}`"]
    out = table_path(args, "threshold_pace")
    plot(results, seeds, figure_path(args, "threshold_pace"))
    write_table(out, lines)
    return results


if __name__ == "__main__":
    main()
