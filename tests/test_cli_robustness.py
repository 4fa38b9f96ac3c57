"""The recipes against the mistakes real users make: bad targets, a refused command in a folder
that holds an earlier run, resuming with other settings or from a damaged checkpoint."""
import os
import time
import warnings
from pathlib import Path

import pytest
import torch

from adaptive import mask_only_checkpoint as stage
from _scripts import CHILD_TIMEOUT, load_script  # noqa: E402
from _training import fresh_recipe_state  # noqa: E402

torch.set_num_threads(1)
TINY = ["--max_steps", "20", "--update_every", "10", "--threads", "1", "--progress", "false", "--figures", "false"]


A = load_script("recipes/adaptive.py", "recipe_adaptive_robustness")
P = load_script("recipes/prune_pretrained.py", "recipe_prune_pretrained_robustness")
from recipes._adaptive import mask_only_run  # noqa: E402  (importable once the recipe put the root on sys.path)


_fresh_accelerate_state = pytest.fixture(autouse=True)(fresh_recipe_state)  # a fresh Accelerator per in-process run


@pytest.fixture
def no_curves(monkeypatch):
    """recipes/prune_pretrained.py writes curves.png as an empty placeholder, not drawn: for the tests here of
    what its runs leave in their folder and what they refuse; drawing the figure is about half of such a tiny
    run (test_prune_pretrained.py's figure tests draw it)."""
    from recipes._prune_pretrained import run

    monkeypatch.setattr(run, "_plot", lambda history, rows, events, path, **kw: Path(path).write_bytes(b""))


def error_of(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        A.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len([x for x in err.splitlines() if "error:" in x]) == 1, err
    return err


@pytest.mark.parametrize("remove, message", [
    (["abc"], "give a fraction in [0, 1) (0.2), a count of synapses (50000) or 'best'"),
    (["-5"], "cannot be negative"),
    (["-0.1"], "cannot be negative"),
    (["0.2", "0.2"], "given twice"),
    (["0.2", "best"], "'best' cannot be combined with other targets"),  # was refused only after the folder was made
    (["best", "1"], "'best' cannot be combined with other targets"),
])
def test_prune_pretrained_refuses_bad_targets_while_parsing(remove, message):
    with pytest.raises(ValueError) as e:
        P.parse_args(["--remove", *remove])
    assert message in str(e.value)
    assert P.parse_args(["--remove", "1", "0.5"]).remove == [1, 0.5]  # 1 weight is not 1.0


def test_a_fresh_run_sets_the_earlier_checkpoint_aside_until_it_records_its_own(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"earlier run")
    assert "starting afresh" in stage.begin(ckpt, resume=False)
    stage.settle(ckpt)  # refused before its first stage: the earlier record comes back
    assert ckpt.read_bytes() == b"earlier run" and not list(tmp_path.glob("*.earlier"))
    stage.begin(ckpt, resume=False)
    ckpt.write_bytes(b"this run")  # a stage recorded
    stage.settle(ckpt)
    assert ckpt.read_bytes() == b"this run" and not list(tmp_path.glob("*.earlier"))
    stage.begin(ckpt, resume=False)  # killed (SIGTERM) before settling: --resume finds the earlier record
    assert stage.begin(ckpt, resume=True) is None and ckpt.read_bytes() == b"this run"


def test_mask_only_run_refused_after_parsing_keeps_the_earlier_run(tmp_path, capsys):
    out = tmp_path / "run"
    A.main(TINY + ["--output_dir", str(out), "--mode", "mask_only", "--target", "0.3", "--epochs", "1"])
    before = {p: (out / p).read_bytes() for p in ("config.yaml", A.MASK_ONLY_CHECKPOINT)}
    capsys.readouterr()
    err = error_of(TINY + ["--output_dir", str(out), "--mode", "mask_only", "--target", "99999999"], capsys)
    assert "holds an earlier run" in err  # refused before anything is built
    # --overwrite deletes the earlier run only once the new settings are accepted
    err = error_of(TINY + ["--output_dir", str(out), "--mode", "mask_only", "--target", "99999999", "--overwrite"],
                   capsys)
    assert "beyond the model's" in err
    err = error_of(TINY + ["--output_dir", str(out), "--mode", "mask_only", "--mask_only_kw.approach", "3",
                           "--overwrite"], capsys)
    assert "approach must be in [0, 1]" in err
    assert {p: (out / p).read_bytes() for p in before} == before


@pytest.mark.parametrize("argv, message", [
    (["--target", "0.5"], "target (synapses to remove) applies to mode mask_only"),
    (["--mode", "mask_only", "--target", "1.5"], "target fraction 1.5 must be in [0, 1)"),
    (["--mode", "mask_only", "--target", "-3"], "cannot be negative"),
    (["--mode", "mask_only", "--target", "abc"], "target 'abc': give a fraction in [0, 1)"),
])
def test_adaptive_target_is_checked_while_parsing(argv, message, capsys):
    with pytest.raises(SystemExit):
        A.parse_args(argv)
    assert message in capsys.readouterr().err


def test_a_misspelt_entry_of_a_kw_mapping_is_one_error_line(tmp_path, capsys):
    err = error_of(TINY + ["--output_dir", str(tmp_path / "a"), "--model_kw.bogus", "1"], capsys)
    assert "model 'mlp' takes no keyword 'bogus'; it takes ['activation', 'bias', 'hidden']" in err
    assert not (tmp_path / "a" / "config.yaml").exists()


def test_a_model_kw_key_the_model_does_not_take_is_refused_while_parsing(capsys):
    """It was refused only when the model was built: after the data had loaded, for a dataset that
    must be read for its classes or input shape (an ImageFolder tree)."""
    with pytest.raises(SystemExit):
        A.parse_args(["--dataset", "folder", "--model_kw.hiden", "[16]"])
    assert ("--model_kw hiden=[16]: model 'mlp' takes no keyword 'hiden' (did you mean 'hidden'?)"
            in capsys.readouterr().err)


def test_a_model_kw_value_the_model_cannot_take_names_the_option(tmp_path, capsys):
    """--model_kw hidden=abc ended with a bare "invalid literal for int() with base 10: 'abc'"."""
    err = error_of(TINY + ["--output_dir", str(tmp_path / "a"), "--model_kw", "hidden=abc"], capsys)
    assert ("--model_kw hidden=abc: hidden sizes must be whole numbers, one per hidden layer (e.g. 300,100), "
            "got 'abc'") in err
    assert not (tmp_path / "a" / "config.yaml").exists()


def test_a_keyword_the_model_name_fills_is_named(tmp_path, capsys):
    """torchvision:NAME gives NAME as the builder's first argument, arch: --model_kw arch=... was a
    bare 'got multiple values for argument' TypeError."""
    from adaptive.models import build_model

    with pytest.raises(ValueError, match=r"model 'torchvision:resnet18' takes no keyword 'arch': the part of the "
                                         r"name after 'torchvision:' is its arch \('resnet18' here\); drop the "
                                         r"keyword and name the model torchvision:resnet34 instead"):
        build_model("torchvision:resnet18", arch="resnet34")
    err = error_of(TINY + ["--output_dir", str(tmp_path / "a"), "--model", "torchvision:resnet18",
                           "--model_kw", "arch=resnet34"], capsys)
    assert "takes no keyword 'arch': the part of the name after 'torchvision:'" in err


def test_resume_with_other_settings_or_a_damaged_checkpoint_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    A.main(TINY + ["--output_dir", str(out), "--checkpoint_every", "10"])
    config = (out / "config.yaml").read_bytes()
    capsys.readouterr()
    err = error_of(TINY + ["--output_dir", str(out), "--resume", "latest", "--density", "0.1"], capsys)
    assert "density: run 0.2, now 0.1" in err
    assert (out / "config.yaml").read_bytes() == config
    (out / "checkpoints" / "step_00000010" / "model.safetensors").write_bytes(b"truncated")
    err = error_of(TINY + ["--output_dir", str(out), "--resume", "latest", "--threads", "1"], capsys)
    assert "step_00000010 is damaged: model.safetensors has 9 bytes" in err and "start afresh" in err


def test_prune_pretrained_refused_target_keeps_the_earlier_checkpoint(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"earlier run")
    argv = ["--model", "resnet20", "--dataset", "fake", "--dataset-kw", "shape=[3,8,8]", "--subset", "64",
            "--batch-size", "32", "--output_dir", str(out), "--remove", "10000000", "--no-progress", "--cpu"]
    with pytest.raises(RuntimeError, match="holds an earlier run"):  # not even with a good target
        P.main(argv)
    with pytest.raises(ValueError, match="beyond"):  # --overwrite deletes only once the settings are accepted
        P.main(argv + ["--overwrite"])
    assert (out / "checkpoint.pt").read_bytes() == b"earlier run"


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt: "20261201-120000")
    first = A.default_output_dir()
    Path(first).mkdir(parents=True)
    second = A.default_output_dir()
    Path(second).mkdir()
    assert first == "runs/20261201-120000" and second == "runs/20261201-120000-2"
    assert A.default_output_dir() == "runs/20261201-120000-3"


def test_every_option_of_both_recipes_is_documented_with_its_default():
    import dataclasses

    undocumented = [f.name for f in dataclasses.fields(A.RunConfig) if not f.metadata.get("help")]
    assert undocumented == [], f"recipes/adaptive.py options without help: {undocumented}"
    parser = P.build_parser()
    actions = [a for a in parser._actions if a.dest != "help"]
    assert [a.dest for a in actions if not a.help] == []
    # every key of the defaults (what --config accepts) is an option, and its help names the default
    assert set(P.DEFAULTS) == {a.dest for a in actions} - {"config"}
    help_text = {a.dest: a.help for a in actions}
    assert "(default: 0.1 0.2 0.3" in help_text["ladder"] and "(default: 128)" in help_text["batch_size"]
    for dest, value in P.DEFAULTS.items():
        if value is not None and dest not in ("progress", "resume", "cpu", "download"):
            assert "default" in help_text[dest], dest


def test_mask_only_honours_max_steps_and_defaults_to_one_pass(tmp_path, capsys):
    base = ["--mode", "mask_only", "--threads", "1", "--progress", "false", "--figures", "false"]
    res = A.main(base + ["--max_steps", "7", "--output_dir", str(tmp_path / "a")])
    assert res.summary["updates"] == 7  # one update per batch: --max_steps batches per target
    assert A.parse_args(["--mode", "mask_only"]).epochs == 1 and A.parse_args([]).epochs == 20
    assert "(mask_only):" in capsys.readouterr().out  # the opening line names the run as train mode does


def test_mask_only_opening_line_counts_the_batches_each_target_reads(tmp_path, capsys):
    """A target reads whole update windows: --max_steps 5 with --update_every 4 read 8 batches while
    the opening line said '0.122 pass(es) of 41 batches per target' (5 batches), as the README's
    '--max_steps N gives each target N batches' did."""
    base = ["--mode", "mask_only", "--threads", "1", "--progress", "false", "--figures", "false", "--target", "0.3"]
    res = A.main(base + ["--max_steps", "5", "--update_every", "4", "--output_dir", str(tmp_path / "a")])
    assert res.summary["steps"] == 8 and res.summary["updates"] == 2
    assert ("target 0.3, 8 batches per target (0.122 pass(es) of 41 batches, rounded up to whole update windows of 4 "
            "(--update_every))") in capsys.readouterr().out


