"""Diagnostics audit fixes: knowledge_distribution on a pruned model, the user's matplotlib backend
kept, the gradient histogram's floor below float32's subnormals, a single-batch collinearity warned."""
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from adaptive import Connectome
from adaptive.diagnostics import KnowledgeCurve, collinearity, knowledge_distribution
from adaptive.diagnostics._common import LogHistogram
from _scripts import CHILD_TIMEOUT  # noqa: E402
from test_diagnostics_knowledge import constructed  # the classifier whose curves are known exactly

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pruned_constructed():
    model, data = constructed()
    conn = Connectome(model)
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[:, 3] = False  # feature 3's pair (|w| = 1) already pruned: sample 3 already lost
    conn.set_masks({"weight": mask})
    return model, data, conn


def test_knowledge_starts_from_the_models_pruning():
    model, data, conn = pruned_constructed()
    curve = knowledge_distribution(model, data, counts=range(7), estimator="magnitude", conn=conn)
    assert curve.total == 6 and curve.pruned_before == 2
    assert curve.table["removed"] == list(range(7))
    assert curve.table["fraction"][-1] == 1.0
    # the pruned pair is neither counted nor removed again: the first removals are the |w| = 2 pair
    assert curve.table["accuracy"] == [0.75, 0.75, 0.5, 0.5, 0.25, 0.25, 0.0]
    assert "2 of the 8 prunable weights were already pruned" in curve.note
    with pytest.raises(ValueError, match=r"\[0, 6\]"):
        knowledge_distribution(model, data, counts=[7], conn=conn)


def test_knowledge_fine_tune_never_regrows_pruned_weights():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    X = torch.randn(200, 6)
    Y = X[:, :4].argmax(1)
    conn = Connectome(net)
    conn.set_masks({n: torch.rand_like(p) < 0.3 for n, p in conn.params.items()})
    pruned = sum(int((~m).sum()) for m in conn.masks.values())
    data = [(X[i:i + 50], Y[i:i + 50]) for i in range(0, 200, 50)]
    c = knowledge_distribution(net, data, counts=[0, 1], finetune_batches=5, finetune_loader=data, lr=0.1, conn=conn)
    assert c.pruned_before == pruned and c.total == conn.num_synapses() - pruned
    work = c.meta["connectome"]
    zeros = sum(int((p == 0).sum()) for p in work.params.values())
    assert zeros == pruned + 1  # the model's pruned weights plus the one removed, after fine-tuning
    for n, m in conn.masks.items():
        assert not work.masks[n][~m].any()


def test_knowledge_finds_an_attached_connectome(tmp_path):
    model, data, conn = pruned_constructed()
    conn.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    curve = knowledge_distribution(model, data, counts=[0, 1, 2], estimator="magnitude")
    assert curve.total == 6 and curve.pruned_before == 2
    curve.save(tmp_path)
    assert json.loads((tmp_path / "knowledge_summary.json").read_text())["pruned_before"] == 2
    back = KnowledgeCurve.load(str(tmp_path))
    assert back.pruned_before == 2 and back.total == 6
    curve.plot(tmp_path / "k.png")


def test_knowledge_warns_on_zeros_without_a_connectome():
    model, data = constructed()
    with torch.no_grad():
        model.weight[:, 3] = 0.0
    with pytest.warns(UserWarning, match="exactly zero.*conn=conn"):
        knowledge_distribution(model, data, counts=[0, 1])
    intact, data = constructed()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        knowledge_distribution(intact, data, counts=[0, 1])


def test_knowledge_refuses_a_connectome_of_another_model():
    model, data, conn = pruned_constructed()
    other, _ = constructed()
    with pytest.raises(ValueError, match="another model"):
        knowledge_distribution(other, data, counts=[0, 1], conn=conn)


