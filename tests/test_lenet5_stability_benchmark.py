"""recipes/benchmarks/lenet5_stability.py: every run is a recipe job with its variant's options, the
table shows what the runs' own summaries say, and bad settings fail before any run."""
import dataclasses
import json
import re
import statistics

import pytest
import yaml

import adaptive.paths as paths
from adaptive.config import parse_config
from _scripts import assert_refused_before_any_run, load_script  # noqa: E402

MNIST = paths.SHARED_DATA / "mnist" / "mnist.npz"
DENSE = "dense, batch 100"


def _bench():
    return load_script("recipes/benchmarks/lenet5_stability.py", "lenet5_stability_bench")


def _where(tmp_path) -> list:
    """A data folder the benchmark's check accepts (no run reads it: run_one is replaced) and a runs
    folder, both under tmp_path, so that neither the shared data nor /tmp is touched."""
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    (tmp_path / "data" / "mnist" / "mnist.npz").write_bytes(b"")
    return ["--data-dir", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), "--output", str(tmp_path / "t.md")]


@pytest.mark.parametrize("argv, msg", [
    (["--settings", f"{DENSE};vgg"], "--settings: unknown ['vgg']"),
    (["--settings", ";"], "--settings: none given or one named twice"),
    (["--variants", "lr 0.1;lr 0.1"], "--variants: none given or one named twice"),
    (["--variants", "lr 0.2"], "--variants: unknown ['lr 0.2']"),
    (["--seeds", "0,x"], "--seeds: comma-separated whole numbers"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--jobs", "0"], "--jobs must be >= 1"),
    # a warmup of at most half the run (the benchmark's rule; the recipe refuses only one longer than the
    # run): refused before the first run, not when the warmup's run starts
    (["--max-steps", "999"], "--variants 'warmup 500' needs runs of at least 1000 steps"),
    (["--variants", "clip 1;warmup 500", "--subset", "2000"], "the shortest here has about 54"),
])
def test_bad_settings_fail_before_any_run(argv, msg, capsys, monkeypatch, tmp_path):
    assert_refused_before_any_run(_bench(), argv + _where(tmp_path), msg, tmp_path / "t.md", capsys, monkeypatch)


def test_a_short_run_without_the_warmup_variant_is_not_refused(monkeypatch, tmp_path):
    mod = _bench()
    ran = []
    monkeypatch.setattr(mod, "run_one", lambda s, v, seed, args, out: ran.append((s, v, seed)) or
                        {"holdout_accuracy": 0.5, "test_accuracy": 0.5, "wall_min": 0.1})
    monkeypatch.setattr(mod, "paired_plot", lambda *a, **k: None)
    mod.main(["--variants", "lr 0.1;clip 1", "--max-steps", "30", "--seeds", "0", "--no-progress", *_where(tmp_path)])
    assert len(ran) == 6 and (tmp_path / "t.md").is_file()


def test_each_variant_passes_its_options_and_nothing_else(monkeypatch, tmp_path):
    mod = _bench()
    seen = {}
    monkeypatch.setattr(mod, "recipe_run", lambda opts, out, label: seen.setdefault(label, opts))
    args = type("A", (), {"threads": 1, "data": tmp_path, "max_steps": None, "subset": None, "epochs": 3})()
    for v in mod.VARIANTS:
        mod.run_one("threshold 5%, batch 32", v, 4, args, tmp_path / v)
    base = seen["threshold 5%, batch 32, lr 0.1, seed 4"]
    assert base[:10] == ["--dataset", "mnist", "--model", "lenet5", "--epochs", "3", "--policy", "threshold",
                         "--density", "0.05"]
    extra = {"clip 1": ["--max_grad_norm", "1"], "warmup 500": ["--warmup_steps", "500"], "lr 0.05": ["--lr", "0.05"]}
    assert base[10:] == ["--seed", "4", "--threads", "1", "--data-dir", str(tmp_path)]
    for v, opts in extra.items():
        assert seen[f"threshold 5%, batch 32, {v}, seed 4"] == base[:10] + opts + base[10:]


def test_the_benchmark_needs_mnist(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        _bench().main(["--data-dir", str(tmp_path), "--output", str(tmp_path / "t.md")])
    assert info.value.code == 2 and f"needs {tmp_path / 'mnist' / 'mnist.npz'} (give --data-dir)" in capsys.readouterr().err


@pytest.mark.skipif(not MNIST.is_file(), reason=f"shared MNIST absent at {MNIST} (always present on CI)")
def test_each_run_uses_its_variant_and_the_table_shows_the_runs_summaries(tmp_path):
    out, runs = tmp_path / "t.md", tmp_path / "runs"
    variants, seeds = ["lr 0.1", "clip 1"], [3, 1]
    results = _bench().main(["--settings", DENSE, "--variants", ";".join(variants), "--seeds", "3,1", "--max-steps",
                             "30", "--subset", "2000", "--runs", str(runs), "--output", str(out), "--no-progress",
                             "--data-dir", str(MNIST.parent.parent)])
    text = out.read_text()
    expect = {"lr 0.1": (0.1, None), "clip 1": (0.1, 1.0)}
    for v in variants:
        safe = re.sub(r"[^\w.-]+", "_", f"{DENSE}_{v}").strip("_")
        for s in seeds:  # each result is its own run's, read back from the run's folder
            r = results[DENSE][v][s]
            on_disk = json.loads((runs / f"{safe}_seed{s}" / "summary.json").read_text())
            assert {k: r[k] for k in on_disk} == on_disk and r["density"] == 1.0 and r["steps"] == 30
            cfg = yaml.safe_load((runs / f"{safe}_seed{s}" / "config.yaml").read_text())
            assert (cfg["lr"], cfg["max_grad_norm"], cfg["seed"]) == (*expect[v], s)
            assert cfg["model"] == "lenet5" and cfg["batch_size"] == 100
        held = [100 * results[DENSE][v][s]["holdout_accuracy"] for s in seeds]
        row = re.search(rf"^\| {re.escape(DENSE)} \| {v} \| ([\d.]+) \| [\d.]+ ± [\d.]+ \| (\d) of 2 \| ([\d.]+) \| "
                        rf"([\d., ]+) \|", text, re.M)
        assert row, text
        # as the benchmark formats them (a median of two often ends in 5 at the third decimal)
        assert row[1] == f"{100 * statistics.median(results[DENSE][v][s]['holdout_accuracy'] for s in seeds):.2f}"
        assert row[3] == f"{100 * statistics.median(results[DENSE][v][s]['test_accuracy'] for s in seeds):.2f}"
        assert int(row[2]) == sum(h < 50 for h in held)
        assert row[4] == ", ".join(f"{h:.2f}" for h in held)  # in the order the seeds were given
    d = [100 * (results[DENSE]["clip 1"][s]["holdout_accuracy"] - results[DENSE]["lr 0.1"][s]["holdout_accuracy"])
         for s in seeds]
    assert f"- {DENSE}, clip 1: {d[0]:+.2f}, {d[1]:+.2f} (median {statistics.median(d):+.2f};" in text
    assert out.with_suffix(".png").stat().st_size > 10_000 and "Figure: " in text
    assert "the utility policy" not in text  # said only where a utility setting ran
    assert text.splitlines()[-1] == ("Reproduce: `python recipes/benchmarks/lenet5_stability.py --settings "
                                     "'dense, batch 100' --variants 'lr 0.1;clip 1' --seeds 3,1 --max-steps 30 "
                                     "--subset 2000`")


def test_the_table_describes_only_the_policies_that_ran(monkeypatch, tmp_path):
    mod = _bench()
    monkeypatch.setattr(mod, "run_one", lambda s, v, seed, args, out: {"holdout_accuracy": 0.9, "test_accuracy": 0.9,
                                                                       "wall_min": 0.1})
    monkeypatch.setattr(mod, "paired_plot", lambda *a, **k: None)
    notes, where = mod.POLICY_NOTES, _where(tmp_path)
    for settings, said in [("rigl 5%, batch 100", {"rigl"}), ("utility 5%, batch 100;rigl 5%, batch 100",
                                                               {"utility", "rigl"}), (DENSE, set())]:
        mod.main(["--settings", settings, "--variants", "lr 0.1;clip 1", "--seeds", "0", "--no-progress", *where])
        text = (tmp_path / "t.md").read_text()
        assert {p for p in notes if notes[p] in text} == said, (settings, text)
        assert ("batch 32" in text) == ("batch 32" in settings) and "; ;" not in text and ";." not in text, text
        assert ("edits until 75% of the run" in text) == bool(said), text


@pytest.mark.skipif(not MNIST.is_file(), reason=f"shared MNIST absent at {MNIST} (always present on CI)")
def test_the_rigl_setting_runs_rigl_on_lenet5_at_five_percent(tmp_path):
    runs = tmp_path / "runs"
    results = _bench().main(["--settings", "rigl 5%, batch 100", "--variants", "clip 1", "--seeds", "2",
                             "--max-steps", "30", "--subset", "2000", "--runs", str(runs), "--output",
                             str(tmp_path / "t.md"), "--no-progress", "--data-dir", str(MNIST.parent.parent)])
    cfg = yaml.safe_load((runs / "rigl_5_batch_100_clip_1_seed2" / "config.yaml").read_text())
    assert (cfg["policy"], cfg["estimator"], cfg["model"], cfg["density"], cfg["batch_size"], cfg["update_every"],
            cfg["max_grad_norm"]) == ("rigl", None, "lenet5", 0.05, 100, 100, 1.0)
    r = results["rigl 5%, batch 100"]["clip 1"][2]
    assert abs(r["density"] - 0.05) < 1e-3 and r["steps"] == 30


def _jobs(monkeypatch, tmp_path, argv) -> tuple:
    """The recipe options of each job ``main(argv)`` starts (none runs) and the table it writes."""
    mod, seen = _bench(), {}
    monkeypatch.setattr(mod, "recipe_run", lambda opts, out, label: seen.setdefault(label, opts) and
                        {"holdout_accuracy": 0.9, "test_accuracy": 0.9, "wall_min": 0.1})
    monkeypatch.setattr(mod, "paired_plot", lambda *a, **k: None)
    mod.main([*argv, "--no-progress", *_where(tmp_path)])
    return seen, (tmp_path / "t.md").read_text()


def test_epochs_sets_every_runs_epochs_and_the_table_says_so(monkeypatch, tmp_path):
    argv = ["--settings", "threshold 5%, batch 32;rigl 5%, batch 100", "--variants", "clip 1;lr 0.1", "--seeds", "0"]
    for extra, epochs in [([], 3), (["--epochs", "20"], 20), (["--epochs=1"], 1)]:
        seen, text = _jobs(monkeypatch, tmp_path / f"epochs{epochs}", argv + extra)
        assert len(seen) == 4
        for label, opts in seen.items():  # the setting's own epochs replaced, not followed by a second --epochs
            assert opts.count("--epochs") == 1 and opts[opts.index("--epochs") + 1] == str(epochs), (label, opts)
        budget = f"{epochs} epoch{'s' * (epochs != 1)}"
        assert text.startswith("# ") and text.splitlines()[0].endswith(f"({budget} per run)"), text
        assert f"in train mode, {budget}, SGD" in text
        reproduce = text.splitlines()[-1]
        assert reproduce.endswith("--seeds 0" + "".join(f" {a}" for a in extra) + "`"), reproduce


def test_epochs_20_of_the_threshold_batch_100_setting_is_the_shipped_lenet5_config(monkeypatch, tmp_path):
    """'threshold 5%, batch 100' with 'clip 1' for 20 epochs is recipes/configs/mnist_lenet5.yaml as shipped,
    every setting equal, and with 'lr 0.1' the same with --max_grad_norm none (the figures docs/training.md
    quotes for that config come from this benchmark's table)."""
    recipe = load_script("recipes/adaptive.py", "recipe_adaptive_lenet5_cfg")
    seen, _ = _jobs(monkeypatch, tmp_path, ["--settings", "threshold 5%, batch 100", "--variants", "clip 1;lr 0.1",
                                           "--seeds", "1", "--epochs", "20"])
    shipped = ["--config", str(paths.REPO_ROOT / "recipes" / "configs" / "mnist_lenet5.yaml"), "--seed", "1",
               "--threads", "1", "--data-dir", str(tmp_path / "data")]
    for variant, extra in [("clip 1", []), ("lr 0.1", ["--max_grad_norm", "none"])]:
        ran = dataclasses.asdict(parse_config(recipe.RunConfig, seen[f"threshold 5%, batch 100, {variant}, seed 1"]))
        want = dataclasses.asdict(parse_config(recipe.RunConfig, shipped + extra))
        assert ran == want and ran["epochs"] == 20 and ran["density"] == 0.05, variant
