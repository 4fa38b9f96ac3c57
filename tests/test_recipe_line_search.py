"""recipes/adaptive.py --line_search N (train mode): each controller update checked on a fixed draw
of held-out batches (adaptive.holdout_check.HeldOutLoss), its measured actual_loss_change logged;
off by default and then never called; checks that accept everything train exactly as no checks;
refusals; config.yaml records and resume compares it; two processes take the same decisions.
Also config.yaml's estimator_resolved (the estimator's full arguments, read back by nothing)."""
import functools
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from adaptive.config import load_config, save_config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ports import launch_two  # noqa: E402
from _scripts import load_script  # noqa: E402
from _training import fresh_recipe_state, recipe_runner, reset_accelerate, same_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
R = load_script("recipes/adaptive.py", "recipe_adaptive_line_search")
TINY = ["--max_steps", "40", "--update_every", "10", "--log_every", "5", "--threads", "1", "--progress", "false",
        "--figures", "false"]

_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)
run = recipe_runner(R, TINY)


def events(folder):
    return [json.loads(line) for line in (Path(folder) / "events.jsonl").read_text().splitlines()]


def updates(folder):
    return [e for e in events(folder) if e["kind"] == "update"]


def test_line_search_logs_the_measured_held_out_change_of_each_update(tmp_path):
    res = run(tmp_path, "--line_search", "2", "--line_search_tolerance", "inf")
    ups = [e for e in updates(tmp_path) if e["pruned"] or e["grown"]]
    assert ups, "the run made no edit to check"
    for e in ups:  # every edit was checked, measured and (infinite tolerance) kept whole
        assert math.isfinite(e["actual_loss_change"]) and math.isfinite(e["holdout_loss"])
        assert e["line_search_fraction"] == 1.0
    assert events(tmp_path)[0]["actual_loss_change"] is None  # (the initial sparsification is not checked)
    check = res.controller.holdout_loss
    assert check.batches == 2 and check.examples() == 2 * 32  # --eval_batch_size defaults to --batch_size
    cfg = load_config(R.RunConfig, tmp_path / "config.yaml")
    assert (cfg.line_search, cfg.line_search_tolerance, cfg.line_search_tries) == (2, math.inf, 3)


def test_off_by_default_the_check_is_never_built_nor_called(tmp_path, monkeypatch):
    from adaptive import holdout_check

    def never(*a, **k):
        raise AssertionError("the held-out check ran without --line_search")

    monkeypatch.setattr(holdout_check.HeldOutLoss, "__init__", never)
    monkeypatch.setattr(holdout_check.HeldOutLoss, "__call__", never)
    res = run(tmp_path)
    assert res.controller.holdout_loss is None
    assert all(e["actual_loss_change"] is None and e["line_search_fraction"] is None for e in events(tmp_path))


def test_a_run_with_no_update_reads_no_held_out_example(tmp_path, monkeypatch):
    """--line_search N drew its held-out batches (decoding and moving them to the device) while the
    controller was built, also where --update_every put every update beyond the run's steps."""
    from adaptive import holdout_check

    read = []
    batch = holdout_check.HeldOutLoss._batch
    monkeypatch.setattr(holdout_check.HeldOutLoss, "_batch",
                        staticmethod(lambda *a: read.append(a[1]) or batch(*a)))
    res = run(tmp_path, "--line_search", "2", "--update_every", "100", "--policy", "set")
    assert res.summary["updates"] == 0 and res.controller.holdout_loss.calls == 0
    assert read == []
    assert len(res.controller.holdout_loss.data) == 2 and len(read) == 2  # (drawn on demand)


def test_checks_that_keep_every_update_train_exactly_as_no_checks(tmp_path):
    """A check draws no random number and leaves the training state as it was: with an infinite
    tolerance (nothing vetoed) the masks, weights and train rows are bit-identical to a run without."""
    plain = run(tmp_path / "plain")
    reset_accelerate()
    checked = run(tmp_path / "checked", "--line_search", "3", "--line_search_tolerance", "inf")
    assert checked.controller.holdout_loss.calls > 0
    assert checked.conn.mask_hash() == plain.conn.mask_hash()
    assert same_weights(checked, plain)
    assert checked.state.metrics == plain.state.metrics


