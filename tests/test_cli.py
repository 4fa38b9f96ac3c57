"""Every recipe entry point turns a user's mistake into one `error:` line and status 2."""
import os
import subprocess
import sys

import pytest

from _scripts import CHILD_TIMEOUT  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "args, expect",
    [
        (["recipes/adaptive.py", "--density", "2"], "density must be in (0, 1]"),
        (["recipes/prune_pretrained.py", "--model", "resnet20", "--remove", "1.5", "--dataset", "fake"], "target fraction 1.5"),
        (["recipes/diagnostics.py", "knowledge", "--dataset", "nope"], "unknown dataset 'nope'"),
        # refused while parsing: it was status 1 and no error: line
        (["recipes/prune_pretrained.py", "--seed", "-1"], "--seed must be in [0, 2**32 - 1]"),
    ],
)
def test_bad_input_gives_one_error_line(args, expect):
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("ADAPTIVE_TRACEBACK", None)
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and expect in errors[0], r.stderr[-2000:]


def test_ctrl_c_ends_with_one_line_saying_how_to_continue(capsys, monkeypatch):
    from adaptive.cli import run_cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.delenv("ADAPTIVE_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as e:
        run_cli(interrupted, "prog", on_interrupt="--resume continues")
    assert e.value.code == 130
    assert capsys.readouterr().err == "prog: interrupted; --resume continues\n"
    monkeypatch.setenv("ADAPTIVE_TRACEBACK", "1")
    with pytest.raises(KeyboardInterrupt):
        run_cli(interrupted, "prog")
