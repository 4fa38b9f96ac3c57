"""Dynamic sparse training quality: LeNet-300-100 from scratch on full MNIST, side by side.

Methods, all with the same epochs, optimizer, learning-rate schedule, batch order and layer budget
(ERK, the same per-layer densities for every sparse method):
- ``dense``: no connectome edits (density 1);
- ``static``: a random sparse connectome that never changes;
- ``set``: magnitude drop, random growth (Mocanu et al. 2018, as RigL's code has it: plain magnitude,
  grown weights at 0.0);
- ``rigl``: magnitude drop, gradient growth (Evci et al. 2020), our controller: growth by the mean
  gradient since the last update (the controller's default window, not RigL's one batch at the update
  step), a weight dropped at an update not regrown at it, ``round`` where RigL truncates the count,
  the optimizer's step taken at an update where RigL's code skips it (docs/python_api.md, "Fidelity to
  the papers"); ``rigl@w1`` (not in the default methods) grows by
  the update step's gradient alone, as RigL does;
- ``ours``: our best utility configuration, chosen among ``--candidates`` by accuracy on a held-out
  part of the TRAIN split (never on test), per density, with a seed not used for the final runs;
- ``rigl-torch``: the PyPI package (an outside reference), with its per-layer densities set to the
  same ERK budget (its own "uniform" mode keeps the first layer dense, which would be 88% of this
  network's weights).

The update schedule is RigL's: an update every ``--update_every`` steps, an edit fraction of 0.3
decaying (cosine) to 0 at 75% of training. Results go to ``runs/benchmarks/dst_mnist/results.jsonl``
(one line per run; finished runs are skipped on a rerun) and the table to
``recipes/benchmarks/results/dst_mnist.md``.

    python recipes/benchmarks/dst_mnist.py                       # the full benchmark (~60 runs)
    # or one process per density, then the table from the finished runs:
    for d in 0.02 0.05 0.1; do python recipes/benchmarks/dst_mnist.py --densities $d & done; wait
    python recipes/benchmarks/dst_mnist.py --table_only
    python recipes/benchmarks/dst_mnist.py --epochs 1 --seeds 0 --densities 0.02   # a quick look
"""
from __future__ import annotations

import argparse
import importlib
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import adaptive  # noqa: E402
from adaptive.cli import data_dir_type, path_type  # noqa: E402
from adaptive.metrics import fmt_accuracy  # noqa: E402
from adaptive.budgets import get_budget  # noqa: E402
from adaptive.data.split import stratified_split  # noqa: E402
from adaptive.models import build_model  # noqa: E402
from adaptive.atomic import write_text  # noqa: E402
from adaptive import jsonio  # noqa: E402
from recipes.benchmarks._reproduce import machine  # noqa: E402
from recipes.benchmarks._checks import check  # noqa: E402
from adaptive import paths  # noqa: E402
from adaptive.paths import find_data  # noqa: E402
from adaptive.policies.base import register_policy  # noqa: E402
from adaptive.policies.swap import SET  # noqa: E402

HERE = Path(__file__).resolve().parent
ANCHORS = {  # published test accuracy of LeNet-300-100 on MNIST (%)
    0.02: "SET 97.74, Sparse Momentum 98.20, DeepR 98.21",
    0.05: "Sparse Momentum 98.53",
    1.0: "dense 98.69",
}
DEFAULT_CANDIDATES = "utility/consistency,utility/obd,utility/curvature"
METHODS = ("dense", "static", "set", "rigl", "ours", "rigl-torch")
VARIANT_BASES = ("set", "rigl")  # the baselines that take a schedule variant (ours takes one in --candidates)
VARIANTS = ("u<steps> (update interval, e.g. u200), f<fraction> (edit fraction in [0, 1], e.g. f0.5), "
            "w<steps> (observation window, e.g. w1: growth by the update step's gradient alone, RigL's), "
            "joined by '+' (u200+f0.5)")


