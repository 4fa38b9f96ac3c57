"""recipes/diagnostics.py: a rerun into a folder that holds an earlier run's files. A rerun with other
settings left the earlier run's files it does not write again (another --kind's figures, another
--model's, SVGs) beside its own, where a reader took them for the new results. Now such a run is
refused before any work, naming them, unless --overwrite, which deletes those and no other file."""
import json
import os

import pytest
import torch
from _scripts import load_script

torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")

COMMON = ["--dataset", "digits", "--batch_size", "64", "--seed", "0"]
DENSE = ["dense-gradients", *COMMON, "--batchnorm", "off", "--depth", "2", "--width", "4", "--train_steps", "2",
         "--grad_batches", "2"]
KNOWLEDGE = ["knowledge", *COMMON, "--train_steps", "2", "--points", "3"]


@pytest.fixture(scope="module")
def recipe():
    return load_script("recipes/diagnostics.py", "diagnostics_recipe_folder")


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def _no_work(recipe, monkeypatch):
    """Make any data loading fail: a refusal must come before it."""
    def fail(*a, **k):
        raise AssertionError("the data was read before the refusal")

    monkeypatch.setattr(recipe, "get_data", fail)


def test_dense_gradients_with_another_kind_is_refused_and_overwrite_deletes_only_the_earlier_runs_files(
        recipe, tmp_path, monkeypatch, capsys):
    out = tmp_path / "dg"
    recipe.main([*DENSE, "--kind", "cnn", "--output_dir", str(out)])
    (out / "my_notes.txt").write_text("mine")
    (out / "collinearity_layers.csv").write_text("another command's")
    earlier = _names(out)
    assert "gradients_by_depth_cnn.png" in earlier
    with monkeypatch.context() as m:
        _no_work(recipe, m)
        with pytest.raises(SystemExit, match=r"holds files of an earlier dense-gradients run that this one does not "
                                             r"write \(gradients_by_depth_cnn\.png, gradients_by_depth_cnn\.csv, "
                                             r"gradients_by_depth_cnn\.md\).*add --overwrite to delete them"):
            recipe.main([*DENSE, "--kind", "mlp", "--output_dir", str(out)])
    assert _names(out) == earlier  # refused: nothing written, nothing deleted
    recipe.main([*DENSE, "--kind", "cnn", "--output_dir", str(out)])  # the same settings again: no refusal
    assert _names(out) == earlier
    capsys.readouterr()
    recipe.main([*DENSE, "--kind", "mlp", "--output_dir", str(out), "--overwrite"])
    assert "--overwrite: deleted 3 files of an earlier dense-gradients run" in capsys.readouterr().out
    assert _names(out) == ["band_ratios.csv", "band_ratios.md", "collinearity_layers.csv", "dense_gradients_settings.json",
                           "gradients_by_depth_mlp.csv", "gradients_by_depth_mlp.md", "gradients_by_depth_mlp.png",
                           "my_notes.txt"]
    assert "mlp" in (out / "band_ratios.md").read_text() and "cnn" not in (out / "band_ratios.md").read_text()


def test_knowledge_with_another_model_or_without_svg_is_refused_and_overwrite_keeps_other_files(
        recipe, tmp_path, monkeypatch):
    out = tmp_path / "k"
    recipe.main([*KNOWLEDGE, "--model", "mlp", "--svg", "--output_dir", str(out)])
    (out / "knowledge_notes.png").write_text("a user's figure, not a model's")
    with monkeypatch.context() as m:
        _no_work(recipe, m)
        with pytest.raises(SystemExit, match=r"knowledge_mlp\.png, knowledge_mlp\.svg\)"):
            recipe.main([*KNOWLEDGE, "--model", "lenet300", "--output_dir", str(out)])
        with pytest.raises(SystemExit, match=r"\(knowledge_mlp\.svg\).*add --svg to write them again, add --overwrite"):
            recipe.main([*KNOWLEDGE, "--model", "mlp", "--output_dir", str(out)])
    recipe.main([*KNOWLEDGE, "--model", "lenet300", "--output_dir", str(out), "--overwrite"])
    assert _names(out) == ["knowledge_curve.csv", "knowledge_curve.md", "knowledge_fit.csv", "knowledge_fit.md",
                           "knowledge_lenet300.png", "knowledge_notes.png", "knowledge_summary.json"]
    assert json.loads((out / "knowledge_summary.json").read_text())["meta"]["model"] == "lenet300"


def test_replot_into_its_run_folder_refuses_to_leave_an_older_figure(recipe, tmp_path):
    run = tmp_path / "run"
    recipe.main([*KNOWLEDGE, "--model", "mlp", "--svg", "--output_dir", str(run)])
    with pytest.raises(SystemExit, match=r"\(knowledge_mlp\.svg\).*add --svg"):
        recipe.main(["knowledge", "--replot", str(run)])  # a refit whose SVG would be the old fit's
    recipe.main(["knowledge", "--replot", str(run), "--overwrite"])
    assert not (run / "knowledge_mlp.svg").exists() and (run / "knowledge_curve.csv").exists()


