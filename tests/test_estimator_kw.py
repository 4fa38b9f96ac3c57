"""--estimator_kw: the utility estimator's own options from the command line (and --config files),
checked against its constructor, recorded in config.yaml and compared on --resume, in
recipes/adaptive.py, recipes/prune_pretrained.py and recipes/diagnostics.py knowledge."""
import os
import re
import sys

import pytest
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _scripts import load_script  # noqa: E402
from _training import fresh_recipe_state  # noqa: E402

A = load_script("recipes/adaptive.py", "recipe_adaptive_estimator_kw")
TINY = ["--max_steps", "20", "--update_every", "10", "--threads", "1", "--progress", "false", "--figures", "false"]


_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)  # a fresh Accelerator per in-process run


@pytest.fixture
def no_curves(monkeypatch):
    """recipes/prune_pretrained.py writes curves.png as an empty placeholder, not drawn: these tests are about
    the estimator's options, and drawing the figure is about half of such a tiny run (test_prune_pretrained.py's
    figure tests draw it)."""
    from pathlib import Path

    from recipes._prune_pretrained import run

    monkeypatch.setattr(run, "_plot", lambda history, rows, events, path, **kw: Path(path).write_bytes(b""))


def _error(main, argv, capsys) -> str:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_the_train_mode_controller_gets_the_estimator_built_with_its_options_and_a_resume_compares_them(
        tmp_path, capsys):
    out = tmp_path / "run"
    res = A.main(TINY + ["--estimator", "obd", "--estimator-kw", "damping=1e-6", "--checkpoint_every", "10",
                         "--output_dir", str(out)])
    est = res.controller.drop_est
    assert type(est).__name__ == "OBD" and est.damping == 1e-6 and res.controller.grow_est is est
    assert yaml.safe_load((out / "config.yaml").read_text())["estimator_kw"] == {"damping": 1e-6}
    err = _error(A.main, ["--config", str(out / "config.yaml"), "--resume", "latest", "--estimator_kw", "damping=0.001"],
                 capsys)
    assert "records other settings (estimator_kw: run {'damping': 1e-06}, now {'damping': 0.001})" in err


def test_a_mask_only_run_passes_the_options_to_optimize_connectome(tmp_path, monkeypatch):
    import adaptive.mask_only as M

    seen = {}
    real = M.optimize_connectome

    def spy(*a, **kw):
        seen["estimator"] = kw["estimator"]
        return real(*a, **kw)

    monkeypatch.setattr(A, "optimize_connectome", spy, raising=False)
    monkeypatch.setattr(M, "optimize_connectome", spy)
    A.main(["--mode", "mask_only", "--target", "0.5", "--max_steps", "4", "--threads", "1", "--progress", "false",
            "--figures", "false", "--estimator_kw", "step=0.05", "--output_dir", str(tmp_path / "m")])
    assert type(seen["estimator"]).__name__ == "Presence" and seen["estimator"].step == 0.05


def test_a_config_file_gives_them_too(tmp_path):
    from adaptive.config import parse_config

    f = tmp_path / "c.yaml"
    f.write_text("estimator: obd\nestimator_kw: {damping: 0.5}\n")
    cfg = parse_config(A.RunConfig, ["--config", str(f)])
    assert A._estimator(cfg).damping == 0.5


@pytest.mark.parametrize("args, message", [
    (["--estimator", "obd", "--estimator_kw", "dampin=1e-6"],
     "--estimator_kw: unknown argument(s) ['dampin'] for utility estimator 'obd': the utility estimator takes "
     "['damping']; did you mean 'damping' for 'dampin'?"),
    (["--mode", "mask_only", "--estimator_kw", "stp=0.1"], "takes ['beta1', 'beta2', 'eps', 'step']; did you mean 'step'"),
    (["--policy", "gmp", "--estimator_kw", "damping=1"], "policy 'gmp' runs none here (it ranks by weight magnitude "
                                                          "unless one is named): name one with --estimator"),
    (["--policy", "rigl", "--estimator_kw", "damping=1"], "policy 'rigl' runs none here: drop --estimator_kw"),
])
def test_options_the_estimator_does_not_take_are_refused_before_any_work(tmp_path, args, message, capsys):
    out = tmp_path / "never"
    assert message in _error(A.main, TINY + args + ["--output_dir", str(out)], capsys)
    assert not out.exists()


