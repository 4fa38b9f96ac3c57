"""recipes/benchmarks/selection.py: the timed implementations take turns at running first."""
import runpy

import adaptive.paths as paths

SCRIPT = paths.REPO_ROOT / "recipes" / "benchmarks" / "selection.py"


def test_best_rotates_which_implementation_runs_first():
    """Every round ran the full sort, then the old, then the new implementation, so the new one always ran on
    the caches and freed memory the other two had just left (of the same-sized work): the order now rotates."""
    best = runpy.run_path(str(SCRIPT))["best"]
    calls = []
    fns = [lambda name=name: calls.append(name) or name for name in ("full", "old", "new")]
    times, out = best(fns, 3)
    assert calls == ["full", "old", "new", "old", "new", "full", "new", "full", "old"]
    assert out == ["full", "old", "new"] and all(t >= 0 for t in times)
