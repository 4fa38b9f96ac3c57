"""recipes/adaptive.py's step learning-rate schedule (--lr_schedule step, --lr_milestones,
--lr_gamma) and label smoothing (--label_smoothing): the rate each step trains at, the loss the
weights train on against the one held-out rows report, exact resumes, and refusals."""
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from adaptive.config import load_config
from adaptive.training import cosine_schedule, lr_schedule, read_metrics_csv

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _scripts import load_script  # noqa: E402
from _training import fresh_recipe_state, recipe_runner, same_weights  # noqa: E402

R = load_script("recipes/adaptive.py", "recipe_adaptive_schedule")
TINY = ["--update_every", "5", "--log_every", "1", "--threads", "1", "--progress", "false", "--figures", "false",
        "--eval_batch_size", "64", "--subset", "400", "--max_steps", "8"]


_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)


run = recipe_runner(R, TINY)


def _factors(total, warmup=0, kind="cosine", **kw):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = lr_schedule(opt, total, warmup, kind, **kw)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_schedule_factors():
    assert _factors(8, kind="step") == pytest.approx([1, 1, 1, 1, .1, .1, .01, .01])
    # milestones at the nearest step, halves up (0.75 x 10 = 7.5 -> step 8), and a warm-up that scales them
    assert _factors(10, 2, "step", milestones=(0.25, 0.75), gamma=0.5) == pytest.approx(
        [0.5, 1, 1, .5, .5, .5, .5, .5, .25, .25])
    assert _factors(6, kind="step", milestones=(0.5,), gamma=1.0) == [1.0] * 6
    # halves up for the fraction as written, though its float product falls short (0.29 x 50: 14.499999999999998)
    assert _factors(50, kind="step", milestones=(0.29,), gamma=0.5) == [1.0] * 15 + [0.5] * 35
    assert _factors(25, kind="step", milestones=(0.58,), gamma=0.5) == [1.0] * 15 + [0.5] * 10
    # cosine and constant as before the step schedule existed (cosine_schedule: its old name)
    old = [((s + 1) / 3 if s < 3 else 0.5 * (1 + math.cos(math.pi * min(s - 3, 7) / 7))) for s in range(10)]
    assert _factors(10, 3) == pytest.approx(old, abs=1e-12) and cosine_schedule is lr_schedule
    assert _factors(5, 2, "constant") == pytest.approx([0.5, 1, 1, 1, 1])
    p = [torch.nn.Parameter(torch.zeros(1))]
    for kw, msg in (({"milestones": (0.75, 0.5)}, "increasing fractions"), ({"milestones": (0.5, 1.0)}, "in \\(0, 1\\)"),
                    ({"gamma": 0.0}, "gamma must be in"), ({"gamma": float("nan")}, "gamma must be in")):
        with pytest.raises(ValueError, match=msg):
            lr_schedule(torch.optim.SGD(p, lr=1.0), 10, 0, "step", **kw)
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'linear'"):
        lr_schedule(torch.optim.SGD(p, lr=1.0), 10, 0, "linear")


def test_the_recipe_trains_each_step_at_the_scheduled_rate_and_resumes_exactly(tmp_path, capsys):
    res = run(tmp_path / "full", "--lr_schedule", "step", "--lr_milestones", "0.5,0.75", "--checkpoint_every", "3",
              "--keep_checkpoints", "0")
    train = [r for r in read_metrics_csv(tmp_path / "full" / "metrics.csv") if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 9))
    assert [r["lr"] for r in train] == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)
    cfg = load_config(R.RunConfig, tmp_path / "full" / "config.yaml")
    assert (cfg.lr_schedule, cfg.lr_milestones, cfg.lr_gamma) == ("step", [0.5, 0.75], 0.1)
    # from step 3 (before either drop): the same rates, weights and masks as the uninterrupted run
    resumed = run(tmp_path / "r", "--lr_schedule", "step", "--resume",
                  str(tmp_path / "full" / "checkpoints" / "step_00000003"))
    assert same_weights(resumed, res) and resumed.conn.mask_hash() == res.conn.mask_hash()
    again = [r for r in read_metrics_csv(tmp_path / "r" / "metrics.csv") if r["split"] == "train"]
    assert [r["lr"] for r in again] == [r["lr"] for r in train]
    # a resume with other milestones, or another factor, would train other steps at other rates
    for other, shown in ((["--lr_milestones", "0.25,0.75"], "lr_milestones: run [0.5, 0.75], now [0.25, 0.75]"),
                         (["--lr_gamma", "0.5"], "lr_gamma: run 0.1, now 0.5")):
        with pytest.raises(SystemExit):
            run(tmp_path / "x", "--lr_schedule", "step", *other, "--resume", str(tmp_path / "full"))
        assert f"records other settings ({shown})" in capsys.readouterr().err


