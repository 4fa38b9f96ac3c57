"""What the diagnostics leave of a caller's state and say of what they measured: removal_scores keeps the
model's pending gradients, the knowledge command's note keeps what was already pruned, a used-up
generator given as the fine-tune loader is named as such, and a float64 gradient below float32's
range still reaches its unit."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adaptive
from adaptive.diagnostics import SilentUnits, knowledge_distribution, removal_scores

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("estimator", ["taylor", "obd"])
def test_removal_scores_leave_the_models_pending_gradients_as_they_were(estimator):
    """It read its statistics by backward() and left every .grad None: a caller's gradients, taken before its
    optimizer step, were lost (collinearity and gradient_by_depth keep them)."""
    net = _net()
    conn = adaptive.Connectome(net)
    data = [(torch.randn(6, 4), torch.randint(0, 3, (6,))) for _ in range(2)]
    F.cross_entropy(net(data[0][0]), data[0][1]).backward()
    before = {n: p.grad.clone() for n, p in net.named_parameters()}
    scores = removal_scores(conn, data, estimator, batches=2)
    assert set(scores) == set(conn.params) and all(bool(s.ne(0).any()) for s in scores.values())
    assert all(p.grad is not None and torch.equal(p.grad, before[n]) for n, p in net.named_parameters())
    net.zero_grad(set_to_none=True)  # and no gradient where there was none
    removal_scores(conn, data, estimator, batches=2)
    assert all(p.grad is None for p in net.parameters())


def test_a_generator_used_up_by_the_order_is_named_as_the_fine_tune_loaders_problem():
    """A generator of 3 batches as the fine-tune loader: its second pass found nothing, and the error said it
    'yielded no batches', which it had."""
    gen = ((torch.randn(6, 4), torch.randint(0, 3, (6,))) for _ in range(3))
    data = [(torch.randn(6, 4), torch.randint(0, 3, (6,))) for _ in range(2)]
    with pytest.raises(ValueError, match="it is a generator or iterator, which one pass uses up .*pass a DataLoader "
                                         "or a list of batches"):
        knowledge_distribution(_net(), data, finetune_loader=gen, finetune_batches=2, counts=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="yielded no batches: it is empty"):
        knowledge_distribution(_net(), data, finetune_loader=[], finetune_batches=2, counts=[0, 1])


def test_a_float64_gradient_below_float32s_range_reaches_its_unit():
    """The peaks are kept in float32: a unit whose float64 gradients were all 1e-60 read 0 and was counted silent."""
    lin = nn.Linear(3, 2).double()
    watch = SilentUnits({"lin": lin})
    (lin(torch.ones(1, 3, dtype=torch.float64)) * torch.tensor([[1e-60, 1.0]], dtype=torch.float64)).sum().backward()
    watch.observe()
    assert watch.layers()[0].silent == 0
    lin.zero_grad()
    (lin(torch.ones(1, 3, dtype=torch.float64)) * torch.tensor([[0.0, 1.0]], dtype=torch.float64)).sum().backward()
    fresh = SilentUnits({"lin": lin})
    fresh.observe()
    assert fresh.layers()[0].silent == 1  # an exact zero is still silent


def test_the_knowledge_commands_note_says_how_many_weights_were_already_pruned(tmp_path):
    """The command wrote its own note over the library's and dropped 'N of the M prunable weights were already
    pruned', which docs/diagnostics.md says the note holds; its last line called the live weights 'prunable'."""
    from adaptive.data import get_dataloaders
    from adaptive.models import build_model

    data = get_dataloaders("digits", batch_size=32)
    torch.manual_seed(0)
    m = build_model("mlp", num_classes=data.num_classes, in_shape=data.in_shape)
    conn = adaptive.Connectome(m)
    g = torch.Generator().manual_seed(0)
    conn.set_masks({n: torch.rand(mk.shape, generator=g) < 0.5 for n, mk in conn.masks.items()})
    torch.save(m.state_dict(), tmp_path / "dense_state_dict.pt")
    conn.save(str(tmp_path / "connectome.safetensors"))
    pruned = conn.num_synapses() - conn.num_live()
    out = tmp_path / "kd"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "recipes", "diagnostics.py"), "knowledge", "--output_dir",
                          str(out), "--weights", str(tmp_path / "dense_state_dict.pt"), "--points", "4", "--batch_size",
                          "64", "--threads", "1"], capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"})
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((out / "knowledge_summary.json").read_text())
    assert summary["pruned_before"] == pruned
    assert f"{pruned} of the {conn.num_synapses()} prunable weights were already pruned" in summary["note"]
    assert f"{conn.num_live():,} live prunable weights ({pruned:,} already pruned)" in run.stdout
