"""The held-out line search in train mode: which tolerance lets a sparse-training run reach its density.

    python recipes/benchmarks/line_search_train.py                  # 3 policies x 6 variants x 3 seeds
    python recipes/benchmarks/line_search_train.py --policies gmp --variants "none;tol 0" --seeds 0
    python recipes/benchmarks/line_search_train.py --quick          # a few steps: a smoke test

A :class:`adaptive.Controller` given ``holdout_loss=`` scores every update on held-out TRAINING data
and keeps it, halves it (up to ``line_search_tries`` times) or rolls it back when the held-out loss
rose by more than ``line_search_tolerance``. In train mode a prune always costs some loss at once and
a synapse grown at 0.0 saves nothing yet, so this benchmark trains LeNet-300-100 on MNIST from scratch
to ``--density`` through the Python API (Connectome + Controller attached to the optimizer + a
:class:`adaptive.holdout_check.HeldOutLoss` on the held-out part of TRAIN) once per policy, line-search
variant and seed, and reports the density each run reached, its accuracy and what the line search
did with the updates.

Three disjoint parts of MNIST's TRAIN split, drawn per seed (stratified):

- the training part: ``--subset`` examples less the ``--holdout`` fraction of them;
- the check part: that ``--holdout`` fraction; the line search decides on it (``HeldOutLoss`` scores a
  fixed draw of ``--holdout-batches`` x ``--holdout-batch-size`` of its examples);
- the evaluation part: ``--eval-size`` further TRAIN examples outside ``--subset``, read by nothing
  in training nor in the line search's decisions: the "eval acc" of the table, the number to choose
  by (an accuracy on the check part would tilt toward the variants that veto on it).

Variants:

- ``none``: no ``holdout_loss`` (the controller as it runs without a check);
- ``tol 0``: tolerance 0.0, the Controller's default before this benchmark;
- ``tol inf``: every update kept, only measured (masks and weights are those of ``none``);
- ``rel 1%``: tolerance 1% of the held-out loss measured before the update;
- ``1 SE`` and ``3 SE``: tolerance 1 or 3 standard errors of that held-out loss (the standard
  deviation of its per-example losses over the square root of its examples): the resolution at which
  the draw can tell one network's loss from another's.

The relative and SE tolerances are set by the benchmark right before each update (from the first
held-out call of that update, the one the controller measures "before" with). The evaluation
part's accuracy (the final network on all of it) is the number to read; the test split is read only
for the table. Writes recipes/benchmarks/results/line_search_train.md.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from adaptive.cli import data_dir_type, path_type  # noqa: E402
from adaptive.metrics import fmt_accuracy  # noqa: E402
from adaptive.atomic import write_text  # noqa: E402
from adaptive.data.mnist import RELPATHS as MNIST_RELPATHS  # noqa: E402
from adaptive.paths import DatasetNotFoundError, find_data  # noqa: E402

# the shared helpers beside this file, by their path from ROOT (a namespace package)
from recipes.benchmarks._paired_runs import int_list as _int_list, name_list, rel as _rel  # noqa: E402
from recipes.benchmarks._reproduce import shown_args  # noqa: E402

POLICIES = ("threshold", "rigl", "gmp")
# name: ("kind", value): None (no check), an absolute tolerance, a fraction of the loss, or standard errors
VARIANTS = {"none": ("off", None), "tol 0": ("abs", 0.0), "tol inf": ("abs", math.inf), "rel 1%": ("rel", 0.01),
            "1 SE": ("se", 1.0), "3 SE": ("se", 3.0)}


class ScaledCheck:
    """The held-out loss of a fixed draw (``HeldOutLoss``'s batches), which also sets the controller's
    tolerance at the first call of each update (``rel``: a fraction of that loss; ``se``: standard
    errors of it), since the controller reads its tolerance right after that call."""

    def __init__(self, held, kind: str, scale: float):
        self.held, self.kind, self.scale = held, kind, scale
        self.ctrl, self.seen_step, self.ses, self.losses = None, -1, [], []

    def __call__(self) -> float:
        model = self.held.model
        was = model.training
        model.eval()
        with torch.no_grad():
            per = torch.cat([F.cross_entropy(model(x), y, reduction="none").double() for x, y in self.held.data])
        model.train(was)
        loss = float(per.mean())
        if self.ctrl is not None and self.ctrl.step_count != self.seen_step:  # the update's "before" call
            self.seen_step = self.ctrl.step_count
            se = float(per.std()) / math.sqrt(per.numel())
            self.ses.append(se)
            self.losses.append(loss)
            if self.kind == "rel":
                self.ctrl.line_search_tolerance = self.scale * loss
            elif self.kind == "se":
                self.ctrl.line_search_tolerance = self.scale * se
        return loss


def _tensors(ds, batch=4096):
    """The whole dataset as two tensors (MNIST is small: it lives in memory)."""
    xs, ys = [], []
    for x, y in torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def _accuracy(model, x, y, batch=5000) -> float:
    model.eval()
    with torch.no_grad():
        right = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch))
    model.train()
    return right / len(y)


def run_one(policy: str, variant: str, seed: int, data, args) -> dict:
    """Train one network from scratch; what the run reached and what its line search did."""
    import adaptive
    from adaptive.holdout_check import HeldOutLoss
    from adaptive.models import build_model

    (xt, yt), held_ds, (xe, ye), test_tensors = data
    torch.manual_seed(seed)
    model = build_model("lenet300", num_classes=10, in_shape=(1, 28, 28))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    conn = adaptive.Connectome(model)
    kind, value = VARIANTS[variant]
    search, check = {}, None
    if kind != "off":
        held = HeldOutLoss(model, held_ds, batches=args.holdout_batches, batch_size=args.holdout_batch_size,
                           device="cpu", seed=seed)
        check = ScaledCheck(held, kind, value)
        search = dict(holdout_loss=check, line_search_tolerance=value if kind == "abs" else 0.0)
    end_step = max(args.update_every + 1, int(0.75 * args.steps))
    ctrl = adaptive.Controller(conn, opt, policy=policy, density=args.density, update_every=args.update_every,
                               end_step=end_step, batch_size=args.batch_size, seed=seed, **search)
    if check is not None:
        check.ctrl = ctrl
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    step = 0
    while step < args.steps:
        for idx in torch.randperm(len(yt), generator=g).split(args.batch_size):
            if step == args.steps:
                break
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    wall = time.time() - t0
    fr = [e["line_search_fraction"] for e in ctrl.events
          if e["kind"] == "update" and e.get("line_search_fraction") is not None]
    edits = [e for e in ctrl.events if e["kind"] == "update" and (e["pruned"] or e["grown"])]
    xs, ys = test_tensors()  # (the run is over: the table's column)
    return {"density": conn.density(), "eval_accuracy": _accuracy(model, xe, ye),
            "test_accuracy": _accuracy(model, xs, ys), "wall_s": wall, "checked": len(fr),
            "kept": sum(f == 1.0 for f in fr), "halved": sum(0.0 < f < 1.0 for f in fr),
            "rolled_back": sum(f == 0.0 for f in fr), "updates_editing": len(edits),
            "se_over_loss": [s / max(l, 1e-12) for s, l in zip(check.ses, check.losses)] if check else []}


def load_data(args, seed: int):
    """The training part (as tensors), the check part (the held-out dataset the line search decides
    on), the evaluation part's tensors (``args.eval_size`` TRAIN examples outside ``args.subset``,
    disjoint from both) and a function giving the test tensors for ``seed`` (the split is built and read at its
    first call, once a run has finished: nothing before reads it). A ValueError when TRAIN holds too few
    examples outside the subset for the evaluation part."""
    from adaptive.data import get_datasets
    from adaptive.data.split import stratified_subset

    splits = get_datasets("mnist", data_dir=args.data_dir, holdout=args.holdout, seed=seed, subset=args.subset,
                          test_subset=args.test_subset)
    whole = get_datasets("mnist", data_dir=args.data_dir, holdout=0.0, seed=seed).train  # all of TRAIN, in order
    labels = torch.as_tensor(whole.targets)
    outside = torch.ones(len(labels), dtype=torch.bool)
    outside[stratified_subset(labels, args.subset, seed)] = False  # the pool get_datasets drew --subset from
    rest = outside.nonzero().squeeze(1)
    if len(rest) < args.eval_size:
        raise ValueError(f"--eval-size {args.eval_size} needs as many MNIST TRAIN examples outside --subset "
                         f"{args.subset}, which leaves {len(rest)} of {len(labels)}: give a smaller --subset or "
                         "--eval-size")
    evaluation = whole.select(rest[stratified_subset(labels[rest], args.eval_size, seed)])
    # the test tensors, read at the first run's end (the table's column) and kept for the seed's other runs
    test_tensors = functools.cache(lambda: _tensors(splits.test))
    return _tensors(splits.train), splits.holdout, _tensors(evaluation), test_tensors


def _pm(xs, pct=True, digits=2) -> str:
    k = 100 if pct else 1
    xs = [k * x for x in xs]
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def table(results, policies, variants, seeds, args) -> list:
    """The markdown table lines of ``results[policy][variant][seed]``."""
    lines = ["| policy | line search | density (target " + f"{args.density:g}) | eval acc % | test acc % | "
             "updates kept / halved / rolled back (of those checked, summed over seeds) | rolled back % | wall s per run |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for p in policies:
        for v in variants:
            rs = [results[p][v][s] for s in seeds]
            checked = sum(r["checked"] for r in rs)
            ls = (f"{sum(r['kept'] for r in rs)} / {sum(r['halved'] for r in rs)} / {sum(r['rolled_back'] for r in rs)}"
                  f" (of {checked})" if checked else "not checked")
            back = f"{100 * sum(r['rolled_back'] for r in rs) / checked:.0f}" if checked else "-"
            lines.append(f"| {p} | {v} | {_pm([r['density'] for r in rs], pct=False, digits=3)} | "
                         f"{_pm([r['eval_accuracy'] for r in rs])} | {_pm([r['test_accuracy'] for r in rs])} | {ls} | "
                         f"{back} | {statistics.mean(r['wall_s'] for r in rs):.1f} |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated, of: {', '.join(POLICIES)}")
    ap.add_argument("--variants", default=";".join(VARIANTS), help="semicolon-separated line-search variants, of: "
                                                                   f"{'; '.join(VARIANTS).replace('%', '%%')}")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (split, data order, weights)")
    ap.add_argument("--density", type=float, default=0.1, help="target density (default 0.1)")
    ap.add_argument("--steps", type=int, default=800, help="training steps of every run (default 800: about 3 "
                                                           "epochs of the 27,000 training examples at batch 100)")
    ap.add_argument("--update-every", type=int, default=25, help="steps between updates (default 25); edits end at "
                                                                 "75%% of the steps")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.1, help="SGD rate (Nesterov 0.9, weight decay 5e-4, cosine)")
    ap.add_argument("--subset", type=int, default=30000, help="train examples drawn from MNIST's 60,000 (default "
                                                               "30000), of which --holdout is held out")
    ap.add_argument("--holdout", type=float, default=0.1, help="fraction of the subset held out for the line "
                                                              "search's checks (default 0.1)")
    ap.add_argument("--eval-size", type=int, default=3000, help="TRAIN examples outside --subset whose accuracy "
                                                                 "the table reports, read by no check (default 3000)")
    ap.add_argument("--holdout-batches", type=int, default=3, help="held-out batches each check scores (default 3)")
    ap.add_argument("--holdout-batch-size", type=int, default=1000, help="(default 1000)")
    ap.add_argument("--test-subset", type=int, default=None, help="test examples read for the table (default all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--quick", action="store_true", help="a smoke test: 1 seed unless --seeds, 80 steps, an update "
                                                         "every 10, a 3,000-example subset, 1 held-out batch of 300, an evaluation part of 1,000")
    ap.add_argument("--data-dir", type=data_dir_type, default=None, help="data folder (default: $ADAPTIVE_DATA or ../shared/data)")
    ap.add_argument("--output", type=path_type(), default=None, help="the table (default: "
                                                   "recipes/benchmarks/results/line_search_train.md)")
    ap.add_argument("--no-progress", action="store_true", help="no per-run lines")
    args = ap.parse_args(argv)
    policies = name_list(args.policies, POLICIES, "--policies", ap, sep=",")
    variants = name_list(args.variants, list(VARIANTS), "--variants", ap)
    seeds = _int_list(args.seeds, "--seeds", ap)
    if args.quick:
        given = argv if argv is not None else sys.argv[1:]
        if not any(a.startswith("--seeds") for a in given):
            seeds = seeds[:1]
        args.steps, args.update_every, args.subset, args.holdout_batches, args.holdout_batch_size = 80, 10, 3000, 1, 300
        args.test_subset = args.test_subset or 1000
        args.eval_size = min(args.eval_size, 1000)
    for name in ("steps", "update_every", "batch_size", "subset", "eval_size", "holdout_batches", "holdout_batch_size",
                 "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.density <= 1:
        ap.error(f"--density must be in (0, 1], got {args.density}")
    if not 0 < args.holdout < 1:
        ap.error(f"--holdout must be in (0, 1), got {args.holdout}")
    if args.lr <= 0:
        ap.error(f"--lr must be > 0, got {args.lr}")
    try:  # the library's own lookup: --data-dir, else $ADAPTIVE_DATA, else ../shared/data (said before any run)
        find_data("mnist", MNIST_RELPATHS, args.data_dir)
    except DatasetNotFoundError as e:
        ap.error(str(e))
    torch.set_num_threads(args.threads)
    start, load0 = time.time(), os.getloadavg()[0]
    results = {p: {v: {} for v in variants} for p in policies}
    ratios = []
    for seed in seeds:
        try:
            data = load_data(args, seed)
        except ValueError as e:  # (the first seed's load comes before any run)
            ap.error(str(e))
        for p in policies:
            for v in variants:
                r = results[p][v][seed] = run_one(p, v, seed, data, args)
                ratios += r["se_over_loss"]
                if not args.no_progress:
                    print(f"[{(time.time() - start) / 60:5.1f} min] {p}, {v}, seed {seed}: density {r['density']:.3f}, "
                          f"eval {fmt_accuracy(r['eval_accuracy'])}%, kept/halved/back {r['kept']}/{r['halved']}/"
                          f"{r['rolled_back']}", flush=True)
    held_n = args.holdout_batches * args.holdout_batch_size
    lines = [f"# Held-out line search in train mode: lenet300 on MNIST, density {args.density:g}, {args.steps} steps, "
             f"seeds {', '.join(map(str, seeds))}", "", *table(results, policies, variants, seeds, args), ""]
    if ratios:
        lines += [f"The held-out loss's standard error over its per-example losses, measured before each checked "
                  f"update: median {100 * statistics.median(ratios):.1f}% of that loss (range "
                  f"{100 * min(ratios):.1f}-{100 * max(ratios):.1f}%), so `1 SE` is a relative tolerance of about "
                  f"that much.", ""]
    lines += [f"Every run: lenet300 (`adaptive.models`) trained from scratch through the Python API, a Connectome "
              f"and a Controller attached to SGD (rate {args.lr:g}, Nesterov momentum 0.9, weight decay 5e-4, cosine "
              f"to 0 over {args.steps} steps, batch {args.batch_size}), the ERK budget and each policy's defaults "
              f"(curvature estimator for threshold; rigl and gmp from the default random and dense starts), an "
              f"update every {args.update_every} steps until 75% of the run, `line_search_tries=3`. Data: a "
              f"stratified {args.subset:,}-example subset of MNIST's TRAIN, {100 * args.holdout:g}% of it held out "
              f"for the checks (seeded; the rest is trained on); each check scores a fixed draw of "
              f"{args.holdout_batches} x {args.holdout_batch_size} of those held-out examples ({held_n:,}), on which "
              f"the line search decides. Eval accuracy: the final network on a separate evaluation part of "
              f"{args.eval_size:,} further TRAIN examples outside the subset (stratified, seeded), disjoint from the "
              f"training and check parts and read by no decision: the number to choose by. Test accuracy: MNIST's "
              f"TEST split"
              f"{' (' + str(args.test_subset) + ' examples)' if args.test_subset else ''}, read only for this table. "
              "Density and accuracies: mean ± sd over the seeds. 'kept / halved / rolled back': checked updates "
              "kept whole, kept in part (halved 1-3 times), undone. `none` and `tol inf` train alike (the check "
              "changes nothing the training reads).", "",
              f"Whole benchmark: {(time.time() - start) / 60:.1f} min wall on {os.cpu_count()} cores, "
              f"{args.threads} torch thread(s); 1-minute load average {load0:.1f} at the start and "
              f"{os.getloadavg()[0]:.1f} at the end.", "",
              f"Reproduce: `python recipes/benchmarks/line_search_train.py{shown_args(argv, ROOT, dropped=('--data-dir',))}`"]
    out = Path(args.output) if args.output else ROOT / "recipes" / "benchmarks" / "results" / "line_search_train.md"
    write_text(out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {_rel(out)}")
    return results


if __name__ == "__main__":
    main()
