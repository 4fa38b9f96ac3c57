"""Runs into a pipe or a log file (stderr not a terminal: no bar) print one plain progress line per
held-out evaluation, so an hours-long job is not silent between its start line and its summary."""
import os
import subprocess
import sys

import pytest
import torch

from adaptive.cli import progress_line, progress_lines
from adaptive.models import build_model
from _scripts import CHILD_TIMEOUT, ROOT, load_script
from _training import fresh_recipe_state  # noqa: E402


_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)  # a fresh Accelerator per in-process run


def test_progress_line_is_one_plain_line():
    line = progress_line(step="40/200", epoch="2/10", train_loss=0.51234, holdout_accuracy=None, density="0.2000",
                         seconds=12.4)
    assert line == "progress: step 40/200, epoch 2/10, train loss 0.5123, density 0.2000, 12 s"
    assert progress_lines(None, True) and not progress_lines(None, False)  # pytest's stderr is no terminal
    assert not progress_lines(True, True)  # a bar asked for: no lines besides it


def test_progress_line_shows_accuracy_as_the_closing_lines_percentage():
    # the closing line and the tables print accuracies as percentages (92.65%, 85.50): a progress line
    # of the same console printed the same held-out accuracy as a fraction (0.8898)
    from adaptive.cli import mask_only_progress

    line = progress_line(step="85/150", train_loss=0.39744, holdout_accuracy=0.8898163606010017, density="0.2000",
                         seconds=1.0)
    assert line == "progress: step 85/150, train loss 0.3974, holdout accuracy 88.98%, density 0.2000, 1 s"
    shown = []
    on_record = mask_only_progress(200, shown.append)
    on_record({"kind": "update", "target": 0.05, "train_loss": 0.5})
    on_record({"kind": "eval", "step": 5, "holdout_loss": 0.4433, "holdout_acc": 0.875, "removed": 10,
               "wall_seconds": 35.2})
    assert shown == ["progress: step 5, target 0.05, train loss 0.5, holdout loss 0.4433, holdout accuracy 87.50%, "
                     "density 0.9500, 35 s"]


def test_train_run_into_a_pipe_prints_progress_lines(tmp_path):
    cmd = [sys.executable, str(ROOT / "recipes" / "adaptive.py"), "--max_steps", "40", "--eval_every", "10",
           "--update_every", "10", "--log_every", "5", "--threads", "1", "--figures", "false",
           "--output_dir", str(tmp_path / "run")]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("progress: ")]
    assert [l.split(",")[0] for l in lines] == [f"progress: step {s}/40" for s in (10, 20, 30, 40)]
    assert all(" train loss " in l and " holdout accuracy " in l and " density " in l and l.endswith(" s")
               for l in lines), lines
    assert "\r" not in r.stdout + r.stderr  # no bar redraws in a log file


def test_mask_only_run_prints_progress_lines_and_counts_synapses(tmp_path, capsys):
    R = load_script("recipes/adaptive.py", "adaptive_recipe_progress")
    torch.manual_seed(0)
    torch.save(build_model("mlp", num_classes=10, in_shape=(64,)).state_dict(), tmp_path / "w.pt")
    res = R.main(["--output_dir", str(tmp_path / "run"), "--mode", "mask_only", "--target", "0.3", "--epochs", "1",
                  "--update_every", "8", "--threads", "1", "--figures", "false", "--weights", str(tmp_path / "w.pt")])
    out = capsys.readouterr().out
    synapses, params = res.conn.num_synapses(), sum(p.numel() for p in res.model.parameters())
    assert synapses < params
    assert f"{synapses:,} synapses (of {params:,} parameters)" in out
    lines = [l for l in out.splitlines() if l.startswith("progress: step ")]
    assert lines and all("target 0.3" in l and "holdout accuracy" in l for l in lines), out
    assert "\r" not in out


