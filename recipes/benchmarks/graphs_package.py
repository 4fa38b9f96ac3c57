"""Benchmark of the graphs package.

1. torchvision resnet50 and mobilenet_v3_large (ImageNet shapes, 224x224) with random masks at 50%
   density: seconds to trace, build each level and convert it to PyG and networkx, and the peak
   resident memory of the process doing it (each (model, level) runs in a fresh subprocess, so
   peaks do not mix); then seconds, file size and peak memory of writing it as GraphML and as JSON
   (``graphs.write``; graphs of up to 10 M edges).
2. Compaction of a CIFAR ResNet-20 (pretrained weights from ``--data-dir`` when present) in which
   50% of the units of every conv layer have no live input: forward time of the masked dense model
   against the compacted one, measured side by side (interleaved runs, median).
3. The same for vit_tiny (a transformer; random init) whose MLP hidden units lose their input
   synapses: Linear layers applied to the tokens shrink.
4. Contracting junctions (``graphs.build(..., junctions=False)``) of torchvision VisionTransformers
   (32x32 input, patch 8, every synapse live) at the unit level: seconds and peak memory of
   ``contract_junctions``, against the implementation it replaced (kept in
   tests/test_graphs_contract.py) where that one fits in a few seconds.

    python recipes/benchmarks/graphs_package.py [--data-dir ../shared/data] [--quick] [--skip-graphs | --skip-compaction]
                                        [--only-contract]

Prints a table and writes it to recipes/benchmarks/results/graphs.md (``--only-contract``: part 4
alone, to results/graphs_contract.md).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# this checkout's packages first (`import graphs`, `import adaptive`); nothing here imports from this folder
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or os.getcwd()) != HERE]
from recipes.benchmarks._checks import check  # noqa: E402

LOAD = os.getloadavg()
TARGETS = {("resnet50", "unit", "pyg"): 5.0, ("resnet50", "unit", "networkx"): 30.0,
           ("mobilenet_v3_large", "synapse", "build"): 10.0}


WRITE_MAX_EDGES = 10_000_000  # graphs.write of a larger graph (resnet50's synapse level) is not timed


def _rss_gb() -> float:
    """This process's peak resident memory in GB since it started (or since :func:`_reset_peak`): Linux's VmHWM.
    Not ``getrusage``'s ru_maxrss, which in a child started by fork and exec (every row here) is at least the
    parent's resident memory at the fork, whatever the child itself uses; ru_maxrss only where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e6  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def _reset_peak() -> bool:
    """Start measuring the peak resident memory afresh (Linux: 5 in /proc/self/clear_refs resets it to
    the current resident memory); False where that cannot be done (the peak then stays the process's)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _write_rows(g, row):
    """Seconds, file MB and peak GB (the process's, model and graph included, from the write's start)
    of graphs.write(g, ...) as GraphML and as JSON; each file is removed once measured."""
    import graphs

    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("graphml", "json"):
            path = os.path.join(tmp, f"g.{fmt}")
            row["write_peak_reset"] = _reset_peak()
            t = time.perf_counter()
            graphs.write(g, path)
            row[f"{fmt}_s"] = time.perf_counter() - t
            row[f"{fmt}_peak_gb"] = _rss_gb()
            row[f"{fmt}_mb"] = os.path.getsize(path) / 1e6
            os.remove(path)


def _peak(r) -> float:
    """The row's process peak: the largest of those measured (each write restarted the measurement)."""
    return max(r.get(k, 0.0) for k in ("peak_gb_pyg", "graphml_peak_gb", "json_peak_gb", "peak_gb_nx"))