def test_mask_only_opening_line_says_eval_every_rounded_to_whole_windows(tmp_path, capsys):
    """Held-out evaluations fall between updates: --eval_every 10 with --update_every 4 evaluated every 8 batches,
    silently. The opening line says so where the two differ; the rows are at the steps it names."""
    import csv

    base = ["--mode", "mask_only", "--threads", "1", "--progress", "false", "--figures", "false", "--target", "0.3"]
    res = A.main(base + ["--max_steps", "24", "--update_every", "4", "--eval_every", "10", "--output_dir", str(tmp_path / "a")])
    assert ("held-out evaluations every 8 batches (--eval_every 10 rounded down to whole update windows of 4)"
            in capsys.readouterr().out)
    with open(tmp_path / "a" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r["split"] == "holdout"]
    assert steps[:2] == [8, 16], steps
    A.main(base + ["--max_steps", "8", "--update_every", "4", "--eval_every", "8", "--output_dir", str(tmp_path / "b")])
    assert "held-out evaluations every" not in capsys.readouterr().out  # (a whole number of windows: as given)


def test_mask_only_opening_line_of_a_target_of_0_says_no_batch_is_read(tmp_path, capsys):
    """A target of 0 is the dense network, scored with no stage of its own, while the opening line said
    '48 batches per target (1 pass(es) of 41 batches, ...)' for it (as --density 1.0 means it too)."""
    base = ["--mode", "mask_only", "--threads", "1", "--progress", "false", "--figures", "false"]
    res = A.main(base + ["--target", "0", "--update_every", "8", "--output_dir", str(tmp_path / "a")])
    out = capsys.readouterr().out
    assert res.summary["steps"] == 0 and res.summary["updates"] == 0
    assert "target 0, the dense network, scored on the held-out part with no training batch read, estimator" in out
    assert "batches per target" not in out
    A.main(base + ["--density", "1.0", "--output_dir", str(tmp_path / "b")])
    assert "target 0.0, the dense network, scored on the held-out part with no training batch read" in capsys.readouterr().out


def test_a_run_whose_policy_never_edits_says_so(tmp_path, capsys):
    A.main(["--max_steps", "30", "--threads", "1", "--progress", "false", "--figures", "false",
            "--output_dir", str(tmp_path / "run")])
    assert "note: no controller update ran: policy 'utility' edits every 25 steps until step 22 of 30" in \
        capsys.readouterr().out


