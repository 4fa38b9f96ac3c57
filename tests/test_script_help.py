"""Every recipe and benchmark script answers ``--help``: argparse formats each help string with ``%``,
so a bare percent sign in one (a setting named "mlp/digits 20%") made ``--help`` crash."""
import contextlib
import io
import runpy
import signal
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p for p in [*ROOT.glob("recipes/*.py"), *ROOT.glob("recipes/benchmarks/*.py")]
                 if not p.name.startswith("_"))


def test_there_are_scripts_to_check():
    assert len(SCRIPTS) >= 20


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_script_answers_help(script, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(ROOT)
    out, err = io.StringIO(), io.StringIO()
    handler, threads = signal.getsignal(signal.SIGINT), torch.get_num_threads()  # a recipe run as a program sets both
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as stop:
            runpy.run_path(str(script), run_name="__main__")
    finally:
        signal.signal(signal.SIGINT, handler)
        torch.set_num_threads(threads)
    assert stop.value.code in (0, None), f"{script.name} --help exited {stop.value.code}:\n{err.getvalue()[-2000:]}"
    assert "usage:" in out.getvalue(), f"{script.name} --help printed no usage:\n{out.getvalue()[:500]}{err.getvalue()[-2000:]}"


def test_a_recipe_runs_beside_another_package_named_recipes(tmp_path):
    """recipes/adaptive.py imports its parts from recipes/_adaptive/: with ``recipes`` a namespace
    package, a regular package of that name anywhere on the path (a user's own ``recipes/``, given
    by PYTHONPATH) won, and the recipe stopped at 'No module named recipes._adaptive'."""
    import os
    import subprocess

    from _scripts import CHILD_TIMEOUT

    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "__init__.py").write_text("")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "recipes" / "adaptive.py"), "--help"], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=CHILD_TIMEOUT)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr[-2000:]
