"""Controller cost on torchvision resnet50 (about 25.5 million synapses).

Measures, side by side in one process:
- one training step (forward, backward, SGD-momentum step) with the connectome attached;
- the per-step cost of observing utility (the gradient-statistics update the controller runs in
  the optimizer's pre-step hook), as a ratio to that training step;
- one full controller update (reduce, scores, top-k, edit, optimizer repair, event), for each policy: swaps at a
  fixed density (rigl, utility with three estimators, balanced) and pruning from dense (threshold, gmp);
- memory per synapse of the utility state and of the connectome.
Targets (issue 3): observing <= 3% of a training step; an update <= 1 s on 2 cores.

    python recipes/benchmarks/controller.py [--batch 8] [--size 224] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import adaptive  # noqa: E402
from adaptive.cli import path_type  # noqa: E402
from adaptive.metrics import fmt_unsaturated  # noqa: E402
from adaptive.atomic import write_text  # noqa: E402
from recipes.benchmarks._reproduce import command, machine  # noqa: E402


def _pct(fraction: float, spec: str = ".2f") -> str:
    """``fraction`` as a percentage, with the digits it needs where it is not 0 or 100 (fmt_unsaturated): an
    overhead of 0.004% is not "0.00%", none."""
    return fmt_unsaturated(100 * fraction, spec) + "%"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5, help="timed iterations per policy (median), after one warm-up")
    ap.add_argument("--out", type=path_type(), default=os.path.join(os.path.dirname(__file__), "results", "controller.md"))
    args = ap.parse_args()
    for k in ("batch", "size", "repeats"):
        if getattr(args, k) < 1:
            ap.error(f"--{k} must be a positive integer, got {getattr(args, k)}")
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch,))
    rows = []
    # swaps at a fixed density (rigl, utility, balanced: sparse from the start, 10% of the live swapped per
    # update); pruning from dense to the density (threshold's cubic pace, gmp's schedule: end_step falls just after
    # the last timed update, so every update prunes a share and the last reaches 0.5). An update every second step:
    # the second-order estimators need a window of two batches or more (they warn at one)
    every = 2
    paced = {"end_step": every * (args.repeats + 1) + 1}
    for policy, est, extra in [("rigl", None, {}), ("utility", "obd", {}), ("utility", "consistency", {}),
                               ("utility", "curvature", {}), ("balanced", "curvature", {}),
                               ("threshold", "curvature", paced), ("gmp", None, paced)]:
        torch.manual_seed(1)  # every policy starts from the same dense weights and a fresh optimizer
        model = torchvision.models.resnet50()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        conn = adaptive.Connectome(model)
        ctrl = adaptive.Controller(conn, policy=policy, estimator=est, density=0.5, budget="global",
                                   update_every=every, edit_fraction=0.1, edit_decay="constant", seed=0, **extra)
        conn.attach(opt)
        step_t, obs_t, upd_t, pruned = [], [], [], []
        for r in range(-1, args.repeats):  # r = -1: a warm-up iteration (first-call costs), not timed
            for i in range(every):  # the training steps of one window, the last one an update
                t0 = time.perf_counter()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                t1 = time.perf_counter()
                ctrl.observe()  # what the pre-step hook does
                t2 = time.perf_counter()
                opt.step()
                opt.zero_grad(set_to_none=False)
                t3 = time.perf_counter()
                hot = conn._hot  # the hot path's 0/1 integer mask cache while attached (an edit may drop it)
                cache_bytes = 0 if hot is None else sum(f.numel() * f.element_size() for f in hot[2])
                t4 = time.perf_counter()
                event = ctrl.step()  # the controller's step after the optimizer's: at the window's last, an update
                t5 = time.perf_counter()
                if r >= 0:
                    step_t.append((t1 - t0) + (t3 - t2))
                    obs_t.append(t2 - t1)
                    if i == every - 1:
                        if event is None:
                            raise RuntimeError(f"{policy}: no update at step {ctrl.step_count}, the window's last")
                        upd_t.append(t5 - t4)
                        pruned.append(event["pruned"])
        conn.detach()
        step, obs, upd = statistics.median(step_t), statistics.median(obs_t), statistics.median(upd_t)
        state = ctrl.stats.nbytes_per_synapse() if ctrl.stats is not None else 0.0
        label = f"{policy}/{est}" if est else ("gmp/magnitude" if policy == "gmp" else f"{policy}/gradient")
        rows.append((label, conn.num_synapses(), step, obs, obs / step, upd, state,
                     f"{min(pruned):,}" if min(pruned) == max(pruned) else f"{min(pruned):,}-{max(pruned):,}",
                     conn.density()))
        ctrl.stats = None
    hdr = ("| policy/estimator | synapses | train step (s) | observe (s) | observe / step | update (s) | "
           "utility state (B/synapse) | pruned per update | density at the end |")
    lines = [hdr, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]:,} | {r[2]:.3f} | {r[3]:.4f} | {_pct(r[4])} | {r[5]:.3f} | {r[6]:.1f} | {r[7]} | "
                     f"{r[8]:.3f} |")
    worst_obs, worst_upd = max(r[4] for r in rows), max(r[5] for r in rows)  # every policy must meet each target

    def verdict(ok):
        return "met" if ok else "MISSED"

    mask_bytes = sum(m.numel() * m.element_size() for m in conn.masks.values()) / conn.num_synapses()
    last_bytes = sum(m.numel() * m.element_size() for m in conn._last_set.values()) / conn.num_synapses()
    text = (
        f"# Controller cost: torchvision resnet50, batch {args.batch} x {args.size}x{args.size}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}\n\n" + "\n".join(lines) +
        f"\n\nConnectome bool masks: {mask_bytes:.1f} B/synapse in memory and {last_bytes:.1f} B/synapse for its copy "
        f"of the masks as last set, plus a {cache_bytes / conn.num_synapses():.1f} B/synapse cache of the masks as 0/1 integers of the weights' width while attached to "
        "an optimizer (see overhead.md: Connectome.resident_bytes); 1 bit/synapse on disk. Update = global top-k over all "
        "layers, SGD momentum repaired, no line search (unordered selection), an update every second controller step "
        "(update_every=2, a window of two batches): rigl, utility and balanced start at density 0.5 and swap 10% of the live synapses per update "
        "(balanced only the pairs worth swapping); threshold (cubic pace) and gmp (cubic schedule) start dense and prune "
        f"a share at every update, reaching 0.5 at the last (end_step {paced['end_step']}; threshold may also swap up "
        "to 10% beyond its pace, those below its prune boundary). Each policy's timings follow one untimed warm-up iteration (step, observe, update).\n"
        f"Targets: observe <= 3% of a training step ({verdict(worst_obs <= 0.03)}: at most {_pct(worst_obs)} here); "
        f"update <= 1 s on 2 cores ({verdict(worst_upd <= 1.0)}: at most {worst_upd:.3f} s here, on "
        f"{torch.get_num_threads()} thread(s)).\n\n"
        f"Machine: {machine()}.\n\n"
        f"Reproduce: `{command('controller.py', ROOT, threads=True, placed=('--out',))}`\n"
    )
    print(text)
    write_text(args.out, text)


if __name__ == "__main__":
    main()
