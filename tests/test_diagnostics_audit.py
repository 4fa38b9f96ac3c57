"""Diagnostics on hand-made cases: dead bands, short last batches, blank cells, early refusals,
atomic tables, true medians."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from adaptive.diagnostics import BandGradientScaler, progress
from adaptive.diagnostics.table import Table
from adaptive.models import build_model
from _scripts import CHILD_TIMEOUT  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def test_a_dead_band_does_not_change_the_live_bands_scale():
    """A band whose gradient is always zero (a dead unit) once entered the common size as |g| = 1 and
    scaled the live bands up 2.4x from the second step on."""
    torch.manual_seed(0)
    net = build_model("densecat", num_classes=10, in_shape=(64,), depth=4, width=16)
    with torch.no_grad():
        net.layers[3].bias.fill_(-1e4)  # layer 4 dead: the classifier's band 4 gets no gradient
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    d = torch.as_tensor(net.input_depths("classifier"))
    BandGradientScaler(net, layers=["classifier"], momentum=0.9)
    seen = []
    for _ in range(3):
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        a = net.classifier.weight.grad[:, d < 4].abs()
        seen.append(math.exp(a[a > 0].log().mean().item()))
    assert seen[1] == pytest.approx(seen[0], rel=1e-6) and seen[2] == pytest.approx(seen[0], rel=1e-6)


def test_the_obd_order_uses_the_loaders_batch_size_not_the_short_last_batch():
    from adaptive import Connectome
    from adaptive.diagnostics.removal_order import removal_scores

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    batches = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(2)] + [(torch.randn(2, 6), torch.randint(0, 3, (2,)))]
    got = removal_scores(Connectome(model), batches, "obd", batches=None)["weight"]
    full = removal_scores(Connectome(model), batches[:2] + [(batches[2][0].repeat(4, 1), batches[2][1].repeat(4))],
                          "obd", batches=None)["weight"]
    # the same batch size (8) reaches the Fisher term either way; the statistics differ only by
    # the third batch's gradient being the same mean over 2 or 8 identical copies
    assert torch.allclose(got, full, rtol=1e-5, atol=1e-8)


def test_a_blank_removed_cell_keeps_the_other_rows_counts(tmp_path):
    (tmp_path / "events.jsonl").write_text('{"step": 0, "kind": "init", "pruned": 500, "grown": 0}\n'
                                          '{"step": 10, "pruned": 6, "grown": 0}\n')
    (tmp_path / "metrics.csv").write_text("step,split,loss,accuracy,removed\n0,train,2.0,0.1,100\n"
                                         "10,train,1.5,0.3,\n20,holdout,1.4,0.5,300\n")
    p = progress(str(tmp_path))
    # the blank train row of step 10 ran before step 10's update: the init's 500, not 506
    assert [r["removed"] for r in p.metrics] == [100, 500, 300]


def _diagnostics(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "recipes" / "diagnostics.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT)


def test_progress_of_a_missing_folder_creates_nothing(tmp_path):
    r = _diagnostics("progress", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert r.returncode != 0 and "does not exist" in r.stderr
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("args, message", [
    (["collinearity", "--batches", "0"], "--batches must be an integer >= 1"),
    (["collinearity", "--split", "holdout", "--holdout", "0"], "--holdout 0 leaves none"),
    (["knowledge", "--estimator", "nosuch"], "unknown estimator 'nosuch'"),
    (["knowledge", "--estimator", "taylor", "--holdout", "0"], "--holdout 0 leaves none"),
    (["knowledge", "--max_fraction", "1.5"], "--max_fraction must be in (0, 1]"),
])
def test_bad_diagnostics_arguments_are_refused_before_training(tmp_path, args, message):
    r = _diagnostics(*args, "--train_steps", "100000", cwd=tmp_path)
    assert r.returncode != 0 and message in r.stderr
    assert "training" not in r.stdout


def test_a_table_write_that_fails_leaves_the_old_file(tmp_path, monkeypatch):
    import csv

    path = tmp_path / "t.csv"
    Table([{"a": 1, "b": 2}]).to_csv(path)
    before = path.read_text()

    def boom(self, rows):
        raise KeyboardInterrupt

    monkeypatch.setattr(csv.DictWriter, "writerows", boom)
    with pytest.raises(KeyboardInterrupt):
        Table([{"a": 3, "b": 4}]).to_csv(path)
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_collinearity_medians_are_true_medians():
    from adaptive.diagnostics.collinearity import _median

    assert _median(torch.tensor([4.0, 1.0, 3.0, 2.0])) == 2.5
    assert _median(torch.tensor([3.0, 1.0, 2.0])) == 2.0


def test_to_pandas_without_pandas_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # as on a machine without pandas
    with pytest.raises(ImportError, match="pip install pandas"):
        Table([{"a": 1}]).to_pandas()
