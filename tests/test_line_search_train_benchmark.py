"""recipes/benchmarks/line_search_train.py: bad settings fail before any run, and a quick run's table
shows what its runs did (tolerance 0 holds gradual pruning short of its density, inf reaches it)."""
import re

import pytest

import adaptive.paths as paths
from _scripts import assert_refused_before_any_run, load_script  # noqa: E402

SHARED = paths.SHARED_DATA


def _bench():
    return load_script("recipes/benchmarks/line_search_train.py", "line_search_train_bench")


@pytest.mark.parametrize("argv, msg", [
    (["--policies", "gmp,vgg"], "--policies: unknown ['vgg']"),
    (["--variants", "none;tol 2"], "--variants: unknown ['tol 2']"),
    (["--seeds", "1,1"], "--seeds: distinct whole numbers"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--density", "0"], "--density must be in (0, 1]"),
    (["--holdout", "1"], "--holdout must be in (0, 1)"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--out", "x.md"], "unrecognized arguments: --out x.md"),
])
def test_bad_settings_fail_before_any_run(argv, msg, capsys, monkeypatch, tmp_path):
    assert_refused_before_any_run(_bench(), argv + ["--output", str(tmp_path / "t.md")], msg, tmp_path / "t.md", capsys,
                                  monkeypatch)


def test_the_data_is_needed(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        _bench().main(["--quick", "--data-dir", str(tmp_path), "--output", str(tmp_path / "t.md")])
    assert info.value.code == 2 and f"needs {tmp_path / 'mnist' / 'mnist.npz'} (give --data-dir)" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED / "mnist" / "mnist.npz").is_file(), reason="needs ../shared/data/mnist/mnist.npz")
def test_a_quick_run_of_gmp_shows_what_each_tolerance_did(tmp_path):
    out = tmp_path / "t.md"
    with pytest.warns(UserWarning, match="the controller's schedule ended"):  # tolerance 0 misses the target
        results = _bench().main(["--quick", "--policies", "gmp", "--variants", "none;tol 0;tol inf", "--output",
                                 str(out), "--no-progress", "--data-dir", str(SHARED)])
    runs = {v: results["gmp"][v][0] for v in ("none", "tol 0", "tol inf")}
    assert abs(runs["none"]["density"] - 0.1) < 1e-3 and runs["none"]["checked"] == 0
    assert runs["tol inf"]["density"] == runs["none"]["density"]  # measured only: the same training
    assert runs["tol inf"]["holdout_accuracy"] == runs["none"]["holdout_accuracy"]
    assert runs["tol inf"]["kept"] == runs["tol inf"]["checked"] > 0
    assert runs["tol 0"]["density"] > 0.2 and runs["tol 0"]["rolled_back"] > 0
    text = out.read_text()
    r = runs["tol 0"]
    row = re.search(r"^\| gmp \| tol 0 \| ([\d.]+) \| ([\d.]+) \| [\d.]+ \| (\d+) / (\d+) / (\d+) \(of (\d+)\) \|", text, re.M)
    assert row, text
    assert float(row[1]) == round(r["density"], 3) and float(row[2]) == round(100 * r["holdout_accuracy"], 2)
    assert [int(row[i]) for i in (3, 4, 5, 6)] == [r["kept"], r["halved"], r["rolled_back"], r["checked"]]
    assert "Reproduce: `python recipes/benchmarks/line_search_train.py --quick --policies gmp" in text