def test_a_run_recorded_before_these_options_compares_as_it_ran(tmp_path):
    run(tmp_path)
    path = tmp_path / "config.yaml"
    lines = path.read_text().splitlines()
    kept = [ln for ln in lines if not ln.startswith(("lr_milestones", "lr_gamma", "label_smoothing", "- 0.5", "- 0.75"))]
    assert len(kept) == len(lines) - 5
    path.write_text("\n".join(kept) + "\n")

    def cfg(*extra):
        return R.parse_args(TINY + ["--output_dir", str(tmp_path), *extra])

    assert R._check_resumed_config(cfg(), tmp_path) is not None  # (the settings it read: no difference)
    with pytest.raises(R.CheckpointError, match=r"other settings \(label_smoothing: run 0.0, now 0.1\)"):
        R._check_resumed_config(cfg("--label_smoothing", "0.1"), tmp_path)
    with pytest.raises(R.CheckpointError, match=r"other settings \(lr_schedule: run 'cosine', now 'step'\)"):
        R._check_resumed_config(cfg("--lr_schedule", "step"), tmp_path)


def test_a_step_runs_config_reruns_with_another_schedule_by_the_defaults_the_error_names(tmp_path, capsys):
    run(tmp_path / "step", "--lr_schedule", "step", "--lr_milestones", "0.25,0.5", "--lr_gamma", "0.5")
    config = tmp_path / "step" / "config.yaml"
    rerun = ["--config", str(config), "--output_dir", str(tmp_path / "cos"), "--lr_schedule", "cosine"]
    with pytest.raises(SystemExit):  # (its milestones and factor come from the file: no option to drop)
        R.main(rerun)
    assert f"({config} gives them: add --lr_milestones 0.5,0.75 --lr_gamma 0.1, their defaults)" in capsys.readouterr().err
    assert R.parse_args(rerun + ["--lr_milestones", "0.5,0.75", "--lr_gamma", "0.1"]).lr_schedule == "cosine"
    with pytest.raises(SystemExit):  # typed ones: drop them
        R.main(["--output_dir", str(tmp_path / "typed"), "--lr_gamma", "0.5"])
    assert capsys.readouterr().err.rstrip().endswith("give --lr_schedule step, or drop them")