def test_an_update_that_raises_the_held_out_loss_is_shrunk_or_undone(tmp_path, capsys):
    """gmp only prunes, which raises the held-out loss: at tolerance 0 (given: the default, inf, only
    measures) its updates are halved or undone, each event says how much of it stayed, and the
    summary blames the check for the density."""
    with pytest.warns(UserWarning, match="the line search .* rolled back 1 and halved 2 of the 3 updates"):
        res = run(tmp_path, "--policy", "gmp", "--line_search", "2", "--line_search_tolerance", "0")
    ups = updates(tmp_path)
    cut = [e for e in ups if e["line_search_fraction"] is not None and e["line_search_fraction"] < 1.0]
    assert cut
    for e in ups:  # what stayed is what was measured: never a rise above the tolerance
        assert e["actual_loss_change"] is None or e["actual_loss_change"] <= 0.0
    for e in cut:
        if e["line_search_fraction"] == 0.0:  # undone: nothing pruned, the loss as it was
            assert (e["pruned"], e["actual_loss_change"]) == (0, 0.0)
    assert res.conn.density() > 0.25  # the schedule's 0.2 held back
    assert "the held-out check (--line_search 2) undid" in capsys.readouterr().out


def test_by_default_line_search_keeps_every_update_and_logs_its_measured_change(tmp_path):
    """The default --line_search_tolerance is inf, as the Controller's in train mode: gmp's prunes,
    which tolerance 0 halved or undid, are all kept and measured, and the masks are those of no check."""
    plain = run(tmp_path / "plain", "--policy", "gmp")
    checked = run(tmp_path / "checked", "--policy", "gmp", "--line_search", "2")
    ups = [e for e in updates(tmp_path / "checked") if e["line_search_fraction"] is not None]
    assert len(ups) == checked.summary["updates"] == 3
    assert all(e["line_search_fraction"] == 1.0 and math.isfinite(e["actual_loss_change"]) for e in ups)
    assert checked.controller.line_search_tolerance == math.inf
    assert checked.conn.mask_hash() == plain.conn.mask_hash() and abs(checked.conn.density() - 0.2) < 0.01
    assert load_config(R.RunConfig, tmp_path / "checked" / "config.yaml").line_search_tolerance == math.inf


@pytest.mark.filterwarnings("ignore:the controller's schedule ended at step 30")  # (tolerance 0 held gmp back)
def test_a_run_recorded_with_tolerance_0_resumes_with_it_where_the_command_leaves_the_option_out(tmp_path, capsys):
    """A run recorded with --line_search_tolerance 0 (every --line_search run before the default
    became inf) resumed by its own command, which leaves the option out, continues at 0, as it ran
    (a note says so); a command that gives another tolerance is refused, naming the run's."""
    class Stop(Exception):
        pass

    common = ["--policy", "gmp", "--line_search", "2"]
    full = run(tmp_path / "full", *common, "--line_search_tolerance", "0")

    def stop(state):
        if state.step == 25:
            raise Stop

    with pytest.raises(Stop):
        run(tmp_path / "cut", *common, "--line_search_tolerance", "0", "--checkpoint_every", "20", on_step=stop)
    path = tmp_path / "cut" / "config.yaml"
    assert "line_search_tolerance: 0.0\n" in path.read_text()  # (as an older run records it)
    given = R.parse_args(TINY + common + ["--output_dir", str(tmp_path / "cut"), "--line_search_tolerance", "inf",
                                          "--resume", "latest"])
    refusal = r"line_search_tolerance: run 0.0, now inf\).* --line_search_tolerance 0 "  # (the value it ran with)
    with pytest.raises(R.CheckpointError, match=refusal):
        R._check_resumed_config(given, tmp_path / "cut")
    capsys.readouterr()
    resumed = run(tmp_path / "cut", *common, "--resume", "latest")
    assert "records line_search_tolerance 0, its default before it became inf" in capsys.readouterr().out
    assert resumed.controller.line_search_tolerance == 0.0
    checked = [e for e in updates(tmp_path / "cut") if e["line_search_fraction"] is not None]
    assert any(e["line_search_fraction"] < 1.0 for e in checked)  # (vetoes, at 0)
    assert resumed.conn.mask_hash() == full.conn.mask_hash()
    assert resumed.controller.events == full.controller.events
    assert "line_search_tolerance: 0.0\n" in path.read_text()  # so the same command resumes it again


