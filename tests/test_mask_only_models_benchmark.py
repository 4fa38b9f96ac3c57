"""recipes/benchmarks/mask_only_models.py prints the table it writes and fails when a row fails its checks."""
import runpy

import pytest
import torch

import adaptive.mask_only
import adaptive.paths as paths

SCRIPT = paths.REPO_ROOT / "recipes" / "benchmarks" / "mask_only_models.py"


def test_a_changed_surviving_weight_fails_the_run_and_the_table_is_printed(tmp_path, monkeypatch, capsys):
    """The table's 'changed surviving weights' must be 0 and 'exact' yes, but a run with either wrong exited 0
    (only an exception failed it); and the table was written without being printed whole."""
    monkeypatch.setattr(adaptive.mask_only, "changed_from", lambda *a, **kw: 3)  # read at the script's import
    main = runpy.run_path(str(SCRIPT))["main"]
    out = tmp_path / "models.md"
    threads = torch.get_num_threads()  # the script sets its own
    try:
        with pytest.raises(SystemExit, match=r"1 missed a target or changed a surviving weight \(squeezenet1_0\)"):
            main(["--models", "squeezenet1_0", "--output", str(out)])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert out.read_text() in printed and "| squeezenet1_0 |" in printed
