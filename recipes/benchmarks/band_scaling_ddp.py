"""Time per training step of :class:`adaptive.diagnostics.BandGradientScaler` under DDP on two processes.

Under a process group, each scaled layer's gradient hook all-reduces its band statistics (two float64
numbers per band) inside the backward pass, blocking, while DDP's own gradient buckets are in flight:
this benchmark measures what that costs a training step, side by side in one run of two processes
(gloo, CPU, one thread each). One step is forward + backward + SGD step (momentum 0.9) on a fixed
batch, every process its own random batch. Every variant trains its own copy of the same initial
model, each in its own DDP wrapper; the variants run interleaved (the order rotates every round),
each sample is the slower process's wall time over a few steps, and a ratio is a variant's sample
over the plain DDP sample of the same round (median over rounds; IQR shown).

Variants:
  DDP                 the model alone in DDP (a second copy measures the noise floor of the ratio)
  DDP + scaler        BandGradientScaler as the library builds it: per layer of several bands, the
                      statistics, one all-reduce of them, the scales applied (a layer of one band,
                      whose scale is 1, has no gradient hook: a forward pre-hook counts its calls)
  ... no all-reduce   the same hooks, each process sizing the bands by its own gradient only: NOT
                      exact (the processes' scales part); the floor any design that computes each
                      layer's statistics in its hook could reach, so the gap to the row above is
                      what the per-layer all-reduces cost
  ... one-band layers hooked too
                      the library's hook on every layer, one band or several, as it was before layers of
                      one band were left alone: the same gradients bit for bit (a one-band scale is
                      exactly 1), so the gap to "DDP + scaler" is what skipping them saves
  ... previous hook   the hook before its statistics were summed over all entries (5ef8121,
                      verbatim: statistics gathered by boolean indexing, the scaled gradient summed
                      from 0): the library's hook gives the same scales and running sizes bit for
                      bit, and the same gradients (but for the sign of a zero entry: 0 + -0.0 is +0.0);
                      on every layer, one band or several, as then

The table also gives one all-reduce of a layer's statistics timed alone (outside backward), to
compare with the per-layer cost inside backward (where it may wait behind DDP's bucket traffic).

Models: DenseCat (mlp, the model the scaler is for: depth 8, width 32, MNIST-sized inputs, its
default layers: every layer it reports depths for, all but the first reading several) and ResNet-20
(CIFAR; every Conv/Linear scaled, depths traced: each reads one band, so its scales are 1 and the
library hooks none of them; hooked, as before, the whole scaler was overhead).

    python recipes/benchmarks/band_scaling_ddp.py              # about two minutes on 2 cores
    python recipes/benchmarks/band_scaling_ddp.py --quick      # a smoke run
    accelerate launch --multi_gpu --num_processes 2 recipes/benchmarks/band_scaling_ddp.py

Run plainly, it starts itself twice as two processes (plain subprocesses, no torch.multiprocessing,
meeting at a file in a temporary folder: no port to collide with another launch); under ``accelerate launch`` or
``torchrun`` (``WORLD_SIZE`` set) it joins the launcher's process group instead (two processes; gloo,
on the CPU, whatever devices there are). Writes recipes/benchmarks/results/band_scaling_ddp.md
(``--out`` to write elsewhere).
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from adaptive.cli import path_type  # noqa: E402
from adaptive.atomic import write_text  # noqa: E402
from adaptive.diagnostics import BandGradientScaler  # noqa: E402
from adaptive.diagnostics._common import live_mask, scaler_suspended  # noqa: E402
from adaptive.distributed import collective_device, is_distributed  # noqa: E402
from adaptive.models import build_model  # noqa: E402

# (the helper beside this file, by its path from ROOT: see threshold_pace.py)
from recipes.benchmarks._reproduce import shown_args  # noqa: E402
from recipes.benchmarks._checks import check  # noqa: E402

RESULTS = ROOT / "recipes" / "benchmarks" / "results" / "band_scaling_ddp.md"


class LocalStats(BandGradientScaler):
    """Each process sizes the bands by its own gradient: no all-reduce (not exact: the scales part)."""

    @staticmethod
    def _all_processes(stats):
        return stats


class EveryLayerHooked(BandGradientScaler):
    """The library's hook on every layer, a layer of one band too (as before such layers were left alone)."""

    @staticmethod
    def _hooked(bands):
        return True