def random_masks(conn, density: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    conn.set_masks({k: torch.rand(v.shape, generator=g) < density for k, v in conn.masks.items()})


def measure_one(arch: str, level: str, networkx: bool, threads: int) -> dict:
    """Runs inside a subprocess: one model, one level."""
    torch.set_num_threads(threads)
    for slow in ("torch_geometric", "networkx"):  # imported first: their import time is not the conversion's
        importlib.import_module(slow)

    import adaptive
    import graphs
    from adaptive.models import build_model

    model = build_model(f"torchvision:{arch}", num_classes=1000)
    conn = adaptive.Connectome(model)
    random_masks(conn, 0.5)
    x = torch.randn(1, 3, 224, 224)
    row = {"model": arch, "level": level, "live_synapses": conn.num_live()}
    t = time.perf_counter()
    tr = graphs.trace(model, x)
    row["trace_s"] = time.perf_counter() - t
    t = time.perf_counter()
    g = graphs.build(conn, level, traced=tr)
    row["build_s"] = time.perf_counter() - t
    row["nodes"], row["edges"] = g.num_nodes, g.num_edges
    check(g.live_synapses() == conn.num_live(), "graph and connectome disagree on live synapses")
    t = time.perf_counter()
    data = graphs.to_pyg(g)
    row["pyg_s"] = time.perf_counter() - t
    del data
    row["peak_gb_pyg"] = _rss_gb()
    if g.num_edges <= WRITE_MAX_EDGES:  # each write resets the peak: the rows' peak is the largest of them all
        _write_rows(g, row)
    if networkx:
        t = time.perf_counter()
        G = graphs.to_networkx(g)
        row["networkx_s"] = time.perf_counter() - t
        row["nx_edges"] = G.number_of_edges()
        del G
        row["peak_gb_nx"] = _rss_gb()  # since the last write's start, if any: see _peak
    return row


def measure_contract(impl: str, width: int, layers: int, threads: int) -> dict:
    """Runs inside a subprocess: contract the unit graph of a VisionTransformer with ``impl``."""
    torch.set_num_threads(threads)
    from torchvision.models import VisionTransformer

    import graphs
    from graphs.contract import contract_junctions

    if impl == "new":
        fn = contract_junctions
    else:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from test_graphs_contract import _ref_contract as fn
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=layers, num_heads=2, hidden_dim=width,
                              mlp_dim=2 * width, num_classes=10)
    g = graphs.build(model=model, level="unit", example_input=torch.randn(1, 3, 32, 32))
    row = {"impl": impl, "width": width, "layers": layers, "unit_edges": g.num_edges, "rss_before_gb": _rss_gb()}
    t = time.perf_counter()
    c = fn(g)
    row["contract_s"] = time.perf_counter() - t
    row["peak_gb"] = _rss_gb()
    row["edges"] = c.num_edges
    return row


# (width, layers, implementations): the old one only where it takes seconds
CONTRACT_CASES = [(32, 2, ("old", "new")), (64, 2, ("old", "new")), (128, 2, ("new",)), (64, 8, ("new",)),
                  (256, 2, ("new",)), (128, 8, ("new",))]