def test_saved_configs_name_files_by_absolute_path(tmp_path, monkeypatch):
    import yaml

    (tmp_path / "w.pt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert A.parse_args(["--weights", "w.pt"]).weights == str(tmp_path / "w.pt")
    ns = P.parse_args(["--weights", "w.pt", "--data-dir", "."])
    assert ns.weights == str(tmp_path / "w.pt") and ns.data_dir == str(tmp_path)
    assert yaml.safe_load(yaml.safe_dump({"weights": ns.weights}))["weights"].startswith("/")


def test_prune_pretrained_refuses_abbreviated_options_and_takes_download():
    with pytest.raises(SystemExit):
        P.parse_args(["--remov", "0.2"])  # argparse would otherwise read it as --remove
    assert P.parse_args(["--download"]).download is True and P.parse_args([]).download is False


PRUNE_TINY = ["--model", "resnet20", "--dataset", "fake", "--dataset-kw", "shape=[3,8,8]", "--subset", "64",
              "--batch-size", "32", "--passes", "0.5", "--no-progress", "--cpu", "--threads", "1"]


def test_prune_pretrained_refused_resume_names_the_options_that_fix_it(tmp_path, no_curves):
    """The refusal said 'another checkpoint path': the recipe has no such option."""
    out = tmp_path / "run"
    P.main(PRUNE_TINY + ["--output_dir", str(out), "--remove", "0.2"])
    with pytest.raises(RuntimeError, match=r"records other settings \(remove: run \[0\.2\], now \[0\.3\]\).*--resume"
                                           r".*another --output_dir"):  # config.yaml's check, before any data
        P.main(PRUNE_TINY + ["--output_dir", str(out), "--remove", "0.3", "--resume"])
    (out / "config.yaml").unlink()  # a run recorded without it: the checkpoint's own check refuses
    with pytest.raises(ValueError) as e:
        P.main(PRUNE_TINY + ["--output_dir", str(out), "--remove", "0.3", "--resume"])
    msg = str(e.value)
    assert "was written by another run" in msg and "checkpoint path" not in msg
    assert "--resume" in msg and "another --output_dir" in msg and "run without --resume" in msg
    (out / "checkpoint.pt").write_bytes(b"damaged")
    with pytest.raises(ValueError) as e:
        P.main(PRUNE_TINY + ["--output_dir", str(out), "--remove", "0.2", "--resume"])
    assert "not a readable mask-only checkpoint" in str(e.value) and "another --output_dir" in str(e.value)


def test_a_missing_config_file_names_the_option(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        P.parse_args(["--config", "nope.yaml"])
    assert "--config file 'nope.yaml' does not exist" in str(e.value.code) and "Errno" not in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        P.parse_args(["--config", str(tmp_path)])
    assert "is a folder" in str(e.value.code)
    with pytest.raises(SystemExit):
        A.parse_args(["--config", "nope.yaml"])
    assert "--config file 'nope.yaml' does not exist" in capsys.readouterr().err


def test_build_model_names_a_bad_keyword_and_the_accepted_ones():
    from adaptive.models import build_model

    with pytest.raises(ValueError, match=r"model 'mlp' takes no keyword 'hiden' \(did you mean 'hidden'\?\); "
                                         r"it takes \['activation', 'bias', 'hidden'\]"):
        build_model("mlp", hiden=32)
    with pytest.raises(ValueError, match="'resnet20' takes no keyword 'depth'; it takes no keywords"):
        build_model("resnet20", depth=3)
    with pytest.raises(ValueError, match=r"'vit_tiny' takes no keyword 'head'.*'heads'"):
        build_model("vit_tiny", head=2)
    with pytest.raises(ValueError, match=r"takes no keyword 'foo' \(ResNet"):
        build_model("torchvision:resnet18", foo=1)
    with pytest.raises(ValueError, match="in_shape must be the input's sizes"):
        build_model("mlp", in_shape="abc")
    assert build_model("mlp", in_shape="1,8,8").in_shape == (1, 8, 8)


def test_bad_shapes_name_the_option(capsys):
    err = error_of(TINY + ["--dataset", "fake", "--dataset_kw", "shape=abc"], capsys)
    assert "--dataset-kw shape=" in err and "invalid literal" not in err
    import argparse

    from graphs.cli import _model_spec

    with pytest.raises(ValueError, match="--in-shape 3,32,32"):
        _model_spec({"model": "mlp"}, argparse.Namespace(model=None, num_classes=None, in_shape="abc"))


def test_progress_bars_only_on_a_terminal_unless_asked_and_the_test_evaluation_has_one(tmp_path, capsys):
    """Bars went into pipes and log files by default, and the test evaluations had none."""
    quiet = [a for a in TINY if a not in ("--progress", "false")] + ["--cpu", "true"]  # one process, one device: P runs on the CPU
    A.main(quiet + ["--output_dir", str(tmp_path / "a")])  # capsys' stderr is not a terminal: no bar
    assert capsys.readouterr().err == ""
    A.main(quiet + ["--output_dir", str(tmp_path / "b"), "--progress"])
    err = capsys.readouterr().err
    assert "train:" in err and "test:" in err
    A.main(quiet + ["--output_dir", str(tmp_path / "c"), "--mode", "mask_only", "--max_steps", "3", "--update_every",
                    "1", "--progress", "true"])
    err = capsys.readouterr().err
    assert "mask-only" in err and "test:" in err
    P.main([a for a in PRUNE_TINY if a != "--no-progress"] + ["--output_dir", str(tmp_path / "p"), "--remove", "0.2"])
    assert capsys.readouterr().err == ""
    P.main([a for a in PRUNE_TINY if a != "--no-progress"] + ["--output_dir", str(tmp_path / "q"), "--remove", "0.2",
                                                               "--progress"])
    err = capsys.readouterr().err
    assert "mask-only" in err and "final report" in err
    assert P.parse_args([]).progress is None and P.parse_args(["--no-progress"]).progress is False
    assert A.parse_args([]).progress is None and A.parse_args(["--no-progress"]).progress is False


def test_dataset_kw_progress_is_named_in_every_recipe(tmp_path, capsys):
    err = error_of(TINY + ["--output_dir", str(tmp_path / "a"), "--dataset_kw.progress", "false"], capsys)
    assert "set by an option of its own (--progress)" in err
    # named before the model is built from the dataset's facts: that call took data_dir twice (a TypeError)
    err = error_of(TINY + ["--output_dir", str(tmp_path / "b"), "--dataset_kw.data_dir", str(tmp_path)], capsys)
    assert "dataset_kw ['data_dir']: set by an option of its own (--data-dir)" in err, err
    D = load_script("recipes/diagnostics.py", "recipe_diagnostics_kw")
    with pytest.raises(ValueError, match="--dataset-kw progress"):  # one error line through the script's run_cli
        D.main(["collinearity", "--dataset", "digits", "--model", "mlp", "--output_dir", str(tmp_path / "d"),
                "--dataset-kw", "progress=false"])


def test_in_shape_strings_are_read_or_refused_never_misread():
    from adaptive.models import build_model

    assert build_model("mlp", in_shape="(1, 8, 8)").in_shape == (1, 8, 8)
    for bad in ("1 8 8", "3,,32", "", "0,8,8", (8.7,), (1, 8, 0), ()):  # 8.7 was cut to 8
        with pytest.raises(ValueError, match="in_shape must be"):
            build_model("mlp", in_shape=bad)
    assert build_model("mlp", in_shape=(1.0, 8, torch.tensor(8))).in_shape == (1, 8, 8)


def test_a_builder_s_own_type_error_keeps_its_traceback():
    from adaptive.models import build_model, register_model
    from adaptive.models import _REGISTRY as _MODELS

    @register_model("buggy_for_test")
    def buggy(num_classes=10, in_shape=(4,), width=4):
        return torch.nn.Linear(4, num_classes, width=width)  # the builder's bug, not the caller's

    try:
        with pytest.raises(TypeError, match="unexpected keyword argument 'width'"):
            build_model("buggy_for_test", width=8)
    finally:
        _MODELS.pop("buggy_for_test", None)


def _importing_torch(p) -> bool:
    """Wait until the child runs its script and torch is loading (torch's library is mapped);
    False if it ended first. Before that, Python itself is still starting (a slow machine takes
    over 0.25 s to import `site`), and a signal there is Python's own fatal error, outside any
    script's reach."""
    import time

    maps, deadline = Path(f"/proc/{p.pid}/maps"), time.monotonic() + CHILD_TIMEOUT
    while "libtorch" not in maps.read_text() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    return p.poll() is None


def _ctrl_c_default():
    """In the child: Ctrl-C as an interactive shell gives it. A suite started in the background
    (``cmd &`` without job control) hands its children SIGINT ignored, which the recipes respect."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("script", ["recipes/adaptive.py", "recipes/prune_pretrained.py", "recipes/diagnostics.py"])
def test_ctrl_c_while_starting_is_one_line(tmp_path, script):
    """Ctrl-C in the first second, while torch was still importing, printed a KeyboardInterrupt
    traceback; the scripts now end with one line and status 130 (or, if the run had started,
    with run_cli's own interrupted line)."""
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    args = {"recipes/diagnostics.py": ["progress", str(tmp_path)]}.get(script, ["--output_dir", str(tmp_path / "o")])
    p = subprocess.Popen([sys.executable, str(root / script), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_default)
    assert _importing_torch(p), "the script ended before torch was imported"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=CHILD_TIMEOUT)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert "interrupted" in err and len(err.strip().splitlines()) == 1


def test_ctrl_c_once_the_run_has_written_a_checkpoint_says_how_to_continue(tmp_path):
    """Once the run has started, Ctrl-C is run_cli's: its line names the checkpoint to continue
    from, not the start-up handler's 'interrupted while starting; nothing was written'."""
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, str(root / "recipes" / "adaptive.py"), "--max_steps", "100000", "--threads", "1",
                          "--progress", "false", "--figures", "false", "--checkpoint_every", "20", "--output_dir",
                          str(out)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=_ctrl_c_default)
    deadline = time.monotonic() + CHILD_TIMEOUT  # a checkpoint folder is step_* only once complete
    while p.poll() is None and not list((out / "checkpoints").glob("step_*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=CHILD_TIMEOUT)
    assert p.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().startswith(f"recipes/adaptive.py: interrupted; add --resume latest --output_dir {out} to the "
                                  "same command to continue from step_"), err[-2000:]
    assert len(err.strip().splitlines()) == 1


def test_a_run_started_with_ctrl_c_ignored_keeps_ignoring_it(tmp_path):
    """A job a shell script starts in the background has SIGINT ignored; the quiet start-up handler
    and run_cli replaced that, so a Ctrl-C meant for the script killed the run."""
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    p = subprocess.Popen([sys.executable, str(root / "recipes" / "adaptive.py"), *TINY, "--output_dir", str(tmp_path / "o")],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    # Ctrl-C while importing, then while running (config.yaml is written once the run has started):
    # waited for, not slept for, so that a slow machine does not send both while still importing
    assert _importing_torch(p), "the run ended before torch was imported"
    p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not (tmp_path / "o" / "config.yaml").exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert p.poll() is None, "the run ended before it wrote config.yaml"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=CHILD_TIMEOUT)
    assert p.returncode == 0 and "interrupted" not in err and "done in" in out, err[-2000:]


def test_prune_pretrained_ctrl_c_says_resume_only_when_a_target_finished(tmp_path):
    """Ctrl-C always said '--resume continues after the last finished target', also when none had
    finished (and --resume then found no checkpoint)."""
    out = tmp_path / "run"
    assert "nothing to continue" in P._on_interrupt(["--output_dir", str(out)])
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"x")
    assert "--resume continues after the last finished target" in P._on_interrupt(["--output_dir", str(out)])


def test_adaptive_refuses_a_prune_pretrained_folder_and_ctrl_c_after_an_overwrite_says_what_holds(tmp_path):
    """recipes/adaptive.py wrote beside a prune_pretrained run (even one killed with only its
    checkpoint.pt); prune_pretrained's Ctrl-C under --overwrite advised --resume, refused with
    --overwrite, or pointed at the earlier run's checkpoint as if it were this run's."""
    out = tmp_path / "pp"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(SystemExit):
        A.main(TINY + ["--output_dir", str(out), "--overwrite"])
    assert not (out / "config.yaml").exists()
    P._STARTED["replaced_earlier"] = False
    assert "untouched" in P._on_interrupt(["--output_dir", str(out), "--overwrite"])
    P._STARTED["replaced_earlier"] = True
    try:
        assert "--resume in place of --overwrite" in P._on_interrupt(["--output_dir", str(out), "--overwrite"])
    finally:
        P._STARTED["replaced_earlier"] = False


OUT_OF_RANGE = [
    (["--lr", "inf"], "lr must be a finite number > 0, got inf"),  # every loss NaN, and the run exited 0
    (["--lr", "nan"], "lr must be a finite number > 0, got nan"),
    (["--momentum", "1.5"], "momentum must be in [0, 1) (SGD momentum; adamw: beta1), got 1.5"),
    (["--momentum", "1"], "momentum must be in [0, 1) (SGD momentum; adamw: beta1), got 1.0"),  # (the open end)
    (["--momentum", "-1"], "momentum must be in [0, 1) (SGD momentum; adamw: beta1), got -1"),
    (["--weight_decay", "-1"], "weight_decay must be a finite number >= 0, got -1"),
    (["--seed", "-1"], "seed must be in [0, 2**32 - 1] (0 to 4294967295), got -1"),
    (["--seed", "4294967296"], "seed must be in [0, 2**32 - 1] (0 to 4294967295), got 4294967296"),
    (["--warmup_steps", "50"], "warmup_steps (50) exceeds the run's 20 steps (--max_steps), so the learning rate "
                               "would never reach --lr: give --warmup_steps 20 or fewer"),
]


@pytest.mark.parametrize("argv, message", OUT_OF_RANGE + [
    # --controller_kw keys the recipe passes itself: a bare "got multiple values for keyword argument"
    (["--controller_kw", "verify=false"], "--controller_kw verify: the recipe sets verify itself, to true"),
    (["--controller_kw", "seed=3"], "--controller_kw seed: the recipe sets seed itself, from --seed; drop seed"),
    (["--controller_kw", "density=0.5"], "--controller_kw density: the recipe sets density itself, from --density"),
    (["--controller_kw", "update_every=5"], "the recipe sets update_every itself, from --update_every"),
    # --mask_only_kw keys the recipe derives from its own options: they silently replaced them
    (["--mode", "mask_only", "--mask_only_kw", "passes=3"],
     "--mask_only_kw passes: the recipe sets passes itself, from --max_steps (training batches per target) or "
     "--epochs; drop passes from --mask_only_kw"),
    (["--mode", "mask_only", "--mask_only_kw", "checkpoint=elsewhere.pt"],
     "the recipe sets checkpoint itself, to the run folder's mask_only_checkpoint.pt, which --resume continues from"),
    (["--mode", "mask_only", "--mask_only_kw", "seed=1"], "the recipe sets seed itself, from --seed"),
    (["--mode", "mask_only", "--mask_only_kw", "estimator=evidence"], "sets estimator itself, from --estimator"),
    (["--mode", "mask_only", "--mask_only_kw", "window=4"], "sets window itself, from --update_every"),
    (["--mode", "mask_only", "--mask_only_kw", "eval_every=4"], "sets eval_every itself, from --eval_every"),
    (["--mode", "mask_only", "--mask_only_kw", "edit_fraction=0.5"], "sets edit_fraction itself, from --edit_fraction"),
    (["--mode", "mask_only", "--mask_only_kw", "callback=x"], "sets callback itself, to its own"),
    (["--mode", "mask_only", "--mask_only_kw", "target=0.5"], "sets target itself, from --target (or --density)"),
    # refused before the data (the model is built first), or by optimize_connectome once the run held
    # its folder's lock: the folder it made is taken back
    (["--mode", "mask_only", "--target", "99999999"], "beyond the model's 50,432 prunable synapses"),
    (["--mode", "mask_only", "--mask_only_kw", "approach=3"], "approach must be in [0, 1], got 3"),
    (["--mode", "mask_only", "--mask_only_kw", "foo=1"],
     "--mask_only_kw foo: optimize_connectome takes no argument 'foo'; --mask_only_kw sets approach, margin, ladder"),
    # optimize_connectome's private argument (what a recipe's check read of its checkpoint) is no option
    (["--mode", "mask_only", "--mask_only_kw", "_checked=1"], "--mask_only_kw _checked: optimize_connectome takes no "
                                                              "argument '_checked'"),
])
def test_a_kw_key_or_an_out_of_range_value_is_refused_before_anything_is_written(tmp_path, argv, message, capsys):
    out = tmp_path / "run"
    err = error_of(TINY + ["--output_dir", str(out), *argv], capsys)
    assert message in err
    assert not out.exists()


def test_kw_keys_the_recipe_does_not_set_still_pass_and_the_shipped_config_sets_its_own_at_the_top():
    from adaptive.config import parse_config

    assert A.parse_args(["--mode", "mask_only", "--mask_only_kw", "approach=0.5"]).mask_only_kw == {"approach": 0.5}
    assert A.parse_args(["--controller_kw", "window=5"]).controller_kw == {"window": 5}
    shipped = parse_config(A.RunConfig, ["--config", str(Path(A.__file__).parent / "configs" /
                                                          "imagenet_mobilenetv3_maskonly_adaptive.yaml")])
    assert (shipped.edit_fraction, shipped.eval_every, shipped.mask_only_kw) == (1.0, 2000, {"verify_batches": 0})


def test_mask_only_target_with_a_density_is_refused_and_either_alone_is_taken(tmp_path, capsys):
    """--density 0.5 --target 0.3 ran to density 0.7 while config.yaml recorded density 0.5."""
    out = tmp_path / "run"
    err = error_of(TINY + ["--output_dir", str(out), "--mode", "mask_only", "--density", "0.5", "--target", "0.3"],
                   capsys)
    assert "--target 0.3 and --density 0.5 both say how much mask_only removes" in err and "give one of them" in err
    assert not out.exists()
    mask = A.parse_args(["--mode", "mask_only", "--target", "0.3"])  # --density at its default: not refused
    assert (mask.target, mask.density) == (0.3, 0.2)
    # --density 0.2 given on purpose (the default's value) was silently dropped for the --target
    err = error_of(TINY + ["--output_dir", str(out), "--mode", "mask_only", "--target", "0.5", "--density", "0.2"],
                   capsys)
    assert "--target 0.5 and --density 0.2 both say how much mask_only removes" in err and not out.exists()
    assert A.RunConfig(mode="mask_only", target=0.5).density == 0.2  # built directly: the default, taken
    # a mask_only run's config.yaml records density 0.2 beside its target: it reruns and resumes as recorded
    A.main(["--mode", "mask_only", "--target", "0.5", "--max_steps", "2", "--threads", "1", "--progress", "false",
            "--figures", "false", "--output_dir", str(out)])
    recorded = A.parse_args(["--config", str(out / "config.yaml")])
    assert (recorded.target, recorded.density) == (0.5, 0.2)
    A.main(["--config", str(out / "config.yaml"), "--resume", "latest"])
    err = error_of(["--config", str(out / "config.yaml"), "--density", "0.3"], capsys)
    assert "give one of them (--target none or --density none drops one that a --config file gives)" in err
    # each named where it came from: the file's key was named as if typed (--target 0.5)
    assert f"target: 0.5 (in {out / 'config.yaml'}) and --density 0.3 both say" in err
    assert A.parse_args(["--config", str(out / "config.yaml"), "--target", "none", "--density", "0.3"]).density == 0.3
    assert A.parse_args(["--mode", "mask_only", "--density", "0.5"]).density == 0.5
    assert A.parse_args(["--mode", "mask_only", "--density", "none", "--target", "best"]).target == "best"


def test_mask_only_density_one_removes_nothing_and_density_none_is_target_best(tmp_path, capsys):
    """--density 1.0 ran target 'best' (60% removed) though --density D is documented as --target 1-D."""
    base = ["--mode", "mask_only", "--threads", "1", "--progress", "false", "--figures", "false", "--max_steps", "3"]
    res = A.main(base + ["--density", "1.0", "--output_dir", str(tmp_path / "a")])
    assert "target 0.0," in capsys.readouterr().out and res.conn.density() == 1.0
    assert A.mask_only_target(1.0) == 0.0 and A.mask_only_target(0.25) == 0.75 and A.mask_only_target(None) == "best"
    help_text = A.RunConfig.__dataclass_fields__["density"].metadata["help"]
    assert "1.0 removes nothing" in help_text and "none the same as --target best" in help_text


def test_a_command_line_option_fixes_what_a_config_file_gave(tmp_path, capsys):
    """The checks ran on each --config file before the command line applied, so the fix an error
    named was itself refused when the value came from a file."""
    (tmp_path / "td.yaml").write_text("mode: mask_only\ntarget: 0.5\ndensity: 0.3\n")  # an old run's record
    (tmp_path / "wm.yaml").write_text("warmup_steps: 200\nmax_steps: 100\n")
    (tmp_path / "lr.yaml").write_text("lr: 0\n")
    td = A.parse_args(["--config", str(tmp_path / "td.yaml"), "--density", "none"])
    assert (td.target, td.density) == (0.5, None)
    assert A.parse_args(["--config", str(tmp_path / "wm.yaml"), "--warmup_steps", "50"]).warmup_steps == 50
    assert A.parse_args(["--config", str(tmp_path / "lr.yaml"), "--lr", "0.1"]).lr == 0.1
    err = error_of(["--config", str(tmp_path / "wm.yaml"), "--output_dir", str(tmp_path / "run")], capsys)
    assert "warmup_steps (200) exceeds the run's 100 steps" in err and not (tmp_path / "run").exists()


def test_a_config_file_giving_one_key_in_two_spellings_is_refused(tmp_path, capsys):
    """A --config file with both `data_dir:` and `data-dir:` (at the top or inside a section) ran with
    whichever came last; recipes/prune_pretrained.py already refused it."""
    (tmp_path / "two.yaml").write_text("epochs: 2\ndata_dir: /a\ndata-dir: /b\n")
    err = error_of(["--config", str(tmp_path / "two.yaml")], capsys)
    assert "'data_dir' and 'data-dir'" in err and str(tmp_path / "two.yaml") in err and "keep one" in err, err
    (tmp_path / "kw.yaml").write_text("controller_kw: {a-b: 1, a_b: 2}\n")  # a dict's entries are its own names
    assert A.parse_args(["--config", str(tmp_path / "kw.yaml"), "--policy", "set", "--estimator", "none"]
                        ).controller_kw == {"a-b": 1, "a_b": 2}


def test_values_at_the_edges_of_their_ranges_are_taken():
    assert A.parse_args(["--max_steps", "20", "--warmup_steps", "20"]).warmup_steps == 20  # the last step reaches --lr
    assert A.parse_args(["--seed", "4294967295"]).seed == 2**32 - 1 and A.parse_args(["--seed", "0"]).seed == 0
    assert A.parse_args(["--momentum", "0", "--weight_decay", "0"]).momentum == 0


def test_warmup_longer_than_the_epochs_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--epochs", "1", "--batch_size", "500", "--threads", "1", "--progress", "false", "--figures", "false",
            "--output_dir", str(out)]
    err = error_of(argv + ["--warmup_steps", "4"], capsys)  # digits: 3 batches of 500 in the train part
    assert "warmup_steps (4) exceeds the run's 3 steps (--epochs 1 x 3 batches)" in err
    assert "give --warmup_steps 3 or fewer" in err and not out.exists()


def test_resume_with_overwrite_is_refused(tmp_path, capsys):
    """--overwrite was silently ignored: the run was continued and nothing deleted."""
    out = tmp_path / "run"
    err = error_of(TINY + ["--output_dir", str(out), "--resume", "latest", "--overwrite"], capsys)
    assert "--resume latest continues the run in the folder and --overwrite deletes it to start afresh: give one " \
           "of them" in err
    assert not out.exists()
    assert A.parse_args(["--resume", "latest", "--output_dir", "x"]).resume == "latest"


def test_mask_only_kw_in_train_mode_is_refused_not_ignored(tmp_path, capsys):
    """--mask_only_kw in train mode was read by nothing: the run went on without it."""
    out = tmp_path / "run"
    err = error_of(TINY + ["--output_dir", str(out), "--mask_only_kw.approach", "0.5"], capsys)
    assert "mask_only_kw ({'approach': 0.5}) applies to mode mask_only" in err and "--controller_kw" in err
    assert not out.exists()


def _main(argv):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # one run per process, as from the command line
    return A.main(argv)


def _error_of(argv, capsys):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    return error_of(argv, capsys)


def _recorded_before_the_checks(run, **settings):
    """Rewrite what a run recorded (config.yaml, each checkpoint's copy, whose manifest is signed
    again) to settings that a recipe older than its refusals took: a run started before them."""
    import yaml

    from adaptive.integrity import write_manifest

    for path in [run / "config.yaml", *(run / "checkpoints").glob("step_*/config.yaml")]:
        recorded = yaml.safe_load(path.read_text())
        recorded.update(settings)
        path.write_text(yaml.safe_dump(recorded, sort_keys=False))
        if path.parent != run:
            write_manifest(path.parent)


def _stopped_train_run(run):  # a CPU run, also where there is a GPU
    _main(["--max_steps", "6", "--update_every", "2", "--checkpoint_every", "3", "--threads", "1", "--progress",
            "false", "--figures", "false", "--cpu", "true", "--output_dir", str(run)])
    _back_to_step_3(run)


def _back_to_step_3(run):
    import shutil

    for later in (run / "checkpoints").glob("step_*"):
        if later.name != "step_00000003":
            shutil.rmtree(later)  # stopped after step 3


def test_a_cpu_run_recorded_with_fp16_resumes_as_it_ran(tmp_path, capsys):
    """A CPU run recorded with fp16 before the check (it ran float32) was refused by every --resume
    command: as recorded by the fp16 check, with --mixed_precision no or bf16 as a changed setting."""
    fp16 = tmp_path / "fp16"
    _stopped_train_run(fp16)
    _recorded_before_the_checks(fp16, mixed_precision="fp16")
    capsys.readouterr()
    res = _main(["--config", str(fp16 / "config.yaml"), "--resume", "latest"])  # as recorded: as it ran
    assert res.state.step == 6 and res.summary["mixed_precision"] == "no"
    assert "continues as it ran, as --mixed_precision no" in capsys.readouterr().out
    _back_to_step_3(fp16)
    _recorded_before_the_checks(fp16, mixed_precision="fp16")
    assert _main(["--config", str(fp16 / "config.yaml"), "--resume", "latest", "--mixed_precision", "no"]).state.step == 6
    _back_to_step_3(fp16)
    _recorded_before_the_checks(fp16, mixed_precision="fp16")
    err = _error_of(["--config", str(fp16 / "config.yaml"), "--resume", "latest", "--mixed_precision", "bf16"], capsys)
    assert "mixed_precision: run 'no', now 'bf16'" in err  # bf16 is not what ran
    # a run that ran 'no' is not continued under fp16, nor is a new run started so
    plain = tmp_path / "plain"
    _stopped_train_run(plain)
    err = _error_of(["--config", str(plain / "config.yaml"), "--resume", "latest", "--mixed_precision", "fp16"], capsys)
    assert "mixed_precision: run 'no', now 'fp16'" in err
    assert "fp16 cannot run on the CPU" in _error_of(TINY + ["--cpu", "true", "--mixed_precision", "fp16", "--output_dir",
                                                           str(tmp_path / "new")], capsys)


def _recorded_precision(run):
    import yaml

    return [yaml.safe_load(p.read_text())["mixed_precision"]
            for p in [run / "config.yaml", *(run / "checkpoints").glob("step_*/config.yaml")]]


def test_the_precision_accelerate_launch_gave_is_recorded_and_resumed(tmp_path, capsys, monkeypatch):
    """`accelerate launch --mixed_precision bf16` (the recipe's option left unset) ran bf16, yet
    config.yaml recorded null, compared as 'no': a resume under a float32 launch continued in float32
    without a word, a resume with --mixed_precision bf16 was refused ('run no, now bf16'), and
    --config RUN/config.yaml did not reproduce the run."""
    from adaptive.training import list_checkpoints

    run = tmp_path / "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what accelerate launch --mixed_precision bf16 hands it
    argv = ["--max_steps", "6", "--update_every", "2", "--checkpoint_every", "3", "--threads", "1", "--progress",
            "false", "--figures", "false", "--output_dir", str(run)]
    full = _main(argv)
    assert full.summary["mixed_precision"] == "bf16" and set(_recorded_precision(run)) == {"bf16"}
    _back_to_step_3(run)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # resumed by `accelerate launch --mixed_precision no`
    metrics = (run / "metrics.csv").read_bytes()
    err = _error_of([*argv, "--resume", "latest"], capsys)
    assert "records other settings (mixed_precision: run 'bf16', now 'no') (mixed_precision is" in err
    assert "relaunch with accelerate launch --mixed_precision bf16, or give --mixed_precision bf16" in err
    # refused before any step: nothing written
    assert [c.name for c in list_checkpoints(run / "checkpoints")] == ["step_00000003"]
    assert (run / "metrics.csv").read_bytes() == metrics and _recorded_precision(run) == ["bf16", "bf16"]
    # the run's config.yaml reproduces it, whatever the launch gave; so does the recipe's own option
    for how in (["--config", str(run / "config.yaml")], [*argv, "--mixed_precision", "bf16"]):
        res = _main([*how, "--output_dir", str(run), "--resume", "latest"])
        assert res.state.step == 6 and res.summary["mixed_precision"] == "bf16"
        assert res.conn.mask_hash() == full.conn.mask_hash()
        sa, sb = res.model.state_dict(), full.model.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)  # continued in bf16, as the uninterrupted run
        _back_to_step_3(run)
    # a new run under a float32 launch records 'no'
    _main(TINY + ["--output_dir", str(tmp_path / "plain")])
    assert _recorded_precision(tmp_path / "plain") == ["no"]


def test_a_mask_only_run_under_a_launch_precision_resumes_with_its_config(tmp_path, capsys, monkeypatch):
    """The stage checkpoint refused a float32 resume of a bf16-launched run, advising
    --config RUN/config.yaml, which recorded null and could not give bf16."""
    import yaml

    run = tmp_path / "mo"
    argv = ["--mode", "mask_only", "--target", "0.3", "--epochs", "1", "--update_every", "8", "--threads", "1",
            "--progress", "false", "--figures", "false", "--output_dir", str(run)]
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    _main(argv)
    assert yaml.safe_load((run / "config.yaml").read_text())["mixed_precision"] == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    err = _error_of([*argv, "--resume", "latest"], capsys)
    assert "mixed_precision: run 'bf16', now 'no'" in err and "accelerate launch --mixed_precision bf16" in err
    res = _main(["--config", str(run / "config.yaml"), "--output_dir", str(run), "--resume", "latest"])
    assert res.summary["mixed_precision"] == "bf16"
    # recorded before the precision was (null), stopped before its summary: the stage checkpoint refuses a
    # float32 resume, and its advice names the option, which the config file cannot give
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["mixed_precision"] = None
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (run / "summary.json").unlink()
    err = _error_of(["--config", str(run / "config.yaml"), "--output_dir", str(run), "--resume", "latest"], capsys)
    assert "precision: checkpoint 'autocast bfloat16', this run 'float32'" in err
    assert "the precision it ran, 'autocast bfloat16', is --mixed_precision bf16" in err
    res = _main(["--config", str(run / "config.yaml"), "--mixed_precision", "bf16", "--output_dir", str(run),
                 "--resume", "latest"])
    assert res.summary["mixed_precision"] == "bf16"


def test_a_run_that_recorded_a_null_precision_resumes_as_it_ran(tmp_path, capsys, monkeypatch):
    """Runs before the recipe recorded the launch's precision recorded null: compared with the
    precision their summary.json records, else (no summary: not known) continued as before, with a note."""
    run = tmp_path / "old"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    _stopped_train_run(run)  # finished (summary.json: bf16), then back to step 3
    _recorded_before_the_checks(run, mixed_precision=None)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    err = _error_of(["--config", str(run / "config.yaml"), "--resume", "latest"], capsys)
    assert "mixed_precision: run 'bf16', now 'no'" in err
    # the command the error advises gives the precision too (the config files record null): it resumes
    import re
    import shlex

    advised = re.search(r"\((--config .*) gives them all\)", err).group(1)
    assert " --mixed_precision bf16 " in advised
    res = _main(shlex.split(advised))
    assert res.state.step == 6 and res.summary["mixed_precision"] == "bf16"  # as it ran
    _back_to_step_3(run)
    _recorded_before_the_checks(run, mixed_precision=None)
    (run / "summary.json").unlink()  # stopped before its end: which precision it ran is not recorded
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    capsys.readouterr()
    res = _main(["--config", str(run / "config.yaml"), "--resume", "latest"])
    assert res.state.step == 6 and res.summary["mixed_precision"] == "no"
    assert "records no mixed precision" in capsys.readouterr().out and _recorded_precision(run)[0] == "no"


def test_a_train_run_recorded_with_a_warmup_longer_than_the_run_still_resumes(tmp_path, capsys):
    """A run started with --warmup_steps 10 --max_steps 6 before the check was refused as recorded,
    and with --warmup_steps 6 (the fix the error named) as a changed setting."""
    warm = tmp_path / "warm"
    _stopped_train_run(warm)
    _recorded_before_the_checks(warm, warmup_steps=10)
    res = _main(["--config", str(warm / "config.yaml"), "--resume", "latest"])
    assert res.state.step == 6 and "warmup_steps (10) exceeds the run's 6 steps" in capsys.readouterr().out
    err = _error_of(["--config", str(warm / "config.yaml"), "--output_dir", str(tmp_path / "new")], capsys)
    assert "warmup_steps (10) exceeds the run's 6 steps (--max_steps)" in err  # a new run is still refused


def test_mask_only_runs_recorded_with_recipe_set_mask_only_kw_keys_still_resume(tmp_path, capsys):
    """The old shipped ImageNet config passed edit_fraction and eval_every in --mask_only_kw: such a
    run was refused as recorded (keys the recipe sets) and with the keys moved (eval_every run 0, now 2)."""
    run = tmp_path / "m"
    mo = ["--mode", "mask_only", "--max_steps", "4", "--target", "0.5", "--threads", "1", "--progress", "false",
          "--figures", "false"]
    _main(mo + ["--edit_fraction", "1.0", "--eval_every", "2", "--mask_only_kw", "{verify_batches: 0}",
                 "--output_dir", str(run)])
    _recorded_before_the_checks(run, eval_every=0, mask_only_kw={"edit_fraction": 1.0, "eval_every": 2,
                                                                 "verify_batches": 0})
    _main(["--config", str(run / "config.yaml"), "--resume", "latest"])  # as recorded
    _recorded_before_the_checks(run, eval_every=0, mask_only_kw={"edit_fraction": 1.0, "eval_every": 2,
                                                                 "verify_batches": 0})
    _main(mo + ["--edit_fraction", "1.0", "--eval_every", "2", "--mask_only_kw", "{verify_batches: 0}",
                 "--resume", "latest", "--output_dir", str(run)])  # the keys where the recipe now takes them
    err = _error_of(mo + ["--eval_every", "4", "--mask_only_kw", "{verify_batches: 0}", "--resume", "latest",
                         "--output_dir", str(run)], capsys)
    assert "eval_every: run 2, now 4" in err  # another value is still another setting
    _recorded_before_the_checks(run, eval_every=0, mask_only_kw={"edit_fraction": 1.0, "eval_every": 2,
                                                                 "verify_batches": 0})
    err = _error_of(["--config", str(run / "config.yaml"), "--resume", "latest", "--edit_fraction", "0.5"], capsys)
    assert "edit_fraction" in err and "1.0" in err and "0.5" in err  # an option typed now is not replaced silently
    err = _error_of(mo + ["--mask_only_kw", "{eval_every: 2}", "--output_dir", str(tmp_path / "new")], capsys)
    assert "--mask_only_kw eval_every: the recipe sets eval_every itself" in err  # a new run is still refused


def test_a_refused_command_leaves_an_empty_folder_it_did_not_make_in_place(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()  # the user's: a refused run takes it away no more than it would a full one
    error_of(TINY + ["--output_dir", str(out), "--mode", "mask_only", "--mask_only_kw", "approach=3"], capsys)
    assert out.is_dir()


def test_a_train_run_recorded_with_mask_only_kw_resumes_with_or_without_it(tmp_path, capsys):
    """--mask_only_kw in train mode (read by nothing) was taken before c3dbdec refused it: such a run
    was refused by every --resume command, as recorded (refused) and without it (a changed setting)."""
    run = tmp_path / "t"
    _stopped_train_run(run)
    _recorded_before_the_checks(run, mask_only_kw={"approach": 0.5})
    capsys.readouterr()
    assert _main(["--config", str(run / "config.yaml"), "--resume", "latest"]).state.step == 6  # as recorded
    assert "train mode never read" in capsys.readouterr().out
    command = ["--max_steps", "6", "--update_every", "2", "--checkpoint_every", "3", "--threads", "1", "--progress",
               "false", "--figures", "false", "--output_dir", str(run), "--resume", "latest"]
    for given in ([], ["--mask_only_kw", "approach=0.5"]):  # the run's command, without and with it
        _back_to_step_3(run)
        assert _main(command + given).state.step == 6
    plain = tmp_path / "plain"  # a run that recorded none is refused one on --resume, as a new run is
    _stopped_train_run(plain)
    err = _error_of(command[:-4] + ["--output_dir", str(plain), "--resume", "latest", "--mask_only_kw", "approach=0.5"],
                    capsys)
    assert "mask_only_kw ({'approach': 0.5}) applies to mode mask_only" in err


MASK_ONLY = ["--mode", "mask_only", "--target", "0.5", "--threads", "1", "--progress", "false", "--figures", "false"]


@pytest.mark.parametrize("ran, recorded", [
    (["--epochs", "1"], {"passes": 1, "progress": False}),  # passes=1 ran one pass whatever --max_steps said
    (["--max_steps", "21"], {"passes": 0.5}),  # half of the 41 batches: 21 steps per target
])
def test_mask_only_runs_recorded_with_passes_or_progress_in_mask_only_kw_still_resume(tmp_path, capsys, ran,
                                                                                        recorded):
    """Before 93fe91b --mask_only_kw passes and progress were passed on; a76f2b6 read 8 such keys as
    their options but not these: such a run was refused as recorded and as typed."""
    run = tmp_path / "m"
    _main(MASK_ONLY + ran + ["--output_dir", str(run)])
    _recorded_before_the_checks(run, max_steps=4, epochs=1, mask_only_kw=recorded)
    res = _main(["--config", str(run / "config.yaml"), "--resume", "latest"])
    assert res.state.step == (41 if recorded.get("passes") == 1 else 21)
    typed = ["--mask_only_kw", "{" + ", ".join(f"{k}: {v}" for k, v in recorded.items()) + "}"]
    assert _main(MASK_ONLY + ["--max_steps", "4", "--output_dir", str(run), "--resume", "latest"] + typed).state.step \
        == res.state.step  # the run's own command
    err = _error_of(MASK_ONLY + ["--mask_only_kw", "passes=1", "--output_dir", str(tmp_path / "new")], capsys)
    assert "--mask_only_kw passes: the recipe sets passes itself" in err  # a new run is still refused


@pytest.mark.parametrize("recorded, update_every, eval_every", [
    ({"eval_every": 0}, 1, 0),  # optimize_connectome's 0: at stage ends only (the option's 0 is every epoch: 41)
    ({"window": 2}, 1, 41),  # the earlier recipe divided the epoch's 41 steps by --update_every 1, not by window
    ({"window": 2, "eval_every": 3}, 1, 3),
    ({"eval_every": 2}, 1, 2),
])
def test_a_resumed_mask_only_run_evaluates_as_its_recorded_mask_only_kw_did(tmp_path, monkeypatch, recorded,
                                                                           update_every, eval_every):
    import functools

    import adaptive.mask_only as M

    run = tmp_path / "m"
    _main(MASK_ONLY + ["--max_steps", "4", "--output_dir", str(run)])
    _recorded_before_the_checks(run, update_every=update_every, eval_every=0, mask_only_kw=recorded)
    got = {}

    @functools.wraps(M.optimize_connectome)
    def stub(model, train_loader, holdout_loader, target, **kw):  # what the recipe passes on, then stop
        got.update(kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(M, "optimize_connectome", stub)
    with pytest.raises(SystemExit):
        _main(["--config", str(run / "config.yaml"), "--resume", "latest"])
    assert (got["eval_every"], got["window"]) == (eval_every, recorded.get("window", update_every))


def _resumed_opening_line(tmp_path, monkeypatch, capsys, **recorded):
    """What a mask-only run, recorded with ``recorded`` settings and resumed, prints before it optimises."""
    import adaptive.mask_only as M

    run = tmp_path / "m"
    _main(MASK_ONLY + ["--max_steps", "4", "--output_dir", str(run)])
    _recorded_before_the_checks(run, **recorded)

    def stub(*a, **kw):  # the opening line is printed before it runs: stop there
        raise KeyboardInterrupt

    monkeypatch.setattr(M, "optimize_connectome", stub)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        _main(["--config", str(run / "config.yaml"), "--resume", "latest"])
    return capsys.readouterr().out


def test_a_window_of_one_rounds_a_recorded_fractional_passes_up_to_a_whole_batch(tmp_path, monkeypatch, capsys):
    """A run recorded with --mask_only_kw passes 0.06 (2.46 of 41 batches) reads 3 batches per target;
    with --update_every 1 the opening line said 'rounded up to whole update windows of 1 (--update_every)'."""
    out = _resumed_opening_line(tmp_path, monkeypatch, capsys, update_every=1, mask_only_kw={"passes": 0.06})
    assert "3 batches per target (0.06 pass(es) of 41 batches, rounded up to a whole batch)" in out, out


@pytest.mark.parametrize("update_every, recorded, source", [
    (1, {"passes": 0.06, "window": 2}, "--mask_only_kw window"),  # the recorded window, not --update_every 1
    (2, {"passes": 0.06}, "--update_every"),
])
def test_the_opening_line_names_where_a_resumed_run_s_window_comes_from(tmp_path, monkeypatch, capsys,
                                                                        update_every, recorded, source):
    """A run recorded with --mask_only_kw window 2 (and --update_every 1) reads 4 batches per target
    for passes 0.06 (2.46 of 41): the opening line said 'whole update windows of 2 (--update_every)'."""
    out = _resumed_opening_line(tmp_path, monkeypatch, capsys, update_every=update_every, mask_only_kw=recorded)
    assert f"4 batches per target (0.06 pass(es) of 41 batches, rounded up to whole update windows of 2 ({source}))" \
        in out, out


def test_a_cpu_run_recorded_with_fp16_resumes_again_with_its_own_command(tmp_path, capsys):
    """Resumed once with --mixed_precision fp16, its new checkpoints recorded 'no', and the same
    command was refused from them."""
    run = tmp_path / "fp16"
    command = ["--max_steps", "9", "--update_every", "2", "--checkpoint_every", "3", "--keep_checkpoints", "0",
               "--threads", "1", "--progress", "false", "--figures", "false", "--cpu", "true", "--output_dir", str(run)]
    _main(command)
    _back_to_step_3(run)
    _recorded_before_the_checks(run, mixed_precision="fp16")
    _main(command + ["--mixed_precision", "fp16", "--resume", "latest"])  # writes step 6 (then stopped there)
    capsys.readouterr()
    res = _main(command + ["--mixed_precision", "fp16", "--resume", str(run / "checkpoints" / "step_00000006")])
    assert res.state.step == 9 and res.summary["mixed_precision"] == "no"
    assert "continues as it ran, as --mixed_precision no" in capsys.readouterr().out


def test_estimator_help_says_which_policies_use_it():
    text = A.RunConfig.__dataclass_fields__["estimator"].metadata["help"]
    assert "gmp and magnitude take one only when it is named" in text and "rank by weight magnitude" in text


def no_cifar10_download(monkeypatch):
    """torchvision's CIFAR-10 replaced by one that records each call (and downloads nothing)."""
    import torchvision

    calls = []

    def recorded(root, train=True, download=False, **kw):
        calls.append(download)
        raise RuntimeError("no download in tests")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", recorded)
    return calls


def test_cifar10_download_waits_for_the_model_checks(tmp_path, monkeypatch, capsys):
    """--dataset cifar10 --download with no copy on disk downloaded it first, and only then refused a
    mask_only target beyond the model's synapses (refused before the data for every other dataset)."""
    calls = no_cifar10_download(monkeypatch)
    out = tmp_path / "run"
    err = error_of(["--dataset", "cifar10", "--download", "--data_dir", str(tmp_path / "data"), "--model", "resnet20",
                    "--mode", "mask_only", "--target", "99999999", "--threads", "1", "--output_dir", str(out)], capsys)
    assert "beyond the model's 268,336 prunable synapses: give a count below 268336" in err
    assert calls == [] and not out.exists()


def test_a_refused_command_takes_back_the_parent_folders_it_made_and_no_others(tmp_path, capsys):
    """The lock makes --output_dir's missing parents too; only the innermost one went."""
    (tmp_path / "kept").mkdir()
    out = tmp_path / "kept" / "x" / "y" / "run"
    err = error_of(TINY + ["--output_dir", str(out), "--mode", "mask_only", "--mask_only_kw", "approach=3"], capsys)
    assert "approach must be in [0, 1], got 3" in err
    assert not (tmp_path / "kept" / "x").exists() and (tmp_path / "kept").is_dir()


def test_ctrl_c_before_a_mask_only_run_wrote_anything_takes_back_its_folder(tmp_path, monkeypatch, capsys):
    """An error there took the folder back; Ctrl-C left it holding only .lock, with advice to rerun
    with --overwrite that a plain rerun does not need."""
    import adaptive.mask_only as M

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(M, "optimize_connectome", interrupted)
    out = tmp_path / "a" / "run"
    with pytest.raises(SystemExit) as stop:
        _main(MASK_ONLY + ["--max_steps", "4", "--output_dir", str(out)])
    assert stop.value.code == 130
    assert not (tmp_path / "a").exists()
    assert "the run wrote nothing (its lock and any folder it made are gone again); the same command starts it afresh" in \
        capsys.readouterr().err


@pytest.mark.parametrize("typed", [["--update_every", "2"], ["--update_every", "2", "--mask_only_kw", "{}"]])
def test_a_resume_that_would_change_a_recorded_runs_evaluation_cadence_is_refused(tmp_path, capsys, typed):
    """A run recorded with --mask_only_kw window=2 at update_every 1 evaluated every 41 steps; resumed
    with --update_every 2 it went on every 20, unnamed (the stage checkpoint compares the window
    alone, and --target best picks its snapshot from these evaluations)."""
    run = tmp_path / "m"
    _main(MASK_ONLY + ["--max_steps", "4", "--output_dir", str(run)])
    _recorded_before_the_checks(run, update_every=1, mask_only_kw={"window": 2})
    err = _error_of(["--config", str(run / "config.yaml"), "--resume", "latest", *typed], capsys)
    assert "records other settings (update_every: run 1, now 2; mask_only_kw window: run 2, now None)" in err


@pytest.mark.parametrize("overwrite", [False, True])
def test_ctrl_c_before_anything_is_written_into_an_existing_folder_says_the_same_command_starts_afresh(
        tmp_path, monkeypatch, capsys, overwrite):
    """Into a folder made beforehand, the .lock stayed and the message advised --overwrite; after an
    earlier run with --overwrite, it pointed to the earlier run's checkpoint, which neither
    suggested command could continue (--overwrite had not deleted it yet)."""
    import adaptive.mask_only as M

    out = tmp_path / "run"
    out.mkdir()
    if overwrite:
        _main(MASK_ONLY + ["--max_steps", "4", "--output_dir", str(out)])
    before = sorted(p.name for p in out.iterdir())

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(M, "optimize_connectome", interrupted)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        _main(MASK_ONLY + ["--max_steps", "4", "--target", "0.3", "--output_dir", str(out)]
              + (["--overwrite"] if overwrite else []))
    err = capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before  # no .lock left, the earlier run as it was
    if overwrite:
        assert f"the earlier run in {out} is kept as it was; the same command (with --overwrite) starts afresh" in err
    else:
        assert "the same command starts it afresh" in err and "--overwrite" not in err


def _interrupted_at(argv, step, capsys):
    """Run the recipe with Ctrl-C at ``step`` (0: none); returns what it printed to stderr."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)

    def hook(state):
        if state.step == step:
            raise KeyboardInterrupt

    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        A.main(argv, on_step=hook)
    assert stop.value.code == 130
    return capsys.readouterr().err


def test_ctrl_c_after_an_overwrite_run_wrote_a_checkpoint_says_to_resume_without_overwrite(tmp_path, capsys):
    """The advice ('add --resume latest ... to the same command') was refused when followed:
    --resume and --overwrite are never given together."""
    out = tmp_path / "run"
    cmd = ["--max_steps", "30", "--update_every", "5", "--checkpoint_every", "10", "--threads", "1", "--progress",
           "false", "--figures", "false", "--output_dir", str(out)]
    _main(cmd)
    new = cmd + ["--density", "0.3", "--overwrite"]
    err = _interrupted_at(new, 15, capsys)
    assert f"add --resume latest --output_dir {out} to the same command without --overwrite to continue from " \
           "step_00000010" in err
    res = _main([a for a in new if a != "--overwrite"] + ["--resume", "latest"])
    assert res.state.step == 30 and res.summary["target_density"] == 0.3


def test_ctrl_c_of_an_overwrite_run_into_a_new_folder_speaks_of_no_earlier_run(tmp_path, monkeypatch, capsys):
    import adaptive.mask_only as M

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(M, "optimize_connectome", interrupted)
    with pytest.raises(SystemExit):
        _main(MASK_ONLY + ["--max_steps", "4", "--overwrite", "--output_dir", str(tmp_path / "new")])
    err = capsys.readouterr().err
    assert "the run wrote nothing (its lock and any folder it made are gone again)" in err and "earlier" not in err
    assert not (tmp_path / "new").exists()


def test_ctrl_c_while_an_overwrite_mask_only_run_sets_up_keeps_the_earlier_runs_checkpoint_resumable(
        tmp_path, monkeypatch, capsys):
    """The earlier run's checkpoint, set aside as .earlier when the run began, was put back only
    around optimize_connectome: interrupted in the setup before it, the folder kept the .earlier
    file and --resume found no checkpoint."""
    out = tmp_path / "run"
    _main(MASK_ONLY + ["--max_steps", "4", "--output_dir", str(out)])

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mask_only_run, "show_progress", interrupted)  # (the recipe's module that calls it)
    with pytest.raises(SystemExit):
        _main(MASK_ONLY + ["--max_steps", "4", "--target", "0.3", "--overwrite", "--output_dir", str(out)])
    assert (out / A.MASK_ONLY_CHECKPOINT).is_file() and not (out / (A.MASK_ONLY_CHECKPOINT + ".earlier")).exists()
    monkeypatch.undo()
    res = _main(MASK_ONLY + ["--max_steps", "4", "--output_dir", str(out), "--resume", "latest"])
    assert res.summary["synapses"] - res.summary["live"] == 25216  # the earlier run's target 0.5, resumed


def test_ctrl_c_before_a_second_run_in_one_process_knows_its_folder_does_not_name_the_first_runs(
        tmp_path, monkeypatch, capsys):
    """The note of a Ctrl-C comes from what the run recorded of its folder: a second main() in one
    process (a notebook; every test that loads the recipe shares its modules) interrupted before it
    knew its own folder told how to resume the first run's ('add --resume latest --output_dir FIRST')."""
    from recipes._adaptive import train

    first = tmp_path / "first"
    _main(TINY + ["--checkpoint_every", "10", "--max_steps", "30", "--figures", "false", "--output_dir", str(first)])
    capsys.readouterr()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_env_accumulation", interrupted)  # the first thing training_function does
    with pytest.raises(SystemExit):
        _main(TINY + ["--output_dir", str(tmp_path / "second")])
    err = capsys.readouterr().err
    assert "interrupted" in err and str(first) not in err, err


@pytest.mark.parametrize("recipe", [False, True])
def test_a_lock_file_taken_away_between_open_and_flock_is_not_held(tmp_path, monkeypatch, recipe):
    """A run that wrote nothing removes its .lock as it ends; a second run that had opened that file
    just before locked the unlinked file, and a third then created a new .lock and ran beside it."""
    import fcntl

    from adaptive.run_folder import RunLock

    class Main:
        is_main_process = True
        num_processes = 1

    folder = tmp_path / "run"
    folder.mkdir()
    real_flock = fcntl.flock
    calls = []

    def flock_after_unlink(fd, op):  # the first run's clean-up lands between this run's open and flock
        if not calls and op & fcntl.LOCK_EX:
            (folder / ".lock").unlink()
        calls.append(op)
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_unlink)
    if recipe:  # the recipe's lock, whose acquire takes the run's settings: the retry called it with a lambda
        import types

        lock = A._RunLock(Main(), folder)
        lock.acquire(types.SimpleNamespace(resume="latest"))
    else:
        lock = RunLock(Main(), folder)
        lock.acquire()
    try:
        assert os.fstat(lock.fd.fileno()).st_ino == os.stat(folder / ".lock").st_ino
    finally:
        lock.release()


def test_ctrl_c_while_a_resumed_mask_only_run_sets_up_says_how_to_continue(tmp_path, monkeypatch, capsys):
    """It said 'the run wrote nothing ...; the same command starts it afresh', where the same
    command continues the run from its checkpoint."""
    out = tmp_path / "run"
    _main(MASK_ONLY + ["--max_steps", "4", "--output_dir", str(out)])

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mask_only_run, "show_progress", interrupted)  # (the recipe's module that calls it)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        _main(MASK_ONLY + ["--max_steps", "4", "--output_dir", str(out), "--resume", "latest"])
    err = capsys.readouterr().err
    assert "starts it afresh" not in err and f"--output_dir {out}" in err and "to continue from" in err


def test_resume_puts_back_a_checkpoint_an_overwrite_run_killed_in_its_setup_set_aside(tmp_path, capsys):
    """Killed (no finally runs) before its first target, an --overwrite run leaves the earlier
    run's checkpoint as .earlier: --resume said there was none, and a fresh run is refused too."""
    out = tmp_path / "run"
    _main(MASK_ONLY + ["--max_steps", "4", "--output_dir", str(out)])
    os.replace(out / A.MASK_ONLY_CHECKPOINT, out / (A.MASK_ONLY_CHECKPOINT + ".earlier"))
    err = _error_of(MASK_ONLY + ["--max_steps", "4", "--output_dir", str(out)], capsys)
    assert f"continue it with --resume latest --output_dir {out}" in err  # the refusal names what works
    res = _main(MASK_ONLY + ["--max_steps", "4", "--output_dir", str(out), "--resume", "latest"])
    assert res.summary["synapses"] - res.summary["live"] == 25216
    assert (out / A.MASK_ONLY_CHECKPOINT).is_file() and not (out / (A.MASK_ONLY_CHECKPOINT + ".earlier")).exists()


def _leave_temps(folder: Path, *names: str) -> list:
    """What a run SIGKILLed between an atomic write and its rename leaves: .NAME.PID-HEX.tmpSUFFIX
    of a process that is gone. Returns their paths."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    out = []
    for n in names:
        f = folder / f".{n}.{p.pid}-0a1b2c3d.tmp{Path(n).suffix}"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"half a file")
        out.append(f)
    return out


def test_temp_files_a_killed_train_run_left_go_when_it_is_resumed(tmp_path):
    """SIGKILL between writing metrics.csv's temporary and the rename left .metrics.csv.PID-HEX.tmp.csv
    beside the run for good (a successful --resume kept it); a checkpoint folder a save stopped
    half-way left went only at the next save (none here: the run saves no more)."""
    run = tmp_path / "run"
    argv = TINY + ["--checkpoint_every", "10", "--output_dir", str(run)]
    _main(argv)
    temps = _leave_temps(run, "metrics.csv", "config.yaml")
    partial = run / "checkpoints" / ".tmp-step_00000015"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    mine = run / "notes.tmp.csv"  # not the pattern: stays
    mine.write_text("mine")
    assert _main(argv + ["--resume", "latest"]).state.step == 20
    assert not any(t.exists() for t in temps) and not partial.exists() and mine.exists()


def test_temp_files_a_killed_mask_only_run_left_go_on_resume_and_on_overwrite(tmp_path):
    run = tmp_path / "m"
    argv = MASK_ONLY + ["--max_steps", "4", "--output_dir", str(run)]
    _main(argv)
    temps = _leave_temps(run, A.MASK_ONLY_CHECKPOINT, "summary.json")
    _main(argv + ["--resume", "latest"])
    assert not any(t.exists() for t in temps)
    temps = _leave_temps(run, A.MASK_ONLY_CHECKPOINT)
    _main(argv + ["--overwrite"])
    assert not any(t.exists() for t in temps)
    assert (run / A.MASK_ONLY_CHECKPOINT).is_file()


def test_temp_files_a_killed_prune_pretrained_run_left_go_on_resume_and_on_overwrite(tmp_path, no_curves):
    out = tmp_path / "run"
    argv = PRUNE_TINY + ["--output_dir", str(out), "--remove", "0.2", "0.3"]
    P.main(argv)
    temps = _leave_temps(out, "checkpoint.pt", "results.md") + _leave_temps(out / "remove_0.2", "pruned_state_dict.pt")
    P.main(argv + ["--resume"])
    assert not any(t.exists() for t in temps)
    temps = _leave_temps(out, "checkpoint.pt")
    P.main(argv + ["--overwrite"])
    assert not any(t.exists() for t in temps) and (out / "checkpoint.pt").is_file()


def test_mask_only_resume_of_a_run_without_a_target_names_the_command_that_starts_it(tmp_path, capsys):
    """A run killed before its first target (config.yaml, no mask_only_checkpoint.pt): --resume said
    'run without --resume to start', and that command is refused (an earlier run is there)."""
    run = tmp_path / "m"
    argv = MASK_ONLY + ["--max_steps", "4", "--output_dir", str(run)]
    _main(argv)
    for f in run.iterdir():
        if f.name not in ("config.yaml", ".lock"):
            f.unlink()  # as a run SIGKILLed before its first target leaves it
    err = _error_of(argv + ["--resume", "latest"], capsys)
    assert "no mask_only_checkpoint.pt" in err and "--overwrite" in err and "another --output_dir" in err
    assert "run without --resume to start" not in err
    assert _main(argv + ["--overwrite"]).summary["live"] == 25216  # the command it names starts the run
    err = _error_of(MASK_ONLY + ["--output_dir", str(tmp_path / "none"), "--resume", "latest"], capsys)
    assert "run without --resume to start" in err  # nothing there: that is the way


def test_a_test_subset_smaller_than_the_classes_is_refused_before_training(tmp_path, capsys):
    """--test_subset 5 on 10 classes trained the whole run, then failed at the test evaluation."""
    out = tmp_path / "run"
    err = error_of(TINY + ["--output_dir", str(out), "--test_subset", "5"], capsys)
    # named as this recipe spells the option
    assert "--test_subset 5 cannot hold one test example of each of the 10 classes of digits" in err
    assert "give a --test_subset of at least 10" in err and not out.exists()
    err = error_of(TINY + ["--output_dir", str(out), "--test_subset", "0"], capsys)
    assert "--test_subset must be an integer >= 1, got 0: give --test_subset 1 or more (or leave it out for all)" in err
    assert not out.exists()


def test_a_subset_too_small_names_the_option_as_the_recipe_spells_it(tmp_path, capsys):
    """A --subset below the class count, or too small to hold out an example, was refused as 'give a
    subset of at least N': the data layer's words, not the option; a library caller sees the keyword."""
    out = tmp_path / "run"
    err = error_of(TINY + ["--output_dir", str(out), "--subset", "5"], capsys)
    assert "--subset 5 cannot hold one train example of each of the 10 classes of digits: give a --subset of at " \
           "least 10 (or leave it out)" in err and not out.exists()
    err = error_of(TINY + ["--output_dir", str(out), "--subset", "12", "--holdout", "0.02"], capsys)
    assert "the 12 train examples of --subset 12 with --holdout 0.02 hold out" in err
    assert err.endswith("give a --subset of at least 250 or a larger --holdout (or --holdout 0 for no held-out part "
                        "at all)\n") and not out.exists()
    # mode mask_only chooses on the held-out part: no --holdout 0 offered, and --holdout 0 refused before any work
    err = error_of(TINY + ["--output_dir", str(out), "--mode", "mask_only", "--subset", "12", "--holdout", "0.02"], capsys)
    assert err.endswith("give a --subset of at least 250 or a larger --holdout\n") and not out.exists()
    err = error_of(TINY + ["--output_dir", str(out), "--mode", "mask_only", "--holdout", "0"], capsys)
    assert "mode mask_only chooses and scores its masks on the held-out part of TRAIN, and holdout 0 asks for none: " \
           "give --holdout 0.1 (say)" in err and not out.exists()
    from adaptive.data import get_datasets

    with pytest.raises(ValueError, match=r"^subset 5 cannot hold one train example of each of the 10 classes of "
                                         r"digits: give a subset of at least 10 \(or leave it out\)$"):
        get_datasets("digits", subset=5)


def test_a_test_subset_of_a_whole_small_test_split_is_taken_as_before():
    """The early refusal compares with the class count; a test split smaller than that (a custom or
    fake dataset) is taken whole by a test_subset of its size or more, as before the check, and the
    warning's advice (test_subset = the split's size) is followed, not refused."""
    from adaptive.data import get_datasets

    for n in (8, 20):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            ds = get_datasets("fake", num_classes=10, test_size=8, test_subset=n, shape=[4])
            assert len(ds.test) == 8
        assert (n == 8) != any("test_subset=8" in str(w.message) for w in seen)
    with pytest.raises(ValueError, match="test_subset 5 cannot hold one test example of each of the 10 classes") as e:
        get_datasets("fake", num_classes=10, test_size=8, test_subset=5, shape=[4])
    assert "give a test_subset of at least 8 (the test split holds only 8 examples" in str(e.value)  # 8: no warning


def test_an_empty_output_dir_is_refused(tmp_path, capsys, monkeypatch):
    """--output_dir '' (an unset shell variable, say) ran into runs/<date-time> without a word."""
    monkeypatch.chdir(tmp_path)
    err = error_of(TINY + ["--output_dir", ""], capsys)
    assert "output_dir is empty (''): give a folder, or leave output_dir out (or null)" in err
    assert not (tmp_path / "runs").exists()
    assert A.parse_args(["--output_dir", "none"]).output_dir is None  # null: the default runs/<date-time>


def test_an_output_dir_that_is_a_file_is_refused_while_parsing(tmp_path, capsys):
    """An --output_dir that is a file was refused only once the data had loaded ("File exists")."""
    (tmp_path / "afile").write_text("x")
    for out, what in ((tmp_path / "afile", "is a file"), (tmp_path / "afile" / "run", f"lies under {tmp_path}")):
        with pytest.raises(SystemExit):
            A.parse_args(["--output_dir", str(out)])
        assert f"--output_dir {out} {what}" in capsys.readouterr().err
        with pytest.raises(SystemExit, match=f"--output_dir {out} {what}"):
            P.parse_args(["--output_dir", str(out)])
    assert A.parse_args(["--output_dir", str(tmp_path / "new" / "run")]).output_dir == str(tmp_path / "new" / "run")


def test_list_options_given_twice_accumulate():
    """--exclude, --include, --protect, --plugins and --lr_milestones kept only their last value."""
    cfg = A.parse_args(["--exclude", "*fc1*", "--exclude", "*fc2*", "--include", "*", "--include", "x",
                        "--protect", "a", "--protect", "b", "--lr_schedule", "step", "--lr_milestones", "0.3",
                        "--lr_milestones", "0.6", "--plugins", "math", "--plugins", "json"])
    assert cfg.exclude == ["*fc1*", "*fc2*"] and cfg.include == ["*", "x"] and cfg.protect == ["a", "b"]
    assert cfg.lr_milestones == [0.3, 0.6] and cfg.plugins == ["math", "json"]


def test_a_resume_path_that_does_not_exist_is_refused_while_parsing(tmp_path, capsys):
    """--resume NOWHERE said "no complete checkpoint found in NOWHERE (looked for step_N folders ...)",
    as if the folder were there without checkpoints."""
    missing = tmp_path / "nowhere"
    err = error_of(TINY + ["--resume", str(missing)], capsys)
    assert f"--resume {missing} does not exist: give a run folder, a checkpoint folder" in err
    assert not missing.exists() and "relative paths start from" not in err  # (an absolute path)
    # a mask_only run's checkpoint file is taken by name where its run folder is there: its record may be
    # the '.earlier' copy an --overwrite run killed before its first target left aside
    run = tmp_path / "run"
    run.mkdir()
    named = run / "mask_only_checkpoint.pt"
    assert A.parse_args(TINY + ["--mode", "mask_only", "--resume", str(named)]).resume == str(named)
    err = error_of(TINY + ["--mode", "mask_only", "--resume", str(missing / "mask_only_checkpoint.pt")], capsys)
    assert "does not exist" in err
    err = error_of(TINY + ["--resume", str(named)], capsys)  # train mode reads no such file: refused by name
    assert f"--resume {named} does not exist" in err


def test_checkpoint_every_longer_than_the_run_warns_that_none_will_be_written(tmp_path, capsys):
    """--checkpoint_every 20 of a 20-step run wrote no checkpoint, without a word (a stopped run could
    not be resumed)."""
    A.main(TINY + ["--output_dir", str(tmp_path / "a"), "--checkpoint_every", "20"])
    out = capsys.readouterr().out
    assert ("warning: --checkpoint_every 20 is not shorter than the run's 20 steps, so no checkpoint will be written "
            "before the end and a stopped run cannot be resumed: give --checkpoint_every 19 or fewer") in out
    assert not (tmp_path / "a" / "checkpoints").exists() or not any((tmp_path / "a" / "checkpoints").iterdir())
    A.main(TINY + ["--output_dir", str(tmp_path / "b"), "--checkpoint_every", "10"])
    assert "--checkpoint_every" not in capsys.readouterr().out
    # resumed from step 10, nothing more is written, but the checkpoint it resumed from stays: said so
    A.main(TINY + ["--output_dir", str(tmp_path / "b"), "--checkpoint_every", "10", "--resume", "latest"])
    out = capsys.readouterr().out
    assert ("warning: --checkpoint_every 10 writes no further checkpoint in the 10 steps left of 20 (resumed at step "
            "10), so a stopped run resumes from step 10 again: give --checkpoint_every 9 or fewer for one") in out
    assert "cannot be resumed" not in out and (tmp_path / "b" / "checkpoints" / "step_00000010").is_dir()


@pytest.mark.parametrize("local_rank, shown", [("1", False), ("0", True)])
def test_help_under_a_launch_is_printed_by_the_first_process_alone(monkeypatch, capsys, local_rank, shown):
    """`accelerate launch --num_processes 2 recipes/adaptive.py -h` printed the help once per process:
    before the process group exists, every process but the first of its machine now exits with status 0
    printing nothing."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    for asked in ("-h", "--help"):
        with pytest.raises(SystemExit) as e:
            A.parse_args(["--epochs", "2", asked])
        out = capsys.readouterr()
        assert e.value.code in (0, None) and out.err == ""
        assert out.out.startswith("usage: recipes/adaptive.py") if shown else out.out == ""