class PreviousHook(EveryLayerHooked):
    """The hook as it was before the statistics went through :meth:`_band_stats` (commit 5ef8121),
    verbatim: the statistics gathered by boolean indexing (the kept entries copied out three times),
    the entries' sizes copied by ``cat``, the scaled gradient summed from 0 (one more pass); on every
    layer, one band or several, as then."""

    def _hook(self, st, weight):
        weight_id = id(weight)

        def scale(grad):
            if scaler_suspended(weight_id) or st["splitting"] or grad.is_meta:
                return None
            st["tied"].check(st["name"], "BandGradientScaler", "scale")
            parts, index = self._call_parts(st, grad, weight)
            a = torch.cat([p.detach().abs().reshape(-1) for p in parts])
            flat = index.reshape(-1)
            nb = len(st["bands"])
            nz = (a > 0) & torch.isfinite(a)
            live = live_mask(self.conn, weight, a.device)
            if live is not None:
                nz &= live.expand(len(parts), *live.shape).reshape(-1)
            stats = torch.zeros(2, nb, dtype=torch.float64, device=a.device)
            stats[0].index_add_(0, flat[nz], a[nz].double().log())
            stats[1].index_add_(0, flat[nz], torch.ones_like(flat[nz], dtype=torch.float64))
            if is_distributed():
                reduced = stats.to(collective_device(stats))
                dist.all_reduce(reduced)
                stats = reduced.to(stats.device)
            logs, cnt = stats
            have = cnt > 0
            cur = torch.where(have, logs / cnt.clamp_min(1), torch.zeros_like(logs))
            prev, seen = self._running_on(st, cur.device)
            new = torch.where(have & seen, self.momentum * prev + (1 - self.momentum) * cur, torch.where(have, cur, prev))
            seen = seen | have
            st["log_typical"], st["seen"] = new, seen
            st["scale"] = self._scale(new, seen)
            s = st["scale"].to(grad.dtype)
            return sum(p * s[i] for p, i in zip(parts, index))

        return scale


def _densecat():
    return build_model("densecat", num_classes=10), None


def _resnet20():
    model = build_model("resnet20", num_classes=10)
    return model, [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


# --models name: (label, builder -> (model, layers or None for its default), input shape, batch)
CASES = {
    "densecat": ("DenseCat mlp (depth 8, width 32)", _densecat, (1, 28, 28), 128),
    "resnet20": ("ResNet-20 (CIFAR)", _resnet20, (3, 32, 32), 32),
}
PLAN = {"densecat": (40, 4), "resnet20": (16, 2)}  # rounds, steps per sample: one to two minutes each on 2 cores
GRACE_S = 30.0  # seconds a process may outlive the first failed one (see _launch_two)
SCALERS = {"DDP + scaler": BandGradientScaler, "DDP + scaler, no all-reduce (not exact)": LocalStats,
           "DDP + scaler, one-band layers hooked too": EveryLayerHooked, "DDP + scaler, previous hook": PreviousHook}
VARIANTS = ("DDP", "DDP, second copy (noise floor)", *SCALERS)


class Runner:
    """One model copy in its own DDP wrapper, its optimizer and (perhaps) a scaler on it."""

    def __init__(self, name, base, layers, x, y):
        self.name, self.x, self.y = name, x, y
        self.model = DDP(copy.deepcopy(base))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.scaler, self.times = None, []
        if name in SCALERS:
            self.scaler = SCALERS[name](self.model, layers=layers)

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.x), self.y).backward()
        self.opt.step()


def _slowest(seconds: float) -> float:
    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _allreduce_alone(nb: int, reps: int) -> float:
    """Seconds of one blocking all-reduce of a ``(2, nb)`` float64 tensor, timed alone (median)."""
    stats, times = torch.ones(2, nb, dtype=torch.float64), []
    for _ in range(reps):
        dist.barrier()
        t = time.perf_counter()
        dist.all_reduce(stats)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _same_weights(a, b) -> bool:
    """Whether the DDP models ``a`` and ``b`` hold the same weights bit for bit on every process (the library's
    scaler and the one hooking one-band layers too, after the same steps: they must); refused otherwise."""
    same = all(torch.equal(p.detach().reshape(-1).view(torch.uint8), q.detach().reshape(-1).view(torch.uint8))
               for p, q in zip(a.parameters(), b.parameters()))
    flag = torch.tensor([int(same)])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    check(flag.item(), "the library's scaler and the one hooking one-band layers too trained other weights")
    return True