PRUNE = ["--model", "mlp", "--dataset", "fake", "--dataset-kw", "shape=[64]", "--dataset-kw", "train_size=128",
         "--passes", "0.3", "--batch-size", "32", "--remove", "0.2", "--eval-every", "1", "--no-progress",
         "--threads", "1"]


def test_prune_pretrained_builds_the_estimator_with_its_options_records_them_and_compares_them_on_resume(
        tmp_path, monkeypatch, no_curves):
    P = load_script("recipes/prune_pretrained.py", "prune_pretrained_estimator_kw")
    seen, real = {}, P.optimize_connectome

    def spy(*a, **kw):
        seen["estimator"] = kw["estimator"]
        return real(*a, **kw)

    from recipes._prune_pretrained import run  # where the recipe calls it

    monkeypatch.setattr(run, "optimize_connectome", spy)
    out = tmp_path / "run"
    P.main(PRUNE + ["--estimator", "evidence", "--estimator-kw", "clip=2.5", "--step", "0.1", "--output_dir", str(out)])
    assert type(seen["estimator"]).__name__ == "Evidence"
    assert (seen["estimator"].clip, seen["estimator"].step) == (2.5, 0.1)
    assert yaml.safe_load((out / "config.yaml").read_text())["estimator_kw"] == {"clip": 2.5}
    with pytest.raises(P.run_folder.RunFolderError, match=r"estimator_kw: run \{'clip': 2.5\}, now \{'clip': 2.7\}"):
        P.main(PRUNE + ["--estimator", "evidence", "--estimator-kw", "clip=2.7", "--step", "0.1", "--output_dir",
                        str(out), "--resume"])


@pytest.mark.parametrize("args, message", [
    (["--estimator", "obd", "--estimator_kw", "dampin=1e-6"], "--estimator-kw: unknown argument(s) ['dampin'] for "
                                                              "utility estimator 'obd'"),
    (["--estimator-kw", "step=0.1"], "--estimator-kw step: the recipe sets the estimator's step from --step"),
])
def test_prune_pretrained_refuses_options_the_estimator_does_not_take(args, message):
    P = load_script("recipes/prune_pretrained.py", "prune_pretrained_estimator_kw")
    with pytest.raises(SystemExit) as e:
        P.parse_args(PRUNE + args)
    assert message in str(e.value.code)


def test_diagnostics_knowledge_orders_by_the_estimator_built_with_its_options(tmp_path, monkeypatch):
    import json

    import adaptive.diagnostics.knowledge as K

    D = load_script("recipes/diagnostics.py", "diagnostics_estimator_kw")
    seen, real = {}, K.removal_scores

    def spy(conn, loader, estimator, *a, **kw):
        seen["estimator"] = estimator
        return real(conn, loader, estimator, *a, **kw)

    monkeypatch.setattr(K, "removal_scores", spy)
    D.main(["knowledge", "--dataset", "digits", "--batch_size", "64", "--output_dir", str(tmp_path), "--model", "mlp",
            "--train_steps", "1", "--points", "2", "--estimator", "obd", "--estimator-kw", "damping=0.25",
            "--order_batches", "1", "--threads", "1"])
    assert type(seen["estimator"]).__name__ == "OBD" and seen["estimator"].damping == 0.25
    assert json.loads((tmp_path / "knowledge_summary.json").read_text())["estimator"] == "OBD(damping=0.25)"


def test_diagnostics_knowledge_refuses_an_option_the_estimator_does_not_take(tmp_path, capsys):
    D = load_script("recipes/diagnostics.py", "diagnostics_estimator_kw")
    with pytest.raises(SystemExit) as e:
        D.main(["knowledge", "--dataset", "digits", "--output_dir", str(tmp_path / "k"), "--estimator", "obd",
                "--estimator_kw", "dampin=1"])
    assert "--estimator_kw: unknown argument(s) ['dampin'] for utility estimator 'obd'" in str(e.value.code)
    assert "did you mean 'damping'" in str(e.value.code) and not (tmp_path / "k").exists()