def test_label_smoothing_trains_on_the_smoothed_loss_and_reports_plain_held_out_loss(tmp_path, monkeypatch):
    seen = {}
    original = R.train_one_epoch

    def spy(*args, loss_fn, **kw):
        def recording(out, y):
            loss = loss_fn(out, y)
            seen.setdefault("first", (out.detach().clone(), y.clone(), float(loss.detach())))
            return loss
        return original(*args, loss_fn=recording, **kw)

    from recipes._adaptive import train

    monkeypatch.setattr(train, "train_one_epoch", spy)  # (the recipe's module that calls it)
    res = run(tmp_path, "--label_smoothing", "0.1")
    out, y, loss = seen["first"]
    assert loss == pytest.approx(float(F.cross_entropy(out, y, label_smoothing=0.1)), rel=1e-6)
    assert abs(loss - float(F.cross_entropy(out, y))) > 1e-3  # (the two differ on these logits)
    rows = read_metrics_csv(tmp_path / "metrics.csv")
    assert rows[0]["split"] == "train" and rows[0]["step"] == 1 and rows[0]["loss"] == pytest.approx(loss, rel=1e-6)
    # the held-out row is plain cross-entropy of the final weights
    loaders = R.get_dataloaders(load_config(R.RunConfig, tmp_path / "config.yaml"))
    res.model.eval()
    dev = next(res.model.parameters()).device  # a GPU where there is one
    with torch.no_grad():
        outs, ys = zip(*[(res.model(x.to(dev)).cpu(), y) for x, y in loaders.holdout])
    logits, labels = torch.cat(outs), torch.cat(ys)
    held = [r for r in rows if r["split"] == "holdout"][-1]
    assert held["step"] == 8
    assert held["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert abs(held["loss"] - float(F.cross_entropy(logits, labels, label_smoothing=0.1))) > 1e-3
    assert load_config(R.RunConfig, tmp_path / "config.yaml").label_smoothing == 0.1
    with pytest.raises(R.CheckpointError, match="label_smoothing: run 0.1, now 0.0"):
        R._check_resumed_config(R.RunConfig(), tmp_path)


def test_label_smoothing_off_trains_as_before(tmp_path):
    plain = run(tmp_path / "a")
    zero = run(tmp_path / "b", "--label_smoothing", "0")
    smooth = run(tmp_path / "c", "--label_smoothing", "0.2")
    assert same_weights(plain, zero) and not same_weights(plain, smooth)


@pytest.mark.parametrize("args, msg", [
    (["--lr_schedule", "step", "--lr_milestones", "0.75,0.5"], "lr_milestones must be increasing fractions"),
    (["--lr_schedule", "step", "--lr_milestones", "0.5,1.5"], "lr_milestones must be increasing fractions"),
    (["--lr_schedule", "step", "--lr_milestones", "0.5,0.5"], "lr_milestones must be increasing fractions"),
    (["--lr_schedule", "step", "--lr_gamma", "0"], "lr_gamma must be in \\(0, 1\\]"),
    (["--lr_schedule", "step", "--lr_gamma", "nan"], "lr_gamma must be in \\(0, 1\\]"),
    (["--lr_milestones", "0.3,0.6"], "lr_milestones and lr_gamma shape only --lr_schedule step \\(this run's is cosine\\)"),
    (["--lr_schedule", "constant", "--lr_gamma", "0.5"], "shape only --lr_schedule step \\(this run's is constant\\)"),
    (["--label_smoothing", "1"], "label_smoothing must be in \\[0, 1\\)"),
    (["--label_smoothing", "-0.1"], "label_smoothing must be in \\[0, 1\\)"),
    (["--mode", "mask_only", "--label_smoothing", "0.1"], "mode mask_only does not use label_smoothing"),
    (["--mode", "mask_only", "--lr_schedule", "step"], "mode mask_only does not use lr_schedule"),
    # (not "give --lr_schedule step", which mask_only refuses in turn)
    (["--mode", "mask_only", "--lr_gamma", "0.5"], "mode mask_only does not use lr_gamma .*drop --lr_gamma"),
    (["--mode", "mask_only", "--lr_milestones", "0.3"], "mode mask_only does not use lr_milestones .*drop --lr_milestones"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, capsys, args, msg):
    with pytest.raises(SystemExit):
        R.main(["--output_dir", str(tmp_path / "run"), *args])
    import re

    assert re.search(msg, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_an_overwrite_run_deletes_the_earlier_runs_grad_norm_figure(tmp_path):
    run(tmp_path, "--max_grad_norm", "0.5", "--figures", "true")
    assert (tmp_path / "grad_norm.png").exists()
    run(tmp_path, "--overwrite", "--figures", "true")
    assert (tmp_path / "loss_accuracy.png").exists() and not (tmp_path / "grad_norm.png").exists()