def bench_case(case, rounds, per_sample, warmup, progress) -> dict:
    label, builder, shape, batch = CASES[case]
    me = dist.get_rank()
    torch.manual_seed(0)
    base, layers = builder()
    g = torch.Generator().manual_seed(10 + me)  # another batch on every process
    x, y = torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g)
    runners = [Runner(v, base, layers, x, y) for v in VARIANTS]
    for r in runners:
        for _ in range(warmup):
            r.step()
    for k in range(rounds):
        for r in runners[k % len(runners):] + runners[: k % len(runners)]:
            dist.barrier()
            t = time.perf_counter()
            for _ in range(per_sample):
                r.step()
            r.times.append(_slowest((time.perf_counter() - t) / per_sample))
        if progress and me == 0:
            print(f"{label}: round {k + 1}/{rounds}", file=sys.stderr, flush=True)
    exact = runners[2].scaler
    bands = max(len(st["bands"]) for st in exact.state.values())
    hooked = sum(st["hooked"] for st in exact.state.values())  # the layers of several bands: one all-reduce each
    out = {"label": label, "batch": batch, "shape": shape, "layers": len(exact.state), "hooked": hooked, "bands": bands,
           "params": sum(p.numel() for p in base.parameters()), "allreduce_s": _allreduce_alone(bands, 50),
           "plain_ms": 1e3 * statistics.median(runners[0].times), "rows": {},
           "same_weights": _same_weights(*(r.model for r in runners
                                           if r.name in ("DDP + scaler", "DDP + scaler, one-band layers hooked too")))}
    for r in runners[1:]:
        ratios = [t / p for t, p in zip(r.times, runners[0].times)]
        added = [t - p for t, p in zip(r.times, runners[0].times)]
        q = statistics.quantiles(ratios, n=4)
        agree = None
        if r.scaler is not None:  # every process's scales, the same? (the exact variants: they must be)
            mine = r.scaler.scales()
            every = [None] * dist.get_world_size()
            dist.all_gather_object(every, mine)
            agree = all(e == every[0] for e in every)
            check(agree or "not exact" in r.name, f"{r.name}: the processes' scales differ")
        out["rows"][r.name] = dict(times=r.times, ms=1e3 * statistics.median(r.times), ratio=statistics.median(ratios),
                                   q1=q[0], q3=q[2], added_ms=1e3 * statistics.median(added), agree=agree)
    return out


def fmt_table(results) -> str:
    lines = ["| model | params | scaled layers (most bands) | of them hooked (several bands) | batch per process | "
             "DDP ms/step | variant | ms/step | "
             "ratio to DDP (median) | IQR of ratio | added ms/step | scales agree across processes |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for res in results:
        first = True
        for name, row in res["rows"].items():
            head = [res["label"], f"{res['params']:,}", f"{res['layers']} ({res['bands']})", str(res["hooked"]),
                    f"{res['batch']} x {'x'.join(map(str, res['shape']))}", f"{res['plain_ms']:.1f}"]
            cells = head if first else [""] * len(head)
            first = False
            agree = "-" if row["agree"] is None else ("yes" if row["agree"] else "no")
            cells += [name, f"{row['ms']:.1f}", f"{row['ratio']:.3f}", f"{row['q1']:.3f}-{row['q3']:.3f}",
                      f"{row['added_ms']:.2f}", agree]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "The per-layer all-reduces inside backward, against one such all-reduce timed alone (outside "
              "backward, the processes met at a barrier first):", "",
              "| model | all-reduces per step (one-band layers hooked too) | all-reduce alone µs | their added ms/step "
              "(scaler less no all-reduce, median over rounds) "
              "| per all-reduce in backward µs |", "|---|---:|---:|---:|---:|"]
    for res in results:
        rows = res["rows"]
        comm = 1e3 * statistics.median(t - u for t, u in zip(rows["DDP + scaler"]["times"],
                                                             rows["DDP + scaler, no all-reduce (not exact)"]["times"]))
        each = f"{1e3 * comm / res['hooked']:.0f}" if res["hooked"] else "- (none)"
        lines.append(f"| {res['label']} | {res['hooked']} ({res['layers']}) | {1e6 * res['allreduce_s']:.0f} | "
                     f"{comm:.2f} | {each} |")
    return "\n".join(lines)


