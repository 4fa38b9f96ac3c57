"""recipes/benchmarks/gradual_pruning.py: every row is a recipe run on the pretrained network, the
one-shot magnitude row's mask is torch.nn.utils.prune's, and bad settings fail before any run."""
import re

import pytest

import adaptive.paths as paths
from _scripts import assert_refused_before_any_run, load_script  # noqa: E402

SHARED = paths.SHARED_DATA
HAVE_DATA = (SHARED / "cifar10-jpeg" / "test").is_dir() and (SHARED / "resnet-cifar10" / "resnet20-12fca82f.th").is_file()


def _bench():
    return load_script("recipes/benchmarks/gradual_pruning.py", "gradual_pruning_bench")


@pytest.mark.parametrize("argv, msg", [
    (["--rows", "dense,rigl"], "--rows: unknown ['rigl']"),
    (["--rows", ","], "--rows: unknown none given"),
    (["--density", "1.0"], "--density must be in (0, 1)"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--lr", "nan"], "--lr a finite number > 0"),
    (["--subset", "0"], "--subset must be >= 1"),
    (["--rows", "gmp,dense,gmp"], "--rows names a row more than once"),
    (["--seed", "-1"], "--seed must be in [0, 2**32 - 1]"),
])
def test_bad_settings_fail_before_any_run(argv, msg, capsys, monkeypatch, tmp_path):
    assert_refused_before_any_run(_bench(), argv + ["--output", str(tmp_path / "t.md"), "--data-dir", str(SHARED)], msg,
                                  tmp_path / "t.md", capsys, monkeypatch, runner="run_row")


@pytest.mark.skipif(not HAVE_DATA, reason=f"shared cifar10-jpeg or resnet20 absent under {SHARED}")
def test_rows_run_the_recipe_and_the_one_shot_mask_is_torchs(tmp_path):
    out = tmp_path / "t.md"
    results, check = _bench().main(["--rows", "dense,one-shot magnitude", "--subset", "300", "--test-subset", "100",
                                    "--epochs", "1", "--density", "0.2", "--runs", str(tmp_path / "runs"),
                                    "--output", str(out), "--no-progress", "--data-dir", str(SHARED)])
    dense, oneshot = results["dense"], results["one-shot magnitude"]
    assert dense["density"] == 1.0 and dense["live"] == dense["synapses"] == 268336
    assert oneshot["live"] == round(0.2 * 268336) and check == 0
    assert dense["test_examples"] == oneshot["test_examples"] == 100
    text = out.read_text()
    for name, r in results.items():  # the table shows what the runs' own summaries say
        row = re.search(rf"^\| {name} \| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \|", text, re.M)
        assert row and int(row[1].replace(",", "")) == r["live"] and float(row[3]) == round(100 * r["test_accuracy"], 2)
    assert "0 entries differ" in text and "a 300-image subset of TRAIN" in text
    assert out.with_suffix(".png").stat().st_size > 10_000 and "Figure: " in text
    # the command shown reproduces the table: every setting, not where the runs went
    shown = next(ln for ln in text.splitlines() if ln.startswith("Reproduce: "))
    assert shown == ("Reproduce: `python recipes/benchmarks/gradual_pruning.py --rows 'dense,one-shot magnitude' "
                     f"--subset 300 --test-subset 100 --epochs 1 --density 0.2 --data-dir {SHARED}`")
    assert (tmp_path / "runs" / "one-shot_magnitude" / "connectome.safetensors").is_file()


def test_a_dashed_row_is_drawn_over_a_solid_one_on_the_same_points(tmp_path, monkeypatch):
    """One-shot magnitude (dashed) and utility/curvature (solid) both hold density 0.1 from step 0: the solid line,
    drawn later, covered the dashed one, and docs/figures/gradual_pruning_resnet20.png showed no one-shot density. Every
    broken line now lies over every solid one."""
    import json

    import matplotlib.pyplot as plt

    from adaptive import plots

    bench = _bench()
    names = ["dense", "one-shot magnitude", "gmp", "gmp/curvature", "threshold/curvature",
             "threshold/curvature (cubic pace)", "utility/curvature"]
    for name in names:
        folder = bench.run_folder(tmp_path, name)
        folder.mkdir()
        (folder / "metrics.csv").write_text("step,epoch,split,loss,accuracy\n10,0,train,1.0,0.5\n20,0,train,0.9,0.6\n"
                                            "20,0,holdout,0.9,0.6\n")
        (folder / "events.jsonl").write_text(json.dumps({"kind": "init", "step": 0, "density": 0.1}) + "\n")
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, plt, path: figs.append(fig) or path)
    bench.plot_rows(tmp_path, names, tmp_path / "f.png", "t")
    try:
        lines = {line.get_label(): line for line in figs[0].axes[0].get_lines()}
        solid = [line.get_zorder() for line in lines.values() if line.get_linestyle() == "-"]
        broken = [line.get_zorder() for line in lines.values() if line.get_linestyle() != "-"]
        assert lines["one-shot magnitude"].get_linestyle() == "--" and lines["utility/curvature"].get_linestyle() == "-"
        assert min(broken) > max(solid)
    finally:
        plt.close(figs[0])


def test_the_default_rows_are_the_committed_tables_rows():
    """The Reproduce line of results/gradual_pruning.md (and _seed1.md) is the script without --rows: its default
    rows took in the cubic-pace row, which ran apart (gradual_pruning_cubic_seed*.md), so the stated command wrote
    7 rows where the tables hold 6. The default rows are the tables' rows, in their order."""
    from pathlib import Path

    mod = load_script("recipes/benchmarks/gradual_pruning.py", "gradual_pruning_rows")
    results = Path(__file__).resolve().parents[1] / "recipes" / "benchmarks" / "results"
    for name in ("gradual_pruning.md", "gradual_pruning_seed1.md"):
        lines = (results / name).read_text().splitlines()
        assert any(line.startswith("Reproduce: `python recipes/benchmarks/gradual_pruning.py") and "--rows" not in line
                   for line in lines), name
        start = next(i for i, line in enumerate(lines) if line.startswith("| row |"))
        rows = []
        for line in lines[start + 2:]:
            if not line.startswith("|"):
                break
            rows.append(line.strip("|").split("|")[0].strip())
        assert rows == mod.DEFAULT_ROWS, (name, rows)
