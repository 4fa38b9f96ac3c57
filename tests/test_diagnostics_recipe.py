"""recipes/diagnostics.py: every command runs end to end on tiny offline settings and writes its figures."""
import json
import os
import re
import warnings

import pytest
import torch
from _scripts import CHILD_TIMEOUT, load_script  # noqa: E402
from _figures import close_kept_figures  # noqa: E402

torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


_close_kept_figures = pytest.fixture(autouse=True)(close_kept_figures)


@pytest.fixture(scope="module")
def recipe():
    return load_script("recipes/diagnostics.py", "diagnostics_recipe")


COMMON = ["--dataset", "digits", "--batch_size", "64", "--seed", "0"]


def test_dense_gradients(recipe, tmp_path, capsys):
    recipe.main(["dense-gradients", *COMMON, "--output_dir", str(tmp_path), "--kind", "cnn", "--batchnorm", "on",
                 "--depth", "2", "--width", "4", "--train_steps", "2", "--grad_batches", "2",
                 "--compare", "--compare_steps", "2"])
    for tag in ("cnn_bn",):
        assert (tmp_path / f"gradients_by_depth_{tag}.png").stat().st_size > 1000
        assert (tmp_path / f"gradients_by_depth_{tag}.csv").exists()
    out = capsys.readouterr().out
    assert "first band / last band" in out
    rows = (tmp_path / "optimizer_comparison.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and "band-scaled sgd" in rows[-1]


def test_collinearity(recipe, tmp_path, capsys):
    recipe.main(["collinearity", *COMMON, "--output_dir", str(tmp_path), "--model", "mlp", "--train_steps", "3",
                 "--batches", "3", "--grad_batch_size", "32"])
    assert "no --weights given: training mlp from scratch for 3 steps" in capsys.readouterr().out
    for name in ("collinearity_vs_grad2.png", "sign_agreement_vs_grad2.png", "collinearity_by_layer.png",
                 "collinearity_layers.csv", "collinearity_fraction_above.md"):
        assert (tmp_path / name).exists(), name


def test_collinearity_says_the_batches_examples_and_split_it_measured(recipe, tmp_path, capsys, monkeypatch):
    """Without --grad_batch_size the held-out loader's own batches are measured, the last one short:
    the console line and both kinds of figure title say how many batches and examples, and of which
    split (the console said only "(N batches)", the titles left the examples out)."""
    import importlib

    module = importlib.import_module("adaptive.diagnostics.collinearity")  # the package's name is the function

    titles = []
    monkeypatch.setattr(module, "save_figure", lambda fig, path, svg=False: titles.append(fig.axes[0].get_title()) or [str(path)])
    recipe.main(["collinearity", *COMMON, "--output_dir", str(tmp_path), "--model", "mlp", "--train_steps", "1",
                 "--split", "holdout"])
    data = recipe.get_data(recipe.build_parser().parse_args(["collinearity", *COMMON]), batch_size=64)
    examples = len(data.holdout.dataset)
    batches = -(-examples // 64)
    assert examples % 64, "the held-out part should end in a short batch for this test"
    said = capsys.readouterr().out
    assert (f"collinearity per layer ({batches} batches, {examples:,} examples of the held-out part of digits TRAIN)"
            in said)
    assert len(titles) == 3
    for t in titles:
        assert "gradients on the held-out part of digits TRAIN" in t and f"({batches} batches, {examples:,} examples" in t


def test_knowledge(recipe, tmp_path):
    recipe.main(["knowledge", *COMMON, "--output_dir", str(tmp_path), "--model", "mlp", "--train_steps", "3",
                 "--points", "4", "--estimator", "taylor", "--order_batches", "2", "--finetune_batches", "1"])
    assert (tmp_path / "knowledge_mlp.png").exists()
    summary = json.loads((tmp_path / "knowledge_summary.json").read_text())
    assert summary["total_weights"] == 64 * 256 + 256 * 128 + 128 * 10  # the default mlp on 8x8 digits
    assert "TEST" in summary["note"] and summary["estimator"] == "taylor"


def test_knowledge_writes_its_tables_before_drawing(recipe, tmp_path, monkeypatch):
    """The curve's tables were written after the figure: a figure that failed to draw (an
    OverflowError of matplotlib's log ticks) lost the whole measurement, minutes of it."""
    from adaptive.diagnostics import KnowledgeCurve

    def fail(self, *a, **k):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(KnowledgeCurve, "plot", fail)
    with pytest.raises(RuntimeError, match="drawing failed"):
        recipe.main(["knowledge", *COMMON, "--output_dir", str(tmp_path), "--model", "mlp", "--train_steps", "3",
                     "--points", "3"])
    for name in ("knowledge_curve.csv", "knowledge_fit.csv", "knowledge_summary.json"):
        assert (tmp_path / name).exists(), name


def test_knowledge_prints_the_seconds_its_summary_records(recipe, tmp_path, monkeypatch, capsys):
    """The console gave the time to the end (saving and drawing too) while knowledge_summary.json's
    ``seconds`` counts the measurement alone: two durations for one run. The console now prints the
    summary's, saying what it covers (a fake clock, 10 s a reading: the figures differed by 10 s)."""
    import itertools
    import types

    clock = itertools.count(0.0, 10.0)
    monkeypatch.setattr(recipe, "time", types.SimpleNamespace(time=lambda: next(clock)))
    recipe.main(["knowledge", *COMMON, "--output_dir", str(tmp_path), "--model", "mlp", "--train_steps", "2",
                 "--points", "3"])
    seconds = json.loads((tmp_path / "knowledge_summary.json").read_text())["meta"]["seconds"]
    assert seconds == 10.0
    assert ("; curve measured in 10.0 s (as knowledge_summary.json's seconds: the measurement alone, no training, "
            "saving or drawing); figure ") in capsys.readouterr().out


def test_knowledge_prints_accuracy_in_percent(recipe, tmp_path, capsys):
    """The printed curve gave accuracy as a fraction (0.8047) under its figure's percent axis."""
    recipe.main(["knowledge", *COMMON, "--output_dir", str(tmp_path), "--model", "mlp", "--train_steps", "2",
                 "--points", "3"])
    out = capsys.readouterr().out
    printed = out.split("accuracy of what remains\n")[1].split("\n\nexponential fits")[0]
    assert printed == (tmp_path / "knowledge_curve.md").read_text().strip()  # (its caption too)
    assert printed.startswith("| removed | fraction | accuracy (%) | loss | accuracy drop (points) |")
    first = [c.strip() for c in printed.splitlines()[2].strip("|").split("|")]
    intact = json.loads((tmp_path / "knowledge_summary.json").read_text())["meta"]["base"]["accuracy"]
    assert first[2] == f"{100 * intact:.2f}" and first[4] == "0.00"
    fits = out.split("exponential fits (log y = a + rate * removed)\n")[1].split("\n\n")[0]
    assert fits == (tmp_path / "knowledge_fit.md").read_text().strip()  # the floors in nats and points
    assert fits.splitlines()[0].endswith("| fitted above |") and " points |" in fits and " nats |" in fits


def test_progress(recipe, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_text(json.dumps({"step": 5, "pruned": 3, "grown": 1, "density": 0.9}) + "\n")
    (run / "metrics.csv").write_text("step,split,loss,accuracy\n0,train,2.0,0.1\n6,holdout,1.5,0.5\n")
    recipe.main(["progress", str(run), "--output_dir", str(tmp_path / "out")])
    assert "1 events, 2 metric rows; removal axis from events" in capsys.readouterr().out  # what it read
    png = (tmp_path / "out" / "progress.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000  # a drawn figure (an empty file passed before)


def test_train_part_smaller_than_a_batch_is_refused_clearly(recipe, tmp_path):
    # 60 digits with a 10% holdout leave 50 to train on, fewer than one full batch of 64: the
    # loader would yield nothing and training died with a bare StopIteration
    with pytest.raises(ValueError, match="fewer than one batch of 64.*larger --subset or a smaller --batch_size"):
        recipe.main(["collinearity", *COMMON, "--subset", "60", "--output_dir", str(tmp_path), "--model", "mlp",
                     "--train_steps", "3", "--batches", "3"])


def test_cifar10_download_waits_for_the_model_checks(recipe, tmp_path, monkeypatch):
    """--dataset cifar10 --download with no copy on disk downloaded it before a --weights file of
    another model was refused (refused before the data for every other dataset)."""
    import torchvision

    from adaptive.models import WeightsMismatchError, build_model

    calls = []

    def recorded(root, train=True, download=False, **kw):
        calls.append(download)
        raise RuntimeError("no download in tests")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", recorded)
    w = tmp_path / "w.pt"
    torch.save(build_model("resnet20", num_classes=3, in_shape=(3, 32, 32)).state_dict(), w)  # 3 classes, not 10
    with pytest.raises(WeightsMismatchError, match="does not match model"):
        recipe.main(["collinearity", "--dataset", "cifar10", "--download", "--data_dir", str(tmp_path / "data"),
                     "--model", "resnet20", "--weights", str(w), "--output_dir", str(tmp_path / "out")])
    assert calls == []


def test_a_test_subset_below_the_class_count_names_the_option(recipe, tmp_path):
    """The refusal named the keyword test_subset rather than this recipe's --test_subset."""
    with pytest.raises(ValueError, match="--test_subset 5 cannot hold one test example of each of the 10 classes of "
                                         "digits: give a --test_subset of at least 10"):
        recipe.main(["collinearity", *COMMON, "--test_subset", "5", "--output_dir", str(tmp_path), "--model", "mlp",
                     "--train_steps", "3", "--batches", "3"])


def test_holdout_and_test_batches_mix_classes(recipe, tmp_path):
    """Holdout and test loaders keep the dataset's order, grouped by class in an image folder: the
    diagnostics read them in a seeded random order, so a limited number of batches (and each batch)
    spans the classes."""
    import numpy as np
    from PIL import Image

    from adaptive.data import get_dataloaders

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b", "c", "d"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(10):
                Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(d / f"{i}.png")
    data = get_dataloaders("folder", data_dir=str(tmp_path), batch_size=8, holdout=0.5, image_size=6, resize=6)
    for loader in (data.holdout, data.test):
        assert len(set(next(iter(loader))[1].tolist())) <= 2  # in order: one or two classes per batch
        first = next(iter(recipe.mixed(loader, 0)))[1]
        assert len(set(first.tolist())) >= 3 and torch.equal(first, next(iter(recipe.mixed(loader, 0)))[1])


def test_no_holdout_is_fine_for_magnitude_and_refused_clearly_where_it_is_needed(recipe, tmp_path):
    recipe.main(["knowledge", *COMMON, "--output_dir", str(tmp_path / "k"), "--model", "mlp", "--train_steps", "3",
                 "--points", "3", "--holdout", "0"])  # a magnitude order reads no data
    assert (tmp_path / "k" / "knowledge_mlp.png").exists()
    with pytest.raises(SystemExit, match="the taylor order needs held-out TRAIN data, and --holdout 0 leaves none"):
        recipe.main(["knowledge", *COMMON, "--output_dir", str(tmp_path / "t"), "--model", "mlp", "--train_steps", "3",
                     "--points", "3", "--holdout", "0", "--estimator", "taylor"])
    with pytest.raises(SystemExit, match="--split holdout needs held-out TRAIN data"):
        recipe.main(["collinearity", *COMMON, "--output_dir", str(tmp_path / "c"), "--model", "mlp",
                     "--train_steps", "3", "--batches", "2", "--holdout", "0", "--split", "holdout"])


def test_replot_redraws_into_the_run_folder(recipe, tmp_path, monkeypatch):
    run = tmp_path / "k"
    recipe.main(["knowledge", *COMMON, "--output_dir", str(run), "--model", "mlp", "--train_steps", "3", "--points", "3"])
    import matplotlib.image as mpimg
    import numpy as np

    drawn = mpimg.imread(run / "knowledge_mlp.png")
    (run / "knowledge_mlp.png").unlink()
    monkeypatch.chdir(tmp_path)  # a default folder under the working directory must stay untouched
    recipe.main(["knowledge", "--replot", str(run)])
    # the same figure, pixel for pixel, redrawn from the run's tables (an existing file alone passed
    # with any picture)
    np.testing.assert_array_equal(mpimg.imread(run / "knowledge_mlp.png"), drawn)
    assert drawn[..., :3].std() > 0.05  # a drawn figure, not a blank canvas
    assert not (tmp_path / "runs").exists()


def test_replot_records_the_noise_floor_it_refitted_above(recipe, tmp_path, capsys):
    """--replot DIR --noise_floor X refitted silently: the redrawn tables could not be told apart
    from the run's own fit. Every fit records its noise floor (summary, fit table); a replot says
    which it used, and without --noise_floor keeps the run's."""
    import csv

    def recorded(folder):
        summary = json.loads((folder / "knowledge_summary.json").read_text())
        with open(folder / "knowledge_fit.csv", newline="") as f:
            table = {r["quantity"]: float(r["fitted_above"]) for r in csv.DictReader(f)}
        return summary["noise_floor"], table["loss_increase"], summary["fits"]["loss_increase"]["floor"]

    run = tmp_path / "k"
    recipe.main(["knowledge", *COMMON, "--output_dir", str(run), "--model", "mlp", "--train_steps", "3", "--points", "4",
                 "--noise_floor", "0.002"])
    assert recorded(run) == (0.002, 0.002, 0.002)
    capsys.readouterr()
    recipe.main(["knowledge", "--replot", str(run), "--noise_floor", "0.05", "--output_dir", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert "refitted above a noise floor of 0.05 (--noise_floor; the fit read from there used 0.002)" in out, out
    assert recorded(tmp_path / "r") == (0.05, 0.05, 0.05) and recorded(run)[0] == 0.002
    refit = json.loads((tmp_path / "r" / "knowledge_summary.json").read_text())["meta"]["refit_of"]
    assert refit == {"folder": str(run), "noise_floor": 0.002}
    recipe.main(["knowledge", "--replot", str(tmp_path / "r")])  # no --noise_floor: the folder's own, not 1e-3
    assert "refitted above a noise floor of 0.05 (as before;" in capsys.readouterr().out
    assert recorded(tmp_path / "r")[0] == 0.05


def test_replot_of_a_folder_without_a_knowledge_run_names_the_option(recipe, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file.json").write_text("{}")
    for folder, says in ((tmp_path / "empty", "holds no knowledge_summary.json"),
                         (tmp_path / "missing", "is not a folder"),
                         (tmp_path / "a_file.json", "is not a folder")):  # named as --replot, not --output_dir
        with pytest.raises(SystemExit) as e:
            recipe.main(["knowledge", "--replot", str(folder)])
        msg = str(e.value.code)
        assert msg.startswith(f"recipes/diagnostics.py: error: --replot {folder}:") and says in msg, msg
        assert "Errno" not in msg
    assert not (tmp_path / "missing").exists()  # a mistyped --replot creates nothing
    (tmp_path / "empty" / "knowledge_summary.json").write_text("{not json")
    (tmp_path / "empty" / "knowledge_curve.csv").write_text("removed,accuracy\n")
    with pytest.raises(SystemExit, match="cannot be read"):
        recipe.main(["knowledge", "--replot", str(tmp_path / "empty")])


def test_every_option_of_every_subcommand_says_what_it_does_and_its_default(recipe):
    import argparse

    parser = recipe.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subs.choices) == {"dense-gradients", "collinearity", "knowledge", "progress"}
    problems = []
    for command, sub in subs.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            name = action.option_strings[0] if action.option_strings else action.dest
            if not action.help:
                problems.append(f"{command} {name}: no help")
                continue
            d = action.default
            has_default = not (d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, list) and not d))
            if has_default and f"(default: {d})" not in action.help:
                problems.append(f"{command} {name}: default {d!r} not shown")
            elif action.option_strings and not has_default and "default" not in action.help \
                    and not isinstance(action, argparse._StoreTrueAction):
                problems.append(f"{command} {name}: says nothing of what happens without it")
        sub.format_help()  # every help string formats
    assert problems == []


def test_dense_gradients_refuses_options_it_cannot_use(recipe, tmp_path):
    """--weights was silently ignored (a fresh DenseCat was trained and reported), and bad counts
    failed only after training."""
    base = ["dense-gradients", "--output_dir", str(tmp_path), "--kind", "mlp", "--batchnorm", "off"]
    with pytest.raises(SystemExit, match="--weights applies to collinearity and knowledge"):
        recipe.main(base + ["--weights", str(tmp_path / "w.pt")])
    with pytest.raises(SystemExit, match="--grad_batches must be an integer >= 1"):
        recipe.main(base + ["--grad_batches", "0"])
    with pytest.raises(SystemExit, match="--train_steps must be an integer >= 0"):
        recipe.main(base + ["--train_steps", "-5"])


def test_a_batch_of_one_for_an_mlp_with_batchnorm_is_refused_before_any_work(recipe, tmp_path, monkeypatch):
    """dense-gradients --batchnorm on --batch_size 1 stopped in its own brief training with PyTorch's
    raw 'Expected more than 1 value per channel when training'. The cnn nets take one sample (their
    BatchNorm averages over positions too)."""
    monkeypatch.setattr(recipe, "get_data", lambda *a, **k: pytest.fail("the data was read"))
    out = tmp_path / "out"
    base = ["dense-gradients", "--output_dir", str(out), "--batch_size", "1"]
    why = (r"--batch_size 1 cannot train the mlp DenseCat with BatchNorm \({}\): in training a BatchNorm normalises "
           r"each batch by the batch's own statistics, and one sample gives each unit a single value, which has none; "
           r"give --batch_size 2 or more, or {}, or --kind cnn$")
    for given, said, fix in ((["--kind", "mlp", "--batchnorm", "on"], "--batchnorm on", "--batchnorm off"),
                             (["--batchnorm", "both", "--compare"], "--batchnorm both and --compare's 'sgd \\+ "
                              "batchnorm'", "--batchnorm off without --compare"),
                             (["--kind", "mlp", "--batchnorm", "off", "--compare"], "--compare's 'sgd \\+ batchnorm'",
                              "without --compare")):
        with pytest.raises(SystemExit, match=why.format(said, fix)):
            recipe.main(base + given)
    assert not out.exists()


def test_the_brief_training_explains_a_batchnorm_given_one_sample(recipe):
    """Any other model with a BatchNorm that one sample leaves without statistics (a plugin's) is
    explained the way the diagnostics' own measurements are, naming --batch_size."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    loader = [(torch.randn(1, 4), torch.tensor([0]))]
    with pytest.raises(ValueError, match=r"^train m \(the command's brief training\): a BatchNorm normalises each "
                                         r"batch by the batch's own statistics .*; give --batch_size 2 or more$"):
        recipe.train_steps(model, loader, 2, torch.optim.SGD(model.parameters(), lr=0.1), desc="train m")


def test_a_failed_command_leaves_no_empty_output_folder(recipe, tmp_path, monkeypatch):
    """Missing data is found after the output folder is made (a refused --layer too, where the dataset
    does not know its input shape unread): the folders this command made are removed again while
    empty; one that existed before, or holds anything, stays."""
    bad_layer = ["dense-gradients", *COMMON, "--kind", "mlp", "--batchnorm", "off", "--depth", "2", "--width", "4",
                 "--train_steps", "1", "--layer", "nope"]
    no_data = ["collinearity", "--dataset", "folder", "--data-dir", str(tmp_path / "no_data"), "--train_steps", "1"]
    for i, argv in enumerate((bad_layer, no_data)):
        out = tmp_path / f"new{i}" / "deeper"
        with pytest.raises((KeyError, FileNotFoundError)):
            recipe.main([*argv, "--output_dir", str(out)])
        assert not (tmp_path / f"new{i}").exists(), argv[0]
    monkeypatch.chdir(tmp_path)  # the default folder, runs/diagnostics/collinearity, and its parents
    with pytest.raises(FileNotFoundError):
        recipe.main(no_data)
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs" / "diagnostics").mkdir(parents=True)
    (tmp_path / "runs" / "notes.txt").write_text("mine")
    with pytest.raises(FileNotFoundError):
        recipe.main(no_data)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["diagnostics", "notes.txt"]
    assert not any((tmp_path / "runs" / "diagnostics").iterdir())  # it existed: kept, empty as it was
    kept = tmp_path / "kept"
    (kept / "sub").mkdir(parents=True)  # made by another command
    with pytest.raises(FileNotFoundError):
        recipe.main([*no_data, "--output_dir", str(kept / "sub")])
    assert (kept / "sub").is_dir()


def test_a_multi_process_launch_is_refused_before_any_work(tmp_path):
    """Under `accelerate launch --num_processes 2` every process ran the whole command (all output
    twice, every file written by both) without a word: diagnostics splits no work."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    for rank, said in (("0", True), ("1", False)):
        env = dict(os.environ, WORLD_SIZE="2", RANK=rank, LOCAL_RANK=rank, OMP_NUM_THREADS="1")
        p = subprocess.run([sys.executable, str(root / "recipes" / "diagnostics.py"), "collinearity", *COMMON,
                            "--train_steps", "2", "--output_dir", str(out)], env=env, capture_output=True, text=True,
                           timeout=CHILD_TIMEOUT)
        assert (p.returncode != 0) == said and p.stdout == ""  # the others exit quietly: the launch fails once
        if said:
            assert p.stderr.count("\n") == 1 and "error: diagnostics runs in one process" in p.stderr
            assert "this launch started 2 (WORLD_SIZE)" in p.stderr
            assert "run it with plain `python recipes/diagnostics.py ...`" in p.stderr
        else:
            assert p.stderr == ""
        assert not out.exists()


def test_an_empty_output_dir_is_refused_before_any_work(recipe, tmp_path, monkeypatch):
    """--output_dir '' trained and measured, then failed with "[Errno 2] No such file or directory: ''"."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"--output_dir is empty \(''\): give a folder"):
        recipe.main(["collinearity", *COMMON, "--output_dir", "", "--train_steps", "2"])
    assert not list(tmp_path.iterdir())


def test_an_output_dir_that_is_a_file_is_refused_before_any_work(recipe, tmp_path, monkeypatch):
    """It failed with "File exists: afile" once the model had trained."""
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(recipe, "get_data", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(SystemExit, match=r"--output_dir \S*afile is a file, not a folder: give a folder path"):
        recipe.main(["collinearity", *COMMON, "--output_dir", str(tmp_path / "afile"), "--train_steps", "2"])


@pytest.mark.parametrize("command", ["collinearity", "knowledge"])
def test_negative_train_steps_are_refused_by_every_command(recipe, tmp_path, command, monkeypatch):
    """collinearity and knowledge took --train_steps -5 as 0 steps and reported an untrained model."""
    monkeypatch.setattr(recipe, "get_data", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(SystemExit, match="--train_steps must be an integer >= 0, got -5"):
        recipe.main([command, *COMMON, "--output_dir", str(tmp_path / "out"), "--train_steps", "-5"])
    assert not (tmp_path / "out").exists()


def test_progress_into_a_path_it_cannot_write_names_the_path_and_the_fix(recipe, tmp_path, capsys):
    """A folder where progress.png goes failed with "Is a directory: .progress.png.<pid>-<hex>.tmp.png",
    naming a temporary file the user never asked for; an --output_dir that is a file, "File exists"."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_text(json.dumps({"step": 5, "pruned": 3, "grown": 1, "density": 0.9}) + "\n")
    (run / "metrics.csv").write_text("step,split,loss,accuracy\n0,train,2.0,0.1\n6,holdout,1.5,0.5\n")
    (run / "progress.png").mkdir()
    with pytest.raises(SystemExit, match=r"run/progress\.png is a folder, so progress cannot write its file there: "
                                         r"move it away, or give another --output_dir"):
        recipe.main(["progress", str(run)])
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit, match=r"--output_dir \S*afile is a file, not a folder"):
        recipe.main(["progress", str(run), "--output_dir", str(tmp_path / "afile")])
    recipe.main(["progress", str(run), "--output_dir", str(tmp_path / "out")])
    assert (tmp_path / "out" / "progress.png").is_file()


def test_plugins_given_several_times_add_up(recipe):
    """--plugins a.py --plugins b.py loaded only b.py (argparse kept the last one's values)."""
    for command in ("collinearity", "knowledge", "dense-gradients"):
        args = recipe.build_parser().parse_args([command, "--plugins", "a.py", "--plugins", "b.py", "c.py"])
        assert args.plugins == ["a.py", "b.py", "c.py"]
        assert recipe.build_parser().parse_args([command]).plugins == []


def test_log_x_draws_the_knowledge_fit_panels_on_a_log_axis_and_replot_takes_it(recipe, tmp_path, monkeypatch):
    from adaptive.diagnostics import knowledge as knowledge_module

    figs = []
    monkeypatch.setattr(knowledge_module, "save_figure", lambda fig, path, svg=False: figs.append(fig) or [str(path)])
    run = tmp_path / "k"
    recipe.main(["knowledge", *COMMON, "--output_dir", str(run), "--model", "mlp", "--train_steps", "3", "--points", "3",
                 "--log_x"])
    recipe.main(["knowledge", "--replot", str(run)])
    recipe.main(["knowledge", "--replot", str(run), "--log_x"])
    assert [f.axes[2].get_xscale() for f in figs] == ["log", "linear", "log"]


def test_knowledge_order_batches_not_given_reads_the_held_out_part_without_a_warning(recipe, tmp_path):
    """--order_batches defaulted to 20: every gradient-based order on the default dataset (digits, a held-out
    part of 2 batches) warned 'read 2 batches of the 20 asked', though nobody had asked for 20 and the
    order read all there was. Not given: up to 20; a count given beyond the held-out part still warns."""
    args = ["knowledge", *COMMON, "--model", "mlp", "--train_steps", "3", "--points", "3", "--estimator", "taylor"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recipe.main([*args, "--output_dir", str(tmp_path / "a")])
    note = json.loads((tmp_path / "a" / "knowledge_summary.json").read_text())["note"]
    # (digits' 143 held-out images in batches of 64: the short last batch is one observation, as each other is)
    assert "143 held-out TRAIN images in batches of 64 (the last of 15, which counts as much as each other)" in note
    with pytest.warns(UserWarning, match=r"the taylor removal order read \d batches of the 20 asked"):
        recipe.main([*args, "--output_dir", str(tmp_path / "b"), "--order_batches", "20"])


def test_a_random_order_reads_no_held_out_data_and_says_so(recipe, tmp_path):
    """Every estimator but magnitude was given the held-out part: --estimator random (which reads no data)
    with --holdout 0 was refused, after the brief training, as "the random order needs held-out TRAIN data",
    and with a held-out part its note, summary and figure said "order from 143 held-out TRAIN images"."""
    args = ["knowledge", *COMMON, "--model", "mlp", "--train_steps", "1", "--points", "3", "--estimator", "random"]
    recipe.main([*args, "--output_dir", str(tmp_path / "a"), "--holdout", "0"])
    recipe.main([*args, "--output_dir", str(tmp_path / "b")])
    for run in ("a", "b"):
        note = json.loads((tmp_path / run / "knowledge_summary.json").read_text())["note"]
        assert note.startswith("order from no data (random); accuracy on ") and "held-out" not in note


def test_what_does_not_fit_the_model_is_refused_before_any_data_is_read(recipe, tmp_path, monkeypatch):
    """Where the dataset knows its classes and input shape unread (digits does), each command builds
    its model before the data (adaptive.data.model_before_data): a --weights file of another model,
    an unknown --model and a --layer the DenseCat nets lack were refused once the data had loaded."""
    from adaptive.models import WeightsMismatchError, build_model

    monkeypatch.setattr(recipe, "get_data", lambda *a, **k: pytest.fail("the data was read"))
    out = tmp_path / "out"
    w = tmp_path / "w.pt"
    torch.save(build_model("mlp", num_classes=3, in_shape=(1, 8, 8)).state_dict(), w)  # 3 classes, not 10
    for command in ("collinearity", "knowledge"):
        with pytest.raises(WeightsMismatchError, match="does not match model MLP"):
            recipe.main([command, *COMMON, "--output_dir", str(out), "--weights", str(w)])
        with pytest.raises(ValueError, match="unknown model 'nope'"):
            recipe.main([command, *COMMON, "--output_dir", str(out), "--model", "nope"])
    with pytest.raises(KeyError, match=r"DenseCat has no prunable layer 'nope'; its layers are \['layers.0', "):
        recipe.main(["dense-gradients", *COMMON, "--output_dir", str(out), "--kind", "both", "--depth", "2",
                     "--width", "4", "--layer", "nope"])
    assert not out.exists()


def test_progress_takes_no_data_or_model_options_it_would_ignore(recipe, tmp_path, capsys):
    """progress reads a finished run: its help listed --dataset, --model, --lr, --train_steps ... (every
    other command's options), and `progress RUN --lr 7 --model resnet20` ran, reading none of them."""
    import argparse

    subs = next(a for a in recipe.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    options = {s for a in subs.choices["progress"]._actions for s in a.option_strings}
    assert options == {"-h", "--help", "--total_synapses", "--output_dir", "--output-dir", "--svg", "--overwrite"}
    assert "--model" in {s for a in subs.choices["knowledge"]._actions for s in a.option_strings}
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_text(json.dumps({"step": 5, "pruned": 3, "grown": 1, "density": 0.9}) + "\n")
    (run / "metrics.csv").write_text("step,split,loss,accuracy\n0,train,2.0,0.1\n6,holdout,1.5,0.5\n")
    with pytest.raises(SystemExit):
        recipe.main(["progress", str(run), "--lr", "7"])
    assert "unrecognized arguments: --lr 7" in capsys.readouterr().err
    recipe.main(["progress", str(run), "--svg", "--output_dir", str(tmp_path / "out")])
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"progress.png", "progress.svg"}
    from _scripts import ROOT

    readme = " ".join((ROOT / "docs" / "diagnostics.md").read_text().split())  # it said every command took the data/model options
    assert "Every command takes `--output_dir`, and every one but `progress` (which reads a finished run" in readme


def pruned_run_folder(folder, density=0.3):
    """A run folder as recipes/adaptive.py leaves it: dense_state_dict.pt beside connectome.safetensors,
    of the default mlp on digits."""
    from adaptive import Connectome
    from adaptive.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, in_shape=(1, 8, 8))
    conn = Connectome(model)
    g = torch.Generator().manual_seed(1)
    conn.set_masks({n: torch.rand(m.shape, generator=g) < density for n, m in conn.masks.items()})
    folder.mkdir()
    torch.save(conn.dense_state_dict(), folder / "dense_state_dict.pt")
    conn.save(folder / "connectome.safetensors")
    return conn


def test_collinearity_of_a_pruned_run_measures_its_live_synapses(recipe, tmp_path, capsys):
    """--weights of a run folder: the connectome beside it is loaded and passed, so only live
    synapses are measured (the pruned positions' dense gradients were counted as weights)."""
    conn = pruned_run_folder(tmp_path / "run")
    weights = str(tmp_path / "run" / "dense_state_dict.pt")
    for extra in ([], ["--connectome", str(tmp_path / "run" / "connectome.safetensors")]):
        out = tmp_path / f"out{len(extra)}"
        recipe.main(["collinearity", *COMMON, "--output_dir", str(out), "--weights", weights, "--batches", "2", *extra])
        said = capsys.readouterr().out
        assert f"{conn.num_live():,} of its {conn.num_synapses():,} synapses live" in said
        rows = (out / "collinearity_layers.csv").read_text().splitlines()
        header = rows[0].split(",")
        live = {n: int(m.sum()) for n, m in conn.masks.items()}
        got = {r.split(",")[0]: int(r.split(",")[header.index("weights")]) for r in rows[1:]}
        assert got == live
        assert sum(int(r.split(",")[header.index("pruned")]) for r in rows[1:]) == conn.num_synapses() - conn.num_live()
    with pytest.raises(SystemExit, match="--connectome gives the masks of a pruned model"):
        recipe.main(["collinearity", *COMMON, "--output_dir", str(tmp_path / "o"), "--connectome",
                     str(tmp_path / "run" / "connectome.safetensors")])
    with pytest.raises(SystemExit, match="--connectome applies to collinearity and knowledge"):
        recipe.main(["dense-gradients", *COMMON, "--output_dir", str(tmp_path / "o"), "--connectome",
                     str(tmp_path / "run" / "connectome.safetensors")])


def test_knowledge_of_a_pruned_run_starts_from_its_pruning(recipe, tmp_path):
    conn = pruned_run_folder(tmp_path / "run")
    recipe.main(["knowledge", *COMMON, "--output_dir", str(tmp_path / "out"), "--weights",
                 str(tmp_path / "run" / "dense_state_dict.pt"), "--points", "2", "--eval_batches", "1"])
    summary = json.loads((tmp_path / "out" / "knowledge_summary.json").read_text())
    assert summary["pruned_before"] == conn.num_synapses() - conn.num_live()
    assert summary["total_weights"] == conn.num_live()


def test_a_one_shot_curve_of_given_weights_reads_no_train_batch(recipe, tmp_path):
    """knowledge built its fine-tune loader of TRAIN batches whether or not anything read it, so a
    one-shot curve of given --weights on a train part smaller than one --batch_size batch was refused
    ("the train part has 90 examples, fewer than one batch of 128"); a fine-tune still is."""
    pruned_run_folder(tmp_path / "run")
    args = ["knowledge", "--dataset", "digits", "--subset", "100", "--batch_size", "128", "--weights",
            str(tmp_path / "run" / "dense_state_dict.pt"), "--points", "2", "--eval_batches", "1"]
    recipe.main([*args, "--output_dir", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "knowledge_summary.json").read_text())["finetune_batches"] == 0
    with pytest.raises(ValueError, match="fewer than one batch of 128"):
        recipe.main([*args, "--output_dir", str(tmp_path / "ft"), "--finetune_batches", "1"])


def test_a_connectome_beside_weights_of_another_run_is_refused(recipe, tmp_path, capsys):
    """The connectome.safetensors beside --weights belongs to those weights only if every weight it
    prunes is 0 in the file: one of another run (same model, other masks) was loaded silently,
    zeroing live weights of the file and measuring another model."""
    pruned_run_folder(tmp_path / "run")
    other = pruned_run_folder(tmp_path / "other", density=0.6)
    weights = tmp_path / "run" / "mine.pt"
    torch.save(torch.load(tmp_path / "other" / "dense_state_dict.pt", weights_only=True), weights)
    with pytest.raises(SystemExit, match=r"beside --weights .* prunes [\d,]+ weights that --weights .* holds nonzero.*"
                                         r"--connectome none"):
        recipe.main(["collinearity", *COMMON, "--output_dir", str(tmp_path / "o"), "--weights", str(weights),
                     "--batches", "2"])
    capsys.readouterr()
    recipe.main(["collinearity", *COMMON, "--output_dir", str(tmp_path / "dense"), "--weights", str(weights),
                 "--batches", "2", "--connectome", "none"])
    assert "synapses live" not in capsys.readouterr().out
    rows = (tmp_path / "dense" / "collinearity_layers.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert "pruned" not in header
    assert sum(int(r.split(",")[header.index("weights")]) for r in rows[1:]) == other.num_synapses()
    # given on purpose (a pruned_state_dict's mask applied to other weights): done, and said
    recipe.main(["collinearity", *COMMON, "--output_dir", str(tmp_path / "given"), "--weights", str(weights),
                 "--batches", "2", "--connectome", str(tmp_path / "run" / "connectome.safetensors")])
    assert re.search(r"--connectome prunes [\d,]+ weights that --weights holds nonzero", capsys.readouterr().out)


def test_a_refusal_of_the_diagnostics_command_ends_with_status_2_and_one_line():
    """Its own refusals (SystemExit with the error line) ended with status 1; a fixable problem ends
    every recipe with status 2 (docs/training.md), as its argparse errors did."""
    import subprocess
    import sys
    from pathlib import Path

    p = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "recipes" / "diagnostics.py"), "dense-gradients", "--output_dir", " "],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       timeout=CHILD_TIMEOUT)
    assert p.returncode == 2, p.stderr
    assert p.stderr == "recipes/diagnostics.py: error: --output_dir is empty (' '): give a folder, or leave it out " \
                       "for the command's default\n"


def test_an_empty_data_dir_is_refused_before_any_work(recipe, tmp_path, monkeypatch):
    """--data-dir '' (an unset shell variable) read $ADAPTIVE_DATA or ../shared/data without a word."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"--data_dir is empty \(''\): give a data folder, or leave --data_dir out"):
        recipe.main(["collinearity", *COMMON, "--data-dir", "", "--train_steps", "2", "--output_dir", "o"])
    assert not list(tmp_path.iterdir())


def test_collinearity_on_train_says_it_reads_train_less_its_held_out_part(recipe, tmp_path, capsys, monkeypatch):
    """The default --split train reads TRAIN less its held-out part, yet the console line and the figure
    titles said "digits TRAIN"; with --holdout 0 it reads all of TRAIN and says just that."""
    import importlib

    module = importlib.import_module("adaptive.diagnostics.collinearity")
    titles = []
    monkeypatch.setattr(module, "save_figure", lambda fig, path, svg=False: titles.append(fig.axes[0].get_title()) or [str(path)])
    for holdout, split in (("0.1", "digits TRAIN, less its held-out part"), ("0", "digits TRAIN")):
        titles.clear()
        recipe.main(["collinearity", *COMMON, "--output_dir", str(tmp_path / holdout), "--model", "mlp",
                     "--train_steps", "1", "--batches", "2", "--holdout", holdout])
        said = capsys.readouterr().out
        line = next(ln for ln in said.splitlines() if "collinearity per layer" in ln)
        assert f"of {split})" in line, line
        assert len(titles) == 3 and all(f"gradients on {split}, eval mode" in t for t in titles), titles


@pytest.mark.parametrize("command, name, extra", [
    ("knowledge", "knowledge_summary.json", []),
    ("collinearity", "collinearity_fraction_above.md", []),
    ("dense-gradients", "band_ratios.csv", ["--kind", "mlp", "--batchnorm", "off"]),
    ("knowledge", "knowledge_mlp.svg", ["--svg"]),
])
def test_a_folder_where_a_command_writes_a_file_is_refused_before_any_work(recipe, tmp_path, monkeypatch, command,
                                                                            name, extra):
    """A folder at the name of a file a command writes was found only at that write, after the whole
    measurement: knowledge left its curve without the summary --replot reads, collinearity three of
    its four tables; only progress checked first."""
    out = tmp_path / "out"
    (out / name).mkdir(parents=True)
    monkeypatch.setattr(recipe, "get_data", lambda *a, **k: pytest.fail("data loaded"))
    args = [command, *(COMMON if command != "dense-gradients" else []), "--output_dir", str(out), *extra]
    if command != "dense-gradients":
        args += ["--model", "mlp"]
    with pytest.raises(SystemExit, match=rf"out/{re.escape(name)} is a folder, so {command} cannot write its file "
                                         r"there: move it away, or give another --output_dir"):
        recipe.main(args)
    assert sorted(p.name for p in out.iterdir()) == [name]


def test_a_layer_reading_one_depth_is_refused_before_any_training(recipe, tmp_path, monkeypatch):
    """dense-gradients --layer layers.0 (the docs' timing example) trained every net and then warned,
    net after net, that the layer reads one depth: its band ratio NaN, nothing compared."""
    monkeypatch.setattr(recipe, "get_data", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(SystemExit, match=r"--layer layers\.0 reads signals of one depth only \(0\) in the mlp "
                                         r"DenseCat net: one band, nothing to compare .*classifier \(the default\), "
                                         r"or layers\.K for K >= 1"):
        recipe.main(["dense-gradients", "--kind", "mlp", "--batchnorm", "off", "--layer", "layers.0",
                     "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_progress_bars_follow_progress_and_no_progress(recipe, tmp_path, capsys):
    """diagnostics had no way to turn its bars off on a terminal (--no-progress was an unknown
    argument, and --dataset-kw progress was refused): --progress draws them into any stderr,
    --no-progress none, the default only on a terminal (a test's captured stderr is none)."""
    from adaptive.diagnostics import _common

    def run(*flag):
        recipe.main(["collinearity", *COMMON, "--output_dir", str(tmp_path / "o"), "--model", "mlp", "--train_steps",
                     "3", "--batches", "3", "--grad_batch_size", "32", "--overwrite", *flag])
        assert _common._BARS is None  # left as found
        return capsys.readouterr().err

    drawn = run("--progress")
    assert "train mlp:" in drawn and "collinearity:" in drawn and "it/s" in drawn
    assert "it/s" not in run() and "it/s" not in run("--no-progress")
    # an API user's own setting is given back after a run (it was reset to None, bars only on a terminal)
    _common.set_progress(False)
    try:
        recipe.main(["collinearity", *COMMON, "--output_dir", str(tmp_path / "o"), "--model", "mlp", "--train_steps",
                     "3", "--batches", "3", "--grad_batch_size", "32", "--overwrite", "--progress"])
        assert _common._BARS is False
    finally:
        _common.set_progress(None)
    with pytest.raises(TypeError, match="set_progress takes True, False or None"):
        _common.set_progress("no")


def test_dense_gradients_and_collinearity_record_their_settings(recipe, tmp_path):
    """dense-gradients and collinearity wrote no record of their settings (knowledge keeps them in its summary):
    a results folder could not be traced back to the seed, steps, sizes or weights that made it. Each writes
    <command>_settings.json with its first file, and it is one of the command's files (a rerun rewrites it)."""
    recipe.main(["dense-gradients", *COMMON, "--output_dir", str(tmp_path / "d"), "--kind", "mlp", "--batchnorm", "off",
                 "--depth", "2", "--width", "4", "--train_steps", "2", "--grad_batches", "2", "--seed", "3"])
    dense = json.loads((tmp_path / "d" / "dense_gradients_settings.json").read_text())
    assert dense["command"] == "dense-gradients" and dense["torch"] == torch.__version__
    assert (dense["settings"]["seed"], dense["settings"]["kind"], dense["settings"]["depth"],
            dense["settings"]["train_steps"], dense["settings"]["lr"]) == (3, "mlp", 2, 2, recipe.build_parser().parse_args(
                ["dense-gradients"]).lr)
    assert "func" not in dense["settings"] and "command" not in dense["settings"]
    recipe.main(["collinearity", *COMMON, "--output_dir", str(tmp_path / "c"), "--model", "mlp", "--train_steps", "3",
                 "--batches", "3", "--grad_batch_size", "32"])
    coll = json.loads((tmp_path / "c" / "collinearity_settings.json").read_text())
    assert coll["command"] == "collinearity"
    assert (coll["settings"]["model"], coll["settings"]["batches"], coll["settings"]["grad_batch_size"],
            coll["settings"]["weights"]) == ("mlp", 3, 32, None)
    assert not (tmp_path / "c" / "dense_gradients_settings.json").exists()


def test_knowledge_records_its_settings_and_which_split_tuned_it(recipe, tmp_path):
    """knowledge_summary.json kept no seed, subsets, held-out share, rates or weights file (a results
    folder could not be traced to its command), and the note did not say that a fine-tune read TRAIN
    less its held-out part; an order read in one batch was called "the last of 143, which counts as
    much as each other" (of none)."""
    recipe.main(["knowledge", *COMMON, "--model", "mlp", "--train_steps", "3", "--points", "3", "--estimator", "taylor",
                 "--eval_batch_size", "256", "--finetune_batches", "2", "--output_dir", str(tmp_path / "k")])
    summary = json.loads((tmp_path / "k" / "knowledge_summary.json").read_text())
    settings = summary["meta"]["settings"]
    assert (settings["seed"], settings["model"], settings["finetune_batches"], settings["estimator"]) == (0, "mlp", 2,
                                                                                                       "taylor")
    assert {"subset", "test_subset", "holdout", "finetune_lr", "eval_batches", "weights", "plugins"} <= set(settings)
    note = summary["note"]
    assert "order from 143 held-out TRAIN images in batches of 256;" in note and "the last of" not in note
    assert note.endswith("; fine-tuned on TRAIN less its held-out part")


def test_knowledge_builds_the_test_split_only_after_its_removal_order(recipe, tmp_path, monkeypatch):
    """knowledge handed the diagnostic a shuffled loader of the test split made at once, whose sampler asked the
    lazy split's length and built it (a folder scanned, a file decoded) before the removal order was computed
    from held-out data: the test split is now built at its first read, after the order."""
    from adaptive.data import base
    import adaptive.diagnostics.knowledge as K

    log = []
    real_build, real_scores = base.LazyDataset.dataset.fget, K.removal_scores

    def build(self):
        if self._dataset is None:
            log.append("test built")
        return real_build(self)

    def scores(*a, **k):
        log.append("order")
        return real_scores(*a, **k)

    monkeypatch.setattr(base.LazyDataset, "dataset", property(build))
    monkeypatch.setattr(K, "removal_scores", scores)
    recipe.main(["knowledge", *COMMON, "--model", "mlp", "--train_steps", "3", "--points", "3", "--estimator", "taylor",
                 "--output_dir", str(tmp_path / "k")])
    assert log == ["order", "test built"], log
