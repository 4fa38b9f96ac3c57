"""recipes/benchmarks/zero_cost_ties.py: every run is a recipe job with the zero-cost order it names,
the table shows what the runs' own summaries say, and bad settings fail before any run."""
import os
import re
import sys

import pytest
import yaml

from _scripts import assert_refused_before_any_run, load_script  # noqa: E402

ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))
DIGITS = "mlp/digits 20%, threshold"


def _bench():
    return load_script("recipes/benchmarks/zero_cost_ties.py", "zero_cost_ties_bench")


@pytest.mark.parametrize("argv, msg", [
    (["--settings", f"{DIGITS};vgg"], "--settings: unknown ['vgg']"),
    (["--settings", ";"], "--settings: none given or one named twice"),
    (["--settings", f"{DIGITS};{DIGITS}"], "--settings: none given or one named twice"),
    (["--seeds", "0,x"], "--seeds: comma-separated whole numbers"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
])
def test_bad_settings_fail_before_any_run(argv, msg, capsys, monkeypatch, tmp_path):
    assert_refused_before_any_run(_bench(), argv + ["--output", str(tmp_path / "t.md")], msg, tmp_path / "t.md", capsys,
                                  monkeypatch)


def test_mnist_settings_need_the_data(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        _bench().main(["--settings", "lenet5/mnist 5%, threshold", "--data-dir", str(tmp_path), "--output",
                       str(tmp_path / "t.md")])
    assert info.value.code == 2 and f"need {tmp_path / 'mnist' / 'mnist.npz'} (give --data-dir)" in capsys.readouterr().err


def test_each_run_uses_its_order_and_the_table_shows_the_runs_summaries(tmp_path):
    out, runs = tmp_path / "t.md", tmp_path / "runs"
    results = _bench().main(["--settings", DIGITS, "--seeds", "0", "--max-steps", "200", "--runs", str(runs),
                             "--output", str(out), "--no-progress"])
    text = out.read_text()
    for order in ("index", "magnitude"):
        r = results[DIGITS][order][0]
        assert abs(r["density"] - 0.2) < 1e-3 and r["steps"] == 200
        row = re.search(rf"^\| {re.escape(DIGITS)} \| {order} \| ([\d.]+) \| [\d.]+ \| (\d) of 1 \| ([\d.]+) \| ([\d.]+) \|",
                        text, re.M)
        assert row, text
        assert float(row[1]) == round(100 * r["holdout_accuracy"], 2) == float(row[4])
        assert float(row[3]) == round(100 * r["test_accuracy"], 2)
        assert int(row[2]) == (r["holdout_accuracy"] < 0.5)
        cfg = yaml.safe_load((runs / f"mlp_digits_20_threshold_{order}_seed0" / "config.yaml").read_text())
        assert cfg["controller_kw"] == {"zero_cost_order": order} and cfg["policy"] == "threshold"
    d = 100 * (results[DIGITS]["magnitude"][0]["holdout_accuracy"] - results[DIGITS]["index"][0]["holdout_accuracy"])
    assert f"- {DIGITS}: {d:+.2f} (median {d:+.2f};" in text
    assert out.with_suffix(".png").stat().st_size > 10_000 and "Figure: " in text
    assert text.splitlines()[-1] == ("Reproduce: `python recipes/benchmarks/zero_cost_ties.py --settings "
                                     "'mlp/digits 20%, threshold' --seeds 0 --max-steps 200`")


@pytest.mark.parametrize("script", ["zero_cost_ties", "threshold_pace", "threshold_estimators", "gradual_pruning",
                                    "lenet5_stability", "mask_only_ceiling", "band_scaling_ddp"])
def test_loading_a_benchmark_leaves_its_folder_off_the_import_path(script):
    """threshold_pace.py and gradual_pruning.py put recipes/benchmarks on sys.path for good, so a later
    ``import graphs`` in the same process found recipes/benchmarks/graphs.py (since renamed
    graphs_package.py) instead of the package (and mask_only_ceiling's test of the same failed after
    them in one process). The benchmarks that
    import a sibling now import it as ``recipes.benchmarks.NAME``, never putting the folder there."""
    load_script(f"recipes/benchmarks/{script}.py", f"{script}_path_check")
    here = os.path.join(ROOT, "recipes", "benchmarks")
    assert not [p for p in sys.path if os.path.realpath(p or os.getcwd()) == here]
