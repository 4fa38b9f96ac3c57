"""Command-line inputs found by fuzzing the recipes and ``python -m graphs`` that ended in a traceback,
a misleading error or a silent misreading; each is now one ``error:`` line naming the problem and the
fix, given before any work, or read as the shell would have read it. Parse-only, in-process."""
import json
import os
import re
import warnings
from pathlib import Path

import pytest
import torch

from adaptive.config import ConfigError, read_yaml
from adaptive.diagnostics.progress import progress
from adaptive.plugins import PluginError, load_plugin
from _scripts import load_script  # noqa: E402

torch.set_num_threads(1)
A = load_script("recipes/adaptive.py", "recipe_adaptive_fuzz")
P = load_script("recipes/prune_pretrained.py", "recipe_prune_pretrained_fuzz")
D = load_script("recipes/diagnostics.py", "recipe_diagnostics_fuzz")


def _file(path: Path, text: str, *_) -> Path:
    """``path`` written with ``text`` (its folder made); the later arguments only order the writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("make, message", [
    # a file without .py: importlib found no loader, AttributeError "'NoneType' object has no attribute 'loader'"
    (lambda d: _file(d / "ext", "x = 1\n"), "is not a .py file"),
    # a folder (a package's, say): "plugin file ... not found", though it is there
    (lambda d: (d / "pkg").mkdir() or d / "pkg", "is a folder: give the path of a .py file in it"),
    # a relative module name: TypeError "the 'package' argument is required ..."
    (lambda d: "..", "is a relative name: give the module's full dotted name"),
])
def test_a_plugin_that_is_no_python_file_or_module_is_named(tmp_path, make, message):
    with pytest.raises(PluginError, match=message):
        load_plugin(str(make(tmp_path)))


def test_a_plugin_file_without_py_is_one_error_line_of_every_recipe(tmp_path, capsys):
    (tmp_path / "ext").write_text("x = 1\n")
    with pytest.raises(SystemExit) as e:
        A.parse_args(["--plugins", str(tmp_path / "ext")])
    assert e.value.code == 2 and "Traceback" not in capsys.readouterr().err
    with pytest.raises(SystemExit, match="is not a .py file"):
        P.parse_args(["--plugins", str(tmp_path / "ext")])


def test_an_empty_config_path_is_named_not_called_a_folder(capsys):
    """Path('') is the working directory: "--config file '' is a folder" (adaptive.py); prune_pretrained
    ran with no config file at all."""
    with pytest.raises(ConfigError, match="--config '' names no file: give the path of a YAML file"):
        read_yaml("")
    with pytest.raises(SystemExit):
        A.parse_args(["--config", ""])
    assert "--config '' names no file" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--config '' names no file"):
        P.parse_args(["--config", ""])


@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_resume_is_refused_not_read_as_a_new_run(tmp_path, capsys, value):
    """--resume "$CKPT" with CKPT unset: '' read as no --resume, and the run started afresh unsaid (an empty
    --output_dir is refused alike); a config file's resume: '' too."""
    with pytest.raises(SystemExit):
        A.parse_args(["--resume", value])
    assert f"error: resume is empty ({value!r}): give latest, a run folder or a checkpoint folder, or leave resume out" \
        in capsys.readouterr().err
    with pytest.raises(SystemExit):
        A.parse_args(["--config", str(_file(tmp_path / "c.yaml", f"resume: '{value}'\n"))])
    assert "resume is empty" in capsys.readouterr().err
    assert A.parse_args(["--resume", "none"]).resume is None  # null: a new run


