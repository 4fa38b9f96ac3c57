"""adaptive.training.train_one_epoch: train metric rows average every step of their interval, also
when the interval spans an epoch boundary or a checkpoint."""
import os
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptive.training import TrainState, train_one_epoch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _training import cpu_accelerator, reset_accelerate  # noqa: E402

torch.set_num_threads(1)


accelerator = pytest.fixture(cpu_accelerator)


def _frozen_linear(batches):
    """A Linear at lr 0 (every epoch sees the same losses), ``batches`` fixed batches of 5, and a
    cross-entropy that appends each batch's loss to the list it returns beside it."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    g = torch.Generator().manual_seed(1)
    loader = [(torch.randn(5, 4, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(batches)]
    losses = []

    def loss_fn(out, y):
        loss = F.cross_entropy(out, y)
        losses.append(float(loss.detach()))
        return loss

    return model, opt, loader, losses, loss_fn


def test_a_logging_interval_spanning_epochs_and_a_resume_averages_all_its_steps(accelerator):
    model, opt, loader, losses, loss_fn = _frozen_linear(3)

    state = TrainState()
    train_one_epoch(accelerator, model, opt, loader, state, loss_fn=loss_fn, log_every=2)
    saved = state.state_dict()  # a checkpoint after step 3, mid-interval
    resumed = TrainState()
    resumed.load_state_dict(saved)
    resumed.epoch = 1
    train_one_epoch(accelerator, model, opt, loader, resumed, loss_fn=loss_fn, log_every=2)
    rows = [r for r in resumed.metrics if r["split"] == "train"]
    assert [r["step"] for r in rows] == [2, 4, 6]
    # step 4's row is the mean of steps 3 (epoch 0, before the checkpoint) and 4 (epoch 1)
    assert rows[1]["loss"] == pytest.approx((losses[2] + losses[3]) / 2, rel=1e-6)
    assert rows[2]["loss"] == pytest.approx((losses[4] + losses[5]) / 2, rel=1e-6)
    assert rows[0]["loss"] == pytest.approx((losses[0] + losses[1]) / 2, rel=1e-6)


def test_state_window_read_between_rows_holds_every_step_so_far(accelerator):
    """The window's sums stay on the device between rows; an on_step hook that read state.window got
    the host copy of the last row or epoch (zeros here), a silently stale number."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    loader = [(torch.randn(5, 4, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(3)]
    losses, seen = [], []

    def loss_fn(out, y):
        loss = F.cross_entropy(out, y)
        losses.append(float(loss.detach()) * len(y))
        return loss

    state = TrainState()
    train_one_epoch(accelerator, model, opt, loader, state, loss_fn=loss_fn, log_every=2,
                    on_step=lambda st: seen.append(list(st.window[:3])))
    assert [w[2] for w in seen] == [5.0, 0.0, 5.0]  # examples since the last row (step 2's)
    assert [w[0] for w in seen] == [losses[0], 0.0, losses[2]]
    assert state.window[0] == losses[2] and state.state_dict()["window"][0] == losses[2]


