"""The training loop and the recipe's run folder in value (adaptive/training.py, recipes/_adaptive): each test pins
one number a user gets, against one careless edit no other test noticed; tiny and fast."""
import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _scripts import load_script  # noqa: E402
from _training import fresh_recipe_state, recipe_runner  # noqa: E402

R = load_script("recipes/adaptive.py", "recipe_adaptive_training_loop_gaps")
TINY = ["--update_every", "5", "--log_every", "5", "--threads", "1", "--progress", "false", "--figures", "false"]

_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)
run = recipe_runner(R, TINY)


class Stop(Exception):
    pass


def test_a_train_state_round_trip_keeps_the_last_steps_lr():
    """TrainState.state_dict() records the rate the last trained step used (what a held-out row after the
    resume reports before the next step): load_state_dict takes it back."""
    from adaptive.training import TrainState

    saved = TrainState(step=7, lr=0.0375).state_dict()
    back = TrainState()
    back.load_state_dict(saved)
    assert back.step == 7 and back.lr == 0.0375


def test_metrics_csv_reads_back_a_nan_or_inf_loss():
    """A diverged run writes loss nan (and a grad_norm of inf): read_metrics_csv parses them as floats."""
    import tempfile

    from adaptive.training import read_metrics_csv, write_metrics_csv

    rows = [{"step": 5, "epoch": 0, "split": "train", "loss": float("nan"), "accuracy": 0.1, "density": 0.5,
             "removed": 3, "lr": 0.1, "grad_norm": float("inf"), "clipped": 1.0}]
    with tempfile.TemporaryDirectory() as d:
        write_metrics_csv(rows, os.path.join(d, "m.csv"))
        back = read_metrics_csv(os.path.join(d, "m.csv"))
    assert math.isnan(back[0]["loss"]) and back[0]["grad_norm"] == float("inf") and back[0]["step"] == 5


def test_a_progress_line_names_the_steps_an_earlier_train_row_covers():
    """Train rows at steps 5 and 10, the line at step 12: the loss shown is steps 6-10's."""
    from recipes._adaptive.notes import _last_train_loss

    rows = [{"split": "train", "step": 5, "loss": 1.0}, {"split": "train", "step": 10, "loss": 0.5},
            {"split": "holdout", "step": 12, "loss": 0.7}]
    assert _last_train_loss(rows, 12) == "0.5 (steps 6-10)"
    assert _last_train_loss(rows[:1], 12) == "1 (steps 1-5)"


def test_the_test_rows_lr_is_the_last_trained_steps_under_a_cosine(tmp_path):
    """The cosine reaches 0 after the last step: the held-out and test rows report the rate the last step
    trained with (the last train row's), not the scheduler's next one."""
    res = run(tmp_path, "--max_steps", "5", "--lr", "0.1", "--eval_every", "5")
    train = [r for r in res.state.metrics if r["split"] == "train"]
    test = [r for r in res.state.metrics if r["split"] == "test"]
    assert train[-1]["step"] == 5 and train[-1]["lr"] > 0.0
    assert test[-1]["lr"] == pytest.approx(train[-1]["lr"], rel=1e-12)


def test_the_final_held_out_evaluation_is_one_row(tmp_path):
    """A run whose last step is an evaluation step reuses that held-out score: metrics.csv holds one
    held-out row at the last step, not two."""
    res = run(tmp_path, "--max_steps", "5", "--eval_every", "5")
    holdout = [r for r in res.state.metrics if r["split"] == "holdout"]
    assert [r["step"] for r in holdout] == [5]
    assert res.summary["holdout_accuracy"] == holdout[0]["accuracy"]


def test_a_resume_into_another_output_dir_writes_there(tmp_path):
    """--resume RUN/checkpoints/step_N --output_dir OTHER continues the run into OTHER; the run it resumed
    from is left as it was."""
    def stop(state):
        if state.step == 5:
            raise Stop

    with pytest.raises(Stop):
        run(tmp_path / "a", "--max_steps", "10", "--checkpoint_every", "5", on_step=stop)
    ckpt = tmp_path / "a" / "checkpoints" / "step_00000005"
    res = run(tmp_path / "b", "--max_steps", "10", "--checkpoint_every", "5", "--resume", str(ckpt))
    assert res.state.step == 10 and res.output_dir == tmp_path / "b"
    assert (tmp_path / "b" / "summary.json").is_file() and not (tmp_path / "a" / "summary.json").exists()


def test_a_resume_may_keep_another_number_of_checkpoints(tmp_path):
    """--keep_checkpoints shapes what the folder keeps, not what the run computes: a resume may change it."""
    def stop(state):
        if state.step == 5:
            raise Stop

    common = ["--max_steps", "10", "--checkpoint_every", "5"]
    with pytest.raises(Stop):
        run(tmp_path, *common, on_step=stop)
    res = run(tmp_path, *common, "--keep_checkpoints", "1", "--resume", "latest")
    assert res.state.step == 10


def test_augmentation_is_keyed_on_the_runs_seed(tmp_path, monkeypatch):
    """--augment with --seed 3: each epoch's crops and flips are keyed on seed 3 (TensorImages.set_epoch's
    seed), not on the default 0, so runs of other seeds crop otherwise."""
    from adaptive.data.tensors import TensorImages

    seeds = []
    real = TensorImages.set_epoch

    def spy(self, epoch, seed=None):
        seeds.append(seed)
        return real(self, epoch, seed=seed)

    monkeypatch.setattr(TensorImages, "set_epoch", spy)
    run(tmp_path, "--dataset", "fake", "--dataset_kw", "{shape: [3, 8, 8], train_size: 96, test_size: 16}",
        "--augment", "true", "--seed", "3", "--batch_size", "16", "--max_steps", "8")
    assert {s for s in seeds if s is not None} == {3}

