"""Loading a recipe or benchmark script by its path: they are scripts, not modules of the package."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(relpath: str, name: str):
    """Run ``ROOT/relpath`` as a fresh module called ``name``, registered in ``sys.modules``
    (dataclasses resolve a module's annotations through it)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def assert_refused_before_any_run(mod, argv, msg: str, out: Path, capsys, monkeypatch, runner: str = "run_one"):
    """A benchmark's ``mod.main(argv)`` is a usage error (exit 2) that says ``msg``, raised before any
    call of ``mod.<runner>`` (replaced by a recorder here) and without writing its table ``out``."""
    ran = []
    monkeypatch.setattr(mod, runner, lambda *a, **k: ran.append(a))
    with pytest.raises(SystemExit) as info:
        mod.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and msg in err, (info.value.code, err)
    assert not ran and not out.exists(), (ran, out.exists())


# The limit on a child process a test runs (a recipe, a two-process launch): a guard against a
# hang, not a speed limit. CI runs the suite with pytest -n 2 on a slower 2-core machine, where a
# launch that takes a minute here (under load) can take several; a tight limit failed good runs.
CHILD_TIMEOUT = 900