def test_a_checkpoint_saved_after_resuming_from_an_earlier_one_is_kept_and_later_ones_go(tmp_path):
    """Resumed from step 100 with step 200 on disk, the save at 150 was pruned as the oldest and the
    abandoned step 200 stayed, so --resume latest would splice two timelines."""
    from accelerate import Accelerator

    from adaptive.training import list_checkpoints, save_checkpoint

    acc = Accelerator(cpu=True)
    for s in (100, 200):
        save_checkpoint(acc, tmp_path, s, keep=0)
    saved = save_checkpoint(acc, tmp_path, 150, keep=1)
    assert saved.exists() and [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000150"]


def test_later_checkpoints_of_an_abandoned_timeline_go_with_the_default_keep(tmp_path, accelerator):
    """With the default keep (room for one older checkpoint), a save at 150 after resuming from 100
    with 200 on disk removes 200, the abandoned timeline's, so --resume latest picks 150."""
    from adaptive.training import find_checkpoint, list_checkpoints, save_checkpoint

    for s in (100, 200):
        save_checkpoint(accelerator, tmp_path, s, keep=None)
    saved = save_checkpoint(accelerator, tmp_path, 150)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000100", "step_00000150"]
    assert find_checkpoint("latest", tmp_path) == saved


def test_accumulation_needs_the_prepared_optimizer_which_steps_once_per_group():
    """With gradient_accumulation_steps K an unprepared optimizer would step at every batch: refused.
    The prepared one steps once per K batches (the loader's end closes a shorter group), and a train
    row averages every batch of its steps, not the last of each group."""
    from accelerate import Accelerator

    reset_accelerate()
    try:
        acc = Accelerator(cpu=True, gradient_accumulation_steps=2)
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        data = torch.utils.data.TensorDataset(torch.randn(25, 4), torch.randint(0, 3, (25,)))
        loader = torch.utils.data.DataLoader(data, batch_size=5)  # 5 batches: groups of 2, 2 and 1
        with pytest.raises(TypeError, match="needs the optimizer that accelerator.prepare returned"):
            train_one_epoch(acc, model, opt, [], TrainState())
        model, opt, loader = acc.prepare(model, opt, loader)
        # nor a loader Accelerate never saw: it cannot tell where the epoch ends, so the 5th batch's
        # gradient would be left in .grad for the next epoch's first step
        with pytest.raises(TypeError, match="needs a loader that accelerator.prepare returned"):
            train_one_epoch(acc, model, opt, list(loader), TrainState())
        assert all(p.grad is None for p in model.parameters())
        steps, losses = [], []
        opt.optimizer.register_step_post_hook(lambda *a: steps.append(len(losses)))

        def loss_fn(out, y):
            loss = F.cross_entropy(out, y)
            losses.append(float(loss.detach()))
            return loss

        state = TrainState()
        train_one_epoch(acc, model, opt, loader, state, loss_fn=loss_fn, log_every=3)
        assert state.step == 3 and steps == [2, 4, 5]  # the optimizer stepped after batches 2, 4 and 5
        (row,) = [r for r in state.metrics if r["split"] == "train"]
        assert row["step"] == 3 and row["loss"] == pytest.approx(sum(losses) / 5, rel=1e-6)
    finally:
        reset_accelerate()


def _unsynced_groups_of_two():
    """``(accelerator, model, dataset)``: a CPU Accelerator accumulating groups of 2 batches with
    sync_with_dataloader=False (the loader's end closes no group), a Linear(4, 3) and 25 examples."""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    plugin = GradientAccumulationPlugin(num_steps=2, sync_with_dataloader=False)
    acc = Accelerator(cpu=True, gradient_accumulation_plugin=plugin)
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    return acc, model, torch.utils.data.TensorDataset(torch.randn(25, 4), torch.randint(0, 3, (25,)))


def test_accumulation_that_would_carry_an_epochs_last_batches_into_the_next_is_refused():
    """With Accelerate's sync_with_dataloader=False the loader's end closes no group: 5 batches in groups
    of 2 left the 5th batch's gradient in .grad for the next epoch's first step (2 steps, then 3).
    Refused before any batch runs; an epoch of whole groups (4 batches) runs its 2 steps."""
    from accelerate.state import GradientState

    reset_accelerate()
    try:
        acc, model, data = _unsynced_groups_of_two()
        model, opt, five, four = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                             torch.utils.data.DataLoader(data, batch_size=5),
                                             torch.utils.data.DataLoader(data, batch_size=5, drop_last=True,
                                                                         sampler=range(20)))
        state = TrainState()
        with pytest.raises(ValueError, match=r"sync_with_dataloader=False, and this epoch's batches end inside a "
                                             r"group of 2.*Build the Accelerator with sync_with_dataloader=True"):
            train_one_epoch(acc, model, opt, five, state, log_every=0)
        assert state.step == 0 and model.weight.grad is None
        for epoch in (1, 2):
            train_one_epoch(acc, model, opt, four, state, log_every=0)
            assert state.step == 2 * epoch and model.weight.grad is None
    finally:
        reset_accelerate()
        GradientState._reset_state()


