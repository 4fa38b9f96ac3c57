"""LeNet-5 on MNIST at SGD lr 0.1: how often training dies, and what keeps it alive.

    python recipes/benchmarks/lenet5_stability.py                      # 3 settings x 4 variants x 8 seeds
    python recipes/benchmarks/lenet5_stability.py --settings "dense, batch 100" --variants "lr 0.1;clip 1" --seeds 0,1
    python recipes/benchmarks/lenet5_stability.py --jobs 1             # one run at a time
    python recipes/benchmarks/lenet5_stability.py --settings "threshold 5%, batch 100" --variants "clip 1;lr 0.1" \
        --seeds 0,1 --epochs 20 --output recipes/benchmarks/results/lenet5_config.md  # the shipped mnist_lenet5.yaml
    python recipes/benchmarks/lenet5_stability.py --settings "utility 5%, batch 100" --variants "lr 0.1;clip 1" \
        --output recipes/benchmarks/results/lenet5_stability_utility.md  # the utility policy, sparse from the start
    python recipes/benchmarks/lenet5_stability.py --settings "utility 5%, batch 100;rigl 5%, batch 100" \
        --variants "clip 1;lr 0.1" --output recipes/benchmarks/results/lenet5_dst.md  # against RigL

The recipe's learning rate (SGD lr 0.1, Nesterov momentum 0.9, cosine, no warmup) suits the
networks it was set for (ResNets with batch normalisation, LeNet-300-100), but LeNet-5, which has no
normalisation, sometimes does not survive its first few hundred steps (one of the five collapses at lr 0.1
here came after 1,720 of 5,064 steps): its ReLUs stop firing on every input, the loss stays at ln 10 and the run ends at chance (the ``silent_units`` column and its warning
show it). The threshold policy starts dense, so its runs share this. This benchmark trains each
setting once per variant and seed, every run a ``recipes/adaptive.py`` job that differs only in the
variant's options: as shipped (lr 0.1), the gradient clipped to a total 2-norm of 1
(``--max_grad_norm 1``), a linear warmup of 500 steps (``--warmup_steps 500``), and half the rate
(``--lr 0.05``). The comparison is read on the held-out part of TRAIN (the recipe's stratified 10%);
the test split is read only for each run's final report. Writes
recipes/benchmarks/results/lenet5_stability.md and docs/figures/lenet5_stability.png.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from adaptive.cli import data_dir_type, path_type  # noqa: E402
from adaptive.metrics import fmt_accuracy  # noqa: E402
from adaptive.paths import resolve_data_dir  # noqa: E402

# the shared helpers beside this file, by their path from ROOT (a namespace package), so a process that
# imports this file need not put this folder on sys.path
from recipes.benchmarks._paired_runs import (  # noqa: E402
    at_least_one, collapse_cells, figure_path, int_list as _int_list, name_list, paired_plot, recipe_run,
    rel as _rel, table_path, write_table)
from recipes.benchmarks._reproduce import shown_args  # noqa: E402

EPOCHS = 3  # each run's epochs unless --epochs says otherwise (every setting below lists them)
COLLAPSED = 0.5  # a run below 50% held-out accuracy on 10 classes counts as collapsed in the table
_SHIPPED = ["--config", str(ROOT / "recipes" / "configs" / "mnist_lenet300_utility.yaml"), "--model", "lenet5",
            "--epochs", str(EPOCHS)]
SETTINGS = {  # name: the recipe options before the variant's and --seed
    "dense, batch 100": [*_SHIPPED, "--density", "1.0"],
    "threshold 5%, batch 100": [*_SHIPPED, "--policy", "threshold", "--density", "0.05"],
    "threshold 5%, batch 32": ["--dataset", "mnist", "--model", "lenet5", "--epochs", str(EPOCHS), "--policy", "threshold",
                               "--density", "0.05"],
    # sparse (ERK) from the first step, not dense first
    "utility 5%, batch 100": [*_SHIPPED, "--policy", "utility", "--density", "0.05"],
    # RigL (magnitude drop, gradient growth) on the same schedule: the reference for the utility policy
    "rigl 5%, batch 100": ["--config", str(ROOT / "recipes" / "configs" / "mnist_lenet300_rigl.yaml"), "--model", "lenet5",
                           "--epochs", str(EPOCHS), "--density", "0.05"],
}
POLICY_NOTES = {  # how each setting's policy reaches 5%, said under the table where one of its settings ran
    "threshold": "the threshold policy starts dense and prunes to 5% (curvature estimator)",
    "utility": "the utility policy starts sparse (ERK) at 5% and moves synapses (curvature estimator)",
    "rigl": "RigL ('rigl 5%, batch 100' runs recipes/configs/mnist_lenet300_rigl.yaml, the same schedule, with the "
            "model and density named) starts sparse (ERK) at 5% and moves synapses (magnitude drop, gradient growth)",
}
SCHEDULE_NOTES = {  # what a setting's batch names, said where one of its settings ran
    "batch 100": "'batch 100' is recipes/configs/mnist_lenet300_utility.yaml with the model, density and policy named "
                 "(an update every 100 steps)",
    "batch 32": "'batch 32' is the recipe's generic defaults (an update every 25 steps)",
}


def _setting_notes(settings) -> list:
    """The sentences that describe the settings that ran, and only those."""
    notes = [SCHEDULE_NOTES[b] for b in SCHEDULE_NOTES if any(s.endswith(b) for s in settings)]
    notes += [POLICY_NOTES[p] for p in POLICY_NOTES if any(s.startswith(p) for s in settings)]
    if any(s.startswith(tuple(POLICY_NOTES)) for s in settings):
        notes.append("edits until 75% of the run")
    return notes
DEFAULT_SETTINGS = ("dense, batch 100", "threshold 5%, batch 100", "threshold 5%, batch 32")
VARIANTS = {  # name: the options that set it apart from the shipped rate
    "lr 0.1": [],
    "clip 1": ["--max_grad_norm", "1"],
    "warmup 500": ["--warmup_steps", "500"],
    "lr 0.05": ["--lr", "0.05"],
}
WARMUP = 500
MNIST_TRAIN, HOLDOUT = 60_000, 0.1  # MNIST's TRAIN split and the recipe's held-out share of it


def fewest_steps(settings, args) -> int:
    """A lower bound on the steps of the shortest run: --max-steps, else --epochs epochs of the train part at
    the setting's batch size, the last batch kept (of --subset examples where given, less the held-out
    share; its stratified rounding moves the train part by at most 5 examples, under a batch)."""
    if args.max_steps:
        return args.max_steps
    train = int(min(args.subset or MNIST_TRAIN, MNIST_TRAIN) * (1 - HOLDOUT)) - 5
    return min(args.epochs * math.ceil(train / (100 if "batch 100" in s else 32)) for s in settings)


def run_one(setting: str, variant: str, seed: int, args, out: Path) -> dict:
    """One recipe run; its summary.json plus the wall time it took. The setting's ``--epochs`` is
    ``args.epochs``."""
    base = SETTINGS[setting]
    base = [str(args.epochs) if i and base[i - 1] == "--epochs" else a for i, a in enumerate(base)]
    opts = [*base, *VARIANTS[variant], "--seed", str(seed), "--threads", str(args.threads),
            "--data-dir", str(args.data)]
    if args.max_steps:
        opts += ["--max_steps", str(args.max_steps)]
    if args.subset:
        opts += ["--subset", str(args.subset)]
    return recipe_run(opts, out, f"{setting}, {variant}, seed {seed}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("--settings", default=";".join(DEFAULT_SETTINGS),
                    help=f"semicolon-separated, of: {'; '.join(SETTINGS).replace('%', '%%')} (default: {'; '.join(DEFAULT_SETTINGS).replace('%', '%%')})")
    ap.add_argument("--variants", default=";".join(VARIANTS), help=f"semicolon-separated, of: {'; '.join(VARIANTS).replace('%', '%%')} "
                                                                  "(the first is the baseline of the differences)")
    ap.add_argument("--seeds", default="0,1,2,3,4,5,6,7", help="comma-separated seeds (split, data order, weights)")
    ap.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs of every run (default {EPOCHS}; the shipped "
                    "recipes/configs/mnist_lenet5.yaml trains 20)")
    ap.add_argument("--max-steps", type=int, default=None, help="steps of every run instead of its epochs (quick runs)")
    ap.add_argument("--subset", type=int, default=None, help="train examples (quick runs; the table says so)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each run (default 1)")
    ap.add_argument("--jobs", type=int, default=2, help="runs side by side (default 2; the results do not depend on it)")
    ap.add_argument("--data-dir", type=data_dir_type, default=None, help="data folder (default: $ADAPTIVE_DATA or ../shared/data)")
    ap.add_argument("--runs", type=path_type(), default=None, help="folder for the runs' own folders (default: a temporary one)")
    ap.add_argument("--output", type=path_type(), default=None, help="the table (default: recipes/benchmarks/results/lenet5_stability.md)")
    ap.add_argument("--figure", type=path_type(), default=None, help="the figure (default: docs/figures/lenet5_stability.png, or beside "
                                                   "--output)")
    ap.add_argument("--no-progress", action="store_true", help="no per-run lines")
    args = ap.parse_args(argv)
    settings = name_list(args.settings, SETTINGS, "--settings", ap)
    variants = name_list(args.variants, VARIANTS, "--variants", ap)
    seeds = _int_list(args.seeds, "--seeds", ap)
    at_least_one(args, ("epochs", "max_steps", "subset", "threads", "jobs"), ap)
    if "warmup 500" in variants and fewest_steps(settings, args) < 2 * WARMUP:
        ap.error(f"--variants 'warmup 500' needs runs of at least {2 * WARMUP} steps (a warmup of at most half the "
                 f"run), and the shortest here has about {fewest_steps(settings, args)}: give a larger --max-steps or "
                 "--subset, or leave that variant out")
    args.data = resolve_data_dir(args.data_dir)
    if not (args.data / "mnist" / "mnist.npz").is_file():
        ap.error(f"the benchmark needs {args.data / 'mnist' / 'mnist.npz'} (give --data-dir)")
    import tempfile

    runs = Path(args.runs) if args.runs else Path(tempfile.mkdtemp(prefix="lenet5_stability_"))
    start, load0 = time.time(), os.getloadavg()[0]
    results = {s: {v: {} for v in variants} for s in settings}
    jobs = [(s, v, seed) for s in settings for seed in seeds for v in variants]

    def one(job):
        setting, variant, seed = job
        safe = re.sub(r"[^\w.-]+", "_", f"{setting}_{variant}").strip("_")
        r = run_one(setting, variant, seed, args, runs / f"{safe}_seed{seed}")
        if not args.no_progress:
            print(f"[{(time.time() - start) / 60:5.1f} min] {setting}, {variant}, seed {seed}: held-out "
                  f"{fmt_accuracy(r['holdout_accuracy'])}%, test {fmt_accuracy(r['test_accuracy'])}%", flush=True)
        return job, r

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each run is its own process
        for (setting, variant, seed), r in pool.map(one, jobs):
            results[setting][variant][seed] = r
    budget = f"{args.max_steps} steps" if args.max_steps else f"{args.epochs} epoch{'s' * (args.epochs != 1)}"
    lines = [f"# LeNet-5 on MNIST at SGD lr 0.1: held-out accuracy and collapses of each setting and variant ({budget} per run)", "",
             "| setting | variant | held-out acc % (median) | held-out acc % (mean ± sd) | collapsed (held-out "
             f"< {100 * COLLAPSED:.0f}%) | test acc % (median) | held-out per seed | wall min per run |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    diffs = []
    base = variants[0]
    for setting in settings:
        for variant in variants:
            lines.append(f"| {setting} | {variant} | {collapse_cells([results[setting][variant][s] for s in seeds], COLLAPSED)}")
        for variant in variants[1:]:
            d = [100 * (results[setting][variant][s]["holdout_accuracy"] - results[setting][base][s]["holdout_accuracy"])
                 for s in seeds]
            diffs.append((setting, variant, d))
    if diffs:
        lines += ["", f"Each variant minus {base}, held-out accuracy points, per seed (the same seed: the same split, "
                      "data order and initial weights):", ""]
        lines += [f"- {setting}, {variant}: {', '.join(f'{x:+.2f}' for x in d)} (median {statistics.median(d):+.2f}; "
                  f"ahead on {sum(x > 0 for x in d)}, behind on {sum(x < 0 for x in d)} of {len(d)})"
                  for setting, variant, d in diffs]
    lines += ["", "Every run: `recipes/adaptive.py --model lenet5 --dataset mnist` in train mode, "
                  f"{budget}{', a ' + str(args.subset) + '-example subset of TRAIN' if args.subset else ''}, SGD "
                  "(Nesterov momentum 0.9, cosine to 0 after any warmup, weight decay 5e-4). "
                  + "; ".join(_setting_notes(settings)) + ". "
                  "Variants: " + "; ".join(f"{v}: {' '.join(VARIANTS[v]) or 'as shipped'}" for v in variants) + ". "
                  "Held-out: the final network on the recipe's stratified 10% of TRAIN (seeded), the numbers the "
                  "comparison is read on. Test: MNIST's TEST split, read only for this table.",
              "", f"Figure: {_rel(figure_path(args, 'lenet5_stability'))}.", "",
              f"Whole benchmark: {(time.time() - start) / 60:.1f} min wall on {os.cpu_count()} cores, {args.jobs} "
              f"run(s) side by side; 1-minute load average {load0:.1f} at the start and {os.getloadavg()[0]:.1f} at "
              "the end.", "",
              "Reproduce: `python recipes/benchmarks/lenet5_stability.py"
              f"{shown_args(argv, ROOT, dropped=('--runs', '--data-dir', '--jobs'))}`"]
    out = table_path(args, "lenet5_stability")
    paired_plot(results, variants, seeds, figure_path(args, "lenet5_stability"), variants,
                f"LeNet-5 on MNIST, seeds {', '.join(map(str, seeds))}: a line joins a seed's runs",
                center=statistics.median)
    write_table(out, lines)
    return results


if __name__ == "__main__":
    main()