def test_the_former_default_tolerance_from_a_file_is_no_idle_option(tmp_path):
    """Every config.yaml recorded before the default became inf holds line_search_tolerance 0.0, with
    or without --line_search: a run started from such a file (or the file loaded) is not refused for
    it, in either mode; typed on the command line without --line_search it is."""
    path = tmp_path / "old.yaml"
    path.write_text("line_search: 0\nline_search_tolerance: 0.0\nline_search_tries: 3\n")
    assert R.parse_args(["--config", str(path)]).line_search_tolerance == 0.0
    assert R.parse_args(["--config", str(path), "--mode", "mask_only"]).line_search_tolerance == 0.0
    assert load_config(R.RunConfig, path).line_search_tolerance == 0.0
    # (typed on the command line: test_bad_line_search_arguments_fail_clearly)


@pytest.mark.parametrize("mode", ["train", "mask_only"])
def test_a_config_built_in_code_resumes_a_run_recorded_with_the_former_tolerance_and_no_line_search(tmp_path, mode):
    """Every config.yaml recorded before the default became inf holds line_search_tolerance 0.0, with
    or without --line_search. Without one on either side the tolerance shapes nothing: a config built
    in code (no command line to tell a left-out option) that holds the new default resumes such a run,
    keeping the run's value, and the reverse too; with --line_search the values are still compared."""
    path = tmp_path / "config.yaml"
    kw = dict(mode=mode, output_dir=str(tmp_path), progress=False, figures=False)
    cfg = R.RunConfig(**kw)
    assert cfg.line_search_tolerance == math.inf and cfg._left_out == frozenset()
    save_config(cfg, path, line_search_tolerance=0.0)  # (as every older config.yaml)
    R._check_resumed_config(cfg, tmp_path)  # (refused before: "line_search_tolerance: run 0.0, now inf")
    assert cfg.line_search_tolerance == 0.0  # (the run's)
    save_config(cfg, path, line_search_tolerance=math.inf)
    old = R.RunConfig(**kw, line_search_tolerance=0.0)  # (from a template of that time: no idle option)
    R._check_resumed_config(old, tmp_path)
    assert old.line_search_tolerance == math.inf
    if mode == "train":
        save_config(cfg, path, line_search=2, line_search_tolerance=0.0)
        with pytest.raises(R.CheckpointError, match=r"line_search_tolerance: run 0.0, now inf\).* --line_search_tolerance 0 "):
            R._check_resumed_config(R.RunConfig(**kw, line_search=2), tmp_path)


def test_resume_with_line_search_is_bit_exact(tmp_path):
    class Stop(Exception):
        pass

    common = ["--line_search", "2", "--line_search_tolerance", "0.01"]
    full = run(tmp_path / "full", *common)

    def stop(state):
        if state.step == 25:
            raise Stop

    reset_accelerate()
    with pytest.raises(Stop):
        run(tmp_path / "cut", *common, "--checkpoint_every", "20", on_step=stop)
    reset_accelerate()
    resumed = run(tmp_path / "cut", *common, "--resume", "latest")
    # the resumed run checks its updates on the examples the uninterrupted run checked on
    drawn = [(resumed.controller.holdout_loss.data, full.controller.holdout_loss.data)]
    assert all(len(a) == len(b) == 2 and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))
               for a, b in drawn)
    assert resumed.conn.mask_hash() == full.conn.mask_hash()
    assert same_weights(resumed, full)
    assert resumed.controller.events == full.controller.events


