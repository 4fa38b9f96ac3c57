"""recipes/adaptive.py --gradient_accumulation_steps K: K batches of b train as one batch of K x b
(masks, weights and metrics), a step is an optimizer step everywhere, a mid-epoch resume is
bit-exact, and what cannot run as asked is refused."""
import os
import sys

import pytest
import torch

from adaptive.config import load_config
from adaptive.training import find_checkpoint, list_checkpoints

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _scripts import load_script  # noqa: E402
from _training import fresh_recipe_state, recipe_runner, reset_accelerate, same_weights  # noqa: E402

R = load_script("recipes/adaptive.py", "recipe_adaptive_accumulation")
ENV = "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"
# tiny settings (the mlp has neither BatchNorm nor dropout: a batch's gradient is the mean of its parts')
TINY = ["--update_every", "5", "--log_every", "5", "--threads", "1", "--progress", "false", "--figures", "false",
        "--eval_batch_size", "64"]


_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)


run = recipe_runner(R, TINY)


class Stop(Exception):
    pass


def test_two_accumulated_batches_of_b_train_as_one_batch_of_2b(tmp_path):
    """Same seed, same example order (the seeded sampler's permutation does not depend on the batch
    size): each optimizer step sees the same 32 examples, as one batch or as two of 16. 640 train
    examples, so every epoch ends on a whole group and a whole batch; 50 steps cross two epochs and
    make nine controller updates."""
    common = ["--subset", "710", "--max_steps", "50", "--eval_every", "20"]
    one = run(tmp_path / "b32", *common, "--batch_size", "32")
    acc = run(tmp_path / "b16x2", *common, "--batch_size", "16", "--gradient_accumulation_steps", "2")
    assert acc.state.step == one.state.step == 50 and acc.state.steps_per_epoch == one.state.steps_per_epoch == 20
    assert load_config(R.RunConfig, tmp_path / "b16x2" / "config.yaml").gradient_accumulation_steps == 2
    # the controller updated at the same optimizer steps, on the same (accumulated) gradients
    updates = [e for e in acc.controller.events if e["kind"] == "update"]
    assert [e["step"] for e in updates] == [5, 10, 15, 20, 25, 30, 35] and all(e["pruned"] > 0 for e in updates)
    assert acc.conn.mask_hash() == one.conn.mask_hash()
    assert [(e["step"], e.get("pruned"), e.get("grown"), e.get("mask_hash")) for e in acc.controller.events] == \
        [(e["step"], e.get("pruned"), e.get("grown"), e.get("mask_hash")) for e in one.controller.events]
    sa, so = acc.model.state_dict(), one.model.state_dict()
    for k in so:
        torch.testing.assert_close(sa[k], so[k], rtol=1e-5, atol=1e-6)
    # train rows average every example of their steps (both batches of each group), at the same steps and rates
    ra, ro = acc.state.metrics, one.state.metrics
    assert [(r["step"], r["epoch"], r["split"], r["lr"]) for r in ra] == [(r["step"], r["epoch"], r["split"], r["lr"]) for r in ro]
    assert [r["step"] for r in ra if r["split"] == "holdout"] == [20, 40, 50]
    for a, o in zip(ra, ro):
        assert a["loss"] == pytest.approx(o["loss"], rel=1e-5) and a["accuracy"] == pytest.approx(o["accuracy"], abs=1e-9)
    # the comparison can tell: one batch of 16 per step trains another network
    small = run(tmp_path / "b16", *common, "--batch_size", "16")
    assert small.conn.mask_hash() != one.conn.mask_hash()
    ss = small.model.state_dict()
    assert not all(torch.allclose(ss[k], so[k], rtol=1e-5, atol=1e-6) for k in so)


def test_accumulation_asked_through_the_environment_trains_as_the_larger_batch(tmp_path, monkeypatch):
    """ACCELERATE_GRADIENT_ACCUMULATION_STEPS=2, which Accelerate reads whatever the recipe passes: the
    loop stepped at every batch while Accelerate halved each batch's loss, so the run trained on
    batches of 16 at half the learning rate, and recorded nothing of it."""
    common = ["--subset", "710", "--max_steps", "20"]
    one = run(tmp_path / "b32", *common, "--batch_size", "32")
    monkeypatch.setenv(ENV, "2")
    env = run(tmp_path / "b16-env", *common, "--batch_size", "16")
    assert env.state.step == 20
    assert env.conn.mask_hash() == one.conn.mask_hash()
    sa, so = env.model.state_dict(), one.model.state_dict()
    for k in so:
        torch.testing.assert_close(sa[k], so[k], rtol=1e-5, atol=1e-6)
    assert env.state.accumulation == 2
    monkeypatch.delenv(ENV)  # what the file records, read without the variable
    assert load_config(R.RunConfig, tmp_path / "b16-env" / "config.yaml").gradient_accumulation_steps == 2