@pytest.mark.parametrize("local_rank, printed", [("1", False), ("0", True)])
def test_ctrl_c_while_starting_under_a_launch_is_written_by_the_first_process_alone(tmp_path, local_rank, printed):
    """A Ctrl-C to `accelerate launch --num_processes 2` while the processes were importing torch (the
    launcher passes it to each) printed 'interrupted while starting' once per process: every process but
    the first of its machine (LOCAL_RANK, which the launcher sets) now ends with status 130 silently."""
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, WORLD_SIZE="2", RANK=local_rank, LOCAL_RANK=local_rank)
    p = subprocess.Popen([sys.executable, str(root / "recipes" / "adaptive.py"), "--output_dir", str(tmp_path / "o")],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=_ctrl_c_default)
    assert _importing_torch(p), "the script ended before torch was imported"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=CHILD_TIMEOUT)
    assert p.returncode == 130 and "Traceback" not in err, err
    if printed:  # (the script's path as it was started)
        assert err.endswith("recipes/adaptive.py: interrupted while starting; nothing was written\n"), err
        assert len(err.splitlines()) == 1, err
    else:
        assert err == "", err


# a launcher stand-in: starts the recipe as torchelastic starts a process (its own session, the
# launch's variables), waits until the recipe is importing torch, writes the process id and ends
_LAUNCHER = """
import os, subprocess, sys, time
from pathlib import Path
script, out, port = sys.argv[1:]
env = dict(os.environ, TORCHELASTIC_RUN_ID="test", WORLD_SIZE="2", RANK="1", LOCAL_RANK="1",
           MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
p = subprocess.Popen([sys.executable, script, "--output_dir", out], env=env, start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
maps, deadline = Path(f"/proc/{p.pid}/maps"), time.monotonic() + 60
while "libtorch" not in maps.read_text() and p.poll() is None and time.monotonic() < deadline:
    time.sleep(0.005)
print(p.pid, flush=True)
os._exit(0)
"""


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (reaped, or a zombie awaiting its new parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="Linux: the launcher's end is the kernel's signal")
def test_a_process_whose_launcher_ended_stops(tmp_path):
    """A Ctrl-C that reached `accelerate launch --num_processes 2` (torchelastic) while it was starting
    its processes ended the launcher before it held them: it passed nothing on, and the processes (in
    sessions of their own, out of the terminal's reach) ran on, orphaned, waiting for the process group.
    Each process now stops as on a Ctrl-C when its launcher ends."""
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # (a port nothing listens on: the process group is never made)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", _LAUNCHER, str(root / "recipes" / "adaptive.py"), str(tmp_path / "o"),
                        str(port)], cwd=tmp_path, capture_output=True, text=True, timeout=CHILD_TIMEOUT,
                       preexec_fn=_ctrl_c_default)
    pid = int(r.stdout.split()[0])
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped = _gone(pid)
    if not stopped:
        os.kill(pid, signal.SIGKILL)
    assert stopped, "the process ran on after its launcher ended"


