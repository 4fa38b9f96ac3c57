"""Which synapses do the utility estimators remove first from a trained sparse transformer?

Takes the vit_tiny that ``recipes/benchmarks/dst_vit.py`` trained with SET (``--run``, 20% density),
scores every live synapse with each estimator's ``removal_cost`` (``adaptive.utility``; gradient
statistics from ``--stat-batches`` batches of TRAIN, model in eval mode), removes the lowest-cost
fraction of every layer's live synapses (each layer alike, as the DST policies' ERK budget does)
and reports held-out loss and accuracy (a held-out part of TRAIN, never the test split). One shot,
no retraining: how good is each estimator's idea of what is free to remove?

    python recipes/benchmarks/removal_orders_vit.py      # a few minutes on 2 cores

Writes ``recipes/benchmarks/results/removal_orders_vit.md``.
"""
from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from adaptive.cli import data_dir_type, path_type  # noqa: E402
from adaptive.atomic import write_text  # noqa: E402
from recipes.benchmarks._reproduce import command  # noqa: E402

ESTIMATORS = ("magnitude", "obd", "consistency", "curvature", "taylor")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=path_type(), default=str(ROOT / "runs" / "benchmarks" / "dst_vit" / "set_e8_s0"),
                   help="a vit_tiny run folder (connectome.safetensors, dense_state_dict.pt)")
    p.add_argument("--fractions", default="0.1,0.25,0.5", help="fractions of each layer's live synapses removed")
    p.add_argument("--stat-batches", type=int, default=25, help="TRAIN batches of 128 for gradient statistics")
    p.add_argument("--eval-batches", type=int, default=0,
                   help="held-out batches of 128 scored per point, drawn at random (seeded) from the whole "
                        "held-out part (0: all of it; the loader keeps the dataset's class order)")
    p.add_argument("--data-dir", type=data_dir_type, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=path_type(), default=str(HERE / "results" / "removal_orders_vit.md"))
    a = p.parse_args(argv)
    try:
        fractions = [float(f) for f in a.fractions.split(",")]
    except ValueError:
        p.error(f"--fractions must be comma-separated numbers, got {a.fractions!r}")
    if not all(0 < f < 1 for f in fractions):
        p.error("--fractions must lie in (0, 1)")
    if a.stat_batches < 1 or a.eval_batches < 0 or a.threads < 1:
        p.error("--stat-batches and --threads must be at least 1, --eval-batches at least 0")
    run = Path(a.run)
    if not (run / "connectome.safetensors").is_file() or not (run / "dense_state_dict.pt").is_file():
        p.error(f"{run} holds no finished run: run `python recipes/benchmarks/dst_vit.py` first or pass --run")
    torch.set_num_threads(a.threads)
    import adaptive
    from adaptive.data import get_dataloaders
    from adaptive.diagnostics.removal_order import removal_scores
    from adaptive.models import build_model

    t0 = time.time()
    model = build_model("vit_tiny")
    conn = adaptive.Connectome.load(run / "connectome.safetensors", model)
    model.load_state_dict(torch.load(run / "dense_state_dict.pt", weights_only=True))
    model.eval()
    dl = get_dataloaders("cifar10", batch_size=128, holdout=0.1, seed=0, data_dir=a.data_dir)
    stat = list(itertools.islice(iter(dl.train), a.stat_batches))
    hold = list(dl.holdout)  # sorted by class: the first batches would hold four classes only
    if a.eval_batches:
        pick = torch.randperm(len(hold), generator=torch.Generator().manual_seed(0))[: a.eval_batches]
        hold = [hold[i] for i in sorted(pick.tolist())]
    labels = torch.cat([y for _, y in hold])
    lossf = torch.nn.CrossEntropyLoss()

    def evaluate():
        with torch.no_grad():
            loss = correct = n = 0
            for x, y in hold:
                out = model(x)
                loss += float(lossf(out, y)) * len(y)
                correct += int((out.argmax(1) == y).sum())
                n += len(y)
        return loss / n, 100.0 * correct / n

    original = {k: v.detach().clone() for k, v in conn.params.items()}
    base = evaluate()
    rows = []
    for est in ESTIMATORS:
        scores = removal_scores(conn, stat, est, batches=None)
        row = []
        for f in fractions:
            with torch.no_grad():
                for name, w in conn.params.items():
                    live = conn.masks[name]
                    s = torch.nan_to_num(scores[name], nan=float("inf")).masked_fill(~live.cpu(), float("inf")).flatten()
                    k = int(f * int(live.sum()))
                    gone = torch.topk(s, k, largest=False).indices
                    q = original[name].clone().flatten()
                    q[gone.to(q.device)] = 0.0
                    w.copy_(q.view_as(w))
            row.append(evaluate())
        with torch.no_grad():
            for name, w in conn.params.items():
                w.copy_(original[name])
        rows.append((est, row))
        print(est, " ".join(f"{acc:.1f}%" for _, acc in row), flush=True)

    lines = ["# Removal orders on a trained sparse vit_tiny (one shot, held-out TRAIN)", "",
             "| estimator (removal cost) | " + " | ".join(f"{f:.0%} removed: loss / acc %" for f in fractions) + " |",
             "|---|" + "---:|" * len(fractions),
             "| none (the trained network) | " + " | ".join(f"{base[0]:.3f} / {base[1]:.1f}" for _ in fractions) + " |"]
    for est, row in rows:
        lines.append(f"| {est} | " + " | ".join(f"{loss:.3f} / {acc:.1f}" for loss, acc in row) + " |")
    lines += ["", f"Network: {run} (vit_tiny at density {conn.density():.3f}). Gradient statistics: {a.stat_batches} "
              f"TRAIN batches of 128 (no augmentation, eval mode); each fraction of every layer's live synapses is "
              f"removed, lowest cost first; held-out = {len(labels):,} images ("
              f"{'all' if not a.eval_batches else f'{a.eval_batches} batches of 128 drawn at random from those'} of the "
              f"10% of TRAIN held out with seed 0; {int(torch.unique(labels).numel())} classes, "
              f"{int(torch.bincount(labels).min())} to {int(torch.bincount(labels).max())} images each; the test split is "
              f"not read). {platform.machine()}, {a.threads} thread(s), "
              f"{(time.time() - t0) / 60:.1f} min.", "",
              "Costs: magnitude |w|; obd -g*w + F*w^2/2; consistency the same with g shrunk by its consistency "
              "across batches; curvature F*w^2/2 alone; taylor -g*w.", "",
              f"Reproduce: `{command('removal_orders_vit.py', ROOT, argv, placed=('--out',), dropped=('--data-dir',))}`"]
    text = "\n".join(lines) + "\n"
    write_text(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
