"""recipes/benchmarks/line_search_train.py: bad settings fail before any run, the accuracy it reports
is scored on an evaluation part disjoint from the part the line search decides on, and a quick run's
table shows what its runs did (tolerance 0 holds gradual pruning short of its density, inf reaches it)."""
import argparse
import re

import pytest
import torch

import adaptive.paths as paths
from _scripts import assert_refused_before_any_run, load_script  # noqa: E402

SHARED = paths.SHARED_DATA
NEEDS_MNIST = pytest.mark.skipif(not (SHARED / "mnist" / "mnist.npz").is_file(),
                                 reason="needs ../shared/data/mnist/mnist.npz")


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
    (["--eval-size", "0"], "--eval-size must be >= 1"),
    (["--out", "x.md"], "unrecognized arguments: --out x.md"),
])
def test_bad_settings_fail_before_any_run(argv, msg, capsys, monkeypatch, tmp_path):
    assert_refused_before_any_run(_bench(), argv + ["--output", str(tmp_path / "t.md")], msg, tmp_path / "t.md", capsys,
                                  monkeypatch)


def test_the_data_is_needed(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        _bench().main(["--quick", "--data-dir", str(tmp_path), "--output", str(tmp_path / "t.md")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "dataset 'mnist' not found; looked in: " in err
    assert str(tmp_path / "mnist" / "mnist.npz") in err and "Point --data-dir" in err


@NEEDS_MNIST
def test_the_data_is_looked_for_as_everywhere_else(monkeypatch, tmp_path):
    """The benchmark looked for MNIST its own way: an ADAPTIVE_DATA folder without it failed, where every other
    script reads ../shared/data after it (and says so): it uses the library's lookup."""
    bench = _bench()
    monkeypatch.setenv("ADAPTIVE_DATA", str(tmp_path))
    seen = []
    monkeypatch.setattr(bench, "load_data", lambda args, seed: seen.append(args.data_dir) or (_ for _ in ()).throw(
        ValueError("stop here")))
    with pytest.warns(UserWarning, match="ADAPTIVE_DATA"), pytest.raises(SystemExit) as info:
        bench.main(["--quick", "--output", str(tmp_path / "t.md")])
    assert info.value.code == 2 and seen == [None]  # got past the data check to the first seed's load




def _rows(x: torch.Tensor) -> set:
    return {bytes(r.numpy().tobytes()) for r in x.flatten(1)}


@NEEDS_MNIST
def test_the_reported_accuracy_reads_no_example_the_checks_or_training_read():
    # the "eval acc" was once scored on the whole held-out part, the very examples the line search
    # decided on: it leaned toward the variants that veto on them
    args = argparse.Namespace(data_dir=SHARED, holdout=0.1, subset=3000, test_subset=100, eval_size=500)
    (xt, _), held_ds, (xe, ye), _ = _bench().load_data(args, seed=0)
    xh = torch.stack([held_ds[i][0] for i in range(len(held_ds))])
    assert len(ye) == 500 and torch.bincount(ye, minlength=10).min() >= 45  # stratified
    assert not _rows(xe) & _rows(xh) and not _rows(xe) & _rows(xt)


@NEEDS_MNIST
def test_too_large_a_subset_leaves_no_evaluation_part(capsys, monkeypatch, tmp_path):
    assert_refused_before_any_run(_bench(), ["--subset", "59500", "--output", str(tmp_path / "t.md"),
                                             "--data-dir", str(SHARED)],
                                  "--eval-size 3000 needs as many MNIST TRAIN examples outside --subset 59500, which "
                                  "leaves 500 of 60000", tmp_path / "t.md", capsys, monkeypatch)


@NEEDS_MNIST
def test_a_quick_run_of_gmp_shows_what_each_tolerance_did(tmp_path):
    out = tmp_path / "t.md"
    with pytest.warns(UserWarning, match="the controller's schedule ended"):  # tolerance 0 misses the target
        results = _bench().main(["--quick", "--policies", "gmp", "--variants", "none;tol 0;tol inf", "--output",
                                 str(out), "--no-progress", "--data-dir", str(SHARED)])
    runs = {v: results["gmp"][v][0] for v in ("none", "tol 0", "tol inf")}
    assert abs(runs["none"]["density"] - 0.1) < 1e-3 and runs["none"]["checked"] == 0
    assert runs["tol inf"]["density"] == runs["none"]["density"]  # measured only: the same training
    assert runs["tol inf"]["eval_accuracy"] == runs["none"]["eval_accuracy"]
    assert runs["tol inf"]["kept"] == runs["tol inf"]["checked"] > 0
    assert runs["tol 0"]["density"] > 0.2 and runs["tol 0"]["rolled_back"] > 0
    text = out.read_text()
    r = runs["tol 0"]
    row = re.search(r"^\| gmp \| tol 0 \| ([\d.]+) \| ([\d.]+) \| [\d.]+ \| (\d+) / (\d+) / (\d+) \(of (\d+)\) \|", text, re.M)
    assert row, text
    assert float(row[1]) == round(r["density"], 3) and float(row[2]) == round(100 * r["eval_accuracy"], 2)
    assert [int(row[i]) for i in (3, 4, 5, 6)] == [r["kept"], r["halved"], r["rolled_back"], r["checked"]]
    assert "Reproduce: `python recipes/benchmarks/line_search_train.py --quick --policies gmp" in text


@NEEDS_MNIST
def test_the_test_split_is_read_only_once_a_run_has_finished(monkeypatch):
    """load_data read the whole test split into tensors before any run (the docstring says it is read only for the
    table): it gives a function that reads it, called at a run's end."""
    from adaptive.data import base

    built = []
    real = base.LazyDataset.dataset.fget

    def build(self):
        if self._dataset is None:
            built.append(1)
        return real(self)

    monkeypatch.setattr(base.LazyDataset, "dataset", property(build))
    args = argparse.Namespace(data_dir=SHARED, holdout=0.1, subset=3000, test_subset=100, eval_size=500)
    *_, test_tensors = _bench().load_data(args, seed=0)
    assert not built
    xs, ys = test_tensors()
    assert built == [1] and len(ys) == 100 and test_tensors()[0] is xs