def test_prune_pretrained_prints_progress_lines(tmp_path, capsys):
    mod = load_script("recipes/prune_pretrained.py", "prune_pretrained_progress")
    torch.manual_seed(0)
    torch.save(build_model("resnet20", num_classes=10, in_shape=(3, 8, 8)).state_dict(), tmp_path / "w.pt")
    mod.main(["--model", "resnet20", "--weights", str(tmp_path / "w.pt"), "--dataset", "fake", "--dataset-kw",
              "shape=[3, 8, 8]", "--output_dir", str(tmp_path / "out"), "--batch-size", "32", "--eval-batch-size", "64", "--window", "2", "--passes",
              "0.5", "--verify-batches", "1", "--eval-every", "2", "--train-eval-batches", "2", "--subset", "192",
              "--remove", "0.5", "--threads", "1"])
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if l.startswith("progress: step ")]
    assert lines and all("target 0.5" in l and "density" in l for l in lines), out
    assert "\r" not in out


def test_counts_of_one_are_singular(tmp_path, capsys):
    from adaptive.cli import counted

    assert (counted(1, "dead unit"), counted(0, "unit"), counted(1200, "controller update")) == (
        "1 dead unit", "0 units", "1,200 controller updates")
    R = load_script("recipes/adaptive.py", "adaptive_recipe_plural")
    res = R.main(["--max_steps", "20", "--update_every", "10", "--threads", "1", "--figures", "false",
                  "--output_dir", str(tmp_path / "run")])
    assert res.summary["updates"] == 1 and "), 1 controller update\n" in capsys.readouterr().out


def test_counting_synapses_warns_nothing_the_connectome_warns_once(recwarn):
    """The start line's count (count_synapses) and check_targets ran discovery, whose warnings (a
    parametrized weight left dense, ...) came again from each call: prune_pretrained.py said one three times."""
    import adaptive
    from adaptive.mask_only import check_targets, count_synapses

    model = torch.nn.Sequential(torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(4, 4)), torch.nn.Linear(4, 2))
    check_targets(model, 0.5)
    assert count_synapses(model) == 8 and not recwarn.list
    with pytest.warns(UserWarning, match="parametrized weight"):
        assert adaptive.Connectome(model).num_synapses() == 8


def test_a_progress_line_between_train_rows_names_the_steps_of_its_train_loss(tmp_path, capsys):
    """An evaluation off --log_every's grid (here step 15; an epoch's end in general) printed the last
    train row's loss as the train loss at that step; it names the steps the row covers."""
    R = load_script("recipes/adaptive.py", "adaptive_recipe_progress_loss")
    res = R.main(["--max_steps", "30", "--eval_every", "15", "--log_every", "10", "--update_every", "10",
                  "--threads", "1", "--figures", "false", "--output_dir", str(tmp_path / "run")])
    loss = {r["step"]: r["loss"] for r in res.state.metrics if r["split"] == "train"}
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("progress: ")]
    assert len(lines) == 2
    assert f", train loss {loss[10]:.4g} (steps 1-10), " in lines[0]
    assert f", train loss {loss[30]:.4g}, " in lines[1]  # a row closed at the line's step: its loss alone


def test_a_train_row_without_a_loss_is_passed_through_to_the_progress_line():
    """A train row whose loss is missing (None) gives the progress line no loss rather than a
    format error that would stop the run at an evaluation."""
    R = load_script("recipes/adaptive.py", "adaptive_recipe_progress_loss_none")
    rows = [{"split": "train", "step": 10, "loss": 0.5}, {"split": "train", "step": 20, "loss": None}]
    assert R._last_train_loss(rows, 25) is None
    assert R._last_train_loss(rows[:1], 15) == "0.5 (steps 1-10)"
    assert R._last_train_loss([], 15) is None


def test_mask_only_progress_names_a_target_of_0_which_runs_no_update():
    """--remove 0 0.2: target 0's evaluation (the dense network, before any update) was shown with no
    target, as the line took the target from the last update; and it took no other target's train loss."""
    from torch.utils.data import DataLoader, TensorDataset

    from adaptive.cli import mask_only_progress
    from adaptive.mask_only import optimize_connectome

    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.arange(64) % 4
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    lines = []
    optimize_connectome(model, DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(TensorDataset(x, y), batch_size=32),
                        [0, 0.2], passes=0.5, window=2, eval_every=0, progress=False,
                        callback=mask_only_progress(192, lines.append))
    assert len(lines) == 2 and lines[0].startswith("progress: step 0, target 0, holdout loss "), lines
    assert lines[1].startswith("progress: step 2, target 0.2, train loss "), lines
