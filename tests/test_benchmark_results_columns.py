"""The speed and memory benchmarks' results files carry the columns their scripts write now: each script is
run on tiny settings (a tiny model standing in for resnet50 where it needs one) and its tables' header rows
compared with the committed file's (the figures are not: they come from the full run on another machine)."""
import runpy
import sys

import pytest
import torch
import torchvision
from torch import nn

import adaptive.paths as paths

BENCH = paths.REPO_ROOT / "recipes" / "benchmarks"


def _headers(text: str) -> list:
    """The column names of every Markdown table in ``text`` (a header row is the one above a --- row)."""
    lines = text.splitlines()
    return [[c.strip() for c in head.strip().strip("|").split("|")]
            for head, rule in zip(lines, lines[1:])
            if head.startswith("|") and rule.startswith("|") and set(rule.strip()) <= set("|-: ")]


def _tiny(**kw):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 1000))


TINY_RUNS = {  # results file: the script and its tiny options (--out added)
    "scale.md": ("scale.py", ["--model", "tiny", "--size", "16", "--rounds", "1", "--points", "5"]),
    "loader_cycle.md": ("loader_cycle.py", ["--quick", "--rounds", "1", "--batches", "2", "--n", "256", "--batch", "64"]),
    "controller.md": ("controller.py", ["--batch", "2", "--size", "16", "--repeats", "1"]),
    "ensemble_mask_cache.md": ("ensemble_mask_cache.py", ["--updates", "1", "--rounds", "1", "--size", "8"]),
    "line_search_rollback.md": ("line_search_rollback.py", ["--repeats", "1", "--fraction", "0.2"]),
    "update_reads.md": ("update_reads.py", ["--rounds", "1", "--kth-size", "4096"]),
}


@pytest.mark.parametrize("results", sorted(TINY_RUNS))
def test_the_results_file_has_the_columns_its_script_writes(results, tmp_path, monkeypatch):
    script, options = TINY_RUNS[results]
    out = tmp_path / results
    monkeypatch.setattr(torchvision.models, "resnet50", _tiny)
    monkeypatch.setattr(sys, "argv", [str(BENCH / script), *options, "--out", str(out)])
    runpy.run_path(str(BENCH / script), run_name="__main__")
    written = _headers(out.read_text())
    assert written and _headers((BENCH / "results" / results).read_text()) == written, written


def test_the_overhead_results_file_has_the_columns_overhead_py_writes():
    """overhead.md's two tables, as fmt_table writes them (from one made-up case: the columns only)."""
    ns = runpy.run_path(str(BENCH / "overhead.py"))
    row = dict(ms=1.0, ratio=1.0, q1=1.0, q3=1.0, wall_ratio=1.0, bytes=6.0, density=0.5)
    case = {"label": "m", "batch": 1, "shape": (1, 2, 2), "synapses": 4, "plain_ms": 1.0, "plain_wall_ms": 1.0,
            "rows": {"ours": row}, "hooks": {n: dict(ms=0.1, bytes=6.0) for n in ns["HOOK_VARIANTS"]}}
    written = _headers(ns["fmt_table"]([case], 1.03))
    assert _headers((BENCH / "results" / "overhead.md").read_text()) == written, written


def test_the_band_scaling_ddp_results_file_has_the_columns_its_script_writes():
    """band_scaling_ddp.md's two tables, as fmt_table writes them (from one made-up case: the columns only)."""
    ns = runpy.run_path(str(BENCH / "band_scaling_ddp.py"))
    row = dict(times=[0.01, 0.01], ms=10.0, ratio=1.0, q1=1.0, q3=1.0, added_ms=0.0, agree=True)
    case = {"label": "m", "batch": 1, "shape": (1, 2, 2), "layers": 2, "hooked": 1, "bands": 3, "params": 4,
            "allreduce_s": 1e-4, "plain_ms": 10.0, "rows": {v: dict(row) for v in ns["VARIANTS"][1:]}}
    written = _headers(ns["fmt_table"]([case]))
    assert _headers((BENCH / "results" / "band_scaling_ddp.md").read_text()) == written, written


def test_benchmark_tables_never_show_a_figure_of_all_or_none_that_it_is_not():
    """The benchmarks wrote accuracies as ``100 * acc:.2f`` and shares as ``:.2%``: 99.996% read "100.00" (every
    example right) and an overhead of 0.004% "0.00%" (none, so its target "met" on a figure that says nothing).
    They keep the digits that say so (adaptive.metrics.fmt_unsaturated); other figures are written as before."""
    from recipes.benchmarks import controller, line_search_rollback
    from recipes.benchmarks._paired_runs import collapse_cells

    rs = [{"holdout_accuracy": h, "test_accuracy": t, "wall_min": 1.0} for h, t in ((0.99996, 0.99999), (0.5, 1.0))]
    cells = [c.strip() for c in collapse_cells(rs, 0.2).split("|")]
    assert cells[0] == "75.00" and cells[3] == "99.999" and cells[4] == "99.996, 50.00", cells
    for mod in (controller, line_search_rollback):
        assert mod._pct(0.00004) == "0.004%" and mod._pct(0.99996) == "99.996%" and mod._pct(0.25) == "25.00%"
        assert mod._pct(0.0) == "0.00%" and mod._pct(1.0) == "100.00%"
