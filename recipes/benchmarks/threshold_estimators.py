"""The ``threshold`` policy from scratch with each gradient estimator: signed removal costs against ``curvature``.

    python recipes/benchmarks/threshold_estimators.py                      # 4 estimators x 2 seeds
    python recipes/benchmarks/threshold_estimators.py --estimators taylor,curvature --seeds 0

In train mode ``threshold`` prunes what its estimator says costs least. ``taylor``, ``obd`` and
``consistency`` give signed removal costs (their first-order term ``-g·w`` puts many synapses below
the boundary), ``curvature`` removes by OBD's ``F·w²/2`` alone, and the recipe warns of the signed
ones. This benchmark runs, once per estimator and seed, the job docs/python_api.md quotes for it:

    python recipes/adaptive.py --model lenet300 --dataset mnist --policy threshold --density 0.05 --epochs 3 --estimator E --seed S

(the recipe's generic defaults otherwise: batch 32, SGD lr 0.1 cosine, an update every 25 steps, edits
until 75% of the run, ERK budget), each a ``recipes/adaptive.py`` job with ``--threads`` added. The
comparison is read on the held-out part of TRAIN (the recipe's stratified 10%); the test split is read
only for each run's final report. Writes recipes/benchmarks/results/threshold_estimators.md.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from adaptive.metrics import fmt_accuracy  # noqa: E402
from adaptive.utility.base import get_estimator  # noqa: E402

# the shared helpers beside this file, by their path from ROOT (a namespace package), so a process that
# imports this file need not put this folder on sys.path
from recipes.benchmarks._paired_runs import (  # noqa: E402
    add_recipe_run_options, mean_sd as _mean_sd, name_list, recipe_run, recipe_run_options, table_path, write_table)
from recipes.benchmarks._reproduce import machine, shown_args  # noqa: E402

ESTIMATORS = ("taylor", "obd", "consistency", "curvature")  # the three signed ones, then curvature
for _name in ESTIMATORS:  # (a renamed estimator fails here, not after the first runs)
    get_estimator(_name)
JOB = ["--model", "lenet300", "--dataset", "mnist", "--policy", "threshold", "--density", "0.05"]  # + epochs, estimator, seed


def job_options(estimator: str, seed: int, args) -> list:
    """The recipe options of one run, as docs/python_api.md writes the job (the paths aside)."""
    opts = [*JOB]
    opts += ["--max_steps", str(args.max_steps)] if args.max_steps else ["--epochs", str(args.epochs)]
    opts += ["--estimator", estimator, "--seed", str(seed), "--threads", str(args.threads)]
    return opts + (["--subset", str(args.subset)] if args.subset else [])


def run_one(estimator: str, seed: int, args, out: Path) -> dict:
    """One recipe run; its summary.json plus the wall time it took."""
    return recipe_run([*job_options(estimator, seed, args), "--data-dir", str(args.data)], out,
                      f"estimator {estimator}, seed {seed}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)  # (the Reproduce line)
    ap.add_argument("--estimators", default=",".join(ESTIMATORS), help=f"comma-separated, of: {', '.join(ESTIMATORS)}")
    add_recipe_run_options(ap, "threshold_estimators", "0,1", 3, "epochs of every run (default 3)")
    ap.add_argument("--no-progress", action="store_true", help="no per-run lines")
    args = ap.parse_args(argv)
    estimators = name_list(args.estimators, ESTIMATORS, "--estimators", ap, sep=",")
    seeds = recipe_run_options(args, ap)
    if not (args.data / "mnist" / "mnist.npz").is_file():
        ap.error(f"the runs need {args.data / 'mnist' / 'mnist.npz'} (give --data-dir)")
    import tempfile

    runs = Path(args.runs) if args.runs else Path(tempfile.mkdtemp(prefix="threshold_estimators_"))
    start, load0 = time.time(), os.getloadavg()[0]
    results = {e: {} for e in estimators}
    for estimator in estimators:
        for seed in seeds:
            r = run_one(estimator, seed, args, runs / f"{estimator}_seed{seed}")
            results[estimator][seed] = r
            if not args.no_progress:
                print(f"[{(time.time() - start) / 60:5.1f} min] {estimator}, seed {seed}: held-out "
                      f"{fmt_accuracy(r['holdout_accuracy'])}%, test {fmt_accuracy(r['test_accuracy'])}%, density "
                      f"{r['density']:.4f}", flush=True)
    budget = f"{args.max_steps} steps" if args.max_steps else f"{args.epochs} epoch(s)"
    lines = [f"# threshold policy on lenet300/MNIST at 5%, from scratch, by estimator ({budget} per run)", "",
             "| estimator | seed | held-out acc % | test acc % | final density | wall min |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for estimator in estimators:
        for seed in seeds:
            r = results[estimator][seed]
            lines.append(f"| {estimator} | {seed} | {fmt_accuracy(r['holdout_accuracy'])} | {fmt_accuracy(r['test_accuracy'])} | "
                         f"{r['density']:.4f} | {r['wall_min']:.1f} |")
    lines += ["", "Per estimator, over the seeds:", ""]
    lines += [f"- {e}: held-out {_mean_sd([results[e][s]['holdout_accuracy'] for s in seeds])} "
              f"({min(100 * results[e][s]['holdout_accuracy'] for s in seeds):.2f} to "
              f"{max(100 * results[e][s]['holdout_accuracy'] for s in seeds):.2f}), test "
              f"{_mean_sd([results[e][s]['test_accuracy'] for s in seeds])}" for e in estimators]
    shown = job_options("ESTIMATOR", 0, args)
    shown[shown.index("--seed") + 1] = "SEED"
    subset = f"a {args.subset}-example subset of TRAIN; " if args.subset else ""
    lines += ["", "Every run: `python recipes/adaptive.py " + " ".join(shlex.quote(a) for a in shown) + "` ("
              f"{subset}the recipe's generic defaults otherwise: batch 32, SGD lr 0.1 nesterov cosine, weight decay "
              "5e-4, an update every 25 steps, edit fraction 0.3, edits until 75% of the run, ERK budget). Held-out: "
              "the final network on the recipe's stratified 10% of TRAIN (seeded), the numbers the comparison is "
              f"read on. Test: MNIST's TEST split ({results[estimators[0]][seeds[0]]['test_examples']:,} examples), "
              "read only for this table. Wall min: each run's own, the recipe's start included.", "",
              f"Whole benchmark: {(time.time() - start) / 60:.1f} min wall, one run at a time, on {os.cpu_count()} "
              f"cores; 1-minute load average {load0:.1f} at the start. Machine: {machine()}; "
              f"{time.strftime('%Y-%m-%d', time.gmtime())} (UTC).", "",
              f"Reproduce: `python recipes/benchmarks/threshold_estimators.py"
              f"{shown_args(argv, ROOT, dropped=('--runs', '--data-dir'))}`"]
    out = table_path(args, "threshold_estimators")
    write_table(out, lines)
    return results


if __name__ == "__main__":
    main()
