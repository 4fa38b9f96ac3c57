"""Does every policy meet the requested density, counted in synapses, when ensembles differ in size?

LeNet-5 on scikit-learn's digits (bundled, no download): conv kernels of 25 synapses sit beside
Linear layers whose "kernels" are single weights, neurons have different fan-in, and block:4x4
has smaller edge blocks; the last column mixes granularities by layer (per-layer rules). For every
policy x budget x ensemble, the controller trains for
``--steps`` steps (Adam, an update every 10 steps, end_step = steps - 10) at ``--density``, and the
table gives the live synapses against the target, the miss, and the largest ensemble: a policy
meets the density when it misses by at most one ensemble (half an ensemble per layer for the layer
budgets, as documented). Exits non-zero when a run misses by more.

    python recipes/benchmarks/ensemble_density.py            # about a minute on 2 cores
    python recipes/benchmarks/ensemble_density.py --quick    # a smoke run: 2 policies x 1 budget x 2 ensembles
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import adaptive  # noqa: E402
from adaptive.cli import path_type  # noqa: E402
from adaptive.atomic import write_text  # noqa: E402
from adaptive.data import get_dataloaders  # noqa: E402
from adaptive.models import build_model  # noqa: E402
from recipes.benchmarks._reproduce import command, machine  # noqa: E402

POLICIES = ["magnitude", "gmp", "set", "rigl", "utility", "balanced"]
BUDGETS = ["global", "uniform", "erk"]
# the last: per-layer rules, three granularities in one connectome (kernels, neurons, single weights)
ENSEMBLES = ["synapse", "kernel", "neuron", "block:4x4", "conv*=kernel;fc1=neuron;synapse"]


def run(policy, budget, ensemble, density, steps):
    torch.manual_seed(0)
    data = get_dataloaders("digits", batch_size=64, seed=0)
    model = build_model("lenet5", num_classes=data.num_classes, in_shape=data.in_shape)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    conn = adaptive.Connectome(model, ensemble=ensemble)
    adaptive.Controller(conn, opt, policy=policy, density=density, budget=budget, update_every=10,
                        edit_fraction=0.3, end_step=steps - 10, seed=0)
    step = 0
    while step < steps:
        for x, y in data.train:
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            step += 1
            if step == steps:
                break
    sizes = [int(conn.granularities[n].ensemble_sizes(torch.Size(conn.layers[n].shape)).max()) for n in conn.names]
    target = int(round(density * conn.num_synapses()))
    empty = [n.removesuffix(".weight") for n, m in conn.masks.items() if not m.any()]
    return conn.num_live(), target, max(sizes), empty


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=70)
    ap.add_argument("--quick", action="store_true", help="a smoke run: rigl and utility, global budget, synapse and "
                    "neuron ensembles (checks the script, not every policy)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2; the table's figures "
                    "depend on it: the gradient-based policies' sums add up in another order)")
    ap.add_argument("--out", type=path_type(), default=os.path.join(os.path.dirname(__file__), "results", "ensemble_density.md"))
    args = ap.parse_args()
    if not 0.0 < args.density <= 1.0:
        raise SystemExit(f"--density must be in (0, 1], got {args.density}")
    if args.steps < 20:
        raise SystemExit("--steps must be at least 20 (updates every 10 steps, end_step = steps - 10)")
    if args.threads < 1:
        raise SystemExit(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    lines = ["# Densities in synapses when ensembles differ in size (LeNet-5, digits)", "",
             "| policy | budget | ensemble | live | target | miss | largest ensemble | met | layers left empty |",
             "|---|---|---|---:|---:|---:|---:|---|---|"]
    missed = cut = 0
    policies, budgets, ensembles = (["rigl", "utility"], ["global"], ["synapse", "neuron"]) if args.quick else (
        POLICIES, BUDGETS, ENSEMBLES)
    for policy in policies:
        for budget in budgets:
            for ens in ensembles:
                with warnings.catch_warnings():  # counted in the table instead
                    warnings.filterwarnings("ignore", message=".*no live synapse left")
                    live, target, biggest, empty = run(policy, budget, ens, args.density, args.steps)
                ok = abs(live - target) <= biggest
                missed += not ok
                cut += bool(empty)
                lines.append(f"| {policy} | {budget} | {ens} | {live} | {target} | {live - target:+d} | {biggest} | "
                             f"{'yes' if ok else 'NO'} | {', '.join(empty) or '-'} |")
    lines += ["", f"density {args.density}, {args.steps} steps, Adam lr 1e-3, batch 64, seed 0; {missed} run(s) missed "
              f"by more than one ensemble; {cut} run(s) left a layer with no live synapse (the network cut there: "
              f"met in synapses, but useless); {(time.time() - t0) / 60:.1f} min. Machine: {machine()}.", "",
              f"Reproduce: `{command('ensemble_density.py', ROOT, placed=('--out',))}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    write_text(args.out, text)
    raise SystemExit(1 if missed else 0)


if __name__ == "__main__":
    main()