def test_an_empty_data_dir_is_refused(tmp_path, capsys, monkeypatch):
    """--data_dir '' (an unset shell variable, say) read $ADAPTIVE_DATA or ../shared/data without a word."""
    monkeypatch.chdir(tmp_path)
    err = error_of(TINY + ["--data_dir", ""], capsys)
    assert "data_dir is empty (''): give a data folder, or leave data_dir out (or null) for the default" in err
    assert not (tmp_path / "runs").exists()


def test_a_run_recorded_with_an_empty_weights_resumes_as_it_ran_without_weights(tmp_path, capsys):
    """Before ``--weights ''`` was refused it ran without weights and config.yaml recorded ``weights: ''``:
    the run resumes (``--resume RUN`` and the ``--config RUN/config.yaml --resume`` the errors advise) as
    it ran, and a new run from that config is still refused naming the empty weights."""
    run = tmp_path / "old"
    _stopped_train_run(run)
    _recorded_before_the_checks(run, weights="")
    res = _main(["--output_dir", str(run), "--resume", "latest", "--threads", "1", "--progress", "false",
                 "--figures", "false", "--cpu", "true", "--max_steps", "6", "--update_every", "2",
                 "--checkpoint_every", "3"])
    assert res.state.step == 6
    _back_to_step_3(run)
    _recorded_before_the_checks(run, weights="", data_dir="")  # (the resume recorded weights: null)
    res = _main(["--config", str(run / "config.yaml"), "--resume", "latest"])
    assert res.state.step == 6
    _recorded_before_the_checks(run, weights="")
    err = _error_of(["--config", str(run / "config.yaml"), "--output_dir", str(tmp_path / "new")], capsys)
    assert "weights is empty ('')" in err


