"""The two-process helpers' handling of PyTorch's gloo teardown abort (tests/_ports.py): a pair in which a
process died of it after its work is run once more with a warning, from the folders it started from; any
other failure is not retried."""
import os
import textwrap

import pytest

from _ports import GLOO_TEARDOWN_ABORT, launch_two, run_two_ranks

# rank 1 leaves a store file and dies of the abort the first time it runs (as gloo's std::terminate ends a
# process: the line on stderr, a non-zero exit); the store file of the first attempt must be gone when the
# pair runs again. Only the dying attempt writes it, so neither process of the second attempt can see a
# store file its partner made (CI at 87359af failed on that race: rank 1 of try 2 made one before rank 0
# of try 2 looked). Each process's record of its first attempt must be gone too (the folder is put back as
# it was).
SCRIPT = textwrap.dedent(f"""
    import os, sys
    folder, rank, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    tries = os.path.join(os.path.dirname(folder), f"tries{{rank}}")
    n = int(open(tries).read()) + 1 if os.path.exists(tries) else 1
    open(tries, "w").write(str(n))
    if n == 2:
        assert not os.path.exists(os.path.join(folder, "store")), "the first attempt's store file was kept"
        assert not os.path.exists(os.path.join(folder, f"record{{rank}}")), "the first attempt's record was kept"
    open(os.path.join(folder, f"record{{rank}}"), "w").write(str(n))
    if rank == 1 and n == 1 and mode != "other":
        open(os.path.join(folder, "store"), "a").close()
    if rank == 1 and (mode == "always" or (mode == "once" and n == 1)):
        sys.stderr.write({GLOO_TEARDOWN_ABORT!r} + "\\n")
        sys.exit(134)
    if rank == 1 and mode == "other":
        sys.exit("another failure")
    print(f"rank {{rank}} done on try {{n}}")
""")


def _run(tmp_path, mode):
    script, folder = tmp_path / "pair.py", tmp_path / "pair"
    script.write_text(SCRIPT)
    folder.mkdir()
    return run_two_ranks(script, folder, dict(os.environ), mode)


def test_a_pair_that_died_of_the_gloo_teardown_abort_runs_once_more_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="gloo teardown abort"):
        logs = _run(tmp_path, "once")
    assert [log.strip() for log in logs] == ["rank 0 done on try 2", "rank 1 done on try 2"]


@pytest.mark.parametrize("mode", ["always", "other"])
def test_an_abort_twice_or_another_failure_fails_showing_the_logs(tmp_path, mode):
    with pytest.raises(AssertionError, match="terminate called" if mode == "always" else "another failure"):
        if mode == "always":
            with pytest.warns(UserWarning, match="gloo teardown abort"):
                _run(tmp_path, mode)
        else:
            _run(tmp_path, mode)
    assert (tmp_path / "tries1").read_text() == ("2" if mode == "always" else "1")


# launched twice by launch_two: each process counts its tries outside the folders it is given (TRIES), finds
# the folder "run" as the test made it (one file, given) and the folder "new" absent, writes into both, and
# process 1 dies of the abort on its first try, after process 0 has written (CI at 9693e6b failed where the
# second try found the first one's files: a run refusing to overwrite an earlier run's checkpoint)
LAUNCHED = textwrap.dedent(f"""
    import os, sys, time
    run, new, rank = sys.argv[1], sys.argv[2], os.environ["RANK"]
    tries = os.path.join(os.environ["TRIES"], "tries" + rank)
    n = int(open(tries).read()) + 1 if os.path.exists(tries) else 1
    open(tries, "w").write(str(n))
    assert sorted(os.listdir(run)) == ["given"] and open(os.path.join(run, "given")).read() == "as made", \
        f"try {{n}} of process {{rank}} found run holding {{sorted(os.listdir(run))}}"
    assert not os.path.exists(new), f"try {{n}} of process {{rank}} found new made"
    time.sleep(1)  # both have looked before either writes
    open(os.path.join(run, "written" + rank), "w").write("x")
    open(os.path.join(run, "given"), "w").write("changed")
    os.makedirs(new, exist_ok=True)
    if rank == "1" and n == 1:
        time.sleep(1)
        sys.stderr.write({GLOO_TEARDOWN_ABORT!r} + "\\n")
        sys.exit(134)
    print(f"process {{rank}} done on try {{n}}")
""")


def test_a_launch_that_died_of_the_abort_runs_again_from_the_folders_it_started_from(tmp_path):
    script, run, tries = tmp_path / "launched.py", tmp_path / "run", tmp_path / "tries"
    script.write_text(LAUNCHED)
    run.mkdir()
    tries.mkdir()
    (run / "given").write_text("as made")
    env = dict(os.environ, TRIES=str(tries), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    with pytest.warns(UserWarning, match="gloo teardown abort"):
        r = launch_two([script, run, tmp_path / "new"], env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "process 0 done on try 2" in r.stdout and "process 1 done on try 2" in r.stdout, r.stdout[-3000:]
    # what the second try wrote stays; the script itself (beside the folders, named by an argument) is untouched
    assert sorted(os.listdir(run)) == ["given", "written0", "written1"] and (tmp_path / "new").is_dir()
    assert script.read_text() == LAUNCHED