def test_edit_decay_in_mask_only_mode_is_refused_naming_mask_only_kw_never_a_bare_type_error(capsys):
    """The command line refused --controller_kw in mask_only mode; a config changed after its checks
    reached build_controller, where edit_decay clashed with the recipe's own: Python's 'got multiple
    values for keyword argument'."""
    import torch

    from adaptive import Connectome
    from adaptive.config import ConfigError, parse_config

    err = _error(A.main, ["--mode", "mask_only", "--controller_kw", "edit_decay=linear"], capsys)
    assert "mode mask_only does not use controller_kw" in err and "--mask_only_kw" in err and "edit_decay" in err
    cfg = parse_config(A.RunConfig, ["--mode", "mask_only"])
    cfg.controller_kw = {"edit_decay": "linear"}
    conn = Connectome(torch.nn.Sequential(torch.nn.Linear(4, 3)), mode="mask_only")
    with pytest.raises(ConfigError, match="mode mask_only does not use controller_kw"):
        A.build_controller(cfg, conn)
    train = parse_config(A.RunConfig, [])
    train.controller_kw = {"seed": 3}
    with pytest.raises(ConfigError, match="--controller_kw seed: the recipe sets seed itself, from --seed"):
        A.build_controller(train, Connectome(torch.nn.Sequential(torch.nn.Linear(4, 3))))
    train.controller_kw = {"edit_decay": "linear"}  # train mode takes it
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    ctrl = A.build_controller(train, Connectome(net), torch.optim.SGD(net.parameters(), lr=0.1))
    assert type(ctrl.edit).__name__ == "LinearDecay"


def test_the_same_options_in_another_form_build_the_same_estimator_and_a_stage_checkpoint_takes_it():
    """damping=1 and damping=1.0 (1e-3 and 0.001 alike) are one estimator: the mask-only stage
    checkpoint fingerprints it by its repr, which printed OBD(damping=1) against OBD(damping=1.0) and
    refused the resume. A flag for a number option (YAML reads yes and on as true) is refused."""
    from adaptive import mask_only_checkpoint as ckpt
    from adaptive.config import merge_key_values
    from adaptive.utility import configured_estimator

    def fp(*items):
        return ckpt.fingerprint(estimator=configured_estimator("obd", merge_key_values(items, "--estimator_kw")))

    assert fp("damping=1") == fp("damping=1.0") and fp("damping=1e-3") == fp("{damping: 0.001}")
    assert ckpt._differences(fp("damping=1"), fp("damping=1.0")) == []
    assert ckpt._differences(fp("damping=1"), fp("damping=2")) != []
    with pytest.raises(ValueError, match="option damping must be a number, got True"):
        configured_estimator("obd", merge_key_values(["damping=yes"], "--estimator_kw"))


def test_a_stage_checkpoint_tells_presence_estimators_of_another_eps_apart_and_keeps_its_old_fingerprint():
    """Presence's repr left eps out, so a mask-only resume with another --estimator_kw eps= (where
    no config.yaml compares them) continued the stages with another estimator silently."""
    from adaptive import mask_only_checkpoint as ckpt
    from adaptive.utility import get_estimator

    old = ckpt.fingerprint(estimator="Presence(step=0.01, beta1=0.9, beta2=0.999)")  # as checkpoints recorded it
    assert ckpt._differences(old, ckpt.fingerprint(estimator=get_estimator("presence"))) == []
    assert ckpt._differences(old, ckpt.fingerprint(estimator=get_estimator("presence", eps=1e-6))) != []


def test_prune_pretrained_reads_a_config_files_exponent_floats_as_the_command_line_does(tmp_path):
    """YAML 1.1 reads 1e-6 (no decimal point) as text: a --config file's estimator_kw {damping: 1e-6}
    was refused ('must be a number, got '1e-6' ... write damping=1e-6', what it said), while
    recipes/adaptive.py's --config and every command line read the float."""
    P = load_script("recipes/prune_pretrained.py", "prune_pretrained_estimator_kw")
    f = tmp_path / "c.yaml"
    f.write_text("estimator: obd\nestimator_kw: {damping: 1e-6}\nmodel_kw: {hidden: [8]}\n")
    args = P.parse_args(PRUNE + ["--config", str(f)])
    assert args.estimator_kw == {"damping": 1e-6} and P._estimator(args).damping == 1e-6
    assert P.parse_args(PRUNE + ["--config", str(f), "--estimator-kw", "damping=2e-6"]).estimator_kw == {"damping": 2e-6}


