"""What --overwrite deletes in a run folder, what a finished run keeps, and fractions at their ends."""
from adaptive.run_folder import delete_files


def test_delete_files_removes_only_the_folders_it_is_told_are_trees(tmp_path):  # RU1
    (tmp_path / "metrics.csv").write_text("x")
    for d in ("graph_report", "data"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "f.txt").write_text("y")
    delete_files(tmp_path, ["metrics.csv", "graph_report", "data"], trees={"graph_report"})
    assert not (tmp_path / "metrics.csv").exists() and not (tmp_path / "graph_report").exists()
    assert (tmp_path / "data" / "f.txt").is_file()


def test_a_run_that_ends_well_keeps_its_folder_even_if_it_wrote_nothing(tmp_path):  # RU3
    from types import SimpleNamespace

    from adaptive.run_folder import RunLock

    lock = RunLock(SimpleNamespace(is_main_process=True, num_processes=1), tmp_path / "a" / "b")
    lock.acquire()
    lock.release()
    assert (tmp_path / "a" / "b").is_dir() and not (tmp_path / "a" / "b" / ".lock").exists()


def test_unit_fraction_takes_float_error_past_an_end_as_that_end():  # CT2
    from adaptive.counts import unit_fraction

    assert unit_fraction(1.0 + 1e-7) == 1.0 and unit_fraction(-1e-7) == 0.0
    assert unit_fraction(1.1) is None
