"""Zero removal costs ordered by position (the old order) against by magnitude (the default).

    python recipes/benchmarks/zero_cost_ties.py                      # 6 settings x 8 seeds x 2 orders
    python recipes/benchmarks/zero_cost_ties.py --settings "lenet300/mnist 5%, threshold" --seeds 0,1
    python recipes/benchmarks/zero_cost_ties.py --settings "lenet300/mnist 5%, threshold; lenet5/mnist 5%, threshold"

A gradient estimator (curvature, the default, OBD, Taylor, ...) gives every synapse that no
gradient reached during a window a removal cost of exactly 0: with ReLUs, all the inputs of a unit
that fired on none of the window's examples. The controller used to rank such equals by position,
so a policy that needs more of them than it has room for took the first units of the first layer,
whole; it now takes the smaller weights first (``Controller(zero_cost_order="magnitude")``,
:mod:`adaptive.utility.ties`). This benchmark trains each setting from scratch once per order and
seed, every run a ``recipes/adaptive.py`` job that differs only in ``--controller_kw
zero_cost_order=...``: the threshold policy with the recipe's generic defaults (batch 32, SGD lr 0.1;
the silent-units example of docs/training.md) on lenet300 and lenet5, the same with the shipped MNIST config
(batch 100), the utility policy with the generic defaults, and the recipe's default job
(an MLP on scikit-learn's digits, threshold policy). The comparison is read on the held-out part of
TRAIN (the recipe's stratified 10%); the test split is read only for each run's final report.
Writes recipes/benchmarks/results/zero_cost_ties.md and docs/figures/zero_cost_ties.png.
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

from adaptive.cli import data_dir_type, path_type  # noqa: E402
from adaptive.metrics import fmt_accuracy  # noqa: E402
from adaptive.paths import resolve_data_dir  # noqa: E402
from adaptive.utility.ties import ZERO_COST_ORDERS  # noqa: E402

# the shared helpers beside this file, by their path from ROOT (a namespace package), so a process that
# imports this file need not put this folder on sys.path
from recipes.benchmarks._paired_runs import (  # noqa: E402
    at_least_one, collapse_cells, figure_path, int_list as _int_list, name_list, paired_plot, recipe_run,
    rel as _rel, table_path, write_table)
from recipes.benchmarks._reproduce import shown_args  # noqa: E402
from recipes.benchmarks._checks import check  # noqa: E402

ORDERS = ("index", "magnitude")
check(set(ORDERS) == set(ZERO_COST_ORDERS), "ORDERS must name every zero_cost_order the controller knows")
COLLAPSED = 0.5  # a run below 50% held-out accuracy on 10 classes counts as collapsed in the table
_MNIST = ["--dataset", "mnist", "--epochs", "3"]
_SHIPPED = ["--config", str(ROOT / "recipes" / "configs" / "mnist_lenet300_utility.yaml"), "--epochs", "3"]
SETTINGS = {  # name: the recipe options before --seed and the order
    "lenet300/mnist 5%, threshold": [*_MNIST, "--model", "lenet300", "--policy", "threshold", "--density", "0.05"],
    "lenet5/mnist 5%, threshold": [*_MNIST, "--model", "lenet5", "--policy", "threshold", "--density", "0.05"],
    "lenet300/mnist 5%, threshold, batch 100": [*_SHIPPED, "--policy", "threshold", "--density", "0.05"],
    "lenet5/mnist 5%, threshold, batch 100": [*_SHIPPED, "--model", "lenet5", "--policy", "threshold", "--density",
                                              "0.05"],
    "lenet300/mnist 5%, utility": [*_MNIST, "--model", "lenet300", "--policy", "utility", "--density", "0.05"],
    "mlp/digits 20%, threshold": ["--policy", "threshold"],  # the recipe's default job (20 epochs)
}
NEEDS_DATA = {s for s in SETTINGS if "mnist" in s}


def run_one(setting: str, order: str, seed: int, args, out: Path) -> dict:
    """One recipe run; its summary.json plus the wall time it took."""
    opts = [*SETTINGS[setting], "--seed", str(seed), "--controller_kw", f"zero_cost_order={order}", "--threads",
            str(args.threads)]
    if args.max_steps:
        opts += ["--max_steps", str(args.max_steps)]
    if setting in NEEDS_DATA:
        opts += ["--data-dir", str(args.data)]
    if args.subset:
        opts += ["--subset", str(args.subset)]
    return recipe_run(opts, out, f"{setting}, zero_cost_order {order}, seed {seed}")


def plot(results, seeds, path: Path) -> Path:
    """Held-out accuracy of every run: one panel per setting, a line per seed joining its two orders."""
    return paired_plot(results, ORDERS, seeds, path, ORDERS,
                       f"zero removal costs ordered by index or by magnitude, seeds {', '.join(map(str, seeds))}: "
                       "a line joins a seed's two runs", center=statistics.median)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("--settings", default=";".join(SETTINGS), help=f"semicolon-separated (the names hold commas), of: "
                                                                  f"{'; '.join(SETTINGS).replace('%', '%%')}")
    ap.add_argument("--seeds", default="0,1,2,3,4,5,6,7", help="comma-separated seeds (split, data order, weights)")
    ap.add_argument("--max-steps", type=int, default=None, help="steps of every run instead of its epochs (quick runs)")
    ap.add_argument("--subset", type=int, default=None, help="train examples (quick runs; the table says so)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each run (default 1)")
    ap.add_argument("--data-dir", type=data_dir_type, default=None, help="data folder (default: $ADAPTIVE_DATA or ../shared/data)")
    ap.add_argument("--runs", type=path_type(), default=None, help="folder for the runs' own folders (default: a temporary one)")
    ap.add_argument("--output", type=path_type(), default=None, help="the table (default: recipes/benchmarks/results/zero_cost_ties.md)")
    ap.add_argument("--figure", type=path_type(), default=None, help="the figure (default: docs/figures/zero_cost_ties.png, or beside "
                                                   "--output)")
    ap.add_argument("--no-progress", action="store_true", help="no per-run lines")
    args = ap.parse_args(argv)
    settings = name_list(args.settings, SETTINGS, "--settings", ap)
    seeds = _int_list(args.seeds, "--seeds", ap)
    at_least_one(args, ("max_steps", "subset", "threads"), ap)
    args.data = resolve_data_dir(args.data_dir)
    if any(s in NEEDS_DATA for s in settings) and not (args.data / "mnist" / "mnist.npz").is_file():
        ap.error(f"the MNIST settings need {args.data / 'mnist' / 'mnist.npz'} (give --data-dir)")
    import tempfile

    runs = Path(args.runs) if args.runs else Path(tempfile.mkdtemp(prefix="zero_cost_ties_"))
    start, load0 = time.time(), os.getloadavg()[0]
    results = {s: {o: {} for o in ORDERS} for s in settings}
    for setting in settings:
        for seed in seeds:
            for order in ORDERS:
                safe = re.sub(r"[^\w.-]+", "_", setting).strip("_")
                r = run_one(setting, order, seed, args, runs / f"{safe}_{order}_seed{seed}")
                results[setting][order][seed] = r
                if not args.no_progress:
                    print(f"[{(time.time() - start) / 60:5.1f} min] {setting}, {order}, seed {seed}: held-out "
                          f"{fmt_accuracy(r['holdout_accuracy'])}%, test {fmt_accuracy(r['test_accuracy'])}%", flush=True)
    budget = f"{args.max_steps} steps" if args.max_steps else "3 epochs on MNIST, 20 on digits"
    lines = [f"# Zero removal costs: ordered by index or by magnitude ({budget} per run)", "",
             "| setting | zero_cost_order | held-out acc % (median) | held-out acc % (mean ± sd) | collapsed (held-out "
             f"< {100 * COLLAPSED:.0f}%) | test acc % (median) | held-out per seed | wall min per run |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    diffs = []
    for setting in settings:
        for order in ORDERS:
            lines.append(f"| {setting} | {order} | {collapse_cells([results[setting][order][s] for s in seeds], COLLAPSED)}")
        d = [100 * (results[setting]["magnitude"][s]["holdout_accuracy"] -
                    results[setting]["index"][s]["holdout_accuracy"]) for s in seeds]
        diffs.append((setting, d))
    lines += ["", "Magnitude minus index, held-out accuracy points, per seed (the same seed: the same split, data "
                  "order and initial weights):", ""]
    lines += [f"- {setting}: {', '.join(f'{x:+.2f}' for x in d)} (median {statistics.median(d):+.2f}; magnitude "
              f"ahead on {sum(x > 0 for x in d)}, behind on {sum(x < 0 for x in d)} of {len(d)})" for setting, d in diffs]
    lines += ["", "Every run: `recipes/adaptive.py` in train mode with `--controller_kw zero_cost_order=ORDER`, "
                  f"{budget}{', a ' + str(args.subset) + '-example subset of TRAIN' if args.subset else ''}; the "
                  "generic defaults are the recipe's (batch 32, SGD lr 0.1 nesterov cosine, weight decay 5e-4, an "
                  "update every 25 steps, edit fraction 0.3, edits until 75% of the run, curvature estimator); "
                  "'batch 100' is recipes/configs/mnist_lenet300_utility.yaml with the model, policy and density named. "
                  "Held-out: the final network on the recipe's stratified 10% of TRAIN (seeded), the numbers the "
                  "comparison is read on. Test: the setting's TEST split, read only for this table.",
              "", f"Figure: {_rel(figure_path(args, 'zero_cost_ties'))}.", "",
              f"Whole benchmark: {(time.time() - start) / 60:.1f} min wall on {os.cpu_count()} cores; 1-minute load "
              f"average {load0:.1f} at the start and {os.getloadavg()[0]:.1f} at the end.", "",
              "Reproduce: `python recipes/benchmarks/zero_cost_ties.py"
              f"{shown_args(argv, ROOT, dropped=('--runs', '--data-dir'))}`"]
    out = table_path(args, "zero_cost_ties")
    plot(results, seeds, figure_path(args, "zero_cost_ties"))
    write_table(out, lines)
    return results


if __name__ == "__main__":
    main()