def parse_variant(variant, where):
    """The schedule a variant sets, ``{"every": int, "frac": float, "window": int}`` for the items it
    names (``u200+f0.5+w1``); a ValueError naming ``where`` and the valid items for anything else
    (an unknown letter, a value that is no number or out of range, an item given twice)."""
    out = {}
    for item in variant.split("+"):
        key = {"u": "every", "f": "frac", "w": "window"}.get(item[:1])
        try:
            value = float(item[1:]) if key == "frac" else int(item[1:])
        except ValueError:
            value = None
        if key in out:
            raise ValueError(f"{where}: {item[:1]!r} given twice in the schedule variant {variant!r}; use {VARIANTS}")
        if key is None or value is None or not (0.0 <= value <= 1.0 if key == "frac" else value >= 1):
            raise ValueError(f"{where}: bad schedule variant item {item!r} in {variant!r}; use {VARIANTS}")
        out[key] = value
    return out


def check_method(method):
    """Refuse (ValueError naming the valid ones) a ``--methods`` entry that is no method, or a
    variant (``rigl@w1``) that is malformed or given to a method that takes none."""
    base, at, variant = method.partition("@")
    if base not in METHODS:
        raise ValueError(f"--methods: unknown method {method!r}; use {', '.join(METHODS)}, or "
                         f"{' or '.join(VARIANT_BASES)} with a schedule variant (rigl@u200, rigl@w1)")
    if at and base not in VARIANT_BASES:
        raise ValueError(f"--methods: {method!r}: only {' and '.join(VARIANT_BASES)} take a schedule variant "
                         "(ours takes one in --candidates: utility/consistency@u200)")
    if at:
        parse_variant(variant, f"--methods {method!r}")


@register_policy("utility-grow")
class UtilityGrow(SET):
    """Magnitude drop, growth by a utility estimator's restoration gain (a hybrid candidate)."""

    grow_by = "estimator"


@register_policy("utility-drop")
class UtilityDrop(SET):
    """Removal by a utility estimator's removal cost, gradient growth (a hybrid candidate)."""

    drop_by, grow_by = "estimator", "gradient"


def load_mnist(data_dir=None, holdout=0.1):
    """Normalised float tensors: train part, held-out part of TRAIN (stratified, seed 0), test."""
    path = find_data("mnist", ("mnist/mnist.npz", "mnist.npz"), data_dir)
    with np.load(path) as f:
        xtr, ytr = torch.from_numpy(f["x_train"]), torch.from_numpy(f["y_train"]).long()
        xte, yte = torch.from_numpy(f["x_test"]), torch.from_numpy(f["y_test"]).long()

    def norm(x):
        return ((x.float() / 255.0 - 0.1307) / 0.3081).reshape(len(x), -1)

    kept, drawn = stratified_split(ytr, holdout, seed=0)
    xtr = norm(xtr)
    return (xtr[kept], ytr[kept]), (xtr[drawn], ytr[drawn]), (norm(xte), yte)