def test_resume_compares_the_line_search_and_old_configs_resume_without_it(tmp_path):
    run(tmp_path)
    path = tmp_path / "config.yaml"

    def cfg(*extra):
        return R.parse_args(TINY + ["--output_dir", str(tmp_path), *extra])

    with pytest.raises(R.CheckpointError, match=r"other settings \(line_search: run 0, now 2\)"):
        R._check_resumed_config(cfg("--line_search", "2"), tmp_path)
    # a config.yaml recorded before these keys (and estimator_resolved) ran without a check
    lines = path.read_text().splitlines()
    kept = [ln for ln in lines if not ln.startswith(("line_search", "estimator_resolved", "  name:", "  arguments:",
                                                     "    damping:"))]
    assert len(kept) == len(lines) - 7
    path.write_text("\n".join(kept) + "\n")
    assert R._check_resumed_config(cfg(), tmp_path) is not None
    with pytest.raises(R.CheckpointError, match=r"line_search: run 0, now 4"):
        R._check_resumed_config(cfg("--line_search", "4"), tmp_path)


def test_a_run_recorded_with_line_search_keys_in_controller_kw_resumes_as_it_ran(tmp_path, capsys):
    """Before --line_search, --controller_kw line_search_tries=1 was taken and did nothing (no
    holdout_loss): such a run resumes with it; a new run is pointed to the option."""
    run(tmp_path, "--checkpoint_every", "20", "--max_steps", "30")
    path = tmp_path / "config.yaml"
    path.write_text(path.read_text().replace("controller_kw: {}", "controller_kw:\n  line_search_tries: 1"))
    cfg = R.parse_args(["--config", str(path), "--resume", "latest"])
    assert cfg.controller_kw == {"line_search_tries": 1} and cfg.line_search == 0
    for extra in (["--line_search", "2"], []):  # with the option, or in a new run: pointed to it
        with pytest.raises(SystemExit):
            R.parse_args(["--config", str(path), *extra] + (["--resume", "latest"] if extra else []))
        assert "the recipe sets line_search_tries itself, from --line_search_tries" in capsys.readouterr().err


def test_config_records_the_estimators_resolved_arguments_and_reads_back(tmp_path):
    import yaml

    run(tmp_path, "--estimator", "obd")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["estimator_kw"] == {}
    assert saved["estimator_resolved"] == {"name": "obd", "arguments": {"damping": 1e-12}}
    # a rerun from the file reads it as the settings it records (the record is read by nothing)
    again = R.parse_args(["--config", str(tmp_path / "config.yaml"), "--estimator_kw", "damping=0.001"])
    assert (again.estimator, again.estimator_kw) == ("obd", {"damping": 0.001})
    assert load_config(R.RunConfig, tmp_path / "config.yaml").estimator == "obd"
    reset_accelerate()
    run(tmp_path / "rigl", "--policy", "rigl")  # an estimator-free policy records none
    assert "estimator_resolved" not in yaml.safe_load((tmp_path / "rigl" / "config.yaml").read_text())
    with pytest.raises(SystemExit):  # typed on the command line it is no option
        R.parse_args(["--estimator_resolved", "x"])


def test_an_estimator_whose_defaults_yaml_cannot_write_still_runs_and_is_recorded_as_text(tmp_path):
    """A plugin estimator's constructor default that YAML cannot represent (a dtype, a function):
    config.yaml's estimator_resolved once crashed the run before its first step (RepresenterError);
    the record holds such a value as text, and the file still reads back."""
    import yaml

    from adaptive.utility.base import _ESTIMATORS, Estimator, register_estimator

    @register_estimator("odd_defaults_record", replace=True)
    class OddDefaults(Estimator):
        needs_gradients = True

        def __init__(self, dtype=torch.float32, reduce=torch.abs, shape=(1, 2), damping=0.5):
            self.dtype, self.reduce, self.shape, self.damping = dtype, reduce, shape, damping

        def removal_cost(self, ctx):
            return self.reduce(ctx.stats.mean(ctx.name) * ctx.weight.detach())

        def restoration_gain(self, ctx):
            return self.reduce(ctx.stats.mean(ctx.name) * ctx.w0)

    try:
        run(tmp_path, "--estimator", "odd_defaults_record", "--max_steps", "10")
        saved = yaml.safe_load((tmp_path / "config.yaml").read_text())["estimator_resolved"]
        assert saved["name"] == "odd_defaults_record"
        assert saved["arguments"] == {"dtype": "torch.float32", "reduce": f"{torch.abs.__module__}.{torch.abs.__qualname__}",
                                      "shape": [1, 2], "damping": 0.5}
        assert load_config(R.RunConfig, tmp_path / "config.yaml").estimator == "odd_defaults_record"
    finally:
        _ESTIMATORS.pop("odd_defaults_record", None)


