"""recipes/benchmarks/scale.py: a tiny run writes its table where --out says, each pair's old and new
results equal (the script checks them bit for bit); bad option values are refused before any work."""
import runpy

import pytest

import adaptive.paths as paths

SCRIPT = paths.REPO_ROOT / "recipes" / "benchmarks" / "scale.py"


def test_a_tiny_run_writes_the_measured_table(tmp_path):
    main = runpy.run_path(str(SCRIPT))["main"]
    out = tmp_path / "scale.md"
    times = main(["--model", "tiny", "--size", "16", "--rounds", "2", "--points", "5", "--out", str(out)])
    text = out.read_text()
    assert "tiny, 536 synapses" in text and "median of 2 interleaved rounds" in text
    rows = [l.split("|")[1:-1] for l in text.splitlines() if l.startswith("| ") and "operation" not in l]
    assert [r[0].strip() for r in rows] == ["full order (crawl jump, every live synapse)",
                                            "removal order (knowledge diagnostic)", "curve masks (6 points)"]
    assert all(len(old) == len(new) == 2 for old, new in times.values())
    assert "Reproduce: `OMP_NUM_THREADS=" in text and "--model tiny" in text
    import statistics  # each row's figures are the medians of what its pair measured (constants passed before)

    for r, (old, new) in zip(rows, times.values()):
        o, w = statistics.median(old), statistics.median(new)
        assert [c.strip() for c in (r[1], r[2], r[5])] == [f"{o:.3f}", f"{w:.3f}", f"{o / w:.1f}"], r


@pytest.mark.parametrize("argv, match", [(["--rounds", "0"], "--rounds must be a positive integer"),
                                         (["--points", "-1"], "--points must be a positive integer")])
def test_bad_options_are_refused(argv, match, capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and match in capsys.readouterr().err


def test_the_curve_masks_timed_are_the_diagnostics_own_and_every_point_is_compared(tmp_path, monkeypatch):
    """The 'now' side of the curve masks was a copy of the diagnostic's loop kept in the script, and only
    the last point's mask was compared: a diagnostic that removed the wrong weights at an inner point
    (and the right ones at the last) passed the script's bit-for-bit check."""
    from adaptive.diagnostics import knowledge

    real = knowledge._point_masks

    def wrong_inside(live, order, counts):
        counts = list(counts)
        for k, flat in real(live, order, counts):
            if 0 < k < counts[-1]:
                flat = flat.clone()
                flat[order[k]] = False  # one weight too many at an inner point
            yield k, flat

    monkeypatch.setattr(knowledge, "_point_masks", wrong_inside)
    main = runpy.run_path(str(SCRIPT))["main"]
    with pytest.raises(AssertionError, match="curve masks: the new mask at [0-9]+ removed differs"):
        main(["--model", "tiny", "--size", "16", "--rounds", "1", "--points", "5", "--out", str(tmp_path / "s.md")])


def test_each_pair_alternates_which_side_runs_first():
    """Every round ran a pair's old side before its new one, so the new side always found the caches and the
    freed memory of the same-sized work just done (the docstring said 'alternately'): odd rounds now run new first."""
    import torch

    interleaved = runpy.run_path(str(SCRIPT))["interleaved"]
    calls = []

    def side(name):
        def run():
            calls.append(name)
            return torch.zeros(1)
        return run

    step_t, times = interleaved(lambda: calls.append("step"), {"pair": (side("old"), side("new"))}, 4)
    assert calls == ["step", "old", "new", "step", "new", "old", "step", "old", "new", "step", "new", "old"]
    assert len(step_t) == 4 and [len(t) for t in times["pair"]] == [4, 4]
