"""overhead.py's masking variants: each really masks, each runs the library's step checks (so that the
'masking work alone' table compares masking only), and each counts the memory it holds."""
import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

import adaptive

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "benchmarks" / "overhead.py"
NS = runpy.run_path(str(SCRIPT))


def _case():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    return base, torch.randn(4, 12), torch.randint(0, 3, (4,))


@pytest.mark.parametrize("variant", list(NS["HOOK_VARIANTS"]))
def test_every_variant_masks_and_runs_the_librarys_step_checks(variant, monkeypatch):
    calls = []
    real = adaptive.Connectome._check_params_quickly
    monkeypatch.setattr(adaptive.Connectome, "_check_params_quickly", lambda self: calls.append(1) or real(self))
    base, x, y = _case()
    ms, conn = NS["hook_ms"](NS["HOOK_VARIANTS"][variant], base, x, y, 3)
    assert ms > 0
    assert len(calls) == 4  # one per step: warm-up + 3 timed
    for n, p in conn.params.items():
        assert bool((p.detach()[~conn.masks[n]] == 0).all()), n
        assert conn.masks[n].float().mean() < 0.9, n  # half the synapses pruned: the check above reads something


def test_the_float_multiply_variant_counts_its_float_masks():
    base, x, y = _case()
    _, at_step = NS["hook_ms"](NS["AtStep"], base, x, y, 1)
    _, floats = NS["hook_ms"](NS["FloatAtStep"], base, x, y, 1)
    synapses = at_step.num_synapses()
    assert at_step.resident_bytes() / synapses == 6.0  # bool mask, its copy as last set, the 0/1 float32-width cache
    assert floats.resident_bytes() / synapses == 10.0  # and a float32 copy of every mask


def test_a_variant_that_does_not_mask_is_caught(monkeypatch):
    """The benchmark's own check fails where a variant's masking does nothing."""
    base, x, y = _case()
    monkeypatch.setattr(NS["BoolMask"], "_foreach_mask", lambda self, grads, weights, only=None: None)
    with pytest.raises(AssertionError, match="revived a pruned weight"):
        NS["hook_ms"](NS["BoolMask"], base, x, y, 2)
