"""recipes/benchmarks/lenet5_stability.py: every run is a recipe job with its variant's options, the
table shows what the runs' own summaries say, and bad settings fail before any run."""
import re

import pytest
import yaml

import adaptive.paths as paths
from _scripts import load_script  # noqa: E402

MNIST = paths.SHARED_DATA / "mnist" / "mnist.npz"
DENSE = "dense, batch 100"


def _bench():
    return load_script("recipes/benchmarks/lenet5_stability.py", "lenet5_stability_bench")


@pytest.mark.parametrize("argv, msg", [
    (["--settings", f"{DENSE};vgg"], "--settings: unknown ['vgg']"),
    (["--settings", ";"], "--settings: none given or one named twice"),
    (["--variants", "lr 0.1;lr 0.1"], "--variants: none given or one named twice"),
    (["--variants", "lr 0.2"], "--variants: unknown ['lr 0.2']"),
    (["--seeds", "0,x"], "--seeds: comma-separated whole numbers"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
    (["--jobs", "0"], "--jobs must be >= 1"),
])
def test_bad_settings_fail_before_any_run(argv, msg, capsys, monkeypatch, tmp_path):
    mod = _bench()
    ran = []
    monkeypatch.setattr(mod, "run_one", lambda *a, **k: ran.append(a))
    with pytest.raises(SystemExit) as info:
        mod.main(argv + ["--output", str(tmp_path / "t.md")])
    assert info.value.code == 2 and msg in capsys.readouterr().err
    assert not ran and not (tmp_path / "t.md").exists()


def test_the_benchmark_needs_mnist(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        _bench().main(["--data-dir", str(tmp_path), "--output", str(tmp_path / "t.md")])
    assert info.value.code == 2 and f"needs {tmp_path / 'mnist' / 'mnist.npz'} (give --data-dir)" in capsys.readouterr().err


@pytest.mark.skipif(not MNIST.is_file(), reason=f"shared MNIST absent at {MNIST} (always present on CI)")
def test_each_run_uses_its_variant_and_the_table_shows_the_runs_summaries(tmp_path):
    out, runs = tmp_path / "t.md", tmp_path / "runs"
    variants = ["lr 0.1", "clip 1", "lr 0.05"]
    results = _bench().main(["--settings", DENSE, "--variants", ";".join(variants), "--seeds", "3", "--max-steps", "30",
                             "--subset", "2000", "--runs", str(runs), "--output", str(out), "--no-progress"])
    text = out.read_text()
    expect = {"lr 0.1": (0.1, None), "clip 1": (0.1, 1.0), "lr 0.05": (0.05, None)}
    for v in variants:
        r = results[DENSE][v][3]
        assert r["density"] == 1.0 and r["steps"] == 30
        row = re.search(rf"^\| {re.escape(DENSE)} \| {v} \| ([\d.]+) \| [\d.]+ \| (\d) of 1 \| ([\d.]+) \| ([\d.]+) \|",
                        text, re.M)
        assert row, text
        assert float(row[1]) == round(100 * r["holdout_accuracy"], 2) == float(row[4])
        assert float(row[3]) == round(100 * r["test_accuracy"], 2)
        assert int(row[2]) == (r["holdout_accuracy"] < 0.5)
        safe = re.sub(r"[^\w.-]+", "_", f"{DENSE}_{v}").strip("_")
        cfg = yaml.safe_load((runs / f"{safe}_seed3" / "config.yaml").read_text())
        assert (cfg["lr"], cfg["max_grad_norm"]) == expect[v]
        assert cfg["model"] == "lenet5" and cfg["batch_size"] == 100 and cfg["seed"] == 3
    held = {v: 100 * results[DENSE][v][3]["holdout_accuracy"] for v in variants}
    for v in variants[1:]:
        d = held[v] - held["lr 0.1"]
        assert f"- {DENSE}, {v}: {d:+.2f} (median {d:+.2f};" in text
    assert out.with_suffix(".png").stat().st_size > 10_000 and "Figure: " in text
    assert text.splitlines()[-1] == ("Reproduce: `python recipes/benchmarks/lenet5_stability.py --settings "
                                     "'dense, batch 100' --variants 'lr 0.1;clip 1;lr 0.05' --seeds 3 --max-steps 30 "
                                     "--subset 2000`")
