"""recipes/benchmarks/ensemble_density.py runs with the thread count it is given and says so."""
import runpy
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "benchmarks" / "ensemble_density.py"


def test_ensemble_density_runs_with_the_threads_given_and_its_command_says_how_many(tmp_path, monkeypatch):
    """The script set 2 torch threads whatever the environment said (OMP_NUM_THREADS=1 ignored), and the
    utility and balanced rows' counts depend on the thread count (the gradient sums add up in another
    order): --threads sets it, and the Reproduce line and the machine line carry it."""
    out = tmp_path / "density.md"
    before = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--quick", "--threads", "1", "--out", str(out)])
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(SCRIPT), run_name="__main__")
        ran_with = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert done.value.code == 0
    assert ran_with == 1
    text = out.read_text()
    assert "Reproduce: `python recipes/benchmarks/ensemble_density.py --quick --threads 1`" in text
    assert "1 torch thread(s)" in text
    # the committed results file has the table columns this run writes (the first table: the current one)
    heads = [l for l in text.splitlines() if l.startswith("| policy |")]
    committed = (SCRIPT.parent / "results" / "ensemble_density.md").read_text().splitlines()
    assert heads and [l for l in committed if l.startswith("| policy |")][0] == heads[0], heads