def test_max_steps_ending_an_epoch_between_groups_is_not_refused_under_sync_with_dataloader_false():
    """sync_with_dataloader=False, groups of 2 over 5 batches: an epoch that max_steps stops after 2 steps
    (4 batches, or 1 step after one already taken) ends between groups, leaving no gradient behind, so
    it runs (it was refused from the loader's length alone); one that would reach the 5th batch is
    still refused."""
    from accelerate.state import GradientState

    reset_accelerate()
    try:
        acc, model, data = _unsynced_groups_of_two()
        model, opt, five = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                       torch.utils.data.DataLoader(data, batch_size=5))
        state = TrainState()
        train_one_epoch(acc, model, opt, five, state, log_every=0, max_steps=1)
        assert state.step == 1 and acc.step == 2 and model.weight.grad is None
        train_one_epoch(acc, model, opt, five, state, log_every=0, max_steps=3)
        assert state.step == 3 and acc.step == 6 and model.weight.grad is None
        with pytest.raises(ValueError, match=r"sync_with_dataloader=False, and this epoch's batches end inside"):
            train_one_epoch(acc, model, opt, five, state, log_every=0, max_steps=6)
        assert state.step == 3 and model.weight.grad is None
    finally:
        reset_accelerate()
        GradientState._reset_state()


def test_a_checkpoint_inside_a_group_of_accumulated_batches_is_refused_and_writes_nothing(tmp_path):
    """Mid-group, .grad holds the group's partial gradient, which no checkpoint holds, while Accelerate's
    saved batch counter resumes mid-group: the resumed step would use the group's later batches alone
    (a silently other run). Refused before anything is written; after the group's step it saves."""
    from accelerate import Accelerator

    from adaptive.training import list_checkpoints, save_checkpoint

    reset_accelerate()
    try:
        acc = Accelerator(cpu=True, gradient_accumulation_steps=2)
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        model, opt = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        g = torch.Generator().manual_seed(1)
        for i in range(3):  # one whole group, then the first batch of the next
            with acc.accumulate(model):
                acc.backward(F.cross_entropy(model(torch.randn(5, 4, generator=g)), torch.randint(0, 3, (5,), generator=g)))
                opt.step()
                opt.zero_grad()
        assert model.weight.grad is not None  # the open group's partial gradient
        with pytest.raises(RuntimeError, match=r"inside a group of 2 accumulated batches \(1 of 2 taken.*nothing was "
                                               r"written. Save after the group's optimizer step"):
            save_checkpoint(acc, tmp_path, 1)
        assert not (tmp_path / "checkpoints").exists()
        with acc.accumulate(model):  # the group's last batch: the optimizer steps
            acc.backward(F.cross_entropy(model(torch.randn(5, 4, generator=g)), torch.randint(0, 3, (5,), generator=g)))
            opt.step()
            opt.zero_grad()
        assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == []
        save_checkpoint(acc, tmp_path, 2)
        assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000002"]
    finally:
        reset_accelerate()


def test_evaluate_gives_each_module_its_own_mode_back(accelerator):
    """A BatchNorm the caller froze in eval mode inside a training model stays in eval mode after
    evaluate (a plain model.train(was_training) swept it back to training, so its running statistics
    moved at the next training step)."""
    from adaptive.training import evaluate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    model.train()
    model[1].eval()
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    loss, acc, n = evaluate(accelerator, model, data)
    assert n == 8 and loss > 0
    assert model.training and model[0].training and model[2].training and not model[1].training


def test_the_bars_loss_is_the_mean_since_it_last_showed_one(accelerator):
    """The training bar showed the loss of the 10th step's batch alone, which jumps from batch to
    batch; it shows the mean over the batches since its last loss (its own window of 10 steps), and
    metrics.csv's rows keep their --log_every windows."""
    model, opt, loader, losses, loss_fn = _frozen_linear(25)

    class Bar:
        def __init__(self):
            self.shown = []

        def update(self, n):
            pass

        def set_postfix(self, post, refresh=True):
            self.shown.append(float(post["loss"]))

    bar, state = Bar(), TrainState()
    train_one_epoch(accelerator, model, opt, loader, state, loss_fn=loss_fn, log_every=4, progress=bar)
    assert bar.shown == [pytest.approx(sum(losses[:10]) / 10, abs=6e-4),
                         pytest.approx(sum(losses[10:20]) / 10, abs=6e-4)]  # (shown to 3 decimals)
    assert bar.shown != [pytest.approx(losses[9], abs=6e-4), pytest.approx(losses[19], abs=6e-4)]
    rows = [r for r in state.metrics if r["split"] == "train"]
    assert rows[0]["loss"] == pytest.approx(sum(losses[:4]) / 4, rel=1e-6)