def test_a_resume_that_spells_out_the_estimators_defaults_continues_a_run_recorded_without_them(tmp_path, capsys):
    """The run's recorded options are compared as the constructor takes them, over its defaults: the
    default damping spelt out is the run's own setting; another value is refused, naming both."""
    out = tmp_path / "run"
    A.main(TINY + ["--estimator", "obd", "--checkpoint_every", "10", "--output_dir", str(out)])
    assert yaml.safe_load((out / "config.yaml").read_text())["estimator_kw"] == {}
    resumed = A.main(TINY + ["--estimator", "obd", "--estimator_kw", "damping=1e-12", "--output_dir", str(out),
                             "--resume", "latest"])
    assert resumed.controller.drop_est.damping == 1e-12
    err = _error(A.main, TINY + ["--estimator", "obd", "--estimator_kw", "damping=0.001", "--output_dir", str(out),
                                 "--resume", "latest"], capsys)
    assert "records other settings (estimator_kw: run {'damping': 1e-12}, now {'damping': 0.001})" in err


def test_prune_pretrained_resumes_with_the_estimators_defaults_spelt_out(tmp_path, no_curves):
    P = load_script("recipes/prune_pretrained.py", "prune_pretrained_estimator_kw_defaults")
    out = tmp_path / "run"
    P.main(PRUNE + ["--estimator", "evidence", "--step", "0.1", "--output_dir", str(out)])
    P.main(PRUNE + ["--estimator", "evidence", "--estimator-kw", "clip=3", "--estimator-kw", "decay=1.0", "--step", "0.1",
                    "--output_dir", str(out), "--resume"])  # (clip=3: the int for the float default, built as 3.0)
    with pytest.raises(P.run_folder.RunFolderError, match=r"estimator_kw: run \{'clip': 3.0\}, now \{'clip': 2.5\}"):
        P.main(PRUNE + ["--estimator", "evidence", "--estimator-kw", "clip=2.5", "--step", "0.1", "--output_dir",
                        str(out), "--resume"])


@pytest.mark.parametrize("name, kw, message", [
    # each was built: damping -1 made OBD's growth gains g^2/(2(F-1)) negative or infinite
    ("obd", {"damping": -1.0}, "utility estimator 'obd' option damping must be a finite number >= 0"),
    ("curvature", {"damping": float("nan")}, "utility estimator 'curvature' option damping must be a finite number"),
    ("consistency", {"damping": float("inf")}, "option damping must be a finite number >= 0"),
    ("evidence", {"step": -0.1}, "utility estimator 'evidence' option step must be a finite number >= 0"),
    ("evidence", {"step": float("nan")}, "option step must be a finite number >= 0"),
    ("evidence", {"decay": 1.5}, "option decay must be a finite number in [0, 1]"),
    ("evidence", {"clip": 0.0}, "option clip must be a number > 0"),
    ("evidence", {"clip": float("nan")}, "option clip must be a number > 0"),
    ("presence", {"step": float("nan")}, "utility estimator 'presence' option step must be a finite number > 0"),
    ("presence", {"eps": 0.0}, "option eps must be a finite number > 0"),
    ("presence", {"beta2": 1.0}, "option beta2 must be a finite number in [0, 1)"),
])
def test_estimator_options_out_of_range_are_refused_where_it_is_built(name, kw, message):
    from adaptive.utility import get_estimator

    with pytest.raises(ValueError, match=re.escape(message)):
        get_estimator(name, **kw)


def test_estimator_options_in_range_are_kept():
    """What stays: 0 damping, evidence step 0 (the magnitude prior alone), decay 0 and 1, clip inf."""
    from adaptive.utility import get_estimator

    assert get_estimator("obd", damping=0).damping == 0
    e = get_estimator("evidence", step=0, decay=1, clip=float("inf"))
    assert (e.step, e.decay, e.clip) == (0.0, 1.0, float("inf"))
    assert get_estimator("evidence", decay=0).decay == 0.0
    assert get_estimator("presence", beta1=0, eps=1e-30).eps == 1e-30


@pytest.mark.parametrize("kw", [{"prune_boundary": float("nan")}, {"restore_boundary": float("inf")}])
def test_threshold_boundaries_must_be_finite(kw):
    """A NaN boundary compared false with every cost: the threshold policy never pruned, unsaid."""
    from adaptive.policies import get_policy

    with pytest.raises(ValueError, match=rf"policy 'threshold' option {next(iter(kw))} must be a finite number"):
        get_policy("threshold", **kw)
    assert get_policy("threshold", prune_boundary=-0.5).prune_boundary == -0.5  # either sign is a boundary


