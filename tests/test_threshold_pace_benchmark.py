"""recipes/benchmarks/threshold_pace.py: every run is a recipe job at the pace it names, the table
shows what the runs' own summaries say, and bad settings fail before any run."""
import re

import pytest
import yaml

import adaptive.paths as paths
from _scripts import assert_refused_before_any_run, load_script  # noqa: E402

SHARED = paths.SHARED_DATA


def _bench():
    return load_script("recipes/benchmarks/threshold_pace.py", "threshold_pace_bench")


@pytest.mark.parametrize("argv, msg", [
    (["--settings", "mlp/digits 20%,vgg"], "--settings: unknown ['vgg']"),
    (["--settings", ","], "--settings: none given or one named twice"),
    (["--settings", "mlp/digits 20%,mlp/digits 20%"], "--settings: none given or one named twice"),
    (["--seeds", "0,x"], "--seeds: comma-separated whole numbers"),
    (["--seeds", "1,1"], "--seeds: distinct whole numbers in [0, 2**32 - 1]"),
    (["--seeds", "-1"], "--seeds: distinct whole numbers"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--out", "x.md"], "unrecognized arguments: --out x.md"),  # (no abbreviations: the Reproduce line shows full names)
])
def test_bad_settings_fail_before_any_run(argv, msg, capsys, monkeypatch, tmp_path):
    assert_refused_before_any_run(_bench(), argv + ["--output", str(tmp_path / "t.md")], msg, tmp_path / "t.md", capsys,
                                  monkeypatch)


def test_mnist_settings_need_the_data(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        _bench().main(["--settings", "lenet5/mnist 5%", "--data-dir", str(tmp_path), "--output", str(tmp_path / "t.md")])
    assert info.value.code == 2 and f"need {tmp_path / 'mnist' / 'mnist.npz'} (give --data-dir)" in capsys.readouterr().err


def test_each_run_trains_at_its_pace_and_the_table_shows_the_runs_summaries(tmp_path):
    """Two seeds of the digits job, 200 steps (updates every 25 until step 150): the paces take
    different paths to the same density; the table's figures are the runs' own."""
    out, runs = tmp_path / "t.md", tmp_path / "runs"
    results = _bench().main(["--settings", "mlp/digits 20%", "--seeds", "0,1", "--max-steps", "200", "--runs", str(runs),
                             "--output", str(out), "--no-progress"])
    text = out.read_text()
    for pace in ("even", "cubic"):
        rs = [results["mlp/digits 20%"][pace][s] for s in (0, 1)]
        assert all(abs(r["density"] - 0.2) < 1e-3 and r["steps"] == 200 for r in rs)
        row = re.search(rf"^\| mlp/digits 20% \| {pace} \| ([\d.]+) ± ([\d.]+) \| ([\d.]+) ± [\d.]+ \| ([\d., ]+) \| [\d.]+ \| 359 \|",
                        text, re.M)
        assert row, text
        per_seed = [float(x) for x in row[4].split(",")]
        assert per_seed == [round(100 * r["holdout_accuracy"], 2) for r in rs]
        assert float(row[1]) == pytest.approx(sum(100 * r["holdout_accuracy"] for r in rs) / 2, abs=0.006)
        for s in (0, 1):
            cfg = yaml.safe_load((runs / f"mlp_digits_20_{pace}_seed{s}" / "config.yaml").read_text())
            assert cfg["controller_kw"] == {"pace": pace} and cfg["policy"] == "threshold" and cfg["seed"] == s
    densities = {}
    for pace in ("even", "cubic"):  # the same target, reached along different paths
        events = (runs / f"mlp_digits_20_{pace}_seed0" / "events.jsonl").read_text().splitlines()
        densities[pace] = [float(re.search(r'"density": ([\d.e-]+)', e)[1]) for e in events if '"update"' in e]
    assert densities["even"][-1] == pytest.approx(densities["cubic"][-1], abs=1e-3)
    assert densities["cubic"][0] < densities["even"][0]  # cubic removes most at the start
    diff = [100 * (results["mlp/digits 20%"]["cubic"][s]["holdout_accuracy"]
                   - results["mlp/digits 20%"]["even"][s]["holdout_accuracy"]) for s in (0, 1)]
    assert f"- mlp/digits 20%: {diff[0]:+.2f}, {diff[1]:+.2f}" in text
    assert out.with_suffix(".png").stat().st_size > 10_000 and "Figure: " in text
    assert text.splitlines()[-1] == ("Reproduce: `python recipes/benchmarks/threshold_pace.py --settings 'mlp/digits 20%' "
                                     "--seeds 0,1 --max-steps 200`")
