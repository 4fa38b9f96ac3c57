"""The command line a benchmark's table shows under "Reproduce:": the arguments that shape the table,
without those that only say where runs go or whether progress shows."""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path


def shown_args(argv, root: Path, placed=("--output", "--figure"), dropped=("--runs",), flags=("--no-progress",)) -> str:
    """``argv`` (default: ``sys.argv[1:]``) as a shell-quoted string, each item led by a space.
    Options in ``placed`` stay only with a path inside ``root``, written relative to it (so the
    command writes the same files); options in ``dropped`` go with their values; ``flags`` go.
    ``--key=value`` counts as ``--key value``. A value led by ``~`` is the home folder's, as the option's
    ``type=`` (:func:`adaptive.cli.path_type`) reads it (the shell leaves ``--out=~/x`` as it is)."""
    valued = tuple(placed) + tuple(dropped)
    root = Path(root).resolve()  # the values are resolved below: a root reached through a link must be too
    args, out, skip = [], [], None
    for a in (argv if argv is not None else sys.argv[1:]):
        args += a.split("=", 1) if a.startswith(tuple(k + "=" for k in valued)) else [a]
    for a in args:
        if skip is not None:
            path = Path(os.path.expanduser(a)).resolve()  # (as path_type read it: not a folder named ~ here)
            if skip in placed and path.is_relative_to(root):
                out += [skip, str(path.relative_to(root))]
            skip = None
        elif a in valued:
            skip = a
        elif a not in flags:
            out.append(a)
    return "".join(" " + shlex.quote(a) for a in out)


def command(script: str, root: Path, argv=None, threads: bool = False, **kw) -> str:
    """``python recipes/benchmarks/SCRIPT`` followed by the arguments it was given (``argv``, default
    ``sys.argv[1:]``) as :func:`shown_args` writes them (``kw`` goes to it): the command that
    writes this table, for its "Reproduce:" line. ``threads=True``, for a script that leaves torch's
    thread count to the environment: led by ``OMP_NUM_THREADS=N``, the count torch ran with (without
    it the command runs with as many threads as the next machine has cores, another timing)."""
    lead = ""
    if threads:
        import torch

        lead = f"OMP_NUM_THREADS={torch.get_num_threads()} "
    return f"{lead}python recipes/benchmarks/{script}{shown_args(argv, root, **kw)}"


def machine() -> str:
    """The machine a timing came from, for a results file: processor, CPU count, torch version and
    threads, and the 1-minute load average now (other jobs on a shared machine slow every timing)."""
    import os
    import platform

    import torch

    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "unknown"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
            f"1-minute load average {load} at the end")