@pytest.mark.parametrize("entry", [("prune_boundary", float("nan")), ("restore_boundary", float("nan")),
                                   ("prune_boundary", "0.5"), ("start_live", -5.0), ("start_live", float("nan"))])
def test_a_threshold_state_with_a_broken_boundary_is_refused_on_load_changing_nothing(entry):
    """load_state_dict read a saved boundary with float(): a NaN one (which compares false with every cost,
    so nothing beyond the pace was ever pruned) or an infinite one loaded unsaid, as did a negative start_live."""
    import torch
    from torch import nn

    import adaptive

    key, bad = entry
    conn = adaptive.Connectome(nn.Sequential(nn.Linear(6, 6, bias=False)))
    ctrl = adaptive.Controller(conn, None, policy="threshold", estimator="magnitude", density=0.5, pace="cubic")
    ctrl.policy.prune_boundary, ctrl.policy.restore_boundary, ctrl.policy.start_live = 0.25, 0.125, 30.0
    sd = ctrl.state_dict()
    sd["policy"] = dict(sd["policy"], **{key: bad})
    before = ctrl.policy.state_dict()
    with pytest.raises(ValueError, match=rf"controller state entry policy does not load .*policy 'threshold': the "
                                         rf"state's option {key} must be a (finite )?number.*got {bad!r}.*nothing was changed"):
        ctrl.load_state_dict(sd)
    assert ctrl.policy.state_dict() == before
    with pytest.raises(ValueError, match=rf"the state's option {key} must be"):
        ctrl.policy.load_state_dict(sd["policy"])
    assert ctrl.policy.state_dict() == before  # no half-loaded policy either
    good = dict(before, prune_boundary=-0.5, start_live=torch.tensor(12).item())  # a negative cost is a boundary
    ctrl.policy.load_state_dict(good)
    assert (ctrl.policy.prune_boundary, ctrl.policy.start_live) == (-0.5, 12)


def test_a_threshold_run_that_set_an_infinite_boundary_resumes_with_it():
    """Scores may hold +-inf (score_checks admits them), and update() sets the prune boundary to the
    largest cost it pruned: a run pruning -inf costs saved prune_boundary=-inf, and its own state was
    then refused on load ('must be a finite number ... load an unedited one'), so it could not resume."""
    import torch
    from torch import nn

    import adaptive
    from adaptive.utility import Estimator, register_estimator
    from adaptive.utility.base import _ESTIMATORS

    @register_estimator("estimator_kw_inf_costs")
    class InfCosts(Estimator):
        def removal_cost(self, ctx):
            return torch.where(ctx.weight.abs() < 0.2, torch.tensor(float("-inf")), ctx.weight.abs())

        def restoration_gain(self, ctx):
            return ctx.weight.abs()

    try:
        def build(seed=0):
            torch.manual_seed(seed)
            conn = adaptive.Connectome(nn.Sequential(nn.Linear(8, 16, bias=False)))
            return conn, adaptive.Controller(conn, None, policy="threshold", estimator="estimator_kw_inf_costs",
                                             density=0.5, update_every=1, end_step=6)

        conn, ctrl = build()
        ctrl.step(), ctrl.step()
        assert ctrl.policy.prune_boundary == float("-inf") and conn.density() < 1.0
        _, again = build()
        again.load_state_dict(ctrl.state_dict())
        assert again.policy.state_dict() == ctrl.policy.state_dict()
    finally:
        _ESTIMATORS.pop("estimator_kw_inf_costs", None)


def test_estimator_kw_out_of_range_is_one_error_line_before_any_work(tmp_path, capsys):
    """``--estimator_kw damping=-1`` ran to the end; ``step=nan`` (YAML reads nan as text) was told to
    'write step=nan', as it was written."""
    from _scripts import load_script

    A = load_script("recipes/adaptive.py", "recipe_adaptive_estimator_range")
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        A.parse_args(["--estimator", "obd", "--estimator_kw", "damping=-1", "--output_dir", str(out)])
    assert "--estimator_kw: utility estimator 'obd' option damping must be a finite number >= 0" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        A.parse_args(["--estimator", "evidence", "--policy", "crawl", "--estimator_kw", "step=nan",
                      "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert "option step must be a number, got 'nan'" in err and "write step=nan" not in err
    assert not out.exists()
