"""Line-search rollback cost on torchvision resnet50 (about 25.5 million synapses, random weights).

Before a line-searched edit the controller saves what the edit can change, and restores it when
the held-out loss rejects the edit. Measures, side by side in one process, for a plan of about 1% of
the synapses (half pruned, half grown, spread over every layer) with Adam attached:
- bytes held by the old snapshot (a clone of every edited layer's whole mask, weight and Adam
  moments) and by the sparse one (adaptive.rollback.EditSnapshot: the plan's positions only);
- time of snapshot + restore, old and new, alternately (old first in even repeats, new first in
  odd ones; the trial edit between them is not timed);
- that both restores leave the bits (masks, weights, moments) as they were before the edit.
The old path is reproduced here by ``_old_snapshot`` / ``_old_restore`` (the controller code before
the sparse snapshot), for this comparison only.

    python recipes/benchmarks/line_search_rollback.py [--fraction 0.01] [--repeats 3] [--ensemble synapse]
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
from adaptive.optim_state import restore_state, snapshot_state  # noqa: E402
from adaptive.policies.base import EditPlan  # noqa: E402
from adaptive.rollback import EditSnapshot  # noqa: E402
from recipes.benchmarks._reproduce import command, machine  # noqa: E402


def _pct(fraction: float, spec: str = ".2f") -> str:
    """``fraction`` as a percentage, with the digits it needs where it is not 0 or 100 (fmt_unsaturated): an
    overhead of 0.004% is not "0.00%", none."""
    return fmt_unsaturated(100 * fraction, spec) + "%"


def _old_snapshot(conn, plan):
    """The controller's snapshot before this benchmark's change: whole layers."""
    touched = set(plan.prune) | set(plan.grow)
    masks = {n: conn.masks[n].clone() for n in touched}
    weights = {n: conn.params[n].detach().clone() for n in touched} if conn.mode == "train" else {}
    state = snapshot_state([r() for r in conn._optimizers], [conn.params[n] for n in touched])
    return masks, weights, state


@torch.no_grad()
def _old_restore(conn, saved):
    masks, weights, state = saved
    conn.set_masks(masks)
    for n, w in weights.items():
        conn.params[n].copy_(w)
    restore_state(state)
    conn.apply()


def _old_nbytes(saved):
    masks, weights, state = saved
    held = [*masks.values(), *weights.values(), *(e[3] for e in state if e[2] is not None)]
    return sum(t.numel() * t.element_size() for t in held)


def _plan(conn, fraction, seed=0):
    """``fraction`` of every layer's ensembles edited: half of them live ones pruned, half absent ones grown."""
    g = torch.Generator().manual_seed(seed)
    prune, grow = {}, {}
    for n, e in conn.ensemble_masks().items():
        e = e.reshape(-1)
        k = max(1, int(round(e.numel() * fraction / 2)))
        live, absent = e.nonzero().squeeze(1), (~e).nonzero().squeeze(1)
        prune[n] = live[torch.randperm(live.numel(), generator=g)[:k]]
        grow[n] = absent[torch.randperm(absent.numel(), generator=g)[:k]]
    return EditPlan(prune=prune, grow=grow)


