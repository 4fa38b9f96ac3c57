"""recipes/benchmarks/line_search_rollback.py: the old and the sparse snapshot+restore alternate which runs first."""
import runpy
import sys

import torch
import torchvision
from torch import nn

import adaptive.optim_state as optim_state
import adaptive.rollback as rollback
import adaptive.paths as paths

SCRIPT = paths.REPO_ROOT / "recipes" / "benchmarks" / "line_search_rollback.py"


def test_old_and_sparse_snapshots_alternate_which_runs_first(tmp_path, monkeypatch):
    """Every repeat ran the old snapshot+restore before the sparse one, so the sparse one always ran on the
    caches (and freed memory) the old one had just left over the same layers: odd repeats now run it first.
    A tiny model stands in for resnet50; the timed sides are recorded in the order they run."""
    calls = []
    real_snapshot, real_edit = optim_state.snapshot_state, rollback.EditSnapshot

    def old_snapshot(*a, **kw):
        calls.append("old")
        return real_snapshot(*a, **kw)

    class NewSnapshot(real_edit):
        def __init__(self, *a, **kw):
            calls.append("new")
            super().__init__(*a, **kw)

    def tiny(**kw):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4))

    monkeypatch.setattr(optim_state, "snapshot_state", old_snapshot)
    monkeypatch.setattr(rollback, "EditSnapshot", NewSnapshot)
    monkeypatch.setattr(torchvision.models, "resnet50", tiny)
    out = tmp_path / "rollback.md"
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--repeats", "4", "--ensemble", "synapse", "--fraction", "0.2",
                                      "--out", str(out)])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    assert calls[:8] == ["old", "new", "new", "old", "old", "new", "new", "old"], calls
    row = [l for l in out.read_text().splitlines() if l.startswith("| synapse |")]
    assert len(row) == 1 and row[0].rstrip().endswith("| yes |"), row
