"""recipes/benchmarks/dst_mnist.py: the table's Reproduce line gives every option that shaped it."""
import runpy
import sys

import pytest

import adaptive.paths as paths

SCRIPT = paths.REPO_ROOT / "recipes" / "benchmarks" / "dst_mnist.py"

MNIST = paths.SHARED_DATA / "mnist" / "mnist.npz"


@pytest.mark.skipif(not MNIST.is_file(), reason=f"shared MNIST absent at {MNIST} (always present on CI)")
@pytest.mark.parametrize("extra, expect", [
    ([], "dst_mnist.py --epochs 12 --seeds 0,1,2`"),
    (["--densities", "0.02", "--methods", "ours,rigl", "--candidates", "utility/curvature", "--lr", "0.05",
      "--seeds", "0"],
     "dst_mnist.py --densities 0.02 --methods ours,rigl --candidates utility/curvature --lr 0.05 --epochs 12 --seeds 0`"),
    (["--append", "--update_every", "200"], "dst_mnist.py --update_every 200 --append --epochs 12 --seeds 0,1,2`"),
])
def test_the_reproduce_line_carries_the_options_that_shaped_the_table(tmp_path, monkeypatch, extra, expect):
    # without --append it kept only --epochs and --seeds: a 3-run table said to come from the 19-run default
    import json

    lr, every = ("0.05" if "--lr" in extra else "0.1"), ("200" if "200" in extra else "100")
    (tmp_path / "none.jsonl").write_text(json.dumps(  # one finished run: a table with none is refused
        {"key": f"e12-b100-lr{lr}-wd0.0005-u{every}|rigl|None/None|0.02|0", "holdout_acc": 0.9, "test_acc": 0.95,
         "seconds": 60.0}) + "\n")
    out = tmp_path / "table.md"
    # run as the README runs it (as __main__, like tests/test_readme.py): the policies it registers
    # then come from the one origin, which a rerun may register again
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--table_only", "--results", str(tmp_path / "none.jsonl"),
                                      "--out", str(out), "--data-dir", str(MNIST.parent.parent), *extra])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    assert f"Reproduce: `python recipes/benchmarks/{expect}" in out.read_text()


@pytest.mark.skipif(not MNIST.is_file(), reason=f"shared MNIST absent at {MNIST} (always present on CI)")
def test_the_reproduce_line_counts_only_the_runs_behind_the_table(tmp_path, monkeypatch):
    """A results file shared between sections: the line counted every run with the same settings
    (a 1-run table said 3 runs and 6 minutes)."""
    import json

    tag = "e12-b100-lr0.1-wd0.0005-u100"
    rows = [{"key": f"{tag}|rigl|None/None|{d}|0", "holdout_acc": 0.9, "test_acc": 0.95, "seconds": 120.0}
            for d in (0.1, 0.05, 0.02)]
    res = tmp_path / "runs.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "table.md"
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--table_only", "--results", str(res), "--out", str(out),
                                      "--data-dir", str(MNIST.parent.parent), "--densities", "0.1",
                                      "--methods", "rigl", "--seeds", "0"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    text = out.read_text()
    assert "| RigL | 95.00" in text
    assert "(1 runs, 2 minutes of run time" in text


@pytest.mark.skipif(not MNIST.is_file(), reason=f"shared MNIST absent at {MNIST} (always present on CI)")
def test_table_only_with_no_finished_run_leaves_the_table_as_it_is(tmp_path, monkeypatch):
    """--table_only from a folder with no runs/ (a fresh clone) replaced the recorded table with an
    empty one; and --results was found from the working folder while --out was the repository's."""
    out = tmp_path / "table.md"
    out.write_text("the recorded table\n")
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--table_only", "--results", str(tmp_path / "none.jsonl"),
                                      "--out", str(out), "--data-dir", str(MNIST.parent.parent)])
    with pytest.raises(SystemExit, match=r"--table_only: no finished run in .*none.jsonl for these settings, so "
                                         r".*table.md is left as it is"):
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert out.read_text() == "the recorded table\n"
    monkeypatch.chdir(tmp_path)  # the default --results is the repository's runs/, wherever it is run from
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--table_only", "--out", str(out), "--data-dir",
                                      str(MNIST.parent.parent), "--methods", "rigl", "--densities", "0.33", "--seeds",
                                      "99"])  # settings no recorded run has
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert f"no finished run in {paths.REPO_ROOT / 'runs' / 'benchmarks' / 'dst_mnist' / 'results.jsonl'} " in str(e.value)
    assert out.read_text() == "the recorded table\n"