def _bits(conn, opt):
    out = [m.clone() for m in conn.masks.values()]
    out += [p.detach().clone().view(torch.int32) for p in conn.params.values()]
    out += [v.clone().view(torch.int32) for p in conn.params.values() for v in opt.state[p].values() if v.shape == p.shape]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fraction", type=float, default=0.01, help="share of every layer's ensembles the plan edits")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ensemble", nargs="+", default=["synapse", "neuron"])
    ap.add_argument("--out", type=path_type(), default=os.path.join(os.path.dirname(__file__), "results", "line_search_rollback.md"))
    args = ap.parse_args()
    if not 0 < args.fraction <= 1 or args.repeats < 1:
        ap.error("--fraction must be in (0, 1] and --repeats >= 1")
    rows = []
    for ensemble in args.ensemble:
        torch.manual_seed(0)
        model = torchvision.models.resnet50()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        conn = adaptive.Connectome(model, ensemble=ensemble)
        ctrl = adaptive.Controller(conn, opt, policy="set", density=0.5, budget="uniform", update_every=10**9, seed=0)
        F.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 1])).backward()
        opt.step()  # Adam's moments in place
        plan = _plan(conn, args.fraction)
        times = {"old": [], "new": []}  # (snapshot, restore) seconds
        nbytes, after = {}, {}
        before = _bits(conn, opt)  # what a restore must give back, bit for bit
        for r in range(args.repeats):
            for how in ("old", "new") if r % 2 == 0 else ("new", "old"):  # neither always on the other's caches
                t0 = time.perf_counter()
                saved = _old_snapshot(conn, plan) if how == "old" else EditSnapshot(conn, plan)
                t1 = time.perf_counter()
                ctrl._set_plan_masks(plan)  # the trial edit, not timed
                t2 = time.perf_counter()
                _old_restore(conn, saved) if how == "old" else saved.restore()
                times[how].append((t1 - t0, time.perf_counter() - t2))
                nbytes[how] = _old_nbytes(saved) if how == "old" else saved.nbytes()
                if r == 0:
                    after[how] = _bits(conn, opt)
                del saved
        same = all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(before, after["old"], after["new"]))
        positions = sum(p.numel() for p in EditSnapshot(conn, plan).positions.values())
        med = {how: [statistics.median(t[i] for t in times[how]) for i in (0, 1)] for how in times}
        med = {how: (s, r, statistics.median(a + b for a, b in times[how])) for how, (s, r) in med.items()}
        rows.append((ensemble, conn.num_synapses(), positions, nbytes["old"], nbytes["new"], med["old"], med["new"], same))
        conn.detach()
        del ctrl, conn, opt, model
    hdr = ("| ensemble | synapses | synapses the plan edits | old snapshot (MB) | sparse snapshot (MB) | bytes sparse / old "
           "| snapshot (s) old / sparse | restore (s) old / sparse | snapshot+restore (s) old / sparse "
           "| time sparse / old | same bits after restore |")
    lines = [hdr, "|" + "---|" * 11]
    for e, syn, pos, ob, nb, ot, nt, same in rows:
        lines.append(f"| {e} | {syn:,} | {pos:,} ({_pct(pos / syn)}) | {ob / 2**20:.1f} | {nb / 2**20:.2f} | {_pct(nb / ob)} "
                     f"| {ot[0]:.3f} / {nt[0]:.3f} | {ot[1]:.3f} / {nt[1]:.3f} | {ot[2]:.3f} / {nt[2]:.3f} "
                     f"| {nt[2] / ot[2]:.0%} | {'yes' if same else 'NO'} |")
    text = (
        f"# Line-search rollback: torchvision resnet50 (random weights), density 0.5, Adam, a plan editing "
        f"{args.fraction:.0%} of every layer's ensembles, {torch.get_num_threads()} thread(s), median of {args.repeats}\n\n"
        + "\n".join(lines) +
        "\n\nOld: a clone of every edited layer's whole mask, weight and Adam moments (the controller before the sparse "
        "snapshot; reproduced in this script only). Sparse: adaptive.rollback.EditSnapshot, the mask bit, weight and "
        "moments at each position the plan can change, plus the position (int64): 21 B per edited synapse with Adam "
        "against 13 B per synapse of every edited layer. Time: snapshot plus restore (set the masks back, put back "
        "weights and moments, conn.apply()); the trial edit between them is not timed. Both restores set the masks back "
        "through the connectome (a pass over each edited layer's mask, weight and moments) and conn.apply() (a pass "
        "over every pruned layer): that shared cost, not the copies, is most of a restore. Same bits: both restores "
        "leave the masks, weights and Adam moments bit for bit as they were before the trial edit.\n\n"
        f"Machine: {machine()}.\n\n"
        f"Reproduce: `{command('line_search_rollback.py', ROOT, threads=True, placed=('--out',))}`\n"
    )
    print(text)
    write_text(args.out, text)


if __name__ == "__main__":
    main()