def contract_rows(threads, quick=False) -> list:
    rows = []
    for width, layers, impls in CONTRACT_CASES[:2] if quick else CONTRACT_CASES:
        for impl in impls:
            cmd = [sys.executable, __file__, "--contract-child", impl, str(width), str(layers), str(threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                raise RuntimeError(f"contract {impl} {width}/{layers} failed:\n{out.stderr[-2000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  ViT width {width}, {layers} layers, {impl}: {r['edges']:,} edges, {r['contract_s']:.2f} s, "
                  f"peak {r['peak_gb']:.2f} GB", flush=True)
    return rows


def contract_table(rows, threads) -> list:
    lines = [
        "## Contracting junctions (`junctions=False`)",
        "",
        "torchvision VisionTransformer, 32x32 input, patch 8, 2 heads, MLP 2 x width, every synapse live, unit "
        "level; each row in a fresh process. `old` is the implementation before the merge-while-expanding "
        "one (it laid out one copy of each edge leaving a junction per source of that junction, then "
        "merged: a LayerNorm's statistics junction makes width^3 x depth^2 copies, so it runs only on the "
        "smallest widths here). peak = "
        "the process's maximum resident memory; before = after building the unit graph. "
        f"{threads} torch thread(s).",
        "",
        "| width | layers | implementation | unit edges | contracted edges | contract s | peak GB (before) |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['width']} | {r['layers']} | {r['impl']} | {r['unit_edges']:,} | {r['edges']:,} | "
                     f"{r['contract_s']:.2f} | {r['peak_gb']:.2f} ({r['rss_before_gb']:.2f}) |")
    return lines


def graph_rows(archs, levels, threads, skip_nx) -> list:
    rows = []
    for arch in archs:
        for level in levels:
            nx_ok = (arch, level) not in skip_nx
            cmd = [sys.executable, __file__, "--child", arch, level, str(int(nx_ok)), str(threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                raise RuntimeError(f"{arch}/{level} failed:\n{out.stderr[-2000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"  {arch:20s} {level:8s} build {row['build_s']:.2f}s pyg {row['pyg_s']:.2f}s "
                  f"nx {row.get('networkx_s', float('nan')):.2f}s peak {_peak(row):.2f} GB",
                  flush=True)
    return rows


def resnet20(data_dir: str | None):
    from adaptive.models import build_model

    m = build_model("resnet20")
    src = "random init (BatchNorm statistics randomised)"
    path = os.path.join(data_dir or "", "resnet-cifar10", "resnet20-12fca82f.th")
    if data_dir and os.path.isfile(path):
        from adaptive.models import load_weights

        load_weights(m, path)
        src = "pretrained resnet20-12fca82f.th"
    else:
        g = torch.Generator().manual_seed(0)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m.eval(), src


SCENARIOS = {
    "all": "50% of the units of every conv layer",
    "internal": "50% of the block-internal units (each BasicBlock's conv1)",
}


def compaction_row(data_dir, threads, batch, repeats, scenario="all", align=1) -> dict:
    torch.set_num_threads(threads)
    import adaptive
    import graphs

    model, src = resnet20(data_dir)
    conn = adaptive.Connectome(model, ensemble="neuron")
    g = torch.Generator().manual_seed(0)
    masks, dead = {}, 0
    for k, m in conn.ensemble_masks().items():
        keep = torch.ones_like(m)
        chosen = conn.layers[k].kind != "linear" if scenario == "all" else k.endswith("conv1.weight") and "layer" in k
        if chosen:  # never the classifier: its units are the classes
            idx = torch.randperm(m.numel(), generator=g)[: m.numel() // 2]
            keep[idx] = False
            dead += idx.numel()
        masks[k] = keep
    conn.set_ensemble_masks(masks)
    units = sum(l.out_units for l in conn.layers.values() if l.kind != "linear")
    x = torch.randn(batch, 3, 32, 32)
    t = time.perf_counter()
    small = graphs.compact(model, conn, x, align=align)
    t_compact = time.perf_counter() - t
    model.eval()
    times = _interleaved(model, small, x, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "scenario": scenario, "align": align, "min_speedup": min(times["masked"]) / min(times["compact"]),
        "threads": threads, "weights": src, "units": units, "dead_units": dead, "removed_units": small.compaction["units_removed"],
        "params_masked": small.compaction["params_before"], "params_compact": small.compaction["params_after"],
        "max_abs_diff": small.compaction["max_abs_diff"], "compact_s": t_compact, "batch": batch,
        "repeats": repeats, "masked_ms": med["masked"] * 1e3, "compact_ms": med["compact"] * 1e3,
        "speedup": med["masked"] / med["compact"],
    }


VIT_FRACTIONS = (0.5, 0.75)


def vit_compaction_row(threads, batch, repeats, fraction) -> dict:
    """vit_tiny in which ``fraction`` of every MLP's hidden units (fc1's output units) have no live input."""
    torch.set_num_threads(threads)
    import adaptive
    import graphs
    from adaptive.models import build_model

    torch.manual_seed(0)
    model = build_model("vit_tiny").eval()
    conn = adaptive.Connectome(model, ensemble="neuron")
    g = torch.Generator().manual_seed(0)
    masks, dead, units = {}, 0, 0
    for k, m in conn.ensemble_masks().items():
        keep = torch.ones_like(m)
        if k.endswith("mlp.0.weight"):
            idx = torch.randperm(m.numel(), generator=g)[: int(m.numel() * fraction)]
            keep[idx] = False
            dead += idx.numel()
            units += m.numel()
        masks[k] = keep
    conn.set_ensemble_masks(masks)
    x = torch.randn(batch, 3, 32, 32)
    t = time.perf_counter()
    small = graphs.compact(model, conn, x)
    t_compact = time.perf_counter() - t
    times = _interleaved(model, small, x, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"fraction": fraction, "units": units, "dead_units": dead, "removed_units": small.compaction["units_removed"],
            "params_masked": small.compaction["params_before"], "params_compact": small.compaction["params_after"],
            "max_abs_diff": small.compaction["max_abs_diff"], "compact_s": t_compact, "batch": batch, "threads": threads,
            "repeats": repeats, "masked_ms": med["masked"] * 1e3, "compact_ms": med["compact"] * 1e3,
            "speedup": med["masked"] / med["compact"], "min_speedup": min(times["masked"]) / min(times["compact"])}


def _interleaved(model, small, x, repeats) -> dict:
    """Forward times of the masked and the compacted model, run alternately after a warm-up, the masked
    one first in even repeats and the compacted one first in odd ones (neither always on the other's caches)."""
    times = {"masked": [], "compact": []}
    pair = (("masked", model), ("compact", small))
    with torch.inference_mode():
        for m in (model, small):  # warm-up
            m(x)
        for r in range(repeats):
            for name, m in pair if r % 2 == 0 else pair[::-1]:
                t = time.perf_counter()
                m(x)
                times[name].append(time.perf_counter() - t)
    return times


def table(rows, comp, threads, cmdline, vit=(), contract=()) -> str:
    lines = [
        "# graphs benchmark",
        "",
        f"Command: `{cmdline}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {threads}, "
        f"torch {torch.__version__}. The CPUs were shared with other jobs while this ran (load average "
        f"{LOAD[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end), so times are upper bounds.",
        "",
        "## Building graphs (random masks, 50% density, input 1x3x224x224)",
        "",
        "Each row runs in a fresh process. build = `graphs.build(conn, level)` given the trace; "
        "peak = the process's maximum resident memory (model, masks and graph included).",
        "",
        "| model | level | nodes | edges | trace s | build s | to_pyg s | to_networkx s | peak GB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        nxs = f"{r['networkx_s']:.2f}" if "networkx_s" in r else "not run"
        peak = _peak(r)
        lines.append(f"| {r['model']} | {r['level']} | {r['nodes']:,} | {r['edges']:,} | {r['trace_s']:.2f} | "
                     f"{r['build_s']:.2f} | {r['pyg_s']:.2f} | {nxs} | {peak:.2f} |")
    written = [r for r in rows if "graphml_s" in r]
    if written:
        fresh = all(r["write_peak_reset"] for r in written)
        lines += [
            "",
            "Writing the graph (`graphs.write(g, path)`, GraphML then JSON, in the same process after to_pyg, before "
            "to_networkx; graphs of up to "
            f"{WRITE_MAX_EDGES:,} edges). peak = the process's maximum resident memory "
            + ("from the write's start (model and graph included)." if fresh else "(the whole run's: it could not be reset here)."),
            "",
            "| model | level | edges | GraphML s | GraphML MB | GraphML peak GB | JSON s | JSON MB | JSON peak GB |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in written:
            lines.append(f"| {r['model']} | {r['level']} | {r['edges']:,} | {r['graphml_s']:.2f} | {r['graphml_mb']:,.0f} | "
                         f"{r['graphml_peak_gb']:.2f} | {r['json_s']:.2f} | {r['json_mb']:,.0f} | {r['json_peak_gb']:.2f} |")
    lines += ["", "Targets (2 cores):", ""]
    for (arch, level, what), limit in TARGETS.items():
        r = next((r for r in rows if r["model"] == arch and r["level"] == level), None)
        if r is None:
            continue
        if what == "build":
            val = r["trace_s"] + r["build_s"]
            label = "trace + build"
        elif what == "pyg":
            val = r["trace_s"] + r["build_s"] + r["pyg_s"]
            label = "trace + build + to_pyg"
        else:
            val = r.get("networkx_s", float("nan"))
            label = "to_networkx"
        lines.append(f"- {arch} {level} level, {label}: {val:.2f} s (target <= {limit:.0f} s): "
                     f"{'met' if val <= limit else 'MISSED'}")
    if comp:
        c = comp[0]
        lines += [
            "",
            "## Compaction of CIFAR ResNet-20 with dead units",
            "",
            f"Weights: {c['weights']}. The chosen units lose all their input synapses (neuron ensembles, at "
            f"random); a dead unit's output is then a per-channel constant (BatchNorm shift after ReLU), which "
            f"compaction folds into its readers. A unit on the residual stream stays when a live summand shares "
            f"its channel. Forward pass of a batch of {c['batch']} 32x32 images, eval mode, median of "
            f"{c['repeats']} interleaved runs (masked then compacted, then compacted then masked, ...), {c['threads']} "
            "torch thread(s).",
            "",
            "`align`: compaction keeps a few removable units so every layer keeps a multiple of that many "
            "(`graphs.compact(..., align=8)`); some kernels prefer such widths (on this CPU it did not help). "
            "speed-up = median masked / median compacted; the ratio of the fastest runs is given too, being "
            "the least disturbed by other jobs.",
            "",
            "| dead units | align | conv units | dead | removed | parameters masked -> compacted | forward ms masked | "
            "forward ms compacted | speed-up (median) | speed-up (fastest) | max abs diff |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in comp:
            lines.append(
                f"| {SCENARIOS[c['scenario']]} | {c['align']} | {c['units']} | {c['dead_units']} | {c['removed_units']} | "
                f"{c['params_masked']:,} -> {c['params_compact']:,} | {c['masked_ms']:.1f} | {c['compact_ms']:.1f} | "
                f"{c['speedup']:.2f}x | {c['min_speedup']:.2f}x | {c['max_abs_diff']:.1g} |")
    if vit:
        v = vit[0]
        lines += [
            "",
            "## Compaction of vit_tiny with dead MLP units",
            "",
            f"vit_tiny (4 blocks, width 64, MLP 128, 65 tokens; random init). The chosen hidden units of every "
            f"block's MLP lose all their input synapses (neuron ensembles of fc1, at random): each emits "
            f"GELU(bias), a constant that compaction folds into fc2's bias, and fc1/fc2 shrink. The residual "
            f"stream and attention stay whole (LayerNorm's statistics read every channel). Forward pass of a "
            f"batch of {v['batch']} 32x32 images, eval mode, median of {v['repeats']} interleaved runs, "
            f"{v['threads']} torch thread(s).",
            "",
            "| dead MLP units | MLP units | dead | removed | parameters masked -> compacted | forward ms masked | "
            "forward ms compacted | speed-up (median) | speed-up (fastest) | max abs diff |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for v in vit:
            lines.append(
                f"| {v['fraction']:.0%} | {v['units']} | {v['dead_units']} | {v['removed_units']} | "
                f"{v['params_masked']:,} -> {v['params_compact']:,} | {v['masked_ms']:.1f} | {v['compact_ms']:.1f} | "
                f"{v['speedup']:.2f}x | {v['min_speedup']:.2f}x | {v['max_abs_diff']:.1g} |")
    if contract:
        lines += [""] + contract_table(contract, threads)
    return "\n".join(lines) + "\n"


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        arch, level, nx_ok, threads = sys.argv[2:6]
        print(json.dumps(measure_one(arch, level, nx_ok == "1", int(threads))))
        return
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--contract-child":
        impl, width, layers, threads = sys.argv[2:6]
        print(json.dumps(measure_contract(impl, int(width), int(layers), int(threads))))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from adaptive.cli import data_dir_type, path_type

    p.add_argument("--data-dir", type=data_dir_type, default=os.environ.get("ADAPTIVE_DATA") or os.path.join(ROOT, "..", "shared", "data"))
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for graph building (1: on a shared 2-core machine, 2 threads thrash)")
    p.add_argument("--compact-threads", type=int, default=1,
                   help="torch threads for the forward-time comparison (1: least disturbed by other jobs)")
    p.add_argument("--quick", action="store_true", help="mobilenet unit level and a short compaction run only")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--out", type=path_type(), default=None,
                   help="the table's file (default results/graphs.md; results/graphs_contract.md with --only-contract)")
    p.add_argument("--skip-graphs", action="store_true", help="only the compaction part")
    p.add_argument("--skip-compaction", action="store_true", help="only the graph part (building, converting, writing)")
    p.add_argument("--only-contract", action="store_true",
                   help="only the junction contraction part, written to results/graphs_contract.md")
    a = p.parse_args(argv)
    if a.skip_graphs and a.skip_compaction:
        p.error("--skip-graphs and --skip-compaction together leave nothing to run: give one of them")
    if a.only_contract and (a.skip_graphs or a.skip_compaction):
        p.error("--only-contract runs the junction contraction part alone: drop --skip-graphs/--skip-compaction")
    a.out = a.out or os.path.join(HERE, "results", "graphs_contract.md" if a.only_contract else "graphs.md")
    from pathlib import Path

    from recipes.benchmarks._reproduce import command

    cmdline = command("graphs_package.py", Path(ROOT), argv, placed=("--out",), dropped=("--data-dir",))
    if a.only_contract:
        print("contracting junctions:")
        rows = contract_rows(a.threads, a.quick)
        text = "\n".join(["# graphs benchmark: contracting junctions", "", f"Command: `{cmdline}`  ",
                          f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                          f"torch {torch.__version__}.", ""] + contract_table(rows, a.threads)) + "\n"
        print()
        print(text)
        from adaptive.atomic import write_text

        write_text(a.out, text)
        return
    archs = ["mobilenet_v3_large"] if a.quick else ["resnet50", "mobilenet_v3_large"]
    levels = ["unit"] if a.quick else ["layer", "unit", "synapse"]
    # networkx at the synapse level of resnet50 means 12.8 M Python edge dicts in a MultiDiGraph (> 8 GB)
    skip_nx = {("resnet50", "synapse")}
    print("graph building:")
    rows = [] if a.skip_graphs else graph_rows(archs, levels, a.threads, skip_nx)
    print("compaction:")
    comp = []
    for scenario, align in [] if a.skip_compaction else [(s_, al) for s_ in SCENARIOS for al in (1, 8)]:
        comp.append(compaction_row(a.data_dir, a.compact_threads, 16 if a.quick else a.batch, 5 if a.quick else a.repeats,
                                   scenario, align))
        c = comp[-1]
        print(f"  {scenario} align {align}: removed {c['removed_units']}/{c['dead_units']} dead units, speed-up {c['speedup']:.2f}x "
              f"({c['masked_ms']:.1f} ms -> {c['compact_ms']:.1f} ms)", flush=True)
    vit = []
    for fraction in () if a.skip_compaction else VIT_FRACTIONS:
        vit.append(vit_compaction_row(a.compact_threads, 16 if a.quick else a.batch, 5 if a.quick else a.repeats, fraction))
        v = vit[-1]
        print(f"  vit_tiny, {fraction:.0%} of MLP units dead: removed {v['removed_units']}/{v['dead_units']}, "
              f"speed-up {v['speedup']:.2f}x ({v['masked_ms']:.1f} ms -> {v['compact_ms']:.1f} ms)", flush=True)
    print("contracting junctions:")
    contract = contract_rows(a.threads, a.quick)
    text = table(rows, comp, a.threads, cmdline, vit, contract)
    print()
    print(text)
    from adaptive.atomic import write_text

    write_text(a.out, text)


if __name__ == "__main__":
    main()