BACKEND_SCRIPT = r"""
import sys, torch, matplotlib
CHOICE = sys.argv[1]
if CHOICE != "none":
    matplotlib.use(CHOICE)
import matplotlib.pyplot as plt
if CHOICE != "none":
    plt.figure()
from torch import nn
from adaptive.diagnostics import collinearity
from adaptive.plots import plot_loss_accuracy
net = nn.Sequential(nn.Linear(4, 3))
X = torch.randn(32, 4); Y = torch.randint(0, 3, (32,))
col = collinearity(net, [(X[:16], Y[:16]), (X[16:], Y[16:])])
col.plot(sys.argv[2] + "/col.png")
plot_loss_accuracy([{"step": 1, "split": "train", "loss": 1.0, "accuracy": 0.5}], sys.argv[2] + "/la.png")
# prune_pretrained's curves.png and the graphs figures called matplotlib.use("Agg") (graphs: unless MPLBACKEND was set)
from recipes._prune_pretrained.plot import _plot
_plot([], [dict(target="dense", removed=0, holdout_acc=0.8, holdout_loss=0.5, test_acc=0.7, test_loss=0.6)], [],
      sys.argv[2] + "/curves.png")
from graphs.figures import _plt
_plt()
print(matplotlib.get_backend().lower(), plt.get_fignums())
"""


@pytest.mark.parametrize("choice, expect", [("svg", "svg [1]"), ("pdf", "pdf [1]"), ("none", "agg []")])
def test_plots_keep_the_users_backend(tmp_path, choice, expect):
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY")}
    env.update(PYTHONPATH=ROOT, OMP_NUM_THREADS="1", MPLCONFIGDIR=str(tmp_path / "mpl"))
    r = subprocess.run([sys.executable, "-c", BACKEND_SCRIPT, choice, str(tmp_path)], env=env, cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == expect
    assert (tmp_path / "col.png").exists() and (tmp_path / "la.png").exists() and (tmp_path / "curves.png").exists()


@pytest.mark.parametrize("values, dtype", [
    ([3e-42, 5e-42, 8e-42], torch.float32),  # float32 subnormals
    ([1.401298464324817e-45] * 3, torch.float32),  # the smallest one
    ([2e-40, 5e-40, 9e-40], torch.bfloat16),  # bfloat16 subnormals
    ([1e-7, 3e-7, 5e-6], torch.float16),
])
def test_histogram_bins_subnormal_gradients(values, dtype):
    v = torch.tensor(values, dtype=dtype)
    h = LogHistogram(1)
    h.update(v, torch.zeros(3, dtype=torch.long))
    true = float(v.double().median())
    assert float(h.quantile(0.5)[0]) == pytest.approx(true, rel=0.012, abs=0)  # abs=0: approx allows 1e-12 by default


def test_collinearity_warns_on_a_single_batch():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    X, Y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    with pytest.warns(UserWarning, match="single batch.*several"):
        collinearity(net, [(X, Y)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collinearity(net, [(X[:16], Y[:16]), (X[16:], Y[16:])])


def test_histogram_quantile_interpolates_as_torch_quantile():
    """The median of 96 values read the lower of the two middle ones (3% and more below
    torch.quantile on spread values): each quantile, zeros included, is now within the documented
    1.2% of torch.quantile's linear interpolation."""
    torch.manual_seed(0)
    for t in range(50):
        v = torch.rand(96, dtype=torch.float64) ** 4 * 10.0 ** (t % 7 - 3)
        v[:t % 5] = 0.0  # a few exact zeros, which rank below everything
        h = LogHistogram(2)
        h.update(v, torch.zeros(96, dtype=torch.long))
        h.update(torch.tensor([5.0]), torch.ones(1, dtype=torch.long))  # a group of one value
        for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
            got = h.quantile(q)
            assert float(got[0]) == pytest.approx(float(torch.quantile(v, q)), rel=0.012, abs=0), (t, q)
            assert float(got[1]) == pytest.approx(5.0, rel=0.012)
    assert float(LogHistogram(1).quantile(0.5)[0]) == 0.0  # nothing counted
