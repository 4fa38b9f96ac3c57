"""The recipes' internals in value (recipes/_adaptive, recipes/_prune_pretrained, recipes/_diagnostics): each test
pins one value a user gets, against one careless edit no other test noticed; tiny and fast."""
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _scripts import load_script  # noqa: E402
from _training import fresh_recipe_state, recipe_runner  # noqa: E402

R = load_script("recipes/adaptive.py", "recipe_adaptive_internals_values")
TINY = ["--update_every", "5", "--log_every", "5", "--threads", "1", "--progress", "false", "--figures", "false"]

_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)
run = recipe_runner(R, TINY)


def test_epochs_under_accumulation_count_optimizer_steps_of_whole_groups(tmp_path):
    """--epochs 1 with --gradient_accumulation_steps 2: one pass over the train part, i.e. half as many
    optimizer steps as batches (20 batches of 16 -> 10 steps), not one step per batch."""
    res = run(tmp_path, "--subset", "355", "--epochs", "1", "--batch_size", "16", "--gradient_accumulation_steps", "2")
    assert res.state.steps_per_epoch == 10
    assert res.state.step == 10 and res.summary["steps"] == 10
    assert {r["epoch"] for r in res.state.metrics if r["split"] == "train"} == {0}


def test_line_search_scores_batches_of_eval_batch_size(tmp_path):
    """--line_search N: N held-out batches of --eval_batch_size each (its help says so), not of --batch_size."""
    res = run(tmp_path, "--max_steps", "10", "--line_search", "2", "--eval_batch_size", "16")
    check = res.controller.holdout_loss
    assert check.batch_size == 16 and check.examples() == 2 * 16


def test_adamw_takes_the_weight_decay_option():
    from recipes._adaptive.builders import build_optimizer
    from recipes._adaptive.config import RunConfig

    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(RunConfig(optimizer="adamw", weight_decay=0.0123, momentum=0.8), model)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["weight_decay"] == 0.0123 and opt.param_groups[0]["betas"] == (0.8, 0.999)
    sgd = build_optimizer(RunConfig(weight_decay=0.0123, momentum=0.5), model)
    assert sgd.param_groups[0]["weight_decay"] == 0.0123 and sgd.param_groups[0]["nesterov"] is True


def test_a_recorded_window_and_eval_every_read_as_options_keep_the_evaluation_cadence():
    """An earlier mask_only run's --mask_only_kw window=4, eval_every=2 (evaluations every 2 updates of 4
    batches): resumed as --update_every 4, --eval_every 8 (in steps), whatever update_every it recorded."""
    from recipes._adaptive.derived_keys import _kw_as_options

    got = _kw_as_options({"update_every": 1, "eval_every": 0, "mask_only_kw": {"window": 4, "eval_every": 2}})
    assert got == {"update_every": 4, "eval_every": 8, "mask_only_kw": {}}


def test_a_recorded_passes_of_one_reads_as_one_epoch():
    """--mask_only_kw passes=1 (recorded before the recipe set passes itself) is --epochs 1 with no
    --max_steps, as passes=2 is --epochs 2: config.yaml then records options a new run takes."""
    from recipes._adaptive.derived_keys import _kw_as_options

    for passes in (1, 2):
        got = _kw_as_options({"update_every": 1, "max_steps": 5, "mask_only_kw": {"passes": passes}})
        assert got == {"epochs": passes, "max_steps": None, "mask_only_kw": {}}


def test_a_warmup_as_long_as_the_epochs_steps_is_taken(tmp_path):
    """--warmup_steps equal to the run's steps counted from --epochs: the last step reaches --lr (as
    --max_steps N --warmup_steps N is taken); only a longer warmup is refused."""
    res = run(tmp_path, "--subset", "355", "--epochs", "1", "--warmup_steps", "10")
    assert res.state.steps_per_epoch == 10 and res.state.step == 10


def test_edits_stop_at_the_nearest_step_to_end_fraction():
    """end_step = round(end_fraction x steps): 0.75 of 5 steps is step 4, not 3."""
    from adaptive import Connectome
    from recipes._adaptive.builders import build_controller
    from recipes._adaptive.config import RunConfig

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    cfg = RunConfig(end_fraction=0.75, update_every=1, policy="set", density=0.5)
    ctrl = build_controller(cfg, Connectome(model), torch.optim.SGD(model.parameters(), lr=0.1), total_steps=5)
    assert ctrl.end_step == 4


MO = ["--mode", "mask_only", "--target", "0.3", "--subset", "300"]


def test_mask_only_eval_every_counts_steps_in_whole_update_windows(tmp_path):
    """--eval_every 4 with --update_every 2: a held-out row every 4 steps (every 2 updates), not every 4 updates."""
    from adaptive.training import read_metrics_csv

    res = run(tmp_path, *MO, "--max_steps", "8", "--update_every", "2", "--eval_every", "4")
    held = [int(r["step"]) for r in read_metrics_csv(tmp_path / "metrics.csv") if r["split"] == "holdout"]
    assert held == [4, 8] and res.state.step == 8


def test_mask_only_max_steps_below_one_pass_reads_that_many_batches(tmp_path):
    """--max_steps counts training batches per target, also fewer than one pass holds."""
    res = run(tmp_path, *MO, "--max_steps", "3", "--update_every", "1")
    assert res.state.step == 3 and res.summary["updates"] == 3


