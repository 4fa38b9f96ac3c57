"""Training-step overhead of an attached connectome at 50% density against plain PyTorch.

One training step is forward + backward + optimizer step (SGD, momentum 0.9, weight decay 5e-4).
Every variant trains its own copy of the same initial model; the variants run interleaved in one
process (the order rotates every round) so that machine load hits them alike, and the reported
ratio is the median over rounds of (variant step time / plain step time in the same round).

Variants:
  plain          the model and optimizer alone
  ours           adaptive.Connectome(...).attach(opt) with the library's hot path: each
                 gradient masked by its cached 0/1 mask as soon as backward accumulates it
                 (while it is in cache; the gradient's bits times 0/1 integers, exact even over
                 inf and NaN: adaptive.exact_masking); the step only checks that nothing wrote to it since
  ours, masked at the step
                 the previous hot path: all gradients masked in one torch._foreach_mul_ just
                 before the optimizer step
  bool masks     the first hot path: one mul_ per layer by the bool mask (dtype cast per element)
  ours + silent units
                 ours, with the adaptive.diagnostics.SilentUnits watch recipes/adaptive.py keeps on
                 every train-mode run: observe() before each optimizer step (an amax of the live
                 |gradient| per unit of each layer's weight, and its bias)
  ours, masked at the step, float multiply
                 the same, multiplying the gradients by 0/1 floats: the path before masking was
                 made exact over inf and NaN, to show what exactness costs in the same run
  ours + silent units, gradients dense
                 the same where a controller edits (it reads dense gradients: an observer, as a
                 controller's, keeps backward from masking them, and they are masked at the step):
                 a bias-free layer's gradient is masked into a temporary before it is read
Besides whole-step ratios (noisy on a shared machine) it times the masking work alone, which is
all the connectome adds to a step, for the library's path and for per-layer multiplies.
  rigl-torch     rigl_torch.RigLScheduler (PyPI, static topology, so only its per-step masking is
                 timed) where it installs; its uniform distribution keeps the first layer dense

    python recipes/benchmarks/overhead.py                 # full table (about 3 minutes on 1 thread)
    python recipes/benchmarks/overhead.py --quick         # a smoke run
Writes recipes/benchmarks/results/overhead.md.
"""
from __future__ import annotations

import argparse
import copy
import gc
import importlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from adaptive.cli import path_type  # noqa: E402
from adaptive.atomic import write_text  # noqa: E402
from adaptive import Connectome  # noqa: E402
from adaptive.exact_masking import bits  # noqa: E402
from adaptive.grad_masking import _GradHook  # noqa: E402
from adaptive.diagnostics.silent_units import SilentUnits  # noqa: E402
from recipes.benchmarks._reproduce import command  # noqa: E402
from recipes.benchmarks._checks import check  # noqa: E402

RESULTS = ROOT / "recipes" / "benchmarks" / "results" / "overhead.md"


# ----------------------------------------------------------------------------------- models
class _Block(nn.Module):
    """CIFAR BasicBlock with the parameter-free "option A" shortcut (He et al. 2016)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if (stride != 1 or cin != cout) else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + sc)


class _ResNet20(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(3):
                blocks.append(_Block(cin, cout, stride if i == 0 else 1))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build(name):
    """The project's model zoo when present, else a local definition of the same network."""
    try:
        from adaptive.models import build_model

        if name == "lenet300":
            return build_model("lenet300", num_classes=10, in_shape=(1, 28, 28)), "adaptive.models"
        if name == "resnet20":
            return build_model("resnet20", num_classes=10), "adaptive.models"
    except ImportError:
        pass
    if name == "lenet300":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)), "local"
    if name == "resnet20":
        return _ResNet20(), "local"
    import torchvision

    return torchvision.models.mobilenet_v3_large(weights=None), "torchvision"


CASES = {  # name: (builder, input shape, batch, classes)
    "LeNet-300-100": ("lenet300", (1, 28, 28), 128, 10),
    "ResNet-20 (CIFAR)": ("resnet20", (3, 32, 32), 128, 10),
    "MobileNetV3-Large": ("mobilenet_v3_large", (3, 112, 112), 16, 1000),
}


