"""recipes/benchmarks/mask_only_ceiling.py: fine-tunes on the train part, chooses the step on the
held-out part, and reads the test split only at the end, for the dense row and the chosen run."""

import pytest

import adaptive.paths as paths
from _scripts import load_script  # noqa: E402

SHARED = paths.SHARED_DATA
HAVE_DATA = (SHARED / "cifar10-jpeg" / "test").is_dir() and (SHARED / "resnet-cifar10" / "resnet20-12fca82f.th").is_file()


def _bench():
    return load_script("recipes/benchmarks/mask_only_ceiling.py", "mask_only_ceiling")


@pytest.mark.parametrize("argv, msg", [
    (["--lrs", "0.01,0"], "--lrs must be positive"),
    (["--passes", "one"], "--passes must be comma-separated numbers"),
    (["--batch-size", "0"], "at least 1"),
])
def test_bad_settings_fail_before_any_work(argv, msg, capsys, monkeypatch, tmp_path):
    mod = _bench()
    read = []
    monkeypatch.setattr(mod, "get_dataloaders", lambda *a, **k: read.append(1))
    with pytest.raises(SystemExit) as info:
        mod.main(argv + ["--output", str(tmp_path / "t.md")])
    assert info.value.code == 2 and msg in capsys.readouterr().err
    assert not read and not (tmp_path / "t.md").exists()


@pytest.mark.skipif(not HAVE_DATA, reason=f"shared cifar10-jpeg or resnet20 absent under {SHARED}")
def test_test_split_read_once_for_the_step_the_holdout_chose(tmp_path, monkeypatch):
    mod = _bench()
    real_eval, calls = mod.evaluate, []

    def spy(model, loader, *a, **k):
        calls.append("test" if loader is test_loader[0] else "other")
        return real_eval(model, loader, *a, **k)

    real_get, test_loader = mod.get_dataloaders, []

    def get(*a, **k):  # the real loaders, with a 100-image stratified draw of the test split (two passes over all
        dl = real_get(*a, **k, test_subset=100)  # 10,000 were 90% of the time)
        test_loader.append(dl.test)
        return dl

    monkeypatch.setattr(mod, "evaluate", spy)
    monkeypatch.setattr(mod, "get_dataloaders", get)
    firsts, real_cycle = [], mod.LoaderCycle

    def cycle(loader):  # each run's first batch: every step is compared on the same batches (each fresh pass over
        it = real_cycle(loader)  # the loader drew the next shuffle)
        first = next(it)
        firsts.append(first[1].clone())

        def rest():  # (a LoaderCycle never ends: the first batch again, then the cycle)
            yield first
            yield from it
        return rest()

    monkeypatch.setattr(mod, "LoaderCycle", cycle)
    out = tmp_path / "ceil.md"
    mod.main(["--subset", "200", "--batch-size", "32", "--passes", "0.5", "--lrs", "0.001,0.003", "--no-progress",
              "--output", str(out)])
    # both runs are judged on the held-out part before the test split is read at all, and then it
    # is read twice: for the dense row and for the one run the held-out part chose
    first_test = calls.index("test")
    assert "test" not in calls[:2] and calls[first_test:].count("test") == 2
    assert len(firsts) == 2 and firsts[0].equal(firsts[1])
    text = out.read_text()
    assert text.count("(chosen)") == 1 and text.count("not read") == 1
    assert "| dense (pretrained, unchanged) |" in text
    # the chosen run is the one with the higher held-out accuracy (ties: the first listed)
    runs = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| every weight fine-tuned |")]
    held = [float(r[3]) for r in runs]
    assert "(chosen)" in runs[held.index(max(held))][4]


def test_loading_it_leaves_the_benchmarks_folder_off_the_import_path():
    """It put recipes/benchmarks on sys.path for good, so a later ``import graphs`` (the diagnostics'
    depth tracing) in the same process found recipes/benchmarks/graphs.py (the graphs benchmark, since
    renamed graphs_package.py) instead of the package."""
    import os
    import sys

    _bench()
    here = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", "recipes", "benchmarks"))
    assert not [p for p in sys.path if os.path.realpath(p or os.getcwd()) == here]
