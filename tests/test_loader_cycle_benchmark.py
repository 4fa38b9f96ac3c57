"""recipes/benchmarks/loader_cycle.py: a smoke run writes its table where --out says, with the
figures it measured; bad option values are refused before any work."""
import runpy

import pytest

import adaptive.paths as paths

SCRIPT = paths.REPO_ROOT / "recipes" / "benchmarks" / "loader_cycle.py"


def test_quick_run_writes_the_measured_table(tmp_path):
    """A --quick run with its sizes given runs (and writes) those sizes: --quick fills in only what is not given."""
    main = runpy.run_path(str(SCRIPT))["main"]
    out = tmp_path / "lc.md"
    main(["--quick", "--rounds", "2", "--batches", "4", "--n", "512", "--batch", "64", "--out", str(out)])
    text = out.read_text()  # the sizes given win over --quick's (it ran 3 rounds of 20 batches of 4,096 examples)
    assert "(512 examples), batch 64" in text and "medians over 2 interleaved rounds of 4 batches" in text
    rows = [l.split("|")[1:-1] for l in out.read_text().splitlines() if l.startswith("| ") and "µs" not in l]
    assert [r[0].strip() for r in rows] == ["DataLoader", "Accelerate-prepared"]
    for r in rows:
        plain, cycle, added, capture = (float(c) for c in r[1:5])
        assert plain > 0 and cycle > 0 and capture > 0
        # a per-round difference of the two columns: median(cycle_r - plain_r) lies between -median(plain_r)
        # and median(cycle_r) whatever the load; |added| < cycle fails when load slows plain in 2 of 3 rounds
        assert -plain <= added <= cycle
        assert float(r[6]) > 0  # the reference step was timed


@pytest.mark.parametrize("argv, match", [(["--rounds", "0"], "--rounds must be a positive integer"),
                                         (["--n", "10", "--batch", "64"], "must hold at least one batch")])
def test_bad_options_are_refused(argv, match, capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and match in capsys.readouterr().err


def test_the_reference_step_is_timed_in_the_same_rounds_as_the_loaders(tmp_path, monkeypatch):
    """The reference step was timed in rounds of its own before any loader, so 'added / step' divided a
    per-round difference by a step measured at another time (another load on a shared machine): it is now
    timed in every round, in the rotation with plain and LoaderCycle, and the ratio taken within each round."""
    import torch.nn.functional as F

    import adaptive.data.cycle as cycle

    events = []
    real_ce = F.cross_entropy

    class Recorded(cycle.LoaderCycle):
        def __next__(self):
            events.append("cycle")
            return super().__next__()

    def ce(*a, **kw):
        events.append("step")
        return real_ce(*a, **kw)

    monkeypatch.setattr(cycle, "LoaderCycle", Recorded)
    monkeypatch.setattr(F, "cross_entropy", ce)
    main = runpy.run_path(str(SCRIPT))["main"]
    main(["--quick", "--rounds", "3", "--batches", "2", "--n", "256", "--batch", "64", "--out", str(tmp_path / "lc.md")])
    first, last = events.index("cycle"), len(events) - 1 - events[::-1].index("cycle")
    assert "step" in events[first:last], "no reference step timed between the loaders' rounds"


def test_plain_and_loadercycle_each_follow_the_reference_step_as_often(tmp_path):
    """With the step in a three-way rotation (plain, LoaderCycle, step; then LoaderCycle, step, plain; then step,
    plain, LoaderCycle) plain ran right after the step in two rounds of three and LoaderCycle in none, so only
    plain found the caches as LeNet's forward and backward left them: 'added' (LoaderCycle minus plain, within a
    round) leaned one way. Over every 4 rounds each side now follows the step once and the other side twice. The
    timers are stand-ins recording the order they run in."""
    ns = runpy.run_path(str(SCRIPT))
    g = ns["main"].__globals__
    events = []
    g["_time_batches"] = lambda source, k: events.append(type(source).__name__.strip("_")) or 1e-4
    g["_time_step"] = lambda model, x, y, k: events.append("step") or 1e-3
    g["_time_capture"] = lambda loader, k: events.append("capture") or 1e-5
    ns["main"](["--rounds", "4", "--batches", "1", "--n", "128", "--batch", "64", "--out", str(tmp_path / "lc.md")])
    pairs = list(zip(events[1:], events[2:]))  # events[0]: the untimed warm-up step
    assert pairs.count(("step", "Plain")) == pairs.count(("step", "LoaderCycle")) >= 1, events
    assert pairs.count(("Plain", "LoaderCycle")) == pairs.count(("LoaderCycle", "Plain")) >= 1, events


def test_the_table_holds_the_figures_its_timers_measured(tmp_path):
    """The table was checked only for signs and an ordering: a script writing constants passed (a review replaced
    every median with 1e-5 s). With timers standing in at known per-batch times, every cell is what they gave."""
    ns = runpy.run_path(str(SCRIPT))
    g = ns["main"].__globals__
    per_batch = {"Plain": 1e-4, "LoaderCycle": 1.5e-4}
    g["_time_batches"] = lambda source, k: per_batch[type(source).__name__.strip("_")]
    g["_time_step"] = lambda model, x, y, k: 1e-3
    g["_time_capture"] = lambda loader, k: 1e-5
    out = tmp_path / "lc.md"
    ns["main"](["--rounds", "3", "--batches", "1", "--n", "128", "--batch", "64", "--out", str(out)])
    rows = [[c.strip() for c in l.split("|")[1:-1]] for l in out.read_text().splitlines()
            if l.startswith("| ") and "µs" not in l]
    assert [r[0] for r in rows] == ["DataLoader", "Accelerate-prepared"]
    for r in rows:  # plain, LoaderCycle, added (µs), copy (µs), LoaderCycle / plain, step (ms), added / step
        assert r[1:] == ["100.0", "150.0", "50.0", "10.0", "1.50", "1.00", "5.0%"], r