# ----------------------------------------------------------------------------------- variants
# Earlier hot paths of adaptive.Connectome, kept here to show what each change buys. Each masks
# at the optimizer step only (no masking inside backward); the later ones replace only what the
# step masks and how (the masking call itself): every check and the bookkeeping of the library's
# step hooks run in every variant, so the table compares masking work alone.
class AtStep(Connectome):
    """The library's path before gradients were masked inside backward: cached 0/1 masks, one
    _foreach_mul_ of the gradients just before a zero-preserving optimizer's step."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.mask_in_backward = False


class AlwaysRemask(AtStep):
    """Cached 0/1 masks and _foreach_mul_, but gradients masked before and weights re-masked
    after every step, whatever the optimizer (two passes, each reading the masks)."""

    def _prepare_step(self, opt):
        self._run_observers(opt)
        self.mask_gradients(self._stepped_by(opt))

    def _post_step(self, opt, args, kwargs):
        if not self._step_skipped(opt):
            self._foreach_mask(grads=False, weights=True)
        super()._post_step(opt, args, kwargs)  # the library's bookkeeping (SGD preserves zeros: no second re-mask)


class PerLayer(AlwaysRemask):
    """As AlwaysRemask, but one mul_ per layer instead of one _foreach_mul_."""

    @torch.no_grad()
    def _foreach_mask(self, grads, weights, only=None):
        _, params, imasks = self._hot_lists()
        for p, f in zip(params, imasks):
            if grads and p.grad is not None and (only is None or id(p) in only):
                bits(p.grad).mul_(f)
            if weights:
                bits(p).mul_(f)


class BoolMask(AlwaysRemask):
    """The first hot path: as AlwaysRemask, but one mul_ per layer by the bool mask itself (a dtype
    cast per element), no 0/1 cache."""

    @torch.no_grad()
    def _foreach_mask(self, grads, weights, only=None):
        for n, p in self.params.items():
            if self._dense[n]:
                continue
            if grads and p.grad is not None and (only is None or id(p) in only):
                p.grad.mul_(self.masks[n])
            if weights:
                p.mul_(self.masks[n])


class FloatAtStep(AtStep):
    """As AtStep, but the gradients are multiplied by 0/1 masks of their own float dtype: the path
    before masking was made exact over inf and NaN (0 * inf is NaN; adaptive.exact_masking), kept to
    time in one run what exactness costs. The masks are cast once from the library's 0/1 cache (the
    benchmark edits no mask after attaching)."""

    _floats = None

    @torch.no_grad()
    def _foreach_mask(self, grads, weights, only=None):
        hot = self._hot_lists()
        if self._floats is None or self._floats[0] is not hot:
            self._floats = (hot, [f.to(p.dtype) for p, f in zip(hot[1], hot[2])])
        ts, ms = [], []
        for p, f in zip(hot[1], self._floats[1]):
            if grads and p.grad is not None and (only is None or id(p) in only):
                ts.append(p.grad)
                ms.append(f)
            if weights:
                ts.append(p)
                ms.append(f)
        if ts:
            torch._foreach_mul_(ts, ms)

    def resident_bytes(self):
        """The library's count plus the float copies of the masks this variant multiplies by."""
        return super().resident_bytes() + (sum(f.numel() * f.element_size() for f in self._floats[1]) if self._floats else 0)


HOOK_VARIANTS = {
    "ours": Connectome,
    "masked at the step": AtStep,
    "masked at the step, float multiply": FloatAtStep,
    "always re-mask": AlwaysRemask,
    "per-layer mul_": PerLayer,
    "bool masks (first version)": BoolMask,
}


def half_masks(conn, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(m.shape, generator=g) < 0.5 for n, m in conn.masks.items()}


def make_sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


