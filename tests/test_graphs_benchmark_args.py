"""recipes/benchmarks/graphs.py refuses option sets that run nothing or contradict each other, before any work."""
import runpy

import pytest

import adaptive.paths as paths

SCRIPT = paths.REPO_ROOT / "recipes" / "benchmarks" / "graphs.py"


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
