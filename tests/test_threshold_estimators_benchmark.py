"""recipes/benchmarks/threshold_estimators.py: every run is the recipe job docs/python_api.md quotes, with the
estimator and seed it names, the table shows what the runs' own summaries say, and bad settings fail
before any run."""
import re

import numpy as np
import pytest
import yaml

from _scripts import assert_refused_before_any_run, load_script  # noqa: E402


def _bench():
    return load_script("recipes/benchmarks/threshold_estimators.py", "threshold_estimators_bench")


def _tiny_mnist(folder):
    """An MNIST-shaped npz of 300 random train and 50 test images (labels cycling 0-9): the runs' data."""
    (folder / "mnist").mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(folder / "mnist" / "mnist.npz", x_train=rng.integers(0, 256, (300, 28, 28), dtype=np.uint8),
             y_train=np.arange(300) % 10, x_test=rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
             y_test=np.arange(50) % 10)
    return folder


@pytest.mark.parametrize("argv, msg", [
    (["--estimators", "taylor,magnitude"], "--estimators: unknown ['magnitude']"),
    (["--estimators", ","], "--estimators: none given or one named twice"),
    (["--estimators", "obd,obd"], "--estimators: none given or one named twice"),
    (["--seeds", "0,x"], "--seeds: comma-separated whole numbers"),
    (["--seeds", "1,1"], "--seeds: distinct whole numbers in [0, 2**32 - 1]"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--out", "x.md"], "unrecognized arguments: --out x.md"),  # (no abbreviations: the Reproduce line shows full names)
])
def test_bad_settings_fail_before_any_run(argv, msg, capsys, monkeypatch, tmp_path):
    assert_refused_before_any_run(_bench(), argv + ["--output", str(tmp_path / "t.md")], msg, tmp_path / "t.md", capsys,
                                  monkeypatch)


def test_the_runs_need_the_data(capsys, monkeypatch, tmp_path):
    assert_refused_before_any_run(_bench(), ["--data-dir", str(tmp_path), "--output", str(tmp_path / "t.md")],
                                  f"need {tmp_path / 'mnist' / 'mnist.npz'} (give --data-dir)", tmp_path / "t.md", capsys,
                                  monkeypatch)


def test_each_run_is_the_quoted_job_with_its_estimator_and_the_table_shows_the_runs_summaries(tmp_path):
    """Two estimators, two seeds, 40 steps on MNIST-shaped random data (one update, at step 25): each run's
    config is the documented job (lenet300, mnist, threshold, 5%) with its estimator and seed; every table
    row is that run's own summary."""
    out, runs = tmp_path / "t.md", tmp_path / "runs"
    results = _bench().main(["--estimators", "taylor,curvature", "--seeds", "0,1", "--max-steps", "40",
                             "--data-dir", str(_tiny_mnist(tmp_path / "data")), "--runs", str(runs), "--output", str(out),
                             "--no-progress"])
    text = out.read_text()
    for estimator in ("taylor", "curvature"):
        for seed in (0, 1):
            r = results[estimator][seed]
            assert r["steps"] == 40 and r["density"] < 1.0
            cfg = yaml.safe_load((runs / f"{estimator}_seed{seed}" / "config.yaml").read_text())
            assert (cfg["model"], cfg["dataset"], cfg["policy"], cfg["density"]) == ("lenet300", "mnist", "threshold", 0.05)
            assert (cfg["estimator"], cfg["seed"], cfg["threads"], cfg["batch_size"]) == (estimator, seed, 1, 32)
            row = re.search(rf"^\| {estimator} \| {seed} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
            assert row, text
            assert float(row[1]) == round(100 * r["holdout_accuracy"], 2)
            assert float(row[2]) == round(100 * r["test_accuracy"], 2)
            assert float(row[3]) == round(r["density"], 4)
    assert ("Every run: `python recipes/adaptive.py --model lenet300 --dataset mnist --policy threshold --density 0.05 "
            "--max_steps 40 --estimator ESTIMATOR --seed SEED --threads 1`") in text
    assert "Test: MNIST's TEST split (50 examples)" in text and "Machine: " in text and "torch thread(s)" in text
    assert text.splitlines()[-1] == ("Reproduce: `python recipes/benchmarks/threshold_estimators.py --estimators "
                                     "taylor,curvature --seeds 0,1 --max-steps 40`")