def test_overwrite_deletes_nothing_when_a_check_stops_the_run(recipe, tmp_path):
    out = tmp_path / "c"
    recipe.main(["collinearity", *COMMON, "--model", "mlp", "--train_steps", "1", "--batches", "2", "--svg",
                 "--output_dir", str(out)])
    earlier = _names(out)
    with pytest.raises(ValueError, match="fewer than one batch"):  # found once the data is read
        recipe.main(["collinearity", *COMMON, "--model", "mlp", "--train_steps", "1", "--subset", "60",
                     "--output_dir", str(out), "--overwrite"])
    assert _names(out) == earlier


def test_progress_deletes_only_its_own_figure_never_the_runs_files(recipe, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_text(json.dumps({"step": 5, "pruned": 3, "grown": 1, "density": 0.9}) + "\n")
    (run / "metrics.csv").write_text("step,split,loss,accuracy\n0,train,2.0,0.1\n6,holdout,1.5,0.5\n")
    for name in ("config.yaml", "summary.json", "loss_accuracy.png", "density.svg", "connectome.safetensors"):
        (run / name).write_text("the run's")
    recipe.main(["progress", str(run), "--svg"])
    earlier = _names(run)
    with pytest.raises(SystemExit, match=r"earlier progress run that this one does not write \(progress\.svg\).*"
                                         r"add --svg to write them again, add --overwrite"):
        recipe.main(["progress", str(run)])
    assert _names(run) == earlier
    recipe.main(["progress", str(run), "--overwrite"])
    assert _names(run) == sorted(set(earlier) - {"progress.svg"})
    assert (run / "config.yaml").read_text() == "the run's"


def test_a_knowledge_figure_in_a_folder_that_holds_no_knowledge_run_is_never_counted_or_deleted(recipe, tmp_path):
    """A knowledge_resnet20.png in a folder without a knowledge_summary.json (docs/figures holds the
    docs' copy) is no earlier run's figure: it was refused as one, and --overwrite deleted it."""
    out = tmp_path / "figures"
    out.mkdir()
    (out / "knowledge_resnet20.png").write_text("the docs' figure")
    recipe.main([*KNOWLEDGE, "--model", "mlp", "--output_dir", str(out)])  # not refused
    recipe.main([*KNOWLEDGE, "--model", "mlp", "--output_dir", str(out), "--overwrite"])
    assert (out / "knowledge_resnet20.png").read_text() == "the docs' figure"


def test_only_the_figure_of_the_run_the_summary_records_is_an_earlier_runs(recipe, tmp_path, monkeypatch, capsys):
    """Beside a run of mlp, a knowledge_lenet5.png the user put there (a registered model's name) is
    not that run's figure: the refusal names only knowledge_mlp.png, and --overwrite deletes only it."""
    out = tmp_path / "k"
    recipe.main([*KNOWLEDGE, "--model", "mlp", "--output_dir", str(out)])
    (out / "knowledge_lenet5.png").write_text("a copy the user keeps beside it")
    with monkeypatch.context() as m:
        _no_work(recipe, m)
        with pytest.raises(SystemExit, match=r"does not write \(knowledge_mlp\.png\), which"):
            recipe.main([*KNOWLEDGE, "--model", "lenet300", "--output_dir", str(out)])
    capsys.readouterr()
    recipe.main([*KNOWLEDGE, "--model", "lenet300", "--output_dir", str(out), "--overwrite"])
    assert "deleted 1 file of an earlier knowledge run" in capsys.readouterr().out
    assert (out / "knowledge_lenet5.png").read_text() == "a copy the user keeps beside it"
    assert not (out / "knowledge_mlp.png").exists() and (out / "knowledge_lenet300.png").exists()


def test_a_summary_recording_a_path_as_its_model_deletes_nothing_outside_the_folder(recipe, tmp_path):
    out = tmp_path / "k"
    recipe.main([*KNOWLEDGE, "--model", "mlp", "--output_dir", str(out)])
    (out / "knowledge_sub").mkdir()
    (out / "knowledge_sub" / "x.png").write_text("not the command's")
    summary = json.loads((out / "knowledge_summary.json").read_text())
    summary["meta"]["model"] = "sub/x"
    (out / "knowledge_summary.json").write_text(json.dumps(summary))
    recipe.main([*KNOWLEDGE, "--model", "mlp", "--output_dir", str(out), "--overwrite"])
    assert (out / "knowledge_sub" / "x.png").read_text() == "not the command's"


def test_compare_without_held_out_data_is_refused_before_overwrite_deletes_anything(recipe, tmp_path, monkeypatch):
    """--compare --holdout 0 failed in --compare's evaluation, after --overwrite had deleted the
    earlier run's files and the new figures were written: the earlier results lost, the new ones half."""
    out = tmp_path / "dg"
    recipe.main([*DENSE, "--kind", "cnn", "--output_dir", str(out)])
    earlier = _names(out)
    with monkeypatch.context() as m:
        _no_work(recipe, m)
        with pytest.raises(SystemExit, match=r"--compare reports each variant's held-out .*--holdout 0 leaves no "
                                             r"held-out TRAIN data: use --holdout 0\.1"):
            recipe.main([*DENSE, "--kind", "mlp", "--compare", "--compare_steps", "1", "--holdout", "0",
                         "--output_dir", str(out), "--overwrite"])
    assert _names(out) == earlier
