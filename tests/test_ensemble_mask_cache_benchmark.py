"""recipes/benchmarks/ensemble_mask_cache.py: the variants' order rotates and every run's masks are compared."""
import runpy
import sys

import pytest
import torch
import torchvision
from torch import nn

import adaptive
import adaptive.paths as paths

SCRIPT = paths.REPO_ROOT / "recipes" / "benchmarks" / "ensemble_mask_cache.py"


def _tiny(**kw):
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 1000))


def _run(tmp_path, monkeypatch, rounds):
    monkeypatch.setattr(torchvision.models, "resnet50", _tiny)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--updates", "2", "--rounds", str(rounds), "--size", "8",
                                      "--out", str(tmp_path / "cache.md")])
    runpy.run_path(str(SCRIPT), run_name="__main__")


def test_the_variants_order_rotates_every_round(tmp_path, monkeypatch, capsys):
    """Every round ran before, cache, shipped in that order: 'before' always ran first on a cold machine."""
    torch.manual_seed(0)
    _run(tmp_path, monkeypatch, 3)
    runs = [l.split()[1] for l in capsys.readouterr().out.splitlines() if l.startswith("block:4x4 ")]
    assert runs[:3] == ["before", "cache", "cache"] and runs[3:6] == ["cache", "cache", "before"], runs
    assert (tmp_path / "cache.md").read_text().count("| block:4x4 |") == 1


def test_a_run_reaching_other_masks_in_an_early_round_is_caught(tmp_path, monkeypatch):
    """Only the last round's mask hashes were compared: a variant that reached other masks in an earlier
    round passed."""
    real = adaptive.Connectome.mask_hash
    calls = []

    def first_differs(self):
        calls.append(1)
        return "other" if len(calls) == 1 else real(self)

    monkeypatch.setattr(adaptive.Connectome, "mask_hash", first_differs)
    with pytest.raises(SystemExit, match="block:4x4: the runs reached different masks"):
        _run(tmp_path, monkeypatch, 2)