def worker(args, argv) -> None:
    """One process's part: every case, then (on rank 0) the table."""
    torch.set_num_threads(args.threads)
    t0 = time.time()
    plan = {k: (2, 1) if args.quick else (args.rounds or PLAN[k][0], PLAN[k][1]) for k in args.models}
    results = [bench_case(case, *plan[case], warmup=1 if args.quick else 3, progress=not args.no_progress)
               for case in args.models]
    if dist.get_rank() == 0:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        text = (
            "# BandGradientScaler under DDP: time per training step, two processes\n\n"
            "Generated by recipes/benchmarks/band_scaling_ddp.py (do not edit by hand; the command is under Reproduce); see its docstring "
            "for the variants.\nTwo processes (gloo, CPU, "
            f"{args.threads} thread each), each its own random batch; step = forward + backward + SGD(momentum 0.9) "
            "step; each variant its own copy of the same initial model in its own DDP wrapper, interleaved, the order "
            "rotating every round; a sample is the slower process's wall time per step; ratio and added time are "
            "taken against the plain DDP sample of the same round (median over rounds), so they need not match the "
            "medians' quotient on a loaded machine; the second DDP copy shows the noise floor of the ratio.\n\n"
            f"{fmt_table(results)}\n\n"
            "After the run, the copies under \"DDP + scaler\" and \"... one-band layers hooked too\" held the same "
            "weights bit for bit on both processes (checked: " + ", ".join(
                f"{r['label']} {'yes' if r['same_weights'] else 'no'}" for r in results) + ").\n\n"
            f"torch {torch.__version__}, {platform.processor() or platform.machine()}, CPU; load average at the end "
            f"{load:.1f} on {os.cpu_count()} cores (shared machine); {time.time() - t0:.0f} s. Rounds (steps per "
            "sample): " + ", ".join(f"{CASES[k][0]} {r} ({s})" for k, (r, s) in plan.items()) + ".\n\n"
            f"Reproduce: `python recipes/benchmarks/band_scaling_ddp.py{shown_args(argv, ROOT, placed=('--out',))}`\n")
        print(text)
        write_text(args.out, text)
        print(f"wrote {args.out}")


def _launch_two(argv, threads: int, command=None) -> None:
    """Run this script (or ``command``) as two processes (``WORLD_SIZE=2``, ``RANK``) meeting at a file in a
    temporary folder, removed after. A failed process stops the benchmark with the exit statuses: the other,
    which may wait for it at the rendezvous or a collective (gloo's timeout: half an hour), is given
    ``GRACE_S`` seconds to fail too, then killed; so is every process when this one is interrupted."""
    import subprocess

    command = command or [sys.executable, str(Path(__file__).resolve())]
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, WORLD_SIZE="2", OMP_NUM_THREADS=str(threads),
                   _BAND_SCALING_RENDEZVOUS=f"file://{os.path.join(tmp, 'rendezvous')}")
        procs = [subprocess.Popen([*command, *argv], env=dict(env, RANK=str(i))) for i in range(2)]
        try:
            codes = _wait_all(procs)
        finally:
            for p in procs:  # (an interrupt here: none is left running)
                if p.poll() is None:
                    p.kill()
                    p.wait()
    if any(codes):
        raise SystemExit(f"band_scaling_ddp.py: a process failed (exit statuses {codes}; negative: killed by that "
                         "signal" + (f", those still running {GRACE_S:g} s after the first failure" if
                                     any(c is not None and c < 0 for c in codes) else "") + ")")


def _wait_all(procs) -> list:
    """The processes' exit statuses once all have ended; after the first failure, those still running
    ``GRACE_S`` seconds later are killed."""
    failed_at = None
    while any(p.poll() is None for p in procs):
        if failed_at is None and any(p.poll() for p in procs):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.1)
    return [p.wait() for p in procs]


def _join_and_run(args, argv) -> None:
    """This process's part under a launcher (or :func:`_launch_two`), then an exit without teardown."""
    rendezvous = os.environ.get("_BAND_SCALING_RENDEZVOUS")
    if rendezvous:
        dist.init_process_group("gloo", init_method=rendezvous, rank=int(os.environ["RANK"]), world_size=2)
    else:
        dist.init_process_group("gloo")
    worker(args, argv)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no interpreter teardown: gloo's threads can abort a finished process there (pytorch#190489)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)  # (the Reproduce line)
    ap.add_argument("--quick", action="store_true", help="two rounds per model: checks the script, not the numbers")
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds per model (default: " + ", ".join(f"{k} {r}" for k, (r, _) in PLAN.items()) + ")")
    ap.add_argument("--models", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)} (default all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    ap.add_argument("--out", type=path_type(), default=RESULTS, help=f"where to write the table (default {RESULTS})")
    ap.add_argument("--no-progress", action="store_true", help="no per-round lines")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    if args.rounds is not None and args.rounds < 2:
        ap.error(f"--rounds must be at least 2 (an IQR needs them), got {args.rounds}")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in CASES]
    if unknown or not args.models or len(set(args.models)) < len(args.models):
        ap.error(f"--models: distinct names of {', '.join(CASES)}, got {unknown or 'none or repeats'}")
    if args.threads < 1:
        ap.error(f"--threads must be a positive integer, got {args.threads}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under accelerate launch / torchrun
        if int(os.environ["WORLD_SIZE"]) != 2:
            raise SystemExit(f"band_scaling_ddp.py measures two processes; launched with {os.environ['WORLD_SIZE']}: "
                             "pass --num_processes 2 (or run it plainly: it starts its two processes itself)")
        _join_and_run(args, argv)
    _launch_two(argv, args.threads)


if __name__ == "__main__":
    main()
