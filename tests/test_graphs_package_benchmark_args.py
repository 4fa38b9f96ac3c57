"""recipes/benchmarks/graphs_package.py refuses option sets that run nothing or contradict each other, before any work."""
import runpy

import pytest

import adaptive.paths as paths

SCRIPT = paths.REPO_ROOT / "recipes" / "benchmarks" / "graphs_package.py"


@pytest.mark.parametrize("argv, match", [
    (["--skip-graphs", "--skip-compaction"], "leave nothing to run"),
    (["--only-contract", "--skip-compaction"], "runs the junction contraction part alone"),
    (["--only-contract", "--skip-graphs"], "runs the junction contraction part alone"),
])
def test_contradictory_options_are_refused(argv, match, capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and match in capsys.readouterr().err


def test_the_compaction_timing_alternates_which_model_runs_first():
    """Every repeat ran the masked model before the compacted one on the same batch, so the compacted one always
    found the input and the allocator as the masked one left them: odd repeats now run the compacted one first."""
    interleaved = runpy.run_path(str(SCRIPT))["_interleaved"]
    calls = []
    masked, small = (lambda x: calls.append("masked")), (lambda x: calls.append("compact"))
    times = interleaved(masked, small, None, 3)
    assert calls == ["masked", "compact", "masked", "compact", "compact", "masked", "masked", "compact"]
    assert [len(t) for t in times.values()] == [3, 3]


def test_a_child_row_s_peak_memory_is_its_own_not_the_parent_s():
    """Every row runs in a child process started by fork and exec, whose getrusage ru_maxrss is at least the
    parent's resident memory at the fork: a small row read the parent's size (in a full run, the parent has
    already run the compaction part) as its own peak. The peak is now the child's VmHWM."""
    import subprocess
    import sys

    import torch

    def rss_gb():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1e6

    held = torch.ones(150_000_000)  # 0.6 GB resident in this (the parent) process while the child runs
    parent = rss_gb()
    code = f"import runpy; print(runpy.run_path({str(SCRIPT)!r})['_rss_gb']())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    del held
    assert 0 < child < parent - 0.3, (child, parent)
