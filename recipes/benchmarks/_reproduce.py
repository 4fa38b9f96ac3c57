"""The command line a benchmark's table shows under "Reproduce:": the arguments that shape the table,
without those that only say where runs go or whether progress shows."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path


def shown_args(argv, root: Path, placed=("--output", "--figure"), dropped=("--runs",), flags=("--no-progress",)) -> str:
    """``argv`` (default: ``sys.argv[1:]``) as a shell-quoted string, each item led by a space.
    Options in ``placed`` stay only with a path inside ``root``, written relative to it (so the
    command writes the same files); options in ``dropped`` go with their values; ``flags`` go.
    ``--key=value`` counts as ``--key value``."""
    valued = tuple(placed) + tuple(dropped)
    args, out, skip = [], [], None
    for a in (argv if argv is not None else sys.argv[1:]):
        args += a.split("=", 1) if a.startswith(tuple(k + "=" for k in valued)) else [a]
    for a in args:
        if skip is not None:
            path = Path(a).resolve()
            if skip in placed and path.is_relative_to(root):
                out += [skip, str(path.relative_to(root))]
            skip = None
        elif a in valued:
            skip = a
        elif a not in flags:
            out.append(a)
    return "".join(" " + shlex.quote(a) for a in out)
