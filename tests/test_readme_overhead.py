"""The overhead table (docs/overhead.md, once the README's) quotes recipes/benchmarks/results/overhead.md,
which overhead.py rewrites: a rerun that left the page's numbers behind went unnoticed."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _results():
    """model -> {variant: ratio (median)}, and its plain CPU ms/step, from the results file."""
    out, model = {}, None
    for line in (ROOT / "recipes/benchmarks/results/overhead.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 7 or not re.fullmatch(r"[\d.]+|-", cells[6]):
            continue
        if cells[0]:
            model = cells[0]
            out[model] = {"plain": float(cells[3].split()[0])}
        out[model][cells[4]] = cells[6]
    return out


def test_the_readme_overhead_table_is_the_results_files():
    results = _results()
    readme = (ROOT / "docs" / "overhead.md").read_text()
    section = readme[readme.index("`python recipes/benchmarks/overhead.py` times a training step"):]
    rows = 0
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or cells[0] not in results:
            continue
        r = results[cells[0]]
        assert abs(float(cells[2]) - r["plain"]) <= 0.05 + 1e-9, cells  # (rounded to 0.1 ms or not)
        assert cells[3] == r["ours"], cells
        assert cells[4] == r["ours, masked at the step (previous path)"], cells
        # rigl-torch's column is of the same run too (it quoted another run's ratios in brackets)
        assert cells[5] == r["rigl-torch"], cells
        assert cells[6] == r["plain, second copy (noise control)"], cells
        rows += 1
    assert rows == 3
