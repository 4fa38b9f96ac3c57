"""Every variation behind the mask-only design choice, run one after another; writes a table.

    python recipes/benchmarks/mask_only_ablations/run.py            # all rows, about 40 min on 2 cores
    python recipes/benchmarks/mask_only_ablations/run.py --only "edge-popup lr 0.01" "ours: presence, window 1"
    (--only reruns those rows and updates them in the existing table, keeping the others)

Pretrained ResNet-20 on cifar10-jpeg, 0.25 pass per target, targets 20% then 50% removed.
Accuracy is on a DEV split: 5,000 TRAIN images apart from the train part and from the holdout
(which the methods may use); the test split is never built. Each row is one run of ep.py
(edge-popup and its variations) or ours.py (adaptive.optimize_connectome with the given settings).
Writes recipes/benchmarks/results/mask_only_ablations.md.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from adaptive.cli import path_type  # noqa: E402
from adaptive.atomic import write_text  # noqa: E402
from recipes.benchmarks._reproduce import machine  # noqa: E402
OURS_BASE = ["--est", "presence", "--window", "1", "--approach", "0.01", "--edit", "1.0", "--verify", "0"]
ROWS = [
    ("edge-popup lr 0.01", "ep.py", []),
    ("edge-popup lr 0.003", "ep.py", ["--lr", "0.003"]),
    ("edge-popup lr 0.03", "ep.py", ["--lr", "0.03"]),
    ("edge-popup lr 0.1", "ep.py", ["--lr", "0.1"]),
    ("edge-popup, 1 pass per target", "ep.py", ["--passes", "1"]),
    ("edge-popup, 2 passes per target", "ep.py", ["--passes", "2"]),
    ("curvature (Fisher hysteresis) c=1", "ep.py", ["--curv", "1"]),
    ("curvature (Fisher hysteresis) c=0.3", "ep.py", ["--curv", "0.3"]),
    ("target reached over half a stage", "ep.py", ["--ramp", "0.5"]),
    ("Adam beta2 0.99", "ep.py", ["--beta2", "0.99"]),
    ("init: global magnitude", "ep.py", ["--init", "global"]),
    ("init: OBD", "ep.py", ["--init", "obd"]),
    ("init: OBD, global", "ep.py", ["--init", "obdglobal"]),
    ("init: rank, lr 0.01", "ep.py", ["--rank", "1", "--lr", "0.01"]),
    ("each batch used twice", "ep.py", ["--reuse", "2"]),
    ("each batch used 4 times", "ep.py", ["--reuse", "4"]),
    ("batch 32, lr 0.005", "ep.py", ["--bs", "32", "--lr", "0.005"]),
    ("batch 64, lr 0.007", "ep.py", ["--bs", "64", "--lr", "0.007"]),
    ("label smoothing 0.1", "ep.py", ["--ls", "0.1"]),
    ("crop/flip augmentation", "ep.py", ["--aug", "1"]),
    ("crop/flip augmentation, each batch used twice", "ep.py", ["--aug", "1", "--reuse", "2"]),
    ("logistic noise on scores 0.02", "ep.py", ["--noise", "0.02"]),
    ("layer-normalised SGD lr 0.003", "ep.py", ["--opt", "lnorm", "--lr", "0.003"]),
    ("channel offsets (pooled evidence), step 0.01", "ep.py", ["--offsets", "rc", "--olr", "0.01"]),
    ("channel offsets (pooled evidence), step 0.001", "ep.py", ["--offsets", "rc", "--olr", "0.001"]),
    ("final mask from scores averaged over the last half of each stage", "ep.py", ["--swa", "0.5"]),
    ("constant step instead of the cosine", "ep.py", ["--sched", "const"]),
    ("sharpness-aware (SAM) score gradients, radius 0.05", "ep.py", ["--sam", "0.05"]),
    ("overshoot: 1.3x the target removed for 30% of the stage, back by 70%", "ep.py", ["--over", "1.3"]),
    ("overshoot: 2.5x the target removed (at most 90%) for 30% of the stage, back by 70%", "ep.py", ["--over", "2.5"]),
    ("mixup alpha 0.2", "ep.py", ["--mixup", "0.2"]),
    ("mixup alpha 1.0", "ep.py", ["--mixup", "1.0"]),
    ("batch-statistics alignment, weight 1", "ep.py", ["--bnalign", "1"]),
    ("batch-statistics alignment, weight 10", "ep.py", ["--bnalign", "10"]),
    ("ours: old default (evidence, window 4, line search)", "ours.py", []),
    ("ours: presence, window 1", "ours.py", OURS_BASE),
    ("ours: presence, step 0.02", "ours.py", OURS_BASE + ["--lr", "0.02"]),
    ("ours: presence, step 0.03", "ours.py", OURS_BASE + ["--lr", "0.03"]),
    ("ours: presence, margin 0.02", "ours.py", OURS_BASE + ["--margin", "0.02"]),
    ("ours: presence, window 2", "ours.py", OURS_BASE[:2] + ["--window", "2"] + OURS_BASE[4:]),
    ("ours: presence, line search every update", "ours.py", OURS_BASE[:-1] + ["1"]),
]


def _existing_rows(path: Path) -> dict:
    """Rows of an earlier table, by variation name (kept when ``--only`` reruns some)."""
    if not path.exists():
        return {}
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 5 and cells[0] != "variation" and not cells[0].startswith("---"):
            rows[cells[0]] = line
    return rows


def _earlier_machines(path: Path) -> list:
    """The "Machine" lines of an earlier table (kept with its rows when ``--only`` reruns some)."""
    return [l for l in path.read_text().splitlines() if l.startswith("Machine")] if path.exists() else []


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", help="row names to run (default: all)")
    ap.add_argument("--output", type=path_type(), default=str(HERE.parents[0] / "results" / "mask_only_ablations.md"))
    args = ap.parse_args(argv)
    rows = [r for r in ROWS if not args.only or r[0] in args.only]
    if args.only and len(rows) != len(args.only):
        known = ", ".join(r[0] for r in ROWS)
        raise SystemExit(f"run.py: error: unknown row in --only; rows are: {known}")
    header = ["| variation | command | DEV acc % at 20% | DEV acc % at 50% | wall min |", "|---|---|---:|---:|---:|"]
    done = _existing_rows(Path(args.output)) if args.only else {}  # --only updates those rows in place
    earlier = _earlier_machines(Path(args.output)) if args.only else []
    for name, script, extra in rows:
        cmd = [sys.executable, str(HERE / script)] + extra
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        recs = {r["target"]: r for r in (json.loads(l) for l in out.splitlines() if l.startswith("{"))}
        wall = max(r.get("min", r.get("wall", 0.0)) for r in recs.values())
        done[name] = f"| {name} | `{script} {' '.join(extra)}` | {recs[0.2]['dev_acc']:.2f} | {recs[0.5]['dev_acc']:.2f} | {wall:.2f} |"
        print(done[name], flush=True)
    body = [done[name] for name, _, _ in ROWS if name in done]
    names = " ".join(f'"{name}"' for name, _, _ in rows)  # the row names hold no double quote
    footer = [
        "", "DEV: 5,000 TRAIN images apart from the train part and the holdout; the test split is never built. The "
        "pretrained network saw every TRAIN image (losslessly), DEV's included, so DEV accuracy is recall through the "
        "JPEG shift, not accuracy on unseen images: a regulariser (label smoothing, mixup, augmentation, noise, SAM) "
        "looks worse here than it may be (proxy.py and results/mask_only_proxy.md judge those on unseen images). "
        "wall min: from the start of the optimisation to the last target's DEV evaluation.", "",
        f"Machine ({'the rows rerun with --only ' + names if args.only else 'every row'}): {machine()}.", *earlier, "",
        "Reproduce: `python recipes/benchmarks/mask_only_ablations/run.py`"
        + (f" (every row; this writing reran only: `--only {names}`)" if args.only else ""),
    ]
    text = ("# Mask-only ablations (ResNet-20, DEV split of TRAIN, 0.25 pass per target)\n\n"
            + "\n".join(header + body + footer) + "\n")
    write_text(args.output, text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
