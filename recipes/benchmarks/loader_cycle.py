"""Per-batch cost of :class:`adaptive.data.cycle.LoaderCycle` against iterating the loader itself.

Mask-only optimisation (``optimize_connectome``, ``recipes/prune_pretrained.py``) and the edge-popup
baseline draw their batches through a ``LoaderCycle`` (the DST recipe's loop does not: Accelerate
restores its own loader position), which copies the random states
(torch, Python, NumPy, the loader's generators) before each batch request, so that a checkpoint can
replay the exact batches (see the module's docstring). This benchmark times that bookkeeping where it
is paid, side by side in one process:

- ``plain``: ``next()`` on the loader's own iterator, a new one at the end of each pass;
- ``LoaderCycle``: ``next()`` on a ``LoaderCycle`` over the same loader;
- the random-state copy alone (``_capture``), the part LoaderCycle adds per batch;
- a reference step: forward and backward of LeNet-300-100 on one batch of 128 MNIST-sized inputs
  (a small network; a larger one makes the overhead smaller still), timed
  in the same rounds as the loaders, so that 'added / step' is a ratio within each round.

Loaders (synthetic tensors, MNIST-sized, batch 128, shuffled): a plain ``DataLoader``, and the same
prepared by Accelerate (a single process here), which reads one batch ahead. The variants run
interleaved, plain and LoaderCycle alternating which runs first and the reference step running
before the pair in two rounds of every 4 and after it in the other two (``_order``); the table
reports medians over rounds.

    python recipes/benchmarks/loader_cycle.py            # about a minute
    python recipes/benchmarks/loader_cycle.py --quick    # a smoke run
Writes recipes/benchmarks/results/loader_cycle.md (``--out`` to write elsewhere).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from adaptive.cli import path_type  # noqa: E402
from adaptive.metrics import fmt_unsaturated  # noqa: E402
from adaptive.atomic import write_text  # noqa: E402
from adaptive.data.cycle import LoaderCycle, _capture  # noqa: E402
from adaptive.models import build_model  # noqa: E402
from recipes.benchmarks._reproduce import command  # noqa: E402

RESULTS = ROOT / "recipes" / "benchmarks" / "results" / "loader_cycle.md"


class _Plain:
    """The loader's own iterator, restarted at the end of each pass (what a loop without resume does)."""

    def __init__(self, loader):
        self.loader, self.it = loader, iter(loader)

    def __next__(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)