@pytest.mark.skipif(not MNIST.is_file(), reason=f"shared MNIST absent at {MNIST} (always present on CI)")
def test_the_table_names_the_repository_s_results_file_relative_to_it(tmp_path, monkeypatch):
    """The default --results became an absolute path, which the committed table then carried."""
    import json

    assert paths.repo_relative("/elsewhere/r.jsonl") == "/elsewhere/r.jsonl"
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path)  # a repository here, its results file inside it
    res = tmp_path / "runs" / "benchmarks" / "dst_mnist" / "results.jsonl"
    res.parent.mkdir(parents=True)
    res.write_text(json.dumps({"key": "e12-b100-lr0.1-wd0.0005-u100|rigl|None/None|0.02|0", "holdout_acc": 0.9,
                               "test_acc": 0.95, "seconds": 60.0}) + "\n")
    out = tmp_path / "table.md"
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--table_only", "--results", str(res), "--out", str(out),
                                      "--data-dir", str(MNIST.parent.parent), "--densities", "0.02",
                                      "--methods", "rigl", "--seeds", "0"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    assert "1 of them read back from runs/benchmarks/dst_mnist/results.jsonl, not rerun" in out.read_text()


@pytest.mark.skipif(not MNIST.is_file(), reason=f"shared MNIST absent at {MNIST} (always present on CI)")
def test_rigl_at_w1_grows_by_the_update_steps_gradient_as_rigl_does(tmp_path, monkeypatch):
    # the rigl row grows by the mean gradient since the last update (the controller's default window);
    # rigl@w1 is RigL's own criterion, the gradient of the update step's batch alone
    import json
    import types

    import torch

    import adaptive

    (tmp_path / "one.jsonl").write_text(json.dumps(
        {"key": "e12-b100-lr0.1-wd0.0005-u100|rigl|None/None|0.02|0", "holdout_acc": 0.9, "test_acc": 0.95,
         "seconds": 60.0}) + "\n")
    # run as __main__ (a table from one finished run), as the tests above: its policies keep their origin
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--table_only", "--results", str(tmp_path / "one.jsonl"),
                                      "--out", str(tmp_path / "table.md"), "--data-dir", str(MNIST.parent.parent)])
    mod = runpy.run_path(str(SCRIPT), run_name="__main__")
    seen = []
    real = adaptive.Controller

    def controller(*a, **k):
        seen.append(k.get("window"))
        return real(*a, **k)

    monkeypatch.setattr(adaptive, "Controller", controller)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 784, generator=g), torch.randint(0, 10, (200,), generator=g)
    data = ((x, y), (x[:50], y[:50]), (x[:50], y[:50]))
    args = types.SimpleNamespace(epochs=2, batch_size=100, lr=0.1, wd=5e-4, update_every=1)
    for method in ("rigl", "rigl@w1"):
        mod["train_run"](method, 0.1, 0, data, args)
    assert seen == [None, 1]


