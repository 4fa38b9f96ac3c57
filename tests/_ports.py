"""A free TCP port for each multi-process launch: pytest -n 2 may run two launches at once, and
Accelerate's default rendezvous port (29500) would make them collide."""
import socket

from _scripts import CHILD_TIMEOUT


def free_port() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


# PyTorch's gloo backend can abort a process as its process group is torn down at the end of a
# run (a C++ std::terminate from a worker thread, after all the work is done and written), more
# often on a loaded machine; see pytorch/pytorch#190489 and #179291. It is not this project's code.
GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


# what launch_two gives accelerate launch beside the mode, so that it warns of no default it took
LAUNCH_SETTINGS = ("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")


def launch_two(script_and_args, *, cwd=None, env=None, timeout=CHILD_TIMEOUT, mode=("--multi_gpu",),
               settings=LAUNCH_SETTINGS):
    """``accelerate launch --multi_gpu --num_processes 2`` on the CPU (gloo), each attempt on a free
    port; ``mode`` stands for ``--multi_gpu`` (``("--use_fsdp", "--fsdp_version", "2")``, or
    ``("--config_file", PATH)``), and ``settings`` for :data:`LAUNCH_SETTINGS` (``()`` leaves them to a
    config file). A run that died of the gloo teardown abort is run once more, with a warning, so that the
    abort stays visible in the test summary, from the folders it started from: every folder named by an
    argument under the temporary directory (the run's output folder, a folder a script writes its records
    into) is put back as it was before the first attempt (CI at 9693e6b failed on that: a two-process run
    meant to fail died of the abort, and its second attempt found the first one's checkpoint and refused
    to overwrite it). Any other outcome is returned as it is."""
    import os
    import subprocess
    import sys
    import tempfile
    import warnings

    # a process leaving its error line to another waits for the launcher to end it (adaptive.cli): on a
    # loaded machine the other may take longer than the default 20 s to reach the same error
    env = dict(os.environ if env is None else env, ADAPTIVE_LEFT_TO_ANOTHER_SECONDS="300")
    with tempfile.TemporaryDirectory(prefix="launch_two_") as keep:
        folders = _kept_folders(script_and_args, keep)
        for attempt in range(2):
            cmd = [sys.executable, "-m", "accelerate.commands.launch", *map(str, mode), "--num_processes", "2",
                   "--main_process_port", free_port(), *map(str, settings), *map(str, script_and_args)]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
            if r.returncode == 0 or GLOO_TEARDOWN_ABORT not in r.stdout + r.stderr or attempt == 1:
                return r
            warnings.warn(f"a process died of the gloo teardown abort ({GLOO_TEARDOWN_ABORT!r}); running again")
            _put_back(folders)
    return r


def _kept_folders(args, keep):
    """Copy into ``keep`` each folder an argument names under the temporary directory, outermost only (one
    that does not exist yet, whose parent does, is kept as absent); returns ``(folder, copy or None)``."""
    import shutil
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.gettempdir()).resolve()
    named = []
    for a in map(str, args):
        p = Path(a)
        if a.startswith("-") or not p.is_absolute():
            continue
        p = p.resolve()
        if tmp in p.parents and Path(keep).resolve() not in p.parents and (p.is_dir() or not p.exists()
                                                                         and p.parent.is_dir()):
            named.append(p)
    outer = [p for p in dict.fromkeys(named) if not any(q in p.parents for q in named)]
    kept = []
    for i, p in enumerate(outer):
        copy = None
        if p.is_dir():
            copy = Path(keep) / str(i)
            shutil.copytree(p, copy, symlinks=True)
        kept.append((p, copy))
    return kept


def _put_back(kept):
    """Put each folder of :func:`_kept_folders` back as it was (removed again where it did not exist)."""
    import shutil

    for folder, copy in kept:
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
        elif folder.exists() or folder.is_symlink():
            folder.unlink()
        if copy is not None:
            shutil.copytree(copy, folder, symlinks=True)


def run_two_ranks(script, folder, env, *args):
    """Run ``script FOLDER RANK [ARGS...]`` as two plain processes (ranks 0 and 1: the script makes its own
    process group through the file store ``FOLDER/store``) and return their logs; both must exit 0, the
    assertion showing their logs otherwise. Each is killed if it is still running after
    :data:`CHILD_TIMEOUT`. As :func:`launch_two` does, a pair in which a process died of the gloo teardown
    abort is run once more, from ``folder`` (and every other folder an argument names under the temporary
    directory) as it was before the first attempt (the first attempt's store file and records gone), with
    a warning, so that the abort stays visible in the test summary."""
    import subprocess
    import sys
    import tempfile
    import warnings

    with tempfile.TemporaryDirectory(prefix="run_two_ranks_") as keep:
        folders = _kept_folders([folder, *args], keep)
        for attempt in range(2):
            procs = [subprocess.Popen([sys.executable, str(script), str(folder), str(r), *map(str, args)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                     for r in range(2)]
            try:
                logs = [p.communicate(timeout=CHILD_TIMEOUT)[0] for p in procs]
            finally:
                for p in procs:
                    p.kill()
            ok = all(p.returncode == 0 for p in procs)
            if ok or attempt == 1 or not any(GLOO_TEARDOWN_ABORT in log for log in logs):
                break
            warnings.warn(f"a process died of the gloo teardown abort ({GLOO_TEARDOWN_ABORT!r}); running again")
            _put_back(folders)
    assert ok, "\n".join(log[-3000:] for log in logs)
    return logs


def two_rank_records(script_name, folder, *args):
    """Run ``tests/scripts/<script_name>`` as ranks 0 and 1 (:func:`run_two_ranks`, one thread each, no
    GPU, the repository and tests/ on the path) and return the two records they wrote, ``rank0.json``
    and ``rank1.json`` in ``folder``, read back."""
    import json
    import os
    from pathlib import Path

    tests = Path(__file__).parent
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([str(tests.parent), str(tests)]))
    run_two_ranks(tests / "scripts" / script_name, folder, env, *args)
    return [json.loads((Path(folder) / f"rank{r}.json").read_text()) for r in range(2)]


def launched_two_records(script_name, folder, *args):
    """``tests/scripts/<script_name> folder *args`` run by :func:`launch_two` (one thread each, no GPU),
    which must succeed; returns the two records it wrote, ``rank0.json`` and ``rank1.json`` in ``folder``,
    read back."""
    import json
    import os
    from pathlib import Path

    script = Path(__file__).parent / "scripts" / script_name
    r = launch_two([str(script), str(folder), *map(str, args)],
                   env=dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=""))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return [json.loads((Path(folder) / f"rank{r}.json").read_text()) for r in range(2)]