def _loaders(n: int, batch: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
    out = {"DataLoader": lambda: DataLoader(ds, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(1))}
    try:
        from accelerate import Accelerator

        acc = Accelerator(cpu=True)
        out["Accelerate-prepared"] = lambda: acc.prepare(DataLoader(ds, batch_size=batch, shuffle=True))
    except ImportError:  # accelerate is a dependency of the project; tolerate its absence in a bare env
        pass
    return out


def _time_batches(source, k: int) -> float:
    """Seconds per batch over ``k`` batches drawn from ``source`` (its first batch already drawn)."""
    t = time.perf_counter()
    for _ in range(k):
        next(source)
    return (time.perf_counter() - t) / k


def _time_capture(loader, k: int) -> float:
    t = time.perf_counter()
    for _ in range(k):
        _capture(loader)
    return (time.perf_counter() - t) / k


def _time_step(model, x, y, k: int) -> float:
    t = time.perf_counter()
    for _ in range(k):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    return (time.perf_counter() - t) / k


def _order(r: int) -> list:
    """Round ``r``'s order of the timed parts, over a cycle of 4 rounds: plain and LoaderCycle alternate which
    runs first, and the reference step runs before the pair in two rounds and after it in the other two, so that
    each loader runs right after the step in one round of the 4 and right after the other loader in two. (A
    rotation of the three put plain right after the step in two rounds of three and LoaderCycle in none.)"""
    pair = ["plain", "LoaderCycle"] if r % 2 == 0 else ["LoaderCycle", "plain"]
    return pair + ["step"] if (r // 2) % 2 == 0 else ["step"] + pair


def run(rounds: int, batches: int, n: int, batch: int) -> tuple:
    torch.manual_seed(0)
    model = build_model("lenet300")
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    _time_step(model, x, y, 3)  # warm-up
    rows, steps = [], []
    for name, make in _loaders(n, batch).items():
        loader = make()
        sources = {"plain": _Plain(loader), "LoaderCycle": LoaderCycle(loader)}
        for s in sources.values():
            next(s)  # start the worker-free iterators before timing
        timers = {k: (lambda s=s: _time_batches(s, batches)) for k, s in sources.items()}
        timers["step"] = lambda: _time_step(model, x, y, batches)  # the reference, in the same rounds
        times = {k: [] for k in timers}
        times["capture"], ratios, added, of_step = [], [], [], []
        for r in range(rounds):
            order = _order(r)
            got = {}
            for k in order:
                got[k] = timers[k]()
                times[k].append(got[k])
            times["capture"].append(_time_capture(loader, batches))
            ratios.append(got["LoaderCycle"] / got["plain"])
            added.append(got["LoaderCycle"] - got["plain"])
            of_step.append(added[-1] / got["step"])
        med = {k: statistics.median(v) for k, v in times.items()}
        steps += times["step"]
        rows.append({"loader": name, "plain_us": med["plain"] * 1e6, "cycle_us": med["LoaderCycle"] * 1e6,
                     "extra_us": statistics.median(added) * 1e6, "capture_us": med["capture"] * 1e6,
                     "ratio": statistics.median(ratios), "step_ms": med["step"] * 1e3,
                     "of_step": statistics.median(of_step)})
    return rows, statistics.median(steps)


def table(rows, args, seconds: float, argv=None) -> str:
    """The results file: ``rows`` of :func:`run` under the command that ran (``argv``, default
    ``sys.argv[1:]``: every option it was given, not only ``--quick``)."""
    lines = [
        "# LoaderCycle: per-batch cost against iterating the loader itself",
        "",
        f"Generated by `{command('loader_cycle.py', ROOT, argv, placed=('--out',))}` (do not edit by hand).",
        f"Synthetic MNIST-sized tensors ({args.n:,} examples), batch {args.batch}, shuffled; medians over "
        f"{args.rounds} interleaved rounds of {args.batches} batches. 'added' is LoaderCycle minus plain, the ratio LoaderCycle / plain and added / step, each taken within a round (median over rounds), so they need not equal the medians' difference or quotient on a loaded machine; "
        "'random-state copy' times the copy LoaderCycle takes before each request on its own. The reference "
        "step is LeNet-300-100's forward and backward on one batch, timed in the same rounds (plain and LoaderCycle "
        "alternating which runs first, the step before them in two rounds of every 4 and after them in the other two).",
        "",
        "| loader | plain µs/batch | LoaderCycle µs/batch | added µs/batch | random-state copy µs | "
        "LoaderCycle / plain | reference step ms | added / step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['loader']} | {r['plain_us']:.1f} | {r['cycle_us']:.1f} | {r['extra_us']:.1f} | "
                     f"{r['capture_us']:.1f} | {r['ratio']:.2f} | {r['step_ms']:.2f} | {fmt_unsaturated(100 * r['of_step'], '.1f')}% |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += ["", f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} thread(s), CPU; "
              f"load average at the end {load:.1f} on {os.cpu_count()} cores; {seconds:.0f} s.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 3 rounds of 20 batches of 4096 examples, where those options are not given")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 15; 3 with --quick)")
    ap.add_argument("--batches", type=int, help="batches per variant per round (default 200; 20 with --quick)")
    ap.add_argument("--n", type=int, help="examples in the synthetic dataset (default 60000; 4096 with --quick)")
    ap.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--out", type=path_type(), default=RESULTS, help=f"where to write the table (default {RESULTS})")
    args = ap.parse_args(argv)
    # an option given explicitly wins over --quick's smaller default
    defaults = {"rounds": 3, "batches": 20, "n": 4096} if args.quick else {"rounds": 15, "batches": 200, "n": 60000}
    for opt, value in defaults.items():
        if getattr(args, opt) is None:
            setattr(args, opt, value)
    for opt in ("rounds", "batches", "n", "batch", "threads"):
        if getattr(args, opt) < 1:
            ap.error(f"--{opt} must be a positive integer, got {getattr(args, opt)}")
    if args.n < args.batch:
        ap.error(f"--n ({args.n}) must hold at least one batch of --batch {args.batch}")
    torch.set_num_threads(args.threads)
    t = time.time()
    rows, _ = run(args.rounds, args.batches, args.n, args.batch)
    text = table(rows, args, time.time() - t, argv)
    print(text)
    write_text(args.out, text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