@pytest.mark.parametrize("option", ["--output_dir", "--output_dir="])
def test_a_tilde_in_a_path_is_the_home_folder_not_a_folder_called_tilde(tmp_path, monkeypatch, option):
    """The shell leaves ~ alone in --output_dir=~/x and a --config file never expands it: the run
    made a folder called ~ in the working directory (one `rm -rf ~` away from the home folder)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    argv = [option + "~/run"] if option.endswith("=") else [option, "~/run"]
    assert A.parse_args(argv).output_dir == str(tmp_path / "home" / "run")
    assert P.parse_args(argv).output_dir == str(tmp_path / "home" / "run")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "w.pt").write_bytes(b"")
    assert A.parse_args(["--weights", "~/w.pt"]).weights == str(tmp_path / "home" / "w.pt")
    assert P.parse_args(["--weights", "~/w.pt", "--model", "mlp", "--dataset", "digits"]).weights == \
        str(tmp_path / "home" / "w.pt")
    assert not (tmp_path / "~").exists()


def test_a_bare_tilde_on_the_command_line_is_the_home_folder_in_both_recipes(tmp_path, monkeypatch):
    """--data_dir=~ (which the shell leaves alone) was read by recipes/adaptive.py as YAML's ~, none: the run
    silently read the default data folder, and --output_dir=~ wrote into runs/<date-time>; prune_pretrained
    read both as the home folder. A file's ~ is still YAML's null."""
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert A.parse_args(["--data_dir=~", "--output_dir", str(tmp_path / "o")]).data_dir == str(home)
    assert A.parse_args(["--output_dir=~"]).output_dir == str(home)
    assert P.parse_args(["--model", "mlp", "--dataset", "digits", "--data-dir=~"]).data_dir == str(home)
    assert A.parse_args(["--config", str(_file(tmp_path / "c.yaml", "data_dir: ~\n"))]).data_dir is None
    assert A.parse_args(["--data_dir", "none"]).data_dir is None


@pytest.mark.parametrize("argv, message", [
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),  # trained a NaN model
    (["--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),  # torch's bare "Invalid learning rate: -1.0"
    (["--finetune_lr", "nan"], "--finetune_lr must be a finite number > 0"),
    (["--noise_floor", "nan"], "--noise_floor must be a finite number >= 0"),
    (["--noise_floor", "-1"], "--noise_floor must be a finite number >= 0"),
    (["--threads", "0"], "--threads must be an integer >= 1, got 0"),  # read as left out
    (["--eval_batch_size", "0"], "--eval_batch_size must be an integer >= 1, got 0: give --eval_batch_size 1 or "
                                 "more (or leave it out for --batch_size)"),  # read as left out
    (["--seed", "-1"], "--seed must be in [0, 2**32 - 1]"),  # ran
    (["--replot", ""], "--replot is empty (''): give the output folder of a finished knowledge run"),  # measured afresh
])
def test_diagnostics_refuses_bad_numbers_before_any_work(tmp_path, monkeypatch, argv, message):
    monkeypatch.setattr(D, "get_data", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(SystemExit) as e:
        D.main(["knowledge", "--dataset", "digits", "--output_dir", str(tmp_path / "out"), *argv])
    assert message in str(e.value.code)
    assert not (tmp_path / "out").exists()


def test_diagnostics_dense_gradients_refuses_a_nan_adam_lr(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "get_data", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(SystemExit, match="--adam_lr must be a finite number > 0, got nan"):
        D.main(["dense-gradients", "--compare", "--adam_lr", "nan", "--output_dir", str(tmp_path / "out")])


def test_diagnostics_output_dir_with_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    seen = []
    monkeypatch.setattr(D, "cmd_knowledge", lambda args: seen.append(args.output_dir))
    parser = D.build_parser
    monkeypatch.setattr(D, "build_parser", lambda: _with_func(parser(), "knowledge", D.cmd_knowledge))
    D.main(["knowledge", "--output_dir=~/k"])
    assert seen == [str(tmp_path / "home" / "k")] and not (tmp_path / "~").exists()


def _with_func(parser, command, func):
    """``parser`` with ``command`` calling ``func`` (the patched one)."""
    parser._subparsers._group_actions[0].choices[command].set_defaults(func=func)
    return parser


@pytest.mark.parametrize("make, message", [
    # "run folder ... does not exist", though it is there, a file
    (lambda d: _file(d / "f", "x"), "is a file, not a run folder"),
    # "has none of events.jsonl, metrics.csv, history.jsonl", though both are there
    (lambda d: _file(d / "r" / "metrics.csv", "a,b\n", _file(d / "r" / "events.jsonl", "garbage\n")).parent,
     "events.jsonl, metrics.csv hold(s) no record this can read"),
])
def test_progress_of_a_folder_that_holds_no_run_says_what_is_wrong(tmp_path, make, message):
    with pytest.raises((FileNotFoundError, ValueError)) as e:
        progress(str(make(tmp_path)))
    assert message in str(e.value)


def test_existing_behaviour_is_kept():
    """What stays: an absolute path without ~ is unchanged (--weights '' is refused: below)."""
    assert A.parse_args(["--output_dir", "/tmp/x y"]).output_dir == os.path.abspath("/tmp/x y")
    assert Path(A.parse_args(["--output_dir", "a~b"]).output_dir).name == "a~b"


def test_a_config_path_with_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    """--config=~/c.yaml (the shell leaves ~ alone after '=') was "--config file '~/c.yaml' does not exist"."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _file(tmp_path / "home" / "c.yaml", "seed: 3\n")
    assert read_yaml("~/c.yaml") == {"seed": 3}
    assert A.parse_args(["--config=~/c.yaml"]).seed == 3
    assert P.parse_args(["--config=~/c.yaml", "--model", "mlp", "--dataset", "digits"]).seed == 3