class Runner:
    """One model copy, its optimizer and (optionally) the sparsity machinery under test."""

    def __init__(self, name, model, x, y):
        self.name, self.model, self.x, self.y = name, model, x, y
        self.opt = make_sgd(model)
        self.gate = lambda: True  # rigl-torch decides whether the optimizer steps
        self.bytes_per_synapse = None
        self.density = None
        self.silent = None  # an adaptive.diagnostics.SilentUnits observing each step (the recipe's watch)
        self.times = []  # CPU time of this thread per step
        self.walls = []  # wall-clock time per step

    def step(self):
        t, w = time.thread_time(), time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        if self.silent is not None:  # the recipe's watch reads the gradients before the optimizer step
            self.silent.observe()
        if self.gate():
            self.opt.step()
        return time.thread_time() - t, time.perf_counter() - w


def ours(cls, name, base, x, y):
    r = Runner(name, copy.deepcopy(base), x, y)
    conn = cls(r.model)
    conn.set_masks(half_masks(conn))
    conn.attach(r.opt)
    r.conn = conn
    return r


def rigl(base, x, y):
    """rigl-torch's RigLScheduler on the same step, or the reason it cannot run."""
    try:
        from rigl_torch.RigL import RigLScheduler
    except Exception as e:  # noqa: BLE001 - report any failure as the table's reason
        return f"not installed ({type(e).__name__}: {e}); pip install rigl-torch"
    try:
        r = Runner("rigl-torch", copy.deepcopy(base), x, y)
        sched = RigLScheduler(
            r.model, r.opt, dense_allocation=0.5, T_end=10**9, delta=100, static_topo=True, ignore_linear_layers=False
        )
        r.gate = sched
        masks = [m for m in sched.backward_masks if m is not None]
        total = sum(w.numel() for w in sched.W)
        r.bytes_per_synapse = sum(m.numel() * m.element_size() for m in masks) / total
        r.density = sum(int((w != 0).sum()) for w in sched.W) / total
        r.step()  # smoke test before timing
        return r
    except Exception as e:  # noqa: BLE001
        return f"fails to run ({type(e).__name__}: {str(e)[:120]})"


# ----------------------------------------------------------------------------------- timing
class _TimedGradHook(_GradHook):
    """The library's gradient hook, its CPU time added to its connectome's ``_t_acc``."""

    __slots__ = ()

    def __call__(self, param):
        t = time.thread_time()
        super().__call__(param)
        conn = self.masker.ref()
        conn._t_acc += time.thread_time() - t


def timed(cls):
    """``cls`` with its gradient and optimizer hooks timed (CPU time of this thread) inside real steps."""

    class Timed(cls):
        _t_acc = 0.0  # time spent in the per-weight gradient hooks during this step's backward

        def attach(self, optimizer):
            super().attach(optimizer)
            for h in self._masker.hooks.values():
                h.__class__ = _TimedGradHook
            return self

        def _pre_step(self, opt, args, kwargs):
            t = time.thread_time()
            super()._pre_step(opt, args, kwargs)
            self._t_pre = time.thread_time() - t

        def _post_step(self, opt, args, kwargs):
            t = time.thread_time()
            super()._post_step(opt, args, kwargs)
            self.__dict__.setdefault("hook_times", []).append(self._t_acc + self._t_pre + time.thread_time() - t)
            self._t_acc = 0.0

    Timed.__name__ = f"Timed{cls.__name__}"
    return Timed


def check_masked(conn, name):
    """The timed steps really kept every pruned weight at zero (a variant that skipped masking fails here)."""
    for n, p in conn.params.items():
        check(bool((p.detach()[~conn.masks[n]] == 0).all()), f"{name}: {n} revived a pruned weight")


def hook_ms(cls, base, x, y, reps):
    """Median CPU time of one variant's per-step masking work (its gradient hooks inside backward
    and its pre- and post-step optimizer hooks), measured inside real training steps so that the caches are as a step leaves them.
    This is all the connectome adds to a step, and far steadier than whole-step differences."""
    r = ours(timed(cls), "hook", base, x, y)
    r.conn._hot = None  # attach() built the 0/1-mask cache; it stays only if the variant uses it
    for _ in range(reps + 1):
        r.step()
    check_masked(r.conn, cls.__name__)
    return 1e3 * statistics.median(r.conn.hook_times[1:]), r.conn


