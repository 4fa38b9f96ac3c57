"""recipes/adaptive.py --max_grad_norm X: a limit no step reaches trains exactly as no clipping, a
small one clips (and metrics.csv shows it), a mid-run resume stays bit-exact, and what cannot run as
asked is refused."""
import os
import sys

import pytest
import torch

from adaptive.config import load_config
from adaptive.training import find_checkpoint, read_metrics_csv

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _scripts import load_script  # noqa: E402
from _training import fresh_recipe_state, recipe_runner, same_weights  # noqa: E402

R = load_script("recipes/adaptive.py", "recipe_adaptive_clipping")
TINY = ["--update_every", "5", "--log_every", "5", "--threads", "1", "--progress", "false", "--figures", "false",
        "--eval_batch_size", "64", "--subset", "400", "--max_steps", "20"]


_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)


run = recipe_runner(R, TINY)


def test_a_limit_no_step_reaches_changes_nothing_and_a_small_one_clips(tmp_path):
    plain = run(tmp_path / "plain", "--max_grad_norm", "none")
    huge = run(tmp_path / "huge", "--max_grad_norm", "1e6")
    assert huge.conn.mask_hash() == plain.conn.mask_hash() and same_weights(huge, plain)
    assert [e.get("mask_hash") for e in huge.controller.events] == [e.get("mask_hash") for e in plain.controller.events]
    keys = ("step", "split", "loss", "accuracy", "density", "lr")
    assert [[r[k] for k in keys] for r in huge.state.metrics] == [[r[k] for k in keys] for r in plain.state.metrics]
    rows = read_metrics_csv(tmp_path / "huge" / "metrics.csv")
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    assert all(0 < r["grad_norm"] < 1e6 and r["clipped"] == 0.0 for r in train)
    assert all(r["grad_norm"] is None for r in rows if r["split"] != "train")
    assert "grad_norm" not in (tmp_path / "plain" / "metrics.csv").read_text()  # no column where nothing clips
    assert load_config(R.RunConfig, tmp_path / "huge" / "config.yaml").max_grad_norm == 1e6
    assert load_config(R.RunConfig, tmp_path / "plain" / "config.yaml").max_grad_norm is None

    limit = min(r["grad_norm"] for r in train) / 2
    small = run(tmp_path / "small", "--max_grad_norm", str(limit))
    assert not same_weights(small, plain)
    clipped = [r for r in read_metrics_csv(tmp_path / "small" / "metrics.csv") if r["split"] == "train"]
    assert all(r["grad_norm"] > limit and r["clipped"] == 1.0 for r in clipped)


def test_accumulated_batches_clip_as_one_batch(tmp_path):
    """Two accumulated batches of 16 clip as one batch of 32: once, on the accumulated gradient (640
    train examples: every group whole)."""
    common = ["--max_grad_norm", "0.1", "--subset", "710"]
    one = run(tmp_path / "b32", *common, "--batch_size", "32")
    acc = run(tmp_path / "b16x2", *common, "--batch_size", "16", "--gradient_accumulation_steps", "2")
    assert acc.conn.mask_hash() == one.conn.mask_hash()
    sa, so = acc.model.state_dict(), one.model.state_dict()
    for k in so:
        torch.testing.assert_close(sa[k], so[k], rtol=1e-5, atol=1e-6)
    ra = [r["grad_norm"] for r in acc.state.metrics if r["split"] == "train"]
    assert ra == pytest.approx([r["grad_norm"] for r in one.state.metrics if r["split"] == "train"], rel=1e-5)
    assert all(r["clipped"] == 1.0 for r in acc.state.metrics if r["split"] == "train")


class Stop(Exception):
    pass


def test_a_mid_window_resume_with_clipping_is_bit_exact(tmp_path):
    """Interrupted at step 12 (mid logging window), the resumed run's rows average the norms of
    both sessions' steps, as the uninterrupted run's."""
    common = ["--max_grad_norm", "0.3", "--checkpoint_every", "6"]
    full = run(tmp_path / "full", *common)

    def stop(state):
        if state.step == 12:
            raise Stop

    with pytest.raises(Stop):
        run(tmp_path / "cut", *common, on_step=stop)
    assert find_checkpoint("latest", tmp_path / "cut").name == "step_00000012"
    resumed = run(tmp_path / "cut", *common, "--resume", "latest")
    assert resumed.conn.mask_hash() == full.conn.mask_hash() and same_weights(resumed, full)
    assert resumed.state.metrics == full.state.metrics
    assert any(r.get("clipped") for r in full.state.metrics)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_limit_that_is_no_finite_positive_number_is_refused_while_parsing(value, capsys):
    with pytest.raises(SystemExit) as e:
        R.main(["--max_grad_norm", value])
    assert e.value.code == 2
    assert "max_grad_norm must be a finite number > 0 (or none: no clipping), got" in capsys.readouterr().err