def test_mask_only_train_rows_give_the_density_their_window_ran_at(tmp_path):
    """A train row is the update window's batches, run before that update's edit: the first window ran on
    the dense network (density 1.0), whatever the update then removed."""
    from adaptive.training import read_metrics_csv

    run(tmp_path, *MO, "--max_steps", "4", "--update_every", "1")
    train = [r for r in read_metrics_csv(tmp_path / "metrics.csv") if r["split"] == "train"]
    assert float(train[0]["density"]) == 1.0 and float(train[-1]["density"]) < 1.0


def test_a_resume_giving_eval_batch_size_as_the_batch_size_is_the_same_run(tmp_path):
    run(tmp_path, "--max_steps", "4", "--checkpoint_every", "2", "--subset", "300", "--update_every", "2")
    res = run(tmp_path, "--max_steps", "4", "--subset", "300", "--update_every", "2", "--resume", "latest", "--eval_batch_size", "32")
    assert res.state.step == 4


def test_a_resume_giving_other_epochs_beside_the_same_max_steps_is_the_same_run(tmp_path):
    run(tmp_path, "--max_steps", "4", "--checkpoint_every", "2", "--subset", "300", "--update_every", "2")
    res = run(tmp_path, "--max_steps", "4", "--subset", "300", "--update_every", "2", "--resume", "latest", "--epochs", "3")
    assert res.state.step == 4


def test_the_last_step_writes_the_outputs_not_a_checkpoint(tmp_path):
    from adaptive.training import list_checkpoints

    run(tmp_path, "--max_steps", "4", "--checkpoint_every", "2", "--subset", "300", "--update_every", "2")
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000002"]


def test_a_mask_only_resume_may_name_the_runs_checkpoint_file(tmp_path):
    mo = [*MO, "--max_steps", "4", "--update_every", "2"]
    first = run(tmp_path, *mo)
    res = R.main(TINY + [*mo, "--resume", str(tmp_path / R.MASK_ONLY_CHECKPOINT)])  # (no --output_dir)
    assert res.output_dir == tmp_path and res.conn.mask_hash() == first.conn.mask_hash()


def test_prune_pretrained_train_sample_follows_the_seed():
    from types import SimpleNamespace

    from recipes._prune_pretrained.builders import _train_sample

    dl = SimpleNamespace(train=SimpleNamespace(dataset=torch.utils.data.TensorDataset(torch.arange(100.0))))
    pick = lambda seed: _train_sample(dl, SimpleNamespace(train_eval_batches=2, batch_size=5, seed=seed,  # noqa: E731
                                                          eval_batch_size=10, num_workers=0)).dataset.indices
    assert len(pick(0)) == 10 and pick(0) == pick(0) and pick(0) != pick(1)


def test_prune_pretrained_takes_a_config_files_mixed_precision(tmp_path, monkeypatch):
    from recipes._prune_pretrained.parse import parse_args

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    (tmp_path / "c.yaml").write_text("mixed_precision: bf16\n")
    assert parse_args(["--config", str(tmp_path / "c.yaml"), "--output_dir", str(tmp_path / "o")]).mixed_precision == "bf16"
    assert parse_args(["--output_dir", str(tmp_path / "o")]).mixed_precision == "no"


def test_dense_gradients_plan_counts_each_compared_nets_steps_as_a_forward_and_a_backward():
    """--compare trains 4 more cnn nets --compare_steps steps each: 3 forwards' multiply-adds per step."""
    from types import SimpleNamespace

    from recipes._diagnostics.dense_plan import _count, cnn_forward_macs, dense_gradients_plan

    args = SimpleNamespace(depth=2, width=4, train_steps=0, batch_size=8, layer="classifier", grad_batches=0,
                           compare=True, compare_steps=10)
    said = dense_gradients_plan(args, ["cnn"], [False], (1, 8, 8))
    assert f"about {_count(4 * 3 * 10 * cnn_forward_macs((1, 8, 8), 2, 4, 8))} multiply-adds" in said


def test_densecat_activations_count_every_layers_input_and_the_classifiers():
    """Each of depth layers reads the input plus k earlier outputs; the classifier reads all depth of them."""
    from recipes._diagnostics.dense_plan import densecat_activations

    assert densecat_activations((4,), 2, 3, 1, "mlp") == 4 + 7 + 10
    assert densecat_activations((1, 2, 2), 2, 3, 5, "cnn") == 5 * 4 * (1 + 4 + 7)


def test_dense_gradients_bytes_hold_every_net_and_the_largest_nets_gradients_and_momentum():
    from types import SimpleNamespace

    from recipes._diagnostics.dense_plan import dense_gradients_bytes, densecat_activations, densecat_parameters

    args = SimpleNamespace(depth=2, width=3, batch_size=4)
    p = densecat_parameters((5,), 2, 3, 2, "mlp")
    assert dense_gradients_bytes(args, ["mlp"], [False, True], (5,), 2) == 4 * (
        2 * p + 2 * p + densecat_activations((5,), 2, 3, 4, "mlp"))


def test_available_memory_reads_meminfo_in_kibibytes(monkeypatch):
    import builtins
    import io

    from recipes._diagnostics.dense_plan import available_memory

    real = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: io.StringIO("MemTotal: 9 kB\nMemAvailable: 1000 kB\n")
                        if f == "/proc/meminfo" else real(f, *a, **k))
    assert available_memory("cpu") == 1000 * 1024


# the training loop and the run folder (adaptive/training.py, recipes/_adaptive/train.py, report.py, notes.py, resume.py)
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