def bench_case(label, spec, rounds, warmup, steps_per_sample, seed=0):
    builder, shape, batch, classes = spec
    torch.manual_seed(seed)
    base, source = build(builder)
    base.train()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    runners = [Runner("plain", copy.deepcopy(base), x, y), Runner("plain, second copy (noise control)", copy.deepcopy(base), x, y)]
    runners.append(ours(Connectome, "ours", base, x, y))
    runners.append(ours(AtStep, "ours, masked at the step (previous path)", base, x, y))
    runners.append(ours(FloatAtStep, "ours, masked at the step, float multiply (before exact masking)", base, x, y))
    watched = ours(Connectome, "ours + silent units (the recipe's watch)", base, x, y)
    watched.silent = SilentUnits.from_connectome(watched.conn)
    runners.append(watched)
    # the recipe's usual path: while a controller edits it reads dense gradients (an observer keeps
    # the backward hooks from masking them, as a controller's does; masked at the step instead), so at
    # observe() a bias-free layer's gradient is not known masked and is masked into a temporary first
    dense = ours(Connectome, "ours + silent units, gradients dense (a controller editing)", base, x, y)
    dense.conn.add_observer(lambda: None)
    dense.silent = SilentUnits.from_connectome(dense.conn)
    runners.append(dense)
    rg = rigl(base, x, y)
    if isinstance(rg, Runner):
        runners.append(rg)
    for r in runners:
        for _ in range(warmup):
            r.step()
    gc.collect()
    gc.disable()
    try:
        for k in range(rounds):
            order = runners[k % len(runners):] + runners[: k % len(runners)]
            for r in order:
                cpu, wall = zip(*(r.step() for _ in range(steps_per_sample)))
                r.times.append(sum(cpu) / steps_per_sample)
                r.walls.append(sum(wall) / steps_per_sample)
    finally:
        gc.enable()
    plain = runners[0].times
    out = {
        "label": label,
        "source": source,
        "batch": batch,
        "shape": shape,
        "plain_ms": 1e3 * statistics.median(plain),
        "plain_p10_ms": 1e3 * statistics.quantiles(plain, n=10)[0],
        "plain_wall_ms": 1e3 * statistics.median(runners[0].walls),
        "rows": {},
    }
    for r in runners[1:]:
        ratios = [t / p for t, p in zip(r.times, plain)]
        q = statistics.quantiles(ratios, n=4)
        row = dict(
            ms=1e3 * statistics.median(r.times),
            ratio=statistics.median(ratios),
            q1=q[0],
            q3=q[2],
            wall_ratio=statistics.median(t / p for t, p in zip(r.walls, runners[0].walls)),
        )
        conn = getattr(r, "conn", None)
        if conn is not None:
            check_masked(conn, r.name)
            r.bytes_per_synapse = conn.resident_bytes() / conn.num_synapses()
            r.density = conn.density()
        if getattr(r, "silent", None) is not None:  # the watch really ran inside the timed steps
            check(r.silent.layers(), f"{r.name}: no layer's output gradient reached the watch")
        row.update(bytes=r.bytes_per_synapse, density=r.density)
        out["rows"][r.name] = row
    if not isinstance(rg, Runner):
        out["rows"]["rigl-torch"] = dict(error=rg)
    out["hooks"] = {}
    reps = 60 if out["plain_ms"] < 100 else 3
    for name, cls in HOOK_VARIANTS.items():
        ms, conn = hook_ms(cls, base, x, y, reps)
        out["hooks"][name] = dict(ms=ms, bytes=conn.resident_bytes() / conn.num_synapses())
    out["synapses"] = runners[2].conn.num_synapses()
    return out