@pytest.mark.parametrize("args, message", [
    (["--line_search", "-1"], "line_search must be >= 0"),
    (["--line_search", "2", "--line_search_tolerance", "-0.1"], "line_search_tolerance must be a number >= 0"),
    (["--line_search", "2", "--line_search_tolerance", "nan"], "line_search_tolerance must be a number >= 0"),
    (["--line_search", "2", "--line_search_tries", "-1"], "line_search_tries must be >= 0"),
    (["--line_search", "1.5"], "config key 'line_search' (from the command line) expects int"),
    (["--line_search", "2", "--holdout", "0"], "--line_search 2 checks each update on the held-out part of TRAIN, "
                                               "and --holdout 0 holds none out"),
    (["--line_search_tolerance", "0.1"], "line_search_tolerance 0.1 shape(s) only the held-out check of --line_search "
                                         "N, which is off (0)"),
    (["--line_search_tolerance", "0"], "line_search_tolerance 0.0 shape(s) only the held-out check of --line_search "
                                       "N, which is off (0): give --line_search N (held-out batches each check "
                                       "scores), or drop --line_search_tolerance"),
    (["--line_search_tolerance", "inf", "--line_search_tries", "1"], "line_search_tries 1 shape(s) only"),
    (["--mode", "mask_only", "--line_search", "2"], "mode mask_only does not use line_search (got 2): mask_only "
                                                    "line-searches its updates with --mask_only_kw verify_batches=N"),
    (["--controller_kw", "line_search_tries=2"], "the recipe sets line_search_tries itself, from --line_search_tries"),
])
def test_bad_line_search_arguments_fail_clearly(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        R.parse_args(["--threads", "1"] + args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_build_controller_takes_a_check_exactly_when_the_config_asks_for_one():
    from adaptive import Connectome

    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="--line_search 2 needs holdout_loss="):
        R.build_controller(R.parse_args(["--line_search", "2"]), Connectome(model), None, 100)
    with pytest.raises(ValueError, match="--line_search 0 is off, so holdout_loss="):
        R.build_controller(R.parse_args([]), Connectome(model), None, 100, holdout_loss=lambda: 0.0)


class _Data(torch.utils.data.Dataset):
    def __init__(self, n=40):
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))


def test_a_check_changes_no_batchnorm_statistic_no_mode_and_draws_no_random_number():
    from adaptive.holdout_check import HeldOutLoss

    model = _bn_model()
    model[1].eval()  # a submodule the caller keeps in eval mode gets its own mode back
    bn = {k: v.clone() for k, v in model[1].state_dict().items()}
    rng = torch.get_rng_state()
    check = HeldOutLoss(model, _Data(), batches=2, batch_size=8, device="cpu", seed=3)
    loss = check()
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, model[1].state_dict()[k]) for k, v in bn.items())
    assert model.training and not model[1].training and model[3].training
    assert check() == loss  # the same examples every call, and no dropout drawn
    x = torch.stack([x for x, _ in check.data]).reshape(-1, 6)
    y = torch.cat([y for _, y in check.data])
    model.eval()
    with torch.no_grad():
        assert loss == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-6)


class _SoftTargets(_Data):
    def __getitem__(self, i):  # class probabilities as targets (a distilled or label-smoothed set)
        return self.x[i], F.one_hot(self.y[i], 3).float() * 0.7 + 0.1