def test_a_float64_models_recorded_losses_are_not_rounded_through_float32(accelerator):
    """The train rows summed each batch's loss after a float32 copy, and evaluate() took the loss of float32
    logits: a float64 model's rows read 1.09395810961... where the float64 mean is 1.09395811546... (and one and
    two processes differed by 3e-8)."""
    from torch.utils.data import DataLoader, TensorDataset

    from adaptive.training import evaluate

    torch.manual_seed(0)
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randint(0, 3, (64,))
    acc = accelerator
    model = torch.nn.Sequential(torch.nn.Linear(6, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # fixed weights: every batch's loss is known
    model, opt, dl = acc.prepare(model, opt, DataLoader(TensorDataset(x, y), batch_size=16))
    state = TrainState()
    train_one_epoch(acc, model, opt, dl, state, log_every=4)
    with torch.no_grad():
        exact = sum(float(F.cross_entropy(model(x[i:i + 16]), y[i:i + 16])) * 16 for i in range(0, 64, 16)) / 64
        whole = float(F.cross_entropy(model(x), y))
    assert abs(state.metrics[0]["loss"] - exact) < 1e-15
    assert abs(evaluate(acc, model, DataLoader(TensorDataset(x, y), batch_size=16))[0] - whole) < 1e-15


def test_the_cosine_schedule_stays_at_zero_past_its_last_step():
    """Past total_steps (a run that goes on, a resume with more steps) the learning rate stays 0; the cosine unclamped
    climbed back to the full rate (0.15, 0.69, 1.0 at steps 12, 15, 18 of 10)."""
    from adaptive.training import lr_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    factor = lr_schedule(opt, total_steps=10, warmup=2).lr_lambdas[0]
    assert factor(9) > 0 and [factor(s) for s in (10, 12, 15, 18, 100)] == [0.0] * 5


@pytest.mark.parametrize("batches, steps", [(4, 2), (5, 3), (1, 1), (0, 0)])
def test_accumulated_batches_count_a_short_last_group_as_a_step(batches, steps):
    """The loader's end closes a short group: 5 batches at 2 per step are 3 steps (counted as 2, processes with 4 and
    5 batches passed the uneven-batch refusal and hung)."""
    from adaptive.training import _steps_taken

    class Accelerator:
        step = 0

    assert _steps_taken(Accelerator(), batches, 2) == steps


def test_a_resume_inside_a_group_takes_only_the_batches_that_close_it():
    """Resumed with one batch of a group of two already counted and one step left: one batch ends the group (two
    went past it, and the check that the run ends on a group's boundary refused it)."""
    from types import SimpleNamespace

    from adaptive.training import _batches_taken, _ends_mid_group

    acc = SimpleNamespace(step=1)
    assert _batches_taken(acc, list(range(10)), 2, 1) == 1 and not _ends_mid_group(acc, list(range(10)), 2, 1)


def test_the_clipped_share_counts_finite_steps_only(accelerator):
    """A step whose gradient norm is inf (skipped) is no clipped step: its factor (0) counted it, and the row's
    share of clipped steps read 1/3 with none clipped (it could pass 1)."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.q = nn.Linear(4, 3), nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return self.fc(x)

    m = M()
    opt = torch.optim.SGD(m.fc.parameters(), lr=0.01)
    dl = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 3, (16,))), batch_size=4)
    calls = [0]

    def loss_fn(out, y):
        calls[0] += 1
        if calls[0] == 2:
            m.q.grad = torch.full((1,), float("inf"))  # one step's norm is inf
        return F.cross_entropy(out, y)

    def on_step(state):
        m.q.grad = None

    state = TrainState()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_one_epoch(accelerator, m, opt, dl, state, loss_fn=loss_fn, log_every=4, max_grad_norm=1e6,
                        on_step=on_step)
    assert state.metrics[-1]["clipped"] == 0.0