@torch.no_grad()
def accuracy(model, x, y, bs=2000):
    model.eval()
    correct = sum(int((model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum()) for i in range(0, len(x), bs))
    model.train()
    return correct / len(x)


def erk_layer_densities(conn, density):
    counts = get_budget("erk")(conn.layers, density, protected=[], min_density=0.0)
    return {n: counts[n] / conn.layers[n].numel for n in conn.names}


def make_rigl_torch(model, opt, conn, density, end_step, update_every, seed):
    """rigl-torch's RigLScheduler with our ERK per-layer densities (see the module docstring)."""
    from rigl_torch.RigL import IndexMaskHook, RigLScheduler

    init = [w.detach().clone() for w in conn.params.values()]
    sched = RigLScheduler(model, opt, dense_allocation=density, T_end=end_step, delta=update_every, alpha=0.3,
                          ignore_linear_layers=False, sparsity_distribution="uniform")
    dens = erk_layer_densities(conn, density)
    names = list(conn.names)
    check(len(names) == len(sched.W) and all(conn.params[n] is w for n, w in zip(names, sched.W)),
          "the RigL scheduler's weights are not the connectome's parameters, in order")
    sched.S = [1.0 - dens[n] for n in names]
    with torch.no_grad():  # undo its first sparsification, redo it with our allocation
        for w, w0 in zip(sched.W, init):
            w.copy_(w0)
        torch.manual_seed(seed)
        sched.random_sparsify()
    for i, w in enumerate(sched.W):
        if sched.S[i] > 0 and sched.backward_hook_objects[i] is None:
            hook = IndexMaskHook(i, sched)
            sched.backward_hook_objects[i] = hook
            w.register_hook(hook)
        elif sched.S[i] <= 0 and sched.backward_hook_objects[i] is not None:
            # ERK made this layer dense, but its (irremovable) hook multiplies by the mask: all ones
            sched.backward_masks[i] = torch.ones_like(w, dtype=torch.bool)
    return sched


def train_run(method, density, seed, data, args, policy=None, estimator=None, with_test=True):
    """Train one LeNet-300-100; returns held-out and test accuracy and the final density
    (``with_test=False``, for the runs that choose ours' configuration: no test accuracy at all)."""
    (xtr, ytr), (xho, yho), (xte, yte) = data
    torch.manual_seed(seed)
    model = build_model("lenet300", num_classes=10, in_shape=(1, 28, 28))
    # rigl-torch walks modules and keeps only Linear/conv-like children: the MLP's flat layout is fine
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.wd, nesterov=True)
    steps_per_epoch = len(xtr) // args.batch_size
    total = steps_per_epoch * args.epochs
    end_step = int(0.75 * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    ctrl = rt = None
    conn = adaptive.Connectome(model)
    if method == "dense":
        pass
    elif method == "rigl-torch":
        rt = make_rigl_torch(model, opt, conn, density, end_step, args.update_every, seed)
    else:
        every, frac, window = args.update_every, 0.3, None
        variant = ""
        if "@" in method:  # a baseline with a schedule variant: rigl@u200, rigl@w1
            method, variant = method.split("@", 1)
        if method == "ours" and estimator and "@" in estimator:  # a schedule variant: consistency@u50+f0.5
            estimator, variant = estimator.split("@", 1)
        if variant:  # w1: the observation window of one step, growth by the update step's gradient (RigL's)
            v = parse_variant(variant, f"method {method}@{variant}" if estimator is None else f"candidate {estimator}@{variant}")
            every, frac, window = v.get("every", every), v.get("frac", frac), v.get("window", window)
        pol, est, frac = {"static": ("set", None, 0.0), "set": ("set", None, frac), "rigl": ("rigl", None, frac),
                          "ours": (policy, estimator, frac)}[method]
        ctrl = adaptive.Controller(conn, opt, policy=pol, estimator=est, density=density, budget="erk",
                                   update_every=every, end_step=end_step, edit_fraction=frac, window=window,
                                   batch_size=args.batch_size, seed=seed)
    g = torch.Generator().manual_seed(1000 + seed)  # the batch order depends on the seed only
    t0 = time.time()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            loss.backward()
            if rt is None or rt():
                opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
    if rt is not None:
        live = sum(int((w != 0).sum()) for w in rt.W)
        dens = live / sum(w.numel() for w in rt.W)
    else:
        dens = conn.density()
    return dict(holdout_acc=accuracy(model, xho, yho), test_acc=accuracy(model, xte, yte) if with_test else None,
                density=dens,
                seconds=time.time() - t0, updates=len(ctrl.events) if ctrl else (rt.rigl_steps if rt else 0))


def load_done(path):
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = jsonio.loads(line)
                done[r["key"]] = r
    return done


def record(path, key, row):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(jsonio.dumps({"key": key, **row}) + "\n")


def settings_tag(args):
    return f"e{args.epochs}-b{args.batch_size}-lr{args.lr}-wd{args.wd}-u{args.update_every}"


def _seed(row) -> int:
    """A finished run's seed (the last field of its key: rows recorded before "seed" was)."""
    return int(row["seed"]) if "seed" in row else int(row["key"].rsplit("|", 1)[1])


def test_note(row) -> str:
    return "" if row.get("test_acc") is None else f"test={fmt_accuracy(row['test_acc'])} "


def fmt(xs):
    xs = [100 * x for x in xs]
    if not xs:
        return "—"
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"


# the options whose values change the table (the rest say where files go or how it is shown)
RESULT_OPTIONS = ("densities", "methods", "candidates", "batch_size", "lr", "wd", "update_every", "selection_seed",
                  "epochs", "seeds")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch_size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument("--update_every", type=int, default=100)
    ap.add_argument("--densities", default="0.1,0.05,0.02")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--selection_seed", type=int, default=100, help="seed of the selection runs (not a final seed)")
    ap.add_argument("--methods", default="dense,static,set,rigl,ours,rigl-torch",
                    help=f"comma-separated, of {', '.join(METHODS)}; {' and '.join(VARIANT_BASES)} also with a schedule "
                    f"variant, rigl@u200 or rigl@w1 (RigL's growth by the update step's gradient alone): {VARIANTS}")
    ap.add_argument("--candidates", default=DEFAULT_CANDIDATES,
                    help="policy/estimator pairs for 'ours'; estimator@u50+f0.5+w1 also sets update_every, edit fraction and window")
    ap.add_argument("--data-dir", "--data_dir", dest="data_dir", type=data_dir_type)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", type=path_type(), default=str(HERE.parents[1] / "runs" / "benchmarks" / "dst_mnist" / "results.jsonl"),
                    help="the finished runs (JSON lines; default: runs/benchmarks/dst_mnist/ of the repository, as --out is)")
    ap.add_argument("--out", type=path_type(), default=str(HERE / "results" / "dst_mnist.md"))
    ap.add_argument("--table_only", action="store_true", help="only write the table from finished runs")
    ap.add_argument("--append", action="store_true", help="append the table to --out as a section")
    ap.add_argument("--how_run", default="", help="how the runs shared the machine, quoted in the table's last line "
                    "(e.g. 'two processes side by side on 2 cores')")
    ap.add_argument("--remark", default="", help="a sentence added under the table (e.g. how the candidates came about)")
    args = ap.parse_args(argv)
    # the options that shape the table, as given where they differ from their defaults
    args.changed = [f"--{k} {getattr(args, k)}" for k in RESULT_OPTIONS
                    if k not in ("epochs", "seeds") and getattr(args, k) != ap.get_default(k)]
    torch.set_num_threads(args.threads)
    densities = [float(d) for d in args.densities.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    candidates = [tuple(c.split("/")) for c in args.candidates.split(",") if c]
    try:  # before any run: a bad entry would otherwise stop the benchmark at its first use, hours in
        for m in methods:
            check_method(m)
        for c in candidates:
            if len(c) == 2 and "@" in c[1]:
                parse_variant(c[1].split("@", 1)[1], f"--candidates {'/'.join(c)!r}")
    except ValueError as e:
        ap.error(str(e))
    if args.selection_seed in seeds:  # (its runs choose ours' configuration and never read the test split: a final
        # row at that seed had no test accuracy, and the table failed on it after all the training)
        ap.error(f"--seeds {args.seeds} holds the --selection_seed {args.selection_seed}: the selection runs choose "
                 "ours' configuration on held-out data and never read the test split, so they cannot be final rows; "
                 f"give final seeds other than {args.selection_seed}, or another --selection_seed")
    data = load_mnist(args.data_dir)
    res_path = Path(args.results)
    done = load_done(res_path)
    reused = set()  # finished runs read back from --results instead of run now
    tag = settings_tag(args)
    try:
        importlib.import_module("rigl_torch")  # installed and importable
        rigl_torch_ok, rigl_torch_why = True, ""
    except Exception as e:  # noqa: BLE001
        rigl_torch_ok, rigl_torch_why = False, f"not installed ({type(e).__name__}: {e})"

    def lookup(method, density, seed, policy=None, estimator=None):
        key = f"{tag}|{method}|{policy}/{estimator}|{density}|{seed}"
        if key in done:
            reused.add(key)
        return done.get(key)

    def run(method, density, seed, policy=None, estimator=None):
        key = f"{tag}|{method}|{policy}/{estimator}|{density}|{seed}"
        if key in done:
            reused.add(key)
            return done[key]
        if args.table_only:
            raise SystemExit(f"--table_only: no result for {key} yet")
        t = time.time()
        selecting = seed == args.selection_seed  # choosing ours' configuration: the test split stays unread
        row = train_run(method, density, seed, data, args, policy, estimator, with_test=not selecting)
        row.update(key=key, method=method, policy=policy, estimator=estimator, target_density=density, seed=seed)
        record(res_path, key, row)
        done[key] = row
        print(f"[{time.strftime('%H:%M:%S')}] {method:10s} {str(policy) + '/' + str(estimator):22s} d={density:<5g} "
              f"seed={seed} holdout={fmt_accuracy(row['holdout_acc'])} {test_note(row)}"
              f"density={row['density']:.4f} ({time.time() - t:.0f}s)", flush=True)
        return row

    # 1) choose our configuration per density on the held-out part of TRAIN (selection seed only)
    chosen = {}
    if "ours" in methods:
        for d in densities:
            rows = {c: (lookup("ours", d, args.selection_seed, *c) if args.table_only else run("ours", d, args.selection_seed, *c))
                    for c in candidates}
            if any(r is None for r in rows.values()):
                print(f"density {d:g}: selection not finished", flush=True)
                continue
            scores = {c: r["holdout_acc"] for c, r in rows.items()}
            chosen[d] = max(scores, key=lambda c: (scores[c], -candidates.index(c)))
            print(f"density {d:g}: chose {'/'.join(chosen[d])} on the holdout "
                  f"({', '.join(f'{p}/{e} {fmt_accuracy(s)}' for (p, e), s in scores.items())})", flush=True)
    # 2) final runs, seed by seed (an interrupted benchmark still has whole seeds to show)
    table = {(m, d): [] for d in densities for m in methods}
    for s in seeds:
        for d in densities:
            for m in methods:
                if m == "rigl-torch" and not rigl_torch_ok:
                    continue
                pe = chosen.get(d, (None, None)) if m == "ours" else (None, None)
                row = lookup(m, 1.0 if m == "dense" else d, s, *pe)
                if row is None and not args.table_only:
                    row = run(m, 1.0 if m == "dense" else d, s, *pe)
                if row is not None:
                    table[(m, d)].append(row)
    if args.table_only and not any(table.values()):  # an empty table would replace the recorded one
        raise SystemExit(f"--table_only: no finished run in {res_path} for these settings, so {args.out} is left as it "
                         "is; run the benchmark without --table_only first (or give --results the file that holds them)")
    write_table(args, densities, methods, seeds, table, chosen, candidates, done, tag, rigl_torch_why, data, reused)


def write_table(args, densities, methods, seeds, table, chosen, candidates, done, tag, rigl_torch_why, data, reused=()):
    names = {"dense": "dense (100%, same runs in every column; published 98.69)", "static": "static random sparse", "set": "SET", "rigl": "RigL",
             "ours": "ours (utility, chosen on holdout)", "rigl-torch": "rigl-torch (PyPI)",
             "rigl@u200": "RigL, updates every 200 steps",
             "rigl@w1": "RigL, growth by the update step's gradient alone (the paper's; window 1)"}
    if any("@u200" in est for _, est in chosen.values()):
        names["rigl@u200"] += " (the update interval ours chose; ours' other choices not given to it)"
    (xtr, _), (xho, _), (xte, _) = data
    lines = [
        "# Dynamic sparse training: LeNet-300-100 on MNIST",
        "",
        f"Test accuracy (%), mean ± std over seeds {','.join(map(str, seeds))}; {args.epochs} epochs, SGD "
        f"(Nesterov momentum 0.9, lr {args.lr} cosine to 0, weight decay {args.wd}), batch {args.batch_size}, "
        f"ERK layer budget; updates every {args.update_every} steps, edit fraction 0.3 (cosine) until 75% of "
        "training. "
        f"Trained on {len(xtr):,} TRAIN images; {len(xho):,} held out (stratified) for selection; "
        f"test = the official {len(xte):,}. Ours' configuration is chosen among the candidates below on the "
        "held-out part (the choosing runs never read the test split); the baselines run their one "
        "configuration each.",
        "",
        "| method | " + " | ".join(f"density {100 * d:g}%" for d in densities) + " |",
        "|---|" + "---|" * len(densities),
    ]
    for m in methods:
        cells = []
        for d in densities:
            if m == "rigl-torch" and rigl_torch_why:
                cells.append(rigl_torch_why)
                continue
            rows = table.get((m, d), [])
            cell = fmt([r["test_acc"] for r in rows])
            if rows and len(rows) < len(seeds):
                cell += f" (n={len(rows)})"
            cells.append(cell)
        lines.append(f"| {names.get(m, m)} | " + " | ".join(cells) + " |")
    lines.append("| published anchors | " + " | ".join(ANCHORS.get(d, "") for d in densities) + " |")
    if chosen:
        lines += ["", "Our configuration per density, chosen on held-out TRAIN accuracy (seed "
                  f"{args.selection_seed}, not a final seed):", "",
                  "| density | " + " | ".join("/".join(c) for c in candidates) + " | chosen |",
                  "|---|" + "---|" * (len(candidates) + 1)]
        for d in (d for d in densities if d in chosen):
            accs = [done[f"{tag}|ours|{p}/{e}|{d}|{args.selection_seed}"]["holdout_acc"] for p, e in candidates]
            lines.append(f"| {100 * d:g}% | " + " | ".join(f"{fmt_accuracy(a)}" for a in accs) + f" | {'/'.join(chosen[d])} |")
    if table.get(("ours", 0.02)) and table.get(("rigl", 0.02)):
        ours = statistics.mean(r["test_acc"] for r in table[("ours", 0.02)])
        gaps = []
        for m in ("rigl", "rigl@u200"):
            if table.get((m, 0.02)):
                gap = 100 * (ours - statistics.mean(r["test_acc"] for r in table[(m, 0.02)]))
                gaps.append(f"ours - {names.get(m, m)} >= 0.20 points (got {gap:+.3f}: {'met' if gap >= 0.2 else 'missed'})")
        lines += ["", f"Targets at 2%: ours >= 98.20 (got {fmt_accuracy(ours)}: {'met' if ours >= 0.982 else 'missed'}); "
                  + "; ".join(gaps) + "."]
    per_seed = []  # ours - RigL seed by seed (the same seed: the same split, data order and initial weights)
    for d in densities:
        for m in ("rigl", "rigl@u200"):
            o = {_seed(r): r["test_acc"] for r in table.get(("ours", d), [])}
            b = {_seed(r): r["test_acc"] for r in table.get((m, d), [])}
            common = sorted(set(o) & set(b))
            if not common:
                continue
            gaps = [100 * (o[k] - b[k]) for k in common]
            per_seed.append(f"- {100 * d:g}%, ours - {names.get(m, m).split(' (')[0]}: "
                            + ", ".join(f"{g:+.2f} (seed {k})" for g, k in zip(gaps, common))
                            + f"; mean {statistics.mean(gaps):+.2f}, ours ahead on {sum(g > 0 for g in gaps)} of {len(gaps)}")
    if per_seed:
        lines += ["", "Per seed, test accuracy points:", "", *per_seed]
    # the runs behind this table: its rows and the choosing runs of its densities (a results file
    # shared with other sections holds more runs with the same settings)
    behind = {r.get("key", id(r)): r for rows in table.values() for r in rows}
    for d in (d for d in densities if d in chosen):
        for p, e in candidates:
            k = f"{tag}|ours|{p}/{e}|{d}|{args.selection_seed}"
            if k in done:
                behind[k] = done[k]
    secs = [r["seconds"] for r in behind.values()]
    given = "".join(f" {c}" for c in getattr(args, "changed", ())) + " --append" * bool(args.append)
    lines += ["", f"Reproduce: `python recipes/benchmarks/dst_mnist.py{given} --epochs {args.epochs} --seeds "
              f"{','.join(map(str, seeds))}` ({len(secs)} runs, {sum(secs) / 60:.0f} minutes of run time, each run "
              f"on {args.threads} thread(s)" + (f"; {args.how_run}" if args.how_run else "")
              + (f"; {len(reused)} of them read back from {paths.repo_relative(args.results)}, not rerun" if reused else "")
              + f"). Machine (of this table's writing): {machine()}."]
    if args.append:
        lines[0] = f"## The same at {', '.join(f'{100 * d:g}%' for d in densities)} density, {args.epochs} epochs"
    if args.remark:
        lines += ["", args.remark]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append and Path(args.out).exists():
        text = Path(args.out).read_text() + "\n" + text
    write_text(args.out, text)


if __name__ == "__main__":
    main()