def test_the_environment_variable_never_rewrites_a_config_loaded_or_built_in_code(tmp_path, monkeypatch):
    """Only a parsed command line takes ACCELERATE_GRADIENT_ACCUMULATION_STEPS: a config.yaml read back
    says what it records, and a RunConfig built in code keeps its value, which training_function
    refuses, before writing anything, where Accelerate would run another."""
    run(tmp_path / "k1", "--subset", "710", "--max_steps", "2", "--batch_size", "16")
    monkeypatch.setenv(ENV, "2")
    assert load_config(R.RunConfig, tmp_path / "k1" / "config.yaml").gradient_accumulation_steps == 1
    cfg = R.RunConfig(gradient_accumulation_steps=4, max_steps=2, output_dir=str(tmp_path / "code"), progress=False,
                      figures=False)
    assert cfg.gradient_accumulation_steps == 4
    reset_accelerate()
    with pytest.raises(R.ConfigError, match=f"gradient_accumulation_steps is 4, but {ENV}=2 in the environment makes "
                                            f"Accelerate run 2: unset {ENV}, or set gradient_accumulation_steps=2"):
        R.training_function(cfg)
    assert not (tmp_path / "code").exists()


def test_a_blank_environment_variable_is_refused_by_name(tmp_path, monkeypatch, capsys):
    """Accelerate's int('') would fail with 'invalid literal for int()', naming nothing."""
    monkeypatch.setenv(ENV, "")
    with pytest.raises(SystemExit):
        R.parse_args([])
    assert f"{ENV}='' in the environment is no whole number >= 1" in capsys.readouterr().err
    cfg = R.RunConfig(max_steps=2, output_dir=str(tmp_path / "code"), progress=False, figures=False)
    with pytest.raises(R.ConfigError, match=f"{ENV}='' in the environment is no whole number >= 1"):
        R.training_function(cfg)


def test_a_mid_epoch_resume_under_accumulation_is_bit_exact(tmp_path):
    """81 batches of 16: 41 steps per epoch, the last one a group of a single batch. Interrupted at
    step 50 (epoch 1, mid utility window), the resumed run skips the 18 batches of its 9 steps."""
    common = ["--max_steps", "90", "--batch_size", "16", "--gradient_accumulation_steps", "2"]
    full = run(tmp_path / "full", *common)
    assert full.state.steps_per_epoch == 41
    assert [r["step"] for r in full.state.metrics if r["split"] == "holdout"] == [41, 82, 90]  # each epoch's end

    def stop(state):
        if state.step == 50:
            raise Stop

    with pytest.raises(Stop):
        run(tmp_path / "cut", *common, "--checkpoint_every", "25", on_step=stop)
    assert find_checkpoint("latest", tmp_path / "cut").name == "step_00000050"
    resumed = run(tmp_path / "cut", *common, "--resume", "latest")
    assert resumed.state.step == 90
    assert resumed.conn.mask_hash() == full.conn.mask_hash()
    assert same_weights(resumed, full)
    assert resumed.controller.events == full.controller.events
    assert resumed.state.metrics == full.state.metrics
    opt_a, opt_b = full.controller.optimizer.state_dict(), resumed.controller.optimizer.state_dict()
    assert all(torch.equal(opt_a["state"][i]["momentum_buffer"], opt_b["state"][i]["momentum_buffer"])
               for i in opt_a["state"])