def test_a_check_with_class_probability_targets_is_the_mean_loss_of_its_examples():
    """The sum of the losses was divided by the targets' entries, 3 per example with class
    probabilities as targets: the check read a third of the held-out loss, and a line search's
    tolerance (a loss rise in the loss's units) was three times too loose."""
    from adaptive.holdout_check import HeldOutLoss

    model = _bn_model().eval()
    check = HeldOutLoss(model, _SoftTargets(), batches=2, batch_size=8, device="cpu", seed=3)
    x = torch.cat([x for x, _ in check.data])
    y = torch.cat([y for _, y in check.data])
    assert y.shape == (16, 3)
    with torch.no_grad():
        assert check() == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-6)


class _Tagged(_Data):
    def __getitem__(self, i):  # a label per position of a sequence of 4, the padding at the end labelled `pad`
        y = torch.full((4,), self.pad)
        y[: 1 + i % 4] = (self.y[i] + torch.arange(1 + i % 4)) % 3
        return self.x[i], y


class _Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(6, 12)

    def forward(self, x):  # (B, 3 classes, 4 positions)
        return self.lin(x).view(-1, 3, 4)


@pytest.mark.parametrize("pad, loss_fn", [
    (-100, None),
    (-1, functools.partial(F.cross_entropy, ignore_index=-1, label_smoothing=0.1)),
])
def test_a_check_of_a_tagger_leaves_out_the_positions_its_loss_ignores(pad, loss_fn):
    """A sequence's padding, labelled with the loss's ignore_index, has a loss of 0.0 that was counted:
    the check divided by every position (as by every target entry before), so it read the held-out loss
    diluted by the padding's share, below the mean cross-entropy (and the run's metrics) take over the
    labelled positions, and a line search's tolerance was as much too loose."""
    from adaptive.holdout_check import HeldOutLoss

    data = _Tagged()
    data.pad = pad
    model = _Tagger().eval()
    kw = {} if loss_fn is None else dict(loss_fn=loss_fn)
    check = HeldOutLoss(model, data, batches=2, batch_size=8, device="cpu", seed=3, **kw)
    x = torch.cat([x for x, _ in check.data])
    y = torch.cat([y for _, y in check.data])
    assert bool((y == pad).any()) and bool((y != pad).any())
    with torch.no_grad():
        want = (loss_fn or F.cross_entropy)(model(x), y)  # the mean over the labelled positions
    assert check() == pytest.approx(float(want), rel=1e-6)


def test_a_check_whose_every_label_is_ignored_names_it():
    from adaptive.holdout_check import HeldOutLoss

    class _AllPadding(_Data):
        def __getitem__(self, i):
            return self.x[i], torch.full((4,), -100)

    check = HeldOutLoss(_Tagger(), _AllPadding(), batches=1, batch_size=8, device="cpu")
    with pytest.raises(ValueError, match="every target of the held-out draw is a label its loss ignores"):
        check()


class _RandomTransform(_Data):
    def __getitem__(self, i):  # a random evaluation transform, as a plugin's may draw
        return self.x[i] + torch.rand(6), int(self.y[i])


def test_the_draw_taken_at_the_first_check_is_the_one_taken_when_built():
    """The draw is taken at the first check, under the global generators' states of construction:
    whatever drew random numbers in between, a random transform draws what it drew when built."""
    from adaptive.holdout_check import HeldOutLoss

    model = _bn_model()
    torch.manual_seed(5)
    early = HeldOutLoss(model, _RandomTransform(), batches=2, batch_size=8, device="cpu", seed=3)
    drawn = [(x.clone(), y.clone()) for x, y in early.data]
    torch.manual_seed(5)
    late = HeldOutLoss(model, _RandomTransform(), batches=2, batch_size=8, device="cpu", seed=3)
    torch.rand(100)  # the training draws on
    rng = torch.get_rng_state()
    late()
    assert torch.equal(torch.get_rng_state(), rng)  # and the draw leaves the generators where they were
    assert all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(late.data, drawn))