def test_a_resume_that_only_spells_the_run_otherwise_is_not_refused(tmp_path, capsys):
    """A train-mode --resume was refused for settings that make the same run: --epochs where both give
    --max_steps (the run's length: epochs unread), --include= (no pattern: every layer, as none),
    --eval_batch_size equal to the --batch_size it defaults to, and --download. Each continues the run now
    (the same masks and accuracy as a straight run); a change that alters the run is still refused."""
    argv = ["--max_steps", "6", "--update_every", "2", "--checkpoint_every", "3", "--threads", "1", "--progress",
            "false", "--figures", "false", "--batch_size", "32"]
    straight = _main([*argv, "--output_dir", str(tmp_path / "straight")]).summary
    for i, extra in enumerate((["--epochs", "3"], ["--include="], ["--eval_batch_size", "32"], ["--download"])):
        run = tmp_path / f"run{i}"
        _main([*argv, "--output_dir", str(run)])
        _back_to_step_3(run)
        resumed = _main([*argv, "--output_dir", str(run), "--resume", "latest", *extra]).summary
        assert resumed["mask_hash_per_process"] == straight["mask_hash_per_process"], extra
        assert resumed["test_accuracy"] == straight["test_accuracy"], extra
    run = tmp_path / "run0"
    _back_to_step_3(run)
    err = _error_of([*argv, "--output_dir", str(run), "--resume", "latest", "--max_steps", "8"], capsys)
    assert "records other settings (max_steps: run 6, now 8)" in err, err



@pytest.mark.parametrize("argv, key, value", [
    (["--edit_fraction", "0"], "edit_fraction", 0.0),  # the closed ends of documented ranges: taken
    (["--edit_fraction", "1"], "edit_fraction", 1.0),
    (["--momentum", "0"], "momentum", 0.0),
])
def test_the_closed_ends_of_a_range_are_taken(argv, key, value):
    assert getattr(A.parse_args(argv), key) == value