def test_mask_only_refuses_clipping_and_a_config_file_gives_it(tmp_path, capsys):
    with pytest.raises(SystemExit):
        R.main(["--mode", "mask_only", "--max_grad_norm", "1"])
    assert ("mode mask_only does not use max_grad_norm (got 1.0): mask_only trains no weight; drop --max_grad_norm"
            in capsys.readouterr().err)
    (tmp_path / "c.yaml").write_text("max_grad_norm: 2.5\n")
    assert R.parse_args(["--config", str(tmp_path / "c.yaml")]).max_grad_norm == 2.5


def test_a_resume_with_another_limit_is_refused_naming_both(tmp_path, capsys):
    run(tmp_path, "--max_grad_norm", "0.5", "--checkpoint_every", "10")
    capsys.readouterr()
    for other, shown in ((["--max_grad_norm", "1.0"], "now 1.0"), ([], "now None")):
        with pytest.raises(SystemExit):
            run(tmp_path, "--checkpoint_every", "10", "--resume", "latest", *other)
        err = capsys.readouterr().err
        assert f"max_grad_norm: run 0.5, {shown}" in err and "Traceback" not in err


def test_a_run_recorded_before_the_option_clipped_nothing(tmp_path):
    """A config.yaml without the key ran without clipping: resumed with a limit it is refused."""
    import yaml

    from adaptive.config import save_config

    save_config(R.RunConfig(), tmp_path / "config.yaml", resume=None)
    settings = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del settings["max_grad_norm"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(settings))
    R._check_resumed_config(R.RunConfig(), tmp_path)  # no clipping: as it ran
    with pytest.raises(R.CheckpointError, match=r"max_grad_norm: run None, now 1.0"):
        R._check_resumed_config(R.RunConfig(max_grad_norm=1.0), tmp_path)


def test_a_clipping_run_writes_its_gradient_norm_figure(tmp_path):
    res = run(tmp_path / "fig", "--max_grad_norm", "0.05", "--figures", "true")
    assert res.files["grad_norm"] == tmp_path / "fig" / "grad_norm.png"
    assert (tmp_path / "fig" / "grad_norm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plain = run(tmp_path / "plain", "--figures", "true")
    assert "grad_norm" not in plain.files and not (tmp_path / "plain" / "grad_norm.png").exists()


def test_a_resume_with_another_thread_count_continues_with_a_warning(tmp_path):
    """--threads may change on a resume (a machine of fewer cores), but another thread count sums in another order:
    the docs promised a bit-exact continuation of it, and a review's resumed run differed from both uninterrupted
    ones. It continues with a warning naming the count that continues bit-exactly; the same count says nothing."""
    import warnings

    from adaptive.config import save_config

    save_config(R.RunConfig(threads=1), tmp_path / "config.yaml", resume=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        R._check_resumed_config(R.RunConfig(threads=1), tmp_path)
    with pytest.warns(UserWarning, match=r"ran with --threads 1, this resume with --threads 2: it continues, but .*"
                                         r"give --threads 1 for a bit-exact continuation"):
        R._check_resumed_config(R.RunConfig(threads=2), tmp_path)
    # a run without --threads (torch's own count): the fix is to leave it out, not "give --threads None"
    with pytest.warns(UserWarning, match=r"ran with --threads 1, this resume without --threads: .*give --threads 1"):
        R._check_resumed_config(R.RunConfig(threads=None), tmp_path)
    save_config(R.RunConfig(threads=None), tmp_path / "config.yaml", resume=None)
    with pytest.warns(UserWarning, match=r"ran without --threads, this resume with --threads 2: .*leave out --threads "
                                         r"\(under the OMP_NUM_THREADS the run had\) for a bit-exact continuation") as w:
        R._check_resumed_config(R.RunConfig(threads=2), tmp_path)
    assert "None" not in str(w[0].message)