def test_processes_score_disjoint_equal_draws_and_a_tiny_holdout_is_refused():
    from adaptive.holdout_check import HeldOutLoss

    data, model = _Data(40), _bn_model()
    parts = [HeldOutLoss(model, data, batches=5, batch_size=8, device="cpu", rank=r, processes=2) for r in (0, 1)]
    assert [p.batches for p in parts] == [2, 2]  # 40 examples: 2 whole batches of 8 for each of 2 processes
    seen = [torch.cat([x for x, _ in p.data]) for p in parts]
    assert not any(torch.equal(a, b) for a in seen[0] for b in seen[1])
    with pytest.raises(ValueError, match="holds 10 example.*fewer than one batch of 8 for each of the 2 process"):
        HeldOutLoss(model, _Data(10), batches=1, batch_size=8, device="cpu", processes=2)


def test_a_check_runs_under_the_prepared_models_mixed_precision():
    from accelerate import Accelerator

    from adaptive.holdout_check import HeldOutLoss

    import copy

    model = _bn_model()
    ref = copy.deepcopy(model).eval()  # (prepare wraps the model's own forward in the autocast)
    reset_accelerate()
    acc = Accelerator(cpu=True, mixed_precision="bf16")
    check = HeldOutLoss(acc.prepare(model), _Data(), batches=2, batch_size=8, device=acc.device)
    x = torch.cat([x for x, _ in check.data])
    y = torch.cat([y for _, y in check.data])
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = float(F.cross_entropy(ref(x).float(), y))
        plain = float(F.cross_entropy(ref(x), y))
    assert check() == pytest.approx(mixed, rel=1e-6) and abs(mixed - plain) > 1e-4


def test_two_processes_take_the_same_line_search_decisions(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    r = launch_two([ROOT / "recipes" / "adaptive.py", *TINY, "--output_dir", tmp_path, "--line_search", "1",
                    "--line_search_tolerance", "0"], env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    hashes = json.loads((tmp_path / "summary.json").read_text())["mask_hash_per_process"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    ups = [e for e in updates(tmp_path) if e["line_search_fraction"] is not None]
    assert ups and all(math.isfinite(e["actual_loss_change"]) for e in ups)
    assert {e["line_search_fraction"] for e in ups} - {1.0}  # some update was cut or undone, on both alike
    # every update's masks were compared across the processes (verify=True) after its check
    assert all("mask_hash" in e for e in updates(tmp_path))


@pytest.mark.parametrize("module, function", [
    (nn.CrossEntropyLoss(), F.cross_entropy),
    (nn.CrossEntropyLoss(ignore_index=-1, label_smoothing=0.1),
     functools.partial(F.cross_entropy, ignore_index=-1, label_smoothing=0.1)),
])
def test_a_check_takes_a_torch_loss_module_as_the_function_it_stands_for(module, function):
    """A torch loss module (its reduction an attribute, not an argument) failed at the first check with
    forward()'s bare "unexpected keyword argument 'reduction'"; it is used as a copy set to reduction='none',
    and reads what the function with the same options reads (padding at its ignore_index left out)."""
    from adaptive.holdout_check import HeldOutLoss

    data = _Tagged()
    data.pad = -1 if getattr(module, "ignore_index", -100) == -1 else -100
    model = _Tagger().eval()
    got = HeldOutLoss(model, data, batches=2, batch_size=8, device="cpu", seed=3, loss_fn=module)()
    want = HeldOutLoss(model, data, batches=2, batch_size=8, device="cpu", seed=3, loss_fn=function)()
    assert got == want
    assert module.reduction == "mean"  # the module given is left as it was


def test_a_check_refuses_a_loss_function_without_reduction_naming_the_fix():
    from adaptive.holdout_check import HeldOutLoss

    def my_loss(out, y):
        return F.cross_entropy(out, y)

    check = HeldOutLoss(_bn_model().eval(), _Data(), batches=1, batch_size=8, device="cpu", loss_fn=my_loss)
    with pytest.raises(TypeError, match=r"loss_fn my_loss takes no reduction= argument.*functools.partial"):
        check()