@pytest.mark.parametrize("args, message", [
    (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps must be >= 1 (1: a step per batch), got 0"),
    (["--mode", "mask_only", "--gradient_accumulation_steps", "2"],
     "mode mask_only does not use gradient_accumulation_steps (got 2): mask_only trains no weight; drop "
     "--gradient_accumulation_steps"),
])
def test_bad_accumulation_is_refused_while_parsing(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        R.main(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_the_environment_variable_accelerate_reads_first_is_taken_or_refused(tmp_path, monkeypatch, capsys):
    """Accelerate takes ACCELERATE_GRADIENT_ACCUMULATION_STEPS over the Accelerator's argument: the run
    takes it where no one gave the option (and records it), and refuses it where the option says
    otherwise or the mode accumulates nothing."""
    monkeypatch.setenv(ENV, "2")
    assert R.parse_args([]).gradient_accumulation_steps == 2
    assert R.parse_args(["--gradient_accumulation_steps", "2"]).gradient_accumulation_steps == 2
    for argv, message in (
            (["--gradient_accumulation_steps", "3"], f"gradient_accumulation_steps 3 (from the command line) and {ENV}=2 "
                                                     f"in the environment disagree, and Accelerate would run 2: unset {ENV}, "
                                                     "or give --gradient_accumulation_steps 2"),
            (["--mode", "mask_only"], f"{ENV}=2 in the environment asks Accelerate to accumulate gradients, which mode "
                                      "mask_only never does (it trains no weight): unset it")):
        with pytest.raises(SystemExit):
            R.parse_args(argv)
        assert message in capsys.readouterr().err
    monkeypatch.setenv(ENV, "zero")
    with pytest.raises(SystemExit):
        R.parse_args([])
    assert f"{ENV}='zero' in the environment is no whole number >= 1" in capsys.readouterr().err


def test_a_resume_with_other_accumulation_is_refused_naming_both_and_the_fix(tmp_path, capsys):
    common = ["--max_steps", "20", "--batch_size", "16", "--checkpoint_every", "10"]
    run(tmp_path, *common, "--gradient_accumulation_steps", "2")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run(tmp_path, *common, "--resume", "latest")
    err = capsys.readouterr().err
    assert "gradient_accumulation_steps: run 2, now 1" in err and "--gradient_accumulation_steps 2" in err
    assert "Traceback" not in err


def test_a_run_recorded_before_the_option_accumulated_nothing(tmp_path):
    """A config.yaml without the key ran one batch per step: resumed with K=2 it is refused; a
    checkpoint's loop state without it reads as K=1."""
    import yaml

    from adaptive.config import save_config
    from adaptive.training import TrainState

    save_config(R.RunConfig(), tmp_path / "config.yaml", resume=None)
    settings = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del settings["gradient_accumulation_steps"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(settings))
    R._check_resumed_config(R.RunConfig(), tmp_path)  # K=1: as it ran
    with pytest.raises(R.CheckpointError, match=r"gradient_accumulation_steps: run 1, now 2.*--gradient_accumulation_steps 1"):
        R._check_resumed_config(R.RunConfig(gradient_accumulation_steps=2), tmp_path)
    state = TrainState(accumulation=4)
    sd = state.state_dict()
    assert sd["gradient_accumulation_steps"] == 4
    del sd["gradient_accumulation_steps"]
    state.load_state_dict(sd)
    assert state.accumulation == 1


def test_a_checkpoint_whose_loop_state_accumulated_otherwise_is_refused(tmp_path, capsys):
    """The loop state carries K too (a checkpoint without its run's config.yaml copy is checked only there)."""
    run(tmp_path, "--max_steps", "20", "--checkpoint_every", "10")
    ckpt = list_checkpoints(tmp_path / "checkpoints")[0]
    path = ckpt / "custom_checkpoint_2.pkl"  # the TrainState (registration order: conn, ctrl, state, lr)
    sd = torch.load(path, weights_only=False)
    assert sd["gradient_accumulation_steps"] == 1
    sd["gradient_accumulation_steps"] = 3
    torch.save(sd, path)
    from adaptive.integrity import write_manifest

    write_manifest(ckpt)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run(tmp_path, "--max_steps", "20", "--checkpoint_every", "10", "--resume", str(ckpt))
    err = capsys.readouterr().err
    assert "accumulated 3 batch(es) per optimizer step; this one accumulates 1" in err
    assert "--gradient_accumulation_steps 3" in err


@pytest.mark.parametrize("policy", [["--policy", "rigl"], ["--policy", "set"], ["--policy", "gmp"],
                                    ["--estimator", "obd"], ["--estimator", "taylor"], ["--estimator", "evidence"]],
                         ids=lambda a: a[1])
def test_accumulated_steps_edit_as_the_larger_batch_under_each_policy(tmp_path, policy):
    """What the README promises per policy (curvature, the default, is the test above): the same
    masks after the same updates, weights to rounding."""
    common = ["--subset", "710", "--max_steps", "30", *policy]
    one = run(tmp_path / "b32", *common, "--batch_size", "32")
    acc = run(tmp_path / "b16x2", *common, "--batch_size", "16", "--gradient_accumulation_steps", "2")
    assert sum(e["kind"] == "update" for e in acc.controller.events) >= 4
    assert acc.conn.mask_hash() == one.conn.mask_hash()
    sa, so = acc.model.state_dict(), one.model.state_dict()
    for k in so:
        torch.testing.assert_close(sa[k], so[k], rtol=1e-5, atol=1e-6)
