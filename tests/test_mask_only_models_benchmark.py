"""recipes/benchmarks/mask_only_models.py prints the table it writes and fails when a row fails its checks.

The script's ``run`` (a real mask-only optimisation of a torchvision classifier: 20-30 s even for the
smallest) is replaced by one returning made-up rows: what is tested here is how ``main`` judges them."""
import runpy

import pytest
import torch

import adaptive.paths as paths

SCRIPT = paths.REPO_ROOT / "recipes" / "benchmarks" / "mask_only_models.py"


def _main(results, tmp_path, monkeypatch, models=("squeezenet1_0",)):
    """Run the script's main on ``models`` with ``run`` giving ``results[name]`` (an exception is raised)."""
    main = runpy.run_path(str(SCRIPT))["main"]

    def run(name):
        r = results[name]
        if isinstance(r, Exception):
            raise r
        return {"model": name, "synapses": 1000, "wall": 0.1, **r}

    monkeypatch.setitem(main.__globals__, "run", run)
    out = tmp_path / "models.md"
    threads = torch.get_num_threads()  # the script sets its own
    try:
        main(["--models", *models, "--output", str(out)])
    finally:
        torch.set_num_threads(threads)
    return out


def test_a_changed_surviving_weight_fails_the_run_and_the_table_is_printed(tmp_path, monkeypatch, capsys):
    """The table's 'changed surviving weights' must be 0 and 'exact' yes, but a run with either wrong exited 0
    (only an exception failed it); and the table was written without being printed whole."""
    with pytest.raises(SystemExit, match=r"1 missed a target or changed a surviving weight \(squeezenet1_0\)"):
        _main({"squeezenet1_0": {"changed": 3, "targets": [(100, 100), (200, 200)]}}, tmp_path, monkeypatch)
    printed = capsys.readouterr().out
    assert (tmp_path / "models.md").read_text() in printed and "| squeezenet1_0 |" in printed


def test_a_missed_target_fails_the_run(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match=r"0 model\(s\) failed; 1 missed a target .* \(mnasnet0_5\)"):
        _main({"squeezenet1_0": {"changed": 0, "targets": [(100, 100), (200, 200)]},
               "mnasnet0_5": {"changed": 0, "targets": [(100, 100), (200, 199)]}},
              tmp_path, monkeypatch, models=("squeezenet1_0", "mnasnet0_5"))
    assert "| mnasnet0_5 | 1,000 | 100 / 100 | 200 / 199 | NO | 0 |" in (tmp_path / "models.md").read_text()


def test_a_model_that_raises_fails_the_run_and_the_others_still_run(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match=r"^1 model\(s\) failed; 0 missed a target or changed a surviving weight$"):
        _main({"squeezenet1_0": RuntimeError("boom"), "mnasnet0_5": {"changed": 0, "targets": [(1, 1), (2, 2)]}},
              tmp_path, monkeypatch, models=("squeezenet1_0", "mnasnet0_5"))
    text = (tmp_path / "models.md").read_text()
    assert "| squeezenet1_0 | |  |  | NO: RuntimeError: boom" in text and "| mnasnet0_5 | 1,000 |" in text


def test_a_run_meeting_every_check_ends_normally(tmp_path, monkeypatch):
    out = _main({"squeezenet1_0": {"changed": 0, "targets": [(100, 100), (200, 200)]}}, tmp_path, monkeypatch)
    assert "| squeezenet1_0 | 1,000 | 100 / 100 | 200 / 200 | yes | 0 |" in out.read_text()