@pytest.mark.parametrize("methods, says", [
    ("rigl@x5", "bad schedule variant item 'x5'"),  # an unknown letter was ignored: a plain rigl row, named rigl@x5
    ("rigl@w0", "bad schedule variant item 'w0'"),  # refused by the Controller only at the run itself
    ("rigl@wabc", "bad schedule variant item 'wabc'"),
    ("rigl@f1.5", "bad schedule variant item 'f1.5'"),
    ("rigl@", "bad schedule variant item ''"),
    ("rigl@u200+u50", "'u' given twice"),
    ("dense,rigl@w1,dense@u5", "only set and rigl take a schedule variant"),
    ("static@w1", "only set and rigl take a schedule variant"),  # static's fraction is 0 whatever a variant says
    ("rigl,foo", "unknown method 'foo'; use dense, static, set, rigl, ours, rigl-torch"),
])
def test_bad_methods_and_variants_are_refused_before_any_run_naming_the_valid_ones(tmp_path, monkeypatch, capsys,
                                                                                   methods, says):
    # no data needed: the entries are checked before MNIST is read or anything runs (--table_only and a
    # folder without MNIST: without the check, a quick failure elsewhere, never a training run)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--methods", methods, "--results", str(tmp_path / "r.jsonl"),
                                      "--out", str(tmp_path / "table.md"), "--table_only", "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert says in err, err
    if "variant item" in says or "twice" in says:
        assert "u<steps>" in err and "f<fraction>" in err and "w<steps>" in err  # the valid items named
    assert not (tmp_path / "r.jsonl").exists() and not (tmp_path / "table.md").exists()


def test_a_bad_candidate_variant_is_refused_before_any_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--methods", "ours", "--candidates", "utility/consistency@u50+x1",
                                      "--results", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "table.md"),
                                      "--table_only", "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--candidates 'utility/consistency@u50+x1': bad schedule variant item 'x1'" in err, err
    assert not (tmp_path / "r.jsonl").exists()


def test_final_seeds_holding_the_selection_seed_are_refused_before_any_run(tmp_path, monkeypatch, capsys):
    """--seeds 100 (the default --selection_seed): the selection runs never read the test split, so every row at
    that seed had no test accuracy, and the table failed with a TypeError after all the training."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--seeds", "0,100", "--results", str(tmp_path / "r.jsonl"),
                                      "--out", str(tmp_path / "table.md"), "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert exc.value.code == 2
    assert "--seeds 0,100 holds the --selection_seed 100: the selection runs choose ours' configuration" in \
        capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists() and not (tmp_path / "table.md").exists()


def test_help_names_the_methods_and_the_w1_variant(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--help"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(SCRIPT), run_name="__main__")
    out = " ".join(capsys.readouterr().out.split())
    assert "rigl@w1" in out and "w<steps> (observation window" in out and "rigl-torch" in out


@pytest.mark.skipif(not MNIST.is_file(), reason=f"shared MNIST absent at {MNIST} (always present on CI)")
def test_the_table_gives_ours_minus_rigl_seed_by_seed(tmp_path, monkeypatch):
    """The per-seed differences quoted under the unseen seeds' tables were computed by hand: the table
    now writes them, from the same runs as its means."""
    import json

    res = tmp_path / "r.jsonl"
    rows = [("rigl", "None/None", 0, 0.9700), ("rigl", "None/None", 1, 0.9750), ("ours", "utility/curvature", 0, 0.9781),
            ("ours", "utility/curvature", 1, 0.9740), ("ours", "utility/curvature", 100, None)]
    res.write_text("".join(json.dumps({"key": f"e12-b100-lr0.1-wd0.0005-u100|{m}|{c}|0.02|{s}", "holdout_acc": 0.9,
                                       "test_acc": t, "seconds": 60.0}) + "\n" for m, c, s, t in rows))
    out = tmp_path / "table.md"
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--table_only", "--results", str(res), "--out", str(out),
                                      "--data-dir", str(MNIST.parent.parent), "--densities", "0.02",
                                      "--methods", "rigl,ours", "--candidates", "utility/curvature", "--seeds", "0,1"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    text = out.read_text()
    assert "- 2%, ours - RigL: +0.81 (seed 0), -0.10 (seed 1); mean +0.35, ours ahead on 1 of 2" in text, text