def test_diagnostics_path_options_with_a_tilde_are_the_home_folder(tmp_path, monkeypatch):
    """Only --output_dir was expanded: --weights=~/w.pt, --connectome, --replot and progress's run folder
    were 'does not exist' (and --replot's output folder would have been one called ~)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    seen = []
    monkeypatch.setattr(D, "cmd_knowledge", lambda args: seen.append((args.weights, args.connectome, args.replot,
                                                                       args.output_dir, args.data_dir)))
    monkeypatch.setattr(D, "cmd_progress", lambda args: seen.append(args.run_dir))
    parser = D.build_parser
    monkeypatch.setattr(D, "build_parser", lambda: _with_func(_with_func(parser(), "knowledge", D.cmd_knowledge),
                                                              "progress", D.cmd_progress))
    (tmp_path / "home" / "k").mkdir(parents=True)
    D.main(["knowledge", "--weights=~/w.pt", "--connectome=~/c.safetensors", "--replot=~/k", "--data_dir=~/d"])
    D.main(["progress", "~/k"])
    home = str(tmp_path / "home")
    assert seen == [(f"{home}/w.pt", f"{home}/c.safetensors", f"{home}/k", f"{home}/k", f"{home}/d"), f"{home}/k"]
    assert not (tmp_path / "~").exists()


def test_graphs_path_options_with_a_tilde_are_the_home_folder(tmp_path, monkeypatch, capsys):
    """python -m graphs took ~ literally: --out=~/g.json wrote into a folder called ~ in the working
    directory, and a run folder, --connectome or --weights given as ~/... was 'not found'."""
    import adaptive
    from adaptive.models import build_model
    from graphs.cli import main as graphs_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run = tmp_path / "home" / "run"
    run.mkdir(parents=True)
    torch.manual_seed(0)
    model = build_model("mlp", in_shape=(1, 4, 4), hidden=(8,))
    adaptive.Connectome(model).save(run / "connectome.safetensors")
    torch.save(model.state_dict(), run / "model_state.pt")
    (run / "config.yaml").write_text("model: mlp\nnum_classes: 10\nin_shape: [1, 4, 4]\nmodel_kw: {hidden: [8]}\n")
    assert graphs_main(["export", "~/run", "--connectome=~/run/connectome.safetensors",
                        "--weights=~/run/model_state.pt", "--out=~/g.json"]) == 0, capsys.readouterr().err
    assert (tmp_path / "home" / "g.json").is_file() and not (tmp_path / "~").exists()


def test_a_key_given_twice_in_a_config_file_is_refused_naming_it_and_its_lines(tmp_path, capsys):
    """PyYAML keeps the last of two equal keys: a file that gave epochs: 1 and, further down, epochs: 3
    ran 3 epochs without a word."""
    path = _file(tmp_path / "c.yaml", "epochs: 1\nseed: 2\nepochs: 3\n")
    with pytest.raises(ConfigError, match=r"the YAML key 'epochs' is given twice \(lines 1 and 3\), and only the "
                                          r"last would count: keep one of them"):
        read_yaml(path)
    with pytest.raises(SystemExit):
        A.parse_args(["--config", str(path), "--output_dir", str(tmp_path / "out")])
    assert "'epochs' is given twice (lines 1 and 3)" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="'epochs' is given twice"):
        P.parse_args(["--config", str(path), "--model", "mlp", "--dataset", "digits"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("parse, argv", [
    (A.parse_args, ["--model_kw", "{hidden: [8], hidden: [4]}"]),  # built hidden [4]
    (A.parse_args, ["--model_kw", "opts={b: 1, b: 2}"]),
    (P.parse_args, ["--model", "mlp", "--dataset", "digits", "--estimator_kw", "{damping: 1.0, damping: 2.0}"]),
    (D.main, ["knowledge", "--estimator_kw", "{damping: 1.0, damping: 2.0}"]),
])
def test_a_key_given_twice_in_an_inline_yaml_value_is_refused(tmp_path, capsys, monkeypatch, parse, argv):
    monkeypatch.setattr(D, "get_data", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(SystemExit) as e:
        parse([*argv, "--output_dir", str(tmp_path / "out")])
    said = f"{e.value.code} {capsys.readouterr().err}"
    assert "is given twice (in '{" in said and "keep one of them" in said
    assert not (tmp_path / "out").exists()


def test_a_key_given_twice_in_a_run_config_is_named_by_python_m_graphs(tmp_path, capsys):
    import adaptive
    from adaptive.models import build_model
    from graphs.cli import main as graphs_main

    (tmp_path / "config.yaml").write_text("model: mlp\nmodel: lenet5\n")
    adaptive.Connectome(build_model("mlp", in_shape=(1, 4, 4), hidden=(8,))).save(tmp_path / "connectome.safetensors")
    assert graphs_main(["export", str(tmp_path)]) == 2
    assert "the YAML key 'model' is given twice (lines 1 and 2)" in capsys.readouterr().err


def test_yaml_merges_and_repeated_key_value_options_still_override():
    """What stays: a merge (<<) brings keys that the mapping may override, as YAML means, and a dict
    option given twice as KEY=VALUE takes the later value (the documented way to override one entry)."""
    from adaptive.yaml_read import load_yaml

    assert load_yaml("base: &b {x: 1, y: 2}\nrun: {<<: *b, x: 3}\n")["run"] == {"x": 3, "y": 2}
    assert A.parse_args(["--model_kw", "bias=true", "--model_kw", "bias=false"]).model_kw["bias"] is False


def test_num_workers_above_the_cpus_warns_once_in_every_recipe(tmp_path, monkeypatch):
    """--num_workers 100000 was taken: torch warned, once per DataLoader, then started the processes."""
    import adaptive.cli

    monkeypatch.setattr(adaptive.cli, "usable_cpus", lambda: 4)
    for parse, argv in ((A.parse_args, []), (P.parse_args, ["--model", "mlp", "--dataset", "digits"])):
        with pytest.warns(UserWarning, match=r"num.workers 100000 asks for more worker processes than the 4 CPUs this "
                                             r"process may use, .*: give --num.workers 4 or fewer") as seen:
            parse([*argv, "--num_workers", "100000", "--output_dir", str(tmp_path / "out")])
        assert len([w for w in seen if "worker processes" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 4 workers on 4 CPUs: no warning
        A.parse_args(["--num_workers", "4"])


@pytest.mark.parametrize("argv, message", [
    (["--threads", "100000000000000000000"], "--threads must be an integer from 1 to 2,147,483,647"),  # an overflow
    (["--num_workers", "100000000000000000000"], "num.workers must be an integer from 0 to 2,147,483,647"),
])
def test_thread_and_worker_counts_no_machine_runs_are_refused(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setattr(D, "get_data", lambda *a, **k: pytest.fail("data loaded"))
    runs = [(A.parse_args, []), (P.parse_args, ["--model", "mlp", "--dataset", "digits"])]
    if argv[0] == "--threads":
        runs.append((D.main, ["knowledge", "--dataset", "digits"]))
    for parse, before in runs:
        with pytest.raises(SystemExit) as e:
            parse([*before, *argv, "--output_dir", str(tmp_path / "out")])
        assert re.search(message, f"{e.value.code} {capsys.readouterr().err}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("local_rank, shown", [("0", 1), ("1", 0)])
def test_num_workers_above_the_cpus_warns_once_per_launch_not_per_process(tmp_path, monkeypatch, local_rank, shown):
    """Under a 2-process ``accelerate launch`` recipes/prune_pretrained.py gave the warning on every
    process (each reads the same settings); recipes/adaptive.py's first process alone gave it."""
    import adaptive.cli

    monkeypatch.setattr(adaptive.cli, "usable_cpus", lambda: 4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    for parse, argv in ((A.parse_args, []), (P.parse_args, ["--model", "mlp", "--dataset", "digits"])):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            parse([*argv, "--num_workers", "100000", "--output_dir", str(tmp_path / "out")])
        assert len([w for w in seen if "worker processes" in str(w.message)]) == shown, parse.__module__
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_prune_pretrained_num_classes_below_one_is_refused_before_any_work(tmp_path, value):
    """--num-classes 0 was read as left out (the data's classes) and ran; -1 was refused only once the
    data had loaded, as classes that 'do not match' the data's."""
    with pytest.raises(SystemExit, match=rf"--num-classes must be an integer >= 1 .*got {value}: leave it out"):
        P.parse_args(["--model", "mlp", "--dataset", "digits", "--num-classes", value,
                      "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, value, message", [
    ("--num-classes", "100000000000000000000", "argument --num-classes: '1000.*' is not a number of classes"),
    ("--num-classes", "0", "argument --num-classes: '0' is not a number of classes"),
    ("--in-shape", "1,100000000000000000000", "argument --in-shape: '1,1000.*' is not an input shape"),
])
def test_graphs_sizes_past_what_torch_takes_are_refused_naming_the_option(tmp_path, capsys, option, value, message):
    """A size past 2**63 - 1 was torch's TypeError ('Overflow when unpacking long'), a traceback."""
    from graphs.cli import main as graphs_main

    for sub in ("export", "report", "compact"):
        with pytest.raises(SystemExit) as e:
            graphs_main([sub, str(tmp_path), option, value, "--out", str(tmp_path / "out")])
        assert e.value.code == 2 and re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_graphs_in_shape_refusal_writes_its_bound_without_separators(tmp_path, capsys):
    """--in-shape takes sizes separated by commas, so its refusal wrote the bound "(at most
    9,223,372,036,854,775,807) separated by commas, e.g. 3,32,32": seven commas in one number that
    read as seven sizes. The bound is written plain."""
    from graphs.cli import main as graphs_main

    with pytest.raises(SystemExit):
        graphs_main(["export", str(tmp_path), "--in-shape", "0,3", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "give positive integers (at most 9223372036854775807) separated by commas" in err, err


@pytest.mark.parametrize("argv", [["knowledge", "--train_steps", "100000000000000000000"],
                                  ["dense-gradients", "--depth", "100000000000000000000"]])
def test_diagnostics_counts_past_what_python_indexes_are_refused(tmp_path, monkeypatch, argv):
    """--train_steps 1e20 ended in Python's OverflowError; --depth 1e20 built layers until stopped."""
    monkeypatch.setattr(D, "get_data", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(SystemExit, match=rf"{argv[1]} must be at most 9,223,372,036,854,775,807"):
        D.main([*argv, "--dataset", "digits", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, value, message", [
    ("--batch_size", "0", r"--batch.size must be .*1.*got 0: give --batch.size"),
    ("--eval_batch_size", "0", r"--eval.batch.size must be .*got 0: give "),
    ("--holdout", "1.5", r"--holdout must be a fraction in .*got 1.5: give --holdout 0.1"),
    ("--holdout", "nan", r"--holdout must be a fraction in .*got nan: give --holdout 0.1"),
    ("--subset", "0", r"--subset must be .*got 0: give --subset 1 or more"),
    ("--test_subset", "-1", r"--test.subset must be .*got -1: give --test.subset 1 or more"),
])
def test_data_options_are_refused_while_parsing_naming_the_option_and_the_fix(tmp_path, capsys, monkeypatch, option,
                                                                               value, message):
    """The data layer's "batch_size must be >= 1" and "holdout fraction must be in [0, 1)" named no option
    and no fix, and came only once the data loaded (diagnostics' output folder made, then removed;
    recipes/adaptive.py's --subset 0 once its run folder and lock were made)."""
    monkeypatch.setattr(D, "get_data", lambda *a, **k: pytest.fail("data loaded"))
    out = ["--output_dir", str(tmp_path / "out")]
    runs = [(A.parse_args, []), (D.main, ["knowledge"]), (D.main, ["collinearity"]), (D.main, ["dense-gradients"])]
    if option != "--holdout" or value != "nan":  # (prune_pretrained's holdout is in (0, 1): its own test)
        runs.append((P.parse_args, ["--model", "mlp", "--dataset", "digits"]))
    for parse, before in runs:
        with pytest.raises(SystemExit) as e:
            parse([*before, option, value, *out])
        said = f"{e.value.code} {capsys.readouterr().err}"
        assert re.search(message, said), (parse.__module__, before, said)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("recipe, option", [("A", "--batch_size"), ("A", "--eval_batch_size"),
                                            ("A", "--gradient_accumulation_steps"), ("P", "--batch-size"),
                                            ("P", "--eval-batch-size"), ("P", "--subset"), ("D", "--batch_size")])
def test_a_count_past_what_python_takes_is_refused_while_parsing(tmp_path, capsys, monkeypatch, recipe, option):
    """recipes/adaptive.py took --gradient_accumulation_steps 2**64 and failed mid-run in torch's division of
    the loss ("int too big to convert", a traceback), and --batch_size 1e19 with islice's "Stop argument ... <=
    sys.maxsize", naming no option, its config.yaml left behind so that the corrected command was refused as
    an earlier run; prune_pretrained alike. Each is refused while parsing now, in the words diagnostics used."""
    monkeypatch.setattr(D, "get_data", lambda *a, **k: pytest.fail("data loaded"))
    parse, before = {"A": (A.parse_args, []), "P": (P.parse_args, ["--model", "mlp", "--dataset", "digits"]),
                     "D": (D.main, ["knowledge", "--dataset", "digits"])}[recipe]
    with pytest.raises(SystemExit) as e:
        parse([*before, option, "18446744073709551616", "--output_dir", str(tmp_path / "out")])
    said = f"{e.value.code} {capsys.readouterr().err}"
    assert f"{option} must be at most 9,223,372,036,854,775,807, got 18446744073709551616" in said, said
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, value, line", [
    ("--subset", "0", "--subset must be an integer >= 1, got 0: give --subset 1 or more (or leave it out for all)"),
    ("--holdout", "1.5", "--holdout must be a fraction in "),  # (prune_pretrained's range is (0, 1), the others' [0, 1))
])
def test_a_data_option_s_refusal_reads_the_same_in_every_recipe(tmp_path, capsys, monkeypatch, option, value, line):
    """Each recipe worded the refusal of the same data option its own way ("must be at least 1", "must be
    a positive number of examples", "must be an integer >= 1"): one function (adaptive.cli_checks) words
    them all now, each recipe keeping its own range."""
    monkeypatch.setattr(D, "get_data", lambda *a, **k: pytest.fail("data loaded"))
    out = ["--output_dir", str(tmp_path / "out")]
    said = []
    for parse, before in [(A.parse_args, []), (D.main, ["knowledge"]),
                          (P.parse_args, ["--model", "mlp", "--dataset", "digits"])]:
        with pytest.raises(SystemExit) as e:
            parse([*before, option, value, *out])
        text = f"{e.value.code}\n{capsys.readouterr().err}"
        said.append([s[s.index(option):] for s in text.splitlines() if option + " must be" in s])
    assert all(len(s) == 1 and s[0].startswith(line) for s in said), said
    assert all(s[0].endswith("got 1.5: give --holdout 0.1 (say)") for s in said) if option == "--holdout" else True


def test_the_data_layer_names_the_keyword_and_the_fix():
    from adaptive.data import get_dataloaders, get_datasets, stratified_split, stratified_subset

    with pytest.raises(ValueError, match=r"batch_size must be .*>= 1 .*got 0: give batch_size=1 or more"):
        get_dataloaders("digits", batch_size=0)
    with pytest.raises(ValueError, match=r"holdout must be a fraction in \[0, 1\) .*got 1.5: give holdout=0.1"):
        get_datasets("digits", holdout=1.5)
    with pytest.raises(ValueError, match=r"--holdout must be a fraction .*got nan: give --holdout 0.1"):
        get_datasets("digits", holdout=float("nan"), option_names={"holdout": "--holdout"})
    with pytest.raises(ValueError, match=r"subset must be a positive .*got 0: give subset=1 or more"):
        get_datasets("digits", subset=0)
    with pytest.raises(ValueError, match=r"fraction .* must be in \[0, 1\), got 1.0: give fraction=0.1"):
        stratified_split(torch.arange(4), 1.0)
    with pytest.raises(ValueError, match=r"size .* must be a positive number of examples, got 0: give size=1"):
        stratified_subset(torch.arange(4), 0)


@pytest.mark.parametrize("argv, line", [
    (["--holdout", "0"], "recipes/prune_pretrained.py: error: --holdout must be a fraction in (0, 1)"),  # the checks'
    (["--batch-size", "x"], ": error: argument --batch-size/--batch_size: expects a whole number (e.g. 64 or 1e3), "
                            "got 'x'"),  # argparse's own
    (["-h"], "usage: "),
])
@pytest.mark.parametrize("local_rank", ["0", "1"])
def test_prune_pretrained_says_a_refused_option_once_per_launch(tmp_path, monkeypatch, capsys, argv, line, local_rank):
    """Under `accelerate launch --num_processes 2` every process printed prune_pretrained's error line
    (recipes/adaptive.py's first process alone did): before the process group exists, every process
    but the first of its machine now waits for the launcher to end it (a sleep interrupted here, as
    the launcher's SIGTERM would), as adaptive.cli's say_error does for recipes/adaptive.py."""
    import adaptive.cli as cli

    class Ended(BaseException):
        pass

    def ended_by_the_launcher(seconds):
        raise Ended

    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(cli.time, "sleep", ended_by_the_launcher)
    first = local_rank == "0"
    with pytest.raises(SystemExit if first or argv == ["-h"] else Ended):
        P.command(["--model", "mlp", "--dataset", "digits", "--output_dir", str(tmp_path / "out"), *argv])
    err, out = capsys.readouterr()[::-1]
    assert (line in err + out) == first and (err + out).count(line) <= 1, err + out
    assert not (tmp_path / "out").exists()


def test_diagnostics_dense_gradients_refuses_nets_larger_than_the_memory_before_building_them(tmp_path, monkeypatch):
    """--width 100000000 ended in torch's "can't allocate memory" traceback while building the nets:
    the least memory the plan needs is estimated first and refused, naming it, the memory available
    and the options to lower."""
    import adaptive.models

    monkeypatch.setattr(D, "get_data", lambda *a, **k: pytest.fail("data loaded"))
    monkeypatch.setattr(adaptive.models, "build_model", lambda *a, **k: pytest.fail("a net was built"))
    with pytest.raises(SystemExit, match=r"needs at least about [\d,.]+ PB of memory \(its 4 DenseCat nets of depth 8 x "
                                         r"width 100000000.*more than the [\d.]+ [KMGT]?B this machine has available: "
                                         r"lower --width, --depth or --batch_size"):
        D.main(["dense-gradients", "--width", "100000000", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("in_shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])  # digits, mnist, cifar10
def test_the_documented_dense_gradients_commands_fit_in_a_gigabyte(in_shape):
    """The estimate is a lower bound: the default nets (and --compare's) on digits, MNIST and CIFAR-10 ask
    for well under a gigabyte, and are never refused on a machine with one available."""
    from recipes._diagnostics.dense_plan import dense_gradients_bytes, memory_problem

    args = D.build_parser().parse_args(["dense-gradients", "--compare"])
    kinds, norms = ["mlp", "cnn"], [False, True]
    assert dense_gradients_bytes(args, kinds, norms, in_shape, 10) < 0.7e9
    assert memory_problem(args, kinds, norms, in_shape, 10, available=10**9) is None
    assert "lower --width" in memory_problem(args, kinds, norms, in_shape, 10, available=10**6)


@pytest.mark.parametrize("command", ["knowledge", "collinearity"])
@pytest.mark.parametrize("argv, message", [
    # measured the fresh init, untrained (build_model reads weights '' as none, and a given --weights skips training)
    (["--weights", ""], "--weights is empty (''): give a weights file, or leave --weights out to train"),
    # "the connectome.safetensors beside --weights () does not fit --model mlp: No such file or directory"
    (["--weights", "w.pt", "--connectome", ""], "--connectome is empty (''): give a connectome file, none for a dense"),
    (["--weights", "w.pt", "--connectome", " "], "--connectome is empty (' '): give a connectome file, none for a dense"),
])
def test_diagnostics_refuses_an_empty_weights_or_connectome(tmp_path, monkeypatch, command, argv, message):
    monkeypatch.setattr(D, "get_data", lambda *a, **k: pytest.fail("data loaded"))
    monkeypatch.setattr(D, "model_first", lambda *a, **k: pytest.fail("model built"))
    with pytest.raises(SystemExit) as e:
        D.main([command, *argv, "--output_dir", str(tmp_path / "out")])
    assert message in str(e.value.code)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["0", "-3"])
def test_diagnostics_progress_refuses_a_total_synapses_below_one(tmp_path, monkeypatch, value):
    """-3 placed a run's density-only events at negative counts removed; 0 was read as left out."""
    run = tmp_path / "run"
    _file(run / "events.jsonl", '{"step": 1, "density": 0.5}\n')
    monkeypatch.setattr(D.D, "progress", lambda *a, **k: pytest.fail("run read"))
    with pytest.raises(SystemExit, match=rf"--total_synapses must be an integer >= 1, got {value}: give "
                                         r"--total_synapses 1 or more \(or leave it out to read it from the run\)"):
        D.main(["progress", str(run), "--total_synapses", value, "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def _graphs_run(folder: Path, config: str = "") -> Path:
    """A run folder of a tiny mlp for ``python -m graphs``: connectome, weights and config.yaml (``config`` appended)."""
    import adaptive
    from adaptive.models import build_model

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    model = build_model("mlp", in_shape=(1, 4, 4), hidden=(8,))
    adaptive.Connectome(model).save(folder / "connectome.safetensors")
    torch.save(model.state_dict(), folder / "model_state.pt")
    (folder / "config.yaml").write_text("model: mlp\nnum_classes: 10\nin_shape: [1, 4, 4]\nmodel_kw: {hidden: [8]}\n"
                                        + config)
    return folder


@pytest.mark.parametrize("command, name, what", [
    ("export", "model_state.pt", "weights"),  # wrote the graph (a torch_geometric Data) over the run's weights
    ("compact", "model_state.pt", "weights"),
    ("compact", "connectome.safetensors", "connectome"),  # the compacted model over the run's connectome
])
def test_graphs_refuses_an_out_that_is_the_file_it_reads(tmp_path, capsys, command, name, what):
    from graphs.cli import main as graphs_main

    run = _graphs_run(tmp_path / "run")
    before = (run / name).read_bytes()
    assert graphs_main([command, str(run), "--out", str(run / name)]) == 2
    assert f"is the {what} file this command reads: writing the " in capsys.readouterr().err
    assert (run / name).read_bytes() == before


@pytest.mark.parametrize("config, message", [
    ("plugins: 5\n", "its 'plugins' is 5, not a list of .py files or module names"),  # TypeError: 'int' object ...
    ("model_kw: [1]\n", "its 'model_kw' is [1], not a mapping of the model builder's arguments"),  # a TypeError too
    ("dataset: folder\ndataset_kw: 3\n", "its 'dataset_kw' is 3, not a mapping"),  # AttributeError: 'int' ...
])
def test_graphs_names_a_config_key_of_the_wrong_type(tmp_path, capsys, config, message):
    from graphs.cli import main as graphs_main

    run = _graphs_run(tmp_path / "run", config.replace("model_kw: [1]\n", ""))
    if config.startswith("model_kw"):  # in place of the run's own
        (run / "config.yaml").write_text("model: mlp\nnum_classes: 10\nin_shape: [1, 4, 4]\n" + config)
    assert graphs_main(["export", str(run), "--out", str(tmp_path / "g.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and "the run's config is damaged; give the model with --model" in err
    assert not (tmp_path / "g.json").exists()


def test_graphs_reads_a_config_s_one_plugin_string_as_one_plugin(tmp_path, capsys):
    """plugins: a single string (the recipes take one, and 'a.py,b.py') was read a character at a time: 'plugin
    module '/' not found'."""
    from graphs.cli import main as graphs_main

    plugin = _file(tmp_path / "plug.py", "LOADED = True\n")
    run = _graphs_run(tmp_path / "run", f"plugins: {plugin}\n")
    assert graphs_main(["export", str(run), "--out", str(tmp_path / "g.json")]) == 0, capsys.readouterr().err
    assert (tmp_path / "g.json").is_file()


def test_graphs_refuses_an_empty_model_name(tmp_path, capsys):
    """--model '' rebuilt config.yaml's model without its recorded arguments, and said the layers' shapes differ."""
    from graphs.cli import main as graphs_main

    run = _graphs_run(tmp_path / "run")
    for command in ("export", "compact"):
        assert graphs_main([command, str(run), "--model", "", "--out", str(tmp_path / "o.json")]) == 2
        assert "--model '' names no model: give a model name, or leave --model out for config.yaml's" in \
            capsys.readouterr().err


@pytest.mark.parametrize("command,name", [("export", "summary.json"), ("compact", "config.yaml"),
                                          ("compact", "metrics.csv"), ("compact", "listed.bin")])
def test_graphs_export_and_compact_refuse_an_out_that_is_a_file_of_the_run(tmp_path, capsys, command, name):
    """export RUN --out RUN/summary.json replaced the run's results with the graph, compact RUN --out RUN/config.yaml
    its settings with a pickled model (every later command on the run failed), and --out CKPT/optimizer.bin a
    checkpoint's file, without a word: only the connectome and weights files read were kept. A file an earlier
    export wrote is written over, as before."""
    from adaptive.integrity import write_manifest
    from graphs.cli import main as graphs_main

    run = _graphs_run(tmp_path / "run")
    target = run / name
    if not target.exists():  # (a recipe's file; listed.bin: one a checkpoint's manifest lists)
        target.write_bytes(b"the run's own\n")
    if name == "listed.bin":
        write_manifest(run)
    before = target.read_bytes()
    assert graphs_main([command, str(run), "--out", str(target)]) == 2
    assert f"is a file of a run ({name}, which the recipes or a checkpoint wrote)" in capsys.readouterr().err
    assert target.read_bytes() == before
    for _ in range(2):
        assert graphs_main(["export", str(run), "--out", str(run / "g.json")]) == 0, capsys.readouterr().err


def test_graphs_reads_a_run_whose_recorded_plugin_moved_given_plugins(tmp_path, capsys):
    """A run whose config.yaml records a plugin file that has moved (a copied run, a renamed folder) could not be
    read at all: --plugins NEW was loaded after the recorded path, which failed first. With --plugins the recorded
    one is left out with a warning; without, the refusal says to give --plugins."""
    from graphs.cli import main as graphs_main

    gone = tmp_path / "old" / "ext.py"
    run = _graphs_run(tmp_path / "run", config=f"plugins: [{gone}]\n")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "ext.py").write_text("# the plugin, moved\n")
    assert graphs_main(["export", str(run), "--out", str(tmp_path / "a.json")]) == 2
    assert "(recorded in" in (err := capsys.readouterr().err) and "give --plugins PATH" in err
    with pytest.warns(UserWarning, match=r"records the plugin .*ext.py, which is not found: left out, as --plugins"):
        code = graphs_main(["export", str(run), "--plugins", str(tmp_path / "new" / "ext.py"), "--out",
                            str(tmp_path / "b.json")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "b.json").is_file()


def test_graphs_names_another_runs_connectome_given_by_connectome(tmp_path, capsys):
    """--connectome of another run (a wider model) was refused as 'the model was rebuilt as mlp with hidden=[8],
    which is not the run's', blaming the run's own arguments: the refusal names the connectome as the other cause."""
    import adaptive
    from adaptive.models import build_model
    from graphs.cli import main as graphs_main

    run = _graphs_run(tmp_path / "run")
    adaptive.Connectome(build_model("mlp", in_shape=(1, 4, 4), hidden=(16,))).save(tmp_path / "other.safetensors")
    assert graphs_main(["export", str(run), "--connectome", str(tmp_path / "other.safetensors"), "--out",
                        str(tmp_path / "g.json")]) == 2
    assert f"or --connectome {tmp_path / 'other.safetensors'} is another run's connectome" in capsys.readouterr().err


def test_graphs_export_to_pyg_prints_no_warning_of_torch_geometrics_import(tmp_path):
    """Every export to PyG printed 'warning (FutureWarning): `torch.jit.script` is deprecated', torch's warning for
    calls torch_geometric makes at import, which nobody running graphs can act on (a fresh process: the import's)."""
    import subprocess
    import sys

    run = _graphs_run(tmp_path / "run")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-m", "graphs", "export", str(run), "--format", "pt", "--out",
                        str(tmp_path / "g.pt")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "torch.jit.script" not in r.stderr, r.stderr[-2000:]


def test_graphs_report_refuses_an_out_holding_a_run_s_own_summary(tmp_path, capsys):
    """report RUN --out RUN replaced the run's summary.json (its results) with the graph summary, without a word;
    a folder holding an earlier graph report's summary.json is still written over."""
    from graphs.cli import main as graphs_main

    run = _graphs_run(tmp_path / "run")
    (run / "summary.json").write_text('{"final_test_accuracy": 0.9}\n')
    assert graphs_main(["report", str(run), "--out", str(run)]) == 2
    assert "holds a summary.json that is not a graph report's (a run's own summary)" in capsys.readouterr().err
    assert (run / "summary.json").read_text() == '{"final_test_accuracy": 0.9}\n'
    assert not (run / "dead_units.png").exists()
    for _ in range(2):  # a report's own folder, again
        assert graphs_main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "rep" / "summary.json").read_text())["level"] == "unit"


@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_weights_is_refused_by_the_training_recipe(tmp_path, capsys, value):
    """--weights "$W" with W unset trained from the fresh initialisation unsaid (as if no --weights were
    given); a config file's weights: '' too. (prune_pretrained reads '' as none, a supermask search.)"""
    with pytest.raises(SystemExit):
        A.parse_args(["--weights", value])
    assert f"error: weights is empty ({value!r}): give a weights file, or leave weights out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        A.parse_args(["--config", str(_file(tmp_path / "c.yaml", f"weights: '{value}'\n"))])
    assert "weights is empty" in capsys.readouterr().err
    assert A.parse_args(["--weights", "none"]).weights is None  # null: none


def test_a_tilde_path_is_the_home_folder_even_beside_a_literal_tilde_folder(tmp_path, monkeypatch):
    """An older run (or a mistyped command) left a folder literally named ~ in the working directory: a
    --data_dir=~/d (the shell leaves ~ alone after '=') then read ./~/d, not the home folder's d, in
    recipes/adaptive.py and prune_pretrained (diagnostics and --output_dir expanded ~ first)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for base in (tmp_path / "~", tmp_path / "home"):
        (base / "d").mkdir(parents=True)
        _file(base / "w.pt", "x")
    home = tmp_path / "home"
    cfg = A.parse_args(["--data_dir=~/d", "--weights=~/w.pt", "--output_dir=~/o"])
    assert (cfg.data_dir, cfg.weights, cfg.output_dir) == (str(home / "d"), str(home / "w.pt"), str(home / "o"))
    args = P.parse_args(["--model", "mlp", "--dataset", "digits", "--data_dir=~/d", "--weights=~/w.pt",
                         "--output_dir=~/o"])
    assert (args.data_dir, args.weights, args.output_dir) == (str(home / "d"), str(home / "w.pt"), str(home / "o"))


def _benchmarks_with_a_data_dir():
    root = Path(__file__).resolve().parents[1] / "recipes" / "benchmarks"
    return sorted(p for p in root.rglob("*.py") if '"--data-dir"' in p.read_text())


def test_every_benchmark_data_dir_refuses_an_empty_folder_as_the_recipes_do(capsys):
    """The benchmarks read --data-dir '' (an unset shell variable) as the default folder, unsaid, where the
    three recipes refuse it: each benchmark's --data-dir takes the shared adaptive.cli.data_dir_type."""
    import argparse

    from adaptive.cli import data_dir_type

    found = _benchmarks_with_a_data_dir()
    assert len(found) >= 10
    for path in found:
        text = path.read_text()
        lines = [x for x in text.splitlines() if 'add_argument("--data-dir"' in x]
        # (or declared by the shared _paired_runs.add_recipe_run_options, whose own line this loop checks too)
        assert (lines or "add_recipe_run_options(ap" in text) and all("type=data_dir_type" in x for x in lines), path.name
    for value in ("", "  "):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(f"the data folder is empty ({value!r}): give")):
            data_dir_type(value)
    mask_only = load_script("recipes/benchmarks/mask_only.py", "benchmark_mask_only_fuzz")
    with pytest.raises(SystemExit) as e:
        mask_only.main(["--data-dir", ""])
    assert e.value.code == 2 and "argument --data-dir: the data folder is empty ('')" in capsys.readouterr().err


def test_diagnostics_refuses_a_whitespace_output_dir(tmp_path, monkeypatch):
    """--output_dir ' ' (as --out ' ' in python -m graphs) is refused as '' is, by the shared check."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=re.escape("--output_dir is empty (' '): give a folder")):
        D.main(["knowledge", "--output_dir", " "])
    assert not list(tmp_path.iterdir())


_DIGITS = ["--model", "mlp", "--dataset", "digits", "--threads", "1"]


@pytest.mark.parametrize("recipe, argv, message", [
    # ran 10**18 batches per stage (a stage lasts at least one window)
    ("P", ["--remove", "0.2", "--window", str(10**18)],
     "--window 1000000000000000000 is more than the 11 batches of one pass of the train part (1,295 images, "
     "--batch-size 128 each): an update's window would read some of them twice, which adds no evidence; give "
     "--window 11 or fewer"),
    ("A", ["--mode", "mask_only", "--density", "0.8", "--update_every", str(10**18)],
     "--update_every 1000000000000000000 is more than the 41 batches of one pass of the train part (1,295 "
     "examples, --batch_size 32 each): an update's window would read some of them twice, which adds no evidence; "
     "give --update_every 41 or fewer"),
    # said "(or hold out more data)" in optimize_connectome's keyword, with no word of --holdout
    ("A", ["--mode", "mask_only", "--density", "0.8", "--mask_only_kw", "verify_batches=6"],
     "--mask_only_kw verify_batches=6 is more than the 5 batches of the held-out part (143 examples, "
     "--eval_batch_size 32 each): each line search would read some of them twice, which adds no evidence; give "
     "--mask_only_kw verify_batches=5 or fewer, or hold out more batches (a larger --holdout or --subset"),
])
def test_a_count_of_batches_beyond_one_pass_is_refused_naming_the_largest(tmp_path, monkeypatch, capsys, recipe,
                                                                           argv, message):
    monkeypatch.chdir(tmp_path)
    extra = ["--progress", "false", "--figures", "false"] if recipe == "A" else ["--no-progress"]
    with pytest.raises((SystemExit, ValueError)) as e:  # (prune_pretrained's main raises; run_cli prints it)
        {"A": A, "P": P}[recipe].main(_DIGITS + argv + extra + ["--output_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err + str(e.value)
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag", ["cpu", "overwrite", "download", "resume"])
def test_prune_pretrained_says_no_to_a_config_files_yes_flag(tmp_path, flag):
    """A --config file's `cpu: true` (a --cpu run's config.yaml records it), `overwrite`, `download` or `resume`
    could not be said no to on prune_pretrained's command line (--cpu false and --no-cpu were unrecognized),
    where recipes/adaptive.py takes --no-KEY; --no-KEY says no over the file's yes, and the flag alone yes."""
    cfg = _file(tmp_path / "c.yaml", f"model: mlp\ndataset: digits\n{flag}: true\n")
    base = ["--config", str(cfg), "--output_dir", str(tmp_path / "out")]
    assert getattr(P.parse_args(base), flag) is True
    assert getattr(P.parse_args([*base, f"--no-{flag}"]), flag) is False
    assert getattr(P.parse_args([*base, f"--no_{flag}", f"--{flag}"]), flag) is True  # the later one wins


def test_a_target_refused_in_train_mode_names_where_it_came_from_and_the_fix(tmp_path, capsys):
    """A mask_only run's config.yaml rerun with --mode train was refused for its target with no fix (the
    estimator's refusal, alike, names the file and --estimator none): the file's target is named and
    --target none given as the fix, which is accepted; a command line's --target is told to drop it."""
    cfg = _file(tmp_path / "c.yaml", "mode: mask_only\ntarget: 0.3\n")
    with pytest.raises(SystemExit):
        A.parse_args(["--config", str(cfg), "--mode", "train"])
    assert f"{cfg} gives it: add --target none, or give --mode mask_only" in capsys.readouterr().err
    assert A.parse_args(["--config", str(cfg), "--mode", "train", "--target", "none"]).target is None
    with pytest.raises(SystemExit):
        A.parse_args(["--target", "0.3"])
    assert "sets the fraction of live synapses: drop --target, or give --mode mask_only" in capsys.readouterr().err


def test_the_training_recipes_help_into_a_closed_pipe_is_no_traceback(tmp_path):
    """`python recipes/adaptive.py --help | head` ended (when head had gone before the help was written) in a
    BrokenPipeError traceback with status 1; the help's reader leaving is status 0, said nothing of. The pipe's
    read end is closed before the recipe starts, so every write meets a gone reader."""
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)
    try:
        r = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "recipes" / "adaptive.py"),
                            "--help"], stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    finally:
        os.close(write)
    assert r.returncode == 0 and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr[-2000:]


def test_prune_pretrained_help_names_the_launchs_precision_as_mixed_precisions_default(monkeypatch):
    """--help said '(default: no)' for --mixed-precision, but a run given neither the option nor a --config key
    takes the launch's precision (accelerate launch --mixed_precision bf16 runs bf16, as docs/mask_only.md says)."""
    text = " ".join(next(a.help for a in P.build_parser()._actions if a.dest == "mixed_precision").split())
    assert "(default: the launch's, accelerate launch --mixed_precision, else no)" in text and "(default: no)" not in text
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert P.parse_args(["--model", "mlp", "--dataset", "digits"]).mixed_precision == "bf16"