def fmt_table(results, target):
    lines = [
        "| model | batch x input | synapses | plain CPU ms/step (wall) | variant | CPU ms/step | ratio (median) | IQR of ratio | wall-clock ratio | density | resident B/synapse | ratio <= %.2f |" % target,
        "|" + "---|" * 12,
    ]
    for res in results:
        first = True
        for name, row in res["rows"].items():
            cells = [res["label"], f"{res['batch']} x {'x'.join(map(str, res['shape']))}", f"{res['synapses']:,}", f"{res['plain_ms']:.2f} ({res['plain_wall_ms']:.2f})"] if first else ["", "", "", ""]
            first = False
            if "error" in row:
                cells += [name] + ["-"] * 6 + [row["error"]]
            else:
                cells += [
                    name,
                    f"{row['ms']:.2f}",
                    f"{row['ratio']:.3f}",
                    f"{row['q1']:.3f}-{row['q3']:.3f}",
                    f"{row['wall_ratio']:.3f}",
                    f"{row['density']:.3f}" if row["density"] is not None else "-",
                    f"{row['bytes']:.2f}" if row["bytes"] is not None else "-",
                    ("yes" if row["ratio"] <= target else "no") if name == "ours" else "",
                ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Masking work alone (the connectome's gradient and optimizer hooks timed inside real steps; the Python call into each hook is not included), CPU ms per step, and in brackets "
        "1 + that / the plain step's CPU time:",
        "",
    ]
    names = list(results[0]["hooks"])
    lines.append("| model | " + " | ".join(names) + " |")
    lines.append("|" + "---|" * (len(names) + 1))
    for res in results:
        cells = [f"{res['hooks'][n]['ms']:.3f} ({1 + res['hooks'][n]['ms'] / res['plain_ms']:.3f})" for n in names]
        lines.append(f"| {res['label']} | " + " | ".join(cells) + " |")
    lines.append("| resident B/synapse | " + " | ".join(f"{results[0]['hooks'][n]['bytes']:.2f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads; CPU-time ratios need 1 (the work then runs on the timing thread)")
    ap.add_argument("--quick", action="store_true", help="a few rounds only: checks the script, not the numbers")
    ap.add_argument("--target", type=float, default=1.03)
    ap.add_argument("--out", type=path_type(), default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    # (rounds, warm-up steps, steps per timed sample) per case: a stable median in about 3 minutes on one core
    plan = {"LeNet-300-100": (600, 10, 4), "ResNet-20 (CIFAR)": (12, 2, 1), "MobileNetV3-Large": (24, 2, 1)}
    if args.quick:
        plan = {k: (3, 1, 1) for k in plan}
    from tqdm import tqdm

    t0 = time.time()
    results = []
    for label in tqdm(CASES, desc="models"):
        rounds, warmup, per_sample = plan[label]
        results.append(bench_case(label, CASES[label], rounds, warmup, per_sample))
    elapsed = time.time() - t0
    table = fmt_table(results, args.target)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    try:
        importlib.import_module("rigl_torch")  # installed and importable, or "not installed"
        from importlib.metadata import version

        rigl_v = version("rigl-torch")
    except Exception:  # noqa: BLE001
        rigl_v = "not installed"
    note = (
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} thread(s), CPU; "
        f"load average at the end {load[0]:.1f} on {os.cpu_count()} cores (shared machine); rigl-torch {rigl_v}; "
        f"{elapsed:.0f} s. Rounds: " + ", ".join(f"{k} {v[0]}" for k, v in plan.items()) + "."
    )
    text = (
        "# Connectome overhead: training step with 50% density vs plain PyTorch\n\n"
        f"Generated by `{command('overhead.py', ROOT, argv, placed=('--out',))}` (do not edit by hand).\n"
        "Step = forward + backward + SGD(momentum 0.9, wd 5e-4) step; random inputs; every variant trains its own copy of "
        "the same initial model, interleaved in one process; ratio = median over rounds of variant/plain time in the same "
        "round, timed as the CPU time of the (single) compute thread, which other processes on a shared machine cannot "
        "inflate (the wall-clock ratio is shown too); the second plain copy shows the noise floor of that ratio. 'Masking work alone' times just the "
        "connectome's per-step hooks inside real steps, a steadier estimate of the overhead than whole-step ratios on a loaded machine. "
        "Resident bytes per synapse: masks plus hot-path caches held between steps (the model's own weights, "
        "gradients and optimizer state are not counted).\n\n"
        f"{table}\n\n{note}\n"
    )
    print(text)
    write_text(args.out, text)
    return results


if __name__ == "__main__":
    main()
